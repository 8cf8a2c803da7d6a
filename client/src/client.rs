//! The [`Client`]: a connection to a coordinator plus a cache of channels to
//! the datanodes it names, and the namespace and admin calls.

use std::sync::Arc;
use std::time::Duration;

use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::{
    ConfirmUploadRequest, ConfirmUploadResponse, DecommissionNodeRequest, DeleteRequest,
    DownloadFileRequest, GetClusterStatusRequest, ListDirectoryRequest, ListNodesRequest,
    MkdirRequest, RenameRequest, SetNodeMaintenanceRequest, StatRequest, UploadFileRequest,
    UploadPlan,
};
use tonic::transport::Channel;

use crate::batch::{self, Batcher};
use crate::coordinators::{Bearer, Coord, Coordinators};
use crate::error::ClientError;
use dfs_common::id::NodeId;

use crate::types::{ChunkMap, ClusterStatus, DeleteSummary, FileInfo, NodeStatus};

/// Called with the number of bytes transferred since the previous call, so
/// callers can draw progress (the CLI's progress bar).
pub type ProgressFn = Arc<dyn Fn(u64) + Send + Sync>;

/// The servers a client takes as its coordinators: with TLS, only those
/// whose certificate names a coordinator (a client certificate of the same
/// CA, valid for serving too, cannot pose as one).
const COORDINATOR: &[dfs_common::tls::Kind] = &[dfs_common::tls::Kind::Coordinator];

/// How to reach a cluster and how hard to try.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Coordinator gRPC endpoint, e.g. `http://127.0.0.1:7000`; for a
    /// coordinator group, several comma-separated (the client goes to the
    /// leader).
    pub coordinator: String,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Deadline of each unary call to the coordinator.
    pub request_timeout: Duration,
    /// Longest silence tolerated on a chunk stream (no ack, no frame) before
    /// the transfer is abandoned and retried elsewhere. Guards against a
    /// stalled datanode hanging the client forever.
    pub stream_idle_timeout: Duration,
    /// Chunks transferred in parallel by one put or get.
    pub concurrency: usize,
    /// Data bytes per frame (256 KiB by default).
    pub frame_bytes: usize,
    /// Attempts per chunk upload (each re-planned on other nodes).
    pub upload_attempts: u32,
    /// Plan and confirm the small files of concurrent puts in shared calls
    /// (UploadFiles, ConfirmUploads). Off sends one UploadFile and one
    /// ConfirmUpload per file (to measure the difference).
    pub batch_small_files: bool,
    /// Reads (stat, list, chunk maps) answered by whichever coordinator of
    /// a group the client is connected to, from what it has applied. Off
    /// (the default), a read is linearizable: the leader answers it after
    /// a quorum confirmed it still leads, so it sees every write
    /// acknowledged before it was sent.
    pub stale_reads: bool,
    /// How long a call keeps trying the other members of a coordinator
    /// group while the one it went to is unavailable (a leader change takes
    /// one or two seconds). Unused with a single coordinator.
    pub failover_timeout: Duration,
    /// The credentials presented on `https://` endpoints (coordinators and
    /// datanodes of a cluster with TLS on): a client identity loaded with
    /// [`dfs_common::tls::Tls::load`]. Plain text (`http://`) needs none.
    pub security: dfs_common::tls::Security,
    /// A bearer token the coordinator verifies (`--client-tokens`), sent
    /// on every coordinator call as `authorization: Bearer <token>`: the
    /// calls then have the path roles of the user it names rather than
    /// those of the client certificate (one certificate serving many
    /// users). Needs TLS.
    pub bearer_token: Option<String>,
}

impl ClientConfig {
    /// Defaults for `coordinator`: 5 s connect, 30 s calls, 30 s stream
    /// idle timeout, 4 parallel chunks, 256 KiB frames, 4 attempts, small
    /// files batched.
    pub fn new(coordinator: impl Into<String>) -> Self {
        ClientConfig {
            coordinator: coordinator.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(30),
            concurrency: 4,
            frame_bytes: dfs_proto::DEFAULT_FRAME_BYTES,
            upload_attempts: 4,
            batch_small_files: true,
            stale_reads: false,
            failover_timeout: Duration::from_secs(15),
            security: dfs_common::tls::Security::insecure(),
            bearer_token: None,
        }
    }

    /// The bearer token as call metadata (`None`: no token).
    fn bearer(&self) -> Result<Bearer, ClientError> {
        match &self.bearer_token {
            None => Ok(Bearer(None)),
            // A token over plain text would be readable on the wire, and a
            // plain-text coordinator verifies none.
            Some(_) if !self.security.is_tls() => Err(ClientError::InvalidArgument(
                "a bearer token needs TLS credentials (an https:// coordinator)".into(),
            )),
            Some(t) => format!("Bearer {}", t.trim())
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| {
                    ClientError::InvalidArgument(
                        "the bearer token is not a valid header value".into(),
                    )
                }),
        }
    }
}

