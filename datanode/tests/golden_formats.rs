//! Golden tests pinning the datanode's on-disk formats, so that changing one
//! is a visible decision rather than an accident that strands the data
//! already on every node's disk.
//!
//! Each test writes known data through the public API and compares the
//! resulting bytes with a committed file under `tests/golden/`, then reads
//! the committed file back through the current code (old files in the field
//! must stay readable):
//!
//! - `chunk_v1.bin`, `chunk_v1_multiblock.tail.bin`: chunk files
//!   (`store.rs`: data, CRC32C per 256 KiB block, 40-byte `DFSCHNK1` footer).
//! - `volume_v2.vol`: a small-chunk volume (`volume.rs`: `DFV2` records,
//!   commit records, 4 KiB-aligned group commits, a delete record).
//! - `volume_v1_legacy.vol`: a volume of the old `DFV1` format, which no code
//!   writes any more but start-up still reads. It is made once by the spec
//!   encoder in this file (from the format's documentation), checked to
//!   still match it, and never rewritten (delete it to make it again).
//! - `node_id`, `cluster_id`: the identity files of a data directory.
//!
//! Everything written is deterministic (fixed ids, fixed data, one group
//! commit per put, no zeros written ahead); the ids the node draws at
//! random are compared by shape (see the identity test).
//!
//! When a format changes deliberately, bump its version (magic) so old files
//! are still recognised, and regenerate the golden files:
//!
//! ```text
//! DFS_UPDATE_GOLDEN=1 cargo test -p dfs-datanode --test golden_formats
//! ```
//!
//! With `DFS_UPDATE_GOLDEN=1` the tests rewrite the golden files instead of
//! comparing them (then still read them back); review the diff before
//! committing it.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dfs_datanode::membership::ClusterIdentity;
use dfs_datanode::store::{BLOCK_BYTES, ChunkId, Store, StoreOptions, StoredChunk};
use dfs_datanode::{Config, Datanode, Metrics, volume};
use tokio::net::TcpListener;

use dfs_testkit::golden::{Diff, Golden};
const REGENERATE: &str = "DFS_UPDATE_GOLDEN=1 cargo test -p dfs-datanode --test golden_formats";

fn golden() -> Golden {
    Golden::new(env!("CARGO_MANIFEST_DIR"), REGENERATE)
}

fn updating() -> bool {
    dfs_testkit::golden::updating()
}

fn golden_path(name: &str) -> PathBuf {
    golden().path(name)
}

fn read_golden(what: &str, name: &str) -> Vec<u8> {
    golden().read(what, name)
}

/// Compares `actual` with the golden file `name` (rewrites it instead when
/// `DFS_UPDATE_GOLDEN=1` is set). `version` says what to bump on a deliberate
/// change.
fn check_golden(what: &str, name: &str, version: &str, actual: &[u8]) {
    if let Err(diff) = golden().compare(what, name, actual, Diff::Binary) {
        panic!(
            "{what} format changed: the bytes written now differ from tests/golden/{name}: {}.\n\
         If deliberate, bump the format version ({version}), keep reading files of the old \
         version (nodes have them on disk), and rerun with {REGENERATE} to rewrite the golden \
         file.",
            diff
        );
    }
}

fn id(s: &str) -> ChunkId {
    ChunkId::parse(s).expect("valid chunk id")
}

/// Where the layout documented in `store.rs` puts a chunk file (computed
/// here rather than asked of the store, so a layout change shows).
fn chunk_file(data_dir: &Path, id: &ChunkId) -> PathBuf {
    let s = id.as_str();
    data_dir.join("chunks").join(&s[..2]).join(s)
}

fn open_store(dir: &Path, options: StoreOptions) -> Arc<Store> {
    Store::open(dir, options, Metrics::new()).expect("store opens")
}

/// Reads a whole chunk through the store (every block verified).
fn read_chunk(store: &Store, id: &ChunkId) -> Vec<u8> {
    read_range(store, id, 0, 0)
}

fn read_range(store: &Store, id: &ChunkId, offset: u64, len: u64) -> Vec<u8> {
    let reader = store
        .open_reader(id)
        .unwrap_or_else(|e| panic!("chunk {id} does not open: {e}"));
    let mut out = Vec::new();
    reader
        .read_range(offset, len, &mut BytesMut::new(), |piece| {
            out.extend_from_slice(&piece.data);
            true
        })
        .unwrap_or_else(|e| panic!("chunk {id} does not read back: {e}"));
    out
}

