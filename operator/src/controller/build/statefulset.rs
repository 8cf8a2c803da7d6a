//! The coordinator StatefulSet: a PVC per pod from volumeClaimTemplates,
//! updateStrategy OnDelete (the operator rolls pods itself, behind the
//! coordinator's safety gate).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMapKeySelector, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    LocalObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec,
    PodTemplateSpec, Probe, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::configmap::{KEY_CHUNK_SIZE, KEY_REPLICATION};
use super::{
    CONTAINER_DATA_DIR, COORDINATOR, COORDINATOR_METRICS_PORT, COORDINATOR_PORT, Names,
    TEMPLATE_HASH, hash_json, merge_patch, meta, selector_labels,
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

/// Pod spec parts shared by both components.
pub(super) fn pod_spec(
    cluster: &DfsCluster,
    scheduling: &Scheduling,
    container: Container,
) -> PodSpec {
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
        "http://{}-{ordinal}.{}.{}.svc:{COORDINATOR_PORT}",
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
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: CONTAINER_DATA_DIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(super::labels(v, cluster, Some(COORDINATOR))),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(cluster, &spec.scheduling, container)),
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
