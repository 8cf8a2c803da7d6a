//! The data path's edge: wire messages parsed into typed values (ids,
//! metas, targets) and the data path's typed error ([`StoreError`]) turned
//! into a gRPC [`Status`], each in one place. Every layer above (sessions,
//! pipeline, reads, membership, the gRPC routes) uses these and never
//! validates or maps on its own.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use dfs_proto::chunk_stream::Inbound;
use dfs_proto::{
    ChecksumAlgorithm, ChunkData, ChunkDataAck, ChunkMeta, NodeAddress, PrepareChunkUploadRequest,
    ReplicateChunkHeader, ReplicateChunkRequest, SmallChunk, UploadChunkResponse,
    replicate_chunk_request, upload_chunk_response,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::Status;

use crate::peers::Target;
use crate::store::{ChunkId, StoreError, StoredChunk};

/// Most replica targets one upload may name (replication 16 at most).
pub const MAX_TARGETS: usize = 15;

/// Validates a chunk id from the wire.
pub fn parse_id(s: &str) -> Result<ChunkId, DataPathError> {
    ChunkId::parse(s).map_err(|e| invalid(e.to_string()))
}

/// Validates a ChunkMeta: id, algorithm; checksum 0 means unknown.
pub fn parse_meta(meta: &ChunkMeta) -> Result<(ChunkId, u64, Option<u32>), DataPathError> {
    let id = parse_id(&meta.chunk_id)?;
    if !dfs_proto::frame::is_supported_algorithm(meta.checksum_algorithm) {
        return Err(invalid(format!(
            "unsupported checksum algorithm {}",
            meta.checksum_algorithm
        )));
    }
    let checksum = (meta.checksum != 0).then_some(meta.checksum);
    Ok((id, meta.size, checksum))
}

/// The wire form of a stored chunk.
pub fn chunk_meta(id: &ChunkId, c: StoredChunk) -> ChunkMeta {
    ChunkMeta {
        chunk_id: id.to_string(),
        checksum: c.checksum,
        size: c.size,
        checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
    }
}

/// Validates the replica targets of an upload: at most [`MAX_TARGETS`],
/// each a node id and an http(s) URL of sane length, no duplicates, not
/// the primary (`primary`) itself.
pub fn parse_targets(raw: Vec<NodeAddress>, primary: &str) -> Result<Vec<Target>, DataPathError> {
    if raw.len() > MAX_TARGETS {
        return Err(invalid(format!(
            "{} targets; a chunk has at most {} replicas besides the primary",
            raw.len(),
            MAX_TARGETS
        )));
    }
    let mut targets: Vec<Target> = Vec::with_capacity(raw.len());
    for t in raw {
        if t.node_id.is_empty() || t.address.is_empty() {
            return Err(invalid("every target needs a node_id and an address"));
        }
        // Only gRPC URLs of a sane length: the primary connects to them.
        if t.node_id.len() > 128
            || t.address.len() > 256
            || !(t.address.starts_with("http://") || t.address.starts_with("https://"))
            || t.address.parse::<tonic::codegen::http::Uri>().is_err()
        {
            return Err(invalid(format!(
                "invalid target {:?} at {:?}: expected a node id of at most 128 bytes and an http(s) URL of at most 256",
                t.node_id.chars().take(64).collect::<String>(),
                t.address.chars().take(80).collect::<String>()
            )));
        }
        if targets
            .iter()
            .any(|x| x.node_id == t.node_id || x.address == t.address)
        {
            return Err(invalid("duplicate target"));
        }
        if t.node_id == primary {
            return Err(invalid("targets must not include the primary itself"));
        }
        targets.push(Target {
            node_id: t.node_id,
            address: t.address,
        });
    }
    Ok(targets)
}

/// Maps a store error to the gRPC status a caller sees.
pub fn status(e: StoreError) -> Status {
    match &e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::Concurrent { .. } => Status::aborted(e.to_string()),
        StoreError::Corrupt { .. } | StoreError::Mismatch { .. } => {
            Status::data_loss(e.to_string())
        }
        StoreError::NoSpace { .. } => Status::resource_exhausted(e.to_string()),
        // The disk itself said it is full (its free space was misjudged):
        // the same answer, so the client stops choosing this node.
        StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
            Status::resource_exhausted(e.to_string())
        }
        StoreError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
        StoreError::Cancelled => Status::cancelled(e.to_string()),
        StoreError::Io { .. } => Status::internal(e.to_string()),
    }
}

