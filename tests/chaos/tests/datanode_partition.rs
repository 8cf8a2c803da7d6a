//! Scenario 9 (issue 19): a partition between two datanodes while the
//! coordinator (and the client) still reach every node. Real `dfs`
//! processes, each datanode on a host of its own in the network namespaces
//! of `dfs_testkit::netns`:
//!
//! ```text
//!   h1: coordinator (+ the test's client)      10.77.0.1
//!   h2: datanode A ──╳── h3: datanode B         10.77.0.2 / .3
//!   h4: datanode C       h5: datanode D         10.77.0.4 / .5
//! ```
//!
//! A and B are cut apart; each still reaches the coordinator and C and D,
//! and a primary's fan-out to the other side of the cut fails. Uploads
//! (replication 3 on 4 nodes, 1 MiB chunks, large and small files) must end
//! within a deadline: acknowledged, or failed with an error naming the path
//! (counted; the path must not exist). Three cuts, after a warm-up that
//! leaves connections open between the datanodes (a partition strikes a
//! running cluster):
//!
//! 1. both directions, with an all-replica write quorum (`--write-quorum
//!    3`): a chunk that loses its replica across the cut is rolled back and
//!    the client re-plans it (counted from the coordinator's ReplanChunk
//!    calls);
//! 2. both directions, with the default quorum (2 of 3), after restarting
//!    the coordinator without the flag: such a chunk is acknowledged one
//!    replica short and repaired;
//! 3. A→B only (A's packets to B are dropped; B's reach A, whose answers
//!    are lost), default quorum.
//!
//! Every acknowledged file reads back byte-identical under the cut. Repair
//! must not loop: with the cut in place the coordinator's repair commands
//! (its `repair chunk_id=… source=… target=…` log lines; its /metrics
//! count none) are watched for at least 10 s (5 s for 1 and 3): the cluster
//! must get back to no under-replicated chunk with the cut still in place,
//! no chunk may be ordered copied across the cut more than a few times, and
//! nothing may be ordered once it is repaired. After healing, every chunk is
//! back at exactly 3 replicas, every acknowledged file is byte-identical, the
//! namespace holds exactly the acknowledged files and no datanode keeps a
//! half-written temp file.
//!
//! Needs root (`ip netns`): without it the test fails, it does not skip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dfs_chaos::{
    DEAD_AFTER, HEARTBEAT, SUSPECT_AFTER, check_replicas, check_status, dfs_bin, metric_sum,
    metrics_text, payload, read_all, wait_for,
};
use dfs_client::{Client, ClientConfig, ClientError, NodeState, PutOptions};
use dfs_testkit::netns::Net;

/// The coordinator's host; the test's client calls run there too (it
/// reaches every datanode).
const COORD: usize = 1;
/// The datanodes' hosts.
const DATANODES: [usize; 4] = [2, 3, 4, 5];
/// The two datanodes cut apart.
const A: usize = 2;
const B: usize = 3;
const MIB: usize = 1 << 20;
/// Longest an upload may take under the cut before it counts as hung.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(30);
/// How long repair commands are watched with the cut in place (at least;
/// the watch goes on until the repairs settled, up to [`CONVERGE`]).
const WATCH: Duration = Duration::from_secs(10);
/// The same for the one-way cut and the all-replica quorum.
const SHORT_WATCH: Duration = Duration::from_secs(5);
/// Longest the repair around a cut may take before it counts as looping.
/// A repair ordered across the cut onto a connection that was open before
/// it hangs until the coordinator gives up on it (10 s); the planner may
/// draw the same pair again, so this allows three such tries in a row.
const CONVERGE: Duration = Duration::from_secs(35);
/// Repair commands re-issued for one chunk across the cut before that is
/// a loop. The planner draws targets at random (no memory of failed
/// pairs), so a chunk may need a few tries; a loop re-issues one every
/// few hundred milliseconds.
const MAX_CROSSING_PER_CHUNK: usize = 8;

fn coordinator_url(net: &Net) -> String {
    format!("http://{}:7000", net.addr(COORD))
}

