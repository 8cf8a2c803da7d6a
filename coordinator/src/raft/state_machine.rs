//! The namespace as the Raft state machine.
//!
//! Applying an entry applies its commands to the [`Namespace`] in order
//! (a command that fails changes nothing, and its error is that command's
//! result: every member fails it the same way, so the state stays equal).
//! The namespace lives in the caller's state `S` (the coordinator's
//! `State`, under the same lock its handlers read), and the caller's
//! [`Applied`] hook keeps its soft state in step, as with the single-copy
//! [`crate::store::Committer`]. The state lives in memory; what is durable is the Raft log
//! ([`super::log_store`]) and the current snapshot, which this module keeps
//! in the member's database (`raft_snapshot`) whenever one is built or
//! installed, so a restarted member starts from it and replays the log
//! after it.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{BatchResult, MemberId, Node, RaftStorageError, TypeConfig, blocking, storage_err};
use crate::namespace::{Command, Namespace, Outcome, RestoreSeed, Snapshot as NsSnapshot};
use crate::store::Applied;

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");
/// Before 2026-12-03: the whole [`StoredSnapshot`] as JSON (its bytes a
/// JSON array of numbers). Still read; replaced at the next snapshot.
const CURRENT: &str = "current";
/// The current snapshot's metadata (JSON).
const CURRENT_META: &str = "current.meta";
/// The current snapshot's bytes, as they are.
const CURRENT_DATA: &str = "current.data";

/// First bytes of a snapshot in MessagePack (named fields): smaller and
/// several times faster to build and read than the JSON snapshots written
/// before, which start with `{` and are still read (from a member's disk,
/// or sent by a leader not yet upgraded).
const MSGPACK_MAGIC: &[u8] = b"dfs-namespace-msgpack-1\n";

/// The snapshot's bytes: the namespace as of `meta.last_log_id`.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    namespace: NsSnapshot,
}

/// The current snapshot as stored: its metadata and its bytes.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<MemberId, Node>,
    data: Vec<u8>,
}

impl AsRef<[u8]> for StoredSnapshot {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// A snapshot's bytes as openraft reads and writes them: the current
/// snapshot shared (replication reads it, start-up takes its metadata, a
/// build hands it back: none of them copies its gigabytes), or a snapshot
/// being received from a leader, owned.
pub enum SnapshotBytes {
    /// The current snapshot, read in place.
    Shared(Cursor<SharedBytes>),
    /// Bytes being received.
    Owned(Cursor<Vec<u8>>),
}

/// Shared, read-only snapshot bytes.
#[derive(Clone)]
pub struct SharedBytes(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl SnapshotBytes {
    /// Bytes in the snapshot.
    pub fn len(&self) -> usize {
        match self {
            SnapshotBytes::Shared(c) => c.get_ref().as_ref().len(),
            SnapshotBytes::Owned(c) => c.get_ref().len(),
        }
    }

    /// True when it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, owned (a copy only of shared ones, which openraft never
    /// hands to `install_snapshot` in this group: a follower receives into
    /// owned bytes).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            SnapshotBytes::Shared(c) => c.get_ref().as_ref().to_vec(),
            SnapshotBytes::Owned(c) => c.into_inner(),
        }
    }
}

impl tokio::io::AsyncRead for SnapshotBytes {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            SnapshotBytes::Shared(c) => std::pin::Pin::new(c).poll_read(cx, buf),
            SnapshotBytes::Owned(c) => std::pin::Pin::new(c).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncSeek for SnapshotBytes {
    fn start_seek(self: std::pin::Pin<&mut Self>, pos: std::io::SeekFrom) -> std::io::Result<()> {
        match self.get_mut() {
            SnapshotBytes::Shared(c) => std::pin::Pin::new(c).start_seek(pos),
            SnapshotBytes::Owned(c) => std::pin::Pin::new(c).start_seek(pos),
        }
    }

    fn poll_complete(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<u64>> {
        match self.get_mut() {
            SnapshotBytes::Shared(c) => std::pin::Pin::new(c).poll_complete(cx),
            SnapshotBytes::Owned(c) => std::pin::Pin::new(c).poll_complete(cx),
        }
    }
}

/// Writing turns shared bytes into owned ones first (copy on write; openraft
/// writes only into the owned bytes `begin_receiving_snapshot` gives it).
impl tokio::io::AsyncWrite for SnapshotBytes {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let SnapshotBytes::Shared(c) = this {
            let mut owned = Cursor::new(c.get_ref().as_ref().to_vec());
            owned.set_position(c.position());
            *this = SnapshotBytes::Owned(owned);
        }
        match this {
            SnapshotBytes::Owned(c) => std::pin::Pin::new(c).poll_write(cx, buf),
            SnapshotBytes::Shared(_) => unreachable!("made owned above"),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

struct Inner {
    last_applied: Option<LogId<MemberId>>,
    membership: StoredMembership<MemberId, Node>,
    current: Option<Arc<StoredSnapshot>>,
    /// Snapshots built so far (for unique snapshot ids).
    built: u64,
    /// Size and build time of the last snapshot built here.
    last_build: Option<(u64, std::time::Duration)>,
    /// Snapshots installed from a leader.
    installed: u64,
}

/// A namespace alone as the state (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Applied<Namespace> for Plain {
    fn applied(&self, _: &mut Namespace, _: &Command, _: &Outcome) {}
    fn namespace<'a>(&self, ns: &'a mut Namespace) -> &'a mut Namespace {
        ns
    }
}

/// One member's state machine over the state `S` (cheap to clone).
pub struct StateMachine<S, H> {
    inner: Arc<Mutex<Inner>>,
    state: Arc<Mutex<S>>,
    hook: Arc<H>,
    db: Arc<Database>,
}

impl<S, H> Clone for StateMachine<S, H> {
    fn clone(&self) -> Self {
        StateMachine {
            inner: self.inner.clone(),
            state: self.state.clone(),
            hook: self.hook.clone(),
            db: self.db.clone(),
        }
    }
}

impl<S, H> std::fmt::Debug for StateMachine<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").finish_non_exhaustive()
    }
}

