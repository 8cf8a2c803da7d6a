//! Disk faults under real processes (issue 19, scenarios 4, 5 and 7). Every
//! datanode's data directory is on its own lossy FUSE disk
//! ([`dfs_chaos::disks`]), which fails or slows the operations a test names.
//!
//! - Scenario 4: EIO on the reads of one datanode's chunk files. Reads are
//!   served from the other replicas, the unreadable replicas are replaced,
//!   and a file whose only replica is there keeps it (the read fails with a
//!   clear error; nothing deletes the last copy).
//! - Scenario 5: ENOSPC and EIO on one datanode's writes and fsyncs, in the
//!   middle of chunk files and of small-chunk volume batches. Uploads
//!   complete on the other nodes or fail with an error naming the path;
//!   nothing half-written stays (no temp file, no visible partial file, no
//!   copy nobody lists); once the fault is cleared the node takes writes
//!   again.
//! - Scenario 7: one datanode of four on a slow disk (every fsync and write
//!   delayed). Uploads keep completing, the slow node keeps answering its
//!   probes, and its memory stays bounded.
//!
//! Each scenario asserts that every acknowledged write reads back
//! byte-identical, that nothing unacknowledged is visible, and that the
//! cluster returns to full redundancy: the coordinator reports nothing
//! under-, over-replicated or missing, every chunk lists its factor of
//! replicas, and every listed replica really serves the chunk's bytes (a
//! replica the coordinator lists but the disk cannot read is not redundancy).
//!
//! The scenarios run one at a time (they share 2 cores).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfs_chaos::disks::{Disks, Fault, Latency, Op};
use dfs_chaos::{
    Cluster, ClusterOptions, Service, check_replicas, check_status, metric_sum, metrics_text,
    payload, read_all, run,
};
use dfs_client::{Client, ClientError, PutOptions};
use dfs_proto::DownloadChunkStreamRequest;
use dfs_proto::data_node_client::DataNodeClient;

const NAMES: [&str; 4] = ["datanode-0", "datanode-1", "datanode-2", "datanode-3"];

/// The scenarios of this file run one after the other: each starts four
/// datanodes and serves their disks from this process.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A cluster of four datanodes on `disks`, 1 MiB chunks, quick clean-up of
/// excess replicas and orphans.
fn options(disks: &Disks, datanode_args: &[&str]) -> ClusterOptions {
    ClusterOptions {
        datanodes: NAMES.len(),
        chunk_size: "1MiB".into(),
        coordinator_args: [
            "--over-replication-grace",
            "2s",
            "--orphan-grace",
            "2s",
            "--upload-ttl",
            "30s",
        ]
        .map(String::from)
        .to_vec(),
        datanode_args: datanode_args.iter().map(|s| s.to_string()).collect(),
        data_dirs: disks.data_dirs(),
        ..Default::default()
    }
}

/// A file the test wrote: deterministic bytes (seed, len) at a replication.
#[derive(Clone, Debug)]
struct Written {
    path: String,
    seed: u64,
    len: usize,
    replication: usize,
}

impl Written {
    fn new(path: impl Into<String>, seed: u64, len: usize, replication: usize) -> Self {
        Written {
            path: path.into(),
            seed,
            len,
            replication,
        }
    }

    fn data(&self) -> Bytes {
        payload(self.seed, self.len)
    }
}

async fn put(client: &Client, w: &Written) -> Result<(), ClientError> {
    let options = PutOptions {
        replication: w.replication as u32,
        ..Default::default()
    };
    client
        .put_bytes(w.data(), &w.path, &options)
        .await
        .map(|_| ())
}

/// Bytes of acknowledged files that do not read back byte-identical, with
/// what went wrong.
async fn bytes_lost(client: &Client, files: &[Written]) -> (u64, Vec<String>) {
    let mut lost = 0;
    let mut errors = Vec::new();
    for f in files {
        match read_all(client, &f.path).await {
            Ok(got) if got == f.data() => {}
            Ok(got) => {
                lost += f.len as u64;
                errors.push(format!(
                    "{}: read {} bytes that differ from the {} written",
                    f.path,
                    got.len(),
                    f.len
                ));
            }
            Err(e) => {
                lost += f.len as u64;
                errors.push(format!("{}: {e}", f.path));
            }
        }
    }
    (lost, errors)
}

