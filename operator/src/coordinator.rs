//! The coordinator as the operator sees it: cluster facts (capacity,
//! under-replicated chunks, each datanode's state) and the maintenance switch
//! used before restarting a datanode. [`Coordinator`] is a trait so the
//! controller scenarios can fake it; [`GrpcCoordinator`] talks to the real
//! service through the generated client. Wire types are converted here and
//! never reach the controller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::{GetClusterStatusRequest, NodeState as WireState, SetNodeMaintenanceRequest};
use futures::future::BoxFuture;
use tonic::transport::Channel;

/// A datanode's state as the coordinator reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeating, accepting chunks.
    Healthy,
    /// Heartbeating, no room.
    Full,
    /// Silent for a short while.
    Suspect,
    /// Silent past the dead-after interval.
    Dead,
    /// Being decommissioned.
    Draining,
    /// Drained.
    Decommissioned,
    /// In maintenance (planned restart).
    Maintenance,
    /// Not known.
    Unknown,
}

impl NodeState {
    /// The wire spelling without prefix, as shown in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "HEALTHY",
            Self::Full => "FULL",
            Self::Suspect => "SUSPECT",
            Self::Dead => "DEAD",
            Self::Draining => "DRAINING",
            Self::Decommissioned => "DECOMMISSIONED",
            Self::Maintenance => "MAINTENANCE",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl From<i32> for NodeState {
    fn from(v: i32) -> Self {
        match WireState::try_from(v) {
            Ok(WireState::Healthy) => Self::Healthy,
            Ok(WireState::Full) => Self::Full,
            Ok(WireState::Suspect) => Self::Suspect,
            Ok(WireState::Dead) => Self::Dead,
            Ok(WireState::Draining) => Self::Draining,
            Ok(WireState::Decommissioned) => Self::Decommissioned,
            Ok(WireState::Maintenance) => Self::Maintenance,
            Ok(WireState::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

/// One datanode as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatanodeFact {
    /// The datanode's id.
    pub node_id: String,
    /// Kubernetes node name it registered with (`topology.host`).
    pub host: String,
    /// Its state.
    pub state: NodeState,
}

/// The coordinator's health summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Every known datanode.
    pub nodes: Vec<DatanodeFact>,
    /// Chunks with fewer live replicas than their factor.
    pub under_replicated_chunks: u64,
    /// Chunks with no live replica.
    pub missing_chunks: u64,
    /// Usable bytes.
    pub capacity_total_bytes: u64,
    /// Used bytes.
    pub capacity_used_bytes: u64,
}

impl ClusterFacts {
    /// The datanode registered from Kubernetes node `host`.
    pub fn node_on(&self, host: &str) -> Option<&DatanodeFact> {
        self.nodes.iter().find(|n| n.host == host)
    }
}

impl From<dfs_proto::ClusterStatus> for ClusterFacts {
    fn from(s: dfs_proto::ClusterStatus) -> Self {
        Self {
            nodes: s
                .nodes
                .into_iter()
                .map(|n| DatanodeFact {
                    host: n.topology.map(|t| t.host).unwrap_or_default(),
                    state: NodeState::from(n.state),
                    node_id: n.node_id,
                })
                .collect(),
            under_replicated_chunks: s.under_replicated_chunks,
            missing_chunks: s.missing_chunks,
            capacity_total_bytes: s.capacity_total_bytes,
            capacity_used_bytes: s.capacity_used_bytes,
        }
    }
}

/// Why a call to a coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The URL is not usable.
    #[error("failed to build a channel to {url}: {source}")]
    Connect {
        /// Coordinator URL.
        url: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// The RPC failed (unreachable, timed out, refused).
    #[error("failed to call {method} on {url}: {status}")]
    Call {
        /// RPC name.
        method: &'static str,
        /// Coordinator URL.
        url: String,
        /// gRPC status.
        status: Box<tonic::Status>,
    },
}

/// What the operator asks of a cluster's coordinator, addressed by its URL.
pub trait Coordinator: Send + Sync {
    /// The cluster's health summary.
    fn cluster_status<'a>(
        &'a self,
        url: &'a str,
    ) -> BoxFuture<'a, Result<ClusterFacts, CoordinatorError>>;
    /// Puts datanode `node_id` into maintenance (or takes it out).
    fn set_maintenance<'a>(
        &'a self,
        url: &'a str,
        node_id: &'a str,
        enabled: bool,
        duration: Duration,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>>;
}

/// The real coordinator over gRPC, one lazily connected channel per URL.
#[derive(Debug)]
pub struct GrpcCoordinator {
    timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcCoordinator {
    /// A client whose calls time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, url: &str) -> Result<CoordinatorClient<Channel>, CoordinatorError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(url) {
            return Ok(CoordinatorClient::new(c.clone()));
        }
        let channel = dfs_common::transport::endpoint(url, self.timeout)
            .map(|e| e.timeout(self.timeout).connect_lazy())
            .map_err(|source| CoordinatorError::Connect {
                url: url.to_string(),
                source,
            })?;
        channels.insert(url.to_string(), channel.clone());
        Ok(CoordinatorClient::new(channel))
    }
}

impl Coordinator for GrpcCoordinator {
    fn cluster_status<'a>(
        &'a self,
        url: &'a str,
    ) -> BoxFuture<'a, Result<ClusterFacts, CoordinatorError>> {
        Box::pin(async move {
            let mut client = self.client(url)?;
            let status = client
                .get_cluster_status(GetClusterStatusRequest {})
                .await
                .map_err(|status| CoordinatorError::Call {
                    method: "GetClusterStatus",
                    url: url.to_string(),
                    status: Box::new(status),
                })?;
            Ok(status.into_inner().into())
        })
    }

    fn set_maintenance<'a>(
        &'a self,
        url: &'a str,
        node_id: &'a str,
        enabled: bool,
        duration: Duration,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        Box::pin(async move {
            let mut client = self.client(url)?;
            client
                .set_node_maintenance(SetNodeMaintenanceRequest {
                    node_id: node_id.to_string(),
                    enabled,
                    duration_seconds: duration.as_secs(),
                })
                .await
                .map_err(|status| CoordinatorError::Call {
                    method: "SetNodeMaintenance",
                    url: url.to_string(),
                    status: Box::new(status),
                })?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_status_converts() {
        let facts = ClusterFacts::from(dfs_proto::ClusterStatus {
            nodes: vec![dfs_proto::DataNodeStatus {
                node_id: "n1".into(),
                state: WireState::Full as i32,
                topology: Some(dfs_proto::Topology {
                    host: "node-a".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            under_replicated_chunks: 4,
            ..Default::default()
        });
        assert_eq!(facts.node_on("node-a").unwrap().state, NodeState::Full);
        assert_eq!(facts.under_replicated_chunks, 4);
        assert_eq!(NodeState::from(99), NodeState::Unknown);
    }
}
