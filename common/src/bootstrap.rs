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
