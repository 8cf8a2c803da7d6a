//! Raft snapshot benchmark of a large namespace (issue 17's 10-million-entry
//! target): files of one chunk on three replicas, applied through the real
//! state machine on a temp redb, then
//!
//! - memory: RSS growth per file;
//! - build: a snapshot (copy under the lock, MessagePack encode, durable store);
//! - restart: reopening the member's state machine from its stored snapshot;
//! - install: a fresh member installing that snapshot as a follower would.
//!
//! ```text
//! cargo run --release -p dfs-coordinator --example snapshot_bench [files]   (default 1000000)
//! ```

use std::sync::{Arc, Mutex};
use std::time::Instant;

use dfs_common::id::{ChunkId, NodeId, UploadId};
use dfs_coordinator::namespace::{
    ChunkRecord, Command, Namespace, NodeRecord, PlannedChunkRecord, Upload,
};
use dfs_coordinator::raft::TypeConfig;
use dfs_coordinator::raft::state_machine::{Plain, SnapshotBytes, StateMachine};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn entry(index: u64, batch: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(batch),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let files: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let db = Arc::new(redb::Database::create(dir.path().join("raft.redb"))?);
    let state = Arc::new(Mutex::new(Namespace::new()));
    let mut sm = StateMachine::open(db.clone(), state.clone(), Plain).await?;
    let nodes: Vec<NodeId> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| NodeId::parse(n).unwrap())
        .collect();

    let before = rss();
    let started = Instant::now();
    let mut index = 0;
    let dirs = 1000u64;
    let mut mkdirs: Vec<Command> = nodes
        .iter()
        .map(|n| {
            Command::RegisterNode(NodeRecord {
                node_id: n.clone(),
                address: format!("http://{n}:7101"),
                topology: Default::default(),
                version: "bench".into(),
                draining: false,
                maintenance_until_ms: 0,
            })
        })
        .collect();
    mkdirs.extend((0..dirs).map(|d| Command::Mkdir {
        path: format!("/d{d}"),
        parents: false,
        now_ms: 1,
    }));
    index += 1;
    sm.apply([entry(index, mkdirs)]).await?;
    let per_entry = 1000u64;
    let mut done = 0u64;
    while done < files {
        let n = per_entry.min(files - done);
        let mut batch = Vec::with_capacity(2 * n as usize);
        for i in done..done + n {
            let upload_id = UploadId::random();
            let chunk_id = ChunkId::random();
            let path = format!("/d{}/file-{i:09}", i % dirs);
            batch.push(Command::BeginUpload(Upload {
                upload_id: upload_id.clone(),
                path,
                size: 4096,
                chunk_size: 64 << 20,
                replication: 3,
                write_quorum: 2,
                overwrite: false,
                chunks: vec![PlannedChunkRecord {
                    index: 0,
                    chunk_id: chunk_id.clone(),
                    offset: 0,
                    size: 4096,
                    nodes: nodes.clone(),
                }],
                expires_at_ms: u64::MAX,
            }));
            batch.push(Command::ConfirmUpload {
                upload_id,
                chunks: vec![ChunkRecord {
                    id: chunk_id,
                    checksum: i as u32,
                    size: 4096,
                    algorithm: 1,
                    replicas: nodes.clone(),
                }],
                now_ms: 2,
            });
        }
        index += 1;
        let results = sm.apply([entry(index, batch)]).await?;
        if let Some(e) = results.iter().flatten().find_map(|r| r.as_ref().err()) {
            anyhow::bail!("a command failed: {e}");
        }
        done += n;
    }
    let grown = rss().saturating_sub(before);
    let entries = files + dirs;
    println!(
        "namespace: {files} files in {dirs} directories applied in {:.1} s; RSS +{:.0} MiB, {:.0} bytes per entry",
        started.elapsed().as_secs_f64(),
        grown as f64 / (1 << 20) as f64,
        grown as f64 / entries as f64
    );

    let t = Instant::now();
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
    let bytes = snapshot.snapshot.len();
    println!(
        "build: {:.2} s, {:.0} MiB ({:.0} bytes per entry)",
        t.elapsed().as_secs_f64(),
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / entries as f64
    );

    let t = Instant::now();
    drop(sm);
    let restarted_state = Arc::new(Mutex::new(Namespace::new()));
    let mut restarted = StateMachine::open(db.clone(), restarted_state.clone(), Plain).await?;
    let (applied, _) = restarted.applied_state().await?;
    println!(
        "restart (reopen from the stored snapshot): {:.2} s, applied index {:?}",
        t.elapsed().as_secs_f64(),
        applied.map(|l| l.index)
    );
    drop(restarted);
    drop(restarted_state);
    drop(state);

    let fresh_dir = tempfile::tempdir()?;
    let fresh_db = Arc::new(redb::Database::create(fresh_dir.path().join("raft.redb"))?);
    let mut fresh =
        StateMachine::open(fresh_db, Arc::new(Mutex::new(Namespace::new())), Plain).await?;
    // As a follower has it: received into bytes of its own.
    let received = Box::new(SnapshotBytes::Owned(std::io::Cursor::new(
        snapshot.snapshot.into_vec(),
    )));
    let t = Instant::now();
    fresh.install_snapshot(&snapshot.meta, received).await?;
    println!(
        "install on a new member: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
