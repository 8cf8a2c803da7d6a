//! The dfs coordinator: namespace, placement, durable metadata, datanode
//! liveness and automatic re-replication.
//!
//! ```text
//!            gRPC (service/: parse, call, map to Status; metrics)
//!              │ reads                         │ mutations
//!              ▼                               ▼
//!   ┌──── State (one lock) ────┐      store::Committer (group commit)
//!   │ namespace::Namespace  ◀──┼────── apply(Command) ─▶ redb log + snapshot
//!   │ cluster::Cluster         │
//!   │   liveness, replica map, │ ◀── heartbeats (chunk reports)
//!   │   outboxes               │ ──▶ tick: repair::plan, placement, orphans
//!   └──────────────────────────┘
//! ```
//!
//! - [`namespace`]: the pure metadata state machine (commands → state).
//! - [`store`]: redb operations log + snapshots, group commit.
//! - [`planning`]: upload planning as a pure decision (namespace, cluster
//!   view, time and ids in; the log entry out).
//! - [`confirm`]: which confirmed replicas vouched for their bytes (pure).
//! - [`raft`]: the replicated namespace's Raft types and storage (openraft).
//! - [`placement`] and [`repair`]: pure planning functions.
//! - [`cluster`]: soft state (liveness, replica locations) and the repair driver.
//! - [`service`]: the gRPC edge, by concern (uploads, reads, datanodes,
//!   conversions); [`metrics`]: Prometheus.

pub mod access;
pub mod bearer;
pub mod cluster;
pub mod config;
pub mod confirm;
pub mod metrics;
pub mod namespace;
pub mod path;
pub mod placement;
pub mod planning;
pub mod raft;
pub mod repair;
pub mod service;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_common::http::Readiness;
use dfs_common::time::monotonic_ms;
use dfs_common::transport;
use dfs_proto::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;
pub use metrics::Metrics;

use crate::cluster::Timing;
use crate::namespace::Command;
use crate::service::{CoordinatorService, Ctx, Hook, State};
use crate::store::{Committer, ProposeError, Store, StoreError};

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A listener could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The metadata store failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Initialising the cluster id failed.
    #[error("failed to initialise cluster id: {0}")]
    Init(#[from] ProposeError),
    /// The gRPC server failed.
    #[error("failed to serve gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The metadata log could not be written: the coordinator stopped
    /// (fail-stop) instead of serving a state the disk does not hold.
    #[error("stopped: {0}")]
    MetadataFailed(String),
    /// This coordinator's member of the group could not start.
    #[error(transparent)]
    Raft(#[from] raft::member::MemberError),
    /// The data directory holds the other kind of namespace: a single
    /// coordinator's where a group member starts, or a member's where a
    /// single coordinator starts. Starting anyway would serve an empty
    /// namespace beside the real one (moving a namespace into a group is
    /// not supported yet).
    #[error("{0}")]
    WrongLayout(String),
    /// The TLS credentials could not be used (or neither --tls-dir nor
    /// --insecure was given).
    #[error(transparent)]
    Tls(#[from] dfs_common::tls::TlsError),
    /// The chunk-token key file could not be used, or a cluster that runs
    /// mutual TLS was started without one.
    #[error(transparent)]
    TokenKeys(#[from] dfs_common::token::KeyFileError),
    /// The access file could not be used.
    #[error(transparent)]
    Access(#[from] access::AccessFileError),
    /// The client token file could not be used.
    #[error(transparent)]
    ClientTokens(#[from] bearer::TokenFileError),
    /// Bearer tokens without TLS would name principals over plain text.
    #[error(
        "--client-tokens needs --tls-dir: a bearer token is honoured only over a client certificate"
    )]
    BearerWithoutTls,
    #[error(
        "--tls-dir needs --token-keys: with mutual TLS every chunk call on a datanode needs a token this coordinator signs"
    )]
    NoTokenKeys,
    /// A background task panicked.
    #[error("failed to join {task}: {source}")]
    Join {
        task: &'static str,
        source: tokio::task::JoinError,
    },
}

/// Calls one client connection may have in flight at once.
pub const MAX_CALLS_PER_CONNECTION: usize = 1024;

/// Binds `--listen` and `--metrics-addr`, then serves until `shutdown`
/// resolves (or stdin closes with `--exit-with-parent`).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let mut config = config;
    config.resolve_raft_id()?;
    config.validate()?;
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|source| CoordinatorError::Bind {
            addr: config.listen,
            source,
        })?;
    let metrics = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| CoordinatorError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
    serve(config, grpc, metrics, shutdown).await
}

