//! Containers on a user-defined Docker network, for the partition scenario.
//!
//! Every container runs the `dfs` binary under test, bind-mounted read-only
//! into a minimal runtime image built offline by `scripts/build-base-image.sh`
//! (glibc and libgcc only; tagged `dfs-chaos-base:local`, built once when it
//! is missing). The CLI runs in throwaway containers on the same network, so
//! every byte moves over the Docker network that the test cuts with
//! `docker network disconnect` and heals with `docker network connect`.
//! Containers and the network are removed on drop, and leftovers of earlier
//! runs whose test process is gone are removed at start.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use dfs_testkit::process::{dfs_bin, wait_output};

/// Runtime image the containers use.
pub const BASE_IMAGE: &str = "dfs-chaos-base:local";
const LABEL: &str = "dfs-chaos.pid";

/// Runs `docker ARGS` with a deadline; `Err(stderr)` when it fails.
pub fn docker(args: &[&str]) -> Result<String, String> {
    docker_with_input(args, None)
}

/// Runs `docker ARGS` feeding `input` to its stdin.
pub fn docker_with_input(args: &[&str], input: Option<&[u8]>) -> Result<String, String> {
    docker_bytes(args, input).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Runs `docker ARGS` feeding `input` to its stdin; stdout as bytes.
pub fn docker_bytes(args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new("docker")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let data = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let out = wait_output(child, Duration::from_secs(120));
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why the container scenario cannot run here, or `None` when it can (a
/// Docker engine answers and the runtime image exists or was built).
pub fn unavailable() -> Option<String> {
    if let Err(e) = docker(&["version", "--format", "{{.Server.Version}}"]) {
        return Some(format!("no Docker engine answers ({e})"));
    }
    if docker(&["image", "inspect", BASE_IMAGE]).is_ok() {
        return None;
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-base-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dfs_bin())
        .env("DFS_BASE_IMAGE", BASE_IMAGE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|c| wait_output(c, Duration::from_secs(180)));
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "the runtime image could not be built: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", script.display())),
    }
}

/// Removes containers and networks of earlier runs whose process is gone.
fn remove_leftovers() {
    let filter = format!("label={LABEL}");
    let me = std::process::id().to_string();
    for kind in ["container", "network"] {
        let Ok(list) = docker(
            &[
                kind,
                "ls",
                "-a",
                "--filter",
                &filter,
                "--format",
                &format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}"),
            ]
            .into_iter()
            .filter(|a| !(kind == "network" && *a == "-a"))
            .collect::<Vec<_>>(),
        ) else {
            continue;
        };
        for line in list.lines() {
            let mut parts = line.split_whitespace();
            let (Some(id), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            if pid != me && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = if kind == "container" {
                    docker(&["rm", "-f", id])
                } else {
                    docker(&["network", "rm", id])
                };
            }
        }
    }
}

/// A Docker network with dfs containers on it; removed on drop.
#[derive(Debug)]
pub struct DockerCluster {
    /// Prefix of every name.
    pub prefix: String,
    /// The network.
    pub network: String,
    /// Datanode container names.
    pub datanodes: Vec<String>,
    /// Coordinator container name.
    pub coordinator: String,
    containers: Vec<String>,
}

