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
//! volumes/<seq:08x>.vol   batches, appended; the highest seq is the active one
//! batch  = record... | commit | zeros up to the next 4 KiB boundary
//! record = header (24 bytes) | chunk id (32 bytes) | data
//! header = magic "DFV2" | kind u8 (1 put, 2 delete) | 3 zero bytes
//!        | data length u32 | data CRC32C u32 | zero u32
//!        | CRC32C of header[..20] and the id
//! commit = magic "DFV2" | kind u8 (3) | 3 zero bytes
//!        | batch length u32 (bytes of the records before it)
//!        | CRC32C of those bytes u32 | zero u32 | CRC32C of commit[..20]
//! ```
//!
//! Every group commit starts on a 4 KiB boundary and is written whole by its
//! one `pwrite` (records, commit record, then the zeros up to the next
//! boundary), so a batch never rewrites a sector that holds acknowledged
//! records: a write torn by a power loss can only damage the batch being
//! written, which nobody was told about yet. That wastes at most 4 KiB less
//! one byte per batch; the zeros count as garbage (see [`VolumeStat`]), so a
//! sealed volume of many small lone batches is eventually compacted into
//! dense ones. Volumes written before batches had commit records (magic
//! "DFV1": records back to back, no commit records, no alignment) are still
//! read, the old way; a new batch goes on the boundary after their records,
//! or into a new volume when the old file ends inside a sector (no zeros
//! ahead), so that sector is never written again.
//!
//! The index (chunk id → volume, offset) lives in memory and is rebuilt at
//! start-up by replaying the volumes in order: the last record for an id wins
//! and a delete record removes it. A batch whose commit record is there and
//! matches (length and CRC) is whole. In the active volume, a last batch that
//! is not (no commit record, or its bytes do not match it) is a torn write
//! that was never acknowledged: it is cut away, back to the batch's start.
//! Any other batch that does not match holds acknowledged records that were
//! damaged afterwards: nothing is cut, the records that still verify are
//! kept, and every record of it that fails its checksum, or whose header is
//! damaged but whose chunk id is still readable, is reported corrupt (the
//! coordinator re-replicates it); the `checksum_failures{source="volume"}`
//! counter and an error line say so. Zeros after the last batch are space
//! written ahead, not damage. In an old-format volume a torn record at the
//! end of the active volume is cut and damage elsewhere is skipped up to the
//! next valid header, as before.
//!
//! Deleted and replaced records are garbage until compaction, which runs when
//! the committer is idle, copies the live records of a sealed volume that is
//! at least half garbage into the active one (as new batches) and removes it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::fsio::{StoreError, io_err, sync_dir};
use crate::metrics::Metrics;
use crate::table::{ClaimGuard, Reservation, State, StoredChunk};
use dfs_common::id::ChunkId;

pub use crate::table::{Index, SmallLoc, VolumeStat};

const MAGIC: &[u8; 4] = b"DFV2";
/// Magic of the records of volumes written before batches had commit
/// records (still read).
const MAGIC_V1: &[u8; 4] = b"DFV1";
const HEADER_LEN: usize = 24;
const ID_LEN: usize = dfs_proto::CHUNK_ID_LEN;
/// Bytes of a record before its data (the location index needs it, so it
/// is defined with the index).
pub use crate::table::RECORD_OVERHEAD;
const _: () = assert!(RECORD_OVERHEAD == HEADER_LEN + ID_LEN);
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// The commit record that ends a batch (a header only, no id).
const KIND_COMMIT: u8 = 3;
/// Every group commit starts on a multiple of this many bytes.
pub const BATCH_ALIGN: usize = 4096;
/// Largest data a record may carry (one checksum block of a chunk file): a
/// header claiming more is damaged.
pub const MAX_RECORD_DATA: usize = 256 * 1024;
/// Records written per `pwrite` + `fdatasync` at most.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// The committer looks for a volume to compact after this long without work.
const IDLE_COMPACT_AFTER: Duration = Duration::from_secs(2);
/// A sealed volume is compacted once at least this share of it is garbage.
const COMPACT_GARBAGE_RATIO: f64 = 0.5;

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

