//! The sending side of the small-chunk links (see [`crate::small_link`]
//! for the protocol and the receiving side): one long-lived
//! `ReplicateSmallChunks` stream per peer that every one-frame chunk a
//! primary fans out travels on. Below the replication pipeline, which uses
//! it; it knows only peers and metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_proto::{ChunkReplicas, SmallChunk, SmallChunkResult};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::metrics::{Metrics, stream};
use crate::peers::{MAX_PEER_CHANNELS, Peers, Target};
use crate::wire::{Frame, ReplicaHeader, small_chunk};

/// Chunks queued towards one peer before senders wait.
const LINK_QUEUE: usize = 64;
/// How long a peer that answered UNIMPLEMENTED gets `ReplicateChunk` instead.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(60);

type Waiters = HashMap<u64, oneshot::Sender<Result<ChunkReplicas, Status>>>;

/// One open stream to a peer. `waiters` is `None` once the stream ended.
struct Link {
    tx: mpsc::Sender<SmallChunk>,
    waiters: Arc<Mutex<Option<Waiters>>>,
}

impl Link {
    fn open(peers: &Peers, target: &Target) -> Result<Arc<Link>, Status> {
        let mut client = peers.client(&target.node_id, &target.address)?;
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let waiters: Arc<Mutex<Option<Waiters>>> = Arc::new(Mutex::new(Some(HashMap::new())));
        let answers = waiters.clone();
        let address = target.address.clone();
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

/// The links of this node to its peers, by node id and address.
#[derive(Default)]
pub struct Links {
    links: Mutex<HashMap<(String, String), Arc<Link>>>,
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

    fn link(&self, peers: &Peers, target: &Target) -> Result<Arc<Link>, Status> {
        let mut links = self.links.lock().expect("links lock");
        let key = (target.node_id.clone(), target.address.clone());
        if let Some(l) = links.get(&key)
            && l.is_open()
        {
            return Ok(l.clone());
        }
        let l = Link::open(peers, target)?;
        // Bounded as the peer channels are: the addresses come from the
        // uploading client. Closed links go first, then any one.
        if links.len() >= MAX_PEER_CHANNELS {
            links.retain(|_, l| l.is_open());
            if links.len() >= MAX_PEER_CHANNELS
                && let Some(victim) = links.keys().next().cloned()
            {
                links.remove(&victim);
            }
        }
        links.insert(key, l.clone());
        Ok(l)
    }

    /// Sends one whole chunk to `target` and waits for its durable answer.
    /// Returns UNIMPLEMENTED when the peer does not serve the call (it is
    /// then remembered as such).
    pub async fn replicate(
        &self,
        peers: &Peers,
        metrics: &Metrics,
        target: &Target,
        header: &ReplicaHeader,
        frame: &Frame,
    ) -> Result<ChunkReplicas, Status> {
        let len = frame.data.len() as u64;
        // Twice: a link found broken (the peer restarted) is reopened once.
        for _ in 0..2 {
            let link = self.link(peers, target)?;
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            match link.waiters.lock().expect("link lock").as_mut() {
                Some(w) => w.insert(seq, tx),
                None => continue,
            };
            let _guard = WaiterGuard { link: &link, seq };
            // The clone shares the frame's buffer.
            let message = small_chunk(seq, header, frame.clone());
            if link.tx.send(message).await.is_err() {
                continue;
            }
            metrics.frame_out(stream::FORWARD, len);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets come from plans (node ids a token names) but their addresses
    /// from the uploading client: however many distinct ones it names, the
    /// primary keeps at most as many links as it keeps peer channels.
    #[tokio::test]
    async fn the_link_table_is_bounded() {
        let peers = Peers::new(dfs_common::tls::Security::insecure());
        let links = Links::default();
        for port in 0..(MAX_PEER_CHANNELS + 100) {
            let target = Target {
                node_id: "dn".into(),
                address: format!("http://127.0.0.1:{}", 10_000 + port),
            };
            links.link(&peers, &target).unwrap();
        }
        assert!(links.links.lock().unwrap().len() <= MAX_PEER_CHANNELS);
    }
}
