//! The dfs wire protocol.
//!
//! The IDL lives beside this crate (`common.proto`, `coordinator.proto`,
//! `datanode.proto`, and `raft.proto` for coordinator-to-coordinator Raft
//! traffic; package `dfs.v1`); `build.rs` compiles it with `protox`, a
//! pure-Rust protobuf compiler, so no system `protoc` is needed, and
//! `tonic-prost-build` generates the messages and every service's clients
//! and servers. `ChunkData.data` is generated as `bytes::Bytes` so chunk frames
//! move through the data path without copies.
//!
//! ```text
//!   client ──UploadFile/ConfirmUpload/DownloadFile──▶ Coordinator
//!     │                                                  ▲
//!     │ PrepareChunkUpload / UploadChunkStream           │ RegisterDataNode
//!     ▼                                                  │ DataNodeHeartbeat
//!   DataNode (primary) ──ReplicateChunk──▶ DataNode (replicas)
//! ```

/// Version 1 of the protocol (`package dfs.v1`).
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::doc_lazy_continuation,
        clippy::large_enum_variant
    )]
    tonic::include_proto!("dfs.v1");
}

pub mod chunk_stream;
pub mod frame;

pub use v1::*;

/// Default size of the data in one `ChunkData` frame: 256 KiB.
pub const DEFAULT_FRAME_BYTES: usize = 256 * 1024;

/// Largest frame a server accepts by default. gRPC messages carry a little
/// overhead beyond the data, so the transport limit is set a bit above it.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// gRPC message size limit that fits the largest frame plus its envelope.
pub const MAX_GRPC_MESSAGE_BYTES: usize = DEFAULT_MAX_FRAME_BYTES + 64 * 1024;

/// Length of a chunk id: 32 lowercase hex characters (128 bits).
pub const CHUNK_ID_LEN: usize = 32;

/// Response metadata naming the leader of a coordinator group (its gRPC
/// URL): on an UNAVAILABLE from a member that cannot answer (the caller
/// retries there), and on every answer a follower forwarded from the leader
/// (the caller may go there directly next time).
pub const LEADER_METADATA: &str = "dfs-leader";

/// Request metadata a coordinator sets on a call it forwards to its
/// group's leader: a forwarded call is never forwarded again.
pub const FORWARDED_METADATA: &str = "dfs-forwarded";

/// Request metadata choosing a read's consistency. Reads (Stat,
/// ListDirectory, DownloadFile) are linearizable unless it is
/// [`STALE_READ`]: then any member answers from what it has applied, which
/// may lag the leader by the entries not yet replicated to it.
/// GetClusterStatus and ListNodes with it are answered by the member asked,
/// as it sees the group (otherwise by the leader).
pub const READ_METADATA: &str = "dfs-read";

/// Request metadata naming one logical write (Mkdir, Delete, Rename): up to
/// 64 characters of `[A-Za-z0-9_-]`, chosen by the caller and sent again
/// with every retry of that write. The coordinator applies a write at most
/// once per id (for minutes), so a retry whose first answer was lost, for
/// example across a leader change, returns the first answer instead of
/// applying twice. ConfirmUpload needs none: its upload id is its key.
pub const REQUEST_ID_METADATA: &str = "dfs-request-id";

/// The value of [`READ_METADATA`] that allows a stale read.
pub const STALE_READ: &str = "stale";

/// Metadata key on a primary's "write quorum not reached" status: the node
/// ids of the replicas that failed (comma-separated), so the client
/// re-plans the chunk without them instead of meeting them again.
pub const FAILED_REPLICAS_METADATA: &str = "dfs-failed-replicas";
