//! Durable chunk storage on the local disk.
//!
//! Layout under `--data-dir`:
//!
//! ```text
//! node_id                      stable node id (atomic write)
//! tmp/<id>.<n>.tmp             chunks being written (removed at start-up)
//! chunks/<id[0..2]>/<id>      complete chunks; 256 fan-out directories,
//!                              created when the store is opened
//! volumes/<seq>.vol            small chunks, appended (see [`crate::volume`])
//! quarantine/<id>.<n>          corrupt copies kept aside until the
//!                              coordinator has R good replicas elsewhere
//! cluster_id                   the cluster this node joined (fencing)
//! ```
//!
//! A stored chunk id never gets other bytes: every write path (upload,
//! replication, small chunks, repair) ends in [`Store::claim`], which
//! answers an identical retry with what is stored and refuses other bytes
//! with [`StoreError::AlreadyExists`]; chunk files are renamed into place
//! with `RENAME_NOREPLACE`.
//!
//! Chunks of at most `small_chunk_max` bytes go to the volumes, everything
//! larger to its own chunk file.
//!
//! One level of 256 directories, all made at open: a second level (65,536
//! directories) made a fresh store create a directory, and fsync two more,
//! for almost every small chunk, which doubled the cost of a 4 KiB write.
//! ext4's hashed directories keep lookups fast with tens of thousands of
//! entries per directory (millions of chunks per node).
//!
//! A chunk file is the data followed by a table of CRC32C checksums, one per
//! [`BLOCK_BYTES`] block, and a fixed footer (magic, size, whole-chunk
//! checksum, block size, checksum of the table and of the footer itself).
//! Keeping everything in one file means one rename makes a chunk visible
//! atomically; the per-block table lets a range read verify exactly the blocks
//! it touches instead of the whole chunk.
//!
//! Writes go to a temp file (with `O_DIRECT` where the filesystem allows it,
//! see [`crate::staged`]), are fsynced, renamed into place and the directory
//! is fsynced: a crash leaves either nothing visible or the whole chunk.
//! Every method here blocks; async callers use `spawn_blocking`.

use bytes::{Bytes, BytesMut};

use crate::staged::{StagePool, StagedFile};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;
use crate::volume::{PendingPut, Volumes};

pub(crate) use crate::fsio::io_err;
pub use crate::fsio::{StoreError, sync_dir, write_atomic};
pub use crate::table::{ClaimGuard, Delta, Reservation, State, StoredChunk};

const _: () = assert!(crate::volume::MAX_RECORD_DATA == BLOCK_BYTES);

/// Size of a checksummed block inside a chunk file.
pub const BLOCK_BYTES: usize = 256 * 1024;
const FOOTER_LEN: usize = 40;
const MAGIC: &[u8; 8] = b"DFSCHNK1";
/// Environment variable of the crash-safety test: `crash-before-rename` makes
/// the process abort after a chunk's temp file is fsynced and before it is
/// renamed into place, like a power cut at the worst moment.
pub const FAULT_ENV: &str = "DFS_DATANODE_FAULT";

/// A validated chunk id (the shared type): only this type is ever turned
/// into a path, so `../../etc/passwd` cannot reach the file system.
pub use dfs_common::id::ChunkId;

/// A chunk as a write left it: what is stored, and whether this write
/// created it (false: the same bytes were already stored, an idempotent
/// retry; rolling such a write back must not delete them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The chunk as stored.
    pub chunk: StoredChunk,
    /// This write made it.
    pub created: bool,
}

/// Capacity of the node now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Bytes usable by dfs in total.
    pub total: u64,
    /// Bytes free for new chunks (after the reserve and open sessions).
    pub free: u64,
    /// Bytes used by stored chunks.
    pub used: u64,
    /// Bytes promised to open sessions.
    pub promised: u64,
    /// Chunks stored.
    pub chunks: u64,
}

/// What a writer may do with an id (see [`Store::claim`]).
enum Claim {
    /// The same bytes are stored already.
    Stored(StoredChunk),
    /// The id is free and now reserved for this writer.
    New(ClaimGuard),
}

/// Tunables of a store.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Bytes the store may use (`None`: the volume's size).
    pub capacity: Option<u64>,
    /// Bytes of the volume kept free.
    pub reserve: u64,
    /// Chunks of at most this many bytes are appended to the volumes
    /// (group-committed) instead of getting a file each; 0 disables it. At
    /// most [`crate::volume::MAX_RECORD_DATA`].
    pub small_chunk_max: u64,
    /// A volume is sealed and a new one started past this size.
    pub volume_bytes: u64,
    /// Zeros written ahead of a volume's records, this much at a time, so
    /// group commits overwrite allocated blocks (0: the file just grows).
    pub volume_prealloc_bytes: u64,
}

/// Default `small_chunk_max`: 64 KiB, the size up to which a file per chunk
/// costs more in metadata and fsyncs than in data.
pub const DEFAULT_SMALL_CHUNK_MAX: u64 = 64 << 10;
/// Default `volume_bytes`: start-up replay and compaction read one volume
/// into memory at a time, so this bounds that transient memory.
pub const DEFAULT_VOLUME_BYTES: u64 = 32 << 20;
/// Default `volume_prealloc_bytes`: 1 MiB of zeros (about 1 ms of writing)
/// once per 1 MiB of small chunks.
pub const DEFAULT_VOLUME_PREALLOC_BYTES: u64 = 1 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            capacity: None,
            reserve: 0,
            small_chunk_max: DEFAULT_SMALL_CHUNK_MAX,
            volume_bytes: DEFAULT_VOLUME_BYTES,
            volume_prealloc_bytes: DEFAULT_VOLUME_PREALLOC_BYTES,
        }
    }
}

/// How long a statvfs of the data directory stands for the filesystem.
const FS_SAMPLE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The filesystem's size and free space at one moment, with the bytes the
/// store held then.
#[derive(Clone, Copy, Debug)]
struct FsSample {
    at: std::time::Instant,
    total: u64,
    avail: u64,
    used: u64,
}

/// What the capacity is computed from (also used by the volume committer).
#[derive(Clone, Debug)]
struct Space {
    dir: PathBuf,
    capacity: Option<u64>,
    reserve: u64,
    /// The last statvfs: every upload asks for capacity (under the store
    /// lock, on an async thread), so the syscall runs at most once per
    /// [`FS_SAMPLE_TTL`] and the bytes stored since are subtracted.
    fs: Arc<Mutex<Option<FsSample>>>,
}

impl Space {
    fn new(dir: PathBuf, capacity: Option<u64>, reserve: u64) -> Self {
        Space {
            dir,
            capacity,
            reserve,
            fs: Arc::default(),
        }
    }

    /// The filesystem's total and available bytes, from a sample at most
    /// [`FS_SAMPLE_TTL`] old, less what the store wrote since it.
    fn filesystem(&self, used: u64) -> (u64, u64) {
        let mut sample = self.fs.lock().expect("fs sample lock");
        let sample = match *sample {
            Some(s) if s.at.elapsed() < FS_SAMPLE_TTL => s,
            _ => {
                let (total, avail) = match rustix::fs::statvfs(&self.dir) {
                    Ok(s) => (
                        s.f_blocks.saturating_mul(s.f_frsize),
                        s.f_bavail.saturating_mul(s.f_frsize),
                    ),
                    Err(e) => {
                        tracing::warn!("failed to statvfs the data directory: {e}");
                        (0, 0)
                    }
                };
                *sample.insert(FsSample {
                    at: std::time::Instant::now(),
                    total,
                    avail,
                    used,
                })
            }
        };
        (
            sample.total,
            sample
                .avail
                .saturating_sub(used.saturating_sub(sample.used)),
        )
    }

    fn capacity(&self, st: &State) -> Capacity {
        let (fs_total, fs_avail) = self.filesystem(st.used);
        let volume_free = fs_avail.saturating_sub(self.reserve);
        let (total, free) = match self.capacity {
            Some(cap) => (cap, cap.saturating_sub(st.used).min(volume_free)),
            None => (fs_total.saturating_sub(self.reserve), volume_free),
        };
        Capacity {
            total,
            free: free.saturating_sub(st.promised),
            used: st.used,
            promised: st.promised,
            chunks: st.chunks.len() as u64,
        }
    }

    fn publish(&self, st: &State, metrics: &Metrics) {
        let cap = self.capacity(st);
        metrics.chunks_stored.set(cap.chunks as i64);
        metrics.capacity_used.set(cap.used as i64);
        metrics.capacity_free.set(cap.free as i64);
        metrics.capacity_total.set(cap.total as i64);
        metrics.capacity_reserved.set(cap.promised as i64);
        let (live, garbage) = st.index.bytes();
        metrics
            .volume_bytes
            .with_label_values(&["live"])
            .set(live as i64);
        metrics
            .volume_bytes
            .with_label_values(&["garbage"])
            .set(garbage as i64);
    }
}

