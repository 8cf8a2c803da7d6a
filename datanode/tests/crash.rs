//! Crash safety: the real binary dies between fsync and rename; after a
//! restart no torn chunk is visible and the leftover is cleaned up. Also
//! `--exit-with-parent`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use dfs_testkit::datanode::*;
use tonic::Code;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary(dir: &std::path::Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dfs-datanode"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--coordinator", "http://127.0.0.1:9"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--insecure")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

async fn connect(
    port: u16,
) -> dfs_proto::data_node_client::DataNodeClient<tonic::transport::Channel> {
    let addr = format!("http://127.0.0.1:{port}");
    for _ in 0..3000 {
        // A connection to itself is not the datanode: with nothing
        // listening yet, Linux can pick the target port as the source port
        // and the connect "succeeds" (TCP simultaneous open). That made the
        // client below fail with "connection refused" in CI.
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
            && s.local_addr().ok() != s.peer_addr().ok()
        {
            drop(s);
            return client(&addr).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("datanode binary did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_write_and_rename_leaves_no_torn_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = binary(dir.path(), port)
        .env(dfs_datanode::store::FAULT_ENV, "crash-before-rename")
        .spawn()
        .unwrap();
    let mut c = connect(port).await;
    let id = chunk_id();
    let bytes = data(1024 * 1024, 3);
    let err = upload(&mut c, &id, &bytes, vec![], 0).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success(), "the process aborted");
    // The fsynced temp file is there, the chunk is not.
    assert_eq!(files_under(&dir.path().join("tmp")).len(), 1);
    assert!(chunk_files(dir.path()).is_empty());

    // A torn temp file written by hand is a leftover too.
    let mut f = std::fs::File::create(dir.path().join("tmp").join(format!("{}.7.tmp", chunk_id())))
        .unwrap();
    f.write_all(b"half a chunk").unwrap();
    drop(f);

    let node = TestNode::start(dir.path(), |_| {}).await;
    assert!(
        files_under(&dir.path().join("tmp")).is_empty(),
        "leftovers cleaned at start-up"
    );
    let mut c = node.client().await;
    assert_eq!(
        download(&mut c, &id, 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    // The chunk can be written again normally.
    upload(&mut c, &id, &bytes, vec![], 0).await.unwrap();
    assert!(download(&mut c, &id, 0, 0).await.unwrap() == bytes);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_with_parent_stops_when_stdin_closes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = binary(dir.path(), port)
        .arg("--exit-with-parent")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    connect(port).await;
    // The node id is persisted and stable. The port accepts connections as
    // soon as it is bound, which is before the id is written: wait for it.
    let id_path = dir.path().join("node_id");
    eventually("node_id written", || id_path.exists()).await;
    let id = std::fs::read_to_string(&id_path).unwrap();
    assert_eq!(id.trim().len(), 32);
    drop(child.stdin.take());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let node = TestNode::start(dir.path(), |_| {}).await;
    assert_eq!(node.node_id, id.trim());
    node.stop().await;
}
