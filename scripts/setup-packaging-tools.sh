#!/usr/bin/env bash
# Installs what the packaging checks need, idempotently:
#   - Python venv at ${DFS_VENV:-$HOME/.cache/dfs-venv} (shared with the operator
#     e2e's kmock; never deleted) + helm-python-sdk, kubernetes-validate,
#     jsonschema, pyyaml;
#   - promtool (Debian package prometheus) when it is not on PATH.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [[ ! -x "$DFS_VENV/bin/python" ]]; then
  log "creating venv $DFS_VENV"
  python3 -m venv "$DFS_VENV"
fi
if ! "$DFS_VENV/bin/python" -c 'import helm_python, kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  log "pip install helm-python-sdk kubernetes-validate jsonschema pyyaml into $DFS_VENV"
  "$DFS_VENV/bin/python" -m pip install --quiet 'helm-python-sdk>=0.2,<0.3' 'kubernetes-validate==1.37.*' 'jsonschema>=4' pyyaml
fi
if ! command -v promtool >/dev/null; then
  log "apt-get install prometheus (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
log "tools ready: $("$DFS_VENV/bin/python" -c 'import helm_python; print("helm", helm_python.helm_sdk_version())' 2>/dev/null || echo helm-python-sdk), $(promtool --version 2>&1 | head -n1)"
