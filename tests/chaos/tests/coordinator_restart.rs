//! Scenario 3: the coordinator SIGKILLed during a stream of uploads and
//! restarted. Every confirmed file is readable and byte-identical, unconfirmed
//! uploads are cleaned up (their chunks deleted from the datanodes), and the
//! datanodes re-register on their own. Run against one coordinator and
//! against a group of three, whose leader is the one killed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_chaos::{Cluster, ClusterOptions, payload, read_all, run, wait_for};
use dfs_client::PutOptions;

#[test]
fn coordinator_killed_during_uploads_loses_nothing_confirmed() {
    scenario(1, Disruption::KillLeader);
}

#[test]
fn group_leader_killed_during_uploads_loses_nothing_confirmed() {
    scenario(3, Disruption::KillLeader);
}

/// Every member of a group of three restarted in turn (SIGKILL, start,
/// caught up) while uploads run: a rolling restart loses nothing.
#[test]
fn a_rolling_restart_of_three_coordinators_under_load_loses_nothing() {
    scenario(3, Disruption::RollAll);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Disruption {
    KillLeader,
    RollAll,
}

fn scenario(coordinators: usize, disruption: Disruption) {
    run(Duration::from_secs(240), async {
        let mut cluster = Cluster::start(ClusterOptions {
            coordinators,
            chunk_size: "1MiB".into(),
            coordinator_args: vec![
                "--upload-ttl".into(),
                "5s".into(),
                "--orphan-grace".into(),
                "2s".into(),
            ],
            ..Default::default()
        })
        .await;
        let client = cluster.client().await;
        client.mkdir("/s3", true).await.unwrap();
        let pids: Vec<u32> = cluster.datanodes.iter().map(|d| d.pid().unwrap()).collect();

        // (path → seed, len) of every attempted and every confirmed upload.
        let attempted = Arc::new(Mutex::new(BTreeMap::<String, (u64, usize)>::new()));
        let confirmed = Arc::new(Mutex::new(BTreeMap::<String, (u64, usize)>::new()));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3u64 {
            let (client, attempted, confirmed, failures, stop) = (
                client.clone(),
                attempted.clone(),
                confirmed.clone(),
                failures.clone(),
                stop.clone(),
            );
            writers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let seed = w * 1_000_000 + n;
                    let len = (64 << 10) + (seed as usize * 7919 % (3 << 20));
                    let path = format!("/s3/w{w}-{n}.bin");
                    attempted.lock().unwrap().insert(path.clone(), (seed, len));
                    match client
                        .put_bytes(payload(seed, len), &path, &PutOptions::default())
                        .await
                    {
                        Ok(info) => {
                            assert_eq!(info.size as usize, len);
                            confirmed.lock().unwrap().insert(path, (seed, len));
                        }
                        Err(e) => {
                            failures.lock().unwrap().push(e.to_string());
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        let confirmed_count = || confirmed.lock().unwrap().len();
        wait_for(
            "some confirmed uploads",
            Duration::from_secs(60),
            || async {
                if confirmed_count() >= 6 {
                    Ok(())
                } else {
                    Err(format!("{}", confirmed_count()))
                }
            },
        )
        .await;
        let before_kill = confirmed_count();
        match disruption {
            Disruption::KillLeader => {
                let leader = cluster.leader().await;
                cluster.coordinators()[leader].kill9();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                cluster.coordinators()[leader].start();
            }
            Disruption::RollAll => {
                for i in 0..coordinators {
                    cluster.coordinators()[i].kill9();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    cluster.coordinators()[i].start();
                    // The next goes once the group leads again and this
                    // member has caught up (as the operator's roll waits).
                    let client = cluster.client().await;
                    wait_for(
                        "the restarted member to catch up",
                        Duration::from_secs(60),
                        || async {
                            let s = client.status().await.map_err(|e| e.to_string())?;
                            let m = s
                                .coordinators
                                .iter()
                                .find(|m| m.id == i as u64 + 1)
                                .ok_or("member missing")?;
                            let led = s.coordinators.iter().any(|m| m.role == "leader");
                            if led && m.lag <= 10 && m.reported_incarnation != 0 {
                                Ok(())
                            } else {
                                Err(format!("{m:?}"))
                            }
                        },
                    )
                    .await;
                }
            }
        }
        // The datanodes were not touched: they re-register by themselves.
        cluster.wait_healthy(3).await;
        for (d, pid) in cluster.datanodes.iter_mut().zip(&pids) {
            assert!(
                d.is_running() && d.pid() == Some(*pid),
                "{} was restarted",
                d.name
            );
        }
        let after_restart = confirmed_count();
        wait_for(
            "uploads after the restart",
            Duration::from_secs(60),
            || async {
                if confirmed_count() >= after_restart + 6 {
                    Ok(())
                } else {
                    Err(format!("{}", confirmed_count()))
                }
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("writer finished")
                .expect("writer task");
        }
        let confirmed = confirmed.lock().unwrap().clone();
        let attempted = attempted.lock().unwrap().clone();
        let failures = failures.lock().unwrap().clone();
        println!(
            "scenario 3 ({coordinators} coordinators): {} uploads attempted, {} confirmed ({before_kill} before the kill), {} failed while the coordinator was down; e.g. {:?}",
            attempted.len(),
            confirmed.len(),
            failures.len(),
            failures.first()
        );
        // Failures while the coordinator is down say so, with its address
        // and the cause; other failures name the call that failed.
        let kinds: std::collections::BTreeSet<String> = failures
            .iter()
            .map(|f| f.chars().filter(|c| !c.is_ascii_digit()).collect())
            .collect();
        println!("scenario 3: distinct errors: {kinds:?}");
        for f in &failures {
            // The address, then the cause (refused, reset, ...).
            let unreachable = f
                .strip_prefix("cannot reach the coordinator at http://127.0.0.1:")
                .and_then(|rest| rest.split_once(": "))
                .is_some_and(|(_port, cause)| !cause.trim().is_empty());
            assert!(
                unreachable || f.contains("failed") || f.contains("datanodes"),
                "unclear error: {f}"
            );
            assert!(!f.contains("source: "), "no debug dump in errors: {f}");
        }

        // Every confirmed file reads back byte-identical.
        for (path, (seed, len)) in &confirmed {
            let got = read_all(&client, path).await.unwrap();
            assert!(got == payload(*seed, *len), "{path} differs");
        }
        // Files present but not confirmed (the confirm committed, its answer
        // was lost) are whole files of what was written.
        let listed = client.list("/s3").await.unwrap();
        for e in &listed {
            if !confirmed.contains_key(&e.path) {
                let (seed, len) = attempted[&e.path];
                let got = read_all(&client, &e.path).await.unwrap();
                assert!(got == payload(seed, len), "{} is a partial file", e.path);
            }
        }
        // Unconfirmed uploads are cleaned up: eventually the datanodes hold
        // exactly the replicas of the listed files, and no temp files.
        let expected: u64 = listed.iter().map(|e| e.chunk_count * 3).sum();
        let surplus = std::cell::Cell::new(0i64);
        wait_for(
            "orphaned chunks to be deleted",
            Duration::from_secs(60),
            || async {
                let on_disk: usize = cluster
                    .datanodes
                    .iter()
                    .map(|d| d.stored_chunks().len())
                    .sum();
                surplus.set(surplus.get().max(on_disk as i64 - expected as i64));
                let temps = cluster.temp_files();
                if on_disk as u64 == expected && temps.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{on_disk} stored chunks on disk, want {expected}; temp files {temps:?}"
                    ))
                }
            },
        )
        .await;
        println!(
            "scenario 3: {} files listed, {expected} replicas on disk; {} orphaned replicas of unconfirmed uploads were deleted; no temp files",
            listed.len(),
            surplus.get()
        );
    });
}