fn meta(data: &[u8]) -> StoredChunk {
    StoredChunk {
        size: data.len() as u64,
        checksum: crc32c::crc32c(data),
    }
}

fn assert_nothing_corrupt(store: &Store, what: &str) {
    let delta = store.take_delta();
    assert!(
        delta.corrupt.is_empty() && store.quarantined().is_empty(),
        "{what}: the current code finds a golden file corrupt ({:?}): it can no longer read \
         files of this format",
        delta.corrupt
    );
}

// ---------------------------------------------------------------------------
// Chunk files.

const SMALL_CHUNK: &str = "0123456789abcdef0123456789abcdef";
const MULTI_CHUNK: &str = "fedcba9876543210fedcba9876543210";
const CHUNK_VERSION: &str = "MAGIC \"DFSCHNK1\" in datanode/src/store.rs";

/// 300 bytes: one partial block.
fn small_chunk_data() -> Vec<u8> {
    (0..300u32).map(|i| (i * 31 + 7) as u8).collect()
}

/// One full block and 1000 bytes of a second.
fn multi_chunk_data() -> Vec<u8> {
    (0..BLOCK_BYTES as u32 + 1000)
        .map(|i| (i * 7 % 253) as u8)
        .collect()
}

/// Pins the chunk file format: data, then one CRC32C (little endian) per
/// 256 KiB block, then the 40-byte footer (magic `DFSCHNK1`, size u64,
/// whole-chunk CRC32C, block size, algorithm 1 = CRC32C, CRC32C of the block
/// table, 4 reserved bytes, CRC32C of the footer's first 36 bytes).
///
/// The multi-block chunk is 257 KiB, so only what follows its data (the
/// block table and footer, where the format is) is committed; the data is
/// [`multi_chunk_data`], checked to be stored verbatim at the start.
#[test]
fn chunk_file_format_v1() {
    assert_eq!(
        BLOCK_BYTES,
        256 * 1024,
        "chunk file format changed: BLOCK_BYTES is part of it (recorded in every footer)"
    );
    let (small, multi) = (small_chunk_data(), multi_chunk_data());
    let (small_id, multi_id) = (id(SMALL_CHUNK), id(MULTI_CHUNK));

    // Written now (small chunks off: a 300-byte chunk gets a file, as on a
    // node run with `--small-chunk-max 0`).
    let dir = tempfile::tempdir().unwrap();
    let files_only = StoreOptions {
        small_chunk_max: 0,
        ..StoreOptions::default()
    };
    let store = open_store(dir.path(), files_only);
    for (id, data) in [(&small_id, &small), (&multi_id, &multi)] {
        assert!(!store.is_small(data.len() as u64));
        let mut w = store.create_writer(id).unwrap();
        // Uneven writes: the block boundaries must not depend on them.
        for part in data.chunks(100_000) {
            w.write(part).unwrap();
        }
        assert_eq!(w.finish(data.len() as u64, None).unwrap(), meta(data));
    }
    drop(store);
    let read = |id: &ChunkId| {
        fs::read(chunk_file(dir.path(), id)).unwrap_or_else(|e| {
            panic!(
                "chunk file layout changed: chunk {id} is not at chunks/<first two hex>/<id> \
                 ({e}); if deliberate, old data directories must still be found"
            )
        })
    };
    check_golden(
        "chunk file",
        "chunk_v1.bin",
        CHUNK_VERSION,
        &read(&small_id),
    );
    let file = read(&multi_id);
    assert!(
        file.len() > multi.len() && file[..multi.len()] == multi[..],
        "chunk file format changed: a chunk file no longer starts with the chunk's data \
         verbatim; if deliberate, bump {CHUNK_VERSION} and rerun with {REGENERATE}"
    );
    check_golden(
        "chunk file",
        "chunk_v1_multiblock.tail.bin",
        CHUNK_VERSION,
        &file[multi.len()..],
    );

    // The committed files, read by the current code.
    let dir = tempfile::tempdir().unwrap();
    let place = |id: &ChunkId, bytes: &[u8]| {
        let path = chunk_file(dir.path(), id);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    };
    place(&small_id, &read_golden("chunk file", "chunk_v1.bin"));
    let mut golden_multi = multi.clone();
    golden_multi.extend(read_golden("chunk file", "chunk_v1_multiblock.tail.bin"));
    place(&multi_id, &golden_multi);
    let store = open_store(dir.path(), files_only);
    assert_nothing_corrupt(&store, "chunk file");
    assert_eq!(store.ids(), vec![small_id.clone(), multi_id.clone()]);
    assert_eq!(store.get(&small_id), Some(meta(&small)));
    assert_eq!(store.get(&multi_id), Some(meta(&multi)));
    assert!(
        read_chunk(&store, &small_id) == small,
        "golden small chunk reads back other bytes"
    );
    assert!(
        read_chunk(&store, &multi_id) == multi,
        "golden multi-block chunk reads back other bytes"
    );
    // A range across the block boundary (verifies both blocks).
    let from = BLOCK_BYTES as u64 - 10;
    assert_eq!(
        read_range(&store, &multi_id, from, 20),
        &multi[from as usize..from as usize + 20]
    );
    assert_nothing_corrupt(&store, "chunk file");
}

