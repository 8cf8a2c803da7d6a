//! Builders against YAML fixtures (`operator/testdata/*.yaml`) and golden
//! files (`*.golden.yaml`). Regenerate the golden files with
//! `UPDATE_GOLDEN=1 cargo test -p dfs-operator build::tests`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::controller::validate::validate;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn fixture(name: &str) -> DfsCluster {
    let text = std::fs::read_to_string(testdata(&format!("{name}.yaml"))).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn observed() -> Observed {
    Observed {
        zones: BTreeMap::from([
            ("node-a".into(), "zone-1".into()),
            ("node-b".into(), "zone-2".into()),
        ]),
        service_monitor_crd: true,
        datanode_pods: 3,
        coordinator_pods: 1,
        group_formed: true,
    }
}

fn render(d: &Desired) -> String {
    let mut docs: Vec<String> = vec![
        serde_yaml::to_string(&d.config).unwrap(),
        serde_yaml::to_string(&d.topology).unwrap(),
        serde_yaml::to_string(&d.coordinator_group).unwrap(),
    ];
    docs.extend(d.services.iter().map(|s| serde_yaml::to_string(s).unwrap()));
    docs.extend(d.pdbs.iter().map(|s| serde_yaml::to_string(s).unwrap()));
    docs.push(serde_yaml::to_string(&d.statefulset).unwrap());
    docs.push(serde_yaml::to_string(&d.daemonset).unwrap());
    docs.extend(
        d.service_monitor
            .iter()
            .map(|s| serde_yaml::to_string(s).unwrap()),
    );
    docs.extend(
        d.network_policy
            .iter()
            .map(|s| serde_yaml::to_string(s).unwrap()),
    );
    docs.join("---\n")
}

fn check_golden(name: &str) -> Desired {
    let cluster = fixture(name);
    let v = validate(&cluster).unwrap();
    let d = desired(&cluster, &v, &observed());
    let got = render(&d);
    let path = testdata(&format!("{name}.golden.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{name}: built objects differ from {} (UPDATE_GOLDEN=1 to regenerate):\n{got}",
        path.display()
    );
    d
}

#[test]
fn minimal_cluster_matches_golden() {
    let d = check_golden("minimal");
    // Defaults: metrics Services and a ServiceMonitor (its CRD exists here).
    assert_eq!(d.services.len(), 4);
    assert!(d.service_monitor.is_some());
    assert_eq!(d.statefulset.spec.replicas, Some(1));
}

#[test]
fn full_cluster_matches_golden() {
    let d = check_golden("full");
    assert_eq!(d.services.len(), 2, "metrics disabled: no metrics Services");
    assert!(d.service_monitor.is_none());
    let sts = &d.statefulset;
    assert_eq!(sts.spec.replicas, Some(1));
    let retention = sts
        .spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
    let pod = sts.spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("high"),
        "pod overrides merged"
    );
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/dfs:1.2.3")
    );
    let ds_pod = d.daemonset.spec.template.spec.as_ref().unwrap();
    let host = ds_pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "data")
        .unwrap()
        .host_path
        .as_ref()
        .unwrap();
    assert_eq!(host.path, "/mnt/disk1/dfs");
    assert_eq!(
        d.config.data.as_ref().unwrap()["chunkSize"],
        (16u64 << 20).to_string()
    );
    assert_eq!(
        d.config.data.as_ref().unwrap()["reserve"],
        (10u64 << 30).to_string()
    );
}

#[test]
fn every_object_is_owned_and_labelled() {
    let cluster = fixture("minimal");
    let v = validate(&cluster).unwrap();
    let d = desired(&cluster, &v, &observed());
    let mut metas = vec![
        &d.config.metadata,
        &d.topology.metadata,
        &d.statefulset.metadata,
        &d.daemonset.metadata,
    ];
    metas.extend(d.services.iter().map(|s| &s.metadata));
    metas.extend(d.pdbs.iter().map(|s| &s.metadata));
    metas.extend(d.service_monitor.iter().map(|s| &s.metadata));
    for m in metas {
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "DfsCluster");
        assert_eq!(owner.controller, Some(true));
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "demo");
        assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGER);
        assert_eq!(m.namespace.as_deref(), Some("storage"));
    }
}

