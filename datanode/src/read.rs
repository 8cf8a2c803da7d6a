//! The read path: chunks streamed out as verified frames, to clients
//! (DownloadChunkStream) and to other datanodes (repair replication).
//!
//! A blocking thread reads block by block into a reused scratch buffer,
//! verifies each block's CRC32C, and cuts frames out of a reused `BytesMut`
//! into a bounded channel: a slow consumer slows the reader, and no chunk is
//! ever held in memory whole.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dfs_proto::{ChunkData, upload_chunk_response};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::metrics::stream;
use crate::node::Node;
use crate::peers::Target;
use crate::store::{ChunkId, Store, StoreError};
use crate::wire::{Frame, ReplicaHeader, replicate_messages, status};

/// Frames queued towards a reader's consumer.
const READ_QUEUE_FRAMES: usize = 4;

/// Paces a blocking reader to `rate` bytes per second (0 = unthrottled).
pub struct Pacer {
    started: Instant,
    bytes: u64,
}

impl Pacer {
    /// Starts pacing now.
    pub fn new() -> Self {
        Pacer {
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Accounts for `n` more bytes and sleeps until the rate allows them.
    pub fn consume(&mut self, n: u64, rate: u64) {
        self.bytes += n;
        if rate == 0 {
            self.started = Instant::now();
            self.bytes = 0;
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

/// Handles a read failure: corruption moves the chunk aside and reports
/// it; an I/O error of the disk sets it aside where it is (see
/// [`Store::mark_unavailable`]), so either way the coordinator repairs it.
pub fn read_failed(store: &Store, id: &ChunkId, e: StoreError, source: &str) -> Status {
    match &e {
        StoreError::Corrupt { reason, .. } => {
            store
                .metrics()
                .checksum_failures
                .with_label_values(&[source])
                .inc();
            store.mark_corrupt(id, reason);
        }
        // Only the disk's own read errors: a passing condition (no file
        // descriptors left, no memory) must not hide a healthy replica.
        StoreError::Io { source: err, .. }
            if err.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) =>
        {
            store.mark_unavailable(id, &e.to_string());
        }
        _ => {}
    }
    status(e)
}

/// A repair target that went quiet for `after`: counted, and the reason
/// the repair fails with.
fn silent_target(node: &Node, target: &Target, what: &str, after: Duration) -> Status {
    node.metrics
        .streams_cut
        .with_label_values(&["silent_target"])
        .inc();
    Status::deadline_exceeded(format!("repair target {} {what} {after:?}", target.node_id))
}

/// Sends `item` from a blocking thread, waiting at most `idle` for room: a
/// consumer that stopped reading (a stalled client, a hung repair target)
/// releases the thread instead of holding it forever. False when the
/// consumer is gone or too slow.
fn send_within<T>(tx: &mpsc::Sender<T>, item: T, idle: Duration, metrics: &crate::Metrics) -> bool {
    let item = match tx.try_send(item) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(item)) => item,
    };
    let handle = tokio::runtime::Handle::current();
    match handle.block_on(tokio::time::timeout(idle, tx.send(item))) {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            metrics
                .streams_cut
                .with_label_values(&["slow_reader"])
                .inc();
            tracing::warn!("a reader took no frame for {idle:?}: cutting the stream off");
            false
        }
    }
}

/// Streams `[offset, offset + length)` of chunk `id` (length 0 = to the end)
/// as frames of `frame_bytes` into `tx`, paced to `rate` bytes/s. A
/// consumer that takes no frame for `idle` is cut off. The task ends with
/// the read's outcome: "ok", "cancelled" (the consumer went away or
/// stalled) or "error" (sent to the consumer as the stream's last item).
#[allow(clippy::too_many_arguments)]
pub fn spawn_read(
    store: Arc<Store>,
    id: ChunkId,
    offset: u64,
    length: u64,
    frame_bytes: usize,
    rate: u64,
    kind: &'static str,
    idle: Duration,
    tx: mpsc::Sender<Result<ChunkData, Status>>,
) -> JoinHandle<&'static str> {
    tokio::task::spawn_blocking(move || {
        let result = (|| {
            let reader = store.open_reader(&id)?;
            let size = reader.meta().size;
            let end = if length == 0 {
                size.max(offset)
            } else {
                offset.saturating_add(length)
            };
            let metrics = store.metrics().clone();
            let mut pos = offset;
            let mut pacer = Pacer::new();
            let mut sent_final = false;
            let mut send = |frame: ChunkData| {
                let len = frame.data.len() as u64;
                let done = frame.is_final;
                if !send_within(&tx, Ok(frame), idle, &metrics) {
                    return false;
                }
                sent_final |= done;
                metrics.frame_out(kind, len);
                pacer.consume(len, rate);
                true
            };
            // Room for the frames in flight, but no more than the read needs:
            // a 4 KiB read should not allocate (and fault in) a megabyte.
            let wanted = end.saturating_sub(offset).min(size) as usize;
            let mut buf = BytesMut::with_capacity(
                (reader.block_bytes() * READ_QUEUE_FRAMES).min(wanted.max(1)),
            );
            if frame_bytes == reader.block_bytes() {
                // Frames are the verified blocks themselves: no copy, and a
                // whole block's checksum is reused as the frame's.
                reader.read_range(offset, length, &mut buf, |piece| {
                    let len = piece.data.len() as u64;
                    let done = pos + len == end;
                    let frame = match piece.block_crc {
                        Some(crc) => ChunkData::frame_with_checksum(piece.data, pos, done, crc),
                        None => ChunkData::frame(piece.data, pos, done),
                    };
                    pos += len;
                    send(frame)
                })?;
            } else {
                // Another frame size: pieces are regrouped into frames.
                let mut frame_buf = BytesMut::with_capacity(frame_bytes * READ_QUEUE_FRAMES);
                reader.read_range(offset, length, &mut buf, |piece| {
                    let mut s = &piece.data[..];
                    while !s.is_empty() {
                        let n = (frame_bytes - frame_buf.len()).min(s.len());
                        frame_buf.extend_from_slice(&s[..n]);
                        s = &s[n..];
                        let done = pos + frame_buf.len() as u64 == end;
                        if frame_buf.len() == frame_bytes || done {
                            let data = frame_buf.split().freeze();
                            frame_buf.reserve(frame_bytes);
                            let len = data.len() as u64;
                            let frame = ChunkData::frame(data, pos, done);
                            pos += len;
                            if !send(frame) {
                                return false;
                            }
                        }
                    }
                    true
                })?;
            }
            if !sent_final {
                // Empty range (or empty chunk): one empty final frame.
                send_within(
                    &tx,
                    Ok(ChunkData::frame(Default::default(), pos, true)),
                    idle,
                    &metrics,
                );
            }
            Ok(())
        })();
        match result {
            Ok(()) => "ok",
            Err(StoreError::Cancelled) => "cancelled",
            Err(e) => {
                let st = read_failed(&store, &id, e, "read");
                send_within(&tx, Err(st), idle, store.metrics());
                "error"
            }
        }
    })
}

