#!/usr/bin/env bash
# Copies the DfsCluster CRD that `dfs-operator crd` prints (generated from the
# Rust types) to manifests/crd.yaml and charts/dfs-operator/crds/.
#   scripts/sync-crd.sh          write both copies
#   scripts/sync-crd.sh --check  fail (exit 1) when a copy differs
# Exit 3 (with a SKIP line) when the operator crate does not build yet.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

check=0; [[ "${1:-}" == --check ]] && check=1
copies=(manifests/crd.yaml charts/dfs-operator/crds/dfsclusters.dfs.io.yaml)

if ! operator_crate_present; then
  echo "SKIP: CRD sync: the operator crate does not exist yet" >&2; exit 3
fi
crd="$(mktemp)"; trap 'rm -f "$crd"' EXIT
if ! CARGO_TARGET_DIR="$DFS_OPERATOR_TARGET_DIR" cargo run --release -q -p dfs-operator -- crd > "$crd" 2>"$crd.err"; then
  echo "SKIP: CRD sync: dfs-operator does not build yet ($(tail -n1 "$crd.err"))" >&2; rm -f "$crd.err"; exit 3
fi
rm -f "$crd.err"
grep -q '^kind: CustomResourceDefinition' "$crd" || die "dfs-operator crd printed no CustomResourceDefinition"

rc=0
for copy in "${copies[@]}"; do
  if (( check )); then
    if ! cmp -s "$crd" "$copy"; then
      echo "DRIFT: $copy differs from \`dfs-operator crd\` (run scripts/sync-crd.sh)" >&2; rc=1
    fi
  else
    mkdir -p "$(dirname "$copy")"; cp "$crd" "$copy"; log "wrote $copy"
  fi
done
exit $rc
