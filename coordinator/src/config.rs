//! Command-line / environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dfs_common::size::ByteSize;
use dfs_common::time::parse_duration;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
/// Default metrics/probe address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9100";
/// Default replication factor.
pub const DEFAULT_REPLICATION: u32 = 3;
/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE: &str = "64MiB";
/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL: &str = "3s";
/// Default dead-after.
pub const DEFAULT_DEAD_AFTER: &str = "30s";
/// Default maintenance duration when the caller gives none.
pub const DEFAULT_MAINTENANCE: Duration = Duration::from_secs(600);
/// Largest replication factor accepted.
pub const MAX_REPLICATION: u32 = 16;
/// Replicas a chunk of a `replication`-fold file needs at confirm: the
/// fixed `write_quorum`, else a majority; never more than there are.
pub fn quorum(write_quorum: Option<u32>, replication: u32) -> u32 {
    write_quorum
        .unwrap_or(replication / 2 + 1)
        .clamp(1, replication.max(1))
}

/// Smallest chunk size a file may be written with.
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
/// Largest chunk size a file may be written with.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// Configuration of the coordinator (`dfs-coordinator` flags, also usable as
/// an embedded subcommand).
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "dfs coordinator: namespace, placement, liveness and repair")]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "DFS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Directory holding the metadata database (created if missing).
    #[arg(long, env = "DFS_DATA_DIR", default_value = "dfs-coordinator-data")]
    pub data_dir: PathBuf,
    /// Address of the /metrics, /healthz and /readyz HTTP endpoint.
    #[arg(long, env = "DFS_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Default replication factor of new files.
    #[arg(long, env = "DFS_REPLICATION", default_value_t = DEFAULT_REPLICATION)]
    pub replication: u32,
    /// Default chunk size of new files (e.g. 64MiB).
    #[arg(long, env = "DFS_CHUNK_SIZE", default_value = DEFAULT_CHUNK_SIZE)]
    pub chunk_size: ByteSize,
    /// How often datanodes heartbeat (e.g. 3s, 500ms).
    #[arg(long, env = "DFS_HEARTBEAT_INTERVAL", default_value = DEFAULT_HEARTBEAT_INTERVAL, value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Silence after which a node is suspect (served last, not repaired);
    /// default: twice the heartbeat interval.
    #[arg(long, env = "DFS_SUSPECT_AFTER", value_parser = parse_duration)]
    pub suspect_after: Option<Duration>,
    /// Silence after which a node is dead and its replicas are repaired.
    #[arg(long, env = "DFS_DEAD_AFTER", default_value = DEFAULT_DEAD_AFTER, value_parser = parse_duration)]
    pub dead_after: Duration,
    /// How long an upload may stay unconfirmed before its chunks are reclaimed.
    #[arg(long, env = "DFS_UPLOAD_TTL", default_value = "1h", value_parser = parse_duration)]
    pub upload_ttl: Duration,
    /// How long a chunk referenced by no file and no open upload is kept
    /// before its replicas are deleted.
    #[arg(long, env = "DFS_ORPHAN_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub orphan_grace: Duration,
    /// How long a chunk may stay over-replicated before the excess replicas
    /// are deleted.
    #[arg(long, env = "DFS_OVER_REPLICATION_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub over_replication_grace: Duration,
    /// How long a planned replica that was still writing when its upload's
    /// write quorum answered (ConfirmedChunk.pending) counts as a repair in
    /// flight: the chunk is copied elsewhere only if the replica has not
    /// reported it by then. Longer than a datanode's wait for a replica
    /// (3 × its `--replica-stall-timeout`) plus a heartbeat.
    #[arg(long, env = "DFS_PENDING_REPLICA_GRACE", default_value = "45s", value_parser = parse_duration)]
    pub pending_replica_grace: Duration,
    /// Concurrent repair streams per datanode (as source or target).
    #[arg(long, env = "DFS_REPAIR_STREAMS_PER_NODE", default_value_t = 2)]
    pub repair_streams_per_node: u32,
    /// Repair bandwidth per datanode, split over its streams (0 = unthrottled).
    #[arg(long, env = "DFS_REPAIR_BYTES_PER_SECOND", default_value = "100MiB")]
    pub repair_bytes_per_second: ByteSize,
    /// Longest maintenance window an admin may request.
    #[arg(long, env = "DFS_MAINTENANCE_MAX", default_value = "1h", value_parser = parse_duration)]
    pub maintenance_max: Duration,
    /// Replicas per chunk that ConfirmUpload requires; default: a majority of
    /// the file's replication factor (2 of 3), capped at the factor.
    #[arg(long, env = "DFS_WRITE_QUORUM")]
    pub write_quorum: Option<u32>,
    /// Exit gracefully when stdin reaches end-of-file (for supervisors that
    /// hold a pipe to the child's stdin).
    #[arg(long, env = "DFS_EXIT_WITH_PARENT")]
    pub exit_with_parent: bool,
    /// Directory holding this coordinator's TLS identity: `ca.crt`,
    /// `tls.crt` (a certificate naming `dfs://coordinator/<name>`) and
    /// `tls.key`, as a Kubernetes TLS Secret mounted as a directory. Every
    /// hop is mutual TLS 1.3; changed files are taken up without a restart.
    #[arg(long, env = "DFS_TLS_DIR", conflicts_with = "insecure")]
    pub tls_dir: Option<PathBuf>,
    /// Serve and dial plain-text gRPC: no caller is authenticated. Only
    /// for a trusted network; without it a coordinator needs --tls-dir.
    #[arg(long, env = "DFS_INSECURE")]
    pub insecure: bool,
    /// Client roles on path prefixes (a mounted ConfigMap or Secret): one
    /// rule per line, `client/<name>|client/* read|write|admin <prefix>`.
    /// A client may then do only what a rule grants it (admin on `/` also
    /// grants the admin calls); the operator and the `admin` client keep
    /// every right. Changes are taken up without a restart. Without it
    /// every client may read and write the whole namespace.
    #[arg(long, env = "DFS_ACCESS_FILE")]
    pub access_file: Option<PathBuf>,
    /// Bearer tokens of client principals (a mounted Secret): one
    /// `<name> sha256:<64 hex digits>` per line, the SHA-256 of each token.
    /// A call over a client certificate that carries `authorization:
    /// Bearer <token>` then has the path roles of `client/<name>`. Changes
    /// are taken up without a restart. Needs --tls-dir.
    #[arg(long, env = "DFS_CLIENT_TOKENS")]
    pub client_tokens: Option<PathBuf>,
    /// The chunk-token key file (a mounted Secret): one key per line,
    /// `<key id> <64 hex digits>`, the first signs and every one verifies.
    /// Required with --tls-dir: every chunk call on a datanode then needs a
    /// token this coordinator signed. Changes are taken up without a
    /// restart (rotate by adding the next key, moving it first, then
    /// dropping the old one once its tokens expired).
    #[arg(long, env = "DFS_TOKEN_KEYS")]
    pub token_keys: Option<PathBuf>,
    /// How long a chunk map's read tokens and a repair's replicate tokens
    /// stay valid (an upload's write tokens live as long as its plan).
    #[arg(long, env = "DFS_CHUNK_TOKEN_LIFETIME", default_value = "10m", value_parser = parse_duration)]
    pub chunk_token_lifetime: Duration,
    /// Safe mode after start ends once this share of the known datanodes
    /// sent a full chunk report (at least one). 0..=1.
    #[arg(long, env = "DFS_SAFE_MODE_NODE_SHARE", default_value_t = 0.6)]
    pub safe_mode_node_share: f64,
    /// ... and once at least this share of the reported replicas belong to
    /// chunks the namespace knows: metadata that does not know most of what
    /// the datanodes hold (a restore, the wrong directory) stays in safe mode
    /// until an admin leaves it (`dfs safemode leave`). 0..=1.
    #[arg(long, env = "DFS_SAFE_MODE_KNOWN_SHARE", default_value_t = 0.8)]
    pub safe_mode_known_share: f64,
    /// ... except when at most this many reported replicas are unknown:
    /// the orphans a crash leaves (plans it lost) must not keep a young
    /// cluster in safe mode.
    #[arg(long, env = "DFS_SAFE_MODE_UNKNOWN_MIN", default_value_t = 256)]
    pub safe_mode_unknown_min: u64,
    /// Share of a datanode's replicas that may be ordered deleted per
    /// orphan-grace window (orphans, surplus and corrupt replicas); beyond
    /// it deletes wait for the next window. 0..=1.
    #[arg(long, env = "DFS_DELETE_BUDGET_SHARE", default_value_t = 0.1)]
    pub delete_budget_share: f64,
    /// Replica deletes per datanode and window that are always allowed
    /// (small nodes), whatever the share.
    #[arg(long, env = "DFS_DELETE_BUDGET_MIN", default_value_t = 100)]
    pub delete_budget_min: u64,
    /// This coordinator's id in its group (with --peers).
    #[arg(long, env = "DFS_RAFT_ID", default_value_t = 1)]
    pub raft_id: u64,
    /// Take this coordinator's id from its hostname instead of --raft-id:
    /// the ordinal a StatefulSet ends its pods' names with, plus one
    /// (`dfs-coordinator-0` is 1, `dfs-coordinator-2` is 3).
    #[arg(long, env = "DFS_RAFT_ID_FROM_HOSTNAME")]
    pub raft_id_from_hostname: bool,
    /// The coordinator group's seed members as id=url (e.g.
    /// 1=http://c0:7000,2=http://c1:7000,3=http://c2:7000): the namespace is
    /// replicated on Raft among them, and the lowest id forms the group once
    /// all of them answer. 1, 3 or 5 seeds. A coordinator whose --raft-id is
    /// not a seed joins the formed group when a member adds it
    /// (`dfs coordinators add`, or the operator). Empty: one coordinator,
    /// its namespace a single copy.
    #[arg(long, env = "DFS_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,
    /// `new`: the group may be formed now (by the lowest seed, once every
    /// seed answers that it belongs to no group). `existing`: the group
    /// exists; never form one, wait to be added. The operator switches its
    /// pods to `existing` once the group has formed, so a member that comes
    /// back on an empty volume can never start a second group.
    #[arg(
        long,
        env = "DFS_INITIAL_CLUSTER_STATE",
        value_enum,
        default_value = "new"
    )]
    pub initial_cluster_state: InitialState,
    /// Raft log entries (group commits) between snapshots of the namespace;
    /// after each, the log before it is purged, and a member further behind
    /// than the log reaches catches up from the snapshot.
    #[arg(long, env = "DFS_RAFT_SNAPSHOT_EVERY", default_value_t = DEFAULT_RAFT_SNAPSHOT_EVERY)]
    pub raft_snapshot_every: u64,
    /// Fault injection for tests: every metadata log write fails with an
    /// I/O error while this file exists.
    #[arg(long, env = "DFS_FAULT_FAIL_LOG_WRITES_WHEN", hide = true)]
    pub fault_fail_log_writes_when: Option<PathBuf>,
}

