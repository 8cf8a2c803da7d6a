//! The one fake datanode of the test suites ([`FakeDatanode`]): one type for
//! the client, coordinator, datanode and chaos tests, for what a real
//! datanode cannot be made to do on demand. It has two sides, each optional
//! and configured on its own by [`Options`]:
//!
//! ```text
//!   data path      Options::serve: a `DataNode` gRPC server on a free
//!                  127.0.0.1 port that misbehaves as its [`Behaviour`] says
//!                  (a peer that hangs, a peer of an older release); it
//!                  counts the calls it gets ([`Calls`])
//!   control plane  Options::join: membership in a [`Fleet`], a simulation of
//!                  many datanodes' chunk sets shared by its members: the fake
//!                  registers with a real coordinator, heartbeats its
//!                  simulated chunks and carries out Replicate and Delete
//!                  commands by moving chunk ids between the fleet's members;
//!                  the test kills members and stores or corrupts their
//!                  chunks through the fleet
//! ```
//!
//! [`FakeDatanode::start`] starts one with only the data path,
//! [`Fleet::spawn`] one with only the control plane (it registers an
//! unroutable `.invalid` address), [`FakeDatanode::launch`] one with either or
//! both (a member that serves registers its server's address, so the
//! coordinator hands it out as a replica). The two sides share no state: a
//! member's simulated chunks are not served on its data path.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_proto::data_node_command::Command as Cmd;
use dfs_proto::data_node_server::{DataNode, DataNodeServer};
use dfs_proto::*;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::coordinator::{Client, Server, confirm_all, info};

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fake does.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Accepts replication streams (ReplicateChunk, ReplicateSmallChunks)
    /// and never answers them: a hung peer. Everything else is refused.
    Stall,
    /// A datanode of an older release: ReplicateChunk is forwarded to the
    /// real datanode at `real`, ReplicateSmallChunks is unknown
    /// (UNIMPLEMENTED). Everything else is refused.
    OldRelease {
        /// The real datanode that stores what is forwarded.
        real: String,
    },
}

/// Calls the fake received, by kind.
#[derive(Debug, Default)]
pub struct Calls {
    /// ReplicateChunk calls.
    pub replicate: AtomicUsize,
    /// ReplicateSmallChunks calls.
    pub small: AtomicUsize,
}

/// How a fake datanode is configured: its two sides, each optional (at
/// least one is needed).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The data path: serve `DataNode` gRPC on a free 127.0.0.1 port,
    /// behaving as this. None: no server.
    pub serve: Option<Behaviour>,
    /// The control plane: join a fleet and its coordinator. None: no
    /// coordinator hears of the fake.
    pub join: Option<Join>,
}

/// A fake datanode's membership in a [`Fleet`] (see [`Fleet::join`]).
#[derive(Clone, Debug)]
pub struct Join {
    /// The fleet whose simulated chunk sets the fake shares.
    pub fleet: Fleet,
    /// The coordinator's gRPC endpoint, to register and heartbeat to.
    pub coordinator: String,
    /// Its node id.
    pub id: String,
    /// Its topology zone ("" for none).
    pub zone: String,
    /// Its topology host ("" for none).
    pub host: String,
}

/// A running fake datanode (its server runs until the test's runtime ends;
/// as a fleet member it heartbeats until [`Fleet::kill`]).
#[derive(Debug, Clone)]
pub struct FakeDatanode {
    /// Its gRPC endpoint: its server's (`http://127.0.0.1:port`), or, for a
    /// fleet member without one, the unroutable address it registered
    /// (`http://{id}.invalid:7101`).
    pub address: String,
    /// What its server was called with (all zero without a server).
    pub calls: Arc<Calls>,
    /// Its node id, when it is a fleet member.
    pub node_id: Option<String>,
}

impl FakeDatanode {
    /// Starts a fake with only the data path, behaving as `behaviour`.
    pub async fn start(behaviour: Behaviour) -> FakeDatanode {
        FakeDatanode::launch(Options {
            serve: Some(behaviour),
            join: None,
        })
        .await
    }

    /// Starts a fake with the sides `options` configures: first its server,
    /// then its membership (registered before this returns, heartbeating
    /// from then on).
    pub async fn launch(options: Options) -> FakeDatanode {
        let calls = Arc::new(Calls::default());
        let served = match options.serve {
            Some(behaviour) => Some(serve(behaviour, calls.clone()).await),
            None => None,
        };
        let Some(join) = options.join else {
            let address = served.expect("a fake datanode serves, joins a fleet, or both");
            return FakeDatanode {
                address,
                calls,
                node_id: None,
            };
        };
        let address = served.unwrap_or_else(|| format!("http://{}.invalid:7101", join.id));
        join.fleet.enlist(&join, &address).await;
        FakeDatanode {
            address,
            calls,
            node_id: Some(join.id),
        }
    }

