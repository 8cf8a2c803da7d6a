//! Namespace benchmark: an in-process coordinator on 127.0.0.1 (temp data
//! dir, real redb fsyncs) with three registered fake datanodes, driven over
//! gRPC by concurrent clients.
//!
//! ```text
//! cargo run --release -p dfs-coordinator --example namespace_bench [clients] [iterations] [connections]
//! ```
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

    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(connect(&url).await?);
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
    const ENTRIES: usize = 100_000;
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..clients {
        let mut c = channels[t % connections].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= ENTRIES {
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
        "phase 2: {ENTRIES} durable Mkdir in {secs:.2} s = {:.0} ops/s",
        ENTRIES as f64 / secs
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
        anyhow::ensure!(seen == ENTRIES, "listed {seen} entries");
        println!(
            "list of a {ENTRIES}-entry directory, {pages} pages of {page_size}: {:.3} s",
            start.elapsed().as_secs_f64()
        );
    }
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
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
