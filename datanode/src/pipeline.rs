//! The write path: a client's upload on the primary, fanned out frame by
//! frame to the other replicas, and the receiving side of that fan-out.
//!
//! ```text
//!  client ──frames──▶ primary ─┬─▶ local writer thread (bounded channel) ─▶ temp file
//!                              │   (or, for a small chunk, one volume group commit)
//!         ◀──acks────          ├─▶ ReplicateChunk ─▶ replica A (bounded channel)
//!                              └─▶ ReplicateChunk ─▶ replica B (bounded channel)
//! ```
//!
//! Every hop verifies each frame's CRC32C before acking, writing or
//! forwarding it. Frames are `Bytes`, so the fan-out shares one buffer. All
//! channels are bounded: a slow disk or replica slows the client down rather
//! than growing memory, and a replica that blocks for longer than
//! `--replica-stall-timeout` is dropped from the upload. On `is_final` the
//! primary checks size and checksum before forwarding the final frame, so a
//! bad upload never commits anywhere; if the write quorum is not reached the
//! copies that did commit are deleted again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfs_proto::chunk_stream;
use dfs_proto::{
    ChunkReplicas, DeleteChunkRequest, ReplicaFailure, ReplicaReceipt, UploadChunkResponse,
    upload_chunk_response,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use crate::metrics::{GaugeGuard, stream};
use crate::node::{Node, UploadSession};
use crate::peers::Target;
use crate::store::{ChunkId, Store, StoreError, Stored};
use crate::wire::{
    Acks, DataPathError, Frame, FrameSource, Opening, ReplicaHeader, UploadStart, chunk_meta,
    replicate_messages,
};

/// Frames queued towards the local writer thread.
const WRITER_QUEUE_FRAMES: usize = 4;
/// Frames queued towards each replica.
const FORWARD_QUEUE_FRAMES: usize = 4;

/// A replica's own answer: it stored `s` under `id`, with its receipt.
pub fn stored_answer(node: &Node, id: &ChunkId, s: Stored) -> ChunkReplicas {
    ChunkReplicas {
        replicas: vec![node.node_id.clone()],
        chunk: Some(chunk_meta(id, s.chunk)),
        failed: vec![],
        receipts: vec![receipt(node, s)],
    }
}

fn receipt(node: &Node, s: Stored) -> ReplicaReceipt {
    ReplicaReceipt {
        node_id: node.node_id.clone(),
        checksum: s.chunk.checksum,
        size: s.chunk.size,
        created: s.created,
    }
}

/// What a replica's answer says it stored, if it says (older peers answer
/// without receipts; the coordinator then waits for their own report).
fn answered_receipt(answer: &ChunkReplicas, node_id: &str) -> Option<ReplicaReceipt> {
    if let Some(r) = answer.receipts.iter().find(|r| r.node_id == node_id) {
        return Some(r.clone());
    }
    answer.chunk.as_ref().map(|c| ReplicaReceipt {
        node_id: node_id.to_string(),
        checksum: c.checksum,
        size: c.size,
        // An older peer: as before, its copy counts as this upload's.
        created: true,
    })
}

/// Validates a prepare request (PrepareChunkUpload, or the `prepare` of a
/// one-call upload's first frame) and reserves the chunk's space: the
/// session a stream then uses. Also says whether the node already stores
/// the chunk with the announced checksum (an idempotent retry).
pub fn prepare_upload(
    node: &Node,
    start: UploadStart,
) -> Result<(UploadSession, bool), DataPathError> {
    let UploadStart {
        chunk_id: id,
        size,
        checksum,
        targets,
        write_quorum,
        ..
    } = start;
    let replicas = 1 + targets.len();
    let quorum = match (write_quorum, node.config.write_quorum) {
        (None, 0) => replicas,
        (None, q) => (q as usize).min(replicas),
        (Some(q), _) if q > replicas => {
            return Err(DataPathError::Invalid(format!(
                "write_quorum {q} exceeds the {replicas} replicas"
            )));
        }
        (Some(q), _) => q,
    };
    // Immutability, before a byte is received: other bytes under a stored
    // id get ALREADY_EXISTS; the same ones are an idempotent retry.
    let already_stored = node.store.check_writable(&id, size, checksum)?;
    let reservation = node.store.reserve(if already_stored { 0 } else { size })?;
    let session = node
        .sessions
        .new_upload(id, size, checksum, targets, quorum, reservation);
    Ok((session, already_stored))
}

/// Validates the frames of one chunk as they arrive: size limit, contiguous
/// offsets, frame checksum, and at the end total size and whole checksum.
pub(crate) struct FrameCheck {
    size: u64,
    checksum: Option<u32>,
    max_frame: usize,
    offset: u64,
    /// CRC32C of the bytes accepted so far.
    pub(crate) crc: u32,
    frames: u64,
}

impl FrameCheck {
    pub(crate) fn new(size: u64, checksum: Option<u32>, max_frame: usize) -> Self {
        FrameCheck {
            size,
            checksum,
            max_frame,
            offset: 0,
            crc: 0,
            frames: 0,
        }
    }

    pub(crate) fn accept(&mut self, f: &Frame) -> Result<(), DataPathError> {
        let len = f.data.len() as u64;
        if f.data.len() > self.max_frame {
            return Err(DataPathError::Invalid(format!(
                "frame of {len} bytes at offset {} exceeds the maximum of {} bytes",
                f.offset, self.max_frame
            )));
        }
        if f.offset != self.offset {
            return Err(DataPathError::Invalid(format!(
                "frame at offset {} but {} bytes were received: frames must be contiguous (gap or overlap)",
                f.offset, self.offset
            )));
        }
        if !f.verify() {
            return Err(DataPathError::Checksum(format!(
                "frame at offset {}: checksum mismatch (frame says {:08x}, data has {:08x})",
                f.offset,
                f.frame_checksum,
                dfs_proto::frame::checksum(&f.data)
            )));
        }
        if self.offset + len > self.size {
            return Err(DataPathError::Invalid(format!(
                "frame at offset {} of {len} bytes goes past the announced size of {}",
                f.offset, self.size
            )));
        }
        self.offset += len;
        self.frames += 1;
        self.crc = dfs_proto::frame::checksum_append(self.crc, &f.data);
        if f.is_final {
            if self.offset != self.size {
                return Err(DataPathError::Invalid(format!(
                    "final frame after {} bytes, but the chunk size is {}",
                    self.offset, self.size
                )));
            }
            if let Some(want) = self.checksum
                && want != self.crc
            {
                return Err(DataPathError::Checksum(format!(
                    "chunk checksum mismatch: data has crc32c {:08x}, expected {want:08x}",
                    self.crc
                )));
            }
        }
        Ok(())
    }
}

/// Verifies one received frame (see [`FrameCheck`]) and counts it: bytes
/// and frames in by stream kind, or a checksum failure.
pub(crate) fn receive_frame(
    node: &Node,
    check: &mut FrameCheck,
    frame: &Frame,
    kind: &str,
) -> Result<(), DataPathError> {
    if let Err(e) = check.accept(frame) {
        if matches!(e, DataPathError::Checksum(_)) {
            node.metrics
                .checksum_failures
                .with_label_values(&["frame"])
                .inc();
        }
        return Err(e);
    }
    node.metrics
        .bytes_in
        .with_label_values(&[kind])
        .inc_by(frame.data.len() as u64);
    node.metrics.frames_in.with_label_values(&[kind]).inc();
    Ok(())
}

enum WriterMsg {
    Data(Bytes),
    Finish(u64, Option<u32>),
}

/// The local copy of a chunk: a chunk file written by its own thread, or a
/// small chunk collected in memory (at most `--small-chunk-max` bytes, the
/// frames already received) and group-committed to a volume at the end.
pub(crate) enum LocalWrite {
    File(FileWrite),
    Small {
        store: Arc<Store>,
        id: ChunkId,
        parts: Vec<Bytes>,
    },
}

impl LocalWrite {
    pub(crate) fn start(store: Arc<Store>, id: ChunkId, size: u64) -> Self {
        if store.is_small(size) {
            LocalWrite::Small {
                store,
                id,
                parts: Vec::new(),
            }
        } else {
            LocalWrite::File(FileWrite::start(store, id))
        }
    }

    pub(crate) async fn write(&mut self, data: Bytes) -> Result<(), DataPathError> {
        match self {
            LocalWrite::File(f) => f.write(data).await,
            // FrameCheck bounds the total by the announced (small) size.
            LocalWrite::Small { parts, .. } => {
                parts.push(data);
                Ok(())
            }
        }
    }

    pub(crate) async fn finish(
        self,
        size: u64,
        checksum: Option<u32>,
    ) -> Result<Stored, DataPathError> {
        match self {
            LocalWrite::File(f) => f.finish(size, checksum).await,
            LocalWrite::Small { store, id, parts } => Ok(store
                .put_small(&id, parts, size, checksum)?
                .wait_stored()
                .await?),
        }
    }
}

/// A chunk file: a blocking writer thread fed through a bounded channel, so
/// disk writes never block the async threads and never queue unboundedly.
/// Dropping it before `finish` removes the temp file.
pub(crate) struct FileWrite {
    tx: Option<mpsc::Sender<WriterMsg>>,
    join: Option<JoinHandle<Result<Stored, StoreError>>>,
}

impl FileWrite {
    fn start(store: Arc<Store>, id: ChunkId) -> Self {
        let (tx, mut rx) = mpsc::channel(WRITER_QUEUE_FRAMES);
        let join = tokio::task::spawn_blocking(move || {
            let mut w = store.create_writer(&id)?;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    WriterMsg::Data(b) => w.write(&b)?,
                    WriterMsg::Finish(size, checksum) => return w.finish_stored(size, checksum),
                }
            }
            Err(StoreError::Cancelled)
        });
        FileWrite {
            tx: Some(tx),
            join: Some(join),
        }
    }

    async fn result(&mut self) -> DataPathError {
        match self.join.take() {
            Some(j) => match j.await {
                Ok(Err(e)) => e.into(),
                Ok(Ok(_)) => DataPathError::Internal("local writer finished early".into()),
                Err(e) => DataPathError::Internal(format!("local writer failed: {e}")),
            },
            None => DataPathError::Internal("local writer already finished".into()),
        }
    }

    async fn write(&mut self, data: Bytes) -> Result<(), DataPathError> {
        let tx = self.tx.as_ref().expect("writer open");
        if tx.send(WriterMsg::Data(data)).await.is_err() {
            return Err(self.result().await);
        }
        Ok(())
    }

    async fn finish(mut self, size: u64, checksum: Option<u32>) -> Result<Stored, DataPathError> {
        let tx = self.tx.take().expect("writer open");
        if tx.send(WriterMsg::Finish(size, checksum)).await.is_err() {
            return Err(self.result().await);
        }
        match self.join.take().expect("writer running").await {
            Ok(r) => Ok(r?),
            Err(e) => Err(DataPathError::Internal(format!("local writer failed: {e}"))),
        }
    }
}

