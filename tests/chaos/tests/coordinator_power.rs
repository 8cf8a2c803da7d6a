//! Scenarios P3 and P6 (issue 19): the coordinator's disk loses power or
//! fills up. The coordinators keep their metadata on lossy disks
//! ([`dfs_chaos::disks`]) that drop everything not made durable when the
//! power goes.
//!
//! P3: the coordinator loses power during a stream of puts
//!     (ConfirmUpload), renames and deletes; then a group of three loses
//!     its leader's power, and then a majority's (two members at once).
//!     Every acknowledged change must be there afterwards, every change
//!     whose answer was lost must be either wholly there or not at all.
//! P6: the coordinator's metadata disk fills up (ENOSPC on every write):
//!     the coordinator stops instead of guessing, no datanode deletes a
//!     replica, and once there is room again it comes back with every
//!     acknowledged file.
//!
//! Rounds: `DFS_CHAOS_POWER_ROUNDS` (default 3); seed `DFS_CHAOS_SEED`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_chaos::disks::{Disks, Fault, Loss, Op};
use dfs_chaos::{Cluster, ClusterOptions, check_status, env_u64, payload, read_all, run, wait_for};
use dfs_client::{Client, ClientError, PutOptions};
use rand::{Rng, SeedableRng};

/// What the test knows about a path.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Known {
    /// Acknowledged: there, with these bytes (seed, len).
    Exists(u64, usize),
    /// Acknowledged gone (deleted or renamed away), or never made.
    Absent,
    /// The answer was lost: there with these bytes, or absent.
    Either(u64, usize),
}

type Ledger = Arc<Mutex<BTreeMap<String, Known>>>;

#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    puts: u64,
    renames: u64,
    deletes: u64,
    failed: u64,
}

/// Puts, renames and deletes under `/w<id>/` until `stop`; every answer
/// goes into the ledger.
fn worker(
    client: Client,
    id: u64,
    seed: u64,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Tally> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tally = Tally::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let mine: Vec<(String, (u64, usize))> = ledger
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| p.starts_with(&format!("/w{id}/")))
                .filter_map(|(p, k)| match k {
                    Known::Exists(s, l) => Some((p.clone(), (*s, *l))),
                    _ => None,
                })
                .collect();
            let choice = rng.random_range(0..100);
            let ok = if mine.is_empty() || choice < 50 {
                let path = format!("/w{id}/f{n}");
                let (s, len) = (
                    seed.wrapping_mul(7919).wrapping_add(n),
                    rng.random_range(1..20_000),
                );
                let r = client
                    .put_bytes(payload(s, len), &path, &PutOptions::default())
                    .await;
                tally.puts += 1;
                let known = if r.is_ok() {
                    Known::Exists(s, len)
                } else {
                    Known::Either(s, len)
                };
                ledger.lock().unwrap().insert(path, known);
                r.is_ok()
            } else if choice < 75 {
                let (from, (s, len)) = mine[rng.random_range(0..mine.len())].clone();
                let to = format!("/w{id}/r{n}");
                let r = client.rename(&from, &to).await;
                tally.renames += 1;
                let mut l = ledger.lock().unwrap();
                if r.is_ok() {
                    l.insert(from, Known::Absent);
                    l.insert(to, Known::Exists(s, len));
                } else {
                    l.insert(from, Known::Either(s, len));
                    l.insert(to, Known::Either(s, len));
                }
                r.is_ok()
            } else {
                let (path, (s, len)) = mine[rng.random_range(0..mine.len())].clone();
                let r = client.delete(&path, false).await;
                tally.deletes += 1;
                let known = match r {
                    Ok(_) => Known::Absent,
                    Err(_) => Known::Either(s, len),
                };
                ledger.lock().unwrap().insert(path, known);
                known == Known::Absent
            };
            if !ok {
                tally.failed += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tally
    })
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::NotFound { .. })
}

/// The namespace against the ledger: acknowledged files whole, acknowledged
/// removals absent, lost answers either way but never half.
async fn verify(client: &Client, ledger: &BTreeMap<String, Known>, scenario: &str) -> usize {
    let mut checked = 0;
    for (path, known) in ledger {
        let stat = client.stat(path).await;
        match (known, stat) {
            (Known::Exists(s, len) | Known::Either(s, len), Ok(_)) => {
                let got = read_all(client, path)
                    .await
                    .unwrap_or_else(|e| panic!("{scenario}: {path}: {e}"));
                assert!(
                    got == payload(*s, *len),
                    "{scenario}: {path} is not whole ({known:?})"
                );
                checked += 1;
            }
            (Known::Exists(..), Err(e)) => panic!("{scenario}: acknowledged {path} is gone: {e}"),
            (Known::Absent, Ok(info)) => {
                panic!("{scenario}: {path} was acknowledged gone, but is there: {info:?}")
            }
            (Known::Absent | Known::Either(..), Err(e)) => {
                assert!(is_not_found(&e), "{scenario}: stat {path}: {e}");
            }
        }
    }
    checked
}

