//! Durable metadata in redb: an operations log plus a periodic snapshot.
//!
//! Each accepted [`Command`] is appended to the `log` table; every
//! [`SNAPSHOT_EVERY`] entries the whole [`Namespace`] is copied (under the
//! state lock), encoded on a thread of its own while commits go on, then
//! written to the `snapshot` table with the log entries it covers removed, in
//! one transaction. Opening replays snapshot + log. This is the storage shape of
//! a Raft state machine (openraft: log + snapshot), so replicating the
//! coordinator later changes who orders the commands, not how they are kept.
//!
//! [`Committer`] implements group commit: concurrent proposals are applied
//! in arrival order and written in a single redb transaction (one fsync),
//! and each caller is answered only after that commit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::namespace::{Command, Namespace, NamespaceError, Outcome, Snapshot};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT_KEY: &str = "snapshot";

/// Log entries between snapshots.
pub const SNAPSHOT_EVERY: u64 = 100_000;
/// Largest number of commands written in one transaction.
pub const MAX_BATCH: usize = 4096;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("failed to create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// redb failed.
    #[error("failed to {action} metadata database: {source}")]
    Db {
        action: &'static str,
        source: redb::Error,
    },
    /// A stored record could not be decoded.
    #[error("failed to decode stored {what}: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
    /// Replaying the log failed (a corrupt or foreign database).
    #[error("failed to replay log entry {index}: {source}")]
    Replay { index: u64, source: NamespaceError },
    /// A test's fault hook failed the write ([`Store::fail_writes_when`]).
    #[error("failed to append to metadata database: injected I/O error ({reason})")]
    Injected { reason: String },
    /// The committer stopped (shutdown or an earlier storage failure).
    #[error("metadata store is unavailable")]
    Unavailable,
}

fn db_err(action: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |source| StoreError::Db { action, source }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    last_index: u64,
    state: Snapshot,
}