/// Copies chunk `id` to `target` over ReplicateChunk (coordinator-commanded
/// repair): header with the known checksum, then verified frames, paced to
/// `rate` bytes/s. Returns when the target holds the chunk durably.
pub async fn replicate_to(
    node: Arc<Node>,
    id: ChunkId,
    expected: Option<(u64, u32)>,
    target: Target,
    session_id: String,
    rate: u64,
    token: Option<dfs_proto::ChunkToken>,
) -> Result<(), Status> {
    let stored = node
        .store
        .get(&id)
        .ok_or_else(|| Status::not_found(format!("chunk {id} is not stored on this node")))?;
    // Repair copies only what the coordinator recorded: a source holding
    // other bytes under the id sends nothing.
    if let Some((size, checksum)) = expected
        && (stored.size != size || stored.checksum != checksum)
    {
        return Err(Status::failed_precondition(format!(
            "chunk {id} here is {} bytes with crc32c {:08x}, the coordinator recorded {size} bytes with {checksum:08x}: not sent",
            stored.size, stored.checksum
        )));
    }
    let started = Instant::now();
    let header = ReplicaHeader {
        session_id,
        chunk_id: id.clone(),
        size: stored.size,
        checksum: Some(stored.checksum),
        source_node_id: node.node_id.clone(),
        token,
    };
    let (frames_tx, mut frames_rx) = mpsc::channel(READ_QUEUE_FRAMES);
    let silent = node.config.replica_stall_timeout * 3;
    let reader = spawn_read(
        node.store.clone(),
        id.clone(),
        0,
        0,
        dfs_proto::DEFAULT_FRAME_BYTES,
        rate,
        stream::FORWARD,
        silent,
        frames_tx,
    );
    // Frames go out until the first read error, which is kept to explain
    // why the stream ended early (the target then discards its partial copy).
    let (req_tx, req_rx) = mpsc::channel::<Frame>(READ_QUEUE_FRAMES);
    let pump = tokio::spawn(async move {
        while let Some(item) = frames_rx.recv().await {
            match item {
                Ok(frame) => {
                    if req_tx.send(frame.into()).await.is_err() {
                        return None;
                    }
                }
                Err(st) => return Some(st),
            }
        }
        None
    });
    let result = async {
        let mut client = node.peers.client(&target.node_id, &target.address)?;
        // The target's first answer is bounded too: over a connection that
        // broke silently (a partition) the call would otherwise wait for
        // HTTP/2 keepalive, past the coordinator's own deadline for the
        // repair, holding one of this node's replication permits.
        let call = client.replicate_chunk(replicate_messages(&header, ReceiverStream::new(req_rx)));
        let first = node.config.replica_stall_timeout;
        let mut responses = match tokio::time::timeout(first, call).await {
            Ok(answer) => answer?.into_inner(),
            Err(_) => {
                return Err(silent_target(
                    &node,
                    &target,
                    "did not answer within",
                    first,
                ));
            }
        };
        // Acks come per frame: a target silent for this long has hung.
        loop {
            let m = match tokio::time::timeout(silent, responses.message()).await {
                Ok(m) => m?,
                Err(_) => return Err(silent_target(&node, &target, "silent for", silent)),
            };
            match m {
                Some(m) => {
                    if let Some(upload_chunk_response::Kind::Replicas(_)) = m.kind {
                        return Ok(());
                    }
                }
                None => {
                    return Err(Status::unavailable(
                        "target closed the stream without an answer",
                    ));
                }
            }
        }
    }
    .await;
    let read_error = match result {
        Ok(()) => None,
        Err(_) => {
            pump.abort();
            pump.await.unwrap_or_default()
        }
    };
    reader.abort();
    let result = match (result, read_error) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(local)) => Err(local),
        (Err(remote), None) => Err(remote),
    };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    node.metrics
        .replication_seconds
        .with_label_values(&["repair", outcome])
        .observe(started.elapsed().as_secs_f64());
    result
}
