//! The `DfsCluster` custom resource (`dfs.io/v1alpha1`, short name `dfs`).
//!
//! The schema is generated from these types with schemars (`dfs-operator crd`);
//! doc comments become the schema's descriptions, `#[serde(default)]` values
//! become schema defaults, so a DfsCluster of a few lines is complete.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the project's resources.
pub const GROUP: &str = "dfs.io";
/// Finalizer the operator puts on every DfsCluster.
pub const FINALIZER: &str = "dfs.io/cleanup";
/// Default image repository.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "dfs";
/// Default image tag: the operator's own version.
pub const DEFAULT_IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");
/// Default coordinator volume size.
pub const DEFAULT_COORDINATOR_STORAGE: &str = "10Gi";
/// Default host directory of datanode data.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/dfs-data";
/// Default capacity kept free on each datanode.
pub const DEFAULT_RESERVE: &str = "1GiB";
/// Default replication factor.
pub const DEFAULT_REPLICATION: u32 = 3;
/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE: &str = "64MiB";
/// Default node label the datanode zone is read from.
pub const DEFAULT_ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Desired state of a dfs cluster: one coordinator StatefulSet and a datanode
/// DaemonSet.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dfs.io",
    version = "v1alpha1",
    kind = "DfsCluster",
    namespaced,
    shortname = "dfs",
    status = "DfsClusterStatus",
    printcolumn = r#"{"name":"Datanodes","type":"string","jsonPath":".status.datanodes.summary","description":"Ready/desired datanodes"}"#,
    printcolumn = r#"{"name":"Capacity","type":"string","jsonPath":".status.capacity","description":"Used/total capacity"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DfsClusterSpec {
    /// Container image of every dfs process.
    #[serde(default)]
    pub image: ImageSpec,
    /// The coordinator StatefulSet.
    #[serde(default)]
    pub coordinator: CoordinatorSpec,
    /// The datanode DaemonSet.
    #[serde(default)]
    pub datanode: DatanodeSpec,
    /// Default replication factor of new files.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 16))]
    pub replication: u32,
    /// Default chunk size of new files, with a suffix (`64MiB`, `1048576`).
    #[serde(default = "default_chunk_size")]
    #[schemars(regex(pattern = r"^[0-9]+([KMGT]i?B?|[kKMGT]|B)?$"))]
    pub chunk_size: String,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Operational switches.
    #[serde(default)]
    pub cluster_operation: ClusterOperation,
    /// What happens to stored data when the DfsCluster is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Transport security and authorization.
    #[serde(default)]
    pub security: SecuritySpec,
}

fn default_replication() -> u32 {
    DEFAULT_REPLICATION
}
fn default_chunk_size() -> String {
    DEFAULT_CHUNK_SIZE.to_string()
}

/// Container image.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository.
    #[serde(default = "default_repository")]
    #[schemars(length(min = 1))]
    pub repository: String,
    /// Image tag.
    #[serde(default = "default_tag")]
    #[schemars(length(min = 1))]
    pub tag: String,
    /// Pull policy.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Names of Secrets used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self {
            repository: default_repository(),
            tag: default_tag(),
            pull_policy: PullPolicy::default(),
            pull_secrets: Vec::new(),
        }
    }
}

fn default_repository() -> String {
    DEFAULT_IMAGE_REPOSITORY.to_string()
}
fn default_tag() -> String {
    DEFAULT_IMAGE_TAG.to_string()
}

/// Image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    /// Pull only when the image is not on the node.
    #[default]
    IfNotPresent,
    /// Always pull.
    Always,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IfNotPresent => "IfNotPresent",
            Self::Always => "Always",
            Self::Never => "Never",
        }
    }
}

/// Where pods run.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// The coordinator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorSpec {
    /// Pods of the coordinator StatefulSet: 1 (a single coordinator), or 3
    /// or 5 as one Raft group (the namespace on every pod; a majority must
    /// be up). Even numbers are refused: they survive no more failures.
    /// Fixed when the cluster is created: changing it later (membership
    /// changes) is not supported yet.
    #[serde(default = "default_coordinator_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// Compute resources of the coordinator container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Persistent volume of the coordinator's metadata.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Where coordinator pods run.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Extra environment variables of the coordinator container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra command-line arguments of the coordinator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A partial pod template merged (JSON merge patch) over the generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub pod_overrides: Option<serde_json::Value>,
}

