//! One member of the coordinator group: its Raft instance on its own
//! storage (`raft.redb` in its data directory) and its state machine.

use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::{Config, Raft, SnapshotPolicy};

use super::log_store::LogStore;
use super::network::{Identity, Network};
use super::state_machine::StateMachine;
use super::{MemberId, RaftStorageError, TypeConfig};
use crate::store::Applied;

/// Log entries between snapshots (each entry is one group commit).
pub const SNAPSHOT_EVERY: u64 = crate::config::DEFAULT_RAFT_SNAPSHOT_EVERY;

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The data directory could not be created.
    #[error("failed to create the Raft data directory {path}: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The Raft database could not be opened.
    #[error("failed to open the Raft database: {0}")]
    Db(#[from] redb::DatabaseError),
    /// The stored log, vote or snapshot could not be read.
    #[error("failed to load Raft state: {0}")]
    Storage(#[from] RaftStorageError),
    /// The Raft configuration is invalid.
    #[error("invalid Raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    /// openraft refused to start.
    #[error("Raft failed to start: {0}")]
    Fatal(#[from] openraft::error::Fatal<MemberId>),
}

/// The default timing: a leader heartbeats every 150 ms and a follower
/// that hears nothing for 0.5–1 s stands for election, so a dead leader is
/// replaced in about a second.
pub fn default_config() -> Config {
    config(SNAPSHOT_EVERY)
}

/// The default timing with a snapshot every `snapshot_every` entries; the
/// log kept behind a snapshot (for followers a little behind) is a tenth of
/// that, at most 1000 entries.
pub fn config(snapshot_every: u64) -> Config {
    Config {
        cluster_name: "dfs-coordinators".into(),
        heartbeat_interval: 150,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        // Followers a little behind catch up from the log, not a snapshot.
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(1000),
        snapshot_max_chunk_size: 4 << 20,
        // Sending and installing a snapshot's last chunk (decode, replace
        // the namespace, store it durably) takes far longer than openraft's
        // 200 ms default for a large namespace on a busy machine; when the
        // call timed out, the follower had often installed it, refused the
        // resends ("snapshot <= committed") whose answers timed out too, and
        // never caught up (found by the long linearizability run).
        install_snapshot_timeout: 10_000,
        ..Config::default()
    }
}

/// A running member whose state machine applies to the state `S`.
pub struct Member<S, H> {
    /// Its id in the group.
    pub id: MemberId,
    /// The incarnation of its volume (see [`super::Node`]).
    pub incarnation: u64,
    /// The Raft instance (clone freely).
    pub raft: Raft<TypeConfig>,
    /// Its state machine (the replicated namespace, inside `S`).
    pub state: StateMachine<S, H>,
}

impl<S, H> Member<S, H> {
    /// Its identity on the wire.
    pub fn identity(&self) -> Identity {
        Identity {
            id: self.id,
            incarnation: self.incarnation,
        }
    }
}

impl<S: Send + 'static, H: Applied<S> + Sync> Member<S, H> {
    /// Opens (or creates) the member's storage under `dir` and starts Raft,
    /// applying to `state` through `hook`. A new member waits to be
    /// initialised or added; a restarted one resumes from its log and
    /// snapshot.
    pub async fn open(
        id: MemberId,
        dir: &Path,
        config: Config,
        state: Arc<Mutex<S>>,
        hook: H,
        security: dfs_common::tls::Security,
    ) -> Result<Member<S, H>, MemberError> {
        dfs_common::durable::create_dir_all(dir).map_err(|source| MemberError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("raft.redb");
        let db = tokio::task::spawn_blocking(move || redb::Database::create(path))
            .await
            .expect("redb open task panicked")?;
        // The log's file name is durable only once the directory is
        // fsynced (see `dfs_common::durable`).
        dfs_common::durable::sync_dir(dir).map_err(|source| MemberError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let db = Arc::new(db);
        let log = LogStore::open(db.clone()).await?;
        let state = StateMachine::open(db, state, hook).await?;
        let config = Arc::new(config.validate()?);
        let incarnation = log.incarnation();
        let me = Identity { id, incarnation };
        let raft = Raft::new(id, config, Network::new(me, security), log, state.clone()).await?;
        Ok(Member {
            id,
            incarnation,
            raft,
            state,
        })
    }
}
