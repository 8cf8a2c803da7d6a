//! Scenarios P1 and P2 (issue 19): datanodes lose power. Every datanode
//! keeps its data on a lossy disk ([`dfs_chaos::disks`]) that, when the
//! power goes, drops everything the datanode had not made durable (fsync
//! of the file, fsync of the directory for names) — which a SIGKILL never
//! shows, since a killed process leaves its page cache behind.
//!
//! P1: one datanode at a time loses power at a random moment of large and
//!     small uploads, for several seeded rounds.
//! P2: every datanode loses power at once while small files are being
//!     acknowledged; the small-chunk volumes' unsynced tails are torn (each
//!     unsynced 4 KiB page reached the disk or not, by a seeded coin).
//!
//! Both assert that every acknowledged file reads back byte-identical,
//! that a put that failed is either absent or whole, and that the cluster
//! returns to full redundancy.
//!
//! Rounds: `DFS_CHAOS_POWER_ROUNDS` (default 3 each); seed:
//! `DFS_CHAOS_SEED` (default 19). `scripts/chaos-long.sh` runs many more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_chaos::disks::Disks;
use dfs_chaos::{
    Cluster, ClusterOptions, Service, check_status, env_u64, payload, read_all, run, wait_for,
};
use dfs_client::{Client, PutOptions};
use rand::{Rng, SeedableRng};

const DATANODES: usize = 4;

fn names() -> Vec<String> {
    (0..DATANODES).map(|i| format!("datanode-{i}")).collect()
}

fn disks() -> Disks {
    let names = names();
    Disks::mount(&names.iter().map(String::as_str).collect::<Vec<_>>())
}

async fn start(disks: &Disks) -> Cluster {
    Cluster::start(ClusterOptions {
        datanodes: DATANODES,
        chunk_size: "1MiB".into(),
        coordinator_args: ["--over-replication-grace", "2s", "--orphan-grace", "2s"]
            .map(String::from)
            .to_vec(),
        data_dirs: disks.data_dirs(),
        ..Default::default()
    })
    .await
}

/// What the writers were told: acknowledged puts must be there, whole;
/// failed ones may be there, whole, or absent.
#[derive(Default, Debug)]
struct Ledger {
    acked: BTreeMap<String, (u64, usize)>,
    failed: BTreeMap<String, (u64, usize)>,
}

/// Puts files of `sizes()` bytes under `/prefix/` until `stop`.
fn writer(
    client: Client,
    prefix: String,
    seed: u64,
    sizes: fn(&mut rand::rngs::StdRng) -> usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let path = format!("/{prefix}/{n}");
            let len = sizes(&mut rng);
            let content_seed = seed.wrapping_mul(1_000_003).wrapping_add(n);
            let result = client
                .put_bytes(payload(content_seed, len), &path, &PutOptions::default())
                .await;
            let mut l = ledger.lock().unwrap();
            match result {
                Ok(info) => {
                    assert_eq!(info.size, len as u64);
                    l.acked.insert(path, (content_seed, len));
                }
                Err(_) => {
                    l.failed.insert(path, (content_seed, len));
                }
            }
        }
    })
}