/// One replica target of an upload: a ReplicateChunk stream fed through a
/// bounded channel. Its outcome is the peer's answer or the peer's status
/// (which becomes the reason the replica failed).
struct Forward {
    target: Target,
    tx: Option<mpsc::Sender<Frame>>,
    task: JoinHandle<Result<ChunkReplicas, Status>>,
    failure: Option<String>,
    answer: Option<ChunkReplicas>,
}

impl Forward {
    fn start(node: &Node, target: Target, header: &ReplicaHeader) -> Self {
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE_FRAMES);
        let requests = replicate_messages(header, ReceiverStream::new(rx));
        let channel = node.peers.channel(&target.address);
        let task = tokio::spawn(async move {
            // Frames go out in pieces, their data never copied (see
            // dfs_proto::chunk_stream).
            let mut responses = chunk_stream::call::<_, _, UploadChunkResponse>(
                channel?,
                chunk_stream::REPLICATE_PATH,
                requests,
                dfs_common::transport::MAX_MESSAGE_BYTES,
            )
            .await?;
            while let Some(m) = responses.message().await? {
                if let Some(upload_chunk_response::Kind::Replicas(r)) = m.kind {
                    return Ok(r);
                }
            }
            Err(Status::unavailable(
                "replica closed the stream without an answer",
            ))
        });
        Forward {
            target,
            tx: Some(tx),
            task,
            failure: None,
            answer: None,
        }
    }

    fn live(&self) -> bool {
        self.failure.is_none()
    }

    fn fail(&mut self, node: &Node, reason: String, kind: &str) {
        tracing::warn!(target_node = %self.target.node_id, "dropping replica from upload: {reason}");
        node.metrics
            .replicas_dropped
            .with_label_values(&[kind])
            .inc();
        self.tx = None;
        self.task.abort();
        self.failure = Some(reason);
    }

    /// Forwards one frame; a replica that is gone or blocks for longer than
    /// the stall timeout is dropped.
    async fn send(&mut self, node: &Node, frame: Frame, stall: Duration) -> bool {
        let Some(tx) = &self.tx else { return false };
        let len = frame.data.len() as u64;
        match tokio::time::timeout(stall, tx.send(frame)).await {
            Ok(Ok(())) => {
                node.metrics.frame_out(stream::FORWARD, len);
                true
            }
            Ok(Err(_)) => {
                // The stream is gone: the task holds the reason.
                let reason = match tokio::time::timeout(stall, &mut self.task).await {
                    Ok(Ok(Err(st))) => st.message().to_string(),
                    Ok(Ok(Ok(_))) => "replica answered before the final frame".to_string(),
                    _ => "replica stream closed".to_string(),
                };
                self.fail(node, reason, "error");
                false
            }
            Err(_) => {
                self.fail(
                    node,
                    format!("replica stalled for more than {stall:?}"),
                    "stall",
                );
                false
            }
        }
    }

    /// Waits for the replica's final answer.
    async fn finish(&mut self, node: &Node, wait: Duration) -> bool {
        if !self.live() {
            return false;
        }
        self.tx = None;
        match tokio::time::timeout(wait, &mut self.task).await {
            Ok(Ok(Ok(answer))) => {
                self.answer = Some(answer);
                true
            }
            Ok(Ok(Err(st))) => {
                self.fail(node, st.message().to_string(), "error");
                false
            }
            Ok(Err(e)) => {
                self.fail(node, format!("replica task failed: {e}"), "error");
                false
            }
            Err(_) => {
                self.fail(node, format!("no durable answer within {wait:?}"), "stall");
                false
            }
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        // An aborted upload resets the replica's stream, which removes its
        // partial data.
        self.task.abort();
    }
}

