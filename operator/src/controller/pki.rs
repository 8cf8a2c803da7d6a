//! The cluster's certificates and chunk-token keys, kept in Secrets.
//!
//! With `spec.security.tls` the operator is the cluster's certificate
//! authority: it creates a CA once (Secret `<name>-ca`) and issues from it
//! - the coordinators' identity (`<name>-coordinator-tls`: one certificate
//!   for every member, valid for the client Service and, by wildcard, every
//!   pod name under the headless Service);
//! - one datanode identity per Kubernetes node (`<name>-datanode-tls`, keys
//!   `<node>.crt` and `<node>.key`): a datanode's node id is in its
//!   certificate, and a DaemonSet cannot mount a different Secret per pod,
//!   so every pod mounts the one Secret and reads its own node's pair
//!   (`--tls-name $(node name)`). With `datanodeCredentials:
//!   podCertificate` that Secret holds only `ca.crt`, and each datanode
//!   pod's own key is certified by the signer ([`super::signer`]) with the
//!   identity [`datanode_id`] gives its node;
//! - an admin client identity (`<name>-admin-tls`) for people and jobs;
//! - its own identity for its calls to the coordinators, in memory only.
//!
//! Certificates are reused while they are signed by the current CA, name
//! what they should, and stay valid for more than [`RENEW_BEFORE_DAYS`];
//! otherwise they are issued again, and the processes take the new files
//! up without a restart (Secrets mounted as volumes are updated in place).
//! The token keys (`<name>-token-keys`) are created once and never
//! rewritten by the operator: rotating them is editing that Secret (a new
//! key first, the old one kept until its tokens expired; docs/security.md).
//!
//! Everything that decides what a Secret holds is pure ([`ca_data`],
//! [`identity_data`], [`datanode_data`]); [`ensure_ca`] and
//! [`ensure_identities`] read and write.

use std::collections::BTreeMap;

use dfs_common::pki::{Ca, Issued};
use dfs_common::tls::{CA_FILE, CERT_FILE, KEY_FILE, Kind, Principal};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::Error;
use super::build::{MANAGER, Names, meta};
use super::validate::ValidSpec;
use crate::crd::{DatanodeCredentials, DfsCluster};

/// Validity of the certificates the operator issues, in days.
pub const LEAF_DAYS: i64 = 90;
/// A certificate with less validity left than this is issued again.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// The CA's private key in the CA Secret.
pub const CA_KEY: &str = "ca.key";
pub use super::build::{ACCESS_KEY, TOKEN_KEYS_KEY};
/// Annotation on an identity Secret: what its certificate was issued for
/// (principal and host names), so that a change of names reissues it.
pub const ISSUED_FOR: &str = "dfs.io/issued-for";

const DAY: i64 = 86_400;

/// The CA Secret's data for a new CA.
pub fn ca_data(cluster: &str) -> Result<(Ca, BTreeMap<String, String>), String> {
    let (ca, key) = Ca::generate(&format!("dfs cluster {cluster}")).map_err(|e| e.to_string())?;
    let data = BTreeMap::from([
        (CA_FILE.to_string(), ca.pem().to_string()),
        (CA_KEY.to_string(), key),
    ]);
    Ok((ca, data))
}

/// The CA in a CA Secret's data.
pub fn ca_of(data: &BTreeMap<String, String>) -> Result<Ca, String> {
    let (Some(cert), Some(key)) = (data.get(CA_FILE), data.get(CA_KEY)) else {
        return Err(format!("the CA Secret lacks {CA_FILE} or {CA_KEY}"));
    };
    Ca::from_pem(cert, key).map_err(|e| e.to_string())
}

/// Whether `cert_pem` (next to `key_pem`) can stay: it names `want` and is
/// valid for more than [`RENEW_BEFORE_DAYS`] after `now` (Unix seconds).
fn reusable(
    cert_pem: Option<&String>,
    key_pem: Option<&String>,
    want: &Principal,
    now: i64,
) -> bool {
    let (Some(cert), Some(_)) = (cert_pem, key_pem) else {
        return false;
    };
    match dfs_common::pki::describe(cert) {
        Ok((p, not_after)) => p == *want && not_after > now + RENEW_BEFORE_DAYS * DAY,
        Err(_) => false,
    }
}

