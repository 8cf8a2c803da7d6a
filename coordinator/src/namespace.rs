//! The metadata state machine (pure: no I/O, no clock, no randomness).
//!
//! Every mutation of durable metadata is a serialisable [`Command`] carrying
//! everything it needs (ids, timestamps), applied by [`Namespace::apply`].
//! Applying the same commands in the same order always yields the same state,
//! which is what lets [`crate::store`] rebuild the state from a snapshot plus
//! its operations log, and what a Raft log (openraft) would replicate next.
//! A command that fails validation changes nothing.
//!
//! ```text
//!   RPC ──▶ Command ──▶ store (log, group commit) ──▶ Namespace::apply ──▶ Outcome
//! ```

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::path::{NsPath, PathError};

mod restore;
pub use restore::RestoreSeed;

pub use dfs_common::id::{ChunkId, ClusterId, NodeId, UploadId};

/// A chunk of a confirmed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Chunk id.
    pub id: ChunkId,
    /// Whole-chunk checksum.
    pub checksum: u32,
    /// Size in bytes.
    pub size: u64,
    /// Checksum algorithm (wire enum value).
    pub algorithm: i32,
    /// Replicas reported at confirm time (seed of the live replica map).
    pub replicas: Vec<NodeId>,
}

/// A confirmed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Size in bytes.
    pub size: u64,
    /// Replication factor.
    pub replication: u32,
    /// Chunk size it was written with.
    pub chunk_size: u64,
    /// Chunks in order.
    pub chunks: Vec<ChunkRecord>,
    /// Creation time (ms).
    pub created_ms: u64,
    /// Modification time (ms).
    pub modified_ms: u64,
    /// Bumped by every overwrite.
    pub version: u64,
}

/// Directory attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirRecord {
    /// Creation time (ms).
    pub created_ms: u64,
    /// Modification time (ms).
    pub modified_ms: u64,
}

/// A name's entry, boxed: a directory's map holds a slot per child, most
/// of them empty at any moment (B-tree nodes run about half full), so a slot
/// is kept to a pointer and the record lives once on the heap.
#[derive(Debug, Clone)]
enum Entry {
    File(Box<FileRecord>),
    Dir(Box<Dir>),
}

#[derive(Debug, Clone, Default)]
struct Dir {
    meta: DirRecord,
    /// Children by name (boxed text: no spare capacity per name).
    children: BTreeMap<Box<str>, Entry>,
}

/// One chunk of an open upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChunkRecord {
    /// Position in the file.
    pub index: u64,
    /// Id it must be written under.
    pub chunk_id: ChunkId,
    /// Offset in the file.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Target nodes, primary first.
    pub nodes: Vec<NodeId>,
}

/// An open (planned, not yet confirmed) upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// Upload id.
    pub upload_id: UploadId,
    /// Normalised destination path.
    pub path: String,
    /// File size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u64,
    /// Replication factor.
    pub replication: u32,
    /// Minimum replicas per chunk at confirm.
    pub write_quorum: u32,
    /// Whether an existing file may be replaced.
    pub overwrite: bool,
    /// Planned chunks in order.
    pub chunks: Vec<PlannedChunkRecord>,
    /// Expiry (ms).
    pub expires_at_ms: u64,
}

/// Topology labels of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyRecord {
    /// Zone.
    pub zone: String,
    /// Rack.
    pub rack: String,
    /// Host.
    pub host: String,
}

/// A registered datanode (durable part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Stable id.
    pub node_id: NodeId,
    /// gRPC address.
    pub address: String,
    /// Topology.
    pub topology: TopologyRecord,
    /// Software version.
    pub version: String,
    /// Being decommissioned.
    pub draining: bool,
    /// End of a planned maintenance (Unix ms; 0 or past = none). Durable so
    /// that a coordinator restarting during a datanode's planned restart
    /// does not start repairing its replicas. Absent in older records.
    #[serde(default)]
    pub maintenance_until_ms: u64,
}

/// Every mutation of the durable metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster id (first start only).
    InitCluster { cluster_id: ClusterId },
    /// Creates a directory.
    Mkdir {
        path: String,
        parents: bool,
        now_ms: u64,
    },
    /// Opens an upload.
    BeginUpload(Upload),
    /// Replaces one planned chunk of an open upload.
    ReplanChunk {
        upload_id: UploadId,
        index: u64,
        chunk_id: ChunkId,
        nodes: Vec<NodeId>,
    },
    /// Commits an upload (chunks in index order).
    ConfirmUpload {
        upload_id: UploadId,
        chunks: Vec<ChunkRecord>,
        now_ms: u64,
    },
    /// Abandons an upload.
    AbortUpload { upload_id: UploadId },
    /// Drops every upload that expired before `now_ms`.
    ExpireUploads { now_ms: u64 },
    /// Deletes a path.
    Delete { path: String, recursive: bool },
    /// Renames a path.
    Rename {
        source: String,
        destination: String,
        now_ms: u64,
    },
    /// Admits or updates a datanode (keeps its draining flag).
    RegisterNode(NodeRecord),
    /// Starts or cancels draining a datanode.
    SetDraining { node_id: NodeId, draining: bool },
    /// Puts a datanode into maintenance until `until_ms` (0 ends it).
    SetMaintenance { node_id: NodeId, until_ms: u64 },
    /// Applies `command` at most once per `request_id`: a second `Once`
    /// with the same id (a retry whose first answer was lost, for example
    /// across a leader change) changes nothing and returns the first
    /// success's outcome. Remembered for [`ONCE_WINDOW_MS`] after `now_ms`
    /// and for the last [`MAX_ONCE`] ids; a failed command is not
    /// remembered (it changed nothing, so a retry is evaluated again).
    Once {
        request_id: String,
        now_ms: u64,
        command: Box<Command>,
    },
}

/// How long a [`Command::Once`] id is remembered, by the clock of the
/// leaders that proposed them.
pub const ONCE_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Most [`Command::Once`] ids remembered at a time (oldest forgotten first).
pub const MAX_ONCE: usize = 200_000;

impl Command {
    /// The command that takes effect: the one a [`Command::Once`] wraps.
    pub fn effective(&self) -> &Command {
        match self {
            Command::Once { command, .. } => command.effective(),
            c => c,
        }
    }
}

/// The outcomes of applied [`Command::Once`] ids, oldest first.
#[derive(Debug, Clone, Default)]
struct OnceTable {
    order: std::collections::VecDeque<(String, u64)>,
    outcomes: HashMap<String, Outcome>,
}

