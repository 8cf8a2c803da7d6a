//! Scenario 10 (issue 19): several clients racing on the same paths while
//! datanodes and coordinators are SIGKILLed. At the end the namespace
//! matches a valid serial order of the acknowledged operations, and every
//! file reads back byte-identical: the whole bytes of exactly one put.
//!
//! ```text
//!   4 clients ──▶ group of 3 coordinators (Raft) ──▶ 4 datanodes, 1 MiB chunks
//!     overwrite-puts, renames, deletes, mkdirs, lists, stats, gets
//!     on /race/{a,b,c}, /race/d/{a,b}, /race/e/a and the dirs /race/d, /race/e
//!   killer: every 1–3 s SIGKILL a random datanode, or a coordinator (half
//!     the time the leader), and start it again 0.5–4 s later
//!   every call recorded (call and answer times, result) ──▶ linearizability
//!     checker (dfs_testkit::linearizability, FileModel)
//! ```
//!
//! Every put writes bytes that name it: a content id (unique per put) and
//! the length in the first 16 bytes, then `payload(id, …)`; so a read tells
//! which put's bytes it got, and anything else (a mix of two puts, a torn
//! or truncated file) is caught on the spot. A call answered with a
//! namespace error is a definite answer; a call whose answer was lost
//! (timeout, no leader within the failover time, a broken connection, any
//! other error) is recorded as indeterminate: it may have taken effect at
//! any instant after its call, or never. A put that failed before its
//! confirm was sent (the planner refused it, a chunk could not be stored)
//! had no effect, and a read that failed tells nothing; both are left out
//! of the history. When the killing stops, every process is up again: the
//! cluster must be back at full redundancy (when it is not, the test prints
//! the chunks short of replicas and the safe mode, then leaves safe mode by
//! hand to show whether that was what held the repairs back), and an
//! auditor lists the whole tree and reads every file; those answers join
//! the history, which the checker then checks.
//!
//! Length: `DFS_CHAOS_RACE_SECS` (default 20); seed `DFS_CHAOS_SEED`
//! (default 19; the calls and the kills follow it, their timing does not).
//! With `DFS_CHAOS_KEEP=1` a failing run keeps the cluster's logs in /tmp.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_chaos::{
    Cluster, ClusterOptions, check_status, describe_nodes, env_u64, payload, run, wait_for,
};
use dfs_client::{Client, ClientConfig, ClientError, ClusterStatus, FileInfo, PutOptions};
use dfs_testkit::linearizability::{
    Event, FileModel, FileOp, FileRet, NamespaceModel, Node, NsOp, NsRet, Outcome, check_with,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

type FileEvent = Event<FileOp, FileRet>;

const CLIENTS: usize = 4;
const DATANODES: usize = 4;
/// The files the clients race on.
const FILES: [&str; 6] = [
    "/race/a",
    "/race/b",
    "/race/c",
    "/race/d/a",
    "/race/d/b",
    "/race/e/a",
];
/// The directories (made, deleted and renamed too).
const DIRS: [&str; 2] = ["/race/d", "/race/e"];
/// Listed.
const LISTED: [&str; 3] = ["/race", "/race/d", "/race/e"];
/// Longest a client waits for one call before it stops waiting (the call
/// is then indeterminate).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Model steps the checker may take (about a minute of a debug build
/// here; a history of this length with a handful of indeterminate calls
/// takes well under a million).
const CHECK_STEPS: u64 = 5_000_000;
/// Longest the cluster may take to get back to full redundancy once every
/// process is up again (a few MiB to copy: seconds).
const REDUNDANCY_WAIT: Duration = Duration::from_secs(45);

/// The length of content `id`'s bytes: mostly small files (planned and
/// confirmed in batches), one in six of one to two and a half chunks.
fn content_len(id: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(id ^ 0x5eed_5eed);
    if rng.random_ratio(1, 6) {
        rng.random_range((1 << 20)..(5 << 19))
    } else {
        rng.random_range(16..(64 << 10))
    }
}

/// The bytes of content `id`: the id and the length, then payload bytes.
fn content(id: u64) -> bytes::Bytes {
    let len = content_len(id);
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&(len as u64).to_le_bytes());
    b.extend_from_slice(&payload(id, len - 16));
    b.into()
}

