//! Plan / confirm / download, overwrite, quorum, replan, abort, placement.

use std::collections::HashSet;

use dfs_proto::*;
use dfs_testkit::coordinator::*;
use dfs_testkit::fake::Fleet;
use tonic::Code;

async fn cluster(nodes: &[(&str, &str, &str)]) -> (tempfile::TempDir, Server, Fleet, Client) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(test_config(dir.path())).await;
    let fleet = Fleet::default();
    for (id, zone, host) in nodes {
        fleet.spawn(&server, id, zone, host).await;
    }
    let mut client = server.client().await;
    let ids: Vec<&str> = nodes.iter().map(|n| n.0).collect();
    wait_healthy(&mut client, &ids).await;
    (dir, server, fleet, client)
}

fn three() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("n1", "a", "h1"),
        ("n2", "b", "h2"),
        ("n3", "c", "h3"),
        ("n4", "a", "h4"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_confirm_download() {
    let (_d, server, fleet, mut client) = cluster(&three()).await;
    let size = (5 << 20) / 2; // 2.5 chunks of 1 MiB
    let plan = client
        .upload_file(UploadFileRequest {
            path: "/a/b/file".into(),
            size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.chunks.len(), 3);
    assert_eq!(
        (plan.replication, plan.write_quorum, plan.chunk_size),
        (3, 2, 1 << 20)
    );
    assert_eq!(plan.chunks[2].size, size - (2 << 20));
    assert_eq!(plan.chunks[1].offset, 1 << 20);
    for c in &plan.chunks {
        assert!(frame::is_valid_chunk_id(&c.chunk_id));
        let ids: HashSet<_> = c.nodes.iter().map(|n| n.node_id.clone()).collect();
        assert_eq!(ids.len(), 3, "never two replicas on one node");
        let zone = |id: &str| match id {
            "n1" | "n4" => "a",
            "n2" => "b",
            _ => "c",
        };
        let zones: HashSet<_> = c.nodes.iter().map(|n| zone(&n.node_id)).collect();
        assert_eq!(zones.len(), 3, "one replica per zone: {:?}", c.nodes);
        assert!(c.nodes[0].address.starts_with("http://"));
    }
    // Nothing visible before confirm.
    let err = client
        .stat(StatRequest {
            path: "/a/b/file".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    for c in &plan.chunks {
        for n in &c.nodes {
            fleet.store(&n.node_id, &c.chunk_id);
        }
    }
    let info = confirm_all(&mut client, &plan).await.unwrap();
    assert_eq!((info.size, info.chunk_count, info.version), (size, 3, 1));

    let dl = download(&mut client, "/a/b/file").await;
    assert_eq!(dl.file.unwrap().size, size);
    assert_eq!(dl.chunks.len(), 3);
    for (c, p) in dl.chunks.iter().zip(&plan.chunks) {
        assert_eq!(c.chunk.as_ref().unwrap().chunk_id, p.chunk_id);
        assert_eq!(c.chunk.as_ref().unwrap().checksum, 42);
        assert_eq!(c.offset, p.offset);
        assert_eq!(c.replicas.len(), 3);
    }
    // Confirming twice (a retry whose answer was lost): the first answer,
    // nothing applied again.
    assert_eq!(confirm_all(&mut client, &plan).await.unwrap(), info);
    let again = client
        .stat(StatRequest {
            path: "/a/b/file".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version, 1, "confirmed once");
    // An upload id never planned stays unknown.
    let mut unknown = plan.clone();
    unknown.upload_id = "0123456789abcdef0123456789abcdef".into();
    assert_eq!(
        confirm_all(&mut client, &unknown).await.unwrap_err().code(),
        Code::NotFound
    );

    // A 0-byte file has zero chunks.
    let empty = fleet.put(&mut client, "/empty", 0, false).await;
    assert_eq!((empty.size, empty.chunk_count), (0, 0));
    assert!(download(&mut client, "/empty").await.chunks.is_empty());

    // Downloading a directory or a missing file.
    let err = client
        .download_file(DownloadFileRequest { path: "/a".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .download_file(DownloadFileRequest {
            path: "/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Gauges are refreshed by the coordinator's periodic tick: wait for the
    // first tick after the uploads rather than assume it already ran.
    let names = [
        "dfs_coordinator_datanodes{state=\"healthy\"}",
        "dfs_coordinator_files",
        "dfs_coordinator_capacity_total_bytes",
        "dfs_coordinator_rpc_duration_seconds_bucket",
        "dfs_coordinator_rpc_requests_total{code=\"ok\",method=\"UploadFile\"}",
        "dfs_coordinator_heartbeat_age_seconds{node_id=\"n1\"}",
        "dfs_coordinator_under_replicated_chunks",
        "dfs_coordinator_repair_eta_seconds",
    ];
    let srv = &server;
    eventually(30, "every metric exported", || async move {
        let m = srv.metrics_text().await;
        names.iter().all(|name| m.contains(name)).then_some(())
    })
    .await;
    // Every labelled series exists from the start (at 0): the uploads must
    // have counted, not just been exported.
    let m = server.metrics_text().await;
    let ok_uploads = dfs_common::http::sample(
        &m,
        "dfs_coordinator_rpc_requests_total{code=\"ok\",method=\"UploadFile\"}",
    );
    assert!(ok_uploads.is_some_and(|v| v > 0.0), "{ok_uploads:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_is_explicit_and_atomic() {
    let (_d, server, fleet, mut client) = cluster(&three()).await;
    fleet.put(&mut client, "/f", 3 << 20, false).await;
    let err = client
        .upload_file(UploadFileRequest {
            path: "/f".into(),
            size: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Readers running during overwrites always see one whole version.
    let reader = {
        let mut c = client.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                let dl = download(&mut c, "/f").await;
                let f = dl.file.unwrap();
                let total: u64 = dl
                    .chunks
                    .iter()
                    .map(|c| c.chunk.as_ref().unwrap().size)
                    .sum();
                assert_eq!(total, f.size, "chunk map matches the file version");
                assert_eq!(dl.chunks.len() as u64, f.chunk_count);
            }
        })
    };
    for i in 0..10u64 {
        let info = fleet.put(&mut client, "/f", (i % 3 + 1) << 20, true).await;
        assert_eq!(info.version, i + 2);
    }
    reader.await.unwrap();
    // A plan made with overwrite loses to nothing; without overwrite a file
    // created after planning makes the confirm fail.
    let plan = client
        .upload_file(UploadFileRequest {
            path: "/g".into(),
            size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    fleet.put(&mut client, "/g", 5, false).await;
    assert_eq!(
        confirm_all(&mut client, &plan).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let st = status(&mut client).await;
    assert_eq!(st.files, 2);
    assert_eq!(st.chunks, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_replan_abort_and_errors() {
    let (_d, server, fleet, mut client) = cluster(&three()).await;
    // Replication above the node count.
    let err = client
        .upload_file(UploadFileRequest {
            path: "/x".into(),
            size: 1,
            replication: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("need 5 datanodes with free space, 4 available"),
        "{}",
        err.message()
    );

    let plan = client
        .upload_file(UploadFileRequest {
            path: "/x".into(),
            size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Below quorum.
    let mut chunk = ConfirmedChunk {
        index: 0,
        chunk: Some(ChunkMeta {
            chunk_id: plan.chunks[0].chunk_id.clone(),
            // What the simulated replicas report storing.
            checksum: 42,
            size: 100,
            checksum_algorithm: 1,
        }),
        replicas: vec![plan.chunks[0].nodes[0].node_id.clone()],
        receipts: vec![],
        pending: vec![],
    };
    let confirm = |chunk: ConfirmedChunk| ConfirmUploadRequest {
        upload_id: plan.upload_id.clone(),
        chunks: vec![chunk],
    };
    let err = client
        .confirm_upload(confirm(chunk.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Wrong size.
    let mut bad = chunk.clone();
    bad.chunk.as_mut().unwrap().size = 99;
    bad.replicas = vec!["n1".into(), "n2".into()];
    assert_eq!(
        client
            .confirm_upload(confirm(bad))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // Unknown node.
    let mut bad = chunk.clone();
    bad.replicas = vec!["n1".into(), "zz".into()];
    assert_eq!(
        client
            .confirm_upload(confirm(bad))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    // Bad chunk id.
    let mut bad = chunk.clone();
    bad.chunk.as_mut().unwrap().chunk_id = "XYZ".into();
    assert_eq!(
        client
            .confirm_upload(confirm(bad))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // Missing chunks.
    let err = client
        .confirm_upload(ConfirmUploadRequest {
            upload_id: plan.upload_id.clone(),
            chunks: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Replan excluding the first choice gives other nodes.
    let excluded = plan.chunks[0].nodes[0].node_id.clone();
    let re = client
        .replan_chunk(ReplanChunkRequest {
            upload_id: plan.upload_id.clone(),
            index: 0,
            exclude_nodes: vec![excluded.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(re.index, 0);
    assert!(re.nodes.iter().all(|n| n.node_id != excluded));
    assert_ne!(re.chunk_id, plan.chunks[0].chunk_id);
    // The old id no longer confirms; the new one does.
    let err = client
        .confirm_upload(confirm(chunk.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    chunk.chunk.as_mut().unwrap().chunk_id = re.chunk_id.clone();
    chunk.replicas = re.nodes.iter().map(|n| n.node_id.clone()).collect();
    for n in &chunk.replicas {
        fleet.store(n, &re.chunk_id);
    }
    client.confirm_upload(confirm(chunk)).await.unwrap();
    let err = client
        .replan_chunk(ReplanChunkRequest {
            upload_id: plan.upload_id.clone(),
            index: 0,
            exclude_nodes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Abort, and unknown upload ids.
    let plan = client
        .upload_file(UploadFileRequest {
            path: "/y".into(),
            size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    client
        .abort_upload(AbortUploadRequest {
            upload_id: plan.upload_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        confirm_all(&mut client, &plan).await.unwrap_err().code(),
        Code::NotFound
    );
    // A well-formed id nobody planned is NOT_FOUND; a malformed one never
    // gets past the edge.
    let unknown = "0123456789abcdef0123456789abcdef";
    let err = client
        .abort_upload(AbortUploadRequest {
            upload_id: unknown.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(unknown));
    let err = client
        .abort_upload(AbortUploadRequest {
            upload_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("invalid upload id \"nope\""),
        "{}",
        err.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_over_zones_and_hosts() {
    // Six nodes: three zones, two hosts per zone, and two nodes sharing host h1.
    let nodes = vec![
        ("a1", "za", "h1"),
        ("a2", "za", "h1"),
        ("b1", "zb", "h3"),
        ("b2", "zb", "h4"),
        ("c1", "zc", "h5"),
        ("c2", "zc", "h6"),
    ];
    let (_d, server, _sim, mut client) = cluster(&nodes).await;
    let plan = client
        .upload_file(UploadFileRequest {
            path: "/big".into(),
            size: 40 << 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.chunks.len(), 40);
    for c in &plan.chunks {
        let zones: HashSet<_> = c.nodes.iter().map(|n| n.node_id[..1].to_string()).collect();
        assert_eq!(zones.len(), 3, "three zones: {:?}", c.nodes);
        let ids: HashSet<_> = c.nodes.iter().map(|n| n.node_id.clone()).collect();
        assert_eq!(ids.len(), 3);
    }
    server.stop().await;
}

/// UploadFiles and ConfirmUploads answer each call of a batch exactly as
/// the unary call would, in request order, and refuse oversize batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_plans_and_confirms_answer_each_call_on_its_own() {
    let (_d, server, fleet, mut client) = cluster(&three()).await;
    fleet.put(&mut client, "/taken", 10, false).await;
    let file = |path: &str, size: u64| UploadFileRequest {
        path: path.into(),
        size,
        ..Default::default()
    };
    let mut files: Vec<_> = (0..20).map(|i| file(&format!("/b/f{i}"), 4096)).collect();
    files.insert(3, file("no/leading/slash", 1));
    files.insert(7, file("/taken", 1));
    files.insert(
        9,
        UploadFileRequest {
            replication: 99,
            ..file("/b/too-many-replicas", 1)
        },
    );
    let results = client
        .upload_files(UploadFilesRequest { files })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 23);
    let mut plans = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match (i, r.result.unwrap()) {
            (3 | 9, upload_file_result::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{i}: {e:?}")
            }
            (7, upload_file_result::Result::Error(e)) => {
                assert_eq!(e.code, Code::AlreadyExists as i32, "{e:?}")
            }
            (i, upload_file_result::Result::Plan(p)) if ![3, 7, 9].contains(&i) => {
                assert_eq!((p.chunks.len(), p.chunks[0].size), (1, 4096));
                assert_eq!(p.chunks[0].nodes.len(), 3);
                plans.push(p);
            }
            (i, other) => panic!("call {i}: unexpected {other:?}"),
        }
    }
    let ids: HashSet<_> = plans.iter().map(|p| p.upload_id.clone()).collect();
    assert_eq!(ids.len(), 20, "every call has its own upload");
    for p in &plans {
        for n in &p.chunks[0].nodes {
            fleet.store(&n.node_id, &p.chunks[0].chunk_id);
        }
    }

    // Confirms: the 20 good ones, an unknown upload and one with a gap in
    // its chunk indices, mixed in.
    let mut uploads: Vec<_> = plans.iter().map(confirm_request).collect();
    uploads.insert(
        5,
        ConfirmUploadRequest {
            // Well-formed, never planned.
            upload_id: "0123456789abcdef0123456789abcdef".into(),
            chunks: vec![],
        },
    );
    let mut gap = confirm_request(&plans[0]);
    gap.chunks[0].index = 1;
    uploads.insert(0, gap);
    let results = client
        .confirm_uploads(ConfirmUploadsRequest { uploads })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 22);
    let mut confirmed = 0;
    for (i, r) in results.into_iter().enumerate() {
        match (i, r.result.unwrap()) {
            (0, confirm_upload_result::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}")
            }
            (6, confirm_upload_result::Result::Error(e)) => {
                assert_eq!(e.code, Code::NotFound as i32, "{e:?}")
            }
            (_, confirm_upload_result::Result::Confirmed(c)) => {
                let f = c.file.unwrap();
                assert_eq!((f.size, f.chunk_count, f.version), (4096, 1, 1));
                confirmed += 1;
            }
            (i, other) => panic!("confirm {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(confirmed, 20);
    let listed = client
        .list_directory(ListDirectoryRequest {
            path: "/b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.len(), 20);

    // Oversize batches are refused whole.
    let err = client
        .upload_files(UploadFilesRequest {
            files: (0..1025).map(|i| file(&format!("/c/{i}"), 1)).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("1024"), "{}", err.message());
    let err = client
        .upload_files(UploadFilesRequest {
            files: vec![file("/c/huge", 1 << 40)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("UploadFile"), "{}", err.message());
    let err = client
        .confirm_uploads(ConfirmUploadsRequest {
            uploads: vec![ConfirmUploadRequest::default(); 1025],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Each batched call counts under its own method, the batch under its.
    let m = server.metrics_text().await;
    let count = |series: &str| dfs_common::http::sample(&m, series).unwrap_or(0.0) as u64;
    assert_eq!(
        count("dfs_coordinator_rpc_requests_total{code=\"ok\",method=\"ConfirmUpload\"}"),
        21,
        "20 batched confirms and the unary one of /taken:\n{m}"
    );
    assert_eq!(
        count("dfs_coordinator_rpc_requests_total{code=\"not_found\",method=\"ConfirmUpload\"}"),
        1
    );
    assert_eq!(
        count("dfs_coordinator_rpc_requests_total{code=\"ok\",method=\"UploadFiles\"}"),
        1
    );
    assert_eq!(
        count(
            "dfs_coordinator_rpc_requests_total{code=\"invalid_argument\",method=\"UploadFiles\"}"
        ),
        2
    );
    server.stop().await;
}