/// One process in a host's namespace; SIGKILLed and reaped on drop.
struct Proc {
    name: String,
    log: PathBuf,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes, the network and the scratch directory, dropped in that
/// order (processes first, also on panic, after their logs were printed).
struct Rig {
    procs: Vec<Proc>,
    net: Net,
    tmp: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.procs {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "---- {} ({})\n{}",
                    p.name,
                    p.log.display(),
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
            if std::env::var_os("DFS_CHAOS_KEEP").is_some() {
                let kept = std::mem::replace(&mut self.tmp, tempfile::tempdir().unwrap());
                eprintln!("DFS_CHAOS_KEEP: kept {}", kept.keep().display());
            }
        }
    }
}

impl Rig {
    fn spawn(&mut self, host: usize, name: &str, args: Vec<String>) {
        let log = self.tmp.path().join(format!("{name}.log"));
        // Appended to across restarts.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = self
            .net
            .command(host, dfs_bin())
            .args(&args)
            .arg("--insecure")
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} in its namespace: {e}"));
        self.procs.push(Proc {
            name: name.into(),
            log,
            child,
        });
    }

    /// (Re)starts the coordinator on h1, on its data directory, with the
    /// chaos suite's short liveness intervals and `extra` flags.
    fn start_coordinator(&mut self, extra: &[&str]) {
        if let Some(i) = self.procs.iter().position(|p| p.name == "coordinator") {
            drop(self.procs.remove(i));
        }
        let c = self.net.addr(COORD);
        let dir = self.tmp.path().join("coordinator");
        let mut args: Vec<String> = [
            "coordinator",
            "--listen",
            &format!("{c}:7000"),
            "--metrics-addr",
            &format!("{c}:9100"),
            "--data-dir",
            &dir.display().to_string(),
            "--replication",
            "3",
            "--chunk-size",
            "1MiB",
            "--heartbeat-interval",
            HEARTBEAT,
            "--dead-after",
            &format!("{}ms", DEAD_AFTER.as_millis()),
            "--suspect-after",
            SUSPECT_AFTER,
            // A repair that lands after the coordinator gave up on it leaves
            // a fourth copy: trimmed soon, not after the default 5 minutes.
            "--over-replication-grace",
            "2s",
            "--exit-with-parent",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        self.spawn(COORD, "coordinator", args);
    }

    /// A coordinator on h1 (with `coordinator_flags`) and a datanode on
    /// each of h2..h5.
    fn start(coordinator_flags: &[&str]) -> Rig {
        let net = Net::new(5).expect("network namespaces (root) are needed for scenario 9");
        let tmp = tempfile::Builder::new()
            .prefix("dfs-chaos-dnpart-")
            .tempdir()
            .expect("temp dir");
        let mut rig = Rig {
            procs: Vec::new(),
            net,
            tmp,
        };
        rig.start_coordinator(coordinator_flags);
        for h in DATANODES {
            let a = rig.net.addr(h);
            let dir = rig.tmp.path().join(format!("datanode-h{h}"));
            let args = [
                "datanode",
                "--listen",
                &format!("{a}:7101"),
                "--metrics-addr",
                &format!("{a}:9101"),
                "--coordinator",
                &coordinator_url(&rig.net),
                "--data-dir",
                &dir.display().to_string(),
                "--host",
                &format!("chaos-h{h}"),
                "--heartbeat-interval",
                HEARTBEAT,
                // A replica that blocks the pipeline is dropped after 1 s,
                // its final answer awaited 3 s (default 10 s and 30 s).
                "--replica-stall-timeout",
                "1s",
                "--exit-with-parent",
            ]
            .map(String::from)
            .to_vec();
            rig.spawn(h, &format!("datanode-h{h}"), args);
        }
        rig
    }

    fn log(&self, name: &str) -> PathBuf {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.log.clone())
            .expect("known process")
    }

    fn data_dir(&self, host: usize) -> PathBuf {
        self.tmp.path().join(format!("datanode-h{host}"))
    }

    /// Runs `f` with a fresh client inside the coordinator's host.
    fn client<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let url = coordinator_url(&self.net);
        self.net.run_in(COORD, move || async move {
            let mut config = ClientConfig::new(url);
            config.connect_timeout = Duration::from_secs(2);
            config.request_timeout = Duration::from_secs(10);
            // Above the primary's wait for a replica's final answer (3 ×
            // the 1 s stall timeout): the client must not give up on a
            // primary that is waiting out a replica across the cut.
            config.stream_idle_timeout = Duration::from_secs(10);
            let client = wait_for("a client connection", Duration::from_secs(30), || {
                let config = config.clone();
                async move { Client::connect(config).await.map_err(|e| e.to_string()) }
            })
            .await;
            f(client).await
        })
    }

    /// The coordinator's /metrics, read from inside its host.
    fn coordinator_metrics(&self) -> String {
        let addr = format!("{}:9100", self.net.addr(COORD)).parse().unwrap();
        self.net.run_in(COORD, move || async move {
            metrics_text(addr).unwrap_or_else(|e| panic!("coordinator /metrics: {e}"))
        })
    }

    /// Sum of `name{filter}` over every datanode's /metrics.
    fn datanode_metric(&self, name: &'static str, filter: &'static str) -> f64 {
        DATANODES
            .iter()
            .map(|&h| {
                let addr = format!("{}:9101", self.net.addr(h)).parse().unwrap();
                self.net.run_in(h, move || async move {
                    metrics_text(addr)
                        .map(|t| metric_sum(&t, name, filter))
                        .unwrap_or(0.0)
                })
            })
            .sum()
    }

    fn log_len(&self, name: &str) -> u64 {
        std::fs::metadata(self.log(name)).map_or(0, |m| m.len())
    }
}