fn issue(ca: &Ca, who: &Principal, hosts: &[String]) -> Result<Issued, String> {
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    ca.issue_pem(who, &hosts, LEAF_DAYS)
        .map_err(|e| format!("issuing {who}: {e}"))
}

/// The fingerprint of what an identity is issued for ([`ISSUED_FOR`]).
pub fn issued_for(who: &Principal, hosts: &[String]) -> String {
    let mut s = who.uri();
    for h in hosts {
        s.push(' ');
        s.push_str(h);
    }
    s
}

/// The data of a one-identity Secret (`ca.crt`, `tls.crt`, `tls.key`) for
/// `who`, valid for `hosts`: `existing` when it still holds a good one
/// (same CA, same names, not near expiry), else a fresh certificate.
pub fn identity_data(
    ca: &Ca,
    existing: Option<(&BTreeMap<String, String>, Option<&str>)>,
    who: &Principal,
    hosts: &[String],
    now: i64,
) -> Result<BTreeMap<String, String>, String> {
    let stamp = issued_for(who, hosts);
    if let Some((data, issued)) = existing
        && data.get(CA_FILE).map(String::as_str) == Some(ca.pem())
        && issued == Some(stamp.as_str())
        && reusable(data.get(CERT_FILE), data.get(KEY_FILE), who, now)
    {
        return Ok(data.clone());
    }
    let fresh = issue(ca, who, hosts)?;
    Ok(BTreeMap::from([
        (CA_FILE.to_string(), ca.pem().to_string()),
        (CERT_FILE.to_string(), fresh.cert_pem),
        (KEY_FILE.to_string(), fresh.key_pem),
    ]))
}

/// The node id the operator gives the datanode of Kubernetes node `node`:
/// the one the coordinator already knows for that host (a cluster that ran
/// before it had certificates keeps its datanodes), else one derived from
/// the cluster's namespace and name and the node's name (the same after
/// the DfsCluster is deleted and created again, so the datanode's data
/// directory still matches).
pub fn datanode_id(
    namespace: &str,
    cluster: &str,
    node: &str,
    known: &BTreeMap<String, String>,
) -> String {
    if let Some(id) = known.get(node)
        && dfs_proto::frame::is_valid_chunk_id(id)
    {
        return id.clone();
    }
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("dfs datanode id\0{namespace}\0{cluster}\0{node}").as_bytes(),
    );
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The node id known for each Kubernetes node: from the coordinator's
/// facts of this reconcile, else from the DfsCluster's status (what the
/// last reconcile that reached the coordinator saw). The status matters
/// when a running plain-text cluster is switched to TLS: its coordinator
/// is still plain text, so the operator (calling https) cannot reach it,
/// and its datanodes must get certificates for the ids their data
/// directories already hold.
pub fn known_ids(
    facts: Option<&crate::coordinator::ClusterFacts>,
    status: Option<&crate::crd::DfsClusterStatus>,
) -> BTreeMap<String, String> {
    let mut known: BTreeMap<String, String> = status
        .iter()
        .flat_map(|s| s.nodes.iter())
        .filter(|n| !n.host.is_empty())
        .map(|n| (n.host.clone(), n.node_id.clone()))
        .collect();
    known.extend(
        facts
            .iter()
            .flat_map(|f| f.nodes.iter())
            .filter(|n| !n.host.is_empty())
            .map(|n| (n.host.clone(), n.node_id.clone())),
    );
    known
}