/// Which put's bytes `got` is, when it is exactly one content's bytes,
/// whole.
fn identify(got: &[u8]) -> Option<u64> {
    let id = u64::from_le_bytes(got.get(..8)?.try_into().ok()?);
    let len = u64::from_le_bytes(got.get(8..16)?.try_into().ok()?);
    (len == got.len() as u64 && content_len(id) == got.len() && got == &content(id)[..])
        .then_some(id)
}

fn node(info: &FileInfo) -> Node {
    if info.is_dir() {
        Node::Dir
    } else {
        Node::File {
            version: info.version,
        }
    }
}

/// What became of one call.
enum Answer {
    /// A definite answer.
    Ret(FileRet),
    /// The outcome is unknown: indeterminate (a write), or nothing learnt
    /// (a read); why.
    Lost(String),
    /// It failed without any effect (a put that never sent its confirm, a
    /// read that could not fetch the bytes): left out of the history.
    NoEffect,
}

/// A namespace error is a definite answer; anything else is not.
fn ns_error(e: &ClientError) -> Option<Code> {
    match e {
        ClientError::NotFound { .. } => Some(Code::NotFound),
        ClientError::AlreadyExists { .. } => Some(Code::AlreadyExists),
        ClientError::InvalidArgument(_) => Some(Code::InvalidArgument),
        ClientError::FailedPrecondition(_) => Some(Code::FailedPrecondition),
        _ => None,
    }
}

fn answer<T>(r: Result<T, ClientError>, ok: impl FnOnce(T) -> FileRet) -> Answer {
    match r {
        Ok(v) => Answer::Ret(ok(v)),
        Err(e) => match ns_error(&e) {
            Some(code) => Answer::Ret(FileRet::Ns(NsRet::Err(code))),
            None => Answer::Lost(cause(&e)),
        },
    }
}

/// An error's kind, for the tally of why answers were lost (ids and
/// numbers masked).
fn cause(e: &ClientError) -> String {
    let text = match e {
        ClientError::CoordinatorUnreachable { .. } => "coordinator unreachable".to_string(),
        ClientError::Rpc { method, status } => {
            format!("{method}: {:?}: {}", status.code(), status.message())
        }
        e => e.to_string(),
    };
    let masked: String = text
        .chars()
        .map(|c| if c.is_ascii_hexdigit() { '#' } else { c })
        .collect();
    masked.chars().take(90).collect()
}

/// What a client saw that no serial order can explain, found on the spot.
#[derive(Debug, Default)]
struct Anomalies(Mutex<Vec<String>>);

impl Anomalies {
    fn add(&self, what: String) {
        eprintln!("racing clients: ANOMALY: {what}");
        self.0.lock().unwrap().push(what);
    }
}

