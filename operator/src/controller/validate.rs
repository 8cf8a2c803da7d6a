//! Pure validation of a DfsCluster spec beyond what the schema enforces (the
//! API server may not enforce the schema, and some rules span fields).
//! Produces the [`ValidSpec`] the builders take, so they never see
//! unvalidated input.

use dfs_common::size::ByteSize;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::crd::{DatanodeCredentials, DfsCluster};

/// Longest DfsCluster name: the longest derived name
/// (`<name>-coordinator-headless`) must fit a 63-character DNS label.
pub const MAX_NAME_LEN: usize = 40;
/// Smallest accepted chunk size.
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
/// Largest accepted chunk size.
pub const MAX_CHUNK_SIZE: u64 = 1024 * 1024 * 1024;

/// A spec that passed validation, with its derived values.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    /// Name of the DfsCluster.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Controller owner reference to put on every owned object.
    pub owner: OwnerReference,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Datanode reserve in bytes.
    pub reserve: u64,
    /// Mutual TLS and chunk tokens on (`spec.security.tls`).
    pub tls: bool,
    /// Where the datanodes' certificates come from (only meaningful with
    /// `tls`).
    pub datanode_credentials: DatanodeCredentials,
}

/// Why a spec was rejected: every problem found, for the Warning event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid DfsCluster spec: {}", .0.join("; "))]
pub struct InvalidSpec(pub Vec<String>);

fn is_quantity(s: &str) -> bool {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok_and(|v| v > 0.0)
        && matches!(
            suffix,
            "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "k" | "M" | "G" | "T" | "P"
        )
}

