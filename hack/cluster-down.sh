#!/usr/bin/env bash
# `make cluster-down`: stops every process hack/cluster-up.sh started and unmounts everything it
# mounted; the host's network and cgroup mounts stay as they were. Safe to run twice, or after a
# cluster-up that failed half-way. Test infrastructure, not product.
source "$(dirname "$0")/lib.sh"
set +e
[[ $EUID -eq 0 ]] || die "make cluster-down needs root"

# Processes: those recorded in $STATE/pids, then whatever still runs in the node's mount or
# network namespace (containerd's shims, hostNetwork containers) or in the pods' cgroup (every
# container: a pod with its own network and mount namespaces is in neither of the node's, and
# outlives its killed shim), all of them started by this cluster.
ours() {
  local mnt p
  [[ -e "/run/netns/$NETNS" ]] && ip netns pids "$NETNS" 2>/dev/null
  [[ -d "/sys/fs/cgroup/pids/$CGROUP_ROOT" ]] \
    && find "/sys/fs/cgroup/pids/$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null
  mountpoint -q "$MNTNS" 2>/dev/null || return 0
  mnt=$(stat -L -c %i "$MNTNS")
  for p in /proc/[0-9]*; do
    [[ "$(stat -L -c %i "$p/ns/mnt" 2>/dev/null)" == "$mnt" ]] && echo "${p#/proc/}"
  done
}

stop_all() {
  local sig pids=()
  if [[ -d "$STATE/pids" ]]; then
    for f in "$STATE"/pids/*.pid; do [[ -f "$f" ]] && pids+=("$(cat "$f")"); done
  fi
  # The recorded ones first (TERM), so kubelet and containerd stop before their containers.
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 20); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.5
  done
  for sig in KILL KILL; do
    for p in "${pids[@]}" $(ours | sort -u); do
      [[ "$p" == "$$" ]] && continue
      kill "-$sig" "$p" 2>/dev/null
    done
    sleep 0.5
  done
}

log "stopping the cluster's processes"
stop_all

# Mounts: everything the cluster mounted lives in its own mount namespace; with no process left
# in it, unmounting its bind-mounted handle frees the namespace and every mount in it.
if [[ -e "$MNTNS" ]]; then
  umount "$MNTNS" 2>/dev/null
  rm -f "$MNTNS"
fi
[[ -e "/run/netns/$NETNS" ]] && ip netns del "$NETNS"

# The pods' cgroups (directories in the host's v1 hierarchies; the mounts are untouched).
# Killed processes leave their cgroup once reaped: retry for a few seconds.
for _ in $(seq 10); do
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h$CGROUP_ROOT" ]] || continue
    find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  compgen -G "/sys/fs/cgroup/*/$CGROUP_ROOT" >/dev/null || break
  sleep 1
done

# Host directories cluster-up created as mount points (only those, only when empty).
if [[ -f "$STATE/created-dirs" ]]; then
  while read -r d; do rmdir "$d" 2>/dev/null; done <"$STATE/created-dirs"
fi

# State: logs stay for reading (.cluster/logs), the rest goes.
rm -rf "$STATE"/{pids,sock,etcd,containerd,cni,conf,pki,sysctl,pod-logs,created-dirs,kubeconfig,csms.env,csms.json,overlay-*} 2>/dev/null
for h in /sys/fs/cgroup/*/; do
  [[ -d "$h$CGROUP_ROOT" ]] && { log "warning: $h$CGROUP_ROOT is still there (a process left in it?)"; exit 1; }
done
left=$(grep -c "dew-csi" /proc/mounts)
if (( left > 0 )); then log "warning: mounts still naming dew-csi:"; grep dew-csi /proc/mounts >&2; exit 1; fi
log "cluster down"
