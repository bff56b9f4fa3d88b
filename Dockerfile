# The recac image: the operator (`recac orchestrate`) and the agent (`recac start`)
# are one binary. The agent needs git and the toolchains of the repositories it
# works on; extend this image with them (FROM ghcr.io/recac-io/recac).
#
#   docker build -t recac:dev .           compiles recac in the build stage
#   docker buildx build --build-context build=target/release -t recac:dev .
#                                         takes a prebuilt target/release/recac instead (the
#                                         named context replaces the build stage; built on a
#                                         glibc no newer than bookworm's 2.36)
#   --build-arg BASE_IMAGE=...            another Debian-based base image
#
# Without docker, hack/image.sh (`make image`) makes the same image as a
# docker-archive tarball; it reads the final stage's package list from this file.
ARG BASE_IMAGE=debian:bookworm-slim

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p recac && cp target/release/recac /recac

FROM ${BASE_IMAGE}
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
