//! Every message of the protocol survives encode → decode unchanged.

use bytes::Bytes;
use dfs_proto::*;
use prost::Message;

fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: M) {
    let bytes = msg.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(back, msg);
    // A non-default message must not encode to nothing.
    if msg != M::default() {
        assert!(!bytes.is_empty(), "{msg:?} encoded to no bytes");
    }
}

fn meta() -> ChunkMeta {
    ChunkMeta {
        chunk_id: "0123456789abcdef0123456789abcdef".into(),
        checksum: 0xdead_beef,
        size: 64 << 20,
        checksum_algorithm: ChecksumAlgorithm::Crc32c as i32,
    }
}

fn addr(n: u32) -> NodeAddress {
    NodeAddress {
        node_id: format!("node-{n}"),
        address: format!("http://127.0.0.1:{}", 7100 + n),
    }
}

fn info() -> NodeInfo {
    NodeInfo {
        free_bytes: 10,
        total_bytes: 20,
        health: NodeHealth::Healthy as i32,
        used_bytes: 5,
        chunk_count: 3,
        active_sessions: 2,
        reserved_bytes: 1,
        quarantined_chunks: 4,
        unavailable_chunks: 6,
    }
}

fn file_info() -> FileInfo {
    FileInfo {
        path: "/a/b".into(),
        name: "b".into(),
        file_type: FileType::File as i32,
        size: 99,
        replication: 3,
        chunk_size: 4 << 20,
        chunk_count: 1,
        created_unix_ms: 1,
        modified_unix_ms: 2,
        version: 7,
    }
}

fn node_status() -> DataNodeStatus {
    DataNodeStatus {
        node_id: "n1".into(),
        address: "http://127.0.0.1:7101".into(),
        state: NodeState::Suspect as i32,
        info: Some(info()),
        topology: Some(Topology {
            zone: "z1".into(),
            rack: "r1".into(),
            host: "h1".into(),
        }),
        last_heartbeat_unix_ms: 5,
        chunk_count: 9,
        safe_to_remove: true,
        maintenance_until_unix_ms: 6,
    }
}

#[test]
fn common_messages_roundtrip() {
    roundtrip(meta());
    roundtrip(ChunkData {
        data: Bytes::from_static(b"frame bytes"),
        offset: 262_144,
        is_final: true,
        frame_checksum: 42,
        session_id: "s-1".into(),
        prepare: None,
    });
    roundtrip(ChunkData {
        data: Bytes::from_static(b"one-call upload"),
        offset: 0,
        is_final: true,
        frame_checksum: 7,
        session_id: String::new(),
        prepare: Some(PrepareChunkUploadRequest {
            chunk: Some(meta()),
            targets: vec![],
            write_quorum: 2,
            session_id: String::new(),
            token: Default::default(),
        }),
    });
    roundtrip(ChunkDataAck {
        offset: 262_144,
        frames: 1,
    });
    roundtrip(ChunkReplicas {
        replicas: vec!["n1".into(), "n2".into()],
        chunk: Some(meta()),
        failed: vec![ReplicaFailure {
            node_id: "n3".into(),
            reason: "unavailable".into(),
        }],
        receipts: vec![receipt()],
        pending: vec!["n4".into()],
    });
    roundtrip(addr(1));
    roundtrip(info());
}

