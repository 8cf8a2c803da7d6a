//! Issue 18: chunk capabilities and replica receipts on real processes
//! (mutual TLS, `ClusterOptions::tls`). A datanode serves a chunk call only
//! with a token the coordinator signed for that chunk, operation, node and
//! caller, still current; ConfirmUpload counts a replica only by a receipt
//! that replica signed (or its own report). Each refusal is paired with a
//! control call that differs only in the property under test: the tests
//! mint their tokens with the cluster's own key file, so a refused token is
//! genuine in every other respect.
//!
//! Key rotation: the key file goes current → next → current only while
//! uploads run; nothing fails, and a token of the retired key stops
//! working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dfs_chaos::{Cluster, ClusterOptions, metric_sum, metrics_text, payload, read_all, run};
use dfs_client::PutOptions;
use dfs_common::tls::{Kind, Security};
use dfs_common::token::{KeyRing, ops};
use dfs_proto as pb;
use tonic::Code;
use tonic::transport::Channel;

fn options() -> ClusterOptions {
    ClusterOptions {
        tls: true,
        chunk_size: "1MiB".into(),
        ..Default::default()
    }
}

async fn channel(addr: SocketAddr, security: &Security, kind: &'static [Kind]) -> Channel {
    let url = format!("https://{addr}");
    let ep = dfs_common::transport::endpoint(&url, Duration::from_secs(5)).unwrap();
    dfs_common::transport::connect_to(ep, security, kind)
        .await
        .expect("a TLS connection")
}

async fn datanode_as(
    addr: SocketAddr,
    security: &Security,
) -> pb::data_node_client::DataNodeClient<Channel> {
    pb::data_node_client::DataNodeClient::new(channel(addr, security, &[Kind::Datanode]).await)
        .max_decoding_message_size(dfs_common::transport::MAX_MESSAGE_BYTES)
}

fn now_s() -> u64 {
    dfs_common::time::now_unix_ms() / 1000
}

