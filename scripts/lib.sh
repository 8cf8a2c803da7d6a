# Shared helpers of the packaging scripts (sourced, not run).
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DFS_VENV="${DFS_VENV:-$HOME/.cache/dfs-venv}"
# Release builds: the services/CLI and the operator use separate target dirs on
# this machine so the kube dependency tree is built only once (by whoever owns it).
DFS_TARGET_DIR="${DFS_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/dfs-target}}"
DFS_OPERATOR_TARGET_DIR="${DFS_OPERATOR_TARGET_DIR:-$HOME/.cache/dfs-target-operator}"
DFS_IMAGE="${DFS_IMAGE:-dfs}"
DFS_BASE_IMAGE="${DFS_BASE_IMAGE:-dfs-base:local}"

# The workspace version (image tag, chart appVersion).
dfs_version() {
  sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -n1
}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# True when the operator crate exists and builds (it is being written in parallel).
operator_crate_present() {
  [[ -f "$REPO_ROOT/operator/Cargo.toml" && -f "$REPO_ROOT/operator/src/main.rs" ]]
}