/// The chunk store of one data directory.
pub struct Store {
    me: std::sync::Weak<Store>,
    chunks_dir: PathBuf,
    tmp_dir: PathBuf,
    quarantine_dir: PathBuf,
    space: Space,
    state: Arc<Mutex<State>>,
    metrics: Metrics,
    tmp_seq: AtomicU64,
    crash_before_rename: bool,
    stages: Arc<StagePool>,
    small_chunk_max: u64,
    volumes: Volumes,
    /// Bytes of chunk files received but not yet written, across every
    /// stream ([`WRITE_BUFFER_BYTES`]): what bounds this node's memory when
    /// its disk is slower than its peers send, however many streams come.
    write_buffer: Arc<tokio::sync::Semaphore>,
    /// Chunk files being written at once ([`CONCURRENT_FILE_WRITES`]):
    /// replicas' copies in one pool, primaries' own copies in another, so
    /// that primaries waiting on a turn never wait on replica streams whose
    /// own primaries wait on them (two nodes replicating to each other).
    file_writers: Arc<tokio::sync::Semaphore>,
    primary_writers: Arc<tokio::sync::Semaphore>,
}

/// Chunk files a node writes at once, as replicas, and again as primaries
/// (two pools). Each holds a staging buffer and a
/// thread; a stream beyond them waits, its bytes held back by HTTP/2 flow
/// control in its sender (where a primary drops a replica that falls
/// behind its write quorum), so a slow disk with many peers sending to it
/// does not grow this node's memory with the number of streams.
pub const CONCURRENT_FILE_WRITES: usize = 16;

/// Bytes of chunk-file frames a node holds queued for its disk at once.
/// A stream waits (and, through HTTP/2 flow control, its sender) when they
/// are spent.
pub const WRITE_BUFFER_BYTES: usize = 32 << 20;

