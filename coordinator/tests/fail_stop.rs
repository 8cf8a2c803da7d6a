//! Fail-stop: when the metadata log cannot be written (a disk that starts
//! failing: ENOSPC, EIO), the coordinator orders nothing more (no delete, no
//! repair), fails its probes and stops with an error; restarted on a good
//! disk it has everything it acknowledged. Before this, a delete applied in
//! memory but never logged released its chunks, and the next ticks deleted
//! them while the restarted coordinator still listed the file.
//!
//! The disk fault is the coordinator's test hook
//! (`--fault-fail-log-writes-when <file>`).

use std::time::Duration;

use dfs_coordinator::CoordinatorError;
use dfs_proto::*;
use dfs_testkit::coordinator::*;
use dfs_testkit::fake::Fleet;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_metadata_disk_stops_the_coordinator_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("disk-fails-now");
    let data = dir.path().join("meta");
    let fleet = Fleet::default();
    let nodes = ["n1", "n2", "n3"];
    let mut config = test_config(&data);
    config.fault_fail_log_writes_when = Some(trigger.clone());
    let server = Server::start(config).await;
    for n in nodes {
        fleet.spawn(&server, n, "", "").await;
    }
    let mut c = server.client().await;
    wait_healthy(&mut c, &nodes).await;
    fleet.put(&mut c, "/a", 10, false).await;
    fleet.put(&mut c, "/b", 10, false).await;

    // The disk fails. The delete is applied in memory, never logged: it
    // must not be acknowledged, and its chunks must not be deleted.
    std::fs::write(&trigger, b"").unwrap();
    let err = c
        .delete(DeleteRequest {
            path: "/a".into(),
            recursive: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let metrics = server.metrics;
    match server.exited(10).await {
        Err(CoordinatorError::MetadataFailed(reason)) => {
            assert!(reason.contains("metadata log write failed"), "{reason}")
        }
        other => panic!("expected a fail-stop, got {other:?}"),
    }
    // Its probes went down with it.
    assert!(dfs_common::http::scrape(metrics).await.is_err());
    // Several orphan graces later: no datanode was told to delete anything.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in nodes {
        let deleted = fleet.nodes.lock().unwrap()[n].deleted.clone();
        assert!(deleted.is_empty(), "{n} was told to delete {deleted:?}");
    }
    for n in nodes {
        fleet.kill(n);
    }

    // A good disk again: everything acknowledged is there, and the delete
    // that was never acknowledged did not happen.
    std::fs::remove_file(&trigger).unwrap();
    let server = Server::start(test_config(&data)).await;
    let mut c = server.client().await;
    for path in ["/a", "/b"] {
        let st = c
            .stat(StatRequest { path: path.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.size, 10, "{path}");
    }
    server.stop().await;
}
