//! Scenario 8: a soak. Concurrent put/get/rm/mv from several writers while
//! random datanodes are SIGKILLed and restarted. At the end every confirmed
//! file is byte-identical to what was written, nothing deleted reappears, no
//! chunk is under- or over-replicated and no replica is left behind.
//!
//! Length: `DFS_SOAK_SECS` (default 60; CI runs the default, run longer with
//! e.g. `DFS_SOAK_SECS=600 cargo test -p dfs-chaos --test soak`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_chaos::{Cluster, ClusterOptions, check_status, env_u64, payload, read_all, run, wait_for};
use dfs_client::{ClientError, PutOptions};
use rand::{Rng, SeedableRng};

/// What the test knows about a path.
#[derive(Clone, Debug, PartialEq)]
enum Known {
    /// Acknowledged: must exist with these bytes (seed, len).
    Confirmed(u64, usize),
    /// Deleted or renamed away, acknowledged: must not exist.
    Gone,
    /// The call failed: it may or may not have happened; if the path exists
    /// it holds one of these contents.
    Uncertain(Vec<(u64, usize)>),
}

#[derive(Default, Debug)]
struct Counts {
    puts: AtomicU64,
    gets: AtomicU64,
    rms: AtomicU64,
    mvs: AtomicU64,
    failed: AtomicU64,
    kills: AtomicU64,
}

const DATANODES: usize = 5;

