//! What the CLI prints: aligned tables for people, `--json` for scripts.

use dfs_common::size::ByteSize;
use dfs_common::time::now_unix_ms;
use dfs_proto::{
    ClusterStatus, DataNodeStatus, DownloadFileResponse, FileInfo, FileType, NodeState,
};
use serde_json::{Value, json};

fn file_type(info: &FileInfo) -> &'static str {
    match FileType::try_from(info.file_type) {
        Ok(FileType::Directory) => "directory",
        Ok(FileType::File) => "file",
        _ => "unknown",
    }
}

fn node_state(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::Healthy) => "healthy",
        Ok(NodeState::Full) => "full",
        Ok(NodeState::Suspect) => "suspect",
        Ok(NodeState::Dead) => "dead",
        Ok(NodeState::Draining) => "draining",
        Ok(NodeState::Decommissioned) => "decommissioned",
        Ok(NodeState::Maintenance) => "maintenance",
        _ => "unknown",
    }
}

fn file_json(info: &FileInfo) -> Value {
    json!({
        "path": info.path,
        "name": info.name,
        "type": file_type(info),
        "size": info.size,
        "replication": info.replication,
        "chunk_size": info.chunk_size,
        "chunk_count": info.chunk_count,
        "created_unix_ms": info.created_unix_ms,
        "modified_unix_ms": info.modified_unix_ms,
        "version": info.version,
    })
}

