#!/usr/bin/env bash
# Copies the DfsCluster CRD that `dfs-operator crd` prints (generated from the
# Rust types) to manifests/crd.yaml and charts/dfs-operator/crds/.
#   scripts/sync-crd.sh          write both copies
#   scripts/sync-crd.sh --check  fail (exit 1) when a copy differs
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

check=0; [[ "${1:-}" == --check ]] && check=1
copies=(manifests/crd.yaml charts/dfs-operator/crds/dfsclusters.dfs.io.yaml)

crd="$(mktemp)"; trap 'rm -f "$crd"' EXIT
if ! CARGO_TARGET_DIR="$DFS_TARGET_DIR" cargo run -q -p dfs-operator -- crd > "$crd" 2>"$crd.err"; then
  cat "$crd.err" >&2; rm -f "$crd.err"; die "dfs-operator crd failed"
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