/// Repair commands the coordinator logged (`repair chunk_id=… source=…
/// target=… command_id=…`), and what became of them.
#[derive(Debug, Default)]
struct RepairLog {
    /// (chunk, source, target) of every repair ordered, in order.
    issued: Vec<(String, String, String)>,
    /// Commands a datanode reported failed.
    failed: usize,
    /// Repairs the coordinator gave up waiting for.
    timed_out: usize,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split_whitespace().next()
}

/// The repair commands of the coordinator's log from byte `from` on.
fn repairs_since(log: &Path, from: u64) -> RepairLog {
    let bytes = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[(from as usize).min(bytes.len())..]).into_owned();
    let mut out = RepairLog::default();
    for line in text.lines() {
        if line.contains(" repair chunk_id=") {
            if let (Some(c), Some(s), Some(t)) = (
                field(line, "chunk_id"),
                field(line, "source"),
                field(line, "target"),
            ) {
                out.issued.push((c.into(), s.into(), t.into()));
            }
        } else if line.contains("command failed") {
            out.failed += 1;
        } else if line.contains("repair timed out") {
            out.timed_out += 1;
        }
    }
    out
}

/// The files of one phase: a few multi-chunk files (1 MiB chunks) and small
/// ones (small-chunk volumes, and one single-frame chunk above their limit).
fn files(dir: &str, seed: u64, big: usize, big_mib: usize, small: usize) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    for k in 0..big {
        out.push((
            format!("{dir}/big-{k}.bin"),
            payload(seed + k as u64, big_mib * MIB + 123 * (k + 1)),
        ));
    }
    for k in 0..small {
        let len = if k == 0 {
            200 * 1024
        } else {
            1 + (k * 4093) % (48 * 1024)
        };
        out.push((
            format!("{dir}/small-{k}.bin"),
            payload(seed + 1000 + k as u64, len),
        ));
    }
    out
}

/// What a batch of concurrent uploads came to.
#[derive(Debug, Default)]
struct Uploads {
    acked: Vec<(String, Bytes)>,
    /// Path and error of each upload that failed.
    failed: Vec<(String, String)>,
    /// Longest single upload.
    slowest: Duration,
    /// The whole batch.
    took: Duration,
}