    /// The fake as a replica target with node id `node_id`.
    pub fn target(&self, node_id: &str) -> NodeAddress {
        NodeAddress {
            node_id: node_id.to_string(),
            address: self.address.clone(),
        }
    }

    /// ReplicateSmallChunks calls received.
    pub fn small_calls(&self) -> usize {
        self.calls.small.load(Ordering::SeqCst)
    }
}

/// Serves `behaviour` on a free 127.0.0.1 port; its endpoint.
async fn serve(behaviour: Behaviour, calls: Arc<Calls>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free port");
    let address = format!("http://{}", listener.local_addr().expect("local addr"));
    let service = Service { behaviour, calls };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DataNodeServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

/// What one member of a [`Fleet`] holds and did.
#[derive(Debug, Default)]
pub struct Member {
    /// The chunk ids it holds.
    pub chunks: HashSet<String>,
    pending_added: Vec<String>,
    pending_removed: Vec<String>,
    pending_corrupt: Vec<String>,
    results: Vec<CommandResult>,
    /// Whether it heartbeats (false once killed).
    pub alive: bool,
    /// Replicate commands it got (carried out or not).
    pub replicated_from_here: usize,
    /// The chunk ids Delete commands removed from it, in order.
    pub deleted: Vec<String>,
}

/// The control-plane side of fake datanodes: a set of simulated datanodes
/// sharing one "network" (a Replicate command copies a chunk id from one
/// member's set into another's). Clones share the state.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    /// Every member, by node id.
    pub nodes: Arc<Mutex<HashMap<String, Member>>>,
}

impl Fleet {
    /// Starts a fake datanode without a server that joins the fleet as node
    /// `id`: registers with `server` and starts heartbeating.
    pub async fn spawn(&self, server: &Server, id: &str, zone: &str, host: &str) -> FakeDatanode {
        FakeDatanode::launch(Options {
            serve: None,
            join: Some(self.join(server, id, zone, host)),
        })
        .await
    }

    /// The membership of node `id`, registering with `server`, for
    /// [`Options::join`].
    pub fn join(&self, server: &Server, id: &str, zone: &str, host: &str) -> Join {
        Join {
            fleet: self.clone(),
            coordinator: server.url.clone(),
            id: id.into(),
            zone: zone.into(),
            host: host.into(),
        }
    }

    /// Registers `join.id` (at `address`) and starts heartbeating it.
    async fn enlist(&self, join: &Join, address: &str) {
        self.nodes
            .lock()
            .unwrap()
            .entry(join.id.clone())
            .or_default()
            .alive = true;
        let mut client = crate::coordinator::connect(&join.coordinator).await;
        let topology = Topology {
            zone: join.zone.clone(),
            rack: String::new(),
            host: join.host.clone(),
        };
        client
            .register_data_node(RegisterDataNodeRequest {
                node_id: join.id.clone(),
                address: address.to_string(),
                info: Some(info()),
                topology: Some(topology),
                version: "test".into(),
                cluster_id: String::new(),
            })
            .await
            .unwrap();
        tokio::spawn(heartbeat(self.clone(), client, join.id.clone()));
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

    /// The node finds `chunk` corrupt: drops it and reports it.
    pub fn corrupt(&self, id: &str, chunk: &str) {
        let mut nodes = self.nodes.lock().unwrap();
        let n = nodes.get_mut(id).unwrap();
        n.chunks.remove(chunk);
        n.pending_corrupt.push(chunk.to_string());
    }

    /// Whether the node holds `chunk`.
    pub fn holds(&self, id: &str, chunk: &str) -> bool {
        self.nodes.lock().unwrap()[id].chunks.contains(chunk)
    }

    /// Plans, "writes" (into the planned members) and confirms a file.
    pub async fn put(
        &self,
        client: &mut Client,
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
                self.store(&n.node_id, &c.chunk_id);
            }
        }
        confirm_all(client, &plan).await.unwrap()
    }
}

