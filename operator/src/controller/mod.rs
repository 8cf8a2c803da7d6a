//! The reconcile pipeline and the Controller that drives it.
//!
//! [`reconcile`] runs: finalizer → pause check → [`validate`] (pure) → read
//! (Nodes, Pods, coordinator facts) → [`build`] (pure) → [`apply`]
//! (server-side apply + prune) → roll step ([`roll`]) and Node labels
//! ([`nodes`]) → status ([`status`], written only when it changed).
//!
//! The main stream is filtered on generation and deletion, so status writes
//! (which do not change the generation) never trigger another reconcile of the
//! same spec. Owned objects are watched, so a hand-edited StatefulSet is put
//! back. Invalid specs emit one Warning event and wait for a change; errors
//! requeue with exponential backoff.
//!
//! Beside it, on the leader too, [`signer`] answers the PodCertificateRequests
//! of datanode pods (`spec.security.datanodeCredentials: podCertificate`).

pub mod apply;
pub mod build;
pub mod membership;
pub mod nodes;
pub mod pki;
pub mod roll;
pub mod signer;
pub mod status;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::coordinator::{ClusterFacts, Coordinator, GrpcCoordinator};
use crate::crd::{DeletionPolicy, DfsCluster, DfsClusterStatus, FINALIZER};
use crate::leader::LeaseConfig;
use crate::metrics::Metrics;
use build::{COORDINATOR, DATANODE, MANAGER, NODE_LABEL, Observed, TEMPLATE_HASH};
use roll::{PodView, Step};

/// Requeue while a roll or a start-up is under way.
pub const REQUEUE_BUSY: Duration = Duration::from_secs(10);
/// Requeue after a membership change: the next one (a promotion after an
/// add) usually can follow at once.
pub const REQUEUE_MEMBERSHIP: Duration = Duration::from_secs(1);
/// Requeue of a settled cluster, to refresh the coordinator's facts.
pub const REQUEUE_IDLE: Duration = Duration::from_secs(60);
/// First backoff after an error; doubles per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often the operator looks again for the ServiceMonitor CRD.
pub const SERVICE_MONITOR_RECHECK: Duration = Duration::from_secs(300);
/// How long the operator uses one identity of its own for a cluster.
pub const IDENTITY_REISSUE: Duration = Duration::from_secs(86_400);
/// How long the maintenance of a restarting datanode lasts at most.
pub const MAINTENANCE_DURATION: Duration = Duration::from_secs(600);

