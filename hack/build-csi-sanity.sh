#!/usr/bin/env bash
# Builds csi-sanity (github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity) at the release pinned in
# hack/csi-sanity/go.mod (go.sum holds every module's hash) into
# ~/.cache/dew-csi/csi-sanity-<version>/csi-sanity, or reuses the binary already there, and prints
# its path on stdout. tests/integration/test_csi_sanity.py runs it; so can a person:
#   "$(hack/build-csi-sanity.sh)" --csi.endpoint unix:///path/to/csi.sock ...
# Test infrastructure, not product.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module="$here/csi-sanity"
version="$(awk '$1 == "github.com/kubernetes-csi/csi-test/v5" {print $2}' "$module/go.mod")"
[[ -n "$version" ]] || { echo "error: no csi-test/v5 version in $module/go.mod" >&2; exit 1; }
out_dir="${DEW_CSI_CACHE:-$HOME/.cache/dew-csi}/csi-sanity-$version"
binary="$out_dir/csi-sanity"

if [[ ! -x "$binary" ]]; then
  command -v go >/dev/null || { echo "error: go is not installed" >&2; exit 1; }
  mkdir -p "$out_dir"
  echo "==> building csi-sanity $version into $out_dir" >&2
  t0=$(date +%s)
  tmp="$binary.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  # Two shared cores: niced, two parallel compiles. -mod=readonly: go.mod/go.sum as committed.
  (cd "$module" && CGO_ENABLED=0 nice -n 19 go build -mod=readonly -p=2 -buildvcs=false -trimpath \
    -ldflags "-s -w -X main.VERSION=$version" -o "$tmp" github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity)
  mv -f "$tmp" "$binary"  # atomic: a concurrent build of the same sources only replaces it
  echo "==> built csi-sanity in $(( $(date +%s) - t0 ))s" >&2
fi
echo "$binary"
