#!/usr/bin/env bash
# Builds the dfs image offline from binaries built on this host:
#   1. cargo build --profile image (the release build in its own directory,
#      <target>/image/; root Cargo.toml) of dfs-coordinator, dfs-datanode and
#      dfs-operator, then of the `dfs` CLI without its default `local-cluster`
#      feature in a second invocation (features unify per invocation), so no
#      server is inside another binary; a no-op when they are up to date;
#   2. the debug info moved out of the binaries: objcopy --only-keep-debug
#      (line tables and the symbol table) into $DFS_DEBUG_DIR/<bin>.debug
#      (default <target>/image/dist-debug/, never in the image); the image gets
#      the binaries with --strip-all plus a .gnu_debuglink to that file (gdb,
#      perf and addr2line find it by that link or the binary's build id).
#      --strip-all rather than --strip-debug: the symbol tables are 12 MB of
#      the four binaries, panic messages keep their file:line without them;
#   3. the local runtime base (scripts/build-base-image.sh → dfs-base:local);
#   4. the Dockerfile's `prebuilt` target in a small staged context
#      (dist/bin/* + an empty dist/var/lib/dfs), tagged dfs:<version> and dfs:local;
#   5. a smoke test: every binary runs as uid 65532, the image has no shell,
#      `dfs` has no server commands, and the image is at most
#      $DFS_IMAGE_MAX_BYTES (60 MB).
#
# Env: DFS_IMAGE (repository, default dfs), DFS_SKIP_CARGO=1 (use the binaries
# already in <target>/image/), DFS_DEBUG_DIR, DFS_IMAGE_MAX_BYTES.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

version="$(dfs_version)"
max_bytes="${DFS_IMAGE_MAX_BYTES:-60000000}"
build_dir="$DFS_TARGET_DIR/image"
debug_dir="${DFS_DEBUG_DIR:-$build_dir/dist-debug}"
names=(dfs dfs-coordinator dfs-datanode dfs-operator)
if [[ "${DFS_SKIP_CARGO:-0}" != 1 ]]; then
  log "cargo build --profile image (CARGO_TARGET_DIR=$DFS_TARGET_DIR)"
  CARGO_TARGET_DIR="$DFS_TARGET_DIR" cargo build --profile image \
    -p dfs-coordinator -p dfs-datanode -p dfs-operator
  # Its own invocation: `--no-default-features` applies to every package an
  # invocation selects, and features of shared crates unify per invocation.
  CARGO_TARGET_DIR="$DFS_TARGET_DIR" cargo build --profile image \
    -p dfs-cli --no-default-features
fi
for n in "${names[@]}"; do [[ -x "$build_dir/$n" ]] || die "missing binary $build_dir/$n"; done
command -v objcopy >/dev/null || die "objcopy is not installed (Debian: binutils)"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/dist/bin" "$ctx/dist/var/lib/dfs" "$debug_dir"
bins=()
for n in "${names[@]}"; do
  objcopy --only-keep-debug "$build_dir/$n" "$debug_dir/$n.debug"
  objcopy --strip-all --add-gnu-debuglink="$debug_dir/$n.debug" "$build_dir/$n" "$ctx/dist/bin/$n"
  bins+=("$ctx/dist/bin/$n")
done
log "debug info kept apart in $debug_dir ($(cd "$debug_dir" && du -ch -- *.debug | tail -n1 | cut -f1)); binaries: $(for b in "${bins[@]}"; do printf '%s %s  ' "$(basename "$b")" "$(du -h "$b" | cut -f1)"; done)"

bash "$REPO_ROOT/scripts/build-base-image.sh" "${bins[@]}"

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
# The servers are dfs-coordinator and dfs-datanode; `dfs` is only the client.
for sub in up coordinator datanode; do
  if docker run --rm "$img" dfs "$sub" --help >/dev/null 2>&1; then
    die "dfs in the image has the '$sub' command: it was built with the local-cluster feature"
  fi
done
size="$(docker image inspect "$img" --format '{{.Size}}')"
if (( size > max_bytes )); then
  die "image $img is $size bytes, over the limit of $max_bytes ($(( max_bytes / 1000000 )) MB); binaries: $(du -b "${bins[@]}" | awk '{ n = split($2, p, "/"); printf "%s %d  ", p[n], $1 }')"
fi
log "built $img ($size bytes, limit $max_bytes; binaries: $(du -b "${bins[@]}" | awk '{ n = split($2, p, "/"); printf "%s %d  ", p[n], $1 }'))"
