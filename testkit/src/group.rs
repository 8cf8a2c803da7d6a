//! A coordinator group of three `dfs-coordinator` processes on 127.0.0.1
//! (`--peers`), for tests that kill and restart its members: the harness of
//! `coordinator/tests/group.rs`, shared so that other tests (the
//! linearizability check, `coordinator/tests/linearizable.rs`) start the
//! group the same way.
//!
//! The binary is the caller's: an integration test of the coordinator
//! crate passes `env!("CARGO_BIN_EXE_dfs-coordinator")`, which cargo builds
//! for it (this library cannot name it). Every member runs with
//! `--exit-with-parent` and is SIGKILLed when dropped, also when the test
//! panics; its log is appended to `<dir>/c<id>.log` across restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::{GetClusterStatusRequest, StatRequest};

use crate::process::{free_addr, peers};

/// One coordinator process, killed when dropped.
#[derive(Debug)]
pub struct Member {
    /// Raft id (1-based).
    pub id: u64,
    /// Its gRPC URL.
    pub url: String,
    /// Where its output goes.
    pub log: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    /// Starts the process (again, on the same directory and ports).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "member {} is running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dfs-coordinator");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True between [`Member::spawn`] and [`Member::kill`].
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a group of three members of `bin` with their directories in
/// `dir`.
pub fn group(bin: impl AsRef<Path>, dir: &Path) -> Vec<Member> {
    group_with(bin, dir, &[])
}

/// [`group`], each member started with `extra` arguments too.
pub fn group_with(bin: impl AsRef<Path>, dir: &Path, extra: &[&str]) -> Vec<Member> {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let peers = peers(&addrs);
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let id = i as u64 + 1;
            let mut args: Vec<String> = vec![
                "--listen".into(),
                a.to_string(),
                "--metrics-addr".into(),
                free_addr().to_string(),
                "--data-dir".into(),
                dir.join(format!("c{id}")).display().to_string(),
                "--raft-id".into(),
                id.to_string(),
                "--peers".into(),
                peers.clone(),
                "--exit-with-parent".into(),
                "--insecure".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut m = Member {
                id,
                url: format!("http://{a}"),
                bin: bin.as_ref().to_path_buf(),
                args,
                log: dir.join(format!("c{id}.log")),
                child: None,
            };
            m.spawn();
            m
        })
        .collect()
}

/// The members' URLs, comma-separated (a client's coordinator list).
pub fn urls(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| m.url.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A raw client of `url` (500 ms to connect, 3 s per call), `None` when it
/// cannot be reached.
pub async fn client(url: &str) -> Option<CoordinatorClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3));
    endpoint.connect().await.ok().map(CoordinatorClient::new)
}

/// The running member that leads the group, by index, and the group's
/// status as it answers it; `None` when there is none now. Every running
/// member is asked (a follower forwards the call to its leader); of the
/// members that answer as leader the one in the highest term is taken (a
/// member just restarted may still believe in its old term's leadership),
/// and confirmed by a linearizable read that it answers itself, which
/// needs a quorum that still follows it.
pub async fn leader_status(members: &[Member]) -> Option<(usize, dfs_proto::ClusterStatus)> {
    let mut best: Option<(u64, usize, dfs_proto::ClusterStatus)> = None;
    for m in members.iter().filter(|m| m.is_running()) {
        let Some(mut c) = client(&m.url).await else {
            continue;
        };
        let Ok(status) = c.get_cluster_status(GetClusterStatusRequest {}).await else {
            continue;
        };
        let status = status.into_inner();
        let Some(me) = status
            .coordinators
            .iter()
            .find(|c| c.answering && c.role == "leader")
        else {
            continue;
        };
        let Some(i) = members.iter().position(|m| m.id == me.id && m.is_running()) else {
            continue;
        };
        if best.as_ref().is_none_or(|(term, ..)| me.term > *term) {
            best = Some((me.term, i, status));
        }
    }
    let (_, i, status) = best?;
    let mut c = client(&members[i].url).await?;
    let read = c.stat(StatRequest { path: "/".into() }).await.ok()?;
    read.metadata()
        .get(dfs_proto::LEADER_METADATA)
        .is_none()
        .then_some((i, status))
}

/// The index in `members` of the running member that leads the group,
/// waiting up to `timeout` for one.
pub async fn wait_leader(members: &[Member], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((i, _)) = leader_status(members).await {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no running member led the group within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to `timeout` until the leader replicates to `members[i]` and
/// it is at most `max_lag` entries behind (a restarted member caught up).
pub async fn wait_caught_up(members: &[Member], i: usize, max_lag: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let id = members[i].id;
    let mut last = None;
    loop {
        if let Some((_, status)) = leader_status(members).await {
            let me = status.coordinators.iter().find(|c| c.id == id);
            if let Some(me) = me
                && (me.answering || (me.last_log_index > 0 && me.lag <= max_lag))
            {
                return;
            }
            last = Some(status.coordinators);
        }
        assert!(
            Instant::now() < deadline,
            "member {id} did not catch up within {timeout:?}; the group as its leader saw it last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
