//! The dfs datanode: durable chunk storage and the streaming data path.
//!
//! ```text
//!            PrepareChunkUpload / UploadChunkStream      ReplicateChunk
//!  client ─────────────────────────────────────▶ [service] ──▶ [pipeline] ──▶ other datanodes
//!         ◀──────── DownloadChunkStream ──────── [read]          │
//!                                                   │            ▼
//!                                                   └──────▶ [store] (temp → fsync → rename)
//!                                                               ▲
//!  coordinator ◀── Register / Heartbeat ── [membership]         │ [scrub] re-verifies
//!              ──▶ commands (replicate, delete, config, report)
//! ```
//!
//! Modules import one way, top to bottom (`scripts/check-module-cycles.py`
//! keeps it so):
//!
//! - [`service`], [`routes`]: the gRPC edge (handlers, the zero-copy routes).
//! - [`membership`]: registration, heartbeats, coordinator commands.
//! - [`small_link`]: the receiving side of the small-chunk links.
//! - [`read`]: verified streaming reads (downloads and repair sends).
//! - [`pipeline`]: the upload on the primary and its frame-by-frame fan-out;
//!   the receiving side on replicas; preparing an upload session.
//! - [`node`]: the state every layer shares (store, sessions, peers).
//! - [`links`]: the sending side of the small-chunk links; [`peers`]: the
//!   channels to other datanodes.
//! - [`wire`]: wire messages parsed into typed values (`UploadStart`,
//!   `ReplicaHeader`, `Frame`, the frame streams behind `FrameSource`) and
//!   built from them towards peers; the data path's typed errors
//!   (`DataPathError`, [`store::StoreError`]) mapped to a gRPC status, once.
//!   The layers above never see a prost request type.
//! - [`identity`]: the cluster this node belongs to (fencing).
//! - [`store`]: chunk files with per-block CRC32C, atomic commit, capacity.
//! - [`volume`]: small chunks appended to volumes, group-committed.
//! - [`table`]: the in-memory state the store and the volumes share.
//! - [`fsio`]: the disk layer's error and durable-file helpers.
//! - [`scrub`]: background re-verification; [`staged`]: O_DIRECT staging;
//!   [`config`]: flags and `DFS_…` environment variables; [`metrics`]: the
//!   Prometheus registry served at `/metrics`.
//!
//! [`run`] binds the listeners and serves until shutdown; [`Datanode::start`]
//! takes pre-bound listeners (tests bind `127.0.0.1:0`).

pub mod config;
pub mod fsio;
pub mod identity;
pub mod links;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod pipeline;
pub mod read;
pub mod routes;
pub mod scrub;
pub mod service;
pub mod small_link;
pub mod staged;
pub mod store;
pub mod table;
pub mod volume;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use dfs_common::http::Readiness;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;
pub use metrics::Metrics;

use node::{Node, Sessions, blocking};
use peers::Peers;
use store::{Store, StoreError, StoreOptions};

/// Why the datanode could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DatanodeError {
    /// A listener could not be bound.
    #[error("failed to bind {what} listener on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data directory could not be opened.
    #[error("failed to open the chunk store: {0}")]
    OpenStore(#[from] StoreError),
    /// The gRPC server failed.
    #[error("failed to serve gRPC: {0}")]
    ServeGrpc(#[from] tonic::transport::Error),
    /// The metrics server failed.
    #[error("failed to serve metrics: {0}")]
    ServeMetrics(std::io::Error),
    /// Reading a listener's address failed.
    #[error("failed to read the listener address: {0}")]
    LocalAddr(std::io::Error),
    /// The TLS credentials could not be used (or neither --tls-dir nor
    /// --insecure was given).
    #[error(transparent)]
    Tls(#[from] dfs_common::tls::TlsError),
    /// The certificate is not a datanode's, or names another node than the
    /// one this data directory belongs to.
    #[error("{0}")]
    Identity(String),
}

/// Binds `--listen` and `--metrics-addr` and serves until `shutdown`
/// resolves, then drains in-flight streams.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DatanodeError> {
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|source| DatanodeError::Bind {
            what: "gRPC",
            addr: config.listen,
            source,
        })?;
    let metrics = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| DatanodeError::Bind {
            what: "metrics",
            addr: config.metrics_addr,
            source,
        })?;
    Datanode::start(config, grpc, metrics)
        .await?
        .serve(shutdown)
        .await
}

