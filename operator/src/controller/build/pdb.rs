//! PodDisruptionBudgets: at most one coordinator and one datanode evicted at
//! a time, so a node drain never takes two replicas of a chunk offline at once.
//!
//! The coordinator's uses `maxUnavailable: 1` (a StatefulSet has a scale
//! subresource). Kubernetes supports only an integer `minAvailable` for
//! DaemonSet pods, so the datanodes' is `minAvailable: <datanode pods> - 1`,
//! from the pods observed in this reconcile.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{COORDINATOR, DATANODE, Names, meta, selector_labels};
use crate::controller::validate::ValidSpec;
use crate::crd::DfsCluster;

pub(super) fn build(
    cluster: &DfsCluster,
    v: &ValidSpec,
    datanode_pods: i32,
) -> Vec<PodDisruptionBudget> {
    let n = Names(&v.name);
    let coordinator = (Some(IntOrString::Int(1)), None);
    let datanode = (None, Some(IntOrString::Int((datanode_pods - 1).max(0))));
    [
        (n.coordinator(), COORDINATOR, coordinator),
        (n.datanode(), DATANODE, datanode),
    ]
    .into_iter()
    .map(
        |(name, component, (max_unavailable, min_available))| PodDisruptionBudget {
            metadata: meta(v, cluster, name, Some(component)),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable,
                min_available,
                selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&v.name, Some(component))),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        },
    )
    .collect()
}
