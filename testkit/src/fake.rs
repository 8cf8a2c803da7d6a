//! The one fake datanode of the test suites: a `DataNode` gRPC server on a
//! free 127.0.0.1 port whose misbehaviour is chosen by a [`Behaviour`], for
//! the faults a real datanode cannot be made to show on demand (a peer that
//! hangs, a peer of an older release). It counts the calls it gets.
//!
//! The heartbeat-level simulation of many datanodes against a real
//! coordinator is [`crate::coordinator::Sim`]; this fake is the data-path
//! side (what a primary or a client talks to).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dfs_proto::data_node_server::{DataNode, DataNodeServer};
use dfs_proto::*;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

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

/// A running fake datanode (it runs until the test's runtime ends).
#[derive(Debug, Clone)]
pub struct FakeDatanode {
    /// Its gRPC endpoint (`http://127.0.0.1:port`).
    pub address: String,
    /// What it was called with.
    pub calls: Arc<Calls>,
}

impl FakeDatanode {
    /// Starts a fake that behaves as `behaviour`.
    pub async fn start(behaviour: Behaviour) -> FakeDatanode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let address = format!("http://{}", listener.local_addr().expect("local addr"));
        let calls = Arc::new(Calls::default());
        let service = Service {
            behaviour,
            calls: calls.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DataNodeServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        FakeDatanode { address, calls }
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
