//! Golden tests pinning the coordinator's durable metadata formats
//! (`coordinator/src/store.rs`), so that changing one is a visible decision
//! rather than an accident that makes existing metadata unreadable.
//!
//! The metadata lives in `metadata.redb`: table `log` (u64 index of a
//! row's first command → the row) and table `meta` (key `snapshot` → the
//! snapshot). A row is the JSON array of the commands of one group commit
//! (serde's encoding of [`Command`]); rows of a single bare command (no
//! array) are still read. The snapshot is the JSON of `{last_index, state}`.
//!
//! - `log_rows_v1.txt`: every row a scenario using every [`Command`] kind
//!   writes through the real [`Committer`] (those the snapshot later
//!   removes included), one line each: `<index> <row bytes>`. Compared byte
//!   for byte, then decoded by the current types.
//! - `snapshot_v1.json`: the snapshot that scenario takes half way
//!   (exact bytes), then installed in a fresh store and read back.
//! - `metadata_v1/metadata.redb`: the whole scenario's database, with one
//!   legacy bare-command row appended by hand. Its bytes are redb's own
//!   (page layout, free lists), not compared: the test checks that it
//!   opens with the current code (and redb version), through
//!   [`Store::open`] and a coordinator served on a copy of it, and shows
//!   the expected namespace.
//!
//! Nothing in these formats is random or clock-dependent when written by
//! the state machine: commands carry their timestamps and ids, and the
//! scenario fixes them; the snapshot's collections are ordered maps.
//!
//! When a format changes deliberately, keep reading the old one (existing
//! coordinators have it on disk), then regenerate the golden files and
//! review the diff:
//!
//! ```text
//! DFS_UPDATE_GOLDEN=1 cargo test -p dfs-coordinator --test golden_formats
//! ```
//!
//! With `DFS_UPDATE_GOLDEN=1` the tests rewrite the golden files instead of
//! comparing them (then still read them back).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dfs_common::id::InvalidId;
use dfs_coordinator::namespace::{
    ChunkOwner, ChunkRecord, Command, Namespace, NodeRecord, Outcome, PlannedChunkRecord,
    TopologyRecord, Upload,
};
use dfs_coordinator::path::NsPath;
use dfs_coordinator::store::{Applied, Committer, Store};
use redb::{ReadableDatabase, TableDefinition};

use dfs_testkit::golden::{Diff, Golden, UPDATE_ENV};
const REGENERATE: &str = "DFS_UPDATE_GOLDEN=1 cargo test -p dfs-coordinator --test golden_formats";
/// The tables as `store.rs` defines them (private there: spelled out here,
/// so renaming one fails this test).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT_KEY: &str = "snapshot";
const DB_FILE: &str = "metadata.redb";

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
/// [`UPDATE_ENV`] is set).
fn check_golden(what: &str, name: &str, actual: &[u8]) {
    if let Err(diff) = golden().compare(what, name, actual, Diff::Text) {
        panic!(
            "{what} format changed: what the current code writes differs from \
         tests/golden/{name}: {}.\nIf deliberate, keep reading the old encoding (coordinators \
         have it on disk; e.g. serde defaults or aliases for renamed or new fields), and rerun \
         with {REGENERATE} to rewrite the golden file.",
            diff
        );
    }
}

// ---------------------------------------------------------------------------
// The scenario: every kind of command, with fixed ids and times.

const T: u64 = 1_700_000_000_000;
/// Far in the future (2096): the open upload must not expire when a
/// coordinator is served on the golden database.
const FAR: u64 = 4_000_000_000_000;
const CLUSTER: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";
const N1: &str = "11111111111111111111111111111111";
const N2: &str = "22222222222222222222222222222222";
const U1: &str = "00000000000000000000000000000001";
const U2: &str = "00000000000000000000000000000002";
const U3: &str = "00000000000000000000000000000003";
const U4: &str = "00000000000000000000000000000004";
const PLANNED: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const REPLANNED: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const OPEN_CHUNK: &str = "cccccccccccccccccccccccccccccccc";
const EXPIRED_CHUNK: &str = "dddddddddddddddddddddddddddddddd";
const ABORTED_CHUNK: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
/// Commands in the log when the snapshot is taken.
const SNAPSHOT_INDEX: u64 = 9;

/// A fixed id of the kind the field wants, under its rule.
fn id<T: for<'a> TryFrom<&'a str, Error = InvalidId>>(s: &str) -> T {
    T::try_from(s).expect("a valid fixed id")
}