impl DockerCluster {
    /// A coordinator and `datanodes` datanodes (replication 3, 1 MiB chunks,
    /// 200 ms heartbeats, dead after 3 s, surplus replicas deleted after 2 s).
    pub fn start(datanodes: usize) -> Result<DockerCluster, String> {
        remove_leftovers();
        let prefix = format!("dfs-chaos-{}", std::process::id());
        let network = format!("{prefix}-net");
        let label = format!("{LABEL}={}", std::process::id());
        docker(&["network", "create", "--label", &label, &network])?;
        let mut c = DockerCluster {
            coordinator: format!("{prefix}-coordinator"),
            prefix: prefix.clone(),
            network,
            datanodes: Vec::new(),
            containers: Vec::new(),
        };
        let coordinator = c.coordinator.clone();
        c.run_service(
            &coordinator,
            &[
                "coordinator",
                "--listen",
                "0.0.0.0:7000",
                "--metrics-addr",
                "0.0.0.0:9100",
                "--data-dir",
                "/home/nonroot/data",
                "--replication",
                "3",
                "--chunk-size",
                "1MiB",
                "--heartbeat-interval",
                crate::HEARTBEAT,
                "--suspect-after",
                crate::SUSPECT_AFTER,
                "--dead-after",
                "3s",
                "--over-replication-grace",
                "2s",
            ],
        )?;
        let url = format!("http://{coordinator}:7000");
        for i in 0..datanodes {
            let name = format!("{prefix}-dn{i}");
            let advertise = format!("http://{name}:7101");
            let host = format!("dn{i}");
            c.run_service(
                &name,
                &[
                    "datanode",
                    "--listen",
                    "0.0.0.0:7101",
                    "--advertise",
                    &advertise,
                    "--metrics-addr",
                    "0.0.0.0:9101",
                    "--coordinator",
                    &url,
                    "--data-dir",
                    "/home/nonroot/data",
                    "--host",
                    &host,
                    "--heartbeat-interval",
                    crate::HEARTBEAT,
                ],
            )?;
            c.datanodes.push(name);
        }
        Ok(c)
    }

    fn run_service(&mut self, name: &str, args: &[&str]) -> Result<(), String> {
        let bin = dfs_bin();
        let mount = format!("{}:/usr/local/bin/dfs:ro", bin.display());
        let label = format!("{LABEL}={}", std::process::id());
        let mut full = vec![
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            name,
            "--network",
            &self.network,
            "--label",
            &label,
            "-e",
            "RUST_LOG=info",
            "-v",
            &mount,
            BASE_IMAGE,
            "dfs",
        ];
        full.extend_from_slice(args);
        // Docker-network scenarios exercise faults, not TLS.
        full.push("--insecure");
        self.containers.push(name.to_string());
        docker(&full).map(|_| ())
    }

    /// Runs the `dfs` CLI in a throwaway container on the network.
    pub fn cli(&self, args: &[&str], input: Option<&[u8]>) -> Result<String, String> {
        self.cli_bytes(args, input)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Runs the `dfs` CLI in a throwaway container; stdout as bytes.
    pub fn cli_bytes(&self, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let bin = dfs_bin();
        let mount = format!("{}:/usr/local/bin/dfs:ro", bin.display());
        let url = format!("http://{}:7000", self.coordinator);
        let label = format!("{LABEL}={}", std::process::id());
        let mut full = vec![
            "run",
            "--rm",
            "-i",
            "--network",
            &self.network,
            "--label",
            &label,
            "-v",
            &mount,
            BASE_IMAGE,
            "dfs",
            "--coordinator",
            &url,
        ];
        full.extend_from_slice(args);
        docker_bytes(&full, input)
    }

    /// `dfs ARGS --json` parsed.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = self.cli(args, None)?;
        serde_json::from_str(&out).map_err(|e| format!("bad JSON from dfs {args:?}: {e}: {out}"))
    }

    /// Cuts `container` off the network.
    pub fn disconnect(&self, container: &str) -> Result<(), String> {
        docker(&["network", "disconnect", "--force", &self.network, container]).map(|_| ())
    }

    /// Connects `container` to the network again (same name, so the same DNS
    /// name for the others).
    pub fn connect(&self, container: &str) -> Result<(), String> {
        docker(&["network", "connect", &self.network, container]).map(|_| ())
    }

    /// The last lines of a container's log.
    pub fn logs(&self, container: &str, lines: usize) -> String {
        let child = Command::new("docker")
            .args(["logs", "--tail", &lines.to_string(), container])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match child {
            Ok(c) => {
                let out = wait_output(c, Duration::from_secs(30));
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            }
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                eprintln!("---- {c}\n{}", self.logs(c, 30));
            }
        }
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(self.containers.iter().map(String::as_str));
            let _ = docker(&args);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}
