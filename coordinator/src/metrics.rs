//! Prometheus metrics of the coordinator (own [`Registry`]).
//!
//! Every labelled series whose label values are known (node states, RPC
//! methods and status codes) is created at 0 when the metrics are built, so
//! `increase()` and `rate()` see the first event. Only the per-node
//! `heartbeat_age_seconds{node_id}` appears with its node.

use std::cell::RefCell;

use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::cluster::{NodeState, RedundancyStats};
use crate::namespace::NodeId;

/// `method` of `rpc_requests` and `rpc_duration`: every RPC of the
/// Coordinator service, as `service/` names it.
pub const RPC_METHODS: [&str; 21] = [
    "UploadFile",
    "ConfirmUpload",
    "UploadFiles",
    "ConfirmUploads",
    "AbortUpload",
    "ReplanChunk",
    "DownloadFile",
    "Mkdir",
    "ListDirectory",
    "Stat",
    "Delete",
    "Rename",
    "RegisterDataNode",
    "DataNodeHeartbeat",
    "ListNodes",
    "GetClusterStatus",
    "DecommissionNode",
    "SetNodeMaintenance",
    "SetSafeMode",
    "AddCoordinator",
    "SetCoordinatorVoters",
];

/// `method` of `batched_calls`: the calls UploadFiles and ConfirmUploads
/// carry.
pub const BATCHED_METHODS: [&str; 2] = ["UploadFile", "ConfirmUpload"];

/// `needed` of `refused_calls`: who the refused call was for (`itself`: a
/// datanode speaking for another node id than its certificate's).
pub const REFUSED_NEEDED: [&str; 6] = [
    "clients",
    "datanodes",
    "admins",
    "itself",
    "paths",
    "bearer",
];

/// `outcome` of `forwarded_calls`.
pub const FORWARD_OUTCOMES: [&str; 3] = ["ok", "refused", "unreachable"];

/// Every gRPC status code (`code` of `rpc_requests`, see [`code_label`]).
pub const RPC_CODES: [tonic::Code; 17] = {
    use tonic::Code::*;
    [
        Ok,
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    ]
};

/// Every coordinator metric.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The registry served at /metrics.
    pub registry: Registry,
    datanodes: IntGaugeVec,
    capacity_total: IntGauge,
    capacity_used: IntGauge,
    files: IntGauge,
    directories: IntGauge,
    chunks: IntGauge,
    under_replicated: IntGauge,
    missing: IntGauge,
    over_replicated: IntGauge,
    repair_queue: IntGauge,
    replicas_writing: IntGauge,
    repairs_in_flight: IntGauge,
    repairs_completed: IntCounter,
    orphans_deleted: IntCounter,
    repair_remaining: IntGauge,
    repair_eta: IntGauge,
    rpc_requests: IntCounterVec,
    rpc_duration: HistogramVec,
    batched_calls: IntCounterVec,
    heartbeat_age: GaugeVec,
    forwarded_calls: IntCounterVec,
    refused_calls: IntCounterVec,
    read_barrier_rounds: IntCounter,
    /// Replica receipts ConfirmUpload dropped: their tag did not verify.
    pub receipts_refused: IntCounter,
    read_barrier_reads: IntCounter,
    read_lease_reads: IntCounter,
    /// Metadata commits (write transactions).
    pub commits: IntCounter,
    /// Commands per metadata commit (group commit).
    pub commit_batch: prometheus::Histogram,
    /// Duration of a metadata commit.
    pub commit_duration: prometheus::Histogram,
    safe_mode: IntGauge,
    deletes_deferred: IntGauge,
    budget_exhausted: IntCounter,
    corrupt_replicas: IntGauge,
    /// Datanode registrations or heartbeats refused: another cluster's id.
    pub foreign_datanodes: IntCounter,
    /// ConfirmUploads refused because a replica stored another checksum.
    pub confirm_mismatch: IntCounter,
    /// 1 once the metadata log could not be written (the process stops).
    pub metadata_failed: IntGauge,
    /// The coordinator group (all 0 for a single coordinator).
    pub raft: RaftGauges,
    /// Names of every registered family (the tests check each is exported).
    #[cfg(test)]
    families: Vec<String>,
}

use dfs_common::metrics::{init_series, register as reg};

