//! Prometheus metrics of a datanode, in their own [`Registry`] so tests (and
//! several datanodes embedded in one process) never share counters.
//!
//! Names follow `dfs_datanode_<what>_<unit>`: counters end in `_total`, sizes
//! in `_bytes`, durations are histograms in `_seconds`. Labels are bounded
//! (stream kind, failure source), never a chunk id.
//!
//! Every labelled series is created at 0 when the metrics are built, for each
//! label value the code uses (the arrays below): `increase()` and `rate()`
//! then see the first event, and a dashboard shows 0 rather than no data.
//! A value missing from its array still works, but its series only appears
//! with its first event.

use std::cell::RefCell;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Stream kinds used as the `stream` label.
pub mod stream {
    /// Client → primary upload.
    pub const UPLOAD: &str = "upload";
    /// Node → node replication (pipeline fan-out or repair), receiving side.
    pub const REPLICATE: &str = "replicate";
    /// Primary → replica forwarding and repair sending.
    pub const FORWARD: &str = "forward";
    /// Reads served to clients.
    pub const DOWNLOAD: &str = "download";
    /// Kinds that receive frames (`bytes_in`, `frames_in`).
    pub const INBOUND: [&str; 2] = [UPLOAD, REPLICATE];
    /// Kinds that send frames (`bytes_out`, `frames_out`).
    pub const OUTBOUND: [&str; 2] = [FORWARD, DOWNLOAD];
}

/// `outcome` of uploads, replications and commands.
pub const OUTCOMES: [&str; 2] = ["ok", "error"];
/// `outcome` of downloads (see [`crate::read::spawn_read`]).
pub const DOWNLOAD_OUTCOMES: [&str; 3] = ["ok", "cancelled", "error"];
/// `kind` of `replication_seconds`: received fan-out streams, repair sends.
pub const REPLICATION_KINDS: [&str; 2] = ["receive", "repair"];
/// `source` of `checksum_failures`: a received frame, a read, the
/// scrubber, a damaged small-chunk volume batch found at start-up.
pub const CHECKSUM_SOURCES: [&str; 4] = ["frame", "read", "scrub", "volume"];
/// `kind` of `active_sessions`.
pub const SESSION_KINDS: [&str; 5] = ["prepared", "upload", "replicate", "download", "small_link"];
/// `reason` of `replicas_dropped`: the replica failed; it stalled; it fell
/// a whole queue behind while the write quorum kept up without it; it was
/// still writing at the quorum's answer with the pending budget spent.
pub const DROP_REASONS: [&str; 4] = ["error", "stall", "behind", "over_budget"];
/// `outcome` of `pending_replicas_finished`.
pub const PENDING_OUTCOMES: [&str; 2] = ["stored", "failed"];
/// `kind` of `commands`: one per coordinator command, and "unknown".
pub const COMMAND_KINDS: [&str; 5] = ["replicate", "delete", "config", "request_report", "unknown"];
/// `outcome` of `registrations` ("refused": another cluster).
pub const REGISTRATION_OUTCOMES: [&str; 3] = ["ok", "error", "refused"];
/// `reason` of `streams_cut`: a reader took no frame, a repair target sent
/// no answer.
pub const CUT_REASONS: [&str; 2] = ["slow_reader", "silent_target"];
/// `state` of `volume_bytes`.
pub const VOLUME_STATES: [&str; 2] = ["live", "garbage"];