/// Polls `probe` until it succeeds (its value) or `timeout` passes (its
/// last error): unlike [`dfs_chaos::wait_for`] it does not panic, so a
/// scenario can record what did not happen and go on.
async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(20), probe()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => "the probe itself took more than 20 s".into(),
        };
        if start.elapsed() > timeout {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// Reads chunk `chunk_id` whole from the datanode at `address` and checks
/// its size and CRC32C.
async fn read_replica(
    address: &str,
    chunk_id: &str,
    size: u64,
    checksum: u32,
) -> Result<(), String> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut dn = DataNodeClient::new(channel);
    let request = DownloadChunkStreamRequest {
        chunk_id: chunk_id.to_string(),
        offset: 0,
        length: size,
        ..Default::default()
    };
    let read = async {
        let mut frames = dn
            .download_chunk_stream(request)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let (mut crc, mut got) = (0u32, 0u64);
        while let Some(f) = frames
            .message()
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        {
            crc = crc32c::crc32c_append(crc, &f.data);
            got += f.data.len() as u64;
            if f.is_final {
                break;
            }
        }
        if got != size || crc != checksum {
            return Err(format!(
                "served {got} bytes with crc32c {crc:08x}, recorded {size} bytes with {checksum:08x}"
            ));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .map_err(|_| "no whole chunk within 15 s".to_string())?
}

/// Full redundancy for `files`: (with `strict_status`) the coordinator
/// reports nothing under-, over-replicated or missing; every chunk lists
/// exactly its file's factor of replicas; and every listed replica serves
/// the chunk's bytes.
async fn redundancy(client: &Client, files: &[Written], strict_status: bool) -> Result<(), String> {
    if strict_status {
        check_status(&client.status().await.map_err(|e| e.to_string())?, true)?;
    }
    let mut maps = Vec::new();
    for f in files {
        let map = client
            .chunk_map(&f.path)
            .await
            .map_err(|e| format!("{}: {e}", f.path))?;
        check_replicas(&map, f.replication, &[]).map_err(|e| format!("{}: {e}", f.path))?;
        maps.push(map);
    }
    for (f, map) in files.iter().zip(&maps) {
        for c in &map.chunks {
            for r in &c.replicas {
                read_replica(&r.address, c.chunk_id.as_str(), c.size, c.checksum)
                    .await
                    .map_err(|e| {
                        format!(
                            "{} chunk {}: the replica on {} does not serve it: {e}",
                            f.path,
                            c.index,
                            short(r.node_id.as_str())
                        )
                    })?;
            }
        }
    }
    Ok(())
}

/// Chunk copies on the datanodes' disks that no file in `files` lists on
/// that node: (chunk files, volume records), as `datanode-i id`. After the
/// orphan grace, anything here is a copy the cluster does not know of.
async fn unlisted_copies(
    cluster: &Cluster,
    client: &Client,
    files: &[Written],
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut listed: HashMap<String, HashSet<String>> = HashMap::new();
    for f in files {
        let map = client
            .chunk_map(&f.path)
            .await
            .map_err(|e| format!("{}: {e}", f.path))?;
        for c in &map.chunks {
            for r in &c.replicas {
                listed
                    .entry(r.node_id.to_string())
                    .or_default()
                    .insert(c.chunk_id.to_string());
            }
        }
    }
    let (mut chunk_files, mut records) = (Vec::new(), Vec::new());
    for d in &cluster.datanodes {
        let known = d.node_id().and_then(|id| listed.get(&id));
        for id in d.stored_chunks() {
            if !known.is_some_and(|k| k.contains(&id)) {
                if d.chunk_path(&id).exists() {
                    chunk_files.push(format!("{} {id}", d.name));
                } else {
                    records.push(format!("{} {id}", d.name));
                }
            }
        }
    }
    Ok((chunk_files, records))
}

/// True when chunk `id` is still on `d`'s disk: in its chunk file, or moved
/// aside to `quarantine/`.
fn kept_on_disk(d: &Service, id: &str) -> bool {
    if d.chunk_path(id).exists() {
        return true;
    }
    std::fs::read_dir(d.data_dir.join("quarantine")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(id))
    })
}

/// `GET path` over HTTP/1.0: the status line, or why there was none.
fn http_status(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body.lines().next().unwrap_or_default().to_string())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Prints the defects a scenario found and fails it when there are any.
fn report(scenario: &str, defects: &[String]) {
    for d in defects {
        eprintln!("{scenario} DEFECT: {d}");
    }
    assert!(
        defects.is_empty(),
        "{scenario}: {} defect(s):\n- {}",
        defects.len(),
        defects.join("\n- ")
    );
}

