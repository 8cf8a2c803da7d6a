//! The one way a dfs server process starts and stops, used by every binary
//! that runs a server (`dfs-coordinator`, `dfs-datanode`, `dfs-operator`,
//! and `dfs coordinator` / `dfs datanode`): logging set up once from
//! `RUST_LOG` (default `info`), a start line naming the process and its
//! version, the server run until SIGTERM or Ctrl-C (it then drains), and a
//! last line saying how it ended.

use std::future::Future;
use std::pin::Pin;

/// The future a server drains on (SIGTERM or Ctrl-C).
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How long a stopped process waits for its blocking threads before it
/// exits anyway.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `body` to completion on a multi-threaded runtime, then shuts the
/// runtime down waiting at most [`STOP_GRACE`] for blocking threads. A
/// thread that cannot be interrupted — the stdin read behind
/// `--exit-with-parent`, a disk stuck in I/O — must never keep a server
/// that stopped (a fail-stop on a full metadata disk, say) alive: dropping
/// a runtime waits for them forever.
pub fn block_on<T>(body: impl Future<Output = T>) -> std::io::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(body);
    runtime.shutdown_timeout(STOP_GRACE);
    Ok(out)
}

/// Runs the server `server` makes, handing it the shutdown future, and
/// logs how it ended. The error is returned for the binary's edge to
/// report (and exit non-zero).
pub async fn serve<F, Fut, E>(name: &'static str, server: F) -> Result<(), E>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    crate::telemetry::init("info");
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting {name}");
    let result = server(Box::pin(crate::shutdown::signal())).await;
    match &result {
        Ok(()) => tracing::info!("{name} stopped"),
        Err(e) => tracing::error!("{name} failed: {e}"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_server_gets_the_shutdown_future_and_its_result_is_returned() {
        let got: Result<(), String> = serve("test", |shutdown| async move {
            // The handed-over future is the real one: it has not resolved.
            let pending = tokio::time::timeout(std::time::Duration::from_millis(20), shutdown);
            assert!(pending.await.is_err());
            Err("boom".to_string())
        })
        .await;
        assert_eq!(got, Err("boom".to_string()));
    }
}