/// A connection to a dfs cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) config: ClientConfig,
    pub(crate) coordinators: Coordinators,
    /// UploadFile calls of concurrent puts, sent together.
    pub(crate) plans: Batcher<UploadFileRequest, UploadPlan>,
    /// ConfirmUpload calls of concurrent puts, sent together.
    pub(crate) confirms: Batcher<ConfirmUploadRequest, ConfirmUploadResponse>,
    /// By node id and address: with TLS a channel admits only the datanode
    /// of that node id, so one address under two ids needs two channels.
    datanodes: Arc<dfs_common::transport::DatanodeChannels>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("coordinator", &self.config.coordinator)
            .finish()
    }
}

impl Client {
    /// Connects to the coordinator; fails fast, naming the address, when it
    /// cannot be reached. `config.coordinator` may list several members of
    /// a coordinator group, comma-separated: the first that answers is
    /// asked for its group, and the client goes to the leader it names
    /// (writes are refused elsewhere), keeping the answering member when
    /// there is no group or no leader yet.
    pub async fn connect(mut config: ClientConfig) -> Result<Self, ClientError> {
        let candidates = dfs_common::transport::coordinator_urls(&config.coordinator);
        let mut last = None;
        for address in &candidates {
            let coordinator = match Self::connect_one(&config, address).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            // A follower forwards the call to its leader and names it in
            // the answer's metadata; an older member answers itself and
            // names the leader among the group's members.
            let leader = coordinator
                .clone()
                .get_cluster_status(GetClusterStatusRequest {})
                .await
                .ok()
                .and_then(|s| {
                    let hint = s
                        .metadata()
                        .get(dfs_proto::LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    hint.or_else(|| {
                        s.into_inner()
                            .coordinators
                            .into_iter()
                            .find(|m| m.role == "leader" && !m.answering)
                            .map(|m| m.address)
                    })
                })
                .filter(|leader| leader != address);
            if let Some(leader) = leader
                && let Ok(c) = Self::connect_one(&config, &leader).await
            {
                config.coordinator = leader;
                return Ok(Self::with_coordinator(config, c, &candidates));
            }
            config.coordinator = address.clone();
            return Ok(Self::with_coordinator(config, coordinator, &candidates));
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidEndpoint {
            address: config.coordinator.clone(),
            reason: "no coordinator address given".into(),
        }))
    }

    async fn connect_one(config: &ClientConfig, address: &str) -> Result<Coord, ClientError> {
        let endpoint = dfs_common::transport::endpoint(address, config.connect_timeout)
            .map_err(|e| ClientError::InvalidEndpoint {
                address: address.to_string(),
                reason: e.to_string(),
            })?
            .timeout(config.request_timeout);
        let channel = dfs_common::transport::connect_to(endpoint, &config.security, COORDINATOR)
            .await
            .map_err(|e| match e {
                e @ (dfs_common::transport::ChannelError::NoCredentials(_)
                | dfs_common::transport::ChannelError::PlainTextPeer) => {
                    ClientError::InvalidEndpoint {
                        address: address.to_string(),
                        reason: e.to_string(),
                    }
                }
                e => ClientError::CoordinatorUnreachable {
                    address: address.to_string(),
                    reason: source_chain(&e),
                },
            })?;
        Ok(coordinator_client(channel, config.bearer()?))
    }

    /// A client calling `coordinator` (at `config.coordinator`) first,
    /// and failing over to the other members of `candidates`.
    fn with_coordinator(config: ClientConfig, coordinator: Coord, candidates: &[String]) -> Client {
        let mut members = vec![(config.coordinator.clone(), coordinator)];
        for url in candidates {
            if *url == config.coordinator {
                continue;
            }
            // Lazily: a member that is down now may be the leader later.
            if let Ok(endpoint) = dfs_common::transport::endpoint(url, config.connect_timeout)
                && let Ok(channel) = dfs_common::transport::connect_lazy_to(
                    endpoint.timeout(config.request_timeout),
                    &config.security,
                    COORDINATOR,
                )
            {
                members.push((
                    url.clone(),
                    coordinator_client(channel, config.bearer().unwrap_or_default()),
                ));
            }
        }
        let coordinators = Coordinators::new(members, 0, config.failover_timeout);
        Client {
            plans: batch::coordinator_batcher(coordinators.clone()),
            confirms: batch::coordinator_batcher(coordinators.clone()),
            datanodes: Arc::new(dfs_common::transport::DatanodeChannels::new(
                config.security.clone(),
                config.connect_timeout,
            )),
            coordinators,
            config,
        }
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The one lazily connected HTTP/2 channel to the datanode `node_id` at
    /// `address`, shared by every stream to it.
    pub(crate) fn datanode_channel(&self, node_id: &str, address: &str) -> Result<Channel, String> {
        // Chunk bytes go only to the datanode the map or plan names (with
        // TLS: its certificate names that node id), whatever address it
        // gives: another datanode's identity cannot stand in for it. The
        // cache is bounded: the addresses come from the coordinator.
        self.datanodes
            .channel(node_id, address)
            .map_err(|e| format!("invalid datanode address {address:?}: {e}"))
    }

    /// A read request, marked stale when the configuration allows it.
    fn read<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if self.config.stale_reads {
            req.metadata_mut().insert(
                dfs_proto::READ_METADATA,
                tonic::metadata::MetadataValue::from_static(dfs_proto::STALE_READ),
            );
        }
        req
    }

