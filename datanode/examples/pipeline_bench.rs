//! Pipeline benchmark: one client streams `--size` bytes (in `--chunk-size`
//! chunks) to a primary datanode with two replicas, all in this process on
//! 127.0.0.1 with data dirs on the same disk; then the same three copies are
//! written directly (256 KiB writes, fsync, rename, fsync of the directory —
//! the datanode's fsync policy). Prints both throughputs, their ratio and
//! the peak memory the upload added.
//!
//! ```sh
//! cargo run --release -p dfs-datanode --example pipeline_bench -- --size 1GiB
//! ```

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfs_common::size::ByteSize;
use dfs_datanode::{Config, Datanode};
use dfs_proto::data_node_client::DataNodeClient;
use dfs_proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

struct Args {
    size: u64,
    chunk_size: u64,
    dir: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        size: 1 << 30,
        chunk_size: 64 << 20,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().expect("flag value");
        match flag.as_str() {
            "--size" => a.size = value.parse::<ByteSize>().expect("size").0,
            "--chunk-size" => a.chunk_size = value.parse::<ByteSize>().expect("size").0,
            "--dir" => a.dir = Some(value.into()),
            _ => panic!("unknown flag {flag} (use --size, --chunk-size, --dir)"),
        }
    }
    a
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn start(dir: &Path) -> (String, String) {
    let mut config = Config::new(dir);
    config.coordinator = "http://127.0.0.1:9".into();
    config.scrub_bytes_per_second = ByteSize(0);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = Datanode::start(config, grpc, metrics).await.unwrap();
    let ids = (node.node_id().to_string(), node.advertise().to_string());
    tokio::spawn(node.serve(std::future::pending()));
    ids
}

fn write_copy(dir: &Path, name: &str, data: &[u8]) {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).unwrap();
    for part in data.chunks(DEFAULT_FRAME_BYTES) {
        f.write_all(part).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&tmp, dir.join(name)).unwrap();
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args = args();
    let root = match &args.dir {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir_in(".").unwrap(),
    };
    let dirs: Vec<_> = (0..3).map(|i| root.path().join(format!("dn{i}"))).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(start(d).await);
    }
    let chunk = args.chunk_size.min(args.size) as usize;
    let chunks = args.size.div_ceil(chunk as u64);
    // One chunk of pseudo-random bytes, reused for every chunk.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let source: Bytes = (0..chunk)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into();
    let checksum = frame::checksum(&source);

    let channel = dfs_common::transport::endpoint(&nodes[0].1, Duration::from_secs(3))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = DataNodeClient::new(channel)
        .max_decoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES);
    let targets: Vec<NodeAddress> = nodes[1..]
        .iter()
        .map(|(id, addr)| NodeAddress {
            node_id: id.clone(),
            address: addr.clone(),
        })
        .collect();

    let rss_before = status_kib("VmRSS:");
    // Reset the peak-RSS watermark so VmHWM measures the upload only.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    for i in 0..chunks {
        let id = format!("{:032x}", i + 1);
        let p = client
            .prepare_chunk_upload(PrepareChunkUploadRequest {
                chunk: Some(ChunkMeta {
                    chunk_id: id,
                    checksum,
                    size: chunk as u64,
                    checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
                }),
                targets: targets.clone(),
                write_quorum: 0,
                session_id: String::new(),
                token: Default::default(),
            })
            .await
            .unwrap()
            .into_inner();
        let (tx, rx) = mpsc::channel(4);
        let src = source.clone();
        tokio::spawn(async move {
            let mut off = 0;
            while off < src.len() {
                let end = (off + DEFAULT_FRAME_BYTES).min(src.len());
                let mut f = ChunkData::frame(src.slice(off..end), off as u64, end == src.len());
                if off == 0 {
                    f.session_id = p.session_id.clone();
                }
                if tx.send(f).await.is_err() {
                    return;
                }
                off = end;
            }
        });
        let mut responses = client
            .upload_chunk_stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut done = false;
        while let Some(m) = responses.message().await.unwrap() {
            if let Some(upload_chunk_response::Kind::Replicas(r)) = m.kind {
                assert_eq!(r.replicas.len(), 3, "all replicas stored the chunk");
                done = true;
            }
        }
        assert!(done);
    }
    let pipeline = started.elapsed();
    let peak_kib = status_kib("VmHWM:").saturating_sub(rss_before);
    let total = chunks * chunk as u64;

    // Free the disk, then the direct baseline.
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d.join("chunks"));
    }
    let base_dirs: Vec<_> = (0..3)
        .map(|i| root.path().join(format!("direct{i}")))
        .collect();
    for d in &base_dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let started = Instant::now();
    for i in 0..chunks {
        for d in &base_dirs {
            write_copy(d, &format!("{:032x}", i + 1), &source);
        }
    }
    let direct = started.elapsed();

    let p = mib_s(total, pipeline);
    let b = mib_s(total, direct);
    println!(
        "data: {} in {chunks} chunks of {}, 3 replicas",
        ByteSize(total),
        ByteSize(chunk as u64)
    );
    println!("pipeline (client -> primary -> 2 replicas): {p:.0} MiB/s ({pipeline:.2?})");
    println!("direct 3 copies, same fsync policy:        {b:.0} MiB/s ({direct:.2?})");
    println!("ratio: {:.0}%", 100.0 * p / b);
    println!(
        "peak memory added during the upload (VmHWM - RSS before, client + 3 nodes in one process): {} ({} per stream over 3 node streams)",
        ByteSize(peak_kib * 1024),
        ByteSize(peak_kib * 1024 / 3)
    );
}
