#!/usr/bin/env bash
# Builds the cluster's images without a Docker engine (buildah, chroot isolation, vfs storage in
# ~/.cache/dew-csi/buildah, host network for RUN steps: no bridge, no iptables) and pushes them to
# the local registry. Test infrastructure, not product.
#
#   hack/build-images.sh build   # images into buildah's private store (cached)
#   hack/build-images.sh push    # into the local registry at $REGISTRY (hack/cluster-up.sh runs it)
#   hack/build-images.sh push-upgrade local2   # dew-csi:local2 for the upgrade test
#
# Images:
#   docker.io/library/python:3.11-slim  only in the private store: Debian bookworm's python3 by
#       debootstrap (Docker Hub cannot be reached), so the project's Dockerfile builds unchanged
#   $REGISTRY/dew-csi:local             the project's own Dockerfile
#   $REGISTRY/library/nginx:{latest,alpine}  static busybox serving httpd on :80 (the guide's images;
#       containerd mirrors docker.io to the registry)
#   $REGISTRY/dew-csi-hack/pause:local  the sandbox image (hack/pause/pause.c)
#   $REGISTRY/dew-csi-hack/csi-node-driver-registrar:local, .../csi-livenessprobe:local
source "$(dirname "$0")/lib.sh"

REGISTRY="${REGISTRY:-127.0.0.1:${DEW_CSI_REGISTRY_PORT:-15000}}"
BUILDAH=(buildah --root "$CACHE_DIR/buildah/root" --runroot "$CACHE_DIR/buildah/run" --storage-driver vfs)
BASE=docker.io/library/python:3.11-slim
WORK="$CACHE_DIR/images-work"

have() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# scratch_image NAME DIR CMD...: an image of DIR's contents with CMD as its entrypoint.
scratch_image() {
  local name="$1" dir="$2"; shift 2
  local c; c=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$c" "$dir" / >/dev/null
  "${BUILDAH[@]}" config --entrypoint "$(printf '%s\n' "$@" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split()))')" --cmd '' "$c"
  "${BUILDAH[@]}" commit --rm -q "$c" "$name" >/dev/null
}

build_base() {
  have "$BASE" && return 0
  command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
  local root="$WORK/python-rootfs"
  rm -rf "$root"; mkdir -p "$root"
  log "debootstrap bookworm with python3 (Docker Hub's python:3.11-slim cannot be pulled here)"
  nice -n 19 debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
  # pip installs into the system Python in this image, as in python:3.11-slim (PEP 668 marker off).
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  # The host's CA bundle: pip and apt inside the build see the same TLS as the host.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -cf "$WORK/python-rootfs.tar" .
  local c; c=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" add "$c" "$WORK/python-rootfs.tar" / >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$c"
  "${BUILDAH[@]}" commit --rm -q "$c" dew-csi-hack/python:3.11-bookworm >/dev/null
  "${BUILDAH[@]}" tag dew-csi-hack/python:3.11-bookworm "$BASE"
  rm -rf "$root" "$WORK/python-rootfs.tar"
}

# A digest of what the Dockerfile copies (its .dockerignore allow-list) and the Dockerfile itself:
# with vfs storage even a fully cached `buildah bud` takes ~50 s, so an unchanged context skips it.
context_digest() {
  (cd "$REPO_DIR" && find Dockerfile .dockerignore pyproject.toml README.md src deploy/crds examples \
      -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum) \
    | sha256sum | cut -d' ' -f1
}

build_dew_csi() {
  local digest; digest=$(context_digest)
  if have dew-csi-hack/dew-csi:local && [[ "$(cat "$WORK/dew-csi.digest" 2>/dev/null)" == "$digest" ]]; then
    log "dew-csi image is up to date (same build context)"
    return 0
  fi
  log "building dew-csi from the project's Dockerfile (base: $BASE from debootstrap)"
  nice -n 19 "${BUILDAH[@]}" bud --isolation chroot --network host --layers --pull=never \
    -f "$REPO_DIR/Dockerfile" -t dew-csi-hack/dew-csi:local "$REPO_DIR" >"$WORK/dew-csi-build.log" 2>&1 \
    || { tail -30 "$WORK/dew-csi-build.log" >&2; die "image build failed (log: $WORK/dew-csi-build.log)"; }
  echo "$digest" >"$WORK/dew-csi.digest"
}

build_small() {
  local d="$WORK/rootfs"
  if ! have dew-csi-hack/nginx:local; then
    rm -rf "$d"; mkdir -p "$d/bin" "$d/www" "$d/tmp" "$d/etc"
    cp /bin/busybox "$d/bin/busybox"
    for a in $(/bin/busybox --list); do [[ "$a" == busybox ]] || ln -sf busybox "$d/bin/$a"; done
    echo '<h1>busybox httpd standing in for nginx</h1>' >"$d/www/index.html"
    echo 'root:x:0:0:root:/:/bin/sh' >"$d/etc/passwd"
    scratch_image dew-csi-hack/nginx:local "$d" /bin/httpd -f -v -p 80 -h /www
  fi
  if ! have dew-csi-hack/pause:local; then
    rm -rf "$d"; mkdir -p "$d"
    gcc -static -Os -s -o "$d/pause" "$HACK_DIR/pause/pause.c"
    scratch_image dew-csi-hack/pause:local "$d" /pause
  fi
  for t in csi-node-driver-registrar csi-livenessprobe; do
    have "dew-csi-hack/$t:local" && continue
    rm -rf "$d"; mkdir -p "$d"
    cp "$TOOLS_BIN/$t" "$d/$t"
    scratch_image "dew-csi-hack/$t:local" "$d" "/$t"
  done
  rm -rf "$d"
}

push() { # push LOCAL REMOTE
  "${BUILDAH[@]}" push -q --tls-verify=false "$1" "docker://$REGISTRY/$2" >/dev/null
}

case "${1:-build}" in
  build)
    mkdir -p "$WORK"
    build_base
    build_dew_csi
    build_small
    ;;
  push)
    push dew-csi-hack/dew-csi:local dew-csi:local
    push dew-csi-hack/nginx:local library/nginx:latest
    push dew-csi-hack/nginx:local library/nginx:alpine
    push dew-csi-hack/pause:local dew-csi-hack/pause:local
    push dew-csi-hack/csi-node-driver-registrar:local dew-csi-hack/csi-node-driver-registrar:local
    push dew-csi-hack/csi-livenessprobe:local dew-csi-hack/csi-livenessprobe:local
    ;;
  push-upgrade)
    # A second dew-csi image for tests/cluster's upgrade test: the same build with one more label
    # (so a different image id), pushed as dew-csi:TAG.
    tag="${2:?usage: $0 push-upgrade TAG}"
    c=$("${BUILDAH[@]}" from --pull=never dew-csi-hack/dew-csi:local)
    "${BUILDAH[@]}" config --label "io.dew-csi.hack.upgrade=$tag" "$c"
    "${BUILDAH[@]}" commit --rm -q "$c" "dew-csi-hack/dew-csi:$tag" >/dev/null
    push "dew-csi-hack/dew-csi:$tag" "dew-csi:$tag"
    ;;
  *) die "usage: $0 build|push|push-upgrade TAG" ;;
esac