/// The datanode Secret's data: `ca.crt` and, for every node in `nodes`,
/// `<node>.crt` and `<node>.key`. A node's pair is kept while it is good
/// (same CA, not near expiry); a node that left loses its pair. The
/// principal of a kept pair is kept too: a datanode's id never changes
/// under it.
pub fn datanode_data(
    ca: &Ca,
    existing: Option<&BTreeMap<String, String>>,
    nodes: &[String],
    id_of: impl Fn(&str) -> String,
    now: i64,
) -> Result<BTreeMap<String, String>, String> {
    let same_ca = existing.is_some_and(|d| d.get(CA_FILE).map(String::as_str) == Some(ca.pem()));
    let mut data = BTreeMap::from([(CA_FILE.to_string(), ca.pem().to_string())]);
    for node in nodes {
        let (crt, key) = (format!("{node}.crt"), format!("{node}.key"));
        let any = existing.and_then(|d| Some((d.get(&crt)?, d.get(&key)?)));
        let old = any.filter(|_| same_ca);
        let kept = old.and_then(|(c, k)| {
            let (p, _) = dfs_common::pki::describe(c).ok()?;
            (p.kind == Kind::Datanode && reusable(Some(c), Some(k), &p, now)).then_some((c, k))
        });
        match kept {
            Some((c, k)) => {
                data.insert(crt, c.clone());
                data.insert(key, k.clone());
            }
            None => {
                // A renewal keeps the node id the old certificate named,
                // whatever CA signed it (a replaced CA keeps the ids).
                let id = any
                    .and_then(|(c, _)| dfs_common::pki::describe(c).ok())
                    .filter(|(p, _)| p.kind == Kind::Datanode)
                    .map_or_else(|| id_of(node), |(p, _)| p.name);
                let fresh = issue(ca, &Principal::new(Kind::Datanode, id), &[])?;
                data.insert(crt, fresh.cert_pem);
                data.insert(key, fresh.key_pem);
            }
        }
    }
    Ok(data)
}

/// The datanode Secret's data with pod certificates: `ca.crt` alone, the
/// one file of it the datanode pods mount. The pairs of secret mode go (a
/// server-side apply of this data replaces them).
pub fn pod_certificate_datanode_data(ca: &Ca) -> BTreeMap<String, String> {
    BTreeMap::from([(CA_FILE.to_string(), ca.pem().to_string())])
}

/// Whether a Kubernetes node name can be a Secret key stem (`<node>.crt`).
pub fn node_key_ok(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 240
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && !node.starts_with('.')
}

/// The host names the coordinators' certificate covers: the client
/// Service and every pod under the headless Service, short and fully
/// qualified.
pub fn coordinator_hosts(v: &ValidSpec) -> Vec<String> {
    let names = Names(&v.name);
    let ns = &v.namespace;
    let (svc, headless) = (names.coordinator(), names.coordinator_headless());
    vec![
        svc.clone(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        format!("*.{headless}.{ns}.svc"),
        format!("*.{headless}.{ns}.svc.cluster.local"),
    ]
}

/// A Secret's data as text (entries that are not UTF-8 left out).
pub(super) fn text(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

fn secret(
    v: &ValidSpec,
    cluster: &DfsCluster,
    name: String,
    data: BTreeMap<String, String>,
    issued: Option<String>,
) -> Secret {
    let mut metadata = meta(v, cluster, name, None);
    if let Some(i) = issued {
        metadata.annotations = Some(BTreeMap::from([(ISSUED_FOR.to_string(), i)]));
    }
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn secret_err(name: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::Secret {
        name: name.to_string(),
        source,
    }
}

/// Creates a Secret once: never overwrites one that exists (a CA or a
/// key another reconcile, or a person, made first). Returns what it holds.
async fn create_once(api: &Api<Secret>, want: Secret) -> Result<BTreeMap<String, String>, Error> {
    let name = want.name_any();
    if let Some(s) = api.get_opt(&name).await.map_err(secret_err(&name))? {
        return Ok(text(&s));
    }
    match api.create(&PostParams::default(), &want).await {
        Ok(s) => {
            tracing::info!(secret = %name, "created");
            Ok(text(&s))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api.get(&name).await.map_err(secret_err(&name))?;
            Ok(text(&s))
        }
        Err(source) => Err(Error::Secret { name, source }),
    }
}

/// Applies `want` unless the Secret already holds exactly its data and
/// annotation.
async fn apply_if_changed(
    api: &Api<Secret>,
    have: Option<&Secret>,
    want: Secret,
) -> Result<(), Error> {
    let name = want.name_any();
    let same = have.is_some_and(|h| {
        h.data == want.data && h.annotations().get(ISSUED_FOR) == want.annotations().get(ISSUED_FOR)
    });
    if same {
        return Ok(());
    }
    tracing::info!(secret = %name, "issuing certificates");
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&want),
    )
    .await
    .map_err(secret_err(&name))?;
    Ok(())
}

fn pki_err(v: &ValidSpec) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Pki {
        cluster: v.name.clone(),
        message,
    }
}

