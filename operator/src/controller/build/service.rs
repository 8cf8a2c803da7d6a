//! Coordinator headless + client Services and the metrics Services.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    COORDINATOR, COORDINATOR_METRICS_PORT, COORDINATOR_PORT, DATANODE, DATANODE_METRICS_PORT,
    METRICS_LABEL, Names, meta, selector_labels,
};
use crate::controller::validate::ValidSpec;
use crate::crd::DfsCluster;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

fn service(
    cluster: &DfsCluster,
    v: &ValidSpec,
    name: String,
    component: &str,
    headless: bool,
    ports: Vec<ServicePort>,
    metrics: bool,
) -> Service {
    let mut metadata = meta(v, cluster, name, Some(component));
    if metrics {
        let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(METRICS_LABEL.into(), "true".into());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".to_string()),
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(selector_labels(&v.name, Some(component))),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub(super) fn build(cluster: &DfsCluster, v: &ValidSpec) -> Vec<Service> {
    let n = Names(&v.name);
    let grpc = || vec![port("grpc", COORDINATOR_PORT)];
    let mut out = vec![
        service(
            cluster,
            v,
            n.coordinator_headless(),
            COORDINATOR,
            true,
            grpc(),
            false,
        ),
        service(
            cluster,
            v,
            n.coordinator(),
            COORDINATOR,
            false,
            grpc(),
            false,
        ),
    ];
    if cluster.spec.metrics.enabled {
        out.push(service(
            cluster,
            v,
            n.coordinator_metrics(),
            COORDINATOR,
            false,
            vec![port("metrics", COORDINATOR_METRICS_PORT)],
            true,
        ));
        out.push(service(
            cluster,
            v,
            n.datanode_metrics(),
            DATANODE,
            true,
            vec![port("metrics", DATANODE_METRICS_PORT)],
            true,
        ));
    }
    out
}