impl OnceTable {
    fn record(&mut self, request_id: &str, now_ms: u64, outcome: Outcome) {
        while let Some((old, at)) = self.order.front() {
            if self.order.len() < MAX_ONCE && at.saturating_add(ONCE_WINDOW_MS) >= now_ms {
                break;
            }
            self.outcomes.remove(old);
            self.order.pop_front();
        }
        self.order.push_back((request_id.to_string(), now_ms));
        self.outcomes.insert(request_id.to_string(), outcome);
    }
}

/// One remembered [`Command::Once`] in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnceRecord {
    /// The request id.
    pub request_id: String,
    /// When it was applied (the proposing leader's clock).
    pub at_ms: u64,
    /// What it returned.
    pub outcome: Outcome,
}

/// What a successful command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Nothing to report.
    Done,
    /// The entry created or changed.
    Entry(EntryInfo),
    /// Result of a delete.
    Deleted { files: u64, chunks_released: u64 },
    /// Uploads dropped by expiry.
    Expired { uploads: u64 },
}

/// Description of one namespace entry (domain form of `FileInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Normalised path.
    pub path: String,
    /// Last component.
    pub name: String,
    /// Directory or file.
    pub is_dir: bool,
    /// Size (0 for directories).
    pub size: u64,
    /// Replication factor.
    pub replication: u32,
    /// Chunk size.
    pub chunk_size: u64,
    /// Number of chunks.
    pub chunk_count: u64,
    /// Creation time (ms).
    pub created_ms: u64,
    /// Modification time (ms).
    pub modified_ms: u64,
    /// Version.
    pub version: u64,
}

/// A chunk id as its 128 bits: the chunk index's key. Half the bytes of the
/// id's text, in a table with a slot per chunk of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey([u8; 16]);

impl ChunkKey {
    /// The key of `id` (a valid chunk id is 32 hex characters: 128 bits).
    pub fn of(id: &ChunkId) -> ChunkKey {
        let n = u128::from_str_radix(id.as_str(), 16).expect("a chunk id is 32 hex characters");
        ChunkKey(n.to_be_bytes())
    }

    /// The chunk id this is the key of.
    pub fn id(self) -> ChunkId {
        ChunkId::from_u128(u128::from_be_bytes(self.0))
    }
}

/// Who references a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOwner {
    /// A confirmed file; `replication` is its factor.
    File {
        size: u64,
        replication: u32,
        checksum: u32,
        algorithm: i32,
    },
    /// An open upload.
    Upload,
}

/// Why a command or query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NamespaceError {
    /// Bad path.
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    /// The path does not exist.
    #[error("no such file or directory: {path}")]
    NotFound { path: String },
    /// A parent directory is missing.
    #[error("parent directory of {path} does not exist")]
    ParentNotFound { path: String },
    /// The path exists.
    #[error("{path} already exists")]
    AlreadyExists { path: String },
    /// A path component is a file.
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    /// A file was expected.
    #[error("{path} is a directory")]
    IsADirectory { path: String },
    /// Non-recursive delete of a non-empty directory.
    #[error("directory {path} is not empty (use recursive)")]
    DirectoryNotEmpty { path: String },
    /// The root cannot be deleted or renamed.
    #[error("the root directory cannot be deleted or renamed")]
    Root,
    /// Moving a directory below itself.
    #[error("cannot move {source_path} into itself ({destination})")]
    IntoItself {
        source_path: String,
        destination: String,
    },
    /// Unknown upload id.
    #[error("no open upload with id {upload_id} (unknown, confirmed, aborted or expired)")]
    UploadNotFound { upload_id: UploadId },
    /// The confirm request does not match the plan.
    #[error("confirm does not match the plan of upload {upload_id}: {reason}")]
    PlanMismatch { upload_id: UploadId, reason: String },
    /// Too few replicas.
    #[error("chunk {index} has {replicas} replicas, the write quorum is {quorum}")]
    QuorumNotMet {
        index: u64,
        replicas: usize,
        quorum: u32,
    },
    /// A replica names a node that is not registered.
    #[error("unknown datanode {node_id}")]
    UnknownNode { node_id: NodeId },
}

/// The durable metadata: namespace tree, open uploads, datanode registry.
#[derive(Debug, Clone, Default)]
pub struct Namespace {
    cluster_id: Option<ClusterId>,
    root: Dir,
    uploads: BTreeMap<UploadId, Upload>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    chunk_index: HashMap<ChunkKey, ChunkOwner>,
    files: u64,
    dirs: u64,
    chunks: u64,
    once: OnceTable,
    /// Chunks this namespace let go of lately (deleted, overwritten,
    /// re-planned, aborted): their replicas on the datanodes are orphans
    /// the coordinator deletes under its budget, not a sign of other
    /// metadata. In memory only (not in snapshots): a leader that takes
    /// over after churn uses it to tell those orphans from foreign chunks
    /// in its safe-mode check.
    released: Released,
}

/// The most recently released chunk ids, at most [`Released::CAP`].
#[derive(Debug, Clone, Default)]
struct Released {
    order: std::collections::VecDeque<ChunkId>,
    set: std::collections::HashSet<ChunkId>,
}

impl Released {
    /// About 10 MiB of ids.
    const CAP: usize = 100_000;

    fn insert(&mut self, id: ChunkId) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > Self::CAP
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// Flat, serialisable image of a [`Namespace`] (parents before children).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Cluster id (stored as "" before `InitCluster`, the format of every
    /// snapshot written so far).
    #[serde(with = "cluster_id_or_empty")]
    pub cluster_id: Option<ClusterId>,
    /// Every entry below the root, parents first.
    pub entries: Vec<SnapshotEntry>,
    /// Open uploads.
    pub uploads: Vec<Upload>,
    /// Registered nodes.
    pub nodes: Vec<NodeRecord>,
    /// Remembered [`Command::Once`] ids, oldest first (absent from
    /// snapshots that have none, and from every older one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub once: Vec<OnceRecord>,
}

