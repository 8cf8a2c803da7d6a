#!/usr/bin/env bash
# Every packaging check, in order; exits non-zero when any fails and prints a
# summary. Called by .ci/run:   bash scripts/ci-packaging.sh
#
#   1 tools      venv (helm-python-sdk, kubernetes-validate, jsonschema) + promtool
#   2 crd        the CRD copies equal `dfs-operator crd` (skipped until it builds)
#   3 generated  dashboard, chart files/, PrometheusRule, operator.yaml up to date
#   4 promtool   check rules (plain file + PrometheusRule) and unit tests
#   5 chart      helm lint --strict, renders, kubernetes-validate, RBAC, samples vs CRD
#   6 image      release binaries → offline base → dfs:<version> (+ smoke test)
#   7 e2e        coordinator + 3 datanodes in containers: put/get, corruption, probes, scrapes
#   8 metrics    every metric in the dashboard and rules exists in the e2e scrapes
#                (operator metrics: in operator/src/metrics.rs — it needs a Kubernetes API to run)
#
# Env: DFS_PACKAGING_SKIP_IMAGE=1 skips 6–8 (and 8 then checks against sources only).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

PY="$DFS_VENV/bin/python"
results=()
failed=0
step() { # name command...
  local name="$1"; shift
  local t0=$SECONDS rc
  printf '\n======== %s\n' "$name"
  "$@"; rc=$?
  local dt=$((SECONDS - t0))
  case $rc in
    0) results+=("PASS  $name (${dt}s)") ;;
    3) results+=("SKIP  $name (${dt}s) — see the SKIP line above") ;;
    *) results+=("FAIL  $name (${dt}s, exit $rc)"); failed=1 ;;
  esac
  return 0
}

scrapes="$(mktemp -d)"
trap 'rm -rf "$scrapes"' EXIT

step "tools (venv + promtool)" bash scripts/setup-packaging-tools.sh
step "CRD copies match dfs-operator crd" bash scripts/sync-crd.sh --check
step "generated files up to date" "$PY" scripts/generate.py --check
step "promtool check rules" promtool check rules manifests/monitoring/dfs-alerts.rules.yaml
step "promtool check PrometheusRule spec" bash -c "'$PY' -c 'import yaml,sys; yaml.safe_dump(yaml.safe_load(open(\"manifests/monitoring/dfs-prometheusrule.yaml\"))[\"spec\"], sys.stdout)' > '$scrapes/pr.yaml' && promtool check rules '$scrapes/pr.yaml'"
step "promtool test rules" promtool test rules tests/packaging/alerts.test.yaml
step "chart lint/render/validate" "$PY" tests/packaging/check_chart.py

if [[ "${DFS_PACKAGING_SKIP_IMAGE:-0}" == 1 ]]; then
  results+=("SKIP  image, container e2e (DFS_PACKAGING_SKIP_IMAGE=1)")
  step "metric names (sources only)" "$PY" tests/packaging/check_metric_names.py \
    --dashboard manifests/monitoring/dfs-dashboard.json --rules manifests/monitoring/dfs-alerts.rules.yaml \
    --source coordinator/src/metrics.rs --source datanode/src/metrics.rs --source operator/src/metrics.rs
else
  step "image build (scripts/build-image.sh)" bash scripts/build-image.sh
  step "container e2e (scripts/container-e2e.sh)" env DFS_E2E_SCRAPE_DIR="$scrapes" bash scripts/container-e2e.sh
  if [[ -s "$scrapes/coordinator.prom" && -s "$scrapes/dn1.prom" ]]; then
    step "metric names vs real scrapes" "$PY" tests/packaging/check_metric_names.py \
      --dashboard manifests/monitoring/dfs-dashboard.json --rules manifests/monitoring/dfs-alerts.rules.yaml \
      --scrape "$scrapes/coordinator.prom" --scrape "$scrapes/dn1.prom" --scrape "$scrapes/dn2.prom" --scrape "$scrapes/dn3.prom" \
      --source operator/src/metrics.rs \
      --role-only dfs_coordinator_raft_follower_lag_entries=coordinator/src/metrics.rs
  else
    results+=("FAIL  metric names vs real scrapes — the container e2e produced no scrapes"); failed=1
  fi
fi

printf '\n======== packaging summary\n'
printf '%s\n' "${results[@]}"
if (( failed )); then echo "packaging: FAILED"; exit 1; fi
echo "packaging: OK"