/// Raft log entries between snapshots by default (each entry is one group
/// commit).
pub const DEFAULT_RAFT_SNAPSHOT_EVERY: u64 = 20_000;

/// Whether this member may form a new group (`--initial-cluster-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InitialState {
    /// The group may be new: the lowest-id seed bootstraps it once every
    /// seed answered that it belongs to no group.
    #[default]
    New,
    /// The group exists: never bootstrap, wait to be added.
    Existing,
}

/// A member of the coordinator group: its id and its gRPC URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Raft id (positive).
    pub id: u64,
    /// `http://host:port` (clients, datanodes and the other members use it).
    pub url: String,
}

/// Parses `id=url`.
pub fn parse_peer(s: &str) -> Result<Peer, String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected id=url, e.g. 1=http://c0:7000"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: the id must be a positive integer"))?;
    let url = url.trim();
    if id == 0 {
        return Err(format!("{s:?}: the id must be positive"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 256 {
        return Err(format!("{s:?}: the url must be http(s)://host:port"));
    }
    Ok(Peer {
        id,
        url: url.to_string(),
    })
}

/// Configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range.
    #[error("invalid --{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

/// The Raft id of a StatefulSet pod named `host`: its ordinal plus one.
pub fn raft_id_of_hostname(host: &str) -> Option<u64> {
    let (_, ordinal) = host.trim().rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse::<u64>().ok()?.checked_add(1)
}

impl Config {
    /// With `--raft-id-from-hostname`, sets `raft_id` from this machine's
    /// hostname (`$HOSTNAME`, else the kernel's), see [`raft_id_of_hostname`].
    pub fn resolve_raft_id(&mut self) -> Result<(), ConfigError> {
        if !self.raft_id_from_hostname {
            return Ok(());
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_default();
        self.raft_id = raft_id_of_hostname(&host).ok_or_else(|| ConfigError::Invalid {
            flag: "raft-id-from-hostname",
            reason: format!(
                "hostname {:?} does not end in -<ordinal> (a StatefulSet pod's name)",
                host.trim()
            ),
        })?;
        Ok(())
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |flag, reason: &str| {
            Err(ConfigError::Invalid {
                flag,
                reason: reason.to_string(),
            })
        };
        if self.replication == 0 || self.replication > MAX_REPLICATION {
            return bad("replication", "must be between 1 and 16");
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size.0) {
            return bad("chunk-size", "must be between 64KiB and 1GiB");
        }
        for (flag, v) in [
            ("safe-mode-node-share", self.safe_mode_node_share),
            ("safe-mode-known-share", self.safe_mode_known_share),
            ("delete-budget-share", self.delete_budget_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(flag, "must be between 0 and 1");
            }
        }
        if !self.peers.is_empty() {
            if ![1, 3, 5].contains(&self.peers.len()) {
                return bad(
                    "peers",
                    "a group has 1, 3 or 5 members (2 or 4 survive no more failures than 1 or 3)",
                );
            }
            let ids: std::collections::BTreeSet<u64> = self.peers.iter().map(|p| p.id).collect();
            if ids.len() != self.peers.len() {
                return bad("peers", "every member needs its own id");
            }
            if self.raft_snapshot_every < 10 {
                return bad("raft-snapshot-every", "must be at least 10");
            }
            if self.raft_id == 0 || self.raft_id > u16::MAX as u64 {
                return bad("raft-id", "must be 1..=65535");
            }
        }
        if self.orphan_grace.is_zero() {
            return bad("orphan-grace", "must be positive");
        }
        if self.heartbeat_interval.is_zero() {
            return bad("heartbeat-interval", "must be positive");
        }
        if self.dead_after <= self.suspect_after() {
            return bad("dead-after", "must be longer than suspect-after");
        }
        if self.write_quorum == Some(0) {
            return bad("write-quorum", "must be at least 1");
        }
        Ok(())
    }

    /// Suspect-after, defaulted.
    pub fn suspect_after(&self) -> Duration {
        self.suspect_after.unwrap_or(self.heartbeat_interval * 2)
    }

    /// Write quorum for a file with `replication` replicas.
    pub fn quorum_for(&self, replication: u32) -> u32 {
        quorum(self.write_quorum, replication)
    }

    /// A configuration with defaults, for tests and embedding.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        use clap::Parser;
        let mut c = Config::parse_from(["dfs-coordinator"]);
        c.data_dir = data_dir.into();
        // Embedded (tests, benchmarks): plain text unless told otherwise.
        c.insecure = true;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn parses_flags_and_defaults() {
        let c = Config::parse_from([
            "x",
            "--chunk-size",
            "1MiB",
            "--heartbeat-interval",
            "100ms",
            "--dead-after",
            "1s",
            "--write-quorum",
            "3",
        ]);
        assert_eq!(c.chunk_size.0, 1 << 20);
        assert_eq!(c.suspect_after(), Duration::from_millis(200));
        assert_eq!(c.quorum_for(2), 2);
        c.validate().unwrap();
        assert_eq!(raft_id_of_hostname("dfs-coordinator-0"), Some(1));
        assert_eq!(raft_id_of_hostname("prod-dfs-coordinator-4\n"), Some(5));
        for bad in [
            "dfs-coordinator",
            "coordinator-",
            "c-x1",
            "",
            "c-99999999999999999999",
        ] {
            assert_eq!(raft_id_of_hostname(bad), None, "{bad:?}");
        }
        let d = Config::for_data_dir("/tmp/x");
        assert_eq!(d.quorum_for(3), 2);
        assert_eq!(d.quorum_for(1), 1);
        assert_eq!(d.listen.to_string(), DEFAULT_LISTEN);
        assert!(
            Config::parse_from(["x", "--dead-after", "1s"])
                .validate()
                .is_err()
        );
    }
}
