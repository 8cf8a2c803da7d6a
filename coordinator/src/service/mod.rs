//! The gRPC edge: wire types are converted and validated here (bad input
//! becomes `INVALID_ARGUMENT`), domain errors become `Status` here, and
//! nowhere else. Split by concern:
//!
//! - this module: the shared context ([`Ctx`]), the limits every handler
//!   enforces, and the thin `Coordinator` handlers (parse, call, map);
//! - [`convert`]: wire ↔ domain conversions and error → status mappings;
//! - [`upload`]: planning, re-planning and confirming uploads (single and
//!   batched);
//! - [`reads`]: downloads (chunk maps) and listings;
//! - [`datanodes`]: registration, the heartbeat stream and cluster status.

mod convert;
mod datanodes;
pub mod leader;
mod reads;
mod upload;

use convert::*;
use datanodes::heartbeat_loop;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dfs_common::time::{monotonic_ms, monotonic_to_unix_ms, now_unix_ms, unix_to_monotonic_ms};
use dfs_common::tls::{Kind, Principal};
use dfs_proto::coordinator_server::Coordinator;
use dfs_proto::{self as pb, data_node_command};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::access::Role;
use crate::cluster::{
    Cluster, ClusterError, CommandOutcome, Health, HeartbeatEvent, NodeCommand, NodeInfo,
    NodeState, NodeStatus, ReportBatch, SafeModeStatus,
};
use crate::config::{Config, DEFAULT_MAINTENANCE};
use crate::confirm::{self, ConfirmError};
use crate::metrics::Metrics;
use crate::namespace::{
    ChunkId, ChunkRecord, Command, EntryInfo, Namespace, NamespaceError, NodeId, NodeRecord,
    Outcome, TopologyRecord, UploadId,
};
use crate::path::{NsPath, PathError};
use crate::planning::{self, PlanError};
use crate::store::{Applied, Committer, ProposeError, StoreError};

pub use crate::config::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use crate::planning::{MAX_CHUNKS_PER_FILE, MAX_OPEN_UPLOADS};
pub use convert::LEADER_METADATA;
/// Most calls one UploadFiles or ConfirmUploads batch may carry.
pub const MAX_BATCH_CALLS: usize = 1024;
/// Most chunks one UploadFiles batch may plan in all: the batch is for small
/// files, and its answer is one message held in memory.
pub const MAX_BATCH_CHUNKS: u64 = 65_536;
/// Most chunk entries (report, added, removed, corrupt) one heartbeat may
/// carry: datanodes send full reports in batches of 10,000.
pub const MAX_HEARTBEAT_CHUNKS: usize = 20_000;
/// Most nodes a ReplanChunk may exclude.
pub const MAX_EXCLUDED_NODES: usize = 1024;
/// Most replicas (and receipts) one confirmed chunk may name.
pub const MAX_CONFIRMED_REPLICAS: usize = 64;

/// `s` cut to at most `max` bytes (on a character boundary), marked when
/// cut: error messages never quote unbounded client input.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Default and largest directory page.
pub const DEFAULT_PAGE: usize = 1000;
/// Largest directory page.
pub const MAX_PAGE: usize = 10_000;

/// Durable namespace plus soft cluster state, behind one lock.
#[derive(Debug)]
pub struct State {
    /// Durable metadata.
    pub ns: Namespace,
    /// Liveness, replicas, repair.
    pub cluster: Cluster,
}

/// Keeps the cluster's replica map in step with confirmed uploads.
#[derive(Debug)]
pub struct Hook {
    /// The cluster view's timing, for a view rebuilt from scratch.
    pub timing: crate::cluster::Timing,
}

impl Hook {
    /// A cluster view of `ns` from scratch: every known node alive until
    /// heard otherwise, open uploads tracked, and safe mode until datanodes
    /// have reported to this coordinator.
    pub fn fresh_cluster(&self, ns: &Namespace) -> Cluster {
        let mut cluster = Cluster::new(
            self.timing.clone(),
            ns,
            monotonic_ms(),
            unix_to_monotonic_ms,
        );
        for u in ns.uploads().values() {
            cluster.track_upload(&u.upload_id, unix_to_monotonic_ms(u.expires_at_ms));
        }
        cluster
    }
}

