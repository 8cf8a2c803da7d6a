#!/usr/bin/env python3
"""Generates the Grafana dashboard manifests/monitoring/dfs-dashboard.json.

The JSON is checked in (users import it as is); this script is its source, and
`scripts/generate.sh --check` fails when the two drift. Every query selects one
DfsCluster by the Prometheus labels the operator's ServiceMonitor produces:
`namespace` and `service` (= "<cluster>-coordinator-metrics" /
"<cluster>-datanode-metrics"). Operator metrics carry no cluster label.

    python3 scripts/gen-dashboard.py > manifests/monitoring/dfs-dashboard.json
"""
import json
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
COORD = 'namespace="$namespace", service="$cluster-coordinator-metrics"'
DN = 'namespace="$namespace", service="$cluster-datanode-metrics"'

panels = []
_next_id = [1]


def _id():
    i = _next_id[0]
    _next_id[0] += 1
    return i


def row(title, y):
    panels.append({"type": "row", "title": title, "id": _id(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def panel(kind, title, desc, exprs, grid, unit="short", **extra):
    p = {
        "type": kind,
        "title": title,
        "description": desc,
        "id": _id(),
        "datasource": DS,
        "gridPos": dict(zip("hwxy", grid)),
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(exprs)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area", "textMode": "auto"}
    p.update(extra)
    return p


def thresholds(*steps):
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


y = 0
row("Capacity and health", y); y += 1
p = panel("stat", "Capacity used", "Bytes used on live datanodes / their usable capacity.",
          [(f"sum(dfs_coordinator_capacity_used_bytes{{{COORD}}}) / sum(dfs_coordinator_capacity_total_bytes{{{COORD}}})", "used")],
          (5, 4, 0, y), unit="percentunit")
p["fieldConfig"]["defaults"].update(min=0, max=1, thresholds=thresholds((None, "green"), (0.75, "orange"), (0.85, "red")))
panels.append(p)
p = panel("stat", "Missing chunks", "Chunks with no live replica: data is unreadable until a replica comes back.",
          [(f"max(dfs_coordinator_missing_chunks{{{COORD}}})", "missing")], (5, 4, 4, y))
p["fieldConfig"]["defaults"]["thresholds"] = thresholds((None, "green"), (1, "red"))
panels.append(p)
p = panel("stat", "Under-replicated chunks", "Chunks below their replication factor.",
          [(f"max(dfs_coordinator_under_replicated_chunks{{{COORD}}})", "under-replicated")], (5, 4, 8, y))
p["fieldConfig"]["defaults"]["thresholds"] = thresholds((None, "green"), (1, "orange"))
panels.append(p)
p = panel("stat", "Time to full redundancy", "The coordinator's estimate of the seconds until every chunk is back at its replication factor (0 = fully redundant).",
          [(f"max(dfs_coordinator_repair_eta_seconds{{{COORD}}})", "eta")], (5, 4, 12, y), unit="s")
p["fieldConfig"]["defaults"]["thresholds"] = thresholds((None, "green"), (1, "orange"))
panels.append(p)
panels.append(panel("stat", "Files / directories / chunks", "Size of the namespace.",
                    [(f"max(dfs_coordinator_files{{{COORD}}})", "files"),
                     (f"max(dfs_coordinator_directories{{{COORD}}})", "directories"),
                     (f"max(dfs_coordinator_chunks{{{COORD}}})", "chunks")], (5, 8, 16, y)))
y += 5
panels.append(panel("timeseries", "Capacity and usage", "Cluster capacity as the coordinator sees it, and per-datanode usage.",
                    [(f"sum(dfs_coordinator_capacity_total_bytes{{{COORD}}})", "total"),
                     (f"sum(dfs_coordinator_capacity_used_bytes{{{COORD}}})", "used"),
                     (f"sum by (pod) (dfs_datanode_capacity_used_bytes{{{DN}}})", "used {{pod}}")],
                    (8, 12, 0, y), unit="bytes"))
panels.append(panel("timeseries", "Datanodes by state", "Datanodes per state (healthy, full, suspect, dead, draining, decommissioned, maintenance).",
                    [(f"sum by (state) (dfs_coordinator_datanodes{{{COORD}}})", "{{state}}")],
                    (8, 12, 12, y)))
y += 8
row("Redundancy and repair", y); y += 1
panels.append(panel("timeseries", "Under-replicated and missing chunks", "Chunks below their replication factor, with no live replica, and above it.",
                    [(f"max(dfs_coordinator_under_replicated_chunks{{{COORD}}})", "under-replicated"),
                     (f"max(dfs_coordinator_missing_chunks{{{COORD}}})", "missing"),
                     (f"max(dfs_coordinator_over_replicated_chunks{{{COORD}}})", "over-replicated")],
                    (8, 8, 0, y)))
panels.append(panel("timeseries", "Time to full redundancy", "Estimated seconds until full redundancy, and the bytes still to copy.",
                    [(f"max(dfs_coordinator_repair_eta_seconds{{{COORD}}})", "eta (s)"),
                     (f"max(dfs_coordinator_repair_remaining_bytes{{{COORD}}})", "remaining bytes")],
                    (8, 8, 8, y), unit="s",
                    ))
panels[-1]["fieldConfig"]["overrides"] = [{"matcher": {"id": "byName", "options": "remaining bytes"},
                                           "properties": [{"id": "unit", "value": "bytes"},
                                                          {"id": "custom.axisPlacement", "value": "right"}]}]
panels.append(panel("timeseries", "Re-replication progress", "Repair queue, repairs in flight, completed repairs per second and orphan replicas deleted.",
                    [(f"max(dfs_coordinator_repair_queue_chunks{{{COORD}}})", "queued chunks"),
                     (f"max(dfs_coordinator_repairs_in_flight{{{COORD}}})", "in flight"),
                     (f"sum(rate(dfs_coordinator_repairs_completed_total{{{COORD}}}[$__rate_interval]))", "completed/s"),
                     (f"sum(rate(dfs_coordinator_orphan_replicas_deleted_total{{{COORD}}}[$__rate_interval]))", "orphans deleted/s")],
                    (8, 8, 16, y)))
y += 8
row("Traffic and latency", y); y += 1
panels.append(panel("timeseries", "Read and write throughput", "Client writes (upload stream in), reads (download stream out), and replication traffic between datanodes.",
                    [(f'sum(rate(dfs_datanode_bytes_in_total{{{DN}, stream="upload"}}[$__rate_interval]))', "write"),
                     (f'sum(rate(dfs_datanode_bytes_out_total{{{DN}, stream="download"}}[$__rate_interval]))', "read"),
                     (f'sum(rate(dfs_datanode_bytes_in_total{{{DN}, stream="replicate"}}[$__rate_interval]))', "replication in")],
                    (8, 12, 0, y), unit="Bps"))
panels.append(panel("timeseries", "Coordinator RPC latency p50 / p99 by method", "gRPC latency quantiles per method, from the coordinator's histogram.",
                    [(f"histogram_quantile(0.5, sum by (le, method) (rate(dfs_coordinator_rpc_duration_seconds_bucket{{{COORD}}}[$__rate_interval])))", "p50 {{method}}"),
                     (f"histogram_quantile(0.99, sum by (le, method) (rate(dfs_coordinator_rpc_duration_seconds_bucket{{{COORD}}}[$__rate_interval])))", "p99 {{method}}")],
                    (8, 12, 12, y), unit="s"))
y += 8
panels.append(panel("timeseries", "Datanode upload / download latency p50 / p99", "Chunk upload (to a durable write quorum) and download stream latency.",
                    [(f"histogram_quantile(0.5, sum by (le) (rate(dfs_datanode_upload_duration_seconds_bucket{{{DN}}}[$__rate_interval])))", "upload p50"),
                     (f"histogram_quantile(0.99, sum by (le) (rate(dfs_datanode_upload_duration_seconds_bucket{{{DN}}}[$__rate_interval])))", "upload p99"),
                     (f"histogram_quantile(0.5, sum by (le) (rate(dfs_datanode_download_duration_seconds_bucket{{{DN}}}[$__rate_interval])))", "download p50"),
                     (f"histogram_quantile(0.99, sum by (le) (rate(dfs_datanode_download_duration_seconds_bucket{{{DN}}}[$__rate_interval])))", "download p99")],
                    (8, 12, 0, y), unit="s"))
panels.append(panel("timeseries", "RPC rate by method and code", "Coordinator gRPC requests per second.",
                    [(f"sum by (method, code) (rate(dfs_coordinator_rpc_requests_total{{{COORD}}}[$__rate_interval]))", "{{method}} {{code}}")],
                    (8, 12, 12, y), unit="reqps"))
y += 8
row("Datanodes", y); y += 1
p = panel("timeseries", "Heartbeat age", "Seconds since each datanode's last heartbeat (suspect after a few missed heartbeats, dead after --dead-after).",
          [(f"max by (node_id) (dfs_coordinator_heartbeat_age_seconds{{{COORD}}})", "{{node_id}}")],
          (8, 8, 0, y), unit="s")
p["fieldConfig"]["defaults"]["thresholds"] = thresholds((None, "green"), (10, "orange"), (30, "red"))
panels.append(p)
panels.append(panel("timeseries", "Checksum failures", "Checksum mismatches found by datanodes, by where (frame, read, scrub). Any is worth a look: it means a disk returned bad data.",
                    [(f"sum by (source) (increase(dfs_datanode_checksum_failures_total{{{DN}}}[$__rate_interval]))", "{{source}}")],
                    (8, 8, 8, y)))
panels.append(panel("timeseries", "Chunks stored per datanode", "Replicas each datanode holds.",
                    [(f"sum by (pod) (dfs_datanode_chunks_stored{{{DN}}})", "{{pod}}")],
                    (8, 8, 16, y)))
y += 8
panels.append(panel("timeseries", "Small-chunk volumes", "Bytes in the datanodes' small-chunk volumes: live records, and garbage (deleted or replaced) awaiting compaction.",
                    [(f"sum by (pod, state) (dfs_datanode_volume_bytes{{{DN}}})", "{{pod}} {{state}}")],
                    (8, 12, 0, y), unit="bytes"))
panels.append(panel("timeseries", "Small chunks per group commit", "Average small chunks made durable by one fdatasync, per datanode: above 1 means concurrent small writes share their fsync.",
                    [(f"sum by (pod) (rate(dfs_datanode_volume_commit_chunks_sum{{{DN}}}[$__rate_interval])) / sum by (pod) (rate(dfs_datanode_volume_commit_chunks_count{{{DN}}}[$__rate_interval]))", "{{pod}}")],
                    (8, 12, 12, y)))
y += 8
row("Coordinator group", y); y += 1
panels.append(panel("timeseries", "Raft term and leader", "Term per coordinator, and which one leads (1). A single coordinator leads term 0.",
                    [(f"max by (pod) (dfs_coordinator_raft_term{{{COORD}}})", "term {{pod}}"),
                     (f"max by (pod) (dfs_coordinator_raft_leader{{{COORD}}})", "leader {{pod}}")],
                    (8, 8, 0, y)))
panels.append(panel("timeseries", "Log and applied index", "Last Raft log index and last applied index per coordinator; the gap is work not yet applied.",
                    [(f"max by (pod) (dfs_coordinator_raft_last_log_index{{{COORD}}})", "log {{pod}}"),
                     (f"max by (pod) (dfs_coordinator_raft_applied_index{{{COORD}}})", "applied {{pod}}")],
                    (8, 8, 8, y)))
panels.append(panel("timeseries", "Follower lag and elections", "Entries the furthest-behind member lacks (seen by the leader), and leader changes per 15 minutes.",
                    [(f"max(dfs_coordinator_raft_max_follower_lag_entries{{{COORD}}})", "max follower lag"),
                     (f"max(increase(dfs_coordinator_raft_leader_changes_total{{{COORD}}}[15m]))", "leader changes / 15m")],
                    (8, 8, 16, y)))
y += 8
panels.append(panel("timeseries", "Calls forwarded to the leader", "Calls followers handled for the leader per second, by outcome (refused: no leader, a second hop or too many in flight; unreachable: the leader did not answer).",
                    [(f"sum by (outcome) (rate(dfs_coordinator_forwarded_calls_total{{{COORD}}}[$__rate_interval]))", "{{outcome}}")],
                    (8, 12, 0, y), unit="ops"))
panels.append(panel("timeseries", "Linearizable reads", "Leadership confirmation rounds per second on the leader, and the reads each round answered on average.",
                    [(f"sum(rate(dfs_coordinator_read_barrier_rounds_total{{{COORD}}}[$__rate_interval]))", "rounds/s"),
                     (f"sum(rate(dfs_coordinator_read_barrier_reads_total{{{COORD}}}[$__rate_interval])) / clamp_min(sum(rate(dfs_coordinator_read_barrier_rounds_total{{{COORD}}}[$__rate_interval])), 1e-9)", "reads per round")],
                    (8, 12, 12, y)))
y += 8
panels.append(panel("timeseries", "Lag per follower", "Entries each member's log lacks behind the leader's (seen by the leader).",
                    [(f"max by (member) (dfs_coordinator_raft_follower_lag_entries{{{COORD}}})", "member {{member}}")],
                    (8, 12, 0, y)))
panels.append(panel("timeseries", "Raft snapshots", "Size of the last snapshot each coordinator built, and how long building it took.",
                    [(f"max by (pod) (dfs_coordinator_raft_snapshot_bytes{{{COORD}}})", "bytes {{pod}}"),
                     (f"max by (pod) (dfs_coordinator_raft_snapshot_build_seconds{{{COORD}}})", "seconds {{pod}}")],
                    (8, 12, 12, y)))
y += 8
row("Operator", y); y += 1
panels.append(panel("timeseries", "Operator reconcile errors", "Failed reconciles per second by error kind (all DfsClusters the operator manages).",
                    [("sum by (error) (rate(dfs_operator_reconcile_failures_total[$__rate_interval]))", "{{error}}")],
                    (8, 12, 0, y), unit="ops"))
panels.append(panel("timeseries", "Operator reconciles and p99 duration", "Reconciles per second and the 99th percentile of their duration.",
                    [("sum(rate(dfs_operator_reconciles_total[$__rate_interval]))", "reconciles/s"),
                     ("histogram_quantile(0.99, sum by (le) (rate(dfs_operator_reconcile_duration_seconds_bucket[$__rate_interval])))", "p99 duration (s)")],
                    (8, 12, 12, y)))
y += 8


def query_var(name, label, query, regex=""):
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query, "regex": regex, "refresh": 2, "sort": 1,
        "includeAll": False, "multi": False, "current": {}, "options": [], "hide": 0,
    }


dashboard = {
    "title": "dfs",
    "uid": "dfs-overview",
    "description": "dfs distributed file system: capacity, redundancy, repair, traffic, latency, datanodes and the operator.",
    "tags": ["dfs", "storage"],
    "timezone": "browser",
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-6h", "to": "now"},
    "annotations": {"list": []},
    "links": [],
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        query_var("namespace", "Namespace", "label_values(dfs_coordinator_chunks, namespace)"),
        query_var("cluster", "DfsCluster", 'label_values(dfs_coordinator_chunks{namespace="$namespace"}, service)',
                  regex="/^(.+)-coordinator-metrics$/"),
    ]},
    "panels": panels,
}

json.dump(dashboard, sys.stdout, indent=2, sort_keys=False)
sys.stdout.write("\n")
