//! A network partition of a coordinator group, on real processes in network
//! namespaces the test creates (`dfs_testkit::netns`): the leader is cut
//! off from both followers (both directions) while a client still reaches
//! every member. The minority side acknowledges no write, the majority elects
//! a new leader and acknowledges writes, and after healing the old leader
//! rejoins as a follower, converges, and nothing it was sent while cut off
//! exists anywhere (no split brain). Needs root (`ip netns`), as CI has.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::{ClusterStatus, GetClusterStatusRequest, MkdirRequest, StatRequest};
use dfs_testkit::netns::Net;

const CLIENT: usize = 4;

struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn url(net: &Net, i: usize) -> String {
    format!("http://{}:7000", net.addr(i))
}

async fn connect(
    url: &str,
    timeout: Duration,
) -> Option<CoordinatorClient<tonic::transport::Channel>> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_millis(300))
        .timeout(timeout)
        .connect()
        .await
        .ok()
        .map(CoordinatorClient::new)
}

async fn mkdir(url: &str, path: &str, timeout: Duration) -> Result<(), tonic::Status> {
    let Some(mut c) = connect(url, timeout).await else {
        return Err(tonic::Status::unavailable("unreachable"));
    };
    c.mkdir(MkdirRequest {
        path: path.into(),
        parents: false,
    })
    .await
    .map(|_| ())
}

/// The status as the member at `url` itself sees the group (a stale read:
/// not forwarded to the leader).
async fn status(url: &str) -> Option<ClusterStatus> {
    let mut c = connect(url, Duration::from_secs(2)).await?;
    let mut req = tonic::Request::new(GetClusterStatusRequest {});
    req.metadata_mut().insert(
        dfs_proto::READ_METADATA,
        dfs_proto::STALE_READ.parse().unwrap(),
    );
    c.get_cluster_status(req).await.ok().map(|r| r.into_inner())
}

/// Whether the member at `url` itself has applied `path`.
async fn has(url: &str, path: &str) -> Option<bool> {
    let mut c = connect(url, Duration::from_secs(2)).await?;
    let mut req = tonic::Request::new(StatRequest { path: path.into() });
    req.metadata_mut().insert(
        dfs_proto::READ_METADATA,
        dfs_proto::STALE_READ.parse().unwrap(),
    );
    match c.stat(req).await {
        Ok(_) => Some(true),
        Err(s) if s.code() == tonic::Code::NotFound => Some(false),
        Err(_) => None,
    }
}

/// The role member `url` gives itself, and the leader it knows.
async fn own_view(url: &str) -> Option<(String, Option<u64>)> {
    let s = status(url).await?;
    let me = s.coordinators.iter().find(|m| m.answering)?;
    let leader = s
        .coordinators
        .iter()
        .find(|m| m.role == "leader")
        .map(|m| m.id);
    Some((me.role.clone(), leader))
}

#[test]
fn a_leader_cut_off_from_its_followers_acknowledges_nothing_and_rejoins_as_a_follower() {
    let net = Net::new(4).expect("network namespaces (root) are needed for the partition test");
    let tmp = tempfile::tempdir().unwrap();
    let peers = (1..=3)
        .map(|i| format!("{i}={}", url(&net, i)))
        .collect::<Vec<_>>()
        .join(",");
    let _members: Vec<Member> = (1..=3)
        .map(|i| {
            let log = std::fs::File::create(tmp.path().join(format!("c{i}.log"))).unwrap();
            let child = net
                .command(i, env!("CARGO_BIN_EXE_dfs-coordinator"))
                .args(["--listen", &format!("{}:7000", net.addr(i))])
                .args(["--metrics-addr", &format!("{}:9100", net.addr(i))])
                .arg("--data-dir")
                .arg(tmp.path().join(format!("c{i}")))
                .args(["--raft-id", &i.to_string(), "--peers", &peers])
                .arg("--exit-with-parent")
                .arg("--insecure")
                .stdin(Stdio::piped())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start dfs-coordinator in its namespace");
            Member(child)
        })
        .collect();
    let urls: Vec<String> = (1..=3).map(|i| url(&net, i)).collect();

    // A leader, and a first write through it.
    let u = urls.clone();
    let leader: usize = net.run_in(CLIENT, move || async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for uu in &u {
                if let Some((_, Some(l))) = own_view(uu).await
                    && mkdir(&u[l as usize - 1], "/before", Duration::from_secs(3))
                        .await
                        .is_ok()
                {
                    return l as usize;
                }
            }
            assert!(Instant::now() < deadline, "no leader in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let followers: Vec<usize> = (1..=3).filter(|i| *i != leader).collect();

    // Cut the leader from both followers; the client still reaches all.
    for f in &followers {
        net.cut(leader, *f).unwrap();
    }
    let cut_at = Instant::now();

    // Minority: writes sent to the old leader from now on. Majority: writes
    // through the followers, until one is acknowledged (a new leader).
    let (lu, fu) = (
        urls[leader - 1].clone(),
        followers
            .iter()
            .map(|f| urls[f - 1].clone())
            .collect::<Vec<_>>(),
    );
    let (minority_acked, minority_tried, majority_after) = net.run_in(CLIENT, move || async move {
        let minority = tokio::spawn({
            let lu = lu.clone();
            async move {
                let mut acked = Vec::new();
                let mut tried = Vec::new();
                let until = Instant::now() + Duration::from_secs(5);
                let mut k = 0;
                while Instant::now() < until {
                    let p = format!("/minority-{k}");
                    k += 1;
                    if mkdir(&lu, &p, Duration::from_millis(1500)).await.is_ok() {
                        acked.push(p.clone());
                    }
                    tried.push(p);
                }
                (acked, tried)
            }
        });
        let mut majority_after = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        'outer: while Instant::now() < deadline {
            for f in &fu {
                if mkdir(f, "/majority", Duration::from_secs(2)).await.is_ok() {
                    majority_after = Some(cut_at.elapsed());
                    break 'outer;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (acked, tried) = minority.await.unwrap();
        (acked, tried, majority_after)
    });
    assert!(
        minority_acked.is_empty(),
        "the leader cut off from its group acknowledged writes: {minority_acked:?}"
    );
    let majority_after = majority_after.expect("the majority side acknowledged no write in 20 s");
    eprintln!(
        "partition: majority's first acknowledged write {:.2} s after the cut; {} writes sent to the cut-off leader, 0 acknowledged",
        majority_after.as_secs_f64(),
        minority_tried.len()
    );

    // Heal: the old leader rejoins as a follower of the one new leader, has
    // the majority's write, and none of what it was sent while cut off.
    for f in &followers {
        net.heal(leader, *f).unwrap();
    }
    let u = urls.clone();
    let old = urls[leader - 1].clone();
    net.run_in(CLIENT, move || async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut views = Vec::new();
            for uu in &u {
                views.push(own_view(uu).await);
            }
            let leaders: Vec<Option<u64>> =
                views.iter().map(|v| v.as_ref().and_then(|v| v.1)).collect();
            let one = leaders.iter().all(|l| l.is_some() && *l == leaders[0]);
            let old_role = views[leader - 1].as_ref().map(|v| v.0.clone());
            if one
                && leaders[0] != Some(leader as u64)
                && old_role.as_deref() == Some("follower")
                && has(&old, "/majority").await == Some(true)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the group did not converge after healing: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for uu in &u {
            for p in &minority_tried {
                assert_eq!(
                    has(uu, p).await,
                    Some(false),
                    "{p}, sent only to the cut-off leader, exists at {uu}"
                );
            }
        }
    });
}
