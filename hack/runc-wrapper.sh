#!/bin/sh
# containerd's runc for the local cluster (hack/cluster-up.sh sets it as the runc runtime's
# BinaryName). This machine's root lacks CAP_SYS_RESOURCE, so no process may lower an
# oom_score_adj below 0; the kubelet asks for -997 for Guaranteed and node-critical pods
# (both of dew-csi's DaemonSets), and runc then fails with "failed to update
# /proc/self/oom_score_adj: Permission denied" ("can't get final child's PID from pipe: EOF").
# This raises a negative process.oomScoreAdj to 0 in the bundle's config.json (runc create) or
# the --process file (runc exec), then runs the real runc. Test infrastructure, not product.
set -eu
prev=
for a in "$@"; do
  case "$prev" in
    --bundle|-b) f="$a/config.json" ;;
    --process|-p) f="$a" ;;
    *) f= ;;
  esac
  if [ -n "$f" ] && [ -f "$f" ]; then
    python3 - "$f" <<'PY'
import json, sys
path = sys.argv[1]
with open(path) as fh:
    spec = json.load(fh)
proc = spec.get("process", spec)  # config.json has "process"; an exec's process file is one
if isinstance(proc, dict) and (proc.get("oomScoreAdj") or 0) < 0:
    proc["oomScoreAdj"] = 0
    with open(path, "w") as fh:
        json.dump(spec, fh)
PY
  fi
  prev="$a"
done
exec runc "$@"