fn node(node_id: &str, n: u8) -> Command {
    Command::RegisterNode(NodeRecord {
        node_id: id(node_id),
        address: format!("10.0.0.{n}:7001"),
        topology: TopologyRecord {
            zone: format!("zone-{n}"),
            rack: format!("rack-{n}"),
            host: format!("host-{n}"),
        },
        version: "0.1.0".into(),
        draining: false,
        maintenance_until_ms: 0,
    })
}

fn upload(upload_id: &str, path: &str, chunk: &str, expires_at_ms: u64) -> Command {
    Command::BeginUpload(Upload {
        upload_id: id(upload_id),
        path: path.into(),
        size: 10,
        chunk_size: 1 << 20,
        replication: 2,
        write_quorum: 1,
        overwrite: false,
        chunks: vec![PlannedChunkRecord {
            index: 0,
            chunk_id: id(chunk),
            offset: 0,
            size: 10,
            nodes: vec![id(N1), id(N2)],
        }],
        expires_at_ms,
    })
}

fn mkdir(path: &str, parents: bool, now_ms: u64) -> Command {
    Command::Mkdir {
        path: path.into(),
        parents,
        now_ms,
    }
}

/// Before the snapshot ([`SNAPSHOT_INDEX`] commands, one row each).
fn phase_one() -> Vec<Command> {
    vec![
        Command::InitCluster {
            cluster_id: id(CLUSTER),
        },
        mkdir("/data", true, T),
        node(N1, 1),
        node(N2, 2),
        upload(U1, "/data/a.bin", PLANNED, FAR),
        Command::ReplanChunk {
            upload_id: id(U1),
            index: 0,
            chunk_id: id(REPLANNED),
            nodes: vec![id(N2), id(N1)],
        },
        Command::ConfirmUpload {
            upload_id: id(U1),
            chunks: vec![ChunkRecord {
                id: id(REPLANNED),
                checksum: 0xdead_beef,
                size: 10,
                algorithm: 1,
                replicas: vec![id(N1), id(N2)],
            }],
            now_ms: T + 1,
        },
        Command::SetDraining {
            node_id: id(N2),
            draining: true,
        },
        upload(U2, "/data/open.bin", OPEN_CHUNK, FAR),
    ]
}

/// After the snapshot, one row each.
fn phase_two() -> Vec<Command> {
    vec![
        mkdir("/tmp/x", true, T + 2),
        Command::Rename {
            source: "/data/a.bin".into(),
            destination: "/data/b.bin".into(),
            now_ms: T + 3,
        },
        upload(U3, "/tmp/x/c.bin", EXPIRED_CHUNK, T + 5),
        Command::ExpireUploads { now_ms: T + 6 },
        upload(U4, "/tmp/x/d.bin", ABORTED_CHUNK, FAR),
        Command::AbortUpload { upload_id: id(U4) },
        Command::SetMaintenance {
            node_id: id(N1),
            until_ms: T + 3_600_000,
        },
        Command::Delete {
            path: "/tmp".into(),
            recursive: true,
        },
        once("req/r1", mkdir("/data/once", false, T + 4)),
        // The retry: changes nothing, answers as the first did.
        once("req/r1", mkdir("/data/once", false, T + 4)),
    ]
}

fn once(request_id: &str, command: Command) -> Command {
    Command::Once {
        request_id: request_id.into(),
        now_ms: T + 4,
        command: Box::new(command),
    }
}

/// Then one row holding two commands (a group commit).
fn batch_row() -> Vec<Command> {
    vec![
        mkdir("/logs", false, T + 7),
        mkdir("/logs/old", false, T + 7),
    ]
}

/// The bare-command row appended by hand to the golden database.
fn legacy_row() -> Command {
    mkdir("/legacy", false, T + 8)
}

/// Every [`Command`] kind by name. Exhaustive on purpose: a new kind fails
/// to compile here until the scenario logs one (and the golden files are
/// regenerated).
fn kind(cmd: &Command) -> &'static str {
    match cmd {
        Command::InitCluster { .. } => "InitCluster",
        Command::Mkdir { .. } => "Mkdir",
        Command::BeginUpload(_) => "BeginUpload",
        Command::ReplanChunk { .. } => "ReplanChunk",
        Command::ConfirmUpload { .. } => "ConfirmUpload",
        Command::AbortUpload { .. } => "AbortUpload",
        Command::ExpireUploads { .. } => "ExpireUploads",
        Command::Delete { .. } => "Delete",
        Command::Rename { .. } => "Rename",
        Command::RegisterNode(_) => "RegisterNode",
        Command::SetDraining { .. } => "SetDraining",
        Command::SetMaintenance { .. } => "SetMaintenance",
        Command::Once { .. } => "Once",
    }
}
const KINDS: usize = 13;

