//! Registration, heartbeats and coordinator commands against a small fake
//! coordinator; the scrubber and the read path reporting corruption.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_proto::coordinator_server::{Coordinator, CoordinatorServer};
use dfs_proto::*;
use dfs_testkit::datanode::*;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status, Streaming};

type Pushed = mpsc::Sender<Result<HeartbeatResponse, Status>>;

/// The fake's cluster id unless a test sets another.
const CLUSTER_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const CLUSTER_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

struct Recorded {
    registrations: Vec<RegisterDataNodeRequest>,
    heartbeats: Vec<Heartbeat>,
    streams: Vec<Pushed>,
    cluster_id: String,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            registrations: Vec::new(),
            heartbeats: Vec::new(),
            streams: Vec::new(),
            cluster_id: CLUSTER_A.into(),
        }
    }
}

/// Records what datanodes send and lets the test push commands.
#[derive(Clone, Default)]
struct FakeCoordinator(Arc<Mutex<Recorded>>);

impl FakeCoordinator {
    async fn start() -> (FakeCoordinator, String) {
        Self::start_as(CLUSTER_A).await
    }

    /// A fake coordinator of cluster `cluster_id`.
    async fn start_as(cluster_id: &str) -> (FakeCoordinator, String) {
        let fake = FakeCoordinator::default();
        fake.0.lock().unwrap().cluster_id = cluster_id.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let svc = CoordinatorServer::new(fake.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (fake, addr)
    }

    fn with<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&self.0.lock().unwrap())
    }

    async fn push(&self, commands: Vec<DataNodeCommand>) {
        let cluster_id = self.with(|r| r.cluster_id.clone());
        self.push_as(&cluster_id, commands).await
    }

    /// Pushes commands in an answer that claims `cluster_id`.
    async fn push_as(&self, cluster_id: &str, commands: Vec<DataNodeCommand>) {
        let tx = self
            .with(|r| r.streams.last().cloned())
            .expect("a heartbeat stream");
        tx.send(Ok(HeartbeatResponse {
            commands,
            state: NodeState::Healthy as i32,
            cluster_id: cluster_id.into(),
            token_keys: Default::default(),
        }))
        .await
        .unwrap();
    }

    fn result(&self, id: u64) -> Option<CommandResult> {
        self.with(|r| {
            r.heartbeats
                .iter()
                .flat_map(|h| h.command_results.iter())
                .find(|c| c.command_id == id)
                .cloned()
        })
    }

    /// Chunks of the latest complete full report.
    fn last_full_report(&self) -> Option<Vec<String>> {
        self.with(|r| {
            let mut current: Option<Vec<String>> = None;
            let mut complete = None;
            for h in &r.heartbeats {
                if let Some(rep) = &h.chunk_report {
                    if rep.first {
                        current = Some(Vec::new());
                    }
                    if let Some(c) = current.as_mut() {
                        c.extend(rep.chunks.iter().map(|m| m.chunk_id.clone()));
                    }
                    if rep.last {
                        complete = current.take();
                    }
                }
            }
            complete
        })
    }

    fn reports_count(&self) -> usize {
        self.with(|r| {
            r.heartbeats
                .iter()
                .filter(|h| h.chunk_report.as_ref().is_some_and(|c| c.last))
                .count()
        })
    }

    fn seen(&self, f: impl Fn(&Heartbeat) -> bool) -> bool {
        self.with(|r| r.heartbeats.iter().any(f))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("fake coordinator"))
}

#[tonic::async_trait]
impl Coordinator for FakeCoordinator {
    async fn register_data_node(
        &self,
        request: Request<RegisterDataNodeRequest>,
    ) -> Result<Response<RegisterDataNodeResponse>, Status> {
        let req = request.into_inner();
        let node_id = req.node_id.clone();
        let mut rec = self.0.lock().unwrap();
        rec.registrations.push(req);
        Ok(Response::new(RegisterDataNodeResponse {
            node_id,
            heartbeat_interval_ms: 50,
            cluster_id: rec.cluster_id.clone(),
            token_keys: Default::default(),
        }))
    }

