//! Mutual TLS 1.3 for every gRPC hop, with certificates reloaded from files.
//!
//! Every process holds one identity: a directory in the layout of a
//! Kubernetes `kubernetes.io/tls` Secret plus its CA (`ca.crt`, `tls.crt`,
//! `tls.key`), as cert-manager writes it and as `dfs up` creates it
//! ([`crate::pki`]). The same identity serves (the server side of every
//! hop) and dials (the client side): a datanode presents one certificate to
//! clients, to other datanodes and to the coordinator.
//!
//! The files are read again every few seconds ([`Tls::watch`]); a change
//! (a renewed certificate, a rotated CA bundle) applies to every connection
//! made after it, without a restart. Connections already open keep the
//! credentials they were made with. A change that does not load (a Secret
//! half-updated, a key that does not match) keeps the previous credentials
//! and is logged: a running node never falls back to no credentials.
//!
//! Who is calling is the certificate's principal: a URI SAN
//! `dfs://<kind>/<name>` ([`Principal`]). The server reads it once per
//! connection, at the handshake, and hands it to every call on that
//! connection ([`PeerInfo`] in the request's extensions).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// File names inside a TLS directory (a `kubernetes.io/tls` Secret with
/// its CA, mounted as a directory).
pub const CA_FILE: &str = "ca.crt";
/// The certificate chain of this identity.
pub const CERT_FILE: &str = "tls.crt";
/// Its private key (PKCS#8, SEC1 or PKCS#1 PEM).
pub const KEY_FILE: &str = "tls.key";

/// How often the files are read for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long a peer may take to complete a TLS handshake before the
/// connection is dropped (a peer that opens sockets and never speaks holds
/// nothing for longer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes a server runs at once; connections past this wait in the
/// kernel's accept queue.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;

/// Metadata a coordinator adds to a call it forwards to its leader: the
/// principal the call came from (honoured only from a coordinator).
pub const FORWARDED_FOR_METADATA: &str = "dfs-forwarded-for";

/// The client principal (`dfs://client/admin`) that holds every right
/// without an access-file entry: the identity `dfs up` and the operator
/// issue for people and jobs that run the cluster.
pub const ADMIN_CLIENT: &str = "admin";

/// The URI scheme of principals in certificates.
const PRINCIPAL_SCHEME: &str = "dfs://";

/// Why TLS credentials could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("certificate generation: {0}")]
    Generate(String),
}

/// The kinds of principal a certificate can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A member of the coordinator group.
    Coordinator,
    /// A datanode (its name binds its node id; see the coordinator).
    Datanode,
    /// The Kubernetes operator.
    Operator,
    /// A user or application (CLI, client library).
    Client,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Coordinator => "coordinator",
            Kind::Datanode => "datanode",
            Kind::Operator => "operator",
            Kind::Client => "client",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "coordinator" => Kind::Coordinator,
            "datanode" => Kind::Datanode,
            "operator" => Kind::Operator,
            "client" => Kind::Client,
            _ => return None,
        })
    }
}

/// Who a certificate speaks for: `dfs://<kind>/<name>` in its URI SANs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub kind: Kind,
    pub name: String,
}

impl Principal {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }

    /// The SAN URI naming this principal.
    pub fn uri(&self) -> String {
        format!("{PRINCIPAL_SCHEME}{}/{}", self.kind.as_str(), self.name)
    }

    /// Parses a SAN URI; `None` for anything that is not a principal.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(PRINCIPAL_SCHEME)?;
        let (kind, name) = rest.split_once('/')?;
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
        if !valid {
            return None;
        }
        Some(Self::new(Kind::parse(kind)?, name))
    }

    /// The principal of a DER certificate: its one `dfs://` URI SAN.
    pub fn of_certificate(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("unparsable certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName: {e}"))?
            .ok_or("the certificate has no subjectAltName")?;
        let mut found = san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with(PRINCIPAL_SCHEME) => {
                Some(*u)
            }
            _ => None,
        });
        let (Some(uri), None) = (found.next(), found.next()) else {
            return Err(format!(
                "the certificate must name exactly one {PRINCIPAL_SCHEME}<kind>/<name> URI"
            ));
        };
        Self::from_uri(uri).ok_or_else(|| format!("not a dfs principal: {uri:?}"))
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// The credentials loaded from one reading of the files.
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    me: Principal,
    /// The certificate's notAfter (Unix seconds).
    not_after: i64,
    /// The files' bytes, to tell a change from a touch.
    stamp: Vec<u8>,
}

