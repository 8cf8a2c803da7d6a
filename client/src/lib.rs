//! The dfs client library: what in-cluster Rust programs (and the `dfs`
//! command-line tool) use to talk to a dfs cluster.
//!
//! ```text
//!   Client ──UploadFile──────────▶ coordinator ──▶ UploadPlan (chunk → nodes)
//!     │  per chunk, N in parallel:
//!     ├──UploadChunkStream──▶ primary ──ReplicateChunk / ReplicateSmallChunks──▶ replicas
//!     └──ConfirmUpload─────────────▶ coordinator  (the file becomes visible atomically)
//!
//!   Concurrent puts sharing one Client send their UploadFile and ConfirmUpload
//!   calls together (UploadFiles, ConfirmUploads) whenever they are waiting at
//!   the same moment.
//!
//!   Client ──DownloadFile────────▶ coordinator ──▶ chunk map (replicas, healthiest first)
//!     └──DownloadChunkStream──▶ first replica; on failure or bad bytes the next one
//! ```
//!
//! Every frame carries a CRC32C that the client computes on upload and checks
//! on download, and every chunk's whole checksum is compared end to end with
//! what the datanodes stored and what the coordinator recorded.
//!
//! # Example
//!
//! ```no_run
//! use dfs_client::{Client, ClientConfig, PutOptions};
//!
//! # async fn demo() -> Result<(), dfs_client::ClientError> {
//! let client = Client::connect(ClientConfig::new("http://127.0.0.1:7000")).await?;
//! client.mkdir("/reports", true).await?;
//! let info = client
//!     .put_file("report.csv".as_ref(), "/reports/2026.csv", &PutOptions::default())
//!     .await?;
//! println!("stored {} bytes in {} chunks", info.size, info.chunk_count);
//! client.get_file("/reports/2026.csv", "copy.csv".as_ref()).await?;
//! for entry in client.list("/reports").await? {
//!     println!("{}", entry.path);
//! }
//! # Ok(()) }
//! ```
//!
//! Cluster state comes back in domain types, with typed ids and states:
//!
//! ```no_run
//! use dfs_client::{Client, ClientConfig, NodeState};
//!
//! # async fn demo() -> Result<(), dfs_client::ClientError> {
//! let client = Client::connect(ClientConfig::new("http://127.0.0.1:7000")).await?;
//! let status = client.status().await?;
//! println!("{} healthy datanodes", status.count(NodeState::Healthy));
//! if status.safe_mode.active {
//!     println!("safe mode: {}", status.safe_mode.reason);
//! }
//! let map = client.chunk_map("/reports/2026.csv").await?;
//! for chunk in &map.chunks {
//!     let on: Vec<&str> = chunk.replicas.iter().map(|r| r.node_id.as_str()).collect();
//!     println!("#{} {} crc32c {:08x} on {}", chunk.index, chunk.chunk_id, chunk.checksum, on.join(","));
//! }
//! # Ok(()) }
//! ```

mod batch;
mod client;
mod coordinators;
mod error;
mod get;
mod put;
mod source;
mod types;

pub use client::{Client, ClientConfig, ProgressFn};
pub use dfs_common::id::{ChunkId, ClusterId, InvalidId, NodeId, NodeState, UploadId};
pub use error::ClientError;
pub use put::PutOptions;
pub use types::{
    ChunkLocation, ChunkMap, ClusterStatus, CoordinatorMember, DeleteBudget, DeleteSummary,
    FileInfo, FileKind, NodeStatus, Replica, ReportedHealth, SafeMode,
};