impl Store {
    /// Opens (creating if needed) the store in `data_dir`: removes leftovers of
    /// interrupted writes and indexes the chunks present. Chunks whose footer
    /// does not validate are removed and reported as corrupt.
    pub fn open(
        data_dir: &Path,
        options: StoreOptions,
        metrics: Metrics,
    ) -> Result<Arc<Store>, StoreError> {
        let chunks_dir = data_dir.join("chunks");
        let tmp_dir = data_dir.join("tmp");
        // Durable by name in the data directory (and it in its parent): a
        // power cut must not take `chunks/` with every chunk in it.
        dfs_common::durable::create_dir_all(&chunks_dir).map_err(io_err("create", &chunks_dir))?;
        let mut created = false;
        for fan in 0..=255u8 {
            let sub = chunks_dir.join(format!("{fan:02x}"));
            match fs::create_dir(&sub) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", &sub)(e)),
            }
        }
        if created {
            sync_dir(&chunks_dir)?;
        }
        dfs_common::durable::create_dir_all(&tmp_dir).map_err(io_err("create", &tmp_dir))?;
        let quarantine_dir = data_dir.join("quarantine");
        dfs_common::durable::create_dir_all(&quarantine_dir)
            .map_err(io_err("create", &quarantine_dir))?;
        let mut cleaned = 0;
        for entry in fs::read_dir(&tmp_dir).map_err(io_err("list", &tmp_dir))? {
            let entry = entry.map_err(io_err("list", &tmp_dir))?;
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_err("remove leftover", &path))?;
            cleaned += 1;
        }
        if cleaned > 0 {
            tracing::info!(cleaned, "removed leftovers of interrupted writes");
            sync_dir(&tmp_dir)?;
        }
        let space = Space::new(chunks_dir.clone(), options.capacity, options.reserve);
        let state = Arc::new(Mutex::new(State::default()));
        let (volumes, replayed) = {
            let space = space.clone();
            let m = metrics.clone();
            Volumes::open(
                &data_dir.join("volumes"),
                options.volume_bytes,
                options.volume_prealloc_bytes,
                state.clone(),
                metrics.clone(),
                Box::new(move |st| space.publish(st, &m)),
            )?
        };
        let store = Arc::new_cyclic(|me| Store {
            me: me.clone(),
            chunks_dir,
            tmp_dir,
            quarantine_dir,
            space,
            state,
            metrics,
            tmp_seq: AtomicU64::new(0),
            stages: Arc::new(StagePool::default()),
            crash_before_rename: std::env::var(FAULT_ENV).as_deref() == Ok("crash-before-rename"),
            small_chunk_max: options
                .small_chunk_max
                .min(crate::volume::MAX_RECORD_DATA as u64),
            volumes,
            write_buffer: Arc::new(tokio::sync::Semaphore::new(WRITE_BUFFER_BYTES)),
            file_writers: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_FILE_WRITES)),
            primary_writers: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_FILE_WRITES)),
        });
        store.scan(replayed)?;
        Ok(store)
    }

    fn scan(&self, replayed: crate::volume::Replayed) -> Result<(), StoreError> {
        let mut found = Vec::new();
        let mut bad = Vec::new();
        let mut unavailable = Vec::new();
        let mut quarantined = Vec::new();
        for entry in
            fs::read_dir(&self.quarantine_dir).map_err(io_err("list", &self.quarantine_dir))?
        {
            let entry = entry.map_err(io_err("list", &self.quarantine_dir))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.split('.').next())
                .and_then(|n| ChunkId::parse(n).ok())
                && !quarantined.contains(&id)
            {
                quarantined.push(id);
            }
        }
        for l1 in read_dir_sorted(&self.chunks_dir)? {
            for file in read_dir_sorted(&l1)? {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let Ok(id) = ChunkId::parse(name) else {
                    tracing::warn!(path = %file.display(), "ignoring unexpected file in chunk store");
                    continue;
                };
                if file != self.chunk_path(&id) {
                    tracing::warn!(path = %file.display(), "ignoring chunk in the wrong directory");
                    continue;
                }
                match ChunkReader::open_path(&id, &file) {
                    Ok(r) => found.push((id, r.meta())),
                    Err(e @ StoreError::Corrupt { .. }) => {
                        tracing::warn!("quarantining a corrupt chunk at start-up: {e:#}");
                        bad.push(id);
                    }
                    Err(e) => {
                        // An I/O error says nothing about the bytes: keep the
                        // file, do not serve or report it (the coordinator
                        // repairs around it), never call it corrupt.
                        tracing::error!(
                            "chunk unavailable (I/O error at start-up), kept in place: {e:#}"
                        );
                        unavailable.push(id);
                    }
                }
            }
        }
        {
            let mut st = self.state.lock().expect("store lock");
            for (id, meta) in found {
                st.used += meta.size;
                st.chunks.insert(id, meta);
            }
            st.unavailable = unavailable;
            self.metrics.quarantined.set(quarantined.len() as i64);
            // Reported again after every start: the coordinator keeps its
            // view in memory only, and orders the copies deleted once it
            // has R good replicas elsewhere.
            for id in &quarantined {
                if !st.delta.corrupt.contains(id) {
                    st.delta.corrupt.push(id.clone());
                }
            }
            st.quarantined = quarantined;
            st.index = replayed.index;
            let mut small = 0;
            for (id, meta) in replayed.chunks {
                if st.chunks.contains_key(&id) {
                    // Also stored as a file (written before the small-chunk
                    // limit changed): the file wins, the record is garbage.
                    st.index.remove(&id);
                } else {
                    st.used += meta.size;
                    st.chunks.insert(id, meta);
                    small += 1;
                }
            }
            tracing::debug!(small, "small chunks replayed from the volumes");
            for id in replayed.corrupt {
                if !st.delta.corrupt.contains(&id) {
                    st.delta.corrupt.push(id);
                }
            }
        }
        for id in bad {
            self.mark_corrupt(&id, "unreadable footer at start-up");
        }
        self.update_gauges();
        tracing::info!(chunks = self.chunk_count(), "chunk store opened");
        Ok(())
    }

    /// Where chunk `id` lives.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let s = id.as_str();
        self.chunks_dir.join(&s[0..2]).join(s)
    }

    /// The stored chunk, if any.
    pub fn get(&self, id: &ChunkId) -> Option<StoredChunk> {
        self.state
            .lock()
            .expect("store lock")
            .chunks
            .get(id)
            .copied()
    }

    /// Number of chunks stored.
    pub fn chunk_count(&self) -> u64 {
        self.state.lock().expect("store lock").chunks.len() as u64
    }

    /// Ids of every stored chunk (for the scrubber).
    pub fn ids(&self) -> Vec<ChunkId> {
        let mut ids: Vec<_> = self
            .state
            .lock()
            .expect("store lock")
            .chunks
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Every stored chunk, for a full report. The incremental additions and
    /// removals pending so far are cleared, since the full report covers them.
    pub fn full_report(&self) -> Vec<(ChunkId, StoredChunk)> {
        let mut st = self.state.lock().expect("store lock");
        st.delta.added.clear();
        st.delta.removed.clear();
        st.chunks.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Takes the changes since the previous call.
    pub fn take_delta(&self) -> Delta {
        std::mem::take(&mut self.state.lock().expect("store lock").delta)
    }

    /// Capacity now: the volume (statvfs) or `--capacity`, minus the reserve,
    /// minus what open sessions were promised.
    pub fn capacity(&self) -> Capacity {
        self.space.capacity(&self.state.lock().expect("store lock"))
    }

    /// Promises `bytes` to a session; RESOURCE_EXHAUSTED-style refusal when
    /// they do not fit next to what is already promised. The promise is
    /// released when the returned guard drops.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, StoreError> {
        let mut st = self.state.lock().expect("store lock");
        let cap = self.space.capacity(&st);
        if bytes > cap.free {
            return Err(StoreError::NoSpace {
                needed: bytes,
                free: cap.free,
            });
        }
        st.promised += bytes;
        self.metrics.capacity_reserved.set(st.promised as i64);
        Ok(Reservation {
            state: self.state.clone(),
            gauge: self.metrics.capacity_reserved.clone(),
            bytes,
        })
    }

    /// Immutability: `id` may be written with `meta` only if it is not stored
    /// (then it is claimed until the returned guard drops) or stored with
    /// the same size and checksum (an idempotent retry: nothing is written).
    fn claim(&self, id: &ChunkId, meta: StoredChunk) -> Result<Claim, StoreError> {
        let mut st = self.state.lock().expect("store lock");
        if let Some(have) = st.chunks.get(id).copied() {
            if have == meta {
                // Reported again: a repair that found the copy already
                // here is then completed, not timed out.
                st.delta.added.push((id.clone(), have));
                return Ok(Claim::Stored(have));
            }
            self.metrics.rewrites_refused.inc();
            return Err(StoreError::AlreadyExists {
                chunk_id: id.clone(),
                reason: format!(
                    "stored: {} bytes, crc32c {:08x}; offered: {} bytes, crc32c {:08x}",
                    have.size, have.checksum, meta.size, meta.checksum
                ),
            });
        }
        if st.unavailable.contains(id) {
            self.metrics.rewrites_refused.inc();
            return Err(StoreError::AlreadyExists {
                chunk_id: id.clone(),
                reason: "its file could not be read at start-up and is kept in place".into(),
            });
        }
        if st.claims.contains_key(id) {
            return Err(StoreError::Concurrent {
                chunk_id: id.clone(),
            });
        }
        st.claims.insert(id.clone(), meta);
        Ok(Claim::New(ClaimGuard {
            state: self.state.clone(),
            id: id.clone(),
        }))
    }

    fn self_arc(&self) -> Arc<Store> {
        self.me.upgrade().expect("the store is alive while used")
    }

    /// Refuses early (before any byte is received) a write whose announced
    /// size and checksum differ from what `id` holds; `Ok(true)` when the
    /// same chunk is stored already.
    pub fn check_writable(
        &self,
        id: &ChunkId,
        size: u64,
        checksum: Option<u32>,
    ) -> Result<bool, StoreError> {
        let st = self.state.lock().expect("store lock");
        match st.chunks.get(id) {
            Some(have) if have.size == size && checksum.is_none_or(|c| c == have.checksum) => {
                Ok(checksum.is_some())
            }
            Some(have) => {
                self.metrics.rewrites_refused.inc();
                Err(StoreError::AlreadyExists {
                    chunk_id: id.clone(),
                    reason: format!(
                        "stored: {} bytes, crc32c {:08x}; announced: {size} bytes, crc32c {}",
                        have.size,
                        have.checksum,
                        checksum.map_or("unknown".to_string(), |c| format!("{c:08x}"))
                    ),
                })
            }
            None => Ok(false),
        }
    }

    /// Starts writing chunk `id` into a fresh temp file.
    pub fn create_writer(self: &Arc<Self>, id: &ChunkId) -> Result<ChunkWriter, StoreError> {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp_dir.join(format!("{id}.{n}.tmp"));
        let file = StagedFile::create(&tmp, self.stages.clone()).map_err(io_err("create", &tmp))?;
        Ok(ChunkWriter {
            store: self.clone(),
            id: id.clone(),
            file: Some(file),
            tmp,
            size: 0,
            crc: 0,
            block_crc: 0,
            block_len: 0,
            table: Vec::new(),
        })
    }

    /// Renames the finished temp file into place and records the chunk; the
    /// session's `reservation` turns into used space in the same step.
    fn commit(
        &self,
        id: &ChunkId,
        tmp: &Path,
        meta: StoredChunk,
        reservation: Option<Reservation>,
    ) -> Result<bool, StoreError> {
        let _claim = match self.claim(id, meta)? {
            Claim::Stored(_) => {
                // The same bytes are there already: keep them, drop ours.
                let _ = fs::remove_file(tmp);
                return Ok(false);
            }
            Claim::New(guard) => guard,
        };
        let dest = self.chunk_path(id);
        let parent = dest.parent().expect("chunk path has a parent");
        if self.crash_before_rename {
            tracing::error!(chunk_id = %id, "fault injection: aborting before rename");
            std::process::abort();
        }
        // Never over an existing file (one the index does not list, e.g.
        // unreadable at start-up): chunk ids are immutable on disk too.
        let rename = |from: &Path, to: &Path| {
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                from,
                rustix::fs::CWD,
                to,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                // A filesystem without RENAME_NOREPLACE: a hard link fails
                // the same way on an existing name, then the temp name goes.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                    fs::hard_link(from, to)?;
                    fs::remove_file(from)
                }
                r => r.map_err(io::Error::from),
            }
        };
        if let Err(e) = rename(tmp, &dest) {
            if e.kind() == io::ErrorKind::AlreadyExists {
                self.metrics.rewrites_refused.inc();
                return Err(StoreError::AlreadyExists {
                    chunk_id: id.clone(),
                    reason: "a file of that name is already on disk".into(),
                });
            }
            if e.kind() != io::ErrorKind::NotFound || !tmp.exists() {
                return Err(io_err("rename into place", &dest)(e));
            }
            // The fan-out directory made at open is gone (removed by hand):
            // make it again, durably, and retry once.
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            sync_dir(&self.chunks_dir)?;
            rename(tmp, &dest).map_err(io_err("rename into place", &dest))?;
        }
        if let Err(e) = sync_dir(parent) {
            // The name is in place but not durable, and the chunk is not
            // indexed: take the name back, or it would sit on disk unknown,
            // refusing every later copy of this id until a restart.
            if let Err(undo) = fs::remove_file(&dest) {
                tracing::error!(chunk_id = %id, "failed to take back a chunk whose directory could not be synced: {undo}");
            }
            return Err(e);
        }
        let mut reservation = reservation;
        {
            let mut st = self.state.lock().expect("store lock");
            if st.index.remove(id).is_some() {
                // Replaces a small copy (the limit changed): forget it.
                self.volumes.delete(id);
            }
            st.insert_chunk(id.clone(), meta);
            if let Some(r) = reservation.as_mut() {
                r.settle(&mut st);
            }
        }
        self.after_good_copy(id);
        self.update_gauges();
        // Settled above (a no-op drop): the gauges just published already
        // count these bytes once, as used.
        drop(reservation);
        Ok(true)
    }

    /// A verified copy of `id` is stored again (a repair): the corrupt one
    /// kept aside is worthless now.
    fn after_good_copy(&self, id: &ChunkId) {
        if let Err(e) = self.drop_quarantined(id) {
            tracing::warn!(chunk_id = %id, "failed to drop the quarantined copy: {e}");
        }
    }

    /// Room for `bytes` more in the write buffer ([`WRITE_BUFFER_BYTES`]),
    /// held until they are written.
    pub async fn buffer_permit(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        let n = bytes.clamp(1, WRITE_BUFFER_BYTES) as u32;
        self.write_buffer
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the write buffer is never closed")
    }

    /// Room for `bytes` more in the write buffer, if there is some now.
    pub fn try_buffer_permit(&self, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let n = bytes.clamp(1, WRITE_BUFFER_BYTES) as u32;
        self.write_buffer.clone().try_acquire_many_owned(n).ok()
    }

    /// A turn to write one chunk file, if one is free now.
    pub fn try_writer_slot(&self, primary: bool) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.writers(primary).clone().try_acquire_owned().ok()
    }

    fn writers(&self, primary: bool) -> &Arc<tokio::sync::Semaphore> {
        if primary {
            &self.primary_writers
        } else {
            &self.file_writers
        }
    }

    /// A turn to write one chunk file ([`CONCURRENT_FILE_WRITES`]), held
    /// until it is stored or given up.
    pub async fn writer_slot(&self, primary: bool) -> tokio::sync::OwnedSemaphorePermit {
        self.writers(primary)
            .clone()
            .acquire_owned()
            .await
            .expect("the writer slots are never closed")
    }

    /// True when a chunk of `size` bytes goes to the volumes.
    pub fn is_small(&self, size: u64) -> bool {
        size > 0 && size <= self.small_chunk_max
    }

    /// Queues a whole small chunk (see [`Store::is_small`]) for the next group
    /// commit; the returned [`SmallPut`] resolves once it is durable. The
    /// size and checksum are checked here, before anything is written, and
    /// so is immutability (the same bytes again resolve at once).
    pub fn put_small(
        &self,
        id: &ChunkId,
        parts: Vec<Bytes>,
        expected_size: u64,
        expected_checksum: Option<u32>,
    ) -> Result<SmallPut, StoreError> {
        self.put_small_reserved(id, parts, expected_size, expected_checksum, None)
    }

    /// [`Store::put_small`] for a session that was promised the space:
    /// `reservation` turns into used space when the chunk is indexed.
    pub fn put_small_reserved(
        &self,
        id: &ChunkId,
        parts: Vec<Bytes>,
        expected_size: u64,
        expected_checksum: Option<u32>,
        reservation: Option<Reservation>,
    ) -> Result<SmallPut, StoreError> {
        let size: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if size != expected_size {
            return Err(StoreError::Mismatch {
                chunk_id: id.clone(),
                reason: format!("received {size} bytes, expected {expected_size}"),
            });
        }
        if !self.is_small(size) {
            return Err(StoreError::Mismatch {
                chunk_id: id.clone(),
                reason: format!(
                    "{size} bytes is not a small chunk (at most {} bytes)",
                    self.small_chunk_max
                ),
            });
        }
        let crc = parts
            .iter()
            .fold(0, |c, p| dfs_proto::frame::checksum_append(c, p));
        if let Some(want) = expected_checksum
            && want != crc
        {
            return Err(StoreError::Mismatch {
                chunk_id: id.clone(),
                reason: format!(
                    "checksum mismatch: data has crc32c {crc:08x}, expected {want:08x}"
                ),
            });
        }
        let meta = StoredChunk {
            size,
            checksum: crc,
        };
        match self.claim(id, meta)? {
            Claim::Stored(chunk) => Ok(SmallPut::Stored(chunk)),
            Claim::New(guard) => Ok(SmallPut::Pending {
                pending: self
                    .volumes
                    .put(id, parts, size as u32, crc, Some(guard), reservation),
                store: self.self_arc(),
                id: id.clone(),
            }),
        }
    }

    /// Deletes chunk `id`; `Ok(false)` when it was not stored (still a
    /// success: deletes are idempotent). The removal is reported either way so
    /// the coordinator forgets the replica.
    pub fn delete(&self, id: &ChunkId) -> Result<bool, StoreError> {
        if self
            .state
            .lock()
            .expect("store lock")
            .claims
            .contains_key(id)
        {
            // Between its rename and its index entry: a delete now would
            // leave an indexed chunk without a file.
            return Err(StoreError::Concurrent {
                chunk_id: id.clone(),
            });
        }
        // A copy set aside as unreadable is deleted with the rest: the id
        // may then take a good copy again.
        self.state
            .lock()
            .expect("store lock")
            .unavailable
            .retain(|u| u != id);
        let quarantined = self.drop_quarantined(id)?;
        if quarantined && self.get(id).is_none() {
            return Ok(true);
        }
        {
            let mut st = self.state.lock().expect("store lock");
            if st.index.remove(id).is_some() {
                st.remove_chunk(id);
                drop(st);
                // Durable with the next group commit: a delete lost in a
                // crash brings the chunk back, and the coordinator deletes
                // it again as an orphan.
                self.volumes.delete(id);
                self.update_gauges();
                return Ok(true);
            }
        }
        let path = self.chunk_path(id);
        let existed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err("remove", &path)(e)),
        };
        if existed && let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        {
            let mut st = self.state.lock().expect("store lock");
            if let Some(old) = st.chunks.remove(id) {
                st.used -= old.size;
            }
            st.delta.removed.push(id.clone());
        }
        self.update_gauges();
        Ok(existed)
    }

    /// Quarantines a chunk whose bytes no longer match: it is moved aside to
    /// `quarantine/` (a small chunk's record bytes are copied there), no
    /// longer served or counted, and reported as corrupt so the coordinator
    /// re-replicates it from a good copy. It is never deleted here: the copy
    /// goes only when the coordinator orders it (once R good replicas exist
    /// elsewhere), so the last copy of a chunk is never lost to a verdict.
    pub fn mark_corrupt(&self, id: &ChunkId, reason: &str) {
        tracing::error!(chunk_id = %id, reason, "chunk is corrupt; quarantining it");
        // Unique across restarts: never over an older copy of the same id.
        let aside = self
            .quarantine_dir
            .join(format!("{id}.{:016x}", rand::random::<u64>()));
        let small = {
            let st = self.state.lock().expect("store lock");
            st.index.locs.get(id).copied()
        };
        let moved = match small {
            Some(loc) => self
                .volumes
                .file(loc.volume)
                .ok_or_else(|| io::Error::other("volume gone"))
                .and_then(|(file, _)| {
                    let mut buf = vec![0u8; loc.size as usize];
                    file.read_exact_at(&mut buf, loc.data_offset())?;
                    let mut out = File::create(&aside)?;
                    out.write_all(&buf)?;
                    out.sync_all()
                }),
            None => fs::rename(self.chunk_path(id), &aside),
        };
        let moved =
            moved.and_then(|()| File::open(&self.quarantine_dir).and_then(|d| d.sync_all()));
        let kept_aside = match moved {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                // Left where it is (not served): better than lost.
                tracing::error!(chunk_id = %id, "failed to move a corrupt chunk aside, left in place: {e}");
                false
            }
        };
        if small.is_some() {
            self.state.lock().expect("store lock").index.remove(id);
            // The record stays in its volume unless its bytes are safe in
            // quarantine/ (a restart then finds and reports it again).
            if kept_aside {
                self.volumes.delete(id);
            }
        }
        {
            let mut st = self.state.lock().expect("store lock");
            if let Some(old) = st.chunks.remove(id) {
                st.used -= old.size;
            }
            if !st.delta.corrupt.contains(id) {
                st.delta.corrupt.push(id.clone());
            }
            if !st.quarantined.contains(id) {
                st.quarantined.push(id.clone());
            }
            self.metrics.quarantined.set(st.quarantined.len() as i64);
        }
        self.update_gauges();
    }

    /// A read of `id` failed with an I/O error while running: as at
    /// start-up, an I/O error says nothing about the bytes, so the file (or
    /// volume record) is kept where it is, never deleted, no longer served,
    /// and reported gone from this node, so the coordinator repairs around
    /// it. A restart reads it again.
    pub fn mark_unavailable(&self, id: &ChunkId, reason: &str) {
        {
            let mut st = self.state.lock().expect("store lock");
            if st.unavailable.contains(id) || !st.remove_chunk(id) {
                // Already set aside, or deleted meanwhile.
                return;
            }
            st.unavailable.push(id.clone());
        }
        tracing::error!(chunk_id = %id, reason, "chunk unreadable (I/O error): kept in place, no longer served or reported");
        self.update_gauges();
    }

    /// True when a corrupt copy of `id` is kept in `quarantine/`.
    pub fn is_quarantined(&self, id: &ChunkId) -> bool {
        self.state
            .lock()
            .expect("store lock")
            .quarantined
            .contains(id)
    }

    /// Chunks held in `quarantine/` (corrupt copies kept aside).
    pub fn quarantined(&self) -> Vec<ChunkId> {
        self.state.lock().expect("store lock").quarantined.clone()
    }

    /// Chunks whose file could not be read at start-up (kept, not served).
    pub fn unavailable(&self) -> Vec<ChunkId> {
        self.state.lock().expect("store lock").unavailable.clone()
    }

    /// (quarantined, unavailable) counts, for heartbeats.
    pub fn set_aside(&self) -> (u64, u64) {
        let st = self.state.lock().expect("store lock");
        (st.quarantined.len() as u64, st.unavailable.len() as u64)
    }

    /// Removes the quarantined copies of `id` (ordered by the coordinator
    /// once enough good replicas exist); true when there were any.
    pub fn drop_quarantined(&self, id: &ChunkId) -> Result<bool, StoreError> {
        if !self.is_quarantined(id) {
            return Ok(false);
        }
        let prefix = format!("{id}.");
        for entry in
            fs::read_dir(&self.quarantine_dir).map_err(io_err("list", &self.quarantine_dir))?
        {
            let entry = entry.map_err(io_err("list", &self.quarantine_dir))?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
            }
        }
        sync_dir(&self.quarantine_dir)?;
        let mut st = self.state.lock().expect("store lock");
        st.quarantined.retain(|q| q != id);
        self.metrics.quarantined.set(st.quarantined.len() as i64);
        Ok(true)
    }

    /// Opens chunk `id` for reading (footer and block table validated).
    pub fn open_reader(&self, id: &ChunkId) -> Result<ChunkReader, StoreError> {
        let not_found = || StoreError::NotFound {
            chunk_id: id.clone(),
        };
        // Twice: compaction may move a small chunk between the index lookup
        // and the open of its volume.
        for _ in 0..2 {
            let (meta, loc) = {
                let st = self.state.lock().expect("store lock");
                let meta = *st.chunks.get(id).ok_or_else(not_found)?;
                (meta, st.index.locs.get(id).copied())
            };
            let Some(loc) = loc else { break };
            if let Some((file, path)) = self.volumes.file(loc.volume) {
                return Ok(ChunkReader::small(id, file, path, loc.data_offset(), meta));
            }
        }
        if self.get(id).is_none() {
            return Err(not_found());
        }
        match ChunkReader::open_path(id, &self.chunk_path(id)) {
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound {
                    chunk_id: id.clone(),
                })
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                self.metrics
                    .checksum_failures
                    .with_label_values(&["read"])
                    .inc();
                self.mark_corrupt(id, &e.to_string());
                Err(e)
            }
            other => other,
        }
    }

    /// Refreshes the capacity gauges.
    pub fn update_gauges(&self) {
        let st = self.state.lock().expect("store lock");
        self.space.publish(&st, &self.metrics);
    }

    /// Compacts one small-chunk volume that is at least half garbage, if
    /// any (the committer also does it whenever it is idle); true when one
    /// was.
    pub fn compact_volumes(&self) -> Result<bool, StoreError> {
        self.volumes.compact()
    }

    /// Stops the volume committer once everything queued is written (also
    /// done on drop; call it before reopening the same directory while
    /// other references may still be alive).
    pub fn close(&self) {
        self.volumes.close();
    }

    /// Why the store cannot write, if it cannot (for the probes).
    pub fn broken(&self) -> Option<String> {
        (!self.volumes.committer_alive())
            .then(|| "the small-chunk volume committer stopped".to_string())
    }

    /// The metrics the store updates.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// A small chunk put: already stored, or waiting for its group commit.