#[test]
fn soak_with_random_datanode_kills_loses_and_resurrects_nothing() {
    let secs = env_u64("DFS_SOAK_SECS", 60);
    run(Duration::from_secs(secs + 240), async move {
        let cluster = Cluster::start(ClusterOptions {
            datanodes: DATANODES,
            chunk_size: "1MiB".into(),
            coordinator_args: [
                "--over-replication-grace",
                "2s",
                "--orphan-grace",
                "2s",
                "--upload-ttl",
                "20s",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
        .await;
        let client = cluster.client().await;
        let cluster = Arc::new(Mutex::new(cluster));
        let known = Arc::new(Mutex::new(BTreeMap::<String, Known>::new()));
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let end = Instant::now() + Duration::from_secs(secs);

        // Chaos: one datanode at a time is SIGKILLed, kept down 1–4 s
        // (sometimes past dead-after, 3 s), then restarted on its directory.
        let chaos = {
            let (cluster, counts, stop) = (cluster.clone(), counts.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(88);
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
                    let i = rng.random_range(0..DATANODES);
                    cluster.lock().unwrap().datanodes[i].kill9();
                    counts.kills.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1000..4500))).await;
                    cluster.lock().unwrap().datanodes[i].start();
                }
            })
        };

        let mut workers = Vec::new();
        for w in 0..4u64 {
            let (client, known, counts) = (client.clone(), known.clone(), counts.clone());
            workers.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                let mut n = 0u64;
                let mut mine: Vec<String> = Vec::new();
                while Instant::now() < end {
                    n += 1;
                    let op = rng.random_range(0..10);
                    if op < 4 || mine.is_empty() {
                        // put a new file (0 B .. 2.5 MiB)
                        let seed = (w << 32) | n;
                        let len = match rng.random_range(0..4) {
                            0 => rng.random_range(0..4096),
                            _ => rng.random_range(0..(5 << 19)),
                        };
                        let path = format!("/soak/w{w}/f{n}.bin");
                        counts.puts.fetch_add(1, Ordering::Relaxed);
                        let state = match client
                            .put_bytes(payload(seed, len), &path, &PutOptions::default())
                            .await
                        {
                            Ok(_) => Known::Confirmed(seed, len),
                            Err(_) => {
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                                Known::Uncertain(vec![(seed, len)])
                            }
                        };
                        known.lock().unwrap().insert(path.clone(), state);
                        mine.push(path);
                        continue;
                    }
                    let path = mine[rng.random_range(0..mine.len())].clone();
                    let state = known.lock().unwrap()[&path].clone();
                    match op {
                        4..=6 => {
                            counts.gets.fetch_add(1, Ordering::Relaxed);
                            match (read_all(&client, &path).await, &state) {
                                (Ok(got), Known::Confirmed(seed, len)) => {
                                    assert!(
                                        got == payload(*seed, *len),
                                        "{path}: read returned other bytes"
                                    );
                                }
                                (Ok(got), Known::Uncertain(c)) => {
                                    assert!(
                                        c.iter().any(|(s, l)| got == payload(*s, *l)),
                                        "{path}: read returned unknown bytes"
                                    );
                                }
                                (Ok(_), Known::Gone) => panic!("{path} was deleted but reads back"),
                                (Err(e), Known::Gone) => assert!(e.contains("no such file"), "{e}"),
                                (Err(_), _) => {
                                    counts.failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        7..=8 => {
                            counts.rms.fetch_add(1, Ordering::Relaxed);
                            let new = match client.delete(&path, false).await {
                                Ok(_) => Known::Gone,
                                Err(ClientError::NotFound { .. })
                                    if state != Known::Gone
                                        && !matches!(state, Known::Uncertain(_)) =>
                                {
                                    panic!("{path}: confirmed file not found by rm")
                                }
                                Err(ClientError::NotFound { .. }) => Known::Gone,
                                Err(_) => {
                                    counts.failed.fetch_add(1, Ordering::Relaxed);
                                    match state {
                                        Known::Confirmed(s, l) => Known::Uncertain(vec![(s, l)]),
                                        other => other,
                                    }
                                }
                            };
                            known.lock().unwrap().insert(path, new);
                        }
                        _ => {
                            if state == Known::Gone {
                                continue;
                            }
                            counts.mvs.fetch_add(1, Ordering::Relaxed);
                            let dest = format!("/soak/w{w}/m{n}.bin");
                            let contents = match &state {
                                Known::Confirmed(s, l) => vec![(*s, *l)],
                                Known::Uncertain(c) => c.clone(),
                                Known::Gone => unreachable!(),
                            };
                            let mut k = known.lock().unwrap();
                            drop(k);
                            match client.rename(&path, &dest).await {
                                Ok(_) => {
                                    k = known.lock().unwrap();
                                    k.insert(path, Known::Gone);
                                    k.insert(dest.clone(), state);
                                }
                                Err(ClientError::NotFound { .. })
                                    if matches!(state, Known::Uncertain(_)) =>
                                {
                                    k = known.lock().unwrap();
                                    k.insert(path, Known::Gone);
                                    k.insert(dest.clone(), Known::Gone);
                                }
                                Err(e) => {
                                    assert!(
                                        !matches!(e, ClientError::NotFound { .. }),
                                        "{path}: confirmed file not found by mv"
                                    );
                                    counts.failed.fetch_add(1, Ordering::Relaxed);
                                    k = known.lock().unwrap();
                                    k.insert(path, Known::Uncertain(contents.clone()));
                                    k.insert(dest.clone(), Known::Uncertain(contents));
                                }
                            }
                            mine.push(dest);
                        }
                    }
                }
            }));
        }
        for w in workers {
            tokio::time::timeout(Duration::from_secs(secs + 120), w)
                .await
                .expect("worker finished")
                .expect("worker task");
        }
        stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(30), chaos)
            .await
            .expect("chaos stopped")
            .unwrap();

        // Every datanode back; the cluster settles at exactly 3 replicas.
        {
            let mut c = cluster.lock().unwrap();
            for d in &mut c.datanodes {
                if !d.is_running() {
                    d.start();
                }
            }
        }
        let cluster = Arc::try_unwrap(cluster)
            .expect("sole owner")
            .into_inner()
            .unwrap();
        cluster.wait_healthy(DATANODES).await;
        wait_for(
            "the cluster to settle",
            Duration::from_secs(120),
            || async { check_status(&client.status().await.map_err(|e| e.to_string())?, true) },
        )
        .await;

        let known = known.lock().unwrap().clone();
        let (mut confirmed, mut gone, mut uncertain) = (0, 0, 0);
        for (path, state) in &known {
            let got = read_all(&client, path).await;
            match state {
                Known::Confirmed(s, l) => {
                    confirmed += 1;
                    let got = got.unwrap_or_else(|e| panic!("confirmed {path} lost: {e}"));
                    assert!(got == payload(*s, *l), "confirmed {path} differs");
                }
                Known::Gone => {
                    gone += 1;
                    assert!(got.is_err(), "deleted {path} reappeared");
                }
                Known::Uncertain(c) => {
                    uncertain += 1;
                    if let Ok(got) = got {
                        assert!(
                            c.iter().any(|(s, l)| got == payload(*s, *l)),
                            "{path} holds unknown bytes"
                        );
                    }
                }
            }
        }
        // Nothing else exists, and the disks hold exactly the live replicas.
        let mut listed = Vec::new();
        for w in 0..4 {
            listed.extend(
                client
                    .list(&format!("/soak/w{w}"))
                    .await
                    .unwrap_or_default(),
            );
        }
        for e in &listed {
            assert!(
                matches!(
                    known.get(&e.path),
                    Some(Known::Confirmed(..) | Known::Uncertain(_))
                ),
                "{} exists but was never confirmed or was deleted",
                e.path
            );
        }
        let expected: u64 = listed.iter().map(|e| e.chunk_count * 3).sum();
        wait_for(
            "garbage replicas to be deleted",
            Duration::from_secs(90),
            || async {
                let on_disk: usize = cluster
                    .datanodes
                    .iter()
                    .map(|d| d.stored_chunks().len())
                    .sum();
                if on_disk as u64 == expected {
                    Ok(())
                } else {
                    Err(format!("{on_disk} stored chunks, want {expected}"))
                }
            },
        )
        .await;
        println!(
            "scenario 8: {secs}s soak, {} datanode kills; {} puts, {} gets, {} rms, {} mvs, {} calls failed under faults; \
             at the end {confirmed} confirmed files byte-identical, {gone} deleted paths absent, {uncertain} uncertain; \
             {expected} replicas on disk, 0 under/over-replicated",
            counts.kills.load(Ordering::Relaxed),
            counts.puts.load(Ordering::Relaxed),
            counts.gets.load(Ordering::Relaxed),
            counts.rms.load(Ordering::Relaxed),
            counts.mvs.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        );
    });
}
