//! The data path's edge: wire messages parsed into typed values (ids,
//! metas, targets) and the data path's typed error ([`StoreError`]) turned
//! into a gRPC [`Status`], each in one place. Every layer above (sessions,
//! pipeline, reads, membership, the gRPC routes) uses these and never
//! validates or maps on its own.

use dfs_proto::{ChecksumAlgorithm, ChunkMeta, NodeAddress};
use tonic::Status;

use crate::peers::Target;
use crate::store::{ChunkId, StoreError, StoredChunk};

/// Most replica targets one upload may name (replication 16 at most).
pub const MAX_TARGETS: usize = 15;

/// Validates a chunk id from the wire.
pub fn parse_id(s: &str) -> Result<ChunkId, Status> {
    ChunkId::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Validates a ChunkMeta: id, algorithm; checksum 0 means unknown.
pub fn parse_meta(meta: &ChunkMeta) -> Result<(ChunkId, u64, Option<u32>), Status> {
    let id = parse_id(&meta.chunk_id)?;
    if !dfs_proto::frame::is_supported_algorithm(meta.checksum_algorithm) {
        return Err(Status::invalid_argument(format!(
            "unsupported checksum algorithm {}",
            meta.checksum_algorithm
        )));
    }
    let checksum = (meta.checksum != 0).then_some(meta.checksum);
    Ok((id, meta.size, checksum))
}

/// The wire form of a stored chunk.
pub fn chunk_meta(id: &ChunkId, c: StoredChunk) -> ChunkMeta {
    ChunkMeta {
        chunk_id: id.to_string(),
        checksum: c.checksum,
        size: c.size,
        checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
    }
}

/// Validates the replica targets of an upload: at most [`MAX_TARGETS`],
/// each a node id and an http(s) URL of sane length, no duplicates, not
/// the primary (`primary`) itself.
pub fn parse_targets(raw: Vec<NodeAddress>, primary: &str) -> Result<Vec<Target>, Status> {
    if raw.len() > MAX_TARGETS {
        return Err(Status::invalid_argument(format!(
            "{} targets; a chunk has at most {} replicas besides the primary",
            raw.len(),
            MAX_TARGETS
        )));
    }
    let mut targets: Vec<Target> = Vec::with_capacity(raw.len());
    for t in raw {
        if t.node_id.is_empty() || t.address.is_empty() {
            return Err(Status::invalid_argument(
                "every target needs a node_id and an address",
            ));
        }
        // Only gRPC URLs of a sane length: the primary connects to them.
        if t.node_id.len() > 128
            || t.address.len() > 256
            || !(t.address.starts_with("http://") || t.address.starts_with("https://"))
            || t.address.parse::<tonic::codegen::http::Uri>().is_err()
        {
            return Err(Status::invalid_argument(format!(
                "invalid target {:?} at {:?}: expected a node id of at most 128 bytes and an http(s) URL of at most 256",
                t.node_id.chars().take(64).collect::<String>(),
                t.address.chars().take(80).collect::<String>()
            )));
        }
        if targets
            .iter()
            .any(|x| x.node_id == t.node_id || x.address == t.address)
        {
            return Err(Status::invalid_argument("duplicate target"));
        }
        if t.node_id == primary {
            return Err(Status::invalid_argument(
                "targets must not include the primary itself",
            ));
        }
        targets.push(Target {
            node_id: t.node_id,
            address: t.address,
        });
    }
    Ok(targets)
}

/// Maps a store error to the gRPC status a caller sees.
pub fn status(e: StoreError) -> Status {
    match &e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::Concurrent { .. } => Status::aborted(e.to_string()),
        StoreError::Corrupt { .. } | StoreError::Mismatch { .. } => {
            Status::data_loss(e.to_string())
        }
        StoreError::NoSpace { .. } => Status::resource_exhausted(e.to_string()),
        StoreError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
        StoreError::Cancelled => Status::cancelled(e.to_string()),
        StoreError::Io { .. } => Status::internal(e.to_string()),
    }
}