/// Runs `op` through `client`.
async fn perform(client: &Client, op: &FileOp, anomalies: &Anomalies) -> Answer {
    let entry = |i: FileInfo| FileRet::Ns(NsRet::Entry(node(&i)));
    match op {
        FileOp::Ns(NsOp::Mkdir { path, parents }) => {
            answer(client.mkdir(path, *parents).await, entry)
        }
        FileOp::Ns(NsOp::Delete { path, recursive }) => {
            answer(client.delete(path, *recursive).await, |d| {
                FileRet::Ns(NsRet::Deleted {
                    files: d.files_deleted,
                })
            })
        }
        FileOp::Ns(NsOp::Rename {
            source,
            destination,
        }) => answer(client.rename(source, destination).await, entry),
        FileOp::Ns(NsOp::Stat { path }) => answer(client.stat(path).await, entry),
        FileOp::List { path } => answer(client.list(path).await, |entries| {
            FileRet::Listing(entries.iter().map(|e| (e.name.clone(), node(e))).collect())
        }),
        FileOp::Put {
            path,
            content: id,
            overwrite,
        } => {
            let options = PutOptions {
                overwrite: *overwrite,
                ..Default::default()
            };
            match client.put_bytes(content(*id), path, &options).await {
                Ok(info) => {
                    if info.size != content_len(*id) as u64 {
                        anomalies.add(format!(
                            "put of content {id} to {path} acknowledged {} bytes, sent {}",
                            info.size,
                            content_len(*id)
                        ));
                    }
                    Answer::Ret(entry(info))
                }
                // No chunk stored: the client aborted, the confirm never
                // went out.
                Err(ClientError::UploadChunk { .. }) => Answer::NoEffect,
                // The target's namespace check (at the plan or the
                // confirm): a definite answer.
                Err(ClientError::FailedPrecondition(m))
                    if m.ends_with(" is a directory") || m.ends_with(" is not a directory") =>
                {
                    Answer::Ret(FileRet::Ns(NsRet::Err(Code::FailedPrecondition)))
                }
                // Refused by the planner (a new leader that has not heard
                // from enough datanodes yet): no plan, no effect.
                Err(ClientError::FailedPrecondition(m))
                    if m.contains(" datanodes with free space, ") =>
                {
                    Answer::NoEffect
                }
                Err(ClientError::AlreadyExists { .. }) => {
                    Answer::Ret(FileRet::Ns(NsRet::Err(Code::AlreadyExists)))
                }
                // Any other precondition (a quorum of replicas not
                // vouched for in time), and every other error: the
                // confirm may have been applied.
                Err(e) => Answer::Lost(cause(&e)),
            }
        }
        FileOp::Read { path } => {
            let mut got = Vec::new();
            match client.get(path, &mut got).await {
                Ok(info) => match identify(&got) {
                    Some(id) => Answer::Ret(FileRet::Read {
                        version: info.version,
                        content: id,
                    }),
                    None => {
                        anomalies.add(format!(
                            "{path} (version {}, {} bytes) read back {} bytes that are no put's whole content (they start {:02x?})",
                            info.version,
                            info.size,
                            got.len(),
                            &got[..got.len().min(16)]
                        ));
                        // Recorded as bytes no put wrote: the checker
                        // shows where.
                        Answer::Ret(FileRet::Read {
                            version: info.version,
                            content: u64::MAX,
                        })
                    }
                },
                Err(ClientError::DownloadChunk { .. }) => Answer::NoEffect,
                Err(e) => match ns_error(&e) {
                    Some(code) => Answer::Ret(FileRet::Ns(NsRet::Err(code))),
                    None => Answer::Lost(cause(&e)),
                },
            }
        }
    }
}

fn random_op(rng: &mut StdRng, content: u64) -> FileOp {
    let file = |rng: &mut StdRng| FILES[rng.random_range(0..FILES.len())].to_string();
    let dir = |rng: &mut StdRng| DIRS[rng.random_range(0..DIRS.len())].to_string();
    let any = |rng: &mut StdRng| {
        if rng.random_ratio(1, 4) {
            dir(rng)
        } else {
            file(rng)
        }
    };
    match rng.random_range(0..100) {
        0..30 => FileOp::Put {
            path: if rng.random_ratio(1, 12) {
                dir(rng)
            } else {
                file(rng)
            },
            content,
            overwrite: true,
        },
        30..44 => FileOp::Ns(NsOp::Rename {
            source: any(rng),
            destination: any(rng),
        }),
        44..53 => FileOp::Ns(NsOp::Delete {
            path: any(rng),
            recursive: rng.random_bool(0.5),
        }),
        53..62 => FileOp::Ns(NsOp::Mkdir {
            path: if rng.random_ratio(1, 4) {
                file(rng)
            } else {
                dir(rng)
            },
            parents: rng.random_bool(0.5),
        }),
        62..72 => FileOp::List {
            path: LISTED[rng.random_range(0..LISTED.len())].to_string(),
        },
        72..82 => FileOp::Ns(NsOp::Stat { path: any(rng) }),
        _ => FileOp::Read { path: file(rng) },
    }
}

