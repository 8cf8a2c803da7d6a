//! The operator as the signer of Kubernetes PodCertificateRequests for
//! datanode pods (`spec.security.datanodeCredentials: podCertificate`).
//!
//! With pod certificates the kubelet makes each datanode pod a private key
//! that never leaves the pod, and asks for a certificate with a
//! PodCertificateRequest (PCR) addressed to [`SIGNER_NAME`]. The API server
//! has checked the CSR's proof of possession and that the pod, its UID and
//! its node belong together; the signer still checks everything it relies on
//! itself, because a certificate names a datanode and a datanode may store
//! and serve every chunk placed on it:
//!
//! ```text
//!   PCR ─▶ pod (name, UID, node) ─▶ its controller: the datanode DaemonSet
//!       ─▶ its controller: a DfsCluster in podCertificate mode
//!       ─▶ node id of that Kubernetes node (as pki.rs gives it)
//!       ─▶ leaf certificate for the CSR's public key ─▶ PCR status: Issued
//!   any check failing ─▶ Denied (or Failed) with a reason, no certificate
//! ```
//!
//! [`verify`], [`public_key`] and [`issue`] are pure; [`run`] watches the
//! requests and writes their status through the status subresource.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_common::tls::{CA_FILE, Kind, Principal};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::certificates::v1::PodCertificateRequest;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use rcgen::{PublicKeyData, SubjectPublicKeyInfo};
use serde_json::json;
use tracing::Instrument;

use super::build::Names;
use super::pki::{self, CA_KEY, LEAF_DAYS};
use crate::crd::{DatanodeCredentials, DfsCluster};
use crate::metrics::Metrics;

pub use super::build::SIGNER_NAME;
/// Lifetime the API server gives a request that names none.
pub const DEFAULT_MAX_EXPIRATION_SECONDS: i64 = 86_400;
/// Shortest lifetime the API server accepts (an hour).
pub const MIN_LIFETIME_SECONDS: i64 = 3_600;
/// How far back a certificate's notBefore goes, for peers whose clock is a
/// little behind (counted in its lifetime, so `maxExpirationSeconds` holds).
pub const BACKDATE_SECONDS: i64 = 300;
/// Largest CSR the signer parses (a kubelet's CSR is a few hundred bytes;
/// an RSA 4096 one about 1 KiB).
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Requests signed at once.
pub const CONCURRENCY: u16 = 4;
/// First retry after a transient error; doubles per failure of a request.
pub const RETRY_BASE: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(120);

const DAY: i64 = 86_400;

/// The terminal condition types of a PCR.
const ISSUED: &str = "Issued";
const DENIED: &str = "Denied";
const FAILED: &str = "Failed";

pub use crate::metrics::PodCertificateOutcome as Outcome;