/// Why a data-path operation (an upload, a replica's receipt, one small
/// chunk) failed: the typed error every layer above the edge returns, made
/// a [`Status`] only by `From<DataPathError> for Status` below.
#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    /// A malformed or inconsistent message (missing field, bad id, gap,
    /// oversize frame, size beyond the announcement).
    #[error("{0}")]
    Invalid(String),
    /// A session id this node does not hold (never prepared, or expired).
    #[error("unknown or expired upload session {0:?}")]
    UnknownSession(String),
    /// Bytes that do not match their checksum (a frame's or the chunk's).
    #[error("{0}")]
    Checksum(String),
    /// The store refused or failed (exists, no space, I/O, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sender ended its stream before the final frame.
    #[error("stream ended without a final frame; partial data removed")]
    Ended,
    /// The sender sent nothing for the session timeout.
    #[error("no frame for {0:?}; partial data removed")]
    Idle(Duration),
    /// The other side stopped reading our answers.
    #[error("{0} went away")]
    Gone(&'static str),
    /// Fewer replicas than the write quorum stored the chunk (or, inside
    /// the primary, its own copy was given up for falling behind).
    #[error("{0}")]
    Quorum(String),
    /// Fewer replicas than the write quorum stored the chunk; `failed`
    /// names the replicas that failed (UNAVAILABLE, with them in
    /// [`dfs_proto::FAILED_REPLICAS_METADATA`]).
    #[error("{message}")]
    QuorumNotReached {
        /// What happened to each copy.
        message: String,
        /// Node ids of the replicas that failed (not the primary).
        failed: Vec<String>,
    },
    /// A bug or a lost task on this node.
    #[error("{0}")]
    Internal(String),
    /// The transport's own status (the caller's stream broke): passed on.
    #[error("{}", .0.message())]
    Transport(Status),
}

impl From<DataPathError> for Status {
    fn from(e: DataPathError) -> Status {
        match e {
            DataPathError::Invalid(m) => Status::invalid_argument(m),
            DataPathError::UnknownSession(_) => Status::not_found(e.to_string()),
            DataPathError::Checksum(m) => Status::data_loss(m),
            DataPathError::Store(e) => status(e),
            DataPathError::Ended => Status::aborted(e.to_string()),
            DataPathError::Idle(_) => Status::deadline_exceeded(e.to_string()),
            DataPathError::Gone(_) => Status::cancelled(e.to_string()),
            DataPathError::Quorum(m) => Status::unavailable(m),
            DataPathError::QuorumNotReached { message, failed } => {
                let mut st = Status::unavailable(message);
                if let Ok(v) = failed.join(",").parse() {
                    st.metadata_mut()
                        .insert(dfs_proto::FAILED_REPLICAS_METADATA, v);
                }
                st
            }
            DataPathError::Internal(m) => Status::internal(m),
            DataPathError::Transport(st) => st,
        }
    }
}

fn invalid(m: impl Into<String>) -> DataPathError {
    DataPathError::Invalid(m.into())
}

/// One frame of a chunk's bytes, as every layer above the edge sees it:
/// from a client's `ChunkData`, a `ReplicateChunk` data message or a
/// `SmallChunk`. Built by moving the wire message's `Bytes` (no copy);
/// clones share the buffer.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The bytes.
    pub data: Bytes,
    /// Their offset in the chunk.
    pub offset: u64,
    /// The chunk's last frame.
    pub is_final: bool,
    /// The CRC32C the sender computed over `data`.
    pub frame_checksum: u32,
}

