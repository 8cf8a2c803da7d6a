//! Wire ↔ domain conversions of the coordinator's gRPC edge, and every
//! domain error's `Status`: the one place either happens.

use super::*;

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

pub use dfs_proto::LEADER_METADATA;

/// UNAVAILABLE for `reason`, naming the group's leader (when known) in
/// [`LEADER_METADATA`], where the caller retries.
pub fn unavailable_at(reason: &str, leader: Option<&str>) -> Status {
    let mut status = Status::unavailable(reason.to_string());
    if let Some(l) = leader
        && let Ok(v) = l.parse()
    {
        status.metadata_mut().insert(LEADER_METADATA, v);
    }
    status
}

/// The caller's id of one logical write ([`dfs_proto::REQUEST_ID_METADATA`]),
/// validated: INVALID_ARGUMENT when malformed, `None` when absent.
pub fn request_id(metadata: &tonic::metadata::MetadataMap) -> Result<Option<String>, Status> {
    let Some(v) = metadata.get(dfs_proto::REQUEST_ID_METADATA) else {
        return Ok(None);
    };
    let id = v.to_str().unwrap_or_default();
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Status::invalid_argument(format!(
            "{} must be 1 to 64 characters of [A-Za-z0-9_-]",
            dfs_proto::REQUEST_ID_METADATA
        )));
    }
    Ok(Some(id.to_string()))
}

impl From<ProposeError> for Status {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Rejected(e) => e.into(),
            ProposeError::Store(StoreError::Unavailable) => {
                Status::unavailable("metadata store is unavailable")
            }
            ProposeError::Store(e) => Status::internal(e.to_string()),
            // UNAVAILABLE: retry, at the leader the metadata names.
            ProposeError::NotLeader { ref leader } => {
                unavailable_at(&e.to_string(), leader.as_deref())
            }
            ProposeError::Replication(_) => Status::unavailable(e.to_string()),
        }
    }
}

impl From<PlanError> for Status {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Namespace(e) => Status::from(e),
            PlanError::TooManyUploads => Status::resource_exhausted(e.to_string()),
            PlanError::TooFewNodes { .. } => Status::failed_precondition(e.to_string()),
            PlanError::ReplicationTooHigh(_)
            | PlanError::ChunkSize(_)
            | PlanError::TooManyChunks { .. } => Status::invalid_argument(e.to_string()),
        }
    }
}

impl From<ConfirmError> for Status {
    fn from(e: ConfirmError) -> Self {
        Status::failed_precondition(e.to_string())
    }
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::UnknownNode { .. } => Status::not_found(e.to_string()),
        }
    }
}

pub(super) fn parse_path(raw: &str) -> Result<NsPath, Status> {
    Ok(NsPath::parse(raw)?)
}

/// Refuses a batch above [`MAX_BATCH_CALLS`].
pub(super) fn check_batch_len(n: usize) -> Result<(), Status> {
    if n > MAX_BATCH_CALLS {
        return Err(Status::invalid_argument(format!(
            "the batch holds {n} calls; the most one batch may hold is {MAX_BATCH_CALLS}"
        )));
    }
    Ok(())
}

