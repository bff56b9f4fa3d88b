#!/usr/bin/env bash
# Builds (or finds cached) the helm binary that renders and lints charts/recac
# (crates/recac/tests/helm.rs), from the helm.sh/helm/v3 Go module. It lands
# outside the checkout, keyed by version; its absolute path is printed as the
# last line. Progress goes to stderr.
#
#   HELM_VERSION    Helm version (default 3.22.0)
#   RECAC_HELM_DIR  cache root (default $HOME/.cache/recac/helm)
set -euo pipefail

helm_version="${HELM_VERSION:-3.22.0}"
helm_version="${helm_version#v}"
cache_root="${RECAC_HELM_DIR:-$HOME/.cache/recac/helm}"
dest="$cache_root/v${helm_version}"
bin="$dest/helm"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "helm: Go is required to build helm" >&2; exit 1; }
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0

echo "helm: building helm v$helm_version (takes a few minutes the first time)" >&2
begun=$SECONDS
cd "$work"
# A wrapper module: helm.sh/helm/v3 carries no replace lines, so requiring it
# pins every dependency to the versions of its own go.mod.
printf 'module recac.io/helm\n\ngo 1.25\n' > go.mod
go get "helm.sh/helm/v3@v$helm_version" >&2

# The -ldflags of helm's Makefile: the version `helm version` reports, and the
# Kubernetes version that `helm template` / `helm lint` assume (.Capabilities),
# taken from the k8s.io/client-go that this helm is built with (v0.37.0 -> 1.37).
client_go="$(go list -m -f '{{.Version}}' k8s.io/client-go)"
k8s_minor="$(echo "$client_go" | cut -d. -f2)"
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=v$helm_version"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done

# Built next to the destination, then renamed: an interrupted build leaves no
# half-written binary for the next run to find.
go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" helm.sh/helm/v3/cmd/helm >&2
mv "$bin.tmp" "$bin"
echo "helm: built $("$bin" version --short) in $((SECONDS - begun)) s" >&2

[ -x "$bin" ] || { echo "helm: build finished but $bin is missing" >&2; exit 1; }
echo "$bin"
