//! Whole clusters of real `dfs` processes (the chaos suite's harness).
//!
//! Every scenario in `tests/` starts a real cluster: one coordinator and N
//! datanodes, each a separate process of the `dfs` binary on 127.0.0.1 with
//! its own free ports and temporary directory, and short heartbeat/dead-after
//! intervals so faults are noticed in seconds. The harness then injects
//! faults at the process level and the tests assert the outcome.
//!
//! ```text
//!   test ──Client──▶ coordinator (dfs coordinator …)        SIGKILL / restart
//!     │                 ▲ heartbeats
//!     │                 │
//!     └──chunks──▶ datanode-0 … datanode-N-1 (dfs datanode …)
//!                  kill -9, SIGSTOP/SIGCONT, restart on the same dir and port,
//!                  bytes flipped in chunk files, a low --capacity
//! ```
//!
//! - [`Cluster`] owns the processes; everything is SIGKILLed on drop (also
//!   when a test panics), and every child runs with `--exit-with-parent`, so
//!   it exits when the test process dies too (its stdin pipe closes).
//! - [`wait_for`] polls a condition until a deadline and fails with the last
//!   observation; tests never assert on timing, only on outcomes.
//! - [`run`] runs a test body on a Tokio runtime under an overall deadline, so
//!   no scenario can hang.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dfs_client::{ChunkMap, Client, ClientConfig, ClusterStatus, NodeState, NodeStatus};
use rand::{RngCore, SeedableRng};

/// Heartbeat interval of every test cluster.
pub const HEARTBEAT: &str = "200ms";
/// Suspect-after interval of every test cluster.
pub const SUSPECT_AFTER: &str = "1s";
/// Dead-after interval of every test cluster.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);

/// Runs `body` on a fresh multi-threaded runtime and fails the test when it
/// takes longer than `deadline`.
pub fn run<F: Future<Output = ()>>(deadline: Duration, body: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        if tokio::time::timeout(deadline, body).await.is_err() {
            panic!("scenario did not finish within {deadline:?}");
        }
    });
    // Do not wait for stuck blocking tasks.
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Reads an integer knob from the environment.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// True on CI (`CI=true`).
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Polls `probe` every 100 ms until it returns `Ok(value)`, or panics after
/// `timeout` with the description of what was awaited and the last `Err`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last: String;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), probe()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => last = e,
            Err(_) => last = "probe itself timed out after 10s".into(),
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `dfs` binary under test: `$DFS_BIN`, else `<target>/debug/dfs` next to
/// the test executable (`<target>/debug/deps/…`), built once with
/// `cargo build -p dfs-cli --bin dfs` when it is missing.
pub fn dfs_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("DFS_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current exe");
        // <target>/debug/deps/<test> → <target>/debug/dfs
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let bin = profile_dir.join("dfs");
        if !bin.exists() {
            let target_dir = profile_dir.parent().expect("target dir");
            eprintln!("chaos: {} missing; building it", bin.display());
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "dfs-cli", "--bin", "dfs"])
                .env("CARGO_TARGET_DIR", target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build -p dfs-cli --bin dfs failed");
            assert!(
                bin.exists(),
                "{} still missing after the build",
                bin.display()
            );
        }
        bin
    })
    .clone()
}

/// A free TCP port on 127.0.0.1 (bound and released; the tiny race with other
/// processes is acceptable in tests). Never the same port twice in one test
/// process: the kernel may hand a released port out again at once, and two
/// services of one cluster would then collide (a CI run lost a datanode
/// whose metrics port was its coordinator's gRPC port).
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let mut given = GIVEN.lock().expect("port list");
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: rustix::process::Signal) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid > 0");
    rustix::process::kill_process(pid, signal).map_err(std::io::Error::from)
}

/// `--peers` naming member `i + 1` at `addrs[i]` (plain text).
pub fn peers(addrs: &[SocketAddr]) -> String {
    peers_with(addrs, "http")
}

