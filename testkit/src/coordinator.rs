//! Test harness: a real coordinator on 127.0.0.1:0 and simulated datanodes
//! driven through the generated gRPC client.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_coordinator::{Config, CoordinatorError};
use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::data_node_command::Command as Cmd;
use dfs_proto::*;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
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
        let ch = dfs_common::transport::endpoint(&self.url, Duration::from_secs(5))
            .unwrap()
            .connect()
            .await
            .unwrap();
        CoordinatorClient::new(ch).max_decoding_message_size(64 << 20)
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

#[derive(Default)]
pub struct NodeSim {
    pub chunks: HashSet<String>,
    pending_added: Vec<String>,
    pending_removed: Vec<String>,
    pending_corrupt: Vec<String>,
    results: Vec<CommandResult>,
    pub alive: bool,
    pub replicated_from_here: usize,
    pub deleted: Vec<String>,
}

/// A set of simulated datanodes sharing one "network".
#[derive(Clone, Default)]
pub struct Sim {
    pub nodes: Arc<Mutex<HashMap<String, NodeSim>>>,
}

impl Sim {
    /// Registers and starts heartbeating node `id`.
    pub async fn spawn(&self, server: &Server, id: &str, zone: &str, host: &str) {
        self.nodes
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default()
            .alive = true;
        let mut client = server.client().await;
        let topology = Topology {
            zone: zone.into(),
            rack: String::new(),
            host: host.into(),
        };
        let id = id.to_string();
        client
            .register_data_node(RegisterDataNodeRequest {
                node_id: id.clone(),
                address: format!("http://{id}.invalid:7101"),
                info: Some(info()),
                topology: Some(topology),
                version: "test".into(),
                cluster_id: String::new(),
            })
            .await
            .unwrap();
        let sim = self.clone();
        tokio::spawn(async move {
            let (tx, rx) = mpsc::channel::<Heartbeat>(16);
            let mut responses = client
                .data_node_heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let mut first = true;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let hb = {
                            let mut nodes = sim.nodes.lock().unwrap();
                            let me = nodes.get_mut(&id).unwrap();
                            if !me.alive {
                                return;
                            }
                            let report = first.then(|| ChunkReport {
                                chunks: me.chunks.iter().map(|c| meta(c)).collect(),
                                first: true,
                                last: true,
                            });
                            first = false;
                            Heartbeat {
                                node_id: id.clone(),
                                info: Some(info()),
                                chunk_report: report,
                                added_chunks: me.pending_added.drain(..).map(|c| meta(&c)).collect(),
                                removed_chunks: std::mem::take(&mut me.pending_removed),
                                corrupt_chunks: std::mem::take(&mut me.pending_corrupt),
                                command_results: std::mem::take(&mut me.results),
                                cluster_id: String::new(),
                            }
                        };
                        if tx.send(hb).await.is_err() {
                            return;
                        }
                    }
                    msg = responses.next() => {
                        let Some(Ok(resp)) = msg else { return };
                        let mut nodes = sim.nodes.lock().unwrap();
                        for c in resp.commands {
                            match c.command {
                                Some(Cmd::Replicate(r)) => {
                                    let chunk = r.chunk.unwrap().chunk_id;
                                    let target = r.target.unwrap().node_id;
                                    let have = nodes[&id].chunks.contains(&chunk);
                                    let target_alive = nodes.get(&target).is_some_and(|t| t.alive);
                                    if have && target_alive {
                                        let t = nodes.get_mut(&target).unwrap();
                                        t.chunks.insert(chunk.clone());
                                        t.pending_added.push(chunk);
                                    }
                                    let me = nodes.get_mut(&id).unwrap();
                                    me.replicated_from_here += 1;
                                    me.results.push(CommandResult {
                                        command_id: c.command_id,
                                        ok: have && target_alive,
                                        error: String::new(),
                                    });
                                }
                                Some(Cmd::Delete(d)) => {
                                    let me = nodes.get_mut(&id).unwrap();
                                    for chunk in d.chunk_ids {
                                        me.chunks.remove(&chunk);
                                        me.deleted.push(chunk);
                                    }
                                    me.results.push(CommandResult {
                                        command_id: c.command_id,
                                        ok: true,
                                        error: String::new(),
                                    });
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        });
    }

    /// Stops heartbeating (the node "dies"); it keeps its chunks.
    pub fn kill(&self, id: &str) {
        self.nodes.lock().unwrap().get_mut(id).unwrap().alive = false;
    }

    /// The node stores `chunk` (as if a client had written it).
    pub fn store(&self, id: &str, chunk: &str) {
        let mut nodes = self.nodes.lock().unwrap();
        let n = nodes.get_mut(id).unwrap();
        n.chunks.insert(chunk.to_string());
        n.pending_added.push(chunk.to_string());
    }

    pub fn corrupt(&self, id: &str, chunk: &str) {
        let mut nodes = self.nodes.lock().unwrap();
        let n = nodes.get_mut(id).unwrap();
        n.chunks.remove(chunk);
        n.pending_corrupt.push(chunk.to_string());
    }

    pub fn holds(&self, id: &str, chunk: &str) -> bool {
        self.nodes.lock().unwrap()[id].chunks.contains(chunk)
    }
}

pub fn info() -> NodeInfo {
    NodeInfo {
        free_bytes: 100 << 30,
        total_bytes: 200 << 30,
        health: NodeHealth::Healthy as i32,
        used_bytes: 100 << 30,
        ..NodeInfo::default()
    }
}

pub fn meta(id: &str) -> ChunkMeta {
    ChunkMeta {
        chunk_id: id.to_string(),
        checksum: 42,
        size: 0,
        checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
    }
}

/// Plans, "writes" (into the simulated nodes) and confirms a file.
pub async fn put(
    client: &mut Client,
    sim: &Sim,
    path: &str,
    size: u64,
    overwrite: bool,
) -> FileInfo {
    let plan = client
        .upload_file(UploadFileRequest {
            path: path.into(),
            size,
            replication: 0,
            chunk_size: 0,
            overwrite,
        })
        .await
        .unwrap()
        .into_inner();
    for c in &plan.chunks {
        for n in &c.nodes {
            sim.store(&n.node_id, &c.chunk_id);
        }
    }
    confirm_all(client, &plan).await.unwrap()
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
                })
                .collect(),
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