/// Where an identity's three parts are read from.
#[derive(Debug, Clone)]
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn all(&self) -> [&Path; 3] {
        [&self.ca, &self.cert, &self.key]
    }
}

/// One process's TLS identity, reloaded when its files change.
pub struct Tls {
    dir: PathBuf,
    /// `None`: held in memory ([`Tls::from_pem`]), never reloaded.
    files: Option<Files>,
    current: RwLock<Arc<Loaded>>,
    reloads: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("dir", &self.dir)
            .field("principal", &self.principal())
            .finish()
    }
}

/// The *ring* provider with AES-128-GCM first: as safe as AES-256 for
/// this use and about a quarter cheaper per byte, and chunk bytes are most
/// of what crosses a connection.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::Parse {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Verifies servers against the cluster's CA. The name check is that of
/// the Web PKI (the URL's host must be in the certificate) except for
/// datanodes: they are known by their principal (`dfs://datanode/<node
/// id>`, checked by every caller), not by their address, because in
/// Kubernetes a datanode's pod IP is not known when its certificate is
/// issued and changes with every restart.
#[derive(Debug)]
struct ClusterVerifier {
    roots: Arc<RootCertStore>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for ClusterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match rustls::client::verify_server_name(&cert, server_name) {
            Ok(()) => {}
            Err(e) => match Principal::of_certificate(end_entity) {
                Ok(p) if p.kind == Kind::Datanode => {}
                _ => return Err(e),
            },
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl Loaded {
    fn read(files: &Files) -> Result<Self, TlsError> {
        let (ca_path, cert_path, key_path) = (&files.ca, &files.cert, &files.key);
        let (ca, cert, key) = (read(ca_path)?, read(cert_path)?, read(key_path)?);
        Self::parse(&ca, &cert, &key, files)
    }

    fn parse(ca: &[u8], cert: &[u8], key: &[u8], files: &Files) -> Result<Self, TlsError> {
        let (ca_path, cert_path, key_path) = (&files.ca, &files.cert, &files.key);
        let mut stamp = Vec::with_capacity(ca.len() + cert.len() + key.len());
        for part in [ca, cert, key] {
            stamp.extend_from_slice(part);
        }
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            let c = c.map_err(|e| parse_err(ca_path, e))?;
            roots.add(c).map_err(|e| parse_err(ca_path, e))?;
        }
        if roots.is_empty() {
            return Err(parse_err(ca_path, "no CA certificate"));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| parse_err(cert_path, e))?;
        let Some(leaf) = chain.first() else {
            return Err(parse_err(cert_path, "no certificate"));
        };
        let me = Principal::of_certificate(leaf).map_err(|e| parse_err(cert_path, e))?;
        let not_after = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| c.validity().not_after.timestamp())
            .map_err(|e| parse_err(cert_path, e))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| parse_err(key_path, e))?;
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| parse_err(key_path, e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let verifier = ClusterVerifier {
            roots,
            algorithms: provider().signature_verification_algorithms,
        };
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)
            .map_err(|e| parse_err(key_path, e))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            me,
            not_after,
            stamp,
        })
    }
}

impl Tls {
    /// Loads the identity in `dir` (`ca.crt`, `tls.crt`, `tls.key`).
    pub fn load(dir: &Path) -> Result<Arc<Self>, TlsError> {
        Self::load_named(dir, None)
    }

