# Shared settings for the hack/ scripts (test infrastructure, not product). Sourced, not run.
# shellcheck shell=bash
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$HACK_DIR/.." && pwd)"
# Builds are cached here so that a second `make cluster` starts in seconds.
CACHE_DIR="${DEW_CSI_CACHE:-$HOME/.cache/dew-csi}"
# The Kubernetes release: the one in hack/kube/go.mod (see hack/README.md for why this one).
KUBE_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$HACK_DIR/kube/go.mod")"
KUBE_BIN="$CACHE_DIR/kube-$KUBE_VERSION/bin"
TOOLS_BIN="$CACHE_DIR/tools/bin"
# Every build is niced and limited to two parallel compiles: the machine has 2 shared cores.
export GOFLAGS="${GOFLAGS:--buildvcs=false} -p=2"
export CGO_ENABLED="${CGO_ENABLED:-0}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# phase NAME CMD...: runs CMD and prints how long the phase took.
phase() {
  local name="$1"; shift
  local t0; t0=$(date +%s.%N)
  log "$name"
  "$@"
  printf '==> %s: %.1fs\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)" >&2
}

# --- the cluster's layout (hack/cluster-up.sh, hack/cluster-down.sh)
STATE="${DEW_CSI_CLUSTER_DIR:-$REPO_DIR/.cluster}"
NETNS="${DEW_CSI_NETNS:-dew-csi}"
# The node's address inside the network namespace: the API server advertises it, the kubelet
# registers it, pods reach the host's services (CSMS emulator) through it.
NODE_IP=10.99.0.1
NODE_NAME=dew-csi-node
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBELET_ROOT=/mnt/paas/kubernetes/kubelet
# Host loopback ports (bridged into the namespace through unix sockets by socat).
APISERVER_HOST_PORT="${DEW_CSI_APISERVER_PORT:-16443}"
REGISTRY_PORT="${DEW_CSI_REGISTRY_PORT:-15000}"
CSMS_PORT="${DEW_CSI_CSMS_PORT:-18888}"
# The cgroup (in every v1 hierarchy) that holds all pods: cluster-down removes it.
CGROUP_ROOT=dew-csi
MNTNS="$STATE/mntns"

# in_node CMD...: runs CMD in the node (the cluster's network and mount namespaces).
in_node() { nsenter --net="/run/netns/$NETNS" --mount="$MNTNS" -- "$@"; }
