//! The datanode DaemonSet: hostPath data directory, updateStrategy OnDelete
//! (the operator deletes one outdated pod at a time, behind the coordinator's
//! maintenance gate), topology from the Kubernetes node.
//!
//! The node name comes from the downward API (`spec.nodeName` → `DFS_HOST`).
//! The downward API cannot read node labels, so the zone comes from the
//! topology ConfigMap (node name → zone, kept by the operator from the zone
//! label of the nodes) mounted into the pod at [`TOPOLOGY_MOUNT`]: the
//! datanode's `--topology-dir` reads `<dir>/<host>` at each registration.

use dfs_common::tls::{CA_FILE, CERT_FILE, KEY_FILE};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, HostPathVolumeSource,
    KeyToPath, ObjectFieldSelector, PodCertificateProjection, PodTemplateSpec,
    ProjectedVolumeSource, SecretProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::configmap::{KEY_COORDINATOR, KEY_RESERVE};
use super::statefulset::{
    RUN_AS, container_port, env_from_config, finish_template, hardened_container, pod_spec, probe,
    secret_volume,
};
use super::{
    CONTAINER_DATA_DIR, DATANODE, DATANODE_METRICS_PORT, DATANODE_PORT, Names, TLS_MOUNT,
    TOPOLOGY_MOUNT, meta, selector_labels,
};
use crate::controller::validate::ValidSpec;
use crate::crd::{DatanodeCredentials, DfsCluster};