    /// Loads the identity in `dir`: with a `name`, `<name>.crt` and
    /// `<name>.key` beside `ca.crt` instead of `tls.crt` and `tls.key` (one
    /// Secret holding the identities of every Kubernetes node's datanode,
    /// each pod picking its own node's).
    pub fn load_named(dir: &Path, name: Option<&str>) -> Result<Arc<Self>, TlsError> {
        let files = match name {
            None => Files {
                ca: dir.join(CA_FILE),
                cert: dir.join(CERT_FILE),
                key: dir.join(KEY_FILE),
            },
            Some(n) => {
                if n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.') {
                    return Err(TlsError::Config(format!(
                        "bad TLS identity name {n:?}: a file name without slashes"
                    )));
                }
                Files {
                    ca: dir.join(CA_FILE),
                    cert: dir.join(format!("{n}.crt")),
                    key: dir.join(format!("{n}.key")),
                }
            }
        };
        let loaded = Loaded::read(&files)?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            files: Some(files),
            current: RwLock::new(Arc::new(loaded)),
            reloads: Default::default(),
        }))
    }

    /// An identity held in memory (PEM: the CA bundle, the certificate
    /// chain, its key), never reloaded: the operator's, issued from the
    /// cluster's CA Secret for each cluster it calls.
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Arc<Self>, TlsError> {
        let files = Files {
            ca: PathBuf::from("<memory>/ca.crt"),
            cert: PathBuf::from("<memory>/tls.crt"),
            key: PathBuf::from("<memory>/tls.key"),
        };
        let loaded = Loaded::parse(ca.as_bytes(), cert.as_bytes(), key.as_bytes(), &files)?;
        Ok(Arc::new(Self {
            dir: PathBuf::from("<memory>"),
            files: None,
            current: RwLock::new(Arc::new(loaded)),
            reloads: Default::default(),
        }))
    }

    /// The directory the credentials come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The principal this process's certificate names.
    pub fn principal(&self) -> Principal {
        self.loaded().me.clone()
    }

    /// When the certificate in use expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.loaded().not_after
    }

    /// How many times new credentials were taken up since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().expect("tls lock").clone()
    }

    /// Reads the files again; takes them up when they changed and load.
    /// `Ok(true)` when new credentials are in use. Blocking file I/O: call
    /// from a blocking thread.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let same = {
            let cur = self.loaded();
            let mut now = Vec::with_capacity(cur.stamp.len());
            for f in files.all() {
                now.extend_from_slice(&read(f)?);
            }
            now == cur.stamp
        };
        if same {
            return Ok(false);
        }
        let fresh = Loaded::read(files)?;
        let was = self.principal();
        if fresh.me != was {
            // A process never changes who it is (a datanode's name is its
            // node id): such files are refused until they name it again.
            return Err(TlsError::Config(format!(
                "the new certificate in {} names {}, this process is {was}",
                self.dir.display(),
                fresh.me
            )));
        }
        *self.current.write().expect("tls lock") = Arc::new(fresh);
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    /// Reloads the files every `every` until the returned task is aborted
    /// or the runtime ends. A failed reload keeps the credentials in use.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(tls) = me.upgrade() else { return };
                match tokio::task::spawn_blocking(move || {
                    let r = tls.reload();
                    (tls, r)
                })
                .await
                {
                    Ok((tls, Ok(true))) => tracing::info!(
                        dir = %tls.dir.display(),
                        principal = %tls.principal(),
                        "TLS credentials reloaded"
                    ),
                    Ok((_, Ok(false))) => {}
                    Ok((tls, Err(e))) => tracing::warn!(
                        dir = %tls.dir.display(),
                        "TLS credentials changed but do not load; keeping the ones in use: {e}"
                    ),
                    Err(_) => return,
                }
            }
        })
    }

    /// Performs the server side of a handshake on an accepted socket.
    async fn accept(&self, tcp: TcpStream) -> Result<Conn, String> {
        let remote = tcp.peer_addr().ok();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.loaded().server.clone());
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let principal = Principal::of_certificate(leaf)?;
        Ok(Conn {
            io: Io::Tls(Box::new(tokio_rustls::TlsStream::Server(stream))),
            info: PeerInfo {
                remote,
                principal: Some(Arc::new(principal)),
            },
        })
    }

    /// Dials `uri` over TLS; the server's certificate must be valid for the
    /// URI's host (datanodes: see [`ClusterVerifier`]) and name whom
    /// `expect` says (a primary's fan-out reaches only the datanodes of
    /// this cluster its plan names, whatever address the plan gives).
    pub(crate) async fn connect(&self, uri: http::Uri, expect: &Expect) -> std::io::Result<Conn> {
        let host = uri
            .host()
            .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        let name = ServerName::try_from(host.clone())
            .map_err(|e| std::io::Error::other(format!("bad server name {host:?}: {e}")))?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let remote = tcp.peer_addr().ok();
        let connector = tokio_rustls::TlsConnector::from(self.loaded().client.clone());
        let stream = connector.connect(name, tcp).await?;
        let server = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| std::io::Error::other(format!("{uri} presented no certificate")))
            .and_then(|c| Principal::of_certificate(c).map_err(std::io::Error::other))?;
        if let Err(wanted) = expect.check(&server) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{uri} is {server}, not {wanted}"),
            ));
        }
        Ok(Conn {
            io: Io::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))),
            info: PeerInfo {
                remote,
                principal: None,
            },
        })
    }
}

