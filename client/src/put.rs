//! Writing a file: plan with the coordinator, stream every chunk to its
//! primary datanode (which fans it out to the other replicas), re-plan a
//! failed chunk on other nodes, then confirm so the file appears atomically.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dfs_proto::chunk_stream;
use dfs_proto::upload_chunk_response::Kind;
use dfs_proto::{
    AbortUploadRequest, ChecksumAlgorithm, ChunkMeta, ConfirmUploadRequest, ConfirmedChunk,
    PlannedChunk, PrepareChunkUploadRequest, ReplanChunkRequest, UploadChunkResponse,
    UploadFileRequest, UploadPlan,
};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncRead;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::client::{Client, ProgressFn, source_chain};
use crate::error::ClientError;
use crate::source::{Source, read_chunk_frames};
use crate::types::FileInfo;

/// Options of a put.
#[derive(Clone, Default)]
pub struct PutOptions {
    /// Replication factor; 0 means the cluster default.
    pub replication: u32,
    /// Chunk size in bytes; 0 means the cluster default.
    pub chunk_size: u64,
    /// Replace an existing file atomically instead of failing.
    pub overwrite: bool,
    /// Called as bytes are acknowledged by the datanodes.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for PutOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutOptions")
            .field("replication", &self.replication)
            .field("chunk_size", &self.chunk_size)
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

/// Files up to this size are planned and confirmed in batches.
const SMALL_FILE_BYTES: u64 = 1 << 20;
/// Most chunks of a file planned and confirmed in a batch.
const SMALL_FILE_CHUNKS: u64 = 16;

/// Whether a file is small enough for batched planning and confirmation:
/// its plan must stay a few hundred bytes, so a batch of them stays small.
fn is_small(size: u64, chunk_size: u64) -> bool {
    size <= SMALL_FILE_BYTES && (chunk_size == 0 || size.div_ceil(chunk_size) <= SMALL_FILE_CHUNKS)
}

/// Nodes that failed during one upload, shared by its chunk transfers.
#[derive(Default)]
struct BadNodes(std::sync::Mutex<std::collections::HashSet<String>>);

impl BadNodes {
    fn insert(&self, node_id: &str) {
        self.0
            .lock()
            .expect("bad-node set lock poisoned")
            .insert(node_id.to_string());
    }

    fn contains(&self, node_id: &str) -> bool {
        self.0
            .lock()
            .expect("bad-node set lock poisoned")
            .contains(node_id)
    }

    fn snapshot(&self) -> Vec<String> {
        let set = self.0.lock().expect("bad-node set lock poisoned");
        set.iter().cloned().collect()
    }
}

/// Why one attempt at a chunk failed, and whether its primary is to blame.
struct AttemptError {
    message: String,
    /// The primary could not be reached or broke mid-stream: re-plan
    /// without it.
    blame_primary: bool,
    /// Replicas the primary says failed it (its write quorum was not
    /// reached): re-plan without them too.
    failed_replicas: Vec<String>,
}

impl AttemptError {
    /// Blames the primary when it could not be reached or the connection to
    /// it broke (a status made locally by the transport, which carries a
    /// source error), or when it is out of space. A status the primary itself
    /// returned (e.g. its replicas fell below the write quorum) does not
    /// blame it: re-planning picks fresh nodes anyway.
    fn status(stage: &str, node: &str, status: &tonic::Status) -> Self {
        let transport = std::error::Error::source(status).is_some()
            && matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
            );
        let blame_primary = transport || status.code() == Code::ResourceExhausted;
        let failed_replicas = status
            .metadata()
            .get(dfs_proto::FAILED_REPLICAS_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .filter(|id| !id.is_empty() && id.len() <= 128)
                    .take(16)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        AttemptError {
            message: format!("{stage} on {node}: {}", status.message()),
            blame_primary,
            failed_replicas,
        }
    }