/// UploadChunkStream on the primary: receives, stores and fans out one
/// chunk. `opening` and `first` come from the stream's first frame
/// ([`crate::wire::open_upload`]), `frames` are the rest.
pub async fn upload(
    node: Arc<Node>,
    opening: Opening,
    first: Frame,
    mut frames: impl FrameSource,
    acks: &Acks,
) -> Result<ChunkReplicas, DataPathError> {
    let idle = node.sessions.timeout();
    let (session, session_id) = match opening {
        // One-call upload: prepared here, with PrepareChunkUpload's checks.
        Opening::Start(start) => (prepare_upload(&node, start)?.0, crate::node::random_id()),
        Opening::Session(id) => match node.sessions.take_upload(&id) {
            Some(session) => (session, id),
            None => return Err(DataPathError::UnknownSession(id)),
        },
    };
    let _gauge = GaugeGuard::new(node.metrics.active_sessions.with_label_values(&["upload"]));
    let started = Instant::now();
    let chunk_id = session.chunk_id.clone();
    let span = tracing::info_span!("upload", chunk_id = %chunk_id, session_id = %session_id);

    let result = async {
        if first.is_final {
            return upload_whole(&node, &session, &session_id, first).await;
        }
        let mut check = FrameCheck::new(session.size, session.checksum, node.max_frame_bytes());
        let mut local = LocalWrite::start(node.store.clone(), chunk_id.clone(), session.size);
        let header = ReplicaHeader {
            session_id: session_id.clone(),
            chunk_id: chunk_id.clone(),
            size: session.size,
            checksum: session.checksum,
            source_node_id: node.node_id.clone(),
        };
        let mut forwards: Vec<Forward> = session
            .targets
            .iter()
            .map(|t| Forward::start(&node, t.clone(), &header))
            .collect();
        let stall = node.config.replica_stall_timeout;
        let mut frame = first;
        loop {
            receive_frame(&node, &mut check, &frame, stream::UPLOAD)?;
            let is_final = frame.is_final;
            // Clones share the frame's buffer: one copy of the bytes for
            // the disk and every replica.
            local.write(frame.data.clone()).await?;
            for f in forwards.iter_mut().filter(|f| f.live()) {
                f.send(&node, frame.clone(), stall).await;
            }
            if is_final {
                // The final answer (ChunkReplicas) acknowledges everything.
                break;
            }
            if !acks.ack(check.offset, check.frames).await {
                return Err(DataPathError::Gone("client"));
            }
            frame = frames.next(idle).await?;
        }

        // Durability: the local fsync+rename and the replicas' answers, in parallel.
        let checksum = check.crc;
        let wait = stall * 3;
        let (local_result, _) = tokio::join!(
            local.finish(session.size, Some(checksum)),
            futures::future::join_all(forwards.iter_mut().map(|f| f.finish(&node, wait)))
        );
        let outcomes = forwards
            .iter_mut()
            .map(|f| {
                let outcome = match f.failure.clone() {
                    Some(reason) => Err(reason),
                    None => Ok(f.answer.take().unwrap_or_default()),
                };
                (f.target.clone(), outcome)
            })
            .collect();
        conclude(&node, &chunk_id, local_result, outcomes, session.quorum).await
    }
    .instrument(span)
    .await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    node.metrics
        .upload_seconds
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        tracing::warn!(chunk_id = %chunk_id, session_id = %session_id, "upload failed: {e}");
    }
    result
}