// ---------------------------------------------------------------------------
// Small-chunk volumes.

const VOL_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
const VOL_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2";
const VOL_C: &str = "ccccccccccccccccccccccccccccccc3";
const VOLUME_VERSION: &str = "MAGIC \"DFV2\" in datanode/src/volume.rs";
const FIRST_VOLUME: &str = "00000001.vol";

/// Volumes whose files end where their last batch ends (no zeros written
/// ahead, which would be 1 MiB of them), so the file is exactly what the
/// group commits wrote.
fn exact_volumes() -> StoreOptions {
    StoreOptions {
        volume_prealloc_bytes: 0,
        ..StoreOptions::default()
    }
}

fn volume_a_first() -> Vec<u8> {
    (0..100u32).map(|i| (i * 3 + 1) as u8).collect()
}

fn volume_b() -> Vec<u8> {
    (0..5000u32).map(|i| (i % 251) as u8).collect()
}

const VOLUME_A_AGAIN: &[u8] = b"chunk a, put again after its delete";

fn volume_names(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(data_dir.join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn put_small(store: &Store, id: &ChunkId, parts: &[&[u8]]) {
    let data: Vec<u8> = parts.concat();
    let parts = parts.iter().map(|p| Bytes::copy_from_slice(p)).collect();
    let stored = store
        .put_small(id, parts, data.len() as u64, Some(crc32c::crc32c(&data)))
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(stored, meta(&data));
}

/// Pins the volume format: 4 batches, each starting on a 4 KiB boundary
/// and closed by its commit record and zeros: a 100-byte put (received in
/// two parts), a 5000-byte put (two sectors), a delete record, and a put of
/// the deleted id again. Each put is waited for before the next is queued
/// (and the delete is flushed by a compaction request, which the committer
/// handles after what is queued), so every batch holds one record.
#[test]
fn volume_format_dfv2() {
    let (a1, b) = (volume_a_first(), volume_b());
    let (ida, idb) = (id(VOL_A), id(VOL_B));

    // Written now.
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), exact_volumes());
    assert!(
        store.is_small(b.len() as u64),
        "the 5000-byte chunk goes to a volume"
    );
    put_small(&store, &ida, &[&a1[..40], &a1[40..]]);
    put_small(&store, &idb, &[&b]);
    assert!(store.delete(&ida).unwrap());
    // A barrier: answered after the queued delete record is written (there
    // is no sealed volume to compact).
    assert!(!store.compact_volumes().unwrap());
    put_small(&store, &ida, &[VOLUME_A_AGAIN]);
    store.close();
    drop(store);
    assert_eq!(
        volume_names(dir.path()),
        vec![FIRST_VOLUME],
        "small-chunk volume layout changed: expected volumes/{FIRST_VOLUME} only"
    );
    let written = fs::read(dir.path().join("volumes").join(FIRST_VOLUME)).unwrap();
    check_golden(
        "small-chunk volume",
        "volume_v2.vol",
        VOLUME_VERSION,
        &written,
    );

    // The committed file, read by the current code: without changing
    // anything (inspect), then by a store opening it.
    let dir = tempfile::tempdir().unwrap();
    let golden = read_golden("small-chunk volume", "volume_v2.vol");
    let vol = dir.path().join("volumes").join(FIRST_VOLUME);
    fs::create_dir_all(vol.parent().unwrap()).unwrap();
    fs::write(&vol, &golden).unwrap();
    check_volume(
        dir.path(),
        &[(&ida, VOLUME_A_AGAIN), (&idb, &b)],
        "volume_v2.vol",
    );
    assert!(
        fs::read(&vol).unwrap() == golden,
        "opening the golden volume changed it (the current code takes part of it for a torn write)"
    );
}

