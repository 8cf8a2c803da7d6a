//! Namespace benchmark: an in-process coordinator on 127.0.0.1 (temp data
//! dir, real redb fsyncs) with three registered fake datanodes, driven over
//! gRPC by concurrent clients.
//!
//! ```text
//! cargo run --release -p dfs-coordinator --example namespace_bench [clients] [iterations] [connections]
//! ```
//!
//! With `DFS_BENCH_COORDINATORS=3` the coordinator is instead a group of
//! three `dfs-coordinator` processes (`--peers`, Raft, each on its own temp
//! dir) started from the `dfs-coordinator` binary beside the example's
//! directory (build it first: `cargo build --release -p dfs-coordinator`),
//! and the clients talk to its leader.
//!
//! Phase 1: each client repeats UploadFile + ConfirmUpload (a 1 KiB file,
//! two durable commands) + Stat + ListDirectory. Phase 2: 100,000 Mkdir in
//! one directory (durable), then the directory is listed page by page.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dfs_coordinator::Config;
use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::*;
use tokio::net::TcpListener;
use tonic::transport::Channel;

async fn connect(url: &str) -> anyhow::Result<CoordinatorClient<Channel>> {
    let ch = dfs_common::transport::endpoint(url, Duration::from_secs(5))?
        .connect()
        .await?;
    Ok(CoordinatorClient::new(ch).max_decoding_message_size(64 << 20))
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let iterations: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(400);
    // HTTP/2 connections the clients share: fewer connections let h2 put
    // more requests into each write, as a real multiplexing client would.
    let connections: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8);

    let dir = tempfile::tempdir()?;
    let group = std::env::var("DFS_BENCH_COORDINATORS").ok().as_deref() == Some("3");
    if group {
        return run_group(dir.path(), clients, iterations, connections).await;
    }
    let mut config = Config::for_data_dir(dir.path());
    config.heartbeat_interval = Duration::from_secs(3);
    config.suspect_after = Some(Duration::from_secs(3600));
    config.dead_after = Duration::from_secs(7200);
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let metrics = TcpListener::bind("127.0.0.1:0").await?;
    let metrics_addr = metrics.local_addr()?;
    let url = format!("http://{}", grpc.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dfs_coordinator::serve(config, grpc, metrics, async {
        let _ = stop_rx.await;
    }));

    let channels = phases(&url, clients, iterations, connections).await?;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(metrics_addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        for line in text.lines().filter(|l| {
            l.starts_with("dfs_coordinator_metadata_commit_batch_size_sum")
                || l.starts_with("dfs_coordinator_metadata_commit_batch_size_count")
                || l.starts_with("dfs_coordinator_metadata_commit_duration_seconds_sum")
        }) {
            println!("{line}");
        }
    }
    drop(channels);
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}

