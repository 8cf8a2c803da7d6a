//! Membership changes of a coordinator group on real `dfs-coordinator`
//! processes: a group of one grows to three (learners, then voters) and
//! the new voters carry it through the first member's death; a member that
//! comes back on an empty volume is refused as the old member until it is
//! removed and added again, and then catches up; a seed on an empty volume
//! never forms a second group beside the formed one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::{
    AddCoordinatorRequest, ClusterStatus, GetClusterStatusRequest, MkdirRequest,
    SetCoordinatorVotersRequest, StatRequest,
};
use dfs_testkit::process::free_addr;
use tonic::Code;

type Client = CoordinatorClient<tonic::transport::Channel>;

/// One coordinator process, killed when dropped.
struct Proc {
    url: String,
    metrics: std::net::SocketAddr,
    dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(root: &Path, id: u64, seeds: &str, extra: &[&str]) -> (Proc, std::net::SocketAddr) {
        let addr = free_addr();
        (Proc::at(root, id, addr, seeds, extra), addr)
    }

    /// Member `id` listening on `addr`, with `--peers seeds` unless empty.
    fn at(root: &Path, id: u64, addr: std::net::SocketAddr, seeds: &str, extra: &[&str]) -> Proc {
        let metrics = free_addr();
        let dir = root.join(format!("c{id}"));
        let mut args: Vec<String> = vec![
            "--listen".into(),
            addr.to_string(),
            "--metrics-addr".into(),
            metrics.to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--raft-id".into(),
            id.to_string(),
            "--exit-with-parent".into(),
        ];
        if !seeds.is_empty() {
            args.push("--peers".into());
            args.push(seeds.into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc {
            url: format!("http://{addr}"),
            metrics,
            dir,
            args,
            log: root.join(format!("c{id}.log")),
            child: None,
        }
    }

    /// `--peers` once the address is known (a seed names itself).
    fn with_seeds(mut self, seeds: &str) -> Proc {
        self.args.push("--peers".into());
        self.args.push(seeds.into());
        self
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_dfs-coordinator"))
                .args(&self.args)
                .arg("--insecure")
                .stdin(Stdio::piped())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start dfs-coordinator"),
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, lose the whole data directory, start again: a member on an
    /// empty volume under its old id and address.
    fn wipe_and_restart(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).unwrap();
        self.start();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn client(url: &str) -> Option<Client> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .ok()
        .map(CoordinatorClient::new)
}

async fn status(url: &str) -> Result<ClusterStatus, tonic::Status> {
    let Some(mut c) = client(url).await else {
        return Err(tonic::Status::unavailable("not reachable"));
    };
    c.get_cluster_status(GetClusterStatusRequest {})
        .await
        .map(|r| r.into_inner())
}

async fn add(url: &str, id: u64, address: &str) -> Result<ClusterStatus, tonic::Status> {
    let Some(mut c) = client(url).await else {
        return Err(tonic::Status::unavailable("not reachable"));
    };
    c.add_coordinator(AddCoordinatorRequest {
        id,
        address: address.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn set_voters(url: &str, ids: &[u64]) -> Result<ClusterStatus, tonic::Status> {
    let Some(mut c) = client(url).await else {
        return Err(tonic::Status::unavailable("not reachable"));
    };
    c.set_coordinator_voters(SetCoordinatorVotersRequest {
        voter_ids: ids.to_vec(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn mkdir(url: &str, path: &str) -> Result<(), tonic::Status> {
    let Some(mut c) = client(url).await else {
        return Err(tonic::Status::unavailable("not reachable"));
    };
    c.mkdir(MkdirRequest {
        path: path.into(),
        parents: false,
    })
    .await
    .map(|_| ())
}

/// Whether the member at `url` itself has applied `path` (a stale read).
async fn has(url: &str, path: &str) -> bool {
    let Some(mut c) = client(url).await else {
        return false;
    };
    let mut req = tonic::Request::new(StatRequest { path: path.into() });
    req.metadata_mut().insert(
        dfs_proto::READ_METADATA,
        dfs_proto::STALE_READ.parse().unwrap(),
    );
    c.stat(req).await.is_ok()
}

/// Retries `f` every 100 ms until it gives `Some`, for at most `secs`.
async fn until<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `path` through any of `urls`, retrying until one acknowledges.
async fn write_anywhere(urls: &[&str], path: &str) {
    until(20, &format!("a write of {path}"), || async {
        for u in urls {
            if mkdir(u, path).await.is_ok() {
                return Some(());
            }
        }
        None
    })
    .await
}

/// (voter ids, learner ids) as the leader at one of `urls` reports them,
/// once one of them leads.
async fn membership(urls: &[&str]) -> (Vec<u64>, Vec<u64>, ClusterStatus) {
    until(20, "a leader's status", || async {
        for u in urls {
            if let Ok(s) = status(u).await
                && s.coordinators.iter().any(|m| m.role == "leader")
            {
                let voters = s.coordinators.iter().filter(|m| m.voter).map(|m| m.id);
                let learners = s.coordinators.iter().filter(|m| !m.voter).map(|m| m.id);
                return Some((voters.collect(), learners.collect(), s));
            }
        }
        None
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_grows_by_learners_and_replaces_a_member_on_an_empty_volume() {
    let tmp = tempfile::tempdir().unwrap();
    // A group of one, formed by its only seed.
    let (c1, a1) = Proc::new(tmp.path(), 1, "", &[]);
    let mut c1 = c1.with_seeds(&format!("1=http://{a1}"));
    c1.start();
    let seeds = format!("1=http://{a1}");
    // Two more, told the group exists: they wait to be added.
    let (mut c2, _) = Proc::new(
        tmp.path(),
        2,
        &seeds,
        &["--initial-cluster-state", "existing"],
    );
    let (mut c3, _) = Proc::new(
        tmp.path(),
        3,
        &seeds,
        &["--initial-cluster-state", "existing"],
    );
    c2.start();
    c3.start();
    let (u1, u2, u3) = (c1.url.clone(), c2.url.clone(), c3.url.clone());
    let all = [u1.as_str(), u2.as_str(), u3.as_str()];
    write_anywhere(&[&u1], "/before").await;
    assert_eq!(membership(&[&u1]).await.0, vec![1]);

    // Bad requests are refused with a reason, and change nothing.
    let e = set_voters(&u1, &[1, 2]).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let e = add(&u1, 9, "http://127.0.0.1:1").await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "{e}: it does not answer"
    );
    let e = add(&u1, 3, &u2).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}: c2 answers as 2");
    let e = add(&u1, 2, "ftp://x").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // A coordinator waiting to be added is not ready (the client Service
    // must not route to it); once a member, it is.
    let ready = |p: &Proc| {
        let addr = p.metrics;
        async move {
            dfs_common::http::fetch(addr, "/readyz")
                .await
                .map(|r| r.0)
                .ok()
        }
    };
    assert_eq!(ready(&c2).await, Some(503), "not a member yet");

    // Learners first: they get the log but do not vote.
    add(&u1, 2, &u2).await.unwrap();
    add(&u1, 3, &u3).await.unwrap();
    add(&u1, 3, &u3)
        .await
        .expect("adding the same member again is a no-op");
    let (voters, learners, _) = membership(&[&u1]).await;
    assert_eq!((voters, learners), (vec![1], vec![2, 3]));
    until(10, "learners to apply the log", || async {
        (has(&u2, "/before").await && has(&u3, "/before").await).then_some(())
    })
    .await;
    until(10, "the learner to be ready", || async {
        (ready(&c2).await == Some(200)).then_some(())
    })
    .await;
    // Then promoted, in one change.
    set_voters(&u1, &[1, 2, 3]).await.unwrap();
    // The leader exports each follower's lag.
    let text = until(10, "per-follower lag on the leader", || async {
        let t = dfs_common::http::scrape(c1.metrics).await.ok()?;
        (t.contains("dfs_coordinator_raft_follower_lag_entries{member=\"2\"}")
            && t.contains("dfs_coordinator_raft_follower_lag_entries{member=\"3\"}"))
        .then_some(t)
    })
    .await;
    assert!(text.contains("dfs_coordinator_raft_snapshots_built_total"));
    let (voters, _, s) = membership(&[&u1]).await;
    assert_eq!(voters, vec![1, 2, 3]);
    for m in &s.coordinators {
        assert_ne!(m.incarnation, 0, "member {} is pinned", m.id);
    }

    // The new voters carry the group without its first member.
    c1.kill();
    write_anywhere(&[&u2, &u3], "/without-1").await;
    c1.start();
    until(15, "member 1 to catch up", || async {
        has(&u1, "/without-1").await.then_some(())
    })
    .await;

    // Member 3 comes back on an empty volume: a new incarnation under the
    // old id and address. The group refuses it as member 3 ...
    c3.wipe_and_restart();
    let stale = until(
        20,
        "the leader to see member 3's new incarnation",
        || async {
            let (_, _, s) = membership(&all).await;
            let m3 = s.coordinators.iter().find(|m| m.id == 3)?.clone();
            (m3.reported_incarnation != 0 && m3.reported_incarnation != m3.incarnation)
                .then_some(m3)
        },
    )
    .await;
    write_anywhere(&all, "/while-3-is-new").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !has(&u3, "/while-3-is-new").await && !has(&u3, "/before").await,
        "member 3 on a new volume received the group's log as the old member"
    );
    assert!(
        c3.log_text()
            .contains("removed from the group and added again")
            || c1
                .log_text()
                .contains("removed from the group and added again")
            || c2
                .log_text()
                .contains("removed from the group and added again"),
        "no member said why it refused"
    );
    // ... and it cannot be added again while the old one is a member.
    let leader = leader_url(&all).await;
    let e = add(&leader, 3, &u3).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");

    // Removed, then added again as a new member: it catches up.
    set_voters(&leader, &[1, 2]).await.unwrap();
    let (voters, learners, _) = membership(&all).await;
    assert_eq!((voters, learners), (vec![1, 2], vec![]));
    let leader = leader_url(&all).await;
    add(&leader, 3, &u3).await.unwrap();
    set_voters(&leader, &[1, 2, 3]).await.unwrap();
    let (voters, _, s) = membership(&all).await;
    assert_eq!(voters, vec![1, 2, 3]);
    let m3 = s.coordinators.iter().find(|m| m.id == 3).unwrap();
    assert_ne!(
        m3.incarnation, stale.incarnation,
        "pinned under its new incarnation"
    );
    until(15, "the re-added member to catch up", || async {
        (has(&u3, "/before").await && has(&u3, "/while-3-is-new").await).then_some(())
    })
    .await;
}

/// Three seeds (`--peers` naming all of them) with `extra` flags, started:
/// they form the group by themselves.
fn seeded_group(root: &Path, extra: &[&str]) -> Vec<Proc> {
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let seeds = dfs_testkit::process::peers(&addrs);
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut p = Proc::at(root, i as u64 + 1, *a, &seeds, extra);
            p.start();
            p
        })
        .collect()
}

async fn leader_url(urls: &[&str]) -> String {
    let (_, _, s) = membership(urls).await;
    s.coordinators
        .iter()
        .find(|m| m.role == "leader")
        .unwrap()
        .address
        .clone()
}

/// Three seeds form a group; the lowest one loses its volume and starts
/// again with the same flags (initial state `new`): its peers answer that
/// they are in a group, so it forms no second one, and the group goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_on_an_empty_volume_never_forms_a_second_group() {
    let tmp = tempfile::tempdir().unwrap();
    let mut procs = seeded_group(tmp.path(), &[]);
    let urls: Vec<String> = procs.iter().map(|p| p.url.clone()).collect();
    let all: Vec<&str> = urls.iter().map(String::as_str).collect();
    write_anywhere(&all, "/formed").await;
    let (voters, _, _) = membership(&all).await;
    assert_eq!(voters, vec![1, 2, 3]);

    procs[0].wipe_and_restart();
    until(15, "the wiped seed to refuse to bootstrap", || async {
        procs[0]
            .log_text()
            .contains("not bootstrapping a coordinator group")
            .then_some(())
    })
    .await;
    // The group goes on with 2 and 3; the wiped seed holds nothing.
    write_anywhere(&all[1..], "/after").await;
    let (_, _, s) = membership(&all[1..]).await;
    let leader = s.coordinators.iter().find(|m| m.role == "leader").unwrap();
    assert_ne!(leader.id, 1, "the wiped seed does not lead");
    assert!(!has(&urls[0], "/formed").await);
    let e = mkdir(&urls[0], "/split").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
}

/// The snapshot counters of the member whose metrics are at `p`.
async fn installed_snapshots(p: &Proc) -> f64 {
    let text = dfs_common::http::scrape(p.metrics)
        .await
        .unwrap_or_default();
    dfs_common::http::sample(&text, "dfs_coordinator_raft_snapshots_installed_total").unwrap_or(0.0)
}

/// With a snapshot every 20 entries: a follower stopped while the group
/// moves on past its log comes back and catches up through the leader's
/// snapshot; a member on an empty volume, removed and added again, is
/// brought up through a snapshot too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_behind_the_log_catch_up_through_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut procs = seeded_group(tmp.path(), &["--raft-snapshot-every", "20"]);
    let urls: Vec<String> = procs.iter().map(|p| p.url.clone()).collect();
    let all: Vec<&str> = urls.iter().map(String::as_str).collect();
    write_anywhere(&all, "/first").await;
    let leader = leader_url(&all).await;
    let behind = (0..3).find(|i| urls[*i] != leader).unwrap();
    procs[behind].kill();
    // Far more entries than a snapshot period and the log kept behind it.
    let live: Vec<&str> = (0..3).filter(|i| *i != behind).map(|i| all[i]).collect();
    for k in 0..120 {
        write_anywhere(&live, &format!("/while-down-{k}")).await;
    }
    procs[behind].start();
    until(30, "the stopped follower to catch up", || async {
        has(all[behind], "/while-down-119").await.then_some(())
    })
    .await;
    assert!(
        installed_snapshots(&procs[behind]).await >= 1.0,
        "the follower caught up from the log, not a snapshot: the log was not purged"
    );
    assert!(has(all[behind], "/first").await && has(all[behind], "/while-down-0").await);

    // A member on an empty volume, re-added: brought up by a snapshot.
    let wiped = (0..3)
        .find(|i| urls[*i] != leader && *i != behind)
        .unwrap_or(behind);
    procs[wiped].wipe_and_restart();
    let id = wiped as u64 + 1;
    until(20, "the leader to see the new volume", || async {
        let (_, _, s) = membership(&all).await;
        let m = s.coordinators.iter().find(|m| m.id == id)?.clone();
        (m.reported_incarnation != 0 && m.reported_incarnation != m.incarnation).then_some(())
    })
    .await;
    let keep: Vec<u64> = (1..=3).filter(|i| *i != id).collect();
    set_voters(&leader_url(&all).await, &keep).await.unwrap();
    add(&leader_url(&all).await, id, all[wiped]).await.unwrap();
    set_voters(&leader_url(&all).await, &[1, 2, 3])
        .await
        .unwrap();
    until(30, "the re-added member to catch up", || async {
        has(all[wiped], "/while-down-119").await.then_some(())
    })
    .await;
    assert!(
        installed_snapshots(&procs[wiped]).await >= 1.0,
        "the re-added member replayed the whole log instead of a snapshot"
    );
}