/// Reads a whole chunk in one call with `token`: its bytes, or the status.
async fn read_chunk(
    dn: &mut pb::data_node_client::DataNodeClient<Channel>,
    chunk_id: &str,
    token: Option<pb::ChunkToken>,
) -> Result<usize, tonic::Status> {
    let mut s = dn
        .download_chunk_stream(pb::DownloadChunkStreamRequest {
            chunk_id: chunk_id.to_string(),
            token,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(f) = s.message().await? {
        n += f.data.len();
    }
    Ok(n)
}

/// The status a streaming call ends with (its first error).
async fn stream_error<T>(
    call: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> tonic::Status {
    match call {
        Err(st) => st,
        Ok(r) => {
            let mut s = r.into_inner();
            loop {
                match s.message().await {
                    Err(st) => return st,
                    Ok(None) => return tonic::Status::ok("the stream was served"),
                    Ok(Some(_)) => {}
                }
            }
        }
    }
}

fn assert_code(st: &tonic::Status, code: Code, what: &str) {
    assert_eq!(st.code(), code, "{what}: {st:?}");
}

#[test]
fn chunk_calls_need_a_current_token_for_that_chunk_operation_node_and_caller() {
    run(Duration::from_secs(240), async {
        let cluster = Cluster::start(options()).await;
        let pki = cluster.pki().expect("a TLS cluster");
        let ring = KeyRing::load(&pki.token_keys).expect("the cluster's key file");
        let admin = cluster.client().await;
        let data = payload(1, 3 << 20);
        admin
            .put_bytes(data.clone(), "/tok/a.bin", &PutOptions::default())
            .await
            .expect("put over mutual TLS with tokens");
        let map = dfs_chaos::replicated_map(&admin, "/tok/a.bin", 3, &[]).await;
        let loc = &map.chunks[0];
        let chunk = loc.chunk_id.to_string();
        let other_chunk = map.chunks[1].chunk_id.to_string();
        let holder = &loc.replicas[0];
        let holder_addr = cluster
            .datanodes
            .iter()
            .find(|d| d.node_id().as_deref() == Some(holder.node_id.as_str()))
            .expect("the replica's process")
            .listen;
        let nodes: Vec<String> = loc.replicas.iter().map(|r| r.node_id.to_string()).collect();

        // The map's tokens are issued to the caller, for reads, on the
        // chunk's replicas.
        let token = loc
            .token
            .clone()
            .expect("a chunk map over TLS carries tokens");
        assert_eq!(token.principal, "client/admin");
        assert_eq!(token.ops, ops::READ);
        assert_eq!(token.nodes, nodes);
        assert!(token.expires_at_unix_s > now_s());

        let mut as_admin = datanode_as(holder_addr, &pki.security).await;
        let bob = pki.security("bob", Kind::Client);
        let mut as_bob = datanode_as(holder_addr, &bob).await;
        let rogue_id = dfs_common::id::random_hex_id();
        let rogue_dir = pki.identity_as("rogue", Kind::Datanode, &rogue_id);
        let rogue = Security::tls(dfs_common::tls::Tls::load(&rogue_dir).unwrap());
        let mut as_rogue = datanode_as(holder_addr, &rogue).await;

        // Control: the map's token reads the chunk.
        assert_eq!(
            read_chunk(&mut as_admin, &chunk, Some(token.clone()))
                .await
                .expect("a read with the map's token"),
            loc.size as usize
        );
        let prepared = as_admin
            .prepare_chunk_download(pb::PrepareChunkDownloadRequest {
                chunk_id: chunk.clone(),
                token: Some(token.clone()),
            })
            .await;
        assert!(prepared.is_ok(), "{prepared:?}");

        // Download: no token, a token of another caller, expired, for
        // another chunk, for another operation, altered, under a key the
        // ring does not hold.
        let st = read_chunk(&mut as_admin, &chunk, None).await.unwrap_err();
        assert_code(&st, Code::Unauthenticated, "a read without a token");
        let st = as_admin
            .prepare_chunk_download(pb::PrepareChunkDownloadRequest {
                chunk_id: chunk.clone(),
                token: None,
            })
            .await
            .unwrap_err();
        assert_code(
            &st,
            Code::Unauthenticated,
            "PrepareChunkDownload without a token",
        );
        let st = read_chunk(&mut as_bob, &chunk, Some(token.clone()))
            .await
            .unwrap_err();
        assert_code(
            &st,
            Code::PermissionDenied,
            "admin's token presented by bob",
        );
        let expired = ring.sign(&chunk, ops::READ, "client/admin", &nodes, now_s() - 120);
        let st = read_chunk(&mut as_admin, &chunk, Some(expired))
            .await
            .unwrap_err();
        assert_code(&st, Code::Unauthenticated, "an expired token");
        assert!(st.message().contains("expired"), "{st:?}");
        let elsewhere = ring.sign(
            &other_chunk,
            ops::READ,
            "client/admin",
            &nodes,
            now_s() + 600,
        );
        let st = read_chunk(&mut as_admin, &chunk, Some(elsewhere))
            .await
            .unwrap_err();
        assert_code(&st, Code::PermissionDenied, "a token for another chunk");
        let write_only = ring.sign(&chunk, ops::WRITE, "client/admin", &nodes, now_s() + 600);
        let st = read_chunk(&mut as_admin, &chunk, Some(write_only))
            .await
            .unwrap_err();
        assert_code(&st, Code::PermissionDenied, "a write token to read");
        let mut forged = token.clone();
        forged.principal = "client/bob".into();
        let st = read_chunk(&mut as_bob, &chunk, Some(forged))
            .await
            .unwrap_err();
        assert_code(&st, Code::Unauthenticated, "a token re-addressed to bob");
        assert!(st.message().contains("forged"), "{st:?}");
        let foreign = KeyRing::new(&[(token.key_id, [7u8; 32])]).sign(
            &chunk,
            ops::READ,
            "client/admin",
            &nodes,
            now_s() + 600,
        );
        let st = read_chunk(&mut as_admin, &chunk, Some(foreign))
            .await
            .unwrap_err();
        assert_code(&st, Code::Unauthenticated, "a token under another secret");
        let unknown = KeyRing::new(&[(99, [7u8; 32])]).sign(
            &chunk,
            ops::READ,
            "client/admin",
            &nodes,
            now_s() + 600,
        );
        let st = read_chunk(&mut as_admin, &chunk, Some(unknown))
            .await
            .unwrap_err();
        assert_code(
            &st,
            Code::Unauthenticated,
            "a token under an unknown key id",
        );
        let not_here: Vec<String> = vec![dfs_common::id::random_hex_id()];
        let elsewhere_node = ring.sign(&chunk, ops::READ, "client/admin", &not_here, now_s() + 600);
        let st = read_chunk(&mut as_admin, &chunk, Some(elsewhere_node))
            .await
            .unwrap_err();
        assert_code(&st, Code::PermissionDenied, "a token for other datanodes");

        // DeleteChunk (callers of the datanode kind only): without a
        // token, with a read token, with a forged delete. The replica
        // stays.
        let delete = |token| pb::DeleteChunkRequest {
            chunk_id: chunk.clone(),
            token,
        };
        let st = as_rogue.delete_chunk(delete(None)).await.unwrap_err();
        assert_code(&st, Code::Unauthenticated, "a delete without a token");
        let rogue_read = ring.sign(
            &chunk,
            ops::READ,
            &format!("datanode/{rogue_id}"),
            &nodes,
            now_s() + 600,
        );
        let st = as_rogue
            .delete_chunk(delete(Some(rogue_read)))
            .await
            .unwrap_err();
        assert!(
            matches!(st.code(), Code::PermissionDenied),
            "a read token to delete: {st:?}"
        );
        let mut forged_delete = token.clone();
        forged_delete.ops = ops::DELETE;
        let st = as_rogue
            .delete_chunk(delete(Some(forged_delete)))
            .await
            .unwrap_err();
        assert_code(&st, Code::Unauthenticated, "a read token altered to delete");
        assert_eq!(
            read_chunk(&mut as_admin, &chunk, Some(token.clone()))
                .await
                .expect("the replica is still there"),
            loc.size as usize
        );

        // ReplicateChunk from a datanode certificate: without a token, and
        // with the read token altered into a replicate one.
        let replicate = |token| {
            futures::stream::iter([pb::ReplicateChunkRequest {
                kind: Some(pb::replicate_chunk_request::Kind::Header(
                    pb::ReplicateChunkHeader {
                        session_id: "evil".into(),
                        chunk: Some(pb::ChunkMeta {
                            chunk_id: dfs_common::id::random_hex_id(),
                            size: 4096,
                            ..Default::default()
                        }),
                        source_node_id: "rogue".into(),
                        token,
                    },
                )),
            }])
        };
        let st = stream_error(as_rogue.replicate_chunk(replicate(None)).await).await;
        assert_code(
            &st,
            Code::Unauthenticated,
            "a replica stream without a token",
        );
        let mut forged_replicate = token.clone();
        forged_replicate.ops = ops::REPLICATE;
        let st = stream_error(
            as_rogue
                .replicate_chunk(replicate(Some(forged_replicate)))
                .await,
        )
        .await;
        assert_code(&st, Code::Unauthenticated, "a forged replicate token");

        // Upload: without a token; with the plan's token naming a target
        // the plan does not; control with the plan's own targets.
        let mut coord = pb::coordinator_client::CoordinatorClient::new(
            channel(
                cluster.coordinator.listen,
                &pki.security,
                &[Kind::Coordinator],
            )
            .await,
        );
        let plan = coord
            .upload_file(pb::UploadFileRequest {
                path: "/tok/planned.bin".into(),
                size: 4096,
                ..Default::default()
            })
            .await
            .expect("a plan")
            .into_inner();
        let planned = &plan.chunks[0];
        let write = planned
            .token
            .clone()
            .expect("a plan over TLS carries tokens");
        assert_eq!(write.ops, ops::WRITE);
        assert_eq!(
            write.nodes,
            planned
                .nodes
                .iter()
                .map(|n| n.node_id.clone())
                .collect::<Vec<_>>()
        );
        let primary_addr: SocketAddr = planned.nodes[0]
            .address
            .trim_start_matches("https://")
            .parse()
            .unwrap();
        let mut primary = datanode_as(primary_addr, &pki.security).await;
        let body = payload(5, 4096);
        let upload = |token: Option<pb::ChunkToken>, targets: Vec<pb::NodeAddress>| {
            futures::stream::iter([pb::ChunkData {
                data: body.clone(),
                offset: 0,
                is_final: true,
                frame_checksum: dfs_proto::frame::checksum(&body),
                session_id: String::new(),
                prepare: Some(pb::PrepareChunkUploadRequest {
                    chunk: Some(pb::ChunkMeta {
                        chunk_id: planned.chunk_id.clone(),
                        checksum: dfs_proto::frame::checksum(&body),
                        size: body.len() as u64,
                        ..Default::default()
                    }),
                    targets,
                    write_quorum: 0,
                    session_id: String::new(),
                    token,
                }),
            }])
        };
        let st = stream_error(
            primary
                .upload_chunk_stream(upload(None, planned.nodes[1..].to_vec()))
                .await,
        )
        .await;
        assert_code(&st, Code::Unauthenticated, "an upload without a token");
        let mut stray = planned.nodes[1..].to_vec();
        stray.push(pb::NodeAddress {
            node_id: dfs_common::id::random_hex_id(),
            address: "https://127.0.0.1:1".into(),
        });
        let st = stream_error(
            primary
                .upload_chunk_stream(upload(Some(write.clone()), stray))
                .await,
        )
        .await;
        assert_code(
            &st,
            Code::PermissionDenied,
            "a target the token does not name",
        );
        let st = stream_error(
            primary
                .upload_chunk_stream(upload(Some(write.clone()), planned.nodes[1..].to_vec()))
                .await,
        )
        .await;
        assert_code(&st, Code::Ok, "the plan's own upload");

        // Refusals were counted on the datanode, by reason.
        let text = metrics_text(
            cluster
                .datanodes
                .iter()
                .find(|d| d.listen == holder_addr)
                .unwrap()
                .metrics,
        )
        .unwrap();
        for reason in [
            "missing",
            "expired",
            "forged",
            "other_chunk",
            "other_operation",
            "other_principal",
            "unknown_key",
            "other_node",
        ] {
            assert!(
                metric_sum(
                    &text,
                    "dfs_datanode_token_refusals_total",
                    &format!("reason=\"{reason}\"")
                ) >= 1.0,
                "no {reason} refusal counted"
            );
        }
        // The file is intact throughout.
        assert_eq!(read_all(&admin, "/tok/a.bin").await.unwrap(), data.to_vec());
    });
}

#[test]
fn a_confirm_with_forged_receipts_commits_nothing() {
    run(Duration::from_secs(240), async {
        let cluster = Cluster::start(options()).await;
        let pki = cluster.pki().expect("a TLS cluster");
        let mut coord = pb::coordinator_client::CoordinatorClient::new(
            channel(
                cluster.coordinator.listen,
                &pki.security,
                &[Kind::Coordinator],
            )
            .await,
        );
        // A plan whose chunk nobody writes, confirmed with receipts made up
        // for every planned replica (right shape, no valid tag).
        let plan = coord
            .upload_file(pb::UploadFileRequest {
                path: "/tok/forged.bin".into(),
                size: 4096,
                ..Default::default()
            })
            .await
            .expect("a plan")
            .into_inner();
        let planned = &plan.chunks[0];
        let ids: Vec<String> = planned.nodes.iter().map(|n| n.node_id.clone()).collect();
        let confirm = |tag: Vec<u8>| pb::ConfirmUploadRequest {
            upload_id: plan.upload_id.clone(),
            chunks: vec![pb::ConfirmedChunk {
                index: 0,
                chunk: Some(pb::ChunkMeta {
                    chunk_id: planned.chunk_id.clone(),
                    checksum: 0x1234_5678,
                    size: 4096,
                    ..Default::default()
                }),
                replicas: ids.clone(),
                receipts: ids
                    .iter()
                    .map(|n| pb::ReplicaReceipt {
                        node_id: n.clone(),
                        checksum: 0x1234_5678,
                        size: 4096,
                        created: true,
                        key_id: 1,
                        tag: tag.clone(),
                    })
                    .collect(),
                pending: vec![],
            }],
        };
        let st = coord
            .confirm_upload(confirm(vec![0u8; 32]))
            .await
            .unwrap_err();
        assert_ne!(st.code(), Code::Ok);
        let st2 = coord.confirm_upload(confirm(Vec::new())).await.unwrap_err();
        assert_ne!(st2.code(), Code::Ok);
        let client = cluster.client().await;
        assert!(
            client.stat("/tok/forged.bin").await.is_err(),
            "a file was committed on forged receipts ({st:?})"
        );
        let text = metrics_text(cluster.coordinator.metrics).unwrap();
        assert!(
            metric_sum(&text, "dfs_coordinator_receipts_refused_total", "") >= 6.0,
            "refused receipts not counted"
        );

        // Control: a real upload's receipts are signed by their replicas and
        // commit at once.
        client
            .put_bytes(payload(3, 4096), "/tok/real.bin", &PutOptions::default())
            .await
            .expect("a real upload commits");
        let text = metrics_text(cluster.coordinator.metrics).unwrap();
        assert_eq!(
            metric_sum(&text, "dfs_coordinator_receipts_refused_total", ""),
            6.0,
            "a genuine receipt was refused"
        );
    });
}

#[test]
fn token_keys_rotate_while_uploads_run() {
    run(Duration::from_secs(240), async {
        let cluster = Cluster::start(options()).await;
        let pki = cluster.pki().expect("a TLS cluster");
        let client = Arc::new(cluster.client().await);
        let old = std::fs::read_to_string(&pki.token_keys).unwrap();
        let old_line = old
            .lines()
            .find(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap()
            .to_string();
        assert!(old_line.starts_with("1 "), "{old_line}");
        let new_line = format!("2 {}", "5a".repeat(32));

        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let len = if i.is_multiple_of(3) {
                            2 << 20
                        } else {
                            8 << 10
                        };
                        let path = format!("/keys/w{w}-{i}");
                        if let Err(e) = client
                            .put_bytes(payload(w * 100_000 + i, len), &path, &PutOptions::default())
                            .await
                        {
                            failures.push(format!("{path}: {e}"));
                        }
                        if let Err(e) = read_all(&client, &path).await {
                            failures.push(format!("{path} read: {e}"));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    (i, failures)
                })
            })
            .collect();
        // Reload (2 s) plus a few heartbeats, and uploads in between.
        let settle = || async {
            let before = done.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(4)).await;
            dfs_chaos::wait_for("uploads between steps", Duration::from_secs(60), || {
                let d = done.load(Ordering::Relaxed);
                async move {
                    if d >= before + 3 {
                        Ok(())
                    } else {
                        Err(format!("{} uploads", d - before))
                    }
                }
            })
            .await;
        };
        let write =
            |text: String| dfs_common::token::write_key_file(&pki.token_keys, &text).unwrap();
        // 1. The next key is added: datanodes learn it, key 1 still signs.
        write(format!("{old_line}\n{new_line}\n"));
        settle().await;
        // 2. It signs from now on.
        write(format!("{new_line}\n{old_line}\n"));
        settle().await;
        let map = client.chunk_map("/keys/w0-0").await.unwrap();
        assert_eq!(map.chunks[0].token.as_ref().unwrap().key_id, 2);
        // 3. The old key is retired.
        write(format!("{new_line}\n"));
        settle().await;
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for w in writers {
            let (n, failures) = w.await.unwrap();
            assert!(
                failures.is_empty(),
                "uploads failed during key rotation: {failures:?}"
            );
            total += n;
        }
        assert!(total >= 9, "only {total} uploads ran");

        // A token of the retired key no longer opens a chunk; one of the
        // new key does.
        let map = client.chunk_map("/keys/w0-0").await.unwrap();
        let loc = &map.chunks[0];
        let nodes: Vec<String> = loc.replicas.iter().map(|r| r.node_id.to_string()).collect();
        let addr = cluster
            .datanodes
            .iter()
            .find(|d| d.node_id().as_deref() == Some(loc.replicas[0].node_id.as_str()))
            .unwrap()
            .listen;
        let mut dn = datanode_as(addr, &pki.security).await;
        let retired = KeyRing::parse(std::path::Path::new("old"), &old)
            .unwrap()
            .sign(
                loc.chunk_id.as_str(),
                ops::READ,
                "client/admin",
                &nodes,
                now_s() + 600,
            );
        let st = read_chunk(&mut dn, loc.chunk_id.as_str(), Some(retired))
            .await
            .unwrap_err();
        assert_code(&st, Code::Unauthenticated, "a token of the retired key");
        read_chunk(&mut dn, loc.chunk_id.as_str(), loc.token.clone())
            .await
            .expect("a token of the current key");
    });
}