/// `--peers` naming member `i + 1` at `scheme://addrs[i]`.
pub fn peers_with(addrs: &[SocketAddr], scheme: &str) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={scheme}://{a}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// One process of the cluster, restartable with the same arguments (same
/// ports, same data directory).
#[derive(Debug)]
pub struct Service {
    /// `coordinator` or `datanode-<i>`.
    pub name: String,
    /// gRPC address.
    pub listen: SocketAddr,
    /// Metrics/probe address.
    pub metrics: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log file (stdout and stderr, appended across restarts).
    pub log: PathBuf,
    args: Vec<String>,
    /// Extra environment of the process (fault hooks).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    stopped: bool,
}

impl Service {
    /// Starts the process (it must not be running).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(dfs_bin())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", self.name));
        self.child = Some(child);
        self.stopped = false;
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status once the process has ended by itself (reaped).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the process runs (not reaped).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = signal(c.id(), rustix::process::Signal::KILL);
            let _ = c.wait();
        }
        self.stopped = false;
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn freeze(&mut self) {
        let pid = self.pid().expect("running");
        signal(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        self.stopped = true;
    }

    /// SIGCONT after [`Service::freeze`].
    pub fn thaw(&mut self) {
        let pid = self.pid().expect("running");
        signal(pid, rustix::process::Signal::CONT).expect("SIGCONT");
        self.stopped = false;
    }

    /// SIGKILL, then start again on the same ports and directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// `VmRSS` and `VmHWM` (peak RSS) of the running process, in bytes.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The node id a datanode keeps in its data directory (after its first
    /// start).
    pub fn node_id(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join("node_id"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Path of chunk `id`'s file in a datanode's store.
    pub fn chunk_path(&self, id: &str) -> PathBuf {
        self.data_dir.join("chunks").join(&id[0..2]).join(id)
    }

    /// Where chunk `id`'s bytes start on a datanode's disk: its chunk file at
    /// offset 0, or its record in a small-chunk volume.
    pub fn replica_location(&self, id: &str) -> Option<(PathBuf, u64)> {
        let file = self.chunk_path(id);
        if file.exists() {
            return Some((file, 0));
        }
        dfs_datanode::volume::inspect(&self.data_dir)
            .ok()?
            .into_iter()
            .find(|c| c.id.as_str() == id)
            .map(|c| (c.path, c.data_offset))
    }

    /// Ids of every chunk a datanode's store holds on disk: chunk files and
    /// live records in the small-chunk volumes.
    pub fn stored_chunks(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .chunk_files()
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        if let Ok(small) = dfs_datanode::volume::inspect(&self.data_dir) {
            ids.extend(small.into_iter().map(|c| c.id.as_str().to_string()));
        }
        ids
    }

    /// Every chunk file in a datanode's store.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.data_dir.join("chunks"), &mut out);
        out
    }

    /// Files left in a datanode's `tmp/` (half-written chunks).
    pub fn temp_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.data_dir.join("tmp"), &mut out);
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How to build a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Datanodes started.
    pub datanodes: usize,
    /// Default replication factor.
    pub replication: u32,
    /// Default chunk size (e.g. `4MiB`).
    pub chunk_size: String,
    /// Extra coordinator flags.
    pub coordinator_args: Vec<String>,
    /// Extra flags for every datanode.
    pub datanode_args: Vec<String>,
    /// Extra flags for datanode `i` (index into the list).
    pub per_datanode_args: Vec<Vec<String>>,
    /// Extra environment of the coordinator (fault hooks).
    pub coordinator_env: Vec<(String, String)>,
    /// Extra environment of datanode `i` (index into the list).
    pub per_datanode_env: Vec<Vec<(String, String)>>,
    /// Coordinators: 1, or 3 or 5 as one Raft group (`--peers`).
    pub coordinators: usize,
    /// Data directories chosen by the test, by service name (`coordinator`,
    /// `coordinator-<n>`, `datanode-<i>`), e.g. on a fault-injecting
    /// filesystem; the others live in the cluster's temp dir.
    pub data_dirs: Vec<(String, PathBuf)>,
    /// Mutual TLS: a CA in the cluster's temp dir issues every process its
    /// identity (`dfs://coordinator/<name>`, `dfs://datanode/<name>`) and the
    /// test an admin client (`dfs://client/admin`); `false` starts every
    /// process with `--insecure`.
    pub tls: bool,
}