/// [`init_series`] handing `vec` back (for the builders below).
fn with_series<T: MetricVecBuilder>(vec: MetricVec<T>, values: &[&[&str]]) -> MetricVec<T> {
    init_series(&vec, values);
    vec
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let families = RefCell::new(Vec::new());
        let f = &families;
        let g =
            |name: &str, help: &str| reg(&r, f, IntGauge::new(name, help).expect("valid metric"));
        let c =
            |name: &str, help: &str| reg(&r, f, IntCounter::new(name, help).expect("valid metric"));
        let states = NodeState::ALL.map(NodeState::label);
        let codes = RPC_CODES.map(code_label);
        Metrics {
            safe_mode: g(
                "dfs_coordinator_safe_mode",
                "1 while in safe mode (no replica deletes, no repairs).",
            ),
            deletes_deferred: g(
                "dfs_coordinator_deletes_deferred",
                "Replica deletes held back by the per-node delete budget.",
            ),
            budget_exhausted: c(
                "dfs_coordinator_delete_budget_exhausted_total",
                "Times a datanode's delete budget for a grace window ran out.",
            ),
            corrupt_replicas: g(
                "dfs_coordinator_corrupt_replicas",
                "Replicas whose reported checksum differs from the namespace.",
            ),
            foreign_datanodes: c(
                "dfs_coordinator_foreign_datanodes_refused_total",
                "Datanode registrations or heartbeats refused because they carry another cluster id.",
            ),
            confirm_mismatch: c(
                "dfs_coordinator_confirm_checksum_mismatches_total",
                "ConfirmUploads refused because a replica stored another checksum than confirmed.",
            ),
            metadata_failed: g(
                "dfs_coordinator_metadata_write_failed",
                "1 once the metadata log could not be written (the coordinator stops).",
            ),
            raft: RaftGauges {
                term: g(
                    "dfs_coordinator_raft_term",
                    "Raft term this coordinator is in (0 for a single coordinator).",
                ),
                leader: g(
                    "dfs_coordinator_raft_leader",
                    "1 while this coordinator leads its group (1 for a single coordinator).",
                ),
                leader_known: g(
                    "dfs_coordinator_raft_leader_known",
                    "1 while this coordinator knows a leader of its group (an election is not under way).",
                ),
                last_log_index: g(
                    "dfs_coordinator_raft_last_log_index",
                    "Index of the last entry in this coordinator's Raft log.",
                ),
                applied_index: g(
                    "dfs_coordinator_raft_applied_index",
                    "Index of the last Raft entry this coordinator applied to its namespace.",
                ),
                max_follower_lag: g(
                    "dfs_coordinator_raft_max_follower_lag_entries",
                    "On the leader: entries the furthest-behind member's log lacks.",
                ),
                leader_changes: c(
                    "dfs_coordinator_raft_leader_changes_total",
                    "Times this coordinator saw its group's leader change (elections).",
                ),
                snapshot_index: g(
                    "dfs_coordinator_raft_snapshot_index",
                    "Last Raft entry covered by this coordinator's current snapshot.",
                ),
                snapshot_bytes: g(
                    "dfs_coordinator_raft_snapshot_bytes",
                    "Size of the last Raft snapshot this coordinator built.",
                ),
                snapshot_seconds: reg(
                    &r,
                    f,
                    prometheus::Gauge::new(
                        "dfs_coordinator_raft_snapshot_build_seconds",
                        "Time the last Raft snapshot this coordinator built took (copy, encode, store).",
                    )
                    .expect("valid metric"),
                ),
                snapshots_built: c(
                    "dfs_coordinator_raft_snapshots_built_total",
                    "Raft snapshots this coordinator built (each lets the log before it be purged).",
                ),
                snapshots_installed: c(
                    "dfs_coordinator_raft_snapshots_installed_total",
                    "Raft snapshots this coordinator installed from a leader (it was behind the leader's log).",
                ),
                follower_lag: reg(
                    &r,
                    f,
                    IntGaugeVec::new(
                        prometheus::Opts::new(
                            "dfs_coordinator_raft_follower_lag_entries",
                            "On the leader: entries each other member's log lacks.",
                        ),
                        &["member"],
                    )
                    .expect("valid metric"),
                ),
            },
            datanodes: reg(
                &r,
                f,
                with_series(
                    IntGaugeVec::new(
                        Opts::new("dfs_coordinator_datanodes", "Datanodes by state."),
                        &["state"],
                    )
                    .expect("valid metric"),
                    &[&states],
                ),
            ),
            capacity_total: g(
                "dfs_coordinator_capacity_total_bytes",
                "Usable capacity of live datanodes.",
            ),
            capacity_used: g(
                "dfs_coordinator_capacity_used_bytes",
                "Bytes used on live datanodes.",
            ),
            files: g("dfs_coordinator_files", "Files in the namespace."),
            directories: g(
                "dfs_coordinator_directories",
                "Directories in the namespace.",
            ),
            chunks: g("dfs_coordinator_chunks", "Chunks referenced by files."),
            under_replicated: g(
                "dfs_coordinator_under_replicated_chunks",
                "Chunks below their replication factor.",
            ),
            missing: g(
                "dfs_coordinator_missing_chunks",
                "Chunks with no live replica.",
            ),
            over_replicated: g(
                "dfs_coordinator_over_replicated_chunks",
                "Chunks above their replication factor.",
            ),
            repair_queue: g(
                "dfs_coordinator_repair_queue_chunks",
                "Chunks waiting for re-replication.",
            ),
            replicas_writing: g(
                "dfs_coordinator_replicas_writing",
                "Planned replicas still being written after their upload answered at its write quorum (repair waits for them).",
            ),
            repairs_in_flight: g(
                "dfs_coordinator_repairs_in_flight",
                "Re-replications in progress.",
            ),
            repairs_completed: reg(
                &r,
                f,
                IntCounter::new(
                    "dfs_coordinator_repairs_completed_total",
                    "Re-replications completed.",
                )
                .expect("valid metric"),
            ),
            orphans_deleted: reg(
                &r,
                f,
                IntCounter::new(
                    "dfs_coordinator_orphan_replicas_deleted_total",
                    "Orphan replicas deleted.",
                )
                .expect("valid metric"),
            ),
            repair_remaining: g(
                "dfs_coordinator_repair_remaining_bytes",
                "Bytes still to copy to restore full redundancy.",
            ),
            repair_eta: g(
                "dfs_coordinator_repair_eta_seconds",
                "Estimated seconds until full redundancy.",
            ),
            rpc_requests: reg(
                &r,
                f,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "dfs_coordinator_rpc_requests_total",
                            "gRPC requests by method and status code.",
                        ),
                        &["method", "code"],
                    )
                    .expect("valid metric"),
                    &[&RPC_METHODS, &codes],
                ),
            ),
            rpc_duration: reg(
                &r,
                f,
                with_series(
                    HistogramVec::new(
                        HistogramOpts::new(
                            "dfs_coordinator_rpc_duration_seconds",
                            "gRPC latency by method.",
                        )
                        .buckets(vec![
                            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                            0.25, 0.5, 1.0, 2.5,
                        ]),
                        &["method"],
                    )
                    .expect("valid metric"),
                    &[&RPC_METHODS],
                ),
            ),
            forwarded_calls: reg(
                &r,
                f,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "dfs_coordinator_forwarded_calls_total",
                            "Calls a follower handled for its group's leader, by outcome: ok (forwarded and answered), refused (no leader known, a second hop, or too many in flight), unreachable (the leader did not answer).",
                        ),
                        &["outcome"],
                    )
                    .expect("valid metric"),
                    &[&FORWARD_OUTCOMES],
                ),
            ),
            refused_calls: reg(
                &r,
                f,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "dfs_coordinator_refused_calls_total",
                            "Calls refused because the caller's certificate does not allow them, by who they are for (clients, datanodes, admins; itself: a datanode naming another node id than its certificate's; paths: a client without the role on the path, see --access-file).",
                        ),
                        &["needed"],
                    )
                    .expect("valid metric"),
                    &[&REFUSED_NEEDED],
                ),
            ),
            receipts_refused: c(
                "dfs_coordinator_receipts_refused_total",
                "Replica receipts ConfirmUpload did not count because their tag did not verify under that replica's key (forged by a client or a primary); the replica then counts only by its own chunk report.",
            ),
            read_barrier_rounds: c(
                "dfs_coordinator_read_barrier_rounds_total",
                "Rounds in which the leader confirmed its leadership with a quorum before answering reads.",
            ),
            read_barrier_reads: c(
                "dfs_coordinator_read_barrier_reads_total",
                "Linearizable reads answered after a leadership confirmation round (divided by the rounds: reads per round).",
            ),
            read_lease_reads: c(
                "dfs_coordinator_read_lease_reads_total",
                "Linearizable reads the leader answered under its lease, without a confirmation round.",
            ),
            batched_calls: reg(
                &r,
                f,
                with_series(
                    IntCounterVec::new(
                        Opts::new(
                            "dfs_coordinator_batched_calls_total",
                            "Calls that arrived inside a batch (UploadFiles, ConfirmUploads), by \
                             their own method; also counted in dfs_coordinator_rpc_requests_total.",
                        ),
                        &["method"],
                    )
                    .expect("valid metric"),
                    &[&BATCHED_METHODS],
                ),
            ),
            heartbeat_age: reg(
                &r,
                f,
                GaugeVec::new(
                    Opts::new(
                        "dfs_coordinator_heartbeat_age_seconds",
                        "Seconds since each datanode's last heartbeat.",
                    ),
                    &["node_id"],
                )
                .expect("valid metric"),
            ),
            commits: reg(
                &r,
                f,
                IntCounter::new(
                    "dfs_coordinator_metadata_commits_total",
                    "Metadata write transactions.",
                )
                .expect("valid metric"),
            ),
            commit_batch: reg(
                &r,
                f,
                prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "dfs_coordinator_metadata_commit_batch_size",
                        "Commands per metadata commit.",
                    )
                    .buckets(prometheus::exponential_buckets(1.0, 2.0, 13).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            commit_duration: reg(
                &r,
                f,
                prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "dfs_coordinator_metadata_commit_duration_seconds",
                        "Duration of a metadata commit (fsync included).",
                    )
                    .buckets(
                        prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
                    ),
                )
                .expect("valid metric"),
            ),
            #[cfg(test)]
            families: families.into_inner(),
            registry: r,
        }
    }

    /// Counts one call a follower handled for the leader (see
    /// [`FORWARD_OUTCOMES`]).
    pub fn forwarded(&self, outcome: &str) {
        debug_assert!(FORWARD_OUTCOMES.contains(&outcome));
        self.forwarded_calls.with_label_values(&[outcome]).inc();
    }

    /// Counts a call refused to its caller (`needed`: one of
    /// [`REFUSED_NEEDED`]).
    pub fn refused(&self, needed: &str) {
        debug_assert!(REFUSED_NEEDED.contains(&needed));
        self.refused_calls.with_label_values(&[needed]).inc();
    }

    /// Counts one leadership confirmation round covering `reads` reads.
    pub fn read_barrier(&self, reads: usize) {
        self.read_barrier_rounds.inc();
        self.read_barrier_reads.inc_by(reads as u64);
    }

    /// Records one linearizable read answered under the leader lease.
    pub fn read_leased(&self) {
        self.read_lease_reads.inc();
    }

    /// Records one RPC.
    pub fn rpc(&self, method: &str, code: tonic::Code, seconds: f64) {
        debug_assert!(
            RPC_METHODS.contains(&method),
            "add {method} to metrics::RPC_METHODS"
        );
        self.rpc_requests
            .with_label_values(&[method, code_label(code)])
            .inc();
        self.rpc_duration
            .with_label_values(&[method])
            .observe(seconds);
    }

    /// Records one call that arrived inside a batch, under its own method.
    pub fn batched_rpc(&self, method: &str, code: tonic::Code, seconds: f64) {
        debug_assert!(
            BATCHED_METHODS.contains(&method),
            "add {method} to metrics::BATCHED_METHODS"
        );
        self.batched_calls.with_label_values(&[method]).inc();
        self.rpc(method, code, seconds);
    }

    /// Refreshes the gauges from a status snapshot.
    #[allow(clippy::too_many_arguments)]
    pub fn refresh(
        &self,
        states: &[NodeState],
        capacity: (u64, u64),
        files: u64,
        directories: u64,
        chunks: u64,
        stats: RedundancyStats,
        ages_ms: &[(NodeId, u64)],
        safe_mode: bool,
    ) {
        self.safe_mode.set(i64::from(safe_mode));
        self.deletes_deferred.set(stats.deletes_deferred as i64);
        self.corrupt_replicas.set(stats.corrupt_replicas as i64);
        if stats.budget_exhausted_total > self.budget_exhausted.get() {
            self.budget_exhausted
                .inc_by(stats.budget_exhausted_total - self.budget_exhausted.get());
        }
        for s in NodeState::ALL {
            let n = states.iter().filter(|x| **x == s).count();
            self.datanodes.with_label_values(&[s.label()]).set(n as i64);
        }
        self.capacity_total.set(capacity.0 as i64);
        self.capacity_used.set(capacity.1 as i64);
        self.files.set(files as i64);
        self.directories.set(directories as i64);
        self.chunks.set(chunks as i64);
        self.under_replicated.set(stats.under_replicated as i64);
        self.missing.set(stats.missing as i64);
        self.over_replicated.set(stats.over_replicated as i64);
        self.repair_queue.set(stats.repair_queue as i64);
        self.replicas_writing.set(stats.replicas_writing as i64);
        self.repairs_in_flight.set(stats.repairs_in_flight as i64);
        let done = stats.repairs_completed;
        if done > self.repairs_completed.get() {
            self.repairs_completed
                .inc_by(done - self.repairs_completed.get());
        }
        if stats.orphans_deleted > self.orphans_deleted.get() {
            self.orphans_deleted
                .inc_by(stats.orphans_deleted - self.orphans_deleted.get());
        }
        self.repair_remaining
            .set(stats.repair_bytes_remaining as i64);
        self.repair_eta.set(stats.repair_eta_seconds as i64);
        for (node, age) in ages_ms {
            self.heartbeat_age
                .with_label_values(&[node.as_str()])
                .set(*age as f64 / 1000.0);
        }
    }
}