#[test]
fn repairs_run_under_replicate_tokens() {
    run(Duration::from_secs(240), async {
        let mut cluster = Cluster::start(ClusterOptions {
            datanodes: 4,
            ..options()
        })
        .await;
        let client = cluster.client().await;
        let data = payload(4, 3 << 20);
        client
            .put_bytes(data.clone(), "/tok/repair.bin", &PutOptions::default())
            .await
            .unwrap();
        dfs_chaos::replicated_map(&client, "/tok/repair.bin", 3, &[]).await;
        let victim = 1;
        let victim_id = cluster.datanodes[victim].node_id().unwrap();
        cluster.datanodes[victim].kill9();
        // The coordinator's repair commands carry a replicate token issued
        // to the source for the target: the copies land.
        dfs_chaos::wait_for(
            "re-replication to 3 replicas off the dead node",
            Duration::from_secs(120),
            || async {
                let map = client
                    .chunk_map("/tok/repair.bin")
                    .await
                    .map_err(|e| e.to_string())?;
                dfs_chaos::check_replicas(&map, 3, &[&victim_id])
            },
        )
        .await;
        assert_eq!(
            read_all(&client, "/tok/repair.bin").await.unwrap(),
            data.to_vec()
        );
        let refused: f64 = cluster
            .datanodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, d)| {
                metric_sum(
                    &metrics_text(d.metrics).unwrap(),
                    "dfs_datanode_token_refusals_total",
                    "",
                )
            })
            .sum();
        assert_eq!(refused, 0.0, "a genuine token was refused");
    });
}

