//! What one caller can make a datanode hold is bounded: streams at once,
//! prepared sessions, and time. A reader that stops reading and a writer
//! that stops writing are cut off after the session timeout and release
//! their thread, their stream slot and their reserved space; meanwhile
//! other callers are served.

use std::time::Duration;

use dfs_proto::*;
use dfs_testkit::datanode::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_and_stalled_writers_are_cut_off_and_release_everything() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |c| {
        c.session_timeout = Duration::from_millis(800);
        c.max_streams = 6;
        c.max_sessions = 4;
    })
    .await;
    let mut c = node.client().await;
    let big = chunk_id();
    let bytes = data(16 << 20, 5);
    upload(&mut c, &big, &bytes, vec![], 0).await.unwrap();

    // Four readers that never read past the first frame, and two writers
    // that send one frame and stall: the node's six stream slots.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = c
            .download_chunk_stream(DownloadChunkStreamRequest {
                chunk_id: big.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().expect("a first frame");
        held.push(s);
    }
    let mut writers = Vec::new();
    for _ in 0..2 {
        let id = chunk_id();
        let payload = data(1 << 20, 9);
        let p = prepare(&mut c, meta(&id, &payload, true), vec![], 0)
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(frames(&p.session_id, &payload).remove(0))
            .await
            .unwrap();
        let mut c2 = c.clone();
        let answer = tokio::spawn(async move {
            let mut r = c2
                .upload_chunk_stream(ReceiverStream::new(rx))
                .await?
                .into_inner();
            while let Some(m) = r.message().await? {
                if let Some(upload_chunk_response::Kind::Replicas(_)) = m.kind {
                    return Ok(());
                }
            }
            Err(tonic::Status::unknown("no answer"))
        });
        writers.push((tx, answer));
    }
    eventually("six streams held", || {
        node.counter("dfs_datanode_active_sessions", "download") == 4
            && node.counter("dfs_datanode_active_sessions", "upload") == 2
    })
    .await;
    // A seventh stream is refused at once, not queued behind them.
    let err = download(&mut c, &big, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(node.counter("dfs_datanode_streams_refused_total", "") >= 1);
    // Prepared sessions are bounded too.
    let mut prepared = Vec::new();
    for _ in 0..4 {
        let id = chunk_id();
        prepared.push(
            prepare(&mut c, meta(&id, b"abc", true), vec![], 0)
                .await
                .unwrap(),
        );
    }
    let err = prepare(&mut c, meta(&chunk_id(), b"abc", true), vec![], 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    // After the session timeout every stalled stream is cut off: slots,
    // threads and reservations are back, and nothing half-written stays.
    for (_tx, answer) in writers {
        let err = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("the stalled writer is cut off in time")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    }
    eventually("slow readers cut off", || {
        node.counter("dfs_datanode_active_sessions", "download") == 0
            && node.counter("dfs_datanode_active_sessions", "upload") == 0
    })
    .await;
    assert!(node.counter("dfs_datanode_streams_cut_total", "slow_reader") >= 4);
    drop(held);
    eventually("prepared sessions expire", || {
        node.counter("dfs_datanode_capacity_reserved_bytes", "") == 0
    })
    .await;
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    // And the node serves normally again.
    assert!(download(&mut c, &big, 0, 0).await.unwrap() == bytes);
    let id = chunk_id();
    upload(&mut c, &id, b"after", vec![], 0).await.unwrap();
    node.stop().await;
}