fn member_names(n: usize) -> Vec<String> {
    if n == 1 {
        vec!["coordinator".into()]
    } else {
        (1..=n).map(|i| format!("coordinator-{i}")).collect()
    }
}

async fn start(disks: &Disks, coordinators: usize) -> Cluster {
    Cluster::start(ClusterOptions {
        datanodes: 3,
        coordinators,
        chunk_size: "1MiB".into(),
        coordinator_args: ["--orphan-grace", "2s", "--over-replication-grace", "2s"]
            .map(String::from)
            .to_vec(),
        data_dirs: disks.data_dirs(),
        ..Default::default()
    })
    .await
}

/// Rounds of work with a power cut in the middle of each: of the single
/// coordinator, or in a group of the leader (even rounds) and of the leader
/// and one follower at once (odd rounds: a majority, no quorum until they
/// are back). Returns the ledger, the tally and each cut's victims and
/// dropped bytes.
async fn rounds(
    cluster: &mut Cluster,
    disks: &mut Disks,
    seed: u64,
    rounds: u64,
) -> (BTreeMap<String, Known>, Tally, Vec<(Vec<usize>, Loss)>) {
    let client = cluster.client().await;
    let ledger: Ledger = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut total = Tally::default();
    let mut cuts = Vec::new();
    let group = !cluster.peers.is_empty();
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|w| {
                worker(
                    client.clone(),
                    round * 10 + w,
                    rng.random(),
                    ledger.clone(),
                    stop.clone(),
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        let victims = if !group {
            vec![0]
        } else {
            let leader = cluster.leader().await;
            if round % 2 == 0 {
                vec![leader]
            } else {
                vec![leader, (leader + 1) % 3]
            }
        };
        let dropped = power_cut(cluster, disks, &victims, rng.random());
        println!("round {round}: power cut of coordinator(s) {victims:?}: {dropped:?}");
        cuts.push((victims, dropped));
        // Work goes on through the outage and after it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let t = w.await.expect("worker");
            total.puts += t.puts;
            total.renames += t.renames;
            total.deletes += t.deletes;
            total.failed += t.failed;
        }
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    (ledger, total, cuts)
}

/// Power goes on the coordinator members at `victims` (indexes into
/// [`Cluster::coordinators`]): killed first, then their disks cut, then
/// started again.
fn power_cut(cluster: &mut Cluster, disks: &mut Disks, victims: &[usize], seed: u64) -> Loss {
    let names = member_names(cluster.peers.len() + 1);
    let mut members = cluster.coordinators();
    for &v in victims {
        members[v].kill9();
    }
    let mut dropped = Loss::default();
    for (k, &v) in victims.iter().enumerate() {
        let l = disks
            .disk(&names[v])
            .power_cut_torn(seed + k as u64)
            .expect("power cut");
        dropped.dirty_bytes += l.dirty_bytes;
        dropped.files_reverted += l.files_reverted;
        dropped.dirs_reverted += l.dirs_reverted;
        dropped.inodes_freed += l.inodes_freed;
    }
    for &v in victims {
        members[v].start();
    }
    dropped
}

async fn settle_and_verify(
    cluster: &Cluster,
    ledger: &BTreeMap<String, Known>,
    scenario: &str,
) -> (usize, Duration) {
    let client = cluster.client().await;
    let started = Instant::now();
    wait_for("full redundancy", Duration::from_secs(180), || async {
        check_status(&client.status().await.map_err(|e| e.to_string())?, true)
    })
    .await;
    let took = started.elapsed();
    (verify(&client, ledger, scenario).await, took)
}

#[test]
fn p3_the_coordinator_losing_power_loses_no_acknowledged_change() {
    let mut disks = Disks::mount(&["coordinator"]);
    let n = env_u64("DFS_CHAOS_POWER_ROUNDS", 3);
    let seed = env_u64("DFS_CHAOS_SEED", 19) + 3000;
    run(Duration::from_secs(240 + n * 60), async move {
        let mut cluster = start(&disks, 1).await;
        let (ledger, tally, cuts) = rounds(&mut cluster, &mut disks, seed, n).await;
        let (whole, took) = settle_and_verify(&cluster, &ledger, "p3").await;
        println!(
            "scenario P3 (one coordinator): {n} power cuts (seed {seed}); {} puts, {} renames, {} deletes, {} failed; \
             {} unsynced metadata bytes dropped (names and bytes per cut: {cuts:?}); {whole} files verified whole, {} paths checked, acknowledged changes lost: 0; \
             full redundancy {took:?} after the last round",
            tally.puts,
            tally.renames,
            tally.deletes,
            tally.failed,
            cuts.iter().map(|(_, d)| d.dirty_bytes).sum::<u64>(),
            ledger.len()
        );
        assert!(
            tally.puts > tally.failed,
            "most calls must succeed: {tally:?}"
        );
    });
}

#[test]
fn p3g_a_group_losing_its_leader_or_a_majority_to_power_loss_loses_no_acknowledged_change() {
    let names = member_names(3);
    let mut disks = Disks::mount(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let n = env_u64("DFS_CHAOS_POWER_ROUNDS", 3);
    let seed = env_u64("DFS_CHAOS_SEED", 19) + 4000;
    run(Duration::from_secs(300 + n * 90), async move {
        let mut cluster = start(&disks, 3).await;
        let (ledger, tally, kinds) = rounds(&mut cluster, &mut disks, seed, n * 2).await;
        let (whole, took) = settle_and_verify(&cluster, &ledger, "p3g").await;
        println!(
            "scenario P3 (group of three): {} power cuts of the leader, {} of a majority (seed {seed}); cuts {kinds:?}; \
             {} puts, {} renames, {} deletes, {} failed; {whole} files verified whole, {} paths checked, \
             acknowledged changes lost: 0; full redundancy {took:?} after the last round",
            kinds.iter().filter(|(v, _)| v.len() == 1).count(),
            kinds.iter().filter(|(v, _)| v.len() == 2).count(),
            tally.puts,
            tally.renames,
            tally.deletes,
            tally.failed,
            ledger.len()
        );
        assert!(
            tally.puts > tally.failed,
            "most calls must succeed: {tally:?}"
        );
    });
}

#[test]
fn p6_a_full_metadata_disk_stops_the_coordinator_and_deletes_nothing() {
    let mut disks = Disks::mount(&["coordinator"]);
    run(Duration::from_secs(240), async move {
        let mut cluster = start(&disks, 1).await;
        let client = cluster.client().await;
        let mut acked = BTreeMap::new();
        for i in 0..20u64 {
            let path = format!("/p6/before-{i}");
            client
                .put_bytes(payload(i, 30_000), &path, &PutOptions::default())
                .await
                .unwrap();
            acked.insert(path, Known::Exists(i, 30_000));
        }
        let held: Vec<usize> = cluster
            .datanodes
            .iter()
            .map(|d| d.stored_chunks().len())
            .collect();

        // The disk fills: every write to it fails from now on.
        let full = disks.disk("coordinator").arm(Fault::enospc(Op::Write));
        let mut refused = 0;
        let mut answered_during = 0;
        for i in 0..20u64 {
            let path = format!("/p6/during-{i}");
            match client
                .put_bytes(payload(100 + i, 30_000), &path, &PutOptions::default())
                .await
            {
                Ok(_) => {
                    // Acknowledged: it must have been written before the
                    // disk filled (group commit), so it must survive.
                    answered_during += 1;
                    acked.insert(path, Known::Exists(100 + i, 30_000));
                }
                Err(_) => {
                    refused += 1;
                    acked.insert(path, Known::Either(100 + i, 30_000));
                }
            }
        }
        let fired = disks.disk("coordinator").fired(full);
        assert!(fired > 0, "the coordinator never wrote to its full disk");
        // It stops instead of guessing.
        wait_for(
            "the coordinator to stop on its full disk",
            Duration::from_secs(30),
            || {
                let running = cluster.coordinator.is_running();
                async move {
                    if running {
                        Err("still running".to_string())
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await;
        let status = cluster.coordinator.exit_status();
        // Nothing was deleted while it was failing, nor after.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let still: Vec<usize> = cluster
            .datanodes
            .iter()
            .map(|d| d.stored_chunks().len())
            .collect();
        for (i, (b, a)) in held.iter().zip(&still).enumerate() {
            assert!(
                a >= b,
                "datanode-{i} held {b} chunks before the disk filled and {a} after"
            );
        }
        // Room again (the power did not go: nothing volatile is lost).
        disks.disk("coordinator").clear_faults();
        cluster.coordinator.restart();
        cluster.wait_healthy(3).await;
        let (whole, took) = settle_and_verify(&cluster, &acked, "p6").await;
        println!(
            "scenario P6: ENOSPC on every metadata write: {fired} writes refused; {answered_during} puts answered and \
             {refused} refused while full; the coordinator stopped ({status:?}); datanode chunks before/after {held:?}/{still:?}; \
             {whole} files whole after the restart, acknowledged lost: 0; full redundancy {took:?} after it"
        );
    });
}