/// How a process secures its hops: TLS with its identity, or plain text
/// (only when asked for with `--insecure`).
#[derive(Clone, Debug, Default)]
pub struct Security {
    tls: Option<Arc<Tls>>,
}

impl Security {
    /// Plain text: no identity, no checks.
    pub fn insecure() -> Self {
        Self { tls: None }
    }

    /// Mutual TLS with `tls`.
    pub fn tls(tls: Arc<Tls>) -> Self {
        Self { tls: Some(tls) }
    }

    /// The credentials, when TLS is on.
    pub fn credentials(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The URL scheme of this process's own addresses.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() { "https" } else { "http" }
    }

    /// From a service's flags: `--tls-dir DIR` or `--insecure`, exactly one.
    /// Starts watching the files for changes (call inside a runtime).
    /// A server's security from its flags; with TLS its certificate must
    /// name a principal of `kind` (an admin's client identity exported in
    /// `DFS_TLS_DIR` must not become a coordinator's).
    pub fn from_flags(
        tls_dir: Option<&Path>,
        insecure: bool,
        kind: Kind,
    ) -> Result<Self, TlsError> {
        Self::from_flags_named(tls_dir, None, insecure, kind)
    }

    /// [`Security::from_flags`] with the identity's file names: `name`
    /// picks `<name>.crt` and `<name>.key` in the directory
    /// ([`Tls::load_named`]).
    pub fn from_flags_named(
        tls_dir: Option<&Path>,
        name: Option<&str>,
        insecure: bool,
        kind: Kind,
    ) -> Result<Self, TlsError> {
        match (tls_dir, insecure) {
            (Some(_), true) => Err(TlsError::Config(
                "--tls-dir and --insecure exclude each other".into(),
            )),
            (None, false) => Err(TlsError::Config(
                "no TLS credentials: pass --tls-dir DIR (ca.crt, tls.crt, tls.key; also DFS_TLS_DIR), or --insecure to serve plain text".into(),
            )),
            (None, true) => {
                tracing::warn!(
                    "--insecure: plain-text gRPC, no peer is authenticated; use only on a trusted network"
                );
                Ok(Self::insecure())
            }
            (Some(dir), false) => {
                let tls = Tls::load_named(dir, name)?;
                let me = tls.principal();
                if me.kind != kind {
                    return Err(TlsError::Config(format!(
                        "the certificate in {} names {me}, not a {}",
                        dir.display(),
                        kind.as_str()
                    )));
                }
                // The watch ends with the runtime; the credentials live as
                // long as the process.
                drop(tls.watch(RELOAD_INTERVAL));
                tracing::info!(dir = %dir.display(), principal = %tls.principal(), "mutual TLS on");
                Ok(Self::tls(tls))
            }
        }
    }

    /// Exports the TLS state ([`TlsCollector`], families prefixed
    /// `prefix`) in `registry`; nothing with plain text.
    pub fn register_metrics(&self, registry: &prometheus::Registry, prefix: &str) {
        if let Some(tls) = &self.tls {
            registry
                .register(Box::new(TlsCollector::new(prefix, tls)))
                .expect("TLS metric names are unique");
        }
    }