/// `n` rounded up to the next batch boundary.
fn align(n: usize) -> usize {
    n.div_ceil(BATCH_ALIGN) * BATCH_ALIGN
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn encode<P: AsRef<[u8]>>(
    buf: &mut Vec<u8>,
    kind: u8,
    id: &ChunkId,
    parts: &[P],
    size: u32,
    crc: u32,
) {
    encode_as(buf, MAGIC, kind, id, parts, size, crc);
}

fn encode_as<P: AsRef<[u8]>>(
    buf: &mut Vec<u8>,
    magic: &[u8; 4],
    kind: u8,
    id: &ChunkId,
    parts: &[P],
    size: u32,
    crc: u32,
) {
    let start = buf.len();
    buf.extend_from_slice(magic);
    buf.extend_from_slice(&[kind, 0, 0, 0]);
    buf.extend_from_slice(&size.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let mut h = crc32c::crc32c(&buf[start..start + 20]);
    h = crc32c::crc32c_append(h, id.as_str().as_bytes());
    buf.extend_from_slice(&h.to_le_bytes());
    buf.extend_from_slice(id.as_str().as_bytes());
    for p in parts {
        buf.extend_from_slice(p.as_ref());
    }
}

/// Ends the batch in `buf` (its records, from the start): appends its commit
/// record, then zeros up to the next boundary.
fn close_batch(buf: &mut Vec<u8>) {
    let len = u32::try_from(buf.len()).expect("a batch is far below 4 GiB");
    let crc = crc32c::crc32c(buf);
    let start = buf.len();
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&[KIND_COMMIT, 0, 0, 0]);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let h = crc32c::crc32c(&buf[start..start + 20]);
    buf.extend_from_slice(&h.to_le_bytes());
    buf.resize(align(buf.len()), 0);
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
    /// Old format ("DFV1"): not part of a committed batch.
    v1: bool,
}

impl Record {
    fn len(&self) -> usize {
        RECORD_OVERHEAD + self.size as usize
    }
}

/// What starts at some offset of a volume.
enum Item {
    Record(Record),
    /// A commit record: the batch before it is `len` bytes whose CRC32C is
    /// `crc`.
    Commit {
        len: u32,
        crc: u32,
    },
}

/// Parses the record at `at`; `None` when no valid header starts there (or
/// its data runs past the end).
fn parse_at(data: &[u8], at: usize) -> Option<Item> {
    let h = data.get(at..at.checked_add(HEADER_LEN)?)?;
    let v1 = if &h[0..4] == MAGIC {
        false
    } else if &h[0..4] == MAGIC_V1 {
        true
    } else {
        return None;
    };
    if h[5..8] != [0, 0, 0] {
        return None;
    }
    let u32_at = |h: &[u8], i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let kind = h[4];
    if kind == KIND_COMMIT {
        let valid = !v1 && h[16..20] == [0; 4] && crc32c::crc32c(&h[..20]) == u32_at(h, 20);
        return valid.then(|| Item::Commit {
            len: u32_at(h, 8),
            crc: u32_at(h, 12),
        });
    }
    let h = data.get(at..at + RECORD_OVERHEAD)?;
    let want = crc32c::crc32c_append(crc32c::crc32c(&h[..20]), &h[HEADER_LEN..]);
    if want != u32_at(h, 20) {
        return None;
    }
    let size = u32_at(h, 8);
    if !(kind == KIND_PUT || kind == KIND_DELETE) || size as usize > MAX_RECORD_DATA {
        return None;
    }
    let id = std::str::from_utf8(&h[HEADER_LEN..])
        .ok()
        .and_then(|s| ChunkId::parse(s).ok())?;
    let body = data.get(at + RECORD_OVERHEAD..at + RECORD_OVERHEAD + size as usize)?;
    let crc = u32_at(h, 12);
    Some(Item::Record(Record {
        kind,
        id,
        offset: at as u64,
        size,
        crc,
        intact: kind == KIND_DELETE || crc32c::crc32c(body) == crc,
        v1,
    }))
}

/// The first valid commit record at or after `from`: its offset and the
/// start of its batch.
fn next_commit(data: &[u8], from: usize) -> Option<(usize, usize)> {
    (from..data.len()).find_map(|p| match parse_at(data, p) {
        Some(Item::Commit { len, .. }) => Some((p, p.checked_sub(len as usize)?)),
        _ => None,
    })
}

/// The start of the first batch at or after `from` that still has its
/// commit record.
fn batch_after(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some((p, start)) = next_commit(data, at) {
        if start >= from && start.is_multiple_of(BATCH_ALIGN) {
            return Some(start);
        }
        at = p + 1;
    }
    None
}

/// One group commit as found in a volume.
struct Batch {
    /// Its records; when it is not whole, those whose header still parses
    /// and, as a put that is not intact, a record whose header is damaged
    /// but whose chunk id is still readable.
    records: Vec<Record>,
    /// Where it ends: after its commit record; without one, where the next
    /// batch starts or the volume's bytes end.
    end: usize,
    /// Its commit record is there and matches it.
    whole: bool,
    /// A later batch follows it (so it was acknowledged).
    followed: bool,
}

/// Parses the batch (of new-format records) that starts at `start`.
fn parse_batch(data: &[u8], start: usize) -> Batch {
    let mut records = Vec::new();
    let mut at = start;
    loop {
        match parse_at(data, at) {
            Some(Item::Record(r)) if !r.v1 => {
                at += r.len();
                records.push(r);
            }
            Some(Item::Commit { len, crc })
                if at > start
                    && at - start == len as usize
                    && crc32c::crc32c(&data[start..at]) == crc =>
            {
                return Batch {
                    records,
                    end: at + HEADER_LEN,
                    whole: true,
                    followed: false,
                };
            }
            _ => break,
        }
    }
    // Torn or damaged from `at` on: its own commit record, or else the next
    // batch's, tells where it ends.
    let (mut own, mut next) = (None, None);
    let mut from = at;
    while let Some((p, b)) = next_commit(data, from) {
        if b == start {
            own = Some(p);
            break;
        }
        if b > start && b >= at && b.is_multiple_of(BATCH_ALIGN) {
            next = Some(b);
            break;
        }
        from = p + 1;
    }
    let data_end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let stop = own.or(next).unwrap_or(data_end).max(at);
    // The record expected at `at`: its id, if still readable.
    if at < stop
        && let Some(id) = data
            .get(at + HEADER_LEN..at + RECORD_OVERHEAD)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| ChunkId::parse(s).ok())
    {
        records.push(Record {
            kind: KIND_PUT,
            id,
            offset: at as u64,
            size: 0,
            crc: 0,
            intact: false,
            v1: false,
        });
    }
    // Any record after the damage that still parses.
    let mut i = at + 1;
    while i < stop {
        match parse_at(data, i) {
            Some(Item::Record(r)) if !r.v1 && i + r.len() <= stop => {
                i += r.len();
                records.push(r);
            }
            _ => i += 1,
        }
    }
    let end = own.map_or(stop, |p| p + HEADER_LEN);
    let followed = next.is_some() || (own.is_some() && batch_after(data, align(end)).is_some());
    Batch {
        records,
        end,
        whole: false,
        followed,
    }
}

