//! Chunk streams without copying chunk bytes in user space.
//!
//! tonic's codecs copy every message once on each side: the encoder appends
//! a frame's `data` into its send buffer, and the decoder gathers the
//! received HTTP/2 DATA frames into its receive buffer before decoding.
//! Profiling a 1 GiB re-read served from the page cache showed those two
//! `memcpy`s at about a third of both the datanode's and the client's CPU;
//! a put pays them three times over (client to primary, primary to each
//! replica).
//!
//! This module speaks the same gRPC wire format without them, for the
//! streams that carry chunk bytes (DownloadChunkStream, UploadChunkStream,
//! ReplicateChunk):
//! - [`message_body`] turns a stream of messages into an HTTP/2 body that
//!   sends a message carrying a frame as two pieces, the gRPC envelope and
//!   every other field first, then the frame's `data` itself (a slice of the
//!   sender's buffer, written to the socket with `writev`);
//! - [`MessageReader`] parses a body as it arrives, handing out `data` as a
//!   slice of the received HTTP/2 DATA frame whenever the field lies in one
//!   (it does when the sender is [`message_body`] and the receiver allows
//!   1 MiB HTTP/2 frames); otherwise the field's pieces are joined;
//! - [`call`] makes a streaming call with both, over a tonic `Channel`.
//!
//! Both interoperate with plain tonic peers: the bytes on the wire are a
//! valid gRPC stream of the same messages, fields in any order.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_core::Stream;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use prost::Message;
use prost::encoding::{WireType, encode_key, encoded_len_varint};
use tonic::Status;

use crate::{
    ChunkData, DownloadChunkStreamRequest, ReplicateChunkRequest, UploadChunkResponse,
    replicate_chunk_request,
};

/// DownloadChunkStream's path on the wire.
pub const DOWNLOAD_PATH: &str = "/dfs.v1.DataNode/DownloadChunkStream";
/// UploadChunkStream's path on the wire.
pub const UPLOAD_PATH: &str = "/dfs.v1.DataNode/UploadChunkStream";
/// ReplicateChunk's path on the wire.
pub const REPLICATE_PATH: &str = "/dfs.v1.DataNode/ReplicateChunk";

/// Length of the gRPC message envelope (compressed flag and length).
const ENVELOPE: usize = 5;

/// A message of a chunk stream: how it goes on the wire in pieces, and how
/// it is read back from the pieces it arrived in.
pub trait StreamMessage: Message + Default + Send + 'static {
    /// The gRPC envelope and the message up to its frame's `data`, then that
    /// `data` (empty for a message without a frame).
    fn into_pieces(self) -> (Bytes, Bytes);

    /// Decodes the message from its bytes, slicing a frame's `data`.
    fn from_pieces(pieces: Pieces) -> Result<Self, Status>;
}

impl StreamMessage for ChunkData {
    fn into_pieces(mut self) -> (Bytes, Bytes) {
        let head = nested_frame_head(&self, None);
        (head, std::mem::take(&mut self.data))
    }

    fn from_pieces(pieces: Pieces) -> Result<Self, Status> {
        decode_frame(pieces)
    }
}

impl StreamMessage for ReplicateChunkRequest {
    fn into_pieces(self) -> (Bytes, Bytes) {
        match self.kind {
            Some(replicate_chunk_request::Kind::Data(mut frame)) => {
                let head = nested_frame_head(&frame, Some(2));
                (head, std::mem::take(&mut frame.data))
            }
            kind => plain_pieces(&ReplicateChunkRequest { kind }),
        }
    }

    fn from_pieces(mut pieces: Pieces) -> Result<Self, Status> {
        // Field 2 is the frame; anything else goes through prost.
        let mut frame = None;
        let rest = split_fields(&mut pieces, |field, value| match field {
            2 => {
                frame = Some(decode_frame(value)?);
                Ok(None)
            }
            _ => Ok(Some(value)),
        })?;
        let mut message = ReplicateChunkRequest::decode(rest)
            .map_err(|e| malformed("ReplicateChunkRequest", &e.to_string()))?;
        if let Some(frame) = frame {
            message.kind = Some(replicate_chunk_request::Kind::Data(frame));
        }
        Ok(message)
    }
}

