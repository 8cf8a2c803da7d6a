//! Metadata survives a restart on the same data directory.

use dfs_proto::*;
use dfs_testkit::coordinator::*;
use dfs_testkit::fake::Fleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::default();
    let (cluster_id, plan) = {
        let server = Server::start(test_config(dir.path())).await;
        for n in ["n1", "n2", "n3"] {
            fleet.spawn(&server, n, "", "").await;
        }
        let mut c = server.client().await;
        wait_healthy(&mut c, &["n1", "n2", "n3"]).await;
        c.mkdir(MkdirRequest {
            path: "/dir/sub".into(),
            parents: true,
        })
        .await
        .unwrap();
        fleet.put(&mut c, "/dir/f1", 3 << 20, false).await;
        fleet.put(&mut c, "/dir/f1", 2 << 20, true).await;
        fleet.put(&mut c, "/dir/sub/f2", 7, false).await;
        c.rename(RenameRequest {
            source: "/dir/sub/f2".into(),
            destination: "/f2".into(),
        })
        .await
        .unwrap();
        // An open upload survives too.
        let plan = c
            .upload_file(UploadFileRequest {
                path: "/later".into(),
                size: 5,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let id = status(&mut c).await.cluster_id;
        assert_eq!(id.len(), 32);
        for n in ["n1", "n2", "n3"] {
            fleet.kill(n);
        }
        server.stop().await;
        (id, plan)
    };

    let server = Server::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    let st = status(&mut c).await;
    assert_eq!(st.cluster_id, cluster_id);
    assert_eq!((st.files, st.directories, st.chunks), (2, 3, 3));
    assert_eq!(st.nodes.len(), 3, "registrations are durable");
    let f1 = c
        .stat(StatRequest {
            path: "/dir/f1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((f1.size, f1.version, f1.chunk_count), (2 << 20, 2, 2));
    // Replica locations are known right away (from confirm), before reports.
    let dl = download(&mut c, "/f2").await;
    assert_eq!(dl.chunks[0].replicas.len(), 3);
    // The open upload can still be confirmed.
    let info = confirm_all(&mut c, &plan).await.unwrap();
    assert_eq!(info.path, "/later");
    // Datanodes reconnect without re-registering (the node is known).
    for n in ["n1", "n2", "n3"] {
        fleet.spawn(&server, n, "", "").await;
    }
    wait_healthy(&mut c, &["n1", "n2", "n3"]).await;
    server.stop().await;

    // Third start: replay includes the confirm made after the restart.
    let server = Server::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    assert_eq!(status(&mut c).await.files, 3);
    server.stop().await;
}

/// A maintenance window is durable: a coordinator restarting while a
/// datanode is down for a planned restart keeps it in maintenance (no
/// repair), and a cancelled window stays cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_windows_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::default();
    let nodes = ["n1", "n2", "n3", "n4"];
    let (holder, until) = {
        let server = Server::start(test_config(dir.path())).await;
        for n in nodes {
            fleet.spawn(&server, n, "", "").await;
        }
        let mut c = server.client().await;
        wait_healthy(&mut c, &nodes).await;
        fleet.put(&mut c, "/f", 10, false).await;
        let holder = download(&mut c, "/f").await.chunks[0].replicas[0]
            .node_id
            .clone();
        let other = nodes.iter().find(|n| **n != holder).unwrap().to_string();
        let set = |node: &str, enabled: bool| SetNodeMaintenanceRequest {
            node_id: node.into(),
            enabled,
            duration_seconds: 600,
        };
        let st = c
            .set_node_maintenance(set(&holder, true))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.state, NodeState::Maintenance as i32);
        c.set_node_maintenance(set(&other, true)).await.unwrap();
        c.set_node_maintenance(set(&other, false)).await.unwrap();
        for n in nodes {
            fleet.kill(n);
        }
        server.stop().await;
        (holder, st.maintenance_until_unix_ms)
    };

    let server = Server::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    let st = node_state(&mut c, &holder).await;
    assert_eq!(st.state, NodeState::Maintenance as i32, "{st:?}");
    assert_eq!(st.maintenance_until_unix_ms, until);
    // Every other node comes back; the holder stays down past dead-after.
    let back: Vec<&str> = nodes.iter().copied().filter(|n| *n != holder).collect();
    for n in &back {
        fleet.spawn(&server, n, "", "").await;
    }
    wait_healthy(&mut c, &back).await;
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let st = node_state(&mut c, &holder).await;
    assert_eq!(st.state, NodeState::Maintenance as i32, "{st:?}");
    for n in &back {
        let st = node_state(&mut c, n).await;
        assert_eq!(st.state, NodeState::Healthy as i32, "{n}: {st:?}");
    }
    let dl = download(&mut c, "/f").await;
    assert!(
        dl.chunks[0].replicas.iter().any(|r| r.node_id == holder),
        "the replica on the node in maintenance is kept, not repaired away"
    );
    server.stop().await;
}