struct NsOnly;
impl Applied<Namespace> for NsOnly {
    fn applied(&self, _: &mut Namespace, _: &Command, _: &Outcome) {}
    fn namespace<'a>(&self, s: &'a mut Namespace) -> &'a mut Namespace {
        s
    }
}

/// Proposes `cmds` one at a time through a real [`Committer`] (so each is
/// its own group commit: one row) on the store of `dir`.
async fn commit_each(dir: &Path, cmds: Vec<Command>) {
    let (store, ns) = Store::open(dir).unwrap();
    let (committer, handle) = Committer::start(
        store,
        Arc::new(Mutex::new(ns)),
        NsOnly,
        dfs_coordinator::Metrics::new(),
    );
    for cmd in cmds {
        let k = kind(&cmd);
        committer
            .propose(cmd)
            .await
            .unwrap_or_else(|e| panic!("scenario command {k} rejected: {e}"));
    }
    drop(committer);
    handle.await.unwrap();
}

/// Writes the scenario's metadata into `dir`: phase one, a snapshot, phase
/// two, then the two-command row. Returns the rows of phase one as they
/// were before the snapshot removed them.
async fn write_scenario(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let all: Vec<Command> = [phase_one(), phase_two(), batch_row()].concat();
    let mut kinds: Vec<_> = all.iter().map(kind).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), KINDS, "the scenario logs every command kind");

    commit_each(dir, phase_one()).await;
    let (before_snapshot, _) = raw_contents(dir);
    let (mut store, ns) = Store::open(dir).unwrap();
    assert_eq!(store.last_index(), SNAPSHOT_INDEX);
    store.write_snapshot(ns.snapshot()).unwrap();
    drop(store);
    commit_each(dir, phase_two()).await;
    // Several commands in one row, as the committer writes a group commit
    // (encoded as it encodes each: serde_json of the command). Written
    // directly because which proposals share a commit depends on timing.
    let (mut store, _) = Store::open(dir).unwrap();
    let entries: Vec<Vec<u8>> = batch_row()
        .iter()
        .map(|c| serde_json::to_vec(c).unwrap())
        .collect();
    store.append(&entries, true).unwrap();
    before_snapshot
}

/// Log rows as stored: (index, row bytes).
type RawRows = Vec<(u64, Vec<u8>)>;

/// The raw rows and snapshot of the database in `dir`.
fn raw_contents(dir: &Path) -> (RawRows, Option<Vec<u8>>) {
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let log = txn
        .open_table(LOG)
        .expect("metadata layout changed: no `log` table of u64 → bytes");
    let rows = log
        .range::<u64>(..)
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value(), v.value().to_vec())
        })
        .collect();
    let meta = txn
        .open_table(META)
        .expect("metadata layout changed: no `meta` table of str → bytes");
    let snapshot = meta.get(SNAPSHOT_KEY).unwrap().map(|v| v.value().to_vec());
    (rows, snapshot)
}