    fn other(message: String) -> Self {
        AttemptError {
            message,
            blame_primary: false,
            failed_replicas: Vec::new(),
        }
    }
}

impl Client {
    /// Uploads the local file `local` to `remote`.
    pub async fn put_file(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
    ) -> Result<FileInfo, ClientError> {
        let file = File::open(local).map_err(|source| ClientError::Local {
            path: local.to_path_buf(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| ClientError::Local {
            path: local.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(ClientError::Local {
                path: local.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        self.put_source(Source::File(Arc::new(file)), meta.len(), remote, options)
            .await
    }

    /// Uploads bytes already in memory (small objects) to `remote`, without
    /// copying them.
    pub async fn put_bytes(
        &self,
        data: bytes::Bytes,
        remote: &str,
        options: &PutOptions,
    ) -> Result<FileInfo, ClientError> {
        let size = data.len() as u64;
        self.put_source(Source::Memory(data), size, remote, options)
            .await
    }

    /// Uploads everything `reader` yields to `remote`.
    ///
    /// The bytes are spooled to an anonymous temporary file first: the
    /// coordinator plans with the file's size, and a chunk that fails must be
    /// re-readable to be retried on other nodes. Memory stays bounded.
    pub async fn put_reader<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        remote: &str,
        options: &PutOptions,
    ) -> Result<FileInfo, ClientError> {
        let spool = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(std::io::Error::other)??;
        let mut spool = tokio::fs::File::from_std(spool);
        let size = tokio::io::copy(&mut reader, &mut spool).await?;
        let spool = spool.into_std().await;
        self.put_source(Source::File(Arc::new(spool)), size, remote, options)
            .await
    }

    async fn put_source(
        &self,
        source: Source,
        size: u64,
        remote: &str,
        options: &PutOptions,
    ) -> Result<FileInfo, ClientError> {
        let request = UploadFileRequest {
            path: remote.into(),
            size,
            replication: options.replication,
            chunk_size: options.chunk_size,
            overwrite: options.overwrite,
        };
        // Small files are planned (and confirmed) together with whatever
        // other puts of this client are waiting; a large plan is its own call.
        let small = self.config.batch_small_files && is_small(size, options.chunk_size);
        let planned = if small {
            self.plans.call(request).await
        } else {
            self.coordinators
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.upload_file(request).await }
                })
                .await
                .map(|r| r.into_inner())
        };
        let plan = planned.map_err(|s| {
            ClientError::from_status(&self.config.coordinator, "UploadFile", remote, s)
        })?;
        tracing::debug!(upload_id = %plan.upload_id, chunks = plan.chunks.len(), "upload planned");

        let bad = BadNodes::default();
        let uploaded: Result<Vec<ConfirmedChunk>, ClientError> =
            futures::stream::iter(plan.chunks.clone())
                .map(|chunk| self.upload_chunk(&plan, chunk, &source, remote, options, &bad))
                .buffer_unordered(self.config.concurrency.max(1))
                .try_collect()
                .await;
        let mut chunks = match uploaded {
            Ok(chunks) => chunks,
            Err(e) => {
                self.abort(&plan.upload_id).await;
                return Err(e);
            }
        };
        chunks.sort_by_key(|c| c.index);
        let request = ConfirmUploadRequest {
            upload_id: plan.upload_id.clone(),
            chunks,
        };
        let confirmed = if small {
            self.confirms.call(request).await
        } else {
            self.coordinators
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.confirm_upload(request).await }
                })
                .await
                .map(|r| r.into_inner())
        };
        match confirmed {
            Ok(r) => r
                .file
                .ok_or_else(|| {
                    ClientError::Protocol("ConfirmUpload answered without the file".into())
                })?
                .try_into(),
            Err(status) => {
                self.abort(&plan.upload_id).await;
                Err(ClientError::from_status(
                    &self.config.coordinator,
                    "ConfirmUpload",
                    remote,
                    status,
                ))
            }
        }
    }

