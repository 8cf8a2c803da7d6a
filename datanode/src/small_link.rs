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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_proto::{ChunkData, ChunkReplicas, ReplicateChunkHeader, SmallChunk, SmallChunkResult};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::metrics::{GaugeGuard, stream};
use crate::node::{Node, Target, status};
use crate::pipeline::{FrameCheck, LocalWrite, receive_frame, replica_received};

/// Chunks queued towards one peer before senders wait.
const LINK_QUEUE: usize = 64;
/// Chunks one receiving stream stores at the same time; the next message is
/// read only when one finishes, so a slow disk pushes back on the sender
/// (at most this many small chunks in memory per stream).
const MAX_IN_FLIGHT: usize = 64;
/// Answers queued towards the sender of a stream.
pub const RESPONSE_QUEUE: usize = MAX_IN_FLIGHT;
/// How long a peer that answered UNIMPLEMENTED gets `ReplicateChunk` instead.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(60);

type Waiters = HashMap<u64, oneshot::Sender<Result<ChunkReplicas, Status>>>;

/// One open stream to a peer. `waiters` is `None` once the stream ended.
struct Link {
    tx: mpsc::Sender<SmallChunk>,
    waiters: Arc<Mutex<Option<Waiters>>>,
}

impl Link {
    fn open(node: &Node, address: &str) -> Result<Arc<Link>, Status> {
        let mut client = node.peers.client(address)?;
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let waiters: Arc<Mutex<Option<Waiters>>> = Arc::new(Mutex::new(Some(HashMap::new())));
        let answers = waiters.clone();
        let address = address.to_string();
        tokio::spawn(async move {
            let result = async {
                let mut responses = client
                    .replicate_small_chunks(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                while let Some(r) = responses.message().await? {
                    let waiter = answers
                        .lock()
                        .expect("link lock")
                        .as_mut()
                        .and_then(|w| w.remove(&r.seq));
                    if let Some(w) = waiter {
                        let _ = w.send(outcome(r));
                    }
                }
                Err::<(), _>(Status::unavailable(
                    "the peer closed the small-chunk stream",
                ))
            }
            .await;
            let st = result
                .err()
                .unwrap_or_else(|| Status::unavailable("link closed"));
            if st.code() != Code::Unimplemented {
                tracing::debug!(peer = %address, "small-chunk link ended: {}", st.message());
            }
            let left = answers.lock().expect("link lock").take();
            for (_, w) in left.into_iter().flatten() {
                let _ = w.send(Err(st.clone()));
            }
        });
        Ok(Arc::new(Link { tx, waiters }))
    }

    fn is_open(&self) -> bool {
        self.waiters.lock().expect("link lock").is_some()
    }
}

/// Removes a waiter that gave up (timeout, cancelled upload) so a link whose
/// peer never answers does not accumulate them.
struct WaiterGuard<'a> {
    link: &'a Link,
    seq: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.link.waiters.lock().expect("link lock").as_mut() {
            w.remove(&self.seq);
        }
    }
}

fn outcome(r: SmallChunkResult) -> Result<ChunkReplicas, Status> {
    match r.replicas {
        Some(replicas) if r.code == 0 => Ok(replicas),
        _ => {
            let code = match Code::from_i32(r.code) {
                Code::Ok => Code::Unknown,
                c => c,
            };
            Err(Status::new(code, r.message))
        }
    }
}

/// The links of this node to its peers, by address.
#[derive(Default)]
pub struct Links {
    links: Mutex<HashMap<String, Arc<Link>>>,
    unsupported: Mutex<HashMap<String, Instant>>,
    seq: AtomicU64,
}

impl Links {
    /// Whether `address` is believed to serve `ReplicateSmallChunks`.
    pub fn supported(&self, address: &str) -> bool {
        let mut u = self.unsupported.lock().expect("links lock");
        match u.get(address) {
            Some(since) if since.elapsed() < UNSUPPORTED_FOR => false,
            Some(_) => {
                u.remove(address);
                true
            }
            None => true,
        }
    }

