//! The DataNode gRPC service: the edge where wire types are validated and
//! converted (ids, metas, targets) and domain errors become statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use dfs_proto::chunk_stream::Inbound;
use dfs_proto::data_node_server::DataNode;
use dfs_proto::{
    ChunkData, ChunkMeta, DeleteChunkRequest, DeleteChunkResponse, DownloadChunkStreamRequest,
    PrepareChunkDownloadRequest, PrepareChunkDownloadResponse, PrepareChunkUploadRequest,
    PrepareChunkUploadResponse, ReplicateChunkRequest, SmallChunk, SmallChunkResult,
    UploadChunkResponse, upload_chunk_response,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::{GaugeGuard, stream};
use crate::node::{Node, Target, UploadSession, blocking, status};
use crate::pipeline::{self, chunk_meta};
use crate::read::spawn_read;
use crate::store::ChunkId;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Response messages queued towards a caller.
const RESPONSE_QUEUE: usize = 16;
/// Most replica targets one upload may name (replication 16 at most).
pub const MAX_TARGETS: usize = 15;

/// Validates a chunk id from the wire.
pub fn parse_id(s: &str) -> Result<ChunkId, Status> {
    ChunkId::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Validates a ChunkMeta: id, algorithm; checksum 0 means unknown.
pub fn parse_meta(meta: &ChunkMeta) -> Result<(ChunkId, u64, Option<u32>), Status> {
    let id = parse_id(&meta.chunk_id)?;
    if !dfs_proto::frame::is_supported_algorithm(meta.checksum_algorithm) {
        return Err(Status::invalid_argument(format!(
            "unsupported checksum algorithm {}",
            meta.checksum_algorithm
        )));
    }
    let checksum = (meta.checksum != 0).then_some(meta.checksum);
    Ok((id, meta.size, checksum))
}

/// Validates a prepare request (PrepareChunkUpload, or the `prepare` of a
/// one-call upload's first frame) and reserves the chunk's space: the
/// session a stream then uses. Also says whether the node already stores
/// the chunk with the announced checksum (an idempotent retry).
pub fn prepare_upload(
    node: &Node,
    req: PrepareChunkUploadRequest,
) -> Result<(UploadSession, bool), Status> {
    let meta = req
        .chunk
        .ok_or_else(|| Status::invalid_argument("PrepareChunkUpload without chunk"))?;
    let (id, size, checksum) = parse_meta(&meta)?;
    if req.targets.len() > MAX_TARGETS {
        return Err(Status::invalid_argument(format!(
            "{} targets; a chunk has at most {} replicas besides the primary",
            req.targets.len(),
            MAX_TARGETS
        )));
    }
    let mut targets: Vec<Target> = Vec::with_capacity(req.targets.len());
    for t in req.targets {
        if t.node_id.is_empty() || t.address.is_empty() {
            return Err(Status::invalid_argument(
                "every target needs a node_id and an address",
            ));
        }
        // Only gRPC URLs of a sane length: the primary connects to them.
        if t.node_id.len() > 128
            || t.address.len() > 256
            || !(t.address.starts_with("http://") || t.address.starts_with("https://"))
            || t.address.parse::<tonic::codegen::http::Uri>().is_err()
        {
            return Err(Status::invalid_argument(format!(
                "invalid target {:?} at {:?}: expected a node id of at most 128 bytes and an http(s) URL of at most 256",
                t.node_id.chars().take(64).collect::<String>(),
                t.address.chars().take(80).collect::<String>()
            )));
        }
        if targets
            .iter()
            .any(|x| x.node_id == t.node_id || x.address == t.address)
        {
            return Err(Status::invalid_argument("duplicate target"));
        }
        if t.node_id == node.node_id {
            return Err(Status::invalid_argument(
                "targets must not include the primary itself",
            ));
        }
        targets.push(Target {
            node_id: t.node_id,
            address: t.address,
        });
    }
    let replicas = 1 + targets.len();
    let quorum = match (req.write_quorum, node.config.write_quorum) {
        (0, 0) => replicas,
        (0, q) => (q as usize).min(replicas),
        (q, _) if q as usize > replicas => {
            return Err(Status::invalid_argument(format!(
                "write_quorum {q} exceeds the {replicas} replicas"
            )));
        }
        (q, _) => q as usize,
    };
    // Immutability, before a byte is received: other bytes under a stored
    // id get ALREADY_EXISTS; the same ones are an idempotent retry.
    let already_stored = node
        .store
        .check_writable(&id, size, checksum)
        .map_err(status)?;
    let reservation = node
        .store
        .reserve(if already_stored { 0 } else { size })
        .map_err(status)?;
    let session = node
        .sessions
        .new_upload(id, size, checksum, targets, quorum, reservation);
    Ok((session, already_stored))
}

/// The gRPC service of a datanode.
pub struct DataNodeService {
    node: Arc<Node>,
}

impl DataNodeService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        DataNodeService { node }
    }

    /// UploadChunkStream over any source of frames (tonic's, or the
    /// zero-copy reader of [`crate::routes`]): the answers as a stream.
    pub fn upload_stream(&self, frames: impl Inbound<ChunkData>) -> BoxStream<UploadChunkResponse> {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _permit = match node.stream_permit() {
                Ok(p) => p,
                Err(st) => {
                    let _ = tx.send(Err(st)).await;
                    return;
                }
            };
            let last = match pipeline::upload(node, frames, tx.clone()).await {
                Ok(r) => Ok(replicas_message(r)),
                Err(st) => Err(st),
            };
            let _ = tx.send(last).await;
        });
        Box::pin(ReceiverStream::new(rx))
    }

    /// ReplicateChunk over any source of requests: the answers as a stream.
    pub fn replicate_stream(
        &self,
        requests: impl Inbound<ReplicateChunkRequest>,
    ) -> BoxStream<UploadChunkResponse> {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _permit = match node.stream_permit() {
                Ok(p) => p,
                Err(st) => {
                    let _ = tx.send(Err(st)).await;
                    return;
                }
            };
            let last = match pipeline::replicate(node, requests, tx.clone()).await {
                Ok(r) => Ok(replicas_message(r)),
                Err(st) => Err(st),
            };
            let _ = tx.send(last).await;
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

fn replicas_message(r: dfs_proto::ChunkReplicas) -> UploadChunkResponse {
    UploadChunkResponse {
        kind: Some(upload_chunk_response::Kind::Replicas(r)),
    }
}

#[tonic::async_trait]
impl DataNode for DataNodeService {
    async fn prepare_chunk_upload(
        &self,
        request: Request<PrepareChunkUploadRequest>,
    ) -> Result<Response<PrepareChunkUploadResponse>, Status> {
        let req = request.into_inner();
        let session_id = req.session_id.clone();
        let (session, already_stored) = prepare_upload(&self.node, req)?;
        let session_id = self.node.sessions.insert_upload(session_id, session)?;
        Ok(Response::new(PrepareChunkUploadResponse {
            session_id,
            expires_at_unix_ms: dfs_common::time::now_unix_ms()
                + self.node.sessions.timeout().as_millis() as u64,
            already_stored,
            max_frame_bytes: self.node.max_frame_bytes() as u32,
        }))
    }

    type UploadChunkStreamStream = BoxStream<UploadChunkResponse>;

    async fn upload_chunk_stream(
        &self,
        request: Request<Streaming<ChunkData>>,
    ) -> Result<Response<Self::UploadChunkStreamStream>, Status> {
        Ok(Response::new(self.upload_stream(request.into_inner())))
    }

    async fn prepare_chunk_download(
        &self,
        request: Request<PrepareChunkDownloadRequest>,
    ) -> Result<Response<PrepareChunkDownloadResponse>, Status> {
        let id = parse_id(&request.into_inner().chunk_id)?;
        let stored = self
            .node
            .store
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("chunk {id} not found")))?;
        let session_id = self.node.sessions.insert_download(id.clone())?;
        Ok(Response::new(PrepareChunkDownloadResponse {
            session_id,
            chunk: Some(chunk_meta(&id, stored)),
            expires_at_unix_ms: dfs_common::time::now_unix_ms()
                + self.node.sessions.timeout().as_millis() as u64,
        }))
    }

    type DownloadChunkStreamStream = BoxStream<ChunkData>;

    async fn download_chunk_stream(
        &self,
        request: Request<DownloadChunkStreamRequest>,
    ) -> Result<Response<Self::DownloadChunkStreamStream>, Status> {
        let req = request.into_inner();
        let id = if !req.session_id.is_empty() {
            self.node
                .sessions
                .download(&req.session_id)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "unknown or expired download session {:?}",
                        req.session_id
                    ))
                })?
        } else {
            parse_id(&req.chunk_id)?
        };
        let stored = self
            .node
            .store
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("chunk {id} not found")))?;
        if req.offset > stored.size || req.offset.saturating_add(req.length) > stored.size {
            return Err(Status::out_of_range(format!(
                "range {}+{} is outside chunk {id} of {} bytes",
                req.offset, req.length, stored.size
            )));
        }
        let frame_bytes = match req.frame_bytes as usize {
            0 => dfs_proto::DEFAULT_FRAME_BYTES,
            n => n.min(self.node.max_frame_bytes()),
        };
        // Bounded: each read holds a blocking thread while it runs, and a
        // reader that stops reading is cut off after the session timeout.
        let permit = self.node.stream_permit()?;
        let (tx, rx) = mpsc::channel(4);
        let node = self.node.clone();
        let handle = spawn_read(
            node.store.clone(),
            id,
            req.offset,
            req.length,
            frame_bytes,
            0,
            stream::DOWNLOAD,
            node.sessions.timeout(),
            tx,
        );
        let gauge = GaugeGuard::new(
            node.metrics
                .active_sessions
                .with_label_values(&["download"]),
        );
        let started = Instant::now();
        tokio::spawn(async move {
            let _gauge = gauge;
            let _permit = permit;
            let outcome = handle.await.unwrap_or("error");
            node.metrics
                .download_seconds
                .with_label_values(&[outcome])
                .observe(started.elapsed().as_secs_f64());
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ReplicateChunkStream = BoxStream<UploadChunkResponse>;

    async fn replicate_chunk(
        &self,
        request: Request<Streaming<ReplicateChunkRequest>>,
    ) -> Result<Response<Self::ReplicateChunkStream>, Status> {
        Ok(Response::new(self.replicate_stream(request.into_inner())))
    }

    type ReplicateSmallChunksStream = BoxStream<SmallChunkResult>;

    async fn replicate_small_chunks(
        &self,
        request: Request<Streaming<SmallChunk>>,
    ) -> Result<Response<Self::ReplicateSmallChunksStream>, Status> {
        // One stream slot per long-lived small-chunk link.
        let permit = self.node.stream_permit()?;
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(crate::small_link::RESPONSE_QUEUE);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            crate::small_link::receive(node, requests, tx).await
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete_chunk(
        &self,
        request: Request<DeleteChunkRequest>,
    ) -> Result<Response<DeleteChunkResponse>, Status> {
        let id = parse_id(&request.into_inner().chunk_id)?;
        let store = self.node.store.clone();
        let deleted = blocking(move || store.delete(&id)).await.map_err(status)?;
        Ok(Response::new(DeleteChunkResponse { deleted }))
    }
}