#[test]
fn datanode_topology_and_update_strategy() {
    let cluster = fixture("minimal");
    let v = validate(&cluster).unwrap();
    let d = desired(&cluster, &v, &observed());
    let ds = &d.daemonset.spec;
    assert_eq!(
        ds.update_strategy.as_ref().unwrap().type_.as_deref(),
        Some("OnDelete")
    );
    let c = &ds.template.spec.as_ref().unwrap().containers[0];
    let env: BTreeMap<_, _> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let host = env["DFS_HOST"]
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(host.field_path, "spec.nodeName");
    assert_eq!(
        env["DFS_ADVERTISE"].value.as_deref(),
        Some("https://$(POD_IP):7101")
    );
    assert_eq!(d.topology.data.as_ref().unwrap()["node-a"], "zone-1");
    assert_eq!(
        c.command.as_deref(),
        Some(&["dfs-datanode".to_string()][..])
    );
    let args = c.args.as_ref().unwrap();
    let at = args.iter().position(|a| a == "--topology-dir").unwrap();
    assert_eq!(
        args[at + 1],
        TOPOLOGY_MOUNT,
        "zone read from the mounted topology map"
    );
    assert_eq!(
        d.config.data.as_ref().unwrap()["coordinator"],
        "https://demo-coordinator.storage.svc:7000"
    );
}

#[test]
fn template_hash_follows_spec_and_config_but_not_topology() {
    let mut cluster = fixture("minimal");
    let v = validate(&cluster).unwrap();
    let a = desired(&cluster, &v, &observed());
    let b = desired(&cluster, &v, &Observed::default());
    assert_eq!(a.datanode_hash, b.datanode_hash, "zones do not roll pods");
    cluster.spec.replication = 2;
    let c = desired(&cluster, &v, &observed());
    assert_ne!(a.datanode_hash, c.datanode_hash, "config changes roll pods");
    assert_ne!(a.coordinator_hash, c.coordinator_hash);
    cluster.spec.image.tag = "9.9.9".into();
    let e = desired(&cluster, &v, &observed());
    assert_ne!(c.datanode_hash, e.datanode_hash, "image changes roll pods");
    let ann = e
        .daemonset
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(ann[TEMPLATE_HASH], e.datanode_hash);
}

