//! Command-line and environment configuration of a datanode.
//!
//! Every flag is also readable from a `DFS_…` environment variable so a
//! Kubernetes pod spec can configure the node without a command line. The
//! struct works both as the `dfs-datanode` binary's arguments and embedded as
//! a subcommand of another CLI (`dfs datanode …`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dfs_common::size::ByteSize;
use dfs_common::time::parse_duration;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7101";
/// Default coordinator endpoint.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7000";
/// Default metrics/probe listen address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9101";
/// Default scrubber rate: slow enough to stay out of the clients' way.
pub const DEFAULT_SCRUB_BYTES_PER_SECOND: &str = "16MiB";
/// Default lifetime of a prepared session that no stream has used yet.
pub const DEFAULT_SESSION_TIMEOUT: &str = "5m";
/// Default time a replica may block the pipeline before it is dropped.
pub const DEFAULT_REPLICA_STALL_TIMEOUT: &str = "10s";
/// Default heartbeat interval until the coordinator says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: &str = "3s";
/// Default `--pending-replica-budget`.
pub const DEFAULT_PENDING_REPLICA_BUDGET: &str = "64MiB";
/// Default interval between full chunk reports.
pub const DEFAULT_FULL_REPORT_INTERVAL: &str = "10m";
/// Default limit for chunks stored in the shared volumes (64 KiB).
pub const DEFAULT_SMALL_CHUNK_MAX: &str = "64KiB";

/// `--small-chunk-max`: a size of at most one checksum block (256 KiB).
fn parse_small_chunk_max(s: &str) -> Result<ByteSize, String> {
    let v: ByteSize = s.parse().map_err(|e| format!("{e}"))?;
    let max = crate::volume::MAX_RECORD_DATA as u64;
    if v.0 > max {
        return Err(format!("at most {max} bytes (256KiB), got {}", v.0));
    }
    Ok(v)
}
/// Default pause between two scrubber passes over the whole store.
pub const DEFAULT_SCRUB_INTERVAL: &str = "1h";
/// Default number of repair replications run at the same time.
pub const DEFAULT_MAX_CONCURRENT_REPLICATIONS: usize = 3;

/// Configuration of one datanode.
#[derive(clap::Parser, Clone, Debug)]
#[command(about = "dfs datanode: stores chunk replicas and streams them over gRPC")]
pub struct Config {
    /// Address the gRPC service listens on.
    #[arg(long, env = "DFS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Endpoint other nodes and clients use to reach this node (default:
    /// http://<listen>). Set it to the pod's DNS name in Kubernetes.
    #[arg(long, env = "DFS_ADVERTISE")]
    pub advertise: Option<String>,

    /// Coordinator gRPC endpoint to register and heartbeat with; for a
    /// coordinator group, its members comma-separated (the datanode follows
    /// the leader a follower names).
    #[arg(long, env = "DFS_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,

    /// Directory holding the chunks, the node id and temporary files.
    #[arg(long, env = "DFS_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "DFS_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// Failure zone (Kubernetes label topology.kubernetes.io/zone).
    #[arg(long, env = "DFS_ZONE", default_value = "")]
    pub zone: String,

    /// Directory of files named after hosts, each holding that host's zone
    /// (the operator's topology ConfigMap mounted as a volume: the downward
    /// API cannot read node labels). Used when `--zone` is empty; read at
    /// every registration so a relabelled node is picked up.
    #[arg(long, env = "DFS_TOPOLOGY_DIR")]
    pub topology_dir: Option<PathBuf>,

    /// Rack within the zone.
    #[arg(long, env = "DFS_RACK", default_value = "")]
    pub rack: String,

    /// Host (Kubernetes node name); placement never puts two replicas on one.
    #[arg(long, env = "DFS_HOST", default_value = "")]
    pub host: String,

    /// Bytes this node may use for chunks (e.g. 100GiB). Default: the size of
    /// the data directory's volume minus the reserve.
    #[arg(long, env = "DFS_CAPACITY")]
    pub capacity: Option<ByteSize>,

