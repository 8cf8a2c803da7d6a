//! End to end: the real `dfs-operator` binary against a Kubernetes API
//! emulator (kmock + the shim in `scripts/operator-e2e/kapi.py`), driven with
//! `kubectl`: apply the CRD and a DfsCluster, see the StatefulSet and
//! DaemonSet appear, change the spec and see them follow, hand-edit the
//! StatefulSet and see it repaired, delete the cluster and see the finalizer
//! released.
//!
//! Needs the venv made by `scripts/operator-e2e/setup.sh`
//! (`${DFS_VENV:-$HOME/.cache/dfs-venv}`), which the test runs itself when
//! the venv is missing, and `kubectl`. Without them the test fails: it never
//! passes without running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills and reaps a child process on drop (also when a test panics).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python, made first when it is missing or incomplete: the
/// test sets up its own environment (`scripts/operator-e2e/setup.sh`, pip
/// from PyPI) rather than passing without running.
fn venv_python() -> Result<PathBuf, String> {
    let venv = std::env::var_os("DFS_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/dfs-venv")))
        .ok_or("neither DFS_VENV nor HOME is set")?;
    let python = venv.join("bin/python");
    let usable = || {
        Command::new(&python)
            .args(["-c", "import kmock, aiohttp, jsonpatch, yaml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !usable() {
        eprintln!(
            "operator e2e: no usable venv at {}; creating it",
            venv.display()
        );
        let setup = Command::new("bash")
            .arg(repo_root().join("scripts/operator-e2e/setup.sh"))
            .env("DFS_VENV", &venv)
            .status()
            .map_err(|e| format!("cannot run scripts/operator-e2e/setup.sh: {e}"))?;
        if !setup.success() || !usable() {
            return Err(format!(
                "scripts/operator-e2e/setup.sh could not make a usable venv at {} ({setup})",
                venv.display()
            ));
        }
    }
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !kubectl {
        return Err("kubectl is not on PATH".into());
    }
    Ok(python)
}

struct Env {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    _shim: Guard,
    operator: Option<Guard>,
}

impl Env {
    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .map_err(|e| format!("failed to run kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn must(&self, args: &[&str]) -> String {
        self.kubectl(args).unwrap_or_else(|e| self.fail(&e))
    }

    fn apply(&self, name: &str, yaml: &str) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).expect("write manifest");
        self.must(&[
            "apply",
            "--validate=false",
            "-f",
            path.to_str().expect("utf-8 path"),
        ]);
    }

    fn operator_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("operator.log")).unwrap_or_default()
    }

    fn fail(&self, why: &str) -> ! {
        let log = self.operator_log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let shim = std::fs::read_to_string(self.dir.path().join("shim.log")).unwrap_or_default();
        panic!(
            "{why}\n--- operator log (last lines) ---\n{}\n--- shim log ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            shim.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
    }

    /// Polls `kubectl get <args> -o jsonpath=<path>` until it equals `want`.
    fn wait_for(&self, what: &str, args: &[&str], jsonpath: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let jp = format!("jsonpath={jsonpath}");
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut full: Vec<&str> = vec!["get"];
            full.extend_from_slice(args);
            full.extend_from_slice(&["-o", &jp]);
            match self.kubectl(&full) {
                Ok(v) if v.trim() == want => return,
                Ok(v) => last = v,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.fail(&format!(
            "timed out waiting for {what}: want {want:?}, last {last:?}"
        ));
    }

    fn start_operator(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("operator.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dfs-operator"))
            .args([
                "run",
                "--metrics-addr",
                "127.0.0.1:0",
                "--coordinator-timeout",
                "1s",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", "default")
            .env("POD_NAME", "dfs-operator-e2e")
            .env("RUST_LOG", "info,dfs_operator=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dfs-operator");
        self.operator = Some(Guard(child));
    }
}

/// A plain HTTP/1.1 GET, returning the whole response.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read");
    out
}

fn start(python: &Path) -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let port_file = dir.path().join("port");
    let shim_log = std::fs::File::create(dir.path().join("shim.log")).expect("log file");
    let child = Command::new(python)
        .arg(repo_root().join("scripts/operator-e2e/kapi.py"))
        .arg("--port-file")
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(shim_log)
        .spawn()
        .expect("start the API emulator");
    let shim = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            break p.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the API emulator did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: e2e, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: e2e, user: {{}}}}]\ncontexts: [{{name: e2e, context: {{cluster: e2e, user: e2e, namespace: default}}}}]\n\
             current-context: e2e\n"
        ),
    )
    .expect("write kubeconfig");
    Env {
        dir,
        kubeconfig,
        _shim: shim,
        operator: None,
    }
}