/// A writer that takes `pause_at` bytes, then stalls for `pause` once: a
/// slow consumer whose download outlives the tokens of its chunk map.
struct SlowReader {
    got: Vec<u8>,
    pause_at: usize,
    pause: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    paused: bool,
}

impl tokio::io::AsyncWrite for SlowReader {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if !me.paused && me.got.len() >= me.pause_at {
            let pause = me.pause;
            let sleep = me
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            std::task::ready!(sleep.as_mut().poll(cx));
            me.paused = true;
        }
        me.got.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A download that outlives its chunk map's read tokens (3 s here, and
/// datanodes that allow no clock skew) renews them from a fresh map of the
/// same file and finishes; without the renewal its later chunks are
/// refused as expired.
#[test]
fn a_download_outliving_its_read_tokens_renews_them() {
    let mut opts = options();
    opts.coordinator_args = vec!["--chunk-token-lifetime".into(), "3s".into()];
    opts.datanode_args = vec!["--token-clock-skew".into(), "0s".into()];
    run(Duration::from_secs(120), async {
        let cluster = Cluster::start(opts).await;
        let client = cluster.client().await;
        let data = payload(31, 3 << 20);
        client
            .put_bytes(data.clone(), "/slow/file", &PutOptions::default())
            .await
            .expect("put");
        let calls = |text: &str| {
            metric_sum(
                text,
                "dfs_coordinator_rpc_requests_total",
                "method=\"DownloadFile\"",
            )
        };
        let before = calls(&metrics_text(cluster.coordinator.metrics).unwrap());
        // The first chunk arrives at once; then the reader stalls past the
        // tokens' lifetime, and the third chunk starts after it.
        let mut slow = SlowReader {
            got: Vec::new(),
            pause_at: 1 << 20,
            pause: Duration::from_secs(5),
            sleep: None,
            paused: false,
        };
        client
            .get("/slow/file", &mut slow)
            .await
            .expect("a download longer than its tokens live");
        assert!(slow.paused, "the reader stalled");
        assert!(slow.got == data.to_vec(), "the bytes differ");
        let after = calls(&metrics_text(cluster.coordinator.metrics).unwrap());
        assert!(
            after >= before + 2.0,
            "the tokens were renewed from fresh maps: {before} -> {after} DownloadFile calls"
        );
        // Tokens of 3 s are renewed at half their life, not 30 s ahead: a
        // fresh map is not "expiring" at once, so the download takes the
        // first map and one renewal after the stall (a refusal at most one
        // more), never one map per chunk.
        assert!(
            after <= before + 3.0,
            "one chunk map per chunk: {before} -> {after} DownloadFile calls"
        );
        // A token that expired is refused outright by these datanodes: the
        // renewal above is what kept the download going.
        let map = client.chunk_map("/slow/file").await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let loc = &map.chunks[0];
        let addr: SocketAddr = loc.replicas[0]
            .address
            .trim_start_matches("https://")
            .parse()
            .unwrap();
        let mut dn = datanode_as(addr, &cluster.pki().unwrap().security).await;
        let refused = read_chunk(&mut dn, loc.chunk_id.as_str(), loc.token.clone())
            .await
            .unwrap_err();
        assert_code(&refused, Code::Unauthenticated, "an expired read token");
        assert!(refused.message().contains("expired"), "{refused:?}");
    });
}
