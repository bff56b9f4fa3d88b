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

minor="$(echo "$k8s_version" | cut -d. -f2)"

# Kubernetes: k8s.io/kubernetes requires its staging modules at v0.0.0 through
# local replace lines, so a wrapper module pins each of them to v0.<minor>.<patch>.
if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kube-controller-manager" ] || [ ! -x "$bin/kubectl" ]; then
  echo "envtest: building Kubernetes v$k8s_version (takes a while the first time)" >&2
  mkdir -p "$work/k8s"
  cd "$work/k8s"
  gomod="$(go mod download -json "k8s.io/kubernetes@v$k8s_version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  staging_version="v0.${minor}.${k8s_version##*.}"
  {
    echo "module recac.io/envtest"
    echo
    echo "go 1.25"
    echo
    echo "require k8s.io/kubernetes v$k8s_version"
    echo
    echo "replace ("
    grep -oE 'k8s.io/[a-z0-9-]+ => ./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } > go.mod
  go mod download >&2 || true
  go get "k8s.io/kubernetes/cmd/kube-apiserver@v$k8s_version" >&2
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  go build -ldflags "$ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl >&2
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
