//! `dfs`: the command-line tool of dfs.
//!
//! Thin edge over the client library: parse flags, run one command, print a
//! result (human-readable or `--json`), and turn every failure into one clear
//! line and a non-zero exit. `dfs up` starts a whole local cluster;
//! `dfs coordinator` and `dfs datanode` run the services themselves (the same
//! code as the `dfs-coordinator` and `dfs-datanode` binaries), which is how
//! `dfs up` supervises them as child processes from one executable. Built
//! without the default `local-cluster` feature (as in the container image,
//! which ships the servers as their own binaries) it is only the client tool.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: under load glibc's allocator took
/// about 15% of a gRPC process's CPU (per-request allocations freed on other
/// threads); see docs/performance.md. The datanodes `dfs up` starts run in
/// this binary and so use it too; the production `dfs-datanode` keeps the
/// system allocator for its per-stream memory bound (see its main.rs).
#[cfg(feature = "local-cluster")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::run(args));
    // A blocking thread that cannot be interrupted (the stdin read behind
    // `--exit-with-parent`) must not keep a stopped server alive.
    runtime.shutdown_timeout(dfs_common::bootstrap::STOP_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
