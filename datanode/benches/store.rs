//! Micro-benchmarks of the chunk store, the datanode's hot path on disk:
//! writing a chunk durably (write, per-block CRC32C, fsync, rename, fsync of
//! the directory) and reading it back verified block by block; and a small
//! chunk put through the volume group commit, alone and 16 at a time (the
//! `dfs bench` small-file concurrency).
//!
//! `cargo bench -p dfs-datanode --bench store`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dfs_datanode::Metrics;
use dfs_datanode::store::{ChunkId, Store, StoreOptions};

const FRAME: usize = 256 * 1024;

fn id(n: u64) -> ChunkId {
    ChunkId::parse(&format!("{n:032x}")).expect("valid id")
}

fn write_chunk(store: &Arc<Store>, n: u64, data: &[u8]) {
    let mut writer = store.create_writer(&id(n)).expect("writer");
    for frame in data.chunks(FRAME) {
        writer.write(frame).expect("write");
    }
    writer.finish(data.len() as u64, None).expect("durable");
}

fn store_bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), StoreOptions::default(), Metrics::new()).expect("store");
    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    for size in [4 << 10, 4 << 20, 64 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        let label = match size {
            s if s >= 1 << 20 => format!("{}MiB", s >> 20),
            s => format!("{}KiB", s >> 10),
        };
        group.throughput(Throughput::Bytes(size as u64));
        let mut n = 0u64;
        group.bench_function(format!("write_durable_{label}"), |b| {
            b.iter(|| {
                n += 1;
                write_chunk(&store, n, &data);
                store.delete(&id(n)).expect("delete");
            })
        });
        write_chunk(&store, u64::MAX >> 1, &data);
        let mut scratch = bytes::BytesMut::with_capacity(FRAME);
        group.bench_function(format!("read_verified_{label}"), |b| {
            b.iter(|| {
                let reader = store.open_reader(&id(u64::MAX >> 1)).expect("reader");
                reader
                    .read_range(0, 0, &mut scratch, |piece| {
                        black_box(piece);
                        true
                    })
                    .expect("verified read");
            })
        });
        store.delete(&id(u64::MAX >> 1)).expect("delete");
    }
    let small = bytes::Bytes::from(vec![7u8; 4 << 10]);
    let mut n = 1u64 << 40;
    for batch in [1u64, 16] {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("small_put_4KiB_x{batch}"), |b| {
            b.iter(|| {
                let pending: Vec<_> = (0..batch)
                    .map(|_| {
                        n += 1;
                        store
                            .put_small(&id(n), vec![small.clone()], small.len() as u64, None)
                            .expect("queued")
                    })
                    .collect();
                for p in pending {
                    p.wait_blocking().expect("durable");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, store_bench);
criterion_main!(benches);