impl Default for CoordinatorSpec {
    fn default() -> Self {
        Self {
            replicas: default_coordinator_replicas(),
            resources: None,
            storage: StorageSpec::default(),
            scheduling: Scheduling::default(),
            env: Vec::new(),
            args: Vec::new(),
            pod_overrides: None,
        }
    }
}

fn default_coordinator_replicas() -> i32 {
    1
}

/// A free-form object kept as written (`x-kubernetes-preserve-unknown-fields`).
fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A PersistentVolumeClaim template.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size (a Kubernetes quantity such as `10Gi`).
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: String,
    /// StorageClass of the claim; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

fn default_storage_size() -> String {
    DEFAULT_COORDINATOR_STORAGE.to_string()
}

/// The datanodes: one per Kubernetes node picked by the scheduling rules.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatanodeSpec {
    /// Host directory holding the chunks (a hostPath volume).
    #[serde(default = "default_data_dir")]
    #[schemars(regex(pattern = r"^/.+"))]
    pub data_dir: String,
    /// Capacity kept free on each node (`1GiB`).
    #[serde(default = "default_reserve")]
    #[schemars(regex(pattern = r"^[0-9]+([KMGT]i?B?|[kKMGT]|B)?$"))]
    pub reserve: String,
    /// Node label the datanode's zone is taken from.
    #[serde(default = "default_zone_label")]
    pub zone_label: String,
    /// Compute resources of the datanode container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Which nodes run a datanode.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Extra environment variables of the datanode container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra command-line arguments of the datanode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A partial pod template merged (JSON merge patch) over the generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub pod_overrides: Option<serde_json::Value>,
}

impl Default for DatanodeSpec {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            reserve: default_reserve(),
            zone_label: default_zone_label(),
            resources: None,
            scheduling: Scheduling::default(),
            env: Vec::new(),
            args: Vec::new(),
            pod_overrides: None,
        }
    }
}

fn default_data_dir() -> String {
    DEFAULT_DATA_DIR.to_string()
}
fn default_reserve() -> String {
    DEFAULT_RESERVE.to_string()
}
fn default_zone_label() -> String {
    DEFAULT_ZONE_LABEL.to_string()
}

/// Prometheus metrics.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Create the metrics Services (and a ServiceMonitor when the
    /// prometheus-operator CRD exists in the cluster).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

/// Transport security and authorization (docs/security.md).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecuritySpec {
    /// Mutual TLS 1.3 on every hop and coordinator-signed chunk tokens. The
    /// operator creates the cluster's CA (Secret `<name>-ca`), issues every
    /// component its certificate (`<name>-coordinator-tls`,
    /// `<name>-datanode-tls`, one identity per Kubernetes node, and an admin
    /// client identity in `<name>-admin-tls`), creates the token keys
    /// (`<name>-token-keys`) and renews certificates before they expire.
    /// `false` runs every process with `--insecure` (plain text, nobody
    /// authenticated): only on a network you trust.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// A Secret holding an access file (key `access`) that grants client
    /// principals read, write or admin on path prefixes; mounted into the
    /// coordinators and reloaded when it changes. Without it every client
    /// of the cluster's CA may read and write everything.
    #[serde(default)]
    pub access_secret: Option<String>,
    /// Create a NetworkPolicy admitting to the gRPC ports only this
    /// cluster's pods, the operator and pods labelled
    /// `dfs.io/client: <cluster name>` (metrics ports stay open to
    /// scrapers).
    #[serde(default = "default_true")]
    pub network_policy: bool,
    /// Where each datanode pod gets its certificate. `secret` (the
    /// default, any Kubernetes version): every node's identity in the one
    /// Secret `<name>-datanode-tls`, mounted into every datanode pod, so a
    /// pod taken over holds every node's key. `podCertificate` (Kubernetes
    /// 1.37 or later): the kubelet makes each pod its own key and asks for a
    /// certificate through a PodCertificateRequest, which the operator
    /// signs (signer `dfs.io/datanode`) only for a datanode pod of this
    /// cluster on the node it names; the Secret then holds only `ca.crt`.
    /// Needs `tls: true`.
    #[serde(default)]
    pub datanode_credentials: DatanodeCredentials,
}

impl Default for SecuritySpec {
    fn default() -> Self {
        Self {
            tls: true,
            access_secret: None,
            network_policy: true,
            datanode_credentials: DatanodeCredentials::default(),
        }
    }
}

