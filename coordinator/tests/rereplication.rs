//! Liveness, re-replication, orphans, corrupt replicas, decommission and
//! maintenance, with simulated datanodes acting on commands.

use std::collections::HashSet;

use dfs_proto::*;
use dfs_testkit::coordinator::*;
use dfs_testkit::fake::Fleet;

async fn setup(n: usize) -> (tempfile::TempDir, Server, Fleet, Client, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(test_config(dir.path())).await;
    let fleet = Fleet::default();
    let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    for id in &ids {
        fleet.spawn(&server, id, "", "").await;
    }
    let mut client = server.client().await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_healthy(&mut client, &refs).await;
    (dir, server, fleet, client, ids)
}

/// Replica node ids of every chunk of `path`.
async fn replicas(client: &mut Client, path: &str) -> Vec<HashSet<String>> {
    download(client, path)
        .await
        .chunks
        .into_iter()
        .map(|c| c.replicas.into_iter().map(|r| r.node_id).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_is_repaired_back_to_factor() {
    let (_d, server, fleet, mut c, _) = setup(5).await;
    fleet.put(&mut c, "/f", 4 << 20, false).await;
    let before = replicas(&mut c, "/f").await;
    // Kill the node holding the most chunks.
    let victim = (1..=5)
        .map(|i| format!("n{i}"))
        .max_by_key(|n| before.iter().filter(|r| r.contains(n)).count())
        .unwrap();
    fleet.kill(&victim);
    let st = eventually(45, "node dead", || {
        let mut c = c.clone();
        let v = victim.clone();
        async move {
            let n = node_state(&mut c, &v).await;
            (n.state == NodeState::Dead as i32).then_some(n)
        }
    })
    .await;
    assert_eq!(st.state, NodeState::Dead as i32);
    let after = eventually(45, "re-replication", || {
        let mut c = c.clone();
        let v = victim.clone();
        async move {
            let r = replicas(&mut c, "/f").await;
            let st = status(&mut c).await;
            (r.iter().all(|s| s.len() == 3 && !s.contains(&v)) && st.under_replicated_chunks == 0)
                .then_some(r)
        }
    })
    .await;
    // The chunk map matches what the simulated nodes really hold.
    let dl = download(&mut c, "/f").await;
    for (chunk, reps) in dl.chunks.iter().zip(&after) {
        for n in reps {
            assert!(fleet.holds(n, &chunk.chunk.as_ref().unwrap().chunk_id));
        }
    }
    let st = status(&mut c).await;
    assert_eq!(
        (
            st.missing_chunks,
            st.repair_bytes_remaining,
            st.repair_eta_seconds
        ),
        (0, 0, 0)
    );
    let m = server.metrics_text().await;
    assert!(m.contains("dfs_coordinator_repairs_completed_total"));
    assert!(
        !m.contains("dfs_coordinator_repairs_completed_total 0\n"),
        "repairs counted"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_replica_is_replaced() {
    let (_d, server, fleet, mut c, _) = setup(4).await;
    fleet.put(&mut c, "/f", 10, false).await;
    let dl = download(&mut c, "/f").await;
    let chunk = dl.chunks[0].chunk.as_ref().unwrap().chunk_id.clone();
    let bad = dl.chunks[0].replicas[0].node_id.clone();
    fleet.corrupt(&bad, &chunk);
    // The corrupt replica is dropped and a repair restores three replicas
    // that really hold the chunk (the target may be any node without it).
    eventually(45, "corrupt replica replaced", || {
        let mut c = c.clone();
        let fleet = fleet.clone();
        let chunk = chunk.clone();
        async move {
            let r = replicas(&mut c, "/f").await;
            let repaired: usize = fleet
                .nodes
                .lock()
                .unwrap()
                .values()
                .map(|n| n.replicated_from_here)
                .sum();
            (repaired >= 1 && r[0].len() == 3 && r[0].iter().all(|n| fleet.holds(n, &chunk)))
                .then_some(())
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_deleted_after_grace() {
    let (_d, server, fleet, mut c, _) = setup(3).await;
    // A chunk no file references.
    let orphan = "0123456789abcdef0123456789abcdef";
    fleet.store("n1", orphan);
    // An aborted upload's chunks, and an overwritten version's chunks.
    let plan = c
        .upload_file(UploadFileRequest {
            path: "/a".into(),
            size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for n in &plan.chunks[0].nodes {
        fleet.store(&n.node_id, &plan.chunks[0].chunk_id);
    }
    c.abort_upload(AbortUploadRequest {
        upload_id: plan.upload_id.clone(),
    })
    .await
    .unwrap();
    fleet.put(&mut c, "/f", 10, false).await;
    let old = download(&mut c, "/f").await.chunks[0]
        .chunk
        .clone()
        .unwrap()
        .chunk_id;
    fleet.put(&mut c, "/f", 20, true).await;
    let current = download(&mut c, "/f").await.chunks[0]
        .chunk
        .clone()
        .unwrap()
        .chunk_id;
    eventually(45, "orphans deleted", || {
        let fleet = fleet.clone();
        let aborted = plan.chunks[0].chunk_id.clone();
        let old = old.clone();
        async move {
            let gone = |id: &str| (1..=3).all(|i| !fleet.holds(&format!("n{i}"), id));
            (gone(orphan) && gone(&aborted) && gone(&old)).then_some(())
        }
    })
    .await;
    for i in 1..=3 {
        assert!(
            fleet.holds(&format!("n{i}"), &current),
            "live chunks are kept"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_uploads_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.upload_ttl = std::time::Duration::from_millis(300);
    let server = Server::start(cfg).await;
    let fleet = Fleet::default();
    for n in ["n1", "n2", "n3"] {
        fleet.spawn(&server, n, "", "").await;
    }
    let mut c = server.client().await;
    wait_healthy(&mut c, &["n1", "n2", "n3"]).await;
    let plan = c
        .upload_file(UploadFileRequest {
            path: "/a".into(),
            size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let chunk = plan.chunks[0].chunk_id.clone();
    for n in &plan.chunks[0].nodes {
        fleet.store(&n.node_id, &chunk);
    }
    eventually(45, "expired upload reclaimed", || {
        let fleet = fleet.clone();
        let chunk = chunk.clone();
        async move {
            (1..=3)
                .all(|i| !fleet.holds(&format!("n{i}"), &chunk))
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        confirm_all(&mut c, &plan).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_drains_then_is_safe() {
    let (_d, server, fleet, mut c, _) = setup(4).await;
    fleet.put(&mut c, "/f", 3 << 20, false).await;
    let before = replicas(&mut c, "/f").await;
    let node = (1..=4)
        .map(|i| format!("n{i}"))
        .find(|n| before.iter().any(|r| r.contains(n)))
        .unwrap();
    let st = c
        .decommission_node(DecommissionNodeRequest {
            node_id: node.clone(),
            cancel: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!st.safe_to_remove);
    let done = eventually(45, "drained", || {
        let mut c = c.clone();
        let node = node.clone();
        async move {
            let n = node_state(&mut c, &node).await;
            n.safe_to_remove.then_some(n)
        }
    })
    .await;
    assert_eq!(done.state, NodeState::Decommissioned as i32);
    // Every chunk has three replicas besides the drained node.
    let dl = download(&mut c, "/f").await;
    for ch in &dl.chunks {
        let id = &ch.chunk.as_ref().unwrap().chunk_id;
        let others = (1..=4)
            .map(|i| format!("n{i}"))
            .filter(|n| *n != node && fleet.holds(n, id))
            .count();
        assert_eq!(others, 3);
    }
    // New uploads avoid the drained node.
    let plan = c
        .upload_file(UploadFileRequest {
            path: "/g".into(),
            size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(plan.chunks[0].nodes.iter().all(|n| n.node_id != node));
    let err = c
        .decommission_node(DecommissionNodeRequest {
            node_id: "ghost".into(),
            cancel: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let st = c
        .decommission_node(DecommissionNodeRequest {
            node_id: node.clone(),
            cancel: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!st.safe_to_remove);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_suppresses_repair() {
    let (_d, server, fleet, mut c, _) = setup(4).await;
    fleet.put(&mut c, "/f", 10, false).await;
    let holder = download(&mut c, "/f").await.chunks[0].replicas[0]
        .node_id
        .clone();
    let st = c
        .set_node_maintenance(SetNodeMaintenanceRequest {
            node_id: holder.clone(),
            enabled: true,
            duration_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, NodeState::Maintenance as i32);
    assert!(st.maintenance_until_unix_ms > 0);
    fleet.kill(&holder);
    // Well past dead-after (1 s): still maintenance, nothing repaired.
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let n = node_state(&mut c, &holder).await;
    assert_eq!(n.state, NodeState::Maintenance as i32);
    let r = replicas(&mut c, "/f").await;
    assert_eq!(r[0].len(), 3);
    assert!(r[0].contains(&holder));
    let total_replications: usize = fleet
        .nodes
        .lock()
        .unwrap()
        .values()
        .map(|n| n.replicated_from_here)
        .sum();
    assert_eq!(total_replications, 0, "no repair during maintenance");
    // Leaving maintenance with the node still silent: it is dead, repair runs.
    c.set_node_maintenance(SetNodeMaintenanceRequest {
        node_id: holder.clone(),
        enabled: false,
        duration_seconds: 0,
    })
    .await
    .unwrap();
    eventually(45, "repair after maintenance", || {
        let mut c = c.clone();
        let h = holder.clone();
        async move {
            let r = replicas(&mut c, "/f").await;
            (r[0].len() == 3 && !r[0].contains(&h)).then_some(())
        }
    })
    .await;
    let err = c
        .set_node_maintenance(SetNodeMaintenanceRequest {
            node_id: "ghost".into(),
            enabled: true,
            duration_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_from_unregistered_node_is_not_found() {
    let (_d, server, _sim, mut c, _) = setup(1).await;
    let hb = Heartbeat {
        node_id: "stranger".into(),
        ..Default::default()
    };
    let mut stream = c
        .data_node_heartbeat(tokio_stream::iter(vec![hb]))
        .await
        .unwrap()
        .into_inner();
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("register first"));
    server.stop().await;
}