/// One replica target's outcome: its answer, or why it failed.
type Outcome = (Target, Result<ChunkReplicas, String>);

/// Ends an upload once the local copy and every replica answered: the
/// replicas that stored the chunk with their receipts, or (below the write
/// quorum, or when the local copy failed) an error after deleting the
/// copies this upload made. A replica whose receipt names other bytes than
/// the primary's counts as failed (its copy is not this upload's).
async fn conclude(
    node: &Arc<Node>,
    chunk_id: &ChunkId,
    local: Result<Stored, DataPathError>,
    outcomes: Vec<Outcome>,
    quorum: usize,
) -> Result<ChunkReplicas, DataPathError> {
    // What a rollback may delete: copies this upload created, never a copy
    // that was already there (it may be a confirmed chunk's).
    let stored_on: Vec<Target> = outcomes
        .iter()
        .filter(|(t, r)| {
            r.as_ref().is_ok_and(|answer| {
                answered_receipt(answer, &t.node_id).is_none_or(|rc| rc.created)
            })
        })
        .map(|(t, _)| t.clone())
        .collect();
    let local = match local {
        Ok(s) => s,
        Err(e) => {
            rollback(node, chunk_id, &stored_on, false).await;
            return Err(e);
        }
    };
    let stored = local.chunk;
    let mut replicas = vec![node.node_id.clone()];
    let mut receipts = vec![receipt(node, local)];
    let mut failed = Vec::new();
    for (target, outcome) in &outcomes {
        let outcome = outcome.as_ref().map_err(Clone::clone).and_then(|answer| {
            match answered_receipt(answer, &target.node_id) {
                Some(r) if r.checksum != stored.checksum || r.size != stored.size => Err(format!(
                    "replica stored {} bytes with crc32c {:08x}, not this chunk's {} bytes with {:08x}",
                    r.size, r.checksum, stored.size, stored.checksum
                )),
                r => Ok(r),
            }
        });
        match outcome {
            Ok(r) => {
                replicas.push(target.node_id.clone());
                receipts.extend(r);
            }
            Err(reason) => failed.push(ReplicaFailure {
                node_id: target.node_id.clone(),
                reason,
            }),
        }
    }
    if replicas.len() < quorum {
        // Only what this upload wrote is rolled back: a copy that was
        // already stored (an idempotent retry) may be a confirmed chunk's.
        rollback(node, chunk_id, &stored_on, local.created).await;
        let reasons: Vec<String> = failed
            .iter()
            .map(|f| format!("{}: {}", f.node_id, f.reason))
            .collect();
        return Err(DataPathError::Quorum(format!(
            "write quorum not reached for chunk {chunk_id}: {} of {} replicas stored it, {} needed ({}); nothing was kept",
            replicas.len(),
            1 + outcomes.len(),
            quorum,
            reasons.join("; ")
        )));
    }
    tracing::debug!(replicas = ?replicas, "chunk stored");
    Ok(ChunkReplicas {
        replicas,
        chunk: Some(chunk_meta(chunk_id, stored)),
        failed,
        receipts,
    })
}

