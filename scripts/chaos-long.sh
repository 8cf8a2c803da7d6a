#!/usr/bin/env bash
# The long mode of the fault scenarios of issue 19 (docs/reliability.md,
# "Faults a process kill cannot show"): the same tests CI runs with a few
# rounds each, run with many rounds. Every round is a power cut (P1, P2,
# P3), so ROUNDS=1000 is a thousand power cuts per scenario.
#
# Usage: scripts/chaos-long.sh [--long | ROUNDS]   (default 200; --long: 1000)
# Env:   SEED (default 19; each scenario derives its own from it),
#        RACE_SECS (scenario 10's length, default 600),
#        CARGO_TARGET_DIR (default the shared cache)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dfs-target}"
rounds="${1:-200}"
[ "$rounds" = "--long" ] && rounds=1000
export DFS_CHAOS_POWER_ROUNDS="$rounds"
export DFS_CHAOS_SEED="${SEED:-19}"
export DFS_CHAOS_RACE_SECS="${RACE_SECS:-600}"
# The datanodes and coordinators under test: the build CI tests.
cargo build -p dfs-cli --bin dfs
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
for t in power_loss coordinator_power disk_faults racing_clients datanode_partition; do
  if [ -e "tests/chaos/tests/$t.rs" ]; then
    cargo test -p dfs-chaos --test "$t" -- --nocapture --test-threads 1 2>&1 | tee -a "$log" || status=$?
  fi
done
echo
echo "== summary (rounds $DFS_CHAOS_POWER_ROUNDS, seed $DFS_CHAOS_SEED)"
grep -E '^scenario ' "$log" || true
exit "$status"
