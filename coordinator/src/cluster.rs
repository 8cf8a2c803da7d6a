//! Soft cluster state: datanode liveness, the replica map, command outboxes
//! and the repair loop's driver. No I/O: the clock is passed in; the repair
//! loop's decisions come back as [`Order`]s, which `tick` queues per node
//! for the gRPC edge to deliver with the next heartbeat answer.
//!
//! ```text
//!   heartbeats ──▶ Cluster::on_heartbeat ──▶ replica map, liveness
//!   every tick ──▶ Cluster::decide ──▶ repair::plan / excess / orphans ──▶ Vec<Order>
//!                  Cluster::enqueue(orders) ──▶ outboxes ──▶ heartbeat answers
//! ```
//!
//! Replica locations are not part of the durable state machine (like HDFS
//! block locations): they are seeded at start from the replicas recorded at
//! confirm time and reconciled by the datanodes' chunk reports.
//!
//! Deletes are the dangerous output, so three rules gate them:
//! - **Safe mode** after start: no delete and no repair until a share of the
//!   known datanodes sent full reports and most reported replicas are known
//!   to the namespace (a namespace restored from an old backup, or the wrong
//!   one, keeps the cluster in safe mode instead of deleting what it does not
//!   know). An admin can enter or leave it by hand.
//! - **A delete budget** per node and orphan-grace window: at most
//!   `max(delete_budget_min, delete_budget_share × chunks on the node)`
//!   replicas ordered deleted; the rest waits, counted and shown.
//! - **Corrupt replicas** (reported checksum differs from the namespace) are
//!   not counted but kept until R good replicas exist elsewhere.
//!
//! Every time here is [`dfs_common::time::monotonic_ms`]: a wall-clock step
//! marks no node dead and expires nothing early.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::namespace::{ChunkId, ChunkOwner, ChunkRecord, Namespace, NodeId, NodeRecord, UploadId};
use crate::placement::Candidate;
use crate::repair::{self, Need};

/// Timing and throttling settings.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Expected heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a node is suspect.
    pub suspect_after_ms: u64,
    /// Silence after which a node is dead.
    pub dead_after_ms: u64,
    /// How long an unreferenced chunk lives before deletion.
    pub orphan_grace_ms: u64,
    /// How long a chunk stays over-replicated before the excess is deleted.
    pub over_replication_grace_ms: u64,
    /// How long a replica still writing at its upload's answer counts as a
    /// repair in flight.
    pub pending_replica_grace_ms: u64,
    /// Concurrent repair streams per node (as source or target).
    pub repair_streams_per_node: u32,
    /// Repair bandwidth per node (0 = unthrottled).
    pub repair_bytes_per_second: u64,
    /// Default chunk size (a node with less free space is full).
    pub chunk_size: u64,
    /// Share of known datanodes whose full reports end safe mode.
    pub safe_mode_node_share: f64,
    /// Share of reported replicas that must be known to the namespace
    /// before safe mode ends...
    pub safe_mode_known_share: f64,
    /// ... unless at most this many reported replicas are unknown (the
    /// orphans a crash leaves behind: plans it lost, deletes in progress).
    pub safe_mode_unknown_min: u64,
    /// Share of a node's replicas that may be ordered deleted per orphan
    /// grace period.
    pub delete_budget_share: f64,
    /// Replicas per node and grace period that may always be deleted (small
    /// nodes).
    pub delete_budget_min: u64,
}

#[cfg(test)]
impl Timing {
    /// Settings for tests: everything short, safe mode ends on the first
    /// report, budgets generous.
    pub fn for_tests() -> Self {
        Timing {
            heartbeat_interval_ms: 100,
            suspect_after_ms: 200,
            dead_after_ms: 1000,
            orphan_grace_ms: 500,
            over_replication_grace_ms: 500,
            pending_replica_grace_ms: 2000,
            repair_streams_per_node: 2,
            repair_bytes_per_second: 0,
            chunk_size: 10,
            safe_mode_node_share: 0.0,
            safe_mode_known_share: 0.0,
            safe_mode_unknown_min: 0,
            delete_budget_share: 1.0,
            delete_budget_min: 1000,
        }
    }
}

/// Self-reported node health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// Not reported.
    #[default]
    Unspecified,
    /// Serving reads and writes.
    Healthy,
    /// No room.
    Full,
    /// Serving with errors.
    Degraded,
    /// Shutting down.
    Draining,
}

/// Capacity and health a node reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Free bytes.
    pub free_bytes: u64,
    /// Usable bytes.
    pub total_bytes: u64,
    /// Health.
    pub health: Health,
    /// Used bytes.
    pub used_bytes: u64,
    /// Stored chunks.
    pub chunk_count: u64,
    /// Open sessions.
    pub active_sessions: u32,
    /// Reserved bytes.
    pub reserved_bytes: u64,
    /// Corrupt copies kept aside.
    pub quarantined_chunks: u64,
    /// Chunks unreadable at start-up.
    pub unavailable_chunks: u64,
}

/// A node's state as the coordinator sees it (the one shared enum).
pub use dfs_common::id::NodeState;

/// Identity and checksum of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMetaRec {
    /// Chunk id.
    pub id: ChunkId,
    /// Checksum.
    pub checksum: u32,
    /// Size.
    pub size: u64,
    /// Algorithm (wire value).
    pub algorithm: i32,
}

/// A decision for one datanode: what the repair loop wants it to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The datanode.
    pub node: NodeId,
    /// What to do.
    pub command: NodeCommand,
}

impl Order {
    /// Delete `chunk_ids` on `node` (only its quarantined copies, with
    /// `quarantined_only`).
    fn delete(
        node: NodeId,
        command_id: u64,
        chunk_ids: Vec<ChunkId>,
        quarantined_only: bool,
    ) -> Self {
        Order {
            node,
            command: NodeCommand::Delete {
                command_id,
                chunk_ids,
                quarantined_only,
            },
        }
    }
}

/// A command for a datanode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Copy a chunk to another node.
    Replicate {
        command_id: u64,
        chunk: ChunkMetaRec,
        target_id: NodeId,
        target_address: String,
        max_bytes_per_second: u64,
    },
    /// Delete chunks.
    Delete {
        command_id: u64,
        chunk_ids: Vec<ChunkId>,
        /// Only the corrupt copies the node keeps in quarantine.
        quarantined_only: bool,
    },
}

/// Result of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Command id.
    pub command_id: u64,
    /// Success.
    pub ok: bool,
    /// Error message.
    pub error: String,
}

/// A chunk a node says it holds, with the checksum it stored.
pub type Held = (ChunkId, u32);

/// A batch of a full chunk report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportBatch {
    /// Chunks held, with their stored checksums.
    pub chunks: Vec<Held>,
    /// First batch.
    pub first: bool,
    /// Last batch.
    pub last: bool,
}

/// One heartbeat, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatEvent {
    /// Sender.
    pub node_id: NodeId,
    /// Capacity and health.
    pub info: NodeInfo,
    /// Part of a full report.
    pub report: Option<ReportBatch>,
    /// Chunks stored since the last heartbeat, with their checksums.
    pub added: Vec<Held>,
    /// Chunks removed.
    pub removed: Vec<ChunkId>,
    /// Chunks found corrupt.
    pub corrupt: Vec<ChunkId>,
    /// Pending copies of this node's uploads that failed after the upload
    /// answered (chunk, node that was writing it).
    pub abandoned: Vec<(ChunkId, NodeId)>,
    /// Command results.
    pub results: Vec<CommandOutcome>,
}

impl HeartbeatEvent {
    /// A heartbeat of `node_id` that reports nothing but default capacity.
    pub fn new(node_id: NodeId) -> Self {
        HeartbeatEvent {
            node_id,
            info: NodeInfo::default(),
            report: None,
            added: Vec::new(),
            removed: Vec::new(),
            corrupt: Vec::new(),
            abandoned: Vec::new(),
            results: Vec::new(),
        }
    }
}

/// Errors of the cluster layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Heartbeat or admin call for a node that is not registered.
    #[error("datanode {node_id} is not registered (register first)")]
    UnknownNode { node_id: NodeId },
}

/// A datanode as reported by status calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Durable record.
    pub record: NodeRecord,
    /// State.
    pub state: NodeState,
    /// Last reported info.
    pub info: NodeInfo,
    /// Last heartbeat (ms).
    pub last_heartbeat_ms: u64,
    /// Replicas recorded on it.
    pub chunk_count: u64,
    /// Safe to remove (draining nodes).
    pub safe_to_remove: bool,
    /// End of maintenance (ms, 0 when none).
    pub maintenance_until_ms: u64,
}

/// Redundancy summary, refreshed each tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedundancyStats {
    /// Chunks below their factor with at least one live replica.
    pub under_replicated: u64,
    /// Chunks with no live replica.
    pub missing: u64,
    /// Chunks above their factor.
    pub over_replicated: u64,
    /// Chunks waiting for (or in) repair.
    pub repair_queue: u64,
    /// Repairs in flight.
    pub repairs_in_flight: u64,
    /// Replicas still writing after their upload answered at its quorum.
    pub replicas_writing: u64,
    /// Bytes still to copy.
    pub repair_bytes_remaining: u64,
    /// Seconds until full redundancy at the current rate.
    pub repair_eta_seconds: u64,
    /// Repairs completed since start.
    pub repairs_completed: u64,
    /// Orphan replicas deleted since start.
    pub orphans_deleted: u64,
    /// Replicas whose reported checksum differs from the namespace.
    pub corrupt_replicas: u64,
    /// Replica deletes held back by the delete budget (last tick).
    pub deletes_deferred: u64,
    /// Times a node's delete budget ran out since start.
    pub budget_exhausted_total: u64,
}

/// Safe mode as `dfs status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SafeModeStatus {
    /// On: no deletes, no repairs.
    pub active: bool,
    /// Why it is on (or how it ended).
    pub reason: String,
    /// Known nodes that sent a full report since safe mode began.
    pub reported_nodes: u32,
    /// Nodes known to the namespace.
    pub known_nodes: u32,
    /// Replicas in those reports.
    pub reported_replicas: u64,
    /// How many of them the namespace knows.
    pub known_replicas: u64,
    /// Set by an admin (then left only by an admin).
    pub manual: bool,
}