#[test]
fn datanode_messages_roundtrip() {
    roundtrip(PrepareChunkUploadRequest {
        chunk: Some(meta()),
        targets: vec![addr(2), addr(3)],
        write_quorum: 2,
        session_id: "s".into(),
        token: Default::default(),
    });
    roundtrip(PrepareChunkUploadResponse {
        session_id: "s".into(),
        expires_at_unix_ms: 3,
        already_stored: true,
        max_frame_bytes: 1 << 20,
    });
    roundtrip(UploadChunkResponse {
        kind: Some(upload_chunk_response::Kind::Ack(ChunkDataAck {
            offset: 1,
            frames: 1,
        })),
    });
    roundtrip(ReplicateChunkRequest {
        kind: Some(replicate_chunk_request::Kind::Header(
            ReplicateChunkHeader {
                session_id: "s".into(),
                chunk: Some(meta()),
                source_node_id: "n1".into(),
                token: Default::default(),
            },
        )),
    });
    roundtrip(SmallChunk {
        seq: 7,
        header: Some(ReplicateChunkHeader {
            session_id: "s".into(),
            chunk: Some(meta()),
            source_node_id: "n1".into(),
            token: Default::default(),
        }),
        data: Some(ChunkData::frame(Bytes::from_static(b"small"), 0, true)),
    });
    roundtrip(SmallChunkResult {
        seq: 7,
        replicas: None,
        code: 15,
        message: "data loss".into(),
    });
    roundtrip(PrepareChunkDownloadRequest {
        chunk_id: meta().chunk_id,
        token: Default::default(),
    });
    roundtrip(PrepareChunkDownloadResponse {
        session_id: "d".into(),
        chunk: Some(meta()),
        expires_at_unix_ms: 9,
    });
    roundtrip(DownloadChunkStreamRequest {
        session_id: "d".into(),
        chunk_id: meta().chunk_id,
        offset: 10,
        length: 20,
        frame_bytes: 4096,
        token: Default::default(),
    });
    roundtrip(DeleteChunkRequest {
        chunk_id: meta().chunk_id,
        token: Default::default(),
    });
    roundtrip(DeleteChunkResponse { deleted: true });
}

