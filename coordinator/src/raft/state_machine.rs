//! The namespace as the Raft state machine.
//!
//! Applying an entry applies its commands to the [`Namespace`] in order
//! (a command that fails changes nothing, and its error is that command's
//! result: every member fails it the same way, so the state stays equal).
//! The state itself lives in memory; what is durable is the Raft log
//! ([`super::log_store`]) and the current snapshot, which this module keeps
//! in the member's database (`raft_snapshot`) whenever one is built or
//! installed, so a restarted member starts from it and replays the log
//! after it.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{BatchResult, MemberId, RaftStorageError, TypeConfig, blocking, storage_err};
use crate::namespace::{Namespace, Snapshot as NsSnapshot};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");
const CURRENT: &str = "current";

/// The snapshot's bytes: the namespace as of `meta.last_log_id`.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    namespace: NsSnapshot,
}

/// The current snapshot as stored: its metadata and its bytes.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<MemberId, BasicNode>,
    data: Vec<u8>,
}

struct Inner {
    ns: Namespace,
    last_applied: Option<LogId<MemberId>>,
    membership: StoredMembership<MemberId, BasicNode>,
    current: Option<Arc<StoredSnapshot>>,
    /// Snapshots built so far (for unique snapshot ids).
    built: u64,
}

/// One member's state machine (cheap to clone: shared state).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    db: Arc<Database>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").finish_non_exhaustive()
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    storage_err(StorageIOError::write_state_machine, e)
}

impl StateMachine {
    /// Opens the state machine of `db`: the stored snapshot's state, or an
    /// empty namespace.
    pub async fn open(db: Arc<Database>) -> Result<StateMachine, RaftStorageError> {
        let d = db.clone();
        let stored: Option<StoredSnapshot> =
            blocking(StorageIOError::read_state_machine, move || {
                let e = |x: redb::Error| storage_err(StorageIOError::read_state_machine, x);
                let txn = d.begin_write().map_err(|x| e(x.into()))?;
                txn.open_table(SNAPSHOT).map_err(|x| e(x.into()))?;
                txn.commit().map_err(|x| e(x.into()))?;
                let txn = d.begin_read().map_err(|x| e(x.into()))?;
                let t = txn.open_table(SNAPSHOT).map_err(|x| e(x.into()))?;
                match t.get(CURRENT).map_err(|x| e(x.into()))? {
                    Some(v) => serde_json::from_slice(v.value())
                        .map(Some)
                        .map_err(|x| storage_err(StorageIOError::read_state_machine, x)),
                    None => Ok(None),
                }
            })
            .await?;
        let mut inner = Inner {
            ns: Namespace::new(),
            last_applied: None,
            membership: StoredMembership::default(),
            current: None,
            built: 0,
        };
        if let Some(s) = stored {
            inner.ns = restore(&s.data)?;
            inner.last_applied = s.meta.last_log_id;
            inner.membership = s.meta.last_membership.clone();
            inner.current = Some(Arc::new(s));
        }
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
            db,
        })
    }

    /// Reads the namespace (the leader's and the followers' view of it).
    pub fn with_namespace<T>(&self, f: impl FnOnce(&Namespace) -> T) -> T {
        f(&self.lock().ns)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("state machine lock poisoned")
    }

    /// Makes `s` the current snapshot, durably.
    async fn keep(&self, s: StoredSnapshot) -> Result<Arc<StoredSnapshot>, RaftStorageError> {
        let bytes = serde_json::to_vec(&s).map_err(sm_err)?;
        let db = self.db.clone();
        blocking(StorageIOError::write_state_machine, move || {
            let e = |x: redb::Error| sm_err(x);
            let txn = db.begin_write().map_err(|x| e(x.into()))?;
            {
                let mut t = txn.open_table(SNAPSHOT).map_err(|x| e(x.into()))?;
                t.insert(CURRENT, bytes.as_slice())
                    .map_err(|x| e(x.into()))?;
            }
            txn.commit().map_err(|x| e(x.into()))
        })
        .await?;
        Ok(Arc::new(s))
    }
}

fn restore(data: &[u8]) -> Result<Namespace, RaftStorageError> {
    let d: SnapshotData = serde_json::from_slice(data)
        .map_err(|e| storage_err(StorageIOError::read_state_machine, e))?;
    Namespace::restore(d.namespace).map_err(|e| storage_err(StorageIOError::read_state_machine, e))
}

fn as_snapshot(s: &StoredSnapshot) -> Snapshot<TypeConfig> {
    Snapshot {
        meta: s.meta.clone(),
        snapshot: Box::new(Cursor::new(s.data.clone())),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        // The copy is taken under the lock; encoding it is not.
        let (state, last_log_id, membership, n) = {
            let mut inner = self.lock();
            inner.built += 1;
            (
                inner.ns.snapshot(),
                inner.last_applied,
                inner.membership.clone(),
                inner.built,
            )
        };
        let data = blocking(StorageIOError::write_state_machine, move || {
            serde_json::to_vec(&SnapshotData { namespace: state }).map_err(sm_err)
        })
        .await?;
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{n}", id.leader_id, id.index),
            None => format!("none-{n}"),
        };
        let stored = self
            .keep(StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id,
                    last_membership: membership,
                    snapshot_id,
                },
                data,
            })
            .await?;
        let out = as_snapshot(&stored);
        self.lock().current = Some(stored);
        Ok(out)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<MemberId>>,
            StoredMembership<MemberId, BasicNode>,
        ),
        RaftStorageError,
    > {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => {
                    batch.iter().map(|cmd| inner.ns.apply(cmd)).collect()
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<MemberId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let bytes = data.clone();
        // Decoded before anything changes: a bad snapshot leaves the state.
        let ns = blocking(StorageIOError::read_state_machine, move || restore(&bytes)).await?;
        let stored = self
            .keep(StoredSnapshot {
                meta: meta.clone(),
                data,
            })
            .await?;
        let mut inner = self.lock();
        inner.ns = ns;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.current = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        Ok(self.lock().current.as_deref().map(as_snapshot))
    }
}