    /// Best-effort abort so the coordinator reclaims the chunks now rather
    /// than when the upload expires.
    async fn abort(&self, upload_id: &str) {
        let request = AbortUploadRequest {
            upload_id: upload_id.into(),
        };
        if let Err(status) = self
            .coordinators
            .call(|mut c| {
                let request = request.clone();
                async move { c.abort_upload(request).await }
            })
            .await
        {
            tracing::debug!("abort of upload {upload_id} failed: {}", status.message());
        }
    }

    /// Uploads one chunk, re-planning it on other nodes after a failure.
    /// `bad` is shared by every chunk of the upload: a node that failed one
    /// chunk is not tried again for the others, which would otherwise each
    /// pay the same timeout.
    async fn upload_chunk(
        &self,
        plan: &UploadPlan,
        mut planned: PlannedChunk,
        source: &Source,
        remote: &str,
        options: &PutOptions,
        bad: &BadNodes,
    ) -> Result<ConfirmedChunk, ClientError> {
        let attempts = self.config.upload_attempts.max(1);
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            let names_bad_node = planned.nodes.iter().any(|n| bad.contains(&n.node_id));
            if attempt > 1 || names_bad_node {
                if attempt > 1 {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                match self.replan(plan, planned.index, bad.snapshot()).await {
                    Ok(p) => planned = p,
                    Err(status) => {
                        // Counts as a failed attempt: the cluster may have
                        // room again after a back-off (a node coming back).
                        last_error = format!("re-planning failed: {}", status.message());
                        tracing::warn!(index = planned.index, attempt, "{last_error}");
                        continue;
                    }
                }
            }
            match self
                .upload_chunk_once(plan, &planned, source, options)
                .await
            {
                Ok(done) => return Ok(done),
                Err(error) => {
                    tracing::warn!(
                        index = planned.index,
                        attempt,
                        "chunk upload failed: {}",
                        error.message
                    );
                    if error.blame_primary
                        && let Some(primary) = planned.nodes.first()
                    {
                        bad.insert(&primary.node_id);
                    }
                    // Replicas the primary could not reach or that failed:
                    // a re-plan that kept them could meet the same cut.
                    for id in &error.failed_replicas {
                        bad.insert(id);
                    }
                    last_error = error.message;
                }
            }
        }
        Err(ClientError::UploadChunk {
            path: remote.to_string(),
            index: planned.index,
            attempts,
            last_error,
        })
    }

