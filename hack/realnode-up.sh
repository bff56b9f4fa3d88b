#!/usr/bin/env bash
# Runs a real Kubernetes node on this machine, probes it with the recac image or runs
# a command against it, and tears everything down again (also on failure, Ctrl-C or
# SIGTERM). Needs root, cgroups (v1 or v2) and overlayfs; no container engine, no registry.
#
#   hack/realnode-up.sh            probe, then tear down
#   REALNODE_HOLD=1 hack/realnode-up.sh
#                                  probe, then keep it running until Ctrl-C (prints
#                                  the KUBECONFIG to use)
#   hack/realnode-up.sh --run CMD [ARG...]
#                                  bring the node up (no probes unless REALNODE_PROBE=1),
#                                  run CMD, tear down, exit with CMD's exit status. CMD
#                                  runs in its own session (process group; on Ctrl-C or
#                                  SIGTERM the harness sends it SIGTERM, SIGKILL after 10 s,
#                                  then tears down) with, exported:
#       KUBECONFIG               the admin kubeconfig (O=system:masters), server
#                                https://REALNODE_NODE_IP:<port>
#       REALNODE_NODE_IP         the node's IP (default 10.99.0.1, on lo): a host service
#                                bound to it is reachable from pods
#       REALNODE_APISERVER_HOST  what a pod uses to reach the apiserver (the node IP;
#                                there is no kube-proxy, so set KUBERNETES_SERVICE_HOST
#       REALNODE_APISERVER_PORT  and KUBERNETES_SERVICE_PORT to these on in-cluster clients)
#       REALNODE_KUBECTL         the kubectl binary (kubectl is also first on PATH)
#       REALNODE_IMAGE           the imported image tag (IMAGE, default recac:dev), use
#                                imagePullPolicy: Never
#       REALNODE_NODE_NAME       the Node's name; REALNODE_CA_FILE the cluster CA
#
# What it starts, all under one temporary folder (REALNODE_KEEP=1 keeps its logs):
#   - its own control plane, from hack/envtest.sh's binaries: etcd on loopback,
#     kube-apiserver on the node IP (serving certificate for the node IP, 127.0.0.1,
#     the first service IP and the kubernetes.default.svc names; client certificates
#     from a CA made here with openssl; the admin is O=system:masters; the ServiceAccount
#     admission plugin on), kube-controller-manager (job, ttl-after-finished, garbage
#     collector, namespace, deployment, replicaset, serviceaccount, serviceaccount-token,
#     root-ca-certificate-publisher controllers, and node lifecycle, which lifts the new
#     node's node.kubernetes.io/not-ready taint; so namespaces get their `default`
#     ServiceAccount and pods a projected token with ca.crt) and kube-scheduler
#     (hack/realnode.sh). Its own, because the apiserver needs
#     --kubelet-preferred-address-types=InternalIP to reach this kubelet for logs, which
#     an arbitrary cluster would not have.
#   - containerd (config version 3, own root/state on a tmpfs, REALNODE_TMPFS=0: on disk;
#     restrict_oom_score_adj because this kind of VM withholds CAP_SYS_RESOURCE; every
#     registry mapped to 127.0.0.1:1, so an image that was not imported fails to pull
#     at once), runc, Debian's CNI plugins with a bridge (REALNODE_BRIDGE, default
#     recac0; pods in REALNODE_POD_CIDR, default 10.99.1.0/24)
#   - the kubelet (cgroupfs driver, failCgroupV1: false, node IP REALNODE_NODE_IP,
#     default 10.99.0.1, added to lo as /32: the kubelet refuses a loopback node IP;
#     makeIPTablesUtilChains: false, so it adds no iptables chains to the host;
#     resolvConf "": no cluster DNS and pods do not get the host's resolvers)
# Each component runs in its own session, so a Ctrl-C reaches only this script, which
# then stops them in order.
# It imports the pause image (hack/realnode.sh) and the recac image (hack/image.sh, or
# the docker-archive in RECAC_IMAGE_ARCHIVE, tagged IMAGE, default recac:dev), waits for
# the Node to be Ready, then (probes) runs, in a namespace enforcing the restricted Pod
# Security Standard, a pod and a Job from the image (imagePullPolicy: Never, uid 65532,
# read-only root filesystem, all capabilities dropped, RuntimeDefault seccomp) and checks
# their status, containerd:// container ID, termination message, `kubectl logs`, the pod
# IP on the bridge, and in the container: CapEff 0, NoNewPrivs 1, Seccomp 2, read-only /;
# and a pod with the namespace's default ServiceAccount token that reaches the apiserver
# at node IP:port over TLS with the mounted ca.crt (anonymously and with its token) and
# a TCP service on the host bound to the node IP (python3 -m http.server).
#
# Teardown, in this order: the command (run mode), the scheduler (no new pod starts),
# workload controllers deleted (orphaning) and pods deleted (the kubelet stops their
# sandboxes and CNI releases their addresses), the controller manager, the kubelet,
# containerd's tasks and containers, containerd and any shim left, the apiserver and
# etcd, mounts under the temporary folder, the bridge, the lo address, the kubepods
# cgroups in every hierarchy, the kernel settings the kubelet and CNI changed (restored),
# and what lands in fixed host paths when it was not there before: container log links
# in /var/log/containers, the shims' sockets in /run/containerd, libcni's cache in
# /var/lib/cni, the kubelet's device-plugin socket in /var/lib/kubelet. Each stage's
# time is printed. Exit status: without --run 0 when every check passed; with --run
# CMD's (1 when the node did not come up, 130 / 143 on SIGINT / SIGTERM).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${IMAGE:-recac:dev}"
node_ip="${REALNODE_NODE_IP:-10.99.0.1}"
pod_cidr="${REALNODE_POD_CIDR:-10.99.1.0/24}"
service_cidr="${REALNODE_SERVICE_CIDR:-10.99.2.0/24}"
bridge="${REALNODE_BRIDGE:-recac0}"
node="${REALNODE_NODE_NAME:-realnode}"
ns=realnode-probe

