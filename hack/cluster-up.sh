#!/usr/bin/env bash
# `make cluster`: a real single-node Kubernetes on this machine, with dew-csi installed by
# `kubectl apply -k hack/overlays/local`. Test infrastructure, not product (hack/README.md).
#
# Everything the cluster runs lives in one network namespace ($NETNS, made here with
# `ip netns add`) and one mount namespace ($STATE/mntns): etcd, the control plane, containerd,
# kubelet, kube-proxy and the pods. The host's network configuration, mounts and cgroup mounts
# are not changed. Host loopback and the namespace are joined by socat through unix sockets:
#   host 127.0.0.1:$APISERVER_HOST_PORT  -> API server $NODE_IP:6443 (kubectl on the host)
#   node 127.0.0.1:$REGISTRY_PORT       -> host registry 127.0.0.1:$REGISTRY_PORT (containerd)
#   node $NODE_IP:$CSMS_PORT            -> host CSMS emulator 127.0.0.1:$CSMS_PORT (dew-provider)
# Writes $STATE/kubeconfig (admin) and $STATE/csms.env; returns when the node is Ready and both
# DaemonSets and the webhook are ready. `make cluster-down` undoes all of it.
source "$(dirname "$0")/lib.sh"

[[ $EUID -eq 0 ]] || die "make cluster needs root (namespaces, mounts, containerd)"
command -v go >/dev/null || die "make cluster needs Go (the control plane is built from source)"
VENV_BIN="${VENV_BIN:-$REPO_DIR/.venv/bin}"
[[ -x "$VENV_BIN/dew-csi" ]] || die "$VENV_BIN/dew-csi is missing (make cluster creates .venv first)"
for b in containerd runc socat buildah debootstrap docker-registry iptables kubectl openssl; do
  command -v "$b" >/dev/null || die "$b is missing: hack/install-deps.sh installs Debian's packages"
done
if [[ -z "${DEW_CSI_PHASES:-}" ]] && [[ -e "/run/netns/$NETNS" || -e "$STATE/pids" ]]; then
  die "a cluster is already up (or was not taken down): run make cluster-down first"
fi

T_START=$(date +%s.%N)
mkdir -p "$STATE"/{pki,conf,logs,pids,sock,cni/net.d,cni/ipam,containerd/certs.d,etcd,pod-logs}
PKI="$STATE/pki"
CONF="$STATE/conf"
export KUBECONFIG="$STATE/kubeconfig"

