//! PodDisruptionBudgets: at most one coordinator and one datanode evicted at
//! a time, so a node drain never takes two replicas of a chunk offline at once.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{COORDINATOR, DATANODE, Names, meta, selector_labels};
use crate::controller::validate::ValidSpec;
use crate::crd::DfsCluster;

pub(super) fn build(cluster: &DfsCluster, v: &ValidSpec) -> Vec<PodDisruptionBudget> {
    let n = Names(&v.name);
    [(n.coordinator(), COORDINATOR), (n.datanode(), DATANODE)]
        .into_iter()
        .map(|(name, component)| PodDisruptionBudget {
            metadata: meta(v, cluster, name, Some(component)),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&v.name, Some(component))),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        })
        .collect()
}
