//! Three `dfs-coordinator` processes on 127.0.0.1 as one group (`--peers`):
//! writes go through the leader (a follower forwards them and names the
//! leader in `dfs-leader` metadata), every member applies what was written,
//! reads are linearizable unless a stale one is asked for, a SIGKILLed
//! leader is replaced and writes resume (the time is printed), and the
//! killed member comes back on its directory and catches up.

use std::process::Command;
use std::time::{Duration, Instant};

use dfs_coordinator::service::LEADER_METADATA;
use dfs_proto::{GetClusterStatusRequest, MkdirRequest, StatRequest};
use dfs_testkit::group::{Member, client};
use tonic::Code;

/// Three members of this crate's `dfs-coordinator` in `dir`.
fn group(dir: &std::path::Path) -> Vec<Member> {
    dfs_testkit::group::group(env!("CARGO_BIN_EXE_dfs-coordinator"), dir)
}

/// Mkdir at `url`: the leader's URL when a follower forwarded the call
/// (its `dfs-leader` answer metadata), `None` when `url` answered itself.
async fn mkdir(url: &str, path: &str) -> Result<Option<String>, tonic::Status> {
    let Some(mut c) = client(url).await else {
        return Err(tonic::Status::unavailable("not reachable"));
    };
    let answer = c
        .mkdir(MkdirRequest {
            path: path.into(),
            parents: false,
        })
        .await?;
    Ok(answer
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string))
}

/// Stat at `url`: linearizable (answered by the leader), or `stale`
/// (answered by `url` from what it has applied).
async fn stat(url: &str, path: &str, stale: bool) -> Result<(), tonic::Status> {
    let Some(mut c) = client(url).await else {
        return Err(tonic::Status::unavailable("not reachable"));
    };
    let mut req = tonic::Request::new(StatRequest { path: path.into() });
    if stale {
        req.metadata_mut().insert(
            dfs_proto::READ_METADATA,
            dfs_proto::STALE_READ.parse().unwrap(),
        );
    }
    c.stat(req).await.map(|_| ())
}

/// Whether the member at `url` itself has applied `path`.
async fn exists(url: &str, path: &str) -> bool {
    stat(url, path, true).await.is_ok()
}