    type DataNodeHeartbeatStream = BoxStream<HeartbeatResponse>;

    async fn data_node_heartbeat(
        &self,
        request: Request<Streaming<Heartbeat>>,
    ) -> Result<Response<Self::DataNodeHeartbeatStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        self.0.lock().unwrap().streams.push(tx.clone());
        let rec = self.0.clone();
        let cluster_id = self.with(|r| r.cluster_id.clone());
        let answers = tx;
        tokio::spawn(async move {
            while let Ok(Some(hb)) = inbound.message().await {
                rec.lock().unwrap().heartbeats.push(hb);
                // Like the real coordinator: one answer per heartbeat.
                let _ = answers
                    .send(Ok(HeartbeatResponse {
                        commands: vec![],
                        state: NodeState::Healthy as i32,
                        cluster_id: cluster_id.clone(),
                        token_keys: Default::default(),
                    }))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn upload_file(
        &self,
        _: Request<UploadFileRequest>,
    ) -> Result<Response<UploadPlan>, Status> {
        unimplemented()
    }
    async fn confirm_upload(
        &self,
        _: Request<ConfirmUploadRequest>,
    ) -> Result<Response<ConfirmUploadResponse>, Status> {
        unimplemented()
    }
    async fn upload_files(
        &self,
        _: Request<dfs_proto::UploadFilesRequest>,
    ) -> Result<Response<dfs_proto::UploadFilesResponse>, Status> {
        unimplemented()
    }
    async fn confirm_uploads(
        &self,
        _: Request<dfs_proto::ConfirmUploadsRequest>,
    ) -> Result<Response<dfs_proto::ConfirmUploadsResponse>, Status> {
        unimplemented()
    }
    async fn abort_upload(
        &self,
        _: Request<AbortUploadRequest>,
    ) -> Result<Response<AbortUploadResponse>, Status> {
        unimplemented()
    }
    async fn replan_chunk(
        &self,
        _: Request<ReplanChunkRequest>,
    ) -> Result<Response<PlannedChunk>, Status> {
        unimplemented()
    }
    async fn download_file(
        &self,
        _: Request<DownloadFileRequest>,
    ) -> Result<Response<DownloadFileResponse>, Status> {
        unimplemented()
    }
    async fn mkdir(&self, _: Request<MkdirRequest>) -> Result<Response<FileInfo>, Status> {
        unimplemented()
    }
    async fn list_directory(
        &self,
        _: Request<ListDirectoryRequest>,
    ) -> Result<Response<ListDirectoryResponse>, Status> {
        unimplemented()
    }
    async fn stat(&self, _: Request<StatRequest>) -> Result<Response<FileInfo>, Status> {
        unimplemented()
    }
    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        unimplemented()
    }
    async fn rename(&self, _: Request<RenameRequest>) -> Result<Response<FileInfo>, Status> {
        unimplemented()
    }
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        unimplemented()
    }
    async fn get_cluster_status(
        &self,
        _: Request<GetClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        unimplemented()
    }
    async fn decommission_node(
        &self,
        _: Request<DecommissionNodeRequest>,
    ) -> Result<Response<DataNodeStatus>, Status> {
        unimplemented()
    }
    async fn set_node_maintenance(
        &self,
        _: Request<SetNodeMaintenanceRequest>,
    ) -> Result<Response<DataNodeStatus>, Status> {
        unimplemented()
    }
    async fn set_safe_mode(
        &self,
        _: Request<SetSafeModeRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        unimplemented()
    }

    async fn add_coordinator(
        &self,
        _: Request<dfs_proto::AddCoordinatorRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        unimplemented()
    }

    async fn set_coordinator_voters(
        &self,
        _: Request<dfs_proto::SetCoordinatorVotersRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        unimplemented()
    }
}

fn delete_command(id: u64, chunk: &str) -> DataNodeCommand {
    DataNodeCommand {
        command_id: id,
        command: Some(data_node_command::Command::Delete(DeleteChunksCommand {
            chunk_ids: vec![chunk.to_string()],
            quarantined_only: false,
        })),
    }
}

/// Fencing: a datanode persists the cluster it joined and refuses a
/// coordinator of another one (an empty or foreign coordinator must not be
/// able to order deletes), keeps serving reads, and moves only with
/// --rehome-to-cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_of_another_cluster_is_refused_and_orders_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_addr) = FakeCoordinator::start_as(CLUSTER_A).await;
    let node = TestNode::start(dir.path(), |c| c.coordinator = a_addr.clone()).await;
    eventually("joined cluster A", || a.last_full_report().is_some()).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cluster_id"))
            .unwrap()
            .trim(),
        CLUSTER_A
    );
    let mut c = node.client().await;
    let x = chunk_id();
    let bx = data(70_000, 3);
    upload(&mut c, &x, &bx, vec![], 0).await.unwrap();
    // Commands in an answer from another cluster are not executed, and the
    // stream is dropped.
    a.push_as(CLUSTER_B, vec![delete_command(1, &x)]).await;
    eventually("fenced", || node.counter("dfs_datanode_fenced", "") == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.result(1).is_none());
    assert_eq!(download(&mut c, &x, 0, 0).await.unwrap(), bx);
    node.stop().await;

    // The same datanode pointed at a coordinator of cluster B (a new,
    // empty coordinator): it says which cluster it belongs to, is refused,
    // never opens a heartbeat stream, and still serves its chunks.
    let (b, b_addr) = FakeCoordinator::start_as(CLUSTER_B).await;
    let node = TestNode::start(dir.path(), |c| c.coordinator = b_addr.clone()).await;
    // The fake records a registration when it arrives; the datanode counts
    // the refusal only once the answer is back, so wait for both.
    eventually("registration attempts", || {
        b.with(|r| r.registrations.len() >= 2)
            && node.counter("dfs_datanode_foreign_cluster_refusals_total", "") >= 2
            && node.counter("dfs_datanode_registrations_total", "refused") >= 2
    })
    .await;
    b.with(|r| {
        assert!(r.registrations.iter().all(|g| g.cluster_id == CLUSTER_A));
        assert!(
            r.heartbeats.is_empty(),
            "no heartbeat to a foreign coordinator"
        );
    });
    assert_eq!(node.counter("dfs_datanode_fenced", ""), 1);
    assert!(node.counter("dfs_datanode_foreign_cluster_refusals_total", "") >= 2);
    assert!(node.counter("dfs_datanode_registrations_total", "refused") >= 2);
    let mut c = node.client().await;
    assert_eq!(download(&mut c, &x, 0, 0).await.unwrap(), bx);
    node.stop().await;

    // Re-homing is explicit: with the flag it joins B.
    let node = TestNode::start(dir.path(), |c| {
        c.coordinator = b_addr.clone();
        c.rehome_to_cluster = Some(CLUSTER_B.into());
    })
    .await;
    eventually("joined cluster B", || b.last_full_report().is_some()).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cluster_id"))
            .unwrap()
            .trim(),
        CLUSTER_B
    );
    assert_eq!(node.counter("dfs_datanode_fenced", ""), 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_reports_and_executes_commands() {
    let (coord, coord_addr) = FakeCoordinator::start().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = TestNode::start(dirs[0].path(), |c| {
        c.coordinator = coord_addr.clone();
        c.zone = "z1".into();
        c.rack = "r1".into();
        c.host = "h1".into();
    })
    .await;
    let b = TestNode::start(dirs[1].path(), |_| {}).await;

    // Registration with id, address, topology, capacity; then a full report
    // (one batch, first and last, even for an empty store).
    eventually("registration and first full report", || {
        coord.last_full_report().is_some()
    })
    .await;
    coord.with(|r| {
        let reg = &r.registrations[0];
        assert_eq!(reg.node_id, a.node_id);
        assert_eq!(reg.address, a.address);
        let t = reg.topology.clone().unwrap();
        assert_eq!(
            (t.zone.as_str(), t.rack.as_str(), t.host.as_str()),
            ("z1", "r1", "h1")
        );
        assert!(reg.info.as_ref().unwrap().total_bytes > 0);
    });
    assert_eq!(coord.last_full_report().unwrap(), Vec::<String>::new());

    // Stored chunks show up as incremental additions.
    let mut c = a.client().await;
    let (x, y) = (chunk_id(), chunk_id());
    let (bx, by) = (data(300_000, 1), data(900_000, 2));
    upload(&mut c, &x, &bx, vec![], 0).await.unwrap();
    upload(&mut c, &y, &by, vec![], 0).await.unwrap();
    eventually("added chunks reported", || {
        coord.seen(|h| h.added_chunks.iter().any(|m| m.chunk_id == x))
            && coord.seen(|h| {
                h.added_chunks
                    .iter()
                    .any(|m| m.chunk_id == y && m.size == 900_000)
            })
    })
    .await;

    // Delete X, replicate Y to B.
    coord
        .push(vec![
            DataNodeCommand {
                command_id: 1,
                command: Some(data_node_command::Command::Delete(DeleteChunksCommand {
                    chunk_ids: vec![x.clone()],
                    quarantined_only: false,
                })),
            },
            DataNodeCommand {
                command_id: 2,
                command: Some(data_node_command::Command::Replicate(
                    ReplicateChunkCommand {
                        chunk: Some(meta(&y, &by, true)),
                        target: Some(b.target()),
                        max_bytes_per_second: 0,
                        token: Default::default(),
                    },
                )),
            },
        ])
        .await;
    eventually("command results", || {
        coord.result(1).is_some() && coord.result(2).is_some()
    })
    .await;
    assert!(coord.result(1).unwrap().ok);
    let r2 = coord.result(2).unwrap();
    assert!(r2.ok, "{}", r2.error);
    eventually("removal reported", || {
        coord.seen(|h| h.removed_chunks.contains(&x))
    })
    .await;
    assert_eq!(
        download(&mut c, &x, 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(download(&mut b.client().await, &y, 0, 0).await.unwrap() == by);

    // Replicating a chunk this node does not hold fails cleanly.
    coord
        .push(vec![DataNodeCommand {
            command_id: 3,
            command: Some(data_node_command::Command::Replicate(
                ReplicateChunkCommand {
                    chunk: Some(meta(&x, &bx, true)),
                    target: Some(b.target()),
                    max_bytes_per_second: 0,
                    token: Default::default(),
                },
            )),
        }])
        .await;
    eventually("failed command result", || coord.result(3).is_some()).await;
    assert!(!coord.result(3).unwrap().ok);

    // A requested report lists exactly what is stored.
    let before = coord.reports_count();
    coord
        .push(vec![DataNodeCommand {
            command_id: 4,
            command: Some(data_node_command::Command::RequestReport(
                RequestChunkReport {},
            )),
        }])
        .await;
    eventually("requested full report", || coord.reports_count() > before).await;
    assert_eq!(coord.last_full_report().unwrap(), vec![y.clone()]);

    // The coordinator drops the node: it re-registers and reports again.
    let tx = coord.with(|r| r.streams.last().cloned()).unwrap();
    tx.send(Err(Status::not_found("unknown node")))
        .await
        .unwrap();
    eventually("re-registration", || {
        coord.with(|r| r.registrations.len() >= 2)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_tells_the_coordinator_the_node_is_draining() {
    let (coord, coord_addr) = FakeCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |c| c.coordinator = coord_addr.clone()).await;
    let draining = |h: &Heartbeat| {
        h.info
            .is_some_and(|i| i.health == NodeHealth::Draining as i32)
    };
    eventually("regular heartbeats", || {
        coord.seen(|h| h.chunk_report.is_none())
    })
    .await;
    assert!(!coord.seen(draining), "not draining while running");
    node.stop().await;
    assert!(
        coord.seen(draining),
        "the last heartbeat before stopping reports DRAINING"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_while_the_coordinator_is_away() {
    // Nothing listens at the coordinator address at first.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |c| {
        c.coordinator = format!("http://127.0.0.1:{port}")
    })
    .await;
    let mut c = node.client().await;
    let id = chunk_id();
    let bytes = data(10_000, 4);
    upload(&mut c, &id, &bytes, vec![], 0).await.unwrap();
    assert!(download(&mut c, &id, 0, 0).await.unwrap() == bytes);
    eventually("failed registrations counted", || {
        node.counter("dfs_datanode_registrations_total", "error") >= 2
    })
    .await;

    // The coordinator comes up: the node registers and reports its chunk.
    let fake = FakeCoordinator::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(fake.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    eventually("full report after late registration", || {
        fake.last_full_report()
            .is_some_and(|r| r == vec![id.clone()])
    })
    .await;
    node.stop().await;
}

fn flip_byte(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn chunk_path(dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    dir.join("chunks").join(&id[0..2]).join(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_finds_flipped_bytes_and_reports_them() {
    let (coord, coord_addr) = FakeCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |c| {
        c.coordinator = coord_addr.clone();
        c.scrub_bytes_per_second = dfs_common::size::ByteSize(1 << 30);
        c.scrub_interval = Duration::from_millis(20);
    })
    .await;
    let mut c = node.client().await;
    let (good, bad) = (chunk_id(), chunk_id());
    let bytes = data(600_000, 8);
    upload(&mut c, &good, &bytes, vec![], 0).await.unwrap();
    upload(&mut c, &bad, &bytes, vec![], 0).await.unwrap();
    flip_byte(&chunk_path(dir.path(), &bad), 400_000);

    eventually("corrupt chunk reported", || {
        coord.seen(|h| h.corrupt_chunks.contains(&bad))
    })
    .await;
    assert!(node.counter("dfs_datanode_checksum_failures_total", "scrub") >= 1);
    assert!(!coord.seen(|h| h.corrupt_chunks.contains(&good)));
    // The corrupt copy is no longer served; the good one still is.
    assert_eq!(
        download(&mut c, &bad, 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(download(&mut c, &good, 0, 0).await.unwrap() == bytes);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_corrupt_chunk_gets_data_loss_and_reports_it() {
    let (coord, coord_addr) = FakeCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |c| c.coordinator = coord_addr.clone()).await;
    let mut c = node.client().await;
    let id = chunk_id();
    let bytes = data(600_000, 8);
    upload(&mut c, &id, &bytes, vec![], 0).await.unwrap();
    flip_byte(&chunk_path(dir.path(), &id), 300_000);
    // A range in the intact first block is still served (verified per block).
    assert!(download(&mut c, &id, 0, 1000).await.unwrap() == bytes[..1000]);
    let err = download(&mut c, &id, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    // The stream's latency is recorded under its outcome.
    const DOWNLOADS: &str = "dfs_datanode_download_duration_seconds";
    eventually("failed download observed", || {
        node.histogram_count(DOWNLOADS, "error") == 1
    })
    .await;
    assert_eq!(node.histogram_count(DOWNLOADS, "ok"), 1);
    eventually("corrupt chunk reported", || {
        coord.seen(|h| h.corrupt_chunks.contains(&id))
    })
    .await;
    assert_eq!(
        download(&mut c, &id, 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    // It may be the last copy anywhere: moved aside to quarantine/ and
    // counted, never deleted by the node itself.
    assert_eq!(files_under(&dir.path().join("quarantine")).len(), 1);
    assert_eq!(node.counter("dfs_datanode_quarantined_chunks", ""), 1);
    // Restarted, it still knows the copy it keeps aside.
    node.stop().await;
    let node = TestNode::start(dir.path(), |c| c.coordinator = coord_addr.clone()).await;
    assert_eq!(node.counter("dfs_datanode_quarantined_chunks", ""), 1);
    // A repair brings verified bytes back under the id: the corrupt copy
    // goes then.
    let mut c = node.client().await;
    upload(&mut c, &id, &bytes, vec![], 0).await.unwrap();
    assert!(download(&mut c, &id, 0, 0).await.unwrap() == bytes);
    assert!(files_under(&dir.path().join("quarantine")).is_empty());
    assert_eq!(node.counter("dfs_datanode_quarantined_chunks", ""), 0);
    node.stop().await;
}

/// A quarantined copy goes only when the coordinator says so (it has R good
/// replicas elsewhere), with a delete that touches nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_copy_is_deleted_only_when_the_coordinator_orders_it() {
    let (coord, coord_addr) = FakeCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |c| c.coordinator = coord_addr.clone()).await;
    eventually("registered", || coord.last_full_report().is_some()).await;
    let mut c = node.client().await;
    let (bad, good) = (chunk_id(), chunk_id());
    let bytes = data(600_000, 3);
    upload(&mut c, &bad, &bytes, vec![], 0).await.unwrap();
    upload(&mut c, &good, &bytes, vec![], 0).await.unwrap();
    flip_byte(&chunk_path(dir.path(), &bad), 10);
    assert_eq!(
        download(&mut c, &bad, 0, 0).await.unwrap_err().code(),
        Code::DataLoss
    );
    eventually("quarantined", || {
        node.counter("dfs_datanode_quarantined_chunks", "") == 1
    })
    .await;
    coord
        .push(vec![DataNodeCommand {
            command_id: 9,
            command: Some(data_node_command::Command::Delete(DeleteChunksCommand {
                chunk_ids: vec![bad.clone(), good.clone()],
                quarantined_only: true,
            })),
        }])
        .await;
    eventually("delete done", || coord.result(9).is_some()).await;
    assert!(coord.result(9).unwrap().ok);
    assert!(files_under(&dir.path().join("quarantine")).is_empty());
    assert_eq!(node.counter("dfs_datanode_quarantined_chunks", ""), 0);
    // The live chunk named in the same command is untouched.
    assert!(download(&mut c, &good, 0, 0).await.unwrap() == bytes);
    node.stop().await;
}

/// Repair copies only what the coordinator recorded: a source whose copy
/// has another checksum than the command's sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_source_checks_its_copy_against_the_coordinators_record() {
    let (coord, coord_addr) = FakeCoordinator::start().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = TestNode::start(dirs[0].path(), |c| c.coordinator = coord_addr.clone()).await;
    let b = TestNode::start(dirs[1].path(), |_| {}).await;
    eventually("registered", || coord.last_full_report().is_some()).await;
    let mut c = a.client().await;
    let y = chunk_id();
    let by = data(300_000, 4);
    upload(&mut c, &y, &by, vec![], 0).await.unwrap();
    let mut recorded = meta(&y, &by, true);
    recorded.checksum ^= 1;
    coord
        .push(vec![DataNodeCommand {
            command_id: 7,
            command: Some(data_node_command::Command::Replicate(
                ReplicateChunkCommand {
                    chunk: Some(recorded),
                    target: Some(b.target()),
                    max_bytes_per_second: 0,
                    token: Default::default(),
                },
            )),
        }])
        .await;
    eventually("command result", || coord.result(7).is_some()).await;
    let r = coord.result(7).unwrap();
    assert!(!r.ok && r.error.contains("recorded"), "{r:?}");
    assert_eq!(
        download(&mut b.client().await, &y, 0, 0)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "nothing was sent"
    );
    a.stop().await;
    b.stop().await;
}
