#!/usr/bin/env bash
# Builds the cluster's other Go pieces into ~/.cache/dew-csi/tools/bin (skipped when present):
#   etcd            go.etcd.io/etcd/server/v3 at the release in hack/etcd/go.mod
#   csi-node-driver-registrar, csi-livenessprobe
#                   hack/csi-sidecars: the kubernetes-csi sidecars are refused by the Go module
#                   proxy (403), so these are small stand-ins built on the same APIs (see there).
# Test infrastructure, not product.
source "$(dirname "$0")/lib.sh"
mkdir -p "$TOOLS_BIN"

build() { # build DIR PKG OUT
  local dir="$1" pkg="$2" out="$3"
  [[ -x "$TOOLS_BIN/$out" ]] && return 0
  local t0; t0=$(date +%s)
  log "building $out ($pkg)"
  (cd "$HACK_DIR/$dir" && nice -n 19 go build -trimpath -ldflags '-s -w' -o "$TOOLS_BIN/$out.tmp" "$pkg")
  mv "$TOOLS_BIN/$out.tmp" "$TOOLS_BIN/$out"
  log "built $out in $(( $(date +%s) - t0 ))s"
}

build etcd go.etcd.io/etcd/server/v3 etcd
if [[ -d "$HACK_DIR/csi-sidecars" ]]; then
  build csi-sidecars ./cmd/csi-node-driver-registrar csi-node-driver-registrar
  build csi-sidecars ./cmd/csi-livenessprobe csi-livenessprobe
fi