#[test]
fn operator_reconciles_scales_and_repairs() {
    // No skipping: an environment that cannot be made is a failure.
    let python = venv_python().unwrap_or_else(|why| panic!("operator e2e cannot run: {why}"));
    let mut env = start(&python);

    let crd = Command::new(env!("CARGO_BIN_EXE_dfs-operator"))
        .arg("crd")
        .output()
        .expect("dfs-operator crd");
    env.apply("crd.yaml", &String::from_utf8(crd.stdout).expect("utf-8"));
    env.apply(
        "nodes.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-1}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: node-b, labels: {topology.kubernetes.io/zone: zone-2}}\n",
    );
    env.start_operator();
    env.apply(
        "cluster.yaml",
        "apiVersion: dfs.io/v1alpha1\nkind: DfsCluster\nmetadata: {name: demo, namespace: default}\nspec:\n  coordinator: {replicas: 1}\n",
    );

    // Created: StatefulSet, DaemonSet, finalizer, status, topology.
    env.wait_for(
        "the StatefulSet",
        &["statefulset", "demo-coordinator"],
        "{.spec.replicas}",
        "1",
    );
    env.wait_for(
        "the DaemonSet",
        &["daemonset", "demo-datanode"],
        "{.spec.updateStrategy.type}",
        "OnDelete",
    );
    env.wait_for(
        "the finalizer",
        &["dfs", "demo"],
        "{.metadata.finalizers[0]}",
        "dfs.io/cleanup",
    );
    env.wait_for(
        "the status",
        &["dfs", "demo"],
        "{.status.observedGeneration}",
        "1",
    );
    env.wait_for(
        "the topology map",
        &["configmap", "demo-topology"],
        "{.data.node-b}",
        "zone-2",
    );
    let owner = env.must(&[
        "get",
        "statefulset",
        "demo-coordinator",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(owner, "DfsCluster");
    let printed = env.must(&["get", "dfs"]);
    assert!(
        printed.contains("demo") && printed.contains("DATANODES"),
        "{printed}"
    );

    // Changed: the spec change reaches the workloads (coordinator.replicas
    // stays 1: the operator refuses more until the coordinator is replicated).
    env.must(&[
        "patch",
        "dfs",
        "demo",
        "--type=merge",
        "-p",
        r#"{"spec":{"image":{"tag":"9.9.9"}}}"#,
    ]);
    env.wait_for(
        "the new coordinator image",
        &["statefulset", "demo-coordinator"],
        "{.spec.template.spec.containers[0].image}",
        "dfs:9.9.9",
    );
    env.wait_for(
        "the new datanode image",
        &["daemonset", "demo-datanode"],
        "{.spec.template.spec.containers[0].image}",
        "dfs:9.9.9",
    );
    env.wait_for(
        "the status",
        &["dfs", "demo"],
        "{.status.observedGeneration}",
        "2",
    );

    // Repaired: a hand edit of an owned object is put back.
    env.must(&[
        "patch",
        "statefulset",
        "demo-coordinator",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":7}}"#,
    ]);
    env.wait_for(
        "the repaired StatefulSet",
        &["statefulset", "demo-coordinator"],
        "{.spec.replicas}",
        "1",
    );

    // Pruned: metrics disabled, the metrics Services go.
    env.must(&[
        "patch",
        "dfs",
        "demo",
        "--type=merge",
        "-p",
        r#"{"spec":{"metrics":{"enabled":false}}}"#,
    ]);
    env.wait_for(
        "the pruned Services",
        &["services", "-l", "dfs.io/metrics=true"],
        "{.items[*].metadata.name}",
        "",
    );
    env.wait_for(
        "the client Service",
        &["service", "demo-coordinator"],
        "{.spec.ports[0].port}",
        "7000",
    );

    // Invalid: a spec the schema would refuse (the emulator does not check
    // it) is reported and waits; fixing it resumes.
    env.must(&[
        "patch",
        "dfs",
        "demo",
        "--type=merge",
        "-p",
        r#"{"spec":{"replication":0}}"#,
    ]);
    env.wait_for(
        "the Invalid phase",
        &["dfs", "demo"],
        "{.status.phase}",
        "Invalid",
    );
    let events = env.must(&[
        "get",
        "events.v1.events.k8s.io",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("InvalidSpec"), "events: {events:?}");
    env.must(&[
        "patch",
        "dfs",
        "demo",
        "--type=merge",
        "-p",
        r#"{"spec":{"replication":2}}"#,
    ]);
    env.wait_for(
        "the new configuration",
        &["configmap", "demo-config"],
        "{.data.replication}",
        "2",
    );

    // Leader election ran; /metrics and /healthz are served.
    let log = env.operator_log();
    assert!(log.contains("became leader"), "{log}");
    let lease = env.must(&[
        "get",
        "lease",
        "dfs-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease, "dfs-operator-e2e");
    let addr = log
        .lines()
        .find_map(|l| l.split("metrics_addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| env.fail("no metrics address logged"))
        .to_string();
    let metrics = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("dfs_operator_reconciles_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dfs_operator_reconcile_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1 200"));

    // No hot loop: a settled cluster is reconciled on its requeue timer only
    // (its own status writes and no-op applies trigger nothing).
    let reconciles = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("dfs_operator_reconciles_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = reconciles(&http_get(&addr, "/metrics"));
    std::thread::sleep(Duration::from_secs(3));
    let after = reconciles(&http_get(&addr, "/metrics"));
    assert!(
        after - before <= 1,
        "{} reconciles in 3 s of quiet",
        after - before
    );

    // Deleted: the finalizer is released and the object goes.
    env.must(&["delete", "dfs", "demo", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.kubectl(&["get", "dfs", "demo"]).is_ok() {
        if Instant::now() > deadline {
            env.fail("the DfsCluster was not released after deletion");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(env.operator.take());
}