impl StreamMessage for UploadChunkResponse {
    fn into_pieces(self) -> (Bytes, Bytes) {
        plain_pieces(&self)
    }

    fn from_pieces(pieces: Pieces) -> Result<Self, Status> {
        UploadChunkResponse::decode(pieces.join())
            .map_err(|e| malformed("UploadChunkResponse", &e.to_string()))
    }
}

/// A small message in one piece.
fn plain_pieces(message: &impl Message) -> (Bytes, Bytes) {
    let len = message.encoded_len();
    let mut head = BytesMut::with_capacity(ENVELOPE + len);
    head.put_u8(0);
    head.put_u32(len as u32);
    message
        .encode(&mut head)
        .expect("the buffer was sized for the message");
    (head.freeze(), Bytes::new())
}

fn malformed(what: &str, why: &str) -> Status {
    Status::internal(format!("malformed {what}: {why}"))
}

/// The gRPC envelope and every field of `frame` but `data`, then the key
/// and length of `data`: what precedes the data bytes on the wire.
pub fn frame_head(frame: &ChunkData) -> Bytes {
    nested_frame_head(frame, None)
}

/// [`frame_head`] for `frame` as field `field` of an outer message (or the
/// message itself).
fn nested_frame_head(frame: &ChunkData, field: Option<u32>) -> Bytes {
    let rest = frame.clone_without_data();
    let data_len = frame.data.len();
    let data_field = if data_len == 0 {
        0
    } else {
        1 + encoded_len_varint(data_len as u64)
    };
    let inner = rest.encoded_len() + data_field + data_len;
    let outer = match field {
        Some(f) => prost::encoding::key_len(f) + encoded_len_varint(inner as u64),
        None => 0,
    };
    let mut head = BytesMut::with_capacity(ENVELOPE + outer + rest.encoded_len() + data_field);
    head.put_u8(0);
    head.put_u32((outer + inner) as u32);
    if let Some(f) = field {
        encode_key(f, WireType::LengthDelimited, &mut head);
        prost::encoding::encode_varint(inner as u64, &mut head);
    }
    rest.encode(&mut head)
        .expect("the buffer was sized for the message");
    if data_len > 0 {
        encode_key(1, WireType::LengthDelimited, &mut head);
        prost::encoding::encode_varint(data_len as u64, &mut head);
    }
    head.freeze()
}

impl ChunkData {
    /// The frame's fields other than `data` (cheap: `data` is not cloned).
    fn clone_without_data(&self) -> ChunkData {
        ChunkData {
            data: Bytes::new(),
            offset: self.offset,
            is_final: self.is_final,
            frame_checksum: self.frame_checksum,
            session_id: self.session_id.clone(),
            prepare: self.prepare.clone(),
        }
    }
}

/// An HTTP/2 body streaming `messages` in pieces (see the module
/// documentation). A response body (`trailers`) ends with the gRPC status:
/// OK when the stream ends, or the first error it yields; a request body
/// just ends.
pub fn message_body<S, M>(messages: S, trailers: bool) -> MessageBody<S>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
    M: StreamMessage,
{
    MessageBody {
        messages,
        data: None,
        trailers,
        done: false,
    }
}

/// A response body of frames for DownloadChunkStream.
pub fn frame_body<S>(frames: S) -> MessageBody<S>
where
    S: Stream<Item = Result<ChunkData, Status>> + Unpin,
{
    message_body(frames, true)
}

/// See [`message_body`].
pub struct MessageBody<S> {
    messages: S,
    /// Data of the message whose head was just sent.
    data: Option<Bytes>,
    trailers: bool,
    done: bool,
}

impl<S, M> Body for MessageBody<S>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
    M: StreamMessage,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let next = match Pin::new(&mut self.messages).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        match next {
            Some(Ok(message)) => {
                let (head, data) = message.into_pieces();
                if !data.is_empty() {
                    self.data = Some(data);
                }
                Poll::Ready(Some(Ok(Frame::data(head))))
            }
            Some(Err(status)) => {
                self.done = true;
                if self.trailers {
                    Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
                } else {
                    Poll::Ready(Some(Err(status)))
                }
            }
            None => {
                self.done = true;
                if self.trailers {
                    Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }
}

/// The gRPC status as trailers.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value fails; keep the code.
        let plain = Status::new(status.code(), "");
        let _ = plain.add_header(&mut map);
    }
    map
}

