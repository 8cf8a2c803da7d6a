#!/usr/bin/env bash
# Creates (or refreshes) the Python venv the operator end-to-end test needs:
# kmock (a Kubernetes API emulator) plus its dependencies. Idempotent: an
# existing venv with kmock importable is left as it is.
#
#   bash scripts/operator-e2e/setup.sh        # venv at ${DFS_VENV:-$HOME/.cache/dfs-venv}
set -euo pipefail

VENV="${DFS_VENV:-$HOME/.cache/dfs-venv}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import kmock, aiohttp, jsonpatch, yaml' 2>/dev/null; then
    echo "operator-e2e: venv ready at $VENV"
    exit 0
fi

echo "operator-e2e: creating venv at $VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet 'kmock==0.8.*' aiohttp jsonpatch pyyaml
"$VENV/bin/python" -c 'import kmock, aiohttp, jsonpatch, yaml'
command -v kubectl >/dev/null || { echo "operator-e2e: kubectl is not on PATH" >&2; exit 1; }
echo "operator-e2e: venv ready at $VENV"
