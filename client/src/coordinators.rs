//! The coordinators one client talks to, and its calls' failover.
//!
//! A client given the members of a coordinator group holds a channel to
//! each. A call goes to the member that answered last; when that member is
//! UNAVAILABLE (killed, partitioned, or a follower that has no leader to
//! forward to) or the connection breaks under the call, the call is sent again to the leader the answer names
//! (`dfs-leader`), else to the next member, until one answers or the
//! failover time runs out (an election takes a second or two). Every member
//! of a group answers every call (followers forward to the leader), so any
//! live one will do.
//!
//! A call sent again may have been applied the first time (its answer was
//! lost with the leader). The writes the client retries are safe to resend:
//! Mkdir, Delete and Rename carry one request id for all their attempts
//! (`dfs-request-id`), ConfirmUpload is keyed by its upload id, and the
//! coordinator applies each at most once. A retried UploadFile may leave an
//! unused plan behind, which expires.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// The generated gRPC client of the coordinator: every call carries the
/// caller's bearer token, if it has one.
pub(crate) type Coord = dfs_proto::coordinator_client::CoordinatorClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// Adds `authorization: Bearer <token>` to each coordinator call.
#[derive(Clone, Default)]
pub(crate) struct Bearer(pub(crate) Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// The members, and which one answered last.
#[derive(Clone)]
pub(crate) struct Coordinators {
    inner: Arc<Inner>,
}

struct Inner {
    members: Vec<(String, Coord)>,
    current: AtomicUsize,
    failover: Duration,
}

impl Coordinators {
    /// `members` by URL, `current` the index of the one to call first.
    pub(crate) fn new(members: Vec<(String, Coord)>, current: usize, failover: Duration) -> Self {
        assert!(current < members.len(), "the current member is one of them");
        Coordinators {
            inner: Arc::new(Inner {
                members,
                current: AtomicUsize::new(current),
                failover,
            }),
        }
    }

    /// The URL of the member that answered last.
    #[cfg(test)]
    pub(crate) fn current_url(&self) -> &str {
        let i = self.inner.current.load(Ordering::Relaxed);
        &self.inner.members[i].0
    }

    /// Calls `f` on the member that answered last, failing over to the
    /// others as the module comment says. With one member, one attempt.
    pub(crate) async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Coord) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let members = &self.inner.members;
        let n = members.len();
        let deadline = Instant::now() + self.inner.failover;
        let mut i = self.inner.current.load(Ordering::Relaxed);
        let mut failed = 0usize;
        loop {
            match f(members[i].1.clone()).await {
                Err(st) if n > 1 && lost(&st) && Instant::now() < deadline => {
                    let hint = st
                        .metadata()
                        .get(dfs_proto::LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|url| members.iter().position(|(u, _)| u == url))
                        .filter(|h| *h != i);
                    tracing::debug!(member = %members[i].0, "coordinator unavailable, trying another: {}", st.message());
                    i = hint.unwrap_or((i + 1) % n);
                    failed += 1;
                    // Every member refused in turn: an election is under
                    // way, give it time.
                    if failed.is_multiple_of(n) {
                        let pause = Duration::from_millis(100 * (failed / n).min(5) as u64);
                        tokio::time::sleep(pause).await;
                    }
                }
                answer => {
                    if answer.is_ok() {
                        self.inner.current.store(i, Ordering::Relaxed);
                    }
                    return answer;
                }
            }
        }
    }
}

/// True when `st` says the member is gone or cannot answer: UNAVAILABLE
/// (refused connection, no leader to forward to), or the connection broke
/// under the call (tonic reports UNKNOWN or CANCELLED for a reset stream or
/// a broken pipe). The coordinator never answers UNKNOWN or CANCELLED
/// itself.
fn lost(st: &Status) -> bool {
    matches!(
        st.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn members(n: usize) -> Vec<(String, Coord)> {
        (0..n)
            .map(|i| {
                let url = format!("http://127.0.0.1:{}", 1 + i);
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .unwrap()
                    .connect_lazy();
                (
                    url,
                    dfs_proto::coordinator_client::CoordinatorClient::with_interceptor(
                        channel,
                        Bearer::default(),
                    ),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn an_unavailable_member_hands_the_call_to_the_leader_it_names() {
        let c = Coordinators::new(members(3), 0, Duration::from_secs(5));
        let calls = Mutex::new(0);
        let answer = c
            .call(|_| {
                let mut calls = calls.lock().unwrap();
                *calls += 1;
                let first = *calls == 1;
                async move {
                    if first {
                        let mut st = Status::unavailable("not the leader");
                        st.metadata_mut().insert(
                            dfs_proto::LEADER_METADATA,
                            "http://127.0.0.1:3".parse().unwrap(),
                        );
                        Err(st)
                    } else {
                        Ok(7)
                    }
                }
            })
            .await;
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(c.current_url(), "http://127.0.0.1:3");
    }

    #[tokio::test]
    async fn other_errors_and_single_members_are_not_retried() {
        let c = Coordinators::new(members(3), 1, Duration::from_secs(5));
        let calls = Mutex::new(0);
        let r: Result<(), Status> = c
            .call(|_| {
                *calls.lock().unwrap() += 1;
                async { Err(Status::not_found("no")) }
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Code::NotFound);
        assert_eq!(*calls.lock().unwrap(), 1);

        let one = Coordinators::new(members(1), 0, Duration::from_secs(5));
        let r: Result<(), Status> = one
            .call(|_| {
                *calls.lock().unwrap() += 1;
                async { Err(Status::unavailable("down")) }
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
        assert_eq!(*calls.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn failover_gives_up_after_its_time() {
        let c = Coordinators::new(members(2), 0, Duration::from_millis(300));
        let started = Instant::now();
        let r: Result<(), Status> = c.call(|_| async { Err(Status::unavailable("down")) }).await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(c.current_url(), "http://127.0.0.1:1", "unchanged");
    }
}