/// Reads a gRPC stream of `M` from an HTTP/2 body, slicing frames' data
/// out of the received bytes.
pub struct MessageReader<B, M> {
    body: B,
    received: Pieces,
    /// Largest message accepted (bounds memory per stream).
    max_message: usize,
    /// A response ends with the gRPC status in trailers; a request body
    /// just ends.
    expect_status: bool,
    finished: bool,
    message: PhantomData<fn() -> M>,
}

/// DownloadChunkStream's reader.
pub type FrameReader<B> = MessageReader<B, ChunkData>;

impl<B, M> MessageReader<B, M>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: StreamMessage,
{
    /// Checks a response's head (HTTP status, a trailers-only error) and
    /// reads messages of at most `max_message` bytes from its body.
    pub fn new(response: http::Response<B>, max_message: usize) -> Result<Self, Status> {
        if response.status() != http::StatusCode::OK {
            return Err(Status::unknown(format!(
                "the server answered HTTP {}",
                response.status()
            )));
        }
        if let Some(status) = Status::from_header_map(response.headers())
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        Ok(Self::reading(response.into_body(), max_message, true))
    }

    /// Reads the messages of a request body.
    pub fn request(body: B, max_message: usize) -> Self {
        Self::reading(body, max_message, false)
    }

    fn reading(body: B, max_message: usize, expect_status: bool) -> Self {
        MessageReader {
            body,
            received: Pieces::default(),
            max_message,
            expect_status,
            finished: false,
            message: PhantomData,
        }
    }

    /// The next message; `None` once the stream ended well (with OK).
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(len) = self.complete_message()? {
                let message = self.received.take(len);
                return M::from_pieces(message).map(Some);
            }
            if self.finished {
                return match self.received.len {
                    0 => Ok(None),
                    n => Err(Status::internal(format!(
                        "the stream ended inside a message ({n} bytes left over)"
                    ))),
                };
            }
            match self.body.frame().await {
                None if self.expect_status => {
                    return Err(Status::internal("the stream ended without a gRPC status"));
                }
                None => self.finished = true,
                Some(Err(e)) => return Err(Status::from_error(e.into())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.received.push(data),
                    Err(frame) => {
                        let status = frame
                            .into_trailers()
                            .ok()
                            .and_then(|t| Status::from_header_map(&t));
                        let status = match status {
                            Some(status) => status,
                            None if self.expect_status => {
                                Status::internal("trailers without grpc-status")
                            }
                            None => Status::ok(""),
                        };
                        if status.code() != tonic::Code::Ok {
                            return Err(status);
                        }
                        self.finished = true;
                    }
                },
            }
        }
    }

    /// The length of the next message once all of it has arrived (its
    /// envelope is consumed then).
    fn complete_message(&mut self) -> Result<Option<usize>, Status> {
        if self.received.len < ENVELOPE {
            return Ok(None);
        }
        let mut envelope = [0u8; ENVELOPE];
        self.received.peek(&mut envelope);
        if envelope[0] != 0 {
            return Err(Status::unimplemented(
                "a compressed message, which this stream never asks for",
            ));
        }
        let len = u32::from_be_bytes([envelope[1], envelope[2], envelope[3], envelope[4]]) as usize;
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "a message of {len} bytes is above the limit of {}",
                self.max_message
            )));
        }
        if self.received.len < ENVELOPE + len {
            return Ok(None);
        }
        self.received.take(ENVELOPE);
        Ok(Some(len))
    }
}

/// Where a server reads a client-streamed call's messages from: tonic's
/// `Streaming` or a [`MessageReader`] over the request body.
pub trait Inbound<T>: Send + 'static {
    /// The next message; `None` once the sender ended the stream.
    fn message(&mut self) -> impl std::future::Future<Output = Result<Option<T>, Status>> + Send;
}

