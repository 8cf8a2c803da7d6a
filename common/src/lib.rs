//! Plumbing shared by the dfs services and tools.
//!
//! - [`id`]: the typed ids (`ChunkId`, `NodeId`, `UploadId`, `ClusterId`),
//!   each with one validation rule, their one generator, and `NodeState`.
//! - [`http`]: the `/metrics`, `/healthz` and `/readyz` endpoint every service
//!   exposes for Prometheus and Kubernetes probes.
//! - [`metrics`]: registering metrics with their series at 0.
//! - [`size`]: byte sizes with suffixes (`64MiB`) for flags.
//! - [`transport`]: gRPC transport settings (TCP_NODELAY, message limits) so
//!   every server and client of the data path is tuned the same way.
//! - [`telemetry`]: tracing set-up for binaries.
//! - [`shutdown`]: the SIGTERM / Ctrl-C future servers drain on.
//! - [`bootstrap`]: the one start-up and shutdown every server binary uses.
//! - [`durable`]: directories and names made durable (directory fsync).

pub mod bootstrap;
pub mod durable;
pub mod http;
pub mod id;
pub mod metrics;
pub mod pki;
pub mod shutdown;
pub mod size;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod token;
pub mod transport;
pub mod watched;
