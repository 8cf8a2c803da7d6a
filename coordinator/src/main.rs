//! `dfs-coordinator`: parse flags, init tracing, run until SIGTERM/Ctrl-C.

use anyhow::Context;
use clap::Parser;

/// mimalloc instead of glibc malloc: under load glibc's allocator took
/// about 15% of a server's CPU (per-request allocations freed on other
/// threads); see docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = dfs_coordinator::Config::parse();
    dfs_common::bootstrap::block_on(dfs_common::bootstrap::serve(
        "dfs-coordinator",
        |shutdown| dfs_coordinator::run(config, shutdown),
    ))
    .context("start the async runtime")?
    .context("run coordinator")
}