pub enum SmallPut {
    /// The same bytes were stored already.
    Stored(StoredChunk),
    /// Queued (the id stays claimed by the queued record).
    Pending {
        /// Resolves once durable.
        pending: PendingPut,
        /// The store it goes to.
        store: Arc<Store>,
        /// The chunk.
        id: ChunkId,
    },
}

impl SmallPut {
    /// Waits until durable; says whether this put created the chunk.
    pub async fn wait_stored(self) -> Result<Stored, StoreError> {
        match self {
            SmallPut::Stored(chunk) => Ok(Stored {
                chunk,
                created: false,
            }),
            SmallPut::Pending { pending, store, id } => {
                let r = pending.wait().await;
                // Dropping a quarantined copy is file I/O: off the async
                // threads (and only when there is one, which is rare).
                if r.is_ok() && store.is_quarantined(&id) {
                    let _ = tokio::task::spawn_blocking(move || store.after_good_copy(&id)).await;
                }
                r.map(|chunk| Stored {
                    chunk,
                    created: true,
                })
            }
        }
    }

    /// Waits until durable.
    pub async fn wait(self) -> Result<StoredChunk, StoreError> {
        self.wait_stored().await.map(|s| s.chunk)
    }

    /// The same, from a blocking thread.
    pub fn wait_blocking(self) -> Result<StoredChunk, StoreError> {
        match self {
            SmallPut::Stored(chunk) => Ok(chunk),
            SmallPut::Pending { pending, store, id } => {
                let r = pending.wait_blocking();
                if r.is_ok() {
                    store.after_good_copy(&id);
                }
                r
            }
        }
    }
}

