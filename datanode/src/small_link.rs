//! Small chunks between datanodes: one long-lived `ReplicateSmallChunks`
//! stream per peer carries every one-frame chunk a primary fans out.
//!
//! A 4 KiB replica sent over its own `ReplicateChunk` call costs a new HTTP/2
//! stream (headers, trailers, a task and a routing pass on both ends) for a
//! few kilobytes of data; on the multiplexed link it is one message each way.
//! Answers come back by sequence number as each chunk becomes durable, so
//! the receiver's group commit batches chunks of many concurrent uploads.
//!
//! ```text
//!  upload A ─┐                                   ┌─▶ store A ─┐
//!  upload B ─┼─▶ link to peer (one stream) ─────▶├─▶ store B ─┼─▶ one volume fsync
//!  upload C ─┘   ◀── answers by seq, any order ──└─▶ store C ─┘
//! ```
//!
//! A link that breaks fails the chunks in flight on it (their uploads treat
//! that replica as failed, as with a broken `ReplicateChunk`) and is reopened
//! by the next chunk. A peer that does not know the call (UNIMPLEMENTED) is
//! sent its small chunks over `ReplicateChunk` for a while.

use std::sync::Arc;
use std::time::Instant;

use dfs_proto::{ChunkReplicas, SmallChunk, SmallChunkResult};
use tokio::sync::{Semaphore, mpsc};
use tonic::{Status, Streaming};

use crate::metrics::{GaugeGuard, stream};
use crate::node::Node;
use crate::pipeline::{FrameCheck, LocalWrite, receive_frame, replica_received};
use crate::wire::{DataPathError, parse_small_chunk};

/// Chunks one receiving stream stores at the same time; the next message is
/// read only when one finishes, so a slow disk pushes back on the sender
/// (at most this many small chunks in memory per stream).
const MAX_IN_FLIGHT: usize = 64;
/// Answers queued towards the sender of a stream.
pub const RESPONSE_QUEUE: usize = MAX_IN_FLIGHT;
/// `ReplicateSmallChunks` on a receiving node: stores each chunk as it
/// comes (at most [`MAX_IN_FLIGHT`] at a time) and answers each by `seq`
/// once durable. A bad chunk gets its own error answer; the stream goes on.
pub async fn receive(
    node: Arc<Node>,
    mut requests: Streaming<SmallChunk>,
    out: mpsc::Sender<Result<SmallChunkResult, Status>>,
    caller: Option<Arc<dfs_common::tls::Principal>>,
) {
    let _open = GaugeGuard::new(
        node.metrics
            .active_sessions
            .with_label_values(&["small_link"]),
    );
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut stop = node.stop.subscribe();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // On shutdown, stop taking chunks: the ones in flight are answered,
        // then the stream ends and the sender's next chunk finds it closed.
        let next = tokio::select! {
            next = requests.message() => next,
            _ = stop.wait_for(|s| *s) => return,
        };
        let chunk = match next {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(st) => {
                tracing::debug!("small-chunk stream ended: {}", st.message());
                return;
            }
        };
        let node = node.clone();
        let out = out.clone();
        let all = permits.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            let seq = chunk.seq;
            let answer = match store(&node, chunk, caller.as_deref()).await {
                Ok(replicas) => SmallChunkResult {
                    seq,
                    replicas: Some(replicas),
                    code: 0,
                    message: String::new(),
                },
                Err(e) => {
                    let st = Status::from(e);
                    SmallChunkResult {
                        seq,
                        replicas: None,
                        code: st.code() as i32,
                        message: st.message().to_string(),
                    }
                }
            };
            // A sender that stops reading its answers is cut off after the
            // session timeout: the link ends and frees its stream slot.
            let idle = node.sessions.timeout();
            if tokio::time::timeout(idle, out.send(Ok(answer)))
                .await
                .is_err()
            {
                node.metrics
                    .streams_cut
                    .with_label_values(&["slow_reader"])
                    .inc();
                tracing::warn!("a small-chunk link took no answer for {idle:?}: closing it");
                all.close();
            }
            drop(permit);
        });
    }
}

/// Verifies and stores one whole chunk, as `ReplicateChunk` would.
async fn store(
    node: &Arc<Node>,
    chunk: SmallChunk,
    caller: Option<&dfs_common::tls::Principal>,
) -> Result<ChunkReplicas, DataPathError> {
    let (header, frame) = parse_small_chunk(chunk)?;
    crate::pipeline::authorize_replica(node, &header, caller).map_err(DataPathError::Transport)?;
    let (chunk_id, size) = (&header.chunk_id, header.size);
    let _gauge = GaugeGuard::new(
        node.metrics
            .active_sessions
            .with_label_values(&["replicate"]),
    );
    let started = Instant::now();
    let result = async {
        let reservation = node.store.reserve(size)?;
        let mut check = FrameCheck::new(size, header.checksum, node.max_frame_bytes());
        receive_frame(node, &mut check, &frame, stream::REPLICATE)?;
        let mut local = LocalWrite::start(node.store.clone(), chunk_id.clone(), size);
        local.write(frame.data).await?;
        let stored = local
            .finish(size, Some(check.crc), Some(reservation))
            .await?;
        Ok(crate::pipeline::stored_answer(node, chunk_id, stored))
    }
    .await;
    replica_received(node, started, &result, &header);
    result
}
