# recac: build, test and package.
#
#   make dev       the whole loop on this machine (`recac dev`): control plane, Jira
#                  simulator with demo tickets, git server, demo model, two operators;
#                  DEV_ARGS passes options, e.g. DEV_ARGS="--once" or "--keep"
#   make dev-real-node
#                  the same demo on a real node (root; `recac dev --real-node`): a kubelet
#                  with containerd runs the agents from the built image, the operator is
#                  deployed with `kubectl apply -k`; DEV_ARGS as for make dev
#   make build     build the recac binary (target/debug/recac)
#   make test      build the control plane and helm if not cached, then run every test
#   make image     build the container image (IMAGE, default recac:dev): with a docker
#                  daemon, `docker build`; without one, hack/image.sh writes a docker-archive
#                  tarball (for `ctr images import`) and prints its path; IMAGE_VARIANT=toolchains
#                  builds the variant with cargo, go, node/npm and python3 (the Dockerfile's
#                  stage `toolchains`)
#   make crds      regenerate crds/ from the Rust types
#   make envtest   build (or find cached) etcd, kube-apiserver, kube-controller-manager, kubectl
#   make realnode  build (or find cached) a real node's binaries: kubelet, kube-scheduler,
#                  containerd, runc, the pause image (hack/realnode.sh); hack/realnode-up.sh
#                  then runs a node with the recac image and probes it (root)
#   make e2e       the whole loop on a real node (root): the release binary, the image
#                  (hack/image.sh), a kubelet with containerd (hack/realnode-up.sh), the
#                  operator from `kubectl apply -k config/default`, agents as real pods,
#                  then the operator installed again with the Helm chart for one more ticket
#   make lint      cargo fmt --check and clippy with warnings as errors
#   make bench     benchmarks against a real apiserver: dispatch (N = 100 and 1000), admission
#                  with 10,000 queued tasks, two elected replicas with 10,000 tasks cached
#                  (BENCH_SIZES / BENCH_QUEUE / BENCH_HA change the sizes), and the Jira
#                  source controller (tickets on the simulator to Jobs)

CARGO ?= cargo
K8S_VERSION ?= 1.37.2
ETCD_VERSION ?= 3.6.16
export K8S_VERSION ETCD_VERSION

.PHONY: build release test bench crds envtest lint fmt dev dev-real-node image realnode e2e

IMAGE ?= recac:dev

dev:
	$(CARGO) run --quiet -p recac -- dev $(DEV_ARGS)

dev-real-node:
	@hack/dev-real-node.sh $(DEV_ARGS)

image:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  docker build $(if $(filter toolchains,$(IMAGE_VARIANT)),--target toolchains) -t $(IMAGE) .; \
	else \
	  IMAGE=$(IMAGE) hack/image.sh; \
	fi

realnode:
	@hack/realnode.sh

# The end-to-end run on a real node: every stage prints its time.
e2e:
	@hack/e2e.sh

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p recac

envtest:
	@hack/envtest.sh

test:
	-@$(MAKE) --no-print-directory jira-clients-env
	@assets="$$(hack/envtest.sh | tail -n 1)" && helm="$$(hack/helm.sh | tail -n 1)" && \
	  echo "control plane binaries: $$assets; helm: $$helm" && \
	  KUBEBUILDER_ASSETS="$$assets" RECAC_HELM="$$helm" $(CARGO) test --workspace --no-fail-fast

# Benchmarks against a real apiserver: dispatch (BENCH_SIZES="100 1000" by default),
# admission with BENCH_QUEUE queued tasks (10000 by default; 0 skips it), two elected
# replicas with BENCH_HA tasks cached (10000 by default; 0 skips it), the Jira source, and
# the heap of 10,000 cached tasks and Jobs, compressed and decoded (no apiserver).
bench:
	$(CARGO) build --release -p recac
	@assets="$$(hack/envtest.sh | tail -n 1)" && \
	  KUBEBUILDER_ASSETS="$$assets" $(CARGO) bench -p recac-tests --bench dispatch && \
	  KUBEBUILDER_ASSETS="$$assets" $(CARGO) bench -p recac-tests --bench source
	$(CARGO) bench -p recac-runtime --bench store_memory

# `recac crd` prints every CRD, one YAML document each, in the order of
# recac_api::crd_files(): each document goes to its own file.
crds:
	$(CARGO) run --quiet -p recac -- crd > crds/all.yaml.new
	awk 'BEGIN { split("agenttask.yaml agenttaskschedule.yaml", f, " ") } /^---$$/ { n++ } { print > ("crds/" f[n] ".new") }' crds/all.yaml.new
	rm crds/all.yaml.new
	for f in agenttask.yaml agenttaskschedule.yaml; do mv crds/$$f.new crds/$$f && cp crds/$$f config/crd/$$f && cp crds/$$f charts/recac/crds/$$f; done

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# The real Jira client (pycontribs jira, pinned in tests/jira-clients/requirements.txt)
# that crates/recac-jira-sim/tests/real_clients.rs drives against the simulator: a
# virtualenv outside the checkout ($HOME/.cache/recac/pyenv/jira-<version>), created
# once, then found in the cache; prints its python. Without python3 it prints SKIPPED.
# A failed install does not stop `make test`: the suite's test then fails and says why.
.PHONY: jira-clients-env
jira-clients-env:
	@hack/jira-clients.sh