/// A snapshot's cluster id: "" when none, else the id under its rule.
mod cluster_id_or_empty {
    use super::ClusterId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<ClusterId>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id.as_ref().map_or("", ClusterId::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ClusterId>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        ClusterId::try_from(s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// One entry of a [`Snapshot`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SnapshotEntry {
    /// A directory.
    Dir { path: String, meta: DirRecord },
    /// A file.
    File { path: String, file: FileRecord },
}

fn info_of(path: &NsPath, entry: &Entry) -> EntryInfo {
    match entry {
        Entry::Dir(d) => EntryInfo {
            path: path.to_string(),
            name: path.name().to_string(),
            is_dir: true,
            size: 0,
            replication: 0,
            chunk_size: 0,
            chunk_count: 0,
            created_ms: d.meta.created_ms,
            modified_ms: d.meta.modified_ms,
            version: 0,
        },
        Entry::File(f) => EntryInfo {
            path: path.to_string(),
            name: path.name().to_string(),
            is_dir: false,
            size: f.size,
            replication: f.replication,
            chunk_size: f.chunk_size,
            chunk_count: f.chunks.len() as u64,
            created_ms: f.created_ms,
            modified_ms: f.modified_ms,
            version: f.version,
        },
    }
}

fn count(entry: &Entry, files: &mut u64, dirs: &mut u64, chunks: &mut Vec<ChunkId>) {
    match entry {
        Entry::File(f) => {
            *files += 1;
            chunks.extend(f.chunks.iter().map(|c| c.id.clone()));
        }
        Entry::Dir(d) => {
            *dirs += 1;
            for child in d.children.values() {
                count(child, files, dirs, chunks);
            }
        }
    }
}

impl Namespace {
    /// An empty namespace (just the root).
    pub fn new() -> Self {
        Self::default()
    }

    /// True when applying `cmd` would change nothing because it repeats a
    /// [`Command::Once`] already applied (its effects must not run again).
    pub fn repeats(&self, cmd: &Command) -> bool {
        matches!(cmd, Command::Once { request_id, .. } if self.once.outcomes.contains_key(request_id))
    }

    /// The outcome of the [`Command::Once`] `request_id`, if remembered.
    pub fn once_outcome(&self, request_id: &str) -> Option<&Outcome> {
        self.once.outcomes.get(request_id)
    }

    /// The cluster id (none before `InitCluster`).
    pub fn cluster_id(&self) -> Option<&ClusterId> {
        self.cluster_id.as_ref()
    }

    /// Number of files.
    pub fn file_count(&self) -> u64 {
        self.files
    }

    /// Number of directories (the root included).
    pub fn dir_count(&self) -> u64 {
        self.dirs + 1
    }

    /// Number of chunks referenced by files.
    pub fn chunk_count(&self) -> u64 {
        self.chunks
    }

    /// Who references `chunk_id`, if anyone.
    pub fn chunk_owner(&self, chunk_id: &ChunkId) -> Option<ChunkOwner> {
        self.chunk_index.get(&ChunkKey::of(chunk_id)).copied()
    }

    /// True when this namespace released `chunk_id` lately (see
    /// `Namespace::released`): a replica of it is an orphan to delete.
    pub fn recently_released(&self, chunk_id: &ChunkId) -> bool {
        self.released.set.contains(chunk_id)
    }

    /// Every chunk referenced by a file or an upload.
    pub fn chunk_index(&self) -> &HashMap<ChunkKey, ChunkOwner> {
        &self.chunk_index
    }

    /// Registered nodes.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeRecord> {
        &self.nodes
    }

    /// Open uploads.
    pub fn uploads(&self) -> &BTreeMap<UploadId, Upload> {
        &self.uploads
    }

    /// An open upload.
    pub fn upload(&self, upload_id: &UploadId) -> Result<&Upload, NamespaceError> {
        self.uploads
            .get(upload_id)
            .ok_or_else(|| NamespaceError::UploadNotFound {
                upload_id: upload_id.clone(),
            })
    }

    fn lookup(&self, path: &NsPath) -> Result<&Entry, NamespaceError> {
        let parent = match self.dir(&path.parent()) {
            Ok(d) => d,
            Err(NamespaceError::NotFound { .. }) => {
                return Err(NamespaceError::NotFound {
                    path: path.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        parent
            .children
            .get(path.name())
            .filter(|_| !path.is_root())
            .ok_or_else(|| NamespaceError::NotFound {
                path: path.to_string(),
            })
    }

    fn dir(&self, path: &NsPath) -> Result<&Dir, NamespaceError> {
        let mut dir = &self.root;
        for c in path.components() {
            match dir.children.get(c.as_str()) {
                Some(Entry::Dir(d)) => dir = d,
                Some(Entry::File(_)) => {
                    return Err(NamespaceError::NotADirectory {
                        path: path.to_string(),
                    });
                }
                None => {
                    return Err(NamespaceError::NotFound {
                        path: path.to_string(),
                    });
                }
            }
        }
        Ok(dir)
    }

    fn dir_mut(&mut self, path: &NsPath) -> Result<&mut Dir, NamespaceError> {
        let mut dir = &mut self.root;
        for c in path.components() {
            match dir.children.get_mut(c.as_str()) {
                Some(Entry::Dir(d)) => dir = d,
                Some(Entry::File(_)) => {
                    return Err(NamespaceError::NotADirectory {
                        path: path.to_string(),
                    });
                }
                None => {
                    return Err(NamespaceError::NotFound {
                        path: path.to_string(),
                    });
                }
            }
        }
        Ok(dir)
    }

    /// Describes a path.
    pub fn stat(&self, path: &NsPath) -> Result<EntryInfo, NamespaceError> {
        if path.is_root() {
            return Ok(info_of(path, &Entry::Dir(Box::default())));
        }
        Ok(info_of(path, self.lookup(path)?))
    }

    /// A file's record.
    pub fn file(&self, path: &NsPath) -> Result<(EntryInfo, &FileRecord), NamespaceError> {
        if path.is_root() {
            return Err(NamespaceError::IsADirectory {
                path: path.to_string(),
            });
        }
        match self.lookup(path)? {
            e @ Entry::File(f) => Ok((info_of(path, e), f)),
            Entry::Dir(_) => Err(NamespaceError::IsADirectory {
                path: path.to_string(),
            }),
        }
    }

    /// Lists up to `limit` entries of a directory after `after`; the second
    /// value is true when more entries follow.
    pub fn list(
        &self,
        path: &NsPath,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<EntryInfo>, bool), NamespaceError> {
        let dir = match self.dir(path) {
            Ok(d) => d,
            Err(NamespaceError::NotADirectory { .. }) if self.lookup(path).is_ok() => {
                return Err(NamespaceError::NotADirectory {
                    path: path.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        use std::ops::Bound;
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        let mut out = Vec::with_capacity(limit.min(dir.children.len()));
        let mut more = false;
        for (name, entry) in dir.children.range::<str, _>((start, Bound::Unbounded)) {
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(info_of(&path.join(name), entry));
        }
        Ok((out, more))
    }

    /// Checks that `path` could receive a new file (used when planning).
    pub fn check_upload_target(
        &self,
        path: &NsPath,
        overwrite: bool,
    ) -> Result<(), NamespaceError> {
        if path.is_root() {
            return Err(NamespaceError::IsADirectory {
                path: path.to_string(),
            });
        }
        // Every existing ancestor must be a directory.
        let mut dir = &self.root;
        for c in &path.components()[..path.components().len() - 1] {
            match dir.children.get(c.as_str()) {
                Some(Entry::Dir(d)) => dir = d,
                Some(Entry::File(_)) => {
                    return Err(NamespaceError::NotADirectory {
                        path: path.parent().to_string(),
                    });
                }
                None => return Ok(()),
            }
        }
        match dir.children.get(path.name()) {
            None => Ok(()),
            Some(Entry::Dir(_)) => Err(NamespaceError::IsADirectory {
                path: path.to_string(),
            }),
            Some(Entry::File(_)) if overwrite => Ok(()),
            Some(Entry::File(_)) => Err(NamespaceError::AlreadyExists {
                path: path.to_string(),
            }),
        }
    }

    /// Applies one command. On error nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, NamespaceError> {
        match cmd {
            Command::Once {
                request_id,
                now_ms,
                command,
            } => {
                if let Some(first) = self.once.outcomes.get(request_id) {
                    return Ok(first.clone());
                }
                let outcome = self.apply(command)?;
                self.once.record(request_id, *now_ms, outcome.clone());
                Ok(outcome)
            }
            Command::InitCluster { cluster_id } => {
                if self.cluster_id.is_none() {
                    self.cluster_id = Some(cluster_id.clone());
                }
                Ok(Outcome::Done)
            }
            Command::Mkdir {
                path,
                parents,
                now_ms,
            } => self.mkdir(&NsPath::parse(path)?, *parents, *now_ms),
            Command::BeginUpload(upload) => {
                let path = NsPath::parse(&upload.path)?;
                self.check_upload_target(&path, upload.overwrite)?;
                for c in &upload.chunks {
                    self.chunk_index
                        .insert(ChunkKey::of(&c.chunk_id), ChunkOwner::Upload);
                }
                self.uploads
                    .insert(upload.upload_id.clone(), upload.clone());
                Ok(Outcome::Done)
            }
            Command::ReplanChunk {
                upload_id,
                index,
                chunk_id,
                nodes,
            } => {
                let upload = self.upload(upload_id)?;
                let Some(pos) = upload.chunks.iter().position(|c| c.index == *index) else {
                    return Err(NamespaceError::PlanMismatch {
                        upload_id: upload_id.clone(),
                        reason: format!("no chunk with index {index}"),
                    });
                };
                let upload = self.uploads.get_mut(upload_id).expect("checked above");
                let planned = &mut upload.chunks[pos];
                self.chunk_index.remove(&ChunkKey::of(&planned.chunk_id));
                self.released.insert(planned.chunk_id.clone());
                planned.chunk_id = chunk_id.clone();
                planned.nodes = nodes.clone();
                self.chunk_index
                    .insert(ChunkKey::of(chunk_id), ChunkOwner::Upload);
                Ok(Outcome::Done)
            }
            Command::ConfirmUpload {
                upload_id,
                chunks,
                now_ms,
            } => self.confirm(upload_id, chunks, *now_ms),
            Command::AbortUpload { upload_id } => {
                self.upload(upload_id)?;
                self.drop_upload(upload_id);
                Ok(Outcome::Done)
            }
            Command::ExpireUploads { now_ms } => {
                let expired: Vec<UploadId> = self
                    .uploads
                    .values()
                    .filter(|u| u.expires_at_ms <= *now_ms)
                    .map(|u| u.upload_id.clone())
                    .collect();
                for id in &expired {
                    self.drop_upload(id);
                }
                Ok(Outcome::Expired {
                    uploads: expired.len() as u64,
                })
            }
            Command::Delete { path, recursive } => self.delete(&NsPath::parse(path)?, *recursive),
            Command::Rename {
                source,
                destination,
                now_ms,
            } => self.rename(
                &NsPath::parse(source)?,
                &NsPath::parse(destination)?,
                *now_ms,
            ),
            Command::RegisterNode(record) => {
                // Operator decisions outlive a re-registration.
                let (draining, maintenance_until_ms) = self
                    .nodes
                    .get(&record.node_id)
                    .map(|n| (n.draining, n.maintenance_until_ms))
                    .unwrap_or((false, 0));
                let mut record = record.clone();
                record.draining = draining;
                record.maintenance_until_ms = maintenance_until_ms;
                self.nodes.insert(record.node_id.clone(), record);
                Ok(Outcome::Done)
            }
            Command::SetDraining { node_id, draining } => {
                self.node_mut(node_id)?.draining = *draining;
                Ok(Outcome::Done)
            }
            Command::SetMaintenance { node_id, until_ms } => {
                self.node_mut(node_id)?.maintenance_until_ms = *until_ms;
                Ok(Outcome::Done)
            }
        }
    }

    /// A registered node's record, for an operator decision about it.
    fn node_mut(&mut self, node_id: &NodeId) -> Result<&mut NodeRecord, NamespaceError> {
        self.nodes
            .get_mut(node_id)
            .ok_or_else(|| NamespaceError::UnknownNode {
                node_id: node_id.clone(),
            })
    }

    fn drop_upload(&mut self, upload_id: &UploadId) {
        if let Some(upload) = self.uploads.remove(upload_id) {
            for c in upload.chunks {
                let key = ChunkKey::of(&c.chunk_id);
                if self.chunk_index.get(&key) == Some(&ChunkOwner::Upload) {
                    self.chunk_index.remove(&key);
                    self.released.insert(c.chunk_id);
                }
            }
        }
    }

    fn mkdir(
        &mut self,
        path: &NsPath,
        parents: bool,
        now_ms: u64,
    ) -> Result<Outcome, NamespaceError> {
        if path.is_root() {
            return if parents {
                self.stat(path).map(Outcome::Entry)
            } else {
                Err(NamespaceError::AlreadyExists {
                    path: "/".to_string(),
                })
            };
        }
        // Validate first, so that a failure changes nothing.
        let mut dir = &self.root;
        let comps = path.components();
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            match dir.children.get(c.as_str()) {
                Some(Entry::Dir(d)) => {
                    if last {
                        return if parents {
                            Ok(Outcome::Entry(self.stat(path)?))
                        } else {
                            Err(NamespaceError::AlreadyExists {
                                path: path.to_string(),
                            })
                        };
                    }
                    dir = d;
                }
                Some(Entry::File(_)) => {
                    return Err(if last {
                        NamespaceError::AlreadyExists {
                            path: path.to_string(),
                        }
                    } else {
                        NamespaceError::NotADirectory {
                            path: format!("/{}", comps[..=i].join("/")),
                        }
                    });
                }
                None => {
                    if !last && !parents {
                        return Err(NamespaceError::ParentNotFound {
                            path: path.to_string(),
                        });
                    }
                    break;
                }
            }
        }
        self.create_dirs(path, now_ms);
        Ok(Outcome::Entry(self.stat(path)?))
    }

    /// Creates `path` and its missing ancestors; callers validated that no
    /// component is a file.
    fn create_dirs(&mut self, path: &NsPath, now_ms: u64) {
        let mut created = 0;
        let mut dir = &mut self.root;
        for c in path.components() {
            let entry = dir.children.entry(c.as_str().into()).or_insert_with(|| {
                created += 1;
                Entry::Dir(Box::new(Dir {
                    meta: DirRecord {
                        created_ms: now_ms,
                        modified_ms: now_ms,
                    },
                    children: BTreeMap::new(),
                }))
            });
            match entry {
                Entry::Dir(d) => dir = d,
                Entry::File(_) => unreachable!("create_dirs callers check for files"),
            }
        }
        self.dirs += created;
    }

    fn confirm(
        &mut self,
        upload_id: &UploadId,
        chunks: &[ChunkRecord],
        now_ms: u64,
    ) -> Result<Outcome, NamespaceError> {
        self.check_confirm(upload_id, chunks)?;
        let upload = self.upload(upload_id)?;
        let path = NsPath::parse(&upload.path)?;
        self.check_upload_target(&path, upload.overwrite)?;
        self.confirm_commit(upload_id, &path, chunks, now_ms)
    }

    /// Checks a confirm against its upload's plan (ids, sizes, distinct and
    /// registered replicas, the write quorum) without changing anything.
    pub fn check_confirm(
        &self,
        upload_id: &UploadId,
        chunks: &[ChunkRecord],
    ) -> Result<(), NamespaceError> {
        let upload = self.upload(upload_id)?;
        let mismatch = |reason: String| NamespaceError::PlanMismatch {
            upload_id: upload_id.clone(),
            reason,
        };
        if chunks.len() != upload.chunks.len() {
            return Err(mismatch(format!(
                "the plan has {} chunks, {} confirmed",
                upload.chunks.len(),
                chunks.len()
            )));
        }
        for (planned, got) in upload.chunks.iter().zip(chunks) {
            if planned.chunk_id != got.id {
                return Err(mismatch(format!(
                    "chunk {} must have id {}, got {}",
                    planned.index, planned.chunk_id, got.id
                )));
            }
            if planned.size != got.size {
                return Err(mismatch(format!(
                    "chunk {} must have {} bytes, got {}",
                    planned.index, planned.size, got.size
                )));
            }
            let mut distinct = got.replicas.clone();
            distinct.sort();
            distinct.dedup();
            if distinct.len() != got.replicas.len() {
                return Err(mismatch(format!(
                    "chunk {} lists a replica twice",
                    planned.index
                )));
            }
            if (got.replicas.len() as u32) < upload.write_quorum {
                return Err(NamespaceError::QuorumNotMet {
                    index: planned.index,
                    replicas: got.replicas.len(),
                    quorum: upload.write_quorum,
                });
            }
            if let Some(unknown) = got.replicas.iter().find(|n| !self.nodes.contains_key(*n)) {
                return Err(NamespaceError::UnknownNode {
                    node_id: unknown.clone(),
                });
            }
        }
        Ok(())
    }

    /// The registered node's own id value for `n` (shared by every replica
    /// on that node instead of one copy per replica), or `n` itself.
    fn node_key(&self, n: &NodeId) -> NodeId {
        self.nodes
            .get_key_value(n)
            .map_or_else(|| n.clone(), |(k, _)| k.clone())
    }

    fn confirm_commit(
        &mut self,
        upload_id: &UploadId,
        path: &NsPath,
        chunks: &[ChunkRecord],
        now_ms: u64,
    ) -> Result<Outcome, NamespaceError> {
        let path = path.clone();
        let upload = self.uploads.remove(upload_id).expect("checked above");
        self.create_dirs(&path.parent(), now_ms);
        let chunks = chunks
            .iter()
            .map(|c| ChunkRecord {
                id: c.id.clone(),
                checksum: c.checksum,
                size: c.size,
                algorithm: c.algorithm,
                replicas: c.replicas.iter().map(|n| self.node_key(n)).collect(),
            })
            .collect();
        let parent = self.dir_mut(&path.parent()).expect("created above");
        let mut file = FileRecord {
            size: upload.size,
            replication: upload.replication,
            chunk_size: upload.chunk_size,
            chunks,
            created_ms: now_ms,
            modified_ms: now_ms,
            version: 1,
        };
        let old = parent.children.remove(path.name());
        parent.meta.modified_ms = now_ms;
        if let Some(Entry::File(old)) = &old {
            file.created_ms = old.created_ms;
            file.version = old.version + 1;
        }
        parent
            .children
            .insert(path.name().into(), Entry::File(Box::new(file.clone())));
        if let Some(Entry::File(old)) = old {
            self.files -= 1;
            self.chunks -= old.chunks.len() as u64;
            for c in old.chunks {
                self.chunk_index.remove(&ChunkKey::of(&c.id));
                self.released.insert(c.id);
            }
        }
        self.files += 1;
        self.chunks += file.chunks.len() as u64;
        for c in &file.chunks {
            self.chunk_index.insert(
                ChunkKey::of(&c.id),
                ChunkOwner::File {
                    size: c.size,
                    replication: file.replication,
                    checksum: c.checksum,
                    algorithm: c.algorithm,
                },
            );
        }
        Ok(Outcome::Entry(info_of(&path, &Entry::File(Box::new(file)))))
    }

    fn delete(&mut self, path: &NsPath, recursive: bool) -> Result<Outcome, NamespaceError> {
        if path.is_root() {
            return Err(NamespaceError::Root);
        }
        if let Entry::Dir(d) = self.lookup(path)?
            && !recursive
            && !d.children.is_empty()
        {
            return Err(NamespaceError::DirectoryNotEmpty {
                path: path.to_string(),
            });
        }
        let parent = self.dir_mut(&path.parent())?;
        let removed = parent
            .children
            .remove(path.name())
            .expect("looked up above");
        let (mut files, mut dirs, mut chunks) = (0, 0, Vec::new());
        count(&removed, &mut files, &mut dirs, &mut chunks);
        self.files -= files;
        self.dirs -= dirs;
        self.chunks -= chunks.len() as u64;
        for c in &chunks {
            self.chunk_index.remove(&ChunkKey::of(c));
            self.released.insert(c.clone());
        }
        Ok(Outcome::Deleted {
            files,
            chunks_released: chunks.len() as u64,
        })
    }

    fn rename(
        &mut self,
        source: &NsPath,
        destination: &NsPath,
        now_ms: u64,
    ) -> Result<Outcome, NamespaceError> {
        if source.is_root() || destination.is_root() {
            return Err(NamespaceError::Root);
        }
        self.lookup(source)?;
        if destination.starts_with(source) && destination != source {
            return Err(NamespaceError::IntoItself {
                source_path: source.to_string(),
                destination: destination.to_string(),
            });
        }
        match self.dir(&destination.parent()) {
            Ok(_) => {}
            Err(NamespaceError::NotFound { .. }) => {
                return Err(NamespaceError::ParentNotFound {
                    path: destination.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
        if self.lookup(destination).is_ok() {
            return Err(NamespaceError::AlreadyExists {
                path: destination.to_string(),
            });
        }
        let src_parent = self.dir_mut(&source.parent()).expect("looked up above");
        let entry = src_parent
            .children
            .remove(source.name())
            .expect("looked up above");
        src_parent.meta.modified_ms = now_ms;
        let dst_parent = self.dir_mut(&destination.parent()).expect("checked above");
        dst_parent.meta.modified_ms = now_ms;
        dst_parent.children.insert(destination.name().into(), entry);
        self.stat(destination).map(Outcome::Entry)
    }

    /// A flat image of the state.
    pub fn snapshot(&self) -> Snapshot {
        fn walk(dir: &Dir, path: &NsPath, out: &mut Vec<SnapshotEntry>) {
            for (name, entry) in &dir.children {
                let p = path.join(name);
                match entry {
                    Entry::Dir(d) => {
                        out.push(SnapshotEntry::Dir {
                            path: p.to_string(),
                            meta: d.meta,
                        });
                        walk(d, &p, out);
                    }
                    Entry::File(f) => out.push(SnapshotEntry::File {
                        path: p.to_string(),
                        file: FileRecord::clone(f),
                    }),
                }
            }
        }
        let mut entries = Vec::new();
        walk(&self.root, &NsPath::root(), &mut entries);
        Snapshot {
            cluster_id: self.cluster_id.clone(),
            entries,
            uploads: self.uploads.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            once: self
                .once
                .order
                .iter()
                .map(|(id, at)| OnceRecord {
                    request_id: id.clone(),
                    at_ms: *at,
                    outcome: self.once.outcomes[id].clone(),
                })
                .collect(),
        }
    }

    /// Rebuilds the state from a snapshot.
    pub fn restore(snapshot: Snapshot) -> Result<Self, NamespaceError> {
        // Sized once: growing a map of millions of chunk ids doubles and
        // rehashes it over and over, touching fresh memory each time.
        let chunk_count = snapshot
            .entries
            .iter()
            .map(|e| match e {
                SnapshotEntry::File { file, .. } => file.chunks.len(),
                SnapshotEntry::Dir { .. } => 0,
            })
            .sum::<usize>();
        let mut r = restore::Restorer::new(chunk_count);
        for entry in snapshot.entries {
            r.entry(entry)?;
        }
        Ok(r.finish(
            snapshot.cluster_id,
            snapshot.uploads,
            snapshot.nodes,
            snapshot.once,
        ))
    }

    /// Every confirmed file's chunks (for seeding the replica map).
    pub fn for_each_file_chunk(&self, mut f: impl FnMut(&FileRecord, &ChunkRecord)) {
        fn walk(dir: &Dir, f: &mut dyn FnMut(&FileRecord, &ChunkRecord)) {
            for entry in dir.children.values() {
                match entry {
                    Entry::Dir(d) => walk(d, f),
                    Entry::File(file) => {
                        for c in &file.chunks {
                            f(file, c);
                        }
                    }
                }
            }
        }
        walk(&self.root, &mut f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ids::{named, nodes};

    fn node(id: &str) -> Command {
        Command::RegisterNode(NodeRecord {
            node_id: named(id),
            address: format!("http://{id}"),
            topology: TopologyRecord::default(),
            version: "t".into(),
            draining: false,
            maintenance_until_ms: 0,
        })
    }

    fn begin(id: &str, path: &str, sizes: &[u64], overwrite: bool) -> Command {
        let mut offset = 0;
        let chunks = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let c = PlannedChunkRecord {
                    index: i as u64,
                    chunk_id: named(&format!("{id}{i}")),
                    offset,
                    size: *s,
                    nodes: nodes(&["n1", "n2"]),
                };
                offset += s;
                c
            })
            .collect();
        Command::BeginUpload(Upload {
            upload_id: named(id),
            path: path.into(),
            size: offset,
            chunk_size: 4,
            replication: 2,
            write_quorum: 2,
            overwrite,
            chunks,
            expires_at_ms: 1000,
        })
    }

    fn confirm_cmd(ns: &Namespace, id: &str, replicas: &[&str]) -> Command {
        let chunks = ns
            .upload(&named(id))
            .unwrap()
            .chunks
            .iter()
            .map(|c| ChunkRecord {
                id: c.chunk_id.clone(),
                checksum: 7,
                size: c.size,
                algorithm: 1,
                replicas: nodes(replicas),
            })
            .collect();
        Command::ConfirmUpload {
            upload_id: named(id),
            chunks,
            now_ms: 5,
        }
    }

    fn setup() -> Namespace {
        let mut ns = Namespace::new();
        ns.apply(&node("n1")).unwrap();
        ns.apply(&node("n2")).unwrap();
        ns
    }

    fn p(s: &str) -> NsPath {
        NsPath::parse(s).unwrap()
    }

    #[test]
    fn a_chunk_key_is_its_id_in_128_bits() {
        for id in [
            ChunkId::random(),
            ChunkId::from_u128(0),
            ChunkId::from_u128(u128::MAX),
            ChunkId::parse("0123456789abcdef0123456789abcdef").unwrap(),
        ] {
            assert_eq!(ChunkKey::of(&id).id(), id);
        }
        assert_ne!(
            ChunkKey::of(&ChunkId::from_u128(1)),
            ChunkKey::of(&ChunkId::from_u128(1 << 64))
        );
    }

    #[test]
    fn upload_is_invisible_until_confirmed_then_overwrite_is_atomic() {
        let mut ns = setup();
        ns.apply(&begin("a", "/d/f", &[4, 4, 1], false)).unwrap();
        assert!(matches!(
            ns.stat(&p("/d/f")),
            Err(NamespaceError::NotFound { .. })
        ));
        assert_eq!(ns.chunk_owner(&named("a0")), Some(ChunkOwner::Upload));
        let cmd = confirm_cmd(&ns, "a", &["n1", "n2"]);
        let Outcome::Entry(info) = ns.apply(&cmd).unwrap() else {
            panic!()
        };
        assert_eq!((info.size, info.chunk_count, info.version), (9, 3, 1));
        assert_eq!(ns.file_count(), 1);
        assert_eq!(ns.chunk_count(), 3);
        assert!(ns.stat(&p("/d")).unwrap().is_dir);
        // Confirming twice fails: the upload is gone.
        assert!(matches!(
            ns.apply(&cmd),
            Err(NamespaceError::UploadNotFound { .. })
        ));

        // Without overwrite: ALREADY_EXISTS at plan time.
        assert!(matches!(
            ns.apply(&begin("b", "/d/f", &[2], false)),
            Err(NamespaceError::AlreadyExists { .. })
        ));
        ns.apply(&begin("b", "/d/f", &[2], true)).unwrap();
        let cmd = confirm_cmd(&ns, "b", &["n1", "n2"]);
        ns.apply(&cmd).unwrap();
        let (info, file) = ns.file(&p("/d/f")).unwrap();
        assert_eq!((info.size, info.version, file.chunks.len()), (2, 2, 1));
        assert_eq!(ns.chunk_count(), 1);
        assert_eq!(ns.chunk_owner(&named("a0")), None);
    }

    #[test]
    fn confirm_validates_against_the_plan() {
        let mut ns = setup();
        ns.apply(&begin("a", "/f", &[4], false)).unwrap();
        let Command::ConfirmUpload { chunks, .. } = confirm_cmd(&ns, "a", &["n1"]) else {
            panic!()
        };
        let with = |chunks: Vec<ChunkRecord>| Command::ConfirmUpload {
            upload_id: named("a"),
            chunks,
            now_ms: 1,
        };
        assert!(matches!(
            ns.apply(&with(chunks.clone())),
            Err(NamespaceError::QuorumNotMet { .. })
        ));
        let mut c = chunks.clone();
        c[0].replicas = nodes(&["n1", "zz"]);
        assert!(matches!(
            ns.apply(&with(c)),
            Err(NamespaceError::UnknownNode { .. })
        ));
        let mut c = chunks.clone();
        c[0].replicas = nodes(&["n1", "n1"]);
        assert!(matches!(
            ns.apply(&with(c)),
            Err(NamespaceError::PlanMismatch { .. })
        ));
        let mut c = chunks.clone();
        c[0].replicas = nodes(&["n1", "n2"]);
        c[0].size = 3;
        assert!(matches!(
            ns.apply(&with(c)),
            Err(NamespaceError::PlanMismatch { .. })
        ));
        assert!(matches!(
            ns.apply(&with(vec![])),
            Err(NamespaceError::PlanMismatch { .. })
        ));
        assert_eq!(ns.file_count(), 0);
    }

    #[test]
    fn expire_and_abort_release_chunks() {
        let mut ns = setup();
        ns.apply(&begin("a", "/f", &[4], false)).unwrap();
        ns.apply(&begin("b", "/g", &[4], false)).unwrap();
        ns.apply(&Command::AbortUpload {
            upload_id: named("a"),
        })
        .unwrap();
        assert!(ns.chunk_owner(&named("a0")).is_none());
        assert_eq!(
            ns.apply(&Command::ExpireUploads { now_ms: 999 }).unwrap(),
            Outcome::Expired { uploads: 0 }
        );
        assert_eq!(
            ns.apply(&Command::ExpireUploads { now_ms: 1000 }).unwrap(),
            Outcome::Expired { uploads: 1 }
        );
        assert!(ns.chunk_index().is_empty());
        assert!(
            ns.apply(&Command::AbortUpload {
                upload_id: named("zz")
            })
            .is_err()
        );
    }

    #[test]
    fn mkdir_delete_rename_and_list() {
        let mut ns = setup();
        let mk = |path: &str, parents| Command::Mkdir {
            path: path.into(),
            parents,
            now_ms: 1,
        };
        assert!(matches!(
            ns.apply(&mk("/a/b", false)),
            Err(NamespaceError::ParentNotFound { .. })
        ));
        ns.apply(&mk("/a/b", true)).unwrap();
        ns.apply(&mk("/a/b", true)).unwrap();
        assert!(matches!(
            ns.apply(&mk("/a/b", false)),
            Err(NamespaceError::AlreadyExists { .. })
        ));
        ns.apply(&begin("u", "/a/b/f", &[1], false)).unwrap();
        ns.apply(&confirm_cmd(&ns, "u", &["n1", "n2"])).unwrap();
        assert!(matches!(
            ns.apply(&mk("/a/b/f/x", true)),
            Err(NamespaceError::NotADirectory { .. })
        ));
        assert_eq!(ns.dir_count(), 3);

        // Rename rules.
        let mv = |s: &str, d: &str| Command::Rename {
            source: s.into(),
            destination: d.into(),
            now_ms: 2,
        };
        assert!(matches!(
            ns.apply(&mv("/a", "/a/b/c")),
            Err(NamespaceError::IntoItself { .. })
        ));
        assert!(matches!(
            ns.apply(&mv("/a/b/f", "/nope/f")),
            Err(NamespaceError::ParentNotFound { .. })
        ));
        assert!(matches!(
            ns.apply(&mv("/a/b", "/a")),
            Err(NamespaceError::AlreadyExists { .. })
        ));
        assert!(matches!(
            ns.apply(&mv("/", "/x")),
            Err(NamespaceError::Root)
        ));
        ns.apply(&mv("/a/b", "/c")).unwrap();
        assert_eq!(ns.stat(&p("/c/f")).unwrap().size, 1);
        assert!(ns.stat(&p("/a/b")).is_err());

        // Delete rules.
        let rm = |path: &str, recursive| Command::Delete {
            path: path.into(),
            recursive,
        };
        assert!(matches!(
            ns.apply(&rm("/c", false)),
            Err(NamespaceError::DirectoryNotEmpty { .. })
        ));
        assert!(matches!(
            ns.apply(&rm("/", true)),
            Err(NamespaceError::Root)
        ));
        assert_eq!(
            ns.apply(&rm("/c", true)).unwrap(),
            Outcome::Deleted {
                files: 1,
                chunks_released: 1
            }
        );
        assert_eq!(
            (ns.file_count(), ns.chunk_count(), ns.dir_count()),
            (0, 0, 2)
        );
        assert!(ns.chunk_index().is_empty());

        // Paged listing in name order.
        for i in 0..25 {
            ns.apply(&mk(&format!("/l/{i:03}"), true)).unwrap();
        }
        let (page, more) = ns.list(&p("/l"), "", 10).unwrap();
        assert!(more);
        assert_eq!(page[0].name, "000");
        let (page, more) = ns.list(&p("/l"), "019", 10).unwrap();
        assert!(!more);
        assert_eq!(page.len(), 5);
        assert_eq!(page[0].path, "/l/020");
        assert!(ns.list(&p("/missing"), "", 10).is_err());
    }

    #[test]
    fn snapshot_round_trips() {
        let mut ns = setup();
        ns.apply(&Command::InitCluster {
            cluster_id: named("c"),
        })
        .unwrap();
        ns.apply(&Command::Mkdir {
            path: "/x/y".into(),
            parents: true,
            now_ms: 3,
        })
        .unwrap();
        ns.apply(&begin("u", "/x/f", &[4, 2], false)).unwrap();
        ns.apply(&confirm_cmd(&ns, "u", &["n1", "n2"])).unwrap();
        ns.apply(&begin("v", "/x/g", &[4], false)).unwrap();
        let json = serde_json::to_vec(&ns.snapshot()).unwrap();
        let back = Namespace::restore(serde_json::from_slice(&json).unwrap()).unwrap();
        assert_eq!(back.snapshot().entries.len(), 3);
        assert_eq!(
            (back.file_count(), back.dir_count(), back.chunk_count()),
            (1, 3, 2)
        );
        assert_eq!(back.chunk_index(), ns.chunk_index());
        assert_eq!(back.uploads(), ns.uploads());
        assert_eq!(back.nodes(), ns.nodes());
        assert_eq!(back.cluster_id(), Some(&named("c")));
        assert_eq!(back.stat(&p("/x/y")).unwrap().created_ms, 3);
    }

    /// Decoded entry by entry ([`RestoreSeed`]), in JSON or MessagePack,
    /// a snapshot gives the namespace that decoding it whole and restoring
    /// gives: tree, chunk index, uploads, nodes, cluster id and request ids.
    #[test]
    fn a_streamed_restore_equals_a_whole_one() {
        use serde::de::DeserializeSeed;
        let mut ns = setup();
        ns.apply(&Command::InitCluster {
            cluster_id: named("c"),
        })
        .unwrap();
        ns.apply(&Command::Mkdir {
            path: "/x/y".into(),
            parents: true,
            now_ms: 3,
        })
        .unwrap();
        ns.apply(&begin("u", "/x/f", &[4, 2], false)).unwrap();
        ns.apply(&confirm_cmd(&ns, "u", &["n1", "n2"])).unwrap();
        ns.apply(&begin("v", "/x/g", &[4], false)).unwrap();
        ns.apply(&once(
            "r1",
            9,
            Command::Mkdir {
                path: "/z".into(),
                parents: false,
                now_ms: 9,
            },
        ))
        .unwrap();
        let snap = ns.snapshot();
        let image = |n: &Namespace| serde_json::to_value(n.snapshot()).unwrap();
        let whole = Namespace::restore(snap.clone()).unwrap();
        let from_json = Namespace::restore_streamed(&serde_json::to_vec(&snap).unwrap()).unwrap();
        let packed = rmp_serde::to_vec_named(&snap).unwrap();
        let from_msgpack = RestoreSeed
            .deserialize(&mut rmp_serde::Deserializer::from_read_ref(&packed))
            .unwrap();
        for back in [&from_json, &from_msgpack] {
            assert_eq!(image(back), image(&whole));
            assert_eq!(image(back), image(&ns));
            assert_eq!(
                (back.file_count(), back.dir_count(), back.chunk_count()),
                (ns.file_count(), ns.dir_count(), ns.chunk_count())
            );
            assert_eq!(back.chunk_index(), ns.chunk_index());
            assert_eq!(back.uploads(), ns.uploads());
            assert_eq!(back.nodes(), ns.nodes());
            assert_eq!(back.cluster_id(), Some(&named("c")));
        }
        assert!(!snap.once.is_empty(), "the request id is in the snapshot");
    }

    fn once(id: &str, now_ms: u64, command: Command) -> Command {
        Command::Once {
            request_id: id.into(),
            now_ms,
            command: Box::new(command),
        }
    }

    fn rename(source: &str, destination: &str) -> Command {
        Command::Rename {
            source: source.into(),
            destination: destination.into(),
            now_ms: 9,
        }
    }

    #[test]
    fn a_repeated_once_applies_nothing_and_answers_as_the_first() {
        let mut ns = setup();
        ns.apply(&Command::Mkdir {
            path: "/a".into(),
            parents: false,
            now_ms: 1,
        })
        .unwrap();
        let cmd = once("r1", 10, rename("/a", "/b"));
        let first = ns.apply(&cmd).unwrap();
        assert!(ns.repeats(&cmd));
        // Without the id the retry fails: the source is gone.
        assert!(ns.apply(&rename("/a", "/b")).is_err());
        assert_eq!(ns.apply(&cmd).unwrap(), first);
        assert!(ns.stat(&p("/b")).is_ok() && ns.stat(&p("/a")).is_err());
        assert_eq!(cmd.effective(), &rename("/a", "/b"));
        // A failure is not remembered: the state did not change.
        let missing = once("r2", 11, rename("/nope", "/c"));
        assert!(ns.apply(&missing).is_err());
        assert!(!ns.repeats(&missing));
        // Remembered through a snapshot.
        let back = Namespace::restore(ns.snapshot()).unwrap();
        assert_eq!(back.once_outcome("r1"), Some(&first));
        assert!(back.repeats(&cmd));
    }

    #[test]
    fn once_ids_are_forgotten_after_their_window() {
        let mut ns = setup();
        for (i, dir) in ["/a", "/b"].iter().enumerate() {
            let mkdir = Command::Mkdir {
                path: (*dir).into(),
                parents: false,
                now_ms: 1,
            };
            ns.apply(&once(
                &format!("r{i}"),
                1 + i as u64 * ONCE_WINDOW_MS,
                mkdir,
            ))
            .unwrap();
        }
        // r0 is exactly one window older than r1: still known.
        assert!(ns.once_outcome("r0").is_some());
        let later = Command::Mkdir {
            path: "/c".into(),
            parents: false,
            now_ms: 1,
        };
        ns.apply(&once("r2", 2 + ONCE_WINDOW_MS, later)).unwrap();
        assert!(ns.once_outcome("r0").is_none(), "forgotten");
        assert!(ns.once_outcome("r1").is_some() && ns.once_outcome("r2").is_some());
        assert_eq!(ns.snapshot().once.len(), 2);
    }
}
