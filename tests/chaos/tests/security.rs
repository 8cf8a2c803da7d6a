//! Issue 18: the doors an unauthenticated cluster left open, tried on real
//! processes with mutual TLS on every hop (`ClusterOptions::tls`). Each
//! attack is refused, and a control call with the right credentials
//! succeeds on the same path, so no check passes by failing for another
//! reason.
//!
//! Certificate rotation: every process's certificate and key are reissued
//! while uploads run; nothing fails and the servers present the new
//! certificates without a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dfs_chaos::{Cluster, ClusterOptions, metric_sum, metrics_text, payload, read_all, run};
use dfs_client::{Client, ClientConfig, ClientError, PutOptions};
use dfs_common::tls::{Kind, Security, Tls};
use dfs_proto as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

fn options() -> ClusterOptions {
    ClusterOptions {
        tls: true,
        chunk_size: "1MiB".into(),
        ..Default::default()
    }
}

/// A channel to `addr` over TLS with `security`'s credentials, to a
/// server of `kind`.
async fn channel(
    addr: SocketAddr,
    security: &Security,
    kind: &'static [Kind],
) -> Result<Channel, String> {
    let url = format!("https://{addr}");
    let ep =
        dfs_common::transport::endpoint(&url, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    dfs_common::transport::connect_to(ep, security, kind)
        .await
        .map_err(|e| e.to_string())
}

/// The status a streaming call ends with: refused at once, or as the
/// first answer of its response stream.
async fn first_error<T>(
    call: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> tonic::Status {
    match call {
        Err(st) => st,
        Ok(r) => r
            .into_inner()
            .message()
            .await
            .err()
            .unwrap_or_else(|| tonic::Status::ok("the stream was served")),
    }
}

async fn coordinator_as(
    cluster: &Cluster,
    security: &Security,
) -> pb::coordinator_client::CoordinatorClient<Channel> {
    pb::coordinator_client::CoordinatorClient::new(
        channel(cluster.coordinator.listen, security, &[Kind::Coordinator])
            .await
            .expect("a TLS connection to the coordinator"),
    )
}

async fn datanode_as(
    addr: SocketAddr,
    security: &Security,
) -> pb::data_node_client::DataNodeClient<Channel> {
    pb::data_node_client::DataNodeClient::new(
        channel(addr, security, &[Kind::Datanode])
            .await
            .expect("a TLS connection to the datanode"),
    )
}

fn client_config(cluster: &Cluster, security: Security) -> ClientConfig {
    let mut config = ClientConfig::new(&cluster.url);
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(10);
    config.stream_idle_timeout = Duration::from_secs(5);
    config.security = security;
    config
}

/// Raw TLS 1.3 to `addr` with `config`, then an HTTP/2 preface: the
/// server's certificate and how many bytes it answered (0 or an error: it
/// closed the connection).
async fn probe(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<(CertificateDer<'static>, usize)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presents a certificate")
        .clone()
        .into_owned();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    // An empty SETTINGS frame.
    tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
    tls.flush().await?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer in 5 s"))??;
    Ok((cert, n))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(dir: &std::path::Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// The Web PKI check, except that a certificate not valid for the dialled
/// name is accepted when it names a datanode: as dfs itself dials
/// datanodes (known by principal; their certificates carry no address).
#[derive(Debug)]
struct DatanodesByPrincipal(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for DatanodesByPrincipal {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if dfs_common::tls::Principal::of_certificate(end_entity)
                .is_ok_and(|p| p.kind == Kind::Datanode) =>
            {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS 1.3 client trusting `ca_dir`'s CA, with `identity`'s certificate
/// (or none).
fn raw_config(
    ca_dir: &std::path::Path,
    identity: Option<&std::path::Path>,
) -> rustls::ClientConfig {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(ca_dir)),
        provider(),
    )
    .build()
    .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DatanodesByPrincipal(verifier)));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(dir) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(dir.join("tls.crt"))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
            let key = PrivateKeyDer::from_pem_file(dir.join("tls.key")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A TLS server config presenting the identity in `dir` (a trap that is
/// not a datanode).
fn trap_server_config(dir: &std::path::Path) -> rustls::ServerConfig {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("tls.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("tls.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A TLS server on 127.0.0.1 presenting the identity in `dir` that counts
/// the request bytes it receives after the handshake.
async fn tls_trap(dir: &std::path::Path) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let (bytes, server) = (received.clone(), trap_server_config(dir));
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, bytes) = (acceptor.clone(), bytes.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (addr, received)
}

/// Plans a 4 KiB upload of `path` as the caller of `coordinator`, then
/// uploads it to the planned primary with its real write token and
/// `write_quorum`, but with the fan-out targets `targets` makes of the
/// planned nodes. The node ids that stored the chunk (the primary's answer,
/// which comes once `write_quorum` copies are stored: a copy still on its
/// way then is not listed).
async fn fan_out(
    coordinator: &mut pb::coordinator_client::CoordinatorClient<Channel>,
    security: &Security,
    path: &str,
    write_quorum: u32,
    targets: impl FnOnce(&[pb::NodeAddress]) -> Vec<pb::NodeAddress>,
) -> Vec<String> {
    let data = payload(9, 4096);
    let plan = coordinator
        .upload_file(pb::UploadFileRequest {
            path: path.into(),
            size: data.len() as u64,
            replication: 3,
            ..Default::default()
        })
        .await
        .expect("a plan for the caller's own upload")
        .into_inner();
    let chunk = plan.chunks[0].clone();
    assert_eq!(chunk.nodes.len(), 3, "{chunk:?}");
    assert!(chunk.token.is_some(), "a TLS plan carries a write token");
    let primary: SocketAddr = chunk.nodes[0]
        .address
        .trim_start_matches("https://")
        .parse()
        .expect("the primary's address");
    let checksum = dfs_proto::frame::checksum(&data);
    let frame = pb::ChunkData {
        data: data.clone(),
        offset: 0,
        is_final: true,
        frame_checksum: checksum,
        session_id: String::new(),
        prepare: Some(pb::PrepareChunkUploadRequest {
            chunk: Some(pb::ChunkMeta {
                chunk_id: chunk.chunk_id.clone(),
                checksum,
                size: data.len() as u64,
                ..Default::default()
            }),
            targets: targets(&chunk.nodes),
            write_quorum,
            session_id: String::new(),
            token: chunk.token.clone(),
        }),
    };
    let mut stored = Vec::new();
    let mut dn = datanode_as(primary, security).await;
    let mut answers = dn
        .upload_chunk_stream(futures::stream::iter([frame]))
        .await
        .expect("the primary takes the upload its token covers")
        .into_inner();
    while let Some(m) = answers.message().await.expect("the primary's answer") {
        if let Some(pb::upload_chunk_response::Kind::Replicas(r)) = m.kind {
            stored = r.replicas;
        }
    }
    coordinator
        .abort_upload(pb::AbortUploadRequest {
            upload_id: plan.upload_id,
        })
        .await
        .expect("the caller aborts its own upload");
    assert!(
        stored.first() == Some(&chunk.nodes[0].node_id),
        "the primary stored its copy: {stored:?}"
    );
    stored
}

fn code_of(e: &ClientError) -> String {
    match e {
        ClientError::Denied { .. } => "denied".into(),
        other => format!("{other}"),
    }
}

#[test]
fn every_door_is_closed_to_callers_without_the_right_certificate() {
    run(Duration::from_secs(240), async {
        // Three coordinators: Raft and call forwarding run over mutual TLS
        // too, and only coordinators may speak Raft.
        let cluster = Cluster::start(ClusterOptions {
            coordinators: 3,
            ..options()
        })
        .await;
        let pki = cluster.pki().expect("a TLS cluster");
        let admin = cluster.client().await;

        // The control: every hop works with the cluster's own certificates
        // (client ↔ coordinator and datanodes, datanode ↔ datanode fan-out,
        // datanode ↔ coordinator heartbeats and reports).
        let big = payload(1, 3 << 20);
        admin
            .put_bytes(big.clone(), "/sec/big.bin", &PutOptions::default())
            .await
            .expect("put over mutual TLS");
        admin
            .put_bytes(payload(2, 4096), "/sec/small.bin", &PutOptions::default())
            .await
            .expect("small put over mutual TLS");
        assert_eq!(
            read_all(&admin, "/sec/big.bin").await.unwrap(),
            big.to_vec()
        );
        let map = dfs_chaos::replicated_map(&admin, "/sec/big.bin", 3, &[]).await;
        let chunk = map.chunks[0].chunk_id.to_string();
        let dn0 = cluster.datanodes[0].listen;
        let dn0_id = cluster.datanodes[0].node_id().expect("node id");

        // 1. Plain text to a TLS port: refused.
        let mut plain = ClientConfig::new(format!("http://{}", cluster.coordinator.listen));
        plain.connect_timeout = Duration::from_secs(2);
        plain.request_timeout = Duration::from_secs(5);
        let refused = match Client::connect(plain).await {
            Err(_) => true,
            Ok(c) => c.list("/").await.is_err(),
        };
        assert!(
            refused,
            "a plain-text client was served by a TLS coordinator"
        );

        // 2. TLS without a client certificate: the handshake's end is
        // refused, on the coordinator and on a datanode; with the admin's
        // certificate the same probe gets the server's HTTP/2 settings.
        let ca = pki.admin.clone();
        for (what, addr) in [
            ("coordinator", cluster.coordinator.listen),
            ("datanode", dn0),
        ] {
            let anonymous = probe(addr, raw_config(&ca, None)).await;
            assert!(
                !matches!(anonymous, Ok((_, n)) if n > 0),
                "{what} answered a caller without a client certificate: {anonymous:?}"
            );
            let (_, n) = probe(addr, raw_config(&ca, Some(&pki.admin)))
                .await
                .unwrap_or_else(|e| panic!("{what} refused the admin certificate: {e}"));
            assert!(n > 0, "{what} sent nothing to the admin");
        }

        // 3. A certificate from another CA (that trusts ours, so only the
        // server's check can refuse it).
        let rogue_root = cluster.root().join("rogue");
        let rogue_ca = dfs_common::pki::Ca::create(&rogue_root.join("ca"), "rogue CA").unwrap();
        let rogue_dir = rogue_root.join("admin");
        rogue_ca
            .issue(
                &rogue_dir,
                &dfs_common::tls::Principal::new(Kind::Client, "admin"),
                &[],
            )
            .unwrap();
        std::fs::copy(pki.admin.join("ca.crt"), rogue_dir.join("ca.crt")).unwrap();
        for (what, addr) in [
            ("coordinator", cluster.coordinator.listen),
            ("datanode", dn0),
        ] {
            let r = probe(addr, raw_config(&ca, Some(&rogue_dir))).await;
            assert!(
                !matches!(r, Ok((_, n)) if n > 0),
                "{what} answered a certificate of another CA: {r:?}"
            );
        }
        let rogue = Security::tls(Tls::load(&rogue_dir).unwrap());
        let rogue_client = Client::connect(client_config(&cluster, rogue)).await;
        if let Ok(c) = rogue_client {
            assert!(
                c.list("/sec").await.is_err(),
                "a client with another CA's certificate listed the namespace"
            );
        }

        // 4. A client that is not an admin: the namespace yes, admin calls
        // no (then the admin's own call works).
        let alice = pki.security("alice", Kind::Client);
        let alice_client = Client::connect(client_config(&cluster, alice.clone()))
            .await
            .expect("alice connects");
        assert_eq!(
            alice_client.list("/sec").await.expect("alice lists").len(),
            2
        );
        let e = alice_client.set_safe_mode(true).await.unwrap_err();
        assert_eq!(code_of(&e), "denied", "SetSafeMode by a non-admin: {e}");
        let dn0_node: dfs_client::NodeId = dn0_id.parse().expect("node id");
        let e = alice_client
            .decommission(&dn0_node, false)
            .await
            .unwrap_err();
        assert_eq!(
            code_of(&e),
            "denied",
            "DecommissionNode by a non-admin: {e}"
        );
        let st = admin
            .set_safe_mode(true)
            .await
            .expect("the admin enters safe mode");
        assert!(st.safe_mode.active, "{st:?}");
        admin
            .set_safe_mode(false)
            .await
            .expect("the admin leaves safe mode");

        // 5. A client posing as a datanode: it may not register (claiming
        // all the free space in the world) nor heartbeat.
        let mut as_alice = coordinator_as(&cluster, &alice).await;
        let fake = dfs_common::id::random_hex_id();
        let register = |node_id: String| pb::RegisterDataNodeRequest {
            node_id,
            address: "https://127.0.0.1:9".into(),
            info: Some(pb::NodeInfo {
                free_bytes: u64::MAX / 2,
                total_bytes: u64::MAX / 2,
                ..Default::default()
            }),
            topology: Some(pb::Topology {
                host: "evil".into(),
                ..Default::default()
            }),
            version: "0".into(),
            cluster_id: String::new(),
        };
        let st = as_alice
            .register_data_node(register(fake.clone()))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
        let hb = pb::Heartbeat {
            node_id: dn0_id.clone(),
            ..Default::default()
        };
        let st = first_error(
            as_alice
                .data_node_heartbeat(futures::stream::iter([hb.clone()]))
                .await,
        )
        .await;
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");

        // 6. A datanode certificate speaking for another node: registering
        // or heartbeating under datanode 0's id is refused.
        let impostor_id = dfs_common::id::random_hex_id();
        let impostor_dir = pki.identity_as("impostor", Kind::Datanode, &impostor_id);
        let impostor = Security::tls(Tls::load(&impostor_dir).unwrap());
        let mut as_impostor = coordinator_as(&cluster, &impostor).await;
        let st = as_impostor
            .register_data_node(register(dn0_id.clone()))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
        assert!(st.message().contains(&impostor_id), "{}", st.message());
        let st = first_error(
            as_impostor
                .data_node_heartbeat(futures::stream::iter([hb]))
                .await,
        )
        .await;
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
        // The real datanode 0 is still healthy and nothing was registered.
        let nodes = admin.nodes().await.unwrap();
        assert_eq!(nodes.len(), 3, "{nodes:?}");

        // 7. A client may neither replicate into a datanode nor delete a
        // chunk it learned the id of.
        let mut dn_alice = datanode_as(dn0, &alice).await;
        let st = dn_alice
            .delete_chunk(pb::DeleteChunkRequest {
                chunk_id: chunk.clone(),
                token: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
        let header = pb::ReplicateChunkRequest {
            kind: Some(pb::replicate_chunk_request::Kind::Header(
                pb::ReplicateChunkHeader {
                    session_id: "evil".into(),
                    chunk: Some(pb::ChunkMeta {
                        chunk_id: dfs_common::id::random_hex_id(),
                        size: 4096,
                        ..Default::default()
                    }),
                    source_node_id: dn0_id.clone(),
                    token: Default::default(),
                },
            )),
        };
        let st = first_error(
            dn_alice
                .replicate_chunk(futures::stream::iter([header]))
                .await,
        )
        .await;
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
        // Every replica of the file is still there and intact.
        assert_eq!(
            read_all(&admin, "/sec/big.bin").await.unwrap(),
            big.to_vec()
        );
        dfs_chaos::replicated_map(&admin, "/sec/big.bin", 3, &[]).await;

        // 7b. A client with a real write token naming fan-out targets
        // outside the cluster under the plan's node ids: a plain-text
        // server, a TLS server whose certificate (of this CA) is not a
        // datanode's, and (7d) a server holding another datanode's
        // identity at the address of a planned node. The primary sends
        // none of them a byte of a request; the chunk lands on the primary
        // only.
        let plain_trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain_trap.local_addr().unwrap();
        let plain_hits = Arc::new(AtomicU64::new(0));
        let hits = plain_hits.clone();
        tokio::spawn(async move {
            while let Ok((_s, _)) = plain_trap.accept().await {
                hits.fetch_add(1, Ordering::Relaxed);
            }
        });
        let alice_dir = pki.root.join("alice");
        let (tls_addr, tls_bytes) = tls_trap(&alice_dir).await;
        let (dn_trap_addr, dn_trap_bytes) = tls_trap(&impostor_dir).await;
        let stored = fan_out(&mut as_alice, &alice, "/sec/fanout-b.bin", 1, |nodes| {
            vec![
                pb::NodeAddress {
                    node_id: nodes[1].node_id.clone(),
                    address: format!("http://{plain_addr}"),
                },
                pb::NodeAddress {
                    node_id: nodes[2].node_id.clone(),
                    address: format!("https://{tls_addr}"),
                },
            ]
        })
        .await;
        assert_eq!(stored.len(), 1, "stored on {stored:?}");
        // Write quorum 2: the answer waits for the second copy, so the count
        // does not race the replica (at quorum 1 a loaded machine answered
        // before it, in CI).
        let stored = fan_out(&mut as_alice, &alice, "/sec/fanout-d.bin", 2, |nodes| {
            vec![
                pb::NodeAddress {
                    node_id: nodes[1].node_id.clone(),
                    address: format!("https://{dn_trap_addr}"),
                },
                nodes[2].clone(),
            ]
        })
        .await;
        // The control: the planned node at its own address got its copy.
        assert_eq!(stored.len(), 2, "stored on {stored:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            plain_hits.load(Ordering::Relaxed),
            0,
            "the primary dialled a plain-text target"
        );
        assert_eq!(
            tls_bytes.load(Ordering::Relaxed),
            0,
            "the primary sent a request to a server that is not a datanode"
        );
        assert_eq!(
            dn_trap_bytes.load(Ordering::Relaxed),
            0,
            "the primary sent a request to another datanode's identity at a planned node's address"
        );

        // 7c. A server with a client certificate of this CA posing as the
        // coordinator: the admin's client library refuses it before any
        // request (its certificate is valid, but names no coordinator).
        let (fake_addr, fake_bytes) = tls_trap(&alice_dir).await;
        let mut to_fake = client_config(&cluster, pki.security.clone());
        to_fake.coordinator = format!("https://{fake_addr}");
        let posed = Client::connect(to_fake).await;
        assert!(
            posed.is_err(),
            "the client took a client certificate for a coordinator"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            fake_bytes.load(Ordering::Relaxed),
            0,
            "the client sent a request to a server that is not a coordinator"
        );

        // 8. Only coordinators join the Raft group (a member answers
        // another member's Hello; the control is the group being up).
        let mut raft_alice = pb::coordinator_raft_client::CoordinatorRaftClient::new(
            channel(cluster.coordinator.listen, &alice, &[Kind::Coordinator])
                .await
                .unwrap(),
        );
        let st = raft_alice.hello(pb::HelloRequest {}).await.unwrap_err();
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");

        // The refusals are counted.
        let text = metrics_text(cluster.coordinator.metrics).unwrap();
        for needed in ["admins", "datanodes", "itself"] {
            assert!(
                metric_sum(
                    &text,
                    "dfs_coordinator_refused_calls_total",
                    &format!("needed=\"{needed}\"")
                ) >= 1.0,
                "no refusal counted for {needed}"
            );
        }
        let text = metrics_text(cluster.datanodes[0].metrics).unwrap();
        assert!(metric_sum(&text, "dfs_datanode_refused_calls_total", "") >= 2.0);
    });
}

#[test]
fn certificates_rotate_while_uploads_run() {
    run(Duration::from_secs(240), async {
        let mut cluster = Cluster::start(options()).await;
        let client = Arc::new(cluster.client().await);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        // Large (several chunks, fan-out) and small files.
                        let len = if i.is_multiple_of(3) {
                            2 << 20
                        } else {
                            8 << 10
                        };
                        let path = format!("/rot/w{w}-{i}");
                        if let Err(e) = client
                            .put_bytes(payload(w * 100_000 + i, len), &path, &PutOptions::default())
                            .await
                        {
                            failures.push(format!("{path}: {e}"));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    (i, failures)
                })
            })
            .collect();

        let pki = cluster.pki().expect("a TLS cluster");
        let node_ids: Vec<String> = cluster
            .datanodes
            .iter()
            .map(|d| d.node_id().expect("node id"))
            .collect();
        for round in 0..2 {
            let before = done.load(Ordering::Relaxed);
            // Reissue every identity in place (a Secret's files updated).
            let coordinator_dir = pki.identity("coordinator", Kind::Coordinator);
            for (i, id) in node_ids.iter().enumerate() {
                pki.datanode_identity(&format!("datanode-{i}"), id);
            }
            let fresh = CertificateDer::pem_file_iter(coordinator_dir.join("tls.crt"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            // The coordinator presents the new certificate within a few
            // reload intervals, without a restart.
            let ca = pki.admin.clone();
            let admin = pki.admin.clone();
            let addr = cluster.coordinator.listen;
            dfs_chaos::wait_for(
                "the coordinator to present its new certificate",
                Duration::from_secs(20),
                || {
                    let (ca, admin, fresh) = (ca.clone(), admin.clone(), fresh.clone());
                    async move {
                        let (cert, _) = probe(addr, raw_config(&ca, Some(&admin)))
                            .await
                            .map_err(|e| e.to_string())?;
                        if cert == fresh {
                            Ok(())
                        } else {
                            Err("still the old certificate".to_string())
                        }
                    }
                },
            )
            .await;
            // So does every datanode (each reloads on its own tick).
            let datanode_metrics: Vec<SocketAddr> =
                cluster.datanodes.iter().map(|d| d.metrics).collect();
            dfs_chaos::wait_for(
                "every datanode to take up its new certificate",
                Duration::from_secs(20),
                || {
                    let addrs = datanode_metrics.clone();
                    async move {
                        for addr in addrs {
                            let text = metrics_text(addr)?;
                            let n = metric_sum(&text, "dfs_datanode_tls_reloads_total", "");
                            if n < (round + 1) as f64 {
                                return Err(format!("{addr}: {n} reloads"));
                            }
                        }
                        Ok(())
                    }
                },
            )
            .await;
            // Uploads kept going meanwhile.
            dfs_chaos::wait_for(
                "uploads to go on after the rotation",
                Duration::from_secs(30),
                || {
                    let done = done.clone();
                    async move {
                        if done.load(Ordering::Relaxed) >= before + 4 {
                            Ok(())
                        } else {
                            Err(format!("round {round}: uploads stalled"))
                        }
                    }
                },
            )
            .await;
        }
        // Each reload is counted, and the expiry of the certificate in use
        // is exported (for an alert well before it).
        let text = metrics_text(cluster.coordinator.metrics).unwrap();
        assert!(
            metric_sum(&text, "dfs_coordinator_tls_reloads_total", "") >= 2.0,
            "{text}"
        );
        let expiry = metric_sum(
            &text,
            "dfs_coordinator_tls_certificate_expiry_timestamp_seconds",
            "",
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(expiry > now + 86_400.0, "expiry {expiry}, now {now}");
        let text = metrics_text(cluster.datanodes[0].metrics).unwrap();
        assert!(metric_sum(&text, "dfs_datanode_tls_reloads_total", "") >= 2.0);
        stop.store(true, Ordering::Relaxed);
        let mut written = 0;
        for (w, h) in writers.into_iter().enumerate() {
            let (n, failures) = h.await.unwrap();
            assert!(failures.is_empty(), "writer {w}: {failures:?}");
            for i in 0..n {
                let len = if i.is_multiple_of(3) {
                    2 << 20
                } else {
                    8 << 10
                };
                let want = payload(w as u64 * 100_000 + i, len);
                let got = read_all(&client, &format!("/rot/w{w}-{i}")).await.unwrap();
                assert!(got == want.to_vec(), "/rot/w{w}-{i} differs");
            }
            written += n;
        }
        assert!(written >= 8, "only {written} uploads ran");
        // A datanode restarted after the rotation comes back on its new
        // certificate (same node id), and a file needing all three lands.
        cluster.datanodes[1].restart();
        cluster.wait_healthy(3).await;
        let last = payload(7, 3 << 20);
        let fresh_client = cluster.client().await;
        fresh_client
            .put_bytes(last.clone(), "/rot/after", &PutOptions::default())
            .await
            .expect("a put after the restart");
        dfs_chaos::replicated_map(&fresh_client, "/rot/after", 3, &[]).await;
        assert_eq!(
            read_all(&fresh_client, "/rot/after").await.unwrap(),
            last.to_vec()
        );
        println!("certificate rotation: 2 rounds, {written} uploads, none failed");
    });
}

/// operator ↔ coordinator: the operator calls a TLS cluster's coordinator
/// with an identity it issues itself from the cluster's CA
/// (`dfs://operator/dfs-operator`, held in memory), which the coordinator
/// admits to the status call and to the admin call it makes (maintenance).
/// Without one it cannot call at all.
#[test]
fn the_operator_calls_a_tls_coordinator_with_its_own_identity() {
    use dfs_operator::coordinator::{Coordinator, GrpcCoordinator};
    run(Duration::from_secs(120), async {
        let cluster = Cluster::start(options()).await;
        let pki = cluster.pki().expect("a TLS cluster");
        let url = format!("https://{}", cluster.coordinator.listen);
        let operator = GrpcCoordinator::new(Duration::from_secs(10));
        let e = operator.cluster_status(&url).await.unwrap_err().to_string();
        assert!(e.contains("credentials") || e.contains("TLS"), "{e}");
        let identity = dfs_operator::controller::pki::operator_identity(&pki.ca).unwrap();
        assert_eq!(identity.principal().kind, Kind::Operator);
        operator.use_identity(&url, Some(identity));
        let facts = operator
            .cluster_status(&url)
            .await
            .expect("the operator reads the cluster's status over mutual TLS");
        assert_eq!(facts.nodes.len(), 3, "{facts:?}");
        let node = cluster.datanodes[0].node_id().expect("node id");
        operator
            .set_maintenance(&url, &node, true, Duration::from_secs(60))
            .await
            .expect("the operator may make the maintenance call");
        operator
            .set_maintenance(&url, &node, false, Duration::from_secs(60))
            .await
            .expect("and end it");
        // An identity from another CA is refused at the handshake.
        let (other, _) = dfs_common::pki::Ca::generate("not this cluster").unwrap();
        let stranger = dfs_operator::controller::pki::operator_identity(&other).unwrap();
        let elsewhere = GrpcCoordinator::new(Duration::from_secs(5));
        elsewhere.use_identity(&url, Some(stranger));
        assert!(elsewhere.cluster_status(&url).await.is_err());
    });
}
