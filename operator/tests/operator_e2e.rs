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
        self.wait_within(60, what, args, jsonpath, want);
    }

    /// [`Env::wait_for`] with a deadline of `secs` seconds.
    fn wait_within(&self, secs: u64, what: &str, args: &[&str], jsonpath: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(secs);
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
        self.start_operator_with(&[]);
    }

    fn start_operator_with(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join("operator.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dfs-operator"))
            .args([
                "run",
                "--metrics-addr",
                "127.0.0.1:0",
                "--coordinator-timeout",
                "1s",
            ])
            .args(extra)
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
    // TLS by default: the CA, the token keys and every identity exist as
    // Secrets (one datanode pair per Kubernetes node), and no pod runs
    // plain text.
    for secret in [
        "demo-ca",
        "demo-token-keys",
        "demo-coordinator-tls",
        "demo-admin-tls",
    ] {
        env.wait_for(secret, &["secret", secret], "{.metadata.name}", secret);
    }
    env.wait_for(
        "the datanode identities",
        &["secret", "demo-datanode-tls"],
        "{.metadata.name}",
        "demo-datanode-tls",
    );
    let keys = env.must(&[
        "get",
        "secret",
        "demo-datanode-tls",
        "-o",
        "go-template={{range $k, $v := .data}}{{$k}} {{end}}",
    ]);
    assert_eq!(
        keys.trim(),
        "ca.crt node-a.crt node-a.key node-b.crt node-b.key",
        "{keys}"
    );
    // A node that joins is seen when it joins, not at the next periodic
    // reconcile (10 s busy, 60 s idle): its datanode pod cannot start
    // before its identity exists.
    env.apply(
        "node-c.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-c, labels: {topology.kubernetes.io/zone: zone-3}}\n",
    );
    env.wait_within(
        8,
        "the joining node in the topology map",
        &["configmap", "demo-topology"],
        "{.data.node-c}",
        "zone-3",
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let keys = env.must(&[
            "get",
            "secret",
            "demo-datanode-tls",
            "-o",
            "go-template={{range $k, $v := .data}}{{$k}} {{end}}",
        ]);
        if keys.contains("node-c.crt") && keys.contains("node-c.key") {
            break;
        }
        if Instant::now() > deadline {
            env.fail(&format!("no identity for the joining node: {keys}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let args = env.must(&[
        "get",
        "statefulset",
        "demo-coordinator",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ]);
    assert!(
        args.contains("--tls-dir") && !args.contains("--insecure"),
        "{args}"
    );
    env.wait_for(
        "the NetworkPolicy",
        &["networkpolicy", "demo-dfs"],
        "{.spec.policyTypes[0]}",
        "Ingress",
    );
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

/// A coordinator pod of cluster `demo`, running (the emulator runs no pods:
/// the test makes them as the StatefulSet would).
fn coordinator_pod(env: &Env, ordinal: u64) -> String {
    let hash = env.must(&[
        "get",
        "statefulset",
        "demo-coordinator",
        "-o",
        "jsonpath={.spec.template.metadata.annotations.dfs\\.io/template-hash}",
    ]);
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: demo-coordinator-{ordinal}\n  namespace: default\n  \
         annotations: {{dfs.io/template-hash: \"{hash}\"}}\n  labels:\n    \
         app.kubernetes.io/name: dfs\n    app.kubernetes.io/instance: demo\n    app.kubernetes.io/component: coordinator\n\
         spec:\n  containers: [{{name: coordinator, image: dfs}}]\n"
    )
}

/// Scaling the coordinators 1 → 3 → 5 → 3 makes the membership calls in
/// order (learners as their pods run, promoted together; surplus voters
/// removed before their pods go), and a member on an empty volume is removed
/// and added again: the real operator against the API emulator and a faked
/// coordinator group.
#[test]
fn operator_scales_the_coordinator_group_by_membership_calls() {
    let python = venv_python().unwrap_or_else(|why| panic!("operator e2e cannot run: {why}"));
    let mut env = start(&python);
    let group = fake_group::Group::of_one();
    let url = group.serve();
    let crd = Command::new(env!("CARGO_BIN_EXE_dfs-operator"))
        .arg("crd")
        .output()
        .expect("dfs-operator crd");
    env.apply("crd.yaml", &String::from_utf8(crd.stdout).expect("utf-8"));
    env.start_operator_with(&["--coordinator-url", &url]);
    env.apply(
        "cluster.yaml",
        // The faked group speaks plain text.
        "apiVersion: dfs.io/v1alpha1\nkind: DfsCluster\nmetadata: {name: demo, namespace: default}\nspec:\n  coordinator: {replicas: 1}\n  security: {tls: false}\n",
    );
    env.wait_for(
        "the StatefulSet",
        &["statefulset", "demo-coordinator"],
        "{.spec.replicas}",
        "1",
    );
    env.apply("pod0.yaml", &coordinator_pod(&env, 0));
    env.wait_for(
        "the group to be marked formed",
        &["configmap", "demo-coordinator-group"],
        "{.data.initialClusterState}",
        "existing",
    );
    let member = |i: u64| {
        format!(
            "http://demo-coordinator-{}.demo-coordinator-headless.default.svc:7000",
            i - 1
        )
    };
    let wait_calls = |env: &Env, want: &[String]| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got: Vec<String> = Vec::new();
        while got.len() < want.len() && Instant::now() < deadline {
            got.extend(group.take_calls());
            std::thread::sleep(Duration::from_millis(100));
        }
        // Nothing more once the group is as wanted.
        std::thread::sleep(Duration::from_millis(1500));
        got.extend(group.take_calls());
        if got != want {
            env.fail(&format!("membership calls: got {got:?}, want {want:?}"));
        }
    };
    let scale = |env: &Env, n: u64| {
        env.must(&[
            "patch",
            "dfs",
            "demo",
            "--type=merge",
            "-p",
            &format!("{{\"spec\":{{\"coordinator\":{{\"replicas\":{n}}}}}}}"),
        ]);
    };
    assert!(group.take_calls().is_empty());

    // 1 → 3: the StatefulSet grows first; members are added as their pods run.
    scale(&env, 3);
    env.wait_for(
        "3 pods",
        &["statefulset", "demo-coordinator"],
        "{.spec.replicas}",
        "3",
    );
    env.apply("pod1.yaml", &coordinator_pod(&env, 1));
    env.apply("pod2.yaml", &coordinator_pod(&env, 2));
    wait_calls(
        &env,
        &[
            format!("add 2 {}", member(2)),
            format!("add 3 {}", member(3)),
            "voters [1, 2, 3]".into(),
        ],
    );
    // 3 → 5.
    scale(&env, 5);
    env.wait_for(
        "5 pods",
        &["statefulset", "demo-coordinator"],
        "{.spec.replicas}",
        "5",
    );
    env.apply("pod3.yaml", &coordinator_pod(&env, 3));
    env.apply("pod4.yaml", &coordinator_pod(&env, 4));
    wait_calls(
        &env,
        &[
            format!("add 4 {}", member(4)),
            format!("add 5 {}", member(5)),
            "voters [1, 2, 3, 4, 5]".into(),
        ],
    );
    // 5 → 3: the voters leave first, then the StatefulSet shrinks.
    scale(&env, 3);
    wait_calls(&env, &["voters [1, 2, 3]".into()]);
    env.wait_for(
        "3 pods again",
        &["statefulset", "demo-coordinator"],
        "{.spec.replicas}",
        "3",
    );
    assert_eq!(group.voters(), vec![1, 2, 3]);
    env.must(&[
        "delete",
        "pod",
        "--ignore-not-found",
        "demo-coordinator-3",
        "demo-coordinator-4",
    ]);

    // Member 2 comes back on an empty volume: removed, added, promoted.
    group.wipe(2);
    wait_calls(
        &env,
        &[
            "voters [1, 3]".into(),
            format!("add 2 {}", member(2)),
            "voters [1, 2, 3]".into(),
        ],
    );
    drop(env.operator.take());
}

/// A coordinator group, faked as a gRPC Coordinator on 127.0.0.1: its status
/// reports the members it has, and AddCoordinator / SetCoordinatorVoters
/// change them the way a real group does, recording each call in order.
mod fake_group {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use dfs_proto::coordinator_server::{Coordinator, CoordinatorServer};
    use dfs_proto::*;
    use tonic::{Request, Response, Status, Streaming};

    #[derive(Clone, Debug)]
    pub struct Member {
        pub id: u64,
        pub voter: bool,
        pub incarnation: u64,
        pub reported: u64,
    }

    #[derive(Default)]
    pub struct State {
        pub members: Vec<Member>,
        pub calls: Vec<String>,
        next: u64,
    }

    #[derive(Clone, Default)]
    pub struct Group(pub Arc<Mutex<State>>);

    impl Group {
        /// A group of one (member 1 leads).
        pub fn of_one() -> Group {
            let g = Group::default();
            g.0.lock().unwrap().members.push(Member {
                id: 1,
                voter: true,
                incarnation: 1,
                reported: 1,
            });
            g.0.lock().unwrap().next = 2;
            g
        }

        pub fn take_calls(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap().calls)
        }

        pub fn voters(&self) -> Vec<u64> {
            let s = self.0.lock().unwrap();
            s.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
        }

        /// Member `id` comes back on an empty volume.
        pub fn wipe(&self, id: u64) {
            let mut s = self.0.lock().unwrap();
            s.next += 1;
            let inc = s.next;
            if let Some(m) = s.members.iter_mut().find(|m| m.id == id) {
                m.reported = inc;
            }
        }

        /// Serves on a free 127.0.0.1 port in a thread of its own; returns
        /// the URL.
        pub fn serve(&self) -> String {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            listener.set_nonblocking(true).unwrap();
            let svc = CoordinatorServer::new(self.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let incoming = tokio_stream_incoming(listener);
                    tonic::transport::Server::builder()
                        .add_service(svc)
                        .serve_with_incoming(incoming)
                        .await
                        .unwrap();
                });
            });
            format!("http://{addr}")
        }
    }

    fn tokio_stream_incoming(
        listener: tokio::net::TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
        futures::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            Some((r, l))
        })
    }

    fn no<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    impl Group {
        fn status(&self) -> ClusterStatus {
            let s = self.0.lock().unwrap();
            let leader = s.members.iter().filter(|m| m.voter).map(|m| m.id).min();
            ClusterStatus {
                cluster_id: "0123456789abcdef0123456789abcdef".into(),
                coordinators: s
                    .members
                    .iter()
                    .map(|m| CoordinatorMember {
                        id: m.id,
                        address: String::new(),
                        role: if Some(m.id) == leader {
                            "leader"
                        } else if m.voter {
                            "follower"
                        } else {
                            "learner"
                        }
                        .into(),
                        term: 1,
                        last_log_index: 10,
                        applied_index: 10,
                        lag: 0,
                        answering: Some(m.id) == leader,
                        incarnation: m.incarnation,
                        reported_incarnation: m.reported,
                        voter: m.voter,
                    })
                    .collect(),
                ..ClusterStatus::default()
            }
        }
    }

    type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl Coordinator for Group {
        async fn get_cluster_status(
            &self,
            _: Request<GetClusterStatusRequest>,
        ) -> Result<Response<ClusterStatus>, Status> {
            Ok(Response::new(self.status()))
        }

        async fn add_coordinator(
            &self,
            r: Request<AddCoordinatorRequest>,
        ) -> Result<Response<ClusterStatus>, Status> {
            let r = r.into_inner();
            {
                let mut s = self.0.lock().unwrap();
                s.calls.push(format!("add {} {}", r.id, r.address));
                if let Some(m) = s.members.iter().find(|m| m.id == r.id) {
                    if m.voter {
                        return Err(Status::failed_precondition("a voter: remove it first"));
                    }
                    s.members.retain(|m| m.id != r.id);
                }
                s.next += 1;
                let inc = s.next;
                s.members.push(Member {
                    id: r.id,
                    voter: false,
                    incarnation: inc,
                    reported: inc,
                });
                s.members.sort_by_key(|m| m.id);
            }
            Ok(Response::new(self.status()))
        }

        async fn set_coordinator_voters(
            &self,
            r: Request<SetCoordinatorVotersRequest>,
        ) -> Result<Response<ClusterStatus>, Status> {
            let ids = r.into_inner().voter_ids;
            {
                let mut s = self.0.lock().unwrap();
                s.calls.push(format!("voters {ids:?}"));
                s.members.retain(|m| ids.contains(&m.id) || !m.voter);
                for m in &mut s.members {
                    m.voter = ids.contains(&m.id);
                }
            }
            Ok(Response::new(self.status()))
        }

        type DataNodeHeartbeatStream = BoxStream<HeartbeatResponse>;

        async fn data_node_heartbeat(
            &self,
            _: Request<Streaming<Heartbeat>>,
        ) -> Result<Response<Self::DataNodeHeartbeatStream>, Status> {
            no()
        }

        async fn upload_file(
            &self,
            _: Request<UploadFileRequest>,
        ) -> Result<Response<UploadPlan>, Status> {
            no()
        }
        async fn confirm_upload(
            &self,
            _: Request<ConfirmUploadRequest>,
        ) -> Result<Response<ConfirmUploadResponse>, Status> {
            no()
        }
        async fn upload_files(
            &self,
            _: Request<UploadFilesRequest>,
        ) -> Result<Response<UploadFilesResponse>, Status> {
            no()
        }
        async fn confirm_uploads(
            &self,
            _: Request<ConfirmUploadsRequest>,
        ) -> Result<Response<ConfirmUploadsResponse>, Status> {
            no()
        }
        async fn abort_upload(
            &self,
            _: Request<AbortUploadRequest>,
        ) -> Result<Response<AbortUploadResponse>, Status> {
            no()
        }
        async fn replan_chunk(
            &self,
            _: Request<ReplanChunkRequest>,
        ) -> Result<Response<PlannedChunk>, Status> {
            no()
        }
        async fn download_file(
            &self,
            _: Request<DownloadFileRequest>,
        ) -> Result<Response<DownloadFileResponse>, Status> {
            no()
        }
        async fn mkdir(&self, _: Request<MkdirRequest>) -> Result<Response<FileInfo>, Status> {
            no()
        }
        async fn list_directory(
            &self,
            _: Request<ListDirectoryRequest>,
        ) -> Result<Response<ListDirectoryResponse>, Status> {
            no()
        }
        async fn stat(&self, _: Request<StatRequest>) -> Result<Response<FileInfo>, Status> {
            no()
        }
        async fn delete(
            &self,
            _: Request<DeleteRequest>,
        ) -> Result<Response<DeleteResponse>, Status> {
            no()
        }
        async fn rename(&self, _: Request<RenameRequest>) -> Result<Response<FileInfo>, Status> {
            no()
        }
        async fn register_data_node(
            &self,
            _: Request<RegisterDataNodeRequest>,
        ) -> Result<Response<RegisterDataNodeResponse>, Status> {
            no()
        }
        async fn list_nodes(
            &self,
            _: Request<ListNodesRequest>,
        ) -> Result<Response<ListNodesResponse>, Status> {
            no()
        }
        async fn decommission_node(
            &self,
            _: Request<DecommissionNodeRequest>,
        ) -> Result<Response<DataNodeStatus>, Status> {
            no()
        }
        async fn set_node_maintenance(
            &self,
            _: Request<SetNodeMaintenanceRequest>,
        ) -> Result<Response<DataNodeStatus>, Status> {
            no()
        }
        async fn set_safe_mode(
            &self,
            _: Request<SetSafeModeRequest>,
        ) -> Result<Response<ClusterStatus>, Status> {
            no()
        }
    }
}