/// Checks that the volumes of `data_dir` hold exactly `want` (sorted by id),
/// through [`volume::inspect`] and through a store opened on them.
fn check_volume(data_dir: &Path, want: &[(&ChunkId, &[u8])], name: &str) {
    let found = volume::inspect(data_dir).unwrap();
    let ids: Vec<_> = found.iter().map(|c| c.id.clone()).collect();
    let want_ids: Vec<_> = want.iter().map(|(i, _)| (*i).clone()).collect();
    assert_eq!(
        ids, want_ids,
        "golden {name}: the current code finds other live chunks in it"
    );
    for (chunk, (_, data)) in found.iter().zip(want) {
        assert_eq!(chunk.meta, meta(data), "golden {name}: chunk {}", chunk.id);
        let mut buf = vec![0u8; data.len()];
        fs::File::open(&chunk.path)
            .unwrap()
            .read_exact_at(&mut buf, chunk.data_offset)
            .unwrap();
        assert!(buf == *data, "golden {name}: chunk {} data", chunk.id);
    }
    let store = open_store(data_dir, exact_volumes());
    assert_nothing_corrupt(&store, name);
    assert_eq!(store.ids(), want_ids, "golden {name}: chunks after opening");
    for (id, data) in want {
        assert!(
            read_chunk(&store, id) == *data,
            "golden {name}: chunk {id} reads back other bytes"
        );
    }
    store.close();
}

