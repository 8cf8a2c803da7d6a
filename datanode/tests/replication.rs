//! Pipelined replication: the primary forwards frames to two more
//! datanodes while it is still receiving, and copes with a replica dying.

use dfs_proto::*;
use dfs_testkit::datanode::*;
use dfs_testkit::fake::{Behaviour, FakeDatanode};
use tokio::sync::mpsc;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_forwarded_to_two_replicas_while_still_receiving() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let primary = TestNode::start(dirs[0].path(), |_| {}).await;
    let r1 = TestNode::start(dirs[1].path(), |_| {}).await;
    let r2 = TestNode::start(dirs[2].path(), |_| {}).await;
    let mut c = primary.client().await;
    let id = chunk_id();
    let bytes = data(4 * 1024 * 1024 + 99, 11);
    let p = prepare(
        &mut c,
        meta(&id, &bytes, false),
        vec![r1.target(), r2.target()],
        0,
    )
    .await
    .unwrap();
    let all = frames(&p.session_id, &bytes);
    let n = all.len();
    let (tx, rx) = mpsc::channel(4);
    let mut uc = c.clone();
    let upload = tokio::spawn(async move { finish_upload(&mut uc, rx).await });
    let mut it = all.into_iter();
    for f in it.by_ref().take(n / 2) {
        tx.send(f).await.unwrap();
    }
    // Both replicas receive frames before the client has sent the rest:
    // replication is pipelined, not done after the whole chunk arrived.
    eventually("replicas receive the first frames", || {
        r1.counter("dfs_datanode_frames_in_total", "replicate") > 0
            && r2.counter("dfs_datanode_frames_in_total", "replicate") > 0
    })
    .await;
    for f in it {
        tx.send(f).await.unwrap();
    }
    let r = upload.await.unwrap().unwrap();
    assert_eq!(
        r.replicas,
        vec![
            primary.node_id.clone(),
            r1.node_id.clone(),
            r2.node_id.clone()
        ]
    );
    assert!(r.failed.is_empty());
    assert_eq!(r.chunk.unwrap().checksum, frame::checksum(&bytes));
    for node in [&primary, &r1, &r2] {
        let got = download(&mut node.client().await, &id, 0, 0).await.unwrap();
        assert!(got == bytes, "copy on {}", node.node_id);
    }
    for n in [primary, r1, r2] {
        n.stop().await;
    }
}

/// A primary (configured by `tweak`), a real replica, and a replica that
/// accepts streams and never answers them (node id "e" × 32).
async fn with_a_stalled_replica(
    tweak: impl FnOnce(&mut dfs_datanode::Config),
) -> (NodeAddress, TestNode, TestNode, Vec<tempfile::TempDir>) {
    let stalled = FakeDatanode::start(Behaviour::Stall)
        .await
        .target(&"e".repeat(32));
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let primary = TestNode::start(dirs[0].path(), tweak).await;
    let r1 = TestNode::start(dirs[1].path(), |_| {}).await;
    (stalled, primary, r1, dirs)
}

/// A primary that waits for every replica before it answers (no pending
/// budget): its answer then names the fate of each.
fn wait_for_all(c: &mut dfs_datanode::Config) {
    c.pending_replica_budget = dfs_common::size::ByteSize(0);
}

/// Starts a datanode on its own runtime so the test can kill it abruptly
/// (every socket closes, nothing drains), like a crashed process.
fn start_killable(dir: std::path::PathBuf) -> (tokio::runtime::Runtime, NodeAddress) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let node = rt.block_on(TestNode::start(&dir, |_| {}));
    let target = node.target();
    std::mem::forget(node);
    (rt, target)
}