/// A chunk being written to its temp file. Dropping it without
/// [`ChunkWriter::finish`] removes the temp file: nothing partial stays.
pub struct ChunkWriter {
    store: Arc<Store>,
    id: ChunkId,
    file: Option<StagedFile>,
    tmp: PathBuf,
    size: u64,
    crc: u32,
    block_crc: u32,
    block_len: usize,
    table: Vec<u8>,
}

impl ChunkWriter {
    /// Appends `data`, updating the whole-chunk and per-block checksums.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        let file = self.file.as_mut().expect("writer not finished");
        file.write(data).map_err(io_err("write", &self.tmp))?;
        self.size += data.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, data);
        while !data.is_empty() {
            let n = (BLOCK_BYTES - self.block_len).min(data.len());
            self.block_crc = crc32c::crc32c_append(self.block_crc, &data[..n]);
            self.block_len += n;
            data = &data[n..];
            if self.block_len == BLOCK_BYTES {
                self.table.extend_from_slice(&self.block_crc.to_le_bytes());
                self.block_crc = 0;
                self.block_len = 0;
            }
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks the size (and the checksum when known), appends the block table
    /// and footer, fsyncs, renames into place and fsyncs the directory.
    pub fn finish(
        self,
        expected_size: u64,
        expected_checksum: Option<u32>,
    ) -> Result<StoredChunk, StoreError> {
        self.finish_stored(expected_size, expected_checksum)
            .map(|s| s.chunk)
    }

    /// [`ChunkWriter::finish`], saying whether this write created the chunk
    /// (false: the same bytes were stored already). Other bytes under a
    /// stored id are refused with [`StoreError::AlreadyExists`].
    pub fn finish_stored(
        self,
        expected_size: u64,
        expected_checksum: Option<u32>,
    ) -> Result<Stored, StoreError> {
        self.finish_reserved(expected_size, expected_checksum, None)
    }

    /// [`ChunkWriter::finish_stored`] for a session that was promised the
    /// space: `reservation` turns into used space when the chunk is
    /// recorded (released if it is not).
    pub fn finish_reserved(
        mut self,
        expected_size: u64,
        expected_checksum: Option<u32>,
        reservation: Option<Reservation>,
    ) -> Result<Stored, StoreError> {
        if self.size != expected_size {
            return Err(StoreError::Mismatch {
                chunk_id: self.id.clone(),
                reason: format!("received {} bytes, expected {expected_size}", self.size),
            });
        }
        if let Some(want) = expected_checksum
            && want != self.crc
        {
            return Err(StoreError::Mismatch {
                chunk_id: self.id.clone(),
                reason: format!(
                    "checksum mismatch: data has crc32c {:08x}, expected {want:08x}",
                    self.crc
                ),
            });
        }
        if self.block_len > 0 {
            self.table.extend_from_slice(&self.block_crc.to_le_bytes());
        }
        let footer = Footer {
            size: self.size,
            checksum: self.crc,
            block_bytes: BLOCK_BYTES as u32,
            table_crc: crc32c::crc32c(&self.table),
        }
        .encode();
        let mut staged = self.file.take().expect("writer not finished");
        let tmp = self.tmp.clone();
        let result = (|| {
            staged.write(&self.table).map_err(io_err("write", &tmp))?;
            staged.write(&footer).map_err(io_err("write", &tmp))?;
            let file = staged.finish().map_err(io_err("write", &tmp))?;
            file.sync_all().map_err(io_err("fsync", &tmp))?;
            drop(file);
            let meta = StoredChunk {
                size: self.size,
                checksum: self.crc,
            };
            let created = self.store.commit(&self.id, &tmp, meta, reservation)?;
            Ok(Stored {
                chunk: meta,
                created,
            })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        // Either renamed or removed: nothing for Drop to clean.
        self.tmp = PathBuf::new();
        result
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file.take();
            if let Err(e) = fs::remove_file(&self.tmp)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %self.tmp.display(), "failed to remove partial chunk: {e}");
            }
        }
    }
}

struct Footer {
    size: u64,
    checksum: u32,
    block_bytes: u32,
    table_crc: u32,
}

impl Footer {
    fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&self.checksum.to_le_bytes());
        b[20..24].copy_from_slice(&self.block_bytes.to_le_bytes());
        // Algorithm 1 = CRC32C, as in the protocol's ChecksumAlgorithm.
        b[24..28].copy_from_slice(&1u32.to_le_bytes());
        b[28..32].copy_from_slice(&self.table_crc.to_le_bytes());
        // 32..36 reserved (zero).
        let crc = crc32c::crc32c(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; FOOTER_LEN]) -> Result<Footer, String> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        if &b[0..8] != MAGIC {
            return Err("bad footer magic".into());
        }
        if crc32c::crc32c(&b[..36]) != u32_at(36) {
            return Err("footer checksum mismatch".into());
        }
        if u32_at(24) != 1 {
            return Err(format!("unknown checksum algorithm {}", u32_at(24)));
        }
        let block_bytes = u32_at(20);
        if block_bytes == 0 {
            return Err("zero block size".into());
        }
        Ok(Footer {
            size: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            checksum: u32_at(16),
            block_bytes,
            table_crc: u32_at(28),
        })
    }
}