/// A chunk whose first frame is its last (every small file): verified
/// whole, then stored locally and sent to every replica at the same time.
/// Chunks that fit a volume travel on the peer's small-chunk link.
async fn upload_whole(
    node: &Arc<Node>,
    session: &UploadSession,
    session_id: &str,
    frame: Frame,
) -> Result<ChunkReplicas, DataPathError> {
    let chunk_id = &session.chunk_id;
    let mut check = FrameCheck::new(session.size, session.checksum, node.max_frame_bytes());
    receive_frame(node, &mut check, &frame, stream::UPLOAD)?;
    let header = ReplicaHeader {
        session_id: session_id.to_string(),
        chunk_id: chunk_id.clone(),
        size: session.size,
        checksum: Some(check.crc),
        source_node_id: node.node_id.clone(),
    };
    let wait = node.config.replica_stall_timeout * 3;
    let local = async {
        let mut local = LocalWrite::start(node.store.clone(), chunk_id.clone(), session.size);
        local.write(frame.data.clone()).await?;
        local.finish(session.size, Some(check.crc)).await
    };
    let remotes = futures::future::join_all(session.targets.iter().map(|target| {
        let (header, frame) = (&header, frame.clone());
        async move {
            let outcome = match tokio::time::timeout(wait, send_whole(node, target, header, frame)).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(st)) => Err((st.message().to_string(), "error")),
                Err(_) => Err((format!("no durable answer within {wait:?}"), "stall")),
            };
            let outcome = outcome.map_err(|(reason, kind)| {
                tracing::warn!(target_node = %target.node_id, "dropping replica from upload: {reason}");
                node.metrics
                    .replicas_dropped
                    .with_label_values(&[kind])
                    .inc();
                reason
            });
            (target.clone(), outcome)
        }
    }));
    let (local_result, outcomes) = tokio::join!(local, remotes);
    conclude(node, chunk_id, local_result, outcomes, session.quorum).await
}

