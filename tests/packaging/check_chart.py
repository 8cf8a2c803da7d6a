#!/usr/bin/env python3
"""Offline checks of the Helm chart and the raw manifests (no cluster needed).

  * `helm lint --strict` (Helm 4 via helm-python-sdk) for Kubernetes 1.32;
  * renders with several value sets; values.schema.json must reject bad values;
  * every rendered object and manifests/operator.yaml validated against the
    Kubernetes 1.32 schemas (kubernetes-validate --strict; it skips CRD kinds);
  * the operator Deployment: hardened securityContext, resources, probes on the
    operator's metrics port (read from operator/src/main.rs);
  * dashboard ConfigMap: Grafana sidecar label, JSON identical to manifests/monitoring;
  * PrometheusRule: `promtool check rules` on its spec;
  * RBAC rules identical to the operator crate's manifests/rbac.yaml;
  * DfsCluster samples (manifests/examples, the chart's sampleCluster) against
    the generated CRD's openAPIV3Schema (jsonschema) — skipped, with the reason
    printed, while the CRD has not been generated yet.
Exit 1 on any failure.
"""
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import helm_python
import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "dfs-operator"
VENV_BIN = pathlib.Path(sys.executable).parent
KUBE_VERSION = "1.32.0"
failures, skips = [], []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


def ok(msg):
    print(f"  ok   {msg}")


def skip(msg):
    skips.append(msg)
    print(f"  SKIP {msg}")


def render(values, namespace="dfs-system", name="dfs-operator"):
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values, name=name, namespace=namespace, is_install=True)
        crds = chart.crds
    finally:
        chart.close()
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs, out, crds


def k8s_validate(docs, label):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(docs, f)
    r = subprocess.run([str(VENV_BIN / "kubernetes-validate"), "-k", KUBE_VERSION, "--strict", "--quiet", f.name],
                       capture_output=True, text=True)
    pathlib.Path(f.name).unlink()
    if r.returncode != 0:
        fail(f"{label}: kubernetes-validate --strict: {r.stdout.strip()} {r.stderr.strip()}")
    else:
        kinds = sorted({d["kind"] for d in docs})
        ok(f"{label}: {len(docs)} objects valid for Kubernetes {KUBE_VERSION} ({', '.join(kinds)})")


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def lint():
    r = helm_python.lint(str(CHART), strict=True, kube_version="v" + KUBE_VERSION)
    bad = [m for m in r.get("messages", []) if m.get("severity", 0) >= 2]
    if r.get("errors") or bad:
        fail(f"helm lint --strict: {r}")
    else:
        info = [m["error"] for m in r.get("messages", [])]
        ok(f"helm lint --strict (kube {KUBE_VERSION}){' — info: ' + '; '.join(info) if info else ''}")


def check_deployment(docs):
    main_rs = (ROOT / "operator" / "src" / "main.rs").read_text()
    m = re.search(r'DEFAULT_METRICS_ADDR: &str = "[^"]*:(\d+)"', main_rs)
    port = int(m.group(1)) if m else None
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c.get("securityContext", {})
    psc = pod.get("securityContext", {})
    checks = {
        "runAsNonRoot": sc.get("runAsNonRoot") is True or psc.get("runAsNonRoot") is True,
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": sc.get("capabilities", {}).get("drop") == ["ALL"],
        "seccomp RuntimeDefault": psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "resources requests+limits": bool(c.get("resources", {}).get("requests")) and bool(c.get("resources", {}).get("limits")),
        "liveness /healthz": c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz",
        "readiness /readyz": c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz",
        f"metrics port = operator default {port}": port is not None and c["ports"][0]["containerPort"] == port,
        "command dfs-operator run": c.get("command") == ["dfs-operator"] and c.get("args") == ["run"],
        "POD_NAME/POD_NAMESPACE env": {"POD_NAME", "POD_NAMESPACE"} <= {e["name"] for e in c.get("env", [])},
    }
    for what, good in checks.items():
        (ok if good else fail)(f"Deployment: {what}")


