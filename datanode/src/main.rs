//! `dfs-datanode`: parse flags, set up logging, serve until SIGTERM.

use anyhow::Context;
use clap::Parser;

/// mimalloc instead of glibc malloc: under load glibc's allocator took
/// about 15% of a server's CPU (per-request allocations freed on other
/// threads); see docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = dfs_datanode::Config::parse();
    dfs_common::telemetry::init("info");
    dfs_datanode::run(config, dfs_common::shutdown::signal())
        .await
        .context("failed to run the datanode")
}