/// Validates `cluster`; pure.
pub fn validate(cluster: &DfsCluster) -> Result<ValidSpec, InvalidSpec> {
    let spec = &cluster.spec;
    let mut problems = Vec::new();
    let name = cluster.name_any();
    if name.len() > MAX_NAME_LEN {
        problems.push(format!(
            "metadata.name must be at most {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(secret) = &spec.security.access_secret {
        let dns = !secret.is_empty()
            && secret.len() <= 253
            && secret
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !dns {
            problems.push(format!(
                "security.accessSecret {secret:?} is not a Secret name (lowercase DNS subdomain)"
            ));
        }
        if !spec.security.tls {
            problems.push(
                "security.accessSecret needs security.tls: principals come from certificates"
                    .into(),
            );
        }
    }
    if spec.security.datanode_credentials == DatanodeCredentials::PodCertificate
        && !spec.security.tls
    {
        problems.push(
            "security.datanodeCredentials: podCertificate needs security.tls: there is nothing to certify without TLS"
                .into(),
        );
    }
    let namespace = cluster.namespace().unwrap_or_default();
    if namespace.is_empty() {
        problems.push("metadata.namespace is missing".into());
    }
    let owner = cluster.controller_owner_ref(&());
    if owner.is_none() {
        problems.push("metadata.uid is missing".into());
    }
    if spec.image.repository.trim().is_empty() || spec.image.tag.trim().is_empty() {
        problems.push("image.repository and image.tag must not be empty".into());
    }
    if !(1..=16).contains(&spec.replication) {
        problems.push(format!(
            "replication must be between 1 and 16, got {}",
            spec.replication
        ));
    }
    let chunk_size = match spec.chunk_size.parse::<ByteSize>() {
        Ok(ByteSize(b)) if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&b) => b,
        Ok(_) => {
            problems.push(format!(
                "chunkSize {:?} must be between 64KiB and 1GiB",
                spec.chunk_size
            ));
            0
        }
        Err(e) => {
            problems.push(format!("chunkSize: {e}"));
            0
        }
    };
    let reserve = match spec.datanode.reserve.parse::<ByteSize>() {
        Ok(ByteSize(b)) => b,
        Err(e) => {
            problems.push(format!("datanode.reserve: {e}"));
            0
        }
    };
    // One coordinator, or a Raft group of 3 or 5 (2 or 4 survive no more
    // failures than 1 or 3, and a group of 2 stops when either member does).
    if ![1, 3, 5].contains(&spec.coordinator.replicas) {
        problems.push(format!(
            "coordinator.replicas must be 1, 3 or 5 (got {}): a coordinator group needs a \
             majority up, and an even group survives no more failures than the odd one below it",
            spec.coordinator.replicas
        ));
    }
    if !is_quantity(&spec.coordinator.storage.size) {
        problems.push(format!(
            "coordinator.storage.size {:?} is not a quantity like 10Gi",
            spec.coordinator.storage.size
        ));
    }
    let dir = &spec.datanode.data_dir;
    if !dir.starts_with('/') || dir.trim_end_matches('/').is_empty() || dir.contains("..") {
        problems.push(format!(
            "datanode.dataDir {dir:?} must be an absolute path other than /"
        ));
    }
    for (what, o) in [
        ("coordinator.podOverrides", &spec.coordinator.pod_overrides),
        ("datanode.podOverrides", &spec.datanode.pod_overrides),
    ] {
        match o {
            Some(v) if !v.is_object() => {
                problems.push(format!("{what} must be an object (a partial pod template)"));
            }
            Some(v) => {
                problems.extend(privileges_in(v).into_iter().map(|p| format!("{what}: {p}")))
            }
            None => {}
        }
    }
    match owner {
        Some(owner) if problems.is_empty() => Ok(ValidSpec {
            name,
            namespace,
            owner,
            chunk_size,
            reserve,
            tls: spec.security.tls,
            datanode_credentials: spec.security.datanode_credentials,
        }),
        _ => Err(InvalidSpec(problems)),
    }
}

/// What a partial pod template would add beyond the hardened pods the
/// operator builds: privileges, host namespaces, host paths, a root user,
/// an unconfined seccomp profile, a ServiceAccount token. Overrides may
/// tune scheduling, resources, labels and the like, never these.
fn privileges_in(overrides: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut found = Vec::new();
    let Some(spec) = overrides.get("spec") else {
        return found;
    };
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec.get(key) == Some(&Value::Bool(true)) {
            found.push(format!("spec.{key} is not allowed"));
        }
    }
    if spec.get("hostUsers") == Some(&Value::Bool(true)) {
        found.push("spec.hostUsers is not allowed".into());
    }
    if spec.get("automountServiceAccountToken") == Some(&Value::Bool(true)) {
        found.push("spec.automountServiceAccountToken: neither component needs a token".into());
    }
    if let Some(volumes) = spec.get("volumes").and_then(Value::as_array) {
        for (i, v) in volumes.iter().enumerate() {
            if v.get("hostPath").is_some() {
                found.push(format!(
                    "spec.volumes[{i}]: hostPath volumes are not allowed"
                ));
            }
        }
    }
    let check_context = |where_: &str, ctx: &Value, found: &mut Vec<String>| {
        let is = |k: &str, v: Value| ctx.get(k) == Some(&v);
        if is("privileged", Value::Bool(true)) {
            found.push(format!("{where_}.privileged is not allowed"));
        }
        if is("allowPrivilegeEscalation", Value::Bool(true)) {
            found.push(format!("{where_}.allowPrivilegeEscalation is not allowed"));
        }
        if is("runAsNonRoot", Value::Bool(false)) || is("runAsUser", Value::from(0)) {
            found.push(format!("{where_}: running as root is not allowed"));
        }
        if is("readOnlyRootFilesystem", Value::Bool(false)) {
            found.push(format!("{where_}.readOnlyRootFilesystem must stay true"));
        }
        if ctx
            .pointer("/capabilities/add")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            found.push(format!("{where_}.capabilities.add is not allowed"));
        }
        if ctx.pointer("/seccompProfile/type") == Some(&Value::from("Unconfined")) {
            found.push(format!("{where_}.seccompProfile Unconfined is not allowed"));
        }
    };
    if let Some(ctx) = spec.get("securityContext") {
        check_context("spec.securityContext", ctx, &mut found);
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(ctx) = c.get("securityContext") {
                check_context(
                    &format!("spec.{list}[{i}].securityContext"),
                    ctx,
                    &mut found,
                );
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(spec: &str) -> DfsCluster {
        serde_yaml::from_str(&format!(
            "apiVersion: dfs.io/v1alpha1\nkind: DfsCluster\nmetadata: {{name: c, namespace: ns, uid: u1}}\nspec: {spec}\n"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let v = validate(&cluster("{}")).unwrap();
        assert_eq!(v.chunk_size, 64 << 20);
        assert_eq!(v.reserve, 1 << 30);
        assert_eq!(v.owner.uid, "u1");
        assert_eq!(v.owner.controller, Some(true));
    }

    #[test]
    fn pod_certificates_need_tls() {
        let v = validate(&cluster("{}")).unwrap();
        assert_eq!(v.datanode_credentials, DatanodeCredentials::Secret);
        let v = validate(&cluster(
            "{security: {datanodeCredentials: podCertificate}}",
        ))
        .unwrap();
        assert_eq!(v.datanode_credentials, DatanodeCredentials::PodCertificate);
        let err = validate(&cluster(
            "{security: {tls: false, datanodeCredentials: podCertificate}}",
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("podCertificate needs security.tls"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let err = validate(&cluster(
            "{replication: 0, chunkSize: 12XB, coordinator: {replicas: 0, storage: {size: lots}}, datanode: {dataDir: /, reserve: x}}",
        ))
        .unwrap_err();
        assert_eq!(err.0.len(), 6, "{err}");
        assert!(
            err.to_string()
                .contains("replication must be between 1 and 16")
        );
    }

    #[test]
    fn coordinator_replicas_are_one_three_or_five() {
        for n in [1, 3, 5] {
            assert!(
                validate(&cluster(&format!("{{coordinator: {{replicas: {n}}}}}"))).is_ok(),
                "{n}"
            );
        }
        for n in [0, 2, 4, -1, 7] {
            let err = validate(&cluster(&format!("{{coordinator: {{replicas: {n}}}}}")))
                .expect_err(&format!("replicas {n} must be refused"));
            assert_eq!(err.0.len(), 1, "{err}");
            assert_eq!(
                err.0[0],
                format!(
                    "coordinator.replicas must be 1, 3 or 5 (got {n}): a coordinator group needs \
                     a majority up, and an even group survives no more failures than the odd one \
                     below it"
                ),
            );
        }
    }

    #[test]
    fn quantities() {
        assert!(is_quantity("10Gi") && is_quantity("1.5T") && is_quantity("100"));
        assert!(!is_quantity("Gi") && !is_quantity("10GB") && !is_quantity("0"));
    }

    #[test]
    fn pod_overrides_cannot_add_privileges() {
        let err = validate(&cluster(
            "{datanode: {podOverrides: {spec: {hostNetwork: true, hostPID: true, automountServiceAccountToken: true, \
             volumes: [{name: root, hostPath: {path: /}}], securityContext: {runAsUser: 0}, \
             containers: [{name: datanode, securityContext: {privileged: true, allowPrivilegeEscalation: true, \
             readOnlyRootFilesystem: false, capabilities: {add: [SYS_ADMIN]}, seccompProfile: {type: Unconfined}}}]}}}}",
        ))
        .unwrap_err();
        let text = err.to_string();
        for want in [
            "spec.hostNetwork",
            "spec.hostPID",
            "automountServiceAccountToken",
            "hostPath volumes",
            "spec.securityContext: running as root",
            "containers[0].securityContext.privileged",
            "allowPrivilegeEscalation",
            "readOnlyRootFilesystem",
            "capabilities.add",
            "Unconfined",
        ] {
            assert!(text.contains(want), "{want} missing from: {text}");
        }
        assert_eq!(err.0.len(), 10, "{text}");
        // Tuning stays allowed.
        validate(&cluster(
            "{coordinator: {podOverrides: {metadata: {labels: {team: a}}, spec: {priorityClassName: high, \
             containers: [{name: coordinator, securityContext: {readOnlyRootFilesystem: true}}]}}}}",
        ))
        .unwrap();
    }
}