/// A record of the old "DFV1" format, from its documentation in
/// `volume.rs` (records back to back, no commit records, no alignment):
/// magic | kind u8 (1 put, 2 delete) | 3 zero bytes | data length u32 |
/// data CRC32C u32 | zero u32 | CRC32C of header[..20] and the id | id |
/// data.
fn dfv1_record(kind: u8, id: &str, data: &[u8]) -> Vec<u8> {
    let mut b = b"DFV1".to_vec();
    b.extend_from_slice(&[kind, 0, 0, 0]);
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    let h = crc32c::crc32c_append(crc32c::crc32c(&b), id.as_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(id.as_bytes());
    b.extend_from_slice(data);
    b
}

/// The records of the legacy golden volume: puts of a, b and c with a
/// delete of a between them.
fn legacy_volume() -> Vec<u8> {
    let mut v = dfv1_record(1, VOL_A, b"legacy chunk a");
    v.extend(dfv1_record(1, VOL_B, &volume_b()));
    v.extend(dfv1_record(2, VOL_A, b""));
    v.extend(dfv1_record(1, VOL_C, b"legacy chunk c"));
    v
}

/// Volumes of the old format are still read at start-up. Nothing writes
/// them any more, so the golden file is frozen: made once from the spec
/// encoder above (when missing and updating), never rewritten, and checked
/// to still hold exactly those records (a damaged put of a, deleted later,
/// would not show in what is read back).
#[test]
fn legacy_dfv1_volumes_are_still_read() {
    let name = "volume_v1_legacy.vol";
    let b = volume_b();
    if updating() && !golden_path(name).exists() {
        fs::create_dir_all(golden_path("")).unwrap();
        fs::write(golden_path(name), legacy_volume()).unwrap();
    }
    let golden = read_golden("legacy DFV1 volume", name);
    assert!(
        golden == legacy_volume(),
        "tests/golden/{name} was modified ({}): it is frozen and must hold the DFV1 records of \
         `legacy_volume()`; restore it from git (or delete it and rerun with {REGENERATE})",
        dfs_testkit::golden::describe(&legacy_volume(), &golden, Diff::Binary)
    );
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("volumes").join(FIRST_VOLUME);
    fs::create_dir_all(vol.parent().unwrap()).unwrap();
    fs::write(&vol, &golden).unwrap();
    check_volume(
        dir.path(),
        &[(&id(VOL_B), &b), (&id(VOL_C), b"legacy chunk c")],
        name,
    );
    assert!(
        fs::read(&vol).unwrap() == golden,
        "opening the legacy volume changed it"
    );
}

// ---------------------------------------------------------------------------
// Identity files.

const GOLDEN_NODE_ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const GOLDEN_CLUSTER_ID: &str = "c1a55e5c1a55e5c1a55e5c1a55e5c1a5";

/// `<32 lowercase hex>\n`, the shape of both identity files.
fn assert_identity_shape(what: &str, content: &str, expected_id: &str) {
    let id = content.strip_suffix('\n').unwrap_or_else(|| {
        panic!("{what} file format changed: {content:?} does not end in one newline")
    });
    assert!(
        id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
        "{what} file format changed: {content:?} is not 32 lowercase hex characters and a \
         newline (as in tests/golden/{what}); if deliberate, keep reading the old files"
    );
    assert_eq!(id, expected_id, "{what} file holds another id");
}

async fn start_datanode(dir: &Path, coordinator: &str) -> Datanode {
    let mut config = Config::new(dir);
    config.coordinator = coordinator.into();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Datanode::start(config, grpc, metrics).await.unwrap()
}

/// Pins `node_id` and `cluster_id`: the golden files are read by the current
/// code, and the files it writes have their shape. The ids written are
/// random (a node's own, the coordinator's cluster id), so they are compared
/// by shape and against the id the node or the coordinator reports, not
/// against the golden bytes. The golden files themselves are never
/// rewritten (the code never writes these ids); updating only creates
/// them when missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_files() {
    for (name, id) in [
        ("node_id", GOLDEN_NODE_ID),
        ("cluster_id", GOLDEN_CLUSTER_ID),
    ] {
        if updating() && !golden_path(name).exists() {
            fs::create_dir_all(golden_path("")).unwrap();
            fs::write(golden_path(name), format!("{id}\n")).unwrap();
        }
    }
    let golden_node = String::from_utf8(read_golden("node_id", "node_id")).unwrap();
    let golden_cluster = String::from_utf8(read_golden("cluster_id", "cluster_id")).unwrap();
    assert_identity_shape("node_id", &golden_node, golden_node.trim());
    assert_identity_shape("cluster_id", &golden_cluster, golden_cluster.trim());

    // The golden files, read by the current code.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("node_id"), &golden_node).unwrap();
    fs::write(dir.path().join("cluster_id"), &golden_cluster).unwrap();
    let node = start_datanode(dir.path(), "http://127.0.0.1:9").await;
    assert_eq!(
        node.node_id(),
        golden_node.trim(),
        "the current code does not read tests/golden/node_id (it made a new id)"
    );
    drop(node);
    assert_eq!(
        ClusterIdentity::load(dir.path()).unwrap().get().as_deref(),
        Some(golden_cluster.trim()),
        "the current code does not read tests/golden/cluster_id"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("node_id")).unwrap(),
        golden_node
    );

    // Written now: node_id at first start, cluster_id at the first
    // registration with a (real) coordinator.
    let server_dir = tempfile::tempdir().unwrap();
    let server = dfs_testkit::coordinator::Server::start(dfs_testkit::coordinator::test_config(
        server_dir.path(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let node = dfs_testkit::datanode::TestNode::start(dir.path(), |c| {
        c.coordinator = server.url.clone();
    })
    .await;
    let written = fs::read_to_string(dir.path().join("node_id")).unwrap();
    assert_identity_shape("node_id", &written, &node.node_id);
    let cluster_file = dir.path().join("cluster_id");
    dfs_testkit::datanode::eventually("the cluster_id file", || cluster_file.exists()).await;
    let status = server
        .client()
        .await
        .get_cluster_status(dfs_proto::GetClusterStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let written = fs::read_to_string(&cluster_file).unwrap();
    assert_identity_shape("cluster_id", &written, &status.cluster_id);
    node.stop().await;
    server.stop().await;
}
