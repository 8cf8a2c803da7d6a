//! Command-line definitions and dispatch.

/// Prints a line to stdout, ignoring a closed pipe (`dfs ls | head`): the
/// reader went away, which is not an error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench;
mod output;
mod transfer;
#[cfg(feature = "local-cluster")]
mod up;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dfs_client::{Client, ClientConfig};
use dfs_common::size::ByteSize;

/// Default coordinator endpoint: the one `dfs up` starts by default.
pub const DEFAULT_COORDINATOR: &str = "https://127.0.0.1:7000";

/// Client credentials when neither `--credentials` nor `DFS_TLS_DIR` is
/// given: the admin identity of a `dfs up` in this directory.
pub const DEFAULT_CREDENTIALS: &str = "dfs-data/tls/admin";

/// dfs: a Kubernetes-native distributed file system.
#[derive(Parser, Debug)]
#[command(name = "dfs", version, about, propagate_version = true)]
pub struct Cli {
    /// Coordinator gRPC endpoint (`https://` with TLS, `http://` for a
    /// cluster run with --insecure).
    #[arg(long, global = true, env = "DFS_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    coordinator: String,

    /// Directory with this client's TLS identity (`ca.crt`, `tls.crt`,
    /// `tls.key`) for `https://` endpoints; default: `./dfs-data/tls/admin`
    /// when it exists (what `dfs up` issues; it prints the export line).
    #[arg(long, global = true, env = "DFS_TLS_DIR")]
    credentials: Option<PathBuf>,

    /// File holding a bearer token the coordinator verifies: every
    /// coordinator call then carries it, and has the path roles of the user
    /// it names (on top of the client certificate). A file, not the token
    /// itself, so that it never shows in the process list.
    #[arg(long, global = true, env = "DFS_BEARER_TOKEN_FILE")]
    bearer_token_file: Option<PathBuf>,

    /// Chunks transferred in parallel by put and get.
    #[arg(long, global = true, default_value_t = 4)]
    concurrency: usize,

