//! Raft traffic between coordinators over gRPC (`CoordinatorRaft` in
//! `proto/raft.proto`): each openraft request travels as the JSON of the
//! request, and the answer as the JSON of its `Result`, so an error the
//! remote Raft returns (a higher vote, a snapshot mismatch) comes back as
//! that error, and a transport failure as `Unreachable`.
//!
//! Every call names its sender and its addressee as `<id>.<incarnation>`
//! (`dfs-raft-from`, `dfs-raft-to`): a member refuses a call meant for
//! another volume than its own, and one from a member whose pinned
//! incarnation differs (see [`super::Node`]). To the sender a refused call
//! is an unreachable member, which is what a replaced volume is.

use std::time::Duration;

use dfs_common::tls::{Kind, Security};
use dfs_proto::coordinator_raft_client::CoordinatorRaftClient;
use dfs_proto::coordinator_raft_server::{CoordinatorRaft, CoordinatorRaftServer};
use dfs_proto::{HelloRequest, HelloResponse, RaftPayload};
use openraft::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{MemberId, Node, TypeConfig};

/// Largest Raft message either side accepts (a batch of entries or a
/// snapshot chunk, JSON-encoded).
pub const MAX_RAFT_MESSAGE: usize = 64 << 20;
/// How long a connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Request metadata: the sending member, `<id>.<incarnation>`.
pub const FROM_METADATA: &str = "dfs-raft-from";
/// Request metadata: the member the call is meant for, `<id>.<incarnation>`
/// (incarnation 0: any, the group has not pinned it).
pub const TO_METADATA: &str = "dfs-raft-to";

type RpcErr<E = openraft::error::Infallible> = RPCError<MemberId, Node, RaftError<MemberId, E>>;

/// A member's identity on the wire: its id and the incarnation of its volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Raft id.
    pub id: MemberId,
    /// Incarnation (0: not pinned).
    pub incarnation: u64,
}

impl Identity {
    fn encode(self) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
        format!("{}.{}", self.id, self.incarnation)
            .parse()
            .expect("digits and a dot are valid metadata")
    }

    fn decode(m: &tonic::metadata::MetadataMap, key: &str) -> Result<Identity, Status> {
        let v = m
            .get(key)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument(format!("a Raft call needs {key} metadata")))?;
        let (id, inc) = v
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| Status::invalid_argument(format!("malformed {key}: {v:?}")))?;
        Ok(Identity {
            id,
            incarnation: inc,
        })
    }
}

/// Makes a [`Peer`] for every member openraft talks to, as member `me`.
#[derive(Debug, Clone)]
pub struct Network {
    me: Identity,
    security: Security,
}

impl Network {
    /// The network of the member `me`.
    pub fn new(me: Identity, security: Security) -> Network {
        Network { me, security }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: MemberId, node: &Node) -> Peer {
        Peer {
            target,
            to: Identity {
                id: target,
                incarnation: node.incarnation,
            },
            from: self.me,
            addr: node.addr.clone(),
            security: self.security.clone(),
            client: None,
        }
    }
}

/// The connection to one member (made on first use, remade after a failure).
pub struct Peer {
    target: MemberId,
    to: Identity,
    from: Identity,
    addr: String,
    security: Security,
    client: Option<CoordinatorRaftClient<Channel>>,
}

fn raft_client(
    addr: &str,
    security: &Security,
) -> Result<CoordinatorRaftClient<Channel>, dfs_common::transport::ChannelError> {
    let endpoint = Endpoint::from_shared(addr.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(
        CoordinatorRaftClient::new(dfs_common::transport::connect_lazy_to(
            endpoint,
            security,
            &[dfs_common::tls::Kind::Coordinator],
        )?)
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE),
    )
}

/// Asks the member at `addr` who it is ([`HelloResponse`]), within `timeout`.
pub async fn hello(
    addr: &str,
    timeout: Duration,
    security: &Security,
) -> Result<HelloResponse, Status> {
    let mut c = raft_client(addr, security)
        .map_err(|e| Status::invalid_argument(format!("{addr}: {e}")))?;
    let mut req = Request::new(HelloRequest {});
    req.set_timeout(timeout);
    match tokio::time::timeout(timeout, c.hello(req)).await {
        Ok(answer) => answer.map(Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{addr} did not answer in time"
        ))),
    }
}

