#!/usr/bin/env bash
# Builds (or finds cached) what a real Kubernetes node needs on this kind of
# machine (no container engine, no registry; see hack/realnode-up.sh, which
# uses them): kubelet and kube-scheduler (from the k8s.io/kubernetes Go module,
# like hack/envtest.sh), containerd with containerd-shim-runc-v2 and ctr, runc,
# and the pause image (a static pause binary from the Kubernetes sources,
# packaged as a docker-archive tarball tagged registry.k8s.io/pause:3.10,
# importable with `ctr -n k8s.io images import`).
#
# Layout, keyed by versions:
#   <cache root>/k8s-v<K8S>-containerd-v<C>-runc-v<R>/bin/{kubelet,kube-scheduler,containerd,
#       containerd-shim-runc-v2,ctr,runc}
#   <cache root>/k8s-v<K8S>-containerd-v<C>-runc-v<R>/images/pause.tar
# The CNI plugins are Debian's (containernetworking-plugins, in /usr/lib/cni).
# Progress goes to stderr; the bin folder's absolute path is the last line.
#
#   K8S_VERSION          Kubernetes version (default 1.37.2)
#   CONTAINERD_VERSION   containerd version (default 2.2.9)
#   RUNC_VERSION         runc version (default 1.3.4)
#   PAUSE_IMAGE          tag of the pause image (default registry.k8s.io/pause:3.10)
#   RECAC_REALNODE_DIR   cache root (default $HOME/.cache/recac/realnode)
#
# Debian packages it needs are installed (apt-get, as root) only when missing:
# containernetworking-plugins, libseccomp-dev and pkg-config (runc's seccomp
# support), iproute2.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib-k8s.sh
. "$here/lib-k8s.sh"

k8s_version="${K8S_VERSION:-1.37.2}"
containerd_version="${CONTAINERD_VERSION:-2.2.9}"
runc_version="${RUNC_VERSION:-1.3.4}"
pause_image="${PAUSE_IMAGE:-registry.k8s.io/pause:3.10}"
cache_root="${RECAC_REALNODE_DIR:-$HOME/.cache/recac/realnode}"
dest="$cache_root/k8s-v${k8s_version}-containerd-v${containerd_version}-runc-v${runc_version}"
bin="$dest/bin"
images="$dest/images"
pause_tag_file="$images/pause.tar.tag"

log() { echo "realnode: $*" >&2; }

have() { [ -x "$bin/$1" ]; }

have_all() {
  for b in kubelet kube-scheduler containerd containerd-shim-runc-v2 ctr runc; do
    have "$b" || return 1
  done
  [ -s "$images/pause.tar" ] && [ "$(cat "$pause_tag_file" 2>/dev/null)" = "$pause_image" ]
}

if have_all && [ -x /usr/lib/cni/bridge ]; then
  echo "$bin"
  exit 0
fi

deb_need containernetworking-plugins iproute2
if have_all; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { log "Go is required to build the node binaries"; exit 1; }
mkdir -p "$bin" "$images"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
unset GOFLAGS

timed() {
  local what="$1" start=$SECONDS
  shift
  "$@"
  log "$what took $((SECONDS - start)) s"
}

# runc: cgo for libseccomp (the RuntimeDefault seccomp profile needs it).
build_runc() {
  deb_need libseccomp-dev pkg-config gcc libc6-dev
  log "building runc v$runc_version"
  GOBIN="$bin" CGO_ENABLED=1 go install -trimpath -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-s -w" "github.com/opencontainers/runc@v$runc_version" >&2
}

# containerd, its runc shim and ctr: no cgo, no btrfs/devmapper/zfs snapshotters.
build_containerd() {
  log "building containerd v$containerd_version"
  local m="github.com/containerd/containerd/v2"
  GOBIN="$bin" CGO_ENABLED=0 go install -trimpath -tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs" \
    -ldflags "-s -w -X $m/version.Version=v$containerd_version -X $m/version.Package=$m" \
    "$m/cmd/containerd@v$containerd_version" \
    "$m/cmd/containerd-shim-runc-v2@v$containerd_version" \
    "$m/cmd/ctr@v$containerd_version" >&2
}

# kubelet and kube-scheduler: the same wrapper module and flags as envtest.sh
# (a warm Go build cache from `make envtest` makes this much shorter).
build_k8s() {
  log "building kubelet and kube-scheduler v$k8s_version (takes a while the first time)"
  mkdir -p "$work/k8s"
  (cd "$work/k8s" && k8s_build "$k8s_version" "$bin" kubelet kube-scheduler)
}

# tar_to FILE DIR ARGS...: a reproducible tar of DIR's ARGS (root-owned, mtime 0).
tar_to() {
  local out="$1" dir="$2"
  shift 2
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C "$dir" -cf "$out" "$@"
}

# The pause image: k8s.io/kubernetes's build/pause/linux/pause.c built static,
# one layer with /pause, in a docker-archive tarball (what `docker save` writes).
build_pause() {
  deb_need gcc libc6-dev
  log "building the pause image $pause_image"
  local src
  src="$(go mod download -json "k8s.io/kubernetes@v$k8s_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/build/pause/linux/pause.c"
  [ -f "$src" ] || { log "no $src"; return 1; }
  local tag="${pause_image##*:}"
  local d="$work/pause"
  mkdir -p "$d/root" "$d/archive"
  cc -Os -Wall -Werror -static -DVERSION="v$tag-recac" -o "$d/root/pause" "$src"
  strip "$d/root/pause"
  tar_to "$d/layer.tar" "$d/root" pause
  local diff_id
  diff_id="$(sha256sum "$d/layer.tar" | cut -d' ' -f1)"
  mkdir -p "$d/archive/$diff_id"
  mv "$d/layer.tar" "$d/archive/$diff_id/layer.tar"
  cat > "$d/config.json" <<EOF
{"architecture":"$(go env GOARCH)","os":"linux","created":"1970-01-01T00:00:00Z","config":{"User":"65535:65535","Entrypoint":["/pause"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"hack/realnode.sh: cc -static build/pause/linux/pause.c"}]}
EOF
  local config_id
  config_id="$(sha256sum "$d/config.json" | cut -d' ' -f1)"
  mv "$d/config.json" "$d/archive/$config_id.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$config_id" "$pause_image" "$diff_id" > "$d/archive/manifest.json"
  tar_to "$images/pause.tar.tmp" "$d/archive" manifest.json "$config_id.json" "$diff_id"
  mv "$images/pause.tar.tmp" "$images/pause.tar"
  echo "$pause_image" > "$pause_tag_file"
}

have runc || timed "runc" build_runc
{ have containerd && have containerd-shim-runc-v2 && have ctr; } || timed "containerd" build_containerd
{ [ -s "$images/pause.tar" ] && [ "$(cat "$pause_tag_file" 2>/dev/null)" = "$pause_image" ]; } || timed "pause image" build_pause
{ have kubelet && have kube-scheduler; } || timed "kubelet and kube-scheduler" build_k8s

have_all || { log "build finished but something is missing in $dest"; exit 1; }
log "runc: $("$bin/runc" --version | head -n 1); containerd: $("$bin/containerd" --version); kubelet: $("$bin/kubelet" --version)"
echo "$bin"
