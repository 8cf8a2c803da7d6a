//! `dfs bench`: throughput of large files and operations per second of small
//! files against any running cluster, with p50/p99 latencies. Prints a table,
//! or JSON for machines (`scripts/bench.sh` compares it with the machine's
//! limits).

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use dfs_client::{Client, PutOptions};
use dfs_common::size::ByteSize;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

/// Flags of `dfs bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Size of each large file.
    #[arg(long, default_value = "1GiB")]
    size: ByteSize,
    /// Large files put (and read back) at the same time.
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// Replication factor (default: the cluster's).
    #[arg(long, short = 'r')]
    replication: Option<u32>,
    /// Chunk size of the large files (default: the cluster's).
    #[arg(long)]
    chunk_size: Option<ByteSize>,
    /// Times the large files are re-read from the datanodes' page cache
    /// (each pass is its own row; more passes steady the figure or give a
    /// profiler time to sample).
    #[arg(long, default_value_t = 1)]
    rereads: usize,
    /// Number of small files.
    #[arg(long, default_value_t = 2000)]
    small_files: usize,
    /// Size of each small file.
    #[arg(long, default_value = "4KiB")]
    small_size: ByteSize,
    /// Small-file operations in flight at once.
    #[arg(long, default_value_t = 16)]
    small_concurrency: usize,
    /// Plan and confirm every small file in its own calls instead of
    /// batching concurrent ones (UploadFiles, ConfirmUploads).
    #[arg(long)]
    pub no_batching: bool,
    /// Skip the large-file part.
    #[arg(long)]
    skip_large: bool,
    /// Skip the small-file part.
    #[arg(long)]
    skip_small: bool,
    /// Remote directory to work in (default: /bench-<pid>); removed afterwards.
    #[arg(long)]
    dir: Option<String>,
    /// Keep the files written.
    #[arg(long)]
    keep: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One measured operation.
struct Row {
    name: String,
    ops: usize,
    bytes: u64,
    elapsed: Duration,
    /// Per-operation latencies (empty for the large-file rows).
    latencies: Vec<Duration>,
}

impl Row {
    fn throughput(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_ms(&self, p: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        Some(sorted[rank].as_secs_f64() * 1000.0)
    }
}

/// Deterministic, incompressible-enough test bytes without a slow RNG:
/// xorshift64* over 8-byte words.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs the benchmark and prints the results.
pub async fn run(client: &Client, args: BenchArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| format!("/bench-{}", std::process::id()));
    client.mkdir(&dir, true).await?;
    let result = measure(client, &args, &dir).await;
    if !args.keep {
        client.delete(&dir, true).await.ok();
    }
    let rows = result?;
    print(&rows, &args);
    Ok(())
}

