//! Small chunks in append-only volume files, made durable by group commit.
//!
//! A chunk file costs an inode, a rename and two fsyncs (the file and its
//! directory). For a 4 KiB chunk that is nearly all of the work: profiles of
//! 4 KiB puts showed the datanodes' fsync path and ext4 inode allocation at a
//! quarter of the machine's CPU, and one file per replica. A chunk of at most
//! `--small-chunk-max` bytes (it arrives whole, in one or a few frames) is
//! instead appended as one record to the active volume by a single committer
//! thread, which writes every record waiting with one `pwrite` and makes the
//! whole batch durable with one `fdatasync` before any of them is
//! acknowledged: the group commit of Haystack / SeaweedFS needle volumes and
//! BlueStore's deferred small writes.
//!
//! ```text
//! volumes/<seq:08x>.vol   records, appended; the highest seq is the active one
//! record = header (24 bytes) | chunk id (32 bytes) | data
//! header = magic "DFV1" | kind u8 (1 put, 2 delete) | 3 zero bytes
//!        | data length u32 | data CRC32C u32 | zero u32
//!        | CRC32C of header[..20] and the id
//! ```
//!
//! The index (chunk id → volume, offset) lives in memory and is rebuilt at
//! start-up by replaying the volumes in order: the last record for an id wins
//! and a delete record removes it. A torn record at the end of the active
//! volume (a crash mid-batch: never acknowledged) is truncated away; a damaged
//! record elsewhere is skipped up to the next valid header and a put whose data
//! fails its CRC is reported corrupt, so the coordinator re-replicates it.
//! Deleted and replaced records are garbage until compaction, which runs when
//! the committer is idle, copies the live records of a sealed volume that is
//! at least half garbage into the active one and removes it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::store::{ChunkId, State, StoreError, StoredChunk, io_err, sync_dir};

const MAGIC: &[u8; 4] = b"DFV1";
const HEADER_LEN: usize = 24;
const ID_LEN: usize = dfs_proto::CHUNK_ID_LEN;
/// Bytes of a record before its data.
pub const RECORD_OVERHEAD: usize = HEADER_LEN + ID_LEN;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// Largest data a record may carry (one checksum block of a chunk file): a
/// header claiming more is damaged.
pub const MAX_RECORD_DATA: usize = crate::store::BLOCK_BYTES;
/// Records written per `pwrite` + `fdatasync` at most.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// The committer looks for a volume to compact after this long without work.
const IDLE_COMPACT_AFTER: Duration = Duration::from_secs(2);
/// A sealed volume is compacted once at least this share of it is garbage.
const COMPACT_GARBAGE_RATIO: f64 = 0.5;

/// Where a small chunk's record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmallLoc {
    /// Volume sequence number.
    pub volume: u32,
    /// Offset of the record (its header) in the volume.
    pub offset: u64,
    /// Bytes of data.
    pub size: u32,
}

impl SmallLoc {
    /// Offset of the data in the volume.
    pub fn data_offset(&self) -> u64 {
        self.offset + RECORD_OVERHEAD as u64
    }

    fn record_len(&self) -> u64 {
        RECORD_OVERHEAD as u64 + u64::from(self.size)
    }
}

/// Size and live bytes of one volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeStat {
    /// Bytes in the file.
    pub size: u64,
    /// Bytes of records the index points at.
    pub live: u64,
}

/// The in-memory index of the small chunks (part of the store's state, so one
/// lock covers both).
#[derive(Debug, Default)]
pub struct Index {
    /// Where each small chunk is.
    pub locs: HashMap<ChunkId, SmallLoc>,
    /// Every volume, by sequence number.
    pub volumes: BTreeMap<u32, VolumeStat>,
}

impl Index {
    fn put(&mut self, id: ChunkId, loc: SmallLoc) -> Option<SmallLoc> {
        let old = self.locs.insert(id, loc);
        if let Some(o) = old {
            self.unaccount(o);
        }
        self.volumes.entry(loc.volume).or_default().live += loc.record_len();
        old
    }

    /// Forgets `id`; returns where it was.
    pub fn remove(&mut self, id: &ChunkId) -> Option<SmallLoc> {
        let old = self.locs.remove(id);
        if let Some(o) = old {
            self.unaccount(o);
        }
        old
    }

