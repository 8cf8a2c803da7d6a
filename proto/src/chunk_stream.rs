//! `DownloadChunkStream` without copying chunk bytes in user space.
//!
//! tonic's codecs copy every message once on each side: the encoder appends
//! a frame's `data` into its send buffer, and the decoder gathers the
//! received HTTP/2 DATA frames into its receive buffer before decoding.
//! Profiling a 1 GiB re-read served from the page cache showed those two
//! `memcpy`s at about a third of both the datanode's and the client's CPU.
//!
//! This module speaks the same gRPC wire format without them:
//! - [`frame_body`] turns a stream of [`ChunkData`] into an HTTP/2 response
//!   body that sends each frame as two pieces, the small gRPC envelope and
//!   protobuf fields first, then the `data` bytes themselves (a slice of the
//!   reader's buffer, written to the socket with `writev`);
//! - [`FrameReader`] parses the response body as it arrives, handing out
//!   `data` as a slice of the received HTTP/2 DATA frame whenever the field
//!   lies in one (it does when the sender is [`frame_body`] and the peer
//!   allows 1 MiB HTTP/2 frames); otherwise the field's pieces are joined.
//!
//! Both interoperate with plain tonic peers: the bytes on the wire are a
//! valid gRPC stream of `ChunkData` messages, fields in any order.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_core::Stream;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;

use crate::{ChunkData, DownloadChunkStreamRequest};

/// The method's path on the wire.
pub const DOWNLOAD_PATH: &str = "/dfs.v1.DataNode/DownloadChunkStream";

/// Length of the gRPC message envelope (compressed flag and length).
const ENVELOPE: usize = 5;

