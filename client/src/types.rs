//! What the client library returns: plain domain types, converted from the
//! wire once, here, so callers never handle prost messages, `Option`s of
//! nested messages or enum integers. Ids are the typed ids of
//! [`dfs_common::id`]; an answer with an id that breaks its rule is refused
//! as [`ClientError::Protocol`](crate::ClientError::Protocol) rather than
//! passed on.

use dfs_common::id::{ChunkId, ClusterId, NodeId, NodeState};
use dfs_proto as pb;

use crate::error::ClientError;

/// Whether a namespace entry is a file or a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
}

impl FileKind {
    /// `file` or `directory`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Directory => "directory",
        }
    }
}

/// One namespace entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Absolute path, e.g. `/reports/2026.csv`.
    pub path: String,
    /// Last path component.
    pub name: String,
    /// File or directory.
    pub kind: FileKind,
    /// Bytes (0 for a directory).
    pub size: u64,
    /// Replication factor of the file's chunks.
    pub replication: u32,
    /// Chunk size the file was written with.
    pub chunk_size: u64,
    /// Chunks of the file.
    pub chunk_count: u64,
    /// Creation time, Unix milliseconds.
    pub created_unix_ms: u64,
    /// Last modification, Unix milliseconds.
    pub modified_unix_ms: u64,
    /// Bumped on every change of the entry.
    pub version: u64,
}

impl FileInfo {
    /// True for a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }
}

impl TryFrom<pb::FileInfo> for FileInfo {
    type Error = ClientError;
    fn try_from(f: pb::FileInfo) -> Result<Self, ClientError> {
        let kind = match pb::FileType::try_from(f.file_type) {
            Ok(pb::FileType::File) => FileKind::File,
            Ok(pb::FileType::Directory) => FileKind::Directory,
            _ => {
                return Err(ClientError::Protocol(format!(
                    "{}: unknown file type {}",
                    f.path, f.file_type
                )));
            }
        };
        Ok(FileInfo {
            path: f.path,
            name: f.name,
            kind,
            size: f.size,
            replication: f.replication,
            chunk_size: f.chunk_size,
            chunk_count: f.chunk_count,
            created_unix_ms: f.created_unix_ms,
            modified_unix_ms: f.modified_unix_ms,
            version: f.version,
        })
    }
}

/// A datanode holding a replica, and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The datanode's id.
    pub node_id: NodeId,
    /// Its gRPC endpoint, e.g. `http://10.0.0.7:7101`.
    pub address: String,
}

/// One chunk of a file: where it sits in the file, its checksum and its
/// replicas (healthiest first).
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkLocation {
    /// Position in the file (0-based).
    pub index: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// The chunk's id.
    pub chunk_id: ChunkId,
    /// Bytes.
    pub size: u64,
    /// CRC32C of the whole chunk.
    pub checksum: u32,
    /// Where its replicas are.
    pub replicas: Vec<Replica>,
    /// The read capability the coordinator issued with the map (with
    /// mutual TLS): every replica's datanode checks it.
    pub token: Option<pb::ChunkToken>,
}

/// A file and every one of its chunks.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkMap {
    /// The file.
    pub file: FileInfo,
    /// Its chunks in file order.
    pub chunks: Vec<ChunkLocation>,
}