/// The redb database holding the log and the snapshot.
pub struct Store {
    fail_when_exists: Option<PathBuf>,
    db: Database,
    next_index: u64,
    since_snapshot: u64,
    snapshot_every: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("next_index", &self.next_index)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) `dir/metadata.redb` and rebuilds the state.
    pub fn open(dir: &Path) -> Result<(Store, Namespace), StoreError> {
        dfs_common::durable::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let db =
            Database::create(dir.join("metadata.redb")).map_err(|e| db_err("open")(e.into()))?;
        // The file's name is durable only once its directory is fsynced:
        // without this a power cut after the first commits loses the whole
        // database (every commit's fsync went into a file with no name).
        dfs_common::durable::sync_dir(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        {
            let txn = db
                .begin_write()
                .map_err(|e| db_err("initialise")(e.into()))?;
            txn.open_table(LOG)
                .map_err(|e| db_err("initialise")(e.into()))?;
            txn.open_table(META)
                .map_err(|e| db_err("initialise")(e.into()))?;
            txn.commit().map_err(|e| db_err("initialise")(e.into()))?;
        }
        let read = db.begin_read().map_err(|e| db_err("read")(e.into()))?;
        let meta = read
            .open_table(META)
            .map_err(|e| db_err("read")(e.into()))?;
        let (mut ns, mut last) = match meta
            .get(SNAPSHOT_KEY)
            .map_err(|e| db_err("read")(e.into()))?
        {
            Some(v) => {
                let s: StoredSnapshot =
                    serde_json::from_slice(v.value()).map_err(|source| StoreError::Decode {
                        what: "snapshot",
                        source,
                    })?;
                let ns = Namespace::restore(s.state).map_err(|source| StoreError::Replay {
                    index: s.last_index,
                    source,
                })?;
                (ns, s.last_index)
            }
            None => (Namespace::new(), 0),
        };
        let log = read.open_table(LOG).map_err(|e| db_err("read")(e.into()))?;
        let mut replayed = 0;
        for item in log.range::<u64>(..).map_err(|e| db_err("read")(e.into()))? {
            let (k, v) = item.map_err(|e| db_err("read")(e.into()))?;
            for (i, cmd) in decode_batch(v.value())?.into_iter().enumerate() {
                let index = k.value() + i as u64;
                if index <= last {
                    // Covered by the snapshot.
                    continue;
                }
                ns.apply(&cmd)
                    .map_err(|source| StoreError::Replay { index, source })?;
                last = index;
                replayed += 1;
            }
        }
        drop(log);
        drop(meta);
        drop(read);
        tracing::info!(
            files = ns.file_count(),
            replayed,
            "metadata loaded from {}",
            dir.display()
        );
        Ok((
            Store {
                fail_when_exists: None,
                db,
                next_index: last + 1,
                since_snapshot: replayed,
                snapshot_every: SNAPSHOT_EVERY,
            },
            ns,
        ))
    }

    /// Fault injection for tests: every log write fails with an I/O error
    /// while `path` exists (a metadata disk that starts failing mid-run).
    pub fn fail_writes_when(&mut self, path: Option<PathBuf>) {
        self.fail_when_exists = path;
    }

    /// Appends JSON-encoded commands in one transaction, as one log row
    /// keyed by the index of its first command (a JSON array): one B-tree
    /// insert per group commit instead of one per command. Without
    /// `durable` the transaction is not flushed (no fsync): it becomes
    /// durable with the next durable one, which redb writes after it.
    pub fn append(&mut self, entries: &[Vec<u8>], durable: bool) -> Result<(), StoreError> {
        if let Some(path) = &self.fail_when_exists
            && path.exists()
        {
            return Err(StoreError::Injected {
                reason: format!("{} exists", path.display()),
            });
        }
        let mut row = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
        row.push(b'[');
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                row.push(b',');
            }
            row.extend_from_slice(e);
        }
        row.push(b']');
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| db_err("begin")(e.into()))?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| db_err("begin")(e.into()))?;
        }
        {
            let mut log = txn
                .open_table(LOG)
                .map_err(|e| db_err("append to")(e.into()))?;
            log.insert(self.next_index, row.as_slice())
                .map_err(|e| db_err("append to")(e.into()))?;
        }
        txn.commit().map_err(|e| db_err("commit")(e.into()))?;
        self.next_index += entries.len() as u64;
        self.since_snapshot += entries.len() as u64;
        Ok(())
    }

    /// Makes every commit so far durable (an empty durable transaction).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| db_err("begin")(e.into()))?;
        txn.commit().map_err(|e| db_err("commit")(e.into()))
    }

    /// True when a snapshot is due.
    pub fn snapshot_due(&self) -> bool {
        self.since_snapshot >= self.snapshot_every
    }

    /// Takes a snapshot every `n` log entries instead of [`SNAPSHOT_EVERY`]
    /// (tests; tuning).
    pub fn set_snapshot_every(&mut self, n: u64) {
        self.snapshot_every = n.max(1);
    }

    /// Rows in the log (one per group commit since the last snapshot).
    pub fn log_rows(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| db_err("read")(e.into()))?;
        let log = txn.open_table(LOG).map_err(|e| db_err("read")(e.into()))?;
        log.len().map_err(|e| db_err("read")(e.into()))
    }

    /// Index of the last appended log entry (what a snapshot of the state
    /// taken now covers).
    pub fn last_index(&self) -> u64 {
        self.next_index - 1
    }

    /// Writes a snapshot of `state` (which must include every appended
    /// entry) and drops the log it covers.
    pub fn write_snapshot(&mut self, state: Snapshot) -> Result<(), StoreError> {
        let last_index = self.last_index();
        let bytes = Store::encode_snapshot(last_index, state)?;
        self.install_snapshot(last_index, &bytes)
    }

    /// Encodes a snapshot of the state as of log entry `last_index`. Pure
    /// and slow for a big namespace: the committer runs it on another thread
    /// so commits go on meanwhile.
    pub fn encode_snapshot(last_index: u64, state: Snapshot) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&StoredSnapshot { last_index, state }).map_err(|source| {
            StoreError::Decode {
                what: "snapshot",
                source,
            }
        })
    }

    /// Stores an encoded snapshot covering the log up to `last_index` and
    /// drops those entries; entries appended since are kept.
    pub fn install_snapshot(&mut self, last_index: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| db_err("begin")(e.into()))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| db_err("snapshot")(e.into()))?;
            meta.insert(SNAPSHOT_KEY, bytes)
                .map_err(|e| db_err("snapshot")(e.into()))?;
            let mut log = txn
                .open_table(LOG)
                .map_err(|e| db_err("snapshot")(e.into()))?;
            log.retain_in(..=last_index, |_, _| false)
                .map_err(|e| db_err("truncate log of")(e.into()))?;
        }
        txn.commit().map_err(|e| db_err("commit")(e.into()))?;
        self.since_snapshot = self.last_index().saturating_sub(last_index);
        tracing::info!(last_index, bytes = bytes.len(), "metadata snapshot written");
        Ok(())
    }
}

