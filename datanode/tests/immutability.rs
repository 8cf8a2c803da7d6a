//! A stored chunk id never gets different bytes: every write path
//! (prepare + stream, the one-call upload, ReplicateChunk, the small-chunk
//! stream, a primary's fan-out) answers other bytes under a stored id with
//! ALREADY_EXISTS and changes nothing; the same bytes again stay idempotent.

use bytes::Bytes;
use dfs_proto::*;
use dfs_testkit::datanode::*;
use tonic::Code;

fn header(id: &str, bytes: &[u8]) -> ReplicateChunkHeader {
    ReplicateChunkHeader {
        session_id: "s".into(),
        chunk: Some(meta(id, bytes, true)),
        source_node_id: "a".repeat(32),
        token: Default::default(),
    }
}

/// A ReplicateChunk stream of `bytes` under `id` (header with the checksum
/// when `with_checksum`, then frames); its final answer.
async fn replicate(
    c: &mut dfs_proto::data_node_client::DataNodeClient<tonic::transport::Channel>,
    id: &str,
    bytes: &[u8],
    with_checksum: bool,
) -> Result<ChunkReplicas, tonic::Status> {
    let mut h = header(id, bytes);
    if !with_checksum {
        h.chunk.as_mut().unwrap().checksum = 0;
    }
    let mut msgs = vec![ReplicateChunkRequest {
        kind: Some(replicate_chunk_request::Kind::Header(h)),
    }];
    for mut f in frames("", bytes) {
        f.session_id.clear();
        msgs.push(ReplicateChunkRequest {
            kind: Some(replicate_chunk_request::Kind::Data(f)),
        });
    }
    let mut answers = c
        .replicate_chunk(futures::stream::iter(msgs))
        .await?
        .into_inner();
    while let Some(m) = answers.message().await? {
        if let Some(upload_chunk_response::Kind::Replicas(r)) = m.kind {
            return Ok(r);
        }
    }
    Err(tonic::Status::unknown("no answer"))
}

async fn small(
    c: &mut dfs_proto::data_node_client::DataNodeClient<tonic::transport::Channel>,
    id: &str,
    bytes: &[u8],
) -> Code {
    let msg = SmallChunk {
        seq: 1,
        header: Some(header(id, bytes)),
        data: Some(ChunkData::frame(Bytes::copy_from_slice(bytes), 0, true)),
    };
    let mut answers = c
        .replicate_small_chunks(futures::stream::iter(vec![msg]))
        .await
        .unwrap()
        .into_inner();
    let a = answers.message().await.unwrap().expect("an answer");
    Code::from_i32(a.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_chunk_id_never_gets_other_bytes_on_any_path() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |_| {}).await;
    let mut c = node.client().await;

    // Large chunks (a file each) and small ones (volume records).
    for (len, seed) in [(700_000usize, 1u64), (4096, 2)] {
        let id = chunk_id();
        let good = data(len, seed);
        let other = data(len, seed + 100);
        let stored = upload(&mut c, &id, &good, vec![], 0).await.unwrap();
        assert_eq!(stored.receipts.len(), 1, "the node's own receipt");
        assert_eq!(
            stored.receipts[0].checksum,
            crc32c::crc32c(&good),
            "the receipt names the bytes stored"
        );

        // Prepare with the other checksum: refused before a byte moves.
        let err = prepare(&mut c, meta(&id, &other, true), vec![], 0)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        // Checksum unknown at prepare: refused when the bytes are complete.
        let p = prepare(&mut c, meta(&id, &other, false), vec![], 0)
            .await
            .unwrap();
        let err = send_frames(&mut c, frames(&p.session_id, &other))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        // The one-call upload.
        let err = upload_one_call(&mut c, meta(&id, &other, true), &other, vec![], 0)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        // ReplicateChunk (fan-out and repair), with and without a checksum.
        for with_checksum in [true, false] {
            let err = replicate(&mut c, &id, &other, with_checksum)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        }
        // The small-chunk stream.
        if len <= 65536 {
            assert_eq!(small(&mut c, &id, &other).await, Code::AlreadyExists);
        }
        // Nothing changed.
        assert_eq!(download(&mut c, &id, 0, 0).await.unwrap(), good);

        // The same bytes again are idempotent on every path.
        upload(&mut c, &id, &good, vec![], 0).await.unwrap();
        upload_one_call(&mut c, meta(&id, &good, true), &good, vec![], 0)
            .await
            .unwrap();
        replicate(&mut c, &id, &good, true).await.unwrap();
        if len <= 65536 {
            assert_eq!(small(&mut c, &id, &good).await, Code::Ok);
        }
        assert_eq!(download(&mut c, &id, 0, 0).await.unwrap(), good);
    }
    assert!(node.counter("dfs_datanode_rewrites_refused_total", "") >= 10);
    assert!(
        files_under(&dir.path().join("tmp")).is_empty(),
        "no partial data"
    );
    node.stop().await;
}