#[test]
fn eio_on_one_replicas_reads_is_served_around_repaired_and_never_costs_the_last_copy() {
    let _serial = serial();
    let mut disks = Disks::mount(&NAMES);
    run(Duration::from_secs(200), async move {
        // Every datanode scrubs every 2 s: the scrubber meets the fault too.
        let scrub = ["--scrub-interval", "2s", "--scrub-bytes-per-second", "1GiB"];
        let mut cluster = Cluster::start(options(&disks, &scrub)).await;
        let client = cluster.client().await;
        let mut defects = Vec::new();

        // The last copy: a file at replication 1 in one chunk file (above
        // the 64 KiB small-chunk limit). Its node gets the failing disk.
        let last = Written::new("/eio/last-copy.bin", 40, 700 << 10, 1);
        put(&client, &last)
            .await
            .expect("put the replication-1 file");
        let last_chunk = client.chunk_map(&last.path).await.unwrap().chunks[0].clone();
        let last_id = last_chunk.chunk_id.to_string();
        let victim_id = last_chunk.replicas[0].node_id.to_string();
        let victim = cluster.index_of(&victim_id).expect("the replica's node");
        let name = cluster.datanodes[victim].name.clone();
        assert!(kept_on_disk(&cluster.datanodes[victim], &last_id));

        // Replicated files: 3 chunk files each plus a small tail chunk (in a
        // volume, which the fault does not touch).
        let files: Vec<Written> = (0..3u64)
            .map(|i| {
                let len = (3 << 20) + 4321 + 777 * i as usize;
                Written::new(format!("/eio/f{i}.bin"), 41 + i, len, 3)
            })
            .collect();
        for f in &files {
            put(&client, f)
                .await
                .unwrap_or_else(|e| panic!("put {}: {e}", f.path));
        }
        let mut on_victim = 0;
        for f in &files {
            let map = client.chunk_map(&f.path).await.unwrap();
            on_victim += map
                .chunks
                .iter()
                .filter(|c| c.size > 64 << 10 && c.replicas.iter().any(|r| r.node_id == victim_id))
                .count();
        }
        assert!(on_victim > 0, "{name} holds none of the 9 chunk files");

        // EIO on every read of the victim's chunk files.
        let fault = disks
            .disk(&name)
            .arm(Fault::eio(Op::Read).path("data/chunks/"));
        let armed = Instant::now();

        // 1. Reads are served from the other replicas, byte-identical.
        let mut reads = 0u64;
        for _ in 0..4 {
            for f in &files {
                let got = read_all(&client, &f.path).await.unwrap_or_else(|e| {
                    panic!("{} unreadable with one failing replica: {e}", f.path)
                });
                assert!(got == f.data(), "{} read back other bytes", f.path);
                reads += 1;
            }
        }
        let reached = poll(Duration::from_secs(10), || {
            let n = disks.disk(&name).fired(fault);
            async move {
                if n > 0 {
                    Ok(n)
                } else {
                    Err("no read reached the failing disk".to_string())
                }
            }
        })
        .await
        .expect("reads and scrubs reach the failing disk");
        println!(
            "scenario 4: {reads} reads byte-identical with {name} failing reads ({reached} EIO so far); {on_victim} chunk files on it"
        );

        // 2. The only copy: the read fails, clearly, and nothing is deleted.
        let err = read_all(&client, &last.path)
            .await
            .expect_err("a read of a file whose only replica fails with EIO must fail");
        println!("scenario 4: reading the replication-1 file fails: {err}");
        // Either the datanode's EIO, or — once it set the copy aside and told
        // the coordinator — that no replica is left to read.
        if !(err.contains(&last.path)
            && (err.contains("Input/output error")
                || err.contains("os error 5")
                || err.contains("no live replica")))
        {
            defects.push(format!(
                "unclear error reading {} under EIO: {err}",
                last.path
            ));
        }

        // 3. While the disk keeps failing, the unreadable replicas are
        //    quarantined and replaced (or rewritten).
        // (The only copy cannot be replaced: the status counts it missing,
        // and it stays on disk.)
        let runtime = poll(Duration::from_secs(15), || async {
            redundancy(&client, &files, false).await?;
            let st = client.status().await.map_err(|e| e.to_string())?;
            if st.under_replicated_chunks == 0 && st.missing_chunks == 1 {
                Ok(())
            } else {
                Err(format!(
                    "under-replicated {}, missing {} (want 0 and 1: the only copy)",
                    st.under_replicated_chunks, st.missing_chunks
                ))
            }
        })
        .await;
        let m = metrics_text(cluster.datanodes[victim].metrics).unwrap_or_default();
        let quarantined = metric_sum(&m, "dfs_datanode_quarantined_chunks", "");
        let corrupt_reported = client
            .status()
            .await
            .map(|s| s.corrupt_replicas)
            .unwrap_or(0);
        let fired_runtime = disks.disk(&name).fired(fault);
        let mut repaired_at_runtime = None;
        match runtime {
            Ok(()) => repaired_at_runtime = Some(armed.elapsed()),
            Err(e) => defects.push(format!(
                "EIO at run time is never repaired: {} s after the fault was armed, with {fired_runtime} reads failed with EIO on {name} (client reads and scrubs), \
                 the coordinator still lists the unreadable replicas ({e}); {name} quarantined {quarantined} chunks, the cluster counts {corrupt_reported} corrupt replicas",
                armed.elapsed().as_secs()
            )),
        }
        let listed = client
            .chunk_map(&last.path)
            .await
            .map(|m| m.chunks[0].replicas.iter().any(|r| r.node_id == victim_id))
            .unwrap_or(false);
        assert!(
            kept_on_disk(&cluster.datanodes[victim], &last_id),
            "the only copy of {} was deleted from {name}'s disk under EIO",
            last.path
        );
        println!(
            "scenario 4: at run time: repaired {}; {name} quarantined {quarantined}; the only copy of {} is on disk and {}",
            repaired_at_runtime.map_or("never (15 s)".to_string(), secs),
            last.path,
            if listed { "listed" } else { "no longer listed" }
        );

        // 4. The failing node restarts with the fault still there: its
        //    unreadable chunks are set aside (not served, not deleted), and
        //    the replicated ones are replaced from the good copies.
        cluster.datanodes[victim].restart();
        cluster.wait_healthy(NAMES.len()).await;
        let restarted = Instant::now();
        let around = poll(Duration::from_secs(30), || {
            redundancy(&client, &files, false)
        })
        .await;
        let repaired_after_restart = restarted.elapsed();
        if let Err(e) = &around {
            defects.push(format!(
                "after {name} restarted with the failing disk, its unreadable replicas were not replaced within 30 s: {e}"
            ));
        }
        assert!(
            kept_on_disk(&cluster.datanodes[victim], &last_id),
            "the only copy of {} was deleted after {name} restarted under EIO",
            last.path
        );
        client
            .stat(&last.path)
            .await
            .expect("the replication-1 file stays in the namespace");
        let st = client.status().await.unwrap();
        println!(
            "scenario 4: after restarting {name} on the failing disk: replicated files {} in {}; missing chunks {} (the only copy, kept on disk)",
            if around.is_ok() {
                "repaired"
            } else {
                "NOT repaired"
            },
            secs(repaired_after_restart),
            st.missing_chunks
        );

        // 5. The disk is replaced (fault cleared) and the node restarts:
        //    everything comes back, at exactly its replication.
        disks.disk(&name).disarm(fault);
        let fired = disks.disk(&name).fired(fault);
        let cleared = Instant::now();
        cluster.datanodes[victim].restart();
        cluster.wait_healthy(NAMES.len()).await;
        let mut all = files.clone();
        all.push(last.clone());
        if let Err(e) = poll(Duration::from_secs(45), || redundancy(&client, &all, true)).await {
            defects.push(format!(
                "not back to full redundancy 45 s after the fault was cleared: {e}"
            ));
        }
        let back = cleared.elapsed();
        let (lost, errors) = bytes_lost(&client, &all).await;
        println!(
            "scenario 4: rounds 3 (failing at run time, restarted failing, cleared), faults injected {fired} EIO, acknowledged {} puts + {reads} reads, \
             bytes lost {lost}, back to full redundancy {} after clearing",
            all.len(),
            secs(back)
        );
        assert!(errors.is_empty(), "acknowledged data lost: {errors:?}");
        report("scenario 4", &defects);
    });
}