    /// Bytes of the volume kept free for everything else (e.g. 1GiB).
    #[arg(long, env = "DFS_RESERVE", default_value = "0")]
    pub reserve: ByteSize,

    /// Chunks of at most this size are appended to shared volume files and
    /// made durable together (one fdatasync per group of concurrent writes)
    /// instead of getting a file each; 0 disables it. At most 256KiB.
    #[arg(long, env = "DFS_SMALL_CHUNK_MAX", default_value = DEFAULT_SMALL_CHUNK_MAX, value_parser = parse_small_chunk_max)]
    pub small_chunk_max: ByteSize,

    /// Replicas (counting the primary) that must store a chunk before an upload
    /// succeeds, when the client does not say; 0 means all of them.
    #[arg(long, env = "DFS_WRITE_QUORUM", default_value_t = 0)]
    pub write_quorum: u32,

    /// Largest ChunkData frame accepted; larger frames are rejected.
    #[arg(long, env = "DFS_MAX_FRAME_BYTES", default_value = "1MiB")]
    pub max_frame_bytes: ByteSize,

    /// Rate at which the background scrubber re-reads stored chunks; 0
    /// disables it.
    #[arg(long, env = "DFS_SCRUB_BYTES_PER_SECOND", default_value = DEFAULT_SCRUB_BYTES_PER_SECOND)]
    pub scrub_bytes_per_second: ByteSize,

    /// Pause between two scrubber passes over the whole store.
    #[arg(long, env = "DFS_SCRUB_INTERVAL", default_value = DEFAULT_SCRUB_INTERVAL, value_parser = parse_duration)]
    pub scrub_interval: Duration,

    /// How long a prepared session (or an idle stream) lives before it expires
    /// and its reserved space is released.
    #[arg(long, env = "DFS_SESSION_TIMEOUT", default_value = DEFAULT_SESSION_TIMEOUT, value_parser = parse_duration)]
    pub session_timeout: Duration,

    /// How long a replica may block the upload pipeline (full buffers, no
    /// final answer) before it is dropped from the upload.
    #[arg(long, env = "DFS_REPLICA_STALL_TIMEOUT", default_value = DEFAULT_REPLICA_STALL_TIMEOUT, value_parser = parse_duration)]
    pub replica_stall_timeout: Duration,

    /// Bytes of uploads this node (as their primary) may still be writing,
    /// locally or to replicas, after their write quorum was durable and
    /// the client got its answer. Uploads then go at the quorum's pace
    /// past one slow disk or peer; a copy still writing when the budget is
    /// spent is dropped from its upload (the coordinator repairs it). 0:
    /// every upload waits for all its replicas.
    #[arg(long, env = "DFS_PENDING_REPLICA_BUDGET", default_value = DEFAULT_PENDING_REPLICA_BUDGET)]
    pub pending_replica_budget: ByteSize,

    /// Heartbeat interval used until the coordinator sets one.
    #[arg(long, env = "DFS_HEARTBEAT_INTERVAL", default_value = DEFAULT_HEARTBEAT_INTERVAL, value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Interval between full chunk reports to the coordinator.
    #[arg(long, env = "DFS_FULL_REPORT_INTERVAL", default_value = DEFAULT_FULL_REPORT_INTERVAL, value_parser = parse_duration)]
    pub full_report_interval: Duration,

    /// Repair replications (commanded by the coordinator) run at the same
    /// time, so repair never starves client traffic.
    #[arg(long, env = "DFS_MAX_CONCURRENT_REPLICATIONS", default_value_t = DEFAULT_MAX_CONCURRENT_REPLICATIONS)]
    pub max_concurrent_replications: usize,

    /// Exit when stdin reaches end of file: a supervisor holding the other end
    /// of a pipe takes its children down with it, even when SIGKILLed.
    #[arg(long, env = "DFS_EXIT_WITH_PARENT")]
    pub exit_with_parent: bool,