    fn unaccount(&mut self, loc: SmallLoc) {
        if let Some(v) = self.volumes.get_mut(&loc.volume) {
            v.live = v.live.saturating_sub(loc.record_len());
        }
    }

    /// (live, garbage) bytes over every volume.
    pub fn bytes(&self) -> (u64, u64) {
        self.volumes.values().fold((0, 0), |(l, g), v| {
            (l + v.live, g + v.size.saturating_sub(v.live))
        })
    }
}

/// Writes zeros over `[from, to)` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn volume_name(seq: u32) -> String {
    format!("{seq:08x}.vol")
}

fn parse_volume_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".vol")?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

fn encode(buf: &mut Vec<u8>, kind: u8, id: &ChunkId, parts: &[Bytes], size: u32, crc: u32) {
    let start = buf.len();
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&[kind, 0, 0, 0]);
    buf.extend_from_slice(&size.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let mut h = crc32c::crc32c(&buf[start..start + 20]);
    h = crc32c::crc32c_append(h, id.as_str().as_bytes());
    buf.extend_from_slice(&h.to_le_bytes());
    buf.extend_from_slice(id.as_str().as_bytes());
    for p in parts {
        buf.extend_from_slice(p);
    }
}

/// A record parsed from a volume.
#[derive(Debug)]
struct Record {
    kind: u8,
    id: ChunkId,
    offset: u64,
    size: u32,
    crc: u32,
    /// The data matches its CRC.
    intact: bool,
}

impl Record {
    fn len(&self) -> u64 {
        RECORD_OVERHEAD as u64 + u64::from(self.size)
    }
}

/// Parses the record at `at`; `None` when no valid header starts there (or
/// its data runs past the end).
fn parse_at(data: &[u8], at: usize) -> Option<Record> {
    let h = data.get(at..at + RECORD_OVERHEAD)?;
    if &h[0..4] != MAGIC || h[5..8] != [0, 0, 0] {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let want = crc32c::crc32c_append(crc32c::crc32c(&h[..20]), &h[HEADER_LEN..]);
    if want != u32_at(20) {
        return None;
    }
    let kind = h[4];
    let size = u32_at(8);
    if !(kind == KIND_PUT || kind == KIND_DELETE) || size as usize > MAX_RECORD_DATA {
        return None;
    }
    let id = std::str::from_utf8(&h[HEADER_LEN..])
        .ok()
        .and_then(|s| ChunkId::parse(s).ok())?;
    let body = data.get(at + RECORD_OVERHEAD..at + RECORD_OVERHEAD + size as usize)?;
    let crc = u32_at(12);
    Some(Record {
        kind,
        id,
        offset: at as u64,
        size,
        crc,
        intact: kind == KIND_DELETE || crc32c::crc32c(body) == crc,
    })
}

/// Every valid record of a volume's bytes, in order; the length of the
/// valid prefix of a torn tail (`None` when the whole file parses); and where
/// the records end. Zeros after the last record are preallocated space, not
/// damage. Damage in the middle is skipped up to the next valid header.
fn parse_volume(data: &[u8], name: &str) -> (Vec<Record>, Option<usize>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        if let Some(r) = parse_at(data, at) {
            at += r.len() as usize;
            out.push(r);
            continue;
        }
        if data[at..].iter().all(|&b| b == 0) {
            return (out, None, at);
        }
        let next = (at + 1..data.len().saturating_sub(RECORD_OVERHEAD - 1))
            .find(|&i| data[i..].starts_with(MAGIC) && parse_at(data, i).is_some());
        match next {
            Some(n) => {
                tracing::error!(
                    volume = name,
                    offset = at,
                    skipped = n - at,
                    "damaged bytes in a volume skipped; records in them are lost"
                );
                at = n;
            }
            None => return (out, Some(at), at),
        }
    }
    (out, None, at)
}

/// What replaying the volumes found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Live small chunks.
    pub chunks: HashMap<ChunkId, StoredChunk>,
    /// The index of those chunks.
    pub index: Index,
    /// Chunks whose latest record failed its CRC.
    pub corrupt: Vec<ChunkId>,
}