/// Why a reconcile failed. Each is transient and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Server-side apply of an owned object failed.
    #[error("failed to apply {kind} {name}: {source}")]
    Apply {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// Listing objects failed.
    #[error("failed to list {kind}: {source}")]
    List {
        /// Kind listed.
        kind: String,
        /// Cause.
        source: kube::Error,
    },
    /// Deleting an object failed.
    #[error("failed to delete {kind} {name}: {source}")]
    Delete {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// Patching the DfsCluster's finalizers failed.
    #[error("failed to update the finalizers of {name}: {source}")]
    Finalizer {
        /// DfsCluster name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// Labelling a Node failed.
    #[error("failed to label node {node}: {source}")]
    LabelNode {
        /// Node name.
        node: String,
        /// Cause.
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("failed to write the status of {name}: {source}")]
    WriteStatus {
        /// DfsCluster name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// Publishing an event failed.
    #[error("failed to publish an event: {0}")]
    PublishEvent(#[source] kube::Error),
    /// The coordinator refused or missed a maintenance request.
    #[error("failed to set maintenance of datanode {node_id}: {source}")]
    SetMaintenance {
        /// Datanode id.
        node_id: String,
        /// Cause.
        source: Box<crate::coordinator::CoordinatorError>,
    },
    /// Reading or writing one of the cluster's certificate or key Secrets
    /// failed.
    #[error("failed to keep Secret {name}: {source}")]
    Secret {
        /// Secret name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// A certificate could not be issued (or the CA Secret does not hold
    /// a CA).
    #[error("certificates of {cluster}: {message}")]
    Pki {
        /// DfsCluster name.
        cluster: String,
        /// What failed.
        message: String,
    },
    /// The coordinator group refused or missed a membership change.
    #[error("failed to change the coordinator group ({change}): {source}")]
    Membership {
        /// The change, e.g. "add 2".
        change: String,
        /// Cause.
        source: Box<crate::coordinator::CoordinatorError>,
    },
}

impl Error {
    /// Bounded label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "apply",
            Error::List { .. } => "list",
            Error::Delete { .. } => "delete",
            Error::Finalizer { .. } => "finalizer",
            Error::LabelNode { .. } => "label_node",
            Error::WriteStatus { .. } => "write_status",
            Error::PublishEvent(_) => "publish_event",
            Error::SetMaintenance { .. } => "set_maintenance",
            Error::Membership { .. } => "membership",
            Error::Secret { .. } => "secret",
            Error::Pki { .. } => "pki",
        }
    }
}

/// The operator's identity for one cluster: the CA pem it was issued
/// under, the credentials, when.
pub type Identity = (String, Arc<dfs_common::tls::Tls>, std::time::Instant);

/// Shared state of every reconcile.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The clusters' coordinators.
    pub coordinator: Arc<dyn Coordinator>,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// The ServiceMonitor CRD is installed (re-checked every
    /// [`SERVICE_MONITOR_RECHECK`] by [`run`]).
    pub service_monitor_crd: AtomicBool,
    /// Consecutive failures per DfsCluster, for backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// The operator's identity per TLS cluster: the CA it was issued
    /// under, and when.
    pub identities: Mutex<HashMap<String, Identity>>,
}

impl Context {
    /// A context with fresh metrics and no failure history.
    pub fn new(
        client: Client,
        coordinator: Arc<dyn Coordinator>,
        service_monitor_crd: bool,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Self {
            client,
            coordinator,
            metrics: Metrics::default(),
            recorder,
            service_monitor_crd: AtomicBool::new(service_monitor_crd),
            failures: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// The operator's identity for the cluster `obj` under `ca`: kept while
    /// the CA stays and for a day (it is issued for a week), else issued
    /// again.
    fn identity(
        &self,
        obj: &DfsCluster,
        ca: &dfs_common::pki::Ca,
    ) -> Result<Arc<dfs_common::tls::Tls>, Error> {
        let key = Self::key(obj);
        let mut ids = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pem, tls, at)) = ids.get(&key)
            && pem == ca.pem()
            && at.elapsed() < IDENTITY_REISSUE
        {
            return Ok(tls.clone());
        }
        let tls = pki::operator_identity(ca).map_err(|message| Error::Pki {
            cluster: obj.name_any(),
            message,
        })?;
        ids.insert(
            key,
            (ca.pem().to_string(), tls.clone(), std::time::Instant::now()),
        );
        Ok(tls)
    }

    fn key(obj: &DfsCluster) -> String {
        format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Reconciles one DfsCluster (the Controller's callback).
pub async fn reconcile(obj: Arc<DfsCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.duration.start_timer();
    ctx.metrics.reconciles.inc();
    let span = tracing::info_span!("reconcile", cluster = %Context::key(&obj));
    let result = reconcile_inner(&obj, &ctx).instrument(span).await;
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Context::key(&obj));
    }
    result
}

/// Requeue with exponential backoff after a failure.
pub fn error_policy(obj: Arc<DfsCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .with_label_values(&[err.metric_label()])
        .inc();
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(Context::key(&obj)).or_insert(0);
    *n += 1;
    let delay = backoff(*n);
    tracing::warn!(cluster = %Context::key(&obj), retry_in = ?delay, "reconcile failed: {err:#}");
    Action::requeue(delay)
}

/// Backoff after `n` consecutive failures.
pub fn backoff(n: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

async fn write_status(
    api: &Api<DfsCluster>,
    name: &str,
    status: &DfsClusterStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": DfsCluster::api_version(&()),
        "kind": DfsCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        name: name.into(),
        source,
    })?;
    Ok(())
}

async fn set_finalizers(
    api: &Api<DfsCluster>,
    obj: &DfsCluster,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": obj.resource_version(),
        }
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| Error::Finalizer {
        name: obj.name_any(),
        source,
    })?;
    Ok(())
}

fn pod_view(p: &Pod) -> PodView {
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    PodView {
        name: p.name_any(),
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        hash: p.annotations().get(TEMPLATE_HASH).cloned(),
        ready,
        terminating: p.metadata.deletion_timestamp.is_some(),
    }
}