/// Serves on pre-bound listeners until `shutdown` resolves.
pub async fn run_with_listeners(
    config: Config,
    grpc: TcpListener,
    metrics: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DatanodeError> {
    Datanode::start(config, grpc, metrics)
        .await?
        .serve(shutdown)
        .await
}

/// A datanode whose store is open and whose listeners are bound, ready to
/// serve.
pub struct Datanode {
    node: Arc<Node>,
    grpc: TcpListener,
    metrics_listener: TcpListener,
}

impl Datanode {
    /// Opens the store (cleaning leftovers, indexing chunks) and loads or
    /// creates the node id.
    pub async fn start(
        config: Config,
        grpc: TcpListener,
        metrics_listener: TcpListener,
    ) -> Result<Datanode, DatanodeError> {
        let bound = grpc.local_addr().map_err(DatanodeError::LocalAddr)?;
        let security = dfs_common::tls::Security::from_flags_named(
            config.tls_dir.as_deref(),
            config.tls_name.as_deref(),
            config.insecure,
            dfs_common::tls::Kind::Datanode,
        )?;
        let metrics = Metrics::new();
        security.register_metrics(&metrics.registry, "dfs_datanode");
        let data_dir = config.data_dir.clone();
        let options = StoreOptions {
            capacity: config.capacity.map(|c| c.0),
            reserve: config.reserve.0,
            small_chunk_max: config.small_chunk_max.0,
            ..StoreOptions::default()
        };
        // With TLS the certificate names the node (`dfs://datanode/<node
        // id>`): the coordinator accepts this node's reports only under that
        // id, so the data directory must belong to it.
        let named = match security.credentials() {
            Some(tls) => {
                let p = tls.principal();
                if p.kind != dfs_common::tls::Kind::Datanode
                    || !dfs_proto::frame::is_valid_chunk_id(&p.name)
                {
                    return Err(DatanodeError::Identity(format!(
                        "the certificate in {} names {p}: a datanode needs dfs://datanode/<node id> (32 hex digits)",
                        tls.dir().display()
                    )));
                }
                Some(p.name)
            }
            None => None,
        };
        let m = metrics.clone();
        let (store, node_id, cluster) = blocking(move || {
            std::fs::create_dir_all(&data_dir).map_err(|source| StoreError::Io {
                action: "create",
                path: data_dir.clone(),
                source,
            })?;
            let node_id = load_or_create_node_id(&data_dir, named.as_deref())?;
            let cluster = membership::ClusterIdentity::load(&data_dir)?;
            let store = Store::open(&data_dir, options, m)?;
            Ok((store, node_id, cluster))
        })
        .await?;
        let node_id = node_id?;
        let advertise = config.advertise_for(bound);
        tracing::info!(%node_id, cluster_id = %cluster.get().unwrap_or_default(), %advertise, listen = %bound, version = env!("CARGO_PKG_VERSION"), "datanode starting");
        let node = Arc::new(Node {
            sessions: Sessions::new(config.session_timeout, config.max_sessions, metrics.clone()),
            streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams.max(1))),
            abandoned: Default::default(),
            token_keys: Default::default(),
            pending_budget: Arc::new(tokio::sync::Semaphore::new(
                (config.pending_replica_budget.0 as usize).min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            config,
            node_id,
            advertise,
            store,
            metrics,
            peers: Peers::new(security.clone()),
            security,
            small_links: Default::default(),
            stop: Arc::new(watch::channel(false).0),
            draining: Default::default(),
            cluster,
        });
        Ok(Datanode {
            node,
            grpc,
            metrics_listener,
        })
    }

    /// The stable node id.
    pub fn node_id(&self) -> &str {
        &self.node.node_id
    }

    /// The endpoint advertised to the coordinator.
    pub fn advertise(&self) -> &str {
        &self.node.advertise
    }

    /// The node's metrics.
    pub fn metrics(&self) -> Metrics {
        self.node.metrics.clone()
    }

    /// Serves gRPC and metrics, registers with the coordinator, heartbeats
    /// and scrubs until `shutdown` resolves (or stdin closes with
    /// `--exit-with-parent`); in-flight streams are drained before returning.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DatanodeError> {
        let node = self.node;
        let stop_tx = node.stop.clone();
        let stop_rx = stop_tx.subscribe();
        {
            let stop_tx = stop_tx.clone();
            tokio::spawn(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            });
        }
        if node.config.exit_with_parent {
            let stop_tx = stop_tx.clone();
            tokio::spawn(async move {
                let mut stdin = tokio::io::stdin();
                let mut buf = [0u8; 256];
                while let Ok(n) = stdin.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                tracing::info!("stdin closed (--exit-with-parent), shutting down");
                let _ = stop_tx.send(true);
            });
        }
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let scrub_rate = Arc::new(AtomicU64::new(node.config.scrub_bytes_per_second.0));
        let ctl = Arc::new(membership::Control::new(&node, scrub_rate.clone()));
        let mut membership = tokio::spawn(membership::run(node.clone(), ctl, stop_rx.clone()));
        let background = [
            tokio::spawn(scrub::run(node.clone(), scrub_rate, stop_rx.clone())),
            tokio::spawn(reap_sessions(node.clone(), stop_rx.clone())),
        ];

        let readiness = Readiness::default();
        let http = dfs_common::http::serve(
            self.metrics_listener,
            node.metrics.registry.clone(),
            readiness.clone(),
            wait(stop_rx.clone()),
        );
        let service = routes::Routes::new(
            service::DataNodeService::new(node.clone()),
            dfs_common::transport::MAX_MESSAGE_BYTES,
        );
        let grpc = dfs_common::transport::server()
            .concurrency_limit_per_connection(256)
            .add_service(service)
            .serve_with_incoming_shutdown(
                dfs_common::transport::incoming(self.grpc, &node.security),
                wait(stop_rx.clone()),
            );
        // The probes fail once the store cannot write (a dead volume
        // committer) or this check stops running.
        let watchdog = readiness.watchdog(
            "the datanode health check",
            std::time::Duration::from_secs(30),
        );
        let health = {
            let (node, readiness, mut stop) = (node.clone(), readiness.clone(), stop_rx.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                    if let Some(reason) = node.store.broken() {
                        tracing::error!("{reason}: failing the probes");
                        readiness.fail(reason);
                    }
                    watchdog.beat();
                }
            })
        };
        readiness.set(true);
        let (grpc_result, http_result) = tokio::join!(grpc, async {
            let r = http.await;
            readiness.set(false);
            r
        });
        // The membership task returns once its DRAINING heartbeat is out
        // (bounded by its own timeout).
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut membership)
            .await
            .is_err()
        {
            membership.abort();
        }
        for task in background {
            task.abort();
        }
        health.abort();
        // Every stream has drained: write what the volume committer still
        // holds (delete records) and stop it, so nothing appends to the
        // volumes after this returns (a restart in the same process opens
        // them again).
        let store = node.store.clone();
        if let Err(e) = blocking(move || {
            store.close();
            Ok(())
        })
        .await
        {
            tracing::warn!("closing the chunk store failed: {e:#}");
        }
        tracing::info!(node_id = %node.node_id, "datanode stopped");
        grpc_result?;
        http_result.map_err(DatanodeError::ServeMetrics)
    }
}

async fn reap_sessions(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => node.sessions.reap(),
        }
    }
}

/// Reads `<data-dir>/node_id`, or creates it (`named`, the id the
/// certificate names, else 32 random hex characters; written atomically) on
/// first start. The inner error: the directory belongs to another node than
/// the certificate's.
fn load_or_create_node_id(
    data_dir: &Path,
    named: Option<&str>,
) -> Result<Result<String, DatanodeError>, StoreError> {
    let path = data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(s) if dfs_proto::frame::is_valid_chunk_id(s.trim()) => {
            let id = s.trim().to_string();
            return Ok(match named {
                Some(n) if n != id => Err(DatanodeError::Identity(format!(
                    "{} belongs to node {id}, but the certificate names node {n}: \
                     give this node its own certificate (or its own data directory)",
                    data_dir.display()
                ))),
                _ => Ok(id),
            });
        }
        Ok(s) => tracing::warn!(content = %s.trim(), "invalid node_id file, generating a new id"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StoreError::Io {
                action: "read",
                path,
                source,
            });
        }
    }
    let id = named.map_or_else(node::random_id, str::to_string);
    store::write_atomic(&path, format!("{id}\n").as_bytes())?;
    Ok(Ok(id))
}
