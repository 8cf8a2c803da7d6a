//! `dfs-datanode`: parse flags, set up logging, serve until SIGTERM.

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = dfs_datanode::Config::parse();
    dfs_common::telemetry::init("info");
    dfs_datanode::run(config, dfs_common::shutdown::signal())
        .await
        .context("failed to run the datanode")
}