/// Member `id`'s heartbeat stream, every 100 ms until it is killed or the
/// coordinator goes away; carries out the commands that come back.
async fn heartbeat(fleet: Fleet, mut client: Client, id: String) {
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
                    let mut nodes = fleet.nodes.lock().unwrap();
                    let me = nodes.get_mut(&id).unwrap();
                    if !me.alive {
                        return;
                    }
                    let report = first.then(|| ChunkReport {
                        chunks: me.chunks.iter().map(|c| reported(c)).collect(),
                        first: true,
                        last: true,
                    });
                    first = false;
                    Heartbeat {
                        node_id: id.clone(),
                        info: Some(info()),
                        chunk_report: report,
                        added_chunks: me.pending_added.drain(..).map(|c| reported(&c)).collect(),
                        removed_chunks: std::mem::take(&mut me.pending_removed),
                        corrupt_chunks: std::mem::take(&mut me.pending_corrupt),
                        command_results: std::mem::take(&mut me.results),
                        cluster_id: String::new(),
                        abandoned_replicas: Vec::new(),
                    }
                };
                if tx.send(hb).await.is_err() {
                    return;
                }
            }
            msg = responses.next() => {
                let Some(Ok(resp)) = msg else { return };
                let mut nodes = fleet.nodes.lock().unwrap();
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
}

/// What a member reports for chunk `id` (checksum 42, as
/// [`crate::coordinator::confirm_request`] confirms it).
fn reported(id: &str) -> ChunkMeta {
    ChunkMeta {
        chunk_id: id.to_string(),
        checksum: 42,
        size: 0,
        checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
    }
}

struct Service {
    behaviour: Behaviour,
    calls: Arc<Calls>,
}

impl Service {
    fn refused(&self) -> Status {
        Status::unimplemented(match self.behaviour {
            Behaviour::Stall => "fake datanode: stalled",
            Behaviour::OldRelease { .. } => "fake datanode: old release",
        })
    }
}

/// A stream that never yields (a peer that never answers).
fn never<T: Send + 'static>() -> Boxed<T> {
    Box::pin(futures::stream::pending())
}

#[tonic::async_trait]
impl DataNode for Service {
    async fn prepare_chunk_upload(
        &self,
        _: Request<PrepareChunkUploadRequest>,
    ) -> Result<Response<PrepareChunkUploadResponse>, Status> {
        Err(self.refused())
    }

    type UploadChunkStreamStream = Boxed<UploadChunkResponse>;
    async fn upload_chunk_stream(
        &self,
        _: Request<Streaming<ChunkData>>,
    ) -> Result<Response<Self::UploadChunkStreamStream>, Status> {
        Err(self.refused())
    }

    async fn prepare_chunk_download(
        &self,
        _: Request<PrepareChunkDownloadRequest>,
    ) -> Result<Response<PrepareChunkDownloadResponse>, Status> {
        Err(self.refused())
    }

    type DownloadChunkStreamStream = Boxed<ChunkData>;
    async fn download_chunk_stream(
        &self,
        _: Request<DownloadChunkStreamRequest>,
    ) -> Result<Response<Self::DownloadChunkStreamStream>, Status> {
        Err(self.refused())
    }

    type ReplicateChunkStream = Boxed<UploadChunkResponse>;
    async fn replicate_chunk(
        &self,
        request: Request<Streaming<ReplicateChunkRequest>>,
    ) -> Result<Response<Self::ReplicateChunkStream>, Status> {
        self.calls.replicate.fetch_add(1, Ordering::SeqCst);
        let inbound = request.into_inner();
        match &self.behaviour {
            Behaviour::Stall => {
                // Hold the request stream open without reading it.
                let out = futures::stream::unfold(inbound, |s| async move {
                    std::future::pending::<()>().await;
                    Some((Ok(UploadChunkResponse::default()), s))
                });
                Ok(Response::new(Box::pin(out)))
            }
            Behaviour::OldRelease { real } => {
                let forwarded = tokio_stream::StreamExt::filter_map(inbound, |m| m.ok());
                let answers = crate::datanode::client(real)
                    .await
                    .replicate_chunk(forwarded)
                    .await?;
                Ok(Response::new(Box::pin(answers.into_inner())))
            }
        }
    }

    type ReplicateSmallChunksStream = Boxed<SmallChunkResult>;
    async fn replicate_small_chunks(
        &self,
        request: Request<Streaming<SmallChunk>>,
    ) -> Result<Response<Self::ReplicateSmallChunksStream>, Status> {
        self.calls.small.fetch_add(1, Ordering::SeqCst);
        match &self.behaviour {
            Behaviour::Stall => {
                // Reads the chunks and never answers.
                let mut inbound = request.into_inner();
                tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
                Ok(Response::new(never()))
            }
            Behaviour::OldRelease { .. } => Err(Status::unimplemented("unknown method")),
        }
    }

    async fn delete_chunk(
        &self,
        _: Request<DeleteChunkRequest>,
    ) -> Result<Response<DeleteChunkResponse>, Status> {
        Ok(Response::new(DeleteChunkResponse { deleted: false }))
    }
}
