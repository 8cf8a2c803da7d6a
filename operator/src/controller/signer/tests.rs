//! The signer's checks and certificates, without an API server.

use k8s_openapi::api::certificates::v1::PodCertificateRequestSpec;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rcgen::{
    CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};

use super::*;
use crate::controller::pki::ca_data;

const NS: &str = "ns";

fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(name: &str, uid: &str, owner: Option<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        uid: Some(uid.into()),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn cluster(mode: DatanodeCredentials) -> DfsCluster {
    let mut c: DfsCluster = serde_yaml::from_str(
        "apiVersion: dfs.io/v1alpha1\nkind: DfsCluster\nmetadata: {name: demo, namespace: ns, uid: c-uid}\nspec: {}\n",
    )
    .unwrap();
    c.spec.security.datanode_credentials = mode;
    c
}

fn selector() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/component".to_string(),
        "datanode".to_string(),
    )])
}

fn daemonset() -> DaemonSet {
    let mut ds = DaemonSet {
        metadata: meta(
            "demo-datanode",
            "ds-uid",
            Some(owner("dfs.io/v1alpha1", "DfsCluster", "demo", "c-uid")),
        ),
        ..DaemonSet::default()
    };
    ds.spec.selector.match_labels = Some(selector());
    ds
}

fn pod(node: &str) -> Pod {
    let mut metadata = meta(
        "demo-datanode-x1",
        "pod-uid",
        Some(owner("apps/v1", "DaemonSet", "demo-datanode", "ds-uid")),
    );
    metadata.labels = Some(selector());
    Pod {
        metadata,
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn csr(key: &KeyPair) -> Vec<u8> {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .der()
        .to_vec()
}

fn request(node: &str, csr: Vec<u8>) -> PodCertificateRequest {
    PodCertificateRequest {
        metadata: ObjectMeta {
            name: Some("req-1".into()),
            namespace: Some(NS.into()),
            resource_version: Some("7".into()),
            generation: Some(1),
            ..ObjectMeta::default()
        },
        spec: PodCertificateRequestSpec {
            signer_name: SIGNER_NAME.into(),
            pod_name: "demo-datanode-x1".into(),
            pod_uid: "pod-uid".into(),
            node_name: node.into(),
            node_uid: "node-uid".into(),
            service_account_name: "default".into(),
            service_account_uid: "sa-uid".into(),
            max_expiration_seconds: Some(86_400),
            stub_pkc_s10_request: k8s_openapi::ByteString(csr),
            unverified_user_annotations: None,
        },
        status: None,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_datanode_pod_of_a_pod_certificate_cluster_on_its_node_passes() {
    let key = KeyPair::generate().unwrap();
    let pcr = request("node-a", csr(&key));
    let c = cluster(DatanodeCredentials::PodCertificate);
    let v = verify(&pcr, Some(&pod("node-a")), Some(&daemonset()), Some(&c)).unwrap();
    assert_eq!(
        v,
        Verified {
            cluster: "demo".into(),
            node: "node-a".into()
        }
    );
    assert_eq!(
        pod_daemonset(&pod("node-a")).as_deref(),
        Some("demo-datanode")
    );
    assert_eq!(daemonset_cluster(&daemonset()).as_deref(), Some("demo"));
}

/// Every link from the request to the cluster is checked; each broken one
/// is a denial with its own reason, and none is a pass.
#[test]
fn anything_unverified_is_denied() {
    let key = KeyPair::generate().unwrap();
    let pcr = request("node-a", csr(&key));
    let c = cluster(DatanodeCredentials::PodCertificate);
    let ds = daemonset();
    let good = pod("node-a");
    let deny = |pod: Option<&Pod>,
                ds: Option<&DaemonSet>,
                c: Option<&DfsCluster>,
                pcr: &PodCertificateRequest| {
        let r = verify(pcr, pod, ds, c).unwrap_err();
        assert_eq!(r.outcome(), Outcome::Denied, "{r}");
        r
    };
    // No such pod.
    assert_eq!(
        deny(None, Some(&ds), Some(&c), &pcr).reason(),
        "PodNotFound"
    );
    // Another pod of the same name (made again since the request).
    let mut other = good.clone();
    other.metadata.uid = Some("pod-uid-2".into());
    let r = deny(Some(&other), Some(&ds), Some(&c), &pcr);
    assert_eq!(r.reason(), "PodUIDMismatch");
    assert!(r.to_string().contains("pod-uid-2"), "{r}");
    // The pod runs elsewhere, or nowhere yet.
    let r = deny(Some(&pod("node-b")), Some(&ds), Some(&c), &pcr);
    assert_eq!(r.reason(), "NodeMismatch");
    assert!(r.to_string().contains("node-b"), "{r}");
    let mut unscheduled = good.clone();
    unscheduled.spec.as_mut().unwrap().node_name = None;
    assert_eq!(
        deny(Some(&unscheduled), Some(&ds), Some(&c), &pcr).reason(),
        "NodeMismatch"
    );
    let mut empty_node = pcr.clone();
    empty_node.spec.node_name = String::new();
    let mut nowhere = good.clone();
    nowhere.spec.as_mut().unwrap().node_name = Some(String::new());
    assert_eq!(
        deny(Some(&nowhere), Some(&ds), Some(&c), &empty_node).reason(),
        "NodeMismatch"
    );
    // Not made by a DaemonSet, or by another one, or not as controller.
    let mut bare = good.clone();
    bare.metadata.owner_references = None;
    assert_eq!(
        deny(Some(&bare), Some(&ds), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    let mut by_other = good.clone();
    by_other.metadata.owner_references = Some(vec![owner(
        "apps/v1",
        "DaemonSet",
        "demo-datanode",
        "ds-uid-2",
    )]);
    assert_eq!(
        deny(Some(&by_other), Some(&ds), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    let mut not_controller = good.clone();
    not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = None;
    assert_eq!(
        deny(Some(&not_controller), Some(&ds), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    let mut by_rs = good.clone();
    by_rs.metadata.owner_references = Some(vec![owner(
        "apps/v1",
        "ReplicaSet",
        "demo-datanode",
        "ds-uid",
    )]);
    assert_eq!(
        deny(Some(&by_rs), Some(&ds), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    // A pod that claims the DaemonSet but is not selected by it (the
    // DaemonSet controller would release it).
    let mut unselected = good.clone();
    unselected.metadata.labels = None;
    let r = deny(Some(&unselected), Some(&ds), Some(&c), &pcr);
    assert!(r.to_string().contains("selector"), "{r}");
    let mut selects_all = ds.clone();
    selects_all.spec.selector.match_labels = None;
    assert_eq!(
        deny(Some(&good), Some(&selects_all), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    // The DaemonSet missing, not the cluster's, or the cluster's other one.
    assert_eq!(
        deny(Some(&good), None, Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    let mut foreign = ds.clone();
    foreign.metadata.owner_references = None;
    assert_eq!(
        deny(Some(&good), Some(&foreign), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    let mut other_cluster = ds.clone();
    other_cluster.metadata.owner_references = Some(vec![owner(
        "dfs.io/v1alpha1",
        "DfsCluster",
        "demo",
        "c-uid-2",
    )]);
    assert_eq!(
        deny(Some(&good), Some(&other_cluster), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    let mut lookalike = ds.clone();
    lookalike.metadata.owner_references =
        Some(vec![owner("evil.io/v1", "DfsCluster", "demo", "c-uid")]);
    assert_eq!(
        deny(Some(&good), Some(&lookalike), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    let mut renamed = ds.clone();
    renamed.metadata.name = Some("demo-coordinator".into());
    let mut to_renamed = good.clone();
    to_renamed.metadata.owner_references = Some(vec![owner(
        "apps/v1",
        "DaemonSet",
        "demo-coordinator",
        "ds-uid",
    )]);
    assert_eq!(
        deny(Some(&to_renamed), Some(&renamed), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    assert_eq!(
        deny(Some(&good), Some(&ds), None, &pcr).reason(),
        "NotADatanode"
    );
    // A pod being deleted.
    let mut going = good.clone();
    going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    assert_eq!(
        deny(Some(&going), Some(&ds), Some(&c), &pcr).reason(),
        "NotADatanode"
    );
    // The cluster in secret mode, or without TLS.
    let secret_mode = cluster(DatanodeCredentials::Secret);
    assert_eq!(
        deny(Some(&good), Some(&ds), Some(&secret_mode), &pcr).reason(),
        "PodCertificatesNotEnabled"
    );
    let mut plain = cluster(DatanodeCredentials::PodCertificate);
    plain.spec.security.tls = false;
    assert_eq!(
        deny(Some(&good), Some(&ds), Some(&plain), &pcr).reason(),
        "PodCertificatesNotEnabled"
    );
    // Annotations the signer does not know.
    let mut annotated = pcr.clone();
    annotated.spec.unverified_user_annotations = Some(BTreeMap::from([(
        "example.com/x".to_string(),
        "y".to_string(),
    )]));
    let r = deny(Some(&good), Some(&ds), Some(&c), &annotated);
    assert_eq!(r.reason(), "UnsupportedUserAnnotations");
    assert!(r.to_string().contains("example.com/x"), "{r}");
}

#[test]
fn bad_or_unsupported_keys_are_denied_with_a_clear_message() {
    let deny = |der: &[u8]| {
        let r = public_key(der).expect_err("refused");
        assert_eq!(r.outcome(), Outcome::Denied, "{r}");
        r
    };
    assert_eq!(deny(&[]).reason(), "InvalidRequest");
    assert!(deny(&[]).to_string().contains("empty"));
    assert_eq!(deny(b"not a csr").reason(), "InvalidRequest");
    assert_eq!(
        deny(&vec![0x30; MAX_CSR_BYTES + 1]).reason(),
        "InvalidRequest"
    );
    // Trailing bytes.
    let mut long = csr(&KeyPair::generate().unwrap());
    long.push(0);
    assert!(
        deny(&long).to_string().contains("trailing"),
        "{}",
        deny(&long)
    );
    // A CSR whose signature does not match its key.
    let mut forged = csr(&KeyPair::generate().unwrap());
    let last = forged.len() - 2;
    forged[last] ^= 0x01;
    let r = deny(&forged);
    assert_eq!(r.reason(), "InvalidRequest", "{r}");
    assert!(r.to_string().contains("signature does not verify"), "{r}");
    // P-521 (made by openssl): ring cannot verify it, so the signer says
    // which types to use, with the reason the signer contract names.
    let pem = include_str!("../../../testdata/p521-csr.pem");
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let r = deny(&der);
    assert_eq!(r.reason(), "UnsupportedKeyType");
    assert!(r.to_string().contains("use ECDSAP256"), "{r}");
    // The supported ones.
    for alg in [
        &PKCS_ECDSA_P256_SHA256,
        &PKCS_ECDSA_P384_SHA384,
        &PKCS_ED25519,
    ] {
        let key = KeyPair::generate_for(alg).unwrap();
        let spki = public_key(&csr(&key)).unwrap();
        assert_eq!(spki.der_bytes(), key.der_bytes(), "{alg:?}");
    }
}

/// The certificate names the datanode exactly as the datanode Secret's do
/// (so the coordinator takes it alike), is for the request's key, chains to
/// the cluster's CA, and its lifetime is bounded by the request.
#[test]
fn the_certificate_carries_the_node_identity_for_the_requested_key() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (ca, data) = ca_data("demo").unwrap();
    let signing = SigningCa::from_data(&data).unwrap();
    let id = "ab".repeat(16);
    let t = now();
    for alg in [&PKCS_ECDSA_P256_SHA256, &PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).unwrap();
        let spki = public_key(&csr(&key)).unwrap();
        let signed = issue(&signing, &id, &spki, Some(7_200), t).unwrap();
        // The same principal and expiry as the describe() of pki.rs sees.
        let (who, not_after) = dfs_common::pki::describe(&signed.chain).unwrap();
        assert_eq!(who, Principal::new(Kind::Datanode, id.clone()));
        assert_eq!(not_after, signed.not_after);
        assert_eq!(signed.not_after - signed.not_before, 7_200);
        assert_eq!(signed.not_before, t - BACKDATE_SECONDS);
        assert!(signed.begin_refresh_at > signed.not_before + 600);
        assert!(signed.begin_refresh_at < signed.not_after - 600);
        // For the requested key, signed by the CA.
        let der = x509_parser::pem::parse_x509_pem(signed.chain.as_bytes())
            .unwrap()
            .1
            .contents;
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        let ca_der = x509_parser::pem::parse_x509_pem(ca.pem().as_bytes())
            .unwrap()
            .1
            .contents;
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        // The usages of the Secret's datanode certificates.
        let reference = ca
            .issue_pem(&Principal::new(Kind::Datanode, id.clone()), &[], 1)
            .unwrap();
        let ref_der = x509_parser::pem::parse_x509_pem(reference.cert_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let (_, ref_cert) = X509Certificate::from_der(&ref_der).unwrap();
        assert_eq!(cert.subject().to_string(), ref_cert.subject().to_string());
        assert_eq!(
            cert.key_usage().unwrap().map(|k| k.value.flags),
            ref_cert.key_usage().unwrap().map(|k| k.value.flags)
        );
        let eku = |c: &X509Certificate<'_>| {
            let e = c.extended_key_usage().unwrap().unwrap().value;
            (e.server_auth, e.client_auth, e.other.len())
        };
        assert_eq!(eku(&cert), eku(&ref_cert));
        assert_eq!(
            cert.subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names,
            ref_cert
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
        );
        // The datanode's loader takes the files the kubelet writes (the
        // key as PKCS#8, the chain, the CA) and is that datanode.
        let tls = dfs_common::tls::Tls::from_pem(ca.pem(), &signed.chain, &key.serialize_pem())
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(tls.principal(), Principal::new(Kind::Datanode, id.clone()));
    }
    // A long request is cut to the operator's leaf lifetime; a default
    // one gets a day; one under an hour is refused.
    let key = KeyPair::generate().unwrap();
    let spki = public_key(&csr(&key)).unwrap();
    let long = issue(&signing, &id, &spki, Some(7_862_400), t).unwrap();
    assert_eq!(long.not_after - long.not_before, LEAF_DAYS * DAY);
    let default = issue(&signing, &id, &spki, None, t).unwrap();
    assert_eq!(
        default.not_after - default.not_before,
        DEFAULT_MAX_EXPIRATION_SECONDS
    );
    let r = issue(&signing, &id, &spki, Some(60), t).unwrap_err();
    assert_eq!(r.reason(), "InvalidMaxExpiration");
    // A CA Secret without its key is no signer.
    let mut no_key = data.clone();
    no_key.remove(CA_KEY);
    assert!(SigningCa::from_data(&no_key).is_err());
}

/// An issued request's status has the chain and its times, an `Issued`
/// condition and the resourceVersion it was decided on; a refused one a
/// `Denied` or `Failed` condition and no chain; a settled request is left.
#[test]
fn the_status_says_what_was_decided() {
    let (_, data) = ca_data("demo").unwrap();
    let signing = SigningCa::from_data(&data).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut pcr = request("node-a", csr(&key));
    let spki = public_key(&pcr.spec.stub_pkc_s10_request.0).unwrap();
    let t = now();
    let signed = issue(&signing, "n1", &spki, Some(3_600), t);
    let patch = status_patch(&pcr, &signed, t);
    assert_eq!(patch["metadata"]["resourceVersion"], "7");
    let s = &patch["status"];
    assert_eq!(
        s["certificateChain"],
        signed.as_ref().unwrap().chain.as_str()
    );
    assert_eq!(s["conditions"][0]["type"], "Issued");
    assert_eq!(s["conditions"][0]["status"], "True");
    for f in ["notBefore", "notAfter", "beginRefreshAt"] {
        let text = s[f].as_str().unwrap();
        assert!(text.ends_with('Z') && text.len() == 20, "{f}: {text}");
    }
    // The status deserializes as the API's type and then counts as settled.
    pcr.status = Some(serde_json::from_value(s.clone()).unwrap());
    assert!(settled(&pcr));

    pcr.status = None;
    assert!(!settled(&pcr));
    let denied = status_patch(&pcr, &Err(Refusal::PodNotFound { pod: "p".into() }), t);
    let s = &denied["status"];
    assert!(s.get("certificateChain").is_none());
    assert_eq!(s["conditions"][0]["type"], "Denied");
    assert_eq!(s["conditions"][0]["reason"], "PodNotFound");
    assert_eq!(s["conditions"][0]["message"], "pod p does not exist");
    let failed = status_patch(&pcr, &Err(Refusal::Sign { why: "x".into() }), t);
    assert_eq!(failed["status"]["conditions"][0]["type"], "Failed");
    pcr.status = Some(serde_json::from_value(failed["status"].clone()).unwrap());
    assert!(settled(&pcr));
    for o in Outcome::ALL {
        assert_eq!(o.label(), o.label().to_lowercase());
    }
}