/// Puts every file at once; each must end (acknowledged, or an error naming
/// its path) within [`UPLOAD_DEADLINE`], and a failed one must not exist.
async fn upload_all(client: Client, batch: Vec<(String, Bytes)>) -> Uploads {
    let started = Instant::now();
    let options = PutOptions {
        replication: 3,
        chunk_size: MIB as u64,
        ..Default::default()
    };
    let results = futures::future::join_all(batch.into_iter().map(|(path, data)| {
        let (client, options) = (client.clone(), options.clone());
        async move {
            let t = Instant::now();
            let r = tokio::time::timeout(
                UPLOAD_DEADLINE,
                client.put_bytes(data.clone(), &path, &options),
            )
            .await;
            (path, data, r, t.elapsed())
        }
    }))
    .await;
    let mut out = Uploads::default();
    for (path, data, r, took) in results {
        out.slowest = out.slowest.max(took);
        match r {
            Err(_) => panic!(
                "the upload of {path} hung: no outcome within {UPLOAD_DEADLINE:?} (it should \
                 complete around the cut or fail)"
            ),
            Ok(Ok(info)) => {
                assert_eq!(info.size, data.len() as u64, "{path}: acknowledged size");
                out.acked.push((path, data));
            }
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(msg.contains(&path), "unclear error for {path}: {msg}");
                match client.stat(&path).await {
                    Err(ClientError::NotFound { .. }) => {}
                    other => panic!("{path} failed ({msg}) but is visible: {other:?}"),
                }
                out.failed.push((path, msg));
            }
        }
    }
    out.took = started.elapsed();
    out
}

/// Reads every file back: the bytes of the files that are unreadable or
/// differ (lost), and what went wrong with each.
async fn read_back(client: &Client, files: &[(String, Bytes)]) -> (usize, Vec<String>) {
    let (mut lost, mut problems) = (0, Vec::new());
    for (path, data) in files {
        match read_all(client, path).await {
            Ok(got) if got == data.as_ref() => {}
            Ok(got) => {
                lost += data.len();
                problems.push(format!(
                    "{path}: read {} bytes that differ from the {} written",
                    got.len(),
                    data.len()
                ));
            }
            Err(e) => {
                lost += data.len();
                problems.push(format!("{path}: {e}"));
            }
        }
    }
    (lost, problems)
}

/// One sample of the coordinator's redundancy while it is watched.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    under: u64,
    missing: u64,
    over: u64,
}

/// What one cut came to.
#[derive(Debug)]
struct Phase {
    name: &'static str,
    uploads: Uploads,
    replans: f64,
    dropped: f64,
    repairs: RepairLog,
    /// Repairs ordered between A and B (either way).
    crossing: usize,
    /// Chunks that needed repair during the cut.
    repaired_chunks: usize,
    /// Since the uploads ended, until the cluster reported no
    /// under-replicated or missing chunk with the cut still in place.
    converged_after: Duration,
    /// Repair commands ordered after that point (the quiet window).
    after_convergence: usize,
    quiet_for: Duration,
}