/// The commands of one log row: a JSON array (a group commit), or a single
/// command (rows written one command each).
fn decode_batch(bytes: &[u8]) -> Result<Vec<Command>, StoreError> {
    let decoded = if bytes.first() == Some(&b'[') {
        serde_json::from_slice::<Vec<Command>>(bytes)
    } else {
        serde_json::from_slice::<Command>(bytes).map(|c| vec![c])
    };
    decoded.map_err(|source| StoreError::Decode {
        what: "log entry",
        source,
    })
}

/// Why a proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The command was rejected by the state machine.
    #[error(transparent)]
    Rejected(#[from] NamespaceError),
    /// It could not be made durable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This coordinator is a follower of a replicated group: writes go to
    /// the leader (its client address, when known).
    #[error("this coordinator is not the leader of its group{}", match leader {
        Some(l) => format!("; the leader is {l}"),
        None => "; no leader is known yet (an election is under way)".to_string(),
    })]
    NotLeader { leader: Option<String> },
    /// The group could not commit it (lost leadership mid-write, shutdown).
    #[error("the coordinator group could not commit the change: {0}")]
    Replication(String),
}

/// One command waiting to be committed, with whom to answer.
pub struct Proposal {
    pub(crate) cmd: Command,
    /// Taken when the answer is sent: after the log write, or right after
    /// the apply for a proposal that does not wait for durability.
    reply: Option<oneshot::Sender<Result<Outcome, ProposeError>>>,
    /// Whether the answer waits for the log write.
    durable: bool,
}

impl Proposal {
    pub(crate) fn answer(&mut self, r: Result<Outcome, ProposeError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(r);
        }
    }
}

/// Hook run under the state lock after each accepted command (keeps soft
/// state in step with the namespace).
pub trait Applied<S>: Send + 'static {
    /// Called with the state, the command and its outcome.
    fn applied(&self, state: &mut S, cmd: &Command, outcome: &Outcome);
    /// The namespace inside `S`.
    fn namespace<'a>(&self, state: &'a mut S) -> &'a mut Namespace;
    /// Called after the namespace was replaced whole (a replicated
    /// snapshot installed): soft state derived from it starts over.
    fn restored(&self, _state: &mut S) {}

    /// Applies `cmd` to the namespace and, when it took effect, runs the
    /// hook with the command that took effect (a repeated
    /// [`Command::Once`] changes nothing, so its effects do not run again).
    /// The one way both state machines (single and replicated) apply.
    fn apply(&self, state: &mut S, cmd: &Command) -> Result<Outcome, NamespaceError> {
        let repeat = self.namespace(state).repeats(cmd);
        let r = self.namespace(state).apply(cmd);
        if let Ok(outcome) = &r
            && !repeat
        {
            self.applied(state, cmd.effective(), outcome);
        }
        r
    }
}

/// Handle for proposing commands to the group-commit loop.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Proposal>,
    failure: tokio::sync::watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cmd.fmt(f)
    }
}

