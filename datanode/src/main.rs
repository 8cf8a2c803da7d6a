//! `dfs-datanode`: parse flags, set up logging, serve until SIGTERM.
//!
//! It keeps the system allocator, unlike the coordinator: with mimalloc the
//! peak memory of an upload stream (pipeline_bench, VmHWM) rose from 9.8 to
//! 20.7 MiB, allocator caching of freed 256 KiB frames across threads, past
//! the 16 MiB per-stream bound a node on every machine must keep.

use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = dfs_datanode::Config::parse();
    if let Some((uid, gid)) = config.chown_data_dir {
        let changed =
            dfs_datanode::fsio::chown_tree(&config.data_dir, uid, gid).with_context(|| {
                format!(
                    "failed to give {} to {uid}:{gid}",
                    config.data_dir.display()
                )
            })?;
        println!(
            "{}: {changed} entries given to {uid}:{gid}",
            config.data_dir.display()
        );
        return Ok(());
    }
    dfs_common::bootstrap::block_on(dfs_common::bootstrap::serve("dfs-datanode", |shutdown| {
        dfs_datanode::run(config, shutdown)
    }))
    .context("start the async runtime")?
    .context("failed to run the datanode")
}