/// The gRPC envelope and every field of `frame` but `data`, then the key
/// and length of `data`: what precedes the data bytes on the wire.
pub fn frame_head(frame: &ChunkData) -> Bytes {
    let rest = frame.clone_without_data();
    let data_len = frame.data.len();
    let data_field = if data_len == 0 {
        0
    } else {
        1 + prost::length_delimiter_len(data_len)
    };
    let len = rest.encoded_len() + data_field + data_len;
    let mut head = BytesMut::with_capacity(ENVELOPE + rest.encoded_len() + data_field);
    head.put_u8(0);
    head.put_u32(len as u32);
    rest.encode(&mut head)
        .expect("the buffer was sized for the message");
    if data_len > 0 {
        // Field 1, wire type 2 (length-delimited).
        head.put_u8(0x0a);
        prost::encode_length_delimiter(data_len, &mut head)
            .expect("the buffer was sized for the delimiter");
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

/// A response body streaming `frames` as gRPC messages without copying
/// their data, ended by the gRPC status trailers: OK when the stream ends,
/// or the first error it yields.
pub fn frame_body<S>(frames: S) -> FrameBody<S>
where
    S: Stream<Item = Result<ChunkData, Status>> + Unpin,
{
    FrameBody {
        frames,
        data: None,
        done: false,
    }
}

/// See [`frame_body`].
pub struct FrameBody<S> {
    frames: S,
    /// Data of the frame whose head was just sent.
    data: Option<Bytes>,
    done: bool,
}

impl<S> Body for FrameBody<S>
where
    S: Stream<Item = Result<ChunkData, Status>> + Unpin,
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
        let next = match Pin::new(&mut self.frames).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        match next {
            Some(Ok(mut frame)) => {
                let head = frame_head(&frame);
                let data = std::mem::take(&mut frame.data);
                if !data.is_empty() {
                    self.data = Some(data);
                }
                Poll::Ready(Some(Ok(Frame::data(head))))
            }
            Some(Err(status)) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
            }
            None => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
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

/// Reads a server-streaming gRPC response of `ChunkData` messages,
/// slicing each frame's `data` out of the received bytes.
pub struct FrameReader<B> {
    body: B,
    received: Rope,
    /// Largest message accepted (bounds memory per stream).
    max_message: usize,
    finished: bool,
}

impl<B> FrameReader<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Checks the response head (HTTP status, a trailers-only error) and
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
        Ok(FrameReader {
            body: response.into_body(),
            received: Rope::default(),
            max_message,
            finished: false,
        })
    }

    /// The next frame; `None` once the server ended the stream with OK.
    pub async fn message(&mut self) -> Result<Option<ChunkData>, Status> {
        loop {
            if let Some(len) = self.complete_message()? {
                let message = self.received.take(len);
                return decode_frame(message).map(Some);
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
                None => {
                    return Err(Status::internal("the stream ended without a gRPC status"));
                }
                Some(Err(e)) => return Err(Status::from_error(e.into())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.received.push(data),
                    Err(frame) => {
                        let status = frame
                            .into_trailers()
                            .ok()
                            .and_then(|t| Status::from_header_map(&t))
                            .unwrap_or_else(|| Status::internal("trailers without grpc-status"));
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
            return Err(Status::internal(
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

/// Calls DownloadChunkStream over `channel` and returns the frames as they
/// arrive, each of at most `max_message` bytes on the wire.
pub async fn download(
    mut channel: tonic::transport::Channel,
    request: DownloadChunkStreamRequest,
    max_message: usize,
) -> Result<FrameReader<tonic::body::Body>, Status> {
    use tower_service::Service;
    let len = request.encoded_len();
    let mut body = BytesMut::with_capacity(ENVELOPE + len);
    body.put_u8(0);
    body.put_u32(len as u32);
    request
        .encode(&mut body)
        .expect("the buffer was sized for the request");
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(DOWNLOAD_PATH)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            body.freeze(),
        )))
        .map_err(|e| Status::internal(format!("cannot build the request: {e}")))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    let response = channel
        .call(request)
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    FrameReader::new(response, max_message)
}

/// Decodes one `ChunkData` whose bytes are `message` (pieces in order):
/// `data` is sliced, not copied, when it lies within one piece; every other
/// field goes through prost.
fn decode_frame(mut message: Rope) -> Result<ChunkData, Status> {
    let bad = |what: &str| Status::internal(format!("malformed ChunkData: {what}"));
    let mut data = Bytes::new();
    let mut rest = BytesMut::new();
    while message.len > 0 {
        let key = message.varint().ok_or_else(|| bad("truncated key"))?;
        let (field, wire_type) = (key >> 3, key & 7);
        let mut key_bytes = BytesMut::new();
        prost::encoding::encode_varint(key, &mut key_bytes);
        match wire_type {
            0 => {
                let v = message.varint().ok_or_else(|| bad("truncated varint"))?;
                rest.put(key_bytes);
                prost::encoding::encode_varint(v, &mut rest);
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                if message.len < n {
                    return Err(bad("truncated fixed field"));
                }
                rest.put(key_bytes);
                rest.put(message.take(n).join());
            }
            2 => {
                let n = message.varint().ok_or_else(|| bad("truncated length"))? as usize;
                if message.len < n {
                    return Err(bad("truncated field"));
                }
                let value = message.take(n).join();
                if field == 1 {
                    data = value;
                } else {
                    rest.put(key_bytes);
                    prost::encoding::encode_varint(n as u64, &mut rest);
                    rest.put(value);
                }
            }
            _ => return Err(bad("unknown wire type")),
        }
    }
    let mut frame = ChunkData::decode(rest.freeze()).map_err(|e| bad(&e.to_string()))?;
    frame.data = data;
    Ok(frame)
}

/// Received bytes as the pieces they arrived in.
#[derive(Default)]
struct Rope {
    pieces: VecDeque<Bytes>,
    len: usize,
}

impl Rope {
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
    fn take(&mut self, n: usize) -> Rope {
        let mut out = Rope::default();
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
            let mut rope = Rope::default();
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
        let mut rope = Rope::default();
        let head = frame_head(&f);
        rope.push(head.slice(ENVELOPE..));
        rope.push(f.data.clone());
        let len = rope.len;
        let decoded = decode_frame(rope.take(len)).unwrap();
        assert_eq!(decoded.data.as_ptr(), f.data.as_ptr(), "data was copied");
        assert!(decoded.verify());
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [vec![0x0a], vec![0x0a, 0x05, 1, 2], vec![0x0f], vec![0x10]] {
            let mut rope = Rope::default();
            rope.push(Bytes::from(bad.clone()));
            assert!(decode_frame(rope).is_err(), "{bad:?}");
        }
    }
}
