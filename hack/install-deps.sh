#!/usr/bin/env bash
# Debian packages `make cluster` needs (test infrastructure, not product): installed only when one
# is missing, with one `apt-get update` first. Go comes with the machine.
source "$(dirname "$0")/lib.sh"
PKGS=(containerd runc containernetworking-plugins docker-registry buildah debootstrap
      busybox-static socat iptables conntrack iproute2 util-linux openssl curl bc gcc libc6-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ $EUID -eq 0 ]] || die "installing ${missing[*]} needs root"
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v kubectl >/dev/null || die "kubectl is missing (the tests use the real kubectl on PATH)"
