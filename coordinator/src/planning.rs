//! Upload planning as a pure decision: given the namespace, the cluster's
//! view and the time (passed in, never read here), choose the datanodes of
//! every chunk and return the log entry that records the plan. Nothing here
//! does I/O, reads a clock or knows gRPC: the service parses the request,
//! calls [`plan_upload`] / [`plan_replan`] under the state lock, proposes
//! the returned [`Command`] and maps a [`PlanError`] to a status. This is
//! the shape a replicated coordinator needs (only the leader decides; the
//! log entry is what every replica applies).
//!
//! ```text
//!   UploadRequest ─┐
//!   Namespace ─────┼─▶ plan_upload ──▶ Command::BeginUpload(Upload)   (to the log)
//!   Cluster (view) ┤                   + reserved space on each chosen node
//!   Now, ids, rng ─┘
//! ```

use rand::Rng;

use crate::cluster::Cluster;
use crate::config::{MAX_CHUNK_SIZE, MAX_REPLICATION, MIN_CHUNK_SIZE};
use crate::namespace::{
    ChunkId, Command, Namespace, NamespaceError, NodeId, PlannedChunkRecord, Upload, UploadId,
};
use crate::path::NsPath;
use crate::placement::{self, Spread};

/// Most chunks one file may have (one plan, one confirm).
pub const MAX_CHUNKS_PER_FILE: u64 = 1_000_000;
/// Most uploads open at once (each holds its plan in memory until confirmed,
/// aborted or expired).
pub const MAX_OPEN_UPLOADS: usize = 100_000;

/// A parsed UploadFile request (0 means "the cluster's default").
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// Destination.
    pub path: NsPath,
    /// File size in bytes.
    pub size: u64,
    /// Replication factor, 0 for the default.
    pub replication: u32,
    /// Chunk size, 0 for the default.
    pub chunk_size: u64,
    /// Replace an existing file.
    pub overwrite: bool,
}

/// The cluster's defaults that planning applies.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// Replication factor when the request gives none.
    pub replication: u32,
    /// Chunk size when the request gives none.
    pub chunk_size: u64,
    /// Fixed write quorum (`None`: a majority of the replicas).
    pub write_quorum: Option<u32>,
    /// How long an open upload lives, in milliseconds.
    pub upload_ttl_ms: u64,
}

impl Defaults {
    /// Replicas a chunk needs at confirm.
    pub fn quorum_for(&self, replication: u32) -> u32 {
        crate::config::quorum(self.write_quorum, replication)
    }
}

/// The moment a decision is made at, passed in by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic milliseconds (liveness, reservations).
    pub monotonic_ms: u64,
    /// Wall-clock Unix milliseconds (the expiry recorded in the log).
    pub unix_ms: u64,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The replication factor is above the maximum.
    #[error("replication {0} is above the maximum of {MAX_REPLICATION}")]
    ReplicationTooHigh(u32),
    /// The chunk size is outside the allowed range.
    #[error("chunk size {0} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes (64KiB to 1GiB)")]
    ChunkSize(u64),
    /// The file would need too many chunks.
    #[error(
        "file of {size} bytes needs {chunks} chunks of {chunk_size} bytes; the maximum is {MAX_CHUNKS_PER_FILE}"
    )]
    TooManyChunks {
        /// File size.
        size: u64,
        /// Chunk size.
        chunk_size: u64,
        /// Chunks needed.
        chunks: u64,
    },
    /// Too many uploads are open.
    #[error(
        "{MAX_OPEN_UPLOADS} uploads are open, the most this coordinator keeps; confirm or abort some, or wait for them to expire"
    )]
    TooManyUploads,
    /// Not enough datanodes can take the chunk.
    #[error("need {need} datanodes with free space, {available} available")]
    TooFewNodes {
        /// Replicas wanted.
        need: u32,
        /// Nodes with room.
        available: usize,
    },
    /// The namespace refuses the destination (exists, parent missing, …).
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
}

/// Refuses a chunk size outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
pub fn check_chunk_size(chunk_size: u64) -> Result<(), PlanError> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(PlanError::ChunkSize(chunk_size))
    }
}

