//! Both services stand up on 127.0.0.1:0 with tonic and exchange one call of
//! each RPC kind: unary, server stream and bidi stream.

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use dfs_proto::coordinator_client::CoordinatorClient;
use dfs_proto::coordinator_server::{Coordinator, CoordinatorServer};
use dfs_proto::data_node_client::DataNodeClient;
use dfs_proto::data_node_server::{DataNode, DataNodeServer};
use dfs_proto::*;
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A toy datanode: echoes what the protocol shape requires, nothing more.
struct EchoDataNode;

#[tonic::async_trait]
impl DataNode for EchoDataNode {
    async fn prepare_chunk_upload(
        &self,
        request: Request<PrepareChunkUploadRequest>,
    ) -> Result<Response<PrepareChunkUploadResponse>, Status> {
        let chunk = request
            .into_inner()
            .chunk
            .ok_or_else(|| Status::invalid_argument("chunk"))?;
        Ok(Response::new(PrepareChunkUploadResponse {
            session_id: format!("session-{}", chunk.chunk_id),
            expires_at_unix_ms: 1,
            already_stored: false,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
        }))
    }

    type UploadChunkStreamStream = BoxStream<UploadChunkResponse>;

    async fn upload_chunk_stream(
        &self,
        request: Request<Streaming<ChunkData>>,
    ) -> Result<Response<Self::UploadChunkStreamStream>, Status> {
        let mut frames = request.into_inner();
        let out = async_stream(move |tx| async move {
            let mut received = 0u64;
            let mut count = 0u64;
            while let Some(frame) = frames.next().await {
                let frame = frame?;
                if !frame.verify() {
                    return Err(Status::data_loss("frame checksum"));
                }
                received += frame.data.len() as u64;
                count += 1;
                let ack = upload_chunk_response::Kind::Ack(ChunkDataAck {
                    offset: received,
                    frames: count,
                });
                let _ = tx.send(Ok(UploadChunkResponse { kind: Some(ack) })).await;
                if frame.is_final {
                    let done = upload_chunk_response::Kind::Replicas(ChunkReplicas {
                        replicas: vec!["self".into()],
                        chunk: None,
                        failed: vec![],
                        receipts: vec![],
                        pending: vec![],
                    });
                    let _ = tx.send(Ok(UploadChunkResponse { kind: Some(done) })).await;
                    break;
                }
            }
            Ok(())
        });
        Ok(Response::new(out))
    }

    async fn prepare_chunk_download(
        &self,
        _: Request<PrepareChunkDownloadRequest>,
    ) -> Result<Response<PrepareChunkDownloadResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type DownloadChunkStreamStream = BoxStream<ChunkData>;

    async fn download_chunk_stream(
        &self,
        request: Request<DownloadChunkStreamRequest>,
    ) -> Result<Response<Self::DownloadChunkStreamStream>, Status> {
        let req = request.into_inner();
        if req.chunk_id == "missing" {
            return Err(Status::not_found("no such chunk"));
        }
        let fail_after = (req.chunk_id == "midway").then_some(1);
        let frames = (0..req.length).map(move |i| {
            if Some(i) == fail_after {
                return Err(Status::data_loss("bad block"));
            }
            Ok(ChunkData::frame(
                Bytes::from(vec![i as u8; 4]),
                req.offset + i * 4,
                i + 1 == req.length,
            ))
        });
        Ok(Response::new(Box::pin(futures::stream::iter(frames))))
    }

    type ReplicateChunkStream = BoxStream<UploadChunkResponse>;

    async fn replicate_chunk(
        &self,
        _: Request<Streaming<ReplicateChunkRequest>>,
    ) -> Result<Response<Self::ReplicateChunkStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type ReplicateSmallChunksStream = BoxStream<SmallChunkResult>;