impl Applied<State> for Hook {
    fn restored(&self, st: &mut State) {
        st.cluster = self.fresh_cluster(&st.ns);
    }

    fn applied(&self, st: &mut State, cmd: &Command, _: &Outcome) {
        match cmd {
            Command::ConfirmUpload { chunks, .. } => st.cluster.on_confirmed(chunks),
            Command::BeginUpload(u) => st
                .cluster
                .track_upload(&u.upload_id, unix_to_monotonic_ms(u.expires_at_ms)),
            Command::SetMaintenance { node_id, until_ms } => st.cluster.set_maintenance(
                node_id,
                if *until_ms == 0 {
                    0
                } else {
                    unix_to_monotonic_ms(*until_ms)
                },
            ),
            _ => {}
        }
    }
    fn namespace<'a>(&self, st: &'a mut State) -> &'a mut Namespace {
        &mut st.ns
    }
}

type ResponseTx = mpsc::Sender<Result<pb::HeartbeatResponse, Status>>;

/// Everything the handlers share.
pub struct Ctx {
    /// State.
    pub state: Arc<Mutex<State>>,
    /// Proposals go here.
    pub committer: Committer,
    /// Configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
    /// Open heartbeat streams by node.
    pub streams: Mutex<HashMap<NodeId, ResponseTx>>,
    /// Becomes true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// The Raft group this coordinator is a member of (none: a single
    /// coordinator).
    pub raft: Option<openraft::Raft<crate::raft::TypeConfig>>,
    /// Makes reads on the leader linearizable.
    pub reads: Arc<leader::ReadBarrier>,
    /// This member's place in its group (none: a single coordinator).
    pub group: Option<Group>,
    /// Its TLS identity (or plain text), for the calls it makes and the
    /// checks of who calls it.
    pub security: dfs_common::tls::Security,
    /// The chunk-token key ring (with mutual TLS; none in plain text).
    pub tokens: Option<Tokens>,
    /// Client roles on path prefixes (`--access-file`; none: every client
    /// may read and write).
    pub access: Option<crate::access::AccessFile>,
    /// Bearer tokens naming client principals (`--client-tokens`).
    pub bearer: Option<crate::bearer::TokenFile>,
}

/// The key ring that signs chunk capabilities, and how long read and
/// replicate tokens live.
pub struct Tokens {
    pub file: dfs_common::token::KeyFile,
    pub lifetime: std::time::Duration,
}

impl Ctx {
    /// A token for `chunk_id` allowing `ops` to `principal` on `nodes`
    /// until `expires_at_unix_s`; none in plain text.
    pub fn token(
        &self,
        chunk_id: &str,
        ops: u32,
        principal: Option<&Principal>,
        nodes: &[String],
        expires_at_unix_s: u64,
    ) -> Option<pb::ChunkToken> {
        let (tokens, principal) = (self.tokens.as_ref()?, principal?);
        Some(tokens.file.get().sign(
            chunk_id,
            ops,
            &principal.to_string(),
            nodes,
            expires_at_unix_s,
        ))
    }

    /// When a read or replicate token made now expires.
    pub fn token_expiry(&self) -> u64 {
        let lifetime = self.tokens.as_ref().map(|t| t.lifetime).unwrap_or_default();
        now_unix_ms() / 1000 + lifetime.as_secs()
    }

    /// The replicate token of a repair command to `source`: `source` may
    /// copy the chunk to `target`.
    pub fn replicate_token(
        &self,
        source: &NodeId,
        chunk_id: &str,
        target: &str,
    ) -> Option<pb::ChunkToken> {
        let principal = Principal::new(Kind::Datanode, source.as_str());
        self.token(
            chunk_id,
            dfs_common::token::ops::REPLICATE,
            Some(&principal),
            &[target.to_string()],
            self.token_expiry(),
        )
    }