impl Peer {
    fn client(&mut self) -> Result<CoordinatorRaftClient<Channel>, Unreachable> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = raft_client(&self.addr, &self.security).map_err(|e| Unreachable::new(&e))?;
        self.client = Some(c.clone());
        Ok(c)
    }

    /// One call: `req` out, the remote's `Result<Resp, RaftError<E>>` back.
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        data: Vec<u8>,
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
        let mut request = Request::new(RaftPayload { payload, data });
        request.set_timeout(option.hard_ttl());
        let m = request.metadata_mut();
        m.insert(FROM_METADATA, self.from.encode());
        m.insert(TO_METADATA, self.to.encode());
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
        self.call(Method::Append, &rpc, Vec::new(), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<MemberId>, RpcErr<InstallSnapshotError>> {
        let mut rpc = rpc;
        let data = std::mem::take(&mut rpc.data);
        self.call(Method::Snapshot, &rpc, data, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RpcErr> {
        self.call(Method::Vote, &rpc, Vec::new(), &option).await
    }
}

/// The receiving side: checks who a message is from and for, then hands it
/// to the local Raft.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft<TypeConfig>,
    me: Identity,
    security: Security,
}

impl RaftService {
    /// The gRPC service for `raft` (member `me`), with the Raft message
    /// size limit.
    /// With TLS only coordinators' certificates may call it: no other
    /// principal can vote, append entries or install a snapshot.
    pub fn server(
        raft: Raft<TypeConfig>,
        me: Identity,
        security: Security,
    ) -> CoordinatorRaftServer<RaftService> {
        CoordinatorRaftServer::new(RaftService { raft, me, security })
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE)
    }

    /// Refuses a call meant for another member or volume, or sent by a
    /// member whose volume is not the one the group pinned.
    fn admit<T>(&self, r: &Request<T>) -> Result<(), Status> {
        self.security.require(r, &[Kind::Coordinator])?;
        let m = r.metadata();
        let to = Identity::decode(m, TO_METADATA)?;
        let from = Identity::decode(m, FROM_METADATA)?;
        check_addressee(self.me, to)?;
        let pinned = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&from.id)
            .map(|n| n.incarnation);
        check_sender(from, pinned)
    }
}

/// A call for member `to` reaching member `me`.
fn check_addressee(me: Identity, to: Identity) -> Result<(), Status> {
    if to.id != me.id {
        return Err(Status::failed_precondition(format!(
            "this is coordinator {}, not {}: the group's address of member {} is wrong",
            me.id, to.id, to.id
        )));
    }
    if to.incarnation != 0 && to.incarnation != me.incarnation {
        return Err(Status::failed_precondition(format!(
            "coordinator {} came back on a new volume (incarnation {:016x}, the group knows {:016x}): \
             it lost what the old one stored, so it must be removed from the group and added again",
            me.id, me.incarnation, to.incarnation
        )));
    }
    Ok(())
}

/// A call from `from`, whose volume this member's membership pinned as
/// `pinned` (None: not a member it knows, such as a leader adding it).
fn check_sender(from: Identity, pinned: Option<u64>) -> Result<(), Status> {
    match pinned {
        Some(p) if p != 0 && p != from.incarnation => Err(Status::failed_precondition(format!(
            "coordinator {} is on a new volume (incarnation {:016x}, pinned {:016x}): \
             it is not the member of that id until it is removed and added again",
            from.id, from.incarnation, p
        ))),
        _ => Ok(()),
    }
}

fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&p.payload)
        .map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|payload| {
            Response::new(RaftPayload {
                payload,
                data: Vec::new(),
            })
        })
        .map_err(|e| Status::internal(format!("cannot encode a Raft answer: {e}")))
}

#[tonic::async_trait]
impl CoordinatorRaft for RaftService {
    async fn append_entries(
        &self,
        r: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&r)?;
        let req: AppendEntriesRequest<TypeConfig> = decode(r.get_ref())?;
        encode(&self.raft.append_entries(req).await)
    }

    async fn vote(&self, r: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit(&r)?;
        let req: VoteRequest<MemberId> = decode(r.get_ref())?;
        encode(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        r: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&r)?;
        let p = r.into_inner();
        let mut req: InstallSnapshotRequest<TypeConfig> = decode(&p)?;
        req.data = p.data;
        encode(&self.raft.install_snapshot(req).await)
    }

    async fn hello(&self, r: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        self.security.require(&r, &[Kind::Coordinator])?;
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Status::unavailable(format!("Raft stopped: {e}")))?;
        Ok(Response::new(HelloResponse {
            id: self.me.id,
            incarnation: self.me.incarnation,
            initialized,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Identity = Identity {
        id: 2,
        incarnation: 77,
    };

    #[test]
    fn a_member_takes_calls_for_itself_or_for_its_id_unpinned() {
        assert!(check_addressee(ME, ME).is_ok());
        assert!(
            check_addressee(
                ME,
                Identity {
                    id: 2,
                    incarnation: 0
                }
            )
            .is_ok()
        );
    }

    /// A member on a new volume is not the member the group pinned: it
    /// refuses the leader's entries and votes meant for the old one.
    #[test]
    fn a_member_on_a_new_volume_refuses_calls_for_the_old_one() {
        let old = Identity {
            id: 2,
            incarnation: 5,
        };
        let e = check_addressee(ME, old).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message()
                .contains("removed from the group and added again"),
            "{e}"
        );
        let other = Identity {
            id: 3,
            incarnation: 77,
        };
        assert_eq!(
            check_addressee(ME, other).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn a_sender_must_be_on_the_volume_the_group_pinned() {
        let from = Identity {
            id: 1,
            incarnation: 9,
        };
        assert!(check_sender(from, Some(9)).is_ok());
        assert!(check_sender(from, Some(0)).is_ok(), "not pinned");
        assert!(
            check_sender(from, None).is_ok(),
            "not a member known here yet"
        );
        assert_eq!(
            check_sender(from, Some(8)).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn identities_travel_as_id_dot_incarnation() {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert(TO_METADATA, ME.encode());
        assert_eq!(Identity::decode(&m, TO_METADATA).unwrap(), ME);
        m.insert(FROM_METADATA, "x.1".parse().unwrap());
        assert_eq!(
            Identity::decode(&m, FROM_METADATA).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Identity::decode(&tonic::metadata::MetadataMap::new(), TO_METADATA)
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
    }
}