/// Every metric the datanode exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry the metrics live in (served at `/metrics`).
    pub registry: Registry,
    /// Payload bytes received, by stream kind.
    pub bytes_in: IntCounterVec,
    /// Payload bytes sent, by stream kind.
    pub bytes_out: IntCounterVec,
    /// Frames received, by stream kind.
    pub frames_in: IntCounterVec,
    /// Frames sent, by stream kind.
    pub frames_out: IntCounterVec,
    /// Chunks stored now.
    pub chunks_stored: IntGauge,
    /// Bytes used by stored chunks.
    pub capacity_used: IntGauge,
    /// Bytes free for new chunks.
    pub capacity_free: IntGauge,
    /// Bytes usable by dfs in total.
    pub capacity_total: IntGauge,
    /// Bytes promised to open sessions.
    pub capacity_reserved: IntGauge,
    /// Upload latency (first frame to durable quorum), by outcome.
    pub upload_seconds: HistogramVec,
    /// Download latency, by outcome.
    pub download_seconds: HistogramVec,
    /// Replication latency (receiving side of fan-out, and repair sends), by kind.
    pub replication_seconds: HistogramVec,
    /// Checksum failures, by where they were found (frame, read, scrub).
    pub checksum_failures: IntCounterVec,
    /// Sessions in progress, by kind (prepared, upload, replicate, download;
    /// small_link: open incoming small-chunk streams).
    pub active_sessions: IntGaugeVec,
    /// Bytes verified by the scrubber.
    pub scrubbed_bytes: IntCounterVec,
    /// Replica targets dropped from an upload, by reason.
    pub replicas_dropped: IntCounterVec,
    /// Calls refused because the caller's certificate does not allow
    /// them (a replica stream from something that is not a datanode).
    pub refused_calls: IntCounter,
    /// Chunk calls refused for their chunk token, by reason.
    pub token_refusals: IntCounterVec,
    /// Copies of uploads (this node's own or a replica's) still being
    /// written after the upload answered at its write quorum.
    pub pending_replicas: IntGauge,
    /// Such copies that finished, by outcome (stored, failed).
    pub pending_replicas_finished: IntCounterVec,
    /// Coordinator commands executed, by kind and outcome.
    pub commands: IntCounterVec,
    /// Registrations with the coordinator, by outcome.
    pub registrations: IntCounterVec,
    /// Coordinators (or their commands) refused because they belong to
    /// another cluster than the one this node joined.
    pub foreign_cluster: IntCounter,
    /// Chunk streams refused because `--max-streams` were being served.
    pub streams_refused: IntCounter,
    /// Streams cut off because their peer stopped reading or writing.
    pub streams_cut: IntCounterVec,
    /// Writes refused because the chunk id holds other bytes.
    pub rewrites_refused: IntCounter,
    /// Corrupt chunks kept aside in `quarantine/`.
    pub quarantined: IntGauge,
    /// 1 while the coordinator this node talks to belongs to another
    /// cluster (nothing it says is executed), else 0.
    pub fenced: IntGauge,
    /// Small chunks made durable by one volume group commit.
    pub volume_commit_chunks: Histogram,
    /// Bytes in the small-chunk volumes, by state (live, garbage).
    pub volume_bytes: IntGaugeVec,
    /// Volumes compacted.
    pub volume_compactions: IntCounter,
    /// Names of every registered family (the tests check each is exported).
    #[cfg(test)]
    families: Vec<String>,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

use dfs_common::metrics::{init_series, register as registered};

impl Metrics {
    /// Counts one frame of `len` bytes sent on a stream of `kind`.
    pub fn frame_out(&self, kind: &str, len: u64) {
        self.bytes_out.with_label_values(&[kind]).inc_by(len);
        self.frames_out.with_label_values(&[kind]).inc();
    }

