//! End-to-end tests of the `dfs` tool: `dfs up` runs a real cluster (a
//! coordinator and three datanodes as separate processes) on free ports in a
//! temp dir, and the CLI talks to it like a user would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rand::RngCore;

/// A `dfs up` cluster that is stopped (and its children with it) on drop,
/// also when a test fails.
struct Cluster {
    up: Child,
    coordinator: String,
    /// The admin client identity `dfs up` printed (`client credentials:`).
    credentials: String,
    /// (service name, pid) as printed by `dfs up`.
    pids: Vec<(String, u32)>,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        Cluster::start_with(dir, 1)
    }

    /// `dfs up` with `coordinators` coordinators (a Raft group when 3).
    fn start_with(dir: &Path, coordinators: usize) -> Cluster {
        let mut up = Command::new(env!("CARGO_BIN_EXE_dfs"))
            .args(["up", "--datanodes", "3", "--listen", "127.0.0.1:0"])
            .args(["--coordinators", &coordinators.to_string()])
            .args(["--heartbeat-interval", "200ms", "--dead-after", "5s"])
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .env_remove("DFS_COORDINATOR")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dfs up starts");
        let stdout = up.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Keep draining after the test stopped listening, so the
                // supervisor never writes into a closed pipe.
                let _ = tx.send(line);
            }
        });
        let mut cluster = Cluster {
            up,
            coordinator: String::new(),
            credentials: String::new(),
            pids: Vec::new(),
        };
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => line,
                Err(e) => panic!("dfs up did not report readiness: {e}"),
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "pid") {
                cluster
                    .pids
                    .push((words[0].to_string(), words[i + 1].parse().expect("pid")));
            }
            if let Some(rest) = line.strip_prefix("client credentials: ") {
                cluster.credentials = rest.split_whitespace().next().unwrap().to_string();
            }
            if let Some(rest) = line.strip_prefix("coordinator endpoint: ") {
                cluster.coordinator = rest.split_whitespace().next().unwrap().to_string();
                break;
            }
        }
        assert_eq!(
            cluster.pids.len(),
            coordinators + 3,
            "{coordinators} coordinators and 3 datanodes: {:?}",
            cluster.pids
        );
        cluster
    }

    fn dfs(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_dfs"));
        cmd.env("DFS_COORDINATOR", &self.coordinator)
            .env("DFS_TLS_DIR", &self.credentials)
            .env("RUST_LOG", "warn")
            .timeout(Duration::from_secs(120));
        cmd
    }

    fn pid(&self, name: &str) -> u32 {
        self.pids
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.pids))
            .1
    }

    /// Stops `dfs up` with SIGTERM and waits for it (and its children).
    fn stop(mut self) {
        signal(self.up.id(), "TERM");
        let _ = self.up.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if matches!(self.up.try_wait(), Ok(None)) {
            signal(self.up.id(), "TERM");
            let _ = self.up.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

fn random_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    path
}

fn json(output: &[u8]) -> serde_json::Value {
    serde_json::from_slice(output).expect("valid JSON")
}

/// Asserts a command failed with one clear `error:` line and no panic.
fn assert_clear_error(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success(), "must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of error, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "got: {stderr}");
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "got: {stderr}");
}

