//! Membership: registration with the coordinator, the heartbeat stream and
//! the commands that come back on it.
//!
//! ```text
//!  register ──▶ open DataNodeHeartbeat ──▶ full report (batches of 10,000)
//!     ▲                                       │
//!     │ backoff (≤ 5 s)                       ▼
//!  stream broke / NOT_FOUND ◀── every interval: Heartbeat{info, deltas, results}
//!                                 ◀── HeartbeatResponse{commands}: replicate,
//!                                     delete, config, request report
//! ```
//!
//! Reads and writes keep being served while the coordinator is away; chunk
//! changes accumulate in the store's delta and a full report follows every
//! (re-)registration anyway.
//!
//! Fencing: the node persists the id of the cluster it first joined
//! (`<data-dir>/cluster_id`, fsynced) and sends it with every registration
//! and heartbeat. A coordinator of another cluster (a coordinator started on
//! an empty or foreign data directory, a wrong `--coordinator`) is refused:
//! no heartbeat stream, no command executed, a log line and
//! `dfs_datanode_fenced`; reads of what the node holds go on. Moving the
//! node to another cluster takes `--rehome-to-cluster <id>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::{
    AbandonedReplica, ChunkReport, CommandResult, DataNodeCommand, Heartbeat, HeartbeatResponse,
    NodeHealth, NodeInfo, RegisterDataNodeRequest, Topology, data_node_command,
};
use tokio::sync::{Mutex, Notify, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::node::{Node, blocking};
use crate::peers::{CONNECT_TIMEOUT, Target};
use crate::wire::{chunk_meta, parse_id};

pub use crate::identity::ClusterIdentity;

/// What the node does with the cluster id a coordinator answered.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Same cluster: go on.
    Accept,
    /// First join (or an explicit re-home): persist it, then go on.
    Adopt,
    /// Another cluster: refuse everything it says.
    Refuse { ours: String },
}

/// Pure fencing rule: `ours` is the persisted id, `rehome` the
/// `--rehome-to-cluster` flag, `theirs` the coordinator's id.
fn verdict(ours: Option<&str>, rehome: Option<&str>, theirs: &str) -> Verdict {
    if !dfs_proto::frame::is_valid_chunk_id(theirs) {
        // Never adopt (or persist) an id that is not one.
        return Verdict::Refuse {
            ours: ours.unwrap_or_default().to_string(),
        };
    }
    match (ours, rehome) {
        (_, Some(target)) if target == theirs && ours != Some(theirs) => Verdict::Adopt,
        (Some(o), _) if o == theirs => Verdict::Accept,
        (Some(o), _) => Verdict::Refuse {
            ours: o.to_string(),
        },
        (None, _) if theirs.is_empty() => Verdict::Refuse {
            ours: String::new(),
        },
        (None, _) => Verdict::Adopt,
    }
}

/// The cluster id to claim at registration: the re-home target when set,
/// else the persisted one (empty when none).
fn claimed_cluster(node: &Node) -> String {
    node.config
        .rehome_to_cluster
        .clone()
        .or_else(|| node.cluster.get())
        .unwrap_or_default()
}

/// Counts and logs a refused coordinator (once per change of state).
fn fence(node: &Node, ours: &str, theirs: &str) -> Status {
    node.metrics.foreign_cluster.inc();
    node.metrics.fenced.set(1);
    let msg = format!(
        "coordinator {} belongs to cluster {theirs:?}, this datanode to cluster {ours:?}: \
         refusing it (no registration, no commands; reads go on). If this datanode really \
         moves to that cluster, restart it with --rehome-to-cluster {theirs}",
        node.config.coordinator
    );
    tracing::error!(node_id = %node.node_id, ours, theirs, "{msg}");
    Status::failed_precondition(msg)
}

