//! Moving chunk bytes between local files and frame streams without
//! blocking the async workers: a blocking thread per transfer reads (or
//! writes) with positional I/O and hands frames over a bounded channel, so
//! at most a few frames per chunk are in memory however large the chunk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dfs_proto::ChunkData;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Frames buffered between the disk thread and the network per transfer.
pub(crate) const FRAME_QUEUE_DEPTH: usize = 4;

/// Where the bytes of an upload come from. Either way a chunk can be read
/// again, which is what lets a failed chunk be retried on other nodes.
#[derive(Clone)]
pub(crate) enum Source {
    /// A local file, read with positional I/O on a blocking thread.
    File(Arc<File>),
    /// Bytes already in memory (small objects), sliced without copying.
    Memory(Bytes),
}

/// The frames of one chunk and a handle resolving to its whole CRC32C.
pub(crate) type ChunkFrames = (
    mpsc::Receiver<io::Result<ChunkData>>,
    JoinHandle<io::Result<u32>>,
);

/// Reads `len` bytes of `source` starting at `file_offset` as `ChunkData`
/// frames of `frame_bytes` (offsets relative to the chunk, checksummed, the
/// last one `is_final`). Returns the frame stream and a handle resolving to
/// the whole chunk's CRC32C once every frame was read.
pub(crate) fn read_chunk_frames(
    source: &Source,
    file_offset: u64,
    len: u64,
    frame_bytes: usize,
) -> ChunkFrames {
    match source {
        Source::File(file) => read_file_frames(file.clone(), file_offset, len, frame_bytes),
        Source::Memory(bytes) => {
            let start = file_offset as usize;
            let chunk = bytes.slice(start..start + len as usize);
            slice_frames(chunk, frame_bytes)
        }
    }
}

/// Frames over bytes in memory: slices of one buffer, no copies.
fn slice_frames(chunk: Bytes, frame_bytes: usize) -> ChunkFrames {
    let (tx, rx) = mpsc::channel(FRAME_QUEUE_DEPTH);
    let handle = tokio::spawn(async move {
        let len = chunk.len();
        let mut pos = 0;
        loop {
            let n = (len - pos).min(frame_bytes);
            let data = chunk.slice(pos..pos + n);
            let is_final = pos + n == len;
            let frame = ChunkData::frame(data, pos as u64, is_final);
            pos += n;
            if tx.send(Ok(frame)).await.is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "transfer abandoned",
                ));
            }
            if is_final {
                return Ok(dfs_proto::frame::checksum(&chunk));
            }
        }
    });
    (rx, handle)
}

fn read_file_frames(
    file: Arc<File>,
    file_offset: u64,
    len: u64,
    frame_bytes: usize,
) -> ChunkFrames {
    let (tx, rx) = mpsc::channel(FRAME_QUEUE_DEPTH);
    let handle = tokio::task::spawn_blocking(move || {
        // One allocation reused for every frame: BytesMut reclaims its
        // buffer once the frames split off it have been sent and dropped.
        let mut buf = BytesMut::with_capacity(frame_bytes * (FRAME_QUEUE_DEPTH + 2));
        let mut crc = 0u32;
        let mut pos = 0u64;
        loop {
            let n = (len - pos).min(frame_bytes as u64) as usize;
            buf.reserve(n);
            buf.resize(n, 0);
            if let Err(e) = file.read_exact_at(&mut buf[..n], file_offset + pos) {
                let _ = tx.blocking_send(Err(io::Error::new(
                    e.kind(),
                    format!(
                        "failed to read local file at offset {}: {e}",
                        file_offset + pos
                    ),
                )));
                return Err(e);
            }
            let data: Bytes = buf.split_to(n).freeze();
            crc = dfs_proto::frame::checksum_append(crc, &data);
            let is_final = pos + n as u64 == len;
            let frame = ChunkData::frame(data, pos, is_final);
            pos += n as u64;
            if tx.blocking_send(Ok(frame)).is_err() {
                // The transfer was abandoned; nothing more to read.
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "transfer abandoned",
                ));
            }
            if is_final {
                return Ok(crc);
            }
        }
    });
    (rx, handle)
}

/// A blocking writer thread that puts `(file offset, bytes)` pieces into a
/// local file with positional writes.
pub(crate) struct PositionalWriter {
    tx: mpsc::Sender<(u64, Bytes)>,
    handle: JoinHandle<io::Result<()>>,
    /// Why the writer thread stopped, for the callers still sending.
    failed: Arc<std::sync::OnceLock<String>>,
}

impl PositionalWriter {
    /// Starts a writer thread for `file`.
    pub(crate) fn start(file: Arc<File>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(u64, Bytes)>(FRAME_QUEUE_DEPTH);
        let failed = Arc::new(std::sync::OnceLock::new());
        let why = failed.clone();
        let handle = tokio::task::spawn_blocking(move || {
            while let Some((offset, data)) = rx.blocking_recv() {
                if let Err(e) = file.write_all_at(&data, offset) {
                    let _ = why.set(e.to_string());
                    return Err(e);
                }
            }
            Ok(())
        });
        PositionalWriter { tx, handle, failed }
    }

    /// Queues `data` for `offset` (waits when the writer is behind).
    pub(crate) async fn write(&self, offset: u64, data: Bytes) -> io::Result<()> {
        if self.tx.send((offset, data)).await.is_err() {
            // The disk's own reason (ENOSPC, EIO), not just that it stopped.
            let why = self.failed.get().map_or("", String::as_str);
            return Err(io::Error::other(format!("local writer stopped: {why}")));
        }
        Ok(())
    }

    /// Waits for every queued write to land.
    pub(crate) async fn finish(self) -> io::Result<()> {
        drop(self.tx);
        self.handle.await.map_err(io::Error::other)?
    }
}