/// The coordinator group's progress, as this member sees it.
#[derive(Debug, Clone)]
pub struct RaftGauges {
    term: IntGauge,
    leader: IntGauge,
    leader_known: IntGauge,
    last_log_index: IntGauge,
    applied_index: IntGauge,
    max_follower_lag: IntGauge,
    leader_changes: IntCounter,
    snapshot_index: IntGauge,
    snapshot_bytes: IntGauge,
    snapshot_seconds: prometheus::Gauge,
    snapshots_built: IntCounter,
    snapshots_installed: IntCounter,
    follower_lag: IntGaugeVec,
}

impl RaftGauges {
    /// Sets every gauge from openraft's metrics; `leader_changed` counts an
    /// election this member saw.
    pub fn refresh<N: openraft::Node>(
        &self,
        m: &openraft::RaftMetrics<u64, N>,
        leader_changed: bool,
    ) {
        let last = m.last_log_index.unwrap_or(0);
        self.term.set(m.current_term as i64);
        self.leader.set(i64::from(m.current_leader == Some(m.id)));
        self.leader_known.set(i64::from(m.current_leader.is_some()));
        self.last_log_index.set(last as i64);
        self.applied_index
            .set(m.last_applied.map_or(0, |l| l.index) as i64);
        self.snapshot_index
            .set(m.snapshot.map_or(0, |l| l.index) as i64);
        let lag = m.replication.as_ref().map_or(0, |r| {
            r.values()
                .map(|matched| last.saturating_sub(matched.map_or(0, |l| l.index)))
                .max()
                .unwrap_or(0)
        });
        self.max_follower_lag.set(lag as i64);
        self.follower_lag.reset();
        if let Some(r) = &m.replication {
            for (id, matched) in r.iter().filter(|(id, _)| **id != m.id) {
                self.follower_lag
                    .with_label_values(&[&id.to_string()])
                    .set(last.saturating_sub(matched.map_or(0, |l| l.index)) as i64);
            }
        }
        if leader_changed {
            self.leader_changes.inc();
        }
    }

