//! Linearizability of the namespace across failovers (issue 17).
//!
//! Three `dfs-coordinator` processes on 127.0.0.1 as one group. Several
//! clients (`dfs_client`, given every member, so they fail over and attach
//! one request id to all attempts of a write) run seeded random sequences of
//! Mkdir, Delete, Rename and Stat over a handful of paths, concurrently,
//! while the leader is SIGKILLed and restarted (three times) and a follower
//! once. Every call is recorded (call time, answer time, result); a call
//! whose answer never came, or came as an error that is not a namespace
//! answer (UNAVAILABLE after the client's failover time, a timeout, a
//! broken connection), is recorded as indeterminate: it may have been
//! applied, at any time after its call, or never. At the end the history
//! is checked against the namespace's sequential model
//! ([`dfs_testkit::linearizability`]): some order of the calls, each at an
//! instant between its call and its answer, must explain every answer.
//!
//! The faults come at fixed fractions of the calls, and the clients go on
//! until the last restarted member caught up, so every fault happens under
//! load. A restarted member catches up from the leader's log, or from its
//! snapshot when the group compacted the log meanwhile (long runs).
//!
//! `DFS_LINEARIZABILITY_OPS` sets the length (default 2,500 calls, about
//! 15 s on a 2-core machine, for CI), `DFS_LINEARIZABILITY_FAILOVERS` the
//! leader kills (default 3), `DFS_LINEARIZABILITY_SEED` replays a seed's
//! calls (printed; the timing of the faults differs from run to run);
//! `scripts/linearizability.sh` runs a long history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dfs_client::{Client, ClientConfig, ClientError, FileInfo};
use dfs_testkit::group::{self, Member};
use dfs_testkit::linearizability::{
    DEFAULT_MAX_STEPS, Event, NamespaceModel, Node, NsOp, NsRet, check_with,
};
use dfs_testkit::process::env_u64;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

type NsEvent = Event<NsOp, NsRet>;

/// Concurrent clients.
const CLIENTS: usize = 4;

/// The paths the calls name: five at the top and one nested level (renames
/// may move entries deeper; the model follows them anywhere).
fn paths() -> Vec<String> {
    let mut p: Vec<String> = (0..5).map(|i| format!("/k{i}")).collect();
    for i in 0..5 {
        for j in 0..2 {
            p.push(format!("/k{i}/n{j}"));
        }
    }
    p
}

fn random_op(rng: &mut StdRng, paths: &[String]) -> NsOp {
    let pick = |rng: &mut StdRng| paths[rng.random_range(0..paths.len())].clone();
    match rng.random_range(0..100) {
        0..35 => NsOp::Stat { path: pick(rng) },
        35..65 => NsOp::Mkdir {
            path: pick(rng),
            parents: rng.random_ratio(1, 10),
        },
        65..80 => NsOp::Delete {
            path: pick(rng),
            recursive: rng.random_ratio(1, 3),
        },
        _ => NsOp::Rename {
            source: pick(rng),
            destination: pick(rng),
        },
    }
}

fn entry(info: FileInfo) -> NsRet {
    NsRet::Entry(if info.is_dir() {
        Node::Dir
    } else {
        Node::File {
            version: info.version,
        }
    })
}

/// A definite answer, or `None` when the outcome is unknown (the client
/// gave up, the connection broke, any error that is not the namespace's).
fn answer<T>(r: Result<T, ClientError>, ok: impl FnOnce(T) -> NsRet) -> Option<NsRet> {
    match r {
        Ok(v) => Some(ok(v)),
        Err(ClientError::NotFound { .. }) => Some(NsRet::Err(Code::NotFound)),
        Err(ClientError::AlreadyExists { .. }) => Some(NsRet::Err(Code::AlreadyExists)),
        Err(ClientError::InvalidArgument(_)) => Some(NsRet::Err(Code::InvalidArgument)),
        Err(ClientError::FailedPrecondition(_)) => Some(NsRet::Err(Code::FailedPrecondition)),
        Err(_) => None,
    }
}

/// Runs `op` through `client`; `None`: indeterminate.
async fn run(client: &Client, op: &NsOp) -> Option<NsRet> {
    let call = async {
        match op {
            NsOp::Mkdir { path, parents } => answer(client.mkdir(path, *parents).await, entry),
            NsOp::Delete { path, recursive } => {
                answer(client.delete(path, *recursive).await, |d| NsRet::Deleted {
                    files: d.files_deleted,
                })
            }
            NsOp::Rename {
                source,
                destination,
            } => answer(client.rename(source, destination).await, entry),
            NsOp::Stat { path } => answer(client.stat(path).await, entry),
        }
    };
    // A caller that stops waiting: whatever was sent may still apply.
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .ok()
        .flatten()
}

