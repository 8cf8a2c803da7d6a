//! The gRPC edge: wire types are converted and validated here (bad input
//! becomes `INVALID_ARGUMENT`), domain errors become `Status` here, and
//! nowhere else.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dfs_common::time::{monotonic_ms, monotonic_to_unix_ms, now_unix_ms, unix_to_monotonic_ms};
use dfs_proto::coordinator_server::Coordinator;
use dfs_proto::{self as pb, data_node_command};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::{
    Cluster, ClusterError, CommandOutcome, Health, HeartbeatEvent, NodeCommand, NodeInfo,
    NodeState, NodeStatus, ReportBatch, SafeModeStatus,
};
use crate::config::{Config, DEFAULT_MAINTENANCE, MAX_REPLICATION};
use crate::metrics::Metrics;
use crate::namespace::{
    ChunkRecord, Command, EntryInfo, Namespace, NamespaceError, NodeRecord, Outcome,
    PlannedChunkRecord, TopologyRecord, Upload,
};
use crate::path::{NsPath, PathError};
use crate::placement::{self, Spread};
use crate::store::{Applied, Committer, ProposeError, StoreError};

/// Most chunks one file may have.
pub const MAX_CHUNKS_PER_FILE: u64 = 1_000_000;
/// Most calls one UploadFiles or ConfirmUploads batch may carry.
pub const MAX_BATCH_CALLS: usize = 1024;
/// Most chunks one UploadFiles batch may plan in all: the batch is for small
/// files, and its answer is one message held in memory.
pub const MAX_BATCH_CHUNKS: u64 = 65_536;
/// Most chunk entries (report, added, removed, corrupt) one heartbeat may
/// carry: datanodes send full reports in batches of 10,000.
pub const MAX_HEARTBEAT_CHUNKS: usize = 20_000;
/// Most uploads open at once (each is held in the namespace until it is
/// confirmed, aborted or expires).
pub const MAX_OPEN_UPLOADS: usize = 100_000;
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
pub struct Hook;

impl Applied<State> for Hook {
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
#[derive(Debug)]
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
    pub streams: Mutex<HashMap<String, ResponseTx>>,
    /// Becomes true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl Ctx {
    /// Locks the state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock poisoned")
    }

    async fn propose(&self, cmd: Command) -> Result<Outcome, Status> {
        Ok(self.committer.propose(cmd).await?)
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
        let cluster_id = st.ns.cluster_id().to_string();
        let nodes = st.cluster.nodes_with_commands();
        let states: HashMap<String, NodeState> = st
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
            let resp = pb::HeartbeatResponse {
                commands: commands.into_iter().map(command_to_proto).collect(),
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

// ------------------------------------------------------------ conversions

impl From<PathError> for Status {
    fn from(e: PathError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<NamespaceError> for Status {
    fn from(e: NamespaceError) -> Self {
        use NamespaceError::*;
        let msg = e.to_string();
        match e {
            InvalidPath(_) | Root | IntoItself { .. } | PlanMismatch { .. } => {
                Status::invalid_argument(msg)
            }
            NotFound { .. } | ParentNotFound { .. } | UploadNotFound { .. } => {
                Status::not_found(msg)
            }
            AlreadyExists { .. } => Status::already_exists(msg),
            NotADirectory { .. }
            | IsADirectory { .. }
            | DirectoryNotEmpty { .. }
            | QuorumNotMet { .. }
            | UnknownNode { .. } => Status::failed_precondition(msg),
        }
    }
}

impl From<ProposeError> for Status {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Rejected(e) => e.into(),
            ProposeError::Store(StoreError::Unavailable) => {
                Status::unavailable("metadata store is unavailable")
            }
            ProposeError::Store(e) => Status::internal(e.to_string()),
        }
    }
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::UnknownNode { .. } => Status::not_found(e.to_string()),
        }
    }
}

fn parse_path(raw: &str) -> Result<NsPath, Status> {
    Ok(NsPath::parse(raw)?)
}

pub use crate::config::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};

/// Refuses a chunk size outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
pub fn check_chunk_size(chunk_size: u64) -> Result<(), Status> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes (64KiB to 1GiB)"
        )))
    }
}

/// Refuses a batch above [`MAX_BATCH_CALLS`].
fn check_batch_len(n: usize) -> Result<(), Status> {
    if n > MAX_BATCH_CALLS {
        return Err(Status::invalid_argument(format!(
            "the batch holds {n} calls; the most one batch may hold is {MAX_BATCH_CALLS}"
        )));
    }
    Ok(())
}

