//! The coordinator's replicated namespace on Raft ([openraft]): its types
//! and its storage. First layer of coordinator high availability.
//!
//! ```text
//!   client write ─▶ leader: Raft entry = one group commit (Vec<Command>)
//!                     │ replicated to a majority (log_store: redb, fsync)
//!                     ▼
//!   state_machine: Namespace::apply, per command ─▶ Vec<Result<Outcome, NamespaceError>>
//!                     │ every N entries
//!                     ▼
//!   snapshot (namespace::Snapshot, JSON) ─▶ followers that fall behind; log purged
//! ```
//!
//! - [`log_store`]: the Raft log and vote ([`openraft::storage::RaftLogStorage`])
//!   in redb tables, every write a durable (fsync'd) transaction: a vote or
//!   an entry is on disk before openraft hears it is.
//! - [`state_machine`]: the namespace as the state machine
//!   ([`openraft::storage::RaftStateMachine`]), with snapshots built from it
//!   and installed from a leader; the current snapshot is kept durably so a
//!   restarted member starts from it.
//!
//! - [`network`]: Raft messages between members over gRPC
//!   (`CoordinatorRaft`), both the sending and the receiving side.
//! - [`member`]: one member (its Raft instance on its storage) and the
//!   default timing.
//!
//! The storage passes openraft's own test suite (`tests` below); a group of
//! three members on 127.0.0.1 elects, replicates, fails over and catches a
//! restarted member up (`tests/raft_group.rs`). Not yet here: the
//! coordinator serving its namespace from this group (its writes through
//! the leader, the log moved from `store`), leader hints to clients and
//! datanodes, and membership changes; see issue 17.

// openraft's traits fix the error type (`StorageError`, 224 bytes); boxing
// it here would only add a conversion at every trait method.
#![allow(clippy::result_large_err)]

pub mod committer;
pub mod log_store;
pub mod member;
pub mod membership;
pub mod network;
pub mod state_machine;

use openraft::{AnyError, StorageError, StorageIOError};

use crate::namespace::{Command, NamespaceError, Outcome};

/// One replicated entry: the commands of one group commit, applied in order.
pub type Batch = Vec<Command>;

/// What applying a [`Batch`] gave, command by command.
pub type BatchResult = Vec<Result<Outcome, NamespaceError>>;

/// A member of the coordinator group.
pub type MemberId = u64;

/// How the group knows one member: where to reach it, and which volume it
/// must answer from.
///
/// `incarnation` is a random number a member creates with its Raft
/// storage. The group pins it when the member joins, and every Raft call
/// names the incarnation it is meant for: a member that came back on an
/// empty volume has a new incarnation, so it is refused as the old member
/// (it lost the votes and the entries the old one acknowledged) until it is
/// removed and added again. 0 means "not pinned" (a group formed by an
/// older release, whose nodes were `{addr}` only).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// Its gRPC URL.
    pub addr: String,
    /// Its pinned incarnation (0: not pinned).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{:016x}", self.addr, self.incarnation)
    }
}

openraft::declare_raft_types!(
    /// The coordinator group's Raft types.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = MemberId,
        Node = Node,
        SnapshotData = state_machine::SnapshotBytes,
);

/// A storage failure as openraft wants it.
pub type RaftStorageError = StorageError<MemberId>;

/// Wraps an error of kind `kind` (which I/O failed) for openraft.
fn storage_err(
    kind: fn(AnyError) -> StorageIOError<MemberId>,
    e: impl std::error::Error + 'static,
) -> RaftStorageError {
    StorageError::IO {
        source: kind(AnyError::new(&e)),
    }
}

/// Runs blocking storage work (redb, fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    kind: fn(AnyError) -> StorageIOError<MemberId>,
    f: impl FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
) -> Result<T, RaftStorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| storage_err(kind, e))?
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};

    use super::log_store::LogStore;
    use super::state_machine::{Plain, StateMachine};
    use crate::namespace::Namespace;

    type Sm = StateMachine<Namespace, Plain>;
    use super::*;

    /// A fresh log store and state machine on one redb file in a temp dir.
    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, Sm, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, Sm), RaftStorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let db = Arc::new(
                redb::Database::create(dir.path().join("raft.redb")).expect("create redb"),
            );
            let log = LogStore::open(db.clone()).await?;
            let sm = Sm::open(db, Default::default(), Plain).await?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's contract for storage: vote, log, purge, truncate,
    /// membership, apply, snapshot build and install.
    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft storage suite");
    }

    fn entry(index: u64, batch: Batch) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
            payload: openraft::EntryPayload::Normal(batch),
        }
    }

    fn mkdir(path: &str) -> Command {
        Command::Mkdir {
            path: path.into(),
            parents: false,
            now_ms: 7,
        }
    }

    /// What the suite cannot build (openraft does not know our commands):
    /// a batch applies command by command, a failing command fails alone
    /// and changes nothing, and the results come back in order.
    #[tokio::test]
    async fn a_batch_applies_command_by_command_with_one_result_each() {
        use openraft::storage::RaftStateMachine;
        let (_dir, _log, mut sm) = Builder.build().await.unwrap();
        let out = sm
            .apply([entry(1, vec![mkdir("/a"), mkdir("/a"), mkdir("/a/b")])])
            .await
            .unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0][0].is_ok());
        assert!(matches!(
            out[0][1],
            Err(NamespaceError::AlreadyExists { .. })
        ));
        assert!(out[0][2].is_ok());
        // The root, /a and /a/b.
        assert_eq!(sm.with_state(|ns| ns.dir_count()), 3);
    }

    /// Vote, log and snapshot survive a restart of the member (a reopened
    /// database), and the state machine comes back from its snapshot.
    #[tokio::test]
    async fn vote_log_and_snapshot_survive_a_reopen() {
        use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
        use openraft::{RaftLogReader, RaftSnapshotBuilder, Vote};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let db = Arc::new(redb::Database::create(&path).unwrap());
            let mut log = LogStore::open(db.clone()).await.unwrap();
            let mut sm = Sm::open(db, Default::default(), Plain).await.unwrap();
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            let e = entry(1, vec![mkdir("/kept")]);
            log.blocking_append(vec![e.clone()]).await.unwrap();
            sm.apply([e]).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            log.blocking_append(vec![entry(2, vec![mkdir("/after")])])
                .await
                .unwrap();
        }
        let db = Arc::new(redb::Database::create(&path).unwrap());
        let mut log = LogStore::open(db.clone()).await.unwrap();
        let mut sm = Sm::open(db, Default::default(), Plain).await.unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        let entries = log.try_get_log_entries(1..3).await.unwrap();
        assert_eq!(entries.len(), 2);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1), "from the snapshot");
        assert_eq!(sm.with_state(|ns| ns.dir_count()), 2, "the root and /kept");
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
    }
}
