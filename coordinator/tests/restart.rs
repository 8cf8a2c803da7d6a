//! Metadata survives a restart on the same data directory.
mod common;

use common::*;
use dfs_proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::default();
    let (cluster_id, plan) = {
        let server = Server::start(test_config(dir.path())).await;
        for n in ["n1", "n2", "n3"] {
            sim.spawn(&server, n, "", "").await;
        }
        let mut c = server.client().await;
        wait_healthy(&mut c, &["n1", "n2", "n3"]).await;
        c.mkdir(MkdirRequest {
            path: "/dir/sub".into(),
            parents: true,
        })
        .await
        .unwrap();
        put(&mut c, &sim, "/dir/f1", 3 << 20, false).await;
        put(&mut c, &sim, "/dir/f1", 2 << 20, true).await;
        put(&mut c, &sim, "/dir/sub/f2", 7, false).await;
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
            sim.kill(n);
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
        sim.spawn(&server, n, "", "").await;
    }
    wait_healthy(&mut c, &["n1", "n2", "n3"]).await;
    server.stop().await;

    // Third start: replay includes the confirm made after the restart.
    let server = Server::start(test_config(dir.path())).await;
    let mut c = server.client().await;
    assert_eq!(status(&mut c).await.files, 3);
    server.stop().await;
}