/// The CA and token-key Secrets of a TLS cluster, created when missing
/// (and never rewritten); returns the CA.
pub async fn ensure_ca(client: &Client, cluster: &DfsCluster, v: &ValidSpec) -> Result<Ca, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &v.namespace);
    let names = Names(&v.name);
    let pki_err = pki_err(v);
    // The CA: made once.
    let ca_name = names.ca();
    let ca = match api.get_opt(&ca_name).await.map_err(secret_err(&ca_name))? {
        Some(s) => ca_of(&text(&s)).map_err(&pki_err)?,
        None => {
            let (_, data) = ca_data(&v.name).map_err(&pki_err)?;
            let held = create_once(&api, secret(v, cluster, ca_name.clone(), data, None)).await?;
            ca_of(&held).map_err(&pki_err)?
        }
    };
    // The token keys: made once, then the user's to rotate.
    create_once(
        &api,
        secret(
            v,
            cluster,
            names.token_keys(),
            BTreeMap::from([(
                TOKEN_KEYS_KEY.to_string(),
                dfs_common::token::new_key_file_text(),
            )]),
            None,
        ),
    )
    .await?;
    Ok(ca)
}

/// Makes the identity Secrets of a TLS cluster hold what they should:
/// `nodes` are the Kubernetes nodes that may run a datanode, `known` the
/// node id the coordinator knows per host.
pub async fn ensure_identities(
    client: &Client,
    cluster: &DfsCluster,
    v: &ValidSpec,
    ca: &Ca,
    nodes: &[String],
    known: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &v.namespace);
    let names = Names(&v.name);
    let pki_err = pki_err(v);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // The one-identity Secrets.
    let identities = [
        (
            names.coordinator_tls(),
            Principal::new(Kind::Coordinator, v.name.clone()),
            coordinator_hosts(v),
        ),
        (
            names.admin_tls(),
            Principal::new(Kind::Client, dfs_common::tls::ADMIN_CLIENT),
            Vec::new(),
        ),
    ];
    for (name, who, hosts) in identities {
        let have = api.get_opt(&name).await.map_err(secret_err(&name))?;
        let old = have.as_ref().map(text);
        let issued = have
            .as_ref()
            .and_then(|h| h.annotations().get(ISSUED_FOR).cloned());
        let data = identity_data(
            ca,
            old.as_ref().map(|d| (d, issued.as_deref())),
            &who,
            &hosts,
            now,
        )
        .map_err(&pki_err)?;
        let want = secret(v, cluster, name, data, Some(issued_for(&who, &hosts)));
        apply_if_changed(&api, have.as_ref(), want).await?;
    }
    // The datanodes' Secret, one pair per node; with pod certificates
    // only the CA certificate (each pod's key is its own, certified by
    // the signer), so no pod can read another node's key.
    let name = names.datanode_tls();
    let have = api.get_opt(&name).await.map_err(secret_err(&name))?;
    if v.datanode_credentials == DatanodeCredentials::PodCertificate {
        let data = pod_certificate_datanode_data(ca);
        return apply_if_changed(&api, have.as_ref(), secret(v, cluster, name, data, None)).await;
    }
    let old = have.as_ref().map(text);
    let usable: Vec<String> = nodes.iter().filter(|n| node_key_ok(n)).cloned().collect();
    for n in nodes.iter().filter(|n| !node_key_ok(n)) {
        tracing::warn!(node = %n, "node name cannot key a certificate in a Secret: no datanode identity for it");
    }
    let data = datanode_data(
        ca,
        old.as_ref(),
        &usable,
        |node| datanode_id(&v.namespace, &v.name, node, known),
        now,
    )
    .map_err(&pki_err)?;
    apply_if_changed(&api, have.as_ref(), secret(v, cluster, name, data, None)).await
}