/// Why a request gets no certificate: each ends it with a `Denied` or
/// `Failed` condition (never retried; the kubelet makes a new request).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such pod in the request's namespace.
    #[error("pod {pod} does not exist")]
    PodNotFound {
        /// Pod name.
        pod: String,
    },
    /// The pod of that name is another pod (deleted and made again).
    #[error("pod {pod} has UID {actual}, the request names {requested}")]
    PodUidMismatch {
        /// Pod name.
        pod: String,
        /// UID in the request.
        requested: String,
        /// UID of the pod.
        actual: String,
    },
    /// The pod runs on another node than the request says (or none).
    #[error("pod {pod} runs on node {actual:?}, the request names {requested:?}")]
    NodeMismatch {
        /// Pod name.
        pod: String,
        /// Node in the request.
        requested: String,
        /// The pod's `spec.nodeName`.
        actual: String,
    },
    /// The pod is not a datanode of a DfsCluster this operator manages.
    #[error("pod {pod} is not a datanode of a DfsCluster: {why}")]
    NotADatanode {
        /// Pod name.
        pod: String,
        /// Which link of pod → DaemonSet → DfsCluster is missing.
        why: String,
    },
    /// The pod's cluster does not use pod certificates.
    #[error("DfsCluster {cluster} does not use podCertificate datanode credentials")]
    NotEnabled {
        /// DfsCluster name.
        cluster: String,
    },
    /// The request carries annotations the signer does not know (the
    /// signer contract: deny what it cannot honour).
    #[error("unsupported unverifiedUserAnnotations: {keys}")]
    UnknownAnnotations {
        /// Their keys.
        keys: String,
    },
    /// A lifetime the API server would not accept.
    #[error("maxExpirationSeconds {seconds} is shorter than {MIN_LIFETIME_SECONDS}")]
    LifetimeTooShort {
        /// What the request said.
        seconds: i64,
    },
    /// The CSR is missing or cannot be read.
    #[error("bad stubPKCS10Request: {why}")]
    BadRequest {
        /// What is wrong with it.
        why: String,
    },
    /// A key type the cluster's TLS stack cannot use.
    #[error("key type {key} is not supported: use ECDSAP256 (or ECDSAP384, ED25519)")]
    UnsupportedKeyType {
        /// The key's algorithm.
        key: String,
    },
    /// The CA Secret holds no usable CA.
    #[error("the CA of DfsCluster {cluster} is unusable: {why}")]
    BadCa {
        /// DfsCluster name.
        cluster: String,
        /// Cause.
        why: String,
    },
    /// Signing failed.
    #[error("failed to sign the certificate: {why}")]
    Sign {
        /// Cause.
        why: String,
    },
}

impl Refusal {
    /// The condition this refusal writes: `Denied` for a request the
    /// signer will not honour, `Failed` for one it accepted but cannot.
    pub fn outcome(&self) -> Outcome {
        match self {
            Refusal::BadCa { .. } | Refusal::Sign { .. } => Outcome::Failed,
            _ => Outcome::Denied,
        }
    }

    /// The condition's reason (CamelCase, bounded).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::PodNotFound { .. } => "PodNotFound",
            Refusal::PodUidMismatch { .. } => "PodUIDMismatch",
            Refusal::NodeMismatch { .. } => "NodeMismatch",
            Refusal::NotADatanode { .. } => "NotADatanode",
            Refusal::NotEnabled { .. } => "PodCertificatesNotEnabled",
            Refusal::UnknownAnnotations { .. } => "UnsupportedUserAnnotations",
            Refusal::LifetimeTooShort { .. } => "InvalidMaxExpiration",
            Refusal::BadRequest { .. } => "InvalidRequest",
            // The name the signer contract asks for.
            Refusal::UnsupportedKeyType { .. } => "UnsupportedKeyType",
            Refusal::BadCa { .. } => "CAUnusable",
            Refusal::Sign { .. } => "SigningFailed",
        }
    }
}

/// Why handling a request failed for now: retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an object the checks need failed.
    #[error("failed to read {kind} {name}: {source}")]
    Read {
        /// Kind read.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// The cluster has no CA yet (its first reconcile makes it).
    #[error("the CA Secret {name} does not exist yet")]
    NoCa {
        /// Secret name.
        name: String,
    },
    /// Writing the request's status failed.
    #[error("failed to write the status of PodCertificateRequest {name}: {source}")]
    WriteStatus {
        /// PCR name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
}

/// A request that passed [`verify`]: whose it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The DfsCluster of the pod.
    pub cluster: String,
    /// The Kubernetes node the pod runs on.
    pub node: String,
}

/// The controller reference of an object, if it is a `kind` of `group`.
fn controller_of<'a>(meta: &'a ObjectMeta, group: &str, kind: &str) -> Option<&'a OwnerReference> {
    meta.owner_references.iter().flatten().find(|o| {
        o.controller == Some(true)
            && o.kind == kind
            && o.api_version.split_once('/').map_or("", |(g, _)| g) == group
    })
}

/// The name of the DaemonSet controlling `pod`, if one does.
pub fn pod_daemonset(pod: &Pod) -> Option<String> {
    controller_of(&pod.metadata, "apps", "DaemonSet").map(|o| o.name.clone())
}

/// The name of the DfsCluster controlling `ds`, if one does.
pub fn daemonset_cluster(ds: &DaemonSet) -> Option<String> {
    controller_of(&ds.metadata, DfsCluster::group(&()).as_ref(), "DfsCluster")
        .map(|o| o.name.clone())
}

