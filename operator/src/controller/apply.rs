//! Server-side apply of the desired objects under one field manager (so a
//! repeated reconcile changes nothing and fields other managers own survive),
//! and pruning of the optional objects the spec no longer wants.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use super::build::{Desired, MANAGER, managed_selector, service_monitor_resource};
use super::status::Applied;

fn params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

async fn apply_one<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.name_any();
    api.patch(&name, &params(), &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            kind: K::kind(&()).to_string(),
            name,
            source,
        })
}

/// Applies every desired object, prunes unwanted ones, and returns the
/// workloads' readiness from the apply responses.
pub async fn apply_all(
    client: &Client,
    ns: &str,
    cluster_name: &str,
    desired: &Desired,
    service_monitor_crd: bool,
) -> Result<Applied, Error> {
    apply_one(client, ns, &desired.config).await?;
    apply_one(client, ns, &desired.topology).await?;
    apply_one(client, ns, &desired.coordinator_group).await?;
    for s in &desired.services {
        apply_one(client, ns, s).await?;
    }
    for p in &desired.pdbs {
        apply_one(client, ns, p).await?;
    }
    let sts: StatefulSet = apply_one(client, ns, &desired.statefulset).await?;
    let ds: DaemonSet = apply_one(client, ns, &desired.daemonset).await?;
    if let Some(sm) = &desired.service_monitor {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &service_monitor_resource());
        let name = sm.name_any();
        api.patch(&name, &params(), &Patch::Apply(sm))
            .await
            .map_err(|source| Error::Apply {
                kind: "ServiceMonitor".into(),
                name,
                source,
            })?;
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    match &desired.network_policy {
        Some(p) => {
            apply_one(client, ns, p).await?;
        }
        None => {
            let name = super::build::Names(cluster_name).network_policy();
            delete_ignoring_absent(
                policies.delete(&name, &DeleteParams::default()).await,
                "NetworkPolicy",
                &name,
            )?;
        }
    }
    prune(client, ns, cluster_name, desired, service_monitor_crd).await?;
    let sts_status = sts.status.unwrap_or_default();
    let ds_status = ds.status.unwrap_or_default();
    Ok(Applied {
        coordinator_ready: sts_status.ready_replicas.unwrap_or(0),
        coordinator_desired: desired.statefulset.spec.replicas.unwrap_or(1),
        datanodes_ready: ds_status.number_ready,
        datanodes_desired: ds_status.desired_number_scheduled,
    })
}

/// Deletes the Services (and ServiceMonitors) this operator made for the
/// cluster that the spec no longer wants. The other kinds always exist.
async fn prune(
    client: &Client,
    ns: &str,
    cluster_name: &str,
    desired: &Desired,
    service_monitor_crd: bool,
) -> Result<(), Error> {
    let lp = ListParams::default().labels(&managed_selector(cluster_name));
    let wanted: BTreeSet<String> = desired.services.iter().map(|s| s.name_any()).collect();
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let have = api.list(&lp).await.map_err(|source| Error::List {
        kind: "Service".into(),
        source,
    })?;
    for s in have.items {
        let name = s.name_any();
        if !wanted.contains(&name) {
            tracing::info!(service = %name, "deleting unwanted Service");
            delete_ignoring_absent(
                api.delete(&name, &DeleteParams::default()).await,
                "Service",
                &name,
            )?;
        }
    }
    if service_monitor_crd {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &service_monitor_resource());
        let wanted: BTreeSet<String> = desired
            .service_monitor
            .iter()
            .map(|s| s.name_any())
            .collect();
        let have = api.list(&lp).await.map_err(|source| Error::List {
            kind: "ServiceMonitor".into(),
            source,
        })?;
        for s in have.items {
            let name = s.name_any();
            if !wanted.contains(&name) {
                tracing::info!(service_monitor = %name, "deleting unwanted ServiceMonitor");
                delete_ignoring_absent(
                    api.delete(&name, &DeleteParams::default()).await,
                    "ServiceMonitor",
                    &name,
                )?;
            }
        }
    }
    Ok(())
}

/// A delete that found nothing is a success.
pub fn delete_ignoring_absent<T>(
    r: Result<T, kube::Error>,
    kind: &str,
    name: &str,
) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: kind.into(),
            name: name.into(),
            source,
        }),
    }
}