/// Opens the volumes directory: replays every volume in order and returns the
/// index plus the open files. With `repair`, the directory is created when
/// missing and a torn tail of the active volume is truncated; without it
/// nothing is changed (and volumes are opened read-only).
fn replay(dir: &Path, repair: bool) -> Result<(Replayed, Vec<(u32, File)>), StoreError> {
    if repair {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    } else if !dir.exists() {
        return Ok((Replayed::default(), Vec::new()));
    }
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_volume_name) {
            Some(seq) => seqs.push(seq),
            None => {
                tracing::warn!(path = %entry.path().display(), "ignoring unexpected file among volumes")
            }
        }
    }
    seqs.sort_unstable();
    let mut out = Replayed::default();
    let mut corrupt = HashSet::new();
    let mut files = Vec::new();
    let last = seqs.last().copied();
    for seq in seqs {
        let path = dir.join(volume_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(repair)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let data = fs::read(&path).map_err(io_err("read", &path))?;
        let name = volume_name(seq);
        let (mut records, torn, end) = parse_volume(&data, &name);
        let mut size = end as u64;
        // In the active volume, a last put whose data is incomplete or
        // damaged was never acknowledged (the batch's fdatasync did not
        // return): it is torn like a partial header.
        let mut valid_end = torn;
        if Some(seq) == last
            && torn.is_none()
            && records
                .last()
                .is_some_and(|r| !r.intact && r.offset + r.len() == size)
        {
            valid_end = records.pop().map(|r| r.offset as usize);
        }
        if let Some(end) = valid_end
            && repair
        {
            if Some(seq) == last {
                tracing::warn!(
                    volume = %name,
                    dropped = size - end as u64,
                    "truncating the torn tail of the active volume (a write that was never acknowledged)"
                );
                file.set_len(end as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err("truncate", &path))?;
                size = end as u64;
            } else {
                tracing::error!(volume = %name, offset = end, "sealed volume ends in a damaged record");
            }
        }
        out.index.volumes.insert(seq, VolumeStat { size, live: 0 });
        for r in records {
            match (r.kind, r.intact) {
                (KIND_PUT, true) => {
                    let loc = SmallLoc {
                        volume: seq,
                        offset: r.offset,
                        size: r.size,
                    };
                    out.chunks.insert(
                        r.id.clone(),
                        StoredChunk {
                            size: u64::from(r.size),
                            checksum: r.crc,
                        },
                    );
                    corrupt.remove(&r.id);
                    out.index.put(r.id, loc);
                }
                (KIND_PUT, false) => {
                    tracing::error!(volume = %name, offset = r.offset, chunk_id = %r.id, "small chunk fails its checksum");
                    out.chunks.remove(&r.id);
                    out.index.remove(&r.id);
                    corrupt.insert(r.id);
                }
                _ => {
                    out.chunks.remove(&r.id);
                    out.index.remove(&r.id);
                    corrupt.remove(&r.id);
                }
            }
        }
        files.push((seq, file));
    }
    out.corrupt = corrupt.into_iter().collect();
    out.corrupt.sort();
    Ok((out, files))
}

/// A small chunk found by [`inspect`].
#[derive(Debug, Clone)]
pub struct SmallChunk {
    /// The chunk.
    pub id: ChunkId,
    /// Its size and checksum.
    pub meta: StoredChunk,
    /// The volume holding it.
    pub path: PathBuf,
    /// Where its data starts in that volume.
    pub data_offset: u64,
}

