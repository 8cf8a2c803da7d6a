//! A coordinator group of three Raft members, each on its own gRPC server
//! on 127.0.0.1 and its own data directory: it elects a leader, replicates
//! namespace commands to every member, refuses writes on a follower with a
//! hint naming the leader, elects a new leader when the old one stops, and
//! catches the old one up when it comes back on its directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dfs_coordinator::namespace::Command;
use dfs_coordinator::namespace::Namespace;
use dfs_coordinator::raft::member::{Member, default_config};
use dfs_coordinator::raft::network::RaftService;
use dfs_coordinator::raft::state_machine::Plain;
use dfs_coordinator::raft::{Batch, MemberId, Node};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::oneshot;

/// A member and the server it answers on.
struct Running {
    member: Member<Namespace, Plain>,
    addr: String,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops Raft and the server and waits until both are gone (its
    /// database is closed, so the directory can be reopened).
    async fn stop(mut self) -> (MemberId, String, PathBuf) {
        self.member.raft.shutdown().await.expect("raft shutdown");
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.server.await;
        (self.member.id, self.addr, self.dir)
    }
}

async fn start(id: MemberId, dir: &Path, listener: tokio::net::TcpListener) -> Running {
    start_with(id, dir, listener, default_config()).await
}

async fn start_with(
    id: MemberId,
    dir: &Path,
    listener: tokio::net::TcpListener,
    config: openraft::Config,
) -> Running {
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let member = Member::open(
        id,
        dir,
        config,
        Default::default(),
        Plain,
        dfs_common::tls::Security::insecure(),
    )
    .await
    .expect("member starts");
    let (tx, rx) = oneshot::channel::<()>();
    let service = RaftService::server(
        member.raft.clone(),
        member.identity(),
        dfs_common::tls::Security::insecure(),
    );
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("raft server");
    });
    Running {
        member,
        addr,
        dir: dir.to_path_buf(),
        stop: Some(tx),
        server,
    }
}

async fn bind(addr: &str) -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind(addr).await.expect("bind")
}

/// Waits until `f` holds (or fails the test after `secs`).
async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leader all of `members` agree on.
async fn leader(members: &[&Running]) -> MemberId {
    let mut agreed = None;
    eventually(10, "one leader all members agree on", || {
        let seen: Vec<Option<MemberId>> = members
            .iter()
            .map(|m| m.member.raft.metrics().borrow().current_leader)
            .collect();
        agreed = seen[0].filter(|l| seen.iter().all(|s| *s == Some(*l)));
        agreed.is_some_and(|l| members.iter().any(|m| m.member.id == l))
    })
    .await;
    agreed.expect("a leader")
}

fn mkdir(path: &str) -> Command {
    Command::Mkdir {
        path: path.into(),
        parents: false,
        now_ms: 1,
    }
}

fn dirs(r: &Running) -> u64 {
    r.member.state.with_state(|ns| ns.dir_count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_replicate_fail_over_and_catch_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut running = Vec::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = bind("127.0.0.1:0").await;
        let r = start(id, &tmp.path().join(format!("m{id}")), listener).await;
        nodes.insert(
            id,
            Node {
                addr: r.addr.clone(),
                incarnation: r.member.incarnation,
            },
        );
        running.push(r);
    }
    running[0]
        .member
        .raft
        .initialize(nodes)
        .await
        .expect("initialise the group once");
    let all: Vec<&Running> = running.iter().collect();
    let first = leader(&all).await;
    let at = |id: MemberId| running.iter().position(|r| r.member.id == id).unwrap();

    // A write through the leader: one entry, a result per command (the
    // second mkdir of /a fails alone), applied on every member.
    let batch: Batch = vec![mkdir("/a"), mkdir("/a"), mkdir("/a/b")];
    let resp = running[at(first)]
        .member
        .raft
        .client_write(batch)
        .await
        .expect("write through the leader");
    assert_eq!(resp.data.len(), 3);
    assert!(resp.data[0].is_ok() && resp.data[1].is_err() && resp.data[2].is_ok());
    eventually(10, "every member applied the batch", || {
        running.iter().all(|r| dirs(r) == 3)
    })
    .await;

    // A follower does not write: it names the leader and its address.
    let follower = running.iter().find(|r| r.member.id != first).unwrap();
    match follower.member.raft.client_write(vec![mkdir("/no")]).await {
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            assert_eq!(f.leader_id, Some(first));
            assert_eq!(
                f.leader_node.map(|n| n.addr),
                Some(running[at(first)].addr.clone())
            );
        }
        other => panic!("a follower wrote or failed otherwise: {other:?}"),
    }

    // The leader stops: the two others elect one of themselves and write.
    let old = running.remove(at(first));
    let stopped = Instant::now();
    let (old_id, old_addr, old_dir) = old.stop().await;
    let rest: Vec<&Running> = running.iter().collect();
    let second = leader(&rest).await;
    assert_ne!(second, old_id);
    let i = running.iter().position(|r| r.member.id == second).unwrap();
    running[i]
        .member
        .raft
        .client_write(vec![mkdir("/c")])
        .await
        .expect("write through the new leader");
    eprintln!(
        "failover: leader stopped -> first write on the new leader in {:?}",
        stopped.elapsed()
    );
    eventually(10, "both members applied /c", || {
        running.iter().all(|r| dirs(r) == 4)
    })
    .await;

    // The old leader comes back on its directory and address: it rejoins
    // as a follower and catches up to /c.
    let back = start(
        old_id,
        &old_dir,
        bind(old_addr.trim_start_matches("http://")).await,
    )
    .await;
    eventually(15, "the restarted member caught up", || dirs(&back) == 4).await;
    running.push(back);
    let all: Vec<&Running> = running.iter().collect();
    leader(&all).await;
    for r in running {
        r.stop().await;
    }
}

