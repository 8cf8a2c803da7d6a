//! The observability endpoint of a service: `/metrics` (Prometheus text
//! format), `/healthz` (the process is alive) and `/readyz` (the service is
//! ready for traffic, as the service decides through [`Readiness`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Whether a service is ready for traffic and still alive. `/readyz`
/// answers 200 only when set ready and healthy; `/healthz` only when healthy:
/// not marked failed (a dead committer, a poisoned lock: the process must be
/// restarted) and every watched loop beat recently (a stuck tick).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<ProbeState>);

#[derive(Debug, Default)]
struct ProbeState {
    ready: AtomicBool,
    failed: std::sync::Mutex<Option<String>>,
    watchdogs: std::sync::Mutex<Vec<Watchdog>>,
}

/// A loop that must beat at least every `stale_after_ms`.
#[derive(Debug, Clone)]
pub struct Watchdog {
    name: &'static str,
    last_beat_ms: Arc<std::sync::atomic::AtomicU64>,
    stale_after_ms: u64,
}

impl Watchdog {
    /// Records that the loop is alive now.
    pub fn beat(&self) {
        self.last_beat_ms
            .store(crate::time::monotonic_ms(), Ordering::Release);
    }
}

impl Readiness {
    /// Marks the service ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    /// Marks the service failed for good (both probes fail from now on).
    pub fn fail(&self, reason: impl Into<String>) {
        let mut failed = self.0.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_none() {
            *failed = Some(reason.into());
        }
    }

    /// A watchdog for a loop that must beat at least every `stale_after`;
    /// it starts beaten now.
    pub fn watchdog(&self, name: &'static str, stale_after: std::time::Duration) -> Watchdog {
        let w = Watchdog {
            name,
            last_beat_ms: Arc::new(std::sync::atomic::AtomicU64::new(
                crate::time::monotonic_ms(),
            )),
            stale_after_ms: stale_after.as_millis() as u64,
        };
        self.0
            .watchdogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w.clone());
        w
    }

    /// Why the service is unhealthy, if it is.
    pub fn unhealthy(&self) -> Option<String> {
        if let Some(r) = self
            .0
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(r);
        }
        let now = crate::time::monotonic_ms();
        let dogs = self.0.watchdogs.lock().unwrap_or_else(|e| e.into_inner());
        dogs.iter().find_map(|w| {
            let age = now.saturating_sub(w.last_beat_ms.load(Ordering::Acquire));
            (age > w.stale_after_ms).then(|| format!("{} has not run for {age} ms", w.name))
        })
    }

    /// Current readiness (ready and healthy).
    pub fn get(&self) -> bool {
        self.0.ready.load(Ordering::Acquire) && self.unhealthy().is_none()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    readiness: Readiness,
}

/// Renders every metric of `registry` in the Prometheus text format.
pub fn render_metrics(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!("failed to encode metrics: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&state.registry),
    )
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.unhealthy() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}"),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(reason) = state.readiness.unhealthy() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
    } else if state.readiness.get() {
        (StatusCode::OK, "ready".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_string())
    }
}

/// The router serving `/metrics`, `/healthz` and `/readyz`.
pub fn router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry,
            readiness,
        })
}

/// Serves the observability endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Fetches `/metrics` from the endpoint at `addr` (plain HTTP/1.1, the
/// connection closed after one answer) and returns the body: what tests,
/// benchmarks and tools read a service's metrics with.
pub async fn scrape(addr: std::net::SocketAddr) -> std::io::Result<String> {
    match fetch(addr, "/metrics").await? {
        (200, body) => Ok(body),
        (code, _) => Err(std::io::Error::other(format!(
            "GET /metrics on {addr} answered {code}"
        ))),
    }
}

/// One plain HTTP/1.1 GET of `path` on `addr`: the status code and the body
/// (probes, metrics).
pub async fn fetch(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("GET {path} on {addr}: no HTTP answer")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("GET {path} on {addr}: {head:?}")))?;
    Ok((code, body.to_string()))
}

/// The value of one sample in Prometheus text: `series` is the metric name
/// with its labels as rendered (`name{a="x",b="y"}`, labels sorted by name).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::IntCounter;

    #[tokio::test]
    async fn serves_metrics_and_probes() {
        let registry = Registry::new();
        let counter = IntCounter::new("dfs_test_things_total", "Things.").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let readiness = Readiness::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            registry,
            readiness.clone(),
            std::future::pending(),
        ));

        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut body = String::new();
            stream.read_to_string(&mut body).await.unwrap();
            body
        };
        assert!(get("/metrics").await.contains("dfs_test_things_total 3"));
        let text = scrape(addr).await.unwrap();
        assert!(text.starts_with("# HELP"), "the body alone: {text}");
        assert_eq!(sample(&text, "dfs_test_things_total"), Some(3.0));
        assert_eq!(sample(&text, "dfs_test_things"), None);
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        readiness.set(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));

        // A loop that stops beating fails both probes...
        let dog = readiness.watchdog("the test loop", std::time::Duration::from_millis(50));
        dog.beat();
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
        let h = get("/healthz").await;
        assert!(
            h.starts_with("HTTP/1.1 503") && h.contains("the test loop"),
            "{h}"
        );
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        dog.beat();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        // ... and a failure fails them for good, whatever else says.
        readiness.fail("metadata log write failed");
        dog.beat();
        readiness.set(true);
        let h = get("/healthz").await;
        assert!(
            h.starts_with("HTTP/1.1 503") && h.contains("metadata log"),
            "{h}"
        );
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        assert!(!readiness.get());
    }
}