/// The cluster's pods by component.
async fn list_pods(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<(Vec<PodView>, Vec<PodView>), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = api
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={name},app.kubernetes.io/name=dfs"
        )))
        .await
        .map_err(|source| Error::List {
            kind: "Pod".into(),
            source,
        })?;
    let of = |component: &str| {
        pods.items
            .iter()
            .filter(|p| {
                p.labels()
                    .get("app.kubernetes.io/component")
                    .map(String::as_str)
                    == Some(component)
            })
            .map(pod_view)
            .collect::<Vec<_>>()
    };
    Ok((of(COORDINATOR), of(DATANODE)))
}

/// Whether the group ConfigMap already says the coordinator group formed.
async fn group_formed(client: &Client, ns: &str, name: &str) -> Result<bool, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = api
        .get_opt(&build::Names(name).coordinator_group())
        .await
        .map_err(|source| Error::List {
            kind: "ConfigMap".into(),
            source,
        })?;
    Ok(cm
        .and_then(|c| c.data)
        .and_then(|d| d.get(build::KEY_INITIAL_CLUSTER_STATE).cloned())
        .is_some_and(|v| v == "existing"))
}

/// Makes the one membership call [`membership::plan`] chose.
async fn change_membership(
    ctx: &Context,
    url: &str,
    v: &validate::ValidSpec,
    change: &membership::Change,
) -> Result<(), Error> {
    let fail = |change: String| {
        move |source| Error::Membership {
            change,
            source: Box::new(source),
        }
    };
    match change {
        membership::Change::Add { id } => {
            let address = build::member_url(v, id - 1);
            tracing::info!(id, %address, "adding a coordinator to the group as a learner");
            ctx.coordinator
                .add_coordinator(url, *id, &address)
                .await
                .map_err(fail(format!("add {id}")))
        }
        membership::Change::SetVoters(ids) => {
            tracing::info!(voters = ?ids, "setting the coordinator group's voters");
            ctx.coordinator
                .set_coordinator_voters(url, ids)
                .await
                .map_err(fail(format!("voters {ids:?}")))
        }
        membership::Change::Wait(why) => {
            tracing::debug!("coordinator membership waiting: {why}");
            Ok(())
        }
        membership::Change::None => Ok(()),
    }
}

async fn label_nodes(
    client: &Client,
    changes: &BTreeMap<String, Option<String>>,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    for (node, value) in changes {
        tracing::info!(%node, label = ?value, "labelling node");
        let patch = json!({"metadata": {"labels": {NODE_LABEL: value}}});
        api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::LabelNode {
                node: node.clone(),
                source,
            })?;
    }
    Ok(())
}

async fn delete_pod(ctx: &Context, ns: &str, pod: &str) -> Result<(), Error> {
    tracing::info!(%pod, "deleting outdated pod");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    apply::delete_ignoring_absent(api.delete(pod, &DeleteParams::default()).await, "Pod", pod)?;
    ctx.metrics.pods_rolled.inc();
    Ok(())
}

/// Deletion: clean up per `deletionPolicy`, then release the finalizer.
async fn finalize(
    obj: &DfsCluster,
    ctx: &Context,
    api: &Api<DfsCluster>,
    ns: &str,
) -> Result<Action, Error> {
    let name = obj.name_any();
    if obj.spec.deletion_policy == DeletionPolicy::Delete {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
        let selector =
            format!("app.kubernetes.io/instance={name},app.kubernetes.io/component={COORDINATOR}");
        tracing::info!(cluster = %name, "deletionPolicy Delete: deleting the coordinator's volumes");
        pvcs.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&selector),
        )
        .await
        .map_err(|source| Error::Delete {
            kind: "PersistentVolumeClaim".into(),
            name: selector.clone(),
            source,
        })?;
    }
    // Nodes that ran this cluster's datanodes lose the label.
    let (_, datanodes) = list_pods(&ctx.client, ns, &name).await?;
    let changes: BTreeMap<String, Option<String>> = datanodes
        .iter()
        .filter_map(|p| p.node.clone())
        .map(|n| (n, None))
        .collect();
    label_nodes(&ctx.client, &changes).await?;
    let rest: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, obj, rest).await?;
    Ok(Action::await_change())
}