# start NAME [node] CMD...: a background process with its log and pid file.
start() {
  local name="$1"; shift
  local prefix=()
  if [[ "$1" == node ]]; then shift; prefix=(nsenter --net="/run/netns/$NETNS" --mount="$MNTNS" --); fi
  setsid "${prefix[@]}" "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name.pid"
}

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) > end )); then
      log "timed out after ${secs}s waiting for $what; the last lines of the logs:"
      tail -n 5 "$STATE"/logs/*.log >&2 || true
      return 1
    fi
    sleep 1
  done
}

builds() {
  "$HACK_DIR/build-kube.sh"
  "$HACK_DIR/build-tools.sh"
  "$HACK_DIR/build-images.sh" build
}

# --- certificates (openssl): one CA for the API server, clients and kubelet
cert() { # cert NAME CN [O] [SANS]: a client/server certificate signed by the cluster CA
  local name="$1" cn="$2" o="${3:-}" sans="${4:-}" subj="/CN=$2"
  [[ -n "$o" ]] && subj="/O=$o/CN=$cn"
  openssl req -new -newkey rsa:2048 -nodes -subj "$subj" -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$sans" ]]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$sans"
    else echo "extendedKeyUsage=clientAuth"; fi
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 30 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

kubeconfig() { # kubeconfig FILE SERVER USER CERTNAME
  local file="$1" server="$2" user="$3" c="$4"
  kubectl config --kubeconfig="$file" set-cluster local --server="$server" --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
  kubectl config --kubeconfig="$file" set-credentials "$user" --client-certificate="$PKI/$c.crt" --client-key="$PKI/$c.key" --embed-certs=true >/dev/null
  kubectl config --kubeconfig="$file" set-context local --cluster=local --user="$user" >/dev/null
  kubectl config --kubeconfig="$file" use-context local >/dev/null
}

pki() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=dew-csi-hack-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  cert apiserver kube-apiserver "" \
    "IP:$NODE_IP,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin dew-csi-admin system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert kube-proxy system:kube-proxy
  cert kubelet "system:node:$NODE_NAME" system:nodes "IP:$NODE_IP,DNS:$NODE_NAME"
  # Service-account token signing (API server signs, controller manager's token controller too).
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  local inner="https://$NODE_IP:6443"
  kubeconfig "$STATE/kubeconfig" "https://127.0.0.1:$APISERVER_HOST_PORT" dew-csi-admin admin
  kubeconfig "$CONF/admin.kubeconfig" "$inner" dew-csi-admin admin
  kubeconfig "$CONF/controller-manager.kubeconfig" "$inner" system:kube-controller-manager controller-manager
  kubeconfig "$CONF/scheduler.kubeconfig" "$inner" system:kube-scheduler scheduler
  kubeconfig "$CONF/kube-proxy.kubeconfig" "$inner" system:kube-proxy kube-proxy
  kubeconfig "$CONF/kubelet.kubeconfig" "$inner" "system:node:$NODE_NAME" kubelet
}

# --- the node's namespaces
namespaces() {
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  # The node's own address, on a veth pair whose both ends stay in the namespace (this kernel has
  # no dummy device). Its default route goes nowhere: nothing leaves the namespace by routing.
  ip -n "$NETNS" link add node0 type veth peer name node0-peer
  ip -n "$NETNS" addr add "$NODE_IP/32" dev node0
  ip -n "$NETNS" link set node0-peer up
  ip -n "$NETNS" link set node0 up
  ip -n "$NETNS" route add default dev node0

  # A persistent mount namespace (bind-mounted on $MNTNS, private so nothing leaks to the host).
  touch "$MNTNS"
  unshare --mount="$MNTNS" --propagation private true
  # Host directories the node's mounts go over; created (empty) only if missing and recorded
  # so that cluster-down removes exactly those.
  : >"$STATE/created-dirs"
  for d in /mnt/paas /var/lib/cni /var/log/containers; do
    if [[ ! -d "$d" ]]; then mkdir -p "$d"; echo "$d" >>"$STATE/created-dirs"; fi
  done
  # kubelet sets host-global sysctls it wants (vm.overcommit_memory=1, kernel.panic=10,
  # kernel.panic_on_oops=1); with protectKernelDefaults it only checks them. The node's mount
  # namespace shows it the values it wants, the host keeps its own.
  mkdir -p "$STATE/sysctl"
  echo 1 >"$STATE/sysctl/overcommit_memory"; echo 10 >"$STATE/sysctl/panic"; echo 1 >"$STATE/sysctl/panic_on_oops"
  nsenter --mount="$MNTNS" -- sh -euc "
    mount --make-rshared /
    mount -t tmpfs -o mode=0755 dew-csi-run /run
    mkdir -p /run/netns /run/containerd
    mount -t tmpfs -o mode=0755 dew-csi-kubelet /mnt/paas
    mkdir -p $KUBELET_ROOT
    mount -t tmpfs -o mode=0755 dew-csi-cni /var/lib/cni
    mount -t tmpfs -o mode=0755 dew-csi-containers /var/log/containers
    mount --bind $STATE/sysctl/overcommit_memory /proc/sys/vm/overcommit_memory
    mount --bind $STATE/sysctl/panic /proc/sys/kernel/panic
    mount --bind $STATE/sysctl/panic_on_oops /proc/sys/kernel/panic_on_oops
  "
  # The pods' cgroup, in every v1 hierarchy (the mounts are the host's, unchanged).
  for h in /sys/fs/cgroup/*/; do
    mkdir -p "$h$CGROUP_ROOT"
    if [[ -f "${h}cpuset.cpus" ]]; then
      cat "${h}cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
      cat "${h}cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

# bridge_in HOSTPORT NODEADDR NAME: the host's 127.0.0.1:HOSTPORT reachable in the node at NODEADDR
bridge_in() {
  local hp="$1" addr="$2" name="$3" sock="$STATE/sock/$3.sock"
  start "bridge-$name-host" socat "UNIX-LISTEN:$sock,fork,unlink-early" "TCP:127.0.0.1:$hp"
  wait_for "$sock" 10 test -S "$sock"
  start "bridge-$name-node" node socat "TCP-LISTEN:${addr##*:},bind=${addr%:*},fork,reuseaddr" "UNIX-CONNECT:$sock"
}

