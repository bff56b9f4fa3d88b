#!/usr/bin/env bash
# `recac dev --real-node` (and `make dev-real-node`): the demo of `recac dev` on a real node.
# Builds (or finds cached) the control plane's and the node's binaries and the image (with
# RECAC_BINARY in it, default: a release build of this checkout), then runs
# `RECAC_BINARY dev ARGS...` inside hack/realnode-up.sh --run, which starts etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, containerd and a kubelet on this
# machine and removes them all when the command ends (Ctrl-C included).
# Needs root. ARGS are `recac dev`'s options; --real-node is added when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
export IMAGE="${IMAGE:-recac:dev}"

[ "$(id -u)" -eq 0 ] || { echo "dev-real-node: needs root (a kubelet and containerd run on this machine)" >&2; exit 1; }
binary="${RECAC_BINARY:-}"
if [ -z "$binary" ]; then
  "$CARGO" build --release -p recac
  binary="$PWD/target/release/recac"
fi
echo "dev-real-node: the control plane's and the node's binaries (built once, then cached)" >&2
hack/envtest.sh >/dev/null
hack/realnode.sh >/dev/null
echo "dev-real-node: the image $IMAGE with $binary" >&2
RECAC_BINARY="$binary" hack/image.sh >/dev/null
args=("$@")
case " ${args[*]-} " in *" --real-node "*) ;; *) args+=(--real-node) ;; esac
exec hack/realnode-up.sh --run "$binary" dev "${args[@]}"
