#!/usr/bin/env python3
"""Checks that every metric the dashboard and the alert rules query exists.

Sources of truth, in order:
  * scrapes of running services (--scrape FILE, Prometheus text format), as
    written by scripts/container-e2e.sh: the coordinator's and the datanodes';
  * for a component that could not be scraped here (the operator needs a
    Kubernetes API), its metrics.rs source (--source FILE): the metric names
    registered there, histograms expanded to _bucket/_sum/_count.

Every `dfs_*` name in a PromQL expression of the dashboard JSON and of each
rules file must be found. `up` is allowed: Prometheus itself adds it. For names
found in a scrape, the label names used in `{...}` matchers must exist on that
metric too (target labels that Prometheus adds — namespace, service, pod, job,
instance, container, endpoint — are not in a raw scrape and are skipped).

    check_metric_names.py --dashboard D.json --rules R.yaml [--rules ...] \
        --scrape coordinator.prom --scrape dn1.prom --source operator/src/metrics.rs
"""
import argparse
import json
import re
import sys

import yaml

SYNTHETIC = {"up"}
TARGET_LABELS = {"namespace", "service", "pod", "job", "instance", "container", "endpoint", "le"}
NAME_RE = re.compile(r"\b(dfs_[a-z0-9_]+)\b")
SELECTOR_RE = re.compile(r"\b(dfs_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')


def parse_scrape(path):
    """{sample name: set of label names} from Prometheus text format."""
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            continue
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        out.setdefault(m.group(1), set()).update(labels)
    return out


def parse_source(path):
    """Metric names registered in a metrics.rs: {sample name: None (labels unknown)}."""
    text = open(path, encoding="utf-8").read()
    out = {}
    for m in re.finditer(r'"(dfs_[a-z0-9_]+)"', text):
        name = m.group(1)
        before = text[max(0, m.start() - 120):m.start()]
        if "HistogramOpts" in before or re.search(r"histogram\(\s*$", before):
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = None
        else:
            out[name] = None
    return out


def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def dashboard_exprs(path):
    d = json.load(open(path, encoding="utf-8"))
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    exprs.append((f"panel '{p.get('title')}'", t["expr"]))
            walk(p.get("panels", []))

    walk(d.get("panels", []))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            inner = re.match(r"label_values\((.*),\s*[a-zA-Z_]+\)\s*$", q)
            exprs.append((f"variable ${v['name']}", inner.group(1) if inner else q))
    return exprs


def rules_exprs(path):
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    if doc.get("kind") == "PrometheusRule":
        doc = doc["spec"]
    return [(f"rule {r.get('alert') or r.get('record')}", r["expr"])
            for g in doc["groups"] for r in g["rules"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dashboard", action="append", default=[])
    ap.add_argument("--rules", action="append", default=[])
    ap.add_argument("--scrape", action="append", default=[])
    ap.add_argument("--source", action="append", default=[])
    # NAME=FILE: a metric that exists only in a role the scraped cluster
    # does not have (e.g. the leader of a coordinator group), checked
    # against the metrics.rs that registers it instead.
    ap.add_argument("--role-only", action="append", default=[])
    a = ap.parse_args()

    known = {}  # name -> set(labels) from scrapes, or None from sources
    origin = {}
    for f in a.scrape:
        for k, v in parse_scrape(f).items():
            known.setdefault(k, set()).update(v)
            origin[k] = f"scrape {f}"
    for f in a.source:
        for k, v in parse_source(f).items():
            if k not in known:
                known[k] = v
                origin[k] = f"source {f}"
    for spec in a.role_only:
        name, _, f = spec.partition("=")
        if name not in parse_source(f):
            sys.exit(f"--role-only {spec}: {name} is not registered in {f}")
        if name not in known:
            known[name] = None
            origin[name] = f"source {f} (only in a role the scrape lacks)"

    exprs = []
    for f in a.dashboard:
        exprs += [(f"{f}: {w}", e) for w, e in dashboard_exprs(f)]
    for f in a.rules:
        exprs += [(f"{f}: {w}", e) for w, e in rules_exprs(f)]

    errors, used = [], {}
    for where, expr in exprs:
        bare = strip_strings(expr)
        names = set(NAME_RE.findall(bare))
        if not names and not (set(re.findall(r"\b[a-z_]+\b", bare)) & SYNTHETIC):
            errors.append(f"{where}: no dfs metric in {expr!r}")
        for n in names:
            used.setdefault(n, []).append(where)
            if n not in known:
                errors.append(f"{where}: metric {n} is not exported (not in any scrape or metrics source)")
        for n, matchers in SELECTOR_RE.findall(expr):
            labels = known.get(n)
            if labels is None:
                continue
            for lbl in MATCHER_RE.findall(matchers):
                if lbl not in TARGET_LABELS and lbl not in labels:
                    errors.append(f"{where}: {n} has no label {lbl!r} (has {sorted(labels)})")

    for n in sorted(used):
        print(f"  {'ok' if n in origin else '!!'}  {n:<55} {origin.get(n, 'MISSING')}")
    print(f"{len(used)} metric names in {len(exprs)} expressions; "
          f"{sum(1 for n in used if origin.get(n, '').startswith('scrape'))} checked against scrapes, "
          f"{sum(1 for n in used if origin.get(n, '').startswith('source'))} against source")
    if errors:
        print("\n".join(f"ERROR {e}" for e in errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
