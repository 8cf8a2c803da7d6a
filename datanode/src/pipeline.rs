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
use crate::store::{ChunkId, Reservation, Store, StoreError, Stored};
use crate::table::StoredChunk;
use crate::wire::{
    Acks, DataPathError, Frame, FrameSource, Opening, ReplicaHeader, UploadStart, chunk_meta,
    replicate_messages,
};

/// Frames queued towards a primary's local writer thread: how far a slow
/// local disk may lag behind the client's stream before the client waits.
const WRITER_QUEUE_FRAMES: usize = 16;
/// Frames queued towards a replica's writer thread (the rest wait in the
/// sender's HTTP/2 window, then in the sender).
const REPLICA_WRITER_QUEUE_FRAMES: usize = 4;
/// How long a primary waits for its own disk to take a frame, once its
/// queue is full, before it gives up its copy (only while the replicas
/// keeping up make the write quorum).
const LOCAL_LAG_GRACE: Duration = Duration::from_millis(100);
/// Frames queued towards each replica: how far one may fall behind the
/// stream. A replica with a full queue is dropped from the upload when the
/// write quorum keeps up without it, and waited for (up to the stall
/// timeout) when the quorum needs it.
const FORWARD_QUEUE_FRAMES: usize = 16;

/// A replica's own answer: it stored `s` under `id`, with its receipt.
pub fn stored_answer(node: &Node, id: &ChunkId, s: Stored) -> ChunkReplicas {
    ChunkReplicas {
        replicas: vec![node.node_id.clone()],
        chunk: Some(chunk_meta(id, s.chunk)),
        failed: vec![],
        receipts: vec![receipt(node, id, s)],
        pending: vec![],
    }
}

/// This node's receipt for what it stored, signed with its receipt key
/// when it holds token keys (a cluster with mutual TLS).
fn receipt(node: &Node, id: &ChunkId, s: Stored) -> ReplicaReceipt {
    let r = ReplicaReceipt {
        node_id: node.node_id.clone(),
        checksum: s.chunk.checksum,
        size: s.chunk.size,
        created: s.created,
        ..Default::default()
    };
    match node.token_keys() {
        Some(keys) => keys.sign_receipt(id.as_str(), r),
        None => r,
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
        ..Default::default()
    })
}

/// An upload's write token covers this chunk on this node for the caller,
/// and the primary's fan-out goes only to nodes the token names: a plan's
/// targets are the coordinator's, never a caller's choice.
pub(crate) fn authorize_upload(
    node: &Node,
    start: &UploadStart,
    caller: Option<&dfs_common::tls::Principal>,
) -> Result<(), tonic::Status> {
    node.check_token(
        start.token.as_ref(),
        start.chunk_id.as_str(),
        dfs_common::token::ops::WRITE,
        caller,
    )?;
    if let Some(t) = start.token.as_ref().filter(|_| node.security.is_tls())
        && let Some(stray) = start.targets.iter().find(|x| !t.nodes.contains(&x.node_id))
    {
        node.metrics
            .token_refusals
            .with_label_values(&["other_node"])
            .inc();
        return Err(tonic::Status::permission_denied(format!(
            "target {} is not among the nodes the upload's token names",
            stray.node_id
        )));
    }
    Ok(())
}

