//! A small certificate authority for local clusters and tests: `dfs up`
//! creates one under its data directory and issues every process (and an
//! admin client) its identity; tests do the same in a temp dir. In
//! Kubernetes the operator or cert-manager issues them instead; the files
//! have the same layout ([`crate::tls`]).
//!
//! Keys are ECDSA P-256; the CA's key stays in the CA directory
//! (`ca.key`, mode 0600) and is needed only to issue more identities.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::tls::{CA_FILE, CERT_FILE, KEY_FILE, Principal, TlsError};

/// The CA's private key file, next to its `ca.crt`.
pub const CA_KEY_FILE: &str = "ca.key";

/// Validity of the certificates issued here, in days.
pub const LEAF_DAYS: i64 = 825;
const CA_DAYS: i64 = 3650;

fn generate_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let io = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// (year, month, day) of a day count since 1970-01-01 (civil calendar).
fn ymd(days: i64) -> (i32, u8, u8) {
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let today = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        / 86_400) as i64;
    // A day back: a peer whose clock is a little behind accepts it too.
    let (y, m, d) = ymd(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(today + days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// A certificate authority on disk.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// An identity issued in memory (PEM), for a Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a CA named `name` in `dir` (`ca.crt`, `ca.key`).
    pub fn create(dir: &Path, name: &str) -> Result<Self, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let (ca, key) = Self::generate(name)?;
        write(&dir.join(CA_KEY_FILE), key.as_bytes(), true)?;
        write(&dir.join(CA_FILE), ca.pem.as_bytes(), false)?;
        Ok(ca)
    }

    /// A new CA named `name`, in memory, with its private key (PEM): what
    /// the operator keeps in a cluster's CA Secret.
    pub fn generate(name: &str) -> Result<(Self, String), TlsError> {
        let key = KeyPair::generate().map_err(generate_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key).map_err(generate_err)?;
        let key_pem = key.serialize_pem();
        Ok((
            Self {
                issuer: Issuer::new(params, key),
                pem: cert.pem(),
            },
            key_pem,
        ))
    }

    /// The CA of a certificate and its key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(generate_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(generate_err)?;
        Ok(Self {
            issuer,
            pem: cert_pem.to_string(),
        })
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Self, TlsError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read_to_string(&path).map_err(|source| TlsError::Read { path, source })
        };
        let (pem, key) = (read(CA_FILE)?, read(CA_KEY_FILE)?);
        Self::from_pem(&pem, &key)
    }

    /// Opens the CA in `dir`, creating it when there is none.
    pub fn open_or_create(dir: &Path, name: &str) -> Result<Self, TlsError> {
        if dir.join(CA_FILE).exists() {
            Self::open(dir)
        } else {
            Self::create(dir, name)
        }
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Issues `principal` an identity in `dir` (`ca.crt`, `tls.crt`,
    /// `tls.key`), valid as a server for `hosts` (IP addresses or DNS
    /// names) and as a client. Replaces what `dir` held.
    pub fn issue(&self, dir: &Path, principal: &Principal, hosts: &[&str]) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let issued = self.issue_pem(principal, hosts, LEAF_DAYS)?;
        // The key first: a reader that sees the new certificate finds its
        // key (a reload that read a mismatched pair keeps the old one).
        write(&dir.join(KEY_FILE), issued.key_pem.as_bytes(), true)?;
        write(&dir.join(CERT_FILE), issued.cert_pem.as_bytes(), false)?;
        write(&dir.join(CA_FILE), self.pem.as_bytes(), false)
    }

    /// Issues `principal` a certificate valid `days` days, as a server for
    /// `hosts` (IP addresses or DNS names) and as a client, in memory.
    pub fn issue_pem(
        &self,
        principal: &Principal,
        hosts: &[&str],
        days: i64,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(generate_err)?;
        let mut params = leaf_params(principal, hosts)?;
        validity(&mut params, days);
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate (PEM) for `principal` over a public key made elsewhere
    /// (a kubelet's, for a pod certificate: the private key never leaves
    /// its pod), valid from `not_before` to `not_after` (Unix seconds). The
    /// same names and usages as [`Ca::issue_pem`] with no host names.
    pub fn certify(
        &self,
        principal: &Principal,
        key: &impl rcgen::PublicKeyData,
        not_before: u64,
        not_after: u64,
    ) -> Result<String, TlsError> {
        let mut params = leaf_params(principal, &[])?;
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + std::time::Duration::from_secs(not_before);
        params.not_after = epoch + std::time::Duration::from_secs(not_after);
        let cert = params.signed_by(key, &self.issuer).map_err(generate_err)?;
        Ok(cert.pem())
    }
}

/// The names and usages of every leaf certificate: the principal as common
/// name and URI SAN, `hosts` as DNS or IP SANs, for both ends of mutual TLS.
fn leaf_params(principal: &Principal, hosts: &[&str]) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, principal.to_string());
    params.subject_alt_names.push(SanType::URI(
        principal.uri().try_into().map_err(generate_err)?,
    ));
    for h in hosts {
        params.subject_alt_names.push(match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*h).try_into().map_err(generate_err)?),
        });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// The principal a PEM certificate names and its notAfter (Unix