    /// The key ring in use (none in plain text).
    pub fn ring(&self) -> Option<Arc<dfs_common::token::KeyRing>> {
        self.tokens.as_ref().map(|t| t.file.get())
    }
}

/// A coordinator's membership in its group.
#[derive(Clone)]
pub struct Group {
    /// Its Raft instance.
    pub raft: openraft::Raft<crate::raft::TypeConfig>,
    /// Its id and incarnation.
    pub me: crate::raft::network::Identity,
    /// What each member last answered to the leader.
    pub reported: Arc<crate::raft::membership::Reported>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("config", &self.config)
            .field("replicated", &self.raft.is_some())
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// Locks the state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock poisoned")
    }

    /// True unless this coordinator is a follower in a group: only the
    /// leader tracks datanodes and orders repairs and deletes.
    pub fn is_leader(&self) -> bool {
        match &self.raft {
            None => true,
            Some(raft) => {
                let m = raft.metrics();
                let m = m.borrow();
                m.current_leader == Some(m.id)
            }
        }
    }

    /// Who leads the group, as this member knows it.
    pub fn leadership(&self) -> leader::Leadership {
        let Some(raft) = &self.raft else {
            return leader::Leadership {
                is_leader: true,
                leader: None,
            };
        };
        let m = raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader.and_then(|id| {
            m.membership_config
                .nodes()
                .find(|(n, _)| **n == id)
                .map(|(_, node)| node.addr.clone())
        });
        leader::Leadership {
            is_leader: m.current_leader == Some(m.id),
            leader,
        }
    }

    /// UNAVAILABLE with the leader's address, on a follower.
    pub fn check_leader(&self) -> Result<(), Status> {
        let who = self.leadership();
        if who.is_leader {
            return Ok(());
        }
        Err(ProposeError::NotLeader { leader: who.leader }.into())
    }

    /// Waits until a read may be answered: at once for a stale read (or a
    /// single coordinator), else after the leader confirmed it leads.
    async fn read_barrier(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        if leader::wants_stale(metadata.as_ref()) {
            return Ok(());
        }
        self.reads.wait(&self.metrics).await
    }

    async fn propose(&self, cmd: Command) -> Result<Outcome, Status> {
        Ok(self.committer.propose(cmd).await?)
    }

    /// Proposes `cmd` once per caller's `request_id` (see
    /// [`Command::Once`]); without an id, as [`Ctx::propose`].
    async fn propose_once(
        &self,
        request_id: Option<String>,
        cmd: Command,
    ) -> Result<Outcome, Status> {
        match request_id {
            None => self.propose(cmd).await,
            Some(id) => {
                self.propose(Command::Once {
                    request_id: format!("req/{id}"),
                    now_ms: now_unix_ms(),
                    command: Box::new(cmd),
                })
                .await
            }
        }
    }

    /// See [`Committer::propose_applied`].
    async fn propose_applied(&self, cmd: Command) -> Result<Outcome, Status> {
        Ok(self.committer.propose_applied(cmd).await?)
    }

    /// Fail-stop: drops every queued command and delivers none from now on.
    pub fn halt(&self) {
        self.lock().cluster.clear_outboxes();
    }

    /// Delivers queued commands to nodes with an open stream.
    pub fn flush_outboxes(&self) {
        if self.committer.has_failed() {
            return;
        }
        let streams = self.streams.lock().expect("streams lock poisoned").clone();
        let mut st = self.lock();
        let now = monotonic_ms();
        let cluster_id = cluster_id_wire(&st.ns);
        let nodes = st.cluster.nodes_with_commands();
        let states: HashMap<NodeId, NodeState> = st
            .cluster
            .status(&st.ns, now)
            .into_iter()
            .map(|s| (s.record.node_id, s.state))
            .collect();
        for node in nodes {
            let Some(tx) = streams.get(&node) else {
                continue;
            };
            let commands = st.cluster.take_outbox(&node);
            let token = |chunk: &str, target: &str| self.replicate_token(&node, chunk, target);
            let resp = pb::HeartbeatResponse {
                token_keys: Vec::new(),
                commands: commands
                    .into_iter()
                    .map(|c| command_to_proto(c, &token))
                    .collect(),
                state: state_to_proto(states.get(&node).copied().unwrap_or(NodeState::Healthy))
                    as i32,
                cluster_id: cluster_id.clone(),
            };
            if tx.try_send(Ok(resp)).is_err() {
                tracing::warn!(node_id = %node, "heartbeat stream full or closed; commands dropped (they are re-planned)");
            }
        }
    }
}

