//! The datanode's gRPC routes: the streams that carry chunk bytes
//! (DownloadChunkStream, UploadChunkStream, ReplicateChunk) are answered
//! through [`dfs_proto::chunk_stream`], so chunk bytes are sliced out of the
//! received HTTP/2 frames and sent from the read buffer without a copy;
//! every other method goes to tonic's generated server. Profiling a
//! page-cache re-read put tonic's encoder copy at about a third of the
//! datanode's CPU.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use dfs_proto::DownloadChunkStreamRequest;
use dfs_proto::chunk_stream::{
    DOWNLOAD_PATH, MessageReader, REPLICATE_PATH, UPLOAD_PATH, frame_body, message_body,
};
use dfs_proto::data_node_server::{DataNode, DataNodeServer};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::service::DataNodeService;

/// Largest DownloadChunkStream request body accepted (the message is a few
/// dozen bytes).
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// See the module documentation.
#[derive(Clone)]
pub struct Routes {
    service: Arc<DataNodeService>,
    generated: DataNodeServer<DataNodeService>,
    max_message_bytes: usize,
}

impl Routes {
    /// Routes for `service`, with the generated server's message limits.
    pub fn new(service: DataNodeService, max_message_bytes: usize) -> Self {
        let service = Arc::new(service);
        Routes {
            generated: DataNodeServer::from_arc(service.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            service,
            max_message_bytes,
        }
    }
}

impl NamedService for Routes {
    const NAME: &'static str = <DataNodeServer<DataNodeService> as NamedService>::NAME;
}

impl tower_service::Service<http::Request<Body>> for Routes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        let max = self.max_message_bytes;
        match request.uri().path() {
            DOWNLOAD_PATH => Box::pin(async move { Ok(download(&service, request).await) }),
            UPLOAD_PATH => {
                let caller = match service.node().security.principal_of_http(&request) {
                    Ok(c) => c,
                    Err(st) => return Box::pin(async move { Ok(st.into_http()) }),
                };
                let frames = MessageReader::request(request.into_body(), max);
                let answers = service.upload_stream(frames, caller);
                Box::pin(async move { Ok(grpc_response(message_body(answers, true))) })
            }
            REPLICATE_PATH => {
                // Only another datanode (a primary's fan-out, a repair)
                // writes a replica this way.
                let node = service.node();
                if let Err(st) = node
                    .security
                    .require_http(&request, &[dfs_common::tls::Kind::Datanode])
                {
                    node.metrics.refused_calls.inc();
                    return Box::pin(async move { Ok(st.into_http()) });
                }
                let caller = match node.security.principal_of_http(&request) {
                    Ok(c) => c,
                    Err(st) => return Box::pin(async move { Ok(st.into_http()) }),
                };
                let requests = MessageReader::request(request.into_body(), max);
                let answers = service.replicate_stream(requests, caller);
                Box::pin(async move { Ok(grpc_response(message_body(answers, true))) })
            }
            _ => self.generated.call(request),
        }
    }
}

/// Decodes the request, then streams the frames `download_chunk_stream`
/// produces; any refusal is a trailers-only gRPC error, as tonic sends it.
async fn download(service: &DataNodeService, request: http::Request<Body>) -> http::Response<Body> {
    let answer = async {
        // The connection's peer (its certificate) travels in the
        // extensions: the token check needs the caller.
        let (parts, body) = request.into_parts();
        let message = read_request(body).await?;
        let request = tonic::Request::from_parts(
            tonic::metadata::MetadataMap::from_headers(parts.headers),
            parts.extensions,
            message,
        );
        let frames = service.download_chunk_stream(request).await?.into_inner();
        Ok::<_, Status>(grpc_response(frame_body(frames)))
    };
    answer.await.unwrap_or_else(|status| status.into_http())
}

/// A gRPC response streaming `body` (which ends with the status trailers).
fn grpc_response<B>(body: B) -> http::Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes, Error = Status> + Send + 'static,
{
    let mut response = http::Response::new(Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The one gRPC message of a DownloadChunkStream request.
async fn read_request(body: Body) -> Result<DownloadChunkStreamRequest, Status> {
    let mut bytes = http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("cannot read the request: {e}")))?
        .to_bytes();
    if bytes.len() < 5 {
        return Err(Status::invalid_argument(
            "the request holds no gRPC message",
        ));
    }
    if bytes.get_u8() != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not supported",
        ));
    }
    let len = bytes.get_u32() as usize;
    if len != bytes.len() {
        return Err(Status::invalid_argument(format!(
            "the request's message is {} bytes, its envelope says {len}",
            bytes.len()
        )));
    }
    DownloadChunkStreamRequest::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed DownloadChunkStreamRequest: {e}")))
}