async fn replica_dies_mid_stream(
    write_quorum: u32,
) -> (
    Result<ChunkReplicas, tonic::Status>,
    Vec<tempfile::TempDir>,
    String,
    String,
    String,
) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Every replica waited for (no pending budget), so the answer says what
    // became of each rather than leaving one pending.
    let primary = TestNode::start(dirs[0].path(), wait_for_all).await;
    let r1 = TestNode::start(dirs[1].path(), |_| {}).await;
    let dying_dir = dirs[2].path().to_path_buf();
    let (rt, dying) = tokio::task::spawn_blocking(move || start_killable(dying_dir))
        .await
        .unwrap();
    let mut c = primary.client().await;
    let id = chunk_id();
    let bytes = data(3 * 1024 * 1024, 5);
    let p = prepare(
        &mut c,
        meta(&id, &bytes, true),
        vec![r1.target(), dying.clone()],
        write_quorum,
    )
    .await
    .unwrap();
    let all = frames(&p.session_id, &bytes);
    let n = all.len();
    let (tx, rx) = mpsc::channel(4);
    let mut uc = c.clone();
    let upload = tokio::spawn(async move { finish_upload(&mut uc, rx).await });
    let mut it = all.into_iter();
    for f in it.by_ref().take(n / 2) {
        tx.send(f).await.unwrap();
    }
    eventually("first replica receives frames", || {
        r1.counter("dfs_datanode_frames_in_total", "replicate") > 0
    })
    .await;
    // The third node dies mid-stream.
    tokio::task::spawn_blocking(move || rt.shutdown_background())
        .await
        .unwrap();
    for f in it {
        tx.send(f).await.unwrap();
    }
    let result = upload.await.unwrap();
    let (pid, rid) = (primary.node_id.clone(), r1.node_id.clone());
    primary.stop().await;
    r1.stop().await;
    (result, dirs, id, pid, rid + "/" + &dying.node_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dying_mid_stream_is_dropped_while_the_quorum_holds() {
    let (result, dirs, _id, primary, ids) = replica_dies_mid_stream(2).await;
    let (r1, dead) = ids.split_once('/').unwrap();
    let r = result.unwrap();
    assert_eq!(r.replicas, vec![primary, r1.to_string()]);
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].node_id, dead);
    assert_eq!(chunk_files(dirs[0].path()).len(), 1);
    assert_eq!(chunk_files(dirs[1].path()).len(), 1);
    assert!(chunk_files(dirs[2].path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_quorum_the_upload_fails_and_nothing_stays() {
    let (result, dirs, _id, _, _) = replica_dies_mid_stream(0).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Aborted),
        "{err:?}"
    );
    assert!(err.message().contains("quorum"), "{}", err.message());
    for d in &dirs[..2] {
        assert!(
            chunk_files(d.path()).is_empty(),
            "{:?}",
            chunk_files(d.path())
        );
        assert!(files_under(&d.path().join("tmp")).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replica_is_reported_as_failed() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let primary = TestNode::start(dirs[0].path(), wait_for_all).await;
    let r1 = TestNode::start(dirs[1].path(), |_| {}).await;
    let mut c = primary.client().await;
    let nowhere = NodeAddress {
        node_id: "f".repeat(32),
        address: "http://127.0.0.1:9".into(),
    };
    let id = chunk_id();
    let bytes = data(600_000, 2);
    let r = upload(&mut c, &id, &bytes, vec![nowhere, r1.target()], 2)
        .await
        .unwrap();
    assert_eq!(
        r.replicas,
        vec![primary.node_id.clone(), r1.node_id.clone()]
    );
    assert_eq!(r.failed[0].node_id, "f".repeat(32));
    primary.stop().await;
    r1.stop().await;
}

/// A replica that stops reading while the write quorum keeps up without it
/// is dropped once its queue is full: the upload goes at the quorum's pace,
/// not the stall timeout's (a minute here; the test would hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_the_quorum_does_not_need_is_dropped_at_the_quorums_pace() {
    let (stalled, primary, r1, _dirs) = with_a_stalled_replica(|c| {
        c.replica_stall_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let mut c = primary.client().await;
    let id = chunk_id();
    let bytes = data(16 * 1024 * 1024, 6);
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        upload(&mut c, &id, &bytes, vec![stalled, r1.target()], 2),
    )
    .await
    .expect("the upload waited for the stalled replica")
    .unwrap();
    assert_eq!(
        r.replicas,
        vec![primary.node_id.clone(), r1.node_id.clone()]
    );
    assert!(r.pending.is_empty(), "{:?}", r.pending);
    assert_eq!(r.failed.len(), 1);
    assert!(
        r.failed[0].reason.contains("behind"),
        "{}",
        r.failed[0].reason
    );
    assert_eq!(
        primary.counter("dfs_datanode_replicas_dropped_total", "behind"),
        1
    );
    assert_eq!(
        primary.counter("dfs_datanode_replicas_dropped_total", "stall"),
        0
    );
    primary.stop().await;
    r1.stop().await;
}

/// A stalled replica the quorum needs is waited for up to the stall timeout,
/// then dropped; the upload fails and nothing it wrote stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_the_quorum_needs_is_dropped_after_the_stall_timeout() {
    let (stalled, primary, r1, _dirs) = with_a_stalled_replica(|c| {
        c.replica_stall_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let mut c = primary.client().await;
    let id = chunk_id();
    let bytes = data(8 * 1024 * 1024, 6);
    let err = upload(&mut c, &id, &bytes, vec![stalled, r1.target()], 3)
        .await
        .unwrap_err();
    assert!(
        err.message().contains("quorum") && err.message().contains("stalled"),
        "{err:?}"
    );
    // The client re-plans without the replica that failed: it is named.
    assert_eq!(
        err.metadata()
            .get(FAILED_REPLICAS_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("e".repeat(32).as_str()),
        "{err:?}"
    );
    assert_eq!(
        primary.counter("dfs_datanode_replicas_dropped_total", "stall"),
        1
    );
    for node in [&primary, &r1] {
        assert_eq!(
            download(&mut node.client().await, &id, 0, 0)
                .await
                .unwrap_err()
                .code(),
            Code::NotFound,
            "a copy stayed on {}",
            node.node_id
        );
    }
    primary.stop().await;
    r1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunks_are_group_committed_to_volumes_on_every_replica() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(TestNode::start(d.path(), |_| {}).await);
    }
    let targets = vec![nodes[1].target(), nodes[2].target()];
    // 16 uploads at once, as `dfs bench` does: each lands as one record per
    // replica, and concurrent ones share an fdatasync.
    let mut uploads = Vec::new();
    for i in 0..16u64 {
        let mut c = nodes[0].client().await;
        let targets = targets.clone();
        uploads.push(tokio::spawn(async move {
            let id = chunk_id();
            let bytes = data(4096 + i as usize, 100 + i);
            let r = upload(&mut c, &id, &bytes, targets, 0).await.unwrap();
            assert_eq!(r.replicas.len(), 3);
            assert_eq!(r.chunk.unwrap().checksum, frame::checksum(&bytes));
            (id, bytes)
        }));
    }
    let mut chunks = Vec::new();
    for u in uploads {
        chunks.push(u.await.unwrap());
    }
    for (node, dir) in nodes.iter().zip(&dirs) {
        assert!(
            chunk_files(dir.path()).is_empty(),
            "small chunks get no file of their own"
        );
        assert!(!files_under(&dir.path().join("volumes")).is_empty());
        let commits = node.histogram_count("dfs_datanode_volume_commit_chunks", "");
        assert!(
            (1..=16).contains(&commits),
            "{commits} group commits for 16 chunks"
        );
        assert_eq!(node.counter("dfs_datanode_chunks_stored", ""), 16);
    }
    // A restarted replica still serves every chunk.
    let last = nodes.pop().unwrap();
    last.stop().await;
    let again = TestNode::start(dirs[2].path(), |_| {}).await;
    let mut c = again.client().await;
    for (id, bytes) in &chunks {
        assert!(download(&mut c, id, 0, 0).await.unwrap() == *bytes);
    }
    assert_eq!(again.counter("dfs_datanode_chunks_stored", ""), 16);
    again.stop().await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunks_share_one_long_lived_stream_per_peer() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(TestNode::start(d.path(), |_| {}).await);
    }
    let targets = vec![nodes[1].target(), nodes[2].target()];
    let mut ids = Vec::new();
    for round in 0..3u64 {
        let mut uploads = Vec::new();
        for i in 0..8u64 {
            let mut c = nodes[0].client().await;
            let targets = targets.clone();
            uploads.push(tokio::spawn(async move {
                let id = chunk_id();
                let bytes = data(1000 + i as usize, round * 100 + i);
                let r = upload(&mut c, &id, &bytes, targets, 0).await.unwrap();
                assert_eq!(r.replicas.len(), 3, "{r:?}");
                (id, bytes)
            }));
        }
        for u in uploads {
            ids.push(u.await.unwrap());
        }
    }
    for n in &nodes[1..] {
        // Every chunk arrived, on one stream that stays open for the next.
        assert_eq!(
            n.counter("dfs_datanode_active_sessions", "small_link"),
            1,
            "one open small-chunk stream into {}",
            n.node_id
        );
        assert_eq!(
            n.histogram_count("dfs_datanode_replication_duration_seconds", "receive"),
            24
        );
        let mut c = n.client().await;
        for (id, bytes) in &ids {
            assert!(download(&mut c, id, 0, 0).await.unwrap() == *bytes);
        }
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_small_chunks_get_their_own_error_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |_| {}).await;
    let mut c = node.client().await;
    let good = data(4096, 1);
    let header = |id: &str, bytes: &[u8]| ReplicateChunkHeader {
        session_id: "s".into(),
        chunk: Some(meta(id, bytes, true)),
        source_node_id: "a".repeat(32),
        token: Default::default(),
    };
    let whole = |bytes: &[u8]| ChunkData::frame(bytes::Bytes::copy_from_slice(bytes), 0, true);
    let ok_id = chunk_id();
    let bad_crc_id = chunk_id();
    let mut corrupted = whole(&good);
    corrupted.frame_checksum ^= 1;
    let mut partial = whole(&good[..100]);
    partial.is_final = false;
    let messages = vec![
        SmallChunk {
            seq: 1,
            header: None,
            data: Some(whole(&good)),
        },
        SmallChunk {
            seq: 2,
            header: Some(header("../x", &good)),
            data: Some(whole(&good)),
        },
        SmallChunk {
            seq: 3,
            header: Some(header(&bad_crc_id, &good)),
            data: Some(corrupted),
        },
        SmallChunk {
            seq: 4,
            header: Some(header(&chunk_id(), &good)),
            data: Some(partial),
        },
        SmallChunk {
            seq: 5,
            header: Some(header(&chunk_id(), &good)),
            data: None,
        },
        SmallChunk {
            seq: 6,
            header: Some(header(&ok_id, &good)),
            data: Some(whole(&good)),
        },
    ];
    let mut answers = c
        .replicate_small_chunks(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut codes = std::collections::BTreeMap::new();
    while let Some(a) = answers.message().await.unwrap() {
        codes.insert(a.seq, (Code::from_i32(a.code), a.replicas.is_some()));
    }
    assert_eq!(codes[&1], (Code::InvalidArgument, false));
    assert_eq!(codes[&2], (Code::InvalidArgument, false));
    assert_eq!(codes[&3], (Code::DataLoss, false));
    assert_eq!(codes[&4], (Code::InvalidArgument, false));
    assert_eq!(codes[&5], (Code::InvalidArgument, false));
    assert_eq!(codes[&6], (Code::Ok, true));
    assert_eq!(download(&mut c, &ok_id, 0, 0).await.unwrap(), good);
    assert_eq!(
        download(&mut c, &bad_crc_id, 0, 0)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(node.counter("dfs_datanode_chunks_stored", ""), 1);
    assert_eq!(
        node.counter("dfs_datanode_checksum_failures_total", "frame"),
        1
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunks_fall_back_to_replicate_chunk_for_an_older_peer() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let primary = TestNode::start(dirs[0].path(), |_| {}).await;
    let real = TestNode::start(dirs[1].path(), |_| {}).await;
    let old = FakeDatanode::start(Behaviour::OldRelease {
        real: real.address.clone(),
    })
    .await;
    // The old release stands in for the real node (its id, the fake's address).
    let target = old.target(&real.node_id);
    let mut c = primary.client().await;
    for i in 0..3u64 {
        let id = chunk_id();
        let bytes = data(4096, i);
        let r = upload(&mut c, &id, &bytes, vec![target.clone()], 2)
            .await
            .unwrap();
        assert_eq!(
            r.replicas,
            vec![primary.node_id.clone(), real.node_id.clone()]
        );
        let mut rc = real.client().await;
        assert_eq!(download(&mut rc, &id, 0, 0).await.unwrap(), bytes);
    }
    // Asked once; remembered as unsupported after that.
    assert_eq!(old.small_calls(), 1);
    primary.stop().await;
    real.stop().await;
}

/// A replica still writing when the write quorum is durable does not hold
/// the answer: it is listed as pending and goes on in the background, and
/// one that never answers is dropped there after its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_answers_a_small_chunk_is_pending_then_dropped() {
    let (stalled, primary, r1, _dirs) = with_a_stalled_replica(|c| {
        c.replica_stall_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    let mut c = primary.client().await;
    let bytes = data(4096, 6);
    let r = upload(
        &mut c,
        &chunk_id(),
        &bytes,
        vec![stalled.clone(), r1.target()],
        2,
    )
    .await
    .unwrap();
    assert_eq!(
        r.replicas,
        vec![primary.node_id.clone(), r1.node_id.clone()]
    );
    assert_eq!(r.pending, vec![stalled.node_id.clone()]);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    // Answered before the replica's wait (3 × 200 ms) ran out: it is
    // pending, not failed.
    assert_eq!(r.receipts.len(), 2);
    eventually("the pending replica is dropped in the background", || {
        primary.counter("dfs_datanode_replicas_dropped_total", "stall") == 1
            && primary.counter("dfs_datanode_pending_replicas_finished_total", "failed") == 1
            && primary.counter("dfs_datanode_pending_replicas", "") == 0
    })
    .await;
    // Below the quorum nothing is kept, here or on the replica that stored it.
    let id = chunk_id();
    let err = upload(&mut c, &id, &bytes, vec![stalled, r1.target()], 3)
        .await
        .unwrap_err();
    assert!(err.message().contains("quorum"), "{err:?}");
    let mut rc = r1.client().await;
    // The rollback runs before the upload answers.
    assert_eq!(
        download(&mut rc, &id, 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        download(&mut c, &id, 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    primary.stop().await;
    r1.stop().await;
}

/// With `--pending-replica-budget 0` the primary waits for every replica,
/// as before the quorum answered on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pending_budget_the_primary_waits_for_every_replica() {
    let (stalled, primary, r1, _dirs) = with_a_stalled_replica(|c| {
        c.replica_stall_timeout = std::time::Duration::from_millis(200);
        c.pending_replica_budget = dfs_common::size::ByteSize(0);
    })
    .await;
    let mut c = primary.client().await;
    let bytes = data(4096, 6);
    let r = upload(&mut c, &chunk_id(), &bytes, vec![stalled, r1.target()], 2)
        .await
        .unwrap();
    assert_eq!(
        r.replicas,
        vec![primary.node_id.clone(), r1.node_id.clone()]
    );
    assert!(r.pending.is_empty(), "{:?}", r.pending);
    assert!(
        r.failed.len() == 1 && r.failed[0].reason.contains("no durable answer"),
        "{:?}",
        r.failed
    );
    primary.stop().await;
    r1.stop().await;
}

/// Past the pending budget a replica still writing at the quorum's answer
/// is dropped from the upload (the coordinator repairs the chunk) instead
/// of being kept in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_pending_budget_a_replica_still_writing_is_dropped() {
    let (stalled, primary, r1, _dirs) = with_a_stalled_replica(|c| {
        c.replica_stall_timeout = std::time::Duration::from_secs(60);
        c.pending_replica_budget = dfs_common::size::ByteSize(1000);
    })
    .await;
    let mut c = primary.client().await;
    let bytes = data(4096, 6);
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        upload(&mut c, &chunk_id(), &bytes, vec![stalled, r1.target()], 2),
    )
    .await
    .expect("the upload waited for the stalled replica")
    .unwrap();
    assert_eq!(
        r.replicas,
        vec![primary.node_id.clone(), r1.node_id.clone()]
    );
    assert!(r.pending.is_empty(), "{:?}", r.pending);
    assert!(
        r.failed.len() == 1 && r.failed[0].reason.contains("pending budget"),
        "{:?}",
        r.failed
    );
    assert_eq!(
        primary.counter("dfs_datanode_replicas_dropped_total", "over_budget"),
        1
    );
    assert_eq!(primary.counter("dfs_datanode_pending_replicas", ""), 0);
    primary.stop().await;
    r1.stop().await;
}
