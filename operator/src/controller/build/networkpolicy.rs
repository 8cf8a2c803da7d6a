//! The NetworkPolicy of a cluster's pods: their gRPC ports admit only the
//! cluster's own pods (coordinators and datanodes call each other), the
//! operator (from any namespace, by its pod labels) and client pods that
//! carry `dfs.io/client: <cluster name>` in the cluster's namespace. The
//! metrics ports stay open to every scraper: they serve no data and take no
//! command.
//!
//! A NetworkPolicy only takes effect under a network plugin that enforces
//! policies; mutual TLS authenticates every caller either way.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CLIENT_LABEL, COORDINATOR_METRICS_PORT, COORDINATOR_PORT, DATANODE_METRICS_PORT, DATANODE_PORT,
    Names, meta, selector_labels,
};
use crate::controller::validate::ValidSpec;
use crate::crd::DfsCluster;

/// The operator's pod label the policy admits (the chart's selector label).
pub const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "dfs-operator");

fn ports(list: &[i32]) -> Option<Vec<NetworkPolicyPort>> {
    Some(
        list.iter()
            .map(|p| NetworkPolicyPort {
                port: Some(IntOrString::Int(*p)),
                protocol: Some("TCP".into()),
                ..NetworkPolicyPort::default()
            })
            .collect(),
    )
}

fn pods(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

pub(super) fn build(cluster: &DfsCluster, v: &ValidSpec) -> NetworkPolicy {
    let own = NetworkPolicyPeer {
        pod_selector: Some(pods(selector_labels(&v.name, None))),
        ..NetworkPolicyPeer::default()
    };
    let clients = NetworkPolicyPeer {
        pod_selector: Some(pods(BTreeMap::from([(
            CLIENT_LABEL.to_string(),
            v.name.clone(),
        )]))),
        ..NetworkPolicyPeer::default()
    };
    let operator = NetworkPolicyPeer {
        // Any namespace: the operator usually runs in its own.
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(pods(BTreeMap::from([(
            OPERATOR_POD_LABEL.0.to_string(),
            OPERATOR_POD_LABEL.1.to_string(),
        )]))),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: meta(v, cluster, Names(&v.name).network_policy(), None),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(selector_labels(&v.name, None))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![own, clients, operator]),
                    ports: ports(&[COORDINATOR_PORT, DATANODE_PORT]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: ports(&[COORDINATOR_METRICS_PORT, DATANODE_METRICS_PORT]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}