#[test]
fn put_get_stat_ls_rm_and_survive_a_killed_datanode() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&tmp.path().join("data"));
    let local = random_file(tmp.path(), "in.bin", 5 * 1024 * 1024 + 12345);

    cluster.dfs().args(["mkdir", "/data"]).assert().success();
    cluster
        .dfs()
        .args(["put", "--chunk-size", "1MiB"])
        .arg(&local)
        .arg("/data/file.bin")
        .assert()
        .success();

    let out = tmp.path().join("out.bin");
    cluster
        .dfs()
        .args(["get", "/data/file.bin"])
        .arg(&out)
        .assert()
        .success();
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&local).unwrap(),
        "byte-identical"
    );

    // stat --json lists every chunk on 3 distinct nodes (once a replica
    // still writing at the upload's answer reported the chunk).
    let distinct = |chunk: &serde_json::Value| {
        let mut r: Vec<&str> = chunk["replicas"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        r.sort();
        r.dedup();
        r.len()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let stat = loop {
        let stat = cluster
            .dfs()
            .args(["stat", "--json", "/data/file.bin"])
            .output()
            .unwrap();
        assert!(stat.status.success());
        let stat = json(&stat.stdout);
        let all = stat["chunks"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| distinct(c) == 3));
        if all || std::time::Instant::now() > deadline {
            break stat;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(stat["size"], 5 * 1024 * 1024 + 12345);
    let chunks = stat["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 6);
    let mut total = 0;
    for chunk in chunks {
        let mut replicas: Vec<&str> = chunk["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        replicas.sort();
        replicas.dedup();
        assert_eq!(replicas.len(), 3, "3 distinct replicas: {chunk}");
        assert_eq!(chunk["id"].as_str().unwrap().len(), 32);
        total += chunk["size"].as_u64().unwrap();
    }
    assert_eq!(total, 5 * 1024 * 1024 + 12345);

    let ls = cluster
        .dfs()
        .args(["ls", "--json", "/data"])
        .output()
        .unwrap();
    let ls = json(&ls.stdout);
    assert_eq!(ls[0]["path"], "/data/file.bin");

    // stdin/stdout.
    cluster
        .dfs()
        .args(["put", "-", "/data/small.txt"])
        .write_stdin("hello from stdin\n")
        .assert()
        .success();
    cluster
        .dfs()
        .args(["get", "/data/small.txt", "-"])
        .assert()
        .success()
        .stdout("hello from stdin\n");

    // mv and rm.
    cluster
        .dfs()
        .args(["mv", "/data/small.txt", "/small.txt"])
        .assert()
        .success();
    cluster.dfs().args(["rm", "/small.txt"]).assert().success();
    let gone = cluster.dfs().args(["stat", "/small.txt"]).output().unwrap();
    assert_clear_error(&gone, "no such file");

    // nodes and status.
    let nodes = cluster.dfs().args(["nodes", "--json"]).output().unwrap();
    let nodes = json(&nodes.stdout);
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    let status = cluster.dfs().args(["status", "--json"]).output().unwrap();
    let status = json(&status.stdout);
    assert_eq!(status["missing_chunks"], 0);
    assert!(status["files"].as_u64().unwrap() >= 1);

    // A datanode killed with SIGKILL: the file is still readable.
    signal(cluster.pid("datanode-0"), "KILL");
    let out2 = tmp.path().join("out2.bin");
    cluster
        .dfs()
        .args(["get", "/data/file.bin"])
        .arg(&out2)
        .assert()
        .success();
    assert!(
        std::fs::read(&out2).unwrap() == std::fs::read(&local).unwrap(),
        "byte-identical after SIGKILL"
    );

    cluster.dfs().args(["rm", "-r", "/data"]).assert().success();
    let gone = cluster
        .dfs()
        .args(["stat", "/data/file.bin"])
        .output()
        .unwrap();
    assert_clear_error(&gone, "no such file");
    cluster.stop();
}

#[test]
fn restart_on_the_same_dir_keeps_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let local = random_file(tmp.path(), "in.bin", 3 * 1024 * 1024 + 7);
    let cluster = Cluster::start(&data);
    cluster
        .dfs()
        .args(["put", "--chunk-size", "1MiB"])
        .arg(&local)
        .arg("/kept.bin")
        .assert()
        .success();
    cluster.stop();

    // New ports, same directory: the datanodes re-register at new addresses.
    let cluster = Cluster::start(&data);
    let out = tmp.path().join("out.bin");
    cluster
        .dfs()
        .args(["get", "/kept.bin"])
        .arg(&out)
        .assert()
        .success();
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&local).unwrap(),
        "byte-identical after restart"
    );
    cluster.stop();
}

#[test]
fn user_errors_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();

    // Coordinator unreachable: the message names the address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_dfs"))
        .args(["--coordinator", &addr, "ls", "/"])
        .output()
        .unwrap();
    assert_clear_error(&out, &addr);

    // `dfs-data`: the CLI's default credentials are `./dfs-data/tls/admin`.
    let cluster = Cluster::start(&tmp.path().join("dfs-data"));
    let local = random_file(tmp.path(), "in.bin", 1000);

    // Secure by default: from the directory `dfs up` ran in, the CLI finds
    // the admin identity by itself (the README's commands, unchanged)...
    let out = cluster
        .dfs()
        .env_remove("DFS_TLS_DIR")
        .current_dir(tmp.path())
        .args(["ls", "/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cluster.coordinator.starts_with("https://"),
        "{}",
        cluster.coordinator
    );
    // ...and elsewhere, without credentials, it says what to do.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = cluster
        .dfs()
        .env_remove("DFS_TLS_DIR")
        .current_dir(&elsewhere)
        .args(["ls", "/"])
        .output()
        .unwrap();
    assert_clear_error(&out, "no client credentials were found: set DFS_TLS_DIR");
    // A plain-text URL to the TLS cluster is refused.
    let plain = cluster.coordinator.replacen("https://", "http://", 1);
    let out = cluster
        .dfs()
        .env("DFS_COORDINATOR", &plain)
        .args(["ls", "/"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "plain text was served");

    // Missing local file.
    let out = cluster
        .dfs()
        .args(["put", "/no/such/local/file", "/x"])
        .output()
        .unwrap();
    assert_clear_error(&out, "/no/such/local/file");

    // Remote path not found.
    let out = cluster
        .dfs()
        .args(["get", "/missing.bin"])
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert_clear_error(&out, "/missing.bin: no such file");

    // Too few datanodes for the replication factor.
    let out = cluster
        .dfs()
        .args(["put", "-r", "5"])
        .arg(&local)
        .arg("/r5")
        .output()
        .unwrap();
    assert_clear_error(&out, "datanode");

    // Path already exists, then --overwrite replaces it.
    cluster
        .dfs()
        .arg("put")
        .arg(&local)
        .arg("/dup")
        .assert()
        .success();
    let out = cluster
        .dfs()
        .arg("put")
        .arg(&local)
        .arg("/dup")
        .output()
        .unwrap();
    assert_clear_error(&out, "already exists");
    cluster
        .dfs()
        .args(["put", "--overwrite"])
        .arg(&local)
        .arg("/dup")
        .assert()
        .success();

    // Bad path and bad size suffix.
    let out = cluster
        .dfs()
        .arg("put")
        .arg(&local)
        .arg("relative/../path")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = cluster
        .dfs()
        .args(["put", "--chunk-size", "4parsecs"])
        .arg(&local)
        .arg("/y")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("4parsecs"));
    cluster.stop();
}

/// `dfs bench --json` against a real cluster: every row a user compares
/// (large put, first read, each re-read, small put/stat/get with latencies)
/// with figures that add up, and nothing left behind in the namespace.
#[test]
fn bench_measures_every_operation_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&tmp.path().join("data"));
    for extra in [&[][..], &["--no-batching"][..]] {
        let out = cluster
            .dfs()
            .args(["bench", "--size", "3MiB", "--chunk-size", "1MiB"])
            .args(["--small-files", "40", "--rereads", "2", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = json(&out.stdout);
        let rows = rows.as_array().expect("an array of rows");
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r["operation"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "put 3.0 MiB x1",
                "get 3.0 MiB x1 (verified, first read)",
                "get 3.0 MiB x1 (verified, re-read 1)",
                "get 3.0 MiB x1 (verified, re-read 2)",
                "put 4.0 KiB (c=16)",
                "stat (c=16)",
                "get 4.0 KiB (c=16)",
            ],
            "{extra:?}"
        );
        for r in rows {
            let (ops, bytes, secs) = (
                r["ops"].as_u64().unwrap(),
                r["bytes"].as_u64().unwrap(),
                r["seconds"].as_f64().unwrap(),
            );
            assert!(secs > 0.0, "{r}");
            let rate = r["ops_per_second"].as_f64().unwrap();
            assert!(
                (rate - ops as f64 / secs).abs() < 1e-6 * rate.max(1.0),
                "{r}"
            );
            let throughput = r["bytes_per_second"].as_f64().unwrap();
            assert!(
                (throughput - bytes as f64 / secs).abs() < 1e-6 * throughput.max(1.0),
                "{r}"
            );
            if ops == 40 {
                let (p50, p99) = (r["p50_ms"].as_f64().unwrap(), r["p99_ms"].as_f64().unwrap());
                assert!(p50 > 0.0 && p50 <= p99, "{r}");
            } else {
                assert_eq!((ops, bytes), (1, 3 << 20), "{r}");
                assert!(r["p50_ms"].is_null(), "{r}");
            }
        }
    }
    let ls = cluster.dfs().args(["ls", "/", "--json"]).output().unwrap();
    assert!(ls.status.success());
    assert_eq!(
        json(&ls.stdout).as_array().map(Vec::len),
        Some(0),
        "the bench directory is removed: {}",
        String::from_utf8_lossy(&ls.stdout)
    );
    cluster.stop();
}

