//! `dfs-operator`: `crd` prints the CustomResourceDefinition, `run` runs the
//! controller.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Default address of /metrics and /healthz.
const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9200";
/// Default name of the leader-election Lease.
const DEFAULT_LEASE_NAME: &str = "dfs-operator";

/// Kubernetes operator for dfs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the DfsCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, env = "DFS_OPERATOR_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
    /// Take part in leader election (disable only when a single replica runs).
    #[arg(long, env = "DFS_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "DFS_OPERATOR_LEASE_NAME", default_value = DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the election (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "DFS_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Timeout of calls to a cluster's coordinator, e.g. 5s.
    #[arg(long, env = "DFS_OPERATOR_COORDINATOR_TIMEOUT", default_value = "5s", value_parser = dfs_common::time::parse_duration)]
    coordinator_timeout: Duration,
    /// Call this coordinator URL for every cluster instead of its client
    /// Service, e.g. when the operator runs outside the cluster network.
    #[arg(long, env = "DFS_OPERATOR_COORDINATOR_URL")]
    coordinator_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", dfs_operator::crd::crd_yaml());
            Ok(())
        }
        Command::Run(args) => {
            dfs_common::bootstrap::serve("dfs-operator", |shutdown| run(args, shutdown)).await
        }
    }
}

async fn run(args: RunArgs, shutdown: dfs_common::bootstrap::Shutdown) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("failed to create the Kubernetes client")?;
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("failed to bind {}", args.metrics_addr))?;
    let identity = args
        .identity
        .unwrap_or_else(|| format!("dfs-operator-{}", std::process::id()));
    let config = dfs_operator::controller::Config {
        namespace: args.namespace,
        coordinator_timeout: args.coordinator_timeout,
        coordinator_url: args.coordinator_url,
        leader: args
            .leader_election
            .then(|| dfs_operator::leader::LeaseConfig {
                name: args.lease_name,
                namespace: args.lease_namespace,
                identity,
                ..dfs_operator::leader::LeaseConfig::default()
            }),
    };
    dfs_operator::controller::run(client, config, listener, shutdown)
        .await
        .context("controller failed")
}
