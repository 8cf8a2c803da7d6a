//! Helpers shared by the integration tests: real datanodes on 127.0.0.1:0
//! with temp dirs, and a small client for uploads and downloads.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use dfs_datanode::{Config, Datanode, Metrics};
use dfs_proto::data_node_client::DataNodeClient;
use dfs_proto::*;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

/// A datanode running in this process.
pub struct TestNode {
    /// Its data directory.
    pub dir: std::path::PathBuf,
    pub address: String,
    pub node_id: String,
    pub metrics: Metrics,
    pub metrics_addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestNode {
    pub async fn start(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestNode {
        let mut config = Config::new(dir);
        // Nothing listens there: registration retries quietly in the background.
        config.coordinator = "http://127.0.0.1:9".into();
        config.scrub_bytes_per_second = dfs_common::size::ByteSize(0);
        tweak(&mut config);
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let node = Datanode::start(config, grpc, metrics).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let address = node.advertise().to_string();
        let node_id = node.node_id().to_string();
        let m = node.metrics();
        let task = tokio::spawn(async move {
            node.serve(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestNode {
            dir: dir.to_path_buf(),
            address,
            node_id,
            metrics: m,
            metrics_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn target(&self) -> NodeAddress {
        NodeAddress {
            node_id: self.node_id.clone(),
            address: self.address.clone(),
        }
    }

    pub async fn client(&self) -> DataNodeClient<Channel> {
        client(&self.address).await
    }

    /// Graceful stop (drains in-flight streams).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub fn counter(&self, name: &str, label: &str) -> u64 {
        self.sum_samples(name, label, |m| {
            (m.get_counter().get_value() + m.get_gauge().get_value()) as u64
        })
    }

    /// Observations of histogram `name` with label value `label`.
    pub fn histogram_count(&self, name: &str, label: &str) -> u64 {
        self.sum_samples(name, label, |m| m.get_histogram().get_sample_count())
    }

    /// Sums `value` over the samples of metric `name` that carry label value
    /// `label` (every sample when `label` is empty).
    fn sum_samples(
        &self,
        name: &str,
        label: &str,
        value: impl Fn(&prometheus::proto::Metric) -> u64,
    ) -> u64 {
        self.metrics
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| label.is_empty() || m.get_label().iter().any(|l| l.value() == label))
            .map(value)
            .sum()
    }
}

pub async fn client(address: &str) -> DataNodeClient<Channel> {
    let channel = dfs_common::transport::endpoint(address, Duration::from_secs(3))
        .unwrap()
        .connect()
        .await
        .unwrap();
    DataNodeClient::new(channel)
        .max_decoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES)
}

pub fn chunk_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn meta(id: &str, data: &[u8], with_checksum: bool) -> ChunkMeta {
    ChunkMeta {
        chunk_id: id.to_string(),
        checksum: if with_checksum {
            dfs_proto::frame::checksum(data)
        } else {
            0
        },
        size: data.len() as u64,
        checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
    }
}

pub async fn prepare(
    c: &mut DataNodeClient<Channel>,
    chunk: ChunkMeta,
    targets: Vec<NodeAddress>,
    write_quorum: u32,
) -> Result<PrepareChunkUploadResponse, Status> {
    c.prepare_chunk_upload(PrepareChunkUploadRequest {
        chunk: Some(chunk),
        targets,
        write_quorum,
        session_id: String::new(),
        token: Default::default(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Frames of `data` (256 KiB each, the last one final), the first carrying
/// the session id.
pub fn frames(session_id: &str, data: &[u8]) -> Vec<ChunkData> {
    let data = Bytes::copy_from_slice(data);
    let step = DEFAULT_FRAME_BYTES;
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let end = (off + step).min(data.len());
        let mut f = ChunkData::frame(data.slice(off..end), off as u64, end == data.len());
        if off == 0 {
            f.session_id = session_id.to_string();
        }
        out.push(f);
        if end == data.len() {
            break;
        }
        off = end;
    }
    out
}

/// Streams `frames` and returns the final answer (or the error status).
pub async fn send_frames(
    c: &mut DataNodeClient<Channel>,
    frames: Vec<ChunkData>,
) -> Result<ChunkReplicas, Status> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for f in frames {
            if tx.send(f).await.is_err() {
                break;
            }
        }
    });
    finish_upload(c, rx).await
}

/// Drives an upload whose frames come from `rx`.
pub async fn finish_upload(
    c: &mut DataNodeClient<Channel>,
    rx: mpsc::Receiver<ChunkData>,
) -> Result<ChunkReplicas, Status> {
    let mut responses = c
        .upload_chunk_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(m) = responses.message().await? {
        if let Some(upload_chunk_response::Kind::Replicas(r)) = m.kind {
            return Ok(r);
        }
    }
    Err(Status::unknown("stream ended without ChunkReplicas"))
}

/// Prepares and uploads one chunk.
pub async fn upload(
    c: &mut DataNodeClient<Channel>,
    id: &str,
    data: &[u8],
    targets: Vec<NodeAddress>,
    write_quorum: u32,
) -> Result<ChunkReplicas, Status> {
    let p = prepare(c, meta(id, data, true), targets, write_quorum).await?;
    send_frames(c, frames(&p.session_id, data)).await
}

/// Uploads one chunk in a single call: the first frame carries the prepare
/// request instead of a session id.
pub async fn upload_one_call(
    c: &mut DataNodeClient<Channel>,
    chunk: ChunkMeta,
    data: &[u8],
    targets: Vec<NodeAddress>,
    write_quorum: u32,
) -> Result<ChunkReplicas, Status> {
    let mut f = frames("", data);
    f[0].prepare = Some(PrepareChunkUploadRequest {
        chunk: Some(chunk),
        targets,
        write_quorum,
        session_id: String::new(),
        token: Default::default(),
    });
    send_frames(c, f).await
}

pub async fn download(
    c: &mut DataNodeClient<Channel>,
    id: &str,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, Status> {
    let mut s = c
        .download_chunk_stream(DownloadChunkStreamRequest {
            session_id: String::new(),
            chunk_id: id.to_string(),
            offset,
            length,
            frame_bytes: 0,
            token: Default::default(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    let mut saw_final = false;
    while let Some(f) = s.message().await? {
        assert!(f.verify(), "download frame checksum");
        assert_eq!(f.offset, offset + out.len() as u64, "contiguous frames");
        out.extend_from_slice(&f.data);
        saw_final |= f.is_final;
    }
    assert!(saw_final, "download ended with a final frame");
    Ok(out)
}

/// Files under `dir` (recursively), for "nothing left behind" checks.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Chunk files (excluding tmp) of a data dir.
pub fn chunk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_under(&dir.join("chunks"))
}

/// Waits (without a timed assertion: bounded only to avoid hanging forever)
/// until `cond` holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for: {what}");
}
