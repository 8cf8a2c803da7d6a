//! Upload and download on a single datanode: round trips, range reads,
//! integrity and input validation, capacity.

use dfs_proto::*;
use dfs_testkit::datanode::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_chunk_round_trip_with_hash_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |_| {}).await;
    let mut c = node.client().await;
    let sizes = [0usize, 1, 4096, DEFAULT_FRAME_BYTES, 3 * 1024 * 1024 + 17];
    let mut chunks = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let id = chunk_id();
        let bytes = data(*size, i as u64 + 1);
        let r = upload(&mut c, &id, &bytes, vec![], 0).await.unwrap();
        assert_eq!(r.replicas, vec![node.node_id.clone()]);
        let stored = r.chunk.unwrap();
        assert_eq!(stored.checksum, frame::checksum(&bytes));
        assert_eq!(stored.size, *size as u64);
        chunks.push((id, bytes));
    }
    // A file assembled from its chunks hashes the same as the original.
    let mut original = 0u32;
    let mut downloaded = 0u32;
    for (id, bytes) in &chunks {
        let got = download(&mut c, id, 0, 0).await.unwrap();
        assert_eq!(got.len(), bytes.len());
        original = frame::checksum_append(original, bytes);
        downloaded = frame::checksum_append(downloaded, &got);
        assert!(got == *bytes);
    }
    assert_eq!(original, downloaded);

    // PrepareChunkDownload + session-based download.
    let (id, bytes) = &chunks[4];
    let p = c
        .prepare_chunk_download(PrepareChunkDownloadRequest {
            chunk_id: id.clone(),
            token: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.chunk.unwrap().size, bytes.len() as u64);
    let mut s = c
        .download_chunk_stream(DownloadChunkStreamRequest {
            session_id: p.session_id,
            frame_bytes: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(f) = s.message().await.unwrap() {
        assert!(f.data.len() <= 100_000);
        got.extend_from_slice(&f.data);
    }
    assert!(got == *bytes);

    // Idempotent retry: already stored with the same checksum.
    let p = prepare(&mut c, meta(id, bytes, true), vec![], 0)
        .await
        .unwrap();
    assert!(p.already_stored);

    // Metrics are exported over HTTP.
    let body = http_get(node.metrics_addr, "/metrics").await;
    // Labelled series exist from the start (at 0): the upload must count.
    let bytes_in =
        dfs_common::http::sample(&body, "dfs_datanode_bytes_in_total{stream=\"upload\"}");
    assert!(bytes_in.is_some_and(|v| v > 0.0), "{bytes_in:?}");
    assert!(body.contains("dfs_datanode_chunks_stored 5"));
    assert!(body.contains("dfs_datanode_upload_duration_seconds_bucket"));
    assert!(
        http_get(node.metrics_addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    node.stop().await;

    // Everything survives a restart.
    let node = TestNode::start(dir.path(), |_| {}).await;
    let mut c = node.client().await;
    for (id, bytes) in &chunks {
        assert!(download(&mut c, id, 0, 0).await.unwrap() == *bytes);
    }
    node.stop().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_return_exactly_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |_| {}).await;
    let mut c = node.client().await;
    let id = chunk_id();
    let bytes = data(1024 * 1024 + 333, 7);
    upload(&mut c, &id, &bytes, vec![], 0).await.unwrap();
    let n = bytes.len() as u64;
    for (off, len) in [
        (0u64, 1u64),
        (1, 10),
        (262_143, 2),
        (262_144, 262_144),
        (100_000, 700_000),
        (n - 5, 5),
        (n - 5, 0),
        (n, 0),
    ] {
        let got = download(&mut c, &id, off, len).await.unwrap();
        let end = if len == 0 { n } else { off + len };
        assert!(
            got == bytes[off as usize..end as usize],
            "range {off}+{len}"
        );
    }
    let err = download(&mut c, &id, n - 1, 2).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatches_are_rejected_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |_| {}).await;
    let mut c = node.client().await;
    let bytes = data(700_000, 3);

    // Whole-chunk checksum announced at prepare does not match the data.
    let id = chunk_id();
    let mut m = meta(&id, &bytes, true);
    m.checksum ^= 0xdead;
    let p = prepare(&mut c, m, vec![], 0).await.unwrap();
    let err = send_frames(&mut c, frames(&p.session_id, &bytes))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains("checksum"), "{}", err.message());

    // A frame corrupted in flight (its CRC no longer matches its bytes).
    let id2 = chunk_id();
    let p = prepare(&mut c, meta(&id2, &bytes, false), vec![], 0)
        .await
        .unwrap();
    let mut f = frames(&p.session_id, &bytes);
    let mut corrupted = f[1].data.to_vec();
    corrupted[10] ^= 0x40;
    f[1].data = corrupted.into();
    let err = send_frames(&mut c, f).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");

    for id in [&id, &id2] {
        let err = download(&mut c, id, 0, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    eventually("temp files removed", || {
        files_under(&dir.path().join("tmp")).is_empty()
    })
    .await;
    assert!(chunk_files(dir.path()).is_empty());
    assert!(node.counter("dfs_datanode_checksum_failures_total", "frame") >= 2);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_rejected_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |c| {
        c.max_frame_bytes = dfs_common::size::ByteSize(512 * 1024);
    })
    .await;
    let mut c = node.client().await;
    let bytes = data(1024 * 1024, 9);

    // Unknown session.
    let err = send_frames(&mut c, frames("no-such-session", &bytes))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A gap in the offsets.
    let id = chunk_id();
    let p = prepare(&mut c, meta(&id, &bytes, true), vec![], 0)
        .await
        .unwrap();
    let mut f = frames(&p.session_id, &bytes);
    f.remove(1);
    let err = send_frames(&mut c, f).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("contiguous"), "{}", err.message());

    // An overlap.
    let p = prepare(&mut c, meta(&id, &bytes, true), vec![], 0)
        .await
        .unwrap();
    let mut f = frames(&p.session_id, &bytes);
    f[1].offset -= 1;
    let err = send_frames(&mut c, f).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A frame over the configured maximum.
    let p = prepare(&mut c, meta(&id, &bytes, true), vec![], 0)
        .await
        .unwrap();
    let mut big = dfs_proto::ChunkData::frame(bytes::Bytes::from(bytes.clone()), 0, true);
    big.session_id = p.session_id.clone();
    let err = send_frames(&mut c, vec![big]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("maximum"), "{}", err.message());

    // The stream ends without is_final.
    let p = prepare(&mut c, meta(&id, &bytes, true), vec![], 0)
        .await
        .unwrap();
    let mut f = frames(&p.session_id, &bytes);
    f.pop();
    let err = send_frames(&mut c, f).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    // A session is used once.
    let p = prepare(&mut c, meta(&id, &bytes, true), vec![], 0)
        .await
        .unwrap();
    send_frames(&mut c, frames(&p.session_id, &bytes))
        .await
        .unwrap();
    let err = send_frames(&mut c, frames(&p.session_id, &bytes))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    eventually("temp files removed", || {
        files_under(&dir.path().join("tmp")).is_empty()
    })
    .await;
    assert_eq!(chunk_files(dir.path()).len(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |c| {
        c.session_timeout = std::time::Duration::from_millis(50);
        c.capacity = Some(dfs_common::size::ByteSize(1000));
    })
    .await;
    let mut c = node.client().await;
    let bytes = data(800, 1);
    let id = chunk_id();
    let p = prepare(&mut c, meta(&id, &bytes, true), vec![], 0)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let err = send_frames(&mut c, frames(&p.session_id, &bytes))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The expired session's space is released again.
    eventually("reservation released", || {
        node.counter("dfs_datanode_capacity_reserved_bytes", "") == 0
    })
    .await;
    prepare(&mut c, meta(&id, &bytes, true), vec![], 0)
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_ids_are_rejected_before_touching_the_disk() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let node = TestNode::start(&dir, |_| {}).await;
    let mut c = node.client().await;
    let before = files_under(root.path());
    for bad in [
        "../../etc/passwd",
        "../node_id",
        "/etc/passwd",
        "",
        "0123456789ABCDEF0123456789ABCDEF",
        "0123456789abcdef0123456789abcde/",
    ] {
        let m = ChunkMeta {
            chunk_id: bad.into(),
            size: 3,
            ..Default::default()
        };
        let err = prepare(&mut c, m, vec![], 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        let err = download(&mut c, bad, 0, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        let err = c
            .delete_chunk(DeleteChunkRequest {
                chunk_id: bad.into(),
                token: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        let err = c
            .prepare_chunk_download(PrepareChunkDownloadRequest {
                chunk_id: bad.into(),
                token: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
    assert_eq!(files_under(root.path()), before);
    assert!(dir.join("node_id").exists());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_refused_counting_open_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |c| {
        c.capacity = Some(dfs_common::size::ByteSize(1024 * 1024));
    })
    .await;
    let mut c = node.client().await;
    let too_big = ChunkMeta {
        chunk_id: chunk_id(),
        size: 2 * 1024 * 1024,
        ..Default::default()
    };
    let err = prepare(&mut c, too_big, vec![], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    // 600 KiB fits once; a second 600 KiB does not while the first session is open.
    let a = data(600 * 1024, 1);
    let id_a = chunk_id();
    let pa = prepare(&mut c, meta(&id_a, &a, true), vec![], 0)
        .await
        .unwrap();
    let b = data(600 * 1024, 2);
    let err = prepare(&mut c, meta(&chunk_id(), &b, true), vec![], 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Stored, the first chunk still uses the space.
    send_frames(&mut c, frames(&pa.session_id, &a))
        .await
        .unwrap();
    let err = prepare(&mut c, meta(&chunk_id(), &b, true), vec![], 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Deleted, it frees the space.
    let deleted = c
        .delete_chunk(DeleteChunkRequest {
            chunk_id: id_a,
            token: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    prepare(&mut c, meta(&chunk_id(), &b, true), vec![], 0)
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_uploads_prepare_on_the_first_frame_with_the_same_checks() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(
            TestNode::start(d.path(), |c| {
                c.capacity = Some(dfs_common::size::ByteSize(64 << 20))
            })
            .await,
        );
    }
    let targets: Vec<NodeAddress> = nodes[1..].iter().map(|n| n.target()).collect();
    let mut c = nodes[0].client().await;

    // A small chunk and a multi-frame one, each fanned out to both replicas.
    for len in [4096usize, 700 * 1024] {
        let id = chunk_id();
        let bytes = data(len, len as u64);
        let stored = upload_one_call(&mut c, meta(&id, &bytes, false), &bytes, targets.clone(), 0)
            .await
            .unwrap();
        assert_eq!(stored.replicas.len(), 3, "{stored:?}");
        assert_eq!(
            stored.chunk.unwrap().checksum,
            dfs_proto::frame::checksum(&bytes)
        );
        for n in &nodes {
            let mut nc = n.client().await;
            assert_eq!(
                download(&mut nc, &id, 0, 0).await.unwrap(),
                bytes,
                "on {}",
                n.node_id
            );
        }
    }

    // The prepare is validated as PrepareChunkUpload validates it.
    let bytes = data(4096, 1);
    let err = upload_one_call(
        &mut c,
        meta("../../etc/passwd", &bytes, true),
        &bytes,
        vec![],
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = upload_one_call(
        &mut c,
        meta(&chunk_id(), &bytes, true),
        &bytes,
        vec![nodes[0].target()],
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = upload_one_call(&mut c, meta(&chunk_id(), &bytes, true), &bytes, vec![], 2)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let huge = ChunkMeta {
        size: 1 << 40,
        ..meta(&chunk_id(), &bytes, false)
    };
    let err = upload_one_call(&mut c, huge, &bytes, vec![], 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // A session id and a prepare on the same frame is ambiguous.
    let mut f = frames("some-session", &bytes);
    f[0].prepare = Some(PrepareChunkUploadRequest {
        chunk: Some(meta(&chunk_id(), &bytes, true)),
        targets: vec![],
        write_quorum: 0,
        session_id: String::new(),
        token: Default::default(),
    });
    let err = send_frames(&mut c, f).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A checksum mismatch keeps nothing anywhere.
    let id = chunk_id();
    let wrong = ChunkMeta {
        checksum: 0xdead_beef,
        ..meta(&id, &bytes, true)
    };
    let err = upload_one_call(&mut c, wrong, &bytes, targets.clone(), 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    for n in &nodes {
        let mut nc = n.client().await;
        assert_eq!(
            download(&mut nc, &id, 0, 0).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    for n in nodes {
        n.stop().await;
    }
}

/// DownloadChunkStream sends each frame's data without copying it; the
/// zero-copy reader and tonic's own client read the same bytes, and a
/// malformed request gets a clear status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_sliced_not_copied_and_malformed_requests_are_refused() {
    use dfs_proto::chunk_stream;
    use tower_service::Service;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), |_| {}).await;
    let mut c = node.client().await;
    let id = chunk_id();
    let bytes = data(3 * DEFAULT_FRAME_BYTES + 1234, 9);
    upload(&mut c, &id, &bytes, vec![], 0).await.unwrap();
    assert!(download(&mut c, &id, 0, 0).await.unwrap() == bytes);

    let channel = dfs_common::transport::endpoint(&node.address, std::time::Duration::from_secs(5))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = |chunk_id: &str, offset: u64, length: u64| DownloadChunkStreamRequest {
        chunk_id: chunk_id.into(),
        offset,
        length,
        ..Default::default()
    };
    let max = dfs_common::transport::MAX_MESSAGE_BYTES;
    let mut reader = chunk_stream::download(channel.clone(), request(&id, 7, 0), max)
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut saw_final = false;
    while let Some(frame) = reader.message().await.unwrap() {
        assert!(frame.verify());
        assert_eq!(frame.offset, 7 + got.len() as u64);
        got.extend_from_slice(&frame.data);
        saw_final |= frame.is_final;
    }
    assert!(saw_final);
    assert!(got == bytes[7..], "the zero-copy reader got other bytes");

    for (chunk, code) in [
        ("../../etc/passwd".to_string(), Code::InvalidArgument),
        (chunk_id(), Code::NotFound),
    ] {
        let err = chunk_stream::download(channel.clone(), request(&chunk, 0, 0), max)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), code, "{chunk}: {err:?}");
    }
    let err = chunk_stream::download(
        channel.clone(),
        request(&id, 0, bytes.len() as u64 + 1),
        max,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), Code::OutOfRange);

    // Raw bodies: a compressed message, an envelope that lies about the
    // length, bytes that are not a DownloadChunkStreamRequest, no message.
    for (body, code) in [
        (vec![1, 0, 0, 0, 1, 0], Code::Unimplemented),
        (vec![0, 0, 0, 0, 9, 0x0a], Code::InvalidArgument),
        (vec![0, 0, 0, 0, 2, 0x0a, 0x7f], Code::InvalidArgument),
        (vec![0, 0], Code::InvalidArgument),
    ] {
        let mut channel = channel.clone();
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(chunk_stream::DOWNLOAD_PATH)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from(body.clone()),
            )))
            .unwrap();
        let response = channel.call(request).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers())
            .unwrap_or_else(|| panic!("{body:?}: no trailers-only status"));
        assert_eq!(status.code(), code, "{body:?}: {status:?}");
    }
    node.stop().await;
}