impl ClusterOptions {
    fn data_dir(&self, name: &str, root: &Path) -> PathBuf {
        self.data_dirs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| root.join(name))
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            datanodes: 3,
            replication: 3,
            chunk_size: "4MiB".into(),
            coordinator_args: Vec::new(),
            datanode_args: Vec::new(),
            per_datanode_args: Vec::new(),
            coordinator_env: Vec::new(),
            per_datanode_env: Vec::new(),
            coordinators: 1,
            data_dirs: Vec::new(),
            tls: false,
        }
    }
}

/// A running cluster of real processes. Dropping it kills everything.
#[derive(Debug)]
pub struct Cluster {
    /// The coordinator process (with a group: member 1).
    pub coordinator: Service,
    /// With a group: members 2.. (member `i + 2` at index `i`).
    pub peers: Vec<Service>,
    /// The datanode processes, in start order.
    pub datanodes: Vec<Service>,
    /// `http://127.0.0.1:<port>` of the coordinator (with a group, every
    /// member's, comma-separated: clients and datanodes take the list).
    pub url: String,
    options: ClusterOptions,
    /// With TLS: the CA, and the admin client identity the tests use.
    pki: Option<Pki>,
    root: Option<tempfile::TempDir>,
}

/// The test cluster's certificate authority (see [`ClusterOptions::tls`]).
#[derive(Debug)]
pub struct Pki {
    /// The CA (certificate and key) that issued every identity.
    pub ca: dfs_common::pki::Ca,
    /// Where identities are written, one directory per name.
    pub root: PathBuf,
    /// The admin client identity.
    pub admin: PathBuf,
    /// The admin client's credentials, loaded.
    pub security: dfs_common::tls::Security,
    /// The chunk-token key file every coordinator is given.
    pub token_keys: PathBuf,
}

impl Pki {
    fn create(root: &Path) -> Pki {
        let root = root.join("tls");
        let ca = dfs_common::pki::Ca::create(&root.join("ca"), "dfs test CA").expect("test CA");
        let admin = root.join("admin");
        ca.issue(
            &admin,
            &dfs_common::tls::Principal::new(dfs_common::tls::Kind::Client, "admin"),
            &[],
        )
        .expect("admin identity");
        let security =
            dfs_common::tls::Security::tls(dfs_common::tls::Tls::load(&admin).expect("admin"));
        let token_keys = root.join("token-keys");
        dfs_common::token::create_key_file(&token_keys).expect("token keys");
        Pki {
            ca,
            root,
            admin,
            security,
            token_keys,
        }
    }

    /// Issues (or reissues) `name`'s identity of `kind`, valid as a server
    /// on 127.0.0.1, and returns its directory.
    pub fn identity(&self, name: &str, kind: dfs_common::tls::Kind) -> PathBuf {
        self.identity_as(name, kind, name)
    }

    /// Issues (or reissues) into `<root>/<dir>` the identity
    /// `dfs://<kind>/<principal>` (a datanode's principal is its node id).
    pub fn identity_as(&self, dir: &str, kind: dfs_common::tls::Kind, principal: &str) -> PathBuf {
        let dir = self.root.join(dir);
        self.ca
            .issue(
                &dir,
                &dfs_common::tls::Principal::new(kind, principal),
                &["127.0.0.1", "localhost"],
            )
            .expect("issue identity");
        dir
    }

    /// Issues (or reissues) datanode `name`'s identity `dfs://datanode/<node
    /// id>` the way the operator does: `<name>.crt` and `<name>.key` beside
    /// `ca.crt` in the one directory every datanode shares, with no address
    /// in it (datanodes are known by their principal, not their address).
    /// Returns that directory (`--tls-dir`, with `--tls-name <name>`).
    pub fn datanode_identity(&self, name: &str, node_id: &str) -> PathBuf {
        let dir = self.root.join("datanodes");
        std::fs::create_dir_all(&dir).expect("datanode identities dir");
        let issued = self
            .ca
            .issue_pem(
                &dfs_common::tls::Principal::new(dfs_common::tls::Kind::Datanode, node_id),
                &[],
                dfs_common::pki::LEAF_DAYS,
            )
            .expect("issue datanode identity");
        let put = |file: String, text: &str| {
            let tmp = dir.join(format!("{file}.tmp"));
            std::fs::write(&tmp, text).expect("write identity");
            std::fs::rename(&tmp, dir.join(file)).expect("rename identity");
        };
        put(dfs_common::tls::CA_FILE.into(), self.ca.pem());
        // The key first: a reload that reads the new certificate finds it.
        put(format!("{name}.key"), &issued.key_pem);
        put(format!("{name}.crt"), &issued.cert_pem);
        dir
    }