#[derive(Debug, Default)]
struct SafeMode {
    /// Auto safe mode still on.
    active: bool,
    /// Admin override: `Some(true)` forced on, `Some(false)` forced off.
    manual: Option<bool>,
    reported: HashSet<NodeId>,
    reported_replicas: u64,
    known_replicas: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Budget {
    window_start_ms: u64,
    used: u64,
    /// Ran out in this window (counted once per window).
    exhausted: bool,
}

#[derive(Debug, Default)]
struct Live {
    info: NodeInfo,
    last_heartbeat_ms: u64,
    maintenance_until_ms: u64,
    planned_bytes: u64,
    outbox: Vec<NodeCommand>,
    report: Option<HashSet<ChunkId>>,
    chunks: HashSet<ChunkId>,
    safe_to_remove: bool,
    /// Sent a whole full report since this coordinator started: its
    /// replicas are verified, not only recalled from confirm records.
    reported: bool,
}

#[derive(Debug, Clone)]
struct Repair {
    chunk_id: ChunkId,
    source: NodeId,
    target: NodeId,
    size: u64,
    deadline_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    Suspect,
    Dead,
}

/// Per-node facts computed once per tick.
#[derive(Debug, Clone, Copy)]
struct View {
    state: NodeState,
    liveness: Liveness,
    /// Its replicas count toward the replication factor.
    counts: bool,
    /// May send a chunk now.
    source: bool,
}

/// The soft cluster state.
#[derive(Debug)]
pub struct Cluster {
    timing: Timing,
    live: HashMap<NodeId, Live>,
    replicas: HashMap<ChunkId, BTreeSet<NodeId>>,
    orphan_since: HashMap<ChunkId, u64>,
    over_since: HashMap<ChunkId, u64>,
    inflight: HashMap<u64, Repair>,
    /// Repairs that failed or timed out, by (chunk, target), until when the
    /// target is not tried again for that chunk: a target that refuses a
    /// copy (it holds an unreadable one, its disk fails) would otherwise be
    /// re-planned every tick, holding its repair streams forever.
    repair_backoff: HashMap<(ChunkId, NodeId), u64>,
    next_command_id: u64,
    completions: VecDeque<(u64, u64)>,
    stats: RedundancyStats,
    rng: StdRng,
    safe: SafeMode,
    budgets: HashMap<NodeId, Budget>,
    exhausted: BTreeSet<NodeId>,
    /// Replicas reported with a checksum other than the namespace's.
    corrupt: HashMap<ChunkId, BTreeSet<NodeId>>,
    /// Checksums reported for chunks of open uploads, by node: what
    /// ConfirmUpload checks the confirmed checksum against.
    pending: HashMap<ChunkId, HashMap<NodeId, u32>>,
    /// Open uploads' expiry on the monotonic clock.
    upload_deadlines: HashMap<UploadId, u64>,
    /// Corrupt copies nodes keep in quarantine (they reported them).
    quarantined: HashMap<ChunkId, BTreeSet<NodeId>>,
    /// Planned replicas still writing when their upload answered at its
    /// write quorum (ConfirmedChunk.pending), with the monotonic time until
    /// which each counts as a repair in flight: the chunk is not copied
    /// elsewhere while its own replica is about to land, and is once that
    /// replica's grace is over without its report.
    writing: HashMap<ChunkId, Vec<(NodeId, u64)>>,
    /// Copies a primary reported abandoned before the client's confirm
    /// named them as still writing (the primary's heartbeat can beat the
    /// confirm), until their grace would have ended: the confirm does not
    /// wait for a copy already known to be lost. At most
    /// [`MAX_GIVEN_UP`] entries.
    given_up: HashMap<ChunkId, Vec<(NodeId, u64)>>,
}

/// Bound on [`Cluster`]'s remembered abandoned copies: beyond it an early
/// abandonment is forgotten and its copy waits out its grace instead.
const MAX_GIVEN_UP: usize = 65_536;
/// Writers remembered per chunk (a plan names at most this many nodes).
const MAX_GIVEN_UP_PER_CHUNK: usize = 16;

const RATE_WINDOW_MS: u64 = 60_000;

/// How long a target that failed a repair of a chunk is left out of that
/// chunk's next repairs (other targets are tried meanwhile).
const REPAIR_BACKOFF_MS: u64 = 10_000;

impl Cluster {
    /// Builds the soft state for a freshly loaded namespace: every known node
    /// is considered heard from at `now_ms`, replicas come from the confirm
    /// records, and safe mode is on. `now_ms` is monotonic; durable
    /// maintenance deadlines (wall clock) are converted by `to_mono`.
    pub fn new(timing: Timing, ns: &Namespace, now_ms: u64, to_mono: impl Fn(u64) -> u64) -> Self {
        let mut cluster = Cluster {
            timing,
            live: HashMap::new(),
            replicas: HashMap::new(),
            orphan_since: HashMap::new(),
            over_since: HashMap::new(),
            inflight: HashMap::new(),
            repair_backoff: HashMap::new(),
            next_command_id: 1,
            completions: VecDeque::new(),
            stats: RedundancyStats::default(),
            rng: StdRng::from_os_rng(),
            safe: SafeMode {
                active: true,
                ..SafeMode::default()
            },
            budgets: HashMap::new(),
            exhausted: BTreeSet::new(),
            corrupt: HashMap::new(),
            pending: HashMap::new(),
            upload_deadlines: HashMap::new(),
            quarantined: HashMap::new(),
            writing: HashMap::new(),
            given_up: HashMap::new(),
        };
        for (id, record) in ns.nodes() {
            let until = if record.maintenance_until_ms == 0 {
                0
            } else {
                to_mono(record.maintenance_until_ms)
            };
            cluster.live.insert(
                id.clone(),
                Live {
                    last_heartbeat_ms: now_ms,
                    // A maintenance window set before a restart still holds.
                    maintenance_until_ms: if until > now_ms { until } else { 0 },
                    ..Live::default()
                },
            );
        }
        let mut seeds = Vec::new();
        ns.for_each_file_chunk(|_, c| seeds.push(c.clone()));
        cluster.on_confirmed(&seeds);
        cluster
    }

    /// The timing settings.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    fn add_replica(&mut self, chunk: &ChunkId, node: &NodeId) {
        if let Some(w) = self.writing.get_mut(chunk) {
            w.retain(|(n, _)| n != node);
            if w.is_empty() {
                self.writing.remove(chunk);
            }
        }
        self.replicas
            .entry(chunk.clone())
            .or_default()
            .insert(node.clone());
        if let Some(l) = self.live.get_mut(node) {
            l.chunks.insert(chunk.clone());
        }
    }

    fn remove_replica(&mut self, chunk: &ChunkId, node: &NodeId) {
        if let Some(set) = self.replicas.get_mut(chunk) {
            set.remove(node);
            if set.is_empty() {
                self.replicas.remove(chunk);
            }
        }
        if let Some(l) = self.live.get_mut(node) {
            l.chunks.remove(chunk);
        }
    }

    /// Records the replicas of freshly confirmed chunks.
    pub fn on_confirmed(&mut self, chunks: &[ChunkRecord]) {
        for c in chunks {
            // Holders that reported other bytes under the id while it was
            // an open upload (an abandoned attempt) are corrupt, not copies.
            if let Some(reported) = self.pending.remove(&c.id) {
                for (node, crc) in reported {
                    if crc != c.checksum {
                        tracing::warn!(node_id = %node, chunk_id = %c.id, "a holder stored other bytes than confirmed: counted as corrupt");
                        self.remove_replica(&c.id, &node);
                        self.corrupt.entry(c.id.clone()).or_default().insert(node);
                    }
                }
            }
            for n in &c.replicas {
                self.add_replica(&c.id, n);
            }
        }
    }

    /// Records the replicas of a just-confirmed chunk that were still
    /// writing when its upload answered (`nodes`): each counts as a repair
    /// in flight until it reports the chunk or `pending_replica_grace_ms`
    /// from `now_ms` passes. Unknown nodes and holders are ignored.
    pub fn expect_writing(&mut self, chunk: &ChunkId, nodes: &[NodeId], now_ms: u64) {
        let until = now_ms.saturating_add(self.timing.pending_replica_grace_ms);
        let holders = self.replicas.get(chunk);
        let given_up = self.given_up.remove(chunk).unwrap_or_default();
        let list: Vec<(NodeId, u64)> = nodes
            .iter()
            .filter(|n| self.live.contains_key(*n) && holders.is_none_or(|h| !h.contains(*n)))
            .filter(|n| !given_up.iter().any(|(g, _)| g == *n))
            .map(|n| (n.clone(), until))
            .collect();
        if !list.is_empty() {
            self.writing.insert(chunk.clone(), list);
        }
    }

    /// Replicas still being written after their upload answered (see
    /// [`Cluster::expect_writing`]).
    pub fn writing_replicas(&self) -> usize {
        self.writing.values().map(Vec::len).sum()
    }

    /// The checksum `node` reported storing for chunk `chunk_id` of an open
    /// upload, if it did.
    pub fn reported_checksum(&self, chunk_id: &ChunkId, node: &NodeId) -> Option<u32> {
        self.pending.get(chunk_id)?.get(node).copied()
    }

    /// One replica a node says it holds: counted when its checksum agrees
    /// with the namespace (or the chunk is not a file's), kept apart as
    /// corrupt otherwise. Returns whether the namespace knows the chunk.
    fn observe(&mut self, ns: &Namespace, chunk: &ChunkId, checksum: u32, node: &NodeId) -> bool {
        match ns.chunk_owner(chunk) {
            Some(ChunkOwner::File { checksum: want, .. }) if want != checksum => {
                if self
                    .corrupt
                    .entry(chunk.clone())
                    .or_default()
                    .insert(node.clone())
                {
                    tracing::warn!(
                        node_id = %node,
                        chunk_id = %chunk,
                        reported = format_args!("{checksum:08x}"),
                        recorded = format_args!("{want:08x}"),
                        "replica checksum differs from the namespace: counted as corrupt"
                    );
                }
                self.remove_replica(chunk, node);
                true
            }
            Some(ChunkOwner::File { .. }) => {
                // A verified copy (e.g. repaired onto a node that had a
                // corrupt one): its quarantined copy is gone with it.
                self.forget_corrupt(chunk, node);
                self.forget_quarantined(chunk, node);
                self.add_replica(chunk, node);
                true
            }
            Some(ChunkOwner::Upload) => {
                self.pending
                    .entry(chunk.clone())
                    .or_default()
                    .insert(node.clone(), checksum);
                self.add_replica(chunk, node);
                true
            }
            None => {
                self.add_replica(chunk, node);
                false
            }
        }
    }

    fn forget_quarantined(&mut self, chunk: &ChunkId, node: &NodeId) {
        if let Some(set) = self.quarantined.get_mut(chunk) {
            set.remove(node);
            if set.is_empty() {
                self.quarantined.remove(chunk);
            }
        }
    }

    fn forget_corrupt(&mut self, chunk: &ChunkId, node: &NodeId) {
        if let Some(set) = self.corrupt.get_mut(chunk) {
            set.remove(node);
            if set.is_empty() {
                self.corrupt.remove(chunk);
            }
        }
    }

    /// Enters (`true`) or leaves (`false`) safe mode by hand.
    pub fn set_safe_mode(&mut self, enabled: bool) {
        tracing::warn!(enabled, "safe mode set by an admin");
        self.safe.manual = Some(enabled);
        if !enabled {
            self.safe.active = false;
        }
    }

    /// True while no delete and no repair may be ordered.
    pub fn in_safe_mode(&self) -> bool {
        match self.safe.manual {
            Some(on) => on,
            None => self.safe.active,
        }
    }

