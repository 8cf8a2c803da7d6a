//! Test harness: a real coordinator on 127.0.0.1:0, driven through the
//! generated gRPC client. The datanodes that register and heartbeat to it in
//! coordinator tests are fake ones of a [`crate::fake::Fleet`].

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use dfs_coordinator::{Config, CoordinatorError};
use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub type Client = CoordinatorClient<Channel>;

pub struct Server {
    pub url: String,
    pub metrics: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), CoordinatorError>>,
}

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::for_data_dir(dir);
    c.heartbeat_interval = Duration::from_millis(100);
    c.suspect_after = Some(Duration::from_millis(400));
    c.dead_after = Duration::from_secs(1);
    c.orphan_grace = Duration::from_millis(300);
    c.over_replication_grace = Duration::from_millis(300);
    c.repair_bytes_per_second = dfs_common::size::ByteSize(0);
    c.chunk_size = dfs_common::size::ByteSize(1 << 20);
    c
}

impl Server {
    pub async fn start(config: Config) -> Server {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", grpc.local_addr().unwrap());
        let metrics_addr = metrics.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(dfs_coordinator::serve(config, grpc, metrics, async {
            let _ = rx.await;
        }));
        Server {
            url,
            metrics: metrics_addr,
            stop: Some(tx),
            handle,
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("coordinator stops in time")
            .unwrap()
            .unwrap();
    }

    /// Waits (at most `secs`) for the server to stop by itself; its result.
    pub async fn exited(self, secs: u64) -> Result<(), CoordinatorError> {
        let _keep = self.stop;
        tokio::time::timeout(Duration::from_secs(secs), self.handle)
            .await
            .expect("coordinator stops by itself in time")
            .unwrap()
    }

    pub async fn metrics_text(&self) -> String {
        dfs_common::http::scrape(self.metrics).await.unwrap()
    }
}

/// A client to the coordinator at `url`.
pub async fn connect(url: &str) -> Client {
    let ch = dfs_common::transport::endpoint(url, Duration::from_secs(5))
        .unwrap()
        .connect()
        .await
        .unwrap();
    CoordinatorClient::new(ch).max_decoding_message_size(64 << 20)
}

/// Polls `f` until it returns Some, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node info fake datanodes register and heartbeat with (healthy, half
/// of 200 GiB free).
pub fn info() -> NodeInfo {
    NodeInfo {
        free_bytes: 100 << 30,
        total_bytes: 200 << 30,
        health: NodeHealth::Healthy as i32,
        used_bytes: 100 << 30,
        ..NodeInfo::default()
    }
}

pub async fn confirm_all(
    client: &mut Client,
    plan: &UploadPlan,
) -> Result<FileInfo, tonic::Status> {
    Ok(client
        .confirm_upload(confirm_request(plan))
        .await?
        .into_inner()
        .file
        .unwrap())
}

/// The ConfirmUpload of `plan` with every planned node as a replica (and
/// checksum 42).
pub fn confirm_request(plan: &UploadPlan) -> ConfirmUploadRequest {
    let chunks = plan
        .chunks
        .iter()
        .map(|c| ConfirmedChunk {
            index: c.index,
            chunk: Some(ChunkMeta {
                chunk_id: c.chunk_id.clone(),
                checksum: 42,
                size: c.size,
                checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
            }),
            replicas: c.nodes.iter().map(|n| n.node_id.clone()).collect(),
            // What each simulated replica "stored" (checksum 42).
            receipts: c
                .nodes
                .iter()
                .map(|n| ReplicaReceipt {
                    node_id: n.node_id.clone(),
                    checksum: 42,
                    size: c.size,
                    created: true,
                    key_id: Default::default(),
                    tag: Default::default(),
                })
                .collect(),
            pending: vec![],
        })
        .collect();
    ConfirmUploadRequest {
        upload_id: plan.upload_id.clone(),
        chunks,
    }
}

pub async fn download(client: &mut Client, path: &str) -> DownloadFileResponse {
    client
        .download_file(DownloadFileRequest { path: path.into() })
        .await
        .unwrap()
        .into_inner()
}

pub async fn status(client: &mut Client) -> ClusterStatus {
    client
        .get_cluster_status(GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

pub async fn node_state(client: &mut Client, id: &str) -> DataNodeStatus {
    status(client)
        .await
        .nodes
        .into_iter()
        .find(|n| n.node_id == id)
        .unwrap()
}

/// Waits until every node in `ids` is HEALTHY with its first report in.
pub async fn wait_healthy(client: &mut Client, ids: &[&str]) {
    for id in ids {
        eventually(10, "node healthy", || {
            let mut c = client.clone();
            let id = id.to_string();
            async move {
                let n = node_state(&mut c, &id).await;
                (n.state == NodeState::Healthy as i32 && n.last_heartbeat_unix_ms > 0).then_some(())
            }
        })
        .await;
    }
}