/// Uploads `batch` with the cut in place, reads it back, and watches the
/// repairs until they settle (or loop).
fn run_cut(
    rig: &Rig,
    name: &'static str,
    batch: Vec<(String, Bytes)>,
    ids: &HashMap<usize, String>,
    watch_for: Duration,
) -> Phase {
    let coord_log = rig.log("coordinator");
    let log_from = rig.log_len("coordinator");
    let metrics = rig.coordinator_metrics();
    let replans0 = metric_sum(
        &metrics,
        "dfs_coordinator_rpc_requests_total",
        "method=\"ReplanChunk\"",
    );
    let dropped0 = rig.datanode_metric("dfs_datanode_replicas_dropped_total", "");

    // Uploads, then (cut still in place) reads and the repair watch.
    let uploads = rig.client(move |c| upload_all(c, batch));
    eprintln!(
        "scenario 9 [{name}]: {} acknowledged, {} failed in {:.1}s (slowest {:.1}s){}",
        uploads.acked.len(),
        uploads.failed.len(),
        uploads.took.as_secs_f64(),
        uploads.slowest.as_secs_f64(),
        uploads
            .failed
            .iter()
            .map(|(p, e)| format!("\n  failed {p}: {e}"))
            .collect::<String>()
    );
    let acked = uploads.acked.clone();
    let log = coord_log.clone();
    let (read, (samples, quiet_from)) = rig.client(move |c| async move {
        let watch = async {
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut full_since: Option<Duration> = None;
            // The coordinator log's length when it was first seen repaired
            // (this stretch): what it logs after is the quiet window.
            let mut quiet_from: Option<u64> = None;
            loop {
                let at = start.elapsed();
                if let Ok(s) = c.status().await {
                    let full = s.under_replicated_chunks == 0 && s.missing_chunks == 0;
                    samples.push(Sample {
                        at,
                        under: s.under_replicated_chunks,
                        missing: s.missing_chunks,
                        over: s.over_replicated_chunks,
                    });
                    if full {
                        full_since.get_or_insert(at);
                        quiet_from
                            .get_or_insert_with(|| std::fs::metadata(&log).map_or(0, |m| m.len()));
                    } else {
                        full_since = None;
                        quiet_from = None;
                    }
                }
                // At least `watch_for`; once repaired, 3 s more of quiet to
                // see that nothing is re-issued; at most CONVERGE.
                let done = match full_since {
                    Some(f) => at >= watch_for && at >= f + Duration::from_secs(3),
                    None => at >= CONVERGE,
                };
                if done {
                    return (samples, quiet_from);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let read = async {
            let t = Instant::now();
            let (lost, problems) = read_back(&c, &acked).await;
            (lost, problems, t.elapsed())
        };
        tokio::join!(read, watch)
    });
    let (lost, problems, read) = read;
    assert!(
        problems.is_empty(),
        "[{name}] acknowledged files are not readable byte-identical under the cut ({lost} \
         bytes lost): {problems:#?}"
    );
    let watched = samples.last().map_or(Duration::ZERO, |s| s.at);

    let metrics = rig.coordinator_metrics();
    let replans = metric_sum(
        &metrics,
        "dfs_coordinator_rpc_requests_total",
        "method=\"ReplanChunk\"",
    ) - replans0;
    let dropped = rig.datanode_metric("dfs_datanode_replicas_dropped_total", "") - dropped0;
    let repairs = repairs_since(&coord_log, log_from);
    let (a, b) = (&ids[&A], &ids[&B]);
    let crosses = |s: &str, t: &str| (s == a && t == b) || (s == b && t == a);
    let mut per_chunk: BTreeMap<&str, usize> = BTreeMap::new();
    for (c, s, t) in &repairs.issued {
        if crosses(s, t) {
            *per_chunk.entry(c.as_str()).or_default() += 1;
        }
    }
    let crossing: usize = per_chunk.values().sum();
    let repaired_chunks = repairs
        .issued
        .iter()
        .map(|(c, _, _)| c.as_str())
        .collect::<BTreeSet<_>>()
        .len();

    // Convergence under the cut: the last stretch of samples with nothing
    // under-replicated or missing, lasting to the end of the watch.
    let converged = samples
        .iter()
        .rposition(|s| s.under > 0 || s.missing > 0)
        .map_or(samples.first(), |i| samples.get(i + 1))
        .map(|s| s.at);
    eprintln!(
        "scenario 9 [{name}]: read back in {:.1}s; watched {:.1}s: {} repair commands ({} across \
         the cut, {} failed, {} timed out), re-plans {replans}, replicas dropped {dropped}; \
         samples (t under/missing/over): {}",
        read.as_secs_f64(),
        watched.as_secs_f64(),
        repairs.issued.len(),
        crossing,
        repairs.failed,
        repairs.timed_out,
        samples
            .iter()
            .step_by(4)
            .map(|s| format!(
                "{:.1}s {}/{}/{}",
                s.at.as_secs_f64(),
                s.under,
                s.missing,
                s.over
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let Some(converged_after) = converged else {
        panic!(
            "[{name}] repair did not converge with the cut in place: still under-replicated or \
             missing chunks after {watched:?} ({} repair commands, {crossing} of them across the \
             cut, {} failed, {} timed out; per chunk across the cut: {per_chunk:?})",
            repairs.issued.len(),
            repairs.failed,
            repairs.timed_out,
        )
    };
    if let Some((c, n)) = per_chunk.iter().max_by_key(|(_, n)| **n) {
        assert!(
            *n <= MAX_CROSSING_PER_CHUNK,
            "[{name}] repair loops across the cut: chunk {c} was ordered copied between A and B \
             {n} times ({per_chunk:?})"
        );
    }
    // Nothing is ordered once the cluster is repaired: the quiet window.
    let after = quiet_from.map_or(0, |from| repairs_since(&coord_log, from).issued.len());
    Phase {
        name,
        uploads,
        replans,
        dropped,
        repairs,
        crossing,
        repaired_chunks,
        converged_after,
        after_convergence: after,
        quiet_for: watched.saturating_sub(converged_after),
    }
}

/// Waits for four healthy datanodes and the end of safe mode; their ids
/// by host.
fn wait_ready(rig: &Rig) -> HashMap<usize, String> {
    let want: Vec<String> = DATANODES
        .iter()
        .map(|&h| format!("http://{}:7101", rig.net.addr(h)))
        .collect();
    let addrs = want.clone();
    let by_addr: HashMap<String, String> = rig.client(move |c| async move {
        wait_for(
            "4 healthy datanodes and no safe mode",
            Duration::from_secs(30),
            || async {
                let s = c.status().await.map_err(|e| e.to_string())?;
                let healthy: HashMap<String, String> = s
                    .nodes
                    .iter()
                    .filter(|n| n.state == Some(NodeState::Healthy))
                    .map(|n| (n.address.clone(), n.node_id.to_string()))
                    .collect();
                if addrs.iter().all(|a| healthy.contains_key(a)) && !s.safe_mode.active {
                    Ok(healthy)
                } else {
                    Err(format!(
                        "healthy {:?}, safe mode {}",
                        healthy.keys().collect::<Vec<_>>(),
                        s.safe_mode.active
                    ))
                }
            },
        )
        .await
    });
    DATANODES
        .iter()
        .zip(&want)
        .map(|(&h, a)| (h, by_addr[a].clone()))
        .collect()
}

#[test]
fn datanode_datanode_partition_uploads_complete_around_it_and_repair_does_not_loop() {
    let started = Instant::now();
    // First with an all-replica write quorum: a chunk whose primary loses
    // its replica across the cut is not stored, and the client re-plans it.
    let mut rig = Rig::start(&["--write-quorum", "3"]);
    let ids = wait_ready(&rig);
    let up_at = started.elapsed();

    // Warm-up before any cut: connections between the datanodes exist (a
    // partition strikes a running cluster, not a fresh one).
    let warm = rig.client(|c| upload_all(c, files("/warm", 90, 2, 3, 6)));
    assert!(
        warm.failed.is_empty(),
        "uploads failed before any cut: {:?}",
        warm.failed
    );
    let mut acked: Vec<(String, Bytes)> = warm.acked.clone();
    let mut failed: Vec<String> = Vec::new();

    rig.net.cut(A, B).unwrap();
    let all = run_cut(
        &rig,
        "A<->B, quorum 3/3",
        files("/q3", 100, 3, 4, 8),
        &ids,
        SHORT_WATCH,
    );
    rig.net.heal(A, B).unwrap();
    acked.extend(all.uploads.acked.iter().cloned());
    failed.extend(all.uploads.failed.iter().map(|(p, _)| p.clone()));
    assert!(
        all.replans > 0.0 || all.dropped == 0.0,
        "replicas were dropped under an all-replica quorum, yet no chunk was re-planned"
    );

    // The default quorum (2 of 3): a chunk is acknowledged one replica short
    // and repaired; the repair must go around the cut, not loop across it.
    rig.start_coordinator(&[]);
    let ids2 = wait_ready(&rig);
    assert_eq!(ids, ids2, "the datanodes kept their ids");

    // Cut A and B apart, both directions.
    rig.net.cut(A, B).unwrap();
    let two = run_cut(&rig, "A<->B", files("/cut2", 200, 3, 5, 12), &ids, WATCH);
    rig.net.heal(A, B).unwrap();
    acked.extend(two.uploads.acked.iter().cloned());
    failed.extend(two.uploads.failed.iter().map(|(p, _)| p.clone()));

    // A→B only: A's packets to B are dropped, B's reach A (whose answers
    // are lost).
    rig.net.cut_one_way(A, B).unwrap();
    let one = run_cut(
        &rig,
        "A->B",
        files("/cut1", 300, 3, 4, 8),
        &ids,
        SHORT_WATCH,
    );
    rig.net.heal_one_way(A, B).unwrap();
    let healed = Instant::now();
    acked.extend(one.uploads.acked.iter().cloned());
    failed.extend(one.uploads.failed.iter().map(|(p, _)| p.clone()));

    // Healed: full redundancy (exactly 3 replicas of every chunk), every
    // acknowledged file byte-identical, nothing unacknowledged visible.
    let files_acked = acked.clone();
    let failed_paths = failed.clone();
    let (back_after, lost) = rig.client(move |c| async move {
        wait_for(
            "full redundancy after the heal",
            Duration::from_secs(30),
            || async {
                check_status(&c.status().await.map_err(|e| e.to_string())?, true)?;
                for (p, _) in &files_acked {
                    let map = c.chunk_map(p).await.map_err(|e| format!("{p}: {e}"))?;
                    check_replicas(&map, 3, &[]).map_err(|e| format!("{p}: {e}"))?;
                }
                Ok(())
            },
        )
        .await;
        let back_after = healed.elapsed();
        let (lost, problems) = read_back(&c, &files_acked).await;
        assert!(
            problems.is_empty(),
            "after the heal, acknowledged files are not readable byte-identical ({lost} bytes \
             lost): {problems:#?}"
        );
        for p in &failed_paths {
            assert!(
                matches!(c.stat(p).await, Err(ClientError::NotFound { .. })),
                "{p}: a failed upload is visible after the heal"
            );
        }
        // The namespace holds exactly the acknowledged files.
        let mut listed = BTreeSet::new();
        for dir in ["/warm", "/q3", "/cut2", "/cut1"] {
            if let Ok(entries) = c.list(dir).await {
                listed.extend(entries.into_iter().map(|e| e.path));
            }
        }
        let want: BTreeSet<String> = files_acked.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            listed, want,
            "the namespace differs from what was acknowledged"
        );
        (back_after, lost)
    });
    // Nothing half-written stays in a datanode's tmp/.
    let tmp_dirs: Vec<PathBuf> = DATANODES
        .iter()
        .map(|&h| rig.data_dir(h).join("tmp"))
        .collect();
    rig.net.run_in(COORD, move || async move {
        wait_for("no temp files", Duration::from_secs(20), || async {
            let left: Vec<PathBuf> = tmp_dirs
                .iter()
                .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
                .map(|e| e.path())
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await;
    });

    let phases = [&all, &two, &one];
    let sum = |f: &dyn Fn(&Phase) -> usize| phases.iter().map(|p| f(p)).sum::<usize>();
    let bytes: usize = acked.iter().map(|(_, d)| d.len()).sum();
    let phase = |p: &Phase| {
        format!(
            "{}: {}/{} acked/failed in {:.1}s, re-plans {}, replicas dropped {}, repair commands {} \
             ({} across the cut, {} failed, {} timed out; {} chunks), repaired around the cut \
             {:.1}s after the uploads, {} re-issued in the {:.1}s after",
            p.name,
            p.uploads.acked.len(),
            p.uploads.failed.len(),
            p.uploads.took.as_secs_f64(),
            p.replans,
            p.dropped,
            p.repairs.issued.len(),
            p.crossing,
            p.repairs.failed,
            p.repairs.timed_out,
            p.repaired_chunks,
            p.converged_after.as_secs_f64(),
            p.after_convergence,
            p.quiet_for.as_secs_f64(),
        )
    };
    println!(
        "scenario 9: datanode<->datanode partition (coordinator reaches all; 4 datanodes, \
         replication 3, 1 MiB chunks): uploads acknowledged {}/failed {} during the cuts, \
         re-plans {}, repair commands during the cuts {} ({} across the cut, none after \
         repaired), bytes lost {lost} ({} files, {bytes} bytes byte-identical), full redundancy \
         {:.1}s after the heal; total {:.1}s (up {:.1}s) | {} | {} | {}",
        sum(&|p| p.uploads.acked.len()),
        sum(&|p| p.uploads.failed.len()),
        phases.iter().map(|p| p.replans).sum::<f64>(),
        sum(&|p| p.repairs.issued.len()),
        sum(&|p| p.crossing),
        acked.len(),
        back_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        up_at.as_secs_f64(),
        phase(&all),
        phase(&two),
        phase(&one),
    );
    for p in phases {
        assert_eq!(
            p.after_convergence, 0,
            "[{}] repair commands were still ordered after the cluster was repaired around the cut",
            p.name
        );
    }
}
