//! The client library against an in-process cluster (a real coordinator and
//! real datanodes on 127.0.0.1:0): a chunk whose planned primary is gone is
//! re-planned on other nodes, and a read falls over to the next replica when
//! one is unreachable or holds bad bytes.
//!
//! These tests live here rather than in `client/` so that the client crate's
//! dependency tree, dev-dependencies included, holds no server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use dfs_client::{Client, ClientConfig, PutOptions};
use dfs_testkit::coordinator::Server;
use dfs_testkit::datanode::TestNode;
use rand::RngCore;

/// A coordinator whose heartbeat interval is long enough that a stopped
/// datanode still looks healthy to placement for the whole test.
fn coordinator_config(dir: &Path) -> dfs_coordinator::Config {
    dfs_coordinator::Config::try_parse_from([
        "dfs-coordinator",
        "--data-dir",
        dir.to_str().unwrap(),
        "--replication",
        "3",
        "--heartbeat-interval",
        "500ms",
        "--suspect-after",
        "30s",
        "--dead-after",
        "60s",
        "--insecure",
    ])
    .unwrap()
}

/// A coordinator (its gRPC endpoint and metrics address) and `n` datanodes
/// (hosts host-0…) under `dir`.
async fn start_cluster(dir: &Path, n: usize) -> (String, SocketAddr, Vec<TestNode>) {
    let server = Server::start(coordinator_config(&dir.join("coordinator"))).await;
    let (coordinator, metrics) = (server.url.clone(), server.metrics);
    // The coordinator runs until the test's runtime ends.
    std::mem::forget(server);
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = TestNode::start(&dir.join(format!("dn{i}")), |c| {
            c.coordinator = coordinator.clone();
            c.host = format!("host-{i}");
            c.heartbeat_interval = Duration::from_millis(200);
        })
        .await;
        nodes.push(node);
    }
    (coordinator, metrics, nodes)
}