    /// The credentials of a principal (issued afresh), for a test client.
    pub fn security(&self, name: &str, kind: dfs_common::tls::Kind) -> dfs_common::tls::Security {
        let dir = self.identity(name, kind);
        dfs_common::tls::Security::tls(dfs_common::tls::Tls::load(&dir).expect("load identity"))
    }

    /// The flags that give a process its identity.
    fn flags(
        pki: Option<&Pki>,
        name: &str,
        kind: dfs_common::tls::Kind,
        principal: &str,
    ) -> Vec<String> {
        match pki {
            Some(pki) if kind == dfs_common::tls::Kind::Datanode => vec![
                "--tls-dir".into(),
                pki.datanode_identity(name, principal).display().to_string(),
                "--tls-name".into(),
                name.into(),
            ],
            Some(pki) => {
                let mut flags = vec![
                    "--tls-dir".into(),
                    pki.identity_as(name, kind, principal).display().to_string(),
                ];
                if kind == dfs_common::tls::Kind::Coordinator {
                    flags.extend(["--token-keys".into(), pki.token_keys.display().to_string()]);
                }
                flags
            }
            None => vec!["--insecure".into()],
        }
    }
}

impl Cluster {
    /// Starts a coordinator and `options.datanodes` datanodes and waits until
    /// every datanode is healthy.
    pub async fn start(options: ClusterOptions) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("dfs-chaos-")
            .tempdir()
            .expect("temp dir");
        let logs = root.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        assert!(
            [1, 3, 5].contains(&options.coordinators),
            "1, 3 or 5 coordinators"
        );
        let addrs: Vec<(SocketAddr, SocketAddr)> = (0..options.coordinators)
            .map(|_| (free_addr(), free_addr()))
            .collect();
        let pki = options.tls.then(|| Pki::create(root.path()));
        let scheme = if options.tls { "https" } else { "http" };
        let url = addrs
            .iter()
            .map(|(l, _)| format!("{scheme}://{l}"))
            .collect::<Vec<_>>()
            .join(",");
        let peers = peers_with(&addrs.iter().map(|(l, _)| *l).collect::<Vec<_>>(), scheme);
        let mut members: Vec<Service> = addrs
            .iter()
            .enumerate()
            .map(|(i, (listen, metrics))| {
                let group = options.coordinators > 1;
                let name = if group {
                    format!("coordinator-{}", i + 1)
                } else {
                    "coordinator".into()
                };
                let dir = options.data_dir(&name, root.path());
                let mut args: Vec<String> = [
                    "coordinator",
                    "--listen",
                    &listen.to_string(),
                    "--metrics-addr",
                    &metrics.to_string(),
                    "--data-dir",
                    &dir.display().to_string(),
                    "--replication",
                    &options.replication.to_string(),
                    "--chunk-size",
                    &options.chunk_size,
                    "--heartbeat-interval",
                    HEARTBEAT,
                    "--dead-after",
                    &format!("{}ms", DEAD_AFTER.as_millis()),
                    // The default (2 heartbeats = 400 ms) is easily missed by
                    // a debug build on 2 busy cores; a suspect node takes no
                    // new chunks.
                    "--suspect-after",
                    SUSPECT_AFTER,
                    "--exit-with-parent",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(Pki::flags(
                    pki.as_ref(),
                    &name,
                    dfs_common::tls::Kind::Coordinator,
                    &name,
                ));
                if group {
                    args.extend([
                        "--raft-id".to_string(),
                        (i + 1).to_string(),
                        "--peers".into(),
                        peers.clone(),
                    ]);
                }
                args.extend(options.coordinator_args.iter().cloned());
                let mut s = Service {
                    log: logs.join(format!("{name}.log")),
                    name,
                    listen: *listen,
                    metrics: *metrics,
                    data_dir: dir,
                    args,
                    env: options.coordinator_env.clone(),
                    child: None,
                    stopped: false,
                };
                s.start();
                s
            })
            .collect();
        let coordinator = members.remove(0);
        let mut cluster = Cluster {
            coordinator,
            peers: members,
            datanodes: Vec::new(),
            url,
            options: options.clone(),
            pki,
            root: Some(root),
        };
        for _ in 0..options.datanodes {
            cluster.add_datanode();
        }
        cluster.wait_healthy(options.datanodes).await;
        cluster
    }