async fn measure(client: &Client, args: &BenchArgs, dir: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if !args.skip_large {
        let local = tempfile::NamedTempFile::new().context("cannot create a local test file")?;
        let size = args.size.0;
        let path = local.path().to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
            let block = 1 << 20;
            let mut written = 0u64;
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            while written < size {
                let n = (size - written).min(block) as usize;
                f.write_all(&pattern(n, seed))?;
                seed = seed.wrapping_add(0x9e37_79b9);
                written += n as u64;
            }
            f.flush()
        })
        .await??;
        let options = PutOptions {
            replication: args.replication.unwrap_or(0),
            chunk_size: args.chunk_size.map_or(0, |s| s.0),
            overwrite: true,
            progress: None,
        };
        let names: Vec<String> = (0..args.files.max(1))
            .map(|i| format!("{dir}/large-{i}"))
            .collect();
        let start = Instant::now();
        futures::stream::iter(names.iter())
            .map(|name| client.put_file(local.path(), name, &options))
            .buffer_unordered(names.len())
            .try_collect::<Vec<_>>()
            .await?;
        rows.push(Row {
            name: format!("put {} x{}", args.size, names.len()),
            ops: names.len(),
            bytes: size * names.len() as u64,
            elapsed: start.elapsed(),
            latencies: Vec::new(),
        });
        // Read twice: datanodes write chunks with O_DIRECT, so the first
        // read comes from their disks (compare with the disk's read speed);
        // the re-read is served from their page cache and measures the
        // network data path (compare with loopback TCP).
        let passes = std::iter::once("first read".to_string()).chain((1..=args.rereads).map(|i| {
            match args.rereads {
                1 => "re-read".to_string(),
                _ => format!("re-read {i}"),
            }
        }));
        for pass in passes {
            let start = Instant::now();
            futures::stream::iter(names.iter())
                .map(|name| client.verify(name))
                .buffer_unordered(names.len())
                .try_collect::<Vec<_>>()
                .await?;
            rows.push(Row {
                name: format!("get {} x{} (verified, {pass})", args.size, names.len()),
                ops: names.len(),
                bytes: size * names.len() as u64,
                elapsed: start.elapsed(),
                latencies: Vec::new(),
            });
        }
    }
    if !args.skip_small {
        let n = args.small_files;
        let c = args.small_concurrency.max(1);
        let payload = Bytes::from(pattern(args.small_size.0 as usize, 7));
        let options = PutOptions {
            replication: args.replication.unwrap_or(0),
            overwrite: true,
            ..PutOptions::default()
        };
        let name = |i: usize| format!("{dir}/small-{i:07}");
        rows.push(
            timed(
                format!("put {} (c={c})", args.small_size),
                n,
                args.small_size.0,
                c,
                |i| {
                    let (payload, options, remote) = (payload.clone(), options.clone(), name(i));
                    async move {
                        client
                            .put_bytes(payload, &remote, &options)
                            .await
                            .map(|_| ())
                    }
                },
            )
            .await?,
        );
        rows.push(
            timed(format!("stat (c={c})"), n, 0, c, |i| {
                let remote = name(i);
                async move { client.stat(&remote).await.map(|_| ()) }
            })
            .await?,
        );
        rows.push(
            timed(
                format!("get {} (c={c})", args.small_size),
                n,
                args.small_size.0,
                c,
                |i| {
                    let remote = name(i);
                    let len = payload.len();
                    async move {
                        let mut out = Vec::with_capacity(len);
                        client.get(&remote, &mut out).await.map(|_| ())
                    }
                },
            )
            .await?,
        );
    }
    Ok(rows)
}

/// Runs `n` operations, `concurrency` at a time, recording each latency.
async fn timed<F, Fut>(
    name: String,
    n: usize,
    bytes_each: u64,
    concurrency: usize,
    op: F,
) -> anyhow::Result<Row>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), dfs_client::ClientError>>,
{
    let start = Instant::now();
    let latencies = futures::stream::iter(0..n)
        .map(|i| {
            let fut = op(i);
            async move {
                let t = Instant::now();
                fut.await.map(|()| t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(Row {
        name,
        ops: n,
        bytes: bytes_each * n as u64,
        elapsed: start.elapsed(),
        latencies,
    })
}

fn print(rows: &[Row], args: &BenchArgs) {
    if args.json {
        let value: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "operation": r.name,
                    "ops": r.ops,
                    "bytes": r.bytes,
                    "seconds": r.elapsed.as_secs_f64(),
                    "bytes_per_second": r.throughput(),
                    "ops_per_second": r.ops_per_second(),
                    "p50_ms": r.percentile_ms(50.0),
                    "p99_ms": r.percentile_ms(99.0),
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return;
    }
    say!(
        "{:<38} {:>8} {:>9} {:>12} {:>10} {:>8} {:>8}",
        "OPERATION",
        "OPS",
        "SECONDS",
        "THROUGHPUT",
        "OPS/S",
        "P50 ms",
        "P99 ms"
    );
    for r in rows {
        let ms = |p| r.percentile_ms(p).map_or("-".into(), |v| format!("{v:.2}"));
        say!(
            "{:<38} {:>8} {:>9.2} {:>10}/s {:>10.0} {:>8} {:>8}",
            r.name,
            r.ops,
            r.elapsed.as_secs_f64(),
            ByteSize(r.throughput() as u64).to_string(),
            r.ops_per_second(),
            ms(50.0),
            ms(99.0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let row = Row {
            name: "x".into(),
            ops: 100,
            bytes: 0,
            elapsed: Duration::from_secs(1),
            latencies: (1..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(row.percentile_ms(50.0).unwrap().round(), 51.0);
        assert_eq!(row.percentile_ms(99.0).unwrap().round(), 99.0);
        assert_eq!(row.ops_per_second(), 100.0);
    }

    #[test]
    fn pattern_is_deterministic_and_varied() {
        assert_eq!(pattern(100, 3), pattern(100, 3));
        assert_ne!(pattern(100, 3), pattern(100, 4));
        assert_eq!(pattern(13, 1).len(), 13);
    }
}