/// Through a primary's fan-out: a replica that holds other bytes under the
/// id refuses them, and the primary's answer never counts it; the bytes it
/// holds stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_holding_other_bytes_is_not_counted_and_keeps_them() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // Every replica waited for (no pending budget): the refusal is in the
    // answer, not left to finish after it.
    let primary = TestNode::start(dirs[0].path(), |c| {
        c.pending_replica_budget = dfs_common::size::ByteSize(0);
    })
    .await;
    let replica = TestNode::start(dirs[1].path(), |_| {}).await;
    let id = chunk_id();
    let theirs = data(300_000, 7);
    let ours = data(300_000, 8);
    let mut rc = replica.client().await;
    upload(&mut rc, &id, &theirs, vec![], 0).await.unwrap();
    let mut pc = primary.client().await;
    // Quorum 1: the primary's copy alone succeeds; the replica is a failure.
    let answer = upload(&mut pc, &id, &ours, vec![replica.target()], 1)
        .await
        .unwrap();
    assert_eq!(answer.replicas, vec![primary.node_id.clone()]);
    assert_eq!(answer.failed.len(), 1);
    assert!(
        answer.failed[0].reason.contains("already stored"),
        "{:?}",
        answer.failed
    );
    assert_eq!(download(&mut rc, &id, 0, 0).await.unwrap(), theirs);
    // Quorum 2 cannot be met: refused, and the replica's bytes survive
    // the rollback.
    let id2 = chunk_id();
    upload(&mut rc, &id2, &theirs, vec![], 0).await.unwrap();
    let err = upload(&mut pc, &id2, &ours, vec![replica.target()], 2)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(download(&mut rc, &id2, 0, 0).await.unwrap(), theirs);
    primary.stop().await;
    replica.stop().await;
}

/// A failed upload rolls back only the copies it wrote: a replica that
/// already held the same bytes (a retry of a chunk that may be confirmed)
/// keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_never_deletes_a_copy_that_was_already_there() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let primary = TestNode::start(dirs[0].path(), |c| {
        c.replica_stall_timeout = std::time::Duration::from_secs(2)
    })
    .await;
    let replica = TestNode::start(dirs[1].path(), |_| {}).await;
    let id = chunk_id();
    let bytes = data(300_000, 11);
    let mut rc = replica.client().await;
    upload(&mut rc, &id, &bytes, vec![], 0).await.unwrap();
    // Three replicas needed, one of them unreachable: the upload fails and
    // is rolled back.
    let ghost = NodeAddress {
        node_id: "ghost".into(),
        address: "http://127.0.0.1:9".into(),
    };
    let mut pc = primary.client().await;
    let err = upload(&mut pc, &id, &bytes, vec![replica.target(), ghost], 3)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        download(&mut pc, &id, 0, 0).await.unwrap_err().code(),
        Code::NotFound,
        "the primary's own new copy is rolled back"
    );
    assert_eq!(
        download(&mut rc, &id, 0, 0).await.unwrap(),
        bytes,
        "the old copy stays"
    );
    primary.stop().await;
    replica.stop().await;
}
