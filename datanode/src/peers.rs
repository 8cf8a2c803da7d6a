//! Connections to other datanodes: who a peer is ([`Target`]) and one
//! lazily connected HTTP/2 channel per peer ([`Peers`]) that every stream
//! to it shares. Below the node state and the replication pipeline; knows
//! nothing of either.

use std::collections::HashMap;
use std::sync::Mutex;
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

/// Lazily connected, cached channels to other datanodes: one HTTP/2
/// connection per peer carries every concurrent stream to it.
#[derive(Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    /// A client for the datanode at `address`.
    pub fn client(&self, address: &str) -> Result<DataNodeClient<Channel>, Status> {
        Ok(DataNodeClient::new(self.channel(address)?)
            .max_decoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES))
    }

    /// The one lazily connected channel to the datanode at `address`.
    pub fn channel(&self, address: &str) -> Result<Channel, Status> {
        let channel = {
            let mut map = self.channels.lock().expect("peers lock");
            match map.get(address) {
                Some(c) => c.clone(),
                None => {
                    let c = dfs_common::transport::lazy_channel(address, CONNECT_TIMEOUT).map_err(
                        |e| {
                            Status::invalid_argument(format!(
                                "invalid datanode address {address:?}: {e}"
                            ))
                        },
                    )?;
                    map.insert(address.to_string(), c.clone());
                    c
                }
            }
        };
        Ok(channel)
    }
}