host_services() {
  # The local registry (Debian's docker-registry), storage cached across clusters.
  mkdir -p "$CACHE_DIR/registry"
  cat >"$CONF/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $CACHE_DIR/registry}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$REGISTRY_PORT
EOF
  start registry docker-registry serve "$CONF/registry.yml"
  wait_for "the registry" 30 curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/"
  "$HACK_DIR/build-images.sh" push

  # The CSMS emulator on the host, with the same keys as the sandbox's csms.env.
  local ak sk project
  ak=$(python3 -c 'import secrets,string; print("".join(secrets.choice(string.ascii_uppercase+string.digits) for _ in range(20)))')
  sk=$(python3 -c 'import secrets,string; print("".join(secrets.choice(string.ascii_letters+string.digits) for _ in range(40)))')
  project=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  start csms-emulator "$VENV_BIN/dew-csi" csms-emulator --listen "127.0.0.1:$CSMS_PORT" \
    --project-id "$project" --ak "$ak" --sk "$sk" --state "$STATE/csms.json"
  umask 077
  cat >"$STATE/csms.env" <<EOF
CSMS_ENDPOINT=http://127.0.0.1:$CSMS_PORT
HUAWEICLOUD_SDK_AK=$ak
HUAWEICLOUD_SDK_SK=$sk
HUAWEICLOUD_SDK_PROJECT_ID=$project
EOF
  umask 022
  wait_for "the CSMS emulator" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$CSMS_PORT"

  bridge_in "$REGISTRY_PORT" "127.0.0.1:$REGISTRY_PORT" registry
  bridge_in "$CSMS_PORT" "$NODE_IP:$CSMS_PORT" csms
}

control_plane() {
  start etcd node "$TOOLS_BIN/etcd" --name=node --data-dir="$STATE/etcd" \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=node=http://127.0.0.1:2380 --quota-backend-bytes=1073741824
  wait_for etcd 60 in_node curl -fsS http://127.0.0.1:2379/health

  start kube-apiserver node "$KUBE_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$NODE_IP" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true --profiling=false --v=1
  start bridge-apiserver-node node socat "UNIX-LISTEN:$STATE/sock/apiserver.sock,fork,unlink-early" "TCP:$NODE_IP:6443"
  wait_for "$STATE/sock/apiserver.sock" 10 test -S "$STATE/sock/apiserver.sock"
  start bridge-apiserver-host socat "TCP-LISTEN:$APISERVER_HOST_PORT,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$STATE/sock/apiserver.sock"
  wait_for "the API server" 120 kubectl get --raw /readyz

  start kube-controller-manager node "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig="$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CONF/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CONF/controller-manager.kubeconfig" \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --controllers='*' --leader-elect=false --bind-address=127.0.0.1 --v=1
  start kube-scheduler node "$KUBE_BIN/kube-scheduler" \
    --kubeconfig="$CONF/scheduler.kubeconfig" \
    --authentication-kubeconfig="$CONF/scheduler.kubeconfig" \
    --authorization-kubeconfig="$CONF/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --v=1
  # The namespace's ServiceAccount "default" appears once the token controllers run.
  wait_for "the controller manager" 120 kubectl -n default get serviceaccount default
}

