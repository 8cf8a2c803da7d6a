//! The coordinator as the operator sees it: cluster facts (capacity,
//! under-replicated chunks, each datanode's state) and the maintenance switch
//! used before restarting a datanode. [`Coordinator`] is a trait so the
//! controller scenarios can fake it; [`GrpcCoordinator`] talks to the real
//! service through the dfs client library (the same one in-cluster programs
//! use), whose domain types are converted here into what the controller needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_client::{Client, ClientConfig, ClientError, NodeId};
use dfs_common::tls::{Security, Tls};
use futures::future::BoxFuture;

/// A datanode's state: the one enum every dfs crate shares.
pub use dfs_client::NodeState;

/// One datanode as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatanodeFact {
    /// The datanode's id.
    pub node_id: String,
    /// Kubernetes node name it registered with (`topology.host`).
    pub host: String,
    /// Its state (`None`: a state this operator build does not know).
    pub state: Option<NodeState>,
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
    /// The members of the coordinator group, as its leader reports them
    /// (empty for a single coordinator).
    pub coordinators: Vec<CoordinatorFact>,
}

/// One member of the coordinator group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorFact {
    /// Raft id (pod ordinal + 1).
    pub id: u64,
    /// "leader", "follower", "candidate", "learner" or "unknown".
    pub role: String,
    /// Entries its log lacks behind the leader's.
    pub lag: u64,
    /// Whether it votes (false: a learner).
    pub voter: bool,
    /// It answers from another volume than the one the group pinned (it
    /// came back empty): it must be removed and added again.
    pub on_new_volume: bool,
}

impl ClusterFacts {
    /// The datanode registered from Kubernetes node `host`.
    pub fn node_on(&self, host: &str) -> Option<&DatanodeFact> {
        self.nodes.iter().find(|n| n.host == host)
    }
}

impl From<dfs_client::ClusterStatus> for ClusterFacts {
    fn from(s: dfs_client::ClusterStatus) -> Self {
        Self {
            nodes: s
                .nodes
                .into_iter()
                .map(|n| DatanodeFact {
                    host: n.host,
                    state: n.state,
                    node_id: n.node_id.into_string(),
                })
                .collect(),
            under_replicated_chunks: s.under_replicated_chunks,
            missing_chunks: s.missing_chunks,
            capacity_total_bytes: s.capacity_total_bytes,
            capacity_used_bytes: s.capacity_used_bytes,
            coordinators: s
                .coordinators
                .into_iter()
                .map(|m| CoordinatorFact {
                    on_new_volume: m.on_new_volume(),
                    id: m.id,
                    role: m.role,
                    lag: m.lag,
                    voter: m.voter,
                })
                .collect(),
        }
    }
}

/// Why a call to a coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The coordinator could not be reached (or its URL is not usable).
    #[error("failed to connect to the coordinator at {url}: {source}")]
    Connect {
        /// Coordinator URL.
        url: String,
        /// Cause.
        source: ClientError,
    },
    /// The call failed (unreachable, timed out, refused).
    #[error("failed to call {method} on {url}: {source}")]
    Call {
        /// RPC name.
        method: &'static str,
        /// Coordinator URL.
        url: String,
        /// What the client library reported.
        source: ClientError,
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
    /// Adds coordinator `id` at `address` to the group as a learner.
    fn add_coordinator<'a>(
        &'a self,
        url: &'a str,
        id: u64,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>>;
    /// Makes exactly `voter_ids` the group's voters.
    fn set_coordinator_voters<'a>(
        &'a self,
        url: &'a str,
        voter_ids: &'a [u64],
    ) -> BoxFuture<'a, Result<(), CoordinatorError>>;
    /// The TLS identity to present to the coordinators at `url` (`None`:
    /// plain text). Each cluster has its own CA, so each its own identity;
    /// a new one replaces the connection made with the old.
    fn use_identity(&self, url: &str, tls: Option<Arc<Tls>>) {
        let _ = (url, tls);
    }
}

/// A client and the identity it was made with.
type Connected = (Client, Option<Arc<Tls>>);

/// The real coordinator through the client library: one [`Client`] per URL,
/// connected on first use and kept (a failed connect is retried on the next
/// reconcile).
#[derive(Debug)]
pub struct GrpcCoordinator {
    timeout: Duration,
    /// Per cluster URL: the client and the identity it was made with.
    clients: Mutex<HashMap<String, Connected>>,
    /// Per cluster URL: the identity to present.
    identities: Mutex<HashMap<String, Arc<Tls>>>,
    redirect: Option<String>,
}