impl<S, H> StateMachine<S, H> {
    /// Snapshots built here so far, snapshots installed from a leader, and
    /// the size (bytes) and build time of the last one built.
    pub fn snapshot_stats(&self) -> (u64, u64, Option<(u64, std::time::Duration)>) {
        let inner = self.inner.lock().expect("state machine lock poisoned");
        (inner.built, inner.installed, inner.last_build)
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    storage_err(StorageIOError::write_state_machine, e)
}

impl<S: Send + 'static, H: Applied<S> + Sync> StateMachine<S, H> {
    /// Opens the state machine of `db` over `state`: the stored snapshot's
    /// namespace replaces the one in `state`, if there is a snapshot.
    pub async fn open(
        db: Arc<Database>,
        state: Arc<Mutex<S>>,
        hook: H,
    ) -> Result<StateMachine<S, H>, RaftStorageError> {
        let d = db.clone();
        let stored: Option<StoredSnapshot> =
            blocking(StorageIOError::read_state_machine, move || {
                let e = |x: redb::Error| storage_err(StorageIOError::read_state_machine, x);
                let txn = d.begin_write().map_err(|x| e(x.into()))?;
                txn.open_table(SNAPSHOT).map_err(|x| e(x.into()))?;
                txn.commit().map_err(|x| e(x.into()))?;
                let txn = d.begin_read().map_err(|x| e(x.into()))?;
                let t = txn.open_table(SNAPSHOT).map_err(|x| e(x.into()))?;
                let read_err = |x| storage_err(StorageIOError::read_state_machine, x);
                let meta = t.get(CURRENT_META).map_err(|x| e(x.into()))?;
                let data = t.get(CURRENT_DATA).map_err(|x| e(x.into()))?;
                if let (Some(meta), Some(data)) = (meta, data) {
                    return Ok(Some(StoredSnapshot {
                        meta: serde_json::from_slice(meta.value()).map_err(read_err)?,
                        data: data.value().to_vec(),
                    }));
                }
                match t.get(CURRENT).map_err(|x| e(x.into()))? {
                    Some(v) => serde_json::from_slice(v.value())
                        .map(Some)
                        .map_err(read_err),
                    None => Ok(None),
                }
            })
            .await?;
        let hook = Arc::new(hook);
        let mut inner = Inner {
            last_applied: None,
            membership: StoredMembership::default(),
            current: None,
            built: 0,
            last_build: None,
            installed: 0,
        };
        if let Some(s) = stored {
            let ns = restore(&s.data)?;
            let mut st = state.lock().expect("state lock poisoned");
            *hook.namespace(&mut st) = ns;
            hook.restored(&mut st);
            drop(st);
            inner.last_applied = s.meta.last_log_id;
            inner.membership = s.meta.last_membership.clone();
            inner.current = Some(Arc::new(s));
        }
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
            state,
            hook,
            db,
        })
    }

    /// Works on the state (the namespace every member agrees on, as far as
    /// this member has applied it).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        f(&mut self.state.lock().expect("state lock poisoned"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("state machine lock poisoned")
    }

    /// Makes `s` the current snapshot, durably.
    async fn keep(&self, s: StoredSnapshot) -> Result<Arc<StoredSnapshot>, RaftStorageError> {
        let meta = serde_json::to_vec(&s.meta).map_err(sm_err)?;
        let db = self.db.clone();
        let s = Arc::new(s);
        let held = s.clone();
        blocking(StorageIOError::write_state_machine, move || {
            let e = |x: redb::Error| sm_err(x);
            let txn = db.begin_write().map_err(|x| e(x.into()))?;
            {
                let mut t = txn.open_table(SNAPSHOT).map_err(|x| e(x.into()))?;
                t.insert(CURRENT_META, meta.as_slice())
                    .map_err(|x| e(x.into()))?;
                t.insert(CURRENT_DATA, held.data.as_slice())
                    .map_err(|x| e(x.into()))?;
                t.remove(CURRENT).map_err(|x| e(x.into()))?;
            }
            txn.commit().map_err(|x| e(x.into()))
        })
        .await?;
        Ok(s)
    }
}

