//! What the coordinator refuses to do: take a datanode of another cluster,
//! commit a checksum no replica stored, order deletes or repairs in safe
//! mode, plan absurd chunk sizes.

use std::time::Duration;

use dfs_proto::*;
use dfs_testkit::coordinator::*;
use dfs_testkit::fake::Fleet;
use tonic::Code;

const FOREIGN: &str = "ffffffffffffffffffffffffffffffff";

/// A coordinator with three healthy simulated datanodes n1..n3.
async fn three_nodes(dir: &std::path::Path) -> (Server, Fleet, Client) {
    let server = Server::start(test_config(dir)).await;
    let fleet = Fleet::default();
    let nodes = ["n1", "n2", "n3"];
    for n in nodes {
        fleet.spawn(&server, n, "", "").await;
    }
    let mut c = server.client().await;
    wait_healthy(&mut c, &nodes).await;
    (server, fleet, c)
}

/// One sample of the coordinator's /metrics.
async fn metric(server: &Server, series: &str) -> Option<f64> {
    dfs_common::http::sample(&server.metrics_text().await, series)
}

fn register(id: &str, cluster_id: &str) -> RegisterDataNodeRequest {
    RegisterDataNodeRequest {
        node_id: id.into(),
        address: format!("http://{id}.invalid:7101"),
        info: Some(info()),
        topology: None,
        version: "test".into(),
        cluster_id: cluster_id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datanode_of_another_cluster_is_refused_naming_both_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    let ours = status(&mut c).await.cluster_id;
    let err = c
        .register_data_node(register("stranger", FOREIGN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(FOREIGN) && err.message().contains(&ours),
        "{}",
        err.message()
    );
    assert!(err.message().contains("none of its chunks is deleted"));
    assert!(status(&mut c).await.nodes.is_empty(), "not registered");
    // The same node with this cluster's id (or none: never joined) is fine.
    c.register_data_node(register("member", &ours))
        .await
        .unwrap();
    c.register_data_node(register("newcomer", ""))
        .await
        .unwrap();
    assert_eq!(status(&mut c).await.nodes.len(), 2);
    // A heartbeat claiming another cluster ends its stream the same way.
    let hb = Heartbeat {
        node_id: "member".into(),
        cluster_id: FOREIGN.into(),
        ..Heartbeat::default()
    };
    let mut answers = c
        .data_node_heartbeat(futures::stream::iter(vec![hb]))
        .await
        .unwrap()
        .into_inner();
    let err = answers.message().await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        metric(&server, "dfs_coordinator_foreign_datanodes_refused_total").await,
        Some(2.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_commits_only_the_checksum_the_replicas_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (server, fleet, mut c) = three_nodes(dir.path()).await;
    let plan = |path: &str| UploadFileRequest {
        path: path.into(),
        size: 100,
        ..Default::default()
    };

    // The replicas stored checksum 42 (their reports say so); a confirm
    // without receipts that says 7 is refused, and nothing is visible.
    let p = c.upload_file(plan("/wrong")).await.unwrap().into_inner();
    for n in &p.chunks[0].nodes {
        fleet.store(&n.node_id, &p.chunks[0].chunk_id);
    }
    let mut req = confirm_request(&p);
    req.chunks[0].receipts.clear();
    req.chunks[0].chunk.as_mut().unwrap().checksum = 7;
    let err = c.confirm_upload(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("0000002a"), "{}", err.message());
    let err = c
        .stat(StatRequest {
            path: "/wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A receipt naming other bytes is refused the same way.
    let mut req = confirm_request(&p);
    req.chunks[0].receipts[1].checksum = 9;
    let err = c.confirm_upload(req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // The right checksum, vouched for by the replicas' own reports (no
    // receipts: any gRPC client), commits.
    let mut req = confirm_request(&p);
    req.chunks[0].receipts.clear();
    c.confirm_upload(req).await.unwrap();

    // Replicas that never stored anything cannot be confirmed: after a few
    // heartbeats without a report the confirm fails, nothing committed.
    let p = c.upload_file(plan("/ghost")).await.unwrap().into_inner();
    let mut req = confirm_request(&p);
    req.chunks[0].receipts.clear();
    let err = c.confirm_upload(req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("vouched"), "{}", err.message());
    assert_eq!(
        metric(&server, "dfs_coordinator_confirm_checksum_mismatches_total").await,
        Some(2.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_shows_why_and_an_admin_can_enter_and_leave_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    let sm = status(&mut c).await.safe_mode.unwrap();
    assert!(sm.active, "on at start: {sm:?}");
    assert!(
        sm.reason.contains("waiting for full chunk reports"),
        "{}",
        sm.reason
    );
    let fleet = Fleet::default();
    for n in ["n1", "n2", "n3"] {
        fleet.spawn(&server, n, "", "").await;
    }
    eventually(10, "safe mode ends once the nodes reported", || {
        let mut c = c.clone();
        async move {
            let sm = status(&mut c).await.safe_mode.unwrap();
            (!sm.active).then_some(())
        }
    })
    .await;
    let st = c
        .set_safe_mode(SetSafeModeRequest { enabled: true })
        .await
        .unwrap()
        .into_inner();
    let sm = st.safe_mode.unwrap();
    assert!(sm.active && sm.manual, "{sm:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(status(&mut c).await.safe_mode.unwrap().active, "stays on");
    assert_eq!(
        metric(&server, "dfs_coordinator_safe_mode").await,
        Some(1.0)
    );
    let st = c
        .set_safe_mode(SetSafeModeRequest { enabled: false })
        .await
        .unwrap()
        .into_inner();
    assert!(!st.safe_mode.unwrap().active);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_requests_are_refused_with_bounded_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _sim, mut c) = three_nodes(dir.path()).await;
    // A 1-byte chunk size would plan a million chunks per megabyte.
    for chunk_size in [1, 65_535, (1 << 30) + 1] {
        let err = c
            .upload_file(UploadFileRequest {
                path: "/tiny".into(),
                size: 1 << 20,
                chunk_size,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{chunk_size}: {err:?}");
    }
    // Error messages quote client input only truncated.
    let long = "x".repeat(100_000);
    let err = c.register_data_node(register(&long, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 300, "{} bytes", err.message().len());
    // Replan: excluded nodes are bounded and must be node ids.
    let p = c
        .upload_file(UploadFileRequest {
            path: "/r".into(),
            size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let err = c
        .replan_chunk(ReplanChunkRequest {
            upload_id: p.upload_id.clone(),
            index: 0,
            exclude_nodes: (0..5000).map(|i| format!("n{i}")).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .replan_chunk(ReplanChunkRequest {
            upload_id: p.upload_id,
            index: 0,
            exclude_nodes: vec!["../../etc".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A heartbeat carrying an unbounded report is refused.
    let hb = Heartbeat {
        node_id: "n1".into(),
        removed_chunks: vec!["0".repeat(32); 30_000],
        ..Heartbeat::default()
    };
    let mut answers = c
        .data_node_heartbeat(futures::stream::iter(vec![hb]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answers.message().await.unwrap_err().code(),
        Code::InvalidArgument
    );
    server.stop().await;
}
