//! Pure builders: a validated DfsCluster (plus what was read from the
//! cluster, e.g. node zones) in, every desired object out. No client here, so
//! the unit tests compare the output against golden YAML files.
//!
//! ```text
//!   DfsCluster ─validate─▶ ValidSpec ─desired()─▶ Desired { ConfigMaps, Services,
//!                                                   PDBs, StatefulSet, DaemonSet,
//!                                                   ServiceMonitor? }
//! ```

mod configmap;
mod daemonset;
mod networkpolicy;
mod pdb;
mod service;
mod servicemonitor;
mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use serde::Serialize;

use crate::controller::validate::ValidSpec;
use crate::crd::DfsCluster;

pub use configmap::KEY_INITIAL_CLUSTER_STATE;
pub use daemonset::SIGNER_NAME;
pub use networkpolicy::OPERATOR_POD_LABEL;
pub use servicemonitor::service_monitor_resource;
pub use statefulset::member_url;

/// Field manager of every server-side apply.
pub const MANAGER: &str = "dfs-operator";
/// Component label value of the coordinator.
pub const COORDINATOR: &str = "coordinator";
/// Component label value of the datanodes.
pub const DATANODE: &str = "datanode";
/// Pod-template annotation carrying the hash of the generated template; a
/// pod whose value differs is outdated and gets rolled.
pub const TEMPLATE_HASH: &str = "dfs.io/template-hash";
/// Label marking the metrics Services (the ServiceMonitor selects it).
pub const METRICS_LABEL: &str = "dfs.io/metrics";
/// Label the operator puts on each Kubernetes node running a datanode:
/// `ready`, `full` or `unhealthy`.
pub const NODE_LABEL: &str = "dfs.io/datanode";
/// Coordinator gRPC port.
pub const COORDINATOR_PORT: i32 = 7000;
/// Coordinator metrics port.
pub const COORDINATOR_METRICS_PORT: i32 = 9100;
/// Datanode gRPC port.
pub const DATANODE_PORT: i32 = 7101;
/// Datanode metrics port.
pub const DATANODE_METRICS_PORT: i32 = 9101;
/// Data directory inside the containers.
pub const CONTAINER_DATA_DIR: &str = "/var/lib/dfs";
/// Where the topology ConfigMap (node name → zone) is mounted.
pub const TOPOLOGY_MOUNT: &str = "/etc/dfs/topology";

/// Names of the objects derived from a DfsCluster called `base`.
#[derive(Clone, Debug)]
pub struct Names<'a>(pub &'a str);

impl Names<'_> {
    /// ConfigMap with the services' configuration.
    pub fn config(&self) -> String {
        format!("{}-config", self.0)
    }
    /// ConfigMap saying whether the coordinator group has formed.
    pub fn coordinator_group(&self) -> String {
        format!("{}-coordinator-group", self.0)
    }
    /// ConfigMap mapping Kubernetes node names to zones.
    pub fn topology(&self) -> String {
        format!("{}-topology", self.0)
    }
    /// Coordinator StatefulSet, client Service and PDB.
    pub fn coordinator(&self) -> String {
        format!("{}-coordinator", self.0)
    }
    /// Coordinator headless Service (stable pod DNS names).
    pub fn coordinator_headless(&self) -> String {
        format!("{}-coordinator-headless", self.0)
    }
    /// Coordinator metrics Service.
    pub fn coordinator_metrics(&self) -> String {
        format!("{}-coordinator-metrics", self.0)
    }
    /// Datanode DaemonSet and PDB.
    pub fn datanode(&self) -> String {
        format!("{}-datanode", self.0)
    }
    /// Datanode metrics Service.
    pub fn datanode_metrics(&self) -> String {
        format!("{}-datanode-metrics", self.0)
    }
    /// The cluster's CA (`ca.crt`, `ca.key`).
    pub fn ca(&self) -> String {
        format!("{}-ca", self.0)
    }
    /// The coordinators' TLS identity.
    pub fn coordinator_tls(&self) -> String {
        format!("{}-coordinator-tls", self.0)
    }
    /// The datanodes' TLS identities, one pair per Kubernetes node.
    pub fn datanode_tls(&self) -> String {
        format!("{}-datanode-tls", self.0)
    }
    /// The admin client identity.
    pub fn admin_tls(&self) -> String {
        format!("{}-admin-tls", self.0)
    }
    /// The chunk-token keys.
    pub fn token_keys(&self) -> String {
        format!("{}-token-keys", self.0)
    }
    /// The NetworkPolicy of the cluster's pods.
    pub fn network_policy(&self) -> String {
        format!("{}-dfs", self.0)
    }
}