/// Writes `path` through any member; returns the leader's index once the
/// write was acknowledged.
async fn write_somewhere(members: &[Member], path: &str, secs: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        for (i, m) in members.iter().enumerate() {
            if !m.is_running() {
                continue;
            }
            if let Ok(hint) = mkdir(&m.url, path).await {
                return match hint {
                    None => i,
                    Some(url) => members.iter().position(|m| m.url == url).unwrap(),
                };
            }
        }
        assert!(
            Instant::now() < deadline,
            "no member accepted a write of {path} within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn eventually_exists(url: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !exists(url, path).await {
        assert!(Instant::now() < deadline, "{path} never appeared at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_processes_writes_through_its_leader_and_survives_its_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = group(tmp.path());
    let leader = write_somewhere(&members, "/a", 20).await;

    // A follower forwards writes to the leader and names it.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let hint = mkdir(&members[follower].url, "/forwarded").await.unwrap();
    assert_eq!(hint.as_deref(), Some(members[leader].url.as_str()));
    assert_eq!(mkdir(&members[leader].url, "/a/b").await.unwrap(), None);

    // The status names the group: the leader answers for everyone.
    let mut c = client(&members[leader].url).await.unwrap();
    let status = c
        .get_cluster_status(GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let roles: Vec<(u64, &str, bool)> = status
        .coordinators
        .iter()
        .map(|m| (m.id, m.role.as_str(), m.answering))
        .collect();
    assert_eq!(roles.len(), 3, "{roles:?}");
    for (id, role, answering) in &roles {
        let is_leader = *id == members[leader].id;
        assert_eq!(
            *role,
            if is_leader { "leader" } else { "follower" },
            "{roles:?}"
        );
        assert_eq!(*answering, is_leader);
    }
    let me = status.coordinators.iter().find(|m| m.answering).unwrap();
    assert!(me.term >= 1 && me.applied_index >= 2, "{me:?}");

    // The client library, given a follower first, goes to the leader.
    let via = dfs_client::Client::connect(dfs_client::ClientConfig::new(format!(
        "{},{}",
        members[follower].url, members[leader].url
    )))
    .await
    .unwrap();
    assert_eq!(via.config().coordinator, members[leader].url);
    via.mkdir("/via-client", false).await.unwrap();
    // Every member applies what the group committed.
    for m in &members {
        eventually_exists(&m.url, "/a/b").await;
    }

    // SIGKILL the leader: the others elect one of themselves.
    let old = members[leader].id;
    members[leader].kill();
    let killed = Instant::now();
    let next = write_somewhere(&members, "/c", 20).await;
    eprintln!(
        "failover: leader {old} SIGKILLed -> first acknowledged write on member {} in {:?}",
        members[next].id,
        killed.elapsed()
    );
    assert_ne!(next, leader);
    assert!(
        exists(&members[next].url, "/a/b").await,
        "nothing acknowledged is lost"
    );

    // The killed member restarts on its directory and catches up.
    members[leader].spawn();
    eventually_exists(&members[leader].url, "/c").await;
    for m in &members {
        assert!(exists(&m.url, "/a").await);
    }
    let logs: Vec<String> = members
        .iter()
        .map(|m| std::fs::read_to_string(&m.log).unwrap_or_default())
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("coordinator group bootstrapped")),
        "the group was bootstrapped once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_linearizable_unless_a_stale_one_is_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = group(tmp.path());
    let leader = write_somewhere(&members, "/a", 20).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // Written through one follower, read at once through the other: the
    // read is answered after the write, whatever the second follower has
    // applied yet.
    for n in 0..20 {
        let path = format!("/a/{n}");
        mkdir(&members[followers[0]].url, &path).await.unwrap();
        stat(&members[followers[1]].url, &path, false)
            .await
            .unwrap_or_else(|e| panic!("{path} written but not read: {e:?}"));
    }

    // A leader cut off from both followers cannot confirm that it still
    // leads: it refuses linearizable reads, and answers stale ones from
    // what it has.
    for f in &followers {
        members[*f].kill();
    }
    // Within its lease (400 ms after the last round a quorum confirmed) it
    // may still answer: no other leader can be elected before the
    // followers' own lease (1 s) runs out. After it, it must refuse.
    tokio::time::sleep(dfs_coordinator::service::leader::READ_LEASE * 2).await;
    let url = members[leader].url.clone();
    stat(&url, "/a/19", true).await.unwrap();
    let err = stat(&url, "/a/19", false).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        ),
        "a leader without a quorum answered a linearizable read: {err:?}"
    );
    // The client library asks for the same with `stale_reads`.
    let mut config = dfs_client::ClientConfig::new(url.clone());
    config.request_timeout = Duration::from_secs(8);
    let linearizable = dfs_client::Client::connect(config.clone()).await.unwrap();
    assert!(linearizable.stat("/a/19").await.is_err());
    config.stale_reads = true;
    let stale = dfs_client::Client::connect(config).await.unwrap();
    assert_eq!(stale.stat("/a/19").await.unwrap().path, "/a/19");
}