/// One round of scenario 5: a fault on the disks of `nodes` during a batch
/// of uploads.
struct Round {
    what: &'static str,
    fault: Fault,
    nodes: &'static [usize],
    small: bool,
}

#[test]
fn enospc_and_eio_on_writes_mid_chunk_leave_nothing_half_written() {
    let _serial = serial();
    let mut disks = Disks::mount(&NAMES);
    run(Duration::from_secs(240), async move {
        let mut cluster = Cluster::start(options(&disks, &[])).await;
        let client = cluster.client().await;
        let victim = 0;
        let name = NAMES[victim];
        let mut defects = Vec::new();

        // Replication 4 on 4 nodes: every chunk goes to the victim (as
        // primary or replica); the write quorum is 3.
        let rounds = [
            Round {
                what: "ENOSPC on chunk-file writes after 1.5 MiB",
                fault: Fault::enospc(Op::Write)
                    .path("data/tmp/")
                    .after_bytes(1536 << 10),
                nodes: &[0],
                small: false,
            },
            Round {
                what: "EIO on chunk-file writes after 512 KiB",
                fault: Fault::eio(Op::Write)
                    .path("data/tmp/")
                    .after_bytes(512 << 10),
                nodes: &[0],
                small: false,
            },
            Round {
                what: "EIO on the chunk file's fsync",
                fault: Fault::eio(Op::Fsync).path("data/tmp/"),
                nodes: &[0],
                small: false,
            },
            Round {
                what: "EIO on the chunk directory's fsync (after the rename)",
                fault: Fault::eio(Op::Fsync).path("data/chunks/"),
                nodes: &[0],
                small: false,
            },
            Round {
                what: "ENOSPC on volume writes after 16 KiB (small files)",
                fault: Fault::enospc(Op::Write)
                    .path("data/volumes/")
                    .after_bytes(16 << 10),
                nodes: &[0],
                small: true,
            },
            Round {
                what: "EIO on the volume's fdatasync (small files)",
                fault: Fault::eio(Op::Fsync).path("data/volumes/"),
                nodes: &[0],
                small: true,
            },
            // Two failing nodes of four: below the write quorum of 3, so
            // these uploads must fail, cleanly.
            Round {
                what: "ENOSPC on chunk-file writes after 256 KiB on two nodes",
                fault: Fault::enospc(Op::Write)
                    .path("data/tmp/")
                    .after_bytes(256 << 10),
                nodes: &[0, 1],
                small: false,
            },
            Round {
                what: "EIO on volume writes on two nodes (small files)",
                fault: Fault::eio(Op::Write).path("data/volumes/"),
                nodes: &[0, 1],
                small: true,
            },
        ];
        let n_rounds = rounds.len();
        let mut acked: Vec<Written> = Vec::new();
        let mut failed = 0;
        let mut fired_total = 0;
        for (k, round) in rounds.into_iter().enumerate() {
            let batch: Vec<Written> = if round.small {
                (0..12u64)
                    .map(|i| {
                        let len = 1000 + 5000 * i as usize + 37 * k;
                        Written::new(
                            format!("/faults/r{k}/s{i}.bin"),
                            500 + 100 * k as u64 + i,
                            len,
                            4,
                        )
                    })
                    .collect()
            } else {
                (0..3u64)
                    .map(|i| {
                        let len = (2 << 20) + 3000 + 1000 * i as usize;
                        Written::new(
                            format!("/faults/r{k}/f{i}.bin"),
                            500 + 100 * k as u64 + i,
                            len,
                            4,
                        )
                    })
                    .collect()
            };
            let ids: Vec<_> = round
                .nodes
                .iter()
                .map(|&i| (NAMES[i], disks.disk(NAMES[i]).arm(round.fault.clone())))
                .collect();
            let started = Instant::now();
            let results = futures::future::join_all(batch.iter().map(|w| put(&client, w))).await;
            let took = started.elapsed();
            let mut fired = 0;
            for (n, id) in ids {
                disks.disk(n).disarm(id);
                fired += disks.disk(n).fired(id);
            }
            fired_total += fired;
            if fired == 0 {
                defects.push(format!("round {k} ({}): the fault never fired", round.what));
            }
            let (mut ok, mut errs) = (0, Vec::new());
            for (w, r) in batch.into_iter().zip(results) {
                match r {
                    Ok(()) => {
                        ok += 1;
                        acked.push(w);
                    }
                    Err(e) => {
                        failed += 1;
                        let msg = e.to_string();
                        if !msg.contains(&w.path) {
                            defects.push(format!(
                                "round {k}: the error does not name {}: {msg}",
                                w.path
                            ));
                        }
                        match client.stat(&w.path).await {
                            Err(ClientError::NotFound { .. }) => {}
                            other => defects.push(format!(
                                "round {k}: the failed upload of {} is visible: {other:?}",
                                w.path
                            )),
                        }
                        errs.push(msg);
                    }
                }
            }
            // Nothing half-written stays in any datanode's tmp/.
            let temps = poll(Duration::from_secs(10), || {
                let left = cluster.temp_files();
                async move {
                    if left.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("{left:?}"))
                    }
                }
            })
            .await;
            if let Err(left) = temps {
                defects.push(format!(
                    "round {k} ({}): temp files left: {left}",
                    round.what
                ));
            }
            println!(
                "scenario 5 round {k} ({} on {:?}): {fired} faults fired; {ok} uploads acknowledged, {} failed, in {}{}",
                round.what,
                round.nodes.iter().map(|&i| NAMES[i]).collect::<Vec<_>>(),
                errs.len(),
                secs(took),
                errs.first()
                    .map_or(String::new(), |e| format!("; first error: {e}"))
            );
        }

        // Every acknowledged file reads back right away (at least the write
        // quorum holds it).
        let (lost_now, errors) = bytes_lost(&client, &acked).await;
        assert!(
            errors.is_empty(),
            "acknowledged files do not read back: {errors:?}"
        );

        // The node is usable again: new files at replication 4 must land on
        // it too, big and small.
        let after = [
            Written::new("/faults/after/big.bin", 900, (2 << 20) + 555, 4),
            Written::new("/faults/after/small.bin", 901, 10_000, 4),
        ];
        for w in &after {
            match put(&client, w).await {
                Ok(()) => {
                    // A copy still writing at the upload's answer is listed
                    // once it reported the chunk.
                    let mut map = client.chunk_map(&w.path).await.unwrap();
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while map.chunks.iter().any(|c| c.replicas.len() < 4)
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        map = client.chunk_map(&w.path).await.unwrap();
                    }
                    for d in &cluster.datanodes[..2] {
                        let id = d.node_id().unwrap();
                        if let Some(c) = map
                            .chunks
                            .iter()
                            .find(|c| !c.replicas.iter().any(|r| r.node_id == id))
                        {
                            defects.push(format!(
                                "after the faults were cleared, {} did not store chunk {} of {}",
                                d.name, c.index, w.path
                            ));
                        }
                    }
                    acked.push(w.clone());
                }
                Err(e) => defects.push(format!(
                    "after the faults were cleared, {} could not be written: {e}",
                    w.path
                )),
            }
        }
        for d in &cluster.datanodes[..2] {
            match http_status(d.metrics, "/readyz") {
                Ok(line) if line.contains(" 200") => {}
                other => defects.push(format!(
                    "{} is not ready after the faults: {other:?}",
                    d.name
                )),
            }
        }

        // Back to full redundancy: every acknowledged file on all 4 nodes,
        // every replica serving its bytes.
        let cleared = Instant::now();
        // A copy still writing at an upload's answer may take up to 3 ×
        // --replica-stall-timeout (30 s) to fail and be repaired.
        let back = poll(Duration::from_secs(45), || {
            redundancy(&client, &acked, true)
        })
        .await;
        let back_after = cleared.elapsed();
        if let Err(e) = &back {
            defects.push(format!(
                "not back to full redundancy 45 s after the faults were cleared: {e}"
            ));
        }
        // No copy the cluster forgot (a chunk file renamed into place whose
        // write then failed, a rolled-back replica): orphans the nodes
        // report are deleted after the 2 s grace.
        let forgotten = poll(Duration::from_secs(10), || async {
            match unlisted_copies(&cluster, &client, &acked).await? {
                (f, r) if f.is_empty() && r.is_empty() => Ok(()),
                (f, r) => Err(format!(
                    "{} chunk files, {} volume records",
                    f.len(),
                    r.len()
                )),
            }
        })
        .await;
        if forgotten.is_err() {
            let (files, records) = unlisted_copies(&cluster, &client, &acked).await.unwrap();
            if !files.is_empty() {
                defects.push(format!(
                    "{} chunk files no file lists (nor the node reports) stay in chunks/: {files:?}",
                    files.len()
                ));
            }
            if !records.is_empty() {
                // Not a loss and not visible: such a record comes back as an
                // orphan at the next start and is deleted again.
                println!(
                    "scenario 5: note: {} volume records no file lists stay live on disk: {records:?}",
                    records.len()
                );
            }
        }
        if back.is_err() {
            // Does a restart of the node heal it?
            cluster.datanodes[victim].restart();
            cluster.wait_healthy(NAMES.len()).await;
            let restarted = Instant::now();
            let healed = poll(Duration::from_secs(30), || {
                redundancy(&client, &acked, true)
            })
            .await;
            println!(
                "scenario 5: after restarting {name}: {}",
                match &healed {
                    Ok(()) => format!("full redundancy in {}", secs(restarted.elapsed())),
                    Err(e) => format!("still not fully redundant after 30 s: {e}"),
                }
            );
        }
        let (lost, errors) = bytes_lost(&client, &acked).await;
        println!(
            "scenario 5: rounds {n_rounds}, faults injected {fired_total}, acknowledged {} uploads ({failed} failed cleanly), bytes lost {}, \
             back to full redundancy {}",
            acked.len(),
            lost + lost_now,
            match &back {
                Ok(()) => format!("in {} after clearing", secs(back_after)),
                Err(_) => "NOT within 45 s".to_string(),
            }
        );
        assert!(errors.is_empty(), "acknowledged data lost: {errors:?}");
        report("scenario 5", &defects);
    });
}