fn rows_text(rows: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in rows {
        out.extend_from_slice(format!("{k} ").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

fn stat(ns: &Namespace, path: &str) -> Option<dfs_coordinator::namespace::EntryInfo> {
    ns.stat(&NsPath::parse(path).unwrap()).ok()
}

/// The namespace as of the snapshot (after phase one).
fn check_phase_one(ns: &Namespace, what: &str) {
    assert_eq!(
        ns.cluster_id().map(|c| c.as_str()),
        Some(CLUSTER),
        "{what}: cluster id"
    );
    assert_eq!(
        (ns.dir_count(), ns.file_count(), ns.chunk_count()),
        (2, 1, 1),
        "{what}: dirs (/, /data), files, chunks"
    );
    let a = stat(ns, "/data/a.bin").unwrap_or_else(|| panic!("{what}: /data/a.bin missing"));
    assert_eq!(
        (
            a.size,
            a.replication,
            a.chunk_size,
            a.chunk_count,
            a.created_ms,
            a.modified_ms,
            a.version
        ),
        (10, 2, 1 << 20, 1, T + 1, T + 1, 1),
        "{what}: /data/a.bin"
    );
    assert_eq!(
        ns.uploads().keys().collect::<Vec<_>>(),
        vec![U2],
        "{what}: open uploads"
    );
    assert!(ns.nodes()[N2].draining, "{what}: {N2} draining");
}

/// The whole scenario's namespace (the golden database adds `/legacy`).
fn check_final(ns: &Namespace, what: &str, legacy: bool) {
    assert_eq!(
        ns.cluster_id().map(|c| c.as_str()),
        Some(CLUSTER),
        "{what}: cluster id"
    );
    let dirs = ["/data", "/data/once", "/logs", "/logs/old", "/legacy"];
    for d in &dirs[..if legacy { 5 } else { 4 }] {
        let e = stat(ns, d).unwrap_or_else(|| panic!("{what}: directory {d} missing"));
        assert!(e.is_dir, "{what}: {d} is a directory");
    }
    assert!(stat(ns, "/tmp").is_none(), "{what}: /tmp was deleted");
    assert!(
        stat(ns, "/data/a.bin").is_none(),
        "{what}: /data/a.bin was renamed"
    );
    assert_eq!(
        (ns.dir_count(), ns.file_count(), ns.chunk_count()),
        (if legacy { 6 } else { 5 }, 1, 1),
        "{what}: dirs, files, chunks"
    );
    let (b, file) = ns
        .file(&NsPath::parse("/data/b.bin").unwrap())
        .unwrap_or_else(|e| panic!("{what}: /data/b.bin: {e}"));
    assert_eq!(
        (
            b.size,
            b.replication,
            b.chunk_size,
            b.created_ms,
            b.modified_ms,
            b.version
        ),
        (10, 2, 1 << 20, T + 1, T + 1, 1),
        "{what}: /data/b.bin"
    );
    assert_eq!(
        file.chunks,
        vec![ChunkRecord {
            id: id(REPLANNED),
            checksum: 0xdead_beef,
            size: 10,
            algorithm: 1,
            replicas: vec![id(N1), id(N2)],
        }],
        "{what}: /data/b.bin chunks"
    );
    assert_eq!(
        ns.chunk_owner(&id(REPLANNED)),
        Some(ChunkOwner::File {
            size: 10,
            replication: 2,
            checksum: 0xdead_beef,
            algorithm: 1
        })
    );
    assert_eq!(ns.chunk_owner(&id(OPEN_CHUNK)), Some(ChunkOwner::Upload));
    for gone in [PLANNED, EXPIRED_CHUNK, ABORTED_CHUNK] {
        assert_eq!(ns.chunk_owner(&id(gone)), None, "{what}: chunk {gone}");
    }
    assert_eq!(
        ns.uploads().keys().collect::<Vec<_>>(),
        vec![U2],
        "{what}: open uploads"
    );
    let nodes = ns.nodes();
    assert_eq!(
        nodes.keys().collect::<Vec<_>>(),
        vec![N1, N2],
        "{what}: nodes"
    );
    assert_eq!(
        (nodes[N1].draining, nodes[N1].maintenance_until_ms),
        (false, T + 3_600_000),
        "{what}: {N1}"
    );
    assert_eq!(
        (
            nodes[N2].draining,
            nodes[N2].maintenance_until_ms,
            nodes[N2].address.as_str()
        ),
        (true, 0, "10.0.0.2:7001"),
        "{what}: {N2}"
    );
}

/// Pins the encoding of every kind of log row (and of a two-command row)
/// and of the snapshot, as the current code writes them; then decodes the
/// committed ones with the current code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rows_and_snapshot_encoding_v1() {
    let dir = tempfile::tempdir().unwrap();
    let before_snapshot = write_scenario(dir.path()).await;
    check_final(&Store::open(dir.path()).unwrap().1, "scenario", false);
    let (after_snapshot, snapshot) = raw_contents(dir.path());
    let keys = |rows: &[(u64, Vec<u8>)]| rows.iter().map(|(k, _)| *k).collect::<Vec<_>>();
    let layout = "metadata log layout changed: one row per group commit, keyed by the index of \
                  its first command (from 1), rows covered by the snapshot removed";
    assert_eq!(
        keys(&before_snapshot),
        (1..=SNAPSHOT_INDEX).collect::<Vec<_>>(),
        "{layout}"
    );
    assert_eq!(
        keys(&after_snapshot),
        // Phase two's rows, then the two-command row.
        (SNAPSHOT_INDEX + 1..=SNAPSHOT_INDEX + phase_two().len() as u64 + 1).collect::<Vec<_>>(),
        "{layout}"
    );
    let rows = [before_snapshot, after_snapshot].concat();
    check_golden("metadata log row", "log_rows_v1.txt", &rows_text(&rows));
    let snapshot = snapshot.expect("metadata layout changed: no snapshot under meta/snapshot");
    check_golden("metadata snapshot", "snapshot_v1.json", &snapshot);

    // The committed rows, decoded by the current types (as replay does:
    // a JSON array of commands).
    let golden = String::from_utf8(read_golden("metadata log row", "log_rows_v1.txt")).unwrap();
    let mut want = [phase_one(), phase_two(), batch_row()].concat().into_iter();
    for line in golden.lines() {
        let (key, row) = line.split_once(' ').expect("`<index> <row>` lines");
        let cmds: Vec<Command> = serde_json::from_str(row).unwrap_or_else(|e| {
            panic!("the current code cannot decode golden log row {key} ({e}): {row}")
        });
        for cmd in cmds {
            assert_eq!(
                Some(cmd),
                want.next(),
                "golden log row {key} decodes to another command"
            );
        }
    }
    assert_eq!(
        want.next(),
        None,
        "golden log rows hold fewer commands than the scenario"
    );

    // The committed snapshot, installed in a fresh store and read back.
    let fresh = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(fresh.path()).unwrap();
    store
        .install_snapshot(
            SNAPSHOT_INDEX,
            &read_golden("metadata snapshot", "snapshot_v1.json"),
        )
        .unwrap();
    drop(store);
    let (store, ns) = Store::open(fresh.path())
        .unwrap_or_else(|e| panic!("the current code cannot read the golden snapshot: {e}"));
    assert_eq!(
        store.last_index(),
        SNAPSHOT_INDEX,
        "golden snapshot: last index"
    );
    check_phase_one(&ns, "golden snapshot");
}

/// A metadata directory written by an earlier version (the golden one)
/// opens with the current code and shows the expected namespace: through
/// [`Store::open`], and through a coordinator served on a copy of it. With
/// `DFS_UPDATE_GOLDEN=1` the golden database is made anew from the scenario
/// first. Its bytes are not compared: they are redb's page layout, not a
/// format of ours (a redb upgrade may lay pages out differently as long as
/// it still opens old files, which is what this checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_metadata_dir_opens_with_current_code() {
    let golden_dir = golden_path("metadata_v1");
    if updating() {
        let dir = tempfile::tempdir().unwrap();
        write_scenario(dir.path()).await;
        // A row of the older one-command-per-row form (no array), which
        // replay still reads.
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            let key = store.last_index() + 1;
            drop(store);
            let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(LOG)
                .unwrap()
                .insert(key, serde_json::to_vec(&legacy_row()).unwrap().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        fs::create_dir_all(&golden_dir).unwrap();
        fs::copy(dir.path().join(DB_FILE), golden_dir.join(DB_FILE)).unwrap();
        eprintln!(
            "{UPDATE_ENV}=1: rewrote {}",
            golden_dir.join(DB_FILE).display()
        );
    }
    let copy = tempfile::tempdir().unwrap();
    fs::copy(golden_dir.join(DB_FILE), copy.path().join(DB_FILE)).unwrap_or_else(|e| {
        panic!(
            "the golden metadata database {} cannot be read ({e}); create it with {REGENERATE}",
            golden_dir.join(DB_FILE).display()
        )
    });
    let (store, ns) = Store::open(copy.path()).unwrap_or_else(|e| {
        panic!(
            "metadata format changed: the current code cannot open \
             tests/golden/metadata_v1/{DB_FILE} ({e}). Coordinators have such databases on \
             disk: keep reading them (or migrate them) before regenerating with {REGENERATE}"
        )
    });
    assert_eq!(
        store.last_index(),
        SNAPSHOT_INDEX + (phase_two().len() + batch_row().len()) as u64 + 1,
        "golden metadata: last index (the snapshot's, then 9 array rows and the legacy row)"
    );
    drop(store);
    check_final(
        &ns,
        "metadata format changed? tests/golden/metadata_v1 as the current code reads it",
        true,
    );

    // Served: the coordinator starts on it (keeping its cluster id) and
    // answers from it.
    let server =
        dfs_testkit::coordinator::Server::start(dfs_testkit::coordinator::test_config(copy.path()))
            .await;
    let mut c = server.client().await;
    let status = c
        .get_cluster_status(dfs_proto::GetClusterStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.cluster_id, CLUSTER,
        "served golden metadata: cluster id"
    );
    let list = c
        .list_directory(dfs_proto::ListDirectoryRequest {
            path: "/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["data", "legacy", "logs"],
        "served golden metadata: /"
    );
    let b = c
        .stat(dfs_proto::StatRequest {
            path: "/data/b.bin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            b.size,
            b.replication,
            b.chunk_count,
            b.created_unix_ms,
            b.version
        ),
        (10, 2, 1, T + 1, 1),
        "served golden metadata: /data/b.bin"
    );
    server.stop().await;
}