/// Chooses `replication` datanodes with room for `bytes` (none of
/// `exclude`) and reserves the space on them.
pub fn place(
    cluster: &mut Cluster,
    ns: &Namespace,
    replication: u32,
    bytes: u64,
    exclude: &[NodeId],
    now_ms: u64,
    rng: &mut impl Rng,
) -> Result<Vec<NodeId>, PlanError> {
    let cands: Vec<_> = cluster
        .placement_candidates(ns, now_ms)
        .into_iter()
        .filter(|c| !exclude.contains(&c.node_id))
        .collect();
    let picked = placement::choose(&cands, replication as usize, bytes, Spread::default(), rng);
    if picked.len() < replication as usize {
        let available = cands.iter().filter(|c| c.free_bytes >= bytes).count();
        return Err(PlanError::TooFewNodes {
            need: replication,
            available,
        });
    }
    Ok(picked
        .into_iter()
        .map(|i| {
            let id = cands[i].node_id.clone();
            cluster.reserve(&id, bytes);
            id
        })
        .collect())
}

/// Plans a whole upload: every chunk placed, its space reserved, and the
/// log entry ([`Command::BeginUpload`]) that makes the plan durable.
/// `new_id` gives the 128 bits of each new upload and chunk id.
pub fn plan_upload(
    cluster: &mut Cluster,
    ns: &Namespace,
    defaults: &Defaults,
    req: &UploadRequest,
    now: Now,
    new_id: &mut impl FnMut() -> u128,
    rng: &mut impl Rng,
) -> Result<Command, PlanError> {
    let replication = if req.replication == 0 {
        defaults.replication
    } else {
        req.replication
    };
    if replication > MAX_REPLICATION {
        return Err(PlanError::ReplicationTooHigh(replication));
    }
    let chunk_size = if req.chunk_size == 0 {
        defaults.chunk_size
    } else {
        req.chunk_size
    };
    check_chunk_size(chunk_size)?;
    let count = req.size.div_ceil(chunk_size);
    if count > MAX_CHUNKS_PER_FILE {
        return Err(PlanError::TooManyChunks {
            size: req.size,
            chunk_size,
            chunks: count,
        });
    }
    if ns.uploads().len() >= MAX_OPEN_UPLOADS {
        return Err(PlanError::TooManyUploads);
    }
    ns.check_upload_target(&req.path, req.overwrite)?;
    let upload_id = UploadId::from_u128(new_id());
    let mut chunks = Vec::with_capacity(count as usize);
    for index in 0..count {
        let offset = index * chunk_size;
        let size = chunk_size.min(req.size - offset);
        let nodes = place(cluster, ns, replication, size, &[], now.monotonic_ms, rng)?;
        chunks.push(PlannedChunkRecord {
            index,
            chunk_id: ChunkId::from_u128(new_id()),
            offset,
            size,
            nodes,
        });
    }
    Ok(Command::BeginUpload(Upload {
        upload_id,
        path: req.path.to_string(),
        size: req.size,
        chunk_size,
        replication,
        write_quorum: defaults.quorum_for(replication),
        overwrite: req.overwrite,
        chunks,
        expires_at_ms: now.unix_ms + defaults.upload_ttl_ms,
    }))
}