/// A client of the whole group. A short failover time, so that calls made
/// while no leader is elected give up (and are indeterminate) instead of
/// all waiting the election out.
async fn connect(members: &[Member]) -> Client {
    let mut config = ClientConfig::new(group::urls(members));
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(3);
    config.failover_timeout = Duration::from_millis(1500);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect(config.clone()).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "no member answers: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The history's clock: nanoseconds since the recording started.
fn nanos(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// One client's share of the run: random calls until `total` were issued
/// by all clients together and the nemesis is through (so that every fault
/// happens under load, however long a restarted member takes to catch up).
async fn client_loop(
    id: usize,
    seed: u64,
    client: Client,
    t0: Instant,
    progress: Arc<Progress>,
    total: usize,
) -> Vec<NsEvent> {
    let paths = paths();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(id as u64));
    let mut events = Vec::new();
    while progress.issued.fetch_add(1, Ordering::Relaxed) < total
        || !progress.faults_done.load(Ordering::Relaxed)
    {
        let op = random_op(&mut rng, &paths);
        let call = nanos(t0);
        let ret = run(&client, &op).await;
        let returned = nanos(t0);
        match ret {
            Some(r) => events.push(Event::new(id, op, call, r, returned)),
            // A read that did not answer has no effect: left out.
            None if matches!(op, NsOp::Stat { .. }) => {}
            None => events.push(Event::indeterminate(id, op, call)),
        }
        progress.completed.fetch_add(1, Ordering::Relaxed);
    }
    events
}

/// What the clients and the nemesis share.
#[derive(Default)]
struct Progress {
    /// Calls started.
    issued: AtomicUsize,
    /// Calls answered (or given up on).
    completed: AtomicUsize,
    /// Client tasks ended.
    clients_done: AtomicUsize,
    /// The nemesis is through its schedule.
    faults_done: AtomicBool,
}

/// When the test fails (before the temporary directory goes): prints the
/// end of every member's log and keeps a copy of each whole log in the
/// system's temporary directory.
struct LogsOnPanic {
    seed: u64,
    logs: Vec<(u64, std::path::PathBuf)>,
}

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (id, path) in &self.logs {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let copy =
                std::env::temp_dir().join(format!("dfs-linearizability-{}-c{id}.log", self.seed));
            let kept = std::fs::write(&copy, &log).is_ok();
            eprintln!(
                "--- member {id}, the end of its log{}:",
                if kept {
                    format!(" (all of it in {})", copy.display())
                } else {
                    String::new()
                }
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Counts a client task as finished when dropped, also when it panics (so
/// that the nemesis stops waiting for its calls).
struct Finished(Arc<Progress>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.clients_done.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    KillFollower,
    Restart,
}

/// What the nemesis did.
#[derive(Debug, Default)]
struct Faults {
    failovers: Vec<Duration>,
    follower_kills: usize,
    restarts: usize,
}

/// When to inject which fault, as fractions of the run: `failovers`
/// rounds of "SIGKILL the leader, restart it once the group moved on",
/// and one round of the same for a follower in the middle.
fn schedule(failovers: usize) -> Vec<(f64, Fault)> {
    let rounds = failovers + 1;
    let mut out = Vec::new();
    for r in 0..rounds {
        let start = r as f64 / rounds as f64;
        let kill = if r == rounds / 2 {
            Fault::KillFollower
        } else {
            Fault::KillLeader
        };
        out.push((start + 0.1 / rounds as f64, kill));
        out.push((start + 0.6 / rounds as f64, Fault::Restart));
    }
    out
}

/// Injects the faults of `schedule` (each once `completed` passed its
/// fraction of `total`); stops early only when every client task ended
/// (they panicked).
async fn nemesis(
    members: &mut [Member],
    schedule: &[(f64, Fault)],
    progress: &Progress,
    total: usize,
) -> Faults {
    let completed = &progress.completed;
    use Fault::*;
    let mut faults = Faults::default();
    let mut down: Option<usize> = None;
    for &(at, fault) in schedule {
        loop {
            if progress.clients_done.load(Ordering::Relaxed) == CLIENTS {
                return faults;
            }
            if completed.load(Ordering::Relaxed) as f64 >= at * total as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match fault {
            KillLeader => {
                let leader = group::wait_leader(members, Duration::from_secs(20)).await;
                members[leader].kill();
                let killed = Instant::now();
                let next = group::wait_leader(members, Duration::from_secs(20)).await;
                let took = killed.elapsed();
                eprintln!(
                    "linearizability: leader {} SIGKILLed at {} completed ops; member {} leads after {took:?}",
                    members[leader].id,
                    completed.load(Ordering::Relaxed),
                    members[next].id
                );
                faults.failovers.push(took);
                down = Some(leader);
            }
            KillFollower => {
                let leader = group::wait_leader(members, Duration::from_secs(20)).await;
                let follower = (0..members.len()).find(|i| *i != leader).unwrap();
                members[follower].kill();
                eprintln!(
                    "linearizability: follower {} SIGKILLed at {} completed ops",
                    members[follower].id,
                    completed.load(Ordering::Relaxed)
                );
                faults.follower_kills += 1;
                down = Some(follower);
            }
            Restart => {
                let i = down.take().expect("a member is down");
                let at = completed.load(Ordering::Relaxed);
                members[i].spawn();
                let restarted = Instant::now();
                // Caught up before the next fault, so that it never takes
                // the group's last quorum. From a snapshot when the group
                // compacted its log while the member was down (every
                // 20,000 entries), which takes tens of seconds here.
                group::wait_caught_up(members, i, 200, Duration::from_secs(120)).await;
                eprintln!(
                    "linearizability: member {} restarted at {at} completed ops, caught up after {:?}",
                    members[i].id,
                    restarted.elapsed()
                );
                faults.restarts += 1;
            }
        }
    }
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_calls_across_failovers_are_linearizable() {
    let started = Instant::now();
    let total = env_u64("DFS_LINEARIZABILITY_OPS", 2500) as usize;
    let failovers = env_u64("DFS_LINEARIZABILITY_FAILOVERS", 3).max(2) as usize;
    let seed = env_u64(
        "DFS_LINEARIZABILITY_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000,
    );
    eprintln!(
        "linearizability: seed {seed} (DFS_LINEARIZABILITY_SEED={seed} replays the calls), {total} ops, {CLIENTS} clients"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut members = group::group(env!("CARGO_BIN_EXE_dfs-coordinator"), tmp.path());
    let _logs = LogsOnPanic {
        seed,
        logs: members.iter().map(|m| (m.id, m.log.clone())).collect(),
    };
    group::wait_leader(&members, Duration::from_secs(30)).await;

    let t0 = Instant::now();
    let progress = Arc::new(Progress::default());
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let client = connect(&members).await;
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let _done = Finished(progress.clone());
            client_loop(id, seed, client, t0, progress, total).await
        }));
    }
    let faults = nemesis(&mut members, &schedule(failovers), &progress, total).await;
    progress.faults_done.store(true, Ordering::Relaxed);
    let mut history: Vec<NsEvent> = Vec::new();
    for t in tasks {
        history.extend(t.await.unwrap());
    }
    let run_time = t0.elapsed();

    // Every member up again; one more client reads every path: what was
    // acknowledged survived the kills and restarts (checked with the rest).
    for m in members.iter_mut().filter(|m| !m.is_running()) {
        m.spawn();
    }
    let auditor = connect(&members).await;
    for path in paths() {
        let op = NsOp::Stat { path };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let call = nanos(t0);
            if let Some(ret) = run(&auditor, &op).await {
                history.push(Event::new(CLIENTS, op, call, ret, nanos(t0)));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the healed group did not answer {op:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let indeterminate = history.iter().filter(|e| e.is_indeterminate()).count();
    let outcome = check_with(&NamespaceModel::new(), &history, DEFAULT_MAX_STEPS);
    let stats = outcome.stats();
    eprintln!(
        "linearizability: {} ops checked ({indeterminate} indeterminate) in {:?} ({} model steps, {} backtracks); \
         {} leader failovers {:?}, {} follower kill(s), {} restarts; calls ran {run_time:?}; test wall time {:?}",
        history.len(),
        stats.elapsed,
        stats.steps,
        stats.backtracks,
        faults.failovers.len(),
        faults.failovers,
        faults.follower_kills,
        faults.restarts,
        started.elapsed()
    );
    if !outcome.is_linearizable() {
        history.sort_by_key(|e| e.call);
        let dump = std::env::temp_dir().join(format!("dfs-linearizability-{seed}.txt"));
        let text: String = history.iter().map(|e| format!("{e:?}\n")).collect();
        let _ = std::fs::write(&dump, text);
        panic!(
            "seed {seed}: {outcome}\n(the history is in {})",
            dump.display()
        );
    }
    assert!(
        faults.failovers.len() == failovers && faults.follower_kills == 1,
        "the run ended before the faults: {faults:?}"
    );
}
