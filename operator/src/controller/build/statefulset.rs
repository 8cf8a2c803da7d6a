//! The coordinator StatefulSet: a PVC per pod from volumeClaimTemplates,
//! updateStrategy OnDelete (the operator rolls pods itself, behind the
//! coordinator's safety gate).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapKeySelector, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, LocalObjectReference, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::configmap::{KEY_CHUNK_SIZE, KEY_REPLICATION};
use super::{
    ACCESS_KEY, ACCESS_MOUNT, CONTAINER_DATA_DIR, COORDINATOR, COORDINATOR_METRICS_PORT,
    COORDINATOR_PORT, Names, TEMPLATE_HASH, TLS_MOUNT, TOKEN_KEYS_KEY, TOKEN_KEYS_MOUNT, hash_json,
    merge_patch, meta, selector_labels,
};
use crate::controller::validate::ValidSpec;
use crate::crd::{DeletionPolicy, DfsCluster, Scheduling};

/// Env var read from a key of the config ConfigMap.
pub(super) fn env_from_config(v: &ValidSpec, env: &str, key: &str) -> EnvVar {
    EnvVar {
        name: env.into(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: Names(&v.name).config(),
                key: key.into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

pub(super) fn probe(path: &str, port: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

pub(super) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// The user and group the image runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;

/// Where the pods' only writable scratch space is mounted (an emptyDir:
/// the root filesystem is read-only).
pub const TMP_MOUNT: &str = "/tmp";

/// The container's privileges: none beyond running the binary (the
/// `restricted` Pod Security Standard).
pub(super) fn hardened_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// Fills every hardening field an override left unset.
fn reharden(template: &mut PodTemplateSpec) {
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    pod.automount_service_account_token.get_or_insert(false);
    let want = hardened_pod();
    let ctx = pod
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    ctx.run_as_non_root = ctx.run_as_non_root.or(want.run_as_non_root);
    ctx.run_as_user = ctx.run_as_user.or(want.run_as_user);
    ctx.run_as_group = ctx.run_as_group.or(want.run_as_group);
    ctx.fs_group = ctx.fs_group.or(want.fs_group);
    if ctx.seccomp_profile.is_none() {
        ctx.seccomp_profile = want.seccomp_profile;
    }
    let containers = pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten());
    for c in containers {
        let want = hardened_container();
        let ctx = c
            .security_context
            .get_or_insert_with(SecurityContext::default);
        ctx.allow_privilege_escalation = ctx
            .allow_privilege_escalation
            .or(want.allow_privilege_escalation);
        ctx.read_only_root_filesystem = ctx
            .read_only_root_filesystem
            .or(want.read_only_root_filesystem);
        ctx.run_as_non_root = ctx.run_as_non_root.or(want.run_as_non_root);
        ctx.run_as_user = ctx.run_as_user.or(want.run_as_user);
        ctx.run_as_group = ctx.run_as_group.or(want.run_as_group);
        let caps = ctx.capabilities.get_or_insert_with(Capabilities::default);
        if caps
            .drop
            .as_ref()
            .is_none_or(|d| !d.iter().any(|c| c == "ALL"))
        {
            caps.drop.get_or_insert_with(Vec::new).push("ALL".into());
        }
        if ctx.seccomp_profile.is_none() {
            ctx.seccomp_profile = want.seccomp_profile;
        }
    }
}

fn hardened_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        // Makes the coordinator's PersistentVolume writable by that user.
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// Pod spec parts shared by both components: non-root, read-only root
/// filesystem with an emptyDir `/tmp`, no capabilities, the runtime's
/// default seccomp profile, and no ServiceAccount token (neither component
/// talks to the Kubernetes API).
pub(super) fn pod_spec(
    cluster: &DfsCluster,
    scheduling: &Scheduling,
    mut container: Container,
) -> PodSpec {
    container.security_context = Some(hardened_container());
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: "tmp".into(),
            mount_path: TMP_MOUNT.into(),
            ..VolumeMount::default()
        });
    let image = &cluster.spec.image;
    let secrets: Vec<_> = image
        .pull_secrets
        .iter()
        .map(|s| LocalObjectReference { name: s.clone() })
        .collect();
    PodSpec {
        containers: vec![container],
        image_pull_secrets: (!secrets.is_empty()).then_some(secrets),
        node_selector: (!scheduling.node_selector.is_empty())
            .then(|| scheduling.node_selector.clone()),
        tolerations: (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone()),
        affinity: scheduling.affinity.clone(),
        termination_grace_period_seconds: Some(30),
        automount_service_account_token: Some(false),
        security_context: Some(hardened_pod()),
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

/// Applies the pod overrides, then stamps the template hash (covering the
/// template and the configuration) on the pod template.
pub(super) fn finish_template(
    mut template: PodTemplateSpec,
    overrides: Option<&serde_json::Value>,
    config_hash: &str,
) -> (PodTemplateSpec, String) {
    if let Some(o) = overrides {
        let mut value = serde_json::to_value(&template).expect("a pod template serializes");
        merge_patch(&mut value, o);
        // Overrides that do not fit a pod template are ignored rather than
        // failing every reconcile; validation already checked they are objects.
        if let Ok(t) = serde_json::from_value(value) {
            template = t;
        }
        // An override may replace the container list or null a field out
        // (JSON merge patch); validation refused what adds privileges, and
        // what it left unset gets the hardened value back.
        reharden(&mut template);
    }
    let hash = hash_json(&(&template, config_hash));
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_HASH.into(), hash.clone());
    (template, hash)
}

/// Mounts Secret `secret` read-only at `path` (as a whole directory, not
/// subPath, so that renewed files reach the running process), readable by
/// the pod's group only.
pub(super) fn secret_volume(
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
    name: &str,
    secret: String,
    path: &str,
) {
    volumes.push(Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    mounts.push(VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
}

/// The `--peers` of the coordinator group: its one seed, pod 0, at its
/// stable DNS name under the headless Service. The group forms with it
/// alone and the operator adds every other pod (member `ordinal + 1`), so
/// scaling never changes the pod template (no roll to scale).
pub(super) fn peers(v: &ValidSpec) -> String {
    format!("1={}", member_url(v, 0))
}

/// The gRPC URL of coordinator pod `ordinal` (member `ordinal + 1`).
pub fn member_url(v: &ValidSpec, ordinal: u64) -> String {
    let names = Names(&v.name);
    format!(
        "{}://{}-{ordinal}.{}.{}.svc:{COORDINATOR_PORT}",
        super::scheme(v.tls),
        names.coordinator(),
        names.coordinator_headless(),
        v.namespace
    )
}

pub(super) fn build(
    cluster: &DfsCluster,
    v: &ValidSpec,
    config_hash: &str,
    pods: i32,
) -> (StatefulSet, String) {
    let spec = &cluster.spec.coordinator;
    let names = Names(&v.name);
    let image = &cluster.spec.image;
    let mut env = vec![
        env_from_config(v, "DFS_REPLICATION", KEY_REPLICATION),
        env_from_config(v, "DFS_CHUNK_SIZE", KEY_CHUNK_SIZE),
    ];
    // Always a group (of one to five): each pod's id from its ordinal, the
    // seed by its stable DNS name (the headless Service publishes it before
    // the pod is ready, so the group can form), and whether the group may
    // still be formed from the group ConfigMap, read at each start: once the
    // group exists, a pod that comes back on an empty volume never forms a
    // second one.
    env.push(EnvVar {
        name: "DFS_RAFT_ID_FROM_HOSTNAME".into(),
        value: Some("true".into()),
        ..EnvVar::default()
    });
    env.push(EnvVar {
        name: "DFS_PEERS".into(),
        value: Some(peers(v)),
        ..EnvVar::default()
    });
    env.push(EnvVar {
        name: "DFS_INITIAL_CLUSTER_STATE".into(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: names.coordinator_group(),
                key: super::configmap::KEY_INITIAL_CLUSTER_STATE.into(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    env.extend(spec.env.iter().cloned());
    let mut args = vec![
        "--listen".to_string(),
        format!("0.0.0.0:{COORDINATOR_PORT}"),
        "--data-dir".into(),
        CONTAINER_DATA_DIR.into(),
        "--metrics-addr".into(),
        format!("0.0.0.0:{COORDINATOR_METRICS_PORT}"),
    ];
    let mut mounts = vec![VolumeMount {
        name: "data".into(),
        mount_path: CONTAINER_DATA_DIR.into(),
        ..VolumeMount::default()
    }];
    let mut volumes = Vec::new();
    if v.tls {
        args.extend([
            "--tls-dir".into(),
            TLS_MOUNT.into(),
            "--token-keys".into(),
            format!("{TOKEN_KEYS_MOUNT}/{TOKEN_KEYS_KEY}"),
        ]);
        secret_volume(
            &mut volumes,
            &mut mounts,
            "tls",
            names.coordinator_tls(),
            TLS_MOUNT,
        );
        secret_volume(
            &mut volumes,
            &mut mounts,
            "token-keys",
            names.token_keys(),
            TOKEN_KEYS_MOUNT,
        );
        if let Some(access) = &cluster.spec.security.access_secret {
            args.extend([
                "--access-file".into(),
                format!("{ACCESS_MOUNT}/{ACCESS_KEY}"),
            ]);
            secret_volume(
                &mut volumes,
                &mut mounts,
                "access",
                access.clone(),
                ACCESS_MOUNT,
            );
        }
    } else {
        // Asked for in the spec (security.tls: false): plain text, said
        // explicitly as the servers demand.
        args.push("--insecure".into());
    }
    args.extend(spec.args.iter().cloned());
    let container = Container {
        name: COORDINATOR.into(),
        image: Some(format!("{}:{}", image.repository, image.tag)),
        image_pull_policy: Some(image.pull_policy.as_str().into()),
        command: Some(vec!["dfs-coordinator".into()]),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![
            container_port("grpc", COORDINATOR_PORT),
            container_port("metrics", COORDINATOR_METRICS_PORT),
        ]),
        readiness_probe: Some(probe("/readyz", "metrics")),
        liveness_probe: Some(probe("/healthz", "metrics")),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let mut pod = pod_spec(cluster, &spec.scheduling, container);
    pod.volumes.get_or_insert_with(Vec::new).extend(volumes);
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(super::labels(v, cluster, Some(COORDINATOR))),
            ..ObjectMeta::default()
        }),
        spec: Some(pod),
    };
    let (template, hash) = finish_template(template, spec.pod_overrides.as_ref(), config_hash);
    let when_deleted = match cluster.spec.deletion_policy {
        DeletionPolicy::Retain => "Retain",
        DeletionPolicy::Delete => "Delete",
    };
    let replicas = if cluster.spec.cluster_operation.stopped {
        0
    } else {
        pods.max(spec.replicas)
    };
    let sts = StatefulSet {
        metadata: meta(v, cluster, names.coordinator(), Some(COORDINATOR)),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.coordinator_headless()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&v.name, Some(COORDINATOR))),
                ..LabelSelector::default()
            },
            template,
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(when_deleted.into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(selector_labels(&v.name, Some(COORDINATOR))),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(spec.storage.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    };
    (sts, hash)
}
