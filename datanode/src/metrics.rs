//! Prometheus metrics of a datanode, in their own [`Registry`] so tests (and
//! several datanodes embedded in one process) never share counters.
//!
//! Names follow `dfs_datanode_<what>_<unit>`: counters end in `_total`, sizes
//! in `_bytes`, durations are histograms in `_seconds`. Labels are bounded
//! (stream kind, failure source), never a chunk id.

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
}

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
    /// Replica targets dropped from an upload, by reason (error, stall).
    pub replicas_dropped: IntCounterVec,
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
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

/// Registers `c` in `registry` and hands it back.
fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    /// Counts one frame of `len` bytes sent on a stream of `kind`.
    pub fn frame_out(&self, kind: &str, len: u64) {
        self.bytes_out.with_label_values(&[kind]).inc_by(len);
        self.frames_out.with_label_values(&[kind]).inc();
    }

    /// Creates the metrics in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registered(&registry, c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registered(&registry, g)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(latency_buckets()),
                labels,
            )
            .expect("valid metric");
            registered(&registry, h)
        };
        let active_sessions = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "dfs_datanode_active_sessions",
                    "Sessions in progress, by kind.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let volume_commit_chunks = registered(
            &registry,
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
            IntGaugeVec::new(
                Opts::new(
                    "dfs_datanode_volume_bytes",
                    "Bytes in the small-chunk volumes, by state (live, garbage awaiting compaction).",
                ),
                &["state"],
            )
            .expect("valid metric"),
        );
        let volume_compactions = registered(
            &registry,
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
            ),
            bytes_out: counter(
                "dfs_datanode_bytes_out_total",
                "Chunk payload bytes sent.",
                &["stream"],
            ),
            frames_in: counter(
                "dfs_datanode_frames_in_total",
                "Chunk frames received.",
                &["stream"],
            ),
            frames_out: counter(
                "dfs_datanode_frames_out_total",
                "Chunk frames sent.",
                &["stream"],
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
            ),
            download_seconds: histogram(
                "dfs_datanode_download_duration_seconds",
                "Download stream latency, by outcome (ok, cancelled, error).",
                &["outcome"],
            ),
            replication_seconds: histogram(
                "dfs_datanode_replication_duration_seconds",
                "Replication latency (received fan-out streams and repair sends).",
                &["kind", "outcome"],
            ),
            checksum_failures: counter(
                "dfs_datanode_checksum_failures_total",
                "Checksum mismatches, by where they were found.",
                &["source"],
            ),
            scrubbed_bytes: counter(
                "dfs_datanode_scrubbed_bytes_total",
                "Bytes re-verified by the scrubber.",
                &[],
            ),
            replicas_dropped: counter(
                "dfs_datanode_replicas_dropped_total",
                "Replica targets dropped from an upload pipeline.",
                &["reason"],
            ),
            commands: counter(
                "dfs_datanode_commands_total",
                "Coordinator commands executed.",
                &["kind", "outcome"],
            ),
            registrations: counter(
                "dfs_datanode_registrations_total",
                "Registration attempts with the coordinator.",
                &["outcome"],
            ),
            foreign_cluster: registered(
                &registry,
                IntCounter::new(
                    "dfs_datanode_foreign_cluster_refusals_total",
                    "Coordinators or commands refused because they belong to another cluster.",
                )
                .expect("valid metric"),
            ),
            streams_refused: registered(
                &registry,
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
            ),
            rewrites_refused: registered(
                &registry,
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
