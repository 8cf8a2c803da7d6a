//! The store's in-memory state, behind one lock that the chunk files and
//! the small-chunk volumes share: the chunk table, the ids being written
//! (claims), the changes for the next heartbeat, and where each small chunk
//! sits in the volumes. Below both [`crate::store`] and [`crate::volume`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use dfs_common::id::ChunkId;

/// Bytes of a volume record before its data (header and id; see
/// [`crate::volume`] for the format).
pub const RECORD_OVERHEAD: usize = 24 + dfs_proto::CHUNK_ID_LEN;

/// Size and checksum of a stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    /// Bytes of data.
    pub size: u64,
    /// CRC32C of the whole chunk.
    pub checksum: u32,
}

/// Changes since the last heartbeat, for the coordinator's incremental report.
#[derive(Debug, Default)]
pub struct Delta {
    /// Chunks stored.
    pub added: Vec<(ChunkId, StoredChunk)>,
    /// Chunks removed.
    pub removed: Vec<ChunkId>,
    /// Chunks found corrupt and removed.
    pub corrupt: Vec<ChunkId>,
}

impl Delta {
    /// True when there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.corrupt.is_empty()
    }
}

/// What the store knows, behind one lock (shared with the volume committer).
#[derive(Default)]
pub struct State {
    pub(crate) chunks: HashMap<ChunkId, StoredChunk>,
    pub(crate) used: u64,
    pub(crate) promised: u64,
    pub(crate) delta: Delta,
    /// Where the small chunks are in the volumes.
    pub(crate) index: Index,
    /// Ids being committed right now, with what they will hold: a second
    /// writer of the same id waits its turn instead of racing it.
    pub(crate) claims: HashMap<ChunkId, StoredChunk>,
    /// Chunks moved to `quarantine/` (corrupt), for listing.
    pub(crate) quarantined: Vec<ChunkId>,
    /// Chunks whose file could not be read at start-up (I/O error): not
    /// served, not deleted, not reported as corrupt.
    pub(crate) unavailable: Vec<ChunkId>,
}

/// Space promised to an open session: counted in [`State::promised`] until
/// its chunk is stored ([`Reservation::settle`], under the same lock as the
/// insert, so the bytes are never counted as both promised and used) or the
/// session ends without storing it (drop).
pub struct Reservation {
    pub(crate) state: Arc<Mutex<State>>,
    /// `dfs_datanode_capacity_reserved_bytes`.
    pub(crate) gauge: prometheus::IntGauge,
    pub(crate) bytes: u64,
}

impl Reservation {
    /// Bytes still promised.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The chunk is being recorded in `st`: its bytes stop being promised in
    /// the same critical section in which they start being used.
    pub(crate) fn settle(&mut self, st: &mut State) {
        st.promised = st.promised.saturating_sub(self.bytes);
        self.bytes = 0;
        self.gauge.set(st.promised as i64);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            // Settled (or empty): no lock to take, so a settled reservation
            // may be dropped while the store lock is held.
            return;
        }
        let mut st = self.state.lock().expect("store lock");
        st.promised = st.promised.saturating_sub(self.bytes);
        self.gauge.set(st.promised as i64);
    }
}

/// Releases a claimed id when the write ends (committed or not). A small
/// chunk's guard travels with its record to the volume committer, which
/// drops it only once the chunk is in the index (after releasing the store
/// lock): a writer that gives up waiting never frees the id early.
pub struct ClaimGuard {
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) id: ChunkId,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.state
            .lock()
            .expect("store lock")
            .claims
            .remove(&self.id);
    }
}

impl State {
    /// Records a stored chunk (replacing an older copy) for the next report.
    pub(crate) fn insert_chunk(&mut self, id: ChunkId, meta: StoredChunk) {
        if let Some(old) = self.chunks.insert(id.clone(), meta) {
            self.used -= old.size;
        }
        self.used += meta.size;
        self.delta.added.push((id, meta));
    }

    /// Forgets a chunk; reports its removal when it was stored.
    pub(crate) fn remove_chunk(&mut self, id: &ChunkId) -> bool {
        match self.chunks.remove(id) {
            Some(old) => {
                self.used -= old.size;
                self.delta.removed.push(id.clone());
                true
            }
            None => false,
        }
    }
}

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

    pub(crate) fn record_len(&self) -> u64 {
        RECORD_OVERHEAD as u64 + u64::from(self.size)
    }
}

/// Size and live bytes of one volume. Garbage, `size - live`, is the deleted
/// and replaced records, the delete and commit records and the zeros that
/// start each batch on a 4 KiB boundary: compaction reclaims all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeStat {
    /// Bytes up to the end of the last batch's commit record (the zeros after
    /// it, written ahead or up to the next boundary, are not counted).
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
    pub(crate) fn put(&mut self, id: ChunkId, loc: SmallLoc) -> Option<SmallLoc> {
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