#[test]
fn coordinator_messages_roundtrip() {
    let planned = PlannedChunk {
        index: 1,
        chunk_id: meta().chunk_id,
        offset: 4 << 20,
        size: 100,
        nodes: vec![addr(1), addr(2)],
        token: Default::default(),
    };
    roundtrip(UploadFileRequest {
        path: "/a".into(),
        size: 10,
        replication: 3,
        chunk_size: 1 << 20,
        overwrite: true,
    });
    roundtrip(UploadPlan {
        upload_id: "u".into(),
        chunks: vec![planned.clone()],
        chunk_size: 1 << 20,
        replication: 3,
        write_quorum: 2,
        expires_at_unix_ms: 4,
    });
    roundtrip(ConfirmUploadRequest {
        upload_id: "u".into(),
        chunks: vec![ConfirmedChunk {
            index: 0,
            chunk: Some(meta()),
            replicas: vec!["n1".into()],
            receipts: vec![receipt()],
            pending: vec!["n2".into()],
        }],
    });
    roundtrip(ConfirmUploadResponse {
        file: Some(file_info()),
    });
    roundtrip(AbortUploadRequest {
        upload_id: "u".into(),
    });
    roundtrip(ReplanChunkRequest {
        upload_id: "u".into(),
        index: 2,
        exclude_nodes: vec!["n1".into()],
    });
    roundtrip(DownloadFileResponse {
        file: Some(file_info()),
        chunks: vec![ChunkLocation {
            index: 0,
            offset: 0,
            chunk: Some(meta()),
            replicas: vec![addr(1)],
            token: Default::default(),
        }],
    });
    roundtrip(MkdirRequest {
        path: "/d".into(),
        parents: true,
    });
    roundtrip(ListDirectoryRequest {
        path: "/".into(),
        page_token: "b".into(),
        page_size: 10,
    });
    roundtrip(ListDirectoryResponse {
        entries: vec![file_info()],
        next_page_token: "c".into(),
    });
    roundtrip(DeleteRequest {
        path: "/d".into(),
        recursive: true,
    });
    roundtrip(DeleteResponse {
        files_deleted: 2,
        chunks_released: 3,
    });
    roundtrip(RenameRequest {
        source: "/a".into(),
        destination: "/b".into(),
    });
    roundtrip(RegisterDataNodeRequest {
        node_id: "n1".into(),
        address: "http://127.0.0.1:7101".into(),
        info: Some(info()),
        topology: node_status().topology,
        version: "0.1.0".into(),
        cluster_id: "c".into(),
    });
    roundtrip(RegisterDataNodeResponse {
        node_id: "n1".into(),
        heartbeat_interval_ms: 3000,
        cluster_id: "c".into(),
        token_keys: Default::default(),
    });
    roundtrip(Heartbeat {
        node_id: "n1".into(),
        info: Some(info()),
        chunk_report: Some(ChunkReport {
            chunks: vec![meta()],
            first: true,
            last: false,
        }),
        added_chunks: vec![meta()],
        removed_chunks: vec!["x".into()],
        corrupt_chunks: vec!["y".into()],
        command_results: vec![CommandResult {
            command_id: 4,
            ok: false,
            error: "boom".into(),
        }],
        cluster_id: "c".into(),
        abandoned_replicas: vec![AbandonedReplica {
            chunk_id: "z".into(),
            node_id: "n2".into(),
        }],
    });
    for command in [
        data_node_command::Command::Replicate(ReplicateChunkCommand {
            chunk: Some(meta()),
            target: Some(addr(3)),
            max_bytes_per_second: 1 << 20,
            token: Default::default(),
        }),
        data_node_command::Command::Delete(DeleteChunksCommand {
            chunk_ids: vec![meta().chunk_id],
            quarantined_only: true,
        }),
        data_node_command::Command::Config(ConfigUpdate {
            heartbeat_interval_ms: 1000,
            scrub_bytes_per_second: 5,
        }),
        data_node_command::Command::RequestReport(RequestChunkReport {}),
    ] {
        roundtrip(HeartbeatResponse {
            commands: vec![DataNodeCommand {
                command_id: 1,
                command: Some(command),
            }],
            state: NodeState::Healthy as i32,
            cluster_id: "c".into(),
            token_keys: Default::default(),
        });
    }
    roundtrip(ListNodesResponse {
        nodes: vec![node_status()],
    });
    roundtrip(ClusterStatus {
        cluster_id: "c".into(),
        nodes: vec![node_status()],
        files: 1,
        directories: 2,
        chunks: 3,
        under_replicated_chunks: 4,
        missing_chunks: 5,
        over_replicated_chunks: 6,
        capacity_total_bytes: 7,
        capacity_used_bytes: 8,
        repair_bytes_remaining: 9,
        repair_eta_seconds: 10,
        replication: 3,
        safe_mode: Some(SafeModeStatus {
            active: true,
            reason: "waiting".into(),
            reported_nodes: 1,
            known_nodes: 3,
            reported_replicas: 10,
            known_replicas: 9,
            manual: false,
        }),
        delete_budget: Some(DeleteBudgetStatus {
            deferred: 4,
            exhausted_nodes: vec!["n1".into()],
            exhausted_total: 2,
        }),
        corrupt_replicas: 1,
        coordinators: vec![CoordinatorMember {
            id: 2,
            address: "http://c1:7000".into(),
            role: "leader".into(),
            term: 5,
            last_log_index: 120,
            applied_index: 119,
            lag: 0,
            answering: true,
            incarnation: 0x1234,
            reported_incarnation: 0x5678,
            voter: true,
        }],
    });
    roundtrip(SetSafeModeRequest { enabled: false });
    roundtrip(dfs_proto::AddCoordinatorRequest {
        id: 4,
        address: "http://c3:7000".into(),
    });
    roundtrip(dfs_proto::SetCoordinatorVotersRequest {
        voter_ids: vec![1, 2, 3],
    });
    roundtrip(dfs_proto::HelloResponse {
        id: 4,
        incarnation: 9,
        initialized: true,
    });
    roundtrip(DecommissionNodeRequest {
        node_id: "n1".into(),
        cancel: true,
    });
    roundtrip(SetNodeMaintenanceRequest {
        node_id: "n1".into(),
        enabled: true,
        duration_seconds: 600,
    });
}

fn receipt() -> ReplicaReceipt {
    ReplicaReceipt {
        node_id: "n2".into(),
        checksum: 0xdead_beef,
        size: 4096,
        created: true,
        key_id: Default::default(),
        tag: Default::default(),
    }
}