/// Chunks per heartbeat in a full report.
pub const REPORT_BATCH: usize = 10_000;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the coordinator to answer the DRAINING
/// heartbeat.
const DRAIN_NOTICE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings the coordinator can change at run time, and the work queued for
/// the next heartbeat.
pub struct Control {
    heartbeat_ms: AtomicU64,
    /// Scrubber rate in bytes per second (read by the scrubber).
    pub scrub_rate: Arc<AtomicU64>,
    report_requested: Notify,
    wake: Notify,
    /// Notified once the coordinator answered a heartbeat reporting DRAINING.
    drain_sent: Notify,
    /// Heartbeats sent on the current stream.
    hb_sent: AtomicU64,
    /// `hb_sent` after the first DRAINING heartbeat (0: none yet).
    drain_at: AtomicU64,
    results: Mutex<Vec<CommandResult>>,
    replications: Arc<Semaphore>,
}

impl Control {
    /// Settings from the node's configuration.
    pub fn new(node: &Node, scrub_rate: Arc<AtomicU64>) -> Self {
        Control {
            heartbeat_ms: AtomicU64::new(node.config.heartbeat_interval.as_millis() as u64),
            scrub_rate,
            report_requested: Notify::new(),
            wake: Notify::new(),
            drain_sent: Notify::new(),
            hb_sent: AtomicU64::new(0),
            drain_at: AtomicU64::new(0),
            results: Mutex::new(Vec::new()),
            replications: Arc::new(Semaphore::new(
                node.config.max_concurrent_replications.max(1),
            )),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed).max(10))
    }

    /// Counts a heartbeat sent on the current stream; remembers the first
    /// one that reported DRAINING.
    fn count_sent(&self, draining: bool) {
        let n = self.hb_sent.fetch_add(1, Ordering::Relaxed) + 1;
        if draining && self.drain_at.load(Ordering::Relaxed) == 0 {
            self.drain_at.store(n, Ordering::Relaxed);
        }
    }

    async fn push_result(&self, result: CommandResult) {
        self.results.lock().await.push(result);
        self.wake.notify_one();
    }
}

/// Capacity and health now.
pub fn node_info(node: &Node) -> NodeInfo {
    let cap = node.store.capacity();
    let aside = node.store.set_aside();
    let sessions: i64 = ["upload", "replicate"]
        .iter()
        .map(|k| node.metrics.active_sessions.with_label_values(&[k]).get())
        .sum();
    let health = if node.draining.load(Ordering::Relaxed) {
        NodeHealth::Draining
    } else if cap.free < dfs_proto::DEFAULT_FRAME_BYTES as u64 {
        NodeHealth::Full
    } else {
        NodeHealth::Healthy
    };
    NodeInfo {
        free_bytes: cap.free,
        total_bytes: cap.total,
        health: health as i32,
        used_bytes: cap.used,
        chunk_count: cap.chunks,
        active_sessions: sessions.max(0) as u32,
        reserved_bytes: cap.promised,
        quarantined_chunks: aside.0,
        unavailable_chunks: aside.1,
    }
}