/// A snapshot's bytes (see [`MSGPACK_MAGIC`]).
/// `size_hint`: about what the last snapshot took. The buffer is reserved
/// at once, so it neither doubles nor moves gigabytes on the way (fresh
/// pages cost this machine about 15 µs each).
fn encode(data: &SnapshotData, size_hint: usize) -> Result<Vec<u8>, RaftStorageError> {
    let mut out = Vec::with_capacity(MSGPACK_MAGIC.len() + size_hint);
    out.extend_from_slice(MSGPACK_MAGIC);
    rmp_serde::encode::write_named(&mut out, data).map_err(sm_err)?;
    Ok(out)
}

fn restore(data: &[u8]) -> Result<Namespace, RaftStorageError> {
    let read_err = |e: Box<dyn std::error::Error>| {
        storage_err(
            StorageIOError::read_state_machine,
            std::io::Error::other(e.to_string()),
        )
    };
    // Decoded straight into the namespace (`RestoreSeed`), never as a
    // whole `SnapshotData` beside it.
    match data.strip_prefix(MSGPACK_MAGIC) {
        Some(rest) => DataSeed
            .deserialize(&mut rmp_serde::Deserializer::from_read_ref(rest))
            .map_err(|e| read_err(Box::new(e))),
        None => {
            let mut de = serde_json::Deserializer::from_slice(data);
            let ns = DataSeed
                .deserialize(&mut de)
                .map_err(|e| read_err(Box::new(e)))?;
            de.end().map_err(|e| read_err(Box::new(e)))?;
            Ok(ns)
        }
    }
}

/// Decodes a [`SnapshotData`] into its namespace, through [`RestoreSeed`].
struct DataSeed;

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = Namespace;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Namespace, D::Error> {
        d.deserialize_struct("SnapshotData", &["namespace"], self)
    }
}

