//! Pure validation of a DfsCluster spec beyond what the schema enforces (the
//! API server may not enforce the schema, and some rules span fields).
//! Produces the [`ValidSpec`] the builders take, so they never see
//! unvalidated input.

use dfs_common::size::ByteSize;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::crd::DfsCluster;

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
        if o.as_ref().is_some_and(|v| !v.is_object()) {
            problems.push(format!("{what} must be an object (a partial pod template)"));
        }
    }
    match owner {
        Some(owner) if problems.is_empty() => Ok(ValidSpec {
            name,
            namespace,
            owner,
            chunk_size,
            reserve,
        }),
        _ => Err(InvalidSpec(problems)),
    }
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
}