/// The wire form of one batched call's failure.
fn call_error(status: &Status) -> pb::CallError {
    pb::CallError {
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}

/// The chunk id rule (`dfs_common::id::ChunkId`), as INVALID_ARGUMENT.
fn check_chunk_id(id: &str) -> Result<(), Status> {
    dfs_common::id::ChunkId::parse(id)?;
    Ok(())
}

/// The node id rule (`dfs_common::id::NodeId`), as INVALID_ARGUMENT.
fn check_node_id(id: &str) -> Result<(), Status> {
    dfs_common::id::NodeId::parse(id)?;
    Ok(())
}

use dfs_common::id::random_hex_id as random_id;

fn file_info(e: &EntryInfo) -> pb::FileInfo {
    pb::FileInfo {
        path: e.path.clone(),
        name: e.name.clone(),
        file_type: if e.is_dir {
            pb::FileType::Directory
        } else {
            pb::FileType::File
        } as i32,
        size: e.size,
        replication: e.replication,
        chunk_size: e.chunk_size,
        chunk_count: e.chunk_count,
        created_unix_ms: e.created_ms,
        modified_unix_ms: e.modified_ms,
        version: e.version,
    }
}

fn entry_of(outcome: Outcome) -> Result<EntryInfo, Status> {
    match outcome {
        Outcome::Entry(e) => Ok(e),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

impl From<Option<pb::NodeInfo>> for NodeInfo {
    fn from(i: Option<pb::NodeInfo>) -> Self {
        let i = i.unwrap_or_default();
        NodeInfo {
            free_bytes: i.free_bytes,
            total_bytes: i.total_bytes,
            health: match pb::NodeHealth::try_from(i.health) {
                Ok(pb::NodeHealth::Healthy) => Health::Healthy,
                Ok(pb::NodeHealth::Full) => Health::Full,
                Ok(pb::NodeHealth::Degraded) => Health::Degraded,
                Ok(pb::NodeHealth::Draining) => Health::Draining,
                _ => Health::Unspecified,
            },
            used_bytes: i.used_bytes,
            chunk_count: i.chunk_count,
            active_sessions: i.active_sessions,
            reserved_bytes: i.reserved_bytes,
            quarantined_chunks: i.quarantined_chunks,
            unavailable_chunks: i.unavailable_chunks,
        }
    }
}

fn info_to_proto(i: &NodeInfo) -> pb::NodeInfo {
    pb::NodeInfo {
        free_bytes: i.free_bytes,
        total_bytes: i.total_bytes,
        health: match i.health {
            Health::Unspecified => pb::NodeHealth::Unspecified,
            Health::Healthy => pb::NodeHealth::Healthy,
            Health::Full => pb::NodeHealth::Full,
            Health::Degraded => pb::NodeHealth::Degraded,
            Health::Draining => pb::NodeHealth::Draining,
        } as i32,
        used_bytes: i.used_bytes,
        chunk_count: i.chunk_count,
        active_sessions: i.active_sessions,
        reserved_bytes: i.reserved_bytes,
        quarantined_chunks: i.quarantined_chunks,
        unavailable_chunks: i.unavailable_chunks,
    }
}

fn state_to_proto(s: NodeState) -> pb::NodeState {
    s.to_wire()
}

fn status_to_proto(s: &NodeStatus) -> pb::DataNodeStatus {
    pb::DataNodeStatus {
        node_id: s.record.node_id.clone(),
        address: s.record.address.clone(),
        state: state_to_proto(s.state) as i32,
        info: Some(info_to_proto(&s.info)),
        topology: Some(pb::Topology {
            zone: s.record.topology.zone.clone(),
            rack: s.record.topology.rack.clone(),
            host: s.record.topology.host.clone(),
        }),
        last_heartbeat_unix_ms: if s.last_heartbeat_ms == 0 {
            0
        } else {
            monotonic_to_unix_ms(s.last_heartbeat_ms)
        },
        chunk_count: s.chunk_count,
        safe_to_remove: s.safe_to_remove,
        // The durable deadline as the admin set it (decisions use the
        // monotonic one derived from it).
        maintenance_until_unix_ms: match (s.maintenance_until_ms, s.record.maintenance_until_ms) {
            (0, _) => 0,
            (_, wall) if wall > 0 => wall,
            (mono, _) => monotonic_to_unix_ms(mono),
        },
    }
}

fn safe_mode_to_proto(s: &SafeModeStatus) -> pb::SafeModeStatus {
    pb::SafeModeStatus {
        active: s.active,
        reason: s.reason.clone(),
        reported_nodes: s.reported_nodes,
        known_nodes: s.known_nodes,
        reported_replicas: s.reported_replicas,
        known_replicas: s.known_replicas,
        manual: s.manual,
    }
}

fn command_to_proto(c: NodeCommand) -> pb::DataNodeCommand {
    match c {
        NodeCommand::Replicate {
            command_id,
            chunk,
            target_id,
            target_address,
            max_bytes_per_second,
        } => pb::DataNodeCommand {
            command_id,
            command: Some(data_node_command::Command::Replicate(
                pb::ReplicateChunkCommand {
                    chunk: Some(pb::ChunkMeta {
                        chunk_id: chunk.id,
                        checksum: chunk.checksum,
                        size: chunk.size,
                        checksum_algorithm: chunk.algorithm,
                    }),
                    target: Some(pb::NodeAddress {
                        node_id: target_id,
                        address: target_address,
                    }),
                    max_bytes_per_second,
                },
            )),
        },
        NodeCommand::Delete {
            command_id,
            chunk_ids,
            quarantined_only,
        } => pb::DataNodeCommand {
            command_id,
            command: Some(data_node_command::Command::Delete(
                pb::DeleteChunksCommand {
                    chunk_ids,
                    quarantined_only,
                },
            )),
        },
    }
}

impl TryFrom<pb::Heartbeat> for HeartbeatEvent {
    type Error = Status;

    fn try_from(h: pb::Heartbeat) -> Result<Self, Status> {
        check_node_id(&h.node_id)?;
        let reported = h.chunk_report.as_ref().map_or(0, |r| r.chunks.len())
            + h.added_chunks.len()
            + h.removed_chunks.len()
            + h.corrupt_chunks.len();
        if reported > MAX_HEARTBEAT_CHUNKS {
            return Err(Status::invalid_argument(format!(
                "a heartbeat carries {reported} chunk entries; at most {MAX_HEARTBEAT_CHUNKS} \
                 (split full reports into batches)"
            )));
        }
        if h.command_results.len() > MAX_HEARTBEAT_CHUNKS {
            return Err(Status::invalid_argument(format!(
                "a heartbeat carries {} command results; at most {MAX_HEARTBEAT_CHUNKS}",
                h.command_results.len()
            )));
        }
        let ids = |metas: Vec<pb::ChunkMeta>| -> Result<Vec<(String, u32)>, Status> {
            metas
                .into_iter()
                .map(|m| check_chunk_id(&m.chunk_id).map(|()| (m.chunk_id, m.checksum)))
                .collect()
        };
        let plain = |ids: Vec<String>| -> Result<Vec<String>, Status> {
            for id in &ids {
                check_chunk_id(id)?;
            }
            Ok(ids)
        };
        Ok(HeartbeatEvent {
            node_id: h.node_id,
            info: Some(h.info.unwrap_or_default()).into(),
            report: match h.chunk_report {
                Some(r) => Some(ReportBatch {
                    chunks: ids(r.chunks)?,
                    first: r.first,
                    last: r.last,
                }),
                None => None,
            },
            added: ids(h.added_chunks)?,
            removed: plain(h.removed_chunks)?,
            corrupt: plain(h.corrupt_chunks)?,
            results: h
                .command_results
                .into_iter()
                .map(|r| CommandOutcome {
                    command_id: r.command_id,
                    ok: r.ok,
                    error: truncate(&r.error, 512),
                })
                .collect(),
        })
    }
}

// ------------------------------------------------------------ service

/// The Coordinator gRPC service.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    ctx: Arc<Ctx>,
}

impl CoordinatorService {
    /// Wraps the shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        CoordinatorService { ctx }
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

    /// Places `count` replicas of `bytes`, reserving the space.
    fn place(
        st: &mut State,
        replication: u32,
        bytes: u64,
        exclude: &[String],
        now: u64,
    ) -> Result<Vec<pb::NodeAddress>, Status> {
        let cands: Vec<_> = st
            .cluster
            .placement_candidates(&st.ns, now)
            .into_iter()
            .filter(|c| !exclude.contains(&c.node_id))
            .collect();
        let picked = placement::choose(
            &cands,
            replication as usize,
            bytes,
            Spread::default(),
            &mut rand::rng(),
        );
        if picked.len() < replication as usize {
            let available = cands.iter().filter(|c| c.free_bytes >= bytes).count();
            return Err(Status::failed_precondition(format!(
                "need {replication} datanodes with free space, {available} available"
            )));
        }
        let mut out = Vec::with_capacity(picked.len());
        for i in picked {
            let id = &cands[i].node_id;
            st.cluster.reserve(id, bytes);
            let address = st
                .ns
                .nodes()
                .get(id)
                .map(|n| n.address.clone())
                .unwrap_or_default();
            out.push(pb::NodeAddress {
                node_id: id.clone(),
                address,
            });
        }
        Ok(out)
    }

    async fn upload_file_impl(&self, req: pb::UploadFileRequest) -> Result<pb::UploadPlan, Status> {
        let cfg = &self.ctx.config;
        let path = parse_path(&req.path)?;
        let replication = if req.replication == 0 {
            cfg.replication
        } else {
            req.replication
        };
        if replication > MAX_REPLICATION {
            return Err(Status::invalid_argument(format!(
                "replication {replication} is above the maximum of {MAX_REPLICATION}"
            )));
        }
        let chunk_size = if req.chunk_size == 0 {
            cfg.chunk_size.0
        } else {
            req.chunk_size
        };
        check_chunk_size(chunk_size)?;
        let count = req.size.div_ceil(chunk_size);
        if count > MAX_CHUNKS_PER_FILE {
            return Err(Status::invalid_argument(format!(
                "file of {} bytes needs {count} chunks of {chunk_size} bytes; the maximum is {MAX_CHUNKS_PER_FILE}",
                req.size
            )));
        }
        let write_quorum = cfg.quorum_for(replication);
        let now = monotonic_ms();
        let upload_id = random_id();
        let mut planned = Vec::with_capacity(count as usize);
        let mut wire = Vec::with_capacity(count as usize);
        {
            let mut st = self.ctx.lock();
            if st.ns.uploads().len() >= MAX_OPEN_UPLOADS {
                return Err(Status::resource_exhausted(format!(
                    "{MAX_OPEN_UPLOADS} uploads are open, the most this coordinator keeps; \
                     confirm or abort some, or wait for them to expire"
                )));
            }
            st.ns.check_upload_target(&path, req.overwrite)?;
            for index in 0..count {
                let offset = index * chunk_size;
                let size = chunk_size.min(req.size - offset);
                let nodes = Self::place(&mut st, replication, size, &[], now)?;
                let chunk_id = random_id();
                planned.push(PlannedChunkRecord {
                    index,
                    chunk_id: chunk_id.clone(),
                    offset,
                    size,
                    nodes: nodes.iter().map(|n| n.node_id.clone()).collect(),
                });
                wire.push(pb::PlannedChunk {
                    index,
                    chunk_id,
                    offset,
                    size,
                    nodes,
                });
            }
        }
        let expires_at_ms = now_unix_ms() + cfg.upload_ttl.as_millis() as u64;
        // Answered once applied: a plan lost in a crash fails only its
        // ConfirmUpload (NOT_FOUND), and its chunks become orphans.
        self.ctx
            .propose_applied(Command::BeginUpload(Upload {
                upload_id: upload_id.clone(),
                path: path.to_string(),
                size: req.size,
                chunk_size,
                replication,
                write_quorum,
                overwrite: req.overwrite,
                chunks: planned,
                expires_at_ms,
            }))
            .await?;
        Ok(pb::UploadPlan {
            upload_id,
            chunks: wire,
            chunk_size,
            replication,
            write_quorum,
            expires_at_unix_ms: expires_at_ms,
        })
    }

    async fn replan_impl(&self, req: pb::ReplanChunkRequest) -> Result<pb::PlannedChunk, Status> {
        if req.exclude_nodes.len() > MAX_EXCLUDED_NODES {
            return Err(Status::invalid_argument(format!(
                "ReplanChunk excludes {} nodes; at most {MAX_EXCLUDED_NODES}",
                req.exclude_nodes.len()
            )));
        }
        for n in &req.exclude_nodes {
            check_node_id(n)?;
        }
        let now = monotonic_ms();
        let (chunk, nodes) = {
            let mut st = self.ctx.lock();
            let upload = st.ns.upload(&req.upload_id)?;
            let replication = upload.replication;
            let Some(chunk) = upload.chunks.iter().find(|c| c.index == req.index).cloned() else {
                return Err(Status::invalid_argument(format!(
                    "upload {} has no chunk {}",
                    req.upload_id, req.index
                )));
            };
            let nodes = Self::place(&mut st, replication, chunk.size, &req.exclude_nodes, now)?;
            (chunk, nodes)
        };
        let chunk_id = random_id();
        self.ctx
            .propose(Command::ReplanChunk {
                upload_id: req.upload_id,
                index: req.index,
                chunk_id: chunk_id.clone(),
                nodes: nodes.iter().map(|n| n.node_id.clone()).collect(),
            })
            .await?;
        Ok(pb::PlannedChunk {
            index: chunk.index,
            chunk_id,
            offset: chunk.offset,
            size: chunk.size,
            nodes,
        })
    }

    async fn confirm_impl(
        &self,
        req: pb::ConfirmUploadRequest,
    ) -> Result<pb::ConfirmUploadResponse, Status> {
        let mut chunks = req.chunks;
        if chunks.len() as u64 > MAX_CHUNKS_PER_FILE {
            return Err(Status::invalid_argument(format!(
                "ConfirmUpload carries {} chunks; a file has at most {MAX_CHUNKS_PER_FILE}",
                chunks.len()
            )));
        }
        chunks.sort_by_key(|c| c.index);
        let mut records = Vec::with_capacity(chunks.len());
        let mut receipts = Vec::with_capacity(chunks.len());
        for (i, c) in chunks.into_iter().enumerate() {
            if c.index != i as u64 {
                return Err(Status::invalid_argument(format!(
                    "chunk indices must be 0..n without gaps or repeats (found {} at position {i})",
                    c.index
                )));
            }
            let Some(meta) = c.chunk else {
                return Err(Status::invalid_argument(format!(
                    "chunk {i} has no ChunkMeta"
                )));
            };
            check_chunk_id(&meta.chunk_id)?;
            if c.replicas.len() > MAX_CONFIRMED_REPLICAS
                || c.receipts.len() > MAX_CONFIRMED_REPLICAS
            {
                return Err(Status::invalid_argument(format!(
                    "chunk {i} names {} replicas and {} receipts; at most {MAX_CONFIRMED_REPLICAS} each",
                    c.replicas.len(),
                    c.receipts.len()
                )));
            }
            for r in &c.replicas {
                check_node_id(r)?;
            }
            receipts.push(
                c.receipts
                    .into_iter()
                    .map(|r| (r.node_id, (r.checksum, r.size)))
                    .collect::<HashMap<_, _>>(),
            );
            records.push(ChunkRecord {
                id: meta.chunk_id,
                checksum: meta.checksum,
                size: meta.size,
                algorithm: meta.checksum_algorithm,
                replicas: c.replicas,
            });
        }
        let records = self
            .verified_replicas(&req.upload_id, records, &receipts)
            .await?;
        let outcome = self
            .ctx
            .propose(Command::ConfirmUpload {
                upload_id: req.upload_id,
                chunks: records,
                now_ms: now_unix_ms(),
            })
            .await?;
        Ok(pb::ConfirmUploadResponse {
            file: Some(file_info(&entry_of(outcome)?)),
        })
    }

    /// Keeps, for each chunk, only the claimed replicas that vouch for the
    /// confirmed checksum and size themselves: by the receipt the primary
    /// collected from them, or by their own chunk report. A replica that
    /// stored something else fails the confirm. Replicas with neither are
    /// waited for (a few heartbeats) while the write quorum is not met.
    async fn verified_replicas(
        &self,
        upload_id: &str,
        mut records: Vec<ChunkRecord>,
        receipts: &[HashMap<String, (u32, u64)>],
    ) -> Result<Vec<ChunkRecord>, Status> {
        let quorum = {
            let st = self.ctx.lock();
            // The plan first (ids, sizes, known nodes): a bad confirm fails
            // at once, before any wait for reports.
            st.ns.check_confirm(upload_id, &records)?;
            st.ns.upload(upload_id)?.write_quorum as usize
        };
        let wait = (self.ctx.config.heartbeat_interval * 3 + std::time::Duration::from_secs(1))
            .min(std::time::Duration::from_secs(15));
        let deadline = tokio::time::Instant::now() + wait;
        let mut verified: Vec<Vec<String>> = vec![Vec::new(); records.len()];
        loop {
            let mut short = false;
            {
                let st = self.ctx.lock();
                for (i, rec) in records.iter().enumerate() {
                    let done = &mut verified[i];
                    for node in &rec.replicas {
                        if done.contains(node) {
                            continue;
                        }
                        let said = receipts[i].get(node).copied().or_else(|| {
                            st.cluster
                                .reported_checksum(&rec.id, node)
                                .map(|crc| (crc, rec.size))
                        });
                        match said {
                            Some((crc, size)) if crc == rec.checksum && size == rec.size => {
                                done.push(node.clone())
                            }
                            Some((crc, size)) => {
                                self.ctx.metrics.confirm_mismatch.inc();
                                return Err(Status::failed_precondition(format!(
                                    "chunk {i} ({}): replica {node} stored {size} bytes with crc32c \
                                     {crc:08x}, but the confirm says {} bytes with crc32c {:08x}; \
                                     nothing was committed",
                                    rec.id, rec.size, rec.checksum
                                )));
                            }
                            None => {}
                        }
                    }
                    if done.len() < quorum.max(1) {
                        short = true;
                    }
                }
            }
            if !short || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for (i, rec) in records.iter_mut().enumerate() {
            if verified[i].len() < quorum.max(1) {
                return Err(Status::failed_precondition(format!(
                    "chunk {i} ({}): {} of the {} replicas named vouched for crc32c {:08x} \
                     (a receipt or their own chunk report within {wait:?}); the write quorum is \
                     {quorum}; nothing was committed",
                    rec.id,
                    verified[i].len(),
                    rec.replicas.len(),
                    rec.checksum
                )));
            }
            rec.replicas.retain(|n| verified[i].contains(n));
        }
        Ok(records)
    }

    /// UploadFiles: every request planned as UploadFile would plan it, all
    /// at once, so that their plans share the metadata log's group commits.
    async fn upload_files_impl(
        &self,
        req: pb::UploadFilesRequest,
    ) -> Result<pb::UploadFilesResponse, Status> {
        check_batch_len(req.files.len())?;
        let default_chunk = self.ctx.config.chunk_size.0;
        let chunks: u64 = req
            .files
            .iter()
            .map(|f| {
                let chunk = if f.chunk_size == 0 {
                    default_chunk
                } else {
                    f.chunk_size
                };
                f.size.div_ceil(chunk.max(1))
            })
            .fold(0u64, u64::saturating_add);
        if chunks > MAX_BATCH_CHUNKS {
            return Err(Status::invalid_argument(format!(
                "the batch plans {chunks} chunks; one UploadFiles call plans at most \
                 {MAX_BATCH_CHUNKS} (use UploadFile for large files)"
            )));
        }
        let results = self
            .run_batch("UploadFile", req.files, |f| self.upload_file_impl(f))
            .await;
        Ok(pb::UploadFilesResponse {
            results: results
                .into_iter()
                .map(|r| pb::UploadFileResult {
                    result: Some(match r {
                        Ok(plan) => pb::upload_file_result::Result::Plan(plan),
                        Err(st) => pb::upload_file_result::Result::Error(call_error(&st)),
                    }),
                })
                .collect(),
        })
    }

    /// ConfirmUploads: every request confirmed as ConfirmUpload would
    /// confirm it, all at once, so that they share group commits.
    async fn confirm_uploads_impl(
        &self,
        req: pb::ConfirmUploadsRequest,
    ) -> Result<pb::ConfirmUploadsResponse, Status> {
        check_batch_len(req.uploads.len())?;
        let results = self
            .run_batch("ConfirmUpload", req.uploads, |u| self.confirm_impl(u))
            .await;
        Ok(pb::ConfirmUploadsResponse {
            results: results
                .into_iter()
                .map(|r| pb::ConfirmUploadResult {
                    result: Some(match r {
                        Ok(c) => pb::confirm_upload_result::Result::Confirmed(c),
                        Err(st) => pb::confirm_upload_result::Result::Error(call_error(&st)),
                    }),
                })
                .collect(),
        })
    }

    /// Runs every call of a batch at once, so that their commands share the
    /// metadata log's group commits, and counts each under its own method
    /// (the rate and latency of uploads read the same whether clients batch
    /// or not). Results come back in request order.
    async fn run_batch<Req, T, Fut>(
        &self,
        method: &'static str,
        calls: Vec<Req>,
        call: impl Fn(Req) -> Fut,
    ) -> Vec<Result<T, Status>>
    where
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        futures::future::join_all(calls.into_iter().map(|c| {
            let answer = call(c);
            async move {
                let r = answer.await;
                let code = match &r {
                    Ok(_) => tonic::Code::Ok,
                    Err(s) => s.code(),
                };
                self.ctx
                    .metrics
                    .batched_rpc(method, code, start.elapsed().as_secs_f64());
                r
            }
        }))
        .await
    }

    fn download_impl(
        &self,
        req: pb::DownloadFileRequest,
    ) -> Result<pb::DownloadFileResponse, Status> {
        let path = parse_path(&req.path)?;
        let now = monotonic_ms();
        let st = self.ctx.lock();
        let (info, file) = st.ns.file(&path)?;
        let mut offset = 0;
        let chunks = file
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let loc = pb::ChunkLocation {
                    index: i as u64,
                    offset,
                    chunk: Some(pb::ChunkMeta {
                        chunk_id: c.id.clone(),
                        checksum: c.checksum,
                        size: c.size,
                        checksum_algorithm: c.algorithm,
                    }),
                    replicas: st
                        .cluster
                        .read_replicas(&st.ns, &c.id, now)
                        .into_iter()
                        .map(|r| pb::NodeAddress {
                            node_id: r.node_id,
                            address: r.address,
                        })
                        .collect(),
                };
                offset += c.size;
                loc
            })
            .collect();
        Ok(pb::DownloadFileResponse {
            file: Some(file_info(&info)),
            chunks,
        })
    }

    fn list_impl(
        &self,
        req: pb::ListDirectoryRequest,
    ) -> Result<pb::ListDirectoryResponse, Status> {
        let path = parse_path(&req.path)?;
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (entries, more) = self.ctx.lock().ns.list(&path, &req.page_token, limit)?;
        let next_page_token = if more {
            entries.last().map(|e| e.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListDirectoryResponse {
            entries: entries.iter().map(file_info).collect(),
            next_page_token,
        })
    }

    fn node_status(&self, node_id: &str) -> Result<pb::DataNodeStatus, Status> {
        let st = self.ctx.lock();
        st.cluster
            .status(&st.ns, monotonic_ms())
            .iter()
            .find(|s| s.record.node_id == node_id)
            .map(status_to_proto)
            .ok_or_else(|| Status::not_found(format!("unknown datanode {node_id}")))
    }

    async fn register_impl(
        &self,
        req: pb::RegisterDataNodeRequest,
    ) -> Result<pb::RegisterDataNodeResponse, Status> {
        check_node_id(&req.node_id)?;
        if !(req.address.starts_with("http://") || req.address.starts_with("https://"))
            || req.address.len() > 256
            || req.address.parse::<tonic::codegen::http::Uri>().is_err()
        {
            return Err(Status::invalid_argument(format!(
                "invalid address {:?}: expected a gRPC URL like http://host:port (at most 256 bytes)",
                truncate(&req.address, 80)
            )));
        }
        let topology = req.topology.unwrap_or_default();
        if [&topology.zone, &topology.rack, &topology.host, &req.version]
            .iter()
            .any(|f| f.len() > 256)
        {
            return Err(Status::invalid_argument(
                "topology fields and version are at most 256 bytes each",
            ));
        }
        self.check_cluster(&req.node_id, &req.cluster_id)?;
        self.ctx
            .propose(Command::RegisterNode(NodeRecord {
                node_id: req.node_id.clone(),
                address: req.address.clone(),
                topology: TopologyRecord {
                    zone: topology.zone,
                    rack: topology.rack,
                    host: topology.host,
                },
                version: req.version,
                draining: false,
                maintenance_until_ms: 0,
            }))
            .await?;
        let cluster_id = {
            let mut st = self.ctx.lock();
            st.cluster
                .on_register(&req.node_id, req.info.into(), monotonic_ms());
            st.ns.cluster_id().to_string()
        };
        tracing::info!(node_id = %req.node_id, address = %req.address, "datanode registered");
        Ok(pb::RegisterDataNodeResponse {
            node_id: req.node_id,
            heartbeat_interval_ms: self.ctx.config.heartbeat_interval.as_millis() as u64,
            cluster_id,
        })
    }

    /// Fencing: a datanode that belongs to another cluster is refused, and
    /// nothing of it is touched. (An empty id: a datanode that never joined,
    /// or one older than cluster ids.)
    fn check_cluster(&self, node_id: &str, theirs: &str) -> Result<(), Status> {
        if theirs.is_empty() {
            return Ok(());
        }
        let st = self.ctx.lock();
        let ours = st.ns.cluster_id().to_string();
        if theirs == ours {
            return Ok(());
        }
        let files = st.ns.file_count();
        drop(st);
        self.ctx.metrics.foreign_datanodes.inc();
        let msg = format!(
            "datanode {node_id} belongs to cluster {:?}, this coordinator is cluster {ours:?} \
             ({files} files in its namespace: is its metadata empty, restored, or another \
             cluster's?); the datanode is refused and none of its chunks is deleted",
            truncate(theirs, 64)
        );
        tracing::error!(node_id, theirs = %truncate(theirs, 64), ours, "{msg}");
        Err(Status::failed_precondition(msg))
    }

    fn cluster_status(&self) -> pb::ClusterStatus {
        let now = monotonic_ms();
        let st = self.ctx.lock();
        let nodes = st.cluster.status(&st.ns, now);
        let stats = st.cluster.stats();
        let (total, used) = st.cluster.capacity(&st.ns, now);
        pb::ClusterStatus {
            cluster_id: st.ns.cluster_id().to_string(),
            nodes: nodes.iter().map(status_to_proto).collect(),
            files: st.ns.file_count(),
            directories: st.ns.dir_count(),
            chunks: st.ns.chunk_count(),
            under_replicated_chunks: stats.under_replicated,
            missing_chunks: stats.missing,
            over_replicated_chunks: stats.over_replicated,
            capacity_total_bytes: total,
            capacity_used_bytes: used,
            repair_bytes_remaining: stats.repair_bytes_remaining,
            repair_eta_seconds: stats.repair_eta_seconds,
            replication: self.ctx.config.replication,
            safe_mode: Some(safe_mode_to_proto(&st.cluster.safe_mode(&st.ns))),
            delete_budget: Some(pb::DeleteBudgetStatus {
                deferred: stats.deletes_deferred,
                exhausted_nodes: st.cluster.budget_exhausted_nodes(),
                exhausted_total: stats.budget_exhausted_total,
            }),
            corrupt_replicas: stats.corrupt_replicas,
        }
    }
}

async fn heartbeat_loop(ctx: Arc<Ctx>, mut inbound: Streaming<pb::Heartbeat>, tx: ResponseTx) {
    let mut shutdown = ctx.shutdown.clone();
    let mut node: Option<String> = None;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let mut hb = match msg {
            Ok(Some(hb)) => hb,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(node_id = ?node, "heartbeat stream ended: {e}");
                break;
            }
        };
        let start = Instant::now();
        let cluster = std::mem::take(&mut hb.cluster_id);
        let ev = match HeartbeatEvent::try_from(hb) {
            Ok(ev) => ev,
            Err(status) => {
                ctx.metrics.rpc("DataNodeHeartbeat", status.code(), 0.0);
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        let id = ev.node_id.clone();
        if let Err(status) = CoordinatorService::new(ctx.clone()).check_cluster(&id, &cluster) {
            ctx.metrics.rpc("DataNodeHeartbeat", status.code(), 0.0);
            let _ = tx.send(Err(status)).await;
            break;
        }
        let result = {
            let mut guard = ctx.lock();
            let st = &mut *guard;
            st.cluster.on_heartbeat(&st.ns, ev, monotonic_ms())
        };
        match result {
            Ok((commands, state)) => {
                // Fail-stop: nothing is ordered once the log failed.
                let commands = if ctx.committer.has_failed() {
                    Vec::new()
                } else {
                    commands
                };
                if node.as_deref() != Some(id.as_str()) {
                    ctx.streams
                        .lock()
                        .expect("streams lock poisoned")
                        .insert(id.clone(), tx.clone());
                    node = Some(id);
                }
                ctx.metrics.rpc(
                    "DataNodeHeartbeat",
                    tonic::Code::Ok,
                    start.elapsed().as_secs_f64(),
                );
                let resp = pb::HeartbeatResponse {
                    commands: commands.into_iter().map(command_to_proto).collect(),
                    state: state_to_proto(state) as i32,
                    cluster_id: ctx.lock().ns.cluster_id().to_string(),
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                let status = Status::from(e);
                ctx.metrics.rpc("DataNodeHeartbeat", status.code(), 0.0);
                let _ = tx.send(Err(status)).await;
                break;
            }
        }
    }
    if let Some(id) = node {
        let mut streams = ctx.streams.lock().expect("streams lock poisoned");
        if streams.get(&id).is_some_and(|t| t.same_channel(&tx)) {
            streams.remove(&id);
        }
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn upload_file(
        &self,
        r: Request<pb::UploadFileRequest>,
    ) -> Result<Response<pb::UploadPlan>, Status> {
        self.timed("UploadFile", self.upload_file_impl(r.into_inner()))
            .await
    }

    async fn confirm_upload(
        &self,
        r: Request<pb::ConfirmUploadRequest>,
    ) -> Result<Response<pb::ConfirmUploadResponse>, Status> {
        self.timed("ConfirmUpload", self.confirm_impl(r.into_inner()))
            .await
    }

    async fn upload_files(
        &self,
        r: Request<pb::UploadFilesRequest>,
    ) -> Result<Response<pb::UploadFilesResponse>, Status> {
        self.timed("UploadFiles", self.upload_files_impl(r.into_inner()))
            .await
    }

    async fn confirm_uploads(
        &self,
        r: Request<pb::ConfirmUploadsRequest>,
    ) -> Result<Response<pb::ConfirmUploadsResponse>, Status> {
        self.timed("ConfirmUploads", self.confirm_uploads_impl(r.into_inner()))
            .await
    }

    async fn abort_upload(
        &self,
        r: Request<pb::AbortUploadRequest>,
    ) -> Result<Response<pb::AbortUploadResponse>, Status> {
        let req = r.into_inner();
        self.timed("AbortUpload", async {
            self.ctx
                .propose(Command::AbortUpload {
                    upload_id: req.upload_id,
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
        self.timed("ReplanChunk", self.replan_impl(r.into_inner()))
            .await
    }

    async fn download_file(
        &self,
        r: Request<pb::DownloadFileRequest>,
    ) -> Result<Response<pb::DownloadFileResponse>, Status> {
        let req = r.into_inner();
        self.timed("DownloadFile", async { self.download_impl(req) })
            .await
    }

    async fn mkdir(&self, r: Request<pb::MkdirRequest>) -> Result<Response<pb::FileInfo>, Status> {
        let req = r.into_inner();
        self.timed("Mkdir", async {
            let path = parse_path(&req.path)?;
            let outcome = self
                .ctx
                .propose(Command::Mkdir {
                    path: path.to_string(),
                    parents: req.parents,
                    now_ms: now_unix_ms(),
                })
                .await?;
            Ok(file_info(&entry_of(outcome)?))
        })
        .await
    }

    async fn list_directory(
        &self,
        r: Request<pb::ListDirectoryRequest>,
    ) -> Result<Response<pb::ListDirectoryResponse>, Status> {
        let req = r.into_inner();
        self.timed("ListDirectory", async { self.list_impl(req) })
            .await
    }

    async fn stat(&self, r: Request<pb::StatRequest>) -> Result<Response<pb::FileInfo>, Status> {
        let req = r.into_inner();
        self.timed("Stat", async {
            let path = parse_path(&req.path)?;
            Ok(file_info(&self.ctx.lock().ns.stat(&path)?))
        })
        .await
    }

    async fn delete(
        &self,
        r: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = r.into_inner();
        self.timed("Delete", async {
            let path = parse_path(&req.path)?;
            match self
                .ctx
                .propose(Command::Delete {
                    path: path.to_string(),
                    recursive: req.recursive,
                })
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
        let req = r.into_inner();
        self.timed("Rename", async {
            let source = parse_path(&req.source)?;
            let destination = parse_path(&req.destination)?;
            let outcome = self
                .ctx
                .propose(Command::Rename {
                    source: source.to_string(),
                    destination: destination.to_string(),
                    now_ms: now_unix_ms(),
                })
                .await?;
            Ok(file_info(&entry_of(outcome)?))
        })
        .await
    }

    async fn register_data_node(
        &self,
        r: Request<pb::RegisterDataNodeRequest>,
    ) -> Result<Response<pb::RegisterDataNodeResponse>, Status> {
        self.timed("RegisterDataNode", self.register_impl(r.into_inner()))
            .await
    }

    type DataNodeHeartbeatStream = ReceiverStream<Result<pb::HeartbeatResponse, Status>>;

    async fn data_node_heartbeat(
        &self,
        r: Request<Streaming<pb::Heartbeat>>,
    ) -> Result<Response<Self::DataNodeHeartbeatStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(heartbeat_loop(self.ctx.clone(), r.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
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
        _: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.timed("GetClusterStatus", async { Ok(self.cluster_status()) })
            .await
    }

    async fn decommission_node(
        &self,
        r: Request<pb::DecommissionNodeRequest>,
    ) -> Result<Response<pb::DataNodeStatus>, Status> {
        let req = r.into_inner();
        self.timed("DecommissionNode", async {
            check_node_id(&req.node_id)?;
            self.ctx
                .committer
                .propose(Command::SetDraining {
                    node_id: req.node_id.clone(),
                    draining: !req.cancel,
                })
                .await
                .map_err(|e| match e {
                    ProposeError::Rejected(NamespaceError::UnknownNode { node_id }) => {
                        Status::not_found(format!("unknown datanode {node_id}"))
                    }
                    e => e.into(),
                })?;
            tracing::info!(node_id = %req.node_id, cancel = req.cancel, "decommission");
            self.node_status(&req.node_id)
        })
        .await
    }

    async fn set_node_maintenance(
        &self,
        r: Request<pb::SetNodeMaintenanceRequest>,
    ) -> Result<Response<pb::DataNodeStatus>, Status> {
        let req = r.into_inner();
        self.timed("SetNodeMaintenance", async {
            check_node_id(&req.node_id)?;
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
                    node_id: req.node_id.clone(),
                    until_ms,
                })
                .await
                .map_err(|e| match e {
                    ProposeError::Rejected(NamespaceError::UnknownNode { node_id }) => {
                        Status::not_found(format!("unknown datanode {node_id}"))
                    }
                    e => e.into(),
                })?;
            tracing::info!(node_id = %req.node_id, enabled = req.enabled, ?duration, "maintenance");
            self.node_status(&req.node_id)
        })
        .await
    }

    async fn set_safe_mode(
        &self,
        r: Request<pb::SetSafeModeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let req = r.into_inner();
        self.timed("SetSafeMode", async {
            self.ctx.lock().cluster.set_safe_mode(req.enabled);
            Ok(self.cluster_status())
        })
        .await
    }
}