/// The chunks the coordinator lists on each node for the files
/// acknowledged so far: the replicas each node acknowledged as durable.
async fn listed(client: &Client, ledger: &Mutex<Ledger>) -> BTreeMap<String, BTreeSet<String>> {
    use futures::StreamExt;
    let paths: Vec<String> = ledger.lock().unwrap().acked.keys().cloned().collect();
    let maps: Vec<_> = futures::stream::iter(paths)
        .map(|path| async move {
            let map = client
                .chunk_map(&path)
                .await
                .unwrap_or_else(|e| panic!("chunk map of {path}: {e}"));
            map.chunks
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in maps.into_iter().flatten() {
        for r in &c.replicas {
            out.entry(r.node_id.to_string())
                .or_default()
                .insert(c.chunk_id.to_string());
        }
    }
    out
}

/// After its power came back, a datanode's disk still holds every replica
/// it had acknowledged (read off the disk before the node restarts).
fn assert_kept(dn: &Service, name: &str, listed: &BTreeSet<String>) {
    let stored: BTreeSet<String> = dn.stored_chunks().into_iter().collect();
    let lost: Vec<&String> = listed.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{name} lost {} of the {} replicas it had acknowledged when its power went: {lost:?}",
        lost.len(),
        listed.len()
    );
}

fn small(rng: &mut rand::rngs::StdRng) -> usize {
    rng.random_range(1..=64 * 1024)
}

fn large(rng: &mut rand::rngs::StdRng) -> usize {
    rng.random_range(3 << 20..=6 << 20)
}

/// Every acknowledged file byte-identical, every failed one absent or
/// whole; then full redundancy. Returns the time to full redundancy.
async fn verify(client: &Client, ledger: &Ledger, scenario: &str) -> Duration {
    let started = Instant::now();
    wait_for("full redundancy", Duration::from_secs(180), || async {
        check_status(&client.status().await.map_err(|e| e.to_string())?, true)
    })
    .await;
    let redundant_after = started.elapsed();
    for (path, (seed, len)) in &ledger.acked {
        let got = read_all(client, path)
            .await
            .unwrap_or_else(|e| panic!("{scenario}: acknowledged {path}: {e}"));
        assert!(
            got == payload(*seed, *len),
            "{scenario}: {path} is not the bytes acknowledged"
        );
    }
    for (path, (seed, len)) in &ledger.failed {
        if client.stat(path).await.is_ok() {
            let got = read_all(client, path)
                .await
                .unwrap_or_else(|e| panic!("{scenario}: listed {path}: {e}"));
            assert!(
                got == payload(*seed, *len),
                "{scenario}: {path}, whose put failed, is visible but not whole"
            );
        }
    }
    redundant_after
}

#[test]
fn p1_a_datanode_losing_power_mid_upload_loses_no_acknowledged_byte() {
    let mut disks = disks();
    let rounds = env_u64("DFS_CHAOS_POWER_ROUNDS", 3);
    let seed = env_u64("DFS_CHAOS_SEED", 19);
    run(Duration::from_secs(240 + rounds * 60), async move {
        let mut cluster = start(&disks).await;
        let client = cluster.client().await;
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let first_victim = rng.random_range(0..DATANODES);
        let mut lost_bytes = 0;
        for round in 0..rounds {
            let stop = Arc::new(AtomicBool::new(false));
            let writers = [
                writer(
                    client.clone(),
                    format!("p1/{round}/large"),
                    rng.random(),
                    large,
                    ledger.clone(),
                    stop.clone(),
                ),
                writer(
                    client.clone(),
                    format!("p1/{round}/small-a"),
                    rng.random(),
                    small,
                    ledger.clone(),
                    stop.clone(),
                ),
                writer(
                    client.clone(),
                    format!("p1/{round}/small-b"),
                    rng.random(),
                    small,
                    ledger.clone(),
                    stop.clone(),
                ),
            ];
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
            // Every node in turn, from a random first one.
            let victim = (first_victim + round as usize) % DATANODES;
            let name = format!("datanode-{victim}");
            let node_id = cluster.datanodes[victim].node_id().expect("node id");
            let listed = listed(&client, &ledger)
                .await
                .remove(&node_id)
                .unwrap_or_default();
            cluster.datanodes[victim].kill9();
            let loss = disks.disk(&name).power_cut().expect("power cut");
            assert_kept(&cluster.datanodes[victim], &name, &listed);
            lost_bytes += loss.dirty_bytes;
            cluster.datanodes[victim].start();
            println!("p1 round {round}: {name} lost power: {loss:?}");
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..1000))).await;
            stop.store(true, Ordering::Relaxed);
            for w in writers {
                w.await.expect("writer");
            }
            cluster.wait_healthy(DATANODES).await;
        }
        let ledger = std::mem::take(&mut *ledger.lock().unwrap());
        let took = verify(&client, &ledger, "p1").await;
        println!(
            "scenario P1: {rounds} rounds (seed {seed}), {rounds} power cuts, {} puts acknowledged, {} failed; \
             {lost_bytes} unsynced bytes dropped by the disks; acknowledged bytes lost: 0; full redundancy {took:?} after the last round",
            ledger.acked.len(),
            ledger.failed.len()
        );
        assert!(
            !ledger.acked.is_empty(),
            "nothing was acknowledged: the scenario tested nothing"
        );
    });
}

#[test]
fn p2_every_datanode_losing_power_at_once_loses_no_acknowledged_small_file() {
    let mut disks = disks();
    let rounds = env_u64("DFS_CHAOS_POWER_ROUNDS", 3);
    let seed = env_u64("DFS_CHAOS_SEED", 19) + 1000;
    run(Duration::from_secs(240 + rounds * 60), async move {
        let mut cluster = start(&disks).await;
        let client = cluster.client().await;
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut lost_bytes = 0;
        for round in 0..rounds {
            let stop = Arc::new(AtomicBool::new(false));
            let writers: Vec<_> = (0..3)
                .map(|w| {
                    writer(
                        client.clone(),
                        format!("p2/{round}/{w}"),
                        rng.random(),
                        small,
                        ledger.clone(),
                        stop.clone(),
                    )
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(rng.random_range(400..1500))).await;
            // The whole rack loses power: every process first, then every disk.
            let mut on_node = listed(&client, &ledger).await;
            let listed: Vec<BTreeSet<String>> = cluster
                .datanodes
                .iter()
                .map(|dn| {
                    on_node
                        .remove(&dn.node_id().expect("node id"))
                        .unwrap_or_default()
                })
                .collect();
            for dn in &mut cluster.datanodes {
                dn.kill9();
            }
            for (i, name) in names().iter().enumerate() {
                let loss = disks
                    .disk(name)
                    .power_cut_torn(rng.random())
                    .expect("power cut");
                lost_bytes += loss.dirty_bytes;
                assert_kept(&cluster.datanodes[i], name, &listed[i]);
            }
            let acked_at_cut = ledger.lock().unwrap().acked.len();
            for dn in &mut cluster.datanodes {
                dn.start();
            }
            println!(
                "p2 round {round}: every datanode lost power with {acked_at_cut} files acknowledged so far"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.store(true, Ordering::Relaxed);
            for w in writers {
                w.await.expect("writer");
            }
            cluster.wait_healthy(DATANODES).await;
        }
        let ledger = std::mem::take(&mut *ledger.lock().unwrap());
        let took = verify(&client, &ledger, "p2").await;
        println!(
            "scenario P2: {rounds} rounds (seed {seed}), {} power cuts, {} small files acknowledged, {} failed; \
             {lost_bytes} unsynced bytes dropped or torn; acknowledged bytes lost: 0; full redundancy {took:?} after the last round",
            rounds * DATANODES as u64,
            ledger.acked.len(),
            ledger.failed.len()
        );
        assert!(
            !ledger.acked.is_empty(),
            "nothing was acknowledged: the scenario tested nothing"
        );
    });
}