impl Frame {
    /// True when the bytes match the checksum they came with.
    pub fn verify(&self) -> bool {
        dfs_proto::frame::checksum(&self.data) == self.frame_checksum
    }
}

impl From<ChunkData> for Frame {
    fn from(f: ChunkData) -> Frame {
        Frame {
            data: f.data,
            offset: f.offset,
            is_final: f.is_final,
            frame_checksum: f.frame_checksum,
        }
    }
}

impl From<Frame> for ChunkData {
    fn from(f: Frame) -> ChunkData {
        ChunkData {
            data: f.data,
            offset: f.offset,
            is_final: f.is_final,
            frame_checksum: f.frame_checksum,
            session_id: String::new(),
            prepare: None,
        }
    }
}

/// A validated upload announcement: PrepareChunkUpload, or the `prepare`
/// of a one-call upload's first frame.
#[derive(Debug)]
pub struct UploadStart {
    /// The chunk.
    pub chunk_id: ChunkId,
    /// Announced size.
    pub size: u64,
    /// Announced checksum, when the writer knew it.
    pub checksum: Option<u32>,
    /// The other replicas, validated (see [`parse_targets`]).
    pub targets: Vec<Target>,
    /// Replicas (counting the primary) the writer asked for; `None` leaves
    /// it to the node's default.
    pub write_quorum: Option<usize>,
    /// The session id the writer chose (empty: the node picks one).
    pub session_id: String,
    /// The write capability (checked by [`crate::node::Node::check_token`]).
    pub token: Option<dfs_proto::ChunkToken>,
}

/// Parses a PrepareChunkUpload request arriving at `primary`.
pub fn parse_upload_start(
    req: PrepareChunkUploadRequest,
    primary: &str,
) -> Result<UploadStart, DataPathError> {
    let meta = req
        .chunk
        .ok_or_else(|| invalid("PrepareChunkUpload without chunk"))?;
    let (chunk_id, size, checksum) = parse_meta(&meta)?;
    let targets = parse_targets(req.targets, primary)?;
    Ok(UploadStart {
        chunk_id,
        size,
        checksum,
        targets,
        write_quorum: (req.write_quorum != 0).then_some(req.write_quorum as usize),
        session_id: req.session_id,
        token: req.token,
    })
}

/// The validated header of a replica's stream (`ReplicateChunk`, or each
/// `SmallChunk`): which chunk, its size and checksum, and who sends it.
#[derive(Clone, Debug)]
pub struct ReplicaHeader {
    /// The upload's session on the primary (for logs).
    pub session_id: String,
    /// The chunk.
    pub chunk_id: ChunkId,
    /// Its size.
    pub size: u64,
    /// Its checksum, when the sender knows it.
    pub checksum: Option<u32>,
    /// The sending node (for logs).
    pub source_node_id: String,
    /// The capability the copy is made under (the upload's write token or
    /// a repair's replicate token).
    pub token: Option<dfs_proto::ChunkToken>,
}

impl ReplicaHeader {
    fn to_wire(&self) -> ReplicateChunkHeader {
        ReplicateChunkHeader {
            session_id: self.session_id.clone(),
            chunk: Some(ChunkMeta {
                chunk_id: self.chunk_id.to_string(),
                checksum: self.checksum.unwrap_or(0),
                size: self.size,
                checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
            }),
            source_node_id: self.source_node_id.clone(),
            token: self.token.clone(),
        }
    }
}

fn parse_replica_header(h: ReplicateChunkHeader) -> Result<ReplicaHeader, DataPathError> {
    let meta = h
        .chunk
        .as_ref()
        .ok_or_else(|| invalid("ReplicateChunk header without chunk"))?;
    let (chunk_id, size, checksum) = parse_meta(meta)?;
    Ok(ReplicaHeader {
        session_id: h.session_id,
        chunk_id,
        size,
        checksum,
        source_node_id: h.source_node_id,
        token: h.token,
    })
}

/// The rest of a chunk's frames, whichever wire message carries them.
pub trait FrameSource: Send {
    /// The next frame: [`DataPathError::Ended`] when the sender ended the
    /// stream, [`DataPathError::Idle`] when it sent nothing for `idle`.
    fn next(&mut self, idle: Duration)
    -> impl Future<Output = Result<Frame, DataPathError>> + Send;
}