log() { echo "realnode-up: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

run_cmd=()
case "${1:-}" in
  --run)
    shift
    [ "$#" -gt 0 ] || die "usage: $0 --run CMD [ARG...]"
    run_cmd=("$@")
    ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "usage: $0 [--run CMD [ARG...]]" ;;
esac
probe=1
[ "${#run_cmd[@]}" -gt 0 ] && probe="${REALNODE_PROBE:-}"
[ "$probe" = 0 ] && probe=""

[ "$(id -u)" -eq 0 ] || die "needs root"

# first_ip CIDR: the first address after the network address (10.99.2.0/24 -> 10.99.2.1).
first_ip() {
  local a b c d n
  IFS=. read -r a b c d <<<"${1%/*}"
  n=$(((a << 24 | b << 16 | c << 8 | d) + 1))
  echo "$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))"
}
service_ip="$(first_ip "$service_cidr")"

# ---- stage timing ----------------------------------------------------------
timings=()
stage_name=""
stage_start=0
now_ms() { date +%s%3N; }
script_start="$(now_ms)"
stage() {
  stage_end
  stage_name="$1"
  stage_start="$(now_ms)"
  log "== $stage_name"
}
stage_end() {
  if [ -n "$stage_name" ]; then
    local ms=$(($(now_ms) - stage_start))
    timings+=("$(printf '%7d ms  %s' "$ms" "$stage_name")")
    stage_name=""
  fi
}
print_timings() {
  stage_end
  log "stage timings:"
  local t
  for t in "${timings[@]}"; do echo "  $t" >&2; done
  [ -n "$ready_ms" ] && printf '  %7d ms  %s\n' "$ready_ms" "from start to a Ready node" >&2
  printf '  %7d ms  %s\n' "$(($(now_ms) - script_start))" "total" >&2
}
ready_ms=""

# ---- what to run -----------------------------------------------------------
stage "find or build binaries and images"
envtest_bin="$("$here/envtest.sh" | tail -n 1)"
node_bin="$("$here/realnode.sh" | tail -n 1)"
pause_archive="$(dirname "$node_bin")/images/pause.tar"
image_archive="${RECAC_IMAGE_ARCHIVE:-$(IMAGE="$image" "$here/image.sh" | tail -n 1)}"
[ -s "$image_archive" ] || die "no image archive $image_archive"
for b in etcd kube-apiserver kube-controller-manager kubectl; do [ -x "$envtest_bin/$b" ] || die "no $envtest_bin/$b"; done
export PATH="$node_bin:$envtest_bin:$PATH"