    /// Describes one path.
    pub async fn stat(&self, path: &str) -> Result<FileInfo, ClientError> {
        self.coordinators
            .call(|mut c| {
                let request = self.read(StatRequest { path: path.into() });
                async move { c.stat(request).await }
            })
            .await
            .map_err(|s| ClientError::from_status(&self.config.coordinator, "Stat", path, s))?
            .into_inner()
            .try_into()
    }

    /// Creates a directory; with `parents`, also its missing parents (and an
    /// existing directory is not an error).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<FileInfo, ClientError> {
        // One id for every attempt: a retry after a lost answer is not
        // applied twice (see crate::coordinators).
        let request_id = dfs_common::id::random_hex_id();
        self.coordinators
            .call(|mut c| {
                let request = with_request_id(
                    MkdirRequest {
                        path: path.into(),
                        parents,
                    },
                    &request_id,
                );
                async move { c.mkdir(request).await }
            })
            .await
            .map_err(|s| ClientError::from_status(&self.config.coordinator, "Mkdir", path, s))?
            .into_inner()
            .try_into()
    }

    /// Lists a directory (every page), in name order.
    pub async fn list(&self, path: &str) -> Result<Vec<FileInfo>, ClientError> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .coordinators
                .call(|mut c| {
                    let request = self.read(ListDirectoryRequest {
                        path: path.into(),
                        page_token: page_token.clone(),
                        page_size: 0,
                    });
                    async move { c.list_directory(request).await }
                })
                .await
                .map_err(|s| {
                    ClientError::from_status(&self.config.coordinator, "ListDirectory", path, s)
                })?
                .into_inner();
            for entry in page.entries {
                entries.push(entry.try_into()?);
            }
            if page.next_page_token.is_empty() {
                return Ok(entries);
            }
            page_token = page.next_page_token;
        }
    }

    /// Deletes a file, or a directory (`recursive` for a non-empty one).
    pub async fn delete(&self, path: &str, recursive: bool) -> Result<DeleteSummary, ClientError> {
        // One id for every attempt: a retry after a lost answer is not
        // applied twice (see crate::coordinators).
        let request_id = dfs_common::id::random_hex_id();
        self.coordinators
            .call(|mut c| {
                let request = with_request_id(
                    DeleteRequest {
                        path: path.into(),
                        recursive,
                    },
                    &request_id,
                );
                async move { c.delete(request).await }
            })
            .await
            .map(|r| r.into_inner().into())
            .map_err(|s| ClientError::from_status(&self.config.coordinator, "Delete", path, s))
    }

    /// Renames or moves `source` to `destination` atomically.
    pub async fn rename(&self, source: &str, destination: &str) -> Result<FileInfo, ClientError> {
        // One id for every attempt: a retry after a lost answer is not
        // applied twice (see crate::coordinators).
        let request_id = dfs_common::id::random_hex_id();
        self.coordinators
            .call(|mut c| {
                let request = with_request_id(
                    RenameRequest {
                        source: source.into(),
                        destination: destination.into(),
                    },
                    &request_id,
                );
                async move { c.rename(request).await }
            })
            .await
            .map_err(|s| {
                let path = if s.code() == tonic::Code::AlreadyExists {
                    destination
                } else {
                    source
                };
                ClientError::from_status(&self.config.coordinator, "Rename", path, s)
            })?
            .into_inner()
            .try_into()
    }

    /// The chunk map of a file: every chunk with its checksum and replicas.
    pub async fn chunk_map(&self, path: &str) -> Result<ChunkMap, ClientError> {
        self.coordinators
            .call(|mut c| {
                let request = self.read(DownloadFileRequest { path: path.into() });
                async move { c.download_file(request).await }
            })
            .await
            .map_err(|s| {
                ClientError::from_status(&self.config.coordinator, "DownloadFile", path, s)
            })?
            .into_inner()
            .try_into()
    }

    /// Every datanode the coordinator knows, with its state.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, ClientError> {
        self.coordinators
            .call(|mut c| {
                let request = ListNodesRequest {};
                async move { c.list_nodes(request).await }
            })
            .await
            .map_err(|s| ClientError::rpc(&self.config.coordinator, "ListNodes", s))?
            .into_inner()
            .nodes
            .into_iter()
            .map(NodeStatus::try_from)
            .collect()
    }

    /// Health summary of the cluster.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.coordinators
            .call(|mut c| {
                let request = GetClusterStatusRequest {};
                async move { c.get_cluster_status(request).await }
            })
            .await
            .map_err(|s| ClientError::rpc(&self.config.coordinator, "GetClusterStatus", s))?
            .into_inner()
            .try_into()
    }

    /// Starts draining a datanode (or cancels it).
    pub async fn decommission(
        &self,
        node_id: &NodeId,
        cancel: bool,
    ) -> Result<NodeStatus, ClientError> {
        self.coordinators
            .call(|mut c| {
                let request = DecommissionNodeRequest {
                    node_id: node_id.to_string(),
                    cancel,
                };
                async move { c.decommission_node(request).await }
            })
            .await
            .map_err(|s| ClientError::rpc(&self.config.coordinator, "DecommissionNode", s))?
            .into_inner()
            .try_into()
    }

    /// Enters (`true`) or leaves (`false`) safe mode (admin): while on, the
    /// coordinator deletes and repairs nothing. Returns the status after.
    pub async fn set_safe_mode(&self, enabled: bool) -> Result<ClusterStatus, ClientError> {
        self.coordinators
            .call(|mut c| {
                let request = dfs_proto::SetSafeModeRequest { enabled };
                async move { c.set_safe_mode(request).await }
            })
            .await
            .map_err(|s| ClientError::rpc(&self.config.coordinator, "SetSafeMode", s))?
            .into_inner()
            .try_into()
    }

    /// Adds coordinator `id`, reachable at `address`, to the group as a
    /// learner (admin): it receives the log and does not vote until
    /// [`Client::set_coordinator_voters`] promotes it.
    pub async fn add_coordinator(
        &self,
        id: u64,
        address: &str,
    ) -> Result<ClusterStatus, ClientError> {
        self.coordinators
            .call(|mut c| {
                let request = dfs_proto::AddCoordinatorRequest {
                    id,
                    address: address.to_string(),
                };
                async move { c.add_coordinator(request).await }
            })
            .await
            .map_err(|s| ClientError::rpc(&self.config.coordinator, "AddCoordinator", s))?
            .into_inner()
            .try_into()
    }

    /// Makes exactly `voter_ids` the group's voters (admin): learners among
    /// them are promoted, voters not among them leave the group. One
    /// membership change.
    pub async fn set_coordinator_voters(
        &self,
        voter_ids: &[u64],
    ) -> Result<ClusterStatus, ClientError> {
        self.coordinators
            .call(|mut c| {
                let request = dfs_proto::SetCoordinatorVotersRequest {
                    voter_ids: voter_ids.to_vec(),
                };
                async move { c.set_coordinator_voters(request).await }
            })
            .await
            .map_err(|s| ClientError::rpc(&self.config.coordinator, "SetCoordinatorVoters", s))?
            .into_inner()
            .try_into()
    }

    /// Puts a datanode into (or out of) maintenance for at most `duration`.
    pub async fn set_maintenance(
        &self,
        node_id: &NodeId,
        enabled: bool,
        duration: Duration,
    ) -> Result<NodeStatus, ClientError> {
        self.coordinators
            .call(|mut c| {
                let request = SetNodeMaintenanceRequest {
                    node_id: node_id.to_string(),
                    enabled,
                    duration_seconds: duration.as_secs(),
                };
                async move { c.set_node_maintenance(request).await }
            })
            .await
            .map_err(|s| ClientError::rpc(&self.config.coordinator, "SetNodeMaintenance", s))?
            .into_inner()
            .try_into()
    }
}

/// A coordinator client with the message limits every call needs.
fn coordinator_client(channel: Channel, bearer: Bearer) -> Coord {
    CoordinatorClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// `message` naming its logical write (see
/// [`dfs_proto::REQUEST_ID_METADATA`]).
fn with_request_id<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(v) = request_id.parse() {
        request
            .metadata_mut()
            .insert(dfs_proto::REQUEST_ID_METADATA, v);
    }
    request
}

/// An error with its sources, on one line ("transport error: connection refused").
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