// ------------------------------------------------------------ service

/// The Coordinator gRPC service.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    ctx: Arc<Ctx>,
}

/// Who may make a call (see [`CoordinatorService::allow`]).
#[derive(Debug, Clone, Copy)]
enum Access {
    /// Clients and the operator: the namespace and status calls.
    User,
    /// Datanodes: registration and heartbeats.
    Datanode,
    /// Decommission, maintenance, safe mode and group membership.
    Admin,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::User => "clients",
            Access::Datanode => "datanodes",
            Access::Admin => "admins",
        }
    }
}

/// The client principal with admin rights (`dfs up` issues it).
pub use dfs_common::tls::ADMIN_CLIENT;

/// Admins: the operator, and the client named [`ADMIN_CLIENT`].
pub fn is_admin(p: &Principal) -> bool {
    p.kind == Kind::Operator || (p.kind == Kind::Client && p.name == ADMIN_CLIENT)
}

/// A datanode registers and reports only as itself: its certificate names
/// its node id (`dfs://datanode/<node id>`), so a compromised or mistaken
/// datanode cannot heartbeat for another one, confirm its replicas or take
/// its place. Plain text (no caller) checks nothing.
pub fn speaks_for_itself(caller: Option<&Principal>, node_id: &str) -> Result<(), Status> {
    match caller {
        Some(p) if p.kind == Kind::Datanode && p.name != node_id => {
            Err(Status::permission_denied(format!(
                "{p} may register and report only as node {}, not as {:?}",
                p.name,
                truncate(node_id, 80)
            )))
        }
        _ => Ok(()),
    }
}