async fn reconcile_inner(obj: &DfsCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<DfsCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = obj.metadata.generation;
    let previous = obj.status.as_ref();

    if obj.metadata.deletion_timestamp.is_some() {
        if obj.finalizers().iter().any(|f| f == FINALIZER) {
            return finalize(obj, ctx, &api, &ns).await;
        }
        return Ok(Action::await_change());
    }
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        let mut all = obj.finalizers().to_vec();
        all.push(FINALIZER.to_string());
        set_finalizers(&api, obj, all).await?;
    }
    if obj.spec.cluster_operation.reconciliation_paused {
        let s = status::paused(generation, previous);
        if Some(&s) != previous {
            write_status(&api, &name, &s).await?;
        }
        return Ok(Action::await_change());
    }

    let valid = match validate::validate(obj) {
        Ok(v) => v,
        Err(invalid) => {
            if !status::reported_invalid(previous, generation) {
                tracing::warn!(cluster = %name, "{invalid}");
                ctx.recorder
                    .publish(
                        &Event {
                            type_: EventType::Warning,
                            reason: "InvalidSpec".into(),
                            note: Some(invalid.to_string()),
                            action: "Validate".into(),
                            secondary: None,
                        },
                        &obj.object_ref(&()),
                    )
                    .await
                    .map_err(Error::PublishEvent)?;
                write_status(
                    &api,
                    &name,
                    &status::invalid(generation, &invalid.to_string(), previous, &now()),
                )
                .await?;
            }
            return Ok(Action::await_change());
        }
    };

    // Read.
    let node_list = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            kind: "Node".into(),
            source,
        })?;
    let zone_label = &obj.spec.datanode.zone_label;
    let zones: BTreeMap<String, String> = node_list
        .items
        .iter()
        .filter_map(|n| Some((n.name_any(), n.labels().get(zone_label)?.clone())))
        .collect();
    let current_labels: BTreeMap<String, Option<String>> = node_list
        .items
        .iter()
        .map(|n| (n.name_any(), n.labels().get(NODE_LABEL).cloned()))
        .collect();
    let (coordinator_pods, datanode_pods) = list_pods(&ctx.client, &ns, &name).await?;
    let url = build::coordinator_url(&name, &ns, valid.tls);
    // A TLS cluster's CA and token keys exist before anything that uses
    // them; the operator calls its coordinators with an identity of its own
    // from that CA.
    let ca = if valid.tls {
        let ca = pki::ensure_ca(&ctx.client, obj, &valid).await?;
        ctx.coordinator
            .use_identity(&url, Some(ctx.identity(obj, &ca)?));
        Some(ca)
    } else {
        ctx.coordinator.use_identity(&url, None);
        None
    };
    let facts: Option<ClusterFacts> = if obj.spec.cluster_operation.stopped {
        None
    } else {
        match ctx.coordinator.cluster_status(&url).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::info!(cluster = %name, "coordinator not answering: {e}");
                None
            }
        }
    };

    if let Some(ca) = &ca {
        let nodes: Vec<String> = node_list.items.iter().map(|n| n.name_any()).collect();
        let known = pki::known_ids(facts.as_ref(), previous);
        pki::ensure_identities(&ctx.client, obj, &valid, ca, &nodes, &known).await?;
    }

    // The group's membership: which members run, whether it has formed
    // (sticky: once `existing`, never `new` again).
    let running_members: std::collections::BTreeSet<u64> = coordinator_pods
        .iter()
        .filter(|p| !p.terminating)
        .filter_map(|p| p.name.rsplit_once('-')?.1.parse::<u64>().ok())
        .map(|ordinal| ordinal + 1)
        .collect();
    let group_formed = group_formed(&ctx.client, &ns, &name).await?
        || facts
            .as_ref()
            .is_some_and(|f| f.coordinators.iter().any(|m| m.role == "leader"));
    let replicas = obj.spec.coordinator.replicas.max(1) as u64;

    // Build and apply.
    let service_monitor_crd = ctx.service_monitor_crd.load(Ordering::Relaxed);
    let observed = Observed {
        zones,
        service_monitor_crd,
        datanode_pods: datanode_pods.iter().filter(|p| !p.terminating).count() as i32,
        coordinator_pods: membership::pods(replicas, facts.as_ref(), &running_members) as i32,
        group_formed,
    };
    let desired = build::desired(obj, &valid, &observed);
    let applied = apply::apply_all(&ctx.client, &ns, &name, &desired, service_monitor_crd).await?;

    // Act: one membership change, or one roll step; maintenance releases,
    // node labels.
    let change = if obj.spec.cluster_operation.stopped {
        membership::Change::None
    } else {
        membership::plan(replicas, &running_members, facts.as_ref())
    };
    change_membership(ctx, &url, &valid, &change).await?;
    let coordinator_step = if change.acts() {
        Step::Wait("the coordinator group's membership changes first".into())
    } else {
        roll::plan_coordinator(&coordinator_pods, &desired.coordinator_hash, facts.as_ref())
    };
    let datanode_plan = if coordinator_step.rolling() {
        roll::Plan {
            exit_maintenance: Vec::new(),
            step: Step::Wait("the coordinator rolls first".into()),
        }
    } else {
        roll::plan_datanodes(&datanode_pods, &desired.datanode_hash, facts.as_ref())
    };
    for node_id in &datanode_plan.exit_maintenance {
        tracing::info!(%node_id, "ending maintenance of restarted datanode");
        ctx.coordinator
            .set_maintenance(&url, node_id, false, MAINTENANCE_DURATION)
            .await
            .map_err(|source| Error::SetMaintenance {
                node_id: node_id.clone(),
                source: Box::new(source),
            })?;
    }
    match (&coordinator_step, &datanode_plan.step) {
        (Step::DeletePod { pod }, _) | (_, Step::DeletePod { pod }) => {
            delete_pod(ctx, &ns, pod).await?
        }
        (_, Step::EnterMaintenance { node_id, pod }) => {
            tracing::info!(%node_id, %pod, "putting datanode into maintenance before its restart");
            ctx.coordinator
                .set_maintenance(&url, node_id, true, MAINTENANCE_DURATION)
                .await
                .map_err(|source| Error::SetMaintenance {
                    node_id: node_id.clone(),
                    source: Box::new(source),
                })?;
        }
        (_, Step::Wait(why)) | (Step::Wait(why), _) => {
            tracing::debug!(cluster = %name, "roll waiting: {why}")
        }
        _ => {}
    }
    let changes = nodes::label_changes(&current_labels, &datanode_pods, facts.as_ref());
    label_nodes(&ctx.client, &changes).await?;

    // Status.
    let observation = status::Observation {
        generation,
        applied: &applied,
        facts: facts.as_ref(),
        coordinator_step: &coordinator_step,
        datanode_step: &datanode_plan.step,
        stopped: obj.spec.cluster_operation.stopped,
    };
    let new_status = status::compute(&observation, previous, &now());
    if Some(&new_status) != previous {
        write_status(&api, &name, &new_status).await?;
    }
    let busy = change.pending()
        || coordinator_step.rolling()
        || datanode_plan.step.rolling()
        || !datanode_plan.exit_maintenance.is_empty()
        || applied.coordinator_ready < applied.coordinator_desired
        || applied.datanodes_ready < applied.datanodes_desired;
    Ok(Action::requeue(if change.acts() {
        REQUEUE_MEMBERSHIP
    } else if busy {
        REQUEUE_BUSY
    } else {
        REQUEUE_IDLE
    }))
}

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace.
    pub namespace: Option<String>,
    /// Timeout of coordinator calls.
    pub coordinator_timeout: Duration,
    /// Call this coordinator URL for every cluster instead of its client
    /// Service (an operator running outside the cluster network, and the
    /// API-emulator test).
    pub coordinator_url: Option<String>,
    /// Leader election, when enabled.
    pub leader: Option<LeaseConfig>,
}

