#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy from
# k8s.io/kubernetes at the release pinned in hack/kube/go.mod (staging modules replaced by the same
# release's v0.X.Y), through the Go module proxy, into ~/.cache/dew-csi/kube-<version>/bin.
# A binary already there is not rebuilt. Test infrastructure, not product.
source "$(dirname "$0")/lib.sh"

TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
mkdir -p "$KUBE_BIN"
cd "$HACK_DIR/kube"
for t in "${TOOLS[@]}"; do
  if [[ -x "$KUBE_BIN/$t" ]]; then continue; fi
  t0=$(date +%s)
  log "building $t $KUBE_VERSION (nice 19, -p=2; cold: many minutes)"
  # Kubernetes' own release flags: static, no DWARF, version stamped like a release build.
  nice -n 19 go build -trimpath -tags 'providerless' \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean" \
    -o "$KUBE_BIN/$t.tmp" "k8s.io/kubernetes/cmd/$t"
  mv "$KUBE_BIN/$t.tmp" "$KUBE_BIN/$t"
  log "built $t in $(( $(date +%s) - t0 ))s"
done
ls -la "$KUBE_BIN" >&2