    /// Directory holding this datanode's TLS identity: `ca.crt`, `tls.crt`
    /// (a certificate naming `dfs://datanode/<name>`) and `tls.key`, as a
    /// Kubernetes TLS Secret mounted as a directory. Clients, other
    /// datanodes and the coordinator are then reached and served over
    /// mutual TLS 1.3; changed files are taken up without a restart.
    #[arg(long, env = "DFS_TLS_DIR", conflicts_with = "insecure")]
    pub tls_dir: Option<PathBuf>,
    /// Read `<name>.crt` and `<name>.key` in --tls-dir instead of `tls.crt`
    /// and `tls.key`: the operator keeps every Kubernetes node's datanode
    /// identity in one Secret, and each pod passes its node's name.
    #[arg(long, env = "DFS_TLS_NAME", requires = "tls_dir")]
    pub tls_name: Option<String>,

    /// How long past its expiry a chunk token is still accepted: the
    /// clocks of the coordinator and the datanodes may differ by this much.
    #[arg(long, env = "DFS_TOKEN_CLOCK_SKEW", default_value = "30s", value_parser = parse_duration)]
    pub token_clock_skew: Duration,

    /// Make --data-dir and everything in it belong to `UID:GID`, then exit
    /// without serving. For a Kubernetes hostPath directory, which the
    /// kubelet creates as root: the operator's init container runs this with
    /// CAP_CHOWN as its one capability, so that the datanode itself runs as
    /// an unprivileged user.
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    pub chown_data_dir: Option<(u32, u32)>,
    /// Serve and dial plain-text gRPC: no caller is authenticated. Only
    /// for a trusted network; without it a datanode needs --tls-dir.
    #[arg(long, env = "DFS_INSECURE")]
    pub insecure: bool,

    /// Re-home this datanode to the cluster with this id: the one explicit
    /// way to move a datanode that already belongs to a cluster (its
    /// `<data-dir>/cluster_id`) to another one. Without it a coordinator of
    /// another cluster is refused. The chunks it holds become orphans of the
    /// new cluster, which deletes them (within its delete budget) after its
    /// safe mode and the orphan grace. Remove the flag once re-homed.
    #[arg(long, env = "DFS_REHOME_TO_CLUSTER", value_parser = parse_cluster_id)]
    pub rehome_to_cluster: Option<String>,

    /// Chunk streams (uploads, downloads, replications) served at once;
    /// beyond it a new stream gets RESOURCE_EXHAUSTED. Each may hold a
    /// blocking thread and a few frames of memory, so this bounds both.
    #[arg(long, env = "DFS_MAX_STREAMS", default_value_t = DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,

    /// Prepared sessions (PrepareChunkUpload, PrepareChunkDownload) kept
    /// at once; beyond it a prepare gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "DFS_MAX_SESSIONS", default_value_t = DEFAULT_MAX_SESSIONS)]
    pub max_sessions: usize,
}

/// Default `--max-streams`.
pub const DEFAULT_MAX_STREAMS: usize = 1024;
/// Default `--max-sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 8192;

/// `--rehome-to-cluster`: a cluster id (32 lowercase hex characters).
fn parse_cluster_id(s: &str) -> Result<String, String> {
    if dfs_proto::frame::is_valid_chunk_id(s) {
        Ok(s.to_string())
    } else {
        Err("expected a cluster id: 32 lowercase hex characters (dfs status shows it)".into())
    }
}