async fn next_message<T>(stream: &mut impl Inbound<T>, idle: Duration) -> Result<T, DataPathError> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(DataPathError::Ended),
        Ok(Err(st)) => Err(DataPathError::Transport(st)),
        Err(_) => Err(DataPathError::Idle(idle)),
    }
}

/// How an upload stream begins: a session prepared before, or a one-call
/// upload's own announcement.
pub enum Opening {
    /// PrepareChunkUpload's session id.
    Session(String),
    /// A one-call upload.
    Start(UploadStart),
}

/// The frames of an UploadChunkStream after the first.
pub struct UploadFrames<I>(I);

impl<I: Inbound<ChunkData>> FrameSource for UploadFrames<I> {
    async fn next(&mut self, idle: Duration) -> Result<Frame, DataPathError> {
        next_message(&mut self.0, idle).await.map(Frame::from)
    }
}

/// Opens an UploadChunkStream arriving at `primary`: its first frame names
/// a prepared session or carries the announcement, never both.
pub async fn open_upload<I: Inbound<ChunkData>>(
    mut frames: I,
    idle: Duration,
    primary: &str,
) -> Result<(Opening, Frame, UploadFrames<I>), DataPathError> {
    let mut first = next_message(&mut frames, idle).await?;
    let opening = match first.prepare.take() {
        Some(prepare) if first.session_id.is_empty() => {
            Opening::Start(parse_upload_start(prepare, primary)?)
        }
        Some(_) => {
            return Err(invalid(
                "the first frame carries either a session_id or a prepare request, not both",
            ));
        }
        None => Opening::Session(std::mem::take(&mut first.session_id)),
    };
    Ok((opening, Frame::from(first), UploadFrames(frames)))
}

/// The data messages of a ReplicateChunk stream after its header.
pub struct ReplicaFrames<I>(I);

impl<I: Inbound<ReplicateChunkRequest>> FrameSource for ReplicaFrames<I> {
    async fn next(&mut self, idle: Duration) -> Result<Frame, DataPathError> {
        match next_message(&mut self.0, idle).await? {
            ReplicateChunkRequest {
                kind: Some(replicate_chunk_request::Kind::Data(f)),
            } => Ok(Frame::from(f)),
            _ => Err(invalid(
                "a ReplicateChunk stream carries one header, then frames",
            )),
        }
    }
}

/// Opens a ReplicateChunk stream: its header first.
pub async fn open_replica<I: Inbound<ReplicateChunkRequest>>(
    mut requests: I,
    idle: Duration,
) -> Result<(ReplicaHeader, ReplicaFrames<I>), DataPathError> {
    let header = match next_message(&mut requests, idle).await {
        Ok(ReplicateChunkRequest {
            kind: Some(replicate_chunk_request::Kind::Header(h)),
        }) => h,
        Ok(_) => {
            return Err(invalid(
                "the first ReplicateChunk message must be the header",
            ));
        }
        Err(DataPathError::Ended) => return Err(invalid("empty ReplicateChunk stream")),
        Err(e) => return Err(e),
    };
    Ok((parse_replica_header(header)?, ReplicaFrames(requests)))
}

/// The messages of a ReplicateChunk call to a peer: `header`, then every
/// frame `frames` yields, their bytes moved, not copied.
pub fn replicate_messages(
    header: &ReplicaHeader,
    frames: impl Stream<Item = Frame> + Send + Unpin + 'static,
) -> impl Stream<Item = ReplicateChunkRequest> + Send + Unpin + 'static {
    let header = ReplicateChunkRequest {
        kind: Some(replicate_chunk_request::Kind::Header(header.to_wire())),
    };
    futures::stream::iter([header]).chain(frames.map(|f| ReplicateChunkRequest {
        kind: Some(replicate_chunk_request::Kind::Data(f.into())),
    }))
}

