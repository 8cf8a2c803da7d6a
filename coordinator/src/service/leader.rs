//! Leader routing in a coordinator group: which member answers a call.
//!
//! ```text
//!  client ──▶ follower ──(forwarded, bounded)──▶ leader ──▶ handler
//!             │  answer + dfs-leader header ◀────┘
//!             └─ stale read (dfs-read: stale) ──▶ handler on the follower
//! ```
//!
//! Every namespace call a follower receives is forwarded to the leader as
//! the same HTTP/2 request (at most [`MAX_FORWARDS`] at a time; beyond that,
//! and when no leader is known, UNAVAILABLE with the leader's address).
//! The answer carries `dfs-leader`, so clients can go there directly next
//! time. A forwarded call is never forwarded again: a member that received
//! one and is not (or no longer) the leader refuses it. Datanodes' calls
//! are not forwarded: their heartbeat stream belongs on the leader, and the
//! handlers send them there with the same hint.
//!
//! Reads are linearizable: the leader answers one only after a quorum
//! confirmed it still leads and its namespace applied everything committed
//! before the read arrived ([`ReadBarrier`], one confirmation round shared by
//! every read waiting for it). A read that asks for `dfs-read: stale` is
//! answered by whichever member receives it, from what that member has
//! applied.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use dfs_proto::{FORWARDED_METADATA, LEADER_METADATA, READ_METADATA, STALE_READ};

use super::convert::unavailable_at as unavailable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tower_service::Service;

use super::Ctx;
use crate::raft::TypeConfig;
use crate::store::ProposeError;

/// Most calls a follower forwards to the leader at the same time.
pub const MAX_FORWARDS: usize = 256;
/// Longest a read waits for the leader to confirm its leadership.
pub const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Who leads, as this member knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// This member leads (or there is no group).
    pub is_leader: bool,
    /// The leader's gRPC address, when known.
    pub leader: Option<String>,
}

/// What to do with one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Answer here.
    Local,
    /// Send it to the leader at this address.
    Forward(String),
    /// Refuse with UNAVAILABLE and this reason (plus the leader hint).
    Refuse(&'static str),
}

/// Calls a follower answers itself when they ask for a stale read.
const READS: [&str; 5] = [
    "Stat",
    "ListDirectory",
    "DownloadFile",
    // A member's own view of the group and the datanodes.
    "GetClusterStatus",
    "ListNodes",
];
/// Datanodes' calls: never forwarded (see the module comment).
const DATANODE_CALLS: [&str; 2] = ["RegisterDataNode", "DataNodeHeartbeat"];

/// Where `method` goes: the rule, apart from the I/O.
pub fn route(method: &str, who: &Leadership, stale: bool, forwarded: bool) -> Route {
    if who.is_leader || DATANODE_CALLS.contains(&method) || (stale && READS.contains(&method)) {
        return Route::Local;
    }
    if forwarded {
        return Route::Refuse("a forwarded call reached a member that does not lead the group");
    }
    match &who.leader {
        Some(leader) => Route::Forward(leader.clone()),
        None => Route::Refuse(
            "the coordinator group has no leader at the moment (an election is under way)",
        ),
    }
}

/// True when the call (its HTTP headers, or its gRPC metadata through
/// `as_ref()`) asks for a stale read.
pub fn wants_stale(headers: &http::HeaderMap) -> bool {
    headers
        .get(READ_METADATA)
        .is_some_and(|v| v.as_bytes() == STALE_READ.as_bytes())
}