    /// Who made `req`: the principal of its connection's certificate, or,
    /// for a call a coordinator forwarded, the principal it names in
    /// [`FORWARDED_FOR_METADATA`] (anyone else's such metadata is
    /// ignored). `None` with plain text (there is nobody to check).
    pub fn principal_of<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<Option<Arc<Principal>>, tonic::Status> {
        if !self.is_tls() {
            return Ok(None);
        }
        let Some(p) = caller(req) else {
            return Err(tonic::Status::unauthenticated(
                "no client certificate on this connection",
            ));
        };
        if p.kind == Kind::Coordinator
            && let Some(v) = req.metadata().get(FORWARDED_FOR_METADATA)
        {
            let named = v
                .to_str()
                .ok()
                .and_then(Principal::from_uri)
                .ok_or_else(|| {
                    tonic::Status::invalid_argument(format!("bad {FORWARDED_FOR_METADATA}"))
                })?;
            return Ok(Some(Arc::new(named)));
        }
        Ok(Some(p))
    }

    /// [`Security::require`] for a raw HTTP/2 request (a route served
    /// below tonic's generated code). Forwarding is not honoured here.
    pub fn require_http<B>(
        &self,
        req: &http::Request<B>,
        kinds: &[Kind],
    ) -> Result<(), tonic::Status> {
        match self.principal_of_http(req)? {
            Some(p) => allowed(&p, kinds),
            None => Ok(()),
        }
    }

    /// [`Security::principal_of`] for a raw HTTP/2 request; forwarding is
    /// not honoured here.
    pub fn principal_of_http<B>(
        &self,
        req: &http::Request<B>,
    ) -> Result<Option<Arc<Principal>>, tonic::Status> {
        if !self.is_tls() {
            return Ok(None);
        }
        req.extensions()
            .get::<PeerInfo>()
            .and_then(|i| i.principal.clone())
            .map(Some)
            .ok_or_else(|| {
                tonic::Status::unauthenticated("no client certificate on this connection")
            })
    }

    /// Checks that the caller of `req` ([`Security::principal_of`]) is one
    /// of `kinds`; plain text lets every call through. The principal, when
    /// known.
    pub fn require<T>(
        &self,
        req: &tonic::Request<T>,
        kinds: &[Kind],
    ) -> Result<Option<Arc<Principal>>, tonic::Status> {
        let Some(p) = self.principal_of(req)? else {
            return Ok(None);
        };
        allowed(&p, kinds)?;
        Ok(Some(p))
    }
}

/// PERMISSION_DENIED unless `p` is one of `kinds`, naming both.
fn allowed(p: &Principal, kinds: &[Kind]) -> Result<(), tonic::Status> {
    if kinds.contains(&p.kind) {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(format!(
            "{p} may not make this call (it needs one of: {})",
            kind_list(kinds)
        )))
    }
}

/// "datanode, coordinator".
fn kind_list(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a server knows of the peer of a connection, in every request's
/// extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The principal its certificate names (TLS only).
    pub principal: Option<Arc<Principal>>,
}