    /// Creates the metrics in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let families = RefCell::new(Vec::new());
        // `values`: the label values whose series start at 0, one array per
        // label (`&[]` for a counter without labels).
        let counter = |name: &str, help: &str, labels: &[&str], values: &[&[&str]]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            init_series(&c, values);
            registered(&registry, &families, c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registered(&registry, &families, g)
        };
        let histogram = |name: &str, help: &str, labels: &[&str], values: &[&[&str]]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(latency_buckets()),
                labels,
            )
            .expect("valid metric");
            init_series(&h, values);
            registered(&registry, &families, h)
        };
        let active_sessions = registered(
            &registry,
            &families,
            IntGaugeVec::new(
                Opts::new(
                    "dfs_datanode_active_sessions",
                    "Sessions in progress, by kind.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        init_series(&active_sessions, &[&SESSION_KINDS]);
        let volume_commit_chunks = registered(
            &registry,
            &families,
            Histogram::with_opts(
                HistogramOpts::new(
                    "dfs_datanode_volume_commit_chunks",
                    "Small chunks made durable by one volume group commit (one fdatasync).",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )
            .expect("valid metric"),
        );
        let volume_bytes = registered(
            &registry,
            &families,
            IntGaugeVec::new(
                Opts::new(
                    "dfs_datanode_volume_bytes",
                    "Bytes in the small-chunk volumes, by state (live, garbage awaiting compaction).",
                ),
                &["state"],
            )
            .expect("valid metric"),
        );
        init_series(&volume_bytes, &[&VOLUME_STATES]);
        let volume_compactions = registered(
            &registry,
            &families,
            IntCounter::new(
                "dfs_datanode_volume_compactions_total",
                "Small-chunk volumes compacted (live records copied, file removed).",
            )
            .expect("valid metric"),
        );
        Metrics {
            volume_commit_chunks,
            volume_bytes,
            volume_compactions,
            bytes_in: counter(
                "dfs_datanode_bytes_in_total",
                "Chunk payload bytes received.",
                &["stream"],
                &[&stream::INBOUND],
            ),
            bytes_out: counter(
                "dfs_datanode_bytes_out_total",
                "Chunk payload bytes sent.",
                &["stream"],
                &[&stream::OUTBOUND],
            ),
            frames_in: counter(
                "dfs_datanode_frames_in_total",
                "Chunk frames received.",
                &["stream"],
                &[&stream::INBOUND],
            ),
            frames_out: counter(
                "dfs_datanode_frames_out_total",
                "Chunk frames sent.",
                &["stream"],
                &[&stream::OUTBOUND],
            ),
            chunks_stored: gauge("dfs_datanode_chunks_stored", "Chunks stored on this node."),
            capacity_used: gauge(
                "dfs_datanode_capacity_used_bytes",
                "Bytes used by stored chunks.",
            ),
            capacity_free: gauge(
                "dfs_datanode_capacity_free_bytes",
                "Bytes free for new chunks (after the reserve and open sessions).",
            ),
            capacity_total: gauge(
                "dfs_datanode_capacity_total_bytes",
                "Bytes usable by dfs on this node.",
            ),
            capacity_reserved: gauge(
                "dfs_datanode_capacity_reserved_bytes",
                "Bytes promised to open upload sessions.",
            ),
            upload_seconds: histogram(
                "dfs_datanode_upload_duration_seconds",
                "Upload latency from first frame to durable write quorum.",
                &["outcome"],
                &[&OUTCOMES],
            ),
            download_seconds: histogram(
                "dfs_datanode_download_duration_seconds",
                "Download stream latency, by outcome (ok, cancelled, error).",
                &["outcome"],
                &[&DOWNLOAD_OUTCOMES],
            ),
            replication_seconds: histogram(
                "dfs_datanode_replication_duration_seconds",
                "Replication latency (received fan-out streams and repair sends).",
                &["kind", "outcome"],
                &[&REPLICATION_KINDS, &OUTCOMES],
            ),
            checksum_failures: counter(
                "dfs_datanode_checksum_failures_total",
                "Checksum mismatches, by where they were found.",
                &["source"],
                &[&CHECKSUM_SOURCES],
            ),
            scrubbed_bytes: counter(
                "dfs_datanode_scrubbed_bytes_total",
                "Bytes re-verified by the scrubber.",
                &[],
                &[],
            ),
            refused_calls: registered(
                &registry,
                &families,
                IntCounter::new(
                    "dfs_datanode_refused_calls_total",
                    "Calls refused because the caller's certificate does not allow them.",
                )
                .expect("valid metric"),
            ),
            token_refusals: counter(
                "dfs_datanode_token_refusals_total",
                "Chunk calls refused for their chunk token (missing, expired, forged, or for another chunk, operation, node or caller), by reason.",
                &["reason"],
                &[dfs_common::token::REASONS],
            ),
            replicas_dropped: counter(
                "dfs_datanode_replicas_dropped_total",
                "Replica targets dropped from an upload pipeline.",
                &["reason"],
                &[&DROP_REASONS],
            ),
            pending_replicas: gauge(
                "dfs_datanode_pending_replicas",
                "Copies of uploads this node is primary of still being written after the write quorum answered.",
            ),
            pending_replicas_finished: counter(
                "dfs_datanode_pending_replicas_finished_total",
                "Copies still being written at the write quorum's answer that then finished, by outcome.",
                &["outcome"],
                &[&PENDING_OUTCOMES],
            ),
            commands: counter(
                "dfs_datanode_commands_total",
                "Coordinator commands executed.",
                &["kind", "outcome"],
                &[&COMMAND_KINDS, &OUTCOMES],
            ),
            registrations: counter(
                "dfs_datanode_registrations_total",
                "Registration attempts with the coordinator.",
                &["outcome"],
                &[&REGISTRATION_OUTCOMES],
            ),
            foreign_cluster: registered(
                &registry,
                &families,
                IntCounter::new(
                    "dfs_datanode_foreign_cluster_refusals_total",
                    "Coordinators or commands refused because they belong to another cluster.",
                )
                .expect("valid metric"),
            ),
            streams_refused: registered(
                &registry,
                &families,
                IntCounter::new(
                    "dfs_datanode_streams_refused_total",
                    "Chunk streams refused with RESOURCE_EXHAUSTED (--max-streams reached).",
                )
                .expect("valid metric"),
            ),
            streams_cut: counter(
                "dfs_datanode_streams_cut_total",
                "Streams cut off because the peer stopped reading or answering, by reason.",
                &["reason"],
                &[&CUT_REASONS],
            ),
            rewrites_refused: registered(
                &registry,
                &families,
                IntCounter::new(
                    "dfs_datanode_rewrites_refused_total",
                    "Writes refused because the chunk id is already stored with other bytes.",
                )
                .expect("valid metric"),
            ),
            quarantined: gauge(
                "dfs_datanode_quarantined_chunks",
                "Corrupt chunk copies kept aside in quarantine/ (until the coordinator has enough good replicas).",
            ),
            fenced: gauge(
                "dfs_datanode_fenced",
                "1 while the coordinator belongs to another cluster than this node (nothing it orders is executed).",
            ),
            active_sessions,
            #[cfg(test)]
            families: families.into_inner(),
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Increments a gauge for as long as it lives.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    /// Increments `gauge` now and decrements it on drop.
    pub fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::MetricFamily;

    /// Families whose label values are open-ended, so their series appear
    /// with their first event. None today: add a family here only with a
    /// reason (e.g. a per-peer label).
    const LAZY: [&str; 0] = [];

    fn gather(m: &Metrics) -> Vec<MetricFamily> {
        m.registry.gather()
    }

    use dfs_common::metrics::series;

    /// Asserts `family` has exactly one series per value of `values` (one
    /// label), each at 0.
    fn assert_zero(families: &[MetricFamily], family: &str, values: &[&str]) {
        let mut got: Vec<String> = series(families, family)
            .into_iter()
            .map(|(labels, v)| {
                assert_eq!(v, 0.0, "{family}{labels:?} does not start at 0");
                assert_eq!(labels.len(), 1, "{family}: {labels:?}");
                labels.into_iter().next().unwrap()
            })
            .collect();
        got.sort();
        let mut want: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{family}");
    }

    #[test]
    fn checksum_failures_exported_at_zero_from_the_start() {
        let families = gather(&Metrics::new());
        for source in CHECKSUM_SOURCES {
            let v = series(&families, "dfs_datanode_checksum_failures_total")
                .into_iter()
                .find(|(labels, _)| labels == &[source.to_string()])
                .unwrap_or_else(|| panic!("no checksum_failures{{source={source:?}}}"));
            assert_eq!(v.1, 0.0);
        }
    }

    #[test]
    fn every_known_label_value_starts_at_zero() {
        let families = gather(&Metrics::new());
        assert_zero(&families, "dfs_datanode_bytes_in_total", &stream::INBOUND);
        assert_zero(&families, "dfs_datanode_frames_in_total", &stream::INBOUND);
        assert_zero(&families, "dfs_datanode_bytes_out_total", &stream::OUTBOUND);
        assert_zero(
            &families,
            "dfs_datanode_frames_out_total",
            &stream::OUTBOUND,
        );
        assert_zero(&families, "dfs_datanode_upload_duration_seconds", &OUTCOMES);
        assert_zero(
            &families,
            "dfs_datanode_download_duration_seconds",
            &DOWNLOAD_OUTCOMES,
        );
        assert_zero(
            &families,
            "dfs_datanode_checksum_failures_total",
            &CHECKSUM_SOURCES,
        );
        assert_zero(&families, "dfs_datanode_active_sessions", &SESSION_KINDS);
        assert_zero(
            &families,
            "dfs_datanode_replicas_dropped_total",
            &DROP_REASONS,
        );
        assert_zero(
            &families,
            "dfs_datanode_pending_replicas_finished_total",
            &PENDING_OUTCOMES,
        );
        assert_zero(
            &families,
            "dfs_datanode_registrations_total",
            &REGISTRATION_OUTCOMES,
        );
        assert_zero(&families, "dfs_datanode_streams_cut_total", &CUT_REASONS);
        assert_zero(&families, "dfs_datanode_volume_bytes", &VOLUME_STATES);
        assert_eq!(
            series(&families, "dfs_datanode_scrubbed_bytes_total"),
            [(vec![], 0.0)]
        );
        // Two labels: every combination.
        for (family, kinds) in [
            (
                "dfs_datanode_replication_duration_seconds",
                &REPLICATION_KINDS[..],
            ),
            ("dfs_datanode_commands_total", &COMMAND_KINDS[..]),
        ] {
            let mut got = series(&families, family);
            got.sort_by(|a, b| a.0.cmp(&b.0));
            let mut want: Vec<(Vec<String>, f64)> = kinds
                .iter()
                .flat_map(|k| {
                    OUTCOMES
                        .iter()
                        .map(move |o| (vec![k.to_string(), o.to_string()], 0.0))
                })
                .collect();
            want.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got, want, "{family}");
        }
    }

    /// Fails when a metric is added without creating its series: a family
    /// with no series is left out of the scrape altogether.
    #[test]
    fn every_family_is_exported_from_the_start() {
        let m = Metrics::new();
        let families = gather(&m);
        // Every registration is noted (Vecs and plain metrics alike).
        assert!(
            m.families
                .iter()
                .any(|f| f == "dfs_datanode_checksum_failures_total")
        );
        assert!(m.families.len() >= families.len(), "{:?}", m.families);
        let missing = dfs_common::metrics::families_without_series(&m.registry, &m.families, &LAZY);
        assert!(
            missing.is_empty(),
            "{missing:?} have no series until their first event: create them in Metrics::new() \
             (init_series), or list them in LAZY with the reason"
        );
    }
}