/// What [`parse_volume`] found.
#[derive(Debug, Default)]
struct Parsed {
    /// Every record, in order: those of whole batches and of old-format
    /// volumes, and what could be told of damaged batches (see [`Batch`]).
    records: Vec<Record>,
    /// Where the records end (the end of the last batch's commit record).
    end: usize,
    /// Where a torn tail starts, to be cut away in the active volume: its
    /// last batch when that is not whole (on a boundary), or an old-format
    /// record that does not parse.
    torn: Option<usize>,
    /// Batches of acknowledged records found damaged.
    damaged: u64,
}

/// Parses a volume's bytes (see the module's documentation); `active`: this
/// is the active volume, whose last batch may be torn.
fn parse_volume(data: &[u8], name: &str, active: bool) -> Parsed {
    let mut out = Parsed::default();
    let mut at = 0;
    while at < data.len() && !is_zero(&data[at..]) {
        match parse_at(data, at) {
            Some(Item::Record(r)) if r.v1 => {
                at += r.len();
                out.end = at;
                out.records.push(r);
                continue;
            }
            Some(_) => {}
            None => {
                let boundary = align(at).min(data.len());
                if boundary > at && is_zero(&data[at..boundary]) {
                    // After old-format records: the first batch starts on
                    // the next boundary.
                    at = boundary;
                    continue;
                }
                let next = (at + 1..data.len()).find(|&i| parse_at(data, i).is_some());
                let old_next = next
                    .is_some_and(|n| matches!(parse_at(data, n), Some(Item::Record(r)) if r.v1));
                if !at.is_multiple_of(BATCH_ALIGN) || old_next {
                    // Among old-format records.
                    match next {
                        Some(n) => {
                            tracing::error!(
                                volume = name,
                                offset = at,
                                skipped = n - at,
                                "damaged bytes in a volume skipped; records in them are lost"
                            );
                            at = n;
                            continue;
                        }
                        None => {
                            out.torn = Some(at);
                            break;
                        }
                    }
                }
            }
        }
        let batch = parse_batch(data, at);
        if batch.whole {
            let next = align(batch.end);
            if !is_zero(&data[batch.end..next.min(data.len())]) {
                tracing::warn!(
                    volume = name,
                    offset = batch.end,
                    "non-zero bytes after a batch's commit record (no record is there)"
                );
            }
            out.records.extend(batch.records);
            out.end = batch.end;
            at = next;
            continue;
        }
        if active && !batch.followed {
            out.torn = Some(at);
            break;
        }
        out.damaged += 1;
        let failing: Vec<&str> = batch
            .records
            .iter()
            .filter(|r| !r.intact)
            .map(|r| r.id.as_str())
            .collect();
        tracing::error!(
            volume = name,
            offset = at,
            bytes = batch.end - at,
            corrupt = ?failing,
            "a batch of acknowledged records is damaged; the records that still verify are kept, \
             the others are reported corrupt (a record whose id is unreadable is lost)"
        );
        out.records.extend(batch.records);
        out.end = batch.end;
        at = align(batch.end);
    }
    // An old-format put at the end of the active volume whose data is
    // incomplete or damaged was never acknowledged: torn like a partial
    // header.
    if active
        && out.torn.is_none()
        && out
            .records
            .last()
            .is_some_and(|r| r.v1 && !r.intact && r.offset as usize + r.len() == out.end)
    {
        let r = out.records.pop().expect("a last record");
        out.end = r.offset as usize;
        out.torn = Some(out.end);
    }
    out
}

