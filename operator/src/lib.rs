//! The dfs operator: reconciles `DfsCluster` resources (`dfs.io/v1alpha1`)
//! into a running, safe dfs cluster.
//!
//! ```text
//!   watch DfsCluster + owned objects ──▶ controller::reconcile
//!     read      DfsCluster, Nodes, Pods, coordinator status (coordinator::Coordinator)
//!     validate  controller::validate (pure)          ── invalid: Warning event, await change
//!     build     controller::build (pure)             ── every desired object
//!     apply     controller::apply (server-side apply, one field manager, prune)
//!     act       controller::roll (one pod at a time behind the coordinator's gate),
//!               controller::nodes (datanode state → Node label)
//!     status    controller::status (written only when it changed)
//!
//!   watch PodCertificateRequests ──▶ controller::signer (datanode pod
//!     certificates: verify pod → DaemonSet → DfsCluster, sign, write status)
//! ```
//!
//! - [`crd`]: the resource types; `dfs-operator crd` prints the CRD.
//! - [`controller`]: the reconcile pipeline and the Controller runtime.
//! - [`coordinator`]: the coordinator as the operator sees it (a trait, with a
//!   gRPC implementation), so tests can fake it.
//! - [`leader`]: leader election on a coordination.k8s.io Lease.
//! - [`metrics`]: the operator's Prometheus metrics.

pub mod controller;
pub mod coordinator;
pub mod crd;
pub mod leader;
pub mod metrics;