def check_dashboard(docs):
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    if cm["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
        fail("dashboard ConfigMap lacks label grafana_dashboard: \"1\"")
    data = cm["data"]["dfs-dashboard.json"]
    src = json.loads((ROOT / "manifests" / "monitoring" / "dfs-dashboard.json").read_text())
    if json.loads(data) != src:
        fail("dashboard ConfigMap differs from manifests/monitoring/dfs-dashboard.json")
    else:
        ok("dashboard ConfigMap: grafana_dashboard=\"1\", JSON equals manifests/monitoring/dfs-dashboard.json")


def check_prometheus_rule(docs):
    (pr,) = by_kind(docs, "PrometheusRule")
    src = yaml.safe_load((ROOT / "manifests" / "monitoring" / "dfs-alerts.rules.yaml").read_text())
    if pr["spec"] != src:
        fail("chart PrometheusRule spec differs from manifests/monitoring/dfs-alerts.rules.yaml")
    promtool = shutil.which("promtool")
    if not promtool:
        fail("promtool not found")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(pr["spec"], f)
    r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    pathlib.Path(f.name).unlink()
    (ok if r.returncode == 0 else fail)(f"chart PrometheusRule: promtool check rules: {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()}")


def rules_of(docs, kind):
    return [d["rules"] for d in docs if d["kind"] == kind]


def check_rbac(docs):
    theirs_path = ROOT / "manifests" / "rbac.yaml"
    if not theirs_path.exists():
        skip("RBAC agreement: manifests/rbac.yaml (operator crate) does not exist yet")
        return
    theirs = [d for d in yaml.safe_load_all(theirs_path.read_text()) if d]
    for kind in ("ClusterRole", "Role"):
        a, b = rules_of(docs, kind), rules_of(theirs, kind)
        (ok if a == b else fail)(f"RBAC {kind} rules {'equal' if a == b else 'DIFFER from'} manifests/rbac.yaml")
    check_rbac_bounds(docs)


def check_rbac_bounds(docs):
    # Nothing beyond the operator's needs: no wildcards; Secrets only by
    # name (get, create, patch: never list or watch).
    for d in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for r in d["rules"]:
            if "*" in r.get("verbs", []) + r.get("resources", []) + r.get("apiGroups", []):
                fail(f"RBAC {d['kind']} uses a wildcard: {r}")
            if "secrets" in r.get("resources", []) and sorted(r["verbs"]) != ["create", "get", "patch"]:
                fail(f"RBAC {d['kind']} grants more than get/create/patch on secrets: {r}")
            if "signers" in r.get("resources", []) and (
                    r.get("resourceNames") != ["dfs.io/datanode"] or r["verbs"] != ["sign"]):
                fail(f"RBAC {d['kind']} may sign for more than the signer dfs.io/datanode: {r}")


def check_namespaced_rbac(docs, namespace):
    # watchNamespace: every namespaced right is a Role there; the
    # ClusterRole keeps only cluster-scoped reads, Node labels and the
    # datanode signer's name (signer names are cluster-wide).
    check_rbac_bounds(docs)
    cluster = [r for d in by_kind(docs, "ClusterRole") for r in d["rules"]]
    scoped = sorted(res for r in cluster for res in r["resources"])
    (ok if scoped == ["customresourcedefinitions", "nodes", "signers"] else fail)(
        f"watchNamespace: the ClusterRole covers only CRDs, nodes and signers (got {scoped})")
    roles = [d for d in by_kind(docs, "Role") if d["metadata"].get("namespace") == namespace]
    res = sorted(x for d in roles for r in d["rules"] for x in r["resources"])
    want = {"dfsclusters", "secrets", "statefulsets", "pods", "networkpolicies", "events",
            "podcertificaterequests", "podcertificaterequests/status"}
    (ok if want <= set(res) else fail)(f"watchNamespace: a Role in {namespace} holds the namespaced rights (got {res})")


def crd_schema(crds):
    path = CHART / "crds" / "dfsclusters.dfs.io.yaml"
    if not path.exists():
        return None
    crd = yaml.safe_load(path.read_text())
    (ver,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return crd, ver["name"], ver["schema"]["openAPIV3Schema"]


def k8s_openapi_to_jsonschema(s):
    """Structural-schema keywords jsonschema does not know are dropped; int-or-string allowed."""
    if isinstance(s, dict):
        out = {k: k8s_openapi_to_jsonschema(v) for k, v in s.items() if not k.startswith("x-kubernetes-")}
        if s.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if s.get("nullable"):
            t = out.get("type")
            if isinstance(t, str):
                out["type"] = [t, "null"]
        out.pop("nullable", None)
        return out
    if isinstance(s, list):
        return [k8s_openapi_to_jsonschema(v) for v in s]
    return s


def check_samples(crds, sample_docs):
    got = crd_schema(crds)
    if got is None:
        skip("DfsCluster samples vs CRD schema: charts/dfs-operator/crds/dfsclusters.dfs.io.yaml not generated yet "
             "(scripts/sync-crd.sh needs the operator crate to build)")
        return
    crd, version, schema = got
    if not crds:
        fail("chart.crds is empty although crds/ holds the CRD")
    group = crd["spec"]["group"]
    validator = jsonschema.Draft7Validator(k8s_openapi_to_jsonschema(schema))
    samples = [(str(p.relative_to(ROOT)), d) for p in sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
               for d in yaml.safe_load_all(p.read_text()) if d]
    samples += [("chart sampleCluster", d) for d in sample_docs]
    for where, d in samples:
        errs = []
        if d.get("apiVersion") != f"{group}/{version}" or d.get("kind") != crd["spec"]["names"]["kind"]:
            errs.append(f"apiVersion/kind {d.get('apiVersion')}/{d.get('kind')} != {group}/{version}/{crd['spec']['names']['kind']}")
        body = {k: v for k, v in d.items() if k not in ("apiVersion", "kind", "metadata")}
        errs += [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(body)]
        (fail if errs else ok)(f"{where}: DfsCluster {'invalid: ' + '; '.join(errs) if errs else 'valid against the CRD schema'}")


def main():
    print("== helm lint")
    lint()

    print("== render + validate")
    value_sets = {
        "defaults": {},
        "everything on": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                          "prometheusRule": {"enabled": True}, "sampleCluster": {"enabled": True},
                          "watchNamespace": "storage", "replicaCount": 2, "imagePullSecrets": [{"name": "regcred"}],
                          "image": {"repository": "registry.example.com/dfs", "tag": "0.1.0", "pullPolicy": "Always"}},
        "minimal (no rbac/sa/service/dashboard, no leader election)": {
            "rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"},
            "service": {"enabled": False}, "dashboard": {"enabled": False}, "leaderElection": {"enabled": False}},
    }
    rendered = {}
    for label, values in value_sets.items():
        try:
            docs, _, crds = render(values)
        except helm_python.HelmError as e:
            fail(f"render '{label}': {e}")
            continue
        rendered[label] = (docs, crds)
        k8s_validate([d for d in docs if d["kind"] not in ("ServiceMonitor", "PrometheusRule", "DfsCluster")], f"render '{label}'")
    docs, crds = rendered["defaults"]
    check_deployment(docs)
    check_dashboard(docs)
    check_rbac(docs)
    all_docs, _ = rendered["everything on"]
    check_namespaced_rbac(all_docs, "storage")
    check_prometheus_rule(all_docs)
    sm = by_kind(all_docs, "ServiceMonitor")
    (ok if sm and sm[0]["metadata"]["labels"].get("release") == "kube-prometheus-stack" else fail)("ServiceMonitor rendered with extra labels")
    env = {e["name"]: e.get("value") for e in by_kind(all_docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    (ok if env.get("DFS_OPERATOR_NAMESPACE") == "storage" else fail)("watchNamespace → DFS_OPERATOR_NAMESPACE")
    minimal, _ = rendered["minimal (no rbac/sa/service/dashboard, no leader election)"]
    kinds = sorted(d["kind"] for d in minimal)
    (ok if kinds == ["Deployment"] else fail)(f"minimal values render only the Deployment (got {kinds})")

    print("== values.schema.json rejects bad values")
    for label, values in {"unknown key": {"imagee": {}}, "bad pullPolicy": {"image": {"repository": "dfs", "pullPolicy": "Sometimes"}},
                          "port out of range": {"metricsPort": 70000}, "bad duration": {"coordinatorTimeout": "5 seconds"}}.items():
        try:
            render(values)
            fail(f"values.schema.json accepted {label}: {values}")
        except helm_python.HelmError:
            ok(f"values.schema.json rejects {label}")

    print("== raw manifests")
    op = [d for d in yaml.safe_load_all((ROOT / "manifests" / "operator.yaml").read_text()) if d]
    k8s_validate(op, "manifests/operator.yaml")
    prom = [d for d in yaml.safe_load_all((ROOT / "manifests" / "monitoring" / "dfs-prometheusrule.yaml").read_text()) if d]
    (ok if prom[0]["spec"] == yaml.safe_load((ROOT / "manifests" / "monitoring" / "dfs-alerts.rules.yaml").read_text())
     else fail)("manifests/monitoring/dfs-prometheusrule.yaml carries the plain rules file")

    print("== DfsCluster samples")
    check_samples(crds, by_kind(all_docs, "DfsCluster"))

    print(f"chart checks: {len(failures)} failed, {len(skips)} skipped")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