/// An open chunk whose footer and block table validated. Every byte it hands
/// out belongs to a block whose checksum was verified just before.
pub struct ChunkReader {
    id: ChunkId,
    file: Arc<File>,
    path: PathBuf,
    /// Where the chunk's data starts in `file` (0 for a chunk file).
    base: u64,
    footer: Footer,
    table: Vec<u32>,
}

impl ChunkReader {
    fn open_path(id: &ChunkId, path: &Path) -> Result<ChunkReader, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            chunk_id: id.clone(),
            reason,
        };
        let file = File::open(path).map_err(io_err("open", path))?;
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        if len < FOOTER_LEN as u64 {
            return Err(corrupt(format!("file of {len} bytes has no footer")));
        }
        let mut fb = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut fb, len - FOOTER_LEN as u64)
            .map_err(io_err("read footer", path))?;
        let footer = Footer::decode(&fb).map_err(corrupt)?;
        let blocks = footer.size.div_ceil(footer.block_bytes as u64);
        if footer.size + blocks * 4 + FOOTER_LEN as u64 != len {
            return Err(corrupt(format!(
                "file length {len} does not match size {}",
                footer.size
            )));
        }
        let mut raw = vec![0u8; blocks as usize * 4];
        file.read_exact_at(&mut raw, footer.size)
            .map_err(io_err("read block table", path))?;
        if crc32c::crc32c(&raw) != footer.table_crc {
            return Err(corrupt("block table checksum mismatch".into()));
        }
        let table = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(ChunkReader {
            id: id.clone(),
            file: Arc::new(file),
            path: path.to_path_buf(),
            base: 0,
            footer,
            table,
        })
    }

    /// A small chunk inside a volume: one block, whose checksum is the
    /// chunk's.
    fn small(id: &ChunkId, file: Arc<File>, path: PathBuf, base: u64, meta: StoredChunk) -> Self {
        ChunkReader {
            id: id.clone(),
            file,
            path,
            base,
            footer: Footer {
                size: meta.size,
                checksum: meta.checksum,
                block_bytes: BLOCK_BYTES as u32,
                table_crc: 0,
            },
            table: if meta.size > 0 {
                vec![meta.checksum]
            } else {
                Vec::new()
            },
        }
    }

    /// Size and checksum recorded for the chunk.
    pub fn meta(&self) -> StoredChunk {
        StoredChunk {
            size: self.footer.size,
            checksum: self.footer.checksum,
        }
    }

    /// Reads `[offset, offset + length)` (length 0 = to the end), block by
    /// block straight into `buf` (reused by the caller: its allocation is
    /// taken back once every piece cut from it has been dropped), verifying
    /// each block before passing the requested part of it to `emit` as a
    /// [`Piece`]. A whole-chunk read also checks the whole-chunk checksum,
    /// extended from the block checksums (a table lookup per full block)
    /// rather than a second pass over the bytes. `emit` returning false stops the read with
    /// [`StoreError::Cancelled`].
    pub fn read_range(
        &self,
        offset: u64,
        length: u64,
        buf: &mut BytesMut,
        mut emit: impl FnMut(Piece) -> bool,
    ) -> Result<(), StoreError> {
        let size = self.footer.size;
        let length = if length == 0 {
            size.saturating_sub(offset)
        } else {
            length
        };
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= size && offset <= size)
            .ok_or_else(|| StoreError::OutOfRange {
                chunk_id: self.id.clone(),
                offset,
                length,
                size,
            })?;
        if length == 0 {
            return Ok(());
        }
        if length >= PREFETCH_MIN_BYTES {
            // Chunks are written with O_DIRECT, so a read usually starts
            // cold: ask the kernel to read the whole range ahead
            // asynchronously (WILLNEED) so the disk streams while blocks are
            // verified and sent, instead of one 256 KiB read at a time.
            if let Err(e) = rustix::fs::fadvise(
                &*self.file,
                self.base + offset,
                std::num::NonZeroU64::new(length),
                rustix::fs::Advice::WillNeed,
            ) {
                tracing::debug!(chunk_id = %self.id, "read-ahead hint failed: {e}");
            }
        }
        let bs = self.footer.block_bytes as u64;
        let whole = offset == 0 && end == size;
        let mut crc = 0u32;
        for block in offset / bs..end.div_ceil(bs) {
            let start = block * bs;
            let len = bs.min(size - start) as usize;
            buf.clear();
            buf.reserve(len);
            buf.resize(len, 0);
            self.file
                .read_exact_at(&mut buf[..], self.base + start)
                .map_err(io_err("read", &self.path))?;
            let got = crc32c::crc32c(&buf[..]);
            if got != self.table[block as usize] {
                return Err(StoreError::Corrupt {
                    chunk_id: self.id.clone(),
                    reason: format!("block {block} checksum mismatch"),
                });
            }
            if whole {
                crc = dfs_proto::frame::checksum_extend(crc, &buf[..], got);
            }
            let from = offset.saturating_sub(start) as usize;
            let to = (end - start).min(len as u64) as usize;
            let mut data = buf.split_to(to).freeze();
            if from > 0 {
                data = data.slice(from..);
            }
            let piece = Piece {
                data,
                block_crc: (from == 0 && to == len).then_some(got),
            };
            if !emit(piece) {
                return Err(StoreError::Cancelled);
            }
        }
        if whole && crc != self.footer.checksum {
            return Err(StoreError::Corrupt {
                chunk_id: self.id.clone(),
                reason: "whole-chunk checksum mismatch".into(),
            });
        }
        Ok(())
    }

    /// Size of the chunk's checksum blocks.
    pub fn block_bytes(&self) -> usize {
        self.footer.block_bytes as usize
    }
}

/// Reads at least this long get the whole range read ahead.
const PREFETCH_MIN_BYTES: u64 = 1 << 20;