/// Checks that `pcr` asks for a certificate for a datanode pod of a
/// DfsCluster in podCertificate mode, running where the request says:
/// `pod` is the pod named by the request (read from the API), `ds` the
/// DaemonSet controlling it and `cluster` the DfsCluster controlling that
/// (`None` where there is none). Each link is checked by UID, so a pod or
/// DaemonSet of the same name made by someone else does not pass.
pub fn verify(
    pcr: &PodCertificateRequest,
    pod: Option<&Pod>,
    ds: Option<&DaemonSet>,
    cluster: Option<&DfsCluster>,
) -> Result<Verified, Refusal> {
    let spec = &pcr.spec;
    let name = spec.pod_name.clone();
    let not = |why: &str| Refusal::NotADatanode {
        pod: name.clone(),
        why: why.to_string(),
    };
    let pod = pod.ok_or_else(|| Refusal::PodNotFound { pod: name.clone() })?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if spec.pod_uid.is_empty() || uid != spec.pod_uid {
        return Err(Refusal::PodUidMismatch {
            pod: name,
            requested: spec.pod_uid.clone(),
            actual: uid,
        });
    }
    let on = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if spec.node_name.is_empty() || on != spec.node_name {
        return Err(Refusal::NodeMismatch {
            pod: name,
            requested: spec.node_name.clone(),
            actual: on,
        });
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(not("it is being deleted"));
    }
    let pod_owner = controller_of(&pod.metadata, "apps", "DaemonSet")
        .ok_or_else(|| not("no DaemonSet controls it"))?;
    let ds = ds.ok_or_else(|| not("its DaemonSet does not exist"))?;
    if ds.metadata.uid.as_deref() != Some(pod_owner.uid.as_str()) || ds.name_any() != pod_owner.name
    {
        return Err(not("its DaemonSet is not the one that made it"));
    }
    // The DaemonSet controller releases a pod its selector does not match;
    // one that only claims the DaemonSet as its controller gets nothing.
    let selector = ds.spec.selector.match_labels.clone().unwrap_or_default();
    let labels = pod.labels();
    if selector.is_empty() || selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        return Err(not("its labels do not match its DaemonSet's selector"));
    }
    let ds_owner = controller_of(&ds.metadata, DfsCluster::group(&()).as_ref(), "DfsCluster")
        .ok_or_else(|| not("no DfsCluster controls its DaemonSet"))?;
    let cluster = cluster.ok_or_else(|| not("the DfsCluster of its DaemonSet does not exist"))?;
    if cluster.metadata.uid.as_deref() != Some(ds_owner.uid.as_str())
        || cluster.name_any() != ds_owner.name
    {
        return Err(not("its DaemonSet belongs to another DfsCluster"));
    }
    let cluster_name = cluster.name_any();
    if ds.name_any() != Names(&cluster_name).datanode() {
        return Err(not("its DaemonSet is not the cluster's datanode DaemonSet"));
    }
    let same_ns = |m: &ObjectMeta| m.namespace == pcr.metadata.namespace;
    if !(same_ns(&pod.metadata) && same_ns(&ds.metadata) && same_ns(&cluster.metadata)) {
        return Err(not("it is in another namespace than the request"));
    }
    let security = &cluster.spec.security;
    if !security.tls || security.datanode_credentials != DatanodeCredentials::PodCertificate {
        return Err(Refusal::NotEnabled {
            cluster: cluster_name,
        });
    }
    if let Some(a) = spec
        .unverified_user_annotations
        .as_ref()
        .filter(|a| !a.is_empty())
    {
        let keys: Vec<&str> = a.keys().map(String::as_str).take(8).collect();
        return Err(Refusal::UnknownAnnotations {
            keys: keys.join(", "),
        });
    }
    Ok(Verified {
        cluster: cluster_name,
        node: on,
    })
}