/// The history's clock: nanoseconds since the recording started.
fn nanos(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// A client of the whole group: calls give up after 3 s on one member and
/// 5 s of failing over (longer than an election), chunk streams after 3 s
/// of silence.
async fn connect(url: &str) -> Client {
    let mut config = ClientConfig::new(url);
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(3);
    config.stream_idle_timeout = Duration::from_secs(3);
    config.failover_timeout = Duration::from_secs(5);
    wait_for("a client connection", Duration::from_secs(30), || {
        let config = config.clone();
        async move { Client::connect(config).await.map_err(|e| e.to_string()) }
    })
    .await
}

#[derive(Debug, Default, Clone)]
struct Tally {
    acknowledged: usize,
    indeterminate: usize,
    no_effect: usize,
    reads_lost: usize,
    /// Why writes were indeterminate.
    causes: BTreeMap<String, usize>,
}

/// One client: random calls until `stop`, every one recorded.
async fn client_loop(
    id: usize,
    seed: u64,
    client: Client,
    t0: Instant,
    stop: Arc<AtomicBool>,
    anomalies: Arc<Anomalies>,
) -> (Vec<FileEvent>, Tally) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(id as u64));
    let mut events = Vec::new();
    let mut tally = Tally::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // Content ids: unique per put, readable in a failure's excerpt.
        let op = random_op(&mut rng, (id as u64 + 1) * 1_000_000 + n);
        let call = nanos(t0);
        let got = tokio::time::timeout(CALL_TIMEOUT, perform(&client, &op, &anomalies))
            .await
            .unwrap_or_else(|_| Answer::Lost(format!("no answer within {CALL_TIMEOUT:?}")));
        let returned = nanos(t0);
        let read = matches!(
            op,
            FileOp::Read { .. } | FileOp::List { .. } | FileOp::Ns(NsOp::Stat { .. })
        );
        let answered = matches!(got, Answer::Ret(_));
        match got {
            Answer::Ret(r) => {
                tally.acknowledged += 1;
                events.push(Event::new(id, op, call, r, returned));
            }
            // A read that did not answer has no effect: left out.
            Answer::Lost(_) | Answer::NoEffect if read => tally.reads_lost += 1,
            Answer::Lost(why) => {
                tally.indeterminate += 1;
                *tally.causes.entry(why).or_default() += 1;
                events.push(Event::indeterminate(id, op, call));
            }
            Answer::NoEffect => tally.no_effect += 1,
        }
        if !answered {
            // No leader or too few datanodes for a moment.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (events, tally)
}

#[derive(Debug, Default, Clone, Copy)]
struct Kills {
    datanodes: usize,
    coordinators: usize,
    leaders: usize,
}

/// Every 1–3 s, SIGKILLs a random datanode (down 0.5–4 s: sometimes past
/// dead-after, 3 s) or coordinator (half the time the leader, else any;
/// down 0.5–2.5 s), and starts it again after its time down, until `stop`.
/// At most one datanode and one coordinator down at a time, so the group
/// always has a quorum and every chunk a live replica. Returns once every
/// victim is up again.
async fn killer(
    cluster: Arc<Mutex<Cluster>>,
    members: Vec<String>,
    client: Client,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Kills {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4b11);
    let mut kills = Kills::default();
    // The restart of the datanode and of the coordinator down, if any.
    let mut datanode_down: Option<tokio::task::JoinHandle<()>> = None;
    let mut coordinator_down: Option<tokio::task::JoinHandle<()>> = None;
    let restart_later =
        |cluster: Arc<Mutex<Cluster>>, down: Duration, datanode: Option<usize>, member: usize| {
            tokio::spawn(async move {
                tokio::time::sleep(down).await;
                let mut c = cluster.lock().unwrap();
                match datanode {
                    Some(i) => c.datanodes[i].start(),
                    None => c.coordinators()[member].start(),
                }
            })
        };
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let datanode_up = datanode_down.as_ref().is_none_or(|t| t.is_finished());
        let coordinator_up = coordinator_down.as_ref().is_none_or(|t| t.is_finished());
        let datanode = match (datanode_up, coordinator_up) {
            (true, true) => rng.random_bool(0.5),
            (true, false) => true,
            (false, true) => false,
            (false, false) => continue,
        };
        if datanode {
            let i = rng.random_range(0..DATANODES);
            cluster.lock().unwrap().datanodes[i].kill9();
            kills.datanodes += 1;
            let down = Duration::from_millis(rng.random_range(500..4000));
            eprintln!("racing clients: datanode-{i} SIGKILLed for {down:?}");
            datanode_down = Some(restart_later(cluster.clone(), down, Some(i), 0));
        } else {
            let leader = tokio::time::timeout(Duration::from_secs(5), client.status())
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|s| {
                    let l = s.coordinators.iter().find(|m| m.role == "leader")?;
                    members.iter().position(|u| *u == l.address)
                });
            let i = match leader {
                Some(l) if rng.random_bool(0.5) => l,
                _ => rng.random_range(0..members.len()),
            };
            cluster.lock().unwrap().coordinators()[i].kill9();
            kills.coordinators += 1;
            kills.leaders += usize::from(leader == Some(i));
            let down = Duration::from_millis(rng.random_range(500..2500));
            eprintln!(
                "racing clients: coordinator {}{} SIGKILLed for {down:?}",
                i + 1,
                if leader == Some(i) {
                    " (the leader)"
                } else {
                    ""
                }
            );
            coordinator_down = Some(restart_later(cluster.clone(), down, None, i));
        }
    }
    for t in [datanode_down, coordinator_down].into_iter().flatten() {
        t.await.expect("restart");
    }
    kills
}