impl Config {
    /// A configuration with every default, for `data_dir` (tests, embedding).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            advertise: None,
            coordinator: DEFAULT_COORDINATOR.to_string(),
            data_dir: data_dir.into(),
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("valid default"),
            zone: String::new(),
            topology_dir: None,
            rack: String::new(),
            host: String::new(),
            capacity: None,
            reserve: ByteSize(0),
            small_chunk_max: ByteSize(crate::store::DEFAULT_SMALL_CHUNK_MAX),
            write_quorum: 0,
            max_frame_bytes: ByteSize(dfs_proto::DEFAULT_MAX_FRAME_BYTES as u64),
            scrub_bytes_per_second: DEFAULT_SCRUB_BYTES_PER_SECOND.parse().expect("valid"),
            scrub_interval: parse_duration(DEFAULT_SCRUB_INTERVAL).expect("valid"),
            session_timeout: parse_duration(DEFAULT_SESSION_TIMEOUT).expect("valid"),
            replica_stall_timeout: parse_duration(DEFAULT_REPLICA_STALL_TIMEOUT).expect("valid"),
            pending_replica_budget: DEFAULT_PENDING_REPLICA_BUDGET.parse().expect("valid"),
            heartbeat_interval: parse_duration(DEFAULT_HEARTBEAT_INTERVAL).expect("valid"),
            full_report_interval: parse_duration(DEFAULT_FULL_REPORT_INTERVAL).expect("valid"),
            max_concurrent_replications: DEFAULT_MAX_CONCURRENT_REPLICATIONS,
            exit_with_parent: false,
            tls_dir: None,
            tls_name: None,
            chown_data_dir: None,
            token_clock_skew: dfs_common::token::CLOCK_SKEW,
            // Embedded (tests, benchmarks): plain text unless told otherwise.
            insecure: true,
            rehome_to_cluster: None,
            max_streams: DEFAULT_MAX_STREAMS,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }

    /// The zone to register with: `--zone`, else the content of
    /// `<topology-dir>/<host>`, else empty.
    pub fn effective_zone(&self) -> String {
        if !self.zone.is_empty() {
            return self.zone.clone();
        }
        let Some(dir) = &self.topology_dir else {
            return String::new();
        };
        // A host name never contains a path separator; refuse one rather
        // than read outside the directory.
        if self.host.is_empty() || self.host.contains('/') || self.host.starts_with('.') {
            return String::new();
        }
        std::fs::read_to_string(dir.join(&self.host))
            .map(|z| z.trim().to_string())
            .unwrap_or_default()
    }

    /// The endpoint advertised to the coordinator: `--advertise`, or
    /// `http(s)://<addr>` where `addr` is the address actually bound
    /// (https with `--tls-dir`).
    pub fn advertise_for(&self, bound: SocketAddr) -> String {
        let scheme = if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        match &self.advertise {
            Some(a) if a.contains("://") => a.clone(),
            Some(a) => format!("{scheme}://{a}"),
            None => format!("{scheme}://{bound}"),
        }
    }
}

/// `UID:GID`, both numeric.
fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: want UID:GID"))?;
    let num = |x: &str| {
        x.parse::<u32>()
            .map_err(|_| format!("{x:?} is not a numeric id"))
    };
    Ok((num(u)?, num(g)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_parse_and_match_new() {
        // `Config::new` is for tests and embedding: plain text, said
        // explicitly as a server on the command line must.
        let parsed =
            Config::try_parse_from(["anything", "--data-dir", "/tmp/x", "--insecure"]).unwrap();
        let built = Config::new("/tmp/x");
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
        assert_eq!(
            parsed.advertise_for("127.0.0.1:7101".parse().unwrap()),
            "http://127.0.0.1:7101"
        );
    }

    #[test]
    fn zone_comes_from_the_flag_or_the_topology_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-a"), "eu-west-1a\n").unwrap();
        let mut c = Config::new("/d");
        c.topology_dir = Some(dir.path().to_path_buf());
        c.host = "node-a".into();
        assert_eq!(c.effective_zone(), "eu-west-1a");
        c.host = "node-b".into();
        assert_eq!(c.effective_zone(), "", "unknown host: no zone");
        c.host = "../node-a".into();
        assert_eq!(c.effective_zone(), "", "no path tricks");
        c.zone = "z9".into();
        assert_eq!(c.effective_zone(), "z9", "the flag wins");
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = Config::try_parse_from([
            "dfs-datanode",
            "--data-dir",
            "/d",
            "--capacity",
            "64MiB",
            "--session-timeout",
            "500ms",
            "--advertise",
            "dn-0.dfs:7101",
        ])
        .unwrap();
        assert_eq!(c.capacity, Some(ByteSize(64 << 20)));
        assert_eq!(c.session_timeout, Duration::from_millis(500));
        assert_eq!(
            c.advertise_for("0.0.0.0:7101".parse().unwrap()),
            "http://dn-0.dfs:7101"
        );
    }
}