/// Wraps the Coordinator service: answers, forwards or refuses each call
/// by [`route`].
#[derive(Clone)]
pub struct LeaderRouter<S> {
    inner: S,
    ctx: Arc<Ctx>,
    forwards: Arc<Semaphore>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl<S> LeaderRouter<S> {
    /// Routes the calls of `inner` for the member `ctx` describes.
    pub fn new(inner: S, ctx: Arc<Ctx>) -> Self {
        LeaderRouter {
            inner,
            ctx,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            channels: Arc::default(),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let c = dfs_common::transport::lazy_channel_to(
            address,
            Duration::from_secs(5),
            &self.ctx.security,
            &[dfs_common::tls::Kind::Coordinator],
        )
        .map_err(|e| Status::internal(format!("bad leader address {address:?}: {e}")))?;
        channels.insert(address.to_string(), c.clone());
        Ok(c)
    }
}

impl<S: NamedService> NamedService for LeaderRouter<S> {
    const NAME: &'static str = S::NAME;
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for LeaderRouter<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Answer {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let stale = wants_stale(req.headers());
        let forwarded = req.headers().contains_key(FORWARDED_METADATA);
        let who = self.ctx.leadership();
        let route = route(method, &who, stale, forwarded);
        let metrics = self.ctx.metrics.clone();
        match route {
            Route::Local => Box::pin(self.inner.call(req)),
            Route::Refuse(reason) => {
                metrics.forwarded("refused");
                let st = unavailable(reason, who.leader.as_deref());
                Box::pin(async move { Ok(st.into_http()) })
            }
            Route::Forward(leader) => {
                let Ok(permit) = self.forwards.clone().try_acquire_owned() else {
                    metrics.forwarded("refused");
                    let st = unavailable(
                        "too many calls are being forwarded to the leader: call it directly",
                        Some(&leader),
                    );
                    return Box::pin(async move { Ok(st.into_http()) });
                };
                let channel = self.channel(&leader);
                req.headers_mut()
                    .insert(FORWARDED_METADATA, http::HeaderValue::from_static("1"));
                // With TLS the leader sees this member's certificate: it is
                // told whose call this is (and trusts that only from a
                // coordinator). A caller's own such header is replaced.
                req.headers_mut()
                    .remove(dfs_common::tls::FORWARDED_FOR_METADATA);
                let caller = req
                    .extensions()
                    .get::<dfs_common::tls::PeerInfo>()
                    .and_then(|i| i.principal.clone());
                if let Some(p) = caller
                    && let Ok(v) = http::HeaderValue::from_str(&p.uri())
                {
                    req.headers_mut()
                        .insert(dfs_common::tls::FORWARDED_FOR_METADATA, v);
                }
                Box::pin(async move {
                    let answer = match channel {
                        Ok(mut ch) => match std::future::poll_fn(|cx| ch.poll_ready(cx)).await {
                            Ok(()) => ch.call(req).await.map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                        .map_err(|e| {
                            unavailable(
                                &format!("cannot reach the leader at {leader}: {e}"),
                                Some(&leader),
                            )
                        }),
                        Err(st) => Err(st),
                    };
                    Ok(match answer {
                        Ok(mut resp) => {
                            metrics.forwarded("ok");
                            if let Ok(v) = leader.parse() {
                                resp.headers_mut().insert(LEADER_METADATA, v);
                            }
                            resp.map(|body| {
                                Body::new(Held {
                                    body,
                                    _permit: permit,
                                })
                            })
                        }
                        Err(st) => {
                            metrics.forwarded("unreachable");
                            st.into_http()
                        }
                    })
                })
            }
        }
    }
}

/// A forwarded answer's body, holding its forwarding slot until it ends.
struct Held {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

type Waiter = oneshot::Sender<Result<(), Status>>;

/// Linearizable reads on the leader: a read waits until a quorum confirmed
/// this member still leads and everything committed before the read came
/// is applied (openraft's `ensure_linearizable`). Reads arriving while a
/// confirmation round runs share the next round, so a burst of reads costs
/// one round trip to the followers, not one each.
pub struct ReadBarrier {
    raft: Option<openraft::Raft<TypeConfig>>,
    rounds: Mutex<Rounds>,
    /// The leader lease: until this instant, in this term, no other leader
    /// can exist, so reads need no round (see [`READ_LEASE`]).
    lease: Mutex<Option<(u64, std::time::Instant)>>,
}

/// How long after the start of a round that a quorum confirmed this leader
/// may answer reads without another round. A follower that acknowledged the
/// round's heartbeat refuses to vote for anyone else for openraft's leader
/// lease (the election timeout maximum, 1 s by default, counted from when it
/// received that heartbeat, so later than the round's start): no other
/// leader can be elected, and no write acknowledged, before then. A write
/// this leader acknowledged was applied to its namespace first, so a read
/// from that namespace sees every write that completed before it. 400 ms
/// leaves the followers' clocks room to run 2.5× faster than the leader's;
/// a paused leader's monotonic clock counts the pause, so a thawed one
/// holds no lease.
pub const READ_LEASE: std::time::Duration = std::time::Duration::from_millis(400);

/// Rounds running, and the reads waiting for the next one to start.
#[derive(Default)]
struct Rounds {
    running: usize,
    next: Vec<Waiter>,
}

/// Confirmation rounds in flight at once: a read arriving while all of
/// them run waits for the next to start (and shares it with every read
/// that arrives meanwhile).
pub const MAX_READ_ROUNDS: usize = 1;

impl ReadBarrier {
    /// The barrier of this member (none: a single coordinator, whose reads
    /// are linearizable as they are).
    pub fn new(raft: Option<openraft::Raft<TypeConfig>>) -> Arc<Self> {
        Arc::new(ReadBarrier {
            raft,
            rounds: Mutex::default(),
            lease: Mutex::new(None),
        })
    }

    /// Waits until a read that arrives now may be answered.
    pub async fn wait(self: &Arc<Self>, metrics: &crate::metrics::Metrics) -> Result<(), Status> {
        let Some(raft) = &self.raft else {
            return Ok(());
        };
        if self.leased(raft) {
            metrics.read_leased();
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut rounds = self.rounds.lock().expect("barrier lock");
            rounds.next.push(tx);
            if rounds.running < MAX_READ_ROUNDS {
                rounds.running += 1;
                true
            } else {
                false
            }
        };
        if start {
            let this = self.clone();
            let raft = raft.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                loop {
                    // Everyone in this batch arrived before its round
                    // starts, so the round's confirmation covers them.
                    let batch = {
                        let mut rounds = this.rounds.lock().expect("barrier lock");
                        if rounds.next.is_empty() {
                            rounds.running -= 1;
                            return;
                        }
                        std::mem::take(&mut rounds.next)
                    };
                    metrics.read_barrier(batch.len());
                    let started = std::time::Instant::now();
                    let term = raft.metrics().borrow().current_term;
                    let result = confirm(&raft).await;
                    if result.is_ok() {
                        *this.lease.lock().expect("lease lock") =
                            Some((term, started + READ_LEASE));
                    }
                    for w in batch {
                        let _ = w.send(result.clone());
                    }
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("read barrier stopped")))
    }
}

impl ReadBarrier {
    /// True while this member leads in the term of a lease that has not run
    /// out.
    fn leased(&self, raft: &openraft::Raft<TypeConfig>) -> bool {
        let Some((term, until)) = *self.lease.lock().expect("lease lock") else {
            return false;
        };
        let m = raft.metrics().borrow().clone();
        m.current_term == term
            && m.current_leader == Some(m.id)
            && std::time::Instant::now() < until
    }
}

/// One confirmation round.
async fn confirm(raft: &openraft::Raft<TypeConfig>) -> Result<(), Status> {
    match tokio::time::timeout(READ_BARRIER_TIMEOUT, raft.ensure_linearizable()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let leader = e
                .forward_to_leader()
                .and_then(|f| f.leader_node.as_ref().map(|n| n.addr.clone()));
            Err(match leader {
                Some(l) => Status::from(ProposeError::NotLeader { leader: Some(l) }),
                None => Status::unavailable(format!("cannot confirm this coordinator leads: {e}")),
            })
        }
        Err(_) => Err(Status::unavailable(format!(
            "no quorum confirmed this coordinator's leadership within {READ_BARRIER_TIMEOUT:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(leader: Option<&str>) -> Leadership {
        Leadership {
            is_leader: false,
            leader: leader.map(str::to_string),
        }
    }

    #[test]
    fn the_leader_answers_everything_itself() {
        let leader = Leadership {
            is_leader: true,
            leader: Some("http://a".into()),
        };
        for m in ["Stat", "Rename", "UploadFile", "DataNodeHeartbeat"] {
            assert_eq!(route(m, &leader, false, false), Route::Local);
            assert_eq!(route(m, &leader, false, true), Route::Local);
        }
    }

    #[test]
    fn a_follower_forwards_writes_and_linearizable_reads_once() {
        let f = follower(Some("http://leader:7000"));
        for m in [
            "Rename",
            "ConfirmUpload",
            "Stat",
            "ListDirectory",
            "GetClusterStatus",
        ] {
            assert_eq!(
                route(m, &f, false, false),
                Route::Forward("http://leader:7000".into()),
                "{m}"
            );
            // Never a second hop.
            assert!(matches!(route(m, &f, false, true), Route::Refuse(_)), "{m}");
        }
        // A stale read stays here; a stale write does not exist.
        assert_eq!(route("Stat", &f, true, false), Route::Local);
        assert_eq!(route("DownloadFile", &f, true, true), Route::Local);
        assert_eq!(
            route("Rename", &f, true, false),
            Route::Forward("http://leader:7000".into())
        );
        // Datanodes go to the leader themselves (their handlers say where).
        assert_eq!(route("DataNodeHeartbeat", &f, false, false), Route::Local);
        assert_eq!(route("RegisterDataNode", &f, false, false), Route::Local);
    }

    #[test]
    fn without_a_leader_a_follower_refuses() {
        let f = follower(None);
        assert!(matches!(
            route("Rename", &f, false, false),
            Route::Refuse(_)
        ));
        assert!(matches!(route("Stat", &f, false, false), Route::Refuse(_)));
        assert_eq!(route("Stat", &f, true, false), Route::Local);
    }

    #[tokio::test]
    async fn a_single_coordinator_reads_without_a_round() {
        let barrier = ReadBarrier::new(None);
        let metrics = crate::metrics::Metrics::new();
        barrier.wait(&metrics).await.unwrap();
    }
}