/// Where a TLS identity Secret is mounted in the pods.
pub const TLS_MOUNT: &str = "/etc/dfs/tls";
/// Where the token-key Secret is mounted in the coordinator pods.
pub const TOKEN_KEYS_MOUNT: &str = "/etc/dfs/token-keys";
/// The key file in the token-key Secret (`--token-keys <mount>/token-keys`).
pub const TOKEN_KEYS_KEY: &str = "token-keys";
/// The access file in the Secret `spec.security.accessSecret` names.
pub const ACCESS_KEY: &str = "access";
/// Where the access Secret is mounted in the coordinator pods.
pub const ACCESS_MOUNT: &str = "/etc/dfs/access";
/// Pod label admitting a client pod through the cluster's NetworkPolicy
/// (value: the DfsCluster's name).
pub const CLIENT_LABEL: &str = "dfs.io/client";

/// `https` with TLS, `http` without.
pub fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// The coordinator's in-cluster gRPC URL.
pub fn coordinator_url(name: &str, namespace: &str, tls: bool) -> String {
    format!(
        "{}://{}.{namespace}.svc:{COORDINATOR_PORT}",
        scheme(tls),
        Names(name).coordinator()
    )
}

/// Labels selecting the objects of one cluster (and component).
pub fn selector_labels(name: &str, component: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "dfs".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ]);
    if let Some(c) = component {
        l.insert("app.kubernetes.io/component".into(), c.into());
    }
    l
}

/// Label selector string of every object the operator manages for `name`.
pub fn managed_selector(name: &str) -> String {
    format!("app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGER}")
}

/// The `app.kubernetes.io/*` labels of every owned object.
pub fn labels(
    v: &ValidSpec,
    cluster: &DfsCluster,
    component: Option<&str>,
) -> BTreeMap<String, String> {
    let mut l = selector_labels(&v.name, component);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l.insert("app.kubernetes.io/part-of".into(), "dfs".into());
    l.insert(
        "app.kubernetes.io/version".into(),
        cluster.spec.image.tag.clone(),
    );
    l
}

/// Metadata of an owned object: name, namespace, labels, owner reference.
pub fn meta(
    v: &ValidSpec,
    cluster: &DfsCluster,
    name: String,
    component: Option<&str>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(labels(v, cluster, component)),
        owner_references: Some(vec![v.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// What the builders read from the cluster besides the DfsCluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Zone of each Kubernetes node (from the spec's zone label).
    pub zones: BTreeMap<String, String>,
    /// The ServiceMonitor CRD (prometheus-operator) is installed.
    pub service_monitor_crd: bool,
    /// Datanode pods running now (for the datanode PDB).
    pub datanode_pods: i32,
    /// Coordinator pods to run (the spec's replicas, or more while surplus
    /// members have not yet left the group; see `membership::pods`).
    pub coordinator_pods: i32,
    /// The coordinator group has formed (it had a leader once).
    pub group_formed: bool,
}

/// Every object a DfsCluster wants.
#[derive(Clone, Debug)]
pub struct Desired {
    /// Services' configuration.
    pub config: ConfigMap,
    /// Node name → zone, read by the datanodes at start.
    pub topology: ConfigMap,
    /// Whether the coordinator group has formed.
    pub coordinator_group: ConfigMap,
    /// Coordinator headless and client Services, and the metrics Services
    /// when metrics are enabled.
    pub services: Vec<Service>,
    /// Coordinator and datanode PodDisruptionBudgets.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// The coordinator.
    pub statefulset: StatefulSet,
    /// The datanodes.
    pub daemonset: DaemonSet,
    /// Prometheus-operator scrape config, when wanted and possible.
    pub service_monitor: Option<DynamicObject>,
    /// Who may reach the pods' gRPC ports (`spec.security.networkPolicy`).
    pub network_policy: Option<k8s_openapi::api::networking::v1::NetworkPolicy>,
    /// Template hash of the coordinator pods.
    pub coordinator_hash: String,
    /// Template hash of the datanode pods.
    pub datanode_hash: String,
}

/// Builds every desired object; pure.
pub fn desired(cluster: &DfsCluster, v: &ValidSpec, observed: &Observed) -> Desired {
    let config = configmap::config(cluster, v);
    let config_hash = hash_json(&config.data);
    let (statefulset, coordinator_hash) =
        statefulset::build(cluster, v, &config_hash, observed.coordinator_pods);
    let (daemonset, datanode_hash) = daemonset::build(cluster, v, &config_hash);
    Desired {
        topology: configmap::topology(cluster, v, &observed.zones),
        coordinator_group: configmap::coordinator_group(cluster, v, observed.group_formed),
        config,
        services: service::build(cluster, v),
        pdbs: pdb::build(cluster, v, observed.datanode_pods),
        statefulset,
        daemonset,
        service_monitor: (cluster.spec.metrics.enabled && observed.service_monitor_crd)
            .then(|| servicemonitor::build(cluster, v)),
        network_policy: cluster
            .spec
            .security
            .network_policy
            .then(|| networkpolicy::build(cluster, v)),
        coordinator_hash,
        datanode_hash,
    }
}

/// FNV-1a 64 of the JSON form: stable across runs and builds.
pub fn hash_json<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).expect("built objects serialize to JSON");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// RFC 7386 JSON merge patch of `patch` onto `target`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests;
