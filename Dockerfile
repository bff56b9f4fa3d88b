# The recac image: the operator (`recac orchestrate`) and the agent (`recac start`)
# are one binary. The agent needs git and the toolchains of the repositories it
# works on; extend this image with them (FROM ghcr.io/recac-io/recac).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p recac && cp target/release/recac /recac

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git openssh-client make \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --home-dir /workspace --no-create-home recac
COPY --from=build /recac /usr/local/bin/recac
USER 65532:65532
WORKDIR /workspace
ENV HOME=/workspace
ENTRYPOINT ["recac"]
CMD ["--help"]