/// A replica stream's token: the upload's write token (forwarded by a
/// primary it names) or a repair's replicate token.
pub(crate) fn authorize_replica(
    node: &Node,
    header: &ReplicaHeader,
    caller: Option<&dfs_common::tls::Principal>,
) -> Result<(), tonic::Status> {
    let op = match &header.token {
        Some(t) if t.ops & dfs_common::token::ops::REPLICATE != 0 => {
            dfs_common::token::ops::REPLICATE
        }
        _ => dfs_common::token::ops::WRITE,
    };
    node.check_token(header.token.as_ref(), header.chunk_id.as_str(), op, caller)
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
        token,
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
        .new_upload(id, size, checksum, targets, quorum, token, reservation);
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
    /// Bytes to write, with their room in the store's write buffer.
    Data(Bytes, tokio::sync::OwnedSemaphorePermit),
    Finish(u64, Option<u32>, Option<Reservation>),
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
    /// A replica's copy (fan-out, repair).
    pub(crate) fn start(store: Arc<Store>, id: ChunkId, size: u64) -> Self {
        Self::with_queue(store, id, size, REPLICA_WRITER_QUEUE_FRAMES, false)
    }

    /// The primary's own copy of a client's upload.
    fn start_primary(store: Arc<Store>, id: ChunkId, size: u64) -> Self {
        Self::with_queue(store, id, size, WRITER_QUEUE_FRAMES, true)
    }

    fn with_queue(store: Arc<Store>, id: ChunkId, size: u64, queue: usize, primary: bool) -> Self {
        if store.is_small(size) {
            LocalWrite::Small {
                store,
                id,
                parts: Vec::new(),
            }
        } else {
            LocalWrite::File(FileWrite::start(store, id, queue, primary))
        }
    }

    /// Waits for this write's turn among the node's chunk-file writers
    /// ([`crate::store::CONCURRENT_FILE_WRITES`]) before any of its bytes
    /// are read off the network, so streams beyond them stay in their
    /// senders. (Small chunks need no turn.)
    pub(crate) async fn ready(&mut self) {
        if let LocalWrite::File(f) = self {
            f.take_slot().await;
        }
    }

    /// Queues `data` if that needs no wait (a writer slot, write-buffer
    /// room and queue room are all free); false when it would wait (or
    /// the writer is gone: [`LocalWrite::write`] then says why).
    pub(crate) fn try_write(&mut self, data: &Bytes) -> bool {
        match self {
            LocalWrite::File(f) => f.try_write(data),
            LocalWrite::Small { parts, .. } => {
                parts.push(data.clone());
                true
            }
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

    /// Stores the copy; `reservation` (the space promised to this write)
    /// becomes used space as the chunk is recorded, never both at once.
    pub(crate) async fn finish(
        self,
        size: u64,
        checksum: Option<u32>,
        reservation: Option<Reservation>,
    ) -> Result<Stored, DataPathError> {
        match self {
            LocalWrite::File(f) => f.finish(size, checksum, reservation).await,
            LocalWrite::Small { store, id, parts } => Ok(store
                .put_small_reserved(&id, parts, size, checksum, reservation)?
                .wait_stored()
                .await?),
        }
    }
}

/// A chunk file: a blocking writer thread fed through a bounded channel, so
/// disk writes never block the async threads and never queue unboundedly.
/// The thread (with its temp file and staging buffer) starts only once the
/// write has its turn among the node's chunk-file writers, and holds that
/// turn until it ends. Dropping it before `finish` removes the temp file.
pub(crate) struct FileWrite {
    tx: Option<mpsc::Sender<WriterMsg>>,
    /// The receiving end, until the writer thread starts with it.
    rx: Option<mpsc::Receiver<WriterMsg>>,
    join: Option<JoinHandle<Result<Stored, StoreError>>>,
    store: Arc<Store>,
    id: ChunkId,
    primary: bool,
}

impl FileWrite {
    /// `primary`: the primary's own copy of a client's upload (its own pool
    /// of writer slots).
    fn start(store: Arc<Store>, id: ChunkId, queue: usize, primary: bool) -> Self {
        let (tx, rx) = mpsc::channel(queue);
        FileWrite {
            tx: Some(tx),
            rx: Some(rx),
            join: None,
            store,
            id,
            primary,
        }
    }

    /// Starts the writer thread, which keeps `slot` until it ends.
    fn spawn(&mut self, slot: tokio::sync::OwnedSemaphorePermit) {
        let Some(mut rx) = self.rx.take() else { return };
        let (store, id) = (self.store.clone(), self.id.clone());
        self.join = Some(tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut w = store.create_writer(&id)?;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    WriterMsg::Data(b, _room) => w.write(&b)?,
                    WriterMsg::Finish(size, checksum, reservation) => {
                        return w.finish_reserved(size, checksum, reservation);
                    }
                }
            }
            Err(StoreError::Cancelled)
        }));
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

    fn try_write(&mut self, data: &Bytes) -> bool {
        if self.rx.is_some() {
            match self.store.try_writer_slot(self.primary) {
                Some(slot) => self.spawn(slot),
                None => return false,
            }
        }
        let Some(room) = self.store.try_buffer_permit(data.len()) else {
            return false;
        };
        let tx = self.tx.as_ref().expect("writer open");
        tx.try_send(WriterMsg::Data(data.clone(), room)).is_ok()
    }

    async fn take_slot(&mut self) {
        if self.rx.is_some() {
            let slot = self.store.writer_slot(self.primary).await;
            self.spawn(slot);
        }
    }

    async fn write(&mut self, data: Bytes) -> Result<(), DataPathError> {
        self.take_slot().await;
        let room = self.store.buffer_permit(data.len()).await;
        let tx = self.tx.as_ref().expect("writer open");
        if tx.send(WriterMsg::Data(data, room)).await.is_err() {
            return Err(self.result().await);
        }
        Ok(())
    }

    async fn finish(
        mut self,
        size: u64,
        checksum: Option<u32>,
        reservation: Option<Reservation>,
    ) -> Result<Stored, DataPathError> {
        self.take_slot().await;
        let tx = self.tx.take().expect("writer open");
        let finish = WriterMsg::Finish(size, checksum, reservation);
        if tx.send(finish).await.is_err() {
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
        let channel = node.peers.channel(&target.node_id, &target.address);
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

    /// Queues one frame if the replica's queue has room; gives it back when
    /// the queue is full or the replica is gone.
    fn offer(&mut self, node: &Node, frame: Frame) -> Offer {
        let Some(tx) = &self.tx else {
            return Offer::Sent;
        };
        let len = frame.data.len() as u64;
        match tx.try_send(frame) {
            Ok(()) => {
                node.metrics.frame_out(stream::FORWARD, len);
                Offer::Sent
            }
            Err(mpsc::error::TrySendError::Full(frame)) => Offer::Full(frame),
            Err(mpsc::error::TrySendError::Closed(frame)) => Offer::Closed(frame),
        }
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

/// What [`Forward::offer`] did with a frame.
enum Offer {
    Sent,
    Full(Frame),
    Closed(Frame),
}

/// Hands one frame to every live replica. A replica whose queue is full
/// has fallen [`FORWARD_QUEUE_FRAMES`] behind: when the copies keeping up
/// (the local one counting) still make the write quorum it is dropped, so
/// one slow disk or link does not set the upload's pace; otherwise the
/// primary waits for it (and drops it after the stall timeout).
/// `local` is 1 while the primary keeps its own copy (0 once dropped), or
/// None when every replica is to be waited for (no pending budget).
async fn forward_frame(
    node: &Node,
    forwards: &mut [Forward],
    frame: &Frame,
    quorum: usize,
    stall: Duration,
    local: Option<usize>,
) {
    let mut full = Vec::new();
    for (i, f) in forwards.iter_mut().enumerate().filter(|(_, f)| f.live()) {
        match f.offer(node, frame.clone()) {
            Offer::Sent => {}
            Offer::Full(frame) => full.push((i, frame)),
            // `send` fails at once and drops it with the reason.
            Offer::Closed(frame) => {
                f.send(node, frame, stall).await;
            }
        }
    }
    if full.is_empty() {
        return;
    }
    let keeping_up = local.map(|l| l + forwards.iter().filter(|f| f.live()).count() - full.len());
    for (i, frame) in full {
        let f = &mut forwards[i];
        if keeping_up.is_some_and(|k| k >= quorum) {
            f.fail(
                node,
                format!(
                    "fell {FORWARD_QUEUE_FRAMES} frames behind while the write quorum kept up without it"
                ),
                "behind",
            );
        } else {
            f.send(node, frame, stall).await;
        }
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
    let (mut session, session_id) = match opening {
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
            return upload_whole(&node, &mut session, &session_id, first).await;
        }
        let mut check = FrameCheck::new(session.size, session.checksum, node.max_frame_bytes());
        let mut local = Some(LocalWrite::start_primary(
            node.store.clone(),
            chunk_id.clone(),
            session.size,
        ));
        // Why the primary's own copy was given up, if it was.
        let mut local_dropped = None;
        // Without a pending budget every copy is waited for (never dropped
        // for falling behind).
        let quorum_pace = node.config.pending_replica_budget.0 > 0;
        let header = ReplicaHeader {
            session_id: session_id.clone(),
            chunk_id: chunk_id.clone(),
            size: session.size,
            checksum: session.checksum,
            source_node_id: node.node_id.clone(),
            token: session.token.clone(),
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
            if let Some(l) = local.as_mut()
                && !l.try_write(&frame.data)
            {
                // The own disk is a whole queue behind, or every writer
                // slot is taken. When the replicas keeping up make the
                // write quorum and it stays so for a moment, the primary
                // only relays.
                let keeping_up = forwards.iter().filter(|f| f.live()).count();
                let give_up = quorum_pace && keeping_up >= session.quorum;
                let waited = if give_up {
                    tokio::time::timeout(LOCAL_LAG_GRACE, l.write(frame.data.clone())).await
                } else {
                    Ok(l.write(frame.data.clone()).await)
                };
                if let Ok(written) = waited {
                    written?;
                } else {
                    let reason = format!(
                        "the primary's own copy waited {LOCAL_LAG_GRACE:?} for its disk (a full queue of {WRITER_QUEUE_FRAMES} frames, or every writer slot taken) while the write quorum kept up without it"
                    );
                    tracing::warn!("dropping the local copy from the upload: {reason}");
                    node.metrics
                        .replicas_dropped
                        .with_label_values(&["behind"])
                        .inc();
                    local = None;
                    local_dropped = Some(reason);
                }
            }
            let local_live = usize::from(local.is_some());
            forward_frame(
                &node,
                &mut forwards,
                &frame,
                session.quorum,
                stall,
                quorum_pace.then_some(local_live),
            )
            .await;
            if is_final {
                // The final answer (ChunkReplicas) acknowledges everything.
                break;
            }
            if !acks.ack(check.offset, check.frames).await {
                return Err(DataPathError::Gone("client"));
            }
            frame = frames.next(idle).await?;
        }

        // Durability: the local fsync+rename and the replicas' answers, in
        // parallel; the answer comes at the write quorum's pace.
        let checksum = check.crc;
        let wait = stall * 3;
        let size = session.size;
        let reservation = session.reservation.take();
        let mut ends = Ends::new(&node, size, checksum);
        ends.local(async move {
            match local {
                Some(local) => local.finish(size, Some(checksum), reservation).await,
                // Not the primary's fault towards the client: the quorum
                // holds the chunk, or says why it does not.
                None => Err(DataPathError::Quorum(local_dropped.unwrap_or_default())),
            }
        });
        for mut f in forwards.drain(..) {
            let node = node.clone();
            ends.remote(f.target.clone(), async move {
                f.finish(&node, wait).await;
                match f.failure.take() {
                    Some(reason) => Err(reason),
                    None => Ok(f.answer.take().unwrap_or_default()),
                }
            });
        }
        settle(&node, &chunk_id, ends, session.quorum, session.token.as_ref()).await
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

/// How one copy of an upload ended: the local one, or a replica's (its
/// answer, or why it failed).
enum Ended {
    Local(Result<Stored, DataPathError>),
    Remote(Target, Result<ChunkReplicas, String>),
}

/// The copies of one upload being made durable, each its own task so that
/// the ones still writing when the write quorum is durable can go on after
/// the answer (or, a replica's, be dropped).
struct Ends {
    node: Arc<Node>,
    size: u64,
    crc: u32,
    running: futures::stream::FuturesUnordered<JoinHandle<Ended>>,
    /// Node id of each copy not ended yet, with its task.
    names: Vec<(String, tokio::task::AbortHandle)>,
}

impl Ends {
    fn new(node: &Arc<Node>, size: u64, crc: u32) -> Self {
        Ends {
            node: node.clone(),
            size,
            crc,
            running: Default::default(),
            names: Vec::new(),
        }
    }

    fn local(&mut self, f: impl Future<Output = Result<Stored, DataPathError>> + Send + 'static) {
        let task =
            tokio::spawn(async move { Ended::Local(f.await) }.instrument(tracing::Span::current()));
        self.names
            .push((self.node.node_id.clone(), task.abort_handle()));
        self.running.push(task);
    }

    fn remote(
        &mut self,
        target: Target,
        f: impl Future<Output = Result<ChunkReplicas, String>> + Send + 'static,
    ) {
        let name = target.node_id.clone();
        let task = tokio::spawn(
            async move { Ended::Remote(target, f.await) }.instrument(tracing::Span::current()),
        );
        self.names.push((name, task.abort_handle()));
        self.running.push(task);
    }

    /// The next copy to end (None when all have). A copy whose task
    /// panicked failed; one dropped on purpose (aborted) is skipped.
    async fn next(&mut self) -> Option<Ended> {
        use futures::StreamExt;
        loop {
            let ended = match self.running.next().await? {
                Ok(e) => e,
                Err(e) => {
                    let Some(i) = self.names.iter().position(|(_, t)| t.id() == e.id()) else {
                        continue;
                    };
                    let (name, _) = self.names.remove(i);
                    let failure = format!("writer task failed: {e}");
                    return Some(if name == self.node.node_id {
                        Ended::Local(Err(DataPathError::Internal(failure)))
                    } else {
                        Ended::Remote(
                            Target {
                                node_id: name,
                                address: String::new(),
                            },
                            Err(failure),
                        )
                    });
                }
            };
            let name = match &ended {
                Ended::Local(_) => &self.node.node_id,
                Ended::Remote(t, _) => &t.node_id,
            };
            self.names.retain(|(n, _)| n != name);
            return Some(ended);
        }
    }
}

impl Drop for Ends {
    /// An upload given up (its client went away) takes its copies still
    /// writing with it, as before they were tasks: a replica's stream is
    /// reset (it removes its partial data). Copies handed to the
    /// background (`detach`) are not affected: their `Ends` lives there.
    fn drop(&mut self) {
        for (_, task) in &self.names {
            task.abort();
        }
    }
}

/// What the copies that ended said, as the primary judges them.
#[derive(Default)]
struct Tally {
    local: Option<Result<Stored, DataPathError>>,
    remotes: Vec<(Target, Result<ChunkReplicas, String>)>,
    /// Replicas whose answer says this upload created their copy.
    created_on: Vec<Target>,
    durable: usize,
    failed: usize,
}

impl Tally {
    /// Counts one ended copy. A replica whose receipt names other bytes
    /// than the ones this primary received counts as failed (its copy is
    /// not this upload's).
    fn add(&mut self, ended: Ended, size: u64, crc: u32) {
        let ok = match ended {
            Ended::Local(r) => {
                let ok = r.is_ok();
                self.local = Some(r);
                ok
            }
            Ended::Remote(target, outcome) => {
                // A copy this upload created is rolled back below the
                // quorum even when its receipt names other bytes.
                if let Ok(answer) = &outcome
                    && answered_receipt(answer, &target.node_id).is_none_or(|rc| rc.created)
                {
                    self.created_on.push(target.clone());
                }
                let outcome = outcome.and_then(|answer| {
                    match answered_receipt(&answer, &target.node_id) {
                        Some(r) if r.checksum != crc || r.size != size => Err(format!(
                            "replica stored {} bytes with crc32c {:08x}, not this chunk's {size} bytes with {crc:08x}",
                            r.size, r.checksum
                        )),
                        _ => Ok(answer),
                    }
                });
                let ok = outcome.is_ok();
                self.remotes.push((target, outcome));
                ok
            }
        };
        if ok {
            self.durable += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// The longest an upload whose write quorum is durable waits for the copies
/// still writing before it answers without them.
const PENDING_GRACE_MAX: Duration = Duration::from_millis(50);
/// Budget one pending copy takes: what it may still hold in memory (its
/// queued frames), at most.
const PENDING_BYTES_MAX: u64 = (FORWARD_QUEUE_FRAMES as u64) << 20;

/// Ends an upload: waits until its write quorum (the local copy counting as
/// one) is durable, then a moment longer (as long again as the quorum took,
/// at most [`PENDING_GRACE_MAX`]) for the other copies, and answers. Copies
/// still writing then go on in the background within the node's
/// `--pending-replica-budget` and are listed as `pending` (the coordinator
/// waits for their own reports before repairing); past the budget a
/// replica is dropped and the local copy waited for. Below the quorum it
/// waits for every copy, deletes the ones this upload made, and fails.
async fn settle(
    node: &Arc<Node>,
    chunk_id: &ChunkId,
    mut ends: Ends,
    quorum: usize,
    token: Option<&dfs_proto::ChunkToken>,
) -> Result<ChunkReplicas, DataPathError> {
    let (size, crc) = (ends.size, ends.crc);
    let total = ends.names.len();
    // Answers list replicas in placement order, whatever order they ended in.
    let order: Vec<String> = ends.names.iter().map(|(n, _)| n.clone()).collect();
    let started = Instant::now();
    let mut tally = Tally::default();
    while tally.durable < quorum && total - tally.failed >= quorum {
        let Some(e) = ends.next().await else { break };
        tally.add(e, size, crc);
    }
    let budget = node.config.pending_replica_budget.0;
    if tally.durable >= quorum && budget > 0 {
        let deadline = tokio::time::Instant::now() + started.elapsed().min(PENDING_GRACE_MAX);
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, ends.next()).await {
            tally.add(e, size, crc);
        }
    } else {
        // Below the quorum every copy ends (each bounded by its own wait)
        // before the rollback, so none lands after it; without a pending
        // budget every copy is waited for anyway.
        while let Some(e) = ends.next().await {
            tally.add(e, size, crc);
        }
    }
    // Copies that ended meanwhile are counted, not left pending or dropped.
    while !ends.names.is_empty() {
        match futures::FutureExt::now_or_never(ends.next()) {
            Some(Some(e)) => tally.add(e, size, crc),
            _ => break,
        }
    }
    let mut pending = Vec::new();
    if !ends.names.is_empty() {
        let each = size.min(PENDING_BYTES_MAX);
        let units = (each * ends.names.len() as u64).min(u32::MAX as u64) as u32;
        match node.pending_budget.clone().try_acquire_many_owned(units) {
            Ok(permit) => {
                pending = ends.names.iter().map(|(n, _)| n.clone()).collect();
                detach(node, chunk_id, ends, permit);
            }
            Err(_) => {
                // Over budget: a replica still writing is dropped (the
                // coordinator repairs the chunk), the local copy waited for.
                let local = node.node_id.clone();
                for (name, task) in ends.names.iter().filter(|(n, _)| *n != local) {
                    task.abort();
                    node.metrics
                        .replicas_dropped
                        .with_label_values(&["over_budget"])
                        .inc();
                    tracing::warn!(target_node = %name, "dropping replica from upload: still writing when the write quorum was durable, and the pending budget ({budget} bytes) is spent");
                    tally.failed += 1;
                    let reason = format!(
                        "still writing when the write quorum was durable; dropped (pending budget of {budget} bytes spent)"
                    );
                    tally.remotes.push((
                        Target {
                            node_id: name.clone(),
                            address: String::new(),
                        },
                        Err(reason),
                    ));
                }
                ends.names.retain(|(n, _)| *n == local);
                while !ends.names.is_empty() {
                    let Some(e) = ends.next().await else { break };
                    if matches!(e, Ended::Local(_)) {
                        tally.add(e, size, crc);
                    }
                }
            }
        }
    }
    tally
        .remotes
        .sort_by_key(|(t, _)| order.iter().position(|n| *n == t.node_id));
    conclude(node, chunk_id, tally, pending, quorum, size, crc, token).await
}

/// Lets the copies still writing after an upload answered finish in the
/// background, holding their share of the pending budget until they end.
fn detach(
    node: &Arc<Node>,
    chunk_id: &ChunkId,
    mut ends: Ends,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let n = ends.names.len() as i64;
    node.metrics.pending_replicas.add(n);
    let (node, chunk_id) = (node.clone(), chunk_id.clone());
    tokio::spawn(
        async move {
            let _permit = permit;
            while let Some(e) = ends.next().await {
                let (name, failure) = match e {
                    Ended::Local(Ok(_)) => (node.node_id.clone(), None),
                    Ended::Local(Err(e)) => (node.node_id.clone(), Some(e.to_string())),
                    Ended::Remote(t, Ok(_)) => (t.node_id, None),
                    Ended::Remote(t, Err(reason)) => (t.node_id, Some(reason)),
                };
                node.metrics.pending_replicas.dec();
                let outcome = if failure.is_some() { "failed" } else { "stored" };
                node.metrics
                    .pending_replicas_finished
                    .with_label_values(&[outcome])
                    .inc();
                match failure {
                    None => tracing::debug!(chunk_id = %chunk_id, node = %name, "pending copy stored"),
                    // The chunk is committed on its quorum: the coordinator
                    // repairs it once this copy's grace is over.
                    Some(reason) => {
                        tracing::warn!(chunk_id = %chunk_id, node = %name, "pending copy failed after the upload answered: {reason}");
                        node.abandon(chunk_id.as_ref(), &name);
                    }
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
}

/// Ends an upload once its copies were judged: the replicas that stored the
/// chunk with their receipts (and those still writing, `pending`), or
/// (below the write quorum) an error after deleting the copies this upload
/// made — the local copy's own error when it failed, so the client avoids
/// this primary.
#[allow(clippy::too_many_arguments)] // the settled upload, taken apart
async fn conclude(
    node: &Arc<Node>,
    chunk_id: &ChunkId,
    tally: Tally,
    pending: Vec<String>,
    quorum: usize,
    size: u64,
    crc: u32,
    token: Option<&dfs_proto::ChunkToken>,
) -> Result<ChunkReplicas, DataPathError> {
    let Tally {
        local,
        remotes,
        created_on: stored_on,
        ..
    } = tally;
    let mut replicas = Vec::new();
    let mut receipts = Vec::new();
    let mut failed = Vec::new();
    let mut local_error = None;
    let mut local_created = false;
    match local {
        Some(Ok(s)) => {
            local_created = s.created;
            replicas.push(node.node_id.clone());
            receipts.push(receipt(node, chunk_id, s));
        }
        Some(Err(e)) => {
            failed.push(ReplicaFailure {
                node_id: node.node_id.clone(),
                reason: format!("primary's own copy: {e}"),
            });
            // A copy given up for falling behind is no failure of this
            // node towards the client; a disk error is.
            if !matches!(e, DataPathError::Quorum(_)) {
                local_error = Some(e);
            }
        }
        None => {}
    }
    for (target, outcome) in remotes {
        match outcome {
            Ok(answer) => {
                receipts.extend(answered_receipt(&answer, &target.node_id));
                replicas.push(target.node_id);
            }
            Err(reason) => failed.push(ReplicaFailure {
                node_id: target.node_id,
                reason,
            }),
        }
    }
    if replicas.len() < quorum {
        // Only what this upload wrote is rolled back: a copy that was
        // already stored (an idempotent retry) may be a confirmed chunk's.
        rollback(node, chunk_id, &stored_on, local_created, token).await;
        if let Some(e) = local_error {
            return Err(e);
        }
        let reasons: Vec<String> = failed
            .iter()
            .map(|f| format!("{}: {}", f.node_id, f.reason))
            .collect();
        return Err(DataPathError::QuorumNotReached {
            message: format!(
                "write quorum not reached for chunk {chunk_id}: {} of {} replicas stored it, {} needed ({}); nothing was kept",
                replicas.len(),
                replicas.len() + failed.len() + pending.len(),
                quorum,
                reasons.join("; ")
            ),
            failed: failed
                .iter()
                .map(|f| f.node_id.clone())
                .filter(|n| *n != node.node_id)
                .collect(),
        });
    }
    if let Some(e) = &local_error {
        tracing::warn!(chunk_id = %chunk_id, "the primary's own copy failed, the write quorum holds the chunk: {e}");
    }
    tracing::debug!(replicas = ?replicas, pending = ?pending, "chunk stored");
    Ok(ChunkReplicas {
        replicas,
        chunk: Some(chunk_meta(
            chunk_id,
            StoredChunk {
                size,
                checksum: crc,
            },
        )),
        failed,
        receipts,
        pending,
    })
}

/// A chunk whose first frame is its last (every small file): verified
/// whole, then stored locally and sent to every replica at the same time.
/// Chunks that fit a volume travel on the peer's small-chunk link.
async fn upload_whole(
    node: &Arc<Node>,
    session: &mut UploadSession,
    session_id: &str,
    frame: Frame,
) -> Result<ChunkReplicas, DataPathError> {
    let chunk_id = &session.chunk_id;
    let mut check = FrameCheck::new(session.size, session.checksum, node.max_frame_bytes());
    receive_frame(node, &mut check, &frame, stream::UPLOAD)?;
    let crc = check.crc;
    let header = ReplicaHeader {
        session_id: session_id.to_string(),
        chunk_id: chunk_id.clone(),
        size: session.size,
        checksum: Some(crc),
        source_node_id: node.node_id.clone(),
        token: session.token.clone(),
    };
    let wait = node.config.replica_stall_timeout * 3;
    let size = session.size;
    let mut ends = Ends::new(node, size, crc);
    let (store, id, data, reservation) = (
        node.store.clone(),
        chunk_id.clone(),
        frame.data.clone(),
        session.reservation.take(),
    );
    ends.local(async move {
        let mut local = LocalWrite::start_primary(store, id, size);
        local.write(data).await?;
        local.finish(size, Some(crc), reservation).await
    });
    for target in &session.targets {
        let (node, target, header, frame) =
            (node.clone(), target.clone(), header.clone(), frame.clone());
        ends.remote(target.clone(), async move {
            let outcome =
                match tokio::time::timeout(wait, send_whole(&node, &target, &header, frame)).await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(st)) => Err((st.message().to_string(), "error")),
                    Err(_) => Err((format!("no durable answer within {wait:?}"), "stall")),
                };
            outcome.map_err(|(reason, kind)| {
                tracing::warn!(target_node = %target.node_id, "dropping replica from upload: {reason}");
                node.metrics
                    .replicas_dropped
                    .with_label_values(&[kind])
                    .inc();
                reason
            })
        });
    }
    settle(node, chunk_id, ends, session.quorum, session.token.as_ref()).await
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
/// The upload's write token authorises the deletes on its replicas.
async fn rollback(
    node: &Arc<Node>,
    chunk_id: &ChunkId,
    stored_on: &[Target],
    local: bool,
    token: Option<&dfs_proto::ChunkToken>,
) {
    let store = node.store.clone();
    let id = chunk_id.clone();
    if local && let Err(e) = crate::node::blocking(move || store.delete(&id)).await {
        tracing::error!(chunk_id = %chunk_id, "failed to roll back local copy: {e:#}");
    }
    let deletes = stored_on.iter().map(|target| {
        let node = node.clone();
        let target = target.clone();
        let chunk_id = chunk_id.to_string();
        let token = token.cloned();
        async move {
            let result = async {
                let mut client = node.peers.client(&target.node_id, &target.address)?;
                client
                    .delete_chunk(DeleteChunkRequest {
                        chunk_id: chunk_id.clone(),
                        token,
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
    let result = async {
        let mut check = FrameCheck::new(size, checksum, node.max_frame_bytes());
        let mut local = LocalWrite::start(node.store.clone(), chunk_id.clone(), size);
        local.ready().await;
        // Space is promised once the write has its turn: a stream waiting
        // for one holds none.
        let reservation = node.store.reserve(size)?;
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
        let stored = local
            .finish(size, Some(check.crc), Some(reservation))
            .await?;
        Ok(stored_answer(&node, chunk_id, stored))
    }
    .await;
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