impl<'de> Visitor<'de> for DataSeed {
    type Value = Namespace;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a coordinator snapshot")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Namespace, A::Error> {
        let mut ns = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "namespace" && ns.is_none() {
                ns = Some(map.next_value_seed(RestoreSeed)?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        ns.ok_or_else(|| de::Error::missing_field("namespace"))
    }
}

fn as_snapshot(s: &Arc<StoredSnapshot>) -> Snapshot<TypeConfig> {
    Snapshot {
        meta: s.meta.clone(),
        snapshot: Box::new(SnapshotBytes::Shared(Cursor::new(SharedBytes(s.clone())))),
    }
}

impl<S: Send + 'static, H: Applied<S> + Sync> RaftSnapshotBuilder<TypeConfig>
    for StateMachine<S, H>
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let started = std::time::Instant::now();
        // The copy is taken under the lock; encoding it is not.
        let (state, last_log_id, membership, n, hint) = {
            // The state lock first, as in apply: the copy and the applied
            // position belong together.
            let mut st = self.state.lock().expect("state lock poisoned");
            let mut inner = self.lock();
            inner.built += 1;
            (
                self.hook.namespace(&mut st).snapshot(),
                inner.last_applied,
                inner.membership.clone(),
                inner.built,
                // A little over the last one: a namespace grows.
                inner
                    .current
                    .as_ref()
                    .map_or(0, |c| c.data.len() + c.data.len() / 16),
            )
        };
        let data = blocking(StorageIOError::write_state_machine, move || {
            encode(&SnapshotData { namespace: state }, hint)
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
        let bytes = stored.data.len() as u64;
        let mut inner = self.lock();
        inner.current = Some(stored);
        inner.last_build = Some((bytes, started.elapsed()));
        drop(inner);
        tracing::info!(
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "Raft snapshot built"
        );
        Ok(out)
    }
}

impl<S: Send + 'static, H: Applied<S> + Sync> RaftStateMachine<TypeConfig> for StateMachine<S, H> {
    type SnapshotBuilder = StateMachine<S, H>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<MemberId>>, StoredMembership<MemberId, Node>), RaftStorageError> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut st = self.state.lock().expect("state lock poisoned");
        let mut inner = self.lock();
        let hook = &self.hook;
        let mut out = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => {
                    batch.iter().map(|cmd| hook.apply(&mut st, cmd)).collect()
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBytes>, RaftStorageError> {
        Ok(Box::new(SnapshotBytes::Owned(Cursor::new(Vec::new()))))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<MemberId, Node>,
        snapshot: Box<SnapshotBytes>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_vec();
        // Decoded before anything changes: a bad snapshot leaves the state.
        let (ns, data) = blocking(StorageIOError::read_state_machine, move || {
            restore(&data).map(|ns| (ns, data))
        })
        .await?;
        let bytes = data.len();
        let stored = self
            .keep(StoredSnapshot {
                meta: meta.clone(),
                data,
            })
            .await?;
        let mut st = self.state.lock().expect("state lock poisoned");
        *self.hook.namespace(&mut st) = ns;
        self.hook.restored(&mut st);
        let mut inner = self.lock();
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.current = Some(stored);
        inner.installed += 1;
        tracing::info!(
            index = meta.last_log_id.map(|l| l.index),
            bytes,
            "Raft snapshot installed from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        Ok(self.lock().current.as_ref().map(as_snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace() -> Namespace {
        let mut ns = Namespace::new();
        for path in ["/a/b", "/a/c", "/d"] {
            ns.apply(&Command::Mkdir {
                path: path.into(),
                parents: true,
                now_ms: 7,
            })
            .unwrap();
        }
        ns
    }

    fn paths(ns: &Namespace) -> Vec<String> {
        serde_json::to_value(ns.snapshot().entries)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// Snapshots are MessagePack now; the JSON ones written before (on a
    /// member's disk, or sent by a leader not yet upgraded) still restore
    /// to the same namespace.
    #[tokio::test]
    async fn shared_snapshot_bytes_are_read_in_place_and_copied_on_write() {
        use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
        let stored = Arc::new(StoredSnapshot {
            meta: SnapshotMeta::default(),
            data: b"0123456789".to_vec(),
        });
        let mut s = *as_snapshot(&stored).snapshot;
        assert_eq!(s.len(), 10);
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"0123");
        s.seek(std::io::SeekFrom::Start(8)).await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"89");
        // Writing makes it owned; the current snapshot is untouched.
        s.seek(std::io::SeekFrom::Start(2)).await.unwrap();
        s.write_all(b"ab").await.unwrap();
        assert!(matches!(s, SnapshotBytes::Owned(_)));
        assert_eq!(s.into_vec(), b"01ab456789");
        assert_eq!(stored.data, b"0123456789");
    }

    #[test]
    fn msgpack_and_legacy_json_snapshots_restore_the_same_namespace() {
        let ns = namespace();
        let data = SnapshotData {
            namespace: ns.snapshot(),
        };
        let packed = encode(&data, 0).unwrap();
        let json = serde_json::to_vec(&data).unwrap();
        assert!(packed.starts_with(MSGPACK_MAGIC));
        assert!(
            packed.len() < json.len(),
            "{} vs {}",
            packed.len(),
            json.len()
        );
        assert_eq!(paths(&restore(&packed).unwrap()), paths(&ns));
        assert_eq!(paths(&restore(&json).unwrap()), paths(&ns));
        assert!(restore(b"garbage").is_err());
        assert!(restore(&packed[..packed.len() - 3]).is_err());
    }

    /// A member whose disk holds a snapshot in the old layout (one JSON
    /// record, its bytes a JSON array) opens it; its next snapshot is kept
    /// in the new layout (metadata and raw bytes) and the old record goes.
    #[tokio::test]
    async fn a_snapshot_stored_in_the_old_layout_opens_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("raft.redb")).unwrap());
        let ns = namespace();
        let legacy = StoredSnapshot {
            meta: SnapshotMeta::default(),
            data: serde_json::to_vec(&SnapshotData {
                namespace: ns.snapshot(),
            })
            .unwrap(),
        };
        {
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(SNAPSHOT).unwrap();
                t.insert(CURRENT, serde_json::to_vec(&legacy).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let state = Arc::new(Mutex::new(Namespace::new()));
        let mut sm = StateMachine::open(db.clone(), state.clone(), Plain)
            .await
            .unwrap();
        assert_eq!(paths(&state.lock().unwrap()), paths(&ns));
        sm.build_snapshot().await.unwrap();
        {
            let txn = db.begin_read().unwrap();
            let t = txn.open_table(SNAPSHOT).unwrap();
            assert!(t.get(CURRENT).unwrap().is_none(), "the old record is gone");
            let data = t.get(CURRENT_DATA).unwrap().unwrap();
            assert!(data.value().starts_with(MSGPACK_MAGIC));
        }
        drop(sm);
        // Reopened from the new layout.
        let again = Arc::new(Mutex::new(Namespace::new()));
        StateMachine::open(db, again.clone(), Plain).await.unwrap();
        assert_eq!(paths(&again.lock().unwrap()), paths(&ns));
    }
}