async fn wait_for_nodes(client: &Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Registered is not enough: placement needs a heartbeat with free
        // space (a put right after registration found 2 of 3 usable).
        let usable = client.nodes().await.map_or(0, |v| {
            v.iter()
                .filter(|n| n.state == Some(dfs_client::NodeState::Healthy) && n.free_bytes > 0)
                .count()
        });
        if usable >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} datanodes did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn chunk_file(node: &TestNode, chunk_id: &str) -> PathBuf {
    node.dir.join("chunks").join(&chunk_id[0..2]).join(chunk_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replans_around_a_dead_primary_and_reads_around_bad_replicas() {
    let tmp = tempfile::tempdir().unwrap();
    let (coordinator, _, mut nodes) = start_cluster(tmp.path(), 4).await;
    let mut config = ClientConfig::new(&coordinator);
    config.connect_timeout = Duration::from_secs(2);
    let client = Client::connect(config).await.unwrap();
    wait_for_nodes(&client, 4).await;

    // Stop node 0: the coordinator still believes it healthy, so plans name
    // it, and every chunk placed on it must be re-planned elsewhere.
    let dead = nodes.remove(0);
    let dead_id = dead.node_id.clone();
    dead.stop().await;

    let mut data = vec![0u8; 8 * 1024 * 1024 + 999];
    rand::rng().fill_bytes(&mut data);
    let options = PutOptions {
        chunk_size: 512 * 1024,
        ..PutOptions::default()
    };
    let info = client
        .put_bytes(Bytes::from(data.clone()), "/replanned.bin", &options)
        .await
        .expect("upload succeeds around the dead node");
    assert_eq!(info.size, data.len() as u64);

    // Every chunk was confirmed on at least the write quorum of running
    // nodes, never on the stopped one; chunks that lost a replica target
    // mid-upload are then repaired back to the factor by the coordinator.
    let map = client.chunk_map("/replanned.bin").await.unwrap();
    assert_eq!(map.chunks.len(), 17);
    for chunk in &map.chunks {
        let ids: Vec<&str> = chunk.replicas.iter().map(|r| r.node_id.as_str()).collect();
        assert!(
            ids.len() >= 2,
            "chunk {} below quorum on {ids:?}",
            chunk.index
        );
        assert!(
            !ids.contains(&dead_id.as_str()),
            "nothing confirmed on the stopped node"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let map = loop {
        let map = client.chunk_map("/replanned.bin").await.unwrap();
        if map.chunks.iter().all(|c| c.replicas.len() == 3) {
            break map;
        }
        assert!(
            Instant::now() < deadline,
            "chunks not repaired to 3 replicas: {map:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut out = Vec::new();
    client.get("/replanned.bin", &mut out).await.unwrap();
    assert!(out == data, "byte-identical");

    // Flip a byte of chunk 0 on its first replica: the read falls over to
    // the next replica and still returns the right bytes.
    let first = &map.chunks[0];
    let chunk_id = first.chunk_id.as_str();
    let victim = nodes
        .iter()
        .find(|n| first.replicas[0].node_id == n.node_id)
        .expect("first replica is a running node");
    let path = chunk_file(victim, chunk_id);
    let mut bytes = std::fs::read(&path).expect("chunk file exists");
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let local = tmp.path().join("copy.bin");
    client.get_file("/replanned.bin", &local).await.unwrap();
    assert!(
        std::fs::read(&local).unwrap() == data,
        "byte-identical despite bit rot"
    );
    assert!(client.verify("/replanned.bin").await.is_ok());

    for node in nodes {
        node.stop().await;
    }
}

/// `get_file` to a path that is not a regular file (here a FIFO, as
/// `/dev/null` or a pipe would be) writes into it instead of renaming a
/// temp file over it; a directory is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_file_writes_into_a_fifo_instead_of_replacing_it() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let (coordinator, _, nodes) = start_cluster(tmp.path(), 3).await;
    let client = Client::connect(ClientConfig::new(&coordinator))
        .await
        .unwrap();
    wait_for_nodes(&client, 3).await;
    let mut data = vec![0u8; 3 * 1024 * 1024 + 17];
    rand::rng().fill_bytes(&mut data);
    let options = PutOptions {
        chunk_size: 1024 * 1024,
        ..PutOptions::default()
    };
    client
        .put_bytes(Bytes::from(data.clone()), "/to-fifo.bin", &options)
        .await
        .unwrap();

    let fifo = tmp.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader_path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(&reader_path));
    });
    client.get_file("/to-fifo.bin", &fifo).await.unwrap();
    let read = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the FIFO's reader got the file")
        .unwrap();
    assert!(read == data, "the bytes read from the FIFO are the file");
    assert!(
        std::fs::metadata(&fifo).unwrap().file_type().is_fifo(),
        "the FIFO is still a FIFO"
    );

    let err = client
        .get_file("/to-fifo.bin", tmp.path())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
    for n in nodes {
        n.stop().await;
    }
}

/// Small files put at the same time through one client share UploadFiles
/// and ConfirmUploads calls: every file is stored and readable, each upload
/// is planned and confirmed exactly once, in fewer calls than files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_small_puts_share_batched_plans_and_confirms() {
    let tmp = tempfile::tempdir().unwrap();
    let (coordinator, metrics, nodes) = start_cluster(tmp.path(), 3).await;
    let client = Client::connect(ClientConfig::new(&coordinator))
        .await
        .unwrap();
    wait_for_nodes(&client, 3).await;
    let files = 64;
    let payload = |i: usize| Bytes::from(vec![i as u8; 4096 + i]);
    let puts = (0..files).map(|i| {
        let client = &client;
        async move {
            client
                .put_bytes(payload(i), &format!("/small/{i}"), &PutOptions::default())
                .await
        }
    });
    for (i, info) in futures::future::join_all(puts)
        .await
        .into_iter()
        .enumerate()
    {
        let info = info.unwrap_or_else(|e| panic!("put {i}: {e}"));
        assert_eq!((info.size, info.chunk_count), (4096 + i as u64, 1));
    }
    // An existing path without overwrite is refused for its own put only,
    // while others in the same batches go through.
    let again = (0..8).map(|i| {
        let client = &client;
        async move {
            let path = if i % 2 == 0 {
                format!("/small/{i}")
            } else {
                format!("/more/{i}")
            };
            client
                .put_bytes(payload(i), &path, &PutOptions::default())
                .await
        }
    });
    for (i, r) in futures::future::join_all(again)
        .await
        .into_iter()
        .enumerate()
    {
        match r {
            Err(e) if i % 2 == 0 => assert!(e.to_string().contains("exists"), "{e}"),
            Ok(_) if i % 2 == 1 => {}
            other => panic!("put {i}: {other:?}"),
        }
    }
    for i in 0..files {
        let mut out = Vec::new();
        client.get(&format!("/small/{i}"), &mut out).await.unwrap();
        assert_eq!(out, payload(i), "file {i}");
    }

    let text = dfs_common::http::scrape(metrics).await.unwrap();
    let count = |method: &str, code: &str| {
        let series =
            format!("dfs_coordinator_rpc_requests_total{{code=\"{code}\",method=\"{method}\"}}");
        dfs_common::http::sample(&text, &series).unwrap_or(0.0) as usize
    };
    assert_eq!(count("UploadFile", "ok"), files + 4);
    assert_eq!(count("UploadFile", "already_exists"), 4);
    assert_eq!(count("ConfirmUpload", "ok"), files + 4);
    let plan_calls = count("UploadFiles", "ok");
    let confirm_calls = count("ConfirmUploads", "ok");
    assert!(
        plan_calls >= 1 && confirm_calls >= 1,
        "no batch was sent:\n{text}"
    );
    // Calls that were batched are not also sent alone.
    let batched = dfs_common::http::sample(
        &text,
        "dfs_coordinator_batched_calls_total{method=\"UploadFile\"}",
    )
    .unwrap_or(0.0) as usize;
    let planned_alone = files + 8 - batched;
    assert!(
        plan_calls + planned_alone < files,
        "{plan_calls} UploadFiles calls and {planned_alone} unary UploadFile for {files} files"
    );
    for n in nodes {
        n.stop().await;
    }
}