    /// Starts one more datanode (index = its position in `datanodes`); does
    /// not wait for it.
    pub fn add_datanode(&mut self) -> usize {
        let i = self.datanodes.len();
        let root = self.root.as_ref().expect("root").path().to_path_buf();
        let listen = free_addr();
        let metrics = free_addr();
        let dir = self.options.data_dir(&format!("datanode-{i}"), &root);
        let mut args: Vec<String> = [
            "datanode",
            "--listen",
            &listen.to_string(),
            "--metrics-addr",
            &metrics.to_string(),
            "--coordinator",
            &self.url,
            "--data-dir",
            &dir.display().to_string(),
            "--host",
            &format!("chaos-dn{i}"),
            "--heartbeat-interval",
            HEARTBEAT,
            "--exit-with-parent",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(Pki::flags(
            self.pki.as_ref(),
            &format!("datanode-{i}"),
            dfs_common::tls::Kind::Datanode,
            &dfs_common::pki::datanode_id(&dir),
        ));
        args.extend(self.options.datanode_args.iter().cloned());
        if let Some(extra) = self.options.per_datanode_args.get(i) {
            args.extend(extra.iter().cloned());
        }
        let mut dn = Service {
            name: format!("datanode-{i}"),
            listen,
            metrics,
            data_dir: dir,
            log: root.join("logs").join(format!("datanode-{i}.log")),
            args,
            env: self
                .options
                .per_datanode_env
                .get(i)
                .cloned()
                .unwrap_or_default(),
            child: None,
            stopped: false,
        };
        dn.start();
        self.datanodes.push(dn);
        i
    }

    /// A client with short timeouts (5 s stream idle timeout).
    pub async fn client(&self) -> Client {
        let mut config = ClientConfig::new(&self.url);
        config.connect_timeout = Duration::from_secs(2);
        config.request_timeout = Duration::from_secs(10);
        config.stream_idle_timeout = Duration::from_secs(5);
        if let Some(pki) = &self.pki {
            config.security = pki.security.clone();
        }
        wait_for("a client connection", Duration::from_secs(30), || {
            let config = config.clone();
            async move { Client::connect(config).await.map_err(|e| e.to_string()) }
        })
        .await
    }

    /// Waits until at least `n` datanodes are healthy.
    pub async fn wait_healthy(&self, n: usize) {
        let client = self.client().await;
        wait_for(
            &format!("{n} healthy datanodes"),
            Duration::from_secs(60),
            || async {
                let nodes = client.nodes().await.map_err(|e| e.to_string())?;
                let healthy = count_state(&nodes, NodeState::Healthy);
                if healthy >= n {
                    Ok(())
                } else {
                    Err(format!("{healthy} healthy: {}", describe_nodes(&nodes)))
                }
            },
        )
        .await;
    }

    /// Index of the datanode with `node_id`.
    pub fn index_of(&self, node_id: impl AsRef<str>) -> Option<usize> {
        let node_id = node_id.as_ref();
        self.datanodes
            .iter()
            .position(|d| d.node_id().as_deref() == Some(node_id))
    }

    /// Runs the `dfs` CLI against this cluster and returns stdout; panics with
    /// stderr when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_raw(args);
        assert!(
            out.status.success(),
            "dfs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs the `dfs` CLI against this cluster (no success check).
    pub fn cli_raw(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(dfs_bin());
        cmd.arg("--coordinator").arg(&self.url);
        if let Some(pki) = &self.pki {
            cmd.arg("--credentials").arg(&pki.admin);
        }
        cmd.args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run dfs CLI");
        wait_output(child, Duration::from_secs(60))
    }

    /// `dfs stat --json PATH`.
    pub fn stat_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["stat", "--json", path])).expect("stat --json")
    }

    /// `dfs status --json`.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["status", "--json"])).expect("status --json")
    }

    /// The cluster's scratch directory (logs and data directories).
    pub fn root(&self) -> &Path {
        self.root.as_ref().expect("root").path()
    }

    /// Half-written chunk files left in any datanode's `tmp/`.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        self.datanodes
            .iter()
            .flat_map(Service::temp_files)
            .collect()
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.pki.is_some() { "https" } else { "http" }
    }

    /// The CA and admin identity (with [`ClusterOptions::tls`]).
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// Every coordinator, member 1 first.
    pub fn coordinators(&mut self) -> Vec<&mut Service> {
        std::iter::once(&mut self.coordinator)
            .chain(self.peers.iter_mut())
            .collect()
    }

    /// The index (into [`Cluster::coordinators`]) of the group's leader, as
    /// the members report it (0 for a single coordinator).
    pub async fn leader(&self) -> usize {
        if self.peers.is_empty() {
            return 0;
        }
        let client = self.client().await;
        let members: Vec<String> = std::iter::once(&self.coordinator)
            .chain(&self.peers)
            .map(|s| format!("{}://{}", self.scheme(), s.listen))
            .collect();
        wait_for("a coordinator leader", Duration::from_secs(30), || async {
            let status = client.status().await.map_err(|e| e.to_string())?;
            let leader = status
                .coordinators
                .iter()
                .find(|m| m.role == "leader")
                .ok_or("no leader yet")?;
            members
                .iter()
                .position(|u| *u == leader.address)
                .ok_or_else(|| format!("unknown leader {}", leader.address))
        })
        .await
    }

    /// Prints the tail of every log (for failures).
    pub fn dump_logs(&self, lines: usize) {
        for s in std::iter::once(&self.coordinator)
            .chain(&self.peers)
            .chain(&self.datanodes)
        {
            eprintln!(
                "---- {} ({})\n{}",
                s.name,
                s.log.display(),
                s.log_tail(lines)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for d in &mut self.datanodes {
            d.kill9();
        }
        self.coordinator.kill9();
        for p in &mut self.peers {
            p.kill9();
        }
        if std::thread::panicking() {
            self.dump_logs(40);
            if std::env::var_os("DFS_CHAOS_KEEP").is_some()
                && let Some(root) = self.root.take()
            {
                eprintln!("DFS_CHAOS_KEEP: kept {}", root.keep().display());
            }
        }
    }
}

/// Waits for `child` with a deadline, draining its stdout and stderr (so a
/// large output cannot block it); kills it when the deadline passes.
pub fn wait_output(mut child: Child, timeout: Duration) -> std::process::Output {
    use std::io::Read;
    fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "command did not finish within {timeout:?}; stderr: {}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait failed: {e}"),
        }
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Number of nodes in `state`.
pub fn count_state(nodes: &[NodeStatus], state: NodeState) -> usize {
    nodes.iter().filter(|n| n.state == Some(state)).count()
}