    /// Asks the coordinator for new nodes for a chunk, avoiding `exclude`;
    /// when that leaves too few nodes, asks again without exclusions rather
    /// than fail (an excluded node may have recovered).
    async fn replan(
        &self,
        plan: &UploadPlan,
        index: u64,
        exclude: Vec<String>,
    ) -> Result<PlannedChunk, tonic::Status> {
        let request = |exclude_nodes| ReplanChunkRequest {
            upload_id: plan.upload_id.clone(),
            index,
            exclude_nodes,
        };
        let excluded = !exclude.is_empty();
        let replan = |exclude: Vec<String>| {
            self.coordinators.call(move |mut c| {
                let request = request(exclude.clone());
                async move { c.replan_chunk(request).await }
            })
        };
        match replan(exclude).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) if excluded && status.code() == Code::FailedPrecondition => {
                replan(Vec::new()).await.map(|r| r.into_inner())
            }
            Err(status) => Err(status),
        }
    }

    /// One attempt: stream the frames to the primary (the first one carrying
    /// the prepare request), wait for the replicas that stored the chunk
    /// durably.
    async fn upload_chunk_once(
        &self,
        plan: &UploadPlan,
        planned: &PlannedChunk,
        source: &Source,
        options: &PutOptions,
    ) -> Result<ConfirmedChunk, AttemptError> {
        let primary = planned
            .nodes
            .first()
            .ok_or_else(|| AttemptError::other("the plan names no datanode".into()))?;
        let channel = self
            .datanode_channel(&primary.node_id, &primary.address)
            .map_err(AttemptError::other)?;
        let node = primary.node_id.as_str();

        // One-call upload: the first frame carries the prepare request, which
        // saves a round trip per chunk (most of a small file's cost).
        let prepare = PrepareChunkUploadRequest {
            chunk: Some(ChunkMeta {
                chunk_id: planned.chunk_id.clone(),
                checksum: 0,
                size: planned.size,
                checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
            }),
            targets: planned.nodes[1..].to_vec(),
            write_quorum: plan.write_quorum,
            session_id: String::new(),
            token: planned.token.clone(),
        };
        let (frames, reader) = read_chunk_frames(
            source,
            planned.offset,
            planned.size,
            self.config.frame_bytes,
        );
        let mut prepare = Some(prepare);
        let outgoing = tokio_stream::StreamExt::map_while(
            ReceiverStream::new(frames),
            move |frame| match frame {
                Ok(mut frame) => {
                    frame.prepare = prepare.take();
                    Some(frame)
                }
                // A local read error ends the stream without is_final: the
                // datanode discards the partial chunk.
                Err(_) => None,
            },
        );

        let idle = self.config.stream_idle_timeout;
        // Frames go out in pieces, their data never copied (see
        // dfs_proto::chunk_stream).
        let call = chunk_stream::call::<_, _, UploadChunkResponse>(
            channel,
            chunk_stream::UPLOAD_PATH,
            outgoing,
            dfs_common::transport::MAX_MESSAGE_BYTES,
        );
        let mut responses = tokio::time::timeout(idle, call)
            .await
            .map_err(|_| AttemptError {
                message: format!("UploadChunkStream to {node} timed out"),
                blame_primary: true,
                failed_replicas: Vec::new(),
            })?
            .map_err(|s| AttemptError::status("UploadChunkStream", node, &s))?;

        let mut acked = 0u64;
        let stored = loop {
            let message = tokio::time::timeout(idle, responses.message())
                .await
                .map_err(|_| AttemptError {
                    message: format!("{node} stalled: no progress for {idle:?}"),
                    blame_primary: true,
                    failed_replicas: Vec::new(),
                })?
                .map_err(|s| AttemptError::status("UploadChunkStream", node, &s))?;
            match message.and_then(|m| m.kind) {
                Some(Kind::Ack(ack)) => {
                    if let Some(progress) = &options.progress
                        && ack.offset > acked
                    {
                        progress(ack.offset - acked);
                    }
                    acked = acked.max(ack.offset);
                }
                Some(Kind::Replicas(replicas)) => break replicas,
                None => {
                    return Err(AttemptError {
                        message: format!("{node} closed the upload stream without an answer"),
                        blame_primary: true,
                        failed_replicas: Vec::new(),
                    });
                }
            }
        };
        let crc = reader
            .await
            .map_err(|e| AttemptError::other(format!("local reader failed: {e}")))?
            .map_err(|e| AttemptError::other(format!("local read failed: {}", source_chain(&e))))?;
        if let Some(progress) = &options.progress
            && planned.size > acked
        {
            progress(planned.size - acked);
        }
        let chunk = stored.chunk.unwrap_or_default();
        if chunk.checksum != crc || chunk.size != planned.size || chunk.chunk_id != planned.chunk_id
        {
            return Err(AttemptError::other(format!(
                "{node} stored chunk {} with checksum {:08x} and size {}, expected {:08x} and {}",
                planned.chunk_id, chunk.checksum, chunk.size, crc, planned.size
            )));
        }
        if (stored.replicas.len() as u32) < plan.write_quorum {
            return Err(AttemptError::other(format!(
                "only {} of the {} required replicas stored chunk {}",
                stored.replicas.len(),
                plan.write_quorum,
                planned.chunk_id
            )));
        }
        Ok(ConfirmedChunk {
            index: planned.index,
            chunk: Some(ChunkMeta {
                chunk_id: planned.chunk_id.clone(),
                checksum: crc,
                size: planned.size,
                checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
            }),
            replicas: stored.replicas,
            // Each replica's own word on what it stored: what the
            // coordinator commits against.
            receipts: stored.receipts,
            // Planned replicas still writing: the coordinator waits for
            // their own reports instead of repairing at once.
            pending: stored.pending,
        })
    }
}