/// The subject public key of a PKCS#10 CSR (DER), if it is a key type the
/// cluster's TLS stack (rustls with ring) verifies: ECDSA P-256 or P-384,
/// or Ed25519. The CSR's self-signature is checked too (the API server did
/// already; a request that reached us some other way gets no pass).
pub fn public_key(csr_der: &[u8]) -> Result<SubjectPublicKeyInfo, Refusal> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    let bad = |why: String| Refusal::BadRequest { why };
    if csr_der.is_empty() {
        return Err(bad("empty".into()));
    }
    if csr_der.len() > MAX_CSR_BYTES {
        return Err(bad(format!(
            "{} bytes, more than {MAX_CSR_BYTES}",
            csr_der.len()
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| bad(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the request".into()));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key =
        SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| Refusal::UnsupportedKeyType {
            key: spki.algorithm.algorithm.to_id_string(),
        })?;
    let supported = [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ];
    if !supported.contains(&key.algorithm()) {
        return Err(Refusal::UnsupportedKeyType {
            key: format!("{:?}", key.algorithm()),
        });
    }
    csr.verify_signature()
        .map_err(|e| bad(format!("its signature does not verify: {e}")))?;
    Ok(key)
}

/// The cluster's CA as a signer, from its CA Secret's data.
#[derive(Debug)]
pub struct SigningCa(dfs_common::pki::Ca);

impl SigningCa {
    /// The CA in a CA Secret's data (`ca.crt`, `ca.key`), as
    /// [`pki::ensure_ca`] keeps it.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, String> {
        let (Some(cert), Some(key)) = (data.get(CA_FILE), data.get(CA_KEY)) else {
            return Err(format!("the CA Secret lacks {CA_FILE} or {CA_KEY}"));
        };
        dfs_common::pki::Ca::from_pem(cert, key)
            .map(Self)
            .map_err(|e| e.to_string())
    }
}

/// A certificate for a request, and the times its status carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The leaf certificate (PEM). The CA is not appended: it is the root
    /// every peer already has in its `ca.crt`.
    pub chain: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// When the kubelet should start renewing: two thirds into the
    /// lifetime (at least 20 minutes before expiry for the shortest one).
    pub begin_refresh_at: i64,
}

/// Issues datanode `node_id` a certificate for `key`, signed by `ca`: the
/// same names, key usages and extended key usages as the certificates in
/// the datanode Secret ([`dfs_common::pki::Ca::issue_pem`] with no host
/// names), so the coordinator accepts it alike. Valid from `now` (Unix
/// seconds) less [`BACKDATE_SECONDS`] for the shorter of
/// `max_expiration_seconds` (default a day) and [`LEAF_DAYS`].
pub fn issue(
    ca: &SigningCa,
    node_id: &str,
    key: &SubjectPublicKeyInfo,
    max_expiration_seconds: Option<i32>,
    now: i64,
) -> Result<Signed, Refusal> {
    let max = max_expiration_seconds.map_or(DEFAULT_MAX_EXPIRATION_SECONDS, i64::from);
    if max < MIN_LIFETIME_SECONDS {
        return Err(Refusal::LifetimeTooShort { seconds: max });
    }
    let lifetime = max.min(LEAF_DAYS * DAY);
    let not_before = now.saturating_sub(BACKDATE_SECONDS).max(0);
    let not_after = not_before + lifetime;
    let who = Principal::new(Kind::Datanode, node_id);
    let chain =
        ca.0.certify(&who, key, not_before as u64, not_after as u64)
            .map_err(|e| Refusal::Sign { why: e.to_string() })?;
    Ok(Signed {
        chain,
        not_before,
        not_after,
        begin_refresh_at: not_after - lifetime / 3,
    })
}

/// Whether a request is settled: it has a terminal condition or a chain.
pub fn settled(pcr: &PodCertificateRequest) -> bool {
    pcr.status.as_ref().is_some_and(|s| {
        s.certificate_chain.is_some()
            || s.conditions
                .iter()
                .flatten()
                .any(|c| matches!(c.type_.as_str(), ISSUED | DENIED | FAILED) && c.status == "True")
    })
}

fn time(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// The status a request gets for a decision made at `now`.
pub fn status_patch(
    pcr: &PodCertificateRequest,
    decision: &Result<Signed, Refusal>,
    now: i64,
) -> serde_json::Value {
    let condition = |type_: &str, reason: &str, message: String| {
        json!({
            "type": type_,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": time(now),
            "observedGeneration": pcr.metadata.generation,
        })
    };
    let status = match decision {
        Ok(s) => json!({
            "certificateChain": s.chain,
            "notBefore": time(s.not_before),
            "notAfter": time(s.not_after),
            "beginRefreshAt": time(s.begin_refresh_at),
            "conditions": [condition(ISSUED, "Issued", format!("issued by {SIGNER_NAME}"))],
        }),
        Err(r) => {
            let type_ = match r.outcome() {
                Outcome::Failed => FAILED,
                _ => DENIED,
            };
            json!({ "conditions": [condition(type_, r.reason(), r.to_string())] })
        }
    };
    json!({
        "metadata": { "resourceVersion": pcr.resource_version() },
        "status": status,
    })
}

/// Shared state of the signer.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The operator's metrics (`pod_certificate_requests`).
    pub metrics: Metrics,
    /// Consecutive transient failures per request, for backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A signer context.
    pub fn new(client: Client, metrics: Metrics) -> Self {
        Self {
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

fn key_of(pcr: &PodCertificateRequest) -> String {
    format!("{}/{}", pcr.namespace().unwrap_or_default(), pcr.name_any())
}

fn read_err<'a>(kind: &'static str, name: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Read {
        kind,
        name: name.to_string(),
        source,
    }
}

/// Reads what [`verify`] needs and decides; `Err` only for what may heal
/// (an API error, a CA not made yet).
async fn decide(
    client: &Client,
    pcr: &PodCertificateRequest,
    now: i64,
) -> Result<Result<Signed, Refusal>, Error> {
    let ns = pcr.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod_name = &pcr.spec.pod_name;
    let pod = if pod_name.is_empty() {
        None
    } else {
        pods.get_opt(pod_name)
            .await
            .map_err(read_err("Pod", pod_name))?
    };
    let ds = match pod.as_ref().and_then(pod_daemonset) {
        Some(n) => Api::<DaemonSet>::namespaced(client.clone(), &ns)
            .get_opt(&n)
            .await
            .map_err(read_err("DaemonSet", &n))?,
        None => None,
    };
    let cluster = match ds.as_ref().and_then(daemonset_cluster) {
        Some(n) => Api::<DfsCluster>::namespaced(client.clone(), &ns)
            .get_opt(&n)
            .await
            .map_err(read_err("DfsCluster", &n))?,
        None => None,
    };
    let verified = match verify(pcr, pod.as_ref(), ds.as_ref(), cluster.as_ref()) {
        Ok(v) => v,
        Err(r) => return Ok(Err(r)),
    };
    let key = match public_key(&pcr.spec.stub_pkc_s10_request.0) {
        Ok(k) => k,
        Err(r) => return Ok(Err(r)),
    };
    let names = Names(&verified.cluster);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let ca_name = names.ca();
    let Some(ca_secret) = secrets
        .get_opt(&ca_name)
        .await
        .map_err(read_err("Secret", &ca_name))?
    else {
        return Err(Error::NoCa { name: ca_name });
    };
    let ca = match SigningCa::from_data(&pki::text(&ca_secret)) {
        Ok(ca) => ca,
        Err(why) => {
            return Ok(Err(Refusal::BadCa {
                cluster: verified.cluster,
                why,
            }));
        }
    };
    // The node id: what the datanode Secret's certificate for this node
    // named (a cluster switched from secret mode), else what pki.rs gives
    // the node (the id the coordinator knows for the host, from the last
    // status, else the derived one).
    let dn_name = names.datanode_tls();
    let from_secret = secrets
        .get_opt(&dn_name)
        .await
        .map_err(read_err("Secret", &dn_name))?
        .map(|s| pki::text(&s))
        .and_then(|d| d.get(&format!("{}.crt", verified.node)).cloned())
        .and_then(|c| dfs_common::pki::describe(&c).ok())
        .filter(|(p, _)| p.kind == Kind::Datanode)
        .map(|(p, _)| p.name);
    let cluster = cluster.expect("verify passed, so the cluster exists");
    let id = from_secret.unwrap_or_else(|| {
        let known = pki::known_ids(None, cluster.status.as_ref());
        pki::datanode_id(&ns, &verified.cluster, &verified.node, &known)
    });
    Ok(issue(&ca, &id, &key, pcr.spec.max_expiration_seconds, now))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Handles one request (the signer Controller's callback).
pub async fn reconcile(
    pcr: Arc<PodCertificateRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if pcr.spec.signer_name != SIGNER_NAME || settled(&pcr) {
        return Ok(Action::await_change());
    }
    let span = tracing::info_span!(
        "sign",
        request = %key_of(&pcr),
        pod = %pcr.spec.pod_name,
        node = %pcr.spec.node_name
    );
    sign_one(&pcr, &ctx).instrument(span).await
}

async fn sign_one(pcr: &PodCertificateRequest, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(pcr);
    let now = unix_now();
    let decision = decide(&ctx.client, pcr, now).await?;
    let api: Api<PodCertificateRequest> =
        Api::namespaced(ctx.client.clone(), &pcr.namespace().unwrap_or_default());
    api.patch_status(
        &pcr.name_any(),
        &PatchParams::default(),
        &Patch::Merge(status_patch(pcr, &decision, now)),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        name: key.clone(),
        source,
    })?;
    let outcome = match &decision {
        Ok(s) => {
            tracing::info!(not_after = %time(s.not_after), "issued a datanode certificate");
            Outcome::Issued
        }
        Err(r) => {
            tracing::warn!(reason = r.reason(), "refused a datanode certificate: {r}");
            r.outcome()
        }
    };
    ctx.metrics
        .pod_certificate_requests
        .with_label_values(&[outcome.label()])
        .inc();
    ctx.failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key);
    Ok(Action::await_change())
}

/// Retry a request with backoff after a transient error.
pub fn error_policy(pcr: Arc<PodCertificateRequest>, err: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(key_of(&pcr)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = RETRY_BASE
        .saturating_mul(1 << (*n - 1).min(16))
        .min(RETRY_MAX);
    tracing::warn!(request = %key_of(&pcr), retry_in = ?delay, "signing failed for now: {err:#}");
    Action::requeue(delay)
}

/// Whether the API server serves PodCertificateRequests (Kubernetes 1.37
/// and later). `None` when discovery itself failed.
async fn api_served(client: &Client) -> Option<bool> {
    let group = PodCertificateRequest::api_version(&());
    match client.list_api_group_resources(&group).await {
        Ok(list) => Some(
            list.resources
                .iter()
                .any(|r| r.name == PodCertificateRequest::plural(&())),
        ),
        Err(kube::Error::Api(e)) if e.code == 404 => Some(false),
        Err(e) => {
            tracing::warn!("cannot discover {group}, starting the signer anyway: {e}");
            None
        }
    }
}

/// Watches the PodCertificateRequests (of `namespace`, or all) and signs
/// those for [`SIGNER_NAME`] until `shutdown` resolves. On an API server
/// without PodCertificateRequests it does nothing: `secret` clusters need
/// no signer, and a watch of a missing API would only fail and retry.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    if api_served(&ctx.client).await == Some(false) {
        tracing::info!(
            "the API server has no PodCertificateRequests (Kubernetes before 1.37): \
             datanode pod certificates are off until the operator restarts on a newer one"
        );
        shutdown.await;
        return;
    }
    tracing::info!(signer = SIGNER_NAME, "signing datanode pod certificates");
    let api: Api<PodCertificateRequest> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    Controller::new(api, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                // A failed watch: the Controller retries it with backoff.
                Err(controller::Error::QueueError(e)) => {
                    tracing::warn!("signer: watching PodCertificateRequests failed: {e}")
                }
                // Reconcile errors were logged by error_policy.
                Err(e) => tracing::debug!("signer: {e}"),
                Ok(_) => {}
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