/// The operator's own identity for the cluster `ca` belongs to, in memory.
pub fn operator_identity(ca: &Ca) -> Result<std::sync::Arc<dfs_common::tls::Tls>, String> {
    let me = ca
        .issue_pem(&Principal::new(Kind::Operator, MANAGER), &[], 7)
        .map_err(|e| e.to_string())?;
    dfs_common::tls::Tls::from_pem(ca.pem(), &me.cert_pem, &me.key_pem).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn identities_are_reused_until_near_expiry_or_a_change_of_names_or_ca() {
        let (ca, data) = ca_data("demo").unwrap();
        let again = ca_of(&data).unwrap();
        assert_eq!(again.pem(), ca.pem());
        let who = Principal::new(Kind::Coordinator, "demo");
        let hosts = vec!["demo-coordinator.ns.svc".to_string()];
        let first = identity_data(&ca, None, &who, &hosts, now()).unwrap();
        let (p, not_after) = dfs_common::pki::describe(&first[CERT_FILE]).unwrap();
        assert_eq!(p, who);
        assert!(not_after > now() + (LEAF_DAYS - 2) * DAY);
        let stamp = issued_for(&who, &hosts);
        // The same names and CA, far from expiry: kept byte for byte.
        let kept = identity_data(&ca, Some((&first, Some(&stamp))), &who, &hosts, now()).unwrap();
        assert_eq!(kept, first);
        // Near expiry: issued again.
        let later = now() + (LEAF_DAYS - RENEW_BEFORE_DAYS + 1) * DAY;
        let renewed =
            identity_data(&ca, Some((&first, Some(&stamp))), &who, &hosts, later).unwrap();
        assert_ne!(renewed[CERT_FILE], first[CERT_FILE]);
        // Other host names: issued again.
        let other = vec!["elsewhere".to_string()];
        let moved = identity_data(&ca, Some((&first, Some(&stamp))), &who, &other, now()).unwrap();
        assert_ne!(moved[CERT_FILE], first[CERT_FILE]);
        // Another CA: issued again, under it.
        let (ca2, _) = ca_data("demo").unwrap();
        let re = identity_data(&ca2, Some((&first, Some(&stamp))), &who, &hosts, now()).unwrap();
        assert_eq!(re[CA_FILE], ca2.pem());
        assert_ne!(re[CERT_FILE], first[CERT_FILE]);
    }

    #[test]
    fn each_node_gets_a_datanode_identity_that_keeps_its_id() {
        let (ca, _) = ca_data("demo").unwrap();
        let known = BTreeMap::from([("node-a".to_string(), "ab".repeat(16))]);
        let id_of = |n: &str| datanode_id("ns", "demo", n, &known);
        // A host the coordinator knows keeps its id; others get a stable
        // derived one, distinct per node and per cluster.
        assert_eq!(id_of("node-a"), "ab".repeat(16));
        assert_eq!(
            id_of("node-b"),
            datanode_id("ns", "demo", "node-b", &BTreeMap::new())
        );
        assert_ne!(id_of("node-b"), id_of("node-c"));
        assert_ne!(
            id_of("node-b"),
            datanode_id("ns", "other", "node-b", &known)
        );
        assert!(dfs_proto::frame::is_valid_chunk_id(&id_of("node-b")));
        let nodes = vec!["node-a".to_string(), "node-b".to_string()];
        let first = datanode_data(&ca, None, &nodes, id_of, now()).unwrap();
        assert_eq!(first.len(), 5, "{:?}", first.keys());
        let named = |d: &BTreeMap<String, String>, n: &str| {
            dfs_common::pki::describe(&d[&format!("{n}.crt")])
                .unwrap()
                .0
        };
        assert_eq!(
            named(&first, "node-a"),
            Principal::new(Kind::Datanode, "ab".repeat(16))
        );
        // A reconcile later: the same pairs; a node gone loses its pair.
        let kept = datanode_data(&ca, Some(&first), &nodes, id_of, now()).unwrap();
        assert_eq!(kept, first);
        let fewer = datanode_data(&ca, Some(&first), &nodes[1..], id_of, now()).unwrap();
        assert!(!fewer.contains_key("node-a.crt"));
        assert_eq!(fewer["node-b.crt"], first["node-b.crt"]);
        // A renewal keeps the id the old certificate named, whatever the
        // derivation says now.
        let later = now() + (LEAF_DAYS - RENEW_BEFORE_DAYS + 1) * DAY;
        let renewed = datanode_data(&ca, Some(&first), &nodes, |_| "cd".repeat(16), later).unwrap();
        assert_ne!(renewed["node-a.crt"], first["node-a.crt"]);
        assert_eq!(named(&renewed, "node-a"), named(&first, "node-a"));
        assert_eq!(named(&renewed, "node-b"), named(&first, "node-b"));
        // A replaced CA issues every pair again, under the ids they had.
        let (ca2, _) = ca_data("demo").unwrap();
        let moved = datanode_data(&ca2, Some(&first), &nodes, |_| "ef".repeat(16), now()).unwrap();
        assert_ne!(moved["node-b.crt"], first["node-b.crt"]);
        assert_eq!(named(&moved, "node-a"), named(&first, "node-a"));
        assert_eq!(named(&moved, "node-b"), named(&first, "node-b"));
        // Names that cannot key a Secret are refused.
        assert!(node_key_ok("ip-10-0-0-1.ec2.internal"));
        assert!(!node_key_ok("../x") && !node_key_ok("") && !node_key_ok(".hidden"));
    }

    #[test]
    fn known_ids_come_from_the_facts_else_from_the_last_status() {
        use crate::coordinator::{ClusterFacts, DatanodeFact};
        use crate::crd::{DatanodeState, DfsClusterStatus};
        let status = DfsClusterStatus {
            nodes: vec![
                DatanodeState {
                    node_id: "old-a".into(),
                    host: "node-a".into(),
                    state: "HEALTHY".into(),
                },
                DatanodeState {
                    node_id: "old-b".into(),
                    host: "node-b".into(),
                    state: "HEALTHY".into(),
                },
            ],
            ..DfsClusterStatus::default()
        };
        let facts = ClusterFacts {
            nodes: vec![DatanodeFact {
                node_id: "new-a".into(),
                host: "node-a".into(),
                state: None,
            }],
            under_replicated_chunks: 0,
            missing_chunks: 0,
            capacity_total_bytes: 0,
            capacity_used_bytes: 0,
            coordinators: Vec::new(),
        };
        // The coordinator unreachable (a plain-text cluster being switched
        // to TLS): the status keeps the ids.
        let k = known_ids(None, Some(&status));
        assert_eq!(k["node-a"], "old-a");
        assert_eq!(k["node-b"], "old-b");
        // The facts win where they know the host.
        let k = known_ids(Some(&facts), Some(&status));
        assert_eq!(k["node-a"], "new-a");
        assert_eq!(k["node-b"], "old-b");
        assert!(known_ids(None, None).is_empty());
    }

    #[test]
    fn the_operator_identity_is_an_operator_of_the_cluster_ca() {
        let (ca, _) = ca_data("demo").unwrap();
        let tls = operator_identity(&ca).unwrap();
        assert_eq!(tls.principal(), Principal::new(Kind::Operator, MANAGER));
    }
}
