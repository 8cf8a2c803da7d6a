//! The Raft log and vote in redb.
//!
//! Two tables in the member's database: `raft_log` (index → JSON entry) and
//! `raft_state` (the vote, the committed log id, the last purged log id).
//! Every write is one redb transaction with the default durability
//! (`Immediate`: fsync before commit returns) and is never relaxed: a vote
//! or an entry that openraft is told is stored must survive power loss, or
//! a member could vote twice in a term or lose an entry a majority counted.
//! openraft serialises the calls (`&mut self`); each runs on a blocking
//! thread.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{MemberId, RaftStorageError, TypeConfig, blocking, storage_err};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";
/// This volume's incarnation (see [`super::Node`]), created with it.
const INCARNATION: &str = "incarnation";

/// The log store of one member (cheap to clone: it shares the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    incarnation: u64,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(
    v: &T,
    kind: fn(openraft::AnyError) -> StorageIOError<MemberId>,
) -> Result<Vec<u8>, RaftStorageError> {
    serde_json::to_vec(v).map_err(|e| storage_err(kind, e))
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    kind: fn(openraft::AnyError) -> StorageIOError<MemberId>,
) -> Result<T, RaftStorageError> {
    serde_json::from_slice(bytes).map_err(|e| storage_err(kind, e))
}

impl LogStore {
    /// Opens the log in `db`, creating its tables.
    pub async fn open(db: Arc<Database>) -> Result<LogStore, RaftStorageError> {
        let d = db.clone();
        blocking(StorageIOError::write_logs, move || {
            let w = |e: redb::Error| storage_err(StorageIOError::write_logs, e);
            let txn = d.begin_write().map_err(|e| w(e.into()))?;
            txn.open_table(LOG).map_err(|e| w(e.into()))?;
            txn.open_table(STATE).map_err(|e| w(e.into()))?;
            txn.commit().map_err(|e| w(e.into()))?;
            Ok(())
        })
        .await?;
        let mut store = LogStore { db, incarnation: 0 };
        store.incarnation = match store
            .get_state::<u64>(INCARNATION, StorageIOError::read)
            .await?
        {
            Some(i) => i,
            None => {
                // A new volume: a new member as far as the group goes.
                let i = rand::random::<u64>().max(1);
                store
                    .put_state(
                        INCARNATION,
                        encode(&i, StorageIOError::write)?,
                        StorageIOError::write,
                        redb::Durability::Immediate,
                    )
                    .await?;
                i
            }
        };
        Ok(store)
    }