/// The same phases against a group of three coordinator processes.
async fn run_group(
    dir: &std::path::Path,
    clients: usize,
    iterations: usize,
    connections: usize,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/namespace_bench -> target/<profile>/dfs-coordinator
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("dfs-coordinator"))
        .filter(|b| b.exists())
        .ok_or_else(|| anyhow::anyhow!("no dfs-coordinator beside {}", exe.display()))?;
    // The fake datanodes never heartbeat: keep them alive for the run.
    let members = dfs_testkit::group::group_with(
        &bin,
        dir,
        &["--heartbeat-interval", "30m", "--dead-after", "2h"],
    );
    let leader = dfs_testkit::group::wait_leader(&members, Duration::from_secs(30)).await;
    // A new leader rebuilds its view of the datanodes once it has taken
    // over; registrations before that would be dropped with the old view.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "group of 3 ({}), leader {}",
        bin.display(),
        members[leader].url
    );
    let ran = phases(&members[leader].url, clients, iterations, connections).await;
    if let Ok(keep) = std::env::var("DFS_BENCH_LOGS") {
        for m in &members {
            std::fs::copy(&m.log, format!("{keep}/c{}.log", m.id))?;
        }
    }
    if ran.is_err() {
        for m in &members {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("--- member {} ({}):", m.id, m.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
    drop(members);
    ran.map(drop)
}

/// Registers three fake datanodes, then runs both phases against `url`.
async fn phases(
    url: &str,
    clients: usize,
    iterations: usize,
    connections: usize,
) -> anyhow::Result<Vec<CoordinatorClient<Channel>>> {
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(connect(url).await?);
    }
    for i in 0..3 {
        channels[0]
            .register_data_node(RegisterDataNodeRequest {
                node_id: format!("bench-{i}"),
                address: format!("http://127.0.0.1:{}", 7101 + i),
                info: Some(NodeInfo {
                    free_bytes: 1 << 40,
                    total_bytes: 1 << 40,
                    health: NodeHealth::Healthy as i32,
                    ..NodeInfo::default()
                }),
                topology: Some(Topology {
                    zone: format!("z{i}"),
                    rack: String::new(),
                    host: format!("h{i}"),
                }),
                version: "bench".into(),
                cluster_id: String::new(),
            })
            .await?;
    }

    // Phase 1: mixed create+confirm / stat / list.
    let writes = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let mut c = channels[t % connections].clone();
        let (writes, reads) = (writes.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let dir = format!("/bench/c{t}");
            for i in 0..iterations {
                let path = format!("{dir}/f{i}");
                let plan = c
                    .upload_file(UploadFileRequest {
                        path: path.clone(),
                        size: 1024,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let chunks = plan
                    .chunks
                    .iter()
                    .map(|ch| ConfirmedChunk {
                        index: ch.index,
                        chunk: Some(ChunkMeta {
                            chunk_id: ch.chunk_id.clone(),
                            checksum: 1,
                            size: ch.size,
                            checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
                        }),
                        replicas: ch.nodes.iter().map(|n| n.node_id.clone()).collect(),
                        receipts: ch
                            .nodes
                            .iter()
                            .map(|n| ReplicaReceipt {
                                node_id: n.node_id.clone(),
                                checksum: 1,
                                size: ch.size,
                                created: true,
                                key_id: Default::default(),
                                tag: Default::default(),
                            })
                            .collect(),
                        pending: vec![],
                    })
                    .collect();
                c.confirm_upload(ConfirmUploadRequest {
                    upload_id: plan.upload_id,
                    chunks,
                })
                .await?;
                writes.fetch_add(2, Ordering::Relaxed);
                c.stat(StatRequest { path }).await?;
                c.list_directory(ListDirectoryRequest {
                    path: dir.clone(),
                    page_token: String::new(),
                    page_size: 10,
                })
                .await?;
                reads.fetch_add(2, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let (w, r) = (
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
    );
    println!(
        "phase 1: {clients} clients x {iterations} files: {} ops in {secs:.2} s = {:.0} ops/s \
         ({:.0} durable writes/s [UploadFile+ConfirmUpload], {:.0} reads/s [Stat+List]; {:.0} files/s)",
        w + r,
        (w + r) as f64 / secs,
        w as f64 / secs,
        r as f64 / secs,
        (w / 2) as f64 / secs,
    );

    // Phase 2: 100,000 entries in one directory, then a paged listing.
    // DFS_BENCH_MKDIRS: how many (default 100,000; 0 skips the phase).
    let entries: usize = std::env::var("DFS_BENCH_MKDIRS")
        .ok()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(100_000);
    if entries == 0 {
        return Ok(channels);
    }
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..clients {
        let mut c = channels[t % connections].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= entries {
                    break;
                }
                c.mkdir(MkdirRequest {
                    path: format!("/big/e{i:06}"),
                    parents: true,
                })
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "phase 2: {entries} durable Mkdir in {secs:.2} s = {:.0} ops/s",
        entries as f64 / secs
    );
    for page_size in [10_000u32, 1_000] {
        let mut c = channels[0].clone();
        let start = Instant::now();
        let mut token = String::new();
        let mut seen = 0;
        let mut pages = 0;
        loop {
            let page = c
                .list_directory(ListDirectoryRequest {
                    path: "/big".into(),
                    page_token: token,
                    page_size,
                })
                .await?
                .into_inner();
            seen += page.entries.len();
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        anyhow::ensure!(seen == entries, "listed {seen} entries");
        println!(
            "list of a {entries}-entry directory, {pages} pages of {page_size}: {:.3} s",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(channels)
}
