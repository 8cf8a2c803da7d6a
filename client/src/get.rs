//! Reading a file: fetch the chunk map, stream each chunk from its first
//! replica, fall over to the next replica (resuming at the same offset) when
//! one fails or sends bad bytes, and verify every chunk's checksum end to end.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use dfs_proto::DownloadChunkStreamRequest;
use dfs_proto::chunk_stream;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::client::Client;
use crate::error::ClientError;
use crate::source::PositionalWriter;
use crate::types::{ChunkLocation, FileInfo};

/// Where downloaded bytes go.
enum Sink<'a, W> {
    /// A local file written at each chunk's offset: a chunk can be rewritten
    /// from scratch when its bytes turn out wrong.
    File(&'a PositionalWriter),
    /// A stream that only goes forward (stdout, a caller's writer).
    Stream(&'a mut W),
    /// Nowhere: the bytes are verified and dropped.
    Discard,
}

impl<W: AsyncWrite + Unpin> Sink<'_, W> {
    async fn put(&mut self, file_offset: u64, data: Bytes) -> std::io::Result<()> {
        match self {
            Sink::File(writer) => writer.write(file_offset, data).await,
            Sink::Stream(writer) => writer.write_all(&data).await,
            Sink::Discard => Ok(()),
        }
    }

    fn can_rewind(&self) -> bool {
        !matches!(self, Sink::Stream(_))
    }
}

impl Client {
    /// Downloads `remote` into the local file `local`. The bytes land in a
    /// temporary file beside it that is renamed into place only once every
    /// chunk is verified, so `local` is never left half-written. A `local`
    /// that exists and is not a regular file (a device such as `/dev/null`,
    /// a FIFO) is written to in order instead, never replaced; a directory
    /// is refused.
    pub async fn get_file(&self, remote: &str, local: &Path) -> Result<FileInfo, ClientError> {
        self.get_file_with_progress(remote, local, None).await
    }

    /// [`Client::get_file`] reporting progress as bytes arrive.
    pub async fn get_file_with_progress(
        &self,
        remote: &str,
        local: &Path,
        progress: Option<crate::ProgressFn>,
    ) -> Result<FileInfo, ClientError> {
        let local_err = |source| ClientError::Local {
            path: local.to_path_buf(),
            source,
        };
        match tokio::fs::metadata(local).await {
            Ok(m) if m.is_dir() => {
                return Err(local_err(std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a directory; name the file to write",
                )));
            }
            Ok(m) if !m.is_file() => {
                let mut out = tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(local)
                    .await
                    .map_err(local_err)?;
                let info = self.get_with_progress(remote, &mut out, progress).await?;
                out.flush().await.map_err(local_err)?;
                return Ok(info);
            }
            _ => {}
        }
        let map = self.chunk_map(remote).await?;
        let renew = Renewal::new(remote, &map);
        let file_info = map.file;
        let dir = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let size = file_info.size;
        let temp = tokio::task::spawn_blocking(move || {
            let temp = tempfile::NamedTempFile::new_in(&dir)?;
            temp.as_file().set_len(size)?;
            Ok::<_, std::io::Error>(temp)
        })
        .await
        .map_err(std::io::Error::other)?
        .map_err(local_err)?;
        let file: Arc<File> = Arc::new(temp.as_file().try_clone().map_err(local_err)?);
        let writer = PositionalWriter::start(file.clone());