/// Why [`run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Serving /metrics and /healthz failed.
    #[error("failed to serve metrics: {0}")]
    Serve(#[source] std::io::Error),
    /// Another replica took the Lease.
    #[error("lost leadership of lease {0}")]
    LostLeadership(String),
}

/// Is the prometheus-operator ServiceMonitor CRD installed?
pub async fn service_monitor_crd_exists(client: &Client) -> bool {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.get_opt("servicemonitors.monitoring.coreos.com").await {
        Ok(found) => found.is_some(),
        Err(e) => {
            tracing::info!("cannot check for the ServiceMonitor CRD, assuming absent: {e}");
            false
        }
    }
}

/// Hash of what should trigger a reconcile of a DfsCluster: its generation
/// and whether it is being deleted (status writes change neither).
fn spec_or_deletion(obj: &DfsCluster) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        obj.metadata.generation,
        obj.metadata.deletion_timestamp.is_some(),
    )
        .hash(&mut h);
    Some(h.finish())
}

/// What a node change means to a cluster: its existence (the predicate
/// keeps one value per node, so a new node always passes) and its labels
/// but the one the operator sets itself ([`NODE_LABEL`]).
fn node_placement(node: &Node) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    for (k, v) in node.labels() {
        if k != NODE_LABEL {
            (k, v).hash(&mut h);
        }
    }
    Some(h.finish())
}