/// Retries `op` (a read) through `client` until it answers definitely;
/// records it.
async fn audit(
    client: &Client,
    op: FileOp,
    t0: Instant,
    anomalies: &Anomalies,
    history: &mut Vec<FileEvent>,
) -> FileRet {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let call = nanos(t0);
        let got = tokio::time::timeout(CALL_TIMEOUT, perform(client, &op, anomalies))
            .await
            .unwrap_or_else(|_| Answer::Lost(String::new()));
        if let Answer::Ret(r) = got {
            history.push(Event::new(CLIENTS, op, call, r.clone(), nanos(t0)));
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "the healed cluster did not answer {op:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits up to `within` for no under-, over-replicated or missing chunk;
/// the last status, or the last observation on timeout.
async fn full_redundancy(client: &Client, within: Duration) -> Result<ClusterStatus, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match client.status().await {
            Ok(status) => match check_status(&status, true) {
                Ok(()) => return Ok(status),
                Err(e) => format!("{e}; safe mode {:?}", status.safe_mode),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file's chunks with fewer than 3 replicas in its chunk map, or
/// whose replicas on the datanodes' disks differ from the map: what a
/// failure to get back to full redundancy shows.
async fn redundancy_report(client: &Client, cluster: &Cluster) -> String {
    let mut out = match client.nodes().await {
        Ok(nodes) => format!("datanodes: {}\n", describe_nodes(&nodes)),
        Err(e) => format!("datanodes: {e}\n"),
    };
    let names: Vec<(String, Vec<String>)> = cluster
        .datanodes
        .iter()
        .map(|d| (d.node_id().unwrap_or_default(), d.stored_chunks()))
        .collect();
    let short = |id: &str| id[..id.len().min(8)].to_string();
    let mut dirs = vec!["/race".to_string()];
    while let Some(dir) = dirs.pop() {
        for e in client.list(&dir).await.unwrap_or_default() {
            if e.is_dir() {
                dirs.push(e.path);
                continue;
            }
            let Ok(map) = client.chunk_map(&e.path).await else {
                continue;
            };
            for c in &map.chunks {
                let listed: Vec<String> = c
                    .replicas
                    .iter()
                    .map(|r| short(r.node_id.as_str()))
                    .collect();
                let on_disk: Vec<String> = names
                    .iter()
                    .filter(|(_, chunks)| chunks.iter().any(|x| x == c.chunk_id.as_str()))
                    .map(|(id, _)| short(id))
                    .collect();
                let mut sorted = listed.clone();
                sorted.sort();
                let mut disk_sorted = on_disk.clone();
                disk_sorted.sort();
                if listed.len() < 3 || sorted != disk_sorted {
                    out += &format!(
                        "{} (version {}) chunk {} {} ({} bytes): replicas in the map {listed:?}, on disk {on_disk:?}\n",
                        e.path, map.file.version, c.index, c.chunk_id, c.size
                    );
                }
            }
        }
    }
    out
}

#[test]
fn racing_clients_under_kills_leave_a_linearizable_namespace_and_whole_files() {
    let secs = env_u64("DFS_CHAOS_RACE_SECS", 20);
    let seed = env_u64("DFS_CHAOS_SEED", 19) + 10_000;
    run(Duration::from_secs(secs + 240), async move {
        let started = Instant::now();
        eprintln!(
            "racing clients: seed {seed} (DFS_CHAOS_SEED={} replays the calls and kills), {secs}s, {CLIENTS} clients",
            seed - 10_000
        );
        let mut cluster = Cluster::start(ClusterOptions {
            coordinators: 3,
            datanodes: DATANODES,
            chunk_size: "1MiB".into(),
            coordinator_args: ["--over-replication-grace", "2s", "--orphan-grace", "2s"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
        .await;
        let members: Vec<String> = cluster
            .coordinators()
            .iter()
            .map(|s| format!("http://{}", s.listen))
            .collect();
        let url = cluster.url.clone();
        let setup = connect(&url).await;
        setup.mkdir("/race", false).await.expect("mkdir /race");
        let cluster = Arc::new(Mutex::new(cluster));
        let stop = Arc::new(AtomicBool::new(false));
        let anomalies = Arc::new(Anomalies::default());

        let t0 = Instant::now();
        let mut clients = Vec::new();
        for id in 0..CLIENTS {
            let client = connect(&url).await;
            let (stop, anomalies) = (stop.clone(), anomalies.clone());
            clients.push(tokio::spawn(client_loop(
                id, seed, client, t0, stop, anomalies,
            )));
        }
        let killer = tokio::spawn(killer(
            cluster.clone(),
            members,
            connect(&url).await,
            seed,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut history: Vec<FileEvent> = Vec::new();
        let mut tally = Tally::default();
        for c in clients {
            let (events, t) = tokio::time::timeout(CALL_TIMEOUT * 2, c)
                .await
                .expect("a client finished its last call")
                .expect("client task");
            history.extend(events);
            tally.acknowledged += t.acknowledged;
            tally.indeterminate += t.indeterminate;
            tally.no_effect += t.no_effect;
            tally.reads_lost += t.reads_lost;
            for (why, n) in t.causes {
                *tally.causes.entry(why).or_default() += n;
            }
        }
        if !tally.causes.is_empty() {
            eprintln!(
                "racing clients: indeterminate writes by cause: {:#?}",
                tally.causes
            );
        }
        let kills = tokio::time::timeout(Duration::from_secs(30), killer)
            .await
            .expect("the killer stopped")
            .expect("killer task");
        let run_time = t0.elapsed();
        // Acknowledged calls by kind, for the summary.
        let mut by_kind = [0usize; 7];
        for e in history.iter().filter(|e| !e.is_indeterminate()) {
            by_kind[match e.op {
                FileOp::Put { .. } => 0,
                FileOp::Ns(NsOp::Rename { .. }) => 1,
                FileOp::Ns(NsOp::Delete { .. }) => 2,
                FileOp::Ns(NsOp::Mkdir { .. }) => 3,
                FileOp::List { .. } => 4,
                FileOp::Ns(NsOp::Stat { .. }) => 5,
                FileOp::Read { .. } => 6,
            }] += 1;
        }

        // Every process is up again (the killer restarts what it killed):
        // back to full redundancy.
        let healing = Instant::now();
        let cluster = Arc::try_unwrap(cluster)
            .expect("sole owner")
            .into_inner()
            .unwrap();
        cluster.wait_healthy(DATANODES).await;
        let client = connect(&url).await;
        // Failures of the end state, asserted after the history is checked
        // (so that a run shows both).
        let mut failures: Vec<String> = Vec::new();
        let (healed, safe_mode_at_end) = match full_redundancy(&client, REDUNDANCY_WAIT).await {
            Ok(status) => (Some(healing.elapsed()), status.safe_mode.active),
            Err(last) => {
                let report = redundancy_report(&client, &cluster).await;
                // What an admin would do: does that bring it back?
                let admin = match client.set_safe_mode(false).await {
                    Ok(_) => {
                        let left = Instant::now();
                        match full_redundancy(&client, Duration::from_secs(30)).await {
                            Ok(_) => format!(
                                "once the test left safe mode by hand (`dfs safemode leave`), full redundancy {:.1?} later",
                                left.elapsed()
                            ),
                            Err(e) => {
                                format!("still not 30 s after the test left safe mode by hand: {e}")
                            }
                        }
                    }
                    Err(e) => format!("leaving safe mode by hand failed: {e}"),
                };
                failures.push(format!(
                    "not back at full redundancy {REDUNDANCY_WAIT:?} after the run: {last}\n{report}{admin}"
                ));
                (None, true)
            }
        };

        // The auditor: the whole tree, every file read back.
        let mut dirs = vec!["/race".to_string()];
        let mut files = Vec::new();
        while let Some(dir) = dirs.pop() {
            let op = FileOp::List { path: dir.clone() };
            if let FileRet::Listing(entries) =
                audit(&client, op, t0, &anomalies, &mut history).await
            {
                for (name, node) in entries {
                    let path = format!("{dir}/{name}");
                    match node {
                        Node::Dir => dirs.push(path),
                        Node::File { .. } => files.push(path),
                    }
                }
            }
        }
        let (mut verified, mut bytes, mut lost) = (0usize, 0u64, 0u64);
        for path in &files {
            let op = FileOp::Read { path: path.clone() };
            match audit(&client, op, t0, &anomalies, &mut history).await {
                FileRet::Read { content, .. } if content != u64::MAX => {
                    verified += 1;
                    bytes += content_len(content) as u64;
                }
                other => {
                    let size = client.stat(path).await.map(|i| i.size).unwrap_or(0);
                    lost += size;
                    anomalies.add(format!("{path} listed at the end, read {other:?}"));
                }
            }
        }

        let outcome = check_with(
            &FileModel::new(NamespaceModel::with_entries([(
                "/race".to_string(),
                Node::Dir,
            )])),
            &history,
            CHECK_STEPS,
        );
        let stats = outcome.stats().clone();
        println!(
            "scenario 10: {:.1}s of {CLIENTS} clients racing on {} paths (seed {seed}); kills: {} datanode, {} coordinator ({} of the leader); \
             {} ops acknowledged ({} puts, {} renames, {} deletes, {} mkdirs, {} lists, {} stats, {} gets), {} indeterminate, \
             {} failed without effect, {} reads unanswered; checker: {} ({stats}); \
             {verified} files verified byte-identical ({bytes} bytes) at the end, bytes lost {lost}; \
             full redundancy {} after the run (safe mode at the end: {}); test {:.1?}",
            run_time.as_secs_f64(),
            FILES.len() + DIRS.len(),
            kills.datanodes,
            kills.coordinators,
            kills.leaders,
            tally.acknowledged,
            by_kind[0],
            by_kind[1],
            by_kind[2],
            by_kind[3],
            by_kind[4],
            by_kind[5],
            by_kind[6],
            tally.indeterminate,
            tally.no_effect,
            tally.reads_lost,
            match outcome {
                Outcome::Linearizable(_) => "linearizable",
                Outcome::NotLinearizable(..) => "NOT linearizable",
                Outcome::Unknown(..) => "unknown (work bound)",
            },
            match healed {
                Some(t) => format!("{t:.1?}"),
                None => format!("NOT within {REDUNDANCY_WAIT:?}"),
            },
            if safe_mode_at_end { "on" } else { "off" },
            started.elapsed()
        );
        if !outcome.is_linearizable() {
            history.sort_by_key(|e| e.call);
            let dump = std::env::temp_dir().join(format!("dfs-racing-clients-{seed}.txt"));
            let text: String = history.iter().map(|e| format!("{e:?}\n")).collect();
            let _ = std::fs::write(&dump, text);
            failures.push(format!(
                "{outcome}\n(the whole history is in {})",
                dump.display()
            ));
        }
        let anomalies = std::mem::take(&mut *anomalies.0.lock().unwrap());
        if !anomalies.is_empty() {
            failures.push(format!("seen by the clients: {anomalies:#?}"));
        }
        if lost > 0 {
            failures.push(format!("{lost} bytes of listed files lost"));
        }
        assert!(
            failures.is_empty(),
            "seed {seed}:\n{}",
            failures.join("\n\n")
        );
        assert!(
            kills.datanodes + kills.coordinators > 0,
            "the run ended before any kill"
        );
        assert!(
            tally.acknowledged > 4 * (tally.indeterminate + tally.no_effect),
            "most calls must be answered: {tally:?}"
        );
        drop(cluster);
    });
}
