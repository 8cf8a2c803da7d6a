#!/usr/bin/env bash
# The long linearizability check of issue 17: the test that CI runs on a
# short history (coordinator/tests/linearizable.rs), on a long one: three
# dfs-coordinator processes as one Raft group, four concurrent clients doing
# random Mkdir/Delete/Rename/Stat calls while the leader is SIGKILLed and
# restarted FAILOVERS times (and a follower once), then every recorded call
# checked against the namespace's sequential model
# (testkit/src/linearizability.rs). Prints the figures: calls checked,
# indeterminate ones, failover times, the checker's time, the run's time.
#
# Usage: scripts/linearizability.sh [OPS]   (default 50000)
# Env:   FAILOVERS (leader kills, default 8), SEED (replays a seed's calls;
#        printed by every run), CARGO_TARGET_DIR (default the shared cache)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dfs-target}"
export DFS_LINEARIZABILITY_OPS="${1:-50000}"
export DFS_LINEARIZABILITY_FAILOVERS="${FAILOVERS:-8}"
if [ -n "${SEED:-}" ]; then
  export DFS_LINEARIZABILITY_SEED="$SEED"
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The test profile CI builds (the same binaries, no extra build).
status=0
cargo test -p dfs-coordinator --test linearizable -- --nocapture 2>&1 | tee "$log" || status=$?

echo
echo "== figures"
grep -E '^linearizability: (seed|leader|.*ops checked)' "$log" || true
exit "$status"
