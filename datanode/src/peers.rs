//! Connections to other datanodes: who a peer is ([`Target`]) and one
//! lazily connected HTTP/2 channel per peer ([`Peers`]) that every stream
//! to it shares. Below the node state and the replication pipeline; knows
//! nothing of either.

use std::time::Duration;

use dfs_proto::data_node_client::DataNodeClient;
use tonic::Status;
use tonic::transport::Channel;

/// Connect timeout for other datanodes and the coordinator.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A replica target of an upload.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its node id.
    pub node_id: String,
    /// Its gRPC endpoint.
    pub address: String,
}

/// Most peer channels kept (see [`dfs_common::transport::DatanodeChannels`]).
pub const MAX_PEER_CHANNELS: usize = dfs_common::transport::MAX_DATANODE_CHANNELS;

/// Lazily connected, cached channels to other datanodes: one HTTP/2
/// connection per peer carries every concurrent stream to it.
pub struct Peers {
    channels: dfs_common::transport::DatanodeChannels,
}

impl Peers {
    /// No channels yet; each will be secured as `security` says.
    pub fn new(security: dfs_common::tls::Security) -> Self {
        Self {
            channels: dfs_common::transport::DatanodeChannels::new(security, CONNECT_TIMEOUT),
        }
    }

    /// A client for the datanode `node_id` at `address`.
    pub fn client(&self, node_id: &str, address: &str) -> Result<DataNodeClient<Channel>, Status> {
        Ok(DataNodeClient::new(self.channel(node_id, address)?)
            .max_decoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES))
    }

    /// The one lazily connected channel to the datanode `node_id` at
    /// `address`. Only the datanode the signed plan names: a target is
    /// never an arbitrary server (no SSRF through fan-out), nor another
    /// datanode holding its own identity.
    pub fn channel(&self, node_id: &str, address: &str) -> Result<Channel, Status> {
        self.channels.channel(node_id, address).map_err(|e| {
            Status::invalid_argument(format!("invalid datanode address {address:?}: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_channel_cache_is_bounded() {
        let peers = Peers::new(dfs_common::tls::Security::insecure());
        for port in 0..(MAX_PEER_CHANNELS + 100) {
            peers
                .channel("dn", &format!("http://127.0.0.1:{}", 10_000 + port))
                .unwrap();
        }
        assert_eq!(peers.channels.len(), MAX_PEER_CHANNELS);
        // A cached peer keeps its one channel.
        let before = peers.channels.len();
        peers.channel("dn", "http://127.0.0.1:10500").unwrap();
        peers.channel("dn", "http://127.0.0.1:10500").unwrap();
        assert!(peers.channels.len() <= before);
    }
}