    /// The incarnation of this volume: random, nonzero, kept for its life.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Reads one value of the state table.
    async fn get_state<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
        kind: fn(openraft::AnyError) -> StorageIOError<MemberId>,
    ) -> Result<Option<T>, RaftStorageError> {
        let db = self.db.clone();
        blocking(kind, move || {
            let r = |e: redb::Error| storage_err(kind, e);
            let txn = db.begin_read().map_err(|e| r(e.into()))?;
            let t = txn.open_table(STATE).map_err(|e| r(e.into()))?;
            match t.get(key).map_err(|e| r(e.into()))? {
                Some(v) => decode(v.value(), kind).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    /// Writes one value of the state table, durably.
    async fn put_state(
        &self,
        key: &'static str,
        bytes: Vec<u8>,
        kind: fn(openraft::AnyError) -> StorageIOError<MemberId>,
        durability: redb::Durability,
    ) -> Result<(), RaftStorageError> {
        let db = self.db.clone();
        blocking(kind, move || {
            let w = |e: redb::Error| storage_err(kind, e);
            let mut txn = db.begin_write().map_err(|e| w(e.into()))?;
            txn.set_durability(durability).map_err(|e| w(e.into()))?;
            {
                let mut t = txn.open_table(STATE).map_err(|e| w(e.into()))?;
                t.insert(key, bytes.as_slice()).map_err(|e| w(e.into()))?;
            }
            txn.commit().map_err(|e| w(e.into()))
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        let db = self.db.clone();
        blocking(StorageIOError::read_logs, move || {
            let r = |e: redb::Error| storage_err(StorageIOError::read_logs, e);
            let txn = db.begin_read().map_err(|e| r(e.into()))?;
            let t = txn.open_table(LOG).map_err(|e| r(e.into()))?;
            let mut out = Vec::new();
            for item in t.range::<u64>((start, end)).map_err(|e| r(e.into()))? {
                let (_, v) = item.map_err(|e| r(e.into()))?;
                out.push(decode(v.value(), StorageIOError::read_logs)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let purged: Option<LogId<MemberId>> =
            self.get_state(PURGED, StorageIOError::read_logs).await?;
        let db = self.db.clone();
        let last: Option<LogId<MemberId>> = blocking(StorageIOError::read_logs, move || {
            let r = |e: redb::Error| storage_err(StorageIOError::read_logs, e);
            let txn = db.begin_read().map_err(|e| r(e.into()))?;
            let t = txn.open_table(LOG).map_err(|e| r(e.into()))?;
            match t.last().map_err(|e| r(e.into()))? {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> = decode(v.value(), StorageIOError::read_logs)?;
                    Ok(Some(e.log_id))
                }
                None => Ok(None),
            }
        })
        .await?;
        Ok(LogState {
            last_purged_log_id: purged,
            // An empty log after a purge ends where the purge did.
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<MemberId>) -> Result<(), RaftStorageError> {
        let bytes = encode(vote, StorageIOError::write_vote)?;
        self.put_state(
            VOTE,
            bytes,
            StorageIOError::write_vote,
            redb::Durability::Immediate,
        )
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<MemberId>>, RaftStorageError> {
        self.get_state(VOTE, StorageIOError::read_vote).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<MemberId>>,
    ) -> Result<(), RaftStorageError> {
        // Not fsynced: the committed index only lets a restarted member
        // apply its log before it hears from a leader. Losing the newest
        // value in a crash leaves an older one (never one past the durable
        // log, which is written with every append's fsync), and openraft
        // learns the rest from the leader. Fsyncing it cost every member a
        // second fsync per replication round, with Raft's core waiting.
        let bytes = encode(&committed, StorageIOError::write)?;
        self.put_state(
            COMMITTED,
            bytes,
            StorageIOError::write,
            redb::Durability::None,
        )
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<MemberId>>, RaftStorageError> {
        Ok(self
            .get_state::<Option<LogId<MemberId>>>(COMMITTED, StorageIOError::read)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let rows = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, encode(&e, StorageIOError::write_logs)?)))
            .collect::<Result<Vec<_>, RaftStorageError>>()?;
        let db = self.db.clone();
        let written = blocking(StorageIOError::write_logs, move || {
            let w = |e: redb::Error| storage_err(StorageIOError::write_logs, e);
            let txn = db.begin_write().map_err(|e| w(e.into()))?;
            {
                let mut t = txn.open_table(LOG).map_err(|e| w(e.into()))?;
                for (index, bytes) in &rows {
                    t.insert(*index, bytes.as_slice())
                        .map_err(|e| w(e.into()))?;
                }
            }
            // Durable before openraft is told: the commit fsyncs.
            txn.commit().map_err(|e| w(e.into()))
        })
        .await;
        match &written {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: LogId<MemberId>) -> Result<(), RaftStorageError> {
        let db = self.db.clone();
        blocking(StorageIOError::write_logs, move || {
            let w = |e: redb::Error| storage_err(StorageIOError::write_logs, e);
            let txn = db.begin_write().map_err(|e| w(e.into()))?;
            {
                let mut t = txn.open_table(LOG).map_err(|e| w(e.into()))?;
                t.retain_in(log_id.index.., |_, _| false)
                    .map_err(|e| w(e.into()))?;
            }
            txn.commit().map_err(|e| w(e.into()))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<MemberId>) -> Result<(), RaftStorageError> {
        let purged = encode(&log_id, StorageIOError::write_logs)?;
        let db = self.db.clone();
        blocking(StorageIOError::write_logs, move || {
            let w = |e: redb::Error| storage_err(StorageIOError::write_logs, e);
            let txn = db.begin_write().map_err(|e| w(e.into()))?;
            {
                // The purge point first, in the same transaction: a crash
                // never leaves entries gone without saying where they ended.
                let mut s = txn.open_table(STATE).map_err(|e| w(e.into()))?;
                s.insert(PURGED, purged.as_slice())
                    .map_err(|e| w(e.into()))?;
                let mut t = txn.open_table(LOG).map_err(|e| w(e.into()))?;
                t.retain_in(..=log_id.index, |_, _| false)
                    .map_err(|e| w(e.into()))?;
            }
            txn.commit().map_err(|e| w(e.into()))
        })
        .await
    }
}
