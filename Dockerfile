# syntax=docker/dockerfile:1
#
# Images of sharedip, one Dockerfile with one target per binary:
#
#   docker build --target operator   -t ghcr.io/sharedip/sharedip-operator:0.1.0   .
#   docker build --target node-agent -t ghcr.io/sharedip/sharedip-node-agent:0.1.0 .
#
# Without --target the operator image is built (it is the last stage). Needs BuildKit (the
# default builder since Docker 23) for the cache mounts. Linode has only x86-64 machines, so the
# images are linux/amd64.
#
# Runtime base: gcr.io/distroless/cc-debian12 — glibc, libgcc, CA certificates and nothing else
# (no shell, no package manager), from the same Debian release as the builder, so the
# dynamically linked Rust binaries run unchanged. The operator uses the ":nonroot" variant
# (uid/gid 65532); the node agent runs as root because rtnetlink needs CAP_NET_ADMIN, which
# Kubernetes only makes effective for uid 0 (the DaemonSet drops every other capability).
#
# Pin by digest for releases: the release pipeline resolves RUST_IMAGE / RUNTIME_IMAGE to
# "image@sha256:..." and passes them as build arguments.

ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG AGENT_RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:latest

# ---------------------------------------------------------------------------------------------
# Sources of the whole workspace (cargo needs every member's manifest to load the workspace).
FROM ${RUST_IMAGE} AS source
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY operator ./operator
COPY node-agent ./node-agent
COPY e2e ./e2e

# ---------------------------------------------------------------------------------------------
# One build stage per binary, so `--target operator` never compiles the agent. The agent uses
# the size-optimised `agent` profile of Cargo.toml (its RSS is mostly its code). The cache
# mounts keep the registry and target dir between builds; the binary is copied out of the
# cached target dir in the same step.
FROM source AS build-operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,id=sharedip-target \
    cargo build --locked --release -p sharedip-operator --bin sharedip-operator \
 && install -D -m 0755 target/release/sharedip-operator /out/sharedip-operator

FROM source AS build-node-agent
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,id=sharedip-target \
    cargo build --locked --profile agent -p sharedip-node-agent --bin sharedip-node-agent \
 && install -D -m 0755 target/agent/sharedip-node-agent /out/sharedip-node-agent

# ---------------------------------------------------------------------------------------------
# Node agent: root (see above), capabilities are granted by the DaemonSet (NET_ADMIN only).
FROM ${AGENT_RUNTIME_IMAGE} AS node-agent
LABEL org.opencontainers.image.title="sharedip-node-agent" \
      org.opencontainers.image.description="Binds shared IPs on the node and announces them to Linode's route servers over BGP" \
      org.opencontainers.image.source="https://github.com/sharedip/sharedip" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-node-agent /out/sharedip-node-agent /usr/local/bin/sharedip-node-agent
USER 0:0
ENTRYPOINT ["/usr/local/bin/sharedip-node-agent"]

# ---------------------------------------------------------------------------------------------
# Operator: non-root, no capabilities, read-only root filesystem in the chart.
FROM ${RUNTIME_IMAGE} AS operator
LABEL org.opencontainers.image.title="sharedip-operator" \
      org.opencontainers.image.description="Reconciles SharedIP resources into Linode IP Sharing" \
      org.opencontainers.image.source="https://github.com/sharedip/sharedip" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-operator /out/sharedip-operator /usr/local/bin/sharedip-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sharedip-operator"]
