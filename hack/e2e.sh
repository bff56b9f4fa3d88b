#!/usr/bin/env bash
# `make e2e`: the whole loop on a real node. Builds (or finds cached) what it needs, then runs
# tests/e2e.rs inside hack/realnode-up.sh --run, which starts a control plane, containerd and
# a kubelet on this machine, imports the image, and removes everything when it ends.
# Needs root (the node's mounts, cgroups and network). Each stage prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
export IMAGE="${IMAGE:-recac:dev}"

stage() {
  local name="$1"; shift
  local begun=$SECONDS
  echo "== e2e: $name" >&2
  "$@"
  echo "== e2e: $name took $((SECONDS - begun)) s" >&2
}

[ "$(id -u)" -eq 0 ] || { echo "e2e: needs root (a kubelet and containerd run on this machine)" >&2; exit 1; }
stage "control plane binaries" hack/envtest.sh >/dev/null
stage "node binaries" hack/realnode.sh >/dev/null
stage "helm" hack/helm.sh >/dev/null
RECAC_HELM="$(hack/helm.sh | tail -n 1)"
export RECAC_HELM
stage "release binary" "$CARGO" build --release -p recac
stage "image" env RECAC_BINARY=target/release/recac hack/image.sh >/dev/null
stage "e2e test build" "$CARGO" test -p recac-tests --test e2e --no-run
stage "e2e on a real node" hack/realnode-up.sh --run \
  "$CARGO" test -p recac-tests --test e2e -- --ignored --nocapture