/// Re-plans chunk `index` of an open upload on other datanodes (none of
/// `exclude`): a new chunk id (ids are never reused for other bytes) and
/// the log entry ([`Command::ReplanChunk`]) recording it. Returns the
/// chunk as planned before (its offset and size) with the command.
#[allow(clippy::too_many_arguments)]
pub fn plan_replan(
    cluster: &mut Cluster,
    ns: &Namespace,
    upload_id: &UploadId,
    index: u64,
    exclude: &[NodeId],
    now: Now,
    new_id: &mut impl FnMut() -> u128,
    rng: &mut impl Rng,
) -> Result<Option<(PlannedChunkRecord, Command)>, PlanError> {
    let upload = ns.upload(upload_id)?;
    let replication = upload.replication;
    let Some(chunk) = upload.chunks.iter().find(|c| c.index == index).cloned() else {
        return Ok(None);
    };
    let nodes = place(
        cluster,
        ns,
        replication,
        chunk.size,
        exclude,
        now.monotonic_ms,
        rng,
    )?;
    let command = Command::ReplanChunk {
        upload_id: upload_id.clone(),
        index,
        chunk_id: ChunkId::from_u128(new_id()),
        nodes,
    };
    Ok(Some((chunk, command)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::setup;
    use rand::SeedableRng;

    const DEFAULTS: Defaults = Defaults {
        replication: 3,
        chunk_size: 1 << 20,
        write_quorum: None,
        upload_ttl_ms: 60_000,
    };

    fn request(size: u64) -> UploadRequest {
        UploadRequest {
            path: NsPath::parse("/f").unwrap(),
            size,
            replication: 0,
            chunk_size: 0,
            overwrite: false,
        }
    }

    fn ids() -> impl FnMut() -> u128 {
        let mut n = 0u128;
        move || {
            n += 1;
            n
        }
    }

    const NOW: Now = Now {
        monotonic_ms: 10,
        unix_ms: 1_000_000,
    };

    #[test]
    fn an_upload_is_planned_as_one_log_entry_with_time_passed_in() {
        let (ns, mut cluster) = setup(4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let command = plan_upload(
            &mut cluster,
            &ns,
            &DEFAULTS,
            &request((5 << 20) / 2),
            NOW,
            &mut ids(),
            &mut rng,
        )
        .unwrap();
        let Command::BeginUpload(upload) = command else {
            panic!("{command:?}")
        };
        assert_eq!(upload.upload_id, format!("{:032x}", 1));
        assert_eq!((upload.replication, upload.write_quorum), (3, 2));
        // The expiry comes from the clock given, not from one read here.
        assert_eq!(upload.expires_at_ms, 1_000_000 + 60_000);
        let sizes: Vec<u64> = upload.chunks.iter().map(|c| c.size).collect();
        assert_eq!(sizes, [1 << 20, 1 << 20, 1 << 19]);
        for c in &upload.chunks {
            let mut nodes = c.nodes.clone();
            nodes.sort();
            nodes.dedup();
            assert_eq!(nodes.len(), 3, "three distinct nodes: {:?}", c.nodes);
        }
    }

    #[test]
    fn bad_requests_and_too_few_nodes_are_typed_errors() {
        let (ns, mut cluster) = setup(2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut plan = |req: UploadRequest| {
            plan_upload(
                &mut cluster,
                &ns,
                &DEFAULTS,
                &req,
                NOW,
                &mut ids(),
                &mut rng,
            )
        };
        assert_eq!(
            plan(request(10)).unwrap_err(),
            PlanError::TooFewNodes {
                need: 3,
                available: 2
            }
        );
        let mut r = request(10);
        r.replication = MAX_REPLICATION + 1;
        assert_eq!(
            plan(r).unwrap_err(),
            PlanError::ReplicationTooHigh(MAX_REPLICATION + 1)
        );
        let mut r = request(10);
        r.chunk_size = 1000;
        assert_eq!(plan(r).unwrap_err(), PlanError::ChunkSize(1000));
        let mut r = request(u64::MAX / 2);
        r.replication = 1;
        r.chunk_size = MIN_CHUNK_SIZE;
        assert!(matches!(
            plan(r).unwrap_err(),
            PlanError::TooManyChunks { .. }
        ));
    }

    #[test]
    fn a_replan_avoids_the_excluded_nodes_and_takes_a_new_id() {
        let (mut ns, mut cluster) = setup(4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut new_id = ids();
        let begin = plan_upload(
            &mut cluster,
            &ns,
            &DEFAULTS,
            &request(100),
            NOW,
            &mut new_id,
            &mut rng,
        )
        .unwrap();
        ns.apply(&begin).unwrap();
        let Command::BeginUpload(upload) = &begin else {
            unreachable!()
        };
        let old = upload.chunks[0].clone();
        let (chunk, replan) = plan_replan(
            &mut cluster,
            &ns,
            &upload.upload_id,
            0,
            &old.nodes[..1],
            NOW,
            &mut new_id,
            &mut rng,
        )
        .unwrap()
        .unwrap();
        assert_eq!(chunk, old);
        let Command::ReplanChunk {
            chunk_id, nodes, ..
        } = replan
        else {
            panic!("{replan:?}")
        };
        assert_ne!(chunk_id, old.chunk_id);
        assert!(!nodes.contains(&old.nodes[0]), "{nodes:?}");
        assert_eq!(nodes.len(), 3);
        // No such chunk: nothing to plan.
        assert!(
            plan_replan(
                &mut cluster,
                &ns,
                &upload.upload_id,
                9,
                &[],
                NOW,
                &mut new_id,
                &mut rng
            )
            .unwrap()
            .is_none()
        );
    }
}