impl TryFrom<pb::DownloadFileResponse> for ChunkMap {
    type Error = ClientError;
    fn try_from(r: pb::DownloadFileResponse) -> Result<Self, ClientError> {
        let file: FileInfo = r
            .file
            .ok_or_else(|| ClientError::Protocol("chunk map without a file".into()))?
            .try_into()?;
        let chunks = r
            .chunks
            .into_iter()
            .map(|c| {
                let meta = c.chunk.unwrap_or_default();
                Ok(ChunkLocation {
                    index: c.index,
                    offset: c.offset,
                    chunk_id: ChunkId::try_from(meta.chunk_id).map_err(protocol)?,
                    size: meta.size,
                    checksum: meta.checksum,
                    replicas: c
                        .replicas
                        .into_iter()
                        .map(|r| {
                            Ok(Replica {
                                node_id: NodeId::try_from(r.node_id).map_err(protocol)?,
                                address: r.address,
                            })
                        })
                        .collect::<Result<_, ClientError>>()?,
                    token: c.token,
                })
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(ChunkMap { file, chunks })
    }
}

/// How a datanode describes itself in its heartbeats (the coordinator's
/// [`NodeState`] is its own judgement on top of this).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportedHealth {
    /// Serving and accepting chunks.
    Healthy,
    /// No room for new chunks.
    Full,
    /// Serving, with a problem (a failed disk check, say).
    Degraded,
    /// Shutting down or being drained.
    Draining,
}

impl ReportedHealth {
    fn from_wire(value: i32) -> Option<Self> {
        match pb::NodeHealth::try_from(value).ok()? {
            pb::NodeHealth::Healthy => Some(ReportedHealth::Healthy),
            pb::NodeHealth::Full => Some(ReportedHealth::Full),
            pb::NodeHealth::Degraded => Some(ReportedHealth::Degraded),
            pb::NodeHealth::Draining => Some(ReportedHealth::Draining),
            pb::NodeHealth::Unspecified => None,
        }
    }
}

/// One datanode as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The datanode's id.
    pub node_id: NodeId,
    /// Its gRPC endpoint.
    pub address: String,
    /// Its state; `None` when the coordinator sent a state this build does
    /// not know.
    pub state: Option<NodeState>,
    /// What the datanode said of itself in its last heartbeat (`None`:
    /// nothing yet, or a value this build does not know).
    pub reported_health: Option<ReportedHealth>,
    /// Failure domain: zone.
    pub zone: String,
    /// Failure domain: rack.
    pub rack: String,
    /// Host (the Kubernetes node name in a cluster).
    pub host: String,
    /// Usable bytes in all.
    pub total_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes still free for new chunks.
    pub free_bytes: u64,
    /// Chunk replicas the coordinator places on it.
    pub chunk_count: u64,
    /// Corrupt copies it keeps aside in quarantine.
    pub quarantined_chunks: u64,
    /// Chunks it could not read when it started.
    pub unavailable_chunks: u64,
    /// Last heartbeat, Unix milliseconds.
    pub last_heartbeat_unix_ms: u64,
    /// Every chunk it holds has enough replicas elsewhere.
    pub safe_to_remove: bool,
    /// End of its maintenance window (0: none), Unix milliseconds.
    pub maintenance_until_unix_ms: u64,
}

impl TryFrom<pb::DataNodeStatus> for NodeStatus {
    type Error = ClientError;
    fn try_from(n: pb::DataNodeStatus) -> Result<Self, ClientError> {
        let info = n.info.unwrap_or_default();
        let topology = n.topology.unwrap_or_default();
        Ok(NodeStatus {
            node_id: NodeId::try_from(n.node_id).map_err(protocol)?,
            address: n.address,
            state: NodeState::from_wire(n.state),
            reported_health: ReportedHealth::from_wire(info.health),
            zone: topology.zone,
            rack: topology.rack,
            host: topology.host,
            total_bytes: info.total_bytes,
            used_bytes: info.used_bytes,
            free_bytes: info.free_bytes,
            chunk_count: n.chunk_count,
            quarantined_chunks: info.quarantined_chunks,
            unavailable_chunks: info.unavailable_chunks,
            last_heartbeat_unix_ms: n.last_heartbeat_unix_ms,
            safe_to_remove: n.safe_to_remove,
            maintenance_until_unix_ms: n.maintenance_until_unix_ms,
        })
    }
}

/// Safe mode: while active the coordinator deletes and repairs nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SafeMode {
    /// On.
    pub active: bool,
    /// Why it is on (empty when off).
    pub reason: String,
    /// Datanodes that sent a full report since the coordinator started.
    pub reported_nodes: u32,
    /// Datanodes it knows (not draining).
    pub known_nodes: u32,
    /// Replicas those reports listed.
    pub reported_replicas: u64,
    /// Of them, replicas of chunks in the namespace.
    pub known_replicas: u64,
    /// Entered by hand (stays until left by hand).
    pub manual: bool,
}