impl<T: Send + 'static> Inbound<T> for tonic::Streaming<T> {
    fn message(&mut self) -> impl std::future::Future<Output = Result<Option<T>, Status>> + Send {
        tonic::Streaming::message(self)
    }
}

impl<B, M> Inbound<M> for MessageReader<B, M>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: StreamMessage,
{
    fn message(&mut self) -> impl std::future::Future<Output = Result<Option<M>, Status>> + Send {
        MessageReader::message(self)
    }
}

/// Makes a streaming call at `path` over `channel`: `requests` go out in
/// pieces, the answers are read with a [`MessageReader`] (messages of at
/// most `max_message` bytes).
pub async fn call<S, Req, Resp>(
    mut channel: tonic::transport::Channel,
    path: &'static str,
    requests: S,
    max_message: usize,
) -> Result<MessageReader<tonic::body::Body, Resp>, Status>
where
    S: Stream<Item = Req> + Send + Unpin + 'static,
    Req: StreamMessage,
    Resp: StreamMessage,
{
    use tower_service::Service;
    let body = message_body(StreamOk(requests), false);
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(body))
        .map_err(|e| Status::internal(format!("cannot build the request: {e}")))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    let response = channel
        .call(request)
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    MessageReader::new(response, max_message)
}

/// A stream of requests as the `Result`s a body takes.
struct StreamOk<S>(S);

impl<S: Stream + Unpin> Stream for StreamOk<S> {
    type Item = Result<S::Item, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|m| m.map(Ok))
    }
}

/// Calls DownloadChunkStream over `channel` and returns the frames as they
/// arrive, each of at most `max_message` bytes on the wire.
pub async fn download(
    channel: tonic::transport::Channel,
    request: DownloadChunkStreamRequest,
    max_message: usize,
) -> Result<FrameReader<tonic::body::Body>, Status> {
    call(channel, DOWNLOAD_PATH, Once(Some(request)), max_message).await
}

/// A stream of one request.
struct Once<T>(Option<T>);

impl<T: Unpin> Stream for Once<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
        Poll::Ready(self.0.take())
    }
}

impl StreamMessage for DownloadChunkStreamRequest {
    fn into_pieces(self) -> (Bytes, Bytes) {
        plain_pieces(&self)
    }

    fn from_pieces(pieces: Pieces) -> Result<Self, Status> {
        DownloadChunkStreamRequest::decode(pieces.join()).map_err(|e| {
            Status::invalid_argument(format!("malformed DownloadChunkStreamRequest: {e}"))
        })
    }
}

/// Walks the top-level fields of a message: a length-delimited field that
/// `take` keeps (returns `None` for) stays out of the returned bytes; every
/// other field is copied into them, to be decoded by prost.
fn split_fields(
    message: &mut Pieces,
    mut take: impl FnMut(u64, Pieces) -> Result<Option<Pieces>, Status>,
) -> Result<Bytes, Status> {
    let bad = |what: &str| malformed("message", what);
    let mut rest = BytesMut::new();
    while message.len > 0 {
        let key = message.varint().ok_or_else(|| bad("truncated key"))?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let v = message.varint().ok_or_else(|| bad("truncated varint"))?;
                prost::encoding::encode_varint(key, &mut rest);
                prost::encoding::encode_varint(v, &mut rest);
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                if message.len < n {
                    return Err(bad("truncated fixed field"));
                }
                prost::encoding::encode_varint(key, &mut rest);
                rest.put(message.take(n).join());
            }
            2 => {
                let n = message.varint().ok_or_else(|| bad("truncated length"))? as usize;
                if message.len < n {
                    return Err(bad("truncated field"));
                }
                if let Some(value) = take(field, message.take(n))? {
                    prost::encoding::encode_varint(key, &mut rest);
                    prost::encoding::encode_varint(n as u64, &mut rest);
                    rest.put(value.join());
                }
            }
            _ => return Err(bad("unknown wire type")),
        }
    }
    Ok(rest.freeze())
}