/// What replaying the volumes found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Live small chunks.
    pub chunks: HashMap<ChunkId, StoredChunk>,
    /// The index of those chunks.
    pub index: Index,
    /// Chunks whose latest record failed its CRC, or whose latest record's
    /// header is damaged (in a batch of acknowledged records).
    pub corrupt: Vec<ChunkId>,
    /// Batches of acknowledged records found damaged.
    pub damaged_batches: u64,
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
        let active = Some(seq) == last;
        let parsed = parse_volume(&data, &name, active);
        let size = parsed.end as u64;
        out.damaged_batches += parsed.damaged;
        if let Some(torn) = parsed.torn {
            if !active {
                tracing::error!(volume = %name, offset = torn, "sealed volume ends in a damaged record");
            } else if repair {
                tracing::warn!(
                    volume = %name,
                    offset = torn,
                    dropped = data.len() - torn,
                    "truncating the torn tail of the active volume (a write that was never acknowledged)"
                );
                file.set_len(torn as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err("truncate", &path))?;
            }
        }
        out.index.volumes.insert(seq, VolumeStat { size, live: 0 });
        for r in parsed.records {
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
        /// The writer's claim on the id, released once it is indexed.
        claim: Option<ClaimGuard>,
        /// The session's promised space, settled as the chunk is indexed.
        reservation: Option<Reservation>,
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
        if replayed.damaged_batches > 0 {
            metrics
                .checksum_failures
                .with_label_values(&["volume"])
                .inc_by(replayed.damaged_batches);
        }
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
            seal_active: false,
            files: files.clone(),
            state,
            metrics,
            on_change,
            buf: Vec::new(),
            retry_deletes: Vec::new(),
        };
        match active {
            Some((seq, file)) => {
                writer.len = replayed.index.volumes.get(&seq).map_or(0, |v| v.size);
                writer.allocated = file.metadata().map_or(writer.len, |m| m.len());
                // An old-format volume without zeros ahead ends inside a
                // sector that holds acknowledged records: extending the file
                // would write that sector again.
                writer.seal_active = !writer.allocated.is_multiple_of(BATCH_ALIGN as u64);
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
    pub fn put(
        &self,
        id: &ChunkId,
        parts: Vec<Bytes>,
        size: u32,
        crc: u32,
        claim: Option<ClaimGuard>,
        reservation: Option<Reservation>,
    ) -> PendingPut {
        let (reply, rx) = oneshot::channel();
        let job = Job::Put {
            id: id.clone(),
            parts,
            size,
            crc,
            reply,
            claim,
            reservation,
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

    /// The job comes back whole when the committer has stopped (a cold path),
    /// so its waiter can be answered: the error's size does not matter.
    #[allow(clippy::result_large_err)]
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

    /// True while the committer thread runs (false once it stopped:
    /// closed, or dead after a panic, when no small chunk can be written).
    pub fn committer_alive(&self) -> bool {
        self.join
            .lock()
            .expect("volume join lock")
            .as_ref()
            .is_some_and(|j| !j.is_finished())
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
    /// End of the records in the active volume (of the last batch's commit
    /// record); the next batch starts on the boundary at or after it.
    len: u64,
    /// Length of the active volume's file (records, then zeros).
    allocated: u64,
    /// The next batch starts a new volume (the active one's file ends
    /// inside a sector).
    seal_active: bool,
    files: Arc<RwLock<HashMap<u32, Arc<File>>>>,
    state: Arc<Mutex<State>>,
    metrics: Metrics,
    on_change: OnChange,
    buf: Vec<u8>,
    /// Delete records of a batch whose commit failed: written with the
    /// next batch (a dropped one would leave the chunk live on disk until
    /// a restart found it an orphan).
    retry_deletes: Vec<ChunkId>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let first = match rx.recv_timeout(IDLE_COMPACT_AFTER) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if !self.retry_deletes.is_empty() {
                        let batch = self.retry_deletes.drain(..).map(Job::Delete).collect();
                        self.commit(batch);
                    }
                    if let Err(e) = self.compact_one() {
                        tracing::error!("volume compaction failed: {e}");
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<Job> = self.retry_deletes.drain(..).map(Job::Delete).collect();
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
        self.seal_active = false;
        Ok(())
    }

    /// Appends the records in `self.buf` to the active volume as one batch
    /// (closed by its commit record and zeros up to the next boundary, see
    /// [`close_batch`]), on a boundary, and makes it durable; returns where
    /// the batch starts. On failure the file is cut back to that start so
    /// the next batch overwrites the attempt.
    fn append(&mut self) -> Result<u64, StoreError> {
        if self.file.is_none() || self.len >= self.volume_bytes || self.seal_active {
            self.rotate()?;
        }
        let records = self.buf.len() as u64 + HEADER_LEN as u64;
        close_batch(&mut self.buf);
        let file = self.file.as_ref().expect("active volume");
        let at = self.len.div_ceil(BATCH_ALIGN as u64) * BATCH_ALIGN as u64;
        let path = self.dir.join(volume_name(self.seq));
        let end = at + self.buf.len() as u64;
        // Past the zeros written ahead: write the next stretch of zeros with
        // this batch, under the same fdatasync.
        let grow_to = (self.prealloc_bytes > 0 && end > self.allocated).then(|| {
            (end.div_ceil(self.prealloc_bytes) * self.prealloc_bytes).div_ceil(BATCH_ALIGN as u64)
                * BATCH_ALIGN as u64
        });
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
        self.len = at + records;
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
                Job::Delete(id) => encode::<&[u8]>(&mut self.buf, KIND_DELETE, id, &[], 0, 0),
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
                // Every waiter gets the disk's kind of error (a full disk
                // stays a full disk to the caller).
                let kind = match &e {
                    StoreError::Io { source, .. } => source.kind(),
                    _ => std::io::ErrorKind::Other,
                };
                for job in batch {
                    match job {
                        Job::Put { reply, .. } => {
                            let _ = reply.send(Err(StoreError::Io {
                                action: "append to",
                                path: self.dir.clone(),
                                source: std::io::Error::new(kind, msg.clone()),
                            }));
                        }
                        Job::Delete(id) => self.retry_deletes.push(id),
                        Job::Compact(_) => {}
                    }
                }
                return;
            }
        };
        if puts > 0 {
            self.metrics.volume_commit_chunks.observe(puts as f64);
        }
        let mut replies = Vec::with_capacity(puts);
        // Released after the store lock (a guard's drop takes it).
        let mut claims = Vec::with_capacity(puts);
        let mut settled = Vec::with_capacity(puts);
        {
            let mut st = self.state.lock().expect("store lock");
            for (job, off) in batch.into_iter().zip(offsets) {
                match job {
                    Job::Put {
                        id,
                        size,
                        crc,
                        reply,
                        claim,
                        reservation,
                        ..
                    } => {
                        claims.push(claim);
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
                        if let Some(mut r) = reservation {
                            r.settle(&mut st);
                            settled.push(r);
                        }
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
        drop((claims, settled));
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
        let records = parse_volume(&data, &volume_name(victim), false).records;
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
            let at = r.offset as usize + RECORD_OVERHEAD;
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
            // Written anew: an old-format record becomes a new-format one.
            let body = &data[at..at + r.size as usize];
            encode(&mut self.buf, r.kind, &r.id, &[body], r.size, r.crc);
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

    /// An old-format record.
    fn record(kind: u8, n: u8, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        encode_as(
            &mut b,
            MAGIC_V1,
            kind,
            &id(n),
            &[data],
            data.len() as u32,
            crc32c::crc32c(data),
        );
        b
    }

    /// A new-format batch of puts.
    fn batch(puts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, data) in puts {
            let crc = crc32c::crc32c(data);
            encode(&mut b, KIND_PUT, &id(*n), &[data], data.len() as u32, crc);
        }
        close_batch(&mut b);
        b
    }

    fn parse(v: &[u8], active: bool) -> (Vec<Record>, Option<usize>, usize) {
        let p = parse_volume(v, "t", active);
        (p.records, p.torn, p.end)
    }

    #[test]
    fn old_format_records_round_trip_and_damage_is_skipped() {
        let mut v = record(KIND_PUT, 1, b"hello");
        v.extend(record(KIND_DELETE, 1, b""));
        let third = v.len();
        v.extend(record(KIND_PUT, 2, b"world"));
        let (rs, torn, end) = parse(&v, true);
        assert_eq!(end, v.len());
        assert_eq!(torn, None);
        assert_eq!(rs.len(), 3);
        assert_eq!((rs[0].kind, rs[0].size, rs[0].intact), (KIND_PUT, 5, true));
        assert_eq!(rs[1].kind, KIND_DELETE);
        assert_eq!(rs[2].offset, third as u64);

        // A flipped header byte: that record is skipped, the next survives.
        let mut bad = v.clone();
        bad[third - 10] ^= 0xff; // inside the delete record's id
        let (rs, torn, _) = parse(&bad, true);
        assert_eq!(torn, None);
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[1].id, id(2));

        // A flipped data byte: the header still parses, the data does not.
        let mut bad = v.clone();
        bad[RECORD_OVERHEAD + 1] ^= 1;
        let (rs, _, _) = parse(&bad, true);
        assert!(!rs[0].intact);

        // A torn tail is reported where the valid prefix ends.
        let (rs, torn, _) = parse(&v[..v.len() - 3], true);
        assert_eq!(rs.len(), 2);
        assert_eq!(torn, Some(third));
    }

    #[test]
    fn zeros_after_old_format_records_are_preallocated_space_not_damage() {
        // The last chunk's own bytes end in zeros: still whole.
        let mut v = record(KIND_PUT, 1, b"hello");
        let second = v.len();
        v.extend(record(KIND_PUT, 2, &[7, 0, 0, 0]));
        let records_end = v.len();
        v.resize(records_end + 4096, 0);
        let (rs, torn, end) = parse(&v, true);
        assert_eq!((rs.len(), torn, end), (2, None, records_end));
        assert!(rs[1].intact);
        // A header torn inside the zeros is torn, not preallocation.
        v[records_end + 3] = 0x55;
        let (rs, torn, end) = parse(&v, true);
        assert_eq!((rs.len(), torn, end), (2, Some(records_end), records_end));
        // A record whose data did not make it (zeros where it should be)
        // fails its CRC and ends the records: in the active volume it is
        // torn, in a sealed one reported.
        let mut w = v[..second].to_vec();
        let whole = record(KIND_PUT, 2, b"world");
        w.extend_from_slice(&whole[..RECORD_OVERHEAD]);
        w.resize(w.len() + 4096, 0);
        let (rs, torn, end) = parse(&w, false);
        assert_eq!((rs.len(), torn), (2, None));
        assert!(!rs[1].intact);
        assert_eq!(end, second + whole.len());
        let (rs, torn, end) = parse(&w, true);
        assert_eq!((rs.len(), torn, end), (1, Some(second), second));
    }

    #[test]
    fn batches_follow_old_format_records_on_the_next_boundary() {
        let mut v = record(KIND_PUT, 1, b"old");
        assert!(v.len() < BATCH_ALIGN);
        v.resize(BATCH_ALIGN, 0);
        let first = batch(&[(2, b"new"), (3, &[0; 5000])]);
        let first_end = BATCH_ALIGN + 2 * RECORD_OVERHEAD + 5003 + HEADER_LEN;
        v.extend(first);
        let second = v.len();
        assert_eq!(second, 3 * BATCH_ALIGN, "a batch ends on a boundary");
        v.extend(batch(&[(4, b"last")]));
        v.resize(v.len() + 8192, 0);
        let p = parse_volume(&v, "t", true);
        let ids: Vec<_> = p.records.iter().map(|r| (r.id.clone(), r.v1)).collect();
        assert_eq!(
            ids,
            vec![
                (id(1), true),
                (id(2), false),
                (id(3), false),
                (id(4), false)
            ]
        );
        assert!(p.records.iter().all(|r| r.intact));
        assert_eq!(p.records[1].offset, BATCH_ALIGN as u64);
        assert_eq!(p.end, second + RECORD_OVERHEAD + 4 + HEADER_LEN);
        assert_eq!((p.torn, p.damaged), (None, 0));

        // The last batch's data damaged: torn in the active volume (it may
        // be a write that never completed), damage (reported, not cut) in a
        // sealed one.
        let mut t = v.clone();
        t[second + RECORD_OVERHEAD + 1] ^= 1;
        let p = parse_volume(&t, "t", true);
        assert_eq!((p.records.len(), p.torn, p.damaged), (3, Some(second), 0));
        assert_eq!(p.end, first_end);
        let p = parse_volume(&t, "t", false);
        assert_eq!((p.records.len(), p.torn, p.damaged), (4, None, 1));
        assert!(!p.records[3].intact);
        // Its commit record damaged: the records still verify.
        let mut t = v.clone();
        t[second + RECORD_OVERHEAD + 4 + 10] ^= 1;
        let p = parse_volume(&t, "t", false);
        assert_eq!((p.records.len(), p.torn, p.damaged), (4, None, 1));
        assert!(p.records[3].intact);
        // The first batch's commit record damaged, in the active volume: a
        // batch follows, so it was acknowledged; nothing is lost.
        let mut t = v.clone();
        t[first_end - 5] ^= 1;
        let p = parse_volume(&t, "t", true);
        assert_eq!((p.records.len(), p.torn, p.damaged), (4, None, 1));
        assert!(p.records.iter().all(|r| r.intact));
    }

    use crate::metrics::Metrics;
    use crate::store::{Store, StoreOptions};

    /// Where every batch starts (4 KiB).
    const SECTOR: usize = 4096;

    fn open(dir: &Path, volume_bytes: u64, prealloc: u64) -> Arc<crate::store::Store> {
        let options = StoreOptions {
            volume_bytes,
            volume_prealloc_bytes: prealloc,
            ..StoreOptions::default()
        };
        Store::open(dir, options, Metrics::new()).unwrap()
    }

    fn put(s: &Store, n: u8, data: &[u8]) {
        let parts = vec![Bytes::copy_from_slice(data)];
        s.put_small(&id(n), parts, data.len() as u64, Some(crc32c::crc32c(data)))
            .unwrap()
            .wait_blocking()
            .unwrap();
    }

    /// The live small chunks of `dir` (read-only replay): id → (volume, record
    /// offset, data).
    fn chunks(dir: &Path) -> std::collections::BTreeMap<u8, (PathBuf, usize, Vec<u8>)> {
        inspect(dir)
            .unwrap()
            .into_iter()
            .map(|c| {
                let bytes = fs::read(&c.path).unwrap();
                let at = c.data_offset as usize;
                let data = bytes[at..at + c.meta.size as usize].to_vec();
                assert_eq!(crc32c::crc32c(&data), c.meta.checksum);
                let n = u8::from_str_radix(&c.id.as_str()[..2], 16).unwrap();
                (n, (c.path, at - RECORD_OVERHEAD, data))
            })
            .collect()
    }

    fn volume_paths(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir.join("volumes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    fn data(n: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ n).collect()
    }

    #[test]
    fn group_commits_start_on_a_fresh_sector_and_never_rewrite_acknowledged_ones() {
        for prealloc in [0, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let s = open(dir.path(), 32 << 20, prealloc);
            put(&s, 1, &data(1, 100));
            let vol = volume_paths(dir.path()).pop().unwrap();
            let after_one = fs::read(&vol).unwrap();
            if prealloc == 0 {
                // The batch's own write runs to the boundary: the gap is
                // zeros on disk, not a hole or stale bytes.
                assert_eq!(after_one.len(), SECTOR, "prealloc {prealloc}");
            }
            put(&s, 2, &data(2, 5000)); // two sectors
            let after_two = fs::read(&vol).unwrap();
            assert_eq!(
                after_two[..SECTOR],
                after_one[..SECTOR],
                "the first batch's sector is untouched (prealloc {prealloc})"
            );
            put(&s, 3, &data(3, 10));
            let after_three = fs::read(&vol).unwrap();
            assert_eq!(after_three[..3 * SECTOR], after_two[..3 * SECTOR]);
            let found = chunks(dir.path());
            let offsets: Vec<usize> = found.values().map(|c| c.1).collect();
            assert_eq!(offsets, vec![0, SECTOR, 3 * SECTOR], "prealloc {prealloc}");
            drop(s);
            // After a restart, appends continue on the next boundary.
            let s = open(dir.path(), 32 << 20, prealloc);
            put(&s, 4, &data(4, 10));
            drop(s);
            let found = chunks(dir.path());
            assert_eq!(found.len(), 4);
            assert_eq!(found[&4].1, 4 * SECTOR);
            for (n, c) in &found {
                assert_eq!(c.2, data(*n, c.2.len()));
            }
            assert_eq!(
                fs::read(&vol).unwrap()[..4 * SECTOR],
                after_three[..4 * SECTOR]
            );
        }
    }

    #[test]
    fn a_torn_last_batch_is_cut_back_to_its_start_and_earlier_batches_survive() {
        for prealloc in [0, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let s = open(dir.path(), 32 << 20, prealloc);
            put(&s, 1, &data(1, 100));
            put(&s, 2, &data(2, 5000));
            put(&s, 3, &data(3, 20_000)); // batch 3: five sectors
            drop(s);
            let vol = volume_paths(dir.path()).pop().unwrap();
            let whole = fs::read(&vol).unwrap();
            let third = chunks(dir.path())[&3].1;
            assert_eq!(third, 3 * SECTOR);
            let commit_at = third + RECORD_OVERHEAD + 20_000;
            let tears = [
                "half a header",
                "no commit record",
                "a middle sector never landed",
            ];
            for what in tears {
                let mut torn = whole.clone();
                match what {
                    "half a header" => torn.truncate(third + 30),
                    "no commit record" => torn[commit_at..].fill(0),
                    _ => torn[third + SECTOR..third + 2 * SECTOR].fill(0),
                }
                fs::write(&vol, &torn).unwrap();
                let s = open(dir.path(), 32 << 20, prealloc);
                let len = fs::metadata(&vol).unwrap().len() as usize;
                assert_eq!(len, third, "{what}: cut back to the batch's start");
                assert!(s.get(&id(3)).is_none(), "{what}: never acknowledged");
                assert!(s.take_delta().corrupt.is_empty(), "{what}");
                assert_eq!(s.chunk_count(), 2, "{what}");
                put(&s, 5, &data(5, 10));
                drop(s);
                let found = chunks(dir.path());
                assert_eq!(
                    found.keys().copied().collect::<Vec<_>>(),
                    vec![1, 2, 5],
                    "{what}"
                );
                assert_eq!(found[&5].1, third, "{what}: the next batch takes its place");
                for (n, c) in &found {
                    assert_eq!(c.2, data(*n, c.2.len()), "{what}");
                }
            }
        }
    }

    #[test]
    fn damage_to_an_acknowledged_record_is_reported_corrupt_and_nothing_is_cut() {
        // (what, which byte of chunk 2's record to flip)
        let cases = [
            ("its data", RECORD_OVERHEAD + 1000),
            ("its header's size field", 9),
            ("its header's CRC", 21),
            ("its id", HEADER_LEN + 5),
        ];
        for (what, at) in cases {
            for sealed in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                // 4 KiB volumes: every 5000-byte chunk seals its volume.
                let volume_bytes = if sealed { 4096 } else { 32 << 20 };
                let s = open(dir.path(), volume_bytes, 1 << 20);
                put(&s, 1, &data(1, 5000));
                put(&s, 2, &data(2, 5000));
                put(&s, 3, &data(3, 5000));
                drop(s);
                let (vol, rec, _) = chunks(dir.path())[&2].clone();
                let mut bytes = fs::read(&vol).unwrap();
                bytes[rec + at] ^= 0x10;
                fs::write(&vol, &bytes).unwrap();
                let s = open(dir.path(), volume_bytes, 1 << 20);
                let ctx = format!("{what}, sealed {sealed}");
                if what == "its id" {
                    // The id is unreadable: nothing to report, but the
                    // batch is not cut either.
                    assert!(s.get(&id(2)).is_none(), "{ctx}");
                } else {
                    assert_eq!(s.take_delta().corrupt, vec![id(2)], "{ctx}");
                    assert!(s.get(&id(2)).is_none(), "{ctx}");
                }
                assert_eq!(
                    fs::read(&vol).unwrap(),
                    bytes,
                    "{ctx}: the volume is not cut"
                );
                assert!(s.get(&id(1)).is_some() && s.get(&id(3)).is_some(), "{ctx}");
                put(&s, 4, &data(4, 10));
                drop(s);
                let found = chunks(dir.path());
                assert_eq!(
                    found.keys().copied().collect::<Vec<_>>(),
                    vec![1, 3, 4],
                    "{ctx}"
                );
                for (n, c) in &found {
                    assert_eq!(c.2, data(*n, c.2.len()), "{ctx}");
                }
            }
        }
    }

    #[test]
    fn a_damaged_commit_record_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 32 << 20, 1 << 20);
        put(&s, 1, &data(1, 100));
        put(&s, 2, &data(2, 100));
        put(&s, 3, &data(3, 100));
        drop(s);
        let (vol, rec, _) = chunks(dir.path())[&2].clone();
        let mut bytes = fs::read(&vol).unwrap();
        bytes[rec + RECORD_OVERHEAD + 100 + 10] ^= 1; // batch 2's commit record
        fs::write(&vol, &bytes).unwrap();
        let s = open(dir.path(), 32 << 20, 1 << 20);
        assert_eq!(s.chunk_count(), 3);
        assert!(s.take_delta().corrupt.is_empty());
        assert_eq!(fs::read(&vol).unwrap(), bytes);
    }

    #[test]
    fn old_format_volumes_still_replay_and_appends_go_on_a_fresh_sector() {
        // Written before batches were aligned and committed: contiguous
        // records, no commit records.
        let mut old = record(KIND_PUT, 1, &data(1, 300));
        old.extend(record(KIND_PUT, 2, &data(2, 5000)));
        old.extend(record(KIND_PUT, 3, &data(3, 7)));
        old.extend(record(KIND_DELETE, 1, b""));
        let records_end = old.len();
        for zeros_ahead in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("volumes")).unwrap();
            let vol = dir.path().join("volumes").join(volume_name(1));
            let mut bytes = old.clone();
            if zeros_ahead {
                bytes.resize(64 << 10, 0);
            } else {
                // ... and a torn record at the end, cut the old way.
                bytes.extend_from_slice(&record(KIND_PUT, 9, b"torn")[..40]);
            }
            fs::write(&vol, &bytes).unwrap();
            let s = open(dir.path(), 32 << 20, 1 << 20);
            assert_eq!(s.chunk_count(), 2, "zeros ahead {zeros_ahead}");
            assert!(s.take_delta().corrupt.is_empty());
            assert_eq!(
                fs::read(&vol).unwrap(),
                bytes[..if zeros_ahead {
                    bytes.len()
                } else {
                    records_end
                }]
            );
            put(&s, 4, &data(4, 10));
            drop(s);
            let s = open(dir.path(), 32 << 20, 1 << 20);
            assert_eq!(s.chunk_count(), 3);
            drop(s);
            let found = chunks(dir.path());
            assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
            for (n, c) in &found {
                assert_eq!(c.2, data(*n, c.2.len()));
            }
            if zeros_ahead {
                // The same volume, on the boundary after the old records.
                assert_eq!(found[&4].0, vol);
                assert_eq!(found[&4].1, records_end.div_ceil(SECTOR) * SECTOR);
            } else {
                // The old file ends inside a sector: a new volume, so that
                // sector is never written again.
                assert_eq!(found[&4].0, dir.path().join("volumes").join(volume_name(2)));
                assert_eq!(fs::read(&vol).unwrap(), old);
            }
        }
    }

    #[test]
    fn volume_names_parse() {
        assert_eq!(parse_volume_name(&volume_name(0x1a)), Some(0x1a));
        assert_eq!(parse_volume_name("0000001a.tmp"), None);
        assert_eq!(parse_volume_name("1a.vol"), None);
    }
}
