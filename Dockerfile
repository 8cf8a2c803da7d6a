# (No `# syntax=` line on purpose: the built-in Dockerfile frontend is used, so
# an offline machine does not try to pull docker/dockerfile.)
#
# The dfs container image: dfs-coordinator, dfs-datanode, dfs-operator and the
# `dfs` CLI in a minimal, shell-less runtime that runs as a non-root user.
#
# Two targets, one runtime:
#
#   runtime (default, last stage)  compiles the binaries in BUILDER_IMAGE
#                                  (needs a registry):
#       docker build -t dfs:0.1.0 .
#
#   prebuilt                       copies binaries built on the host from the
#                                  context's dist/ folder; nothing is compiled
#                                  and BUILDER_IMAGE is never used:
#       dist/bin/{dfs,dfs-coordinator,dfs-datanode,dfs-operator}
#                  (stripped, debug info kept apart; `dfs` without local-cluster)
#       dist/var/lib/dfs/          (empty; becomes the writable data dir)
#       docker build --target prebuilt \
#                    --build-arg RUNTIME_IMAGE=dfs-base:local -t dfs:0.1.0 <ctx>
#     scripts/build-image.sh stages that context in a temporary folder and builds
#     the offline base image dfs-base:local first.
#
# The stage order matters: the classic builder (DOCKER_BUILDKIT=0; this
# machine's docker has no buildx) runs every stage before --target, so the
# prebuilt path comes first and the source path after it. BuildKit builds only
# the stages a target needs, so both orders work there.
#
# RUNTIME_IMAGE must provide glibc, libgcc_s and a user 65532 (distroless
# cc:nonroot does; so does the dfs-base:local image of scripts/build-base-image.sh).

ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- what every variant shares ----------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime-base
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dfs" \
      org.opencontainers.image.description="dfs: a Kubernetes-native distributed file system (coordinator, datanode, operator, CLI)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    DFS_DATA_DIR=/var/lib/dfs
# gRPC: coordinator 7000, datanode 7101; metrics/probes: 9100, 9101, operator 9200.
EXPOSE 7000 7101 9100 9101 9200
# No entry point: the one image runs every component, e.g.
#   docker run dfs:0.1.0 dfs-coordinator --listen 0.0.0.0:7000 --tls-dir /etc/dfs/tls ...
# (every server needs --tls-dir, or --insecure for plain text).
CMD ["dfs", "--help"]

# ---- binaries built on the host (scripts/build-image.sh) ---------------------
FROM scratch AS binaries-prebuilt
COPY dist/ /out/

FROM runtime-base AS prebuilt
COPY --from=binaries-prebuilt /out/bin/ /usr/local/bin/
COPY --from=binaries-prebuilt --chown=65532:65532 /out/var/lib/dfs/ /var/lib/dfs/
USER 65532:65532
WORKDIR /var/lib/dfs

# ---- binaries compiled from source -------------------------------------------
FROM ${BUILDER_IMAGE} AS binaries-source
WORKDIR /src
COPY . .
# As scripts/build-image.sh: the `image` profile (release, own directory);
# `dfs` without its local-cluster feature (no server inside it) in its own
# invocation; debug info moved to /out/debug/<bin>.debug, which stays in this
# stage (docker build --target binaries-source to get it), the runtime gets
# the binaries stripped of it.
RUN cargo build --profile image --locked -p dfs-coordinator -p dfs-datanode -p dfs-operator \
 && cargo build --profile image --locked -p dfs-cli --no-default-features \
 && mkdir -p /out/bin /out/var/lib/dfs /out/debug \
 && for b in dfs dfs-coordinator dfs-datanode dfs-operator; do \
      objcopy --only-keep-debug "target/image/$b" "/out/debug/$b.debug" \
      && objcopy --strip-all --add-gnu-debuglink="/out/debug/$b.debug" \
                 "target/image/$b" "/out/bin/$b" || exit 1; \
    done

FROM runtime-base AS runtime
COPY --from=binaries-source /out/bin/ /usr/local/bin/
COPY --from=binaries-source --chown=65532:65532 /out/var/lib/dfs/ /var/lib/dfs/
USER 65532:65532
WORKDIR /var/lib/dfs