/// Puts per writer while the disk is slow: every copy dropped behind it is
/// repair debt, so the load is bounded (at the quorum's pace three writers
/// would otherwise put 400–600 files in 20 s, and the debt with them).
const SLOW_PUTS_PER_WRITER: usize = 50;

/// Peak RSS the slow datanode may reach.
const MEMORY_BOUND: u64 = 256 << 20;
/// Its probes must answer within this, loaded or not.
const PROBE_BOUND: Duration = Duration::from_secs(5);

/// What one writer did: each put with its time and outcome.
type Puts = Vec<(Written, Duration, Result<(), String>)>;

/// Puts files (two of 2 MiB, then one of 16 KiB, again) until `until` or
/// `max` puts.
async fn writer(client: &Client, w: u64, prefix: &str, until: Instant, max: usize) -> Puts {
    let mut out = Vec::new();
    let mut i = 0u64;
    while Instant::now() < until && out.len() < max {
        let len = if i % 3 == 2 {
            (16 << 10) + 100 * w as usize + i as usize
        } else {
            (2 << 20) + 1000 * i as usize + w as usize
        };
        let f = Written::new(format!("{prefix}/w{w}/f{i}.bin"), (w << 32) | i, len, 3);
        let started = Instant::now();
        let r = put(client, &f).await.map_err(|e| e.to_string());
        out.push((f, started.elapsed(), r));
        i += 1;
    }
    out
}

