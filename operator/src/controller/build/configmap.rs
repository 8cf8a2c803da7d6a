//! The configuration ConfigMap (read by both services through env) and the
//! topology ConfigMap (node name → zone, read by the datanode at start).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{Names, coordinator_url, meta};
use crate::controller::validate::ValidSpec;
use crate::crd::DfsCluster;

/// ConfigMap keys, mapped to the services' `DFS_*` variables.
pub const KEY_REPLICATION: &str = "replication";
/// Chunk size in bytes.
pub const KEY_CHUNK_SIZE: &str = "chunkSize";
/// Coordinator URL the datanodes register with.
pub const KEY_COORDINATOR: &str = "coordinator";
/// Datanode reserve in bytes.
pub const KEY_RESERVE: &str = "reserve";
/// Group ConfigMap key: `new` until the coordinator group has formed, then
/// `existing` for good (`DFS_INITIAL_CLUSTER_STATE`).
pub const KEY_INITIAL_CLUSTER_STATE: &str = "initialClusterState";

/// The coordinator group's ConfigMap. Kept apart from the configuration
/// ConfigMap so that its one change (the group formed) reaches pods at
/// their next start without rolling them.
pub(super) fn coordinator_group(cluster: &DfsCluster, v: &ValidSpec, formed: bool) -> ConfigMap {
    ConfigMap {
        metadata: meta(
            v,
            cluster,
            Names(&v.name).coordinator_group(),
            Some(super::COORDINATOR),
        ),
        data: Some(BTreeMap::from([(
            KEY_INITIAL_CLUSTER_STATE.into(),
            if formed { "existing" } else { "new" }.into(),
        )])),
        ..ConfigMap::default()
    }
}

pub(super) fn config(cluster: &DfsCluster, v: &ValidSpec) -> ConfigMap {
    ConfigMap {
        metadata: meta(v, cluster, Names(&v.name).config(), None),
        data: Some(BTreeMap::from([
            (KEY_REPLICATION.into(), cluster.spec.replication.to_string()),
            (KEY_CHUNK_SIZE.into(), v.chunk_size.to_string()),
            (
                KEY_COORDINATOR.into(),
                coordinator_url(&v.name, &v.namespace, v.tls),
            ),
            (KEY_RESERVE.into(), v.reserve.to_string()),
        ])),
        ..ConfigMap::default()
    }
}

pub(super) fn topology(
    cluster: &DfsCluster,
    v: &ValidSpec,
    zones: &BTreeMap<String, String>,
) -> ConfigMap {
    ConfigMap {
        metadata: meta(v, cluster, Names(&v.name).topology(), Some(super::DATANODE)),
        data: Some(zones.clone()),
        ..ConfigMap::default()
    }
}