/// A PodCertificateRequest as the kubelet makes it, for `pod` (name, UID)
/// on `node`, with a CSR made with `key`.
fn pod_certificate_request(
    name: &str,
    pod: &str,
    pod_uid: &str,
    node: &str,
    key: &rcgen::KeyPair,
) -> String {
    let csr = rcgen::CertificateParams::default()
        .serialize_request(key)
        .expect("a CSR")
        .der()
        .to_vec();
    let csr = k8s_openapi::ByteString(csr);
    let pcr = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "PodCertificateRequest",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "signerName": dfs_operator::controller::signer::SIGNER_NAME,
            "podName": pod,
            "podUID": pod_uid,
            "nodeName": node,
            "nodeUID": format!("uid-of-{node}"),
            "serviceAccountName": "default",
            "serviceAccountUID": "uid-of-default",
            "maxExpirationSeconds": 86400,
            "stubPKCS10Request": csr,
        },
    });
    serde_json::to_string(&pcr).expect("json")
}

/// With `datanodeCredentials: podCertificate` the operator is the signer of
/// its datanodes' pod certificates. The test plays the kubelet (the
/// emulator has none): a pod controlled by the datanode DaemonSet, on a
/// node, asks for a certificate and gets one naming that node's datanode,
/// for its own key, from the cluster's CA; a pod the DaemonSet did not
/// make, and a request naming another node than the pod's, are denied and
/// get no certificate. The datanode Secret then holds only the CA
/// certificate, and the DaemonSet mounts no Secret whole.
#[test]
fn operator_signs_pod_certificates_only_for_its_datanodes() {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let python = venv_python().unwrap_or_else(|why| panic!("operator e2e cannot run: {why}"));
    let mut env = start(&python);
    let crd = Command::new(env!("CARGO_BIN_EXE_dfs-operator"))
        .arg("crd")
        .output()
        .expect("dfs-operator crd");
    env.apply("crd.yaml", &String::from_utf8(crd.stdout).expect("utf-8"));
    env.apply(
        "nodes.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-b}\n",
    );
    env.start_operator();
    env.apply(
        "cluster.yaml",
        "apiVersion: dfs.io/v1alpha1\nkind: DfsCluster\nmetadata: {name: demo, namespace: default}\n\
         spec:\n  coordinator: {replicas: 1}\n  security: {datanodeCredentials: podCertificate}\n",
    );
    env.wait_for(
        "the datanode pods' podCertificate volume",
        &["daemonset", "demo-datanode"],
        r#"{.spec.template.spec.volumes[?(@.name=="tls")].projected.sources[1].podCertificate.signerName}"#,
        "dfs.io/datanode",
    );
    let secret_volumes = env.must(&[
        "get",
        "daemonset",
        "demo-datanode",
        "-o",
        "jsonpath={.spec.template.spec.volumes[*].secret.secretName}",
    ]);
    assert_eq!(secret_volumes.trim(), "", "no Secret is mounted whole");
    env.wait_for(
        "the datanode Secret with only the CA certificate",
        &["secret", "demo-datanode-tls"],
        "{.metadata.name}",
        "demo-datanode-tls",
    );
    let keys = env.must(&[
        "get",
        "secret",
        "demo-datanode-tls",
        "-o",
        "go-template={{range $k, $v := .data}}{{$k}} {{end}}",
    ]);
    assert_eq!(keys.trim(), "ca.crt", "no node's key in the Secret: {keys}");
    let ds_uid = env.must(&[
        "get",
        "daemonset",
        "demo-datanode",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let selector = env.must(&[
        "get",
        "daemonset",
        "demo-datanode",
        "-o",
        "jsonpath={.spec.selector.matchLabels}",
    ]);
    let hash = env.must(&[
        "get",
        "daemonset",
        "demo-datanode",
        "-o",
        r#"jsonpath={.spec.template.metadata.annotations.dfs\.io/template-hash}"#,
    ]);

    // The pods: one as the DaemonSet controller makes it (the selector's
    // labels, the current template, never ready here, so the operator's
    // roll leaves it alone), and one it did not make.
    env.apply(
        "pods.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: demo-datanode-x1\n  namespace: default\n  labels: {selector}\n  \
             annotations: {{dfs.io/template-hash: \"{hash}\"}}\n  ownerReferences:\n  \
             - {{apiVersion: apps/v1, kind: DaemonSet, name: demo-datanode, uid: {ds_uid}, controller: true}}\n\
             spec:\n  nodeName: node-a\n  containers: [{{name: datanode, image: dfs}}]\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: intruder, namespace: default}}\n\
             spec:\n  nodeName: node-a\n  containers: [{{name: x, image: x}}]\n"
        ),
    );
    let uid_of = |pod: &str| env.must(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"]);
    let (datanode_uid, intruder_uid) = (uid_of("demo-datanode-x1"), uid_of("intruder"));
    let key = rcgen::KeyPair::generate().expect("a key");
    let other_key = rcgen::KeyPair::generate().expect("a key");
    env.apply(
        "requests.json",
        &[
            pod_certificate_request("good", "demo-datanode-x1", &datanode_uid, "node-a", &key),
            pod_certificate_request("intruder", "intruder", &intruder_uid, "node-a", &other_key),
            pod_certificate_request(
                "wrong-node",
                "demo-datanode-x1",
                &datanode_uid,
                "node-b",
                &other_key,
            ),
        ]
        .join("\n"),
    );

    // Issued, for the pod's key, naming node-a's datanode, from the CA.
    env.wait_within(
        20,
        "the datanode pod's certificate",
        &["podcertificaterequest", "good"],
        "{.status.conditions[0].type}",
        "Issued",
    );
    let chain = env.must(&[
        "get",
        "podcertificaterequest",
        "good",
        "-o",
        "jsonpath={.status.certificateChain}",
    ]);
    let (who, not_after) = dfs_common::pki::describe(&chain).expect("a certificate");
    let want = dfs_operator::controller::pki::datanode_id(
        "default",
        "demo",
        "node-a",
        &Default::default(),
    );
    assert_eq!(
        who,
        dfs_common::tls::Principal::new(dfs_common::tls::Kind::Datanode, want)
    );
    let der = x509_parser::pem::parse_x509_pem(chain.as_bytes())
        .expect("PEM")
        .1
        .contents;
    let (_, cert) = X509Certificate::from_der(&der).expect("X.509");
    assert_eq!(
        cert.public_key().raw,
        key.subject_public_key_info().as_slice(),
        "certified for the pod's own key"
    );
    let ca = env.must(&[
        "get",
        "secret",
        "demo-ca",
        "-o",
        r#"go-template={{index .data "ca.crt" | base64decode}}"#,
    ]);
    let ca_der = x509_parser::pem::parse_x509_pem(ca.as_bytes())
        .expect("CA PEM")
        .1
        .contents;
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).expect("CA X.509");
    cert.verify_signature(Some(ca_cert.public_key()))
        .expect("signed by the cluster's CA");
    let status_after = env.must(&[
        "get",
        "podcertificaterequest",
        "good",
        "-o",
        "jsonpath={.status.notAfter}",
    ]);
    let status_after: k8s_openapi::jiff::Timestamp = status_after.trim().parse().expect("a time");
    assert_eq!(status_after.as_second(), not_after);
    assert!(
        not_after - cert.validity().not_before.timestamp() <= 86_400,
        "within maxExpirationSeconds"
    );

    // Denied, without a certificate: a pod the DaemonSet did not make, and
    // a request for another node than the pod runs on.
    for (name, reason) in [("intruder", "NotADatanode"), ("wrong-node", "NodeMismatch")] {
        env.wait_within(
            20,
            &format!("the denial of {name}"),
            &["podcertificaterequest", name],
            "{.status.conditions[0].type}/{.status.conditions[0].reason}",
            &format!("Denied/{reason}"),
        );
        let chain = env.must(&[
            "get",
            "podcertificaterequest",
            name,
            "-o",
            "jsonpath={.status.certificateChain}",
        ]);
        assert_eq!(chain.trim(), "", "{name} got a certificate");
    }
    let log = env.operator_log();
    let addr = log
        .lines()
        .find_map(|l| l.split("metrics_addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| env.fail("no metrics address logged"))
        .to_string();
    let metrics = http_get(&addr, "/metrics");
    for (outcome, n) in [("issued", 1), ("denied", 2), ("failed", 0)] {
        let line =
            format!("dfs_operator_pod_certificate_requests_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}
