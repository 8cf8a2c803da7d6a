//! `dfs up`: a whole local cluster from one command.
//!
//! Starts a coordinator and N datanodes on 127.0.0.1 as supervised child
//! processes of this executable (`dfs coordinator …`, `dfs datanode …`), each
//! with its own directory under `--data-dir` and its log in `DIR/logs/`.
//! A child that dies is restarted after a short pause; Ctrl-C (or SIGTERM)
//! closes the children's stdin, on which they shut down cleanly
//! (`--exit-with-parent`), so no process outlives the supervisor even when the
//! supervisor itself is killed. Restarted on the same directory, the cluster
//! finds all its data again: node ids and metadata live in the directories.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dfs_client::NodeState;
use dfs_client::{Client, ClientConfig};
use dfs_common::size::ByteSize;
use tokio::process::{Child, Command};

/// Pause before a dead child is restarted.
const RESTART_DELAY: Duration = Duration::from_secs(2);
/// How long a child may take to stop after its stdin closed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the cluster to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags of `dfs up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Directory holding every node's data (one subdirectory per node).
    #[arg(long, default_value = "./dfs-data")]
    data_dir: PathBuf,
    /// Number of datanodes.
    #[arg(long, default_value_t = 3)]
    datanodes: usize,
    /// Default replication factor (default: min(3, datanodes)).
    #[arg(long)]
    replication: Option<u32>,
    /// Default chunk size of new files (default: the coordinator's, 64MiB).
    #[arg(long)]
    chunk_size: Option<ByteSize>,
    /// Coordinator gRPC address. Port 0 picks free ports for every service.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// First datanode gRPC port (datanode i listens on this + i).
    #[arg(long, default_value_t = 7101)]
    datanode_port: u16,
    /// Coordinator metrics port; datanode i serves metrics on this + 1 + i.
    #[arg(long, default_value_t = 9100)]
    metrics_port: u16,
    /// Coordinators: 1, or 3 or 5 as one Raft group (coordinator i listens
    /// on the --listen port + i; its metrics come after the datanodes').
    #[arg(long, default_value_t = 1)]
    coordinators: usize,
    /// Heartbeat interval of the cluster (e.g. 3s, 500ms).
    #[arg(long, default_value = "3s")]
    heartbeat_interval: String,
    /// Time after which a silent datanode is declared dead and repaired around.
    #[arg(long, default_value = "30s")]
    dead_after: String,
    /// Plain-text gRPC between every process and for clients (no
    /// certificates, nobody authenticated). Without it the cluster runs
    /// mutual TLS with a CA and identities under `DATA_DIR/tls/`.
    #[arg(long)]
    insecure: bool,
}