impl CoordinatorService {
    /// Wraps the shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        CoordinatorService { ctx }
    }

    /// Refuses a call its caller may not make (with TLS; plain text lets
    /// every call through): datanode calls only from datanodes, namespace
    /// and status calls from clients and the operator, admin calls from
    /// admins ([`is_admin`]).
    fn allow<T>(&self, r: &Request<T>, access: Access) -> Result<Option<Arc<Principal>>, Status> {
        let Some(transport) = self.ctx.security.principal_of(r)? else {
            return Ok(None);
        };
        let p = match self.bearer(r, &transport)? {
            Some(user) => user,
            None => transport,
        };
        let ok = match access {
            Access::User => matches!(p.kind, Kind::Client | Kind::Operator),
            Access::Datanode => p.kind == Kind::Datanode,
            Access::Admin => {
                is_admin(&p)
                    || self
                        .ctx
                        .access
                        .as_ref()
                        .is_some_and(|a| a.get().allows(&p, Role::Admin, "/"))
            }
        };
        if ok {
            Ok(Some(p))
        } else {
            self.ctx.metrics.refused(access.name());
            Err(Status::permission_denied(format!(
                "{p} may not make this call ({} only)",
                access.name()
            )))
        }
    }

    /// The user a call's bearer token names (`authorization: Bearer
    /// <token>`, see [`crate::bearer`]), or `None` without one. A token is
    /// honoured only over a client certificate and only when this
    /// coordinator lists it; anything else is refused, never ignored.
    fn bearer<T>(
        &self,
        r: &Request<T>,
        transport: &Principal,
    ) -> Result<Option<Arc<Principal>>, Status> {
        let Some(v) = r.metadata().get("authorization") else {
            return Ok(None);
        };
        let refuse = |st: Status| {
            self.ctx.metrics.refused("bearer");
            Err(st)
        };
        let Some(token) = v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")) else {
            return refuse(Status::unauthenticated(
                "authorization metadata must be `Bearer <token>`",
            ));
        };
        if transport.kind != Kind::Client {
            return refuse(Status::permission_denied(format!(
                "{transport} may not speak for a user: a bearer token is honoured only over a client certificate"
            )));
        }
        let Some(file) = &self.ctx.bearer else {
            return refuse(Status::unauthenticated(
                "this coordinator verifies no bearer tokens (it runs without --client-tokens)",
            ));
        };
        match file.get().verify(token.trim()) {
            Some(name) => Ok(Some(Arc::new(Principal::new(Kind::Client, name)))),
            None => refuse(Status::unauthenticated("bearer token not recognised")),
        }
    }

    /// Whom a call's chunk tokens are issued to: the principal of the
    /// connection (its certificate, or the caller a coordinator forwarded
    /// for), never a bearer token's user, because a datanode authenticates
    /// the connection that presents a chunk token.
    fn holder<T>(&self, r: &Request<T>) -> Option<Arc<Principal>> {
        self.ctx.security.principal_of(r).ok().flatten()
    }

    /// Refuses a namespace call on `path` that the caller's roles do not
    /// cover ([`crate::access`]). Without an access file (or in plain
    /// text) every client may read and write; the built-in admins always
    /// may. A path that does not parse is left to the call's own error.
    fn may(&self, caller: Option<&Principal>, role: Role, path: &str) -> Result<(), Status> {
        let (Some(p), Some(access)) = (caller, &self.ctx.access) else {
            return Ok(());
        };
        let Ok(path) = crate::path::NsPath::parse(path) else {
            return Ok(());
        };
        let path = path.to_string();
        if is_admin(p) || access.get().allows(p, role, &path) {
            return Ok(());
        }
        self.ctx.metrics.refused("paths");
        Err(Status::permission_denied(format!(
            "{p} has no {} role on {path}",
            role.as_str()
        )))
    }

    /// [`Self::may`] for a call on an open upload (ConfirmUpload,
    /// AbortUpload, ReplanChunk): the role is checked on the upload's
    /// path, so a leaked upload id is worth nothing to a principal that may
    /// not write there, and one whose write role was taken away since the
    /// plan cannot finish the upload. An id that does not parse, or an
    /// upload this coordinator does not know (yet), is left to the call's
    /// own error.
    fn may_upload(
        &self,
        caller: Option<&Principal>,
        role: Role,
        upload_id: &str,
    ) -> Result<(), Status> {
        if caller.is_none() || self.ctx.access.is_none() {
            return Ok(());
        }
        let Ok(id) = UploadId::try_from(upload_id.to_string()) else {
            return Ok(());
        };
        let path = match self.ctx.lock().ns.upload(&id) {
            Ok(u) => u.path.clone(),
            Err(_) => return Ok(()),
        };
        self.may(caller, role, &path)
    }

    async fn timed<T>(
        &self,
        method: &'static str,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let r = f.await;
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.ctx
            .metrics
            .rpc(method, code, start.elapsed().as_secs_f64());
        r.map(Response::new)
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn upload_file(
        &self,
        r: Request<pb::UploadFileRequest>,
    ) -> Result<Response<pb::UploadPlan>, Status> {
        let caller = self.allow(&r, Access::User)?;
        let holder = self.holder(&r);
        self.may(caller.as_deref(), Role::Write, &r.get_ref().path)?;
        self.timed(
            "UploadFile",
            self.upload_file_impl(r.into_inner(), holder.as_deref()),
        )
        .await
    }

    async fn confirm_upload(
        &self,
        r: Request<pb::ConfirmUploadRequest>,
    ) -> Result<Response<pb::ConfirmUploadResponse>, Status> {
        let caller = self.allow(&r, Access::User)?;
        self.may_upload(caller.as_deref(), Role::Write, &r.get_ref().upload_id)?;
        self.timed("ConfirmUpload", self.confirm_impl(r.into_inner()))
            .await
    }

    async fn upload_files(
        &self,
        r: Request<pb::UploadFilesRequest>,
    ) -> Result<Response<pb::UploadFilesResponse>, Status> {
        let caller = self.allow(&r, Access::User)?;
        let holder = self.holder(&r);
        for f in &r.get_ref().files {
            self.may(caller.as_deref(), Role::Write, &f.path)?;
        }
        self.timed(
            "UploadFiles",
            self.upload_files_impl(r.into_inner(), holder.as_deref()),
        )
        .await
    }

    async fn confirm_uploads(
        &self,
        r: Request<pb::ConfirmUploadsRequest>,
    ) -> Result<Response<pb::ConfirmUploadsResponse>, Status> {
        let caller = self.allow(&r, Access::User)?;
        for u in &r.get_ref().uploads {
            self.may_upload(caller.as_deref(), Role::Write, &u.upload_id)?;
        }
        self.timed("ConfirmUploads", self.confirm_uploads_impl(r.into_inner()))
            .await
    }

    async fn abort_upload(
        &self,
        r: Request<pb::AbortUploadRequest>,
    ) -> Result<Response<pb::AbortUploadResponse>, Status> {
        let caller = self.allow(&r, Access::User)?;
        self.may_upload(caller.as_deref(), Role::Write, &r.get_ref().upload_id)?;
        let req = r.into_inner();
        self.timed("AbortUpload", async {
            self.ctx
                .propose(Command::AbortUpload {
                    upload_id: parse_id(req.upload_id)?,
                })
                .await?;
            Ok(pb::AbortUploadResponse {})
        })
        .await
    }

    async fn replan_chunk(
        &self,
        r: Request<pb::ReplanChunkRequest>,
    ) -> Result<Response<pb::PlannedChunk>, Status> {
        let caller = self.allow(&r, Access::User)?;
        let holder = self.holder(&r);
        self.may_upload(caller.as_deref(), Role::Write, &r.get_ref().upload_id)?;
        self.timed(
            "ReplanChunk",
            self.replan_impl(r.into_inner(), holder.as_deref()),
        )
        .await
    }

    async fn download_file(
        &self,
        r: Request<pb::DownloadFileRequest>,
    ) -> Result<Response<pb::DownloadFileResponse>, Status> {
        let caller = self.allow(&r, Access::User)?;
        let holder = self.holder(&r);
        self.may(caller.as_deref(), Role::Read, &r.get_ref().path)?;
        self.timed("DownloadFile", async {
            self.ctx.read_barrier(r.metadata()).await?;
            self.download_impl(r.into_inner(), holder.as_deref())
        })
        .await
    }

    async fn mkdir(&self, r: Request<pb::MkdirRequest>) -> Result<Response<pb::FileInfo>, Status> {
        let caller = self.allow(&r, Access::User)?;
        self.may(caller.as_deref(), Role::Write, &r.get_ref().path)?;
        self.timed("Mkdir", async {
            let once = request_id(r.metadata())?;
            let req = r.into_inner();
            let path = parse_path(&req.path)?;
            let outcome = self
                .ctx
                .propose_once(
                    once,
                    Command::Mkdir {
                        path: path.to_string(),
                        parents: req.parents,
                        now_ms: now_unix_ms(),
                    },
                )
                .await?;
            Ok(file_info(&entry_of(outcome)?))
        })
        .await
    }

    async fn list_directory(
        &self,
        r: Request<pb::ListDirectoryRequest>,
    ) -> Result<Response<pb::ListDirectoryResponse>, Status> {
        let caller = self.allow(&r, Access::User)?;
        self.may(caller.as_deref(), Role::Read, &r.get_ref().path)?;
        self.timed("ListDirectory", async {
            self.ctx.read_barrier(r.metadata()).await?;
            self.list_impl(r.into_inner())
        })
        .await
    }

    async fn stat(&self, r: Request<pb::StatRequest>) -> Result<Response<pb::FileInfo>, Status> {
        let caller = self.allow(&r, Access::User)?;
        self.may(caller.as_deref(), Role::Read, &r.get_ref().path)?;
        self.timed("Stat", async {
            self.ctx.read_barrier(r.metadata()).await?;
            let path = parse_path(&r.get_ref().path)?;
            Ok(file_info(&self.ctx.lock().ns.stat(&path)?))
        })
        .await
    }

    async fn delete(
        &self,
        r: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = self.allow(&r, Access::User)?;
        self.may(caller.as_deref(), Role::Write, &r.get_ref().path)?;
        self.timed("Delete", async {
            let once = request_id(r.metadata())?;
            let req = r.into_inner();
            let path = parse_path(&req.path)?;
            match self
                .ctx
                .propose_once(
                    once,
                    Command::Delete {
                        path: path.to_string(),
                        recursive: req.recursive,
                    },
                )
                .await?
            {
                Outcome::Deleted {
                    files,
                    chunks_released,
                } => Ok(pb::DeleteResponse {
                    files_deleted: files,
                    chunks_released,
                }),
                other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
            }
        })
        .await
    }

    async fn rename(
        &self,
        r: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        let caller = self.allow(&r, Access::User)?;
        self.may(caller.as_deref(), Role::Write, &r.get_ref().source)?;
        self.may(caller.as_deref(), Role::Write, &r.get_ref().destination)?;
        self.timed("Rename", async {
            let once = request_id(r.metadata())?;
            let req = r.into_inner();
            let source = parse_path(&req.source)?;
            let destination = parse_path(&req.destination)?;
            let outcome = self
                .ctx
                .propose_once(
                    once,
                    Command::Rename {
                        source: source.to_string(),
                        destination: destination.to_string(),
                        now_ms: now_unix_ms(),
                    },
                )
                .await?;
            Ok(file_info(&entry_of(outcome)?))
        })
        .await
    }

    async fn register_data_node(
        &self,
        r: Request<pb::RegisterDataNodeRequest>,
    ) -> Result<Response<pb::RegisterDataNodeResponse>, Status> {
        let caller = self.allow(&r, Access::Datanode)?;
        if let Err(status) = speaks_for_itself(caller.as_deref(), &r.get_ref().node_id) {
            self.ctx.metrics.refused("itself");
            return Err(status);
        }
        self.timed("RegisterDataNode", self.register_impl(r.into_inner()))
            .await
    }

    type DataNodeHeartbeatStream = ReceiverStream<Result<pb::HeartbeatResponse, Status>>;

    async fn data_node_heartbeat(
        &self,
        r: Request<Streaming<pb::Heartbeat>>,
    ) -> Result<Response<Self::DataNodeHeartbeatStream>, Status> {
        let caller = self.allow(&r, Access::Datanode)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(heartbeat_loop(self.ctx.clone(), r.into_inner(), tx, caller));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_nodes(
        &self,
        r: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.allow(&r, Access::User)?;
        self.timed("ListNodes", async {
            let st = self.ctx.lock();
            Ok(pb::ListNodesResponse {
                nodes: st
                    .cluster
                    .status(&st.ns, monotonic_ms())
                    .iter()
                    .map(status_to_proto)
                    .collect(),
            })
        })
        .await
    }

    async fn get_cluster_status(
        &self,
        r: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.allow(&r, Access::User)?;
        self.timed("GetClusterStatus", async { Ok(self.cluster_status()) })
            .await
    }

    async fn decommission_node(
        &self,
        r: Request<pb::DecommissionNodeRequest>,
    ) -> Result<Response<pb::DataNodeStatus>, Status> {
        self.allow(&r, Access::Admin)?;
        let req = r.into_inner();
        self.timed("DecommissionNode", async {
            let node_id: NodeId = parse_id(req.node_id)?;
            self.ctx
                .committer
                .propose(Command::SetDraining {
                    node_id: node_id.clone(),
                    draining: !req.cancel,
                })
                .await
                .map_err(|e| match e {
                    ProposeError::Rejected(NamespaceError::UnknownNode { node_id }) => {
                        Status::not_found(format!("unknown datanode {node_id}"))
                    }
                    e => e.into(),
                })?;
            tracing::info!(%node_id, cancel = req.cancel, "decommission");
            self.node_status(&node_id)
        })
        .await
    }

    async fn set_node_maintenance(
        &self,
        r: Request<pb::SetNodeMaintenanceRequest>,
    ) -> Result<Response<pb::DataNodeStatus>, Status> {
        self.allow(&r, Access::Admin)?;
        let req = r.into_inner();
        self.timed("SetNodeMaintenance", async {
            let node_id: NodeId = parse_id(req.node_id)?;
            let max = self.ctx.config.maintenance_max;
            let duration = if req.duration_seconds == 0 {
                DEFAULT_MAINTENANCE.min(max)
            } else {
                std::time::Duration::from_secs(req.duration_seconds).min(max)
            };
            let until_ms = if req.enabled {
                now_unix_ms() + duration.as_millis() as u64
            } else {
                0
            };
            // Durable first: a coordinator restarting inside the window
            // keeps it (applied to the live state by the Hook).
            self.ctx
                .committer
                .propose(Command::SetMaintenance {
                    node_id: node_id.clone(),
                    until_ms,
                })
                .await
                .map_err(|e| match e {
                    ProposeError::Rejected(NamespaceError::UnknownNode { node_id }) => {
                        Status::not_found(format!("unknown datanode {node_id}"))
                    }
                    e => e.into(),
                })?;
            tracing::info!(%node_id, enabled = req.enabled, ?duration, "maintenance");
            self.node_status(&node_id)
        })
        .await
    }

    async fn set_safe_mode(
        &self,
        r: Request<pb::SetSafeModeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.allow(&r, Access::Admin)?;
        let req = r.into_inner();
        self.timed("SetSafeMode", async {
            self.ctx.lock().cluster.set_safe_mode(req.enabled);
            Ok(self.cluster_status())
        })
        .await
    }

    async fn add_coordinator(
        &self,
        r: Request<pb::AddCoordinatorRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.allow(&r, Access::Admin)?;
        let req = r.into_inner();
        self.timed("AddCoordinator", async {
            let group = self.group()?;
            crate::raft::membership::add_learner(
                &group.raft,
                req.id,
                &req.address,
                &self.ctx.security,
            )
            .await
            .map_err(membership_status)?;
            tracing::info!(id = req.id, address = %req.address, "coordinator added as a learner");
            Ok(self.cluster_status())
        })
        .await
    }

    async fn set_coordinator_voters(
        &self,
        r: Request<pb::SetCoordinatorVotersRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.allow(&r, Access::Admin)?;
        let req = r.into_inner();
        self.timed("SetCoordinatorVoters", async {
            let group = self.group()?;
            crate::raft::membership::set_voters(&group.raft, &req.voter_ids)
                .await
                .map_err(membership_status)?;
            tracing::info!(voters = ?req.voter_ids, "coordinator group voters set");
            Ok(self.cluster_status())
        })
        .await
    }
}

fn membership_status(e: crate::raft::membership::MembershipError) -> Status {
    use crate::raft::membership::MembershipError as E;
    match &e {
        E::Invalid(_) => Status::invalid_argument(e.to_string()),
        E::Precondition(_) => Status::failed_precondition(e.to_string()),
        E::Unreachable { .. } => Status::failed_precondition(e.to_string()),
        E::Raft(_) => Status::unavailable(e.to_string()),
    }
}

impl CoordinatorService {
    /// This coordinator's group, or FAILED_PRECONDITION for a single one.
    fn group(&self) -> Result<&Group, Status> {
        self.ctx.group.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this coordinator is not in a group (started without --peers): \
                 it has no membership to change",
            )
        })
    }
}