#[test]
fn datanode_pdb_allows_one_eviction() {
    let cluster = fixture("minimal");
    let v = validate(&cluster).unwrap();
    let d = desired(&cluster, &v, &observed());
    let spec = d.pdbs[1].spec.as_ref().unwrap();
    assert_eq!(
        spec.min_available,
        Some(IntOrString::Int(2)),
        "3 datanodes, one may go"
    );
    assert_eq!(spec.max_unavailable, None, "unsupported for DaemonSet pods");
    let coordinator = d.pdbs[0].spec.as_ref().unwrap();
    assert_eq!(coordinator.max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn stopped_cluster_runs_nothing() {
    let mut cluster = fixture("minimal");
    cluster.spec.cluster_operation.stopped = true;
    let v = validate(&cluster).unwrap();
    let d = desired(&cluster, &v, &observed());
    assert_eq!(d.statefulset.spec.replicas, Some(0));
    let sel = d
        .daemonset
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .node_selector
        .as_ref()
        .unwrap();
    assert_eq!(sel["dfs.io/stopped"], "true");
}

/// Every cluster's coordinators are a group of one to five: the same pod
/// template whatever the replicas (scaling is a membership change, not a
/// roll), pod 0 the one seed by its stable DNS name, ids from hostnames,
/// and whether the group may still form read from the group ConfigMap.
#[test]
fn a_coordinator_group_names_its_seed_by_stable_dns_whatever_its_size() {
    let build = |replicas: i32, pods: i32| {
        let mut cluster = fixture("minimal");
        cluster.spec.coordinator.replicas = replicas;
        let v = validate(&cluster).unwrap();
        let mut o = observed();
        o.coordinator_pods = pods;
        let d = desired(&cluster, &v, &o);
        (v, d)
    };
    let env_of = |d: &Desired| {
        let pod = d.statefulset.spec.template.spec.clone().unwrap();
        pod.containers[0].env.clone().unwrap_or_default()
    };
    let (v, one) = build(1, 1);
    let (_, three) = build(3, 3);
    assert_eq!(one.statefulset.spec.replicas, Some(1));
    assert_eq!(three.statefulset.spec.replicas, Some(3));
    assert_eq!(
        one.coordinator_hash, three.coordinator_hash,
        "scaling rolls nothing"
    );
    // Voters that have not left the group yet keep their pods.
    let (_, shrinking) = build(3, 5);
    assert_eq!(shrinking.statefulset.spec.replicas, Some(5));

    let env = env_of(&three);
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("DFS_RAFT_ID_FROM_HOSTNAME").as_deref(), Some("true"));
    let names = Names(&v.name);
    let seed = format!(
        "1=https://{}-0.{}.{}.svc:{COORDINATOR_PORT}",
        names.coordinator(),
        names.coordinator_headless(),
        v.namespace
    );
    assert_eq!(value("DFS_PEERS").as_deref(), Some(seed.as_str()));
    assert_eq!(dfs_coordinator_peer(&seed), 1);
    assert_eq!(
        super::member_url(&v, 2),
        format!(
            "https://{}-2.{}.{}.svc:{COORDINATOR_PORT}",
            names.coordinator(),
            names.coordinator_headless(),
            v.namespace
        )
    );
    let state = env
        .iter()
        .find(|e| e.name == "DFS_INITIAL_CLUSTER_STATE")
        .and_then(|e| e.value_from.as_ref()?.config_map_key_ref.clone())
        .expect("the initial state comes from the group ConfigMap");
    assert_eq!(state.name, names.coordinator_group());
    assert_eq!(state.key, "initialClusterState");
    let group = |formed: bool| {
        let cluster = fixture("minimal");
        let v = validate(&cluster).unwrap();
        let mut o = observed();
        o.group_formed = formed;
        desired(&cluster, &v, &o).coordinator_group.data.unwrap()["initialClusterState"].clone()
    };
    assert_eq!(group(false), "new");
    assert_eq!(group(true), "existing");
}

/// The id of one `id=url` peer, as the coordinator reads it (the operator
/// does not depend on the coordinator crate: the format is checked here
/// and in `coordinator/src/config.rs`).
fn dfs_coordinator_peer(p: &str) -> u64 {
    let (id, url) = p.split_once('=').unwrap();
    assert!(
        (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 256,
        "{url}"
    );
    id.parse().unwrap()
}

#[test]
fn merge_patch_follows_rfc_7386() {
    let mut t = serde_json::json!({"a": {"b": 1, "c": 2}, "d": [1]});
    merge_patch(
        &mut t,
        &serde_json::json!({"a": {"b": null, "e": 3}, "d": [2]}),
    );
    assert_eq!(t, serde_json::json!({"a": {"c": 2, "e": 3}, "d": [2]}));
}

/// An override may replace the container list or null a field (JSON merge
/// patch); whatever hardening it leaves unset comes back.
#[test]
fn overrides_cannot_strip_the_pod_hardening() {
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    let template = PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "coordinator".into(),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    };
    let overrides = serde_json::json!({"spec": {
        "securityContext": null,
        "automountServiceAccountToken": null,
        "containers": [{"name": "coordinator", "image": "x", "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}],
        "initContainers": [{"name": "extra", "image": "y"}],
    }});
    let (t, _) = statefulset::finish_template(template, Some(&overrides), "h");
    let pod = t.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let ctx = pod.security_context.unwrap();
    assert_eq!(ctx.run_as_non_root, Some(true));
    assert_eq!(ctx.run_as_user, Some(statefulset::RUN_AS));
    assert_eq!(ctx.seccomp_profile.unwrap().type_, "RuntimeDefault");
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let ctx = c.security_context.as_ref().unwrap();
        assert_eq!(ctx.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(ctx.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(ctx.run_as_non_root, Some(true), "{}", c.name);
        let drop = ctx.capabilities.as_ref().unwrap().drop.as_ref().unwrap();
        assert!(drop.iter().any(|d| d == "ALL"), "{}: {drop:?}", c.name);
    }
}

/// The pods the operator builds meet the `restricted` Pod Security Standard
/// (its checks as of Kubernetes 1.30), for the minimal and the full
/// fixture; the one documented exception is the datanode's hostPath data
/// directory.
#[test]
fn pods_meet_the_restricted_pod_security_standard() {
    use k8s_openapi::api::core::v1::PodSpec;
    fn check(what: &str, pod: &PodSpec, host_path_allowed: &[&str]) {
        // The hostPath exception: the init container that gives the data
        // directory to the datanode's user runs as root, with CAP_CHOWN
        // only, on the data volume only, and is held to that here.
        let exempt = super::daemonset::DATA_DIR_OWNER;
        for c in pod
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.name == exempt)
        {
            assert!(
                !host_path_allowed.is_empty(),
                "{what}: {exempt} without a hostPath"
            );
            let ctx = c.security_context.as_ref().unwrap();
            assert_eq!(ctx.run_as_user, Some(0));
            assert_eq!(ctx.allow_privilege_escalation, Some(false));
            assert_eq!(ctx.read_only_root_filesystem, Some(true));
            assert_ne!(ctx.privileged, Some(true));
            let caps = ctx.capabilities.as_ref().unwrap();
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
            assert_eq!(caps.add.as_deref(), Some(&["CHOWN".to_string()][..]));
            let mounts: Vec<&str> = c
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| m.name.as_str())
                .collect();
            assert_eq!(mounts, host_path_allowed, "{what}: {exempt} mounts");
            assert!(
                c.args
                    .as_ref()
                    .unwrap()
                    .windows(2)
                    .any(|w| w == ["--chown-data-dir", "65532:65532"])
            );
        }
        for key in [pod.host_network, pod.host_pid, pod.host_ipc] {
            assert_ne!(key, Some(true), "{what}: host namespace");
        }
        let pod_ctx = pod.security_context.as_ref();
        let pod_non_root = pod_ctx.and_then(|c| c.run_as_non_root) == Some(true);
        let pod_seccomp = pod_ctx
            .and_then(|c| c.seccomp_profile.as_ref())
            .map(|s| s.type_.as_str());
        assert_ne!(pod_ctx.and_then(|c| c.run_as_user), Some(0), "{what}: root");
        for v in pod.volumes.iter().flatten() {
            let allowed = v.config_map.is_some()
                || v.empty_dir.is_some()
                || v.persistent_volume_claim.is_some()
                || v.secret.is_some()
                || v.projected.is_some()
                || v.downward_api.is_some()
                || v.csi.is_some()
                || v.ephemeral.is_some()
                || (v.host_path.is_some() && host_path_allowed.contains(&v.name.as_str()));
            assert!(allowed, "{what}: volume {} is of a restricted type", v.name);
        }
        let containers = pod.containers.iter().chain(
            pod.init_containers
                .iter()
                .flatten()
                .filter(|c| c.name != exempt),
        );
        for c in containers {
            let ctx = c
                .security_context
                .as_ref()
                .unwrap_or_else(|| panic!("{what}/{}: no securityContext", c.name));
            assert_ne!(ctx.privileged, Some(true), "{what}/{}", c.name);
            assert_eq!(
                ctx.allow_privilege_escalation,
                Some(false),
                "{what}/{}",
                c.name
            );
            assert!(
                ctx.run_as_non_root == Some(true)
                    || (pod_non_root && ctx.run_as_non_root.is_none()),
                "{what}/{}: runAsNonRoot",
                c.name
            );
            assert_ne!(ctx.run_as_user, Some(0), "{what}/{}", c.name);
            let seccomp = ctx
                .seccomp_profile
                .as_ref()
                .map(|s| s.type_.as_str())
                .or(pod_seccomp);
            assert!(
                matches!(seccomp, Some("RuntimeDefault" | "Localhost")),
                "{what}/{}: seccomp {seccomp:?}",
                c.name
            );
            let caps = ctx.capabilities.as_ref();
            assert!(
                caps.and_then(|c| c.drop.as_ref())
                    .is_some_and(|d| d.iter().any(|x| x == "ALL")),
                "{what}/{}: capabilities not dropped",
                c.name
            );
            assert!(
                caps.and_then(|c| c.add.as_ref())
                    .is_none_or(|a| a.iter().all(|x| x == "NET_BIND_SERVICE")),
                "{what}/{}: capabilities added",
                c.name
            );
            assert!(
                c.ports.iter().flatten().all(|p| p.host_port.is_none()),
                "{what}/{}: hostPort",
                c.name
            );
        }
        assert_eq!(
            pod.automount_service_account_token,
            Some(false),
            "{what}: token"
        );
    }
    for name in ["minimal", "full"] {
        let cluster = fixture(name);
        let v = validate(&cluster).unwrap();
        let d = desired(&cluster, &v, &observed());
        check(
            &format!("{name} coordinator"),
            d.statefulset.spec.template.spec.as_ref().unwrap(),
            &[],
        );
        let datanode = d.daemonset.spec.template.spec.as_ref().unwrap();
        check(&format!("{name} datanode"), datanode, &["data"]);
        assert_eq!(
            datanode.init_containers.as_ref().map(Vec::len),
            Some(1),
            "the datanode's data directory is given to its user first"
        );
    }
}

/// With TLS (the default) every pod mounts its identity Secret as a whole
/// directory (renewals reach the process), the datanodes pick their node's
/// pair, the coordinators get the token keys and the access file, and
/// nobody runs `--insecure`; `security.tls: false` is the one way back to
/// plain text, said on every command line.
#[test]
fn tls_clusters_mount_their_identities_and_insecure_is_explicit() {
    let args = |c: &k8s_openapi::api::core::v1::PodSpec| c.containers[0].args.clone().unwrap();
    let secrets = |c: &k8s_openapi::api::core::v1::PodSpec| -> Vec<String> {
        c.volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect()
    };
    let mut cluster = fixture("full");
    let v = validate(&cluster).unwrap();
    let d = desired(&cluster, &v, &observed());
    let co = d.statefulset.spec.template.spec.clone().unwrap();
    let dn = d.daemonset.spec.template.spec.clone().unwrap();
    assert!(!args(&co).contains(&"--insecure".to_string()));
    assert!(!args(&dn).contains(&"--insecure".to_string()));
    assert!(
        args(&co)
            .windows(2)
            .any(|w| w == ["--access-file", "/etc/dfs/access/access"])
    );
    assert!(
        args(&dn)
            .windows(2)
            .any(|w| w == ["--tls-name", "$(DFS_HOST)"])
    );
    assert_eq!(
        secrets(&co),
        ["big-coordinator-tls", "big-token-keys", "big-access"]
    );
    assert_eq!(secrets(&dn), ["big-datanode-tls"]);
    for pod in [&co, &dn] {
        for m in pod.containers[0].volume_mounts.iter().flatten() {
            assert!(m.sub_path.is_none(), "{m:?}");
        }
    }
    assert!(d.network_policy.is_none(), "full.yaml turns it off");

    cluster.spec.security.tls = false;
    cluster.spec.security.access_secret = None;
    let v = validate(&cluster).unwrap();
    let d = desired(&cluster, &v, &observed());
    let co = d.statefulset.spec.template.spec.clone().unwrap();
    let dn = d.daemonset.spec.template.spec.clone().unwrap();
    assert!(args(&co).contains(&"--insecure".to_string()));
    assert!(args(&dn).contains(&"--insecure".to_string()));
    assert!(secrets(&co).is_empty() && secrets(&dn).is_empty());
    assert!(d.config.data.unwrap()["coordinator"].starts_with("http://"));

    // An access file needs TLS, and a Secret name.
    cluster.spec.security.access_secret = Some("Bad/Name".into());
    let e = validate(&cluster).unwrap_err().to_string();
    assert!(
        e.contains("security.accessSecret \"Bad/Name\" is not a Secret name"),
        "{e}"
    );
    assert!(e.contains("needs security.tls"), "{e}");
}

/// With `datanodeCredentials: podCertificate` a datanode pod no longer
/// mounts the Secret of every node's keys: its `tls` volume projects only
/// `ca.crt` from that Secret and a `podCertificate` for our signer, at the
/// file names the datanode's `--tls-dir` reads, and it picks no node's
/// pair by name. The coordinators keep their Secrets.
#[test]
fn pod_certificate_datanodes_mount_only_their_own_key_and_the_ca() {
    use crate::crd::DatanodeCredentials;
    let mut cluster = fixture("full");
    let secret_mode = {
        let v = validate(&cluster).unwrap();
        desired(&cluster, &v, &observed())
    };
    cluster.spec.security.datanode_credentials = DatanodeCredentials::PodCertificate;
    let v = validate(&cluster).unwrap();
    let d = desired(&cluster, &v, &observed());
    let dn = d.daemonset.spec.template.spec.clone().unwrap();
    let args = dn.containers[0].args.clone().unwrap();
    assert!(
        args.windows(2)
            .any(|w| w == ["--tls-dir", super::TLS_MOUNT])
    );
    assert!(!args.iter().any(|a| a == "--tls-name"), "{args:?}");
    assert!(!args.iter().any(|a| a == "--insecure"), "{args:?}");
    let volumes = dn.volumes.clone().unwrap();
    assert!(
        volumes.iter().all(|v| v.secret.is_none()),
        "no whole Secret is mounted: {volumes:?}"
    );
    let tls = volumes.iter().find(|v| v.name == "tls").unwrap();
    let sources = tls.projected.as_ref().unwrap().sources.clone().unwrap();
    assert_eq!(sources.len(), 2);
    let secret = sources[0].secret.as_ref().unwrap();
    assert_eq!(secret.name, "big-datanode-tls");
    let items = secret.items.clone().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("ca.crt", "ca.crt")
    );
    let pc = sources[1].pod_certificate.as_ref().unwrap();
    assert_eq!(pc.signer_name, crate::controller::signer::SIGNER_NAME);
    assert_eq!(pc.key_type, "ECDSAP256");
    assert_eq!(pc.key_path.as_deref(), Some("tls.key"));
    assert_eq!(pc.certificate_chain_path.as_deref(), Some("tls.crt"));
    assert!(pc.credential_bundle_path.is_none());
    let mount = dn.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "tls")
        .unwrap();
    assert_eq!(mount.mount_path, super::TLS_MOUNT);
    assert_eq!(mount.read_only, Some(true));
    assert!(mount.sub_path.is_none());
    // Switching modes rolls the datanodes; the coordinators stay as they were.
    assert_ne!(d.datanode_hash, secret_mode.datanode_hash);
    assert_eq!(d.statefulset, secret_mode.statefulset);
}