fn print_json(value: &Value) {
    say!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// `dfs ls`.
pub fn print_list(entries: &[FileInfo], json: bool) {
    if json {
        print_json(&Value::Array(entries.iter().map(file_json).collect()));
        return;
    }
    for e in entries {
        let kind = if file_type(e) == "directory" {
            'd'
        } else {
            '-'
        };
        let name = if kind == 'd' {
            format!("{}/", e.name)
        } else {
            e.name.clone()
        };
        say!("{kind} {:>12} r{:<2} {name}", e.size, e.replication);
    }
}

/// `dfs stat`: the entry, plus for files every chunk with its replicas.
pub fn print_stat(info: &FileInfo, map: Option<&DownloadFileResponse>, json: bool) {
    let chunks: Vec<Value> = map
        .map(|m| {
            m.chunks
                .iter()
                .map(|c| {
                    let meta = c.chunk.clone().unwrap_or_default();
                    json!({
                        "index": c.index,
                        "offset": c.offset,
                        "id": meta.chunk_id,
                        "size": meta.size,
                        "checksum": format!("{:08x}", meta.checksum),
                        "replicas": c.replicas.iter().map(|r| r.node_id.clone()).collect::<Vec<_>>(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if json {
        let mut value = file_json(info);
        if map.is_some() {
            value["chunks"] = Value::Array(chunks);
        }
        print_json(&value);
        return;
    }
    say!("path:        {}", info.path);
    say!("type:        {}", file_type(info));
    if file_type(info) == "file" {
        say!("size:        {} ({})", info.size, ByteSize(info.size));
        say!("replication: {}", info.replication);
        say!("chunk size:  {}", ByteSize(info.chunk_size));
        say!("chunks:      {}", info.chunk_count);
        say!("version:     {}", info.version);
        for c in &chunks {
            say!(
                "  #{:<4} {} {:>10} crc32c {} on {}",
                c["index"],
                c["id"].as_str().unwrap_or_default(),
                c["size"],
                c["checksum"].as_str().unwrap_or_default(),
                c["replicas"]
                    .as_array()
                    .map(|r| r
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default()
            );
        }
    }
}

fn node_json(n: &DataNodeStatus) -> Value {
    let info = n.info.unwrap_or_default();
    let topo = n.topology.clone().unwrap_or_default();
    json!({
        "node_id": n.node_id,
        "address": n.address,
        "state": node_state(n.state),
        "used_bytes": info.used_bytes,
        "free_bytes": info.free_bytes,
        "total_bytes": info.total_bytes,
        "chunk_count": n.chunk_count,
        "quarantined_chunks": info.quarantined_chunks,
        "unavailable_chunks": info.unavailable_chunks,
        "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
        "safe_to_remove": n.safe_to_remove,
        "zone": topo.zone,
        "rack": topo.rack,
        "host": topo.host,
    })
}

fn ago(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let ms = now_unix_ms().saturating_sub(unix_ms);
    format!("{:.1}s ago", ms as f64 / 1000.0)
}

/// `dfs nodes`.
pub fn print_nodes(nodes: &[DataNodeStatus], json: bool) {
    if json {
        print_json(&Value::Array(nodes.iter().map(node_json).collect()));
        return;
    }
    say!(
        "{:<34} {:<24} {:<14} {:>22} {:>8} LAST HEARTBEAT",
        "ID",
        "ADDRESS",
        "STATE",
        "USED/TOTAL",
        "CHUNKS"
    );
    for n in nodes {
        let info = n.info.unwrap_or_default();
        say!(
            "{:<34} {:<24} {:<14} {:>22} {:>8} {}",
            n.node_id,
            n.address,
            node_state(n.state),
            format!(
                "{}/{}",
                ByteSize(info.used_bytes),
                ByteSize(info.total_bytes)
            ),
            n.chunk_count,
            ago(n.last_heartbeat_unix_ms)
        );
        if info.quarantined_chunks > 0 || info.unavailable_chunks > 0 {
            say!(
                "{:<34} {} corrupt copies kept in quarantine, {} chunks unreadable since start-up",
                "",
                info.quarantined_chunks,
                info.unavailable_chunks
            );
        }
    }
}

/// `dfs status`.
pub fn print_status(s: &ClusterStatus, json: bool) {
    let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
    for n in &s.nodes {
        *by_state.entry(node_state(n.state)).or_default() += 1;
    }
    if json {
        print_json(&json!({
            "cluster_id": s.cluster_id,
            "datanodes": by_state,
            "nodes": s.nodes.iter().map(node_json).collect::<Vec<_>>(),
            "files": s.files,
            "directories": s.directories,
            "chunks": s.chunks,
            "under_replicated_chunks": s.under_replicated_chunks,
            "missing_chunks": s.missing_chunks,
            "over_replicated_chunks": s.over_replicated_chunks,
            "capacity_total_bytes": s.capacity_total_bytes,
            "capacity_used_bytes": s.capacity_used_bytes,
            "repair_bytes_remaining": s.repair_bytes_remaining,
            "repair_eta_seconds": s.repair_eta_seconds,
            "replication": s.replication,
            "safe_mode": s.safe_mode.as_ref().map(|m| json!({
                "active": m.active,
                "reason": m.reason,
                "manual": m.manual,
                "reported_nodes": m.reported_nodes,
                "known_nodes": m.known_nodes,
                "reported_replicas": m.reported_replicas,
                "known_replicas": m.known_replicas,
            })),
            "delete_budget": s.delete_budget.as_ref().map(|b| json!({
                "deferred": b.deferred,
                "exhausted_nodes": b.exhausted_nodes,
                "exhausted_total": b.exhausted_total,
            })),
            "corrupt_replicas": s.corrupt_replicas,
        }));
        return;
    }
    let safe = s.safe_mode.clone().unwrap_or_default();
    let health = if s.missing_chunks > 0 {
        "UNHEALTHY (missing chunks)"
    } else if safe.active {
        "SAFE MODE (no deletes, no repairs)"
    } else if s.under_replicated_chunks > 0 {
        "DEGRADED (repairing)"
    } else {
        "HEALTHY"
    };
    say!("cluster:      {} — {health}", s.cluster_id);
    let states: Vec<String> = by_state.iter().map(|(k, v)| format!("{v} {k}")).collect();
    say!("datanodes:    {} ({})", s.nodes.len(), states.join(", "));
    say!(
        "capacity:     {} used of {}",
        ByteSize(s.capacity_used_bytes),
        ByteSize(s.capacity_total_bytes)
    );
    say!(
        "namespace:    {} files, {} directories, {} chunks (replication {})",
        s.files,
        s.directories,
        s.chunks,
        s.replication
    );
    say!(
        "chunks:       {} under-replicated, {} missing, {} over-replicated",
        s.under_replicated_chunks,
        s.missing_chunks,
        s.over_replicated_chunks
    );
    if s.repair_bytes_remaining > 0 {
        say!(
            "repair:       {} left, eta {}s",
            ByteSize(s.repair_bytes_remaining),
            s.repair_eta_seconds
        );
    }
    if safe.active {
        say!("safe mode:    ON — {}", safe.reason);
    } else {
        say!("safe mode:    off");
    }
    if s.corrupt_replicas > 0 {
        say!(
            "corrupt:      {} replicas with another checksum than recorded (kept until repaired)",
            s.corrupt_replicas
        );
    }
    if let Some(b) = &s.delete_budget
        && (b.deferred > 0 || !b.exhausted_nodes.is_empty())
    {
        say!(
            "delete budget: exhausted on {} ({} deletes waiting for the next window; {} times since start)",
            b.exhausted_nodes.join(", "),
            b.deferred,
            b.exhausted_total
        );
    }
}