/// The live small chunks in a data directory's volumes, read without changing
/// anything (for tools and tests; the datanode may be running, in which case
/// a batch being written is not seen).
pub fn inspect(data_dir: &Path) -> Result<Vec<SmallChunk>, StoreError> {
    let dir = data_dir.join("volumes");
    let (replayed, _) = replay(&dir, false)?;
    let mut out: Vec<SmallChunk> = replayed
        .index
        .locs
        .iter()
        .filter_map(|(id, loc)| {
            Some(SmallChunk {
                id: id.clone(),
                meta: *replayed.chunks.get(id)?,
                path: dir.join(volume_name(loc.volume)),
                data_offset: loc.data_offset(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// What the committer thread is asked to do.
enum Job {
    Put {
        id: ChunkId,
        parts: Vec<Bytes>,
        size: u32,
        crc: u32,
        reply: oneshot::Sender<Result<StoredChunk, StoreError>>,
    },
    /// Appends a delete record (the index entry is already gone).
    Delete(ChunkId),
    /// Compacts one volume now if one qualifies; answers whether one was.
    Compact(std::sync::mpsc::Sender<Result<bool, StoreError>>),
}

/// A small chunk put waiting for its group commit.
pub struct PendingPut(oneshot::Receiver<Result<StoredChunk, StoreError>>);

impl PendingPut {
    /// Waits until the record is durable.
    pub async fn wait(self) -> Result<StoredChunk, StoreError> {
        self.0.await.unwrap_or(Err(StoreError::Cancelled))
    }

    /// The same, from a blocking thread.
    pub fn wait_blocking(self) -> Result<StoredChunk, StoreError> {
        self.0.blocking_recv().unwrap_or(Err(StoreError::Cancelled))
    }
}

/// Called by the committer after it changed the store's state (to refresh the
/// capacity gauges).
pub type OnChange = Box<dyn Fn(&State) + Send>;

/// The volumes of a store: shared read handles and the committer thread.
pub struct Volumes {
    dir: PathBuf,
    files: Arc<RwLock<HashMap<u32, Arc<File>>>>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl Volumes {
    /// Replays the volumes under `dir` and starts the committer. The caller
    /// merges the returned chunks into `state` before serving.
    pub fn open(
        dir: &Path,
        volume_bytes: u64,
        prealloc_bytes: u64,
        state: Arc<Mutex<State>>,
        metrics: Metrics,
        on_change: OnChange,
    ) -> Result<(Volumes, Replayed), StoreError> {
        let (replayed, files) = replay(dir, true)?;
        let mut map = HashMap::new();
        let mut active = None;
        for (seq, file) in files {
            let file = Arc::new(file);
            active = Some((seq, file.clone()));
            map.insert(seq, file);
        }
        let files = Arc::new(RwLock::new(map));
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            volume_bytes: volume_bytes.max(1),
            prealloc_bytes,
            seq: 0,
            file: None,
            len: 0,
            allocated: 0,
            files: files.clone(),
            state,
            metrics,
            on_change,
            buf: Vec::new(),
        };
        match active {
            Some((seq, file)) => {
                writer.len = replayed.index.volumes.get(&seq).map_or(0, |v| v.size);
                writer.allocated = file.metadata().map_or(writer.len, |m| m.len());
                writer.seq = seq;
                writer.file = Some(file);
            }
            None => writer.seq = 0,
        }
        let (tx, rx) = mpsc::channel();
        let join = std::thread::Builder::new()
            .name("dfs-volume-commit".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err("start the committer for", dir))?;
        Ok((
            Volumes {
                dir: dir.to_path_buf(),
                files,
                tx: Mutex::new(Some(tx)),
                join: Mutex::new(Some(join)),
            },
            replayed,
        ))
    }

    /// Queues a put of a whole small chunk; the caller has checked `crc`
    /// against `parts` (the pipeline verifies every frame and the whole
    /// chunk).
    pub fn put(&self, id: &ChunkId, parts: Vec<Bytes>, size: u32, crc: u32) -> PendingPut {
        let (reply, rx) = oneshot::channel();
        let job = Job::Put {
            id: id.clone(),
            parts,
            size,
            crc,
            reply,
        };
        if let Err(mpsc::SendError(Job::Put { reply, .. })) = self.send(job) {
            let _ = reply.send(Err(StoreError::Cancelled));
        }
        PendingPut(rx)
    }

    /// Queues a delete record for `id` (already removed from the index).
    pub fn delete(&self, id: &ChunkId) {
        if self.send(Job::Delete(id.clone())).is_err() {
            tracing::warn!(chunk_id = %id, "volume committer stopped; delete record not written");
        }
    }

    /// Compacts one sealed volume that is at least half garbage, if any,
    /// after everything queued so far; true when one was compacted. (The
    /// committer also does this by itself whenever it is idle.)
    pub fn compact(&self) -> Result<bool, StoreError> {
        let (tx, rx) = mpsc::channel();
        if self.send(Job::Compact(tx)).is_err() {
            return Err(StoreError::Cancelled);
        }
        rx.recv().unwrap_or(Err(StoreError::Cancelled))
    }

    fn send(&self, job: Job) -> Result<(), mpsc::SendError<Job>> {
        match &*self.tx.lock().expect("volume sender lock") {
            Some(tx) => tx.send(job),
            None => Err(mpsc::SendError(job)),
        }
    }

    /// The open file of volume `seq` and its path.
    pub fn file(&self, seq: u32) -> Option<(Arc<File>, PathBuf)> {
        let f = self
            .files
            .read()
            .expect("volume files lock")
            .get(&seq)?
            .clone();
        Some((f, self.dir.join(volume_name(seq))))
    }

    /// Stops the committer after it has written everything queued.
    pub fn close(&self) {
        self.tx.lock().expect("volume sender lock").take();
        if let Some(j) = self.join.lock().expect("volume join lock").take()
            && j.join().is_err()
        {
            tracing::error!("volume committer panicked");
        }
    }
}

impl Drop for Volumes {
    fn drop(&mut self) {
        self.close();
    }
}

/// The committer thread's state: the active volume and the write buffer.
struct Writer {
    dir: PathBuf,
    volume_bytes: u64,
    /// Zeros written ahead of the records, this many bytes at a time (0:
    /// none). Overwriting allocated, written blocks keeps the file's size
    /// and block map unchanged, so a batch's fdatasync flushes only the
    /// data: on ext4 a growing file's fdatasync also writes the inode and
    /// the allocation metadata, which took twice the time and kernel CPU.
    prealloc_bytes: u64,
    seq: u32,
    file: Option<Arc<File>>,
    /// End of the records in the active volume.
    len: u64,
    /// Length of the active volume's file (records, then zeros).
    allocated: u64,
    files: Arc<RwLock<HashMap<u32, Arc<File>>>>,
    state: Arc<Mutex<State>>,
    metrics: Metrics,
    on_change: OnChange,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let first = match rx.recv_timeout(IDLE_COMPACT_AFTER) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.compact_one() {
                        tracing::error!("volume compaction failed: {e}");
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = Vec::new();
            let mut compactions = Vec::new();
            let mut bytes = 0usize;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Compact(reply) => compactions.push(reply),
                    Job::Put { size, .. } => {
                        bytes += RECORD_OVERHEAD + size as usize;
                        batch.push(job);
                    }
                    Job::Delete(_) => batch.push(job),
                }
                if bytes < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
            for reply in compactions {
                let _ = reply.send(self.compact_one());
            }
        }
    }

    /// Makes a new active volume (the directory entry durable before any
    /// record in it is acknowledged).
    fn rotate(&mut self) -> Result<(), StoreError> {
        let seq = self.seq + 1;
        let path = self.dir.join(volume_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        self.files
            .write()
            .expect("volume files lock")
            .insert(seq, file.clone());
        self.state
            .lock()
            .expect("store lock")
            .index
            .volumes
            .insert(seq, VolumeStat::default());
        self.seq = seq;
        self.file = Some(file);
        self.len = 0;
        self.allocated = 0;
        Ok(())
    }

    /// Appends `self.buf` to the active volume and makes it durable; on
    /// failure the tail is cut back so the next batch overwrites it.
    fn append(&mut self) -> Result<u64, StoreError> {
        if self.file.is_none() || self.len >= self.volume_bytes {
            self.rotate()?;
        }
        let file = self.file.as_ref().expect("active volume");
        let at = self.len;
        let path = self.dir.join(volume_name(self.seq));
        let end = at + self.buf.len() as u64;
        // Past the zeros written ahead: write the next stretch of zeros with
        // this batch, under the same fdatasync.
        let grow_to = (self.prealloc_bytes > 0 && end > self.allocated)
            .then(|| end.div_ceil(self.prealloc_bytes) * self.prealloc_bytes);
        let written = file.write_all_at(&self.buf, at).and_then(|()| {
            if let Some(to) = grow_to {
                write_zeros(file, end, to)?;
            }
            file.sync_data()
        });
        if let Err(e) = written {
            let _ = file.set_len(at);
            self.allocated = at;
            return Err(io_err("append to", &path)(e));
        }
        self.len = end;
        self.allocated = self.allocated.max(grow_to.unwrap_or(end));
        let mut st = self.state.lock().expect("store lock");
        st.index.volumes.entry(self.seq).or_default().size = self.len;
        Ok(at)
    }

    fn commit(&mut self, batch: Vec<Job>) {
        self.buf.clear();
        let mut offsets = Vec::with_capacity(batch.len());
        for job in &batch {
            offsets.push(self.buf.len() as u64);
            match job {
                Job::Put {
                    id,
                    parts,
                    size,
                    crc,
                    ..
                } => encode(&mut self.buf, KIND_PUT, id, parts, *size, *crc),
                Job::Delete(id) => encode(&mut self.buf, KIND_DELETE, id, &[], 0, 0),
                Job::Compact(_) => unreachable!("compactions are not batched"),
            }
        }
        let puts = batch
            .iter()
            .filter(|j| matches!(j, Job::Put { .. }))
            .count();
        let base = match self.append() {
            Ok(at) => at,
            Err(e) => {
                tracing::error!("volume group commit failed: {e}");
                let msg = e.to_string();
                for job in batch {
                    if let Job::Put { reply, .. } = job {
                        let _ = reply.send(Err(StoreError::Io {
                            action: "append to",
                            path: self.dir.clone(),
                            source: std::io::Error::other(msg.clone()),
                        }));
                    }
                }
                return;
            }
        };
        if puts > 0 {
            self.metrics.volume_commit_chunks.observe(puts as f64);
        }
        let mut replies = Vec::with_capacity(puts);
        {
            let mut st = self.state.lock().expect("store lock");
            for (job, off) in batch.into_iter().zip(offsets) {
                match job {
                    Job::Put {
                        id,
                        size,
                        crc,
                        reply,
                        ..
                    } => {
                        let meta = StoredChunk {
                            size: u64::from(size),
                            checksum: crc,
                        };
                        let loc = SmallLoc {
                            volume: self.seq,
                            offset: base + off,
                            size,
                        };
                        st.index.put(id.clone(), loc);
                        st.insert_chunk(id, meta);
                        replies.push((reply, meta));
                    }
                    Job::Delete(id) => {
                        // Normally already forgotten; a put queued before
                        // the delete may have re-added it since.
                        if st.index.remove(&id).is_some() {
                            st.remove_chunk(&id);
                        }
                    }
                    Job::Compact(_) => {}
                }
            }
            (self.on_change)(&st);
        }
        for (reply, meta) in replies {
            let _ = reply.send(Ok(meta));
        }
    }

    /// Compacts one sealed volume that is at least half garbage: its live
    /// records are copied to the active volume (durably), the index is pointed
    /// at the copies, and the old file is removed.
    fn compact_one(&mut self) -> Result<bool, StoreError> {
        let victim = {
            let st = self.state.lock().expect("store lock");
            st.index
                .volumes
                .iter()
                .filter(|(seq, v)| {
                    **seq != self.seq
                        && v.size > 0
                        && (v.size - v.live.min(v.size)) as f64
                            >= v.size as f64 * COMPACT_GARBAGE_RATIO
                })
                .map(|(seq, _)| *seq)
                .next()
        };
        let Some(victim) = victim else {
            return Ok(false);
        };
        let path = self.dir.join(volume_name(victim));
        let data = fs::read(&path).map_err(io_err("read", &path))?;
        let (records, _, _) = parse_volume(&data, &volume_name(victim));
        let mut moved = 0u64;
        let mut pending: Vec<(ChunkId, SmallLoc, u64)> = Vec::new();
        self.buf.clear();
        for r in records {
            let keep = {
                let st = self.state.lock().expect("store lock");
                match r.kind {
                    KIND_PUT => st
                        .index
                        .locs
                        .get(&r.id)
                        .is_some_and(|l| l.volume == victim && l.offset == r.offset),
                    // A delete must outlive every older put of its chunk.
                    _ => {
                        !st.index.locs.contains_key(&r.id)
                            && st.index.volumes.keys().next().is_some_and(|&s| s < victim)
                    }
                }
            };
            if !keep {
                continue;
            }
            let start = r.offset as usize;
            let end = start + r.len() as usize;
            if r.kind == KIND_PUT {
                pending.push((
                    r.id.clone(),
                    SmallLoc {
                        volume: victim,
                        offset: r.offset,
                        size: r.size,
                    },
                    self.buf.len() as u64,
                ));
            }
            self.buf.extend_from_slice(&data[start..end]);
            if self.buf.len() >= MAX_BATCH_BYTES {
                moved += self.flush_moved(&mut pending)?;
            }
        }
        moved += self.flush_moved(&mut pending)?;
        {
            let mut st = self.state.lock().expect("store lock");
            st.index.volumes.remove(&victim);
            self.files
                .write()
                .expect("volume files lock")
                .remove(&victim);
            (self.on_change)(&st);
        }
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        sync_dir(&self.dir)?;
        self.metrics.volume_compactions.inc();
        tracing::info!(volume = victim, moved, "compacted a volume");
        Ok(true)
    }

    /// Writes the copied records in `self.buf` and re-points the index at the
    /// copies whose original is still current; returns how many moved.
    fn flush_moved(
        &mut self,
        pending: &mut Vec<(ChunkId, SmallLoc, u64)>,
    ) -> Result<u64, StoreError> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        let base = self.append()?;
        self.buf.clear();
        let mut moved = 0;
        let mut st = self.state.lock().expect("store lock");
        for (id, old, off) in pending.drain(..) {
            if st.index.locs.get(&id) == Some(&old) {
                st.index.put(
                    id,
                    SmallLoc {
                        volume: self.seq,
                        offset: base + off,
                        size: old.size,
                    },
                );
                moved += 1;
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::parse(&format!("{n:02x}{}", "cd".repeat(15))).unwrap()
    }

    fn record(kind: u8, n: u8, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let parts = [Bytes::copy_from_slice(data)];
        encode(
            &mut b,
            kind,
            &id(n),
            &parts,
            data.len() as u32,
            crc32c::crc32c(data),
        );
        b
    }

    #[test]
    fn records_round_trip_and_damage_is_skipped() {
        let mut v = record(KIND_PUT, 1, b"hello");
        v.extend(record(KIND_DELETE, 1, b""));
        let third = v.len();
        v.extend(record(KIND_PUT, 2, b"world"));
        let (rs, torn, end) = parse_volume(&v, "t");
        assert_eq!(end, v.len());
        assert_eq!(torn, None);
        assert_eq!(rs.len(), 3);
        assert_eq!((rs[0].kind, rs[0].size, rs[0].intact), (KIND_PUT, 5, true));
        assert_eq!(rs[1].kind, KIND_DELETE);
        assert_eq!(rs[2].offset, third as u64);

        // A flipped header byte: that record is skipped, the next survives.
        let mut bad = v.clone();
        bad[third - 10] ^= 0xff; // inside the delete record's id
        let (rs, torn, _) = parse_volume(&bad, "t");
        assert_eq!(torn, None);
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[1].id, id(2));

        // A flipped data byte: the header still parses, the data does not.
        let mut bad = v.clone();
        bad[RECORD_OVERHEAD + 1] ^= 1;
        let (rs, _, _) = parse_volume(&bad, "t");
        assert!(!rs[0].intact);

        // A torn tail is reported where the valid prefix ends.
        let (rs, torn, _) = parse_volume(&v[..v.len() - 3], "t");
        assert_eq!(rs.len(), 2);
        assert_eq!(torn, Some(third));
    }

    #[test]
    fn zeros_after_the_records_are_preallocated_space_not_damage() {
        // The last chunk's own bytes end in zeros: still whole.
        let mut v = record(KIND_PUT, 1, b"hello");
        let second = v.len();
        v.extend(record(KIND_PUT, 2, &[7, 0, 0, 0]));
        let records_end = v.len();
        v.resize(records_end + 4096, 0);
        let (rs, torn, end) = parse_volume(&v, "t");
        assert_eq!((rs.len(), torn, end), (2, None, records_end));
        assert!(rs[1].intact);
        // A header torn inside the zeros is torn, not preallocation.
        v[records_end + 3] = 0x55;
        let (rs, torn, end) = parse_volume(&v, "t");
        assert_eq!((rs.len(), torn, end), (2, Some(records_end), records_end));
        // A record whose data did not make it (zeros where it should be)
        // fails its CRC and ends the records: replay treats it as torn.
        let mut w = v[..second].to_vec();
        let whole = record(KIND_PUT, 2, b"world");
        w.extend_from_slice(&whole[..RECORD_OVERHEAD]);
        w.resize(w.len() + 4096, 0);
        let (rs, torn, end) = parse_volume(&w, "t");
        assert_eq!((rs.len(), torn), (2, None));
        assert!(!rs[1].intact);
        assert_eq!(end, second + whole.len());
    }

    #[test]
    fn volume_names_parse() {
        assert_eq!(parse_volume_name(&volume_name(0x1a)), Some(0x1a));
        assert_eq!(parse_volume_name("0000001a.tmp"), None);
        assert_eq!(parse_volume_name("1a.vol"), None);
    }
}