/// Where a datanode pod's TLS identity comes from
/// (`spec.security.datanodeCredentials`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DatanodeCredentials {
    /// One Secret with every node's certificate and key, mounted into
    /// every datanode pod (works on every Kubernetes version).
    #[default]
    Secret,
    /// A `podCertificate` projected volume: a key made by the kubelet for
    /// this pod alone, certified by the operator (Kubernetes 1.37+).
    PodCertificate,
}

/// Operational switches.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterOperation {
    /// Stop reconciling: the operator changes nothing until this is cleared.
    #[serde(default)]
    pub reconciliation_paused: bool,
    /// Stop every pod (coordinator scaled to 0, datanodes unscheduled); data is kept.
    #[serde(default)]
    pub stopped: bool,
}

/// What deleting the DfsCluster does to stored data.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the coordinator's volumes and the datanodes' host directories.
    #[default]
    Retain,
    /// Delete the coordinator's volumes (PersistentVolumeClaims). Datanode
    /// host directories are left on the nodes.
    Delete,
}

/// Observed state of a dfs cluster.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DfsClusterStatus {
    /// Generation of the spec last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One word: Pending, Running, Degraded, Rolling, Paused, Stopped, Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Available, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Coordinator pods.
    #[serde(default)]
    pub coordinator: Replicas,
    /// Datanode pods.
    #[serde(default)]
    pub datanodes: Replicas,
    /// Used/total capacity for display (`1.2GiB/10GiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Bytes stored on the datanodes, as the coordinator reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_used_bytes: Option<u64>,
    /// Usable bytes of the datanodes, as the coordinator reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_total_bytes: Option<u64>,
    /// Chunks with fewer live replicas than their factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under_replicated_chunks: Option<u64>,
    /// Chunks with no live replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_chunks: Option<u64>,
    /// Each datanode as the coordinator sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<DatanodeState>,
}

/// Ready and desired pods of a component.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replicas {
    /// Ready pods.
    pub ready: i32,
    /// Desired pods.
    pub desired: i32,
    /// `ready/desired`, for display.
    #[serde(default)]
    pub summary: String,
}

/// A datanode as the coordinator sees it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatanodeState {
    /// The datanode's id.
    pub node_id: String,
    /// Kubernetes node it runs on.
    pub host: String,
    /// HEALTHY, FULL, SUSPECT, DEAD, DRAINING, DECOMMISSIONED or MAINTENANCE.
    pub state: String,
}

/// A condition in the Kubernetes convention.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Available, Progressing or Degraded.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// Machine-readable reason in PascalCase.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The CRD as YAML, as `dfs-operator crd` prints it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&DfsCluster::crd()).expect("the CRD serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_are_a_complete_cluster() {
        let c: DfsCluster = serde_yaml::from_str(
            "apiVersion: dfs.io/v1alpha1\nkind: DfsCluster\nmetadata: {name: a}\nspec: {}\n",
        )
        .unwrap();
        assert_eq!(c.spec.replication, 3);
        assert_eq!(c.spec.coordinator.replicas, 1);
        assert_eq!(c.spec.datanode.data_dir, DEFAULT_DATA_DIR);
        assert!(c.spec.metrics.enabled);
        assert_eq!(c.spec.deletion_policy, DeletionPolicy::Retain);
    }

    #[test]
    fn schema_has_defaults_enums_and_minimums() {
        let y = crd_yaml();
        assert!(y.contains("shortNames:\n    - dfs"), "{y}");
        assert!(y.contains("status: {}"), "status subresource");
        assert!(y.contains("- Retain") && y.contains("- Delete"));
        assert!(y.contains("minimum: 1"));
        assert!(y.contains("x-kubernetes-preserve-unknown-fields: true"));
        assert!(y.contains("jsonPath: .status.datanodes.summary"));
    }

    #[test]
    fn schema_accepts_up_to_five_coordinators() {
        let crd = serde_json::to_value(<DfsCluster as kube::CustomResourceExt>::crd()).unwrap();
        let replicas = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["coordinator"]["properties"]["replicas"];
        assert_eq!(replicas["minimum"].as_f64(), Some(1.0), "{replicas}");
        assert_eq!(replicas["maximum"].as_f64(), Some(5.0), "{replicas}");
        assert!(
            replicas["description"]
                .as_str()
                .is_some_and(|d| d.contains("3\nor 5 as one Raft group")
                    || d.contains("3 or 5 as one Raft group")),
            "{replicas}"
        );
    }
}