/// Where `dfs up` keeps its CA and every process's identity.
pub fn tls_root(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The admin client identity `dfs up` issues (the CLI's default
/// credentials when run beside the default data directory).
pub fn admin_dir(data_dir: &Path) -> PathBuf {
    tls_root(data_dir).join("admin")
}

/// Creates the CA (once) and issues every service its identity and the
/// admin client its own (afresh at every start: renewed, and valid for the
/// addresses of this run).
fn issue_identities(
    data_dir: &Path,
    names: &[(String, dfs_common::tls::Kind, String)],
    hosts: &[String],
) -> anyhow::Result<PathBuf> {
    use dfs_common::tls::{Kind, Principal};
    let root = tls_root(data_dir);
    let ca = dfs_common::pki::Ca::open_or_create(&root.join("ca"), "dfs up local CA")
        .context("cannot create the local CA")?;
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    for (name, kind, principal) in names {
        ca.issue(
            &root.join(name),
            &Principal::new(*kind, principal.as_str()),
            &hosts,
        )
        .with_context(|| format!("cannot issue the certificate of {name}"))?;
    }
    let admin = admin_dir(data_dir);
    ca.issue(
        &admin,
        &Principal::new(Kind::Client, dfs_coordinator::service::ADMIN_CLIENT),
        &[],
    )
    .context("cannot issue the admin client certificate")?;
    Ok(std::path::absolute(&admin).unwrap_or(admin))
}

/// One supervised service.
struct Service {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    restart_at: Option<Instant>,
    /// Indices in `args` of addresses whose port is picked afresh at each
    /// restart (datanodes on picked ports: the one picked may have been
    /// taken by another process between picking and binding; a datanode
    /// registers its new address itself).
    repick: Vec<usize>,
}

impl Service {
    fn spawn(&mut self, exe: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open log {}", self.log.display()))?;
        let child = Command::new(exe)
            .args(&self.args)
            .env_remove("DFS_TLS_DIR")
            .env_remove("DFS_INSECURE")
            .env_remove("DFS_TOKEN_KEYS")
            // The child exits when this pipe closes (--exit-with-parent).
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        self.restart_at = None;
        Ok(())
    }

    /// Picks new free ports for the addresses in `repick`.
    fn repick_ports(&mut self) -> anyhow::Result<()> {
        for &i in &self.repick {
            let mut addr: SocketAddr = self.args[i].parse()?;
            addr.set_port(free_port()?);
            self.args[i] = addr.to_string();
        }
        Ok(())
    }

    /// The value that follows `flag` in the arguments.
    fn arg(&self, flag: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == flag)?;
        self.args.get(i + 1).map(String::as_str)
    }

    fn pid(&self) -> String {
        self.child
            .as_ref()
            .and_then(Child::id)
            .map_or_else(|| "-".into(), |p| p.to_string())
    }
}

/// A free port, never one this process picked before (the kernel may hand
/// a released port out again at once; two services would then collide).
fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().expect("port list");
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// Runs the cluster until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.datanodes == 0 {
        bail!("--datanodes must be at least 1");
    }
    if ![1, 3, 5].contains(&args.coordinators) {
        bail!(
            "--coordinators must be 1, 3 or 5 (a group of 2 or 4 survives no more failures than 1 or 3)"
        );
    }
    let replication = args.replication.unwrap_or(3.min(args.datanodes as u32));
    if replication == 0 || replication as usize > args.datanodes {
        bail!(
            "--replication {replication} needs at least {replication} datanodes, but --datanodes is {}",
            args.datanodes
        );
    }
    let pick = args.listen.port() == 0;
    let port = |fixed: u16| -> anyhow::Result<u16> { if pick { free_port() } else { Ok(fixed) } };
    let mut coordinators = Vec::new();
    for i in 0..args.coordinators {
        let addr = SocketAddr::new(args.listen.ip(), port(args.listen.port() + i as u16)?);
        let metrics = if i == 0 {
            SocketAddr::new(args.listen.ip(), port(args.metrics_port)?)
        } else {
            SocketAddr::new(
                args.listen.ip(),
                port(args.metrics_port + (args.datanodes + i) as u16)?,
            )
        };
        coordinators.push((addr, metrics));
    }
    let scheme = if args.insecure { "http" } else { "https" };
    let urls: Vec<String> = coordinators
        .iter()
        .map(|(a, _)| format!("{scheme}://{a}"))
        .collect();
    // Every client and datanode gets the whole group and finds the leader.
    let coordinator_url = urls.join(",");

    let data_dir = &args.data_dir;
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let exe = std::env::current_exe().context("cannot locate the dfs executable")?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());

    let peers = urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("{}={u}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    for (i, (addr, metrics)) in coordinators.iter().enumerate() {
        let (name, dir) = if args.coordinators == 1 {
            ("coordinator".to_string(), data_dir.join("coordinator"))
        } else {
            (
                format!("coordinator-{}", i + 1),
                data_dir.join(format!("coordinator-{}", i + 1)),
            )
        };
        let mut coordinator_args = vec![
            "coordinator".to_string(),
            "--listen".into(),
            addr.to_string(),
            "--metrics-addr".into(),
            metrics.to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--replication".into(),
            replication.to_string(),
            "--heartbeat-interval".into(),
            args.heartbeat_interval.clone(),
            "--dead-after".into(),
            args.dead_after.clone(),
            "--exit-with-parent".into(),
        ];
        if args.coordinators > 1 {
            coordinator_args.extend([
                "--raft-id".into(),
                (i + 1).to_string(),
                "--peers".into(),
                peers.clone(),
            ]);
        }
        if let Some(size) = args.chunk_size {
            coordinator_args.extend(["--chunk-size".into(), size.0.to_string()]);
        }
        services.push(Service {
            name: name.clone(),
            args: coordinator_args,
            log: logs.join(format!("{name}.log")),
            child: None,
            restart_at: None,
            repick: Vec::new(),
        });
        endpoints.push((name, urls[i].clone(), *metrics, dir));
    }
    for i in 0..args.datanodes {
        let listen = SocketAddr::new(args.listen.ip(), port(args.datanode_port + i as u16)?);
        let metrics = SocketAddr::new(args.listen.ip(), port(args.metrics_port + 1 + i as u16)?);
        let dir = data_dir.join(format!("datanode-{i}"));
        services.push(Service {
            name: format!("datanode-{i}"),
            args: vec![
                "datanode".into(),
                "--listen".into(),
                listen.to_string(),
                "--metrics-addr".into(),
                metrics.to_string(),
                "--coordinator".into(),
                coordinator_url.clone(),
                "--data-dir".into(),
                dir.display().to_string(),
                // Each local datanode is its own failure domain, so a local
                // cluster can hold `replication` copies on one machine.
                "--host".into(),
                format!("{host}-dn{i}"),
                "--heartbeat-interval".into(),
                args.heartbeat_interval.clone(),
                "--exit-with-parent".into(),
            ],
            log: logs.join(format!("datanode-{i}.log")),
            child: None,
            restart_at: None,
            // The values after --listen and --metrics-addr.
            repick: if pick { vec![2, 4] } else { Vec::new() },
        });
        endpoints.push((
            format!("datanode-{i}"),
            format!("{scheme}://{listen}"),
            metrics,
            dir,
        ));
    }
    // Every process gets its own identity (or, with --insecure, none); a
    // DFS_TLS_DIR or DFS_INSECURE in this shell is never inherited.
    let (admin, security) = if args.insecure {
        for service in &mut services {
            service.args.push("--insecure".into());
        }
        (None, dfs_common::tls::Security::insecure())
    } else {
        // A datanode's certificate names its node id (the coordinator takes
        // its reports only under that id); a coordinator's, its service name.
        let names: Vec<(String, dfs_common::tls::Kind, String)> = services
            .iter()
            .map(|s| {
                if s.args[0] == "coordinator" {
                    (
                        s.name.clone(),
                        dfs_common::tls::Kind::Coordinator,
                        s.name.clone(),
                    )
                } else {
                    let dir = s.arg("--data-dir").map(PathBuf::from).unwrap_or_default();
                    let id = dfs_common::pki::datanode_id(&dir);
                    (s.name.clone(), dfs_common::tls::Kind::Datanode, id)
                }
            })
            .collect();
        // Valid as servers at every address the others dial.
        let mut hosts = vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            host.clone(),
        ];
        if !args.listen.ip().is_unspecified() {
            hosts.push(args.listen.ip().to_string());
        }
        hosts.sort();
        hosts.dedup();
        let admin = issue_identities(data_dir, &names, &hosts)?;
        // The chunk-token keys (made once, kept across restarts: tokens
        // handed out before a restart stay valid).
        let token_keys = std::path::absolute(tls_root(data_dir).join("token-keys"))
            .unwrap_or_else(|_| tls_root(data_dir).join("token-keys"));
        dfs_common::token::create_key_file(&token_keys)
            .context("cannot create the chunk-token keys")?;
        for service in &mut services {
            let dir = std::path::absolute(tls_root(data_dir).join(&service.name))
                .unwrap_or_else(|_| tls_root(data_dir).join(&service.name));
            service
                .args
                .extend(["--tls-dir".into(), dir.display().to_string()]);
            if service.args[0] == "coordinator" {
                service
                    .args
                    .extend(["--token-keys".into(), token_keys.display().to_string()]);
            }
        }
        let tls = dfs_common::tls::Tls::load(&admin).context("cannot load the admin identity")?;
        (Some(admin), dfs_common::tls::Security::tls(tls))
    };
    for service in &mut services {
        service.spawn(&exe)?;
    }

    // A child that dies while the cluster comes up (a port taken between
    // picking and binding it, a slow disk) is restarted as it would be later.
    let ready = tokio::select! {
        r = wait_ready(&coordinator_url, args.datanodes, &security) => r,
        () = supervise(&mut services, &exe) => Err(anyhow::anyhow!("interrupted before the cluster was ready")),
    };
    if let Err(e) = ready {
        stop(&mut services).await;
        return Err(e.context(format!(
            "the cluster did not come up; see the logs in {}{}",
            logs.display(),
            log_tails(&services)
        )));
    }

    say!("dfs cluster is up (replication {replication})");
    for ((name, url, metrics, dir), service) in endpoints.iter().zip(&services) {
        // A datanode restarted on new ports prints where it is now.
        let (url, metrics) = match (service.arg("--listen"), service.arg("--metrics-addr")) {
            (Some(listen), Some(m)) if !service.repick.is_empty() => {
                (format!("{scheme}://{listen}"), m.to_string())
            }
            _ => (url.clone(), metrics.to_string()),
        };
        say!(
            "  {name:<12} {url:<24} metrics http://{metrics}/metrics  pid {}  data {}",
            service.pid(),
            dir.display()
        );
    }
    say!("  logs         {}", logs.display());
    if let Some(admin) = &admin {
        say!(
            "client credentials: {}   (export DFS_TLS_DIR={})",
            admin.display(),
            admin.display()
        );
    }
    say!("coordinator endpoint: {coordinator_url}   (export DFS_COORDINATOR={coordinator_url})");
    say!("Press Ctrl-C to stop.");

    supervise(&mut services, &exe).await;
    stop(&mut services).await;
    say!("dfs cluster stopped");
    Ok(())
}

