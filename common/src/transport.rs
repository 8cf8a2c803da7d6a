//! gRPC transport settings shared by every server and client, so the data
//! path is tuned in one place: TCP_NODELAY everywhere (Nagle plus delayed ACK
//! stalls small request/response exchanges by about 40 ms otherwise), message
//! limits that fit the largest chunk frame, and HTTP/2 windows large enough to
//! keep 256 KiB frames flowing.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint, Server};

use crate::tls::{Conn, Connector, Security};

/// HTTP/2 stream window: four default frames in flight per stream.
pub const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
/// HTTP/2 connection window: room for several concurrent streams.
pub const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Largest HTTP/2 DATA frame this side accepts (SETTINGS_MAX_FRAME_SIZE).
/// The protocol's default of 16 KiB cuts every 256 KiB chunk frame into 16
/// HTTP/2 frames that the receiver handles one by one; 1 MiB lets a chunk
/// frame travel as one.
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;
/// Largest gRPC message (a maximum-size frame plus its envelope).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// The accepted-connection stream of a server, with TCP_NODELAY set: TLS
/// connections (their handshakes done, the peer's principal known) when
/// `security` has credentials, plain TCP otherwise.
pub fn incoming(
    listener: TcpListener,
    security: &Security,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    crate::tls::incoming(listener, security)
}