    fn link(&self, node: &Node, address: &str) -> Result<Arc<Link>, Status> {
        let mut links = self.links.lock().expect("links lock");
        if let Some(l) = links.get(address)
            && l.is_open()
        {
            return Ok(l.clone());
        }
        let l = Link::open(node, address)?;
        links.insert(address.to_string(), l.clone());
        Ok(l)
    }

    /// Sends one whole chunk to `target` and waits for its durable answer.
    /// Returns UNIMPLEMENTED when the peer does not serve the call (it is
    /// then remembered as such).
    pub async fn replicate(
        &self,
        node: &Node,
        target: &Target,
        header: ReplicateChunkHeader,
        data: ChunkData,
    ) -> Result<ChunkReplicas, Status> {
        let len = data.data.len() as u64;
        // Twice: a link found broken (the peer restarted) is reopened once.
        for _ in 0..2 {
            let link = self.link(node, &target.address)?;
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            match link.waiters.lock().expect("link lock").as_mut() {
                Some(w) => w.insert(seq, tx),
                None => continue,
            };
            let _guard = WaiterGuard { link: &link, seq };
            let message = SmallChunk {
                seq,
                header: Some(header.clone()),
                data: Some(data.clone()),
            };
            if link.tx.send(message).await.is_err() {
                continue;
            }
            node.metrics.frame_out(stream::FORWARD, len);
            let answer = rx
                .await
                .unwrap_or_else(|_| Err(Status::unavailable("small-chunk link closed")));
            if let Err(st) = &answer
                && st.code() == Code::Unimplemented
            {
                self.unsupported
                    .lock()
                    .expect("links lock")
                    .insert(target.address.clone(), Instant::now());
            }
            return answer;
        }
        Err(Status::unavailable(format!(
            "no small-chunk link to {}",
            target.address
        )))
    }
}

/// `ReplicateSmallChunks` on a receiving node: stores each chunk as it
/// comes (at most [`MAX_IN_FLIGHT`] at a time) and answers each by `seq`
/// once durable. A bad chunk gets its own error answer; the stream goes on.
pub async fn receive(
    node: Arc<Node>,
    mut requests: Streaming<SmallChunk>,
    out: mpsc::Sender<Result<SmallChunkResult, Status>>,
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
        tokio::spawn(async move {
            let seq = chunk.seq;
            let answer = match store(&node, chunk).await {
                Ok(replicas) => SmallChunkResult {
                    seq,
                    replicas: Some(replicas),
                    code: 0,
                    message: String::new(),
                },
                Err(st) => SmallChunkResult {
                    seq,
                    replicas: None,
                    code: st.code() as i32,
                    message: st.message().to_string(),
                },
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
async fn store(node: &Arc<Node>, chunk: SmallChunk) -> Result<ChunkReplicas, Status> {
    let header = chunk
        .header
        .ok_or_else(|| Status::invalid_argument("SmallChunk without header"))?;
    let meta = header
        .chunk
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("SmallChunk header without chunk"))?;
    let (chunk_id, size, checksum) = crate::service::parse_meta(meta)?;
    let frame = chunk
        .data
        .ok_or_else(|| Status::invalid_argument("SmallChunk without data"))?;
    if !frame.is_final || frame.offset != 0 {
        return Err(Status::invalid_argument(
            "a SmallChunk carries its whole chunk in one final frame at offset 0",
        ));
    }
    let _gauge = GaugeGuard::new(
        node.metrics
            .active_sessions
            .with_label_values(&["replicate"]),
    );
    let started = Instant::now();
    let result: Result<ChunkReplicas, Status> = async {
        let reservation = node.store.reserve(size).map_err(status)?;
        let mut check = FrameCheck::new(size, checksum, node.max_frame_bytes());
        receive_frame(node, &mut check, &frame, stream::REPLICATE)?;
        let mut local = LocalWrite::start(node.store.clone(), chunk_id.clone(), size);
        local.write(frame.data).await?;
        let stored = local.finish(size, Some(check.crc)).await?;
        drop(reservation);
        Ok(crate::pipeline::stored_answer(node, &chunk_id, stored))
    }
    .await;
    replica_received(node, started, &result, &chunk_id, &header);
    result
}