/// One whole chunk to one replica: over the small-chunk link when it fits a
/// volume and the peer serves it, else a `ReplicateChunk` call. The peer's
/// own status on failure.
async fn send_whole(
    node: &Arc<Node>,
    target: &Target,
    header: &ReplicaHeader,
    frame: Frame,
) -> Result<ChunkReplicas, Status> {
    if node.store.is_small(frame.data.len() as u64) && node.small_links.supported(&target.address) {
        match node
            .small_links
            .replicate(&node.peers, &node.metrics, target, header, &frame)
            .await
        {
            Err(st) if st.code() == tonic::Code::Unimplemented => {}
            answer => return answer,
        }
    }
    let stall = node.config.replica_stall_timeout;
    let mut forward = Forward::start(node, target.clone(), header);
    if forward.send(node, frame, stall).await && forward.finish(node, stall * 3).await {
        return Ok(forward.answer.take().unwrap_or_default());
    }
    Err(Status::unavailable(
        forward.failure.take().unwrap_or_default(),
    ))
}

/// Removes the copies of a chunk whose upload did not reach its quorum: the
/// local one and every replica in `stored_on`.
async fn rollback(node: &Arc<Node>, chunk_id: &ChunkId, stored_on: &[Target], local: bool) {
    let store = node.store.clone();
    let id = chunk_id.clone();
    if local && let Err(e) = crate::node::blocking(move || store.delete(&id)).await {
        tracing::error!(chunk_id = %chunk_id, "failed to roll back local copy: {e:#}");
    }
    let deletes = stored_on.iter().map(|target| {
        let node = node.clone();
        let target = target.clone();
        let chunk_id = chunk_id.to_string();
        async move {
            let result = async {
                let mut client = node.peers.client(&target.address)?;
                client
                    .delete_chunk(DeleteChunkRequest {
                        chunk_id: chunk_id.clone(),
                    })
                    .await
            };
            match tokio::time::timeout(node.config.replica_stall_timeout, result).await {
                Ok(Ok(_)) => {}
                Ok(Err(st)) => tracing::error!(target_node = %target.node_id, "failed to roll back replica: {}", st.message()),
                Err(_) => tracing::error!(target_node = %target.node_id, "failed to roll back replica: timed out"),
            }
        }
    });
    futures::future::join_all(deletes).await;
}