/// One whole chunk for a peer's small-chunk link.
pub fn small_chunk(seq: u64, header: &ReplicaHeader, frame: Frame) -> SmallChunk {
    SmallChunk {
        seq,
        header: Some(header.to_wire()),
        data: Some(frame.into()),
    }
}

/// Parses one chunk of a small-chunk link: a whole chunk in one final
/// frame at offset 0.
pub fn parse_small_chunk(c: SmallChunk) -> Result<(ReplicaHeader, Frame), DataPathError> {
    let header = c
        .header
        .ok_or_else(|| invalid("SmallChunk without header"))?;
    let header = parse_replica_header(header)?;
    let frame = Frame::from(c.data.ok_or_else(|| invalid("SmallChunk without data"))?);
    if !frame.is_final || frame.offset != 0 {
        return Err(invalid(
            "a SmallChunk carries its whole chunk in one final frame at offset 0",
        ));
    }
    Ok((header, frame))
}

/// The messages of an upload or replica stream as they go out.
pub type Responses = mpsc::Sender<Result<UploadChunkResponse, Status>>;

/// Progress acknowledgements towards the sender of a chunk's frames.
pub struct Acks(pub Responses);

impl Acks {
    /// Acknowledges `frames` frames, `offset` bytes; false once the sender
    /// stopped listening.
    pub async fn ack(&self, offset: u64, frames: u64) -> bool {
        let ack = UploadChunkResponse {
            kind: Some(upload_chunk_response::Kind::Ack(ChunkDataAck {
                offset,
                frames,
            })),
        };
        self.0.send(Ok(ack)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A stream of ready messages.
    struct Ready<T>(VecDeque<T>);

    impl<T: Send + 'static> Inbound<T> for Ready<T> {
        async fn message(&mut self) -> Result<Option<T>, Status> {
            Ok(self.0.pop_front())
        }
    }

    const IDLE: Duration = Duration::from_secs(5);
    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn prepare() -> PrepareChunkUploadRequest {
        PrepareChunkUploadRequest {
            chunk: Some(ChunkMeta {
                chunk_id: ID.into(),
                checksum: 0,
                size: 3,
                checksum_algorithm: 0,
            }),
            ..Default::default()
        }
    }

    /// A 3-byte chunk's header, from dn-1.
    fn header() -> ReplicaHeader {
        ReplicaHeader {
            session_id: "s".into(),
            chunk_id: ChunkId::parse(ID).unwrap(),
            size: 3,
            checksum: None,
            source_node_id: "dn-1".into(),
            token: Default::default(),
        }
    }

    fn code<T>(r: Result<T, DataPathError>) -> tonic::Code {
        match r {
            Ok(_) => tonic::Code::Ok,
            Err(e) => Status::from(e).code(),
        }
    }

    #[tokio::test]
    async fn an_upload_opens_with_a_session_or_an_announcement_never_both() {
        let mut both = ChunkData::frame(Bytes::from_static(b"abc"), 0, true);
        both.session_id = "s1".into();
        both.prepare = Some(prepare());
        let r = open_upload(Ready(VecDeque::from([both])), IDLE, "dn-1").await;
        assert_eq!(code(r), tonic::Code::InvalidArgument);

        let mut one_call = ChunkData::frame(Bytes::from_static(b"abc"), 0, true);
        one_call.prepare = Some(prepare());
        let (opening, first, _) = open_upload(Ready(VecDeque::from([one_call])), IDLE, "dn-1")
            .await
            .unwrap();
        assert!(
            matches!(opening, Opening::Start(ref s) if s.chunk_id == ChunkId::parse(ID).unwrap() && s.size == 3)
        );
        assert!(first.verify() && first.is_final);

        let mut prepared = ChunkData::frame(Bytes::from_static(b"abc"), 0, false);
        prepared.session_id = "s1".into();
        let (opening, _, mut rest) = open_upload(Ready(VecDeque::from([prepared])), IDLE, "dn-1")
            .await
            .unwrap();
        assert!(matches!(opening, Opening::Session(ref s) if s == "s1"));
        // The sender ended the stream before its final frame.
        assert_eq!(code(rest.next(IDLE).await), tonic::Code::Aborted);

        let r = open_upload(Ready(VecDeque::<ChunkData>::new()), IDLE, "dn-1").await;
        assert_eq!(code(r), tonic::Code::Aborted);
    }

    #[tokio::test]
    async fn a_replica_stream_is_one_header_then_frames() {
        let data = |f: ChunkData| ReplicateChunkRequest {
            kind: Some(replicate_chunk_request::Kind::Data(f)),
        };
        let header = header();
        let frame = ChunkData::frame(Bytes::from_static(b"abc"), 0, true);
        // Data first: refused.
        let r = open_replica(Ready(VecDeque::from([data(frame.clone())])), IDLE).await;
        assert_eq!(code(r), tonic::Code::InvalidArgument);
        // Empty: refused.
        let r = open_replica(Ready(VecDeque::<ReplicateChunkRequest>::new()), IDLE).await;
        assert_eq!(code(r), tonic::Code::InvalidArgument);
        // What a primary sends (replicate_messages) opens and yields its frame.
        let frames = futures::stream::iter([Frame::from(frame)]);
        let messages: VecDeque<_> = replicate_messages(&header, frames).collect().await;
        let (parsed, mut rest) = open_replica(Ready(messages), IDLE).await.unwrap();
        assert_eq!(parsed.chunk_id, header.chunk_id);
        assert_eq!(parsed.size, 3);
        assert_eq!(&rest.next(IDLE).await.unwrap().data[..], b"abc");
        // A second header after the frames: refused.
        let second = ReplicateChunkRequest {
            kind: Some(replicate_chunk_request::Kind::Header(header.to_wire())),
        };
        let mut rest = ReplicaFrames(Ready(VecDeque::from([second])));
        assert_eq!(code(rest.next(IDLE).await), tonic::Code::InvalidArgument);
    }

    #[test]
    fn small_chunks_are_whole() {
        let header = header();
        let whole = Frame::from(ChunkData::frame(Bytes::from_static(b"abc"), 0, true));
        let (h, f) = parse_small_chunk(small_chunk(7, &header, whole.clone())).unwrap();
        assert_eq!(
            (h.chunk_id, &f.data[..]),
            (header.chunk_id.clone(), &b"abc"[..])
        );
        let part = Frame {
            is_final: false,
            ..whole
        };
        assert_eq!(
            code(parse_small_chunk(small_chunk(8, &header, part))),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn each_data_path_error_has_its_status() {
        let cases = [
            (
                DataPathError::Invalid("x".into()),
                tonic::Code::InvalidArgument,
            ),
            (
                DataPathError::UnknownSession("s".into()),
                tonic::Code::NotFound,
            ),
            (DataPathError::Checksum("x".into()), tonic::Code::DataLoss),
            (DataPathError::Ended, tonic::Code::Aborted),
            (DataPathError::Idle(IDLE), tonic::Code::DeadlineExceeded),
            (DataPathError::Gone("client"), tonic::Code::Cancelled),
            (DataPathError::Quorum("x".into()), tonic::Code::Unavailable),
            (DataPathError::Internal("x".into()), tonic::Code::Internal),
            (
                DataPathError::Transport(Status::permission_denied("p")),
                tonic::Code::PermissionDenied,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(Status::from(e).code(), want);
        }
    }

    #[test]
    fn a_disk_that_says_it_is_full_is_resource_exhausted_and_other_io_errors_internal() {
        let io = |kind| StoreError::Io {
            action: "write",
            path: "/d/tmp/x".into(),
            source: std::io::Error::new(kind, "disk"),
        };
        assert_eq!(
            status(io(std::io::ErrorKind::StorageFull)).code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            status(io(std::io::ErrorKind::Other)).code(),
            tonic::Code::Internal
        );
        // What the kernel returns for ENOSPC is that kind.
        assert_eq!(
            std::io::Error::from_raw_os_error(28).kind(),
            std::io::ErrorKind::StorageFull
        );
    }
}