    /// Records the snapshots built and installed so far and the last built
    /// one's size and time.
    pub fn snapshots(&self, built: u64, installed: u64, last: Option<(u64, std::time::Duration)>) {
        if built > self.snapshots_built.get() {
            self.snapshots_built
                .inc_by(built - self.snapshots_built.get());
        }
        if installed > self.snapshots_installed.get() {
            self.snapshots_installed
                .inc_by(installed - self.snapshots_installed.get());
        }
        if let Some((bytes, took)) = last {
            self.snapshot_bytes.set(bytes as i64);
            self.snapshot_seconds.set(took.as_secs_f64());
        }
    }

    /// A single coordinator: always its own leader.
    pub fn single(&self) {
        self.leader.set(1);
        self.leader_known.set(1);
    }
}

/// The `code` label of a status code.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Families whose label values are open-ended: their series appear with
    /// their first event.
    const LAZY: [&str; 2] = [
        // One series per datanode id, created by its first heartbeat.
        "dfs_coordinator_heartbeat_age_seconds",
        // One series per other group member, on the leader only.
        "dfs_coordinator_raft_follower_lag_entries",
    ];

    use dfs_common::metrics::series;

    /// Every combination of `values` (one array per label, in the
    /// alphabetical order of the label names, as gathered), each at 0.
    fn zeros(values: &[&[&str]]) -> Vec<(Vec<String>, f64)> {
        let mut out: Vec<Vec<String>> = vec![vec![]];
        for dim in values {
            out = out
                .into_iter()
                .flat_map(|p| {
                    dim.iter().map(move |v| {
                        let mut p = p.clone();
                        p.push(v.to_string());
                        p
                    })
                })
                .collect();
        }
        let mut out: Vec<_> = out.into_iter().map(|l| (l, 0.0)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn every_known_label_value_starts_at_zero() {
        let families = Metrics::new().registry.gather();
        let states = NodeState::ALL.map(NodeState::label);
        assert_eq!(
            series(&families, "dfs_coordinator_datanodes"),
            zeros(&[&states])
        );
        // Gathered labels are sorted by name: code before method.
        let codes = RPC_CODES.map(code_label);
        assert_eq!(
            series(&families, "dfs_coordinator_rpc_requests_total"),
            zeros(&[&codes, &RPC_METHODS])
        );
        assert_eq!(
            series(&families, "dfs_coordinator_rpc_duration_seconds"),
            zeros(&[&RPC_METHODS])
        );
        assert_eq!(
            series(&families, "dfs_coordinator_batched_calls_total"),
            zeros(&[&BATCHED_METHODS])
        );
        assert!(
            !families
                .iter()
                .any(|f| f.name() == "dfs_coordinator_heartbeat_age_seconds"),
            "no node, no heartbeat age"
        );
    }

    #[test]
    fn known_codes_and_methods_are_distinct() {
        let mut codes = RPC_CODES.map(code_label).to_vec();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), RPC_CODES.len(), "{codes:?}");
        let mut methods = RPC_METHODS.to_vec();
        methods.sort();
        methods.dedup();
        assert_eq!(methods.len(), RPC_METHODS.len());
        assert!(BATCHED_METHODS.iter().all(|m| RPC_METHODS.contains(m)));
    }

    #[test]
    fn an_rpc_counts_on_its_existing_series() {
        let m = Metrics::new();
        m.batched_rpc("UploadFile", tonic::Code::NotFound, 0.001);
        let families = m.registry.gather();
        let requests = series(&families, "dfs_coordinator_rpc_requests_total");
        assert_eq!(requests.len(), RPC_METHODS.len() * RPC_CODES.len());
        let hit: Vec<_> = requests.iter().filter(|(_, v)| *v != 0.0).collect();
        assert_eq!(
            hit,
            [&(vec!["not_found".to_string(), "UploadFile".to_string()], 1.0)]
        );
    }

    /// Fails when a metric is added without creating its series: a family
    /// with no series is left out of the scrape altogether.
    #[test]
    fn every_family_is_exported_from_the_start() {
        let m = Metrics::new();
        let families = m.registry.gather();
        // Every registration is noted (Vecs and plain metrics alike).
        assert!(
            m.families
                .iter()
                .any(|f| f == "dfs_coordinator_rpc_requests_total")
        );
        assert!(m.families.len() >= families.len(), "{:?}", m.families);
        let missing = dfs_common::metrics::families_without_series(&m.registry, &m.families, &LAZY);
        assert!(
            missing.is_empty(),
            "{missing:?} have no series until their first event: create them in Metrics::new() \
             (init_series), or list them in LAZY with the reason"
        );
        for name in LAZY {
            assert!(
                m.families.iter().any(|f| f == name),
                "stale LAZY entry {name}"
            );
        }
    }
}