/// The last lines of every service's log, for an error that the logs
/// explain (they may be gone by the time someone looks).
fn log_tails(services: &[Service]) -> String {
    const LINES: usize = 6;
    let mut out = String::new();
    for service in services {
        let Ok(text) = std::fs::read_to_string(&service.log) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!(
            "\n--- {} (last lines of {})",
            service.name,
            service.log.display()
        ));
        for line in &lines[lines.len().saturating_sub(LINES)..] {
            out.push_str("\n  ");
            out.push_str(line);
        }
    }
    out
}

/// Waits until the coordinator answers and `datanodes` nodes are healthy.
async fn wait_ready(
    coordinator: &str,
    datanodes: usize,
    security: &dfs_common::tls::Security,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("coordinator not reachable yet");
    while Instant::now() < deadline {
        let mut config = ClientConfig::new(coordinator);
        config.security = security.clone();
        config.connect_timeout = Duration::from_secs(1);
        config.request_timeout = Duration::from_secs(2);
        match Client::connect(config).await {
            Ok(client) => match client.nodes().await {
                Ok(nodes) => {
                    let healthy = nodes
                        .iter()
                        .filter(|n| n.state == Some(NodeState::Healthy))
                        .count();
                    if healthy >= datanodes {
                        return Ok(());
                    }
                    let others: Vec<String> = nodes
                        .iter()
                        .filter(|n| n.state != Some(NodeState::Healthy))
                        .map(|n| format!("{} {:?}", n.node_id, n.state))
                        .collect();
                    last = format!(
                        "{healthy} of {datanodes} datanodes healthy (registered, not healthy: [{}])",
                        others.join(", ")
                    );
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "timed out after {READY_TIMEOUT:?}: {last} (see the logs under the data dir; a datanode \
         refuses a coordinator of another cluster, e.g. one whose directory was deleted)"
    )
}

/// Restarts children that die, until Ctrl-C or SIGTERM.
async fn supervise(services: &mut [Service], exe: &Path) {
    let shutdown = dfs_common::shutdown::signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        for service in services.iter_mut() {
            if let Some(child) = service.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                tracing::warn!(
                    "{} exited ({status}); restarting in {RESTART_DELAY:?} (log: {})",
                    service.name,
                    service.log.display()
                );
                service.child = None;
                service.restart_at = Some(Instant::now() + RESTART_DELAY);
            }
            if service.restart_at.is_some_and(|at| Instant::now() >= at) {
                match service.repick_ports().and_then(|()| service.spawn(exe)) {
                    Ok(()) => tracing::info!("{} restarted, pid {}", service.name, service.pid()),
                    Err(e) => {
                        tracing::error!("failed to restart {}: {e:#}", service.name);
                        service.restart_at = Some(Instant::now() + RESTART_DELAY);
                    }
                }
            }
        }
    }
}

/// Stops every child: datanodes first, then the coordinator. Closing stdin
/// asks for a clean shutdown; a child still running after the grace period
/// is killed.
async fn stop(services: &mut [Service]) {
    for service in services.iter_mut().rev() {
        let Some(mut child) = service.child.take() else {
            continue;
        };
        drop(child.stdin.take());
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    "{} did not stop in {STOP_GRACE:?}; killing it",
                    service.name
                );
                let _ = child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod repick_tests {
    use super::*;

    #[test]
    fn a_restarted_datanode_on_picked_ports_gets_new_ones() {
        // Hold the port the datanode was given, as another process would.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let mut service = Service {
            name: "datanode-0".into(),
            args: vec![
                "datanode".into(),
                "--listen".into(),
                addr.clone(),
                "--metrics-addr".into(),
                addr.clone(),
            ],
            log: PathBuf::from("/dev/null"),
            child: None,
            restart_at: None,
            repick: vec![2, 4],
        };
        service.repick_ports().unwrap();
        for flag in ["--listen", "--metrics-addr"] {
            let now: SocketAddr = service.arg(flag).unwrap().parse().unwrap();
            assert_eq!(now.ip().to_string(), "127.0.0.1");
            assert_ne!(now.to_string(), addr, "{flag} still on the taken port");
        }
        // A fixed port is kept.
        service.repick.clear();
        let before = service.args.clone();
        service.repick_ports().unwrap();
        assert_eq!(service.args, before);
    }
}