/// Keeps the node registered and heartbeating until shutdown.
pub async fn run(node: Arc<Node>, ctl: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    // One coordinator, or the members of a coordinator group: a follower
    // refuses with the leader's URL, which the next session goes to.
    let candidates = dfs_common::transport::coordinator_urls(&node.config.coordinator);
    let mut channels = std::collections::HashMap::<String, Channel>::new();
    let Some(mut target) = candidates.first().cloned() else {
        tracing::error!("no coordinator address, not registering");
        return;
    };
    let mut backoff = BACKOFF_START;
    loop {
        let channel = match channels.get(&target) {
            Some(c) => c.clone(),
            None => {
                match dfs_common::transport::lazy_channel_to(
                    &target,
                    CONNECT_TIMEOUT,
                    &node.security,
                    &[dfs_common::tls::Kind::Coordinator],
                ) {
                    Ok(c) => {
                        channels.insert(target.clone(), c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::error!(coordinator = %target, "invalid coordinator address, not registering: {e}");
                        return;
                    }
                }
            }
        };
        let ended = {
            let current = session(&node, &ctl, channel, &mut backoff);
            tokio::pin!(current);
            let outcome = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => None,
                result = &mut current => Some(result),
            };
            match outcome {
                Some(result) => result,
                None => {
                    drain(&node, &ctl, current).await;
                    return;
                }
            }
        };
        let mut pause = backoff;
        if let Err(st) = ended {
            let leader = st
                .metadata()
                .get(dfs_proto::LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
                .filter(|l| l.starts_with("http://") || l.starts_with("https://"))
                .map(str::to_string);
            match leader {
                Some(leader) if leader != target => {
                    tracing::info!(coordinator = %target, %leader, "not the leader of its group; going to the leader");
                    target = leader;
                    // Straight there: this was not a failure of the leader.
                    pause = Duration::from_millis(50);
                    backoff = BACKOFF_START;
                }
                _ => {
                    tracing::warn!(coordinator = %target, "coordinator session ended, re-registering in {backoff:?}: {}", st.message());
                    // Another member next, in case this one is down.
                    if let Some(i) = candidates.iter().position(|c| *c == target) {
                        target = candidates[(i + 1) % candidates.len()].clone();
                    } else if let Some(first) = candidates.first() {
                        target = first.clone();
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(pause) => {}
        }
        if pause == backoff {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// At shutdown: marks the node draining and keeps the heartbeat stream alive
/// until one heartbeat has told the coordinator so (at most
/// [`DRAIN_NOTICE_TIMEOUT`]: a coordinator that is away learns it from the
/// silence instead).
async fn drain<F: std::future::Future>(node: &Node, ctl: &Control, session: std::pin::Pin<&mut F>) {
    node.draining.store(true, Ordering::Relaxed);
    ctl.wake.notify_one();
    let sent = tokio::time::timeout(DRAIN_NOTICE_TIMEOUT, async {
        tokio::select! {
            () = ctl.drain_sent.notified() => true,
            _ = session => false,
        }
    })
    .await;
    match sent {
        Ok(true) => tracing::info!("told the coordinator this node is draining"),
        _ => tracing::warn!("could not tell the coordinator this node is draining"),
    }
}

/// One registration and heartbeat stream; returns when it breaks.
async fn session(
    node: &Arc<Node>,
    ctl: &Arc<Control>,
    channel: Channel,
    backoff: &mut Duration,
) -> Result<(), Status> {
    let mut client = CoordinatorClient::new(channel)
        .max_decoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES * 8)
        .max_encoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES * 8);
    let request = RegisterDataNodeRequest {
        node_id: node.node_id.clone(),
        address: node.advertise.clone(),
        info: Some(node_info(node)),
        topology: Some(Topology {
            zone: node.config.effective_zone(),
            rack: node.config.rack.clone(),
            host: node.config.host.clone(),
        }),
        version: env!("CARGO_PKG_VERSION").to_string(),
        cluster_id: claimed_cluster(node),
    };
    let registered = match tokio::time::timeout(
        REGISTER_TIMEOUT,
        client.register_data_node(request),
    )
    .await
    {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(st)) => {
            let outcome = if st.code() == tonic::Code::FailedPrecondition {
                // The coordinator itself saw the foreign cluster id.
                node.metrics.foreign_cluster.inc();
                node.metrics.fenced.set(1);
                tracing::error!(node_id = %node.node_id, "coordinator refused this datanode: {}", st.message());
                "refused"
            } else {
                "error"
            };
            node.metrics
                .registrations
                .with_label_values(&[outcome])
                .inc();
            return Err(st);
        }
        Err(_) => {
            node.metrics
                .registrations
                .with_label_values(&["error"])
                .inc();
            return Err(Status::deadline_exceeded("registration timed out"));
        }
    };
    let theirs = registered.cluster_id.clone();
    match verdict(
        node.cluster.get().as_deref(),
        node.config.rehome_to_cluster.as_deref(),
        &theirs,
    ) {
        Verdict::Accept => {}
        Verdict::Adopt => {
            let n = node.clone();
            let id = theirs.clone();
            let previous = node.cluster.get();
            blocking(move || n.cluster.adopt(&id))
                .await
                .map_err(|e| Status::internal(format!("failed to persist the cluster id: {e}")))?;
            match previous {
                Some(old) => {
                    tracing::warn!(node_id = %node.node_id, from = %old, to = %theirs, "re-homed to another cluster (--rehome-to-cluster)")
                }
                None => {
                    tracing::info!(node_id = %node.node_id, cluster_id = %theirs, "joined cluster")
                }
            }
        }
        Verdict::Refuse { ours } => {
            node.metrics
                .registrations
                .with_label_values(&["refused"])
                .inc();
            return Err(fence(node, &ours, &theirs));
        }
    }
    node.metrics.fenced.set(0);
    node.metrics.registrations.with_label_values(&["ok"]).inc();
    node.set_token_keys(&registered.token_keys);
    *backoff = BACKOFF_START;
    if registered.heartbeat_interval_ms > 0 {
        ctl.heartbeat_ms
            .store(registered.heartbeat_interval_ms, Ordering::Relaxed);
    }
    tracing::info!(node_id = %node.node_id, cluster_id = %registered.cluster_id, interval = ?ctl.interval(), "registered with the coordinator");

    let (tx, rx) = mpsc::channel(4);
    ctl.hb_sent.store(0, Ordering::Relaxed);
    ctl.drain_at.store(0, Ordering::Relaxed);
    let sender = tokio::spawn(send_heartbeats(node.clone(), ctl.clone(), tx));
    let result = async {
        let mut responses = client
            .data_node_heartbeat(ReceiverStream::new(rx))
            .await?
            .into_inner();
        // The coordinator answers every heartbeat, in order.
        let mut answered = 0u64;
        loop {
            match responses.message().await? {
                Some(r) => {
                    answered += 1;
                    let drain_at = ctl.drain_at.load(Ordering::Relaxed);
                    if drain_at > 0 && answered >= drain_at {
                        ctl.drain_sent.notify_one();
                    }
                    handle_response(node, ctl, r)?
                }
                None => {
                    return Err(Status::unavailable(
                        "coordinator closed the heartbeat stream",
                    ));
                }
            }
        }
    }
    .await;
    sender.abort();
    result
}

async fn send_full_report(
    node: &Node,
    ctl: &Control,
    tx: &mpsc::Sender<Heartbeat>,
) -> Result<(), ()> {
    let store = node.store.clone();
    let chunks = tokio::task::spawn_blocking(move || store.full_report())
        .await
        .map_err(|_| ())?;
    let metas: Vec<_> = chunks.iter().map(|(id, c)| chunk_meta(id, *c)).collect();
    let batches: Vec<&[dfs_proto::ChunkMeta]> = if metas.is_empty() {
        vec![&[]]
    } else {
        metas.chunks(REPORT_BATCH).collect()
    };
    let n = batches.len();
    for (i, batch) in batches.into_iter().enumerate() {
        let hb = Heartbeat {
            node_id: node.node_id.clone(),
            cluster_id: node.cluster.get().unwrap_or_default(),
            info: Some(node_info(node)),
            chunk_report: Some(ChunkReport {
                chunks: batch.to_vec(),
                first: i == 0,
                last: i + 1 == n,
            }),
            ..Default::default()
        };
        tx.send(hb).await.map_err(|_| ())?;
        ctl.count_sent(false);
    }
    tracing::debug!(chunks = metas.len(), batches = n, "sent full chunk report");
    Ok(())
}

async fn send_heartbeats(
    node: Arc<Node>,
    ctl: Arc<Control>,
    tx: mpsc::Sender<Heartbeat>,
) -> Result<(), ()> {
    send_full_report(&node, &ctl, &tx).await?;
    let mut last_full = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(ctl.interval()) => {}
            () = ctl.wake.notified() => {}
            () = ctl.report_requested.notified() => {
                send_full_report(&node, &ctl, &tx).await?;
                last_full = Instant::now();
            }
        }
        let delta = node.store.take_delta();
        let mut results = std::mem::take(&mut *ctl.results.lock().await);
        node.store.update_gauges();
        // A big delta (a large delete, a repair burst) goes out in several
        // heartbeats of at most REPORT_BATCH entries: the coordinator
        // refuses unbounded ones.
        let mut added: Vec<_> = delta
            .added
            .iter()
            .map(|(id, c)| chunk_meta(id, *c))
            .collect();
        let mut removed: Vec<String> = delta.removed.iter().map(|id| id.to_string()).collect();
        let mut corrupt: Vec<String> = delta.corrupt.iter().map(|id| id.to_string()).collect();
        loop {
            // In the order the coordinator applies them: added, removed,
            // corrupt (a chunk stored and then found corrupt is reported
            // corrupt last, in this heartbeat or a later one).
            let mut room = REPORT_BATCH;
            let n = added.len().min(room);
            let added_now: Vec<_> = added.drain(..n).collect();
            room -= n;
            let mut take = |v: &mut Vec<String>| {
                let n = v.len().min(room);
                room -= n;
                v.drain(..n).collect::<Vec<_>>()
            };
            let removed_now = take(&mut removed);
            let corrupt_now = take(&mut corrupt);
            let n = results.len().min(REPORT_BATCH);
            let results_now: Vec<_> = results.drain(..n).collect();
            // What does not fit goes with the next heartbeat.
            let abandoned_now: Vec<AbandonedReplica> = {
                let mut a = node.abandoned.lock().expect("abandoned lock");
                let n = a.len().min(room);
                a.drain(..n)
                    .map(|(chunk_id, node_id)| AbandonedReplica { chunk_id, node_id })
                    .collect()
            };
            let hb = Heartbeat {
                node_id: node.node_id.clone(),
                info: Some(node_info(&node)),
                chunk_report: None,
                added_chunks: added_now,
                removed_chunks: removed_now,
                corrupt_chunks: corrupt_now,
                command_results: results_now,
                cluster_id: node.cluster.get().unwrap_or_default(),
                abandoned_replicas: abandoned_now,
            };
            let draining = hb
                .info
                .is_some_and(|i| i.health == NodeHealth::Draining as i32);
            tx.send(hb).await.map_err(|_| ())?;
            ctl.count_sent(draining);
            if added.is_empty() && removed.is_empty() && corrupt.is_empty() && results.is_empty() {
                break;
            }
        }
        if last_full.elapsed() >= node.config.full_report_interval {
            send_full_report(&node, &ctl, &tx).await?;
            last_full = Instant::now();
        }
    }
}

/// Executes the commands of one answer, only if it names this node's
/// cluster.
fn handle_response(
    node: &Arc<Node>,
    ctl: &Arc<Control>,
    response: HeartbeatResponse,
) -> Result<(), Status> {
    let ours = node.cluster.get().unwrap_or_default();
    if response.cluster_id != ours {
        return Err(fence(node, &ours, &response.cluster_id));
    }
    node.set_token_keys(&response.token_keys);
    for command in response.commands {
        tokio::spawn(execute(node.clone(), ctl.clone(), command));
    }
    Ok(())
}

/// Executes one command and queues its result for the next heartbeat.
async fn execute(node: Arc<Node>, ctl: Arc<Control>, command: DataNodeCommand) {
    let command_id = command.command_id;
    let (kind, result): (&str, Result<(), String>) = match command.command {
        Some(data_node_command::Command::Replicate(c)) => {
            let result = async {
                let meta = c.chunk.ok_or("replicate command without chunk")?;
                let id = parse_id(&meta.chunk_id).map_err(|e| e.to_string())?;
                let target = c.target.ok_or("replicate command without target")?;
                let _permit = ctl
                    .replications
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| "shutting down")?;
                tracing::info!(chunk_id = %id, target = %target.node_id, "replicating chunk (repair)");
                let expected = (meta.checksum != 0).then_some((meta.size, meta.checksum));
                crate::read::replicate_to(
                    node.clone(),
                    id,
                    expected,
                    Target {
                        node_id: target.node_id,
                        address: target.address,
                    },
                    format!("repair-{command_id}"),
                    c.max_bytes_per_second,
                    c.token,
                )
                .await
                .map_err(|st| st.message().to_string())
            }
            .await;
            ("replicate", result.map_err(|e: String| e))
        }
        Some(data_node_command::Command::Delete(d)) => {
            let mut errors = Vec::new();
            let quarantined_only = d.quarantined_only;
            for raw in d.chunk_ids {
                match parse_id(&raw) {
                    Ok(id) => {
                        let store = node.store.clone();
                        let deleted = blocking(move || {
                            if quarantined_only {
                                store.drop_quarantined(&id)
                            } else {
                                store.delete(&id)
                            }
                        });
                        if let Err(e) = deleted.await {
                            errors.push(format!("{raw}: {e}"));
                        }
                    }
                    Err(st) => errors.push(st.to_string()),
                }
            }
            let r = if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            };
            ("delete", r)
        }
        Some(data_node_command::Command::Config(c)) => {
            if c.heartbeat_interval_ms > 0 {
                ctl.heartbeat_ms
                    .store(c.heartbeat_interval_ms, Ordering::Relaxed);
            }
            if c.scrub_bytes_per_second > 0 {
                ctl.scrub_rate
                    .store(c.scrub_bytes_per_second, Ordering::Relaxed);
            }
            ("config", Ok(()))
        }
        Some(data_node_command::Command::RequestReport(_)) => {
            ctl.report_requested.notify_one();
            ("request_report", Ok(()))
        }
        None => ("unknown", Err("unknown command".to_string())),
    };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    node.metrics
        .commands
        .with_label_values(&[kind, outcome])
        .inc();
    if let Err(e) = &result {
        tracing::warn!(command_id, kind, "command failed: {e}");
    }
    ctl.push_result(CommandResult {
        command_id,
        ok: result.is_ok(),
        error: result.err().unwrap_or_default(),
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_node_obeys_only_the_cluster_it_joined_unless_rehomed_explicitly() {
        // First join adopts the coordinator's id.
        assert_eq!(verdict(None, None, A), Verdict::Adopt);
        // Same cluster: fine; another one: refused, whatever it says.
        assert_eq!(verdict(Some(A), None, A), Verdict::Accept);
        assert_eq!(
            verdict(Some(A), None, B),
            Verdict::Refuse { ours: A.into() }
        );
        // A coordinator without an id is never adopted.
        assert_eq!(
            verdict(None, None, ""),
            Verdict::Refuse {
                ours: String::new()
            }
        );
        // Re-homing takes the flag, and only to the cluster it names.
        assert_eq!(verdict(Some(A), Some(B), B), Verdict::Adopt);
        assert_eq!(
            verdict(Some(A), Some(B), "cccccccccccccccccccccccccccccccc"),
            Verdict::Refuse { ours: A.into() }
        );
        // Once re-homed the flag is a no-op.
        assert_eq!(verdict(Some(B), Some(B), B), Verdict::Accept);
    }

    #[test]
    fn the_cluster_id_is_persisted_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let id = ClusterIdentity::load(dir.path()).unwrap();
        assert_eq!(id.get(), None);
        id.adopt(A).unwrap();
        assert_eq!(
            ClusterIdentity::load(dir.path()).unwrap().get().as_deref(),
            Some(A)
        );
        std::fs::write(dir.path().join("cluster_id"), "garbage").unwrap();
        assert!(ClusterIdentity::load(dir.path()).is_err());
    }
}