    /// Safe mode and its reason, for status calls.
    pub fn safe_mode(&self, ns: &Namespace) -> SafeModeStatus {
        let (reported_nodes, known_nodes) = self.safe_mode_nodes(ns);
        let (reported_nodes, known_nodes) = (reported_nodes as u32, known_nodes as u32);
        let active = self.in_safe_mode();
        let reason = match self.safe.manual {
            Some(true) => "entered by an admin (leave it with dfs safemode leave)".to_string(),
            Some(false) if self.safe.active => "left by an admin".to_string(),
            _ if !active => "off".to_string(),
            _ => self
                .safe_mode_wait(ns)
                .unwrap_or_else(|| "ending".to_string()),
        };
        SafeModeStatus {
            active,
            reason,
            reported_nodes,
            known_nodes,
            reported_replicas: self.safe.reported_replicas,
            known_replicas: self.safe.known_replicas,
            manual: self.safe.manual.is_some(),
        }
    }

    /// What automatic safe mode still waits for (`None`: nothing).
    /// (reported, known) datanodes for safe mode: draining and
    /// decommissioned nodes are not waited for.
    fn safe_mode_nodes(&self, ns: &Namespace) -> (usize, usize) {
        let counted = || ns.nodes().values().filter(|r| !r.draining);
        let known = counted().count();
        let reported = counted()
            .filter(|r| self.safe.reported.contains(&r.node_id))
            .count();
        (reported, known)
    }

    fn safe_mode_wait(&self, ns: &Namespace) -> Option<String> {
        let (reported, known) = self.safe_mode_nodes(ns);
        let need = ((self.timing.safe_mode_node_share * known as f64).ceil() as usize)
            .clamp(1, known.max(1));
        if reported < need {
            return Some(format!(
                "waiting for full chunk reports: {reported} of {known} datanodes reported, {need} needed"
            ));
        }
        let total = self.safe.reported_replicas;
        let have = self.safe.known_replicas;
        if total - have > self.timing.safe_mode_unknown_min
            && (have as f64) < self.timing.safe_mode_known_share * total as f64
        {
            return Some(format!(
                "only {have} of {total} reported replicas are known to the namespace \
                 (need {:.0}%): is this the right metadata? Nothing is deleted until an \
                 admin leaves safe mode",
                self.timing.safe_mode_known_share * 100.0
            ));
        }
        None
    }

    /// A node registered (or re-registered).
    pub fn on_register(&mut self, node_id: &NodeId, info: NodeInfo, now_ms: u64) {
        let live = self.live.entry(node_id.clone()).or_default();
        live.info = info;
        live.last_heartbeat_ms = now_ms;
        live.planned_bytes = 0;
    }

    /// Applies one heartbeat; returns the commands to deliver with the reply
    /// and the node's state.
    pub fn on_heartbeat(
        &mut self,
        ns: &Namespace,
        ev: HeartbeatEvent,
        now_ms: u64,
    ) -> Result<(Vec<NodeCommand>, NodeState), ClusterError> {
        let Some(record) = ns.nodes().get(&ev.node_id) else {
            return Err(ClusterError::UnknownNode {
                node_id: ev.node_id,
            });
        };
        let node = &ev.node_id;
        // Pending copies their primary gave up: no longer waited for.
        for (chunk, writer) in &ev.abandoned {
            if let Some(w) = self.writing.get_mut(chunk) {
                w.retain(|(n, _)| n != writer);
                if w.is_empty() {
                    self.writing.remove(chunk);
                }
            } else if self.given_up.len() < MAX_GIVEN_UP {
                // Not confirmed yet: remembered for the confirm to come,
                // once per writer, at most a plan's worth per chunk.
                let until = now_ms.saturating_add(self.timing.pending_replica_grace_ms);
                let g = self.given_up.entry(chunk.clone()).or_default();
                if g.len() < MAX_GIVEN_UP_PER_CHUNK && !g.iter().any(|(n, _)| n == writer) {
                    g.push((writer.clone(), until));
                }
            }
        }
        {
            let live = self.live.entry(ev.node_id.clone()).or_default();
            live.info = ev.info;
            live.last_heartbeat_ms = now_ms;
            live.planned_bytes = 0;
        }
        if let Some(batch) = &ev.report {
            let live = self.live.get_mut(node).expect("inserted above");
            if batch.first || live.report.is_none() {
                live.report = Some(HashSet::new());
            }
            let seen = live.report.as_mut().expect("set above");
            seen.extend(batch.chunks.iter().map(|(c, _)| c.clone()));
            let counting = self.safe.active && !self.safe.reported.contains(node);
            for (c, crc) in &batch.chunks {
                let known = self.observe(ns, c, *crc, node);
                // A replica of a chunk the namespace released lately is an
                // orphan of these metadata and says nothing either way: it
                // is left out of both counts (counted as known, a backup
                // whose log released many chunks would look right enough
                // to leave safe mode and delete what was written after it).
                if counting && (known || !ns.recently_released(c)) {
                    self.safe.reported_replicas += 1;
                    self.safe.known_replicas += u64::from(known);
                }
            }
            if batch.last {
                if counting {
                    self.safe.reported.insert(node.clone());
                }
                let live = self.live.get_mut(node).expect("inserted above");
                live.reported = true;
                let seen = live.report.take().unwrap_or_default();
                let lost: Vec<ChunkId> = live
                    .chunks
                    .iter()
                    .filter(|c| !seen.contains(*c))
                    .cloned()
                    .collect();
                let gone_corrupt: Vec<ChunkId> = self
                    .corrupt
                    .iter()
                    .filter(|(c, holders)| holders.contains(node) && !seen.contains(*c))
                    .map(|(c, _)| c.clone())
                    .collect();
                for c in gone_corrupt {
                    self.forget_corrupt(&c, node);
                }
                if !lost.is_empty() {
                    tracing::info!(
                        node_id = %node,
                        lost = lost.len(),
                        "full report: replicas gone"
                    );
                }
                for c in lost {
                    self.remove_replica(&c, node);
                }
            }
        }
        for (c, crc) in &ev.added {
            self.observe(ns, c, *crc, node);
            let done: Vec<u64> = self
                .inflight
                .iter()
                .filter(|(_, r)| r.chunk_id == *c && r.target == *node)
                .map(|(id, _)| *id)
                .collect();
            for id in done {
                let r = self.inflight.remove(&id).expect("listed above");
                self.stats.repairs_completed += 1;
                self.completions.push_back((now_ms, r.size));
            }
        }
        // After added: a chunk stored and then found corrupt within one
        // heartbeat must end up not counted (a repair onto the same node
        // comes only after the coordinator learned of the corruption).
        for c in &ev.corrupt {
            // The node quarantined it: not counted, kept until R good copies
            // exist elsewhere, then ordered deleted.
            tracing::warn!(node_id = %node, chunk_id = %c, "corrupt replica reported; repairing");
            self.remove_replica(c, node);
            self.quarantined
                .entry(c.clone())
                .or_default()
                .insert(node.clone());
        }
        for c in &ev.removed {
            self.remove_replica(c, node);
            self.forget_corrupt(c, node);
        }
        for r in &ev.results {
            if !r.ok {
                tracing::warn!(node_id = %node, command_id = r.command_id, error = %r.error, "command failed");
                if let Some(failed) = self.inflight.remove(&r.command_id) {
                    self.back_off(failed, now_ms);
                }
            }
        }
        let record = record.clone();
        let live = self.live.get_mut(node).expect("inserted above");
        let commands = std::mem::take(&mut live.outbox);
        let state = self.view(&record, now_ms).state;
        Ok((commands, state))
    }

    /// A repair failed or timed out: its target is not tried again for
    /// that chunk for [`REPAIR_BACKOFF_MS`].
    fn back_off(&mut self, failed: Repair, now_ms: u64) {
        self.repair_backoff
            .insert((failed.chunk_id, failed.target), now_ms + REPAIR_BACKOFF_MS);
    }

    /// Takes the queued commands of a node.
    pub fn take_outbox(&mut self, node_id: &NodeId) -> Vec<NodeCommand> {
        self.live
            .get_mut(node_id)
            .map(|l| std::mem::take(&mut l.outbox))
            .unwrap_or_default()
    }