/// Rename at `url` carrying `request_id` (none: a plain call).
async fn rename(
    url: &str,
    source: &str,
    destination: &str,
    request_id: Option<&str>,
) -> Result<dfs_proto::FileInfo, tonic::Status> {
    let Some(mut c) = client(url).await else {
        return Err(tonic::Status::unavailable("not reachable"));
    };
    let mut req = tonic::Request::new(dfs_proto::RenameRequest {
        source: source.into(),
        destination: destination.into(),
    });
    if let Some(id) = request_id {
        req.metadata_mut()
            .insert(dfs_proto::REQUEST_ID_METADATA, id.parse().unwrap());
    }
    c.rename(req).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_a_failover_is_applied_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = group(tmp.path());
    let leader = write_somewhere(&members, "/src", 20).await;
    write_somewhere(&members, "/other", 20).await;
    let first = rename(&members[leader].url, "/src", "/dst", Some("rename-1"))
        .await
        .unwrap();

    // The answer is "lost": the leader dies, the caller retries elsewhere.
    members[leader].kill();
    let next = write_somewhere(&members, "/after", 20).await;
    let again = rename(&members[next].url, "/src", "/dst", Some("rename-1"))
        .await
        .expect("the retry answers as the first call did");
    assert_eq!(again, first);
    // Without its id the same call is a new one: the source is gone.
    let plain = rename(&members[next].url, "/src", "/dst", None).await;
    assert_eq!(plain.unwrap_err().code(), Code::NotFound);
    // An id is validated.
    let bad = rename(&members[next].url, "/other", "/x", Some("not ok!")).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fails_over_to_the_new_leader_and_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let mut members = group(tmp.path());
    let leader = write_somewhere(&members, "/w", 20).await;
    let all = members
        .iter()
        .map(|m| m.url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let client = dfs_client::Client::connect(dfs_client::ClientConfig::new(all))
        .await
        .unwrap();
    assert_eq!(client.config().coordinator, members[leader].url);

    // Writes from two tasks; the leader is SIGKILLed in the middle.
    let client = std::sync::Arc::new(client);
    let writer = |name: &'static str| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..60 {
                let path = format!("/w/{name}-{i}");
                client
                    .mkdir(&path, false)
                    .await
                    .unwrap_or_else(|e| panic!("{path}: the client did not fail over: {e}"));
                let moved = format!("{path}-moved");
                client.rename(&path, &moved).await.unwrap();
                acknowledged.push(moved);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acknowledged
        })
    };
    let (a, b) = (writer("a"), writer("b"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    members[leader].kill();
    let acknowledged = [a.await.unwrap(), b.await.unwrap()].concat();
    assert_eq!(acknowledged.len(), 120);
    for path in &acknowledged {
        assert!(
            client.stat(path).await.is_ok(),
            "{path} acknowledged, then lost"
        );
    }
    assert_eq!(
        client.list("/w").await.unwrap().len(),
        120,
        "nothing applied twice or half"
    );
}

/// Sends `signal` (e.g. "STOP", "CONT") to a member's process.
fn signal(m: &Member, signal: &str) {
    let pid = m.pid().expect("running");
    let ok = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// A leader frozen (SIGSTOP: a long GC pause, a stalled VM) while the others
/// elect a new one, then thawed: it still believes it leads, but nothing it
/// is asked to do commits on its own, it rejoins as a follower and
/// converges on what the new leader committed. No split brain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_thaws_as_a_follower_and_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let members = group(tmp.path());
    let old = write_somewhere(&members, "/before", 20).await;
    signal(&members[old], "STOP");
    // The others elect a leader and acknowledge writes without it.
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        let mut found = None;
        for &i in &others {
            if let Ok(hint) = mkdir(&members[i].url, "/during").await {
                found = Some(match hint {
                    None => i,
                    Some(url) => members.iter().position(|m| m.url == url).unwrap(),
                });
                break;
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader while the old one was frozen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(new, old, "a frozen member led a write");

    // Thawed, the old leader is asked for a write at once.
    signal(&members[old], "CONT");
    let thawed = mkdir(&members[old].url, "/thawed").await;
    // It rejoins as a follower and converges on the new leader's writes.
    eventually_exists(&members[old].url, "/during").await;
    let mut c = client(&members[new].url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = c
            .get_cluster_status(GetClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let leaders: Vec<u64> = status
            .coordinators
            .iter()
            .filter(|m| m.role == "leader")
            .map(|m| m.id)
            .collect();
        assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
        let old_role = status
            .coordinators
            .iter()
            .find(|m| m.id == members[old].id)
            .map(|m| m.role.clone());
        if leaders == [members[new].id] && old_role.as_deref() == Some("follower") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the thawed member never became a follower: {:?}",
            status.coordinators
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the thawed member acknowledged, the group has (it went through
    // the new leader); what it refused, nobody applied.
    let applied = stat(&members[new].url, "/thawed", false).await.is_ok();
    assert_eq!(
        thawed.is_ok(),
        applied,
        "the thawed member answered {thawed:?}, the group has /thawed: {applied}"
    );
    for m in &members {
        eventually_exists(&m.url, "/before").await;
    }
}