/// (median, max) of the durations.
fn spread(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    if d.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    (d[d.len() / 2], d[d.len() - 1])
}

fn timings(puts: &Puts, small: bool) -> String {
    let (median, max) = spread(
        puts.iter()
            .filter(|(f, _, r)| r.is_ok() && (f.len < 64 << 10) == small)
            .map(|(_, d, _)| *d)
            .collect(),
    );
    format!(
        "median {:.2} s, max {:.2} s",
        median.as_secs_f64(),
        max.as_secs_f64()
    )
}

#[test]
fn a_slow_disk_on_one_replica_does_not_stall_uploads_or_exhaust_the_node() {
    let _serial = serial();
    let mut disks = Disks::mount(&NAMES);
    run(Duration::from_secs(300), async move {
        // Every copy dropped behind the slow disk is repaired afterwards:
        // with 1 MiB chunks repair is latency-bound, so more streams per
        // node than the default 2.
        let mut opts = options(&disks, &[]);
        opts.coordinator_args
            .extend(["--repair-streams-per-node", "8"].map(String::from));
        let cluster = Cluster::start(opts).await;
        let client = cluster.client().await;
        let slow = 3;
        let name = NAMES[slow];
        let mut defects = Vec::new();

        // Baseline, every disk fast.
        let far = Instant::now() + Duration::from_secs(60);
        let base: Puts =
            futures::future::join_all((0..3).map(|w| writer(&client, w, "/slow/base", far, 3)))
                .await
                .into_iter()
                .flatten()
                .collect();
        for (f, _, r) in &base {
            r.as_ref()
                .unwrap_or_else(|e| panic!("baseline put {} failed: {e}", f.path));
        }

        // Every fsync and every write of the slow node's disk waits.
        let delay_fsync = Duration::from_millis(300);
        let delay_write = Duration::from_millis(200);
        let before = disks.disk(name).counts();
        disks.disk(name).add_latency(Latency {
            op: Op::Fsync,
            path: None,
            delay: delay_fsync,
        });
        disks.disk(name).add_latency(Latency {
            op: Op::Write,
            path: None,
            delay: delay_write,
        });
        let load_for = Duration::from_secs(20);
        let until = Instant::now() + load_for;
        let done = AtomicBool::new(false);
        let writers = async {
            let puts: Puts = futures::future::join_all(
                (0..3).map(|w| writer(&client, w, "/slow/load", until, SLOW_PUTS_PER_WRITER)),
            )
            .await
            .into_iter()
            .flatten()
            .collect();
            done.store(true, Ordering::Relaxed);
            puts
        };
        // Meanwhile: the slow node's /metrics and /healthz, its state at the
        // coordinator, and its memory.
        let addr = cluster.datanodes[slow].metrics;
        let slow_id = cluster.datanodes[slow].node_id().unwrap();
        let monitor = async {
            let (mut probes, mut worst, mut failures) = (0u64, Duration::ZERO, Vec::new());
            let (mut most_streams, mut most_pending) = (0u64, 0u64);
            let mut not_healthy = 0u64;
            let mut peak = 0u64;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let answered = tokio::task::spawn_blocking(move || {
                    let m = metrics_text(addr)?;
                    if !m.contains("dfs_datanode_chunks_stored") {
                        return Err("/metrics without the datanode's metrics".to_string());
                    }
                    let h = http_status(addr, "/healthz")?;
                    if h.contains(" 200") {
                        Ok(m)
                    } else {
                        Err(format!("/healthz: {h}"))
                    }
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
                .map(|m| {
                    // What the slow node holds: replica streams coming in,
                    // copies of its own uploads still writing.
                    let streams =
                        metric_sum(&m, "dfs_datanode_active_sessions", "kind=\"replicate\"");
                    let pending = metric_sum(&m, "dfs_datanode_pending_replicas ", "");
                    most_streams = most_streams.max(streams as u64);
                    most_pending = most_pending.max(pending as u64);
                });
                let took = t.elapsed();
                probes += 1;
                worst = worst.max(took);
                if let Err(e) = answered {
                    failures.push(format!("after {}: {e}", secs(took)));
                } else if took > PROBE_BOUND {
                    failures.push(format!("answered after {}", secs(took)));
                }
                if let Ok(nodes) = client.nodes().await
                    && dfs_chaos::state_of(&nodes, &slow_id) != Some(dfs_client::NodeState::Healthy)
                {
                    not_healthy += 1;
                }
                if let Some((_, hwm)) = cluster.datanodes[slow].memory() {
                    peak = peak.max(hwm);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (
                probes,
                worst,
                failures,
                not_healthy,
                peak,
                most_streams,
                most_pending,
            )
        };
        let (load, (probes, worst, probe_failures, not_healthy, peak, most_streams, most_pending)) =
            tokio::join!(writers, monitor);
        let after = disks.disk(name).counts();
        // Which puts had a chunk stored on the slow node.
        let mut on_slow = Vec::new();
        let mut off_slow = Vec::new();
        for (f, d, r) in &load {
            if r.is_ok() && f.len >= 64 << 10 {
                let map = client.chunk_map(&f.path).await.unwrap();
                let uses_slow = map
                    .chunks
                    .iter()
                    .any(|c| c.replicas.iter().any(|r| r.node_id == slow_id));
                if uses_slow {
                    on_slow.push(*d)
                } else {
                    off_slow.push(*d)
                }
            }
        }
        disks.disk(name).clear_faults();
        let cleared = Instant::now();
        let slowed = (after.writes - before.writes)
            + (after.fsyncs - before.fsyncs)
            + (after.dir_fsyncs - before.dir_fsyncs);

        let failed: Vec<String> = load
            .iter()
            .filter_map(|(f, d, r)| {
                r.as_ref()
                    .err()
                    .map(|e| format!("{} after {}: {e}", f.path, secs(*d)))
            })
            .collect();
        if !failed.is_empty() {
            defects.push(format!(
                "{} of {} uploads failed with a slow replica: {failed:?}",
                failed.len(),
                load.len()
            ));
        }
        if !probe_failures.is_empty() {
            defects.push(format!(
                "{name} did not answer its probes within {PROBE_BOUND:?} under load: {probe_failures:?}"
            ));
        }
        if peak > MEMORY_BOUND {
            defects.push(format!(
                "{name}'s peak RSS {} MiB is above {} MiB",
                peak >> 20,
                MEMORY_BOUND >> 20
            ));
        }
        println!(
            "scenario 7: baseline puts: 2 MiB {}, 16 KiB {}",
            timings(&base, false),
            timings(&base, true)
        );
        println!(
            "scenario 7: with {name}'s fsyncs +{delay_fsync:?} and writes +{delay_write:?}: 2 MiB {}, 16 KiB {}; \
             {probes} probes of /metrics and /healthz, slowest {}; {name} not healthy in {not_healthy} of {probes} samples; peak RSS {} MiB; \
             at most {most_streams} replica streams into {name} and {most_pending} of its own copies pending",
            timings(&load, false),
            timings(&load, true),
            secs(worst),
            peak >> 20
        );
        let (on_median, on_max) = spread(on_slow.clone());
        let (off_median, off_max) = spread(off_slow.clone());
        println!(
            "scenario 7: 2 MiB puts with a chunk on {name}: {} (median {:.2} s, max {:.2} s); without: {} (median {:.2} s, max {:.2} s)",
            on_slow.len(),
            on_median.as_secs_f64(),
            on_max.as_secs_f64(),
            off_slow.len(),
            off_median.as_secs_f64(),
            off_max.as_secs_f64()
        );

        // What the primaries did with copies that could not keep up.
        let mut dropped = HashMap::new();
        let mut finished = HashMap::new();
        for d in &cluster.datanodes {
            let m = metrics_text(d.metrics).unwrap_or_default();
            for reason in ["behind", "over_budget", "stall", "error"] {
                *dropped.entry(reason).or_insert(0.0) += metric_sum(
                    &m,
                    "dfs_datanode_replicas_dropped_total",
                    &format!("reason=\"{reason}\""),
                );
            }
            for outcome in ["stored", "failed"] {
                *finished.entry(outcome).or_insert(0.0) += metric_sum(
                    &m,
                    "dfs_datanode_pending_replicas_finished_total",
                    &format!("outcome=\"{outcome}\""),
                );
            }
        }
        println!(
            "scenario 7: copies dropped from uploads: {} behind the quorum, {} over the pending budget, {} stalled, {} failed; \
             pending copies finished after the answer: {} stored, {} failed",
            dropped["behind"],
            dropped["over_budget"],
            dropped["stall"],
            dropped["error"],
            finished["stored"],
            finished["failed"]
        );

        // Everything acknowledged reads back, at full redundancy: every
        // copy dropped above is repaired (2 repair streams per node).
        let acked: Vec<Written> = base
            .iter()
            .chain(&load)
            .filter(|(_, _, r)| r.is_ok())
            .map(|(f, _, _)| f.clone())
            .collect();
        let back = poll(Duration::from_secs(150), || {
            redundancy(&client, &acked, true)
        })
        .await;
        let back_after = cleared.elapsed();
        if let Err(e) = &back {
            defects.push(format!(
                "not back to full redundancy 150 s after the disk got fast again: {e}"
            ));
        }
        let (lost, errors) = bytes_lost(&client, &acked).await;
        println!(
            "scenario 7: rounds {} puts over {} with the slow disk, slowed operations injected {slowed}, acknowledged {}, bytes lost {lost}, \
             back to full redundancy {}",
            load.len(),
            secs(load_for),
            acked.len(),
            match &back {
                Ok(()) => format!("in {} after the disk got fast again", secs(back_after)),
                Err(_) => "NOT within 150 s".to_string(),
            }
        );
        assert!(errors.is_empty(), "acknowledged data lost: {errors:?}");
        report("scenario 7", &defects);
    });
}
