//! The disk layer's error and its two durable-file helpers (a directory
//! fsync, an atomic file write). The lowest module of the data path: the
//! store, the volumes and the identity files all use it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use dfs_common::id::ChunkId;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The id is stored with other bytes: chunk ids are immutable.
    #[error(
        "chunk {chunk_id} is already stored with other bytes ({reason}); a chunk id never gets different bytes"
    )]
    AlreadyExists {
        /// The chunk.
        chunk_id: ChunkId,
        /// What differs.
        reason: String,
    },
    /// Another write of the same id is being committed right now.
    #[error("chunk {chunk_id} is being written by another stream; retry")]
    Concurrent {
        /// The chunk.
        chunk_id: ChunkId,
    },
    /// The chunk is not stored here.
    #[error("chunk {chunk_id} not found")]
    NotFound {
        /// The chunk.
        chunk_id: ChunkId,
    },
    /// The chunk's bytes no longer match their checksums.
    #[error("chunk {chunk_id} is corrupt: {reason}")]
    Corrupt {
        /// The chunk.
        chunk_id: ChunkId,
        /// What did not match.
        reason: String,
    },
    /// Written data does not match what was announced.
    #[error("chunk {chunk_id}: {reason}")]
    Mismatch {
        /// The chunk.
        chunk_id: ChunkId,
        /// What did not match.
        reason: String,
    },
    /// Not enough room for the chunk.
    #[error("not enough space: {needed} bytes needed, {free} free")]
    NoSpace {
        /// Bytes asked for.
        needed: u64,
        /// Bytes free after the reserve and open sessions.
        free: u64,
    },
    /// The range asked for is outside the chunk.
    #[error("range {offset}+{length} is outside chunk {chunk_id} of {size} bytes")]
    OutOfRange {
        /// The chunk.
        chunk_id: ChunkId,
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        length: u64,
        /// Size of the chunk.
        size: u64,
    },
    /// The reader of a range stopped early (the consumer went away).
    #[error("read cancelled")]
    Cancelled,
    /// An I/O call failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Fsyncs a directory so a rename or creation inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename, fsync of
/// the directory).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(contents).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Gives `dir` (created when missing) and everything under it to
/// `uid:gid`, changing only what belongs to someone else; returns how many
/// entries changed. Symbolic links are changed themselves, never followed.
/// A directory that already belongs to `uid:gid` is not descended into:
/// what is below it was made by that user (the datanode) or by an earlier
/// run, and the caller holds CAP_CHOWN only, not the right to read another
/// user's private directories. That holds because a directory changes
/// owner only after everything under it did (depth first, the directory
/// last): a run killed part-way leaves the directory it was in still
/// root's, and the next run completes it. For `--chown-data-dir`: a
/// kubelet-made hostPath directory handed to the datanode's unprivileged
/// user. Blocking.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<u64> {
    chown_tree_at_most(dir, uid, gid, u64::MAX)
}

/// [`chown_tree`] that stops after `budget` changes (a run cut short, for
/// tests).
fn chown_tree_at_most(dir: &Path, uid: u32, gid: u32, budget: u64) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::create_dir_all(dir)?;
    let mut changed = 0;
    // (path, its children are done): a directory is pushed back above its
    // children and changed when it comes up again.
    let mut pending = vec![(dir.to_path_buf(), false)];
    while let Some((path, children_done)) = pending.pop() {
        if changed == budget {
            break;
        }
        if !children_done {
            let meta = fs::symlink_metadata(&path)?;
            if meta.uid() == uid && meta.gid() == gid {
                continue;
            }
            // The children are listed while the directory is still root's:
            // after the change, root without DAC_READ_SEARCH may not read it.
            if meta.is_dir() {
                pending.push((path.clone(), true));
                for entry in fs::read_dir(&path)? {
                    pending.push((entry?.path(), false));
                }
                continue;
            }
        }
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        changed += 1;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn owners(dir: &Path) -> Vec<(PathBuf, u32, u32)> {
        let mut out = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(p) = pending.pop() {
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                for e in fs::read_dir(&p).unwrap() {
                    pending.push(e.unwrap().path());
                }
            }
            out.push((p, meta.uid(), meta.gid()));
        }
        out
    }

    /// A run cut short after any number of changes is completed by the
    /// next one: no directory is marked done while something under it is
    /// still someone else's. (Needs root, as the init container is: chown
    /// to another user needs CAP_CHOWN.)
    #[test]
    fn a_run_cut_short_anywhere_is_completed_by_the_next() {
        let (uid, gid) = (65532, 65533);
        for cut in 0..12 {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("data");
            for sub in ["volumes/a", "volumes/b", "chunks/00/11"] {
                fs::create_dir_all(dir.join(sub)).unwrap();
                fs::write(dir.join(sub).join("f"), b"x").unwrap();
            }
            let outside = root.path().join("outside");
            fs::write(&outside, b"not the datanode's").unwrap();
            let outside_owner = fs::metadata(&outside).unwrap().uid();
            std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
            let entries = owners(&dir).len() as u64;
            let first = chown_tree_at_most(&dir, uid, gid, cut)
                .expect("chown needs root (CAP_CHOWN), as the init container has");
            assert_eq!(first, cut.min(entries));
            let second = chown_tree(&dir, uid, gid).unwrap();
            assert_eq!(first + second, entries, "cut after {cut}");
            for (p, u, g) in owners(&dir) {
                assert_eq!((u, g), (uid, gid), "{} after a cut at {cut}", p.display());
            }
            assert_eq!(chown_tree(&dir, uid, gid).unwrap(), 0);
            // The link was changed itself, its target never.
            assert_eq!(fs::metadata(&outside).unwrap().uid(), outside_owner);
        }
    }
}