/// seconds): what the operator checks before it reuses a certificate.
pub fn describe(cert_pem: &str) -> Result<(Principal, i64), TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |e: String| TlsError::Parse {
        path: "<certificate>".into(),
        message: e,
    };
    let der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let principal = Principal::of_certificate(&der).map_err(bad)?;
    let not_after = x509_parser::parse_x509_certificate(&der)
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| bad(e.to_string()))?;
    Ok((principal, not_after))
}

/// The node id a datanode's certificate names (`dfs://datanode/<id>`):
/// the one its data directory already holds (`node_id`), else a new one,
/// which the datanode takes from its certificate at first start.
pub fn datanode_id(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("node_id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| dfs_proto::frame::is_valid_chunk_id(s))
        .unwrap_or_else(crate::id::random_hex_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Expect, Kind, Tls};

    #[test]
    fn civil_dates_from_day_counts() {
        assert_eq!(ymd(0), (1970, 1, 1));
        assert_eq!(ymd(20_454), (2026, 1, 1));
        assert_eq!(ymd(-1), (1969, 12, 31));
        assert_eq!(ymd(11_016), (2000, 2, 29));
    }

    #[test]
    fn an_issued_identity_loads_and_names_its_principal() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(&dir.path().join("ca"), "test").unwrap();
        let who = Principal::new(Kind::Datanode, "dn-1");
        ca.issue(&dir.path().join("dn"), &who, &["127.0.0.1", "localhost"])
            .unwrap();
        let tls = Tls::load(&dir.path().join("dn")).unwrap();
        assert_eq!(tls.principal(), who);
        // The CA reopened issues certificates under the same root.
        let again = Ca::open(&dir.path().join("ca")).unwrap();
        assert_eq!(again.pem(), ca.pem());
        again
            .issue(
                &dir.path().join("c"),
                &Principal::new(Kind::Client, "admin"),
                &[],
            )
            .unwrap();
        assert_eq!(
            Tls::load(&dir.path().join("c")).unwrap().principal().kind,
            Kind::Client
        );
        // Nothing to reload while the files stay the same.
        assert!(!tls.reload().unwrap());
        ca.issue(&dir.path().join("dn"), &who, &["127.0.0.1"])
            .unwrap();
        assert!(tls.reload().unwrap());
        assert_eq!(tls.reloads(), 1);
        // New files naming someone else are refused; the process stays who
        // it was.
        ca.issue(
            &dir.path().join("dn"),
            &Principal::new(Kind::Datanode, "dn-2"),
            &[],
        )
        .unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(tls.principal(), who);
        assert_eq!(tls.reloads(), 1);
    }

    #[tokio::test]
    async fn a_server_refuses_a_certificate_of_another_kind() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(&dir.path().join("ca"), "test").unwrap();
        let admin = dir.path().join("admin");
        ca.issue(&admin, &Principal::new(Kind::Client, "admin"), &[])
            .unwrap();
        let e =
            crate::tls::Security::from_flags(Some(&admin), false, Kind::Coordinator).unwrap_err();
        assert!(
            e.to_string()
                .contains("names client/admin, not a coordinator"),
            "{e}"
        );
        assert!(crate::tls::Security::from_flags(Some(&admin), false, Kind::Client).is_ok());
        assert!(crate::tls::Security::from_flags(None, false, Kind::Coordinator).is_err());
        assert!(crate::tls::Security::from_flags(Some(&admin), true, Kind::Coordinator).is_err());
    }

    #[test]
    fn a_damaged_key_is_refused_and_a_reload_keeps_the_old_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(&dir.path().join("ca"), "test").unwrap();
        let id = dir.path().join("id");
        ca.issue(&id, &Principal::new(Kind::Client, "u"), &[])
            .unwrap();
        let tls = Tls::load(&id).unwrap();
        std::fs::write(id.join(KEY_FILE), "not a key").unwrap();
        assert!(Tls::load(&id).is_err());
        assert!(tls.reload().is_err());
        assert_eq!(tls.principal().name, "u");
    }

    /// A server's certificate must name the dialled host, except a
    /// datanode's: datanodes are known by their principal (in Kubernetes
    /// their pod IP is not known when the certificate is issued).
    #[tokio::test]
    async fn only_datanodes_are_dialled_by_principal_rather_than_address() {
        use crate::tls::{Security, incoming};
        use tokio_stream::StreamExt;
        let (ca, ca_key) = Ca::generate("test").unwrap();
        let again = Ca::from_pem(ca.pem(), &ca_key).unwrap();
        let client = again
            .issue_pem(&Principal::new(Kind::Client, "admin"), &[], 1)
            .unwrap();
        let client = Tls::from_pem(ca.pem(), &client.cert_pem, &client.key_pem).unwrap();
        assert_eq!(client.principal(), Principal::new(Kind::Client, "admin"));
        assert!(!client.reload().unwrap(), "in memory: nothing to reload");
        // Served from a Secret-like directory holding several identities.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CA_FILE), ca.pem()).unwrap();
        for (name, kind) in [("dn", Kind::Datanode), ("co", Kind::Coordinator)] {
            let i = ca
                .issue_pem(&Principal::new(kind, name), &["dfs.example"], 1)
                .unwrap();
            std::fs::write(dir.path().join(format!("{name}.crt")), i.cert_pem).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), i.key_pem).unwrap();
        }
        assert!(Tls::load_named(dir.path(), Some("../co")).is_err());
        assert!(Tls::load_named(dir.path(), Some("none")).is_err());
        for (name, ok) in [("dn", true), ("co", false)] {
            let server = Tls::load_named(dir.path(), Some(name)).unwrap();
            assert_eq!(server.principal().name, name);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut conns = incoming(listener, &Security::tls(server));
            tokio::spawn(async move { while conns.next().await.is_some() {} });
            let uri: http::Uri = format!("https://{addr}").parse().unwrap();
            let r = client
                .connect(
                    uri.clone(),
                    &Expect::from(&[Kind::Datanode, Kind::Coordinator]),
                )
                .await;
            assert_eq!(r.is_ok(), ok, "{name}: {:?}", r.err());
            if ok {
                // Dialled for a node id, a datanode must be that node: one
                // datanode's identity does not answer for another's.
                let r = client.connect(uri.clone(), &Expect::datanode(name)).await;
                assert!(r.is_ok(), "{name}: {:?}", r.err());
                let r = client.connect(uri, &Expect::datanode("other")).await;
                let e = r.err().expect("another datanode's identity was taken");
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
                assert!(e.to_string().contains("datanode/other"), "{e}");
            }
        }
    }
}
