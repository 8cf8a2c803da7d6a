//! What the CLI prints: aligned tables for people, `--json` for scripts.

use dfs_client::{ChunkMap, ClusterStatus, FileInfo, NodeState, NodeStatus};
use dfs_common::size::ByteSize;
use dfs_common::time::now_unix_ms;
use serde_json::{Value, json};

fn file_type(info: &FileInfo) -> &'static str {
    info.kind.as_str()
}

fn node_state(state: Option<NodeState>) -> &'static str {
    state.map_or("unknown", NodeState::label)
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
pub fn print_stat(info: &FileInfo, map: Option<&ChunkMap>, json: bool) {
    let chunks: Vec<Value> = map
        .map(|m| {
            m.chunks
                .iter()
                .map(|c| {
                    json!({
                        "index": c.index,
                        "offset": c.offset,
                        "id": c.chunk_id.as_str(),
                        "size": c.size,
                        "checksum": format!("{:08x}", c.checksum),
                        "replicas": c.replicas.iter().map(|r| r.node_id.as_str()).collect::<Vec<_>>(),
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

fn node_json(n: &NodeStatus) -> Value {
    json!({
        "node_id": n.node_id.as_str(),
        "address": n.address,
        "state": node_state(n.state),
        "used_bytes": n.used_bytes,
        "free_bytes": n.free_bytes,
        "total_bytes": n.total_bytes,
        "chunk_count": n.chunk_count,
        "quarantined_chunks": n.quarantined_chunks,
        "unavailable_chunks": n.unavailable_chunks,
        "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
        "safe_to_remove": n.safe_to_remove,
        "zone": n.zone,
        "rack": n.rack,
        "host": n.host,
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
pub fn print_nodes(nodes: &[NodeStatus], json: bool) {
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
        say!(
            "{:<34} {:<24} {:<14} {:>22} {:>8} {}",
            n.node_id,
            n.address,
            node_state(n.state),
            format!("{}/{}", ByteSize(n.used_bytes), ByteSize(n.total_bytes)),
            n.chunk_count,
            ago(n.last_heartbeat_unix_ms)
        );
        if n.quarantined_chunks > 0 || n.unavailable_chunks > 0 {
            say!(
                "{:<34} {} corrupt copies kept in quarantine, {} chunks unreadable since start-up",
                "",
                n.quarantined_chunks,
                n.unavailable_chunks
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
        let (m, b) = (&s.safe_mode, &s.delete_budget);
        print_json(&json!({
            "cluster_id": s.cluster_id.as_str(),
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
            "safe_mode": json!({
                "active": m.active,
                "reason": m.reason,
                "manual": m.manual,
                "reported_nodes": m.reported_nodes,
                "known_nodes": m.known_nodes,
                "reported_replicas": m.reported_replicas,
                "known_replicas": m.known_replicas,
            }),
            "delete_budget": json!({
                "deferred": b.deferred,
                "exhausted_nodes": b.exhausted_nodes,
                "exhausted_total": b.exhausted_total,
            }),
            "corrupt_replicas": s.corrupt_replicas,
            "coordinators": s.coordinators.iter().map(|c| json!({
                "id": c.id,
                "address": c.address,
                "role": c.role,
                "term": c.term,
                "last_log_index": c.last_log_index,
                "applied_index": c.applied_index,
                "lag": c.lag,
                "answering": c.answering,
                "voter": c.voter,
                "incarnation": format!("{:016x}", c.incarnation),
                "on_new_volume": c.on_new_volume(),
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    let safe = &s.safe_mode;
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
    for c in &s.coordinators {
        say!(
            "coordinator:  {} {:<24} {:<9} term {} log {} applied {} lag {}{}{}",
            c.id,
            c.address,
            c.role,
            c.term,
            c.last_log_index,
            c.applied_index,
            c.lag,
            if c.answering { "  (answered)" } else { "" },
            if c.on_new_volume() {
                "  ON A NEW VOLUME: remove it (dfs coordinators voters) and add it again"
            } else {
                ""
            }
        );
    }
    let b = &s.delete_budget;
    if b.deferred > 0 || !b.exhausted_nodes.is_empty() {
        say!(
            "delete budget: exhausted on {} ({} deletes waiting for the next window; {} times since start)",
            b.exhausted_nodes.join(", "),
            b.deferred,
            b.exhausted_total
        );
    }
}