#[test]
fn safe_mode_is_shown_and_an_admin_enters_and_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    // Safe mode after start ends once the datanodes reported.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = cluster.dfs().args(["status", "--json"]).output().unwrap();
        let status = json(&out.stdout);
        if status["safe_mode"]["active"] == false {
            assert_eq!(status["safe_mode"]["manual"], false);
            assert!(status["delete_budget"]["deferred"].is_u64());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still in safe mode: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = cluster.dfs().args(["safemode", "enter"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("safe mode: ON"), "{text}");
    let out = cluster.dfs().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SAFE MODE") && text.contains("entered by an admin"),
        "{text}"
    );
    let out = cluster.dfs().args(["safemode", "leave"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("safe mode: off"));
    let out = cluster.dfs().args(["nodes", "--json"]).output().unwrap();
    let nodes = json(&out.stdout);
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    assert_eq!(nodes[0]["quarantined_chunks"], 0);
    cluster.stop();
}

/// The ids of the coordinators `dfs status --json` calls leader.
fn leader_ids(status: &serde_json::Value) -> Vec<u64> {
    status["coordinators"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "leader")
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

/// `dfs up --coordinators 3`: the namespace is replicated on three
/// coordinators; SIGKILL the leader and the CLI (given the whole group)
/// keeps writing and reading, and the status shows the new leader.
#[test]
fn three_coordinators_survive_a_killed_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_with(&tmp.path().join("data"), 3);
    assert_eq!(
        cluster.coordinator.split(',').count(),
        3,
        "{}",
        cluster.coordinator
    );
    let src = random_file(tmp.path(), "a.bin", 3 << 20);
    cluster
        .dfs()
        .args(["put"])
        .arg(&src)
        .arg("/a.bin")
        .assert()
        .success();
    let status = |c: &Cluster| json(&c.dfs().args(["status", "--json"]).output().unwrap().stdout);
    let s = status(&cluster);
    let leaders = leader_ids(&s);
    assert_eq!(leaders.len(), 1, "{s}");
    let old = leaders[0];
    signal(cluster.pid(&format!("coordinator-{old}")), "KILL");
    // Writes and reads resume through the new leader.
    let again = random_file(tmp.path(), "b.bin", 1 << 20);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cluster
        .dfs()
        .args(["put"])
        .arg(&again)
        .arg("/b.bin")
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no write after the leader's kill"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = tmp.path().join("a.out");
    cluster
        .dfs()
        .args(["get", "/a.bin"])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    // The status names one new leader (polled: on a loaded machine a member
    // may not answer one status call in time, and its row is then empty).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&cluster);
        let now = leader_ids(&s);
        if now.len() == 1 && now[0] != old {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no single new leader after the kill of {old}: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.stop();
}

/// A coordinator process (`dfs coordinator …`), killed when dropped.
struct CoordinatorProc(Child);

impl Drop for CoordinatorProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dfs coordinators add` and `voters` grow a group of one by hand: the
/// new member is a learner, then a voter; a voter that is not a member is
/// refused with one clear line.
#[test]
fn coordinators_are_added_and_promoted_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    // Never the same port twice in this process.
    let p1 = dfs_testkit::process::free_addr().port();
    let p2 = dfs_testkit::process::free_addr().port();
    let (u1, u2) = (
        format!("http://127.0.0.1:{p1}"),
        format!("http://127.0.0.1:{p2}"),
    );
    let start = |id: u64, port: u16, extra: &[&str]| {
        CoordinatorProc(
            Command::new(env!("CARGO_BIN_EXE_dfs"))
                .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--metrics-addr", "127.0.0.1:0", "--exit-with-parent"])
                .arg("--data-dir")
                .arg(dir.path().join(format!("c{id}")))
                .args(["--raft-id", &id.to_string(), "--peers", &format!("1={u1}")])
                .arg("--insecure")
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dfs coordinator starts"),
        )
    };
    let _c1 = start(1, p1, &[]);
    let _c2 = start(2, p2, &["--initial-cluster-state", "existing"]);
    let dfs = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dfs"))
            .args(["--coordinator", &u1])
            .args(args)
            .env_remove("DFS_COORDINATOR")
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let added = loop {
        let out = dfs(&["coordinators", "add", "2", &u2]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "add never succeeded: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        added
            .lines()
            .any(|l| l.contains("coordinator:  2") && l.contains("learner")),
        "{added}"
    );
    let out = dfs(&["coordinators", "voters", "1,2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = json(&dfs(&["status", "--json"]).stdout);
    let voters: Vec<u64> = status["coordinators"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["voter"] == true)
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(voters, vec![1, 2]);
    assert_clear_error(
        &dfs(&["coordinators", "voters", "1,9"]),
        "coordinator 9 is not a member",
    );
}