impl Committer {
    /// A handle over another commit loop (the Raft group's): proposals go
    /// to `tx`, and `failure` says when that loop stopped for good.
    pub(crate) fn from_parts(
        tx: mpsc::UnboundedSender<Proposal>,
        failure: tokio::sync::watch::Receiver<Option<String>>,
    ) -> Committer {
        Committer { tx, failure }
    }

    /// Starts the commit loop on a blocking thread. It ends when every
    /// `Committer` clone is dropped.
    pub fn start<S: Send + 'static, H: Applied<S>>(
        mut store: Store,
        state: Arc<Mutex<S>>,
        hook: H,
        metrics: crate::metrics::Metrics,
    ) -> (Committer, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Proposal>();
        let (failure_tx, failure) = tokio::sync::watch::channel(None::<String>);
        let handle = tokio::task::spawn_blocking(move || {
            let mut failed = false;
            // Snapshots are encoded on their own thread (JSON of the whole
            // namespace takes long for a big one) and installed here, between
            // batches, once ready.
            let (snap_tx, snap_rx) =
                std::sync::mpsc::channel::<(u64, Result<Vec<u8>, StoreError>)>();
            let mut snapshot_pending = false;
            let mut unsynced = false;
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                if failed {
                    for mut p in batch {
                        p.answer(Err(StoreError::Unavailable.into()));
                    }
                    continue;
                }
                let mut results = Vec::with_capacity(batch.len());
                let mut encoded = Vec::new();
                {
                    let mut st = state.lock().expect("state lock poisoned");
                    for p in &mut batch {
                        let r = hook.apply(&mut st, &p.cmd);
                        if r.is_ok() {
                            encoded.push(
                                serde_json::to_vec(&p.cmd).expect("commands always serialise"),
                            );
                        }
                        if !p.durable {
                            p.answer(r.clone().map_err(ProposeError::from));
                        }
                        results.push(r);
                    }
                }
                // A batch of plans only (nobody waits for its durability) is
                // written without an fsync; the next durable batch flushes it.
                let durable = batch.iter().any(|p| p.durable);
                let started = std::time::Instant::now();
                let appended = if encoded.is_empty() {
                    Ok(())
                } else {
                    store.append(&encoded, durable)
                };
                if !encoded.is_empty() {
                    unsynced = !durable;
                }
                if !encoded.is_empty() {
                    metrics.commits.inc();
                    metrics.commit_batch.observe(encoded.len() as f64);
                    metrics
                        .commit_duration
                        .observe(started.elapsed().as_secs_f64());
                }
                if let Err(e) = appended {
                    // The in-memory state is now ahead of the disk: refuse
                    // everything from here on; a restart reloads the truth.
                    tracing::error!("{e:#}; refusing further metadata changes");
                    failed = true;
                    failure_tx.send_replace(Some(format!("metadata log write failed: {e}")));
                    for mut p in batch {
                        p.answer(Err(StoreError::Unavailable.into()));
                    }
                    continue;
                }
                for (mut p, r) in batch.into_iter().zip(results) {
                    p.answer(r.map_err(ProposeError::from));
                }
                if let Ok((last, encoded)) = snap_rx.try_recv() {
                    snapshot_pending = false;
                    if let Err(e) = encoded.and_then(|b| store.install_snapshot(last, &b)) {
                        tracing::error!("{e:#}");
                    }
                }
                if !snapshot_pending && store.snapshot_due() {
                    let snap = {
                        let mut st = state.lock().expect("state lock poisoned");
                        hook.namespace(&mut st).snapshot()
                    };
                    let last = store.last_index();
                    let tx = snap_tx.clone();
                    snapshot_pending = true;
                    let encode = move || {
                        let _ = tx.send((last, Store::encode_snapshot(last, snap)));
                    };
                    if let Err(e) = std::thread::Builder::new()
                        .name("dfs-snapshot".into())
                        .spawn(encode)
                    {
                        tracing::error!("cannot start the snapshot encoder: {e}");
                        snapshot_pending = false;
                    }
                }
            }
            // A graceful stop keeps the last batches of plans too.
            if unsynced
                && !failed
                && let Err(e) = store.sync()
            {
                tracing::error!("{e:#}");
            }
        });
        (Committer { tx, failure }, handle)
    }

    /// Resolves (with the reason) once a log write failed: from then on the
    /// in-memory state may be ahead of the disk, so the caller must stop
    /// acting on it (no deletes, no repairs) and exit.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.clone();
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        match reason {
            Some(r) => r,
            // The committer ended without failing (shutdown).
            None => std::future::pending().await,
        }
    }

    /// True once a log write failed.
    pub fn has_failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// Proposes a command; resolves once it is applied and durable.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        self.send(cmd, true).await
    }

    /// Proposes a command whose loss in a crash harms nothing (an upload
    /// plan: its confirmation is durable, and chunks of a plan the log lost
    /// are orphans the datanodes' reports bring back for deletion). Resolves
    /// once it is applied; it is logged with its batch, in order, so any
    /// later durable command that depends on it is durable only with it.
    pub async fn propose_applied(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        self.send(cmd, false).await
    }

    async fn send(&self, cmd: Command, durable: bool) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal {
                cmd,
                reply: Some(reply),
                durable,
            })
            .map_err(|_| StoreError::Unavailable)?;
        rx.await.map_err(|_| StoreError::Unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NsOnly;
    impl Applied<Namespace> for NsOnly {
        fn applied(&self, _: &mut Namespace, _: &Command, _: &Outcome) {}
        fn namespace<'a>(&self, s: &'a mut Namespace) -> &'a mut Namespace {
            s
        }
    }

    #[test]
    fn log_rows_hold_a_batch_or_a_single_command() {
        let a = Command::Mkdir {
            path: "/a".into(),
            parents: false,
            now_ms: 1,
        };
        let b = Command::Delete {
            path: "/a".into(),
            recursive: false,
        };
        let row = format!(
            "[{},{}]",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(decode_batch(row.as_bytes()).unwrap(), vec![a.clone(), b]);
        let single = serde_json::to_vec(&a).unwrap();
        assert_eq!(decode_batch(&single).unwrap(), vec![a]);
        assert!(decode_batch(b"[{").is_err());
    }

    #[test]
    fn a_snapshot_installed_late_keeps_the_commands_logged_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mkdir = |i: u32| Command::Mkdir {
            path: format!("/s/d{i}"),
            parents: true,
            now_ms: 1,
        };
        let (mut store, mut ns) = Store::open(dir.path()).unwrap();
        let log = |store: &mut Store, ns: &mut Namespace, i: u32| {
            ns.apply(&mkdir(i)).unwrap();
            store
                .append(
                    &[serde_json::to_vec(&mkdir(i)).unwrap()],
                    i.is_multiple_of(2),
                )
                .unwrap();
        };
        for i in 0..3 {
            log(&mut store, &mut ns, i);
        }
        // Taken here, encoded while two more commands are committed.
        let last = store.last_index();
        let snap = ns.snapshot();
        for i in 3..5 {
            log(&mut store, &mut ns, i);
        }
        let bytes = Store::encode_snapshot(last, snap).unwrap();
        store.install_snapshot(last, &bytes).unwrap();
        drop(store);
        let (_, reopened) = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.dir_count(), 1 + 1 + 5, "/, /s and d0..d4");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_committer_snapshots_in_the_background_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, ns) = Store::open(dir.path()).unwrap();
        store.set_snapshot_every(10);
        let state = Arc::new(Mutex::new(ns));
        let (committer, handle) =
            Committer::start(store, state, NsOnly, crate::metrics::Metrics::new());
        // One at a time: 200 group commits, so snapshots are taken, encoded
        // and installed while commits go on.
        for i in 0..200 {
            committer
                .propose(Command::Mkdir {
                    path: format!("/bg/d{i}"),
                    parents: true,
                    now_ms: 1,
                })
                .await
                .unwrap();
        }
        drop(committer);
        handle.await.unwrap();
        let (store, ns) = Store::open(dir.path()).unwrap();
        assert_eq!(ns.dir_count(), 1 + 1 + 200);
        let rows = store.log_rows().unwrap();
        assert!(
            rows < 100,
            "{rows} log rows: snapshots did not truncate the log"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proposals_answered_once_applied_are_logged_in_order_and_rejections_still_reach_the_caller()
     {
        let dir = tempfile::tempdir().unwrap();
        let (store, ns) = Store::open(dir.path()).unwrap();
        let state = Arc::new(Mutex::new(ns));
        let (committer, handle) =
            Committer::start(store, state.clone(), NsOnly, crate::metrics::Metrics::new());
        let mkdir = |path: &str| Command::Mkdir {
            path: path.into(),
            parents: false,
            now_ms: 1,
        };
        // Applied (visible) when the answer comes, before any durable wait.
        committer.propose_applied(mkdir("/a")).await.unwrap();
        assert_eq!(state.lock().unwrap().dir_count(), 2);
        // The parent is missing: the state machine's refusal is the answer.
        assert!(matches!(
            committer.propose_applied(mkdir("/x/y")).await,
            Err(ProposeError::Rejected(_))
        ));
        // A durable command after it depends on it; both are on disk once
        // the durable one is answered.
        committer.propose(mkdir("/a/b")).await.unwrap();
        // The last batch holds plans only: a graceful stop still keeps it.
        committer.propose_applied(mkdir("/c")).await.unwrap();
        drop(committer);
        handle.await.unwrap();
        let (_, ns) = Store::open(dir.path()).unwrap();
        assert_eq!(ns.dir_count(), 4, "/, /a, /a/b and /c replayed in order");
    }

    #[test]
    fn a_non_durable_append_is_flushed_by_the_next_durable_one() {
        let dir = tempfile::tempdir().unwrap();
        let mkdir = |p: &str| Command::Mkdir {
            path: p.into(),
            parents: false,
            now_ms: 1,
        };
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store
            .append(&[serde_json::to_vec(&mkdir("/x")).unwrap()], false)
            .unwrap();
        store
            .append(&[serde_json::to_vec(&mkdir("/x/y")).unwrap()], true)
            .unwrap();
        store
            .append(&[serde_json::to_vec(&mkdir("/z")).unwrap()], false)
            .unwrap();
        store.sync().unwrap();
        drop(store);
        let (store, ns) = Store::open(dir.path()).unwrap();
        assert_eq!(ns.dir_count(), 4);
        assert_eq!(store.last_index(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_survive_reopen_with_and_without_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..2 {
            let (mut store, ns) = Store::open(dir.path()).unwrap();
            assert_eq!(ns.dir_count(), 1 + 51 * round as u64);
            if round == 1 {
                store.write_snapshot(ns.snapshot()).unwrap();
            }
            let state = Arc::new(Mutex::new(ns));
            let (committer, handle) =
                Committer::start(store, state.clone(), NsOnly, crate::metrics::Metrics::new());
            let mut tasks = Vec::new();
            for i in 0..50 {
                let c = committer.clone();
                tasks.push(tokio::spawn(async move {
                    c.propose(Command::Mkdir {
                        path: format!("/r{round}/d{i}"),
                        parents: true,
                        now_ms: 1,
                    })
                    .await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            // A rejected command is not logged.
            assert!(matches!(
                committer
                    .propose(Command::Delete {
                        path: "/".into(),
                        recursive: true
                    })
                    .await,
                Err(ProposeError::Rejected(_))
            ));
            drop(committer);
            handle.await.unwrap();
            // Each round adds 51 directories (r<round> and 50 below it).
            let n = state.lock().unwrap().dir_count();
            assert_eq!(n, 1 + 51 * (round + 1) as u64);
        }
        let (_, ns) = Store::open(dir.path()).unwrap();
        assert_eq!(ns.dir_count(), 1 + 51 * 2);
    }
}