/// ReplicateChunk on a replica: the receiving side of the fan-out (and of
/// repairs). `header` was the stream's first message
/// ([`crate::wire::open_replica`]); each frame is verified before it is
/// acked.
pub async fn replicate(
    node: Arc<Node>,
    header: &ReplicaHeader,
    mut frames: impl FrameSource,
    acks: &Acks,
) -> Result<ChunkReplicas, DataPathError> {
    let idle = node.sessions.timeout();
    let ReplicaHeader {
        chunk_id,
        size,
        checksum,
        ..
    } = header;
    let (size, checksum) = (*size, *checksum);
    // Immutability, before a byte is received.
    node.store.check_writable(chunk_id, size, checksum)?;
    let _gauge = GaugeGuard::new(
        node.metrics
            .active_sessions
            .with_label_values(&["replicate"]),
    );
    let started = Instant::now();
    let reservation = node.store.reserve(size)?;
    let result = async {
        let mut check = FrameCheck::new(size, checksum, node.max_frame_bytes());
        let mut local = LocalWrite::start(node.store.clone(), chunk_id.clone(), size);
        loop {
            let frame = frames.next(idle).await?;
            receive_frame(&node, &mut check, &frame, stream::REPLICATE)?;
            local.write(frame.data).await?;
            if frame.is_final {
                break;
            }
            if !acks.ack(check.offset, check.frames).await {
                return Err(DataPathError::Gone("sender"));
            }
        }
        let stored = local.finish(size, Some(check.crc)).await?;
        Ok(stored_answer(&node, chunk_id, stored))
    }
    .await;
    drop(reservation);
    replica_received(&node, started, &result, header);
    result
}

/// Records how receiving one replica went (ReplicateChunk or the small-chunk
/// stream): its latency by outcome, and a warning on failure.
pub(crate) fn replica_received(
    node: &Node,
    started: Instant,
    result: &Result<ChunkReplicas, DataPathError>,
    header: &ReplicaHeader,
) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    node.metrics
        .replication_seconds
        .with_label_values(&["receive", outcome])
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = result {
        tracing::warn!(chunk_id = %header.chunk_id, session_id = %header.session_id, source = %header.source_node_id, "replica write failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &'static [u8], offset: u64, is_final: bool) -> Frame {
        dfs_proto::ChunkData::frame(Bytes::from_static(data), offset, is_final).into()
    }

    fn code(r: Result<(), DataPathError>) -> tonic::Code {
        Status::from(r.unwrap_err()).code()
    }

    #[test]
    fn frame_check_rejects_bad_frames() {
        let mut c = FrameCheck::new(10, Some(dfs_proto::frame::checksum(b"0123456789")), 8);
        assert!(c.accept(&frame(b"01234", 0, false)).is_ok());
        // Gap and overlap.
        assert_eq!(
            code(c.accept(&frame(b"56789", 6, true))),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(c.accept(&frame(b"456789", 4, true))),
            tonic::Code::InvalidArgument
        );
        // Corrupted frame.
        let mut bad = frame(b"56789", 5, true);
        bad.frame_checksum ^= 1;
        assert_eq!(code(c.accept(&bad)), tonic::Code::DataLoss);
        // Too large.
        assert_eq!(
            code(c.accept(&frame(b"567890123", 5, true))),
            tonic::Code::InvalidArgument
        );
        assert!(c.accept(&frame(b"56789", 5, true)).is_ok());
    }

    #[test]
    fn frame_check_verifies_size_and_checksum_at_the_end() {
        let mut c = FrameCheck::new(4, None, 8);
        assert_eq!(
            code(c.accept(&frame(b"abc", 0, true))),
            tonic::Code::InvalidArgument
        );
        let mut c = FrameCheck::new(3, Some(1), 8);
        assert_eq!(
            code(c.accept(&frame(b"abc", 0, true))),
            tonic::Code::DataLoss
        );
    }
}
