//! The DataNode gRPC service: the edge where wire types are validated and
//! converted (ids, metas, targets) and domain errors become statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use dfs_proto::chunk_stream::Inbound;
use dfs_proto::data_node_server::DataNode;
use dfs_proto::{
    ChunkData, DeleteChunkRequest, DeleteChunkResponse, DownloadChunkStreamRequest,
    PrepareChunkDownloadRequest, PrepareChunkDownloadResponse, PrepareChunkUploadRequest,
    PrepareChunkUploadResponse, ReplicateChunkRequest, SmallChunk, SmallChunkResult,
    UploadChunkResponse, upload_chunk_response,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::{GaugeGuard, stream};
use crate::node::{Node, blocking};
use crate::pipeline::{self, prepare_upload};
use crate::pipeline::{authorize_replica, authorize_upload};
use crate::read::spawn_read;
use crate::wire::{self, Acks, Opening, chunk_meta, parse_id, status};
use dfs_common::tls::Principal;
use dfs_common::token::ops;

/// The caller's principal (none in plain text).
type Caller = Option<Arc<Principal>>;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Response messages queued towards a caller.
const RESPONSE_QUEUE: usize = 16;
/// The gRPC service of a datanode.
pub struct DataNodeService {
    node: Arc<Node>,
}

impl DataNodeService {
    /// The node it serves.
    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Refuses (PERMISSION_DENIED, counted) a call whose caller is none of
    /// `kinds`; plain text lets every call through.
    fn only<T>(&self, request: &Request<T>, kinds: &[dfs_common::tls::Kind]) -> Result<(), Status> {
        match self.node.security.require(request, kinds) {
            Ok(_) => Ok(()),
            Err(st) => {
                self.node.metrics.refused_calls.inc();
                Err(st)
            }
        }
    }

    /// The chunk `raw` names, when `token` lets `caller` read it here.
    fn readable(
        &self,
        raw: &str,
        token: Option<&dfs_proto::ChunkToken>,
        caller: Option<&Principal>,
    ) -> Result<crate::store::ChunkId, Status> {
        let id = parse_id(raw)?;
        self.node
            .check_token(token, id.as_str(), ops::READ, caller)?;
        Ok(id)
    }

    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        DataNodeService { node }
    }

    /// UploadChunkStream over any source of frames (tonic's, or the
    /// zero-copy reader of [`crate::routes`]): the answers as a stream.
    pub fn upload_stream(
        &self,
        frames: impl Inbound<ChunkData>,
        caller: Caller,
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
            let acks = Acks(tx.clone());
            let last = async {
                let idle = node.sessions.timeout();
                let (opening, first, rest) = wire::open_upload(frames, idle, &node.node_id).await?;
                if let Opening::Start(start) = &opening {
                    authorize_upload(&node, start, caller.as_deref())
                        .map_err(wire::DataPathError::Transport)?;
                }
                pipeline::upload(node, opening, first, rest, &acks).await
            }
            .await
            .map(replicas_message)
            .map_err(Status::from);
            let _ = tx.send(last).await;
        });
        Box::pin(ReceiverStream::new(rx))
    }

    /// ReplicateChunk over any source of requests: the answers as a stream.
    pub fn replicate_stream(
        &self,
        requests: impl Inbound<ReplicateChunkRequest>,
        caller: Caller,
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
            let acks = Acks(tx.clone());
            let last = async {
                let (header, frames) =
                    wire::open_replica(requests, node.sessions.timeout()).await?;
                authorize_replica(&node, &header, caller.as_deref())
                    .map_err(wire::DataPathError::Transport)?;
                pipeline::replicate(node, &header, frames, &acks).await
            }
            .await
            .map(replicas_message)
            .map_err(Status::from);
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
        let caller = self.node.security.principal_of(&request)?;
        let mut start = wire::parse_upload_start(request.into_inner(), &self.node.node_id)?;
        authorize_upload(&self.node, &start, caller.as_deref())?;
        let session_id = std::mem::take(&mut start.session_id);
        let (session, already_stored) = prepare_upload(&self.node, start)?;
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
        let caller = self.node.security.principal_of(&request)?;
        Ok(Response::new(
            self.upload_stream(request.into_inner(), caller),
        ))
    }

    async fn prepare_chunk_download(
        &self,
        request: Request<PrepareChunkDownloadRequest>,
    ) -> Result<Response<PrepareChunkDownloadResponse>, Status> {
        let caller = self.node.security.principal_of(&request)?;
        let req = request.into_inner();
        let id = self.readable(&req.chunk_id, req.token.as_ref(), caller.as_deref())?;
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
        let caller = self.node.security.principal_of(&request)?;
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
            self.readable(&req.chunk_id, req.token.as_ref(), caller.as_deref())?
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
        self.only(&request, &[dfs_common::tls::Kind::Datanode])?;
        let caller = self.node.security.principal_of(&request)?;
        Ok(Response::new(
            self.replicate_stream(request.into_inner(), caller),
        ))
    }

    type ReplicateSmallChunksStream = BoxStream<SmallChunkResult>;

    async fn replicate_small_chunks(
        &self,
        request: Request<Streaming<SmallChunk>>,
    ) -> Result<Response<Self::ReplicateSmallChunksStream>, Status> {
        self.only(&request, &[dfs_common::tls::Kind::Datanode])?;
        let caller = self.node.security.principal_of(&request)?;
        // One stream slot per long-lived small-chunk link.
        let permit = self.node.stream_permit()?;
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(crate::small_link::RESPONSE_QUEUE);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            crate::small_link::receive(node, requests, tx, caller).await
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete_chunk(
        &self,
        request: Request<DeleteChunkRequest>,
    ) -> Result<Response<DeleteChunkResponse>, Status> {
        // Deletes come from the coordinator (over-replication, orphans) or
        // from a primary rolling back its fan-out; never from a client,
        // which could otherwise destroy any chunk whose id it learned.
        self.only(
            &request,
            &[
                dfs_common::tls::Kind::Datanode,
                dfs_common::tls::Kind::Coordinator,
            ],
        )?;
        let caller = self.node.security.principal_of(&request)?;
        let req = request.into_inner();
        let id = parse_id(&req.chunk_id)?;
        // A delete token, or the write token of the upload whose copy its
        // primary rolls back.
        let op = match &req.token {
            Some(t) if t.ops & ops::DELETE == 0 && t.ops & ops::WRITE != 0 => ops::WRITE,
            _ => ops::DELETE,
        };
        self.node
            .check_token(req.token.as_ref(), id.as_str(), op, caller.as_deref())?;
        let store = self.node.store.clone();
        let deleted = blocking(move || store.delete(&id)).await.map_err(status)?;
        Ok(Response::new(DeleteChunkResponse { deleted }))
    }
}
