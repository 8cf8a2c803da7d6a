//! `dfs-coordinator`: parse flags, init tracing, run until SIGTERM/Ctrl-C.

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = dfs_coordinator::Config::parse();
    dfs_common::telemetry::init("info");
    dfs_coordinator::run(config, dfs_common::shutdown::signal())
        .await
        .context("run coordinator")
}