node() {
  local root="$STATE/containerd"
  cat >"$CONF/containerd.toml" <<EOF
version = 2
root = "$root/root"
state = "/run/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "127.0.0.1:$REGISTRY_PORT/dew-csi-hack/pause:local"
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # No CAP_SYS_RESOURCE here: runc cannot set the kubelet's negative oom_score_adj.
        BinaryName = "$HACK_DIR/runc-wrapper.sh"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$root/certs.d"
EOF
  # docker.io is mirrored by the local registry; the registry itself speaks plain HTTP.
  mkdir -p "$root/certs.d/docker.io" "$root/certs.d/127.0.0.1:$REGISTRY_PORT"
  cat >"$root/certs.d/docker.io/hosts.toml" <<EOF
server = "https://registry-1.docker.io"
[host."http://127.0.0.1:$REGISTRY_PORT"]
  capabilities = ["pull", "resolve"]
EOF
  cat >"$root/certs.d/127.0.0.1:$REGISTRY_PORT/hosts.toml" <<EOF
server = "http://127.0.0.1:$REGISTRY_PORT"
EOF
  cat >"$STATE/cni/net.d/10-dew-csi.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "dew-csi",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
               "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  start containerd node containerd --config "$CONF/containerd.toml"
  wait_for containerd 60 in_node test -S /run/containerd/containerd.sock

  cat >"$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines mount cgroup v1: kubelet 1.35+ refuses it unless told not to.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
# Checked, not set: the node's mount namespace shows kubelet the values it wants.
protectKernelDefaults: true
failSwapOn: false
podLogsDir: $STATE/pod-logs
serializeImagePulls: false
maxPods: 40
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
syncFrequency: 10s
# Lowering an oom_score_adj needs CAP_SYS_RESOURCE, which this machine's root lacks.
oomScoreAdj: 0
EOF
  start kubelet node "$KUBE_BIN/kubelet" --config="$CONF/kubelet.yaml" \
    --kubeconfig="$CONF/kubelet.kubeconfig" --root-dir="$KUBELET_ROOT" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1

  cat >"$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CONF/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
# Pod -> Service -> pod on the same bridge: masquerading sends the reply back through the node,
# so it is un-NATed without br_netfilter (a host-wide setting this script does not touch).
iptables: {masqueradeAll: true}
# Conntrack limits are host-wide: leave them alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
oomScoreAdj: 0
EOF
  start kube-proxy node "$KUBE_BIN/kube-proxy" --config="$CONF/kube-proxy.yaml" --v=1
  wait_for "the node to be Ready" 180 kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
}

install_dew_csi() {
  # As a user of the guide would: the CCE default pull secret, the CSMS credentials Secret and the
  # webhook's TLS Secret (as deploy/README.md shows), then kubectl apply -k.
  kubectl -n default create secret docker-registry default-secret \
    --docker-server=docker.io --docker-username=local --docker-password=local >/dev/null
  # shellcheck disable=SC1091
  source "$STATE/csms.env"
  kubectl -n kube-system create secret generic dew-csi-credentials \
    --from-literal=ak="$HUAWEICLOUD_SDK_AK" --from-literal=sk="$HUAWEICLOUD_SDK_SK" \
    --from-literal=project_id="$HUAWEICLOUD_SDK_PROJECT_ID" >/dev/null
  local svc=dew-csi-webhook ns=kube-system d="$PKI/webhook"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$svc-ca" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$svc.$ns.svc" -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\n' $svc $ns $svc $ns >"$d/ext.cnf"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
    -extfile "$d/ext.cnf" -out "$d/tls.crt" 2>/dev/null
  kubectl -n $ns create secret tls $svc-tls --cert="$d/tls.crt" --key="$d/tls.key" >/dev/null

  kubectl apply -k "$REPO_DIR/hack/overlays/local" >"$STATE/logs/apply.log"
  kubectl patch validatingwebhookconfiguration $svc --type=json -p \
    '[{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"'"$(base64 -w0 "$d/ca.crt")"'"}]' >/dev/null
  kubectl -n kube-system rollout status daemonset/csi-secrets-store --timeout=300s
  kubectl -n kube-system rollout status daemonset/dew-provider --timeout=300s
  kubectl -n kube-system rollout status deployment/dew-csi-webhook --timeout=300s
}

# DEW_CSI_PHASES="pki namespaces ..." runs only those phases (for debugging this script).
run_phase() { # run_phase FUNC TITLE
  if [[ -n "${DEW_CSI_PHASES:-}" && " $DEW_CSI_PHASES " != *" $1 "* ]]; then return 0; fi
  phase "$2" "$1"
}
run_phase builds "builds (cached in $CACHE_DIR)"
run_phase pki "certificates"
run_phase namespaces "namespaces ($NETNS, $MNTNS)"
run_phase host_services "registry, images, CSMS emulator"
run_phase control_plane "control plane (etcd, kube-apiserver $KUBE_VERSION, controller manager, scheduler)"
run_phase node "node (containerd, kubelet, kube-proxy)"
run_phase install_dew_csi "dew-csi (kubectl apply -k hack/overlays/local)"
printf '==> cluster up in %.0fs: export KUBECONFIG=%s (CSMS: %s)\n' \
  "$(echo "$(date +%s.%N) - $T_START" | bc)" "$STATE/kubeconfig" "$STATE/csms.env" >&2