        let fetched: Result<(), ClientError> = futures::stream::iter(map.chunks)
            .map(|loc| {
                let (writer, renew) = (&writer, &renew);
                let progress = progress.clone();
                async move {
                    let mut sink = Sink::<tokio::io::Sink>::File(writer);
                    self.download_chunk(renew, &loc, &mut sink, progress.as_ref())
                        .await
                }
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .try_collect()
            .await;
        let finished = writer.finish().await;
        fetched?;
        finished.map_err(local_err)?;
        let local_path = local.to_path_buf();
        tokio::task::spawn_blocking(move || {
            temp.as_file().sync_all()?;
            temp.persist(&local_path).map_err(|e| e.error)?;
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(std::io::Error::other)?
        .map_err(local_err)?;
        Ok(file_info)
    }

    /// Reads every chunk of `remote` from its replicas, in parallel, and
    /// verifies every frame and chunk checksum, storing nothing: an end-to-end
    /// integrity check of a file, and the read path `dfs bench` measures.
    pub async fn verify(&self, remote: &str) -> Result<FileInfo, ClientError> {
        let map = self.chunk_map(remote).await?;
        let renew = &Renewal::new(remote, &map);
        futures::stream::iter(map.chunks)
            .map(|loc| async move {
                let mut sink = Sink::<tokio::io::Sink>::Discard;
                self.download_chunk(renew, &loc, &mut sink, None).await
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .try_collect::<()>()
            .await?;
        Ok(map.file)
    }

    /// Streams `remote` into `writer`, chunk after chunk, in order.
    pub async fn get<W: AsyncWrite + Unpin>(
        &self,
        remote: &str,
        writer: &mut W,
    ) -> Result<FileInfo, ClientError> {
        self.get_with_progress(remote, writer, None).await
    }

    /// [`Client::get`] reporting progress as bytes arrive.
    pub async fn get_with_progress<W: AsyncWrite + Unpin>(
        &self,
        remote: &str,
        writer: &mut W,
        progress: Option<crate::ProgressFn>,
    ) -> Result<FileInfo, ClientError> {
        let map = self.chunk_map(remote).await?;
        let renew = Renewal::new(remote, &map);
        let mut sink = Sink::Stream(writer);
        for loc in &map.chunks {
            self.download_chunk(&renew, loc, &mut sink, progress.as_ref())
                .await?;
        }
        if let Sink::Stream(w) = sink {
            w.flush().await?;
        }
        Ok(map.file)
    }

    /// Downloads one chunk into `sink`, trying its replicas in order. A
    /// read token about to expire (or refused as expired or under a key
    /// rotated out) is renewed once, from a fresh chunk map of the file:
    /// a download may outlive the tokens of the map it started with.
    async fn download_chunk<W: AsyncWrite + Unpin>(
        &self,
        renew: &Renewal<'_>,
        loc: &ChunkLocation,
        sink: &mut Sink<'_, W>,
        progress: Option<&crate::ProgressFn>,
    ) -> Result<(), ClientError> {
        let remote = renew.remote;
        let mut loc = std::borrow::Cow::Borrowed(loc);
        let mut renewed = false;
        if loc.token.as_ref().is_some_and(|t| renew.expiring(t)) {
            loc = std::borrow::Cow::Owned(renew.location(self, &loc).await?);
            renewed = true;
        }
        let (index, chunk_id) = (loc.index, loc.chunk_id.to_string());
        let fail = |last_error: String| ClientError::DownloadChunk {
            path: remote.to_string(),
            index,
            chunk_id: chunk_id.clone(),
            last_error,
        };
        if loc.replicas.is_empty() {
            return Err(fail("no live replica".into()));
        }
        // Bytes of this chunk delivered (and verified frame by frame) so far,
        // and the running checksum over them.
        let mut done = 0u64;
        let mut crc = 0u32;
        let mut last_error = String::new();
        let mut next = 0;
        while let Some(replica) = loc.replicas.get(next).cloned() {
            next += 1;
            match self
                .stream_chunk_from(
                    &replica,
                    loc.chunk_id.as_str(),
                    loc.token.as_ref(),
                    loc.offset,
                    &mut done,
                    &mut crc,
                    loc.size,
                    sink,
                    progress,
                )
                .await
            {
                Ok(()) if crc == loc.checksum => return Ok(()),
                Ok(()) => {
                    last_error = format!(
                        "{} sent bytes whose checksum {crc:08x} does not match the recorded {:08x}",
                        replica.node_id, loc.checksum
                    );
                    if !sink.can_rewind() {
                        return Err(fail(last_error));
                    }
                    done = 0;
                    crc = 0;
                }
                Err(e) if e.code == Some(tonic::Code::Unauthenticated) && !renewed => {
                    // Expired, or under a key rotated out since the map was
                    // made: the same replicas again, with a fresh token.
                    tracing::info!(chunk = %loc.chunk_id, "read token refused, renewing it: {e}");
                    loc = std::borrow::Cow::Owned(renew.location(self, &loc).await?);
                    renewed = true;
                    next = 0;
                    continue;
                }
                Err(e) => last_error = format!("{}: {e}", replica.node_id),
            }
            tracing::warn!(chunk = %loc.chunk_id, "replica failed, trying the next: {last_error}");
        }
        Err(fail(last_error))
    }

    /// Streams the rest of a chunk (from `*done`) from one replica.
    #[allow(clippy::too_many_arguments)]
    async fn stream_chunk_from<W: AsyncWrite + Unpin>(
        &self,
        replica: &crate::types::Replica,
        chunk_id: &str,
        token: Option<&dfs_proto::ChunkToken>,
        file_offset: u64,
        done: &mut u64,
        crc: &mut u32,
        size: u64,
        sink: &mut Sink<'_, W>,
        progress: Option<&crate::ProgressFn>,
    ) -> Result<(), ReplicaError> {
        if *done == size {
            return Ok(());
        }
        let channel = self.datanode_channel(replica.node_id.as_str(), &replica.address)?;
        let idle = self.config.stream_idle_timeout;
        let request = DownloadChunkStreamRequest {
            session_id: String::new(),
            chunk_id: chunk_id.to_string(),
            offset: *done,
            length: size - *done,
            frame_bytes: self.config.frame_bytes as u32,
            token: token.cloned(),
        };
        // Frames are sliced out of the received bytes, not copied (see
        // dfs_proto::chunk_stream).
        let download =
            chunk_stream::download(channel, request, dfs_common::transport::MAX_MESSAGE_BYTES);
        let mut frames = tokio::time::timeout(idle, download)
            .await
            .map_err(|_| format!("no answer within {idle:?}"))?
            .map_err(ReplicaError::from)?;
        while *done < size {
            let frame = tokio::time::timeout(idle, frames.message())
                .await
                .map_err(|_| format!("stalled: no frame for {idle:?}"))?
                .map_err(ReplicaError::from)?
                .ok_or_else(|| format!("stream ended at offset {} of {size}", *done))?;
            if frame.offset != *done {
                return Err(format!("frame at offset {}, expected {}", frame.offset, *done).into());
            }
            if !frame.verify() {
                return Err(format!("frame at offset {} failed its checksum", frame.offset).into());
            }
            let len = frame.data.len() as u64;
            if len == 0 && !frame.is_final {
                return Err(String::from("empty frame").into());
            }
            if *done + len > size {
                return Err(format!("replica sent more than the chunk's {size} bytes").into());
            }
            // The frame was just verified against its checksum: combine it
            // into the chunk's instead of a second pass over the bytes.
            *crc = dfs_proto::frame::checksum_extend(*crc, &frame.data, frame.frame_checksum);
            sink.put(file_offset + *done, frame.data)
                .await
                .map_err(|e| ReplicaError::from(format!("local write failed: {e}")))?;
            *done += len;
            if let Some(progress) = progress {
                progress(len);
            }
        }
        Ok(())
    }
}

/// How far ahead of its expiry a read token is renewed before use, at
/// most: tokens issued for less than twice this are renewed when half
/// their lifetime is left, so that a fresh map is not already "expiring"
/// (which would cost one chunk-map call per chunk).
const RENEW_BEFORE: std::time::Duration = std::time::Duration::from_secs(30);

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long before expiry the tokens of `map`, fetched at `now`, are
/// renewed: [`RENEW_BEFORE`], or half the shortest lifetime when that is
/// less (by this client's clock; a token already expired by it gives 0).
fn margin_of(map: &crate::ChunkMap, now: u64) -> u64 {
    margin(
        map.chunks
            .iter()
            .filter_map(|c| c.token.as_ref())
            .map(|t| t.expires_at_unix_s),
        now,
    )
}

/// [`margin_of`] the tokens expiring at `expiries`.
fn margin(expiries: impl Iterator<Item = u64>, now: u64) -> u64 {
    expiries
        .map(|at| at.saturating_sub(now) / 2)
        .fold(RENEW_BEFORE.as_secs(), u64::min)
}

/// Fresh read tokens for one download: at most one chunk-map call at a
/// time, and a map fetched for one chunk serves the others while its
/// tokens last.
struct Renewal<'a> {
    remote: &'a str,
    latest: tokio::sync::Mutex<Option<Arc<crate::ChunkMap>>>,
    /// Seconds before expiry a token counts as expiring ([`margin_of`] the
    /// latest map).
    margin_s: std::sync::atomic::AtomicU64,
}

impl<'a> Renewal<'a> {
    /// Renewals for a download that started with `map`.
    fn new(remote: &'a str, map: &crate::ChunkMap) -> Self {
        Self {
            remote,
            latest: tokio::sync::Mutex::new(None),
            margin_s: margin_of(map, now_unix_s()).into(),
        }
    }

    /// Whether `token` is to be renewed before use.
    fn expiring(&self, token: &dfs_proto::ChunkToken) -> bool {
        let margin = self.margin_s.load(std::sync::atomic::Ordering::Relaxed);
        token.expires_at_unix_s < now_unix_s().saturating_add(margin)
    }

    /// `loc` with a fresh token (and the replicas the coordinator lists
    /// now). The file must still hold the same chunk there: one replaced
    /// during the download fails it rather than mixing two versions.
    async fn location(
        &self,
        client: &Client,
        loc: &ChunkLocation,
    ) -> Result<ChunkLocation, ClientError> {
        let mut latest = self.latest.lock().await;
        let usable = |m: &crate::ChunkMap| {
            m.chunks
                .iter()
                .find(|c| c.index == loc.index)
                .filter(|c| !c.token.as_ref().is_some_and(|t| self.expiring(t)))
                .cloned()
        };
        let found = match latest.as_deref().and_then(usable) {
            Some(c) => c,
            None => {
                let map = Arc::new(client.chunk_map(self.remote).await?);
                self.margin_s.store(
                    margin_of(&map, now_unix_s()),
                    std::sync::atomic::Ordering::Relaxed,
                );
                *latest = Some(map.clone());
                map.chunks
                    .iter()
                    .find(|c| c.index == loc.index)
                    .cloned()
                    .ok_or_else(|| changed(self.remote, loc))?
            }
        };
        if found.chunk_id != loc.chunk_id || found.checksum != loc.checksum {
            return Err(changed(self.remote, loc));
        }
        Ok(found)
    }
}

fn changed(remote: &str, loc: &ChunkLocation) -> ClientError {
    ClientError::DownloadChunk {
        path: remote.to_string(),
        index: loc.index,
        chunk_id: loc.chunk_id.to_string(),
        last_error: "the file was replaced during the download".into(),
    }
}

/// Why one replica failed to deliver a chunk: its gRPC code, when it
/// answered with one.
#[derive(Debug)]
struct ReplicaError {
    code: Option<tonic::Code>,
    message: String,
}

impl From<String> for ReplicaError {
    fn from(message: String) -> Self {
        Self {
            code: None,
            message,
        }
    }
}

impl From<tonic::Status> for ReplicaError {
    fn from(s: tonic::Status) -> Self {
        Self {
            code: Some(s.code()),
            message: format!("{:?}: {}", s.code(), s.message()),
        }
    }
}

impl std::fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens of minutes are renewed 30 s ahead; short-lived ones at half
    /// their lifetime, so a map just fetched is never "expiring" (one map
    /// per chunk) unless its tokens are already expired by this clock.
    #[test]
    fn the_renewal_margin_follows_the_shortest_lifetime() {
        let now = 1_000_000;
        assert_eq!(margin([now + 300, now + 600].into_iter(), now), 30);
        assert_eq!(margin(std::iter::empty(), now), 30);
        assert_eq!(margin([now + 600, now + 10].into_iter(), now), 5);
        assert_eq!(margin([now + 1].into_iter(), now), 0);
        assert_eq!(margin([now - 5].into_iter(), now), 0);
    }
}