/// Joins the coordinator group of `config.peers`: opens this member's Raft
/// storage under the data directory, bootstraps the group if it is new
/// (once, by the member with the lowest id), and watches leadership: a
/// coordinator that becomes (or stops being) the leader starts its cluster
/// view over, in safe mode, so it never acts on another leader's view.
async fn join_group(
    config: &Config,
    hook: Hook,
    metrics: &Metrics,
    security: &dfs_common::tls::Security,
) -> Result<
    (
        Arc<Mutex<State>>,
        Committer,
        tokio::task::JoinHandle<()>,
        service::Group,
    ),
    CoordinatorError,
> {
    let ns = namespace::Namespace::new();
    let cluster = hook.fresh_cluster(&ns);
    let state = Arc::new(Mutex::new(State { ns, cluster }));
    let rebuild = Hook {
        timing: hook.timing.clone(),
    };
    let member = raft::member::Member::open(
        config.raft_id,
        &config.data_dir.join("raft"),
        raft::member::config(config.raft_snapshot_every),
        state.clone(),
        hook,
        security.clone(),
    )
    .await?;
    let raft = member.raft.clone();
    let me = member.identity();
    tracing::info!(
        raft_id = me.id,
        incarnation = format!("{:016x}", me.incarnation),
        "coordinator group member"
    );
    // Forms the group once (never beside a formed one), in the background:
    // it waits for the other seeds to answer.
    tokio::spawn(raft::membership::bootstrap(
        raft.clone(),
        me,
        config.peers.clone(),
        config.initial_cluster_state,
        security.clone(),
    ));
    let reported = Arc::new(raft::membership::Reported::default());
    raft::membership::spawn_prober(raft.clone(), me, reported.clone(), security.clone());
    let (committer, commit_task) = raft::committer::start(raft.clone(), metrics.clone());
    {
        let sm = member.state.clone();
        let mut m = raft.metrics();
        let state = state.clone();
        let committer = committer.clone();
        let id = config.raft_id;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut leading = false;
            let mut last_leader = None;
            loop {
                let (now_leading, leader) = {
                    let snapshot = m.borrow();
                    let changed =
                        snapshot.current_leader.is_some() && snapshot.current_leader != last_leader;
                    metrics.raft.refresh(&snapshot, changed);
                    let (built, installed, last) = sm.snapshot_stats();
                    metrics.raft.snapshots(built, installed, last);
                    (snapshot.current_leader == Some(id), snapshot.current_leader)
                };
                if leader.is_some() {
                    last_leader = leader;
                }
                if now_leading != leading {
                    leading = now_leading;
                    {
                        let mut st = state.lock().expect("state lock poisoned");
                        st.cluster = rebuild.fresh_cluster(&st.ns);
                    }
                    tracing::info!(leading, "coordinator group leadership changed");
                    let needs_id = state
                        .lock()
                        .expect("state lock poisoned")
                        .ns
                        .cluster_id()
                        .is_none();
                    if leading && needs_id {
                        // The first InitCluster committed wins; a later one
                        // changes nothing.
                        let _ = committer
                            .propose(Command::InitCluster {
                                cluster_id: dfs_common::id::ClusterId::random(),
                            })
                            .await;
                    }
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    Ok((
        state,
        committer,
        commit_task,
        service::Group { raft, me, reported },
    ))
}

fn timing(config: &Config) -> Timing {
    Timing {
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        suspect_after_ms: config.suspect_after().as_millis() as u64,
        dead_after_ms: config.dead_after.as_millis() as u64,
        orphan_grace_ms: config.orphan_grace.as_millis() as u64,
        over_replication_grace_ms: config.over_replication_grace.as_millis() as u64,
        pending_replica_grace_ms: config.pending_replica_grace.as_millis() as u64,
        repair_streams_per_node: config.repair_streams_per_node,
        repair_bytes_per_second: config.repair_bytes_per_second.0,
        chunk_size: config.chunk_size.0,
        safe_mode_node_share: config.safe_mode_node_share,
        safe_mode_known_share: config.safe_mode_known_share,
        safe_mode_unknown_min: config.safe_mode_unknown_min,
        delete_budget_share: config.delete_budget_share,
        delete_budget_min: config.delete_budget_min,
    }
}

async fn stdin_eof() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 512];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Refuses a data directory holding the other kind of namespace (see
/// [`CoordinatorError::WrongLayout`]).
fn check_layout(config: &Config) -> Result<(), String> {
    let single = config.data_dir.join("metadata.redb");
    let group = config.data_dir.join("raft");
    if !config.peers.is_empty() && single.exists() {
        return Err(format!(
            "{} holds a single coordinator's namespace, but --peers makes this a group member: \
             a group would start empty beside it (moving a namespace into a group is not supported yet); \
             start without --peers, or on an empty directory",
            single.display()
        ));
    }
    if config.peers.is_empty() && group.exists() {
        return Err(format!(
            "{} holds a coordinator group member's namespace, but no --peers were given: \
             a single coordinator would start empty beside it; start with the group's --peers",
            group.display()
        ));
    }
    Ok(())
}

/// Serves on pre-bound listeners (gRPC and metrics); `listen` and
/// `metrics_addr` in `config` are ignored. Tests bind `127.0.0.1:0`.
pub async fn serve(
    config: Config,
    grpc: TcpListener,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let mut config = config;
    config.resolve_raft_id()?;
    config.validate()?;
    let security = dfs_common::tls::Security::from_flags(
        config.tls_dir.as_deref(),
        config.insecure,
        dfs_common::tls::Kind::Coordinator,
    )?;
    let metrics = Metrics::new();
    security.register_metrics(&metrics.registry, "dfs_coordinator");
    let tokens = match (&config.token_keys, security.is_tls()) {
        (Some(path), true) => {
            let file = dfs_common::token::open_key_file(path)?;
            file.spawn_reloader();
            Some(service::Tokens {
                file,
                lifetime: config.chunk_token_lifetime,
            })
        }
        (None, true) => return Err(CoordinatorError::NoTokenKeys),
        (_, false) => None,
    };
    let access = match &config.access_file {
        Some(path) => {
            let file = access::open(path)?;
            file.spawn_reloader();
            Some(file)
        }
        None => None,
    };
    let bearer = match &config.client_tokens {
        Some(_) if config.tls_dir.is_none() => return Err(CoordinatorError::BearerWithoutTls),
        Some(path) => {
            let file = bearer::open(path)?;
            file.spawn_reloader();
            Some(file)
        }
        None => None,
    };
    let hook = Hook {
        timing: timing(&config),
    };
    check_layout(&config).map_err(CoordinatorError::WrongLayout)?;
    let (state, committer, commit_task, group) = if config.peers.is_empty() {
        let data_dir = config.data_dir.clone();
        let fault = config.fault_fail_log_writes_when.clone();
        let (store, ns) = tokio::task::spawn_blocking(move || {
            Store::open(&data_dir).map(|(mut store, ns)| {
                store.fail_writes_when(fault);
                (store, ns)
            })
        })
        .await
        .map_err(|source| CoordinatorError::Join {
            task: "store open",
            source,
        })??;
        let cluster = hook.fresh_cluster(&ns);
        let needs_id = ns.cluster_id().is_none();
        let state = Arc::new(Mutex::new(State { ns, cluster }));
        let (committer, commit_task) =
            Committer::start(store, state.clone(), hook, metrics.clone());
        if needs_id {
            committer
                .propose(Command::InitCluster {
                    cluster_id: dfs_common::id::ClusterId::random(),
                })
                .await?;
        }
        metrics.raft.single();
        (state, committer, commit_task, None)
    } else {
        let (state, committer, commit_task, group) =
            join_group(&config, hook, &metrics, &security).await?;
        (state, committer, commit_task, Some(group))
    };
    let raft = group.as_ref().map(|g| g.raft.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let ctx_stop = stop_tx.clone();
    let ctx = Arc::new(Ctx {
        state,
        committer,
        config: config.clone(),
        metrics: metrics.clone(),
        streams: Mutex::new(Default::default()),
        shutdown: stop_rx.clone(),
        raft: raft.clone(),
        reads: service::leader::ReadBarrier::new(raft.clone()),
        group: group.clone(),
        security: security.clone(),
        tokens,
        access,
        bearer,
    });
    {
        let ctx = ctx.clone();
        let exit_with_parent = config.exit_with_parent;
        let mut stopping = stop_rx.clone();
        tokio::spawn(async move {
            let parent = async {
                if exit_with_parent {
                    stdin_eof().await;
                    tracing::info!("stdin closed, shutting down");
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = shutdown => {}
                () = parent => {}
                // Stopped from inside (fail-stop): this task must not keep
                // the committer alive.
                _ = stopping.wait_for(|v| *v) => {}
            }
            let _ = stop_tx.send(true);
            ctx.streams.lock().expect("streams lock poisoned").clear();
        });
    }
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let readiness = Readiness::default();
    // Fail-stop: once the log cannot be written, nothing the in-memory state
    // says may reach a datanode (no deletes, no repairs): the outboxes are
    // dropped, both probes fail and the process exits non-zero. A restart
    // reloads what the log holds, which is everything acknowledged.
    let fatal: Arc<Mutex<Option<String>>> = Arc::default();
    {
        let ctx = ctx.clone();
        let readiness = readiness.clone();
        let fatal = fatal.clone();
        let stop = ctx_stop.clone();
        let mut stopping = stop_rx.clone();
        tokio::spawn(async move {
            // Ends at shutdown too: it holds a committer handle, and the
            // committer stops only once every handle is gone.
            let reason = tokio::select! {
                r = ctx.committer.failed() => r,
                _ = stopping.wait_for(|v| *v) => return,
            };
            tracing::error!(
                "{reason}: stopping every delete and repair, failing the probes and exiting"
            );
            ctx.metrics.metadata_failed.set(1);
            readiness.fail(reason.clone());
            ctx.halt();
            *fatal.lock().expect("fatal lock") = Some(reason);
            let _ = stop.send(true);
            ctx.streams.lock().expect("streams lock poisoned").clear();
        });
    }
    let metrics_task = tokio::spawn(dfs_common::http::serve(
        metrics_listener,
        metrics.registry.clone(),
        readiness.clone(),
        stopped(stop_rx.clone()),
    ));
    let watchdog = readiness.watchdog(
        "the repair tick",
        (config.heartbeat_interval * 10).max(std::time::Duration::from_secs(10)),
    );
    let tick_task = tokio::spawn(tick_loop(ctx.clone(), stop_rx.clone(), watchdog));

    let svc = CoordinatorServer::new(CoordinatorService::new(ctx.clone()))
        .max_decoding_message_size(transport::MAX_MESSAGE_BYTES.max(64 << 20))
        .max_encoding_message_size(usize::MAX);
    // A follower forwards namespace calls to the leader (a single
    // coordinator answers all of them itself).
    let svc = service::leader::LeaderRouter::new(svc, ctx.clone());
    let addr = grpc.local_addr().ok();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        grpc = ?addr,
        data_dir = %config.data_dir.display(),
        "coordinator serving"
    );
    match &group {
        None => readiness.set(true),
        // A member is ready once it belongs to the group: a coordinator
        // waiting to be added answers nothing itself, so the client Service
        // must not send callers (or the operator) to it.
        Some(g) => {
            let readiness = readiness.clone();
            let mut m = g.raft.metrics();
            let me = g.me.id;
            tokio::spawn(async move {
                loop {
                    let member = m
                        .borrow()
                        .membership_config
                        .membership()
                        .get_node(&me)
                        .is_some();
                    readiness.set(member);
                    if m.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    drop(ctx);
    // Bounded: one connection may have this many calls in flight (the
    // rest wait their turn); heartbeat streams are one per datanode.
    let raft_svc = group
        .as_ref()
        .map(|g| raft::network::RaftService::server(g.raft.clone(), g.me, security.clone()));
    let served = transport::server()
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        .add_service(svc)
        .add_optional_service(raft_svc)
        .serve_with_incoming_shutdown(transport::incoming(grpc, &security), stopped(stop_rx))
        .await;
    if let Some(raft) = &raft
        && let Err(e) = raft.shutdown().await
    {
        tracing::warn!("Raft did not stop cleanly: {e}");
    }
    readiness.set(false);
    tick_task.await.map_err(|source| CoordinatorError::Join {
        task: "repair loop",
        source,
    })?;
    match metrics_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("metrics endpoint failed: {e}"),
        Err(e) => tracing::warn!("metrics endpoint panicked: {e}"),
    }
    commit_task.await.map_err(|source| CoordinatorError::Join {
        task: "committer",
        source,
    })?;
    if let Some(reason) = fatal.lock().expect("fatal lock").take() {
        return Err(CoordinatorError::MetadataFailed(reason));
    }
    served?;
    tracing::info!("coordinator stopped");
    Ok(())
}

async fn tick_loop(
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
    watchdog: dfs_common::http::Watchdog,
) {
    let period = (ctx.config.heartbeat_interval / 2)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        if ctx.committer.has_failed() {
            // Fail-stop: act on nothing the disk may not hold.
            return;
        }
        let now = monotonic_ms();
        // In a group only the leader decides (repairs, deletes, expiry): a
        // follower's view of the datanodes is empty by design.
        let mut leading = ctx.is_leader();
        if leading && let Some(raft) = &ctx.raft {
            // A leader cut off from its group (it may not know yet) must not
            // act on its view: a quorum confirms the leadership first, or
            // this tick decides nothing.
            leading = tokio::time::timeout(
                period.max(Duration::from_millis(500)),
                raft.ensure_linearizable(),
            )
            .await
            .is_ok_and(|r| r.is_ok());
        }
        let expired = {
            let mut guard = ctx.lock();
            let st = &mut *guard;
            if leading {
                st.cluster.tick(&st.ns, now);
            }
            let status = st.cluster.status(&st.ns, now);
            let states: Vec<_> = status.iter().map(|s| s.state).collect();
            ctx.metrics.refresh(
                &states,
                st.cluster.capacity(&st.ns, now),
                st.ns.file_count(),
                st.ns.dir_count(),
                st.ns.chunk_count(),
                st.cluster.stats(),
                &st.cluster.heartbeat_ages(now),
                st.cluster.in_safe_mode(),
            );
            if leading {
                st.cluster.expired_uploads(&st.ns, now)
            } else {
                Vec::new()
            }
        };
        ctx.flush_outboxes();
        watchdog.beat();
        // Expiry runs on the monotonic clock: a wall-clock step forward
        // expires nothing early.
        for upload_id in expired {
            match ctx
                .committer
                .propose(Command::AbortUpload {
                    upload_id: upload_id.clone(),
                })
                .await
            {
                Ok(_) => tracing::info!(%upload_id, "upload expired unconfirmed"),
                Err(ProposeError::Rejected(_)) => {}
                Err(e) => tracing::warn!(%upload_id, "failed to expire upload: {e:#}"),
            }
        }
    }
}

/// Readable ids for unit tests: `named::<NodeId>("n1")` is that node id,
/// `named::<ChunkId>("c1")` the hex of the name padded to 32 characters (a
/// valid id that still reads as its name in a hex dump).
#[cfg(test)]
pub(crate) mod test_ids {
    use dfs_common::id::{ChunkId, ClusterId, NodeId, UploadId};

    /// An id kind a test can name.
    pub trait Named: Sized {
        fn named(name: &str) -> Self;
    }

    fn hex_of(name: &str) -> String {
        if name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return name.to_string();
        }
        assert!(
            name.len() <= 16,
            "test id name {name:?} is longer than 16 bytes"
        );
        let mut hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        hex.extend(std::iter::repeat_n('0', 32 - hex.len()));
        hex
    }

    impl Named for NodeId {
        fn named(name: &str) -> Self {
            NodeId::parse(name).expect("a valid test node id")
        }
    }

    macro_rules! hex_named {
        ($($t:ty),*) => {$(
            impl Named for $t {
                fn named(name: &str) -> Self {
                    <$t>::try_from(hex_of(name)).expect("hex")
                }
            }
        )*};
    }
    hex_named!(ChunkId, UploadId, ClusterId);

    /// The id of kind `T` named `name`.
    pub fn named<T: Named>(name: &str) -> T {
        T::named(name)
    }

    /// Several node ids.
    pub fn nodes(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| named(n)).collect()
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn a_directory_serves_only_the_kind_of_namespace_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_data_dir(dir.path());
        // Empty: either kind starts.
        check_layout(&config).unwrap();
        config.peers = vec![config::parse_peer("1=http://127.0.0.1:1").unwrap()];
        check_layout(&config).unwrap();

        // A single coordinator's namespace: no group member on it.
        std::fs::write(dir.path().join("metadata.redb"), b"").unwrap();
        let err = check_layout(&config).unwrap_err();
        assert!(err.contains("single coordinator's namespace"), "{err}");
        config.peers.clear();
        check_layout(&config).unwrap();

        // A member's namespace: no single coordinator on it.
        std::fs::remove_file(dir.path().join("metadata.redb")).unwrap();
        std::fs::create_dir(dir.path().join("raft")).unwrap();
        let err = check_layout(&config).unwrap_err();
        assert!(err.contains("group member's namespace"), "{err}");
    }
}