    /// Nodes with queued commands.
    pub fn nodes_with_commands(&self) -> Vec<NodeId> {
        self.live
            .iter()
            .filter(|(_, l)| !l.outbox.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Puts a node into maintenance until `until_ms` (0 ends it).
    pub fn set_maintenance(&mut self, node_id: &NodeId, until_ms: u64) {
        self.live
            .entry(node_id.clone())
            .or_default()
            .maintenance_until_ms = until_ms;
    }

    fn view(&self, record: &NodeRecord, now_ms: u64) -> View {
        let default = Live::default();
        let live = self.live.get(&record.node_id).unwrap_or(&default);
        let age = now_ms.saturating_sub(live.last_heartbeat_ms);
        let liveness = if age >= self.timing.dead_after_ms {
            Liveness::Dead
        } else if age >= self.timing.suspect_after_ms {
            Liveness::Suspect
        } else {
            Liveness::Alive
        };
        let maintenance = live.maintenance_until_ms > now_ms;
        let state = if maintenance {
            NodeState::Maintenance
        } else if record.draining && live.safe_to_remove {
            NodeState::Decommissioned
        } else if liveness == Liveness::Dead {
            NodeState::Dead
        } else if record.draining {
            NodeState::Draining
        } else if liveness == Liveness::Suspect {
            NodeState::Suspect
        } else if live.info.health == Health::Full
            || live.info.free_bytes < self.timing.chunk_size.min(live.info.total_bytes.max(1))
        {
            NodeState::Full
        } else {
            NodeState::Healthy
        };
        View {
            state,
            liveness,
            counts: !record.draining && (maintenance || liveness != Liveness::Dead),
            source: liveness == Liveness::Alive && !maintenance,
        }
    }

    /// Nodes that may receive new chunks, with free space net of what was
    /// planned on them since their last heartbeat.
    pub fn placement_candidates(&self, ns: &Namespace, now_ms: u64) -> Vec<Candidate> {
        ns.nodes()
            .values()
            .filter_map(|rec| {
                let live = self.live.get(&rec.node_id)?;
                let view = self.view(rec, now_ms);
                let ok_health = matches!(live.info.health, Health::Healthy | Health::Unspecified);
                (view.state == NodeState::Healthy && ok_health).then(|| Candidate {
                    node_id: rec.node_id.clone(),
                    zone: rec.topology.zone.clone(),
                    rack: rec.topology.rack.clone(),
                    host: rec.topology.host.clone(),
                    free_bytes: live.info.free_bytes.saturating_sub(live.planned_bytes),
                })
            })
            .collect()
    }

    /// Accounts bytes planned on a node until its next heartbeat.
    pub fn reserve(&mut self, node_id: &NodeId, bytes: u64) {
        if let Some(l) = self.live.get_mut(node_id) {
            l.planned_bytes = l.planned_bytes.saturating_add(bytes);
        }
    }

    /// Live replicas of a chunk, healthiest first (never dead nodes); among
    /// equally healthy replicas the order is a per-chunk hash, so the chunks
    /// of a file are read from all their holders instead of all from one.
    pub fn read_replicas(
        &self,
        ns: &Namespace,
        chunk_id: &ChunkId,
        now_ms: u64,
    ) -> Vec<NodeRecord> {
        let Some(holders) = self.replicas.get(chunk_id) else {
            return Vec::new();
        };
        let mut out: Vec<(u8, u64, NodeRecord)> = holders
            .iter()
            .filter_map(|n| {
                let rec = ns.nodes().get(n)?;
                let view = self.view(rec, now_ms);
                let live = self.live.get(n)?;
                let rank = match (view.state, view.liveness) {
                    // A node in maintenance is listed (last when silent).
                    (NodeState::Maintenance, Liveness::Alive) => 1,
                    (NodeState::Maintenance, _) => 2,
                    (_, Liveness::Dead) => return None,
                    (_, Liveness::Suspect) => 2,
                    // Degraded or shutting down (a DRAINING heartbeat):
                    // still listed, after the healthy ones.
                    (NodeState::Healthy, _)
                        if !matches!(live.info.health, Health::Degraded | Health::Draining) =>
                    {
                        0
                    }
                    _ => 1,
                };
                Some((rank, spread(chunk_id, n), rec.clone()))
            })
            .collect();
        out.sort_by_key(|a| (a.0, a.1));
        out.into_iter().map(|(_, _, r)| r).collect()
    }

    /// Every node with its state.
    pub fn status(&self, ns: &Namespace, now_ms: u64) -> Vec<NodeStatus> {
        ns.nodes()
            .values()
            .map(|rec| {
                let default = Live::default();
                let live = self.live.get(&rec.node_id).unwrap_or(&default);
                let view = self.view(rec, now_ms);
                NodeStatus {
                    record: rec.clone(),
                    state: view.state,
                    info: live.info,
                    last_heartbeat_ms: live.last_heartbeat_ms,
                    chunk_count: live.chunks.len() as u64,
                    safe_to_remove: rec.draining && live.safe_to_remove,
                    maintenance_until_ms: if live.maintenance_until_ms > now_ms {
                        live.maintenance_until_ms
                    } else {
                        0
                    },
                }
            })
            .collect()
    }

    /// Cuts `chunks` to what `node`'s delete budget still allows in the
    /// current orphan-grace window (opened at `now_ms` when the last one
    /// passed) and spends it; what is cut waits for the next window and is
    /// counted, and a node that runs out is named once per window.
    fn spend_budget(
        &mut self,
        node: &NodeId,
        chunks: &mut Vec<ChunkId>,
        now_ms: u64,
        stats: &mut RedundancyStats,
    ) {
        let window = self.timing.orphan_grace_ms.max(1);
        let held = self
            .live
            .get(node)
            .map_or(0, |l| (l.chunks.len() as u64).max(l.info.chunk_count));
        let allowed = self
            .timing
            .delete_budget_min
            .max((self.timing.delete_budget_share * held as f64) as u64);
        let b = self.budgets.entry(node.clone()).or_default();
        if b.window_start_ms == 0 || now_ms.saturating_sub(b.window_start_ms) >= window {
            *b = Budget {
                window_start_ms: now_ms,
                used: 0,
                exhausted: false,
            };
        }
        let left = allowed.saturating_sub(b.used) as usize;
        if chunks.len() > left {
            let deferred = chunks.len() - left;
            stats.deletes_deferred += deferred as u64;
            self.exhausted.insert(node.clone());
            if !b.exhausted {
                b.exhausted = true;
                stats.budget_exhausted_total += 1;
                tracing::warn!(node_id = %node, allowed, deferred, window_ms = window, "delete budget exhausted: further deletes on this node wait for the next window");
            }
            chunks.truncate(left);
        }
        b.used += chunks.len() as u64;
    }

    /// Starts the expiry clock of an open upload (`deadline_ms` monotonic).
    pub fn track_upload(&mut self, upload_id: &UploadId, deadline_ms: u64) {
        self.upload_deadlines.insert(upload_id.clone(), deadline_ms);
    }

    /// Open uploads whose monotonic deadline passed; forgets uploads that
    /// ended otherwise.
    pub fn expired_uploads(&mut self, ns: &Namespace, now_ms: u64) -> Vec<UploadId> {
        self.upload_deadlines
            .retain(|id, _| ns.uploads().contains_key(id));
        let mut out: Vec<UploadId> = self
            .upload_deadlines
            .iter()
            .filter(|(_, d)| **d <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// Drops every queued command (fail-stop: nothing decided on a state
    /// the disk may not hold is delivered).
    pub fn clear_outboxes(&mut self) {
        for l in self.live.values_mut() {
            l.outbox.clear();
        }
        self.inflight.clear();
        self.repair_backoff.clear();
    }

    /// Nodes whose delete budget ran out in the last tick.
    pub fn budget_exhausted_nodes(&self) -> Vec<NodeId> {
        self.exhausted.iter().cloned().collect()
    }

    /// The latest redundancy summary.
    pub fn stats(&self) -> RedundancyStats {
        self.stats
    }

    /// Holders of a chunk (any state), for tests and diagnostics.
    pub fn holders(&self, chunk_id: &ChunkId) -> Vec<NodeId> {
        self.replicas
            .get(chunk_id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn command_id(&mut self) -> u64 {
        let id = self.next_command_id;
        self.next_command_id += 1;
        id
    }

    /// One pass of the repair loop: [`Cluster::decide`], then the orders
    /// queued for delivery with the next heartbeat answers of their nodes.
    pub fn tick(&mut self, ns: &Namespace, now_ms: u64) {
        let orders = self.decide(ns, now_ms);
        self.enqueue(orders);
    }

    /// Queues `orders` for their nodes; an order for a node that is not
    /// alive is dropped (the loop decides again on the next tick).
    pub fn enqueue(&mut self, orders: Vec<Order>) {
        for Order { node, command } in orders {
            if let Some(l) = self.live.get_mut(&node) {
                l.outbox.push(command);
            }
        }
    }

    /// The repair loop's decisions at `now_ms` (time passed in, nothing
    /// sent): expires maintenance and stale repairs, plans re-replication,
    /// deletes over-replicated and orphan replicas after their grace
    /// periods, refreshes the summary, and returns the commands to send to
    /// datanodes.
    #[must_use = "the orders are what the datanodes must be sent"]
    pub fn decide(&mut self, ns: &Namespace, now_ms: u64) -> Vec<Order> {
        let mut out: Vec<Order> = Vec::new();
        if self.safe.active && self.safe.manual.is_none() && self.safe_mode_wait(ns).is_none() {
            tracing::info!(
                reported_nodes = self.safe.reported.len(),
                reported_replicas = self.safe.reported_replicas,
                known_replicas = self.safe.known_replicas,
                "leaving safe mode: enough datanodes reported and their chunks are known"
            );
            self.safe.active = false;
        }
        let safe_mode = self.in_safe_mode();
        // Checksums of uploads that ended (confirmed or gone).
        self.pending
            .retain(|c, _| matches!(ns.chunk_owner(c), Some(ChunkOwner::Upload)));
        for (id, l) in &mut self.live {
            if l.maintenance_until_ms != 0 && l.maintenance_until_ms <= now_ms {
                tracing::info!(node_id = %id, "maintenance ended");
                l.maintenance_until_ms = 0;
            }
        }
        let timed_out: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, r)| r.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            let r = self.inflight.remove(&id).expect("listed above");
            tracing::warn!(command_id = id, chunk_id = %r.chunk_id, "repair timed out");
            self.back_off(r, now_ms);
        }
        self.repair_backoff.retain(|_, until| *until > now_ms);
        self.writing.retain(|chunk, w| {
            w.retain(|(node, until)| {
                let waiting = *until > now_ms;
                if !waiting {
                    tracing::warn!(chunk_id = %chunk, node_id = %node, "a replica still writing at its upload's answer never reported the chunk: repairing around it");
                }
                waiting
            });
            !w.is_empty() && ns.chunk_owner(chunk).is_some()
        });
        self.given_up.retain(|_, g| {
            g.retain(|(_, until)| *until > now_ms);
            !g.is_empty()
        });
        while self
            .completions
            .front()
            .is_some_and(|(t, _)| t + RATE_WINDOW_MS < now_ms)
        {
            self.completions.pop_front();
        }

        let views: HashMap<&NodeId, View> = ns
            .nodes()
            .values()
            .map(|r| (&r.node_id, self.view(r, now_ms)))
            .collect();
        let mut inflight_by_chunk: HashMap<&ChunkId, u32> = HashMap::new();
        let mut busy: HashMap<NodeId, u32> = HashMap::new();
        for r in self.inflight.values() {
            *inflight_by_chunk.entry(&r.chunk_id).or_default() += 1;
            *busy.entry(r.source.clone()).or_default() += 1;
            *busy.entry(r.target.clone()).or_default() += 1;
        }
        let topology: HashMap<NodeId, Candidate> = ns
            .nodes()
            .values()
            .map(|r| {
                let free = self
                    .live
                    .get(&r.node_id)
                    .map(|l| l.info.free_bytes)
                    .unwrap_or(0);
                (
                    r.node_id.clone(),
                    Candidate {
                        node_id: r.node_id.clone(),
                        zone: r.topology.zone.clone(),
                        rack: r.topology.rack.clone(),
                        host: r.topology.host.clone(),
                        free_bytes: free,
                    },
                )
            })
            .collect();

        let mut stats = RedundancyStats {
            repairs_completed: self.stats.repairs_completed,
            orphans_deleted: self.stats.orphans_deleted,
            budget_exhausted_total: self.stats.budget_exhausted_total,
            corrupt_replicas: self.corrupt.values().map(|s| s.len() as u64).sum(),
            ..RedundancyStats::default()
        };
        let mut needs = Vec::new();
        let mut deletes: HashMap<NodeId, Vec<ChunkId>> = HashMap::new();
        let mut over_now: HashSet<ChunkId> = HashSet::new();
        let empty = BTreeSet::new();
        // Borrowed, reused per-chunk scratch: this loop runs over every
        // chunk each tick, and cloning node ids and candidates for every
        // replica was most of its cost (perf: allocator and memmove under
        // Cluster::tick); owned copies are made only for the rare chunk
        // that needs repair or trimming.
        let mut good: Vec<&NodeId> = Vec::new();
        let mut sources: Vec<&NodeId> = Vec::new();
        let mut healthy: Vec<&Candidate> = Vec::new();
        for (key, owner) in ns.chunk_index() {
            let ChunkOwner::File {
                size, replication, ..
            } = *owner
            else {
                continue;
            };
            let chunk = &key.id();
            let holders = self.replicas.get(chunk).unwrap_or(&empty);
            good.clear();
            sources.clear();
            healthy.clear();
            let mut live_count = 0;
            for n in holders {
                let Some(v) = views.get(n) else {
                    continue;
                };
                if v.liveness != Liveness::Dead {
                    live_count += 1;
                }
                if v.counts {
                    good.push(n);
                }
                if v.source {
                    sources.push(n);
                }
                // Surplus is judged (and trimmed) only among replicas a full
                // report of this coordinator's lifetime vouched for: never
                // on a copy recalled from a confirm record alone.
                if matches!(v.state, NodeState::Healthy | NodeState::Full)
                    && self.live.get(n).is_some_and(|l| l.reported)
                    && let Some(c) = topology.get(n)
                {
                    healthy.push(c);
                }
            }
            if live_count == 0 {
                stats.missing += 1;
            } else if (good.len() as u32) < replication {
                stats.under_replicated += 1;
            }
            // Replicas still writing since their upload count as repairs
            // in flight, while their node lives.
            let writing = self.writing.get(chunk);
            let inflight = inflight_by_chunk.get(chunk).copied().unwrap_or(0)
                + writing.map_or(0, |w| {
                    w.iter()
                        .filter(|(n, _)| views.get(n).is_some_and(|v| v.liveness != Liveness::Dead))
                        .count() as u32
                });
            // Corrupt replicas go only once R good ones exist elsewhere, on
            // live nodes whose full reports vouched for them.
            let verified = good
                .iter()
                .filter(|n| {
                    views
                        .get(**n)
                        .is_some_and(|v| v.liveness == Liveness::Alive)
                        && self.live.get(**n).is_some_and(|l| l.reported)
                })
                .count() as u32;
            if !safe_mode
                && verified >= replication
                && let Some(bad) = self.corrupt.get(chunk)
            {
                for n in bad {
                    if views.get(n).is_some_and(|v| v.liveness == Liveness::Alive) {
                        deletes.entry(n.clone()).or_default().push(chunk.clone());
                    }
                }
            }
            if (good.len() as u32) < replication {
                stats.repair_queue += 1;
                stats.repair_bytes_remaining += size * u64::from(replication - good.len() as u32);
                if !sources.is_empty() {
                    needs.push(Need {
                        chunk_id: chunk.clone(),
                        size,
                        replication,
                        good: good.iter().map(|n| (*n).clone()).collect(),
                        sources: sources.iter().map(|n| (*n).clone()).collect(),
                        // A node with a corrupt copy cannot take a good one
                        // (chunk ids are immutable).
                        // Nor a node that just failed a repair of it.
                        holders: holders
                            .iter()
                            .chain(self.corrupt.get(chunk).into_iter().flatten())
                            .chain(writing.into_iter().flatten().map(|(n, _)| n))
                            .cloned()
                            .chain(
                                self.repair_backoff
                                    .keys()
                                    .filter(|(c, _)| c == chunk)
                                    .map(|(_, n)| n.clone()),
                            )
                            .collect(),
                        inflight,
                    });
                }
            } else if healthy.len() as u32 > replication && inflight == 0 {
                stats.over_replicated += 1;
                if safe_mode {
                    continue;
                }
                over_now.insert(chunk.clone());
                let since = *self.over_since.entry(chunk.clone()).or_insert(now_ms);
                if now_ms.saturating_sub(since) >= self.timing.over_replication_grace_ms {
                    let owned: Vec<Candidate> = healthy.iter().map(|c| (*c).clone()).collect();
                    for victim in repair::excess(&owned, replication) {
                        deletes.entry(victim).or_default().push(chunk.clone());
                    }
                }
            }
        }
        self.over_since.retain(|c, _| over_now.contains(c));

        // Orphans: replicas of chunks no file or open upload references.
        // Not even counted in safe mode: the grace starts with a full view.
        let mut orphan_now = HashSet::new();
        for (chunk, holders) in &self.replicas {
            if safe_mode || ns.chunk_owner(chunk).is_some() {
                continue;
            }
            orphan_now.insert(chunk.clone());
            let since = *self.orphan_since.entry(chunk.clone()).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= self.timing.orphan_grace_ms {
                for n in holders {
                    if views.get(n).is_some_and(|v| v.liveness == Liveness::Alive) {
                        deletes.entry(n.clone()).or_default().push(chunk.clone());
                    }
                }
            }
        }
        self.orphan_since.retain(|c, _| orphan_now.contains(c));
        // Quarantined copies go once R good replicas exist elsewhere (or the
        // chunk is no file's any more).
        let mut drop_quarantined: HashMap<NodeId, Vec<ChunkId>> = HashMap::new();
        if !safe_mode {
            for (chunk, nodes) in &self.quarantined {
                let enough = match ns.chunk_owner(chunk) {
                    Some(ChunkOwner::File { replication, .. }) => {
                        let good = self.replicas.get(chunk).map_or(0, |h| {
                            h.iter()
                                .filter(|n| {
                                    views
                                        .get(*n)
                                        .is_some_and(|v| v.liveness == Liveness::Alive && v.counts)
                                        && self.live.get(*n).is_some_and(|l| l.reported)
                                })
                                .count()
                        });
                        good as u32 >= replication
                    }
                    Some(ChunkOwner::Upload) => false,
                    None => true,
                };
                if !enough {
                    continue;
                }
                for n in nodes {
                    let holds = self.replicas.get(chunk).is_some_and(|h| h.contains(n));
                    if !holds && views.get(n).is_some_and(|v| v.liveness == Liveness::Alive) {
                        drop_quarantined
                            .entry(n.clone())
                            .or_default()
                            .push(chunk.clone());
                    }
                }
            }
        }
        // Corrupt replicas of chunks no file references any more.
        if !safe_mode {
            for (chunk, holders) in &self.corrupt {
                if ns.chunk_owner(chunk).is_some() {
                    continue;
                }
                for n in holders {
                    if views.get(n).is_some_and(|v| v.liveness == Liveness::Alive) {
                        deletes.entry(n.clone()).or_default().push(chunk.clone());
                    }
                }
            }
        }

        // The delete budget: per node and grace window.
        self.exhausted.clear();
        let mut deletes: Vec<(NodeId, Vec<ChunkId>)> = deletes.into_iter().collect();
        deletes.sort();
        let mut ordered = Vec::with_capacity(deletes.len());
        for (node, mut chunks) in deletes {
            self.spend_budget(&node, &mut chunks, now_ms, &mut stats);
            if !chunks.is_empty() {
                ordered.push((node, chunks));
            }
        }

        for (node, chunks) in ordered {
            for c in &chunks {
                if ns.chunk_owner(c).is_none() {
                    stats.orphans_deleted += 1;
                }
                if self.corrupt.get(c).is_some_and(|s| s.contains(&node)) {
                    self.forget_corrupt(c, &node);
                } else {
                    self.remove_replica(c, &node);
                }
                if !self.replicas.contains_key(c) {
                    self.orphan_since.remove(c);
                }
            }
            let command_id = self.command_id();
            tracing::info!(node_id = %node, chunks = chunks.len(), "deleting surplus replicas");
            out.push(Order::delete(node, command_id, chunks, false));
        }
        // Quarantined copies, from what is left of each node's budget.
        let mut drop_quarantined: Vec<_> = drop_quarantined.into_iter().collect();
        drop_quarantined.sort();
        for (node, mut chunks) in drop_quarantined {
            self.spend_budget(&node, &mut chunks, now_ms, &mut stats);
            if chunks.is_empty() {
                continue;
            }
            for c in &chunks {
                self.forget_quarantined(c, &node);
            }
            let command_id = self.command_id();
            tracing::info!(node_id = %node, chunks = chunks.len(), "deleting quarantined copies");
            out.push(Order::delete(node, command_id, chunks, true));
        }

        // Re-replication (none in safe mode).
        let targets: Vec<Candidate> = self.placement_candidates(ns, now_ms);
        if safe_mode {
            needs.clear();
        }
        let orders = repair::plan(
            needs,
            &targets,
            &topology,
            &mut busy,
            self.timing.repair_streams_per_node.max(1),
            &mut self.rng,
        );
        let per_stream = self.timing.repair_bytes_per_second
            / u64::from(self.timing.repair_streams_per_node.max(1));
        for order in orders {
            let Some(ChunkOwner::File {
                checksum,
                algorithm,
                ..
            }) = ns.chunk_owner(&order.chunk_id)
            else {
                continue;
            };
            let Some(target) = ns.nodes().get(&order.target) else {
                continue;
            };
            let command_id = self.command_id();
            let transfer_ms = order
                .size
                .saturating_mul(1000)
                .checked_div(per_stream)
                .unwrap_or(0);
            let deadline_ms = now_ms
                + (transfer_ms * 4)
                    .max(self.timing.heartbeat_interval_ms * 20)
                    .max(10_000);
            tracing::info!(chunk_id = %order.chunk_id, source = %order.source, target = %order.target, command_id, "repair");
            self.inflight.insert(
                command_id,
                Repair {
                    chunk_id: order.chunk_id.clone(),
                    source: order.source.clone(),
                    target: order.target.clone(),
                    size: order.size,
                    deadline_ms,
                },
            );
            out.push(Order {
                node: order.source.clone(),
                command: NodeCommand::Replicate {
                    command_id,
                    chunk: ChunkMetaRec {
                        id: order.chunk_id,
                        checksum,
                        size: order.size,
                        algorithm,
                    },
                    target_id: target.node_id.clone(),
                    target_address: target.address.clone(),
                    max_bytes_per_second: per_stream,
                },
            });
        }

        // Decommission progress.
        for rec in ns.nodes().values() {
            if !rec.draining {
                continue;
            }
            let Some(live) = self.live.get(&rec.node_id) else {
                continue;
            };
            let safe = live.chunks.iter().all(|c| {
                let Some(ChunkOwner::File { replication, .. }) = ns.chunk_owner(c) else {
                    return true;
                };
                let elsewhere = self
                    .replicas
                    .get(c)
                    .map(|h| {
                        h.iter()
                            .filter(|n| *n != &rec.node_id)
                            .filter(|n| {
                                views.get(n).is_some_and(|v| {
                                    v.liveness == Liveness::Alive
                                        && matches!(v.state, NodeState::Healthy | NodeState::Full)
                                })
                            })
                            .count()
                    })
                    .unwrap_or(0);
                elsewhere as u32 >= replication
            });
            if let Some(l) = self.live.get_mut(&rec.node_id) {
                if safe && !l.safe_to_remove {
                    tracing::info!(node_id = %rec.node_id, "drained: safe to remove");
                }
                l.safe_to_remove = safe;
            }
        }
        for rec in ns.nodes().values() {
            if !rec.draining
                && let Some(l) = self.live.get_mut(&rec.node_id)
            {
                l.safe_to_remove = false;
            }
        }

        stats.repairs_in_flight = self.inflight.len() as u64;
        stats.replicas_writing = self.writing_replicas() as u64;
        let window_bytes: u64 = self.completions.iter().map(|(_, b)| b).sum();
        let rate = if window_bytes > 0 {
            window_bytes as f64 / (RATE_WINDOW_MS as f64 / 1000.0)
        } else {
            let per_node = if self.timing.repair_bytes_per_second == 0 {
                100.0 * 1024.0 * 1024.0
            } else {
                self.timing.repair_bytes_per_second as f64
            };
            per_node * (targets.len().max(1) as f64)
        };
        stats.repair_eta_seconds = if stats.repair_bytes_remaining == 0 {
            0
        } else {
            (stats.repair_bytes_remaining as f64 / rate).ceil() as u64
        };
        self.stats = stats;
        out
    }

    /// Sum of usable and used capacity over nodes that are not dead.
    pub fn capacity(&self, ns: &Namespace, now_ms: u64) -> (u64, u64) {
        let mut total = 0;
        let mut used = 0;
        for rec in ns.nodes().values() {
            if self.view(rec, now_ms).liveness == Liveness::Dead {
                continue;
            }
            if let Some(l) = self.live.get(&rec.node_id) {
                total += l.info.total_bytes;
                used += l.info.used_bytes;
            }
        }
        (total, used)
    }

    /// Heartbeat age of every node, in milliseconds.
    pub fn heartbeat_ages(&self, now_ms: u64) -> Vec<(NodeId, u64)> {
        self.live
            .iter()
            .map(|(id, l)| (id.clone(), now_ms.saturating_sub(l.last_heartbeat_ms)))
            .collect()
    }
}

/// Rendezvous weight of `node_id` for `chunk_id`: stable for a pair (so
/// repeated lookups agree), uniformly spread across chunks.
fn spread(chunk_id: &ChunkId, node_id: &NodeId) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    chunk_id.hash(&mut h);
    node_id.hash(&mut h);
    h.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::namespace::{Command, PlannedChunkRecord, TopologyRecord, Upload};
    use crate::test_ids::{named, nodes};

    fn timing() -> Timing {
        Timing::for_tests()
    }

    fn info() -> NodeInfo {
        NodeInfo {
            free_bytes: 1 << 30,
            total_bytes: 1 << 30,
            health: Health::Healthy,
            ..NodeInfo::default()
        }
    }

    /// `nodes` registered, alive datanodes n0… with 1 GiB free each, every
    /// one past its first (empty) full report.
    pub(crate) fn setup(nodes: usize) -> (Namespace, Cluster) {
        let mut ns = Namespace::new();
        for i in 0..nodes {
            ns.apply(&Command::RegisterNode(NodeRecord {
                node_id: named(&format!("n{i}")),
                address: format!("http://n{i}"),
                topology: TopologyRecord::default(),
                version: String::new(),
                draining: false,
                maintenance_until_ms: 0,
            }))
            .unwrap();
        }
        let mut cluster = Cluster::new(timing(), &ns, 0, |t| t);
        for i in 0..nodes {
            cluster.on_register(&named(&format!("n{i}")), info(), 0);
            // An empty full report each: safe mode ends at the first tick.
            report(&ns, &mut cluster, &format!("n{i}"), vec![], 0);
        }
        (ns, cluster)
    }

    const C: &str = "0123456789abcdef0123456789abcdef";

    fn store_file(ns: &mut Namespace, cluster: &mut Cluster, replicas: &[&str]) {
        open_upload(ns, 3);
        let chunks = vec![ChunkRecord {
            id: named(C),
            checksum: 1,
            size: 10,
            algorithm: 1,
            replicas: nodes(replicas),
        }];
        ns.apply(&Command::ConfirmUpload {
            upload_id: named("u"),
            chunks: chunks.clone(),
            now_ms: 0,
        })
        .unwrap();
        cluster.on_confirmed(&chunks);
    }

    /// A heartbeat of `node` reporting `chunk` stored with checksum `crc`.
    fn added(ns: &Namespace, cluster: &mut Cluster, node: &str, chunk: &str, crc: u32, now: u64) {
        let ev = HeartbeatEvent {
            info: info(),
            added: vec![(named(chunk), crc)],
            ..HeartbeatEvent::new(named(node))
        };
        cluster.on_heartbeat(ns, ev, now).unwrap();
    }

    fn beat(ns: &Namespace, cluster: &mut Cluster, node: &str, now: u64) -> Vec<NodeCommand> {
        let ev = HeartbeatEvent {
            info: info(),
            ..HeartbeatEvent::new(named(node))
        };
        cluster.on_heartbeat(ns, ev, now).unwrap().0
    }

    #[test]
    fn decide_returns_the_orders_and_queues_nothing() {
        let (mut ns, mut cluster) = setup(4);
        // Replication 3, two replicas: one copy is ordered.
        store_file(&mut ns, &mut cluster, &["n0", "n1"]);
        for n in ["n0", "n1", "n2", "n3"] {
            beat(&ns, &mut cluster, n, 10);
        }
        let orders = cluster.decide(&ns, 10);
        assert_eq!(orders.len(), 1, "{orders:?}");
        let Order {
            node,
            command: NodeCommand::Replicate { target_id, .. },
        } = &orders[0]
        else {
            panic!("{orders:?}")
        };
        assert!(["n0", "n1"].contains(&node.as_str()), "{node}");
        assert!(["n2", "n3"].contains(&target_id.as_str()), "{target_id}");
        assert!(
            cluster.nodes_with_commands().is_empty(),
            "decide sends nothing"
        );
        // Delivery is the caller's explicit step.
        cluster.enqueue(orders.clone());
        assert_eq!(cluster.take_outbox(node), vec![orders[0].command.clone()]);
    }

    /// A replica still writing at its upload's answer is waited for (no
    /// copy elsewhere, not picked as a repair target) until it reports the
    /// chunk; one that never does is repaired around after its grace.
    #[test]
    fn a_replica_still_writing_at_the_answer_holds_repair_until_its_grace_ends() {
        let beat_all = |ns: &Namespace, cluster: &mut Cluster, now: u64| {
            for n in ["n0", "n1", "n2", "n3"] {
                beat(ns, cluster, n, now);
            }
        };
        // It lands: no repair at all.
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1"]);
        cluster.expect_writing(&named(C), &nodes(&["n2"]), 10);
        assert_eq!(cluster.writing_replicas(), 1);
        beat_all(&ns, &mut cluster, 500);
        assert!(cluster.decide(&ns, 500).is_empty(), "waits for n2");
        cluster.tick(&ns, 500);
        assert_eq!(cluster.stats().replicas_writing, 1);
        added(&ns, &mut cluster, "n2", C, 1, 600);
        assert_eq!(cluster.writing_replicas(), 0);
        beat_all(&ns, &mut cluster, 3000);
        assert!(cluster.decide(&ns, 3000).is_empty());
        cluster.tick(&ns, 3000);
        assert_eq!(cluster.stats().under_replicated, 0);

        // It never lands: repaired after the grace (2 s in these timings),
        // and not onto the node that was writing it while it still might.
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1"]);
        cluster.expect_writing(&named(C), &nodes(&["n2"]), 10);
        beat_all(&ns, &mut cluster, 1900);
        assert!(cluster.decide(&ns, 1900).is_empty());
        beat_all(&ns, &mut cluster, 2100);
        let orders = cluster.decide(&ns, 2100);
        assert_eq!(orders.len(), 1, "{orders:?}");
        assert_eq!(cluster.writing_replicas(), 0);

        // Its primary reports the copy abandoned: repaired at once.
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1"]);
        cluster.expect_writing(&named(C), &nodes(&["n2"]), 10);
        let ev = HeartbeatEvent {
            info: info(),
            abandoned: vec![(named(C), named("n2"))],
            ..HeartbeatEvent::new(named("n0"))
        };
        cluster.on_heartbeat(&ns, ev, 100).unwrap();
        assert_eq!(cluster.writing_replicas(), 0);
        beat_all(&ns, &mut cluster, 200);
        assert_eq!(cluster.decide(&ns, 200).len(), 1);

        // The primary gives the copy up before the client's confirm
        // arrives (its heartbeat beat the confirm): the confirm's pending
        // list does not hold the repair back for a whole grace.
        let (mut ns, mut cluster) = setup(4);
        let ev = HeartbeatEvent {
            info: info(),
            abandoned: vec![(named(C), named("n2"))],
            ..HeartbeatEvent::new(named("n0"))
        };
        cluster.on_heartbeat(&ns, ev, 5).unwrap();
        store_file(&mut ns, &mut cluster, &["n0", "n1"]);
        cluster.expect_writing(&named(C), &nodes(&["n2"]), 10);
        assert_eq!(cluster.writing_replicas(), 0);
        beat_all(&ns, &mut cluster, 200);
        assert_eq!(cluster.decide(&ns, 200).len(), 1);

        // A writing node that dies no longer holds the repair back; the
        // copy goes to the one other node.
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1"]);
        cluster.expect_writing(&named(C), &nodes(&["n2"]), 10);
        for n in ["n0", "n1", "n3"] {
            beat(&ns, &mut cluster, n, 1200);
        }
        let orders = cluster.decide(&ns, 1200);
        let [
            Order {
                command: NodeCommand::Replicate { target_id, .. },
                ..
            },
        ] = orders.as_slice()
        else {
            panic!("{orders:?}")
        };
        assert_eq!(target_id, "n3");

        // Unknown nodes and holders are not waited for.
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1"]);
        cluster.expect_writing(&named(C), &nodes(&["n0", "n9"]), 10);
        assert_eq!(cluster.writing_replicas(), 0);
    }

    /// ConfirmUpload notes the replicas still writing before its command
    /// applies (a repair tick may run right after the apply): a note made
    /// while the chunk still belongs to the open upload survives the tick
    /// and holds the repair once the chunk is confirmed.
    #[test]
    fn a_replica_noted_writing_before_the_confirm_applies_holds_repair() {
        let (mut ns, mut cluster) = setup(4);
        open_upload(&mut ns, 3);
        cluster.expect_writing(&named(C), &nodes(&["n2"]), 10);
        for n in ["n0", "n1", "n2", "n3"] {
            beat(&ns, &mut cluster, n, 100);
        }
        cluster.tick(&ns, 100);
        assert_eq!(
            cluster.writing_replicas(),
            1,
            "kept while the upload is open"
        );
        let chunks = vec![ChunkRecord {
            id: named(C),
            checksum: 1,
            size: 10,
            algorithm: 1,
            replicas: nodes(&["n0", "n1"]),
        }];
        ns.apply(&Command::ConfirmUpload {
            upload_id: named("u"),
            chunks: chunks.clone(),
            now_ms: 0,
        })
        .unwrap();
        cluster.on_confirmed(&chunks);
        for n in ["n0", "n1", "n2", "n3"] {
            beat(&ns, &mut cluster, n, 500);
        }
        assert!(cluster.decide(&ns, 500).is_empty(), "waits for n2");
    }

    #[test]
    fn liveness_goes_suspect_then_dead_and_repair_starts_only_when_dead() {
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1", "n2"]);
        // n2 goes silent; at 300 ms it is suspect: nothing is repaired.
        for n in ["n0", "n1", "n3"] {
            beat(&ns, &mut cluster, n, 300);
        }
        cluster.tick(&ns, 300);
        let states: HashMap<_, _> = cluster
            .status(&ns, 300)
            .into_iter()
            .map(|s| (s.record.node_id, s.state))
            .collect();
        assert_eq!(states["n2"], NodeState::Suspect);
        assert!(cluster.nodes_with_commands().is_empty());
        // Suspect replicas are served last.
        let order: Vec<_> = cluster
            .read_replicas(&ns, &named(C), 300)
            .into_iter()
            .map(|r| r.node_id)
            .collect();
        assert_eq!(order.last().unwrap(), "n2");
        // Dead at 1100 ms: repaired from n0/n1 to n3, and not served.
        for n in ["n0", "n1", "n3"] {
            beat(&ns, &mut cluster, n, 1100);
        }
        cluster.tick(&ns, 1100);
        assert_eq!(cluster.stats().under_replicated, 1);
        let order: Vec<_> = cluster
            .read_replicas(&ns, &named(C), 1100)
            .into_iter()
            .map(|r| r.node_id)
            .collect();
        assert!(!order.contains(&named("n2")));
        let mut orders = Vec::new();
        for n in cluster.nodes_with_commands() {
            orders.extend(cluster.take_outbox(&n));
        }
        assert_eq!(orders.len(), 1);
        let NodeCommand::Replicate { target_id, .. } = &orders[0] else {
            panic!()
        };
        assert_eq!(target_id, "n3");
        // Not re-issued while in flight; completed by the target's report.
        cluster.tick(&ns, 1150);
        assert!(cluster.nodes_with_commands().is_empty());
        added(&ns, &mut cluster, "n3", C, 1, 1200);
        cluster.tick(&ns, 1200);
        assert_eq!(cluster.stats().under_replicated, 0);
        assert_eq!(cluster.stats().repairs_completed, 1);
    }

    #[test]
    fn a_target_that_failed_a_repair_is_left_out_of_that_chunks_repairs_for_a_while() {
        let (mut ns, mut cluster) = setup(4);
        // Replication 3 on n0, n1: one copy, to n2 or n3.
        store_file(&mut ns, &mut cluster, &["n0", "n1"]);
        let repair = |cluster: &mut Cluster, ns: &Namespace, now: u64| {
            for n in ["n0", "n1", "n2", "n3"] {
                beat(ns, cluster, n, now);
            }
            cluster.tick(ns, now);
            all_commands(cluster)
                .into_iter()
                .filter_map(|(_, c)| match c {
                    NodeCommand::Replicate {
                        command_id,
                        target_id,
                        ..
                    } => Some((command_id, target_id)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let first = repair(&mut cluster, &ns, 10);
        assert_eq!(first.len(), 1, "{first:?}");
        let (id, refused_by) = first[0].clone();
        // The copy failed (the target refused it): the result comes back in
        // a heartbeat (which node sends it does not matter).
        let source = "n0";
        let ev = HeartbeatEvent {
            info: info(),
            results: vec![CommandOutcome {
                command_id: id,
                ok: false,
                error: "refused".into(),
            }],
            ..HeartbeatEvent::new(named(source))
        };
        cluster.on_heartbeat(&ns, ev, 20).unwrap();
        // Re-planned at once, but to the other target, every time within
        // the back-off.
        for now in [30, 1000, 5000] {
            let next = repair(&mut cluster, &ns, now);
            for (_, target) in &next {
                assert_ne!(
                    *target, refused_by,
                    "re-planned to the refusing target at {now} ms"
                );
            }
            // Let it time out to be planned again (no report of success).
            cluster.inflight.clear();
        }
        // After the back-off, the refusing node may be chosen again.
        let later = repair(&mut cluster, &ns, 20 + REPAIR_BACKOFF_MS + 1);
        assert_eq!(later.len(), 1);
        assert!(
            cluster.repair_backoff.is_empty(),
            "expired entries are dropped"
        );
    }

    #[test]
    fn a_node_shutting_down_is_read_last_and_gets_no_new_chunks() {
        let (mut ns, mut cluster) = setup(3);
        store_file(&mut ns, &mut cluster, &["n0", "n1", "n2"]);
        let order = |cluster: &Cluster| -> Vec<NodeId> {
            cluster
                .read_replicas(&ns, &named(C), 100)
                .into_iter()
                .map(|r| r.node_id)
                .collect()
        };
        // Whichever node the hash puts first announces it is shutting down.
        let first = order(&cluster)[0].clone();
        let ev = HeartbeatEvent {
            info: NodeInfo {
                health: Health::Draining,
                ..info()
            },
            ..HeartbeatEvent::new(first.clone())
        };
        cluster.on_heartbeat(&ns, ev, 100).unwrap();
        let now = order(&cluster);
        assert_eq!(now.len(), 3, "still listed: it serves until it stops");
        assert_eq!(now.last(), Some(&first));
        assert!(
            cluster
                .placement_candidates(&ns, 100)
                .iter()
                .all(|c| c.node_id != first)
        );
    }

    #[test]
    fn maintenance_suppresses_repair() {
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1", "n2"]);
        cluster.set_maintenance(&named("n2"), 5000);
        for n in ["n0", "n1", "n3"] {
            beat(&ns, &mut cluster, n, 2000);
        }
        cluster.tick(&ns, 2000);
        assert!(cluster.nodes_with_commands().is_empty());
        assert_eq!(cluster.status(&ns, 2000)[2].state, NodeState::Maintenance);
        for n in ["n0", "n1", "n3"] {
            beat(&ns, &mut cluster, n, 5001);
        }
        cluster.tick(&ns, 5001);
        assert_eq!(cluster.nodes_with_commands().len(), 1);
    }

    #[test]
    fn corrupt_replica_is_dropped_and_orphans_are_deleted_after_grace() {
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1", "n2"]);
        let orphan = "ffffffffffffffffffffffffffffffff";
        added(&ns, &mut cluster, "n3", orphan, 7, 10);
        let ev = HeartbeatEvent {
            info: info(),
            corrupt: vec![named(C)],
            ..HeartbeatEvent::new(named("n1"))
        };
        cluster.on_heartbeat(&ns, ev, 10).unwrap();
        assert_eq!(cluster.holders(&named(C)), ["n0", "n2"]);
        cluster.tick(&ns, 10);
        // Repair queued, orphan not yet deleted.
        let cmds = cluster
            .take_outbox(&named("n0"))
            .into_iter()
            .chain(cluster.take_outbox(&named("n2")));
        assert_eq!(cmds.count(), 1);
        assert!(cluster.take_outbox(&named("n3")).is_empty());
        for n in ["n0", "n1", "n2", "n3"] {
            beat(&ns, &mut cluster, n, 600);
        }
        cluster.tick(&ns, 600);
        assert_eq!(
            cluster.take_outbox(&named("n3")),
            [NodeCommand::Delete {
                command_id: 2,
                chunk_ids: vec![named(orphan)],
                quarantined_only: false,
            }]
        );
        assert!(cluster.holders(&named(orphan)).is_empty());
    }

    #[test]
    fn full_report_drops_missing_replicas_and_draining_becomes_safe() {
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1", "n2"]);
        report(&ns, &mut cluster, "n2", vec![], 10);
        assert_eq!(cluster.holders(&named(C)), ["n0", "n1"]);

        ns.apply(&Command::SetDraining {
            node_id: named("n0"),
            draining: true,
        })
        .unwrap();
        cluster.tick(&ns, 20);
        let st = &cluster.status(&ns, 20)[0];
        assert_eq!((st.state, st.safe_to_remove), (NodeState::Draining, false));
        // Two copies are needed (from n0 or n1 to n2 and n3).
        let mut targets = Vec::new();
        for n in cluster.nodes_with_commands() {
            for c in cluster.take_outbox(&n) {
                if let NodeCommand::Replicate { target_id, .. } = c {
                    targets.push(target_id);
                }
            }
        }
        targets.sort();
        assert_eq!(targets, ["n2", "n3"]);
        for t in targets {
            let ev = HeartbeatEvent {
                info: info(),
                added: vec![(named(C), 1)],
                ..HeartbeatEvent::new(t)
            };
            cluster.on_heartbeat(&ns, ev, 30).unwrap();
        }
        beat(&ns, &mut cluster, "n0", 30);
        beat(&ns, &mut cluster, "n1", 30);
        cluster.tick(&ns, 40);
        let st = &cluster.status(&ns, 40)[0];
        assert_eq!(
            (st.state, st.safe_to_remove),
            (NodeState::Decommissioned, true)
        );
    }

    fn report(ns: &Namespace, cluster: &mut Cluster, node: &str, chunks: Vec<Held>, now: u64) {
        let ev = HeartbeatEvent {
            info: info(),
            report: Some(ReportBatch {
                chunks,
                first: true,
                last: true,
            }),
            ..HeartbeatEvent::new(named(node))
        };
        cluster.on_heartbeat(ns, ev, now).unwrap();
    }

    fn all_commands(cluster: &mut Cluster) -> Vec<(NodeId, NodeCommand)> {
        let mut out = Vec::new();
        let mut nodes = cluster.nodes_with_commands();
        nodes.sort();
        for n in nodes {
            for c in cluster.take_outbox(&n) {
                out.push((n.clone(), c));
            }
        }
        out
    }

    fn orphan(i: u32) -> ChunkId {
        ChunkId::from_u128(u128::from(i))
    }

    /// A coordinator restarted on a namespace that knows the nodes: safe
    /// mode until they report, and it stays on (nothing deleted) when most
    /// of what they report is unknown.
    #[test]
    fn safe_mode_orders_nothing_until_reports_are_in_and_mostly_known() {
        let mut ns = Namespace::new();
        for i in 0..4 {
            ns.apply(&Command::RegisterNode(NodeRecord {
                node_id: named(&format!("n{i}")),
                address: format!("http://n{i}"),
                topology: TopologyRecord::default(),
                version: String::new(),
                draining: false,
                maintenance_until_ms: 0,
            }))
            .unwrap();
        }
        let mut cluster0 = Cluster::new(timing(), &ns, 0, |t| t);
        store_file(&mut ns, &mut cluster0, &["n0", "n1", "n2"]);
        let t = Timing {
            safe_mode_node_share: 0.6,
            safe_mode_known_share: 0.8,
            ..timing()
        };
        let mut cluster = Cluster::new(t, &ns, 0, |t| t);
        // n2 is gone for good: its replica needs repair, and n3 holds ten
        // chunks the namespace never heard of.
        for n in ["n0", "n1"] {
            report(&ns, &mut cluster, n, vec![(named(C), 1)], 10);
        }
        report(
            &ns,
            &mut cluster,
            "n3",
            (0..10).map(|i| (orphan(i), 5)).collect(),
            10,
        );
        for now in [10, 600, 1200, 2400] {
            for n in ["n0", "n1", "n3"] {
                beat(&ns, &mut cluster, n, now);
            }
            cluster.tick(&ns, now);
            assert!(cluster.in_safe_mode());
            assert!(
                all_commands(&mut cluster).is_empty(),
                "ordered something at {now} ms"
            );
        }
        let sm = cluster.safe_mode(&ns);
        assert!(sm.active && !sm.manual);
        assert_eq!((sm.reported_nodes, sm.known_nodes), (3, 4));
        assert_eq!((sm.known_replicas, sm.reported_replicas), (2, 12));
        assert!(
            sm.reason.contains("known to the namespace"),
            "{}",
            sm.reason
        );
        // The admin decides: leaving safe mode starts the orphan grace now.
        cluster.set_safe_mode(false);
        for n in ["n0", "n1", "n3"] {
            beat(&ns, &mut cluster, n, 2500);
        }
        cluster.tick(&ns, 2500);
        let cmds = all_commands(&mut cluster);
        assert!(
            cmds.iter()
                .all(|(_, c)| matches!(c, NodeCommand::Replicate { .. })),
            "{cmds:?}"
        );
        assert_eq!(cmds.len(), 1, "the lost replica is repaired");
        for n in ["n0", "n1", "n3"] {
            beat(&ns, &mut cluster, n, 3100);
        }
        cluster.tick(&ns, 3100);
        let deleted: usize = all_commands(&mut cluster)
            .iter()
            .map(|(_, c)| match c {
                NodeCommand::Delete { chunk_ids, .. } => chunk_ids.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(deleted, 10);
    }

    #[test]
    fn safe_mode_ends_by_itself_once_enough_nodes_reported_known_chunks() {
        let (mut ns, _) = setup(3);
        let mut c0 = Cluster::new(timing(), &ns, 0, |t| t);
        store_file(&mut ns, &mut c0, &["n0", "n1", "n2"]);
        let t = Timing {
            safe_mode_node_share: 0.6,
            safe_mode_known_share: 0.8,
            ..timing()
        };
        let mut cluster = Cluster::new(t, &ns, 0, |t| t);
        report(&ns, &mut cluster, "n0", vec![(named(C), 1)], 10);
        cluster.tick(&ns, 10);
        assert!(cluster.in_safe_mode(), "1 of 3 reported, 2 needed");
        assert!(cluster.safe_mode(&ns).reason.contains("1 of 3"));
        report(&ns, &mut cluster, "n1", vec![(named(C), 1)], 20);
        cluster.tick(&ns, 20);
        assert!(!cluster.in_safe_mode());
        // An admin may force it on again; it then stays on.
        cluster.set_safe_mode(true);
        cluster.tick(&ns, 30);
        assert!(cluster.in_safe_mode() && cluster.safe_mode(&ns).manual);
    }

    /// The few orphans a crash leaves (plans it lost) do not hold a young
    /// cluster in safe mode, whatever share of its replicas they are.
    #[test]
    fn a_few_unknown_replicas_do_not_hold_safe_mode() {
        let (ns, _) = setup(1);
        let t = Timing {
            safe_mode_node_share: 0.6,
            safe_mode_known_share: 0.8,
            safe_mode_unknown_min: 10,
            ..timing()
        };
        let mut cluster = Cluster::new(t.clone(), &ns, 0, |t| t);
        report(
            &ns,
            &mut cluster,
            "n0",
            (0..10).map(|i| (orphan(i), 5)).collect(),
            0,
        );
        cluster.tick(&ns, 10);
        assert!(!cluster.in_safe_mode(), "10 unknown replicas: tolerated");
        let mut cluster = Cluster::new(t, &ns, 0, |t| t);
        report(
            &ns,
            &mut cluster,
            "n0",
            (0..11).map(|i| (orphan(i), 5)).collect(),
            0,
        );
        cluster.tick(&ns, 10);
        assert!(cluster.in_safe_mode(), "11 unknown of 11: held");
    }

    /// A leader taking over after deletes sees the deleted files' replicas
    /// (orphans awaiting the delete budget) as its own metadata's, not as
    /// a sign of other metadata: found by the racing-clients chaos
    /// scenario, where a new leader stayed in safe mode (and repaired
    /// nothing) after a failover under overwrites and deletes.
    #[test]
    fn replicas_of_chunks_the_namespace_released_do_not_hold_safe_mode() {
        let (mut ns, mut c0) = setup(3);
        store_file(&mut ns, &mut c0, &["n0", "n1", "n2"]);
        ns.apply(&Command::Delete {
            path: "/f".into(),
            recursive: false,
        })
        .unwrap();
        let t = Timing {
            safe_mode_node_share: 0.6,
            safe_mode_known_share: 0.8,
            safe_mode_unknown_min: 0,
            ..timing()
        };
        let t_clone = t.clone();
        // The released chunk: an orphan of these metadata, safe mode ends.
        let mut cluster = Cluster::new(t.clone(), &ns, 0, |t| t);
        report(&ns, &mut cluster, "n0", vec![(named(C), 1)], 0);
        report(&ns, &mut cluster, "n1", vec![], 0);
        cluster.tick(&ns, 10);
        assert!(!cluster.in_safe_mode(), "{:?}", cluster.safe_mode(&ns));
        // A chunk these metadata never held still holds it.
        let mut cluster = Cluster::new(t, &ns, 0, |t| t);
        report(&ns, &mut cluster, "n0", vec![(orphan(1), 1)], 0);
        report(&ns, &mut cluster, "n1", vec![], 0);
        cluster.tick(&ns, 10);
        assert!(cluster.in_safe_mode());
        assert!(cluster.safe_mode(&ns).reason.contains("right metadata"));
        // Nor do released replicas vouch for the metadata: three of them
        // beside one foreign chunk would be 75% "known" (above a 70% bar)
        // if they counted, as for an old backup whose log released much.
        let t = Timing {
            safe_mode_known_share: 0.7,
            ..t_clone
        };
        let mut cluster = Cluster::new(t, &ns, 0, |t| t);
        report(
            &ns,
            &mut cluster,
            "n0",
            vec![(named(C), 1), (orphan(1), 1)],
            0,
        );
        report(&ns, &mut cluster, "n1", vec![(named(C), 1)], 0);
        report(&ns, &mut cluster, "n2", vec![(named(C), 1)], 0);
        cluster.tick(&ns, 10);
        assert!(cluster.in_safe_mode(), "{:?}", cluster.safe_mode(&ns));
    }

    #[test]
    fn the_delete_budget_caps_deletes_per_node_and_grace_window() {
        let (ns, _) = setup(1);
        let t = Timing {
            delete_budget_share: 0.1,
            delete_budget_min: 3,
            ..timing()
        };
        let mut cluster = Cluster::new(t, &ns, 0, |t| t);
        cluster.on_register(&named("n0"), info(), 0);
        report(
            &ns,
            &mut cluster,
            "n0",
            (0..10).map(|i| (orphan(i), 5)).collect(),
            0,
        );
        let mut deleted = Vec::new();
        let mut deferred = Vec::new();
        for now in [0, 600, 700, 1200, 1800, 2400, 3000] {
            beat(&ns, &mut cluster, "n0", now);
            cluster.tick(&ns, now);
            let n: usize = all_commands(&mut cluster)
                .iter()
                .map(|(_, c)| match c {
                    NodeCommand::Delete { chunk_ids, .. } => chunk_ids.len(),
                    _ => 0,
                })
                .sum();
            deleted.push(n);
            deferred.push(cluster.stats().deletes_deferred);
        }
        // 3 per 500 ms window (10% of 10 chunks is 1, the floor is 3).
        assert_eq!(deleted, [0, 3, 0, 3, 3, 1, 0], "deferred: {deferred:?}");
        assert_eq!(deferred[1], 7);
        assert_eq!(cluster.stats().budget_exhausted_total, 3);
        assert_eq!(deferred[6], 0);
    }

    #[test]
    fn a_replica_with_another_checksum_is_corrupt_and_kept_until_r_good_copies_exist() {
        let (mut ns, mut cluster) = setup(4);
        store_file(&mut ns, &mut cluster, &["n0", "n1", "n2"]);
        // n1 reports C with a checksum the namespace never confirmed.
        report(&ns, &mut cluster, "n1", vec![(named(C), 9)], 10);
        assert_eq!(cluster.holders(&named(C)), ["n0", "n2"]);
        for n in ["n0", "n1", "n2", "n3"] {
            beat(&ns, &mut cluster, n, 20);
        }
        cluster.tick(&ns, 20);
        assert_eq!(cluster.stats().corrupt_replicas, 1);
        let cmds = all_commands(&mut cluster);
        assert_eq!(cmds.len(), 1);
        assert!(
            matches!(&cmds[0].1, NodeCommand::Replicate { target_id, .. } if target_id == "n3")
        );
        // Only with three good copies is the corrupt one deleted.
        added(&ns, &mut cluster, "n3", C, 1, 30);
        cluster.tick(&ns, 30);
        let cmds = all_commands(&mut cluster);
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        assert!(
            matches!(&cmds[0], (n, NodeCommand::Delete { chunk_ids, .. }) if n == "n1" && chunk_ids == &[C.to_string()])
        );
        assert_eq!(
            cluster.stats().corrupt_replicas,
            1,
            "counted until the delete is done"
        );
        cluster.tick(&ns, 40);
        assert_eq!(cluster.stats().corrupt_replicas, 0);
    }

    /// Opens upload "u" of one chunk `C` (10 bytes) at `replication`.
    fn open_upload(ns: &mut Namespace, replication: u32) {
        ns.apply(&Command::BeginUpload(Upload {
            upload_id: named("u"),
            path: "/f".into(),
            size: 10,
            chunk_size: 10,
            replication,
            write_quorum: 2,
            overwrite: false,
            chunks: vec![PlannedChunkRecord {
                index: 0,
                chunk_id: named(C),
                offset: 0,
                size: 10,
                nodes: vec![],
            }],
            expires_at_ms: u64::MAX,
        }))
        .unwrap();
    }

    #[test]
    fn checksums_reported_for_open_uploads_are_kept_for_confirm() {
        let (mut ns, mut cluster) = setup(2);
        open_upload(&mut ns, 2);
        added(&ns, &mut cluster, "n0", C, 77, 5);
        assert_eq!(cluster.reported_checksum(&named(C), &named("n0")), Some(77));
        assert_eq!(cluster.reported_checksum(&named(C), &named("n1")), None);
    }

    /// A holder that stored other bytes under the id while the upload was
    /// open (an abandoned attempt) is corrupt once the confirm names
    /// another checksum: it never counts as a copy.
    #[test]
    fn a_holder_of_other_bytes_is_corrupt_once_the_upload_is_confirmed() {
        let (mut ns, mut cluster) = setup(4);
        open_upload(&mut ns, 3);
        added(&ns, &mut cluster, "n3", C, 9, 5);
        let chunks = vec![ChunkRecord {
            id: named(C),
            checksum: 1,
            size: 10,
            algorithm: 1,
            replicas: nodes(&["n0", "n1", "n2"]),
        }];
        ns.apply(&Command::ConfirmUpload {
            upload_id: named("u"),
            chunks: chunks.clone(),
            now_ms: 0,
        })
        .unwrap();
        cluster.on_confirmed(&chunks);
        assert_eq!(cluster.holders(&named(C)), ["n0", "n1", "n2"]);
        cluster.tick(&ns, 10);
        assert_eq!(cluster.stats().corrupt_replicas, 1);
        assert_eq!(cluster.stats().over_replicated, 0);
    }

    #[test]
    fn upload_expiry_and_liveness_follow_the_monotonic_clock_given() {
        let (mut ns, mut cluster) = setup(1);
        ns.apply(&Command::BeginUpload(Upload {
            upload_id: named("u"),
            path: "/f".into(),
            size: 0,
            chunk_size: 10,
            replication: 1,
            write_quorum: 1,
            overwrite: false,
            chunks: vec![],
            expires_at_ms: 1,
        }))
        .unwrap();
        cluster.track_upload(&named("u"), 5_000);
        assert!(cluster.expired_uploads(&ns, 4_999).is_empty());
        assert_eq!(
            cluster.expired_uploads(&ns, 5_000),
            [named::<UploadId>("u")]
        );
        ns.apply(&Command::AbortUpload {
            upload_id: named("u"),
        })
        .unwrap();
        assert!(
            cluster.expired_uploads(&ns, 9_000).is_empty(),
            "forgotten once gone"
        );
    }

    #[test]
    fn heartbeat_from_unknown_node_is_rejected() {
        let (ns, mut cluster) = setup(1);
        let ev = HeartbeatEvent {
            ..HeartbeatEvent::new(named("zz"))
        };
        assert!(matches!(
            cluster.on_heartbeat(&ns, ev, 0),
            Err(ClusterError::UnknownNode { .. })
        ));
    }
}
