# Shared helpers of the packaging scripts (sourced, not run).
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DFS_VENV="${DFS_VENV:-$HOME/.cache/dfs-venv}"
# One target dir for every build (the same one .ci/run uses), so CI reuses the
# test build and shared crates are compiled once.
DFS_TARGET_DIR="${DFS_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/dfs-target}}"
DFS_IMAGE="${DFS_IMAGE:-dfs}"
DFS_BASE_IMAGE="${DFS_BASE_IMAGE:-dfs-base:local}"

# The workspace version (image tag, chart appVersion).
dfs_version() {
  sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -n1
}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

