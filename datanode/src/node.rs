//! State shared by every part of a running datanode: its identity, the
//! store, the session tables and the connections to other datanodes
//! ([`crate::peers`], [`crate::links`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;

use crate::config::Config;
use crate::metrics::{GaugeGuard, Metrics};
use crate::peers::Target;
use crate::store::{ChunkId, Reservation, Store, StoreError};

/// A running datanode's shared state.
pub struct Node {
    /// The configuration it was started with.
    pub config: Config,
    /// Stable node id.
    pub node_id: String,
    /// Endpoint advertised to the coordinator.
    pub advertise: String,
    /// The chunk store.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Metrics,
    /// Open upload and download sessions.
    pub sessions: Sessions,
    /// Channels to other datanodes.
    pub peers: crate::peers::Peers,
    /// Its TLS identity (or plain text): for the calls it makes (to other
    /// datanodes, to the coordinator) and the checks of who calls it.
    pub security: dfs_common::tls::Security,
    /// Long-lived small-chunk streams to other datanodes.
    pub small_links: crate::links::Links,
    /// Set to true when the node starts shutting down: long-lived incoming
    /// streams end so the server's graceful stop is not held up by them.
    pub stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// Set when shutdown begins: heartbeats then report DRAINING, so the
    /// coordinator stops placing chunks here and lists this node's replicas
    /// last while in-flight streams finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// The cluster this node belongs to (fencing: commands are executed only
    /// from a coordinator of this cluster).
    pub cluster: crate::identity::ClusterIdentity,
    /// Permits for chunk streams served at once (`--max-streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Bytes of uploads still being written after their write quorum
    /// answered (`--pending-replica-budget`; see `pipeline::settle`).
    pub pending_budget: Arc<tokio::sync::Semaphore>,
    /// Pending copies (chunk id, node id) that failed after their upload
    /// answered, for the next heartbeat (`Heartbeat.abandoned_replicas`).
    pub abandoned: std::sync::Mutex<Vec<(String, String)>>,
    /// This node's chunk-token keys, as the coordinator last sent them.
    pub token_keys: std::sync::RwLock<Option<Arc<dfs_common::token::NodeKeys>>>,
}

impl Node {
    /// The chunk-token keys held (none before registration, or in plain
    /// text).
    pub fn token_keys(&self) -> Option<Arc<dfs_common::token::NodeKeys>> {
        self.token_keys.read().expect("token keys lock").clone()
    }

    /// Takes up the keys a coordinator sent (none sent: unchanged).
    pub fn set_token_keys(&self, wire: &[dfs_proto::TokenKey]) {
        if wire.is_empty() {
            return;
        }
        match dfs_common::token::NodeKeys::from_wire(&self.node_id, wire) {
            Some(keys) => {
                let keys = keys.with_clock_skew(self.config.token_clock_skew);
                tracing::info!(key_ids = ?keys.key_ids(), "chunk-token keys received");
                *self.token_keys.write().expect("token keys lock") = Some(Arc::new(keys));
            }
            None => tracing::warn!("malformed chunk-token keys from the coordinator ignored"),
        }
    }

    /// Checks the chunk token of a call by `caller` for `op` on
    /// `chunk_id` (with mutual TLS; plain text lets every call through).
    /// Refusals are counted by reason.
    pub fn check_token(
        &self,
        token: Option<&dfs_proto::ChunkToken>,
        chunk_id: &str,
        op: u32,
        caller: Option<&dfs_common::tls::Principal>,
    ) -> Result<(), tonic::Status> {
        if !self.security.is_tls() {
            return Ok(());
        }
        let result = match (self.token_keys(), caller) {
            (None, _) => Err(dfs_common::token::TokenError::NoKeys),
            (Some(_), None) => Err(dfs_common::token::TokenError::Missing),
            (Some(keys), Some(caller)) => keys.check(
                token,
                chunk_id,
                op,
                &caller.to_string(),
                dfs_common::time::now_unix_ms() / 1000,
            ),
        };
        result.map_err(|e| {
            self.metrics
                .token_refusals
                .with_label_values(&[e.reason()])
                .inc();
            e.status()
        })
    }
}

/// Abandoned pending copies kept for the coordinator at most; beyond, the
/// oldest are forgotten (the coordinator repairs them after its grace).
pub const MAX_ABANDONED: usize = 10_000;

impl Node {
    /// Records a pending copy that failed after its upload answered.
    pub fn abandon(&self, chunk_id: &str, node_id: &str) {
        let mut a = self.abandoned.lock().expect("abandoned lock");
        if a.len() >= MAX_ABANDONED {
            a.remove(0);
        }
        a.push((chunk_id.to_string(), node_id.to_string()));
    }
}

impl Node {
    /// A permit for one more chunk stream, or RESOURCE_EXHAUSTED.
    pub fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            self.metrics.streams_refused.inc();
            Status::resource_exhausted(format!(
                "this datanode serves at most {} chunk streams at once; retry later or elsewhere",
                self.config.max_streams
            ))
        })
    }

    /// Largest frame accepted, in bytes.
    pub fn max_frame_bytes(&self) -> usize {
        self.config.max_frame_bytes.0 as usize
    }
}

