//! gRPC transport settings shared by every server and client, so the data
//! path is tuned in one place: TCP_NODELAY everywhere (Nagle plus delayed ACK
//! stalls small request/response exchanges by about 40 ms otherwise), message
//! limits that fit the largest chunk frame, and HTTP/2 windows large enough to
//! keep 256 KiB frames flowing.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

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

/// The accepted-connection stream of a server, with TCP_NODELAY set.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
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

/// A lazily connecting channel to `url` (connects on first use, reconnects
/// after failures), with the shared settings.
pub fn lazy_channel(
    url: &str,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(url, connect_timeout)?.connect_lazy())
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
