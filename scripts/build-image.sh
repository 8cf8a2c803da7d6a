#!/usr/bin/env bash
# Builds the dfs image offline from binaries built on this host:
#   1. cargo build --release of dfs, dfs-coordinator, dfs-datanode and
#      dfs-operator — a no-op when they are up to date;
#   2. the local runtime base (scripts/build-base-image.sh → dfs-base:local);
#   3. the Dockerfile's `prebuilt` target in a small staged context
#      (dist/bin/* + an empty dist/var/lib/dfs), tagged dfs:<version> and dfs:local;
#   4. a smoke test: every binary runs as uid 65532 and the image has no shell.
#
# Env: DFS_IMAGE (repository, default dfs), DFS_SKIP_CARGO=1 (use the binaries
# already in the target dir).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

version="$(dfs_version)"
bins=("$DFS_TARGET_DIR/release/dfs" "$DFS_TARGET_DIR/release/dfs-coordinator"
      "$DFS_TARGET_DIR/release/dfs-datanode" "$DFS_TARGET_DIR/release/dfs-operator")
if [[ "${DFS_SKIP_CARGO:-0}" != 1 ]]; then
  # One invocation for all four: features unify once, shared crates build once.
  log "cargo build --release (CARGO_TARGET_DIR=$DFS_TARGET_DIR)"
  CARGO_TARGET_DIR="$DFS_TARGET_DIR" cargo build --release \
    -p dfs-cli -p dfs-coordinator -p dfs-datanode -p dfs-operator
fi
for b in "${bins[@]}"; do [[ -x "$b" ]] || die "missing binary $b"; done

bash "$REPO_ROOT/scripts/build-base-image.sh" "${bins[@]}"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/dist/bin" "$ctx/dist/var/lib/dfs"
cp "${bins[@]}" "$ctx/dist/bin/"
cp "$REPO_ROOT/Dockerfile" "$ctx/Dockerfile"
log "docker build $DFS_IMAGE:$version (--target prebuilt, RUNTIME_IMAGE=$DFS_BASE_IMAGE)"
# The classic builder by default: this docker has no buildx. The Dockerfile's
# stage order keeps BUILDER_IMAGE out of a --target prebuilt build either way.
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build --quiet --target prebuilt \
  --build-arg RUNTIME_IMAGE="$DFS_BASE_IMAGE" \
  --build-arg VERSION="$version" \
  --label org.opencontainers.image.revision="$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
  -t "$DFS_IMAGE:$version" -t "$DFS_IMAGE:local" "$ctx" >/dev/null

# Smoke test: each binary starts, runs as the non-root user, no shell inside.
img="$DFS_IMAGE:$version"
user="$(docker image inspect "$img" --format '{{.Config.User}}')"
[[ "$user" == "65532:65532" ]] || die "image user is '$user', want 65532:65532"
for b in "${bins[@]}"; do
  name="$(basename "$b")"
  docker run --rm "$img" "$name" --help >/dev/null || die "$name --help failed in the image"
done
[[ "$(docker run --rm "$img" dfs --version)" == *"$version"* ]] || die "dfs --version does not report $version"
if docker run --rm "$img" /bin/sh -c true >/dev/null 2>&1; then
  die "the image has a shell (/bin/sh); the runtime must not need one"
fi
log "built $img ($(docker image inspect "$img" --format '{{.Size}}') bytes; binaries: $(basename -a "${bins[@]}" | tr '\n' ' '))"