/// The principal that made `req`, when its connection had one.
pub fn caller<T>(req: &tonic::Request<T>) -> Option<Arc<Principal>> {
    req.extensions()
        .get::<PeerInfo>()
        .and_then(|i| i.principal.clone())
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

/// An accepted or dialled connection, in plain text or TLS.
pub struct Conn {
    io: Io,
    info: PeerInfo,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// The accepted connections of a server: plain TCP, or TLS handshakes run
/// concurrently (at most [`MAX_CONCURRENT_HANDSHAKES`], each within
/// [`HANDSHAKE_TIMEOUT`]) so one slow peer never holds up the others.
/// TCP_NODELAY on every socket.
pub fn incoming(
    listener: TcpListener,
    security: &Security,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let tls = security.tls.clone();
    tokio::spawn(async move {
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                () = tx.closed() => return,
                p = handshakes.clone().acquire_owned() => p.expect("never closed"),
            };
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: back off, the
                    // listener itself stays.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("set_nodelay: {e}");
            }
            let Some(tls) = tls.clone() else {
                let info = PeerInfo {
                    remote: tcp.peer_addr().ok(),
                    principal: None,
                };
                drop(permit);
                let conn = Conn {
                    io: Io::Plain(tcp),
                    info,
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = tcp.peer_addr().ok();
                match tls.accept(tcp).await {
                    Ok(conn) => {
                        drop(permit);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(e) => {
                        tracing::warn!(peer = ?peer, "TLS handshake refused: {e}");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Whom a dialled server must be.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Any principal of one of these kinds (a coordinator member, whichever
    /// the URL reaches; its name is checked against the URL's host).
    Kinds(&'static [Kind]),
    /// Exactly this principal: a datanode dialled for the node id a plan,
    /// a chunk map or a command names. Datanodes are not checked against
    /// their address (pod IPs are unknown at issue), so without this one
    /// stolen datanode identity could answer for every other datanode.
    Exactly(Arc<Principal>),
}

impl Expect {
    /// The datanode whose node id is `node_id`.
    pub fn datanode(node_id: &str) -> Self {
        Expect::Exactly(Arc::new(Principal::new(Kind::Datanode, node_id)))
    }

    /// `Err` names what was wanted when `server` is not it.
    fn check(&self, server: &Principal) -> Result<(), String> {
        match self {
            Expect::Kinds(kinds) if kinds.contains(&server.kind) => Ok(()),
            Expect::Kinds(kinds) => Err(format!("one of: {}", kind_list(kinds))),
            Expect::Exactly(p) if **p == *server => Ok(()),
            Expect::Exactly(p) => Err(p.to_string()),
        }
    }
}

impl From<&'static [Kind]> for Expect {
    fn from(kinds: &'static [Kind]) -> Self {
        Expect::Kinds(kinds)
    }
}

impl<const N: usize> From<&'static [Kind; N]> for Expect {
    fn from(kinds: &'static [Kind; N]) -> Self {
        Expect::Kinds(kinds)
    }
}

/// Dials TLS connections for a tonic channel with the current credentials.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<Tls>,
    expect: Arc<Expect>,
}

impl Connector {
    /// Dials only servers `expect` admits.
    pub fn new(tls: Arc<Tls>, expect: impl Into<Expect>) -> Self {
        Self {
            tls,
            expect: Arc::new(expect.into()),
        }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Conn>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (tls, expect) = (self.tls.clone(), self.expect.clone());
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tls.connect(uri, &expect).await?,
            ))
        })
    }
}

/// Exports a process's TLS state on its `/metrics`: the certificate's
/// expiry (alert well before it) and how many reloads took new files.
pub struct TlsCollector {
    tls: std::sync::Weak<Tls>,
    expiry: prometheus::Gauge,
    reloads: prometheus::IntCounter,
    /// Two scrapes at once must not both add the same reloads.
    sync: std::sync::Mutex<()>,
}

impl TlsCollector {
    /// Families `<prefix>_tls_certificate_expiry_timestamp_seconds` and
    /// `<prefix>_tls_reloads_total` (e.g. prefix `dfs_datanode`).
    pub fn new(prefix: &str, tls: &Arc<Tls>) -> Self {
        Self {
            tls: Arc::downgrade(tls),
            expiry: prometheus::Gauge::new(
                format!("{prefix}_tls_certificate_expiry_timestamp_seconds"),
                "When the TLS certificate in use expires (Unix seconds); new files are taken up without a restart.",
            )
            .expect("valid metric"),
            reloads: prometheus::IntCounter::new(
                format!("{prefix}_tls_reloads_total"),
                "Times changed TLS files were loaded and taken into use.",
            )
            .expect("valid metric"),
            sync: std::sync::Mutex::new(()),
        }
    }
}

impl prometheus::core::Collector for TlsCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.expiry
            .desc()
            .into_iter()
            .chain(self.reloads.desc())
            .collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _one_at_a_time = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tls) = self.tls.upgrade() {
            self.expiry.set(tls.not_after() as f64);
            let seen = self.reloads.get();
            self.reloads.inc_by(tls.reloads().saturating_sub(seen));
        }
        self.expiry
            .collect()
            .into_iter()
            .chain(self.reloads.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse_only_from_dfs_uris() {
        let p = Principal::from_uri("dfs://datanode/dn-0").unwrap();
        assert_eq!(p, Principal::new(Kind::Datanode, "dn-0"));
        assert_eq!(p.uri(), "dfs://datanode/dn-0");
        for bad in [
            "dfs://datanode/",
            "dfs://root/x",
            "https://datanode/x",
            "dfs://client/a b",
            "dfs://client/a/b",
        ] {
            assert_eq!(Principal::from_uri(bad), None, "{bad}");
        }
    }
}