/// The delete budget: how many deletes wait for the next window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteBudget {
    /// Deletes waiting.
    pub deferred: u64,
    /// Datanodes whose budget of this window is spent.
    pub exhausted_nodes: Vec<String>,
    /// Windows in which some node's budget ran out, since start.
    pub exhausted_total: u64,
}

/// The cluster's health summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The cluster's id.
    pub cluster_id: ClusterId,
    /// Every known datanode.
    pub nodes: Vec<NodeStatus>,
    /// Files in the namespace.
    pub files: u64,
    /// Directories in the namespace.
    pub directories: u64,
    /// Chunks in the namespace.
    pub chunks: u64,
    /// Chunks with fewer live replicas than their factor.
    pub under_replicated_chunks: u64,
    /// Chunks with no live replica.
    pub missing_chunks: u64,
    /// Chunks with more replicas than their factor.
    pub over_replicated_chunks: u64,
    /// Usable bytes of every datanode.
    pub capacity_total_bytes: u64,
    /// Used bytes of every datanode.
    pub capacity_used_bytes: u64,
    /// Bytes left to copy to restore full redundancy.
    pub repair_bytes_remaining: u64,
    /// Estimated seconds until then (0 when unknown or done).
    pub repair_eta_seconds: u64,
    /// Default replication factor.
    pub replication: u32,
    /// Safe mode.
    pub safe_mode: SafeMode,
    /// The delete budget.
    pub delete_budget: DeleteBudget,
    /// Replicas whose bytes differ from what was recorded.
    pub corrupt_replicas: u64,
    /// The coordinator group as the answering coordinator sees it (empty
    /// for a single coordinator).
    pub coordinators: Vec<CoordinatorMember>,
}

/// One member of the coordinator group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorMember {
    /// Raft id.
    pub id: u64,
    /// Its gRPC URL.
    pub address: String,
    /// "leader", "follower", "candidate", "learner" or "unknown".
    pub role: String,
    /// Raft term.
    pub term: u64,
    /// Last index in its log (as the answering member knows it).
    pub last_log_index: u64,
    /// Last index it applied (known for the answering member only).
    pub applied_index: u64,
    /// Entries behind the leader's log (known by the leader).
    pub lag: u64,
    /// Whether this member answered.
    pub answering: bool,
    /// Whether it votes (false for a learner).
    pub voter: bool,
    /// The incarnation (identity of its volume) the group pinned; 0 when
    /// not pinned.
    pub incarnation: u64,
    /// The incarnation it last answered the leader with (0: no answer). A
    /// value other than `incarnation` means it came back on an empty
    /// volume and must be removed and added again.
    pub reported_incarnation: u64,
}

impl CoordinatorMember {
    /// True when the member answers from a volume other than the one the
    /// group pinned: it lost its state and is refused until re-added.
    pub fn on_new_volume(&self) -> bool {
        self.incarnation != 0
            && self.reported_incarnation != 0
            && self.reported_incarnation != self.incarnation
    }
}

impl ClusterStatus {
    /// Datanodes in `state`.
    pub fn count(&self, state: NodeState) -> usize {
        self.nodes.iter().filter(|n| n.state == Some(state)).count()
    }

    /// The datanode with id `node_id`.
    pub fn node(&self, node_id: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.node_id == node_id)
    }
}