/// A member that lost its volume comes back empty: it is removed and added
/// again as a new member (never restarted as the old one), and the leader,
/// whose log was compacted behind a snapshot, brings it up to date by
/// streaming that snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_wiped_volume_rejoins_through_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    // Snapshot every 10 entries and keep no log behind it.
    let config = || openraft::Config {
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        ..default_config()
    };
    let mut running = Vec::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let r = start_with(
            id,
            &tmp.path().join(format!("m{id}")),
            bind("127.0.0.1:0").await,
            config(),
        )
        .await;
        nodes.insert(
            id,
            Node {
                addr: r.addr.clone(),
                incarnation: r.member.incarnation,
            },
        );
        running.push(r);
    }
    running[0].member.raft.initialize(nodes).await.unwrap();
    let all: Vec<&Running> = running.iter().collect();
    let lead = leader(&all).await;
    let li = running.iter().position(|r| r.member.id == lead).unwrap();
    for i in 0..30 {
        running[li]
            .member
            .raft
            .client_write(vec![mkdir(&format!("/d{i}"))])
            .await
            .unwrap();
    }
    eventually(
        10,
        "a snapshot on the leader, its log purged behind it",
        || {
            let m = running[li].member.raft.metrics().borrow().clone();
            m.snapshot.is_some() && m.purged.is_some_and(|p| p.index >= 10)
        },
    )
    .await;

    // A follower loses its volume.
    let vi = running.iter().position(|r| r.member.id != lead).unwrap();
    let victim = running.remove(vi);
    let (vid, vaddr, vdir) = victim.stop().await;
    std::fs::remove_dir_all(&vdir).unwrap();
    let li = running.iter().position(|r| r.member.id == lead).unwrap();
    let raft = running[li].member.raft.clone();
    // Out of the membership first, then back in under a new id on an empty
    // directory: learner, then voter once it caught up.
    let voters: std::collections::BTreeSet<MemberId> =
        running.iter().map(|r| r.member.id).collect();
    raft.change_membership(voters.clone(), false).await.unwrap();
    let new_id = vid + 10;
    let back = start_with(
        new_id,
        &tmp.path().join("fresh"),
        bind(vaddr.trim_start_matches("http://")).await,
        config(),
    )
    .await;
    raft.add_learner(
        new_id,
        Node {
            addr: back.addr.clone(),
            incarnation: back.member.incarnation,
        },
        true,
    )
    .await
    .expect("the new member catches up as a learner");
    let mut voters = voters;
    voters.insert(new_id);
    raft.change_membership(voters, false).await.unwrap();
    // The root and /d0../d29, from the snapshot (the log behind it is gone).
    eventually(15, "the new member has everything", || dirs(&back) == 31).await;
    assert!(
        back.member.raft.metrics().borrow().snapshot.is_some(),
        "it was brought up by a snapshot"
    );
    running.push(back);
    for r in running {
        r.stop().await;
    }
}
