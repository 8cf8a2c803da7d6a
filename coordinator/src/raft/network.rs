//! Raft traffic between coordinators over gRPC (`CoordinatorRaft` in
//! `proto/raft.proto`): each openraft request travels as the JSON of the
//! request, and the answer as the JSON of its `Result`, so an error the
//! remote Raft returns (a higher vote, a snapshot mismatch) comes back as
//! that error, and a transport failure as `Unreachable`.

use std::time::Duration;

use dfs_proto::RaftPayload;
use dfs_proto::coordinator_raft_client::CoordinatorRaftClient;
use dfs_proto::coordinator_raft_server::{CoordinatorRaft, CoordinatorRaftServer};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{MemberId, TypeConfig};

/// Largest Raft message either side accepts (a batch of entries or a
/// snapshot chunk, JSON-encoded).
pub const MAX_RAFT_MESSAGE: usize = 64 << 20;
/// How long a connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

type RpcErr<E = openraft::error::Infallible> =
    RPCError<MemberId, BasicNode, RaftError<MemberId, E>>;

/// Makes a [`Peer`] for every member openraft talks to.
#[derive(Debug, Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: MemberId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            client: None,
        }
    }
}

/// The connection to one member (made on first use, remade after a failure).
pub struct Peer {
    target: MemberId,
    addr: String,
    client: Option<CoordinatorRaftClient<Channel>>,
}

impl Peer {
    fn client(&mut self) -> Result<CoordinatorRaftClient<Channel>, Unreachable> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(self.addr.clone())
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let c = CoordinatorRaftClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE);
        self.client = Some(c.clone());
        Ok(c)
    }

    /// One call: `req` out, the remote's `Result<Resp, RaftError<E>>` back.
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client()?;
        let mut request = Request::new(RaftPayload { payload });
        request.set_timeout(option.hard_ttl());
        let answer = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let answer = match answer {
            Ok(a) => a.into_inner(),
            Err(status) => {
                // Reconnect next time: the peer may have restarted elsewhere.
                self.client = None;
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
        };
        let result: Result<Resp, RaftError<MemberId, E>> = serde_json::from_slice(&answer.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RpcErr> {
        self.call(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<MemberId>, RpcErr<InstallSnapshotError>> {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RpcErr> {
        self.call(Method::Vote, &rpc, &option).await
    }
}

/// The receiving side: hands each message to the local Raft.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft<TypeConfig>,
}

impl RaftService {
    /// The gRPC service for `raft`, with the Raft message size limit.
    pub fn server(raft: Raft<TypeConfig>) -> CoordinatorRaftServer<RaftService> {
        CoordinatorRaftServer::new(RaftService { raft })
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE)
    }
}

fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&p.payload)
        .map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|payload| Response::new(RaftPayload { payload }))
        .map_err(|e| Status::internal(format!("cannot encode a Raft answer: {e}")))
}

#[tonic::async_trait]
impl CoordinatorRaft for RaftService {
    async fn append_entries(
        &self,
        r: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = decode(r.get_ref())?;
        encode(&self.raft.append_entries(req).await)
    }

    async fn vote(&self, r: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: VoteRequest<MemberId> = decode(r.get_ref())?;
        encode(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        r: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = decode(r.get_ref())?;
        encode(&self.raft.install_snapshot(req).await)
    }
}
