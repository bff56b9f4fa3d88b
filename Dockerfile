# The recac image: the operator (`recac orchestrate`) and the agent (`recac start`)
# are one binary. The agent needs git and the programs of the repositories' tests;
# two variants (docs/agent.md#toolchains):
#
#   default     (the last stage) git, make, ssh and CA certificates on Debian 12;
#               extend it with the toolchains your repositories need
#               (FROM ghcr.io/recac-io/recac)
#   toolchains  (--target toolchains) also the programs test detection runs:
#               cargo/rustc, go, node/npm, python3 with pytest and venv, on Debian 13,
#               whose versions build today's repositories (Debian 12's cargo 0.66 cannot
#               read a version 4 Cargo.lock, its Go 1.19 a `go 1.21.0` line)
#
#   docker build -t recac:dev .           compiles recac in the build stage
#   docker build --target toolchains -t recac:dev-toolchains .
#   docker buildx build --build-context build=target/release -t recac:dev .
#                                         takes a prebuilt target/release/recac instead (the
#                                         named context replaces the build stage; built on a
#                                         glibc no newer than bookworm's 2.36)
#   --build-arg BASE_IMAGE=...            another Debian-based base image
#   --build-arg TOOLCHAINS_BASE_IMAGE=... the same for the toolchains variant
#
# Without docker, hack/image.sh (`make image`; IMAGE_VARIANT=toolchains for the
# variant) makes the same images as docker-archive tarballs; it reads each stage's
# base image (the ARG defaults below) and package list (its `apt-get install` line)
# from this file.
ARG BASE_IMAGE=debian:bookworm-slim
ARG TOOLCHAINS_BASE_IMAGE=debian:trixie-slim

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p recac && cp target/release/recac /recac

# The default image's packages, then the toolchains.
FROM ${TOOLCHAINS_BASE_IMAGE} AS toolchains
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git openssh-client make cargo rustc golang-go nodejs npm python3 python3-pytest python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --home-dir /workspace --no-create-home recac \
 && mkdir -p /workspace && chown 65532:65532 /workspace
COPY --from=build /recac /usr/local/bin/recac
USER 65532:65532
WORKDIR /workspace
ENV HOME=/workspace
ENTRYPOINT ["recac"]
CMD ["--help"]

# The default image: the last stage, what `docker build .` makes.
FROM ${BASE_IMAGE} AS default
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git openssh-client make \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --home-dir /workspace --no-create-home recac \
 && mkdir -p /workspace && chown 65532:65532 /workspace
COPY --from=build /recac /usr/local/bin/recac
USER 65532:65532
WORKDIR /workspace
ENV HOME=/workspace
ENTRYPOINT ["recac"]
CMD ["--help"]