/// `id=state` for every node, for messages.
pub fn describe_nodes(nodes: &[NodeStatus]) -> String {
    nodes
        .iter()
        .map(|n| {
            let state = n.state.map_or("unknown", NodeState::label);
            let id = n.node_id.as_str();
            format!("{}={state}", &id[..id.len().min(8)])
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The state of node `node_id`, if known.
pub fn state_of(nodes: &[NodeStatus], node_id: &str) -> Option<NodeState> {
    nodes
        .iter()
        .find(|n| n.node_id == node_id)
        .and_then(|n| n.state)
}

/// Checks that every chunk of `map` has exactly `factor` replicas, none of them
/// in `excluded`.
/// The chunk map of `path` once every chunk lists `factor` replicas, none
/// on `excluded` ([`check_replicas`]). An upload answers at its write
/// quorum; a replica still writing then (a slow or busy disk) lands a
/// moment later and is listed once it reported the chunk.
pub async fn replicated_map(
    client: &Client,
    path: &str,
    factor: usize,
    excluded: &[&str],
) -> ChunkMap {
    wait_for(
        &format!("{path} at {factor} replicas"),
        Duration::from_secs(30),
        || async {
            let map = client.chunk_map(path).await.map_err(|e| e.to_string())?;
            check_replicas(&map, factor, excluded)?;
            Ok(map)
        },
    )
    .await
}

pub fn check_replicas(map: &ChunkMap, factor: usize, excluded: &[&str]) -> Result<(), String> {
    for c in &map.chunks {
        let ids: Vec<&str> = c.replicas.iter().map(|r| r.node_id.as_str()).collect();
        if ids.len() != factor {
            return Err(format!(
                "chunk {} has {} replicas ({ids:?}), want {factor}",
                c.index,
                ids.len()
            ));
        }
        if let Some(bad) = ids.iter().find(|id| excluded.contains(id)) {
            return Err(format!("chunk {} still lists replica {bad}", c.index));
        }
    }
    Ok(())
}

/// Ok when the cluster reports no under-replicated, missing or (with
/// `strict`) over-replicated chunk.
pub fn check_status(status: &ClusterStatus, strict: bool) -> Result<(), String> {
    if status.under_replicated_chunks == 0
        && status.missing_chunks == 0
        && (!strict || status.over_replicated_chunks == 0)
    {
        Ok(())
    } else {
        Err(format!(
            "under-replicated {}, missing {}, over-replicated {}, repair bytes remaining {}",
            status.under_replicated_chunks,
            status.missing_chunks,
            status.over_replicated_chunks,
            status.repair_bytes_remaining
        ))
    }
}

/// Deterministic pseudo-random bytes (`seed`, `len`).
pub fn payload(seed: u64, len: usize) -> bytes::Bytes {
    let mut buf = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut buf);
    buf.into()
}

/// Writes `len` deterministic bytes of `seed` to `path` and returns their
/// CRC32C.
pub fn write_payload_file(path: &Path, seed: u64, len: u64) -> u32 {
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create payload"));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    let mut crc = 0u32;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        f.write_all(&buf[..n]).expect("write payload");
        left -= n as u64;
    }
    f.flush().expect("flush payload");
    crc
}

/// CRC32C and length of a file.
pub fn file_digest(path: &Path) -> (u32, u64) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("open for digest");
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read for digest");
        if n == 0 {
            return (crc, len);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
    }
}

