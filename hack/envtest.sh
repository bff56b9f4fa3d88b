#!/usr/bin/env bash
# Builds (or finds cached) the Kubernetes control-plane binaries the tests run:
# etcd, kube-apiserver, kube-controller-manager and kubectl, from Go modules.
# They land in a folder outside the checkout, keyed by version; its absolute
# path is printed as the last line.
#
#   K8S_VERSION        Kubernetes version (default 1.37.2)
#   ETCD_VERSION       etcd version (default 3.6.16)
#   RECAC_ENVTEST_DIR  cache root (default $HOME/.cache/recac/envtest)
set -euo pipefail

# shellcheck source=hack/lib-k8s.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib-k8s.sh"

k8s_version="${K8S_VERSION:-1.37.2}"
etcd_version="${ETCD_VERSION:-3.6.16}"
cache_root="${RECAC_ENVTEST_DIR:-$HOME/.cache/recac/envtest}"
dest="$cache_root/k8s-v${k8s_version}-etcd-v${etcd_version}"
bin="$dest/bin"

have_all() {
  for b in etcd kube-apiserver kube-controller-manager kubectl; do
    [ -x "$bin/$b" ] || return 1
  done
}

if have_all; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "envtest: Go is required to build the control plane" >&2; exit 1; }
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0

# Kubernetes: the wrapper module of hack/lib-k8s.sh (k8s.io/kubernetes's
# staging modules pinned to v0.<minor>.<patch>).
if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kube-controller-manager" ] || [ ! -x "$bin/kubectl" ]; then
  echo "envtest: building Kubernetes v$k8s_version (takes a while the first time)" >&2
  mkdir -p "$work/k8s"
  cd "$work/k8s"
  k8s_build "$k8s_version" "$bin" kube-apiserver kube-controller-manager kubectl
fi

# etcd: its server module carries the etcd main package.
if [ ! -x "$bin/etcd" ]; then
  echo "envtest: building etcd v$etcd_version" >&2
  mkdir -p "$work/etcd"
  cd "$work/etcd"
  printf 'module recac.io/envtest-etcd\n\ngo 1.25\n' > go.mod
  go get "go.etcd.io/etcd/server/v3@v$etcd_version" >&2
  go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 >&2
fi

have_all || { echo "envtest: build finished but binaries are missing in $bin" >&2; exit 1; }
echo "$bin"
