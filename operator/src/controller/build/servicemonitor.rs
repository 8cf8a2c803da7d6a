//! The prometheus-operator ServiceMonitor scraping both metrics Services.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::{METRICS_LABEL, meta, selector_labels};
use crate::controller::validate::ValidSpec;
use crate::crd::DfsCluster;

/// The ServiceMonitor resource (monitoring.coreos.com/v1).
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub(super) fn build(cluster: &DfsCluster, v: &ValidSpec) -> DynamicObject {
    let mut match_labels = selector_labels(&v.name, None);
    match_labels.insert(METRICS_LABEL.into(), "true".into());
    let mut obj = DynamicObject::new(&v.name, &service_monitor_resource());
    obj.metadata = meta(v, cluster, v.name.clone(), None);
    obj.data = serde_json::json!({
        "spec": {
            "selector": {"matchLabels": match_labels},
            "endpoints": [{"port": "metrics", "interval": "30s"}],
        }
    });
    obj
}