/// Decodes one `ChunkData` whose bytes are `message` (pieces in order):
/// `data` is sliced, not copied, when it lies within one piece; every other
/// field goes through prost.
fn decode_frame(mut message: Pieces) -> Result<ChunkData, Status> {
    let mut data = Bytes::new();
    let rest = split_fields(&mut message, |field, value| match field {
        1 => {
            data = value.join();
            Ok(None)
        }
        _ => Ok(Some(value)),
    })?;
    let mut frame = ChunkData::decode(rest).map_err(|e| malformed("ChunkData", &e.to_string()))?;
    frame.data = data;
    Ok(frame)
}

/// Received bytes as the pieces they arrived in.
#[derive(Default)]
pub struct Pieces {
    pieces: VecDeque<Bytes>,
    len: usize,
}

impl Pieces {
    fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push_back(piece);
        }
    }

    /// Copies the first `out.len()` bytes without consuming them.
    fn peek(&self, out: &mut [u8]) {
        let mut filled = 0;
        for piece in &self.pieces {
            let n = piece.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&piece[..n]);
            filled += n;
            if filled == out.len() {
                return;
            }
        }
    }

    /// Splits off the first `n` bytes (at most `len`) as their own rope;
    /// pieces are sliced, never copied.
    fn take(&mut self, n: usize) -> Pieces {
        let mut out = Pieces::default();
        while out.len < n {
            let Some(mut piece) = self.pieces.pop_front() else {
                break;
            };
            let want = n - out.len;
            if piece.len() > want {
                self.pieces.push_front(piece.split_off(want));
            }
            self.len -= piece.len();
            out.push(piece);
        }
        out
    }

    /// The bytes as one `Bytes`: the piece itself when there is one.
    fn join(mut self) -> Bytes {
        match self.pieces.len() {
            0 => Bytes::new(),
            1 => self.pieces.pop_front().expect("one piece"),
            _ => {
                let mut joined = BytesMut::with_capacity(self.len);
                for piece in self.pieces {
                    joined.put(piece);
                }
                joined.freeze()
            }
        }
    }

    /// Consumes a protobuf varint.
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let piece = self.pieces.front_mut()?;
            let byte = piece.get_u8();
            if piece.is_empty() {
                self.pieces.pop_front();
            }
            self.len -= 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, offset: u64, is_final: bool) -> ChunkData {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + offset as usize) as u8).collect();
        ChunkData::frame(Bytes::from(data), offset, is_final)
    }

    /// The bytes `frame_body` sends for `frame`, envelope included.
    fn wire(frame: &ChunkData) -> Vec<u8> {
        let mut out = frame_head(frame).to_vec();
        out.extend_from_slice(&frame.data);
        out
    }

    #[test]
    fn the_head_and_data_are_a_valid_grpc_message() {
        for f in [
            frame(1000, 4096, false),
            frame(0, 7, true),
            frame(300, 0, true),
        ] {
            let bytes = wire(&f);
            assert_eq!(bytes[0], 0);
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 5);
            assert_eq!(ChunkData::decode(&bytes[5..]).unwrap(), f);
        }
    }

    #[test]
    fn frames_split_anywhere_decode_and_data_in_one_piece_is_not_copied() {
        let frames = [
            frame(5000, 0, false),
            frame(0, 5000, false),
            frame(17, 5000, true),
        ];
        // tonic's own encoding (data first) and ours (data last).
        let mut stream = Vec::new();
        for f in &frames {
            let body = f.encode_to_vec();
            stream.push(0u8);
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(&body);
            stream.extend_from_slice(&wire(f));
        }
        for cut in [1usize, 3, 5, 6, 100, 4999, 5006, 7000] {
            let mut rope = Pieces::default();
            let bytes = Bytes::from(stream.clone());
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + cut).min(bytes.len());
                rope.push(bytes.slice(at..end));
                at = end;
            }
            let mut decoded = Vec::new();
            while rope.len > 0 {
                let mut env = [0u8; ENVELOPE];
                rope.peek(&mut env);
                rope.take(ENVELOPE);
                let len = u32::from_be_bytes(env[1..].try_into().unwrap()) as usize;
                decoded.push(decode_frame(rope.take(len)).unwrap());
            }
            let want: Vec<_> = frames.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
            assert_eq!(decoded, want, "pieces of {cut} bytes");
        }
        // Head and data as separate pieces, as frame_body sends them: the
        // decoded data points into the received piece.
        let f = frame(4096, 0, false);
        let mut rope = Pieces::default();
        let head = frame_head(&f);
        rope.push(head.slice(ENVELOPE..));
        rope.push(f.data.clone());
        let len = rope.len;
        let decoded = decode_frame(rope.take(len)).unwrap();
        assert_eq!(decoded.data.as_ptr(), f.data.as_ptr(), "data was copied");
        assert!(decoded.verify());
    }

    /// Reads every message of `M` from `bytes` cut into pieces of `cut`.
    fn read_all<M: StreamMessage>(bytes: &Bytes, cut: usize) -> Vec<M> {
        let mut pieces = Pieces::default();
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + cut).min(bytes.len());
            pieces.push(bytes.slice(at..end));
            at = end;
        }
        let mut out = Vec::new();
        while pieces.len > 0 {
            let mut env = [0u8; ENVELOPE];
            pieces.peek(&mut env);
            pieces.take(ENVELOPE);
            let len = u32::from_be_bytes(env[1..].try_into().unwrap()) as usize;
            out.push(M::from_pieces(pieces.take(len)).unwrap());
        }
        out
    }

    #[test]
    fn replicate_requests_and_responses_round_trip_in_pieces() {
        use crate::{ChunkMeta, ChunkReplicas, ReplicateChunkHeader, upload_chunk_response};
        let header = ReplicateChunkRequest {
            kind: Some(replicate_chunk_request::Kind::Header(
                ReplicateChunkHeader {
                    session_id: "s".into(),
                    chunk: Some(ChunkMeta {
                        chunk_id: "ab".repeat(16),
                        size: 5017,
                        ..Default::default()
                    }),
                    source_node_id: "n1".into(),
                    token: Default::default(),
                },
            )),
        };
        let data = |f: ChunkData| ReplicateChunkRequest {
            kind: Some(replicate_chunk_request::Kind::Data(f)),
        };
        let messages = vec![
            header,
            data(frame(5000, 0, false)),
            data(frame(17, 5000, true)),
        ];
        // Ours (pieces) and prost's encoding, back to back.
        let mut stream = Vec::new();
        for m in &messages {
            let (head, data) = m.clone().into_pieces();
            stream.extend_from_slice(&head);
            stream.extend_from_slice(&data);
            let body = m.encode_to_vec();
            stream.push(0);
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(&body);
        }
        let stream = Bytes::from(stream);
        let want: Vec<_> = messages
            .iter()
            .flat_map(|m| [m.clone(), m.clone()])
            .collect();
        for cut in [1usize, 2, 7, 64, 5003, 1 << 20] {
            assert_eq!(
                read_all::<ReplicateChunkRequest>(&stream, cut),
                want,
                "cut {cut}"
            );
        }
        // The nested frame's data is sliced out of its piece.
        let f = frame(4096, 0, false);
        let (head, body) = data(f.clone()).into_pieces();
        let mut pieces = Pieces::default();
        pieces.push(head.slice(ENVELOPE..));
        pieces.push(body.clone());
        let len = pieces.len;
        match ReplicateChunkRequest::from_pieces(pieces.take(len))
            .unwrap()
            .kind
        {
            Some(replicate_chunk_request::Kind::Data(d)) => {
                assert_eq!(d.data.as_ptr(), body.as_ptr(), "data was copied");
                assert_eq!(d, f);
            }
            other => panic!("{other:?}"),
        }

        let response = UploadChunkResponse {
            kind: Some(upload_chunk_response::Kind::Replicas(ChunkReplicas {
                replicas: vec!["n1".into(), "n2".into()],
                ..Default::default()
            })),
        };
        let (head, rest) = response.clone().into_pieces();
        assert!(rest.is_empty());
        assert_eq!(read_all::<UploadChunkResponse>(&head, 3), vec![response]);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [vec![0x0a], vec![0x0a, 0x05, 1, 2], vec![0x0f], vec![0x10]] {
            let mut rope = Pieces::default();
            rope.push(Bytes::from(bad.clone()));
            assert!(decode_frame(rope).is_err(), "{bad:?}");
        }
    }
}