/// The longest a server works on one call before answering it
/// (DEADLINE_EXCEEDED past it).
pub const SERVER_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A gRPC server builder with the shared settings.
pub fn server() -> Server {
    Server::builder()
        // Every call has a deadline: the client's grpc-timeout, at most
        // this. It bounds a unary call's answer and a stream's first
        // answer; streams then run on their own idle deadlines.
        .timeout(SERVER_CALL_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// An endpoint for `url` with the shared settings and the given timeouts.
/// `request_timeout` bounds unary calls; streams rely on their own deadlines.
pub fn endpoint(url: &str, connect_timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// The coordinator URLs of a `--coordinator` / `DFS_COORDINATOR` value: one
/// URL, or the members of a coordinator group, comma-separated.
pub fn coordinator_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// Why a channel could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Endpoint(#[from] tonic::transport::Error),
    /// An `https://` URL without TLS credentials to present.
    #[error("{0} is served over TLS, but no TLS credentials were given (--tls-dir / DFS_TLS_DIR)")]
    NoCredentials(String),
    /// A plain-text (`http://`) peer named to a process that runs TLS.
    #[error("a plain-text (http://) address in a cluster that runs mutual TLS")]
    PlainTextPeer,
}

/// A lazily connecting channel to `url` (connects on first use, reconnects
/// after failures), with the shared settings, to a server that must be whom
/// `expect` names (kinds, or one datanode's principal). The URL's scheme
/// decides: `https` is mutual TLS with the current credentials of
/// `security` (each new connection takes up reloaded files) and the
/// server's certificate must name whom `expect` says;
/// `http` is plain TCP, refused by a process that runs TLS. A plan or a
/// map that names a plain-text or foreign address is thus refused before a
/// byte is sent, and a client certificate of the same CA (valid for
/// serving too) cannot pose as a coordinator or a datanode.
pub fn lazy_channel_to(
    url: &str,
    connect_timeout: Duration,
    security: &Security,
    expect: impl Into<crate::tls::Expect>,
) -> Result<Channel, ChannelError> {
    connect_lazy_to(endpoint(url, connect_timeout)?, security, expect)
}

/// [`lazy_channel_to`] for an endpoint with its own settings.
pub fn connect_lazy_to(
    endpoint: Endpoint,
    security: &Security,
    expect: impl Into<crate::tls::Expect>,
) -> Result<Channel, ChannelError> {
    match connector(&endpoint, security, expect)? {
        Some(c) => Ok(endpoint.connect_with_connector_lazy(c)),
        None => Ok(endpoint.connect_lazy()),
    }
}

/// [`connect_lazy_to`], connecting now (the first error is the caller's).
pub async fn connect_to(
    endpoint: Endpoint,
    security: &Security,
    expect: impl Into<crate::tls::Expect>,
) -> Result<Channel, ChannelError> {
    Ok(match connector(&endpoint, security, expect)? {
        Some(c) => endpoint.connect_with_connector(c).await?,
        None => endpoint.connect().await?,
    })
}

/// The TLS connector for `endpoint` (`None`: plain text).
fn connector(
    endpoint: &Endpoint,
    security: &Security,
    expect: impl Into<crate::tls::Expect>,
) -> Result<Option<Connector>, ChannelError> {
    if endpoint.uri().scheme_str() != Some("https") {
        return if security.is_tls() {
            Err(ChannelError::PlainTextPeer)
        } else {
            Ok(None)
        };
    }
    let tls = security
        .credentials()
        .cloned()
        .ok_or_else(|| ChannelError::NoCredentials(endpoint.uri().to_string()))?;
    Ok(Some(Connector::new(tls, expect)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_rejects_bad_urls() {
        assert!(endpoint("http://127.0.0.1:7000", Duration::from_secs(1)).is_ok());
        assert!(endpoint("not a url", Duration::from_secs(1)).is_err());
    }
}

/// Most datanode channels a [`DatanodeChannels`] keeps: a cluster's
/// datanodes with room to spare. Past it, one cached channel is dropped (it
/// reconnects on its next use), so no plan or chunk map can make a process
/// hold a channel per address it names.
pub const MAX_DATANODE_CHANNELS: usize = 1024;

/// Lazily connected, cached channels to datanodes, by node id and address:
/// one HTTP/2 connection per datanode carries every concurrent stream to
/// it. A channel is secured to reach only the datanode named (with TLS its
/// certificate must name that node id: [`crate::tls::Expect::datanode`]),
/// whatever address it was given. Used by the client library and by the
/// datanodes' fan-out and repair copies.
pub struct DatanodeChannels {
    channels: std::sync::Mutex<std::collections::HashMap<(String, String), Channel>>,
    connect_timeout: Duration,
    security: Security,
    cap: usize,
}

impl DatanodeChannels {
    /// No channels yet; each will be secured as `security` says.
    pub fn new(security: Security, connect_timeout: Duration) -> Self {
        Self::with_cap(security, connect_timeout, MAX_DATANODE_CHANNELS)
    }

    /// [`DatanodeChannels::new`] keeping at most `cap` channels.
    pub fn with_cap(security: Security, connect_timeout: Duration, cap: usize) -> Self {
        Self {
            channels: Default::default(),
            connect_timeout,
            security,
            cap: cap.max(1),
        }
    }

    /// The one lazily connected channel to the datanode `node_id` at
    /// `address`.
    pub fn channel(&self, node_id: &str, address: &str) -> Result<Channel, ChannelError> {
        let key = (node_id.to_string(), address.to_string());
        let mut map = self.channels.lock().expect("datanode channels lock");
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let c = lazy_channel_to(
            address,
            self.connect_timeout,
            &self.security,
            crate::tls::Expect::datanode(node_id),
        )?;
        if map.len() >= self.cap
            && let Some(victim) = map.keys().next().cloned()
        {
            map.remove(&victim);
        }
        map.insert(key, c.clone());
        Ok(c)
    }

    /// Channels cached now.
    pub fn len(&self) -> usize {
        self.channels.lock().expect("datanode channels lock").len()
    }

    /// True when none is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod datanode_channel_tests {
    use super::*;

    /// However many addresses callers name, the cache stays at its cap,
    /// and a cached datanode keeps its one channel.
    #[tokio::test]
    async fn the_datanode_channel_cache_is_bounded() {
        let cache = DatanodeChannels::with_cap(Security::insecure(), Duration::from_secs(1), 64);
        for port in 0..200 {
            cache
                .channel("dn", &format!("http://127.0.0.1:{}", 10_000 + port))
                .unwrap();
        }
        assert_eq!(cache.len(), 64);
        cache.channel("dn", "http://127.0.0.1:10199").unwrap();
        cache.channel("dn", "http://127.0.0.1:10199").unwrap();
        assert_eq!(cache.len(), 64);
        assert!(cache.channel("dn", "not a url").is_err());
        assert_eq!(cache.len(), 64, "a refused address is not cached");
    }
}