/// The wire form of one batched call's failure.
pub(super) fn call_error(status: &Status) -> pb::CallError {
    pb::CallError {
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}

/// A wire id parsed under its rule (`dfs_common::id`), INVALID_ARGUMENT
/// otherwise: the one way a raw id string enters the coordinator.
pub(super) fn parse_id<T>(raw: String) -> Result<T, Status>
where
    T: TryFrom<String, Error = dfs_common::id::InvalidId>,
{
    Ok(T::try_from(raw)?)
}

/// The cluster id as the wire carries it ("" only before the first start
/// has initialised it).
pub(super) fn cluster_id_wire(ns: &Namespace) -> String {
    ns.cluster_id().map(ToString::to_string).unwrap_or_default()
}

/// A list of wire ids, each under its rule.
pub(super) fn parse_ids<T>(raw: Vec<String>) -> Result<Vec<T>, Status>
where
    T: TryFrom<String, Error = dfs_common::id::InvalidId>,
{
    raw.into_iter().map(parse_id).collect()
}

pub(super) fn file_info(e: &EntryInfo) -> pb::FileInfo {
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

pub(super) fn entry_of(outcome: Outcome) -> Result<EntryInfo, Status> {
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

pub(super) fn info_to_proto(i: &NodeInfo) -> pb::NodeInfo {
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

pub(super) fn state_to_proto(s: NodeState) -> pb::NodeState {
    s.to_wire()
}

pub(super) fn status_to_proto(s: &NodeStatus) -> pb::DataNodeStatus {
    pb::DataNodeStatus {
        node_id: s.record.node_id.to_string(),
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

pub(super) fn safe_mode_to_proto(s: &SafeModeStatus) -> pb::SafeModeStatus {
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

/// A command for the wire; `replicate_token` signs a repair's token (chunk
/// id, target node id).
pub(super) fn command_to_proto(
    c: NodeCommand,
    replicate_token: &dyn Fn(&str, &str) -> Option<pb::ChunkToken>,
) -> pb::DataNodeCommand {
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
                    token: replicate_token(chunk.id.as_str(), target_id.as_str()),
                    chunk: Some(pb::ChunkMeta {
                        chunk_id: chunk.id.into_string(),
                        checksum: chunk.checksum,
                        size: chunk.size,
                        checksum_algorithm: chunk.algorithm,
                    }),
                    target: Some(pb::NodeAddress {
                        node_id: target_id.into_string(),
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
                    chunk_ids: chunk_ids.into_iter().map(String::from).collect(),
                    quarantined_only,
                },
            )),
        },
    }
}

/// A ConfirmUpload request parsed: chunks in index order, every id under
/// its rule, bounded counts.
pub(super) struct ConfirmRequest {
    pub upload_id: UploadId,
    pub records: Vec<ChunkRecord>,
    pub receipts: Vec<confirm::Receipts>,
    /// Per chunk: planned replicas still writing at the upload's answer.
    pub pending: Vec<Vec<NodeId>>,
    /// Receipts dropped because their tag did not verify.
    pub refused_receipts: usize,
}

impl ConfirmRequest {
    /// Parses a ConfirmUpload request. With a key `ring` (mutual TLS) a
    /// receipt counts only when its replica signed it: one a client or a
    /// primary made up is dropped (and counted), and that replica then
    /// counts only by its own chunk report. Tags are checked after the
    /// bounds, so an oversize request costs no HMAC.
    pub fn parse(
        req: pb::ConfirmUploadRequest,
        ring: Option<&dfs_common::token::KeyRing>,
    ) -> Result<Self, Status> {
        let mut refused_receipts = 0;
        let upload_id = parse_id(req.upload_id)?;
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
        let mut pending = Vec::with_capacity(chunks.len());
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
            if c.replicas.len() > MAX_CONFIRMED_REPLICAS
                || c.receipts.len() > MAX_CONFIRMED_REPLICAS
                || c.pending.len() > MAX_CONFIRMED_REPLICAS
            {
                return Err(Status::invalid_argument(format!(
                    "chunk {i} names {} replicas, {} receipts and {} pending replicas; at most {MAX_CONFIRMED_REPLICAS} each",
                    c.replicas.len(),
                    c.receipts.len(),
                    c.pending.len()
                )));
            }
            pending.push(parse_ids(c.pending)?);
            receipts.push(
                c.receipts
                    .into_iter()
                    .filter(|r| {
                        let ok = ring.is_none_or(|ring| ring.verify_receipt(&meta.chunk_id, r));
                        if !ok {
                            refused_receipts += 1;
                            tracing::warn!(chunk_id = %meta.chunk_id, node_id = %r.node_id, "receipt refused: its tag does not verify");
                        }
                        ok
                    })
                    .map(|r| Ok((parse_id(r.node_id)?, (r.checksum, r.size))))
                    .collect::<Result<confirm::Receipts, Status>>()?,
            );
            records.push(ChunkRecord {
                id: parse_id(meta.chunk_id)?,
                checksum: meta.checksum,
                size: meta.size,
                algorithm: meta.checksum_algorithm,
                replicas: parse_ids(c.replicas)?,
            });
        }
        Ok(ConfirmRequest {
            upload_id,
            records,
            receipts,
            pending,
            refused_receipts,
        })
    }
}

impl TryFrom<pb::Heartbeat> for HeartbeatEvent {
    type Error = Status;

    fn try_from(h: pb::Heartbeat) -> Result<Self, Status> {
        let node_id = parse_id(h.node_id)?;
        let reported = h.chunk_report.as_ref().map_or(0, |r| r.chunks.len())
            + h.added_chunks.len()
            + h.removed_chunks.len()
            + h.corrupt_chunks.len()
            + h.abandoned_replicas.len();
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
        let ids = |metas: Vec<pb::ChunkMeta>| -> Result<Vec<(ChunkId, u32)>, Status> {
            metas
                .into_iter()
                .map(|m| Ok((parse_id(m.chunk_id)?, m.checksum)))
                .collect()
        };
        Ok(HeartbeatEvent {
            node_id,
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
            removed: parse_ids(h.removed_chunks)?,
            corrupt: parse_ids(h.corrupt_chunks)?,
            abandoned: h
                .abandoned_replicas
                .into_iter()
                .map(|a| Ok((parse_id(a.chunk_id)?, parse_id(a.node_id)?)))
                .collect::<Result<_, Status>>()?,
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