impl GrpcCoordinator {
    /// A client whose calls time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            clients: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
            redirect: None,
        }
    }

    /// Sends every call to `url` (when set) instead of the cluster's own
    /// coordinator URL.
    pub fn redirect(mut self, url: Option<String>) -> Self {
        self.redirect = url;
        self
    }

    async fn client(&self, cluster_url: &str) -> Result<Client, CoordinatorError> {
        let identity = self
            .identities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster_url)
            .cloned();
        let same = |a: &Option<Arc<Tls>>| match (a, &identity) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if let Some((c, with)) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster_url)
            && same(with)
        {
            return Ok(c.clone());
        }
        let url = self.redirect.as_deref().unwrap_or(cluster_url);
        let mut config = ClientConfig::new(url);
        config.connect_timeout = self.timeout;
        config.request_timeout = self.timeout;
        if let Some(tls) = &identity {
            config.security = Security::tls(tls.clone());
        }
        let client = Client::connect(config)
            .await
            .map_err(|source| CoordinatorError::Connect {
                url: url.to_string(),
                source,
            })?;
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster_url.to_string(), (client.clone(), identity));
        Ok(client)
    }
}

impl Coordinator for GrpcCoordinator {
    fn cluster_status<'a>(
        &'a self,
        url: &'a str,
    ) -> BoxFuture<'a, Result<ClusterFacts, CoordinatorError>> {
        Box::pin(async move {
            let status = self.client(url).await?.status().await.map_err(|source| {
                CoordinatorError::Call {
                    method: "GetClusterStatus",
                    url: url.to_string(),
                    source,
                }
            })?;
            Ok(status.into())
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
            let call_error = |source| CoordinatorError::Call {
                method: "SetNodeMaintenance",
                url: url.to_string(),
                source,
            };
            let node_id = NodeId::parse(node_id)
                .map_err(|e| call_error(ClientError::InvalidArgument(e.to_string())))?;
            self.client(url)
                .await?
                .set_maintenance(&node_id, enabled, duration)
                .await
                .map_err(call_error)?;
            Ok(())
        })
    }

    fn add_coordinator<'a>(
        &'a self,
        url: &'a str,
        id: u64,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.client(url)
                .await?
                .add_coordinator(id, address)
                .await
                .map_err(|source| CoordinatorError::Call {
                    method: "AddCoordinator",
                    url: url.to_string(),
                    source,
                })?;
            Ok(())
        })
    }

    fn set_coordinator_voters<'a>(
        &'a self,
        url: &'a str,
        voter_ids: &'a [u64],
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.client(url)
                .await?
                .set_coordinator_voters(voter_ids)
                .await
                .map_err(|source| CoordinatorError::Call {
                    method: "SetCoordinatorVoters",
                    url: url.to_string(),
                    source,
                })?;
            Ok(())
        })
    }

    fn use_identity(&self, url: &str, tls: Option<Arc<Tls>>) {
        let mut ids = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        match tls {
            Some(t) => {
                ids.insert(url.to_string(), t);
            }
            None => {
                ids.remove(url);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_status_converts_to_facts() {
        let status = dfs_client::ClusterStatus {
            cluster_id: dfs_client::ClusterId::random(),
            nodes: vec![dfs_client::NodeStatus {
                node_id: NodeId::parse("n1").unwrap(),
                address: String::new(),
                state: Some(NodeState::Full),
                reported_health: None,
                zone: String::new(),
                rack: String::new(),
                host: "node-a".into(),
                total_bytes: 0,
                used_bytes: 0,
                free_bytes: 0,
                chunk_count: 0,
                quarantined_chunks: 0,
                unavailable_chunks: 0,
                last_heartbeat_unix_ms: 0,
                safe_to_remove: false,
                maintenance_until_unix_ms: 0,
            }],
            files: 0,
            directories: 0,
            chunks: 0,
            under_replicated_chunks: 4,
            missing_chunks: 0,
            over_replicated_chunks: 0,
            capacity_total_bytes: 0,
            capacity_used_bytes: 0,
            repair_bytes_remaining: 0,
            repair_eta_seconds: 0,
            replication: 3,
            safe_mode: Default::default(),
            delete_budget: Default::default(),
            corrupt_replicas: 0,
            coordinators: Vec::new(),
        };
        let facts = ClusterFacts::from(status);
        assert_eq!(
            facts.node_on("node-a").unwrap().state,
            Some(NodeState::Full)
        );
        assert_eq!(facts.node_on("node-a").unwrap().node_id, "n1");
        assert_eq!(facts.under_replicated_chunks, 4);
    }
}