impl TryFrom<pb::ClusterStatus> for ClusterStatus {
    type Error = ClientError;
    fn try_from(s: pb::ClusterStatus) -> Result<Self, ClientError> {
        let safe = s.safe_mode.unwrap_or_default();
        let budget = s.delete_budget.unwrap_or_default();
        Ok(ClusterStatus {
            cluster_id: ClusterId::try_from(s.cluster_id).map_err(protocol)?,
            nodes: s
                .nodes
                .into_iter()
                .map(NodeStatus::try_from)
                .collect::<Result<_, _>>()?,
            files: s.files,
            directories: s.directories,
            chunks: s.chunks,
            under_replicated_chunks: s.under_replicated_chunks,
            missing_chunks: s.missing_chunks,
            over_replicated_chunks: s.over_replicated_chunks,
            capacity_total_bytes: s.capacity_total_bytes,
            capacity_used_bytes: s.capacity_used_bytes,
            repair_bytes_remaining: s.repair_bytes_remaining,
            repair_eta_seconds: s.repair_eta_seconds,
            replication: s.replication,
            safe_mode: SafeMode {
                active: safe.active,
                reason: safe.reason,
                reported_nodes: safe.reported_nodes,
                known_nodes: safe.known_nodes,
                reported_replicas: safe.reported_replicas,
                known_replicas: safe.known_replicas,
                manual: safe.manual,
            },
            delete_budget: DeleteBudget {
                deferred: budget.deferred,
                exhausted_nodes: budget.exhausted_nodes,
                exhausted_total: budget.exhausted_total,
            },
            corrupt_replicas: s.corrupt_replicas,
            coordinators: s
                .coordinators
                .into_iter()
                .map(|c| CoordinatorMember {
                    id: c.id,
                    address: c.address,
                    role: c.role,
                    term: c.term,
                    last_log_index: c.last_log_index,
                    applied_index: c.applied_index,
                    lag: c.lag,
                    answering: c.answering,
                    voter: c.voter,
                    incarnation: c.incarnation,
                    reported_incarnation: c.reported_incarnation,
                })
                .collect(),
        })
    }
}

/// What a delete removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteSummary {
    /// Files removed.
    pub files_deleted: u64,
    /// Chunks no file refers to any more (their replicas are freed).
    pub chunks_released: u64,
}

impl From<pb::DeleteResponse> for DeleteSummary {
    fn from(r: pb::DeleteResponse) -> Self {
        DeleteSummary {
            files_deleted: r.files_deleted,
            chunks_released: r.chunks_released,
        }
    }
}

fn protocol(e: dfs_common::id::InvalidId) -> ClientError {
    ClientError::Protocol(format!("the coordinator sent an {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_chunk_map_converts_with_typed_ids() {
        let map = ChunkMap::try_from(pb::DownloadFileResponse {
            file: Some(pb::FileInfo {
                path: "/a".into(),
                file_type: pb::FileType::File as i32,
                size: 5,
                ..Default::default()
            }),
            chunks: vec![pb::ChunkLocation {
                index: 0,
                offset: 0,
                chunk: Some(pb::ChunkMeta {
                    chunk_id: HEX.into(),
                    size: 5,
                    checksum: 7,
                    ..Default::default()
                }),
                replicas: vec![pb::NodeAddress {
                    node_id: "dn-1".into(),
                    address: "http://127.0.0.1:1".into(),
                }],
                token: Default::default(),
            }],
        })
        .unwrap();
        assert!(map.file.is_file());
        assert_eq!(map.chunks[0].chunk_id.as_str(), HEX);
        assert_eq!(map.chunks[0].replicas[0].node_id, "dn-1");
    }

    #[test]
    fn a_bad_id_from_the_coordinator_is_a_protocol_error() {
        let err = ChunkMap::try_from(pb::DownloadFileResponse {
            file: Some(pb::FileInfo {
                file_type: pb::FileType::File as i32,
                ..Default::default()
            }),
            chunks: vec![pb::ChunkLocation {
                chunk: Some(pb::ChunkMeta {
                    chunk_id: "../../etc/passwd".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        })
        .unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
        let err = FileInfo::try_from(pb::FileInfo::default()).unwrap_err();
        assert!(err.to_string().contains("unknown file type"), "{err}");
    }

    #[test]
    fn node_states_and_unknown_states_convert() {
        let status = ClusterStatus::try_from(pb::ClusterStatus {
            cluster_id: HEX.into(),
            nodes: vec![
                pb::DataNodeStatus {
                    node_id: "a".into(),
                    state: pb::NodeState::Full as i32,
                    topology: Some(pb::Topology {
                        host: "node-a".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                pb::DataNodeStatus {
                    node_id: "b".into(),
                    state: 99,
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(status.count(NodeState::Full), 1);
        assert_eq!(status.node("a").unwrap().host, "node-a");
        assert_eq!(status.node("b").unwrap().state, None);
    }
}