/// Reads a whole remote file into memory.
pub async fn read_all(client: &Client, path: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    client
        .get(path, &mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// `GET /metrics` of a service (plain HTTP/1.0 over a TCP socket).
pub fn metrics_text(addr: SocketAddr) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// Sum of the samples of metric `name` whose line contains `filter` (e.g. a
/// label value like `"scrub"`).
pub fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Flips every bit of the byte at `offset` of `path`, in place.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).expect("write byte");
    f.sync_all().expect("fsync");
}

/// Checks that every replica of every chunk in `map` exists on its datanode's
/// disk and starts with the expected bytes of `data` (a chunk file is the data
/// followed by its checksum table and footer; a small chunk's volume record
/// holds the data after its header).
pub fn check_replicas_on_disk(
    cluster: &Cluster,
    map: &ChunkMap,
    data: &[u8],
) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    for c in &map.chunks {
        let want = &data[c.offset as usize..(c.offset + c.size) as usize];
        for r in &c.replicas {
            let i = cluster
                .index_of(&r.node_id)
                .ok_or_else(|| format!("unknown node {}", r.node_id))?;
            let (path, base) = cluster.datanodes[i]
                .replica_location(c.chunk_id.as_str())
                .ok_or_else(|| {
                    format!(
                        "chunk {} is not on {}'s disk",
                        c.chunk_id, cluster.datanodes[i].name
                    )
                })?;
            let mut got = vec![0u8; want.len()];
            std::fs::File::open(&path)
                .and_then(|f| f.read_exact_at(&mut got, base))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if got != want {
                return Err(format!(
                    "replica of chunk {} on {} differs from the written bytes",
                    c.index, cluster.datanodes[i].name
                ));
            }
        }
    }
    Ok(())
}

/// Where Debian's `faketime` package puts libfaketime.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The environment that runs a process on a wall clock shifted by the
/// offset in `file` (seconds, e.g. `+3600`; re-read on every call), with its
/// monotonic clock untouched: a wall-clock step, as NTP or an admin makes.
pub fn shifted_clock_env(file: &Path) -> Vec<(String, String)> {
    [
        ("LD_PRELOAD", LIBFAKETIME.to_string()),
        ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod free_addr_tests {
    #[test]
    fn no_port_is_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| super::free_addr().port()).collect();
        let unique: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
    }
}
