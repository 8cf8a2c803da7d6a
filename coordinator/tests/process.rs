//! The real binary: SIGKILL keeps every confirmed file; --exit-with-parent.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dfs_proto::*;
use dfs_testkit::coordinator::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &std::path::Path, port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dfs-coordinator"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir)
        .arg("--insecure")
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn connect(port: u16) -> Client {
    let url = format!("http://127.0.0.1:{port}");
    eventually(20, "coordinator up", || {
        let url = url.clone();
        async move {
            let ch = dfs_common::transport::endpoint(&url, Duration::from_secs(1))
                .unwrap()
                .connect()
                .await
                .ok()?;
            Some(dfs_proto::coordinator_client::CoordinatorClient::new(ch))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_confirmed_files() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(dir.path(), port, &[]);
    let c = connect(port).await;
    for i in 0..3 {
        c.clone()
            .register_data_node(RegisterDataNodeRequest {
                node_id: format!("n{i}"),
                address: format!("http://127.0.0.1:{}", 7101 + i),
                info: Some(info()),
                topology: None,
                version: String::new(),
                cluster_id: String::new(),
            })
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let plan = c
                .upload_file(UploadFileRequest {
                    path: format!("/k/f{i}"),
                    size: 100 + i,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            confirm_all(&mut c, &plan).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let port = free_port();
    let mut child = spawn(dir.path(), port, &[]);
    let mut c = connect(port).await;
    for i in 0..40u64 {
        let st = c
            .stat(StatRequest {
                path: format!("/k/f{i}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.size, 100 + i);
    }
    assert_eq!(status(&mut c).await.files, 40);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_gracefully_when_stdin_closes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(dir.path(), port, &["--exit-with-parent"]);
    connect(port).await;
    drop(child.stdin.take());
    let status = eventually(20, "coordinator exit", || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "{status:?}");
}

/// The real binary fails stop: once its metadata log cannot be written it
/// exits with a non-zero status instead of serving a state the disk does not
/// hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_write_failure_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("disk-fails");
    let data = dir.path().join("meta");
    let port = free_port();
    let mut child = spawn(
        &data,
        port,
        &["--fault-fail-log-writes-when", trigger.to_str().unwrap()],
    );
    let mut c = connect(port).await;
    c.mkdir(MkdirRequest {
        path: "/before".into(),
        parents: true,
    })
    .await
    .unwrap();
    std::fs::write(&trigger, b"").unwrap();
    let err = c
        .mkdir(MkdirRequest {
            path: "/after".into(),
            parents: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let status = eventually(20, "coordinator exit", || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(!status.success(), "exited with {status:?}");
    // Restarted on a good disk: what was acknowledged is there, what was
    // refused is not.
    std::fs::remove_file(&trigger).unwrap();
    let port = free_port();
    let mut child = spawn(&data, port, &[]);
    let mut c = connect(port).await;
    let st = |p: &str| StatRequest { path: p.into() };
    c.stat(st("/before")).await.unwrap();
    assert_eq!(
        c.stat(st("/after")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