/// Node selector that matches no node: a stopped cluster runs no datanode.
pub const STOPPED_SELECTOR: (&str, &str) = ("dfs.io/stopped", "true");

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The init container that gives the hostPath data directory (created by
/// the kubelet as root) to the datanode's user: the one process of the pod
/// that runs as root, with CAP_CHOWN as its only capability, no privilege
/// escalation, a read-only root filesystem, and nothing else mounted. It
/// changes only what belongs to someone else, so after the first start it
/// changes nothing. This is the datanode's hostPath exception to the
/// `restricted` Pod Security Standard (docs/kubernetes.md).
fn data_dir_owner(cluster: &DfsCluster) -> Container {
    let image = &cluster.spec.image;
    let mut ctx = hardened_container();
    ctx.run_as_user = Some(0);
    ctx.run_as_group = Some(0);
    ctx.run_as_non_root = Some(false);
    ctx.capabilities = Some(Capabilities {
        drop: Some(vec!["ALL".into()]),
        add: Some(vec!["CHOWN".into()]),
    });
    Container {
        name: DATA_DIR_OWNER.into(),
        image: Some(format!("{}:{}", image.repository, image.tag)),
        image_pull_policy: Some(image.pull_policy.as_str().into()),
        command: Some(vec!["dfs-datanode".into()]),
        args: Some(vec![
            "--data-dir".into(),
            CONTAINER_DATA_DIR.into(),
            "--chown-data-dir".into(),
            format!("{RUN_AS}:{RUN_AS}"),
        ]),
        security_context: Some(ctx),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: CONTAINER_DATA_DIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// The signer name the datanode pods' `podCertificate` volumes ask for (the
/// operator signs as it: `controller::signer`).
pub const SIGNER_NAME: &str = "dfs.io/datanode";

/// The key type the kubelet makes for a datanode pod: ECDSA P-256, the
/// type of every other identity of the cluster (rustls with ring verifies
/// it; the signer also takes P-384 and Ed25519).
pub const POD_CERTIFICATE_KEY_TYPE: &str = "ECDSAP256";
/// Longest life of a datanode pod certificate the kubelet asks for: a day
/// (the API server's default). The kubelet renews it well before.
pub const POD_CERTIFICATE_MAX_EXPIRATION_SECONDS: i32 = 86_400;

/// The `tls` volume of a datanode pod with pod certificates: the CA
/// certificate (and nothing else) from the datanode Secret, and a
/// `podCertificate` source for our signer, written where the datanode's
/// `--tls-dir` looks (`ca.crt`, `tls.crt`, `tls.key`).
fn pod_certificate_volume(names: &Names<'_>) -> Volume {
    Volume {
        name: "tls".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![
                VolumeProjection {
                    secret: Some(SecretProjection {
                        name: names.datanode_tls(),
                        items: Some(vec![KeyToPath {
                            key: CA_FILE.into(),
                            path: CA_FILE.into(),
                            ..KeyToPath::default()
                        }]),
                        optional: Some(false),
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    pod_certificate: Some(PodCertificateProjection {
                        signer_name: SIGNER_NAME.into(),
                        key_type: POD_CERTIFICATE_KEY_TYPE.into(),
                        key_path: Some(KEY_FILE.into()),
                        certificate_chain_path: Some(CERT_FILE.into()),
                        max_expiration_seconds: Some(POD_CERTIFICATE_MAX_EXPIRATION_SECONDS),
                        ..PodCertificateProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
            ]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Name of the datanode pod's init container ([`data_dir_owner`]).
pub const DATA_DIR_OWNER: &str = "data-dir-owner";

pub(super) fn build(cluster: &DfsCluster, v: &ValidSpec, config_hash: &str) -> (DaemonSet, String) {
    let spec = &cluster.spec.datanode;
    let names = Names(&v.name);
    let image = &cluster.spec.image;
    let mut env = vec![
        field_env("POD_IP", "status.podIP"),
        field_env("DFS_HOST", "spec.nodeName"),
        EnvVar {
            name: "DFS_ADVERTISE".into(),
            value: Some(format!(
                "{}://$(POD_IP):{DATANODE_PORT}",
                super::scheme(v.tls)
            )),
            ..EnvVar::default()
        },
        env_from_config(v, "DFS_COORDINATOR", KEY_COORDINATOR),
        env_from_config(v, "DFS_RESERVE", KEY_RESERVE),
    ];
    env.extend(spec.env.iter().cloned());
    let mut args = vec![
        "--listen".to_string(),
        format!("0.0.0.0:{DATANODE_PORT}"),
        "--data-dir".into(),
        CONTAINER_DATA_DIR.into(),
        "--metrics-addr".into(),
        format!("0.0.0.0:{DATANODE_METRICS_PORT}"),
        "--topology-dir".into(),
        TOPOLOGY_MOUNT.into(),
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "data".into(),
            mount_path: CONTAINER_DATA_DIR.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "topology".into(),
            mount_path: TOPOLOGY_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    let mut secrets = Vec::new();
    if v.tls && v.datanode_credentials == DatanodeCredentials::PodCertificate {
        // The kubelet makes this pod a key of its own and asks the operator
        // (the signer) for its certificate; the pod sees `tls.key`,
        // `tls.crt` and, from the datanode Secret, only `ca.crt`.
        args.extend(["--tls-dir".into(), TLS_MOUNT.into()]);
        secrets.push(pod_certificate_volume(&names));
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    } else if v.tls {
        // Every node's identity is in the one Secret; the pod reads its
        // own node's pair (`<node>.crt`, `<node>.key`).
        args.extend([
            "--tls-dir".into(),
            TLS_MOUNT.into(),
            "--tls-name".into(),
            "$(DFS_HOST)".into(),
        ]);
        secret_volume(
            &mut secrets,
            &mut mounts,
            "tls",
            names.datanode_tls(),
            TLS_MOUNT,
        );
    } else {
        // Asked for in the spec (security.tls: false): plain text, said
        // explicitly as the servers demand.
        args.push("--insecure".into());
    }
    args.extend(spec.args.iter().cloned());
    let container = Container {
        name: DATANODE.into(),
        image: Some(format!("{}:{}", image.repository, image.tag)),
        image_pull_policy: Some(image.pull_policy.as_str().into()),
        command: Some(vec!["dfs-datanode".into()]),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![
            container_port("grpc", DATANODE_PORT),
            container_port("metrics", DATANODE_METRICS_PORT),
        ]),
        readiness_probe: Some(probe("/readyz", "metrics")),
        liveness_probe: Some(probe("/healthz", "metrics")),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let mut scheduling = spec.scheduling.clone();
    if cluster.spec.cluster_operation.stopped {
        scheduling
            .node_selector
            .insert(STOPPED_SELECTOR.0.into(), STOPPED_SELECTOR.1.into());
    }
    let mut pod = pod_spec(cluster, &scheduling, container);
    pod.init_containers = Some(vec![data_dir_owner(cluster)]);
    let shared = pod.volumes.take().into_iter().flatten();
    pod.volumes = Some(Vec::from([
        Volume {
            name: "data".into(),
            host_path: Some(HostPathVolumeSource {
                path: spec.data_dir.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Volume::default()
        },
        Volume {
            name: "topology".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.topology(),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]));
    pod.volumes.get_or_insert_with(Vec::new).extend(shared);
    pod.volumes.get_or_insert_with(Vec::new).extend(secrets);
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(super::labels(v, cluster, Some(DATANODE))),
            ..ObjectMeta::default()
        }),
        spec: Some(pod),
    };
    let (template, hash) = finish_template(template, spec.pod_overrides.as_ref(), config_hash);
    let ds = DaemonSet {
        metadata: meta(v, cluster, names.datanode(), Some(DATANODE)),
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(&v.name, Some(DATANODE))),
                ..LabelSelector::default()
            },
            template,
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..DaemonSetUpdateStrategy::default()
            }),
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    };
    (ds, hash)
}