/// A verified part of a chunk handed out by [`ChunkReader::read_range`].
#[derive(Debug)]
pub struct Piece {
    /// The bytes, shared with the reader's buffer (no copy).
    pub data: Bytes,
    /// CRC32C of `data` when it is a whole block (already computed to
    /// verify it), so a frame made of it needs no second pass.
    pub block_crc: Option<u32>,
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        out.push(entry.map_err(io_err("list", dir))?.path());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::parse(&format!("{n:02x}{}", "ab".repeat(15))).unwrap()
    }

    fn store(dir: &Path) -> Arc<Store> {
        Store::open(dir, StoreOptions::default(), Metrics::new()).unwrap()
    }

    fn write(store: &Arc<Store>, id: &ChunkId, data: &[u8]) -> StoredChunk {
        let mut w = store.create_writer(id).unwrap();
        for part in data.chunks(100_000) {
            w.write(part).unwrap();
        }
        w.finish(data.len() as u64, Some(crc32c::crc32c(data)))
            .unwrap()
    }

    fn read(store: &Store, id: &ChunkId, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let r = store.open_reader(id)?;
        let mut out = Vec::new();
        r.read_range(offset, len, &mut BytesMut::new(), |p| {
            if let Some(crc) = p.block_crc {
                assert_eq!(crc, crc32c::crc32c(&p.data), "block crc of a whole block");
            }
            out.extend_from_slice(&p.data);
            true
        })?;
        Ok(out)
    }

    #[test]
    fn writes_reads_ranges_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data: Vec<u8> = (0..(BLOCK_BYTES * 2 + 1234))
            .map(|i| (i * 7) as u8)
            .collect();
        let meta = write(&s, &id(1), &data);
        assert_eq!(meta.size, data.len() as u64);
        assert_eq!(read(&s, &id(1), 0, 0).unwrap(), data);
        for (off, len) in [(0u64, 1u64), (BLOCK_BYTES as u64 - 3, 10), (1000, 300_000)] {
            assert_eq!(
                read(&s, &id(1), off, len).unwrap(),
                &data[off as usize..(off + len) as usize]
            );
        }
        assert!(matches!(
            read(&s, &id(1), data.len() as u64, 1),
            Err(StoreError::OutOfRange { .. })
        ));
        write(&s, &id(2), b"");
        drop(s);
        let s = store(dir.path());
        assert_eq!(s.chunk_count(), 2);
        assert_eq!(s.get(&id(1)), Some(meta));
        assert_eq!(read(&s, &id(2), 0, 0).unwrap(), b"");
    }

    /// An I/O error at start-up says nothing about the bytes: the chunk is
    /// unavailable (not served, not reported), not corrupt, and its file is
    /// left where it is; nothing may be written over it.
    #[test]
    fn an_unreadable_chunk_at_start_up_is_unavailable_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        write(&s, &id(1), b"fine");
        let path = s.chunk_path(&id(2));
        drop(s);
        // Reading it fails with EISDIR: an I/O error like a bad sector's.
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), b"keep me").unwrap();
        let s = store(dir.path());
        assert_eq!(s.unavailable(), vec![id(2)]);
        assert_eq!(s.get(&id(2)), None);
        assert!(s.take_delta().corrupt.is_empty(), "not reported corrupt");
        assert!(s.quarantined().is_empty());
        assert!(path.join("x").exists(), "left in place");
        let mut w = s.create_writer(&id(2)).unwrap();
        w.write(b"other").unwrap();
        assert!(matches!(
            w.finish(5, None),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(read(&s, &id(1), 0, 0).unwrap(), b"fine");
    }

    /// A small put whose writer stops waiting keeps its id claimed until the
    /// record is indexed: other bytes can never be queued behind it.
    #[test]
    fn an_abandoned_small_put_keeps_its_claim_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = small_store(dir.path(), 1 << 20);
        for round in 0..50u8 {
            let cid = id(round);
            let first = s
                .put_small(&cid, vec![Bytes::from_static(b"first")], 5, None)
                .unwrap();
            drop(first);
            match s.put_small(&cid, vec![Bytes::from_static(b"other")], 5, None) {
                Err(StoreError::Concurrent { .. } | StoreError::AlreadyExists { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
                Ok(_) => panic!("round {round}: other bytes queued under a claimed id"),
            }
        }
        s.close();
        let s = small_store(dir.path(), 1 << 20);
        for round in 0..50u8 {
            assert_eq!(read(&s, &id(round), 0, 0).unwrap(), b"first");
        }
    }

    #[test]
    fn a_stopped_volume_committer_makes_the_store_broken() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert_eq!(s.broken(), None);
        s.close();
        assert!(s.broken().unwrap().contains("volume committer"));
    }

    /// A corrupt chunk found at start-up is quarantined, never deleted.
    #[test]
    fn a_corrupt_chunk_at_start_up_is_moved_aside_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        write(&s, &id(3), &[7u8; 5000]);
        let path = s.chunk_path(&id(3));
        drop(s);
        let len = fs::metadata(&path).unwrap().len();
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff; 8], len - 8).unwrap();
        drop(f);
        let s = store(dir.path());
        assert_eq!(s.get(&id(3)), None);
        assert_eq!(s.take_delta().corrupt, vec![id(3)]);
        assert_eq!(s.quarantined(), vec![id(3)]);
        assert!(!path.exists());
        assert_eq!(
            fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
            1
        );
    }

    #[test]
    fn mismatch_and_drop_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut w = s.create_writer(&id(3)).unwrap();
        w.write(b"hello").unwrap();
        assert!(matches!(
            w.finish(5, Some(1)),
            Err(StoreError::Mismatch { .. })
        ));
        let mut w = s.create_writer(&id(3)).unwrap();
        w.write(b"hel").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(s.get(&id(3)).is_none());
    }

    #[test]
    fn flipped_byte_is_detected_in_the_touched_block_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = vec![5u8; BLOCK_BYTES * 2];
        write(&s, &id(4), &data);
        let path = s.chunk_path(&id(4));
        let mut bytes = fs::read(&path).unwrap();
        bytes[BLOCK_BYTES + 10] ^= 1;
        fs::write(&path, bytes).unwrap();
        // The first block is intact and still served.
        assert_eq!(read(&s, &id(4), 0, 100).unwrap(), vec![5u8; 100]);
        assert!(matches!(
            read(&s, &id(4), 0, 0),
            Err(StoreError::Corrupt { .. })
        ));
    }

    fn small_store(dir: &Path, volume_bytes: u64) -> Arc<Store> {
        let options = StoreOptions {
            volume_bytes,
            ..StoreOptions::default()
        };
        Store::open(dir, options, Metrics::new()).unwrap()
    }

    fn put_small(store: &Store, id: &ChunkId, data: &[u8]) -> StoredChunk {
        // Two parts, as a chunk received in two frames.
        let (a, b) = data.split_at(data.len() / 2);
        let parts = vec![Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
        store
            .put_small(id, parts, data.len() as u64, Some(crc32c::crc32c(data)))
            .unwrap()
            .wait_blocking()
            .unwrap()
    }

    fn volume_files(dir: &Path) -> Vec<PathBuf> {
        read_dir_sorted(&dir.join("volumes")).unwrap()
    }

    fn chunk_files(dir: &Path) -> usize {
        read_dir_sorted(&dir.join("chunks"))
            .unwrap()
            .iter()
            .map(|d| read_dir_sorted(d).unwrap().len())
            .sum()
    }

    #[test]
    fn small_chunks_go_to_a_volume_and_survive_reopen_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let sizes = [1usize, 4096, DEFAULT_SMALL_CHUNK_MAX as usize];
        let datas: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i * 13 + n) as u8).collect())
            .collect();
        assert!(s.is_small(4096) && !s.is_small(DEFAULT_SMALL_CHUNK_MAX + 1) && !s.is_small(0));
        for (i, d) in datas.iter().enumerate() {
            let meta = put_small(&s, &id(i as u8), d);
            assert_eq!(meta.size, d.len() as u64);
            assert_eq!(read(&s, &id(i as u8), 0, 0).unwrap(), *d);
        }
        assert_eq!(read(&s, &id(2), 100, 50).unwrap(), &datas[2][100..150]);
        assert_eq!(chunk_files(dir.path()), 0, "no file per small chunk");
        assert_eq!(volume_files(dir.path()).len(), 1);
        let added: Vec<_> = s.take_delta().added.into_iter().map(|(i, _)| i).collect();
        assert_eq!(added, vec![id(0), id(1), id(2)]);
        assert_eq!(s.capacity().used, sizes.iter().sum::<usize>() as u64);

        // Wrong size or checksum: refused before anything is queued.
        assert!(matches!(
            s.put_small(&id(9), vec![Bytes::from_static(b"abc")], 4, None),
            Err(StoreError::Mismatch { .. })
        ));
        assert!(matches!(
            s.put_small(&id(9), vec![Bytes::from_static(b"abc")], 3, Some(1)),
            Err(StoreError::Mismatch { .. })
        ));

        assert!(s.delete(&id(1)).unwrap());
        assert!(matches!(
            s.open_reader(&id(1)),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(s.take_delta().removed, vec![id(1)]);
        drop(s);

        let s = store(dir.path());
        assert_eq!(s.chunk_count(), 2, "the delete record survives the restart");
        assert_eq!(read(&s, &id(0), 0, 0).unwrap(), datas[0]);
        assert_eq!(read(&s, &id(2), 0, 0).unwrap(), datas[2]);
        // Put again after a delete: the newest record wins.
        put_small(&s, &id(1), b"again");
        drop(s);
        let s = store(dir.path());
        assert_eq!(read(&s, &id(1), 0, 0).unwrap(), b"again");
    }

    #[test]
    fn a_torn_volume_tail_is_cut_and_acknowledged_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        // Byte-exact file ends: without zeros written ahead.
        let store = |d: &Path| {
            let options = StoreOptions {
                volume_prealloc_bytes: 0,
                ..StoreOptions::default()
            };
            Store::open(d, options, Metrics::new()).unwrap()
        };
        let s = store(dir.path());
        put_small(&s, &id(1), b"first");
        put_small(&s, &id(2), b"second");
        drop(s);
        let vol = volume_files(dir.path()).pop().unwrap();
        let good = fs::metadata(&vol).unwrap().len();
        // A crash mid-batch: half a header, then (another case) a whole
        // header whose data did not make it.
        let mut torn = fs::read(&vol).unwrap();
        let head = torn[..30].to_vec();
        torn.extend_from_slice(&head);
        fs::write(&vol, &torn).unwrap();
        let s = store(dir.path());
        assert_eq!(fs::metadata(&vol).unwrap().len(), good);
        assert_eq!(read(&s, &id(2), 0, 0).unwrap(), b"second");
        put_small(&s, &id(3), b"third");
        drop(s);
        // The third put's batch starts on the next 4 KiB boundary, where the
        // file ended; its data torn (its commit record never made it).
        let mut torn = fs::read(&vol).unwrap();
        assert_eq!(torn.len() as u64, good + crate::volume::BATCH_ALIGN as u64);
        torn.truncate(good as usize + crate::volume::RECORD_OVERHEAD + 3);
        fs::write(&vol, &torn).unwrap();
        let s = store(dir.path());
        assert_eq!(fs::metadata(&vol).unwrap().len(), good);
        assert_eq!(
            s.chunk_count(),
            2,
            "the torn third put was never acknowledged"
        );
        assert!(s.take_delta().corrupt.is_empty());
        assert_eq!(read(&s, &id(1), 0, 0).unwrap(), b"first");
    }

    #[test]
    fn volumes_are_zero_filled_ahead_and_replay_stops_at_the_records_end() {
        let dir = tempfile::tempdir().unwrap();
        let options = || StoreOptions {
            volume_prealloc_bytes: 64 << 10,
            ..StoreOptions::default()
        };
        let s = Store::open(dir.path(), options(), Metrics::new()).unwrap();
        // Chunk data ending in zeros must not be taken for preallocation.
        let datas: Vec<Vec<u8>> = (0..20u8)
            .map(|i| {
                let mut d = vec![i + 1; 5000];
                d.extend_from_slice(&[0; 100]);
                d
            })
            .collect();
        for (i, d) in datas.iter().enumerate() {
            put_small(&s, &id(i as u8), d);
        }
        let vol = volume_files(dir.path()).pop().unwrap();
        let len = fs::metadata(&vol).unwrap().len();
        // One batch per put, each on a fresh 4 KiB boundary: a 5156-byte
        // record and its commit record take two sectors.
        let batches = 20 * 2 * crate::volume::BATCH_ALIGN as u64;
        assert_eq!(
            len,
            batches.div_ceil(64 << 10) * (64 << 10),
            "zeros ahead in 64 KiB steps"
        );
        drop(s);
        for round in 0..2u8 {
            let s = Store::open(dir.path(), options(), Metrics::new()).unwrap();
            assert_eq!(
                fs::metadata(&vol).unwrap().len(),
                len,
                "replay keeps the zeros"
            );
            assert_eq!(s.chunk_count(), 20 + u64::from(round));
            for (i, d) in datas.iter().enumerate() {
                assert_eq!(read(&s, &id(i as u8), 0, 0).unwrap(), *d);
            }
            assert!(s.take_delta().corrupt.is_empty());
            // Appends continue where the records end, not after the zeros.
            put_small(&s, &id(100 + round), b"after reopen");
            assert_eq!(read(&s, &id(100 + round), 0, 0).unwrap(), b"after reopen");
            assert_eq!(fs::metadata(&vol).unwrap().len(), len, "within the zeros");
        }
        // A batch torn inside the zeros (its header half written, on the
        // boundary after the last batch) is cut away; everything
        // acknowledged before it survives.
        let mut bytes = fs::read(&vol).unwrap();
        let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
        let next = end.next_multiple_of(crate::volume::BATCH_ALIGN);
        bytes.copy_within(0..30, next);
        fs::write(&vol, &bytes).unwrap();
        let s = Store::open(dir.path(), options(), Metrics::new()).unwrap();
        assert_eq!(s.chunk_count(), 22);
        assert_eq!(read(&s, &id(101), 0, 0).unwrap(), b"after reopen");
        put_small(&s, &id(102), b"after the cut");
        drop(s);
        let s = Store::open(dir.path(), options(), Metrics::new()).unwrap();
        assert_eq!(s.chunk_count(), 23);
        assert_eq!(read(&s, &id(102), 0, 0).unwrap(), b"after the cut");
    }

    #[test]
    fn a_flipped_bit_in_a_small_chunk_is_caught_on_read_and_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put_small(&s, &id(1), &[1u8; 5000]);
        put_small(&s, &id(2), &[2u8; 5000]);
        let vol = volume_files(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&vol).unwrap();
        bytes[crate::volume::RECORD_OVERHEAD + 100] ^= 1;
        fs::write(&vol, &bytes).unwrap();
        assert!(matches!(
            read(&s, &id(1), 0, 0),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(read(&s, &id(2), 0, 0).unwrap(), vec![2u8; 5000]);
        drop(s);
        let s = store(dir.path());
        assert!(s.get(&id(1)).is_none());
        assert_eq!(s.take_delta().corrupt, vec![id(1)]);
        assert_eq!(read(&s, &id(2), 0, 0).unwrap(), vec![2u8; 5000]);
    }

    #[test]
    fn compaction_reclaims_deleted_records_and_deletes_stay_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = small_store(dir.path(), 32 << 10);
        let data = |n: u8| vec![n; 8 << 10];
        for n in 0..24u8 {
            put_small(&s, &id(n), &data(n));
        }
        let before = volume_files(dir.path()).len();
        assert!(before >= 6, "{before} volumes");
        // Keep every fourth chunk.
        for n in (0..24u8).filter(|n| n % 4 != 0) {
            assert!(s.delete(&id(n)).unwrap());
        }
        let mut compacted = 0u64;
        while s.compact_volumes().unwrap() {
            compacted += 1;
        }
        assert!(
            compacted >= before as u64 - 2,
            "{compacted} of {before} compacted"
        );
        let after = volume_files(dir.path()).len();
        assert!(after < before, "{after} volumes after, {before} before");
        for n in (0..24u8).step_by(4) {
            assert_eq!(read(&s, &id(n), 0, 0).unwrap(), data(n));
        }
        assert_eq!(s.metrics().volume_compactions.get(), compacted);
        drop(s);
        let s = small_store(dir.path(), 32 << 10);
        assert_eq!(
            s.chunk_count(),
            6,
            "deleted chunks stay deleted after compaction"
        );
        for n in (0..24u8).step_by(4) {
            assert_eq!(read(&s, &id(n), 0, 0).unwrap(), data(n));
        }
    }

    #[test]
    fn compacting_a_volume_keeps_delete_records_that_older_volumes_need() {
        let dir = tempfile::tempdir().unwrap();
        // 40 KiB volumes hold four 8 KiB records (each batch takes three
        // 4 KiB sectors).
        let s = small_store(dir.path(), 40 << 10);
        let data = |n: u8| vec![n; 8 << 10];
        for n in [1, 2, 3, 4] {
            put_small(&s, &id(n), &data(n)); // volume 1: 3 of 4 stay live
        }
        s.delete(&id(4)).unwrap(); // its delete record opens volume 2
        for n in [5, 6, 7, 8] {
            put_small(&s, &id(n), &data(n));
        }
        for n in [5, 6, 7, 8] {
            s.delete(&id(n)).unwrap(); // volume 2 is now all garbage
        }
        put_small(&s, &id(9), &data(9));
        assert!(s.compact_volumes().unwrap(), "volume 2 qualifies");
        assert!(!s.compact_volumes().unwrap(), "volume 1 is over half live");
        assert_eq!(volume_files(dir.path()).len(), 2);
        drop(s);
        let s = small_store(dir.path(), 40 << 10);
        let mut ids = s.ids();
        ids.sort();
        assert_eq!(
            ids,
            vec![id(1), id(2), id(3), id(9)],
            "chunk 4's put is in volume 1; its delete record had to be carried over"
        );
    }

    #[test]
    fn reservations_count_against_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            dir.path(),
            StoreOptions {
                capacity: Some(1000),
                ..StoreOptions::default()
            },
            Metrics::new(),
        )
        .unwrap();
        let a = s.reserve(600).unwrap();
        assert!(matches!(s.reserve(600), Err(StoreError::NoSpace { .. })));
        drop(a);
        let _b = s.reserve(600).unwrap();
    }

    #[test]
    fn a_stored_chunk_stops_being_promised_as_it_starts_being_used() {
        // A chunk file and a small chunk: their session's promise must turn
        // into used space in one step, or a heartbeat (or the published
        // gauges) in between counts the bytes twice and the coordinator
        // sees a node fuller than it is.
        const CAP: u64 = 10_000_000;
        for size in [200_000u64, 1_000] {
            let dir = tempfile::tempdir().unwrap();
            let s = Store::open(
                dir.path(),
                StoreOptions {
                    capacity: Some(CAP),
                    ..StoreOptions::default()
                },
                Metrics::new(),
            )
            .unwrap();
            let data = vec![7u8; size as usize];
            let crc = crc32c::crc32c(&data);
            let r = s.reserve(size).unwrap();
            assert_eq!(s.capacity().free, CAP - size);
            let id = ChunkId::random();
            if s.is_small(size) {
                s.put_small_reserved(&id, vec![Bytes::from(data)], size, Some(crc), Some(r))
                    .unwrap()
                    .wait_blocking()
                    .unwrap();
            } else {
                let mut w = s.create_writer(&id).unwrap();
                w.write(&data).unwrap();
                w.finish_reserved(size, Some(crc), Some(r)).unwrap();
            }
            let cap = s.capacity();
            assert_eq!(
                (cap.used, cap.promised, cap.free),
                (size, 0, CAP - size),
                "{size} bytes"
            );
            // What the node publishes agrees with what it knows.
            assert_eq!(
                s.metrics.capacity_free.get(),
                cap.free as i64,
                "{size} bytes"
            );
            assert_eq!(s.metrics.capacity_reserved.get(), 0, "{size} bytes");
        }
    }

    #[test]
    fn free_space_counts_bytes_written_since_the_last_statvfs() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let before = s.capacity();
        assert!(before.total > 0 && before.free > 0);
        // Well within the sample's lifetime: the statvfs is not repeated,
        // yet the chunks written since must not count as free.
        let n = 4 * BLOCK_BYTES;
        write(&s, &id(1), &vec![1u8; n]);
        write(&s, &id(2), &vec![2u8; n]);
        let after = s.capacity();
        assert!(
            before.free - after.free >= 2 * n as u64,
            "free went from {} to {} after writing {} bytes",
            before.free,
            after.free,
            2 * n
        );
        assert_eq!(after.used, before.used + 2 * n as u64);
    }
}