tmp="$(mktemp -d /tmp/realnode.XXXXXX)"
chmod 0755 "$tmp"
pids=()          # name=pid of what we started, in start order
added_lo=""
sysctls=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward)
declare -A sysctl_before=()
for s in "${sysctls[@]}"; do sysctl_before[$s]="$(cat "/proc/sys/$s")"; done
had_var_log_containers=""; [ -d /var/log/containers ] && had_var_log_containers=1
had_run_containerd=""; [ -d /run/containerd ] && had_run_containerd=1
had_var_lib_cni=""; [ -d /var/lib/cni ] && had_var_lib_cni=1
had_var_lib_kubelet=""; [ -d /var/lib/kubelet ] && had_var_lib_kubelet=1
iptables_rules() { iptables-save 2>/dev/null | grep -E '^[*:]' | sed 's/ \[[0-9]*:[0-9]*\]$//' | sort || true; }
iptables_before="$(iptables_rules)"
ok=""
holding=""
sandbox_ids=()
run_pid=""       # the command of --run, leader of its own process group

start() { # start NAME CMD...: runs CMD in the background in its own session (a Ctrl-C
  # reaches only this script, which stops it in order), output in $tmp/logs/NAME.log
  local name="$1"
  shift
  setsid "$@" < /dev/null > "$tmp/logs/$name.log" 2>&1 &
  pids+=("$name=$!")
}
pid_of() { local p; for p in "${pids[@]}"; do [ "${p%%=*}" = "$1" ] && { echo "${p#*=}"; return 0; }; done; return 1; }
# running PID: alive and not a zombie (a child that exited but was not reaped yet).
running() { local st; st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"; [ -n "$st" ] && [ "$st" != Z ]; }
stop() { # stop NAME: SIGTERM, 20 s, SIGKILL
  local pid
  pid="$(pid_of "$1")" || return 0
  if running "$pid"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then
      log "$1 ($pid) did not stop on SIGTERM: SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}
alive() { local pid; pid="$(pid_of "$1")" && running "$pid"; }
wait_for() { # wait_for SECONDS WHAT CMD...: polls CMD every 0.2 s
  local secs="$1" what="$2" i
  shift 2
  for i in $(seq 1 $((secs * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  log "$what: not after ${secs} s"
  return 1
}
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    [ -z "$(ss -Hltn "sport = :$p")" ] && { echo "$p"; return; }
  done
}

kc() { kubectl --kubeconfig "$tmp/admin.kubeconfig" "$@"; }
ctrk() { ctr --address "$tmp/containerd/containerd.sock" -n k8s.io "$@"; }

# stop_command: SIGTERM to the command's process group, SIGKILL after 10 s; also what
# is left of that group once the command itself exited.
stop_command() {
  [ -n "$run_pid" ] || return 0
  local -
  set +e
  if running "$run_pid"; then
    log "stopping the command (process group $run_pid): SIGTERM"
    kill -TERM -- "-$run_pid" 2>/dev/null || kill -TERM "$run_pid" 2>/dev/null
    for _ in $(seq 1 100); do running "$run_pid" || break; sleep 0.1; done
    if running "$run_pid"; then
      log "the command did not stop on SIGTERM: SIGKILL"
      kill -KILL -- "-$run_pid" 2>/dev/null || kill -KILL "$run_pid" 2>/dev/null
    fi
  fi
  wait "$run_pid" 2>/dev/null || true
  local left
  if left="$(pgrep -g "$run_pid" 2>/dev/null)"; then
    log "processes left in the command's process group: $(echo $left): SIGTERM"
    kill -TERM -- "-$run_pid" 2>/dev/null
    for _ in $(seq 1 50); do pgrep -g "$run_pid" >/dev/null 2>&1 || break; sleep 0.1; done
    kill -KILL -- "-$run_pid" 2>/dev/null
  fi
  run_pid=""
}

teardown() {
  local rc=$?
  # A second Ctrl-C would leave a half torn-down node: ignored until the end.
  trap '' INT TERM
  trap - EXIT
  set +e
  [ -z "$ok" ] && [ "$rc" -eq 0 ] && rc=1
  [ -n "$holding" ] && [ -n "$ok" ] && { [ "$rc" -eq 130 ] || [ "$rc" -eq 143 ]; } && rc=0
  if [ -n "$run_pid" ]; then
    stage "teardown: command"
    stop_command
  fi
  stop hostsvc
  stage "teardown: pods"
  # No new pod starts once the scheduler is gone (pods a controller still creates
  # stay Pending, unbound); the controller manager stays up for the Job controller,
  # which removes its batch.kubernetes.io/job-tracking finalizer from deleted pods.
  stop kube-scheduler
  if alive kube-apiserver; then
    kc delete cronjobs,deployments,statefulsets,daemonsets,replicasets,replicationcontrollers,jobs \
      --all --all-namespaces --cascade=orphan --wait=false >/dev/null 2>&1
    kc delete pods --all --all-namespaces --grace-period=1 --wait=true --timeout=60s >/dev/null 2>&1 ||
      log "pods left: $(kc get pods -A --no-headers 2>&1 | tr '\n' '|')"
  fi
  stage "teardown: controller manager, kubelet"
  stop kube-controller-manager
  stop kubelet
  stage "teardown: containerd tasks, containers, containerd"
  local import_pid
  import_pid="$(pid_of import)" && running "$import_pid" && kill -- "-$import_pid" 2>/dev/null # bash and its ctr
  stop import
  if alive containerd; then
    local t c
    log "containerd: $(ctrk tasks ls -q 2>/dev/null | wc -l) tasks, $(ctrk containers ls -q 2>/dev/null | wc -l) containers left"
    for t in $(ctrk tasks ls -q 2>/dev/null); do ctrk tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
    for t in $(ctrk tasks ls -q 2>/dev/null); do
      for _ in 1 2 3 4 5 6 7 8 9 10; do ctrk tasks delete "$t" >/dev/null 2>&1 && break; sleep 0.3; done
    done
    for c in $(ctrk containers ls -q 2>/dev/null); do
      sandbox_ids+=("$c")
      ctrk containers delete "$c" >/dev/null 2>&1
    done
  fi
  stop containerd
  # Shims of this containerd (found by its socket, stopped by pid) that outlived it.
  local shim shims
  for _ in $(seq 1 30); do
    shims="$(pgrep -f "containerd-shim-runc-v2 .*-address $tmp/containerd/containerd.sock" 2>/dev/null)" || break
    sleep 0.1
  done
  for shim in $shims; do
    log "stopping leftover shim $shim"
    kill -9 "$shim" 2>/dev/null
  done
  stage "teardown: control plane"
  stop kube-apiserver
  stop etcd
  stage "teardown: mounts, network, cgroups, settings"
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$tmp/" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
  [ -n "$added_lo" ] && ip addr del "$node_ip/32" dev lo 2>/dev/null
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h/kubepods" ] && find "$h/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -d "$h/kubepods" ] && log "could not remove cgroup $h/kubepods"
  done
  for s in "${sysctls[@]}"; do
    [ "$(cat "/proc/sys/$s")" = "${sysctl_before[$s]}" ] || echo "${sysctl_before[$s]}" > "/proc/sys/$s"
  done
  local l
  for l in /var/log/containers/*.log; do
    [ -L "$l" ] && case "$(readlink "$l")" in "$tmp"/*) rm -f "$l" ;; esac
  done
  [ -z "$had_var_log_containers" ] && rmdir /var/log/containers 2>/dev/null
  # Fixed paths: the shims' sockets (/run/containerd/s), libcni's cache
  # (/var/lib/cni), the kubelet's device plugin socket (/var/lib/kubelet/device-plugins).
  [ -z "$had_run_containerd" ] && rm -rf /run/containerd
  if [ -z "$had_var_lib_cni" ]; then
    rm -rf /var/lib/cni
  else
    for c in "${sandbox_ids[@]}"; do rm -f /var/lib/cni/results/*-"$c"-*; done
  fi
  if [ -z "$had_var_lib_kubelet" ]; then
    rm -f /var/lib/kubelet/device-plugins/kubelet.sock
    rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null
  fi
  local iptables_after
  iptables_after="$(iptables_rules)"
  [ "$iptables_after" = "$iptables_before" ] || log "iptables changed: $(diff <(echo "$iptables_before") <(echo "$iptables_after") | grep '^[<>]' | tr '\n' ' ')"
  stage "teardown: temporary folder"
  if [ -n "${REALNODE_KEEP:-}" ] || [ "$rc" -ne 0 ]; then
    # The components' log tails when the harness failed (not when only the command did).
    [ "$rc" -ne 0 ] && [ -z "$ok" ] && for l in "$tmp"/logs/*.log; do echo "---- tail of $l" >&2; tail -n 15 "$l" >&2; done
    log "logs kept in $tmp/logs"
    rm -rf --one-file-system "$tmp/containerd" "$tmp/kubelet" "$tmp/etcd"
  else
    if findmnt -rn -o TARGET | grep -qF "$tmp/"; then log "mounts left under $tmp: not removing it"; else rm -rf --one-file-system "$tmp"; fi
  fi
  stage_end
  print_timings
  if [ "$rc" -eq 0 ]; then
    log "OK"
  elif [ -n "$ok" ] && [ "${#run_cmd[@]}" -gt 0 ]; then
    log "the node was fine; the command failed or was stopped (exit $rc)"
  else
    log "FAILED (exit $rc)"
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$tmp/logs" "$tmp/pki" "$tmp/cni/net.d" "$tmp/cni/ipam" "$tmp/containerd" "$tmp/kubelet/pki" "$tmp/pod-logs"
# containerd's root and state (unpacked images, the containers' writable layers) on a
# tmpfs (memory is used as it fills): the import is faster and the removal at the end
# instant (unmounted with the other mounts under $tmp). REALNODE_TMPFS=0: on disk.
if [ "${REALNODE_TMPFS:-1}" != 0 ]; then
  mount -t tmpfs -o "mode=0755,size=${REALNODE_TMPFS_SIZE:-8g}" realnode-containerd "$tmp/containerd"
fi

# ---- node address and certificates -----------------------------------------
stage "node address, certificates"
# The apiserver listens on the node IP (pods reach it there: there is no kube-proxy),
# so the address comes first.
if ! ip -4 addr show dev lo | grep -qF " $node_ip/"; then
  ip addr add "$node_ip/32" dev lo
  added_lo=1
fi
(
  cd "$tmp/pki"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 2 -subj "/CN=realnode-ca" 2>/dev/null
  sign() { # sign NAME SUBJECT EXTENSIONS
    openssl req "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out "$1.crt" \
      -extfile <(printf '%s\n' "$3") 2>/dev/null
  }
  sign apiserver "/CN=kube-apiserver" "subjectAltName=IP:$node_ip,IP:127.0.0.1,IP:$service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
  sign admin "/O=system:masters/CN=realnode-admin" "extendedKeyUsage=clientAuth"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)

etcd_port="$(free_port)"; etcd_peer="$(free_port)"; api_port="$(free_port)"
kcm_port="$(free_port)"; sched_port="$(free_port)"; kubelet_port="$(free_port)"; kubelet_healthz="$(free_port)"

cat > "$tmp/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: realnode
  cluster: {server: "https://$node_ip:$api_port", certificate-authority: "$tmp/pki/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$tmp/pki/admin.crt", client-key: "$tmp/pki/admin.key"}
contexts:
- name: realnode
  context: {cluster: realnode, user: admin}
current-context: realnode
EOF

# ---- containerd first (the image import overlaps the control plane start) ----
stage "CNI, containerd (images import in the background)"
cat > "$tmp/cni/net.d/10-recac.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "recac-realnode",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$tmp/cni/ipam",
        "ranges": [[{"subnet": "$pod_cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
cat > "$tmp/containerd/config.toml" <<EOF
version = 3
root = "$tmp/containerd/root"
state = "$tmp/containerd/state"
temp = "$tmp/containerd/tmp"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.blockfile", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$tmp/containerd/containerd.sock"
[ttrpc]
  address = "$tmp/containerd/containerd.sock.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10"
  # Every registry (certs.d/_default) is 127.0.0.1:1: an image that is not imported
  # fails to pull at once (connection refused) instead of being fetched from the Internet.
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$tmp/containerd/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  # The sandbox asks for oom_score_adj -998; without CAP_SYS_RESOURCE runc then fails
  # with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$tmp/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
      BinaryName = "$node_bin/runc"
      Root = "$tmp/containerd/runc"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
EOF
mkdir -p "$tmp/containerd/tmp" "$tmp/containerd/certs.d/_default"
cat > "$tmp/containerd/certs.d/_default/hosts.toml" <<EOF
server = "http://127.0.0.1:1"
[host."http://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]
EOF
start containerd containerd --config "$tmp/containerd/config.toml"
wait_for 30 "containerd" ctrk version || die "timed out"

# The import (a few seconds) runs while the control plane starts.
start import bash -c 'ctr --address "$1" -n k8s.io images import "$2" && ctr --address "$1" -n k8s.io images import "$3"' \
  _ "$tmp/containerd/containerd.sock" "$pause_archive" "$image_archive"

# ---- control plane: etcd, apiserver, controller manager, scheduler -------
stage "etcd and kube-apiserver"
start etcd etcd --data-dir="$tmp/etcd" --name=default --unsafe-no-fsync=true \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
  --initial-cluster="default=http://127.0.0.1:$etcd_peer"
start kube-apiserver kube-apiserver --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address="$node_ip" --advertise-address="$node_ip" --secure-port="$api_port" --cert-dir="$tmp/pki" \
  --tls-cert-file="$tmp/pki/apiserver.crt" --tls-private-key-file="$tmp/pki/apiserver.key" \
  --client-ca-file="$tmp/pki/ca.crt" --authorization-mode=RBAC \
  --service-cluster-ip-range="$service_cidr" --endpoint-reconciler-type=none \
  --service-account-issuer="https://$node_ip:$api_port/" \
  --service-account-key-file="$tmp/pki/sa.pub" --service-account-signing-key-file="$tmp/pki/sa.key" \
  --kubelet-preferred-address-types=InternalIP
wait_for 60 "kube-apiserver /readyz" kc get --raw /readyz || die "timed out"

stage "kube-controller-manager and kube-scheduler"
start kube-controller-manager kube-controller-manager --kubeconfig="$tmp/admin.kubeconfig" \
  --controllers=job-controller,ttl-after-finished-controller,garbage-collector-controller,namespace-controller,node-lifecycle-controller,deployment-controller,replicaset-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller \
  --service-account-private-key-file="$tmp/pki/sa.key" --root-ca-file="$tmp/pki/ca.crt" \
  --leader-elect=false --use-service-account-credentials=false --authentication-skip-lookup=true \
  --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$tmp/pki/kcm"
start kube-scheduler kube-scheduler --kubeconfig="$tmp/admin.kubeconfig" --leader-elect=false \
  --authentication-skip-lookup=true --bind-address=127.0.0.1 --secure-port="$sched_port" --cert-dir="$tmp/pki/scheduler"
wait_for 30 "kube-controller-manager /healthz" curl -fsk "https://127.0.0.1:$kcm_port/healthz" || die "timed out"
wait_for 30 "kube-scheduler /healthz" curl -fsk "https://127.0.0.1:$sched_port/healthz" || die "timed out"


stage "images imported"
import_rc=0
wait "$(pid_of import)" || import_rc=$?
[ "$import_rc" -eq 0 ] || die "image import failed ($import_rc): $(tail -n 5 "$tmp/logs/import.log")"
grep -v 'level=warning' "$tmp/logs/import.log" | grep -E 'saved|elapsed' | sed 's/^/  /' >&2
ctrk images ls -q | grep -v '^sha256:' | sed 's/^/  image: /' >&2

# ---- the node --------------------------------------------------------------
stage "kubelet, node Ready"
cat > "$tmp/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$tmp/containerd/containerd.sock
failSwapOn: false
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: "$tmp/pki/ca.crt"}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: $tmp/pod-logs
# No KUBE-FIREWALL / KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY chains on the host.
# No cluster DNS, and pods do not inherit the host's resolvers either: they reach the
# node IP by address, and a name lookup fails instead of leaving the machine.
resolvConf: ""
makeIPTablesUtilChains: false
volumePluginDir: $tmp/kubelet/volume-plugins
registerNode: true
EOF
start kubelet kubelet --config="$tmp/kubelet/config.yaml" --kubeconfig="$tmp/admin.kubeconfig" \
  --root-dir="$tmp/kubelet" --cert-dir="$tmp/kubelet/pki" \
  --hostname-override="$node" --node-ip="$node_ip" -v=1
wait_for 60 "node $node registered" kc get node "$node" || die "timed out"
wait_for 120 "node $node Ready" kc wait --for=condition=Ready "node/$node" --timeout=1s || die "timed out"
ready_ms=$(($(now_ms) - script_start))
log "node $node Ready $ready_ms ms after start"
log "node: $(kc get node "$node" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion} {.status.addresses}') taints: $(kc get node "$node" -o jsonpath='{.spec.taints}')"

# ---- probes ----------------------------------------------------------------
security='
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}'
pod_security='
    securityContext:
      runAsNonRoot: true
      runAsUser: 65532
      runAsGroup: 65532
      seccompProfile: {type: RuntimeDefault}'

pod_phase() { kc -n "$ns" get pod "$1" -o jsonpath='{.status.phase}'; }
pod_done() { case "$(pod_phase "$1")" in Succeeded | Failed) return 0 ;; *) return 1 ;; esac; }

probe_pods() {
  stage "probe pods"
  # A TCP service on the host, bound to the node IP, as the e2e's Jira simulator and git
  # server are: python3 -m http.server answers 404 to git's /x/info/refs.
  local svc_port py
  svc_port="$(free_port)"
  py="$(command -v /usr/bin/python3 python3 | head -n 1)"
  [ -n "$py" ] || die "no python3 for the host service"
  mkdir -p "$tmp/hostsvc"
  start hostsvc "$py" -m http.server --bind "$node_ip" --directory "$tmp/hostsvc" "$svc_port"
  kc apply -f - >&2 <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
EOF
  # The ServiceAccount admission plugin rejects pods until the serviceaccount
  # controller has made the namespace's default ServiceAccount.
  wait_for 30 "ServiceAccount $ns/default" kc -n "$ns" get serviceaccount default || die "timed out"
  wait_for 10 "host service on $node_ip:$svc_port" curl -s -o /dev/null "http://$node_ip:$svc_port/" || die "timed out"
  kc apply -f - >&2 <<EOF
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: $ns}
spec:
    restartPolicy: Never
$pod_security
    containers:
    - name: probe
      image: $image
      imagePullPolicy: Never
      command:
      - sh
      - -c
      - |
        id; git --version; recac --version
        grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status
        if touch /probe 2>/dev/null; then echo rootfs writable; else echo rootfs read-only; fi
        echo done > /dev/termination-log
$security
---
apiVersion: v1
kind: Pod
metadata: {name: incluster, namespace: $ns}
spec:
    restartPolicy: Never
    automountServiceAccountToken: true
$pod_security
    containers:
    - name: probe
      image: $image
      imagePullPolicy: Never
      env:
      - {name: HOST, value: "$node_ip"}
      - {name: PORT, value: "$api_port"}
      - {name: SVC_PORT, value: "$svc_port"}
      - {name: GIT_TERMINAL_PROMPT, value: "0"}
      command:
      - sh
      - -c
      - |
        ls /var/run/secrets/kubernetes.io/serviceaccount/ && GIT_SSL_CAINFO=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt git ls-remote https://\$HOST:\$PORT/ 2>&1 | head -3; true
        echo "namespace file: \$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
        echo "-- with the token"
        GIT_SSL_CAINFO=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt git -c http.extraHeader="Authorization: Bearer \$(cat /var/run/secrets/kubernetes.io/serviceaccount/token)" ls-remote https://\$HOST:\$PORT/ 2>&1 | head -3
        echo "-- host service"
        git ls-remote http://\$HOST:\$SVC_PORT/x 2>&1 | head -3; true
$security
EOF
  wait_for 120 "pod probe finished" pod_done probe || true
  wait_for 60 "pod incluster finished" pod_done incluster || true

  local phase cid msg pod_ip logs
  phase="$(pod_phase probe)"
  cid="$(kc -n "$ns" get pod probe -o jsonpath='{.status.containerStatuses[0].containerID}')"
  msg="$(kc -n "$ns" get pod probe -o jsonpath='{.status.containerStatuses[0].state.terminated.message}')"
  pod_ip="$(kc -n "$ns" get pod probe -o jsonpath='{.status.podIP}')"
  logs="$(kc -n "$ns" logs probe 2>&1 || true)"
  log "probe pod: phase=$phase containerID=$cid message=$(printf %q "$msg") podIP=$pod_ip"
  log "probe pod logs: $(printf '%s' "$logs" | tr '\n' '|')"
  [ "$phase" = Succeeded ] || die "probe pod phase $phase"
  case "$cid" in containerd://*) ;; *) die "probe pod container ID $cid";; esac
  [ "$msg" = "done" ] || die "probe pod termination message $(printf %q "$msg")"
  grep -q '^uid=65532' <<<"$logs" || die "probe pod logs lack uid=65532"
  grep -q '^git version' <<<"$logs" || die "probe pod logs lack git's version"
  grep -q '^recac ' <<<"$logs" || die "probe pod logs lack recac's version"
  grep -qE '^CapEff:\s+0000000000000000$' <<<"$logs" || die "probe pod has capabilities"
  grep -qE '^NoNewPrivs:\s+1$' <<<"$logs" || die "probe pod lacks no_new_privs"
  grep -qE '^Seccomp:\s+2$' <<<"$logs" || die "probe pod has no seccomp filter"
  grep -q '^rootfs read-only$' <<<"$logs" || die "probe pod's root filesystem is writable"
  ip route get "$pod_ip" 2>/dev/null | grep -q " dev $bridge " || die "probe pod IP '$pod_ip' is not on the bridge $bridge"

  phase="$(pod_phase incluster)"
  logs="$(kc -n "$ns" logs incluster 2>&1 || true)"
  log "incluster pod: phase=$phase serviceAccountName=$(kc -n "$ns" get pod incluster -o jsonpath='{.spec.serviceAccountName}') volumes=$(kc -n "$ns" get pod incluster -o jsonpath='{.spec.volumes[*].name}')"
  log "incluster pod logs: $(printf '%s' "$logs" | tr '\n' '|')"
  [ "$phase" = Succeeded ] || die "incluster pod phase $phase"
  local f
  for f in ca.crt namespace token; do grep -qx "$f" <<<"$logs" || die "incluster pod: no $f in the ServiceAccount volume"; done
  grep -qx "namespace file: $ns" <<<"$logs" || die "incluster pod: wrong namespace file"
  ! grep -qiE 'SSL|certificate|TLS|Failed to connect|Could not connect|Connection refused|timed out|resolve' <<<"$logs" ||
    die "incluster pod: connection or TLS error"
  # The apiserver answers: 403 to the anonymous request and, with a valid token,
  # 403 again (the default ServiceAccount may not GET /info/refs); a bad token is a 401.
  [ "$(grep -c 'The requested URL returned error: 403' <<<"$logs")" -eq 2 ] ||
    die "incluster pod: expected two HTTP 403 answers from the apiserver"
  grep -q "repository 'http://$node_ip:$svc_port/x/' not found" <<<"$logs" ||
    die "incluster pod: no 404 from the host service on $node_ip:$svc_port"
  grep -q '"GET /x/info/refs?service=git-upload-pack HTTP/1.1" 404' "$tmp/logs/hostsvc.log" ||
    die "host service saw no request: $(tail -n 3 "$tmp/logs/hostsvc.log")"
  stop hostsvc

  stage "probe Job"
  kc apply -f - >&2 <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: probe, namespace: $ns}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
$(echo "$pod_security" | sed 's/^/  /')
      containers:
      - name: recac
        image: $image
        imagePullPolicy: Never
        args: [--version]
$(echo "$security" | sed 's/^/  /')
EOF
  kc -n "$ns" wait --for=condition=Complete job/probe --timeout=120s >&2 || die "Job probe did not complete: $(kc -n "$ns" get job,pods -o wide 2>&1)"
  local job_logs
  job_logs="$(kc -n "$ns" logs job/probe 2>&1 || true)"
  log "probe Job logs: $(printf '%s' "$job_logs" | tr '\n' '|')"
  [ -n "$job_logs" ] || die "probe Job printed nothing"
}

[ -n "$probe" ] && probe_pods
ok=1

export KUBECONFIG="$tmp/admin.kubeconfig"
export REALNODE_NODE_IP="$node_ip"
export REALNODE_APISERVER_HOST="$node_ip"
export REALNODE_APISERVER_PORT="$api_port"
export REALNODE_KUBECTL="$envtest_bin/kubectl"
export REALNODE_IMAGE="$image"
export REALNODE_NODE_NAME="$node"
export REALNODE_CA_FILE="$tmp/pki/ca.crt"

if [ "${#run_cmd[@]}" -gt 0 ]; then
  stage "run: ${run_cmd[*]}"
  # Own session and process group (stopped as a group in teardown); SIGINT and SIGQUIT
  # back to their defaults, which bash sets to ignored for a background command.
  setsid env --default-signal=INT,QUIT "${run_cmd[@]}" <&0 &
  run_pid=$!
  cmd_rc=0
  wait "$run_pid" || cmd_rc=$?
  stage_end
  log "command exited with status $cmd_rc"
  for c in kube-apiserver kubelet containerd; do alive "$c" || log "warning: $c is not running any more"; done
  exit "$cmd_rc"
fi

if [ -n "${REALNODE_HOLD:-}" ]; then
  stage_end
  holding=1
  log "holding; Ctrl-C tears it down. In a shell:"
  for v in KUBECONFIG REALNODE_NODE_IP REALNODE_APISERVER_HOST REALNODE_APISERVER_PORT REALNODE_KUBECTL REALNODE_IMAGE REALNODE_NODE_NAME REALNODE_CA_FILE; do
    echo "  export $v=${!v}" >&2
  done
  while alive kubelet && alive containerd && alive kube-apiserver; do sleep 2; done
  ok=""
  die "a component exited"
fi
