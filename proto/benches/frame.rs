//! Micro-benchmarks of the data path's per-frame work: the CRC32C every
//! frame carries, protobuf encoding/decoding of a 256 KiB `ChunkData`, and
//! the zero-copy DownloadChunkStream framing (`dfs_proto::chunk_stream`)
//! against the copying encode it replaces.
//!
//! `cargo bench -p dfs-proto --bench frame`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dfs_proto::{ChunkData, DEFAULT_FRAME_BYTES};
use prost::Message;

fn frame_bytes() -> Bytes {
    Bytes::from(
        (0..DEFAULT_FRAME_BYTES)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn checksum(c: &mut Criterion) {
    let data = frame_bytes();
    let mut group = c.benchmark_group("checksum");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("crc32c_256KiB", |b| {
        b.iter(|| dfs_proto::frame::checksum(black_box(&data)))
    });
    group.finish();
}

fn encode_decode(c: &mut Criterion) {
    let data = frame_bytes();
    let frame = ChunkData::frame(data.clone(), 0, false);
    let encoded = Bytes::from(frame.encode_to_vec());
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(data.len() as u64));
    // Encoding into a reused buffer, as the transport does.
    let mut buf = Vec::with_capacity(encoded.len());
    group.bench_function("encode_256KiB", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&frame).encode(&mut buf).expect("fits");
        })
    });
    // Decoding from `Bytes`: `data` is a slice of the input, not a copy.
    group.bench_function("decode_256KiB", |b| {
        b.iter(|| ChunkData::decode(black_box(encoded.clone())).expect("decodes"))
    });
    group.bench_function("build_and_verify_256KiB", |b| {
        b.iter(|| {
            let f = ChunkData::frame(black_box(data.clone()), 0, false);
            assert!(f.verify());
        })
    });
    group.finish();
}

/// What a datanode and a client do per 256 KiB frame of DownloadChunkStream:
/// the head written before the data slice (against prost's encode, which
/// copies the data into the send buffer), and reading 16 frames (4 MiB) out
/// of a response body that delivers head and data as separate pieces.
fn zero_copy_stream(c: &mut Criterion) {
    use dfs_proto::chunk_stream::{FrameReader, frame_head};
    use http_body_util::StreamBody;
    let data = frame_bytes();
    let frame = ChunkData::frame(data.clone(), 0, false);
    let mut group = c.benchmark_group("chunk_stream");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("frame_head_256KiB", |b| {
        b.iter(|| frame_head(black_box(&frame)))
    });
    let frames: Vec<ChunkData> = (0..16u64)
        .map(|i| ChunkData::frame(data.clone(), i * data.len() as u64, i == 15))
        .collect();
    let pieces: Vec<Bytes> = frames
        .iter()
        .flat_map(|f| [frame_head(f), f.data.clone()])
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    group.throughput(Throughput::Bytes(16 * data.len() as u64));
    group.bench_function("read_16_frames_4MiB", |b| {
        b.iter(|| {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let body = StreamBody::new(futures::stream::iter(
                pieces
                    .iter()
                    .cloned()
                    .map(http_body::Frame::data)
                    .chain(std::iter::once(http_body::Frame::trailers(trailers)))
                    .map(Ok::<_, std::convert::Infallible>),
            ));
            let mut reader =
                FrameReader::new(http::Response::new(body), 1 << 20).expect("a good response");
            runtime.block_on(async {
                let mut n = 0;
                while let Some(f) = reader.message().await.expect("frames decode") {
                    n += f.data.len();
                }
                assert_eq!(n, 16 * data.len());
            })
        })
    });
    group.finish();
}

criterion_group!(benches, checksum, encode_decode, zero_copy_stream);
criterion_main!(benches);