/// Runs the operator until `shutdown` resolves (or leadership is lost).
pub async fn run(
    client: Client,
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let coordinator = Arc::new(
        GrpcCoordinator::new(config.coordinator_timeout).redirect(config.coordinator_url.clone()),
    );
    let ctx = Arc::new(Context::new(client.clone(), coordinator, false));
    let readiness = dfs_common::http::Readiness::default();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(metrics_addr = %addr, "serving /metrics and /healthz");
    }
    let server = tokio::spawn(dfs_common::http::serve(
        listener,
        ctx.metrics.registry.clone(),
        readiness.clone(),
        stopped(),
    ));

    if let Some(lease) = &config.leader {
        tokio::select! {
            () = crate::leader::acquire(&client, lease) => {}
            () = stopped() => return Ok(()),
        }
    }
    let sm = service_monitor_crd_exists(&client).await;
    ctx.service_monitor_crd.store(sm, Ordering::Relaxed);
    {
        let (ctx, client, stop) = (ctx.clone(), client.clone(), stopped());
        tokio::spawn(async move {
            let recheck = async {
                loop {
                    tokio::time::sleep(SERVICE_MONITOR_RECHECK).await;
                    let found = service_monitor_crd_exists(&client).await;
                    if ctx.service_monitor_crd.swap(found, Ordering::Relaxed) != found {
                        tracing::info!(found, "the ServiceMonitor CRD changed");
                    }
                }
            };
            tokio::select! {
                () = recheck => {}
                () = stop => {}
            }
        });
    }

    let (clusters, children_cfg) = match &config.namespace {
        Some(ns) => (
            Api::<DfsCluster>::namespaced(client.clone(), ns),
            Some(ns.clone()),
        ),
        None => (Api::<DfsCluster>::all(client.clone()), None),
    };
    fn owned<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned_cfg =
        || watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let (reader, writer) = reflector::store();
    let main_stream = watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_deletion, Default::default());
    // Nodes joining, leaving or changing zone: every cluster reconciles
    // then, not at its next periodic pass, so a new node's datanode
    // identity (and its topology entry) exists by the time its datanode
    // pod starts. Our own `dfs.io/datanode` label is left out, or each
    // labelling would trigger another pass.
    let clusters_of_node = reader.clone();
    let node_changes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .predicate_filter(node_placement, Default::default());
    let signer_ctx = Arc::new(signer::Context::new(client.clone(), ctx.metrics.clone()));
    let controller = Controller::for_stream(main_stream, reader)
        .watches_stream(node_changes, move |_node: Node| {
            clusters_of_node
                .state()
                .iter()
                .map(|c| kube::runtime::reflector::ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
        .owns(owned::<StatefulSet>(&client, &children_cfg), owned_cfg())
        .owns(owned::<DaemonSet>(&client, &children_cfg), owned_cfg())
        .owns(owned::<ConfigMap>(&client, &children_cfg), owned_cfg())
        .owns(owned::<Service>(&client, &children_cfg), owned_cfg())
        .owns(
            owned::<PodDisruptionBudget>(&client, &children_cfg),
            owned_cfg(),
        )
        .graceful_shutdown_on(stopped())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(e) => tracing::debug!("reconcile error: {e}"),
            }
        });
    // The signer of the datanodes' pod certificates runs beside the
    // controller, on the leader only (two signers would race to answer).
    let signer = signer::run(signer_ctx, config.namespace.clone(), stopped());
    let controller = async move {
        futures::future::join(controller, signer).await;
    };
    readiness.set(true);
    tracing::info!(service_monitor_crd = sm, "controller running");
    let result = match &config.leader {
        Some(lease) => tokio::select! {
            () = controller => Ok(()),
            () = crate::leader::hold(&client, lease) => Err(RunError::LostLeadership(lease.name.clone())),
        },
        None => {
            controller.await;
            Ok(())
        }
    };
    readiness.set(false);
    if result.is_ok()
        && let Ok(Err(e)) = server.await
    {
        return Err(RunError::Serve(e));
    }
    result
}

#[cfg(test)]
mod fixtures;