/// A prepared upload: what PrepareChunkUpload promised, waiting for its stream.
pub struct UploadSession {
    /// The chunk.
    pub chunk_id: ChunkId,
    /// Announced size.
    pub size: u64,
    /// Announced checksum, when the writer knew it.
    pub checksum: Option<u32>,
    /// Other replicas, in placement order.
    pub targets: Vec<Target>,
    /// Replicas (counting this node) needed for success.
    pub quorum: usize,
    /// The write capability it was prepared under, forwarded to `targets`.
    pub token: Option<dfs_proto::ChunkToken>,
    /// Space promised to the session, until its local copy is stored (an
    /// upload that answers before that hands it to the copy's writer).
    pub reservation: Option<Reservation>,
    expires: Instant,
    _gauge: GaugeGuard,
}

/// Session tables. Prepared sessions expire after `--session-timeout`,
/// releasing the space they were promised.
pub struct Sessions {
    timeout: Duration,
    max: usize,
    metrics: Metrics,
    uploads: Mutex<HashMap<String, UploadSession>>,
    downloads: Mutex<HashMap<String, (ChunkId, Instant)>>,
}

/// A fresh random id (32 lowercase hex characters): the shared generator.
pub use dfs_common::id::random_hex_id as random_id;

impl Sessions {
    /// Empty tables holding at most `max` sessions of each kind.
    pub fn new(timeout: Duration, max: usize, metrics: Metrics) -> Self {
        Sessions {
            timeout,
            max: max.max(1),
            metrics,
            uploads: Mutex::default(),
            downloads: Mutex::default(),
        }
    }

    /// How long a prepared session lives.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A prepared upload, not yet recorded: `insert_upload` keeps it for a
    /// later stream; a one-call upload uses it at once.
    #[allow(clippy::too_many_arguments)] // each is one field of the session
    pub fn new_upload(
        &self,
        chunk_id: ChunkId,
        size: u64,
        checksum: Option<u32>,
        targets: Vec<Target>,
        quorum: usize,
        token: Option<dfs_proto::ChunkToken>,
        reservation: Reservation,
    ) -> UploadSession {
        let gauge = self
            .metrics
            .active_sessions
            .with_label_values(&["prepared"]);
        UploadSession {
            chunk_id,
            size,
            checksum,
            targets,
            quorum,
            token,
            reservation: Some(reservation),
            expires: Instant::now() + self.timeout,
            _gauge: GaugeGuard::new(gauge),
        }
    }

    /// Records a prepared upload under `session_id` (a fresh one if empty).
    /// Returns the id; RESOURCE_EXHAUSTED when the table is full (the
    /// session and its reservation are dropped).
    pub fn insert_upload(
        &self,
        session_id: String,
        session: UploadSession,
    ) -> Result<String, Status> {
        let id = if session_id.is_empty() {
            random_id()
        } else if session_id.len() > 64 {
            return Err(Status::invalid_argument("session ids are at most 64 bytes"));
        } else {
            session_id
        };
        let mut map = self.uploads.lock().expect("sessions lock");
        if map.len() >= self.max && !map.contains_key(&id) {
            return Err(Status::resource_exhausted(format!(
                "{} prepared upload sessions are open, the most this datanode keeps; \
                 retry once some are used or expired",
                map.len()
            )));
        }
        map.insert(id.clone(), session);
        Ok(id)
    }

    /// Takes a prepared upload for its stream (a session is used once).
    pub fn take_upload(&self, session_id: &str) -> Option<UploadSession> {
        let s = self
            .uploads
            .lock()
            .expect("sessions lock")
            .remove(session_id)?;
        (s.expires > Instant::now()).then_some(s)
    }

    /// Records a download session for `chunk_id`; returns its id, or
    /// RESOURCE_EXHAUSTED when the table is full.
    pub fn insert_download(&self, chunk_id: ChunkId) -> Result<String, Status> {
        let id = random_id();
        let mut map = self.downloads.lock().expect("sessions lock");
        if map.len() >= self.max {
            let now = Instant::now();
            map.retain(|_, (_, exp)| *exp > now);
            if map.len() >= self.max {
                return Err(Status::resource_exhausted(format!(
                    "{} download sessions are open, the most this datanode keeps",
                    map.len()
                )));
            }
        }
        map.insert(id.clone(), (chunk_id, Instant::now() + self.timeout));
        Ok(id)
    }

    /// The chunk of a live download session.
    pub fn download(&self, session_id: &str) -> Option<ChunkId> {
        let map = self.downloads.lock().expect("sessions lock");
        map.get(session_id)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(id, _)| id.clone())
    }

    /// Drops expired sessions (and their reservations).
    pub fn reap(&self) {
        let now = Instant::now();
        let expired: Vec<UploadSession> = {
            let mut map = self.uploads.lock().expect("sessions lock");
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, s)| s.expires <= now)
                .map(|(k, _)| k.clone())
                .collect();
            ids.iter().filter_map(|k| map.remove(k)).collect()
        };
        for s in &expired {
            tracing::info!(chunk_id = %s.chunk_id, "upload session expired unused");
        }
        self.downloads
            .lock()
            .expect("sessions lock")
            .retain(|_, (_, exp)| *exp > now);
    }
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io {
            action: "run blocking task",
            path: Default::default(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}
