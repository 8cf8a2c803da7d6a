//! `dfs put` and `dfs get`: the library's transfers plus a progress bar with
//! throughput when stderr is a terminal (quiet when piped).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dfs_client::{Client, ProgressFn, PutOptions};
use indicatif::{ProgressBar, ProgressStyle};

use super::local_target;

/// Files smaller than this finish before a bar would be useful.
const PROGRESS_MIN_BYTES: u64 = 8 << 20;

fn progress_bar(total: u64, verb: &str) -> Option<ProgressBar> {
    if total < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(verb.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

fn as_progress(bar: &Option<ProgressBar>) -> Option<ProgressFn> {
    bar.clone()
        .map(|bar| Arc::new(move |n: u64| bar.inc(n)) as ProgressFn)
}

/// Uploads `local` (or stdin) to `remote`.
pub async fn put(
    client: &Client,
    local: &str,
    remote: &str,
    mut options: PutOptions,
) -> anyhow::Result<()> {
    match local_target(local) {
        Some(path) => {
            let size = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            let bar = progress_bar(size, "put");
            options.progress = as_progress(&bar);
            let result = client.put_file(&path, remote, &options).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            result?;
        }
        None => {
            client
                .put_reader(tokio::io::stdin(), remote, &options)
                .await?;
        }
    }
    Ok(())
}

/// Downloads `remote` to `local` (or stdout).
pub async fn get(client: &Client, remote: &str, local: &str) -> anyhow::Result<()> {
    match local_target(local) {
        Some(path) => {
            let size = client.stat(remote).await?.size;
            let bar = progress_bar(size, "get");
            let result = client
                .get_file_with_progress(remote, &path, as_progress(&bar))
                .await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            result?;
        }
        None => {
            let mut stdout = tokio::io::stdout();
            client.get(remote, &mut stdout).await?;
        }
    }
    Ok(())
}
