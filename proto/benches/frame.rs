//! Micro-benchmarks of the data path's per-frame work: the CRC32C every
//! frame carries, and protobuf encoding/decoding of a 256 KiB `ChunkData`.
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

criterion_group!(benches, checksum, encode_decode);
criterion_main!(benches);