    /// Let any member of a coordinator group answer reads (stat, ls, get's
    /// chunk map) from what it has applied, instead of the leader after it
    /// confirmed it leads: faster and available without a leader, but it
    /// may miss the latest writes.
    #[arg(long, global = true, env = "DFS_STALE_READS")]
    stale_reads: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local cluster (a coordinator and N datanodes) and run it until Ctrl-C.
    #[cfg(feature = "local-cluster")]
    Up(up::UpArgs),
    /// Upload a local file (`-` for stdin) to a remote path.
    Put {
        /// Replication factor (default: the cluster's).
        #[arg(long, short = 'r')]
        replication: Option<u32>,
        /// Chunk size, e.g. 4MiB (default: the cluster's).
        #[arg(long)]
        chunk_size: Option<ByteSize>,
        /// Replace the remote file if it exists (atomically).
        #[arg(long)]
        overwrite: bool,
        /// Local file, or `-` for standard input.
        local: String,
        /// Remote path, e.g. /data/file.bin.
        remote: String,
    },
    /// Download a remote file to a local path (`-` for stdout).
    Get {
        /// Remote path.
        remote: String,
        /// Local file, or `-` for standard output.
        local: String,
    },
    /// List a directory.
    Ls {
        /// Remote directory (default /).
        #[arg(default_value = "/")]
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Describe a file or directory (JSON lists every chunk and its replicas).
    Stat {
        /// Remote path.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a directory and its missing parents.
    Mkdir {
        /// Remote directory.
        path: String,
    },
    /// Delete a file, or a directory with -r.
    Rm {
        /// Delete a directory and everything below it.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Remote path.
        path: String,
    },
    /// Rename or move a file or directory.
    Mv {
        /// Existing remote path.
        source: String,
        /// New remote path.
        destination: String,
    },
    /// List datanodes: id, address, state, used/total, last heartbeat.
    Nodes {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Health summary: datanodes by state, under-replicated and missing chunks.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Safe mode (admin): while on, the coordinator deletes and repairs
    /// nothing. It is on after every coordinator start until the datanodes
    /// reported; `dfs status` says why.
    Safemode {
        /// `enter`, `leave` or `get`.
        #[arg(value_enum)]
        action: SafeModeAction,
    },
    /// The coordinator group's membership (admin), one change at a time:
    /// `add ID URL` makes a coordinator started with `--initial-cluster-state
    /// existing` a learner; `voters ID,ID,...` makes exactly those the voters
    /// (learners promoted, voters not named removed). A member that came
    /// back on an empty volume is removed with `voters`, then added again.
    Coordinators {
        #[command(subcommand)]
        action: CoordinatorsAction,
    },
    /// Drain a datanode before removing it (or cancel with --cancel).
    Decommission {
        /// Node id (see `dfs nodes`).
        node: String,
        /// Cancel a decommission in progress.
        #[arg(long)]
        cancel: bool,
    },
    /// Measure put/get throughput and small-file operations per second.
    Bench(bench::BenchArgs),
    /// Run a coordinator (same as the dfs-coordinator binary).
    #[cfg(feature = "local-cluster")]
    Coordinator(dfs_coordinator::Config),
    /// Run a datanode (same as the dfs-datanode binary).
    #[cfg(feature = "local-cluster")]
    Datanode(dfs_datanode::Config),
}

/// What `dfs coordinators` does.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum CoordinatorsAction {
    /// Add coordinator ID, reachable by the others at URL, as a learner.
    Add {
        /// Its Raft id (`--raft-id`).
        id: u64,
        /// Its gRPC URL, e.g. http://10.0.0.4:7000.
        url: String,
    },
    /// Make exactly these ids the voters (comma-separated).
    Voters {
        /// E.g. 1,2,3.
        #[arg(value_delimiter = ',', required = true)]
        ids: Vec<u64>,
    },
}

/// What `dfs safemode` does.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SafeModeAction {
    /// Enter safe mode (stays on until left by hand).
    Enter,
    /// Leave safe mode now.
    Leave,
    /// Show whether it is on and why.
    Get,
}

/// The client's credentials: loaded only for `https://` coordinators (a
/// plain-text cluster needs none), from `--credentials` / `DFS_TLS_DIR`,
/// else `./dfs-data/tls/admin`.
fn client_security(cli: &Cli) -> anyhow::Result<dfs_common::tls::Security> {
    let tls = cli.coordinator.contains("https://");
    #[cfg(feature = "local-cluster")]
    let serves = matches!(
        cli.command,
        Command::Up(_) | Command::Coordinator(_) | Command::Datanode(_)
    );
    #[cfg(not(feature = "local-cluster"))]
    let serves = false;
    if !tls || serves {
        return Ok(dfs_common::tls::Security::insecure());
    }
    let dir = match &cli.credentials {
        Some(d) => d.clone(),
        None if std::path::Path::new(DEFAULT_CREDENTIALS)
            .join("tls.crt")
            .exists() =>
        {
            PathBuf::from(DEFAULT_CREDENTIALS)
        }
        None => anyhow::bail!(
            "{} is served over TLS and no client credentials were found: set DFS_TLS_DIR (dfs up prints it) or --credentials DIR, or use an http:// endpoint for a cluster run with --insecure",
            cli.coordinator
        ),
    };
    let tls = dfs_common::tls::Tls::load(&dir)
        .with_context(|| format!("cannot load the client credentials in {}", dir.display()))?;
    Ok(dfs_common::tls::Security::tls(tls))
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let security = client_security(&cli)?;
    let bearer = match &cli.bearer_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the bearer token in {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let config = || {
        let mut config = ClientConfig::new(cli.coordinator.clone());
        config.concurrency = cli.concurrency.max(1);
        config.stale_reads = cli.stale_reads;
        config.security = security.clone();
        config.bearer_token = bearer.clone();
        config
    };
    let connect = || Client::connect(config());
    match cli.command {
        #[cfg(feature = "local-cluster")]
        Command::Up(args) => {
            dfs_common::telemetry::init("info");
            up::run(args).await
        }
        Command::Bench(args) => {
            let mut config = config();
            config.batch_small_files = !args.no_batching;
            bench::run(&Client::connect(config).await?, args).await
        }
        #[cfg(feature = "local-cluster")]
        Command::Coordinator(config) => {
            dfs_common::bootstrap::serve("dfs coordinator", |shutdown| {
                dfs_coordinator::run(config, shutdown)
            })
            .await
            .context("coordinator failed")
        }
        #[cfg(feature = "local-cluster")]
        Command::Datanode(config) => dfs_common::bootstrap::serve("dfs datanode", |shutdown| {
            dfs_datanode::run(config, shutdown)
        })
        .await
        .context("datanode failed"),
        Command::Put {
            replication,
            chunk_size,
            overwrite,
            local,
            remote,
        } => {
            let options = dfs_client::PutOptions {
                replication: replication.unwrap_or(0),
                chunk_size: chunk_size.map_or(0, |s| s.0),
                overwrite,
                progress: None,
            };
            transfer::put(&connect().await?, &local, &remote, options).await
        }
        Command::Get { remote, local } => transfer::get(&connect().await?, &remote, &local).await,
        Command::Ls { path, json } => {
            let entries = connect().await?.list(&path).await?;
            output::print_list(&entries, json);
            Ok(())
        }
        Command::Stat { path, json } => {
            let client = connect().await?;
            let info = client.stat(&path).await?;
            let map = if info.is_file() {
                Some(client.chunk_map(&path).await?)
            } else {
                None
            };
            output::print_stat(&info, map.as_ref(), json);
            Ok(())
        }
        Command::Mkdir { path } => {
            connect().await?.mkdir(&path, true).await?;
            Ok(())
        }
        Command::Rm { recursive, path } => {
            connect().await?.delete(&path, recursive).await?;
            Ok(())
        }
        Command::Mv {
            source,
            destination,
        } => {
            connect().await?.rename(&source, &destination).await?;
            Ok(())
        }
        Command::Nodes { json } => {
            let nodes = connect().await?.nodes().await?;
            output::print_nodes(&nodes, json);
            Ok(())
        }
        Command::Status { json } => {
            let status = connect().await?.status().await?;
            output::print_status(&status, json);
            Ok(())
        }
        Command::Safemode { action } => {
            let client = connect().await?;
            let status = match action {
                SafeModeAction::Enter => client.set_safe_mode(true).await?,
                SafeModeAction::Leave => client.set_safe_mode(false).await?,
                SafeModeAction::Get => client.status().await?,
            };
            let sm = status.safe_mode;
            println!(
                "safe mode: {} ({})",
                if sm.active { "ON" } else { "off" },
                sm.reason
            );
            Ok(())
        }
        Command::Coordinators { action } => {
            let client = connect().await?;
            let status = match action {
                CoordinatorsAction::Add { id, url } => client.add_coordinator(id, &url).await?,
                CoordinatorsAction::Voters { ids } => client.set_coordinator_voters(&ids).await?,
            };
            output::print_status(&status, false);
            Ok(())
        }
        Command::Decommission { node, cancel } => {
            let node = dfs_client::NodeId::parse(&node)?;
            let status = connect().await?.decommission(&node, cancel).await?;
            output::print_nodes(std::slice::from_ref(&status), false);
            Ok(())
        }
    }
}

/// `-` means the standard stream; anything else a local path.
fn local_target(arg: &str) -> Option<PathBuf> {
    (arg != "-").then(|| PathBuf::from(arg))
}