    async fn replicate_small_chunks(
        &self,
        _: Request<Streaming<SmallChunk>>,
    ) -> Result<Response<Self::ReplicateSmallChunksStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn delete_chunk(
        &self,
        _: Request<DeleteChunkRequest>,
    ) -> Result<Response<DeleteChunkResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Runs `body` as a task feeding a channel, returned as a response stream.
fn async_stream<T, F, Fut>(body: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let fut = body(tx.clone());
    tokio::spawn(async move {
        if let Err(status) = fut.await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

struct EchoCoordinator;

#[tonic::async_trait]
impl Coordinator for EchoCoordinator {
    async fn upload_file(
        &self,
        request: Request<UploadFileRequest>,
    ) -> Result<Response<UploadPlan>, Status> {
        let req = request.into_inner();
        Ok(Response::new(UploadPlan {
            upload_id: format!("upload:{}", req.path),
            chunks: vec![],
            chunk_size: req.chunk_size,
            replication: req.replication,
            write_quorum: 1,
            expires_at_unix_ms: 0,
        }))
    }
    async fn confirm_upload(
        &self,
        _: Request<ConfirmUploadRequest>,
    ) -> Result<Response<ConfirmUploadResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn upload_files(
        &self,
        _: Request<dfs_proto::UploadFilesRequest>,
    ) -> Result<Response<dfs_proto::UploadFilesResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn confirm_uploads(
        &self,
        _: Request<dfs_proto::ConfirmUploadsRequest>,
    ) -> Result<Response<dfs_proto::ConfirmUploadsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn abort_upload(
        &self,
        _: Request<AbortUploadRequest>,
    ) -> Result<Response<AbortUploadResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn replan_chunk(
        &self,
        _: Request<ReplanChunkRequest>,
    ) -> Result<Response<PlannedChunk>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn download_file(
        &self,
        _: Request<DownloadFileRequest>,
    ) -> Result<Response<DownloadFileResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn mkdir(&self, _: Request<MkdirRequest>) -> Result<Response<FileInfo>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_directory(
        &self,
        _: Request<ListDirectoryRequest>,
    ) -> Result<Response<ListDirectoryResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn stat(&self, _: Request<StatRequest>) -> Result<Response<FileInfo>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn rename(&self, _: Request<RenameRequest>) -> Result<Response<FileInfo>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn register_data_node(
        &self,
        _: Request<RegisterDataNodeRequest>,
    ) -> Result<Response<RegisterDataNodeResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    type DataNodeHeartbeatStream = BoxStream<HeartbeatResponse>;

    async fn data_node_heartbeat(
        &self,
        request: Request<Streaming<Heartbeat>>,
    ) -> Result<Response<Self::DataNodeHeartbeatStream>, Status> {
        let beats = request.into_inner();
        // One command per heartbeat: ask the node to delete the chunks it
        // reported as corrupt.
        let out = beats.map(|beat| {
            let beat = beat?;
            Ok(HeartbeatResponse {
                commands: vec![DataNodeCommand {
                    command_id: 1,
                    command: Some(data_node_command::Command::Delete(DeleteChunksCommand {
                        chunk_ids: beat.corrupt_chunks,
                        quarantined_only: false,
                    })),
                }],
                state: NodeState::Healthy as i32,
                cluster_id: String::new(),
                token_keys: Default::default(),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_cluster_status(
        &self,
        _: Request<GetClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn decommission_node(
        &self,
        _: Request<DecommissionNodeRequest>,
    ) -> Result<Response<DataNodeStatus>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn set_node_maintenance(
        &self,
        _: Request<SetNodeMaintenanceRequest>,
    ) -> Result<Response<DataNodeStatus>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn set_safe_mode(
        &self,
        _: Request<SetSafeModeRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn add_coordinator(
        &self,
        _: Request<dfs_proto::AddCoordinatorRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn set_coordinator_voters(
        &self,
        _: Request<dfs_proto::SetCoordinatorVotersRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        Err(Status::unimplemented(""))
    }
}

async fn serve(router: tonic::transport::server::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    addr
}

#[tokio::test]
async fn datanode_service_unary_server_stream_and_bidi() {
    let addr =
        serve(tonic::transport::Server::builder().add_service(DataNodeServer::new(EchoDataNode)))
            .await;
    let mut client = DataNodeClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    // Unary.
    let prepared = client
        .prepare_chunk_upload(PrepareChunkUploadRequest {
            chunk: Some(ChunkMeta {
                chunk_id: "ab".repeat(16),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prepared.session_id, format!("session-{}", "ab".repeat(16)));

    // Server stream.
    let frames: Vec<ChunkData> = client
        .download_chunk_stream(DownloadChunkStreamRequest {
            offset: 100,
            length: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|f| f.unwrap())
        .collect()
        .await;
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(ChunkData::verify));
    assert_eq!(frames[2].offset, 108);
    assert!(frames[2].is_final && !frames[1].is_final);

    // Bidi stream.
    let outgoing = futures::stream::iter(vec![
        ChunkData::frame(Bytes::from_static(b"abcd"), 0, false),
        ChunkData::frame(Bytes::from_static(b"ef"), 4, true),
    ]);
    let replies: Vec<UploadChunkResponse> = client
        .upload_chunk_stream(outgoing)
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(replies.len(), 3);
    match &replies[1].kind {
        Some(upload_chunk_response::Kind::Ack(ack)) => assert_eq!(ack.offset, 6),
        other => panic!("expected an ack, got {other:?}"),
    }
    match &replies[2].kind {
        Some(upload_chunk_response::Kind::Replicas(r)) => assert_eq!(r.replicas, ["self"]),
        other => panic!("expected replicas, got {other:?}"),
    }

    // A status from the server reaches the client intact.
    let err = client
        .prepare_chunk_download(PrepareChunkDownloadRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn coordinator_service_unary_and_bidi() {
    let addr = serve(
        tonic::transport::Server::builder().add_service(CoordinatorServer::new(EchoCoordinator)),
    )
    .await;
    let mut client = CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let plan = client
        .upload_file(UploadFileRequest {
            path: "/x".into(),
            chunk_size: 7,
            replication: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plan.upload_id.as_str(), plan.chunk_size, plan.replication),
        ("upload:/x", 7, 2)
    );

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .data_node_heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for chunk in ["c1", "c2"] {
        tx.send(Heartbeat {
            node_id: "n1".into(),
            corrupt_chunks: vec![chunk.into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let reply = replies.next().await.unwrap().unwrap();
        match &reply.commands[0].command {
            Some(data_node_command::Command::Delete(d)) => assert_eq!(d.chunk_ids, [chunk]),
            other => panic!("expected a delete command, got {other:?}"),
        }
    }
    drop(tx);
    assert!(
        replies.next().await.is_none(),
        "stream ends when the node hangs up"
    );
}

/// `chunk_stream::download` (frames sliced out of the received bytes) reads
/// what tonic's own server encoder sends, errors included.
#[tokio::test]
async fn zero_copy_download_reads_a_plain_tonic_server() {
    use dfs_proto::chunk_stream;
    let addr =
        serve(tonic::transport::Server::builder().add_service(DataNodeServer::new(EchoDataNode)))
            .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = |chunk_id: &str| DownloadChunkStreamRequest {
        chunk_id: chunk_id.into(),
        offset: 100,
        length: 3,
        ..Default::default()
    };
    let mut reader = chunk_stream::download(channel.clone(), request("ok"), 1 << 20)
        .await
        .unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = reader.message().await.unwrap() {
        frames.push(frame);
    }
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(ChunkData::verify));
    assert_eq!(
        frames.iter().map(|f| f.offset).collect::<Vec<_>>(),
        [100, 104, 108]
    );
    assert!(frames[2].is_final && !frames[1].is_final);
    assert_eq!(&frames[1].data[..], &[1, 1, 1, 1]);

    let err = chunk_stream::download(channel.clone(), request("missing"), 1 << 20)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let mut reader = chunk_stream::download(channel.clone(), request("midway"), 1 << 20)
        .await
        .unwrap();
    assert_eq!(reader.message().await.unwrap().unwrap().offset, 100);
    assert_eq!(
        reader.message().await.unwrap_err().code(),
        tonic::Code::DataLoss
    );

    // A message above the reader's limit is refused, not buffered.
    let mut reader = chunk_stream::download(channel, request("ok"), 8)
        .await
        .unwrap();
    assert_eq!(
        reader.message().await.unwrap_err().code(),
        tonic::Code::OutOfRange
    );
}
