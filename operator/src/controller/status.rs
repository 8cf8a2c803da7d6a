//! Pure status computation from what was applied, what the coordinator
//! reported and the roll step. Conditions keep their lastTransitionTime while
//! their status does not change, so an unchanged cluster yields an identical
//! status and no write.

use dfs_common::size::ByteSize;

use super::roll::Step;
use crate::coordinator::{ClusterFacts, NodeState};
use crate::crd::{Condition, DatanodeState, DfsClusterStatus, Replicas};

/// Ready/desired pods of both workloads, read from the apply responses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Ready coordinator pods.
    pub coordinator_ready: i32,
    /// Desired coordinator pods.
    pub coordinator_desired: i32,
    /// Ready datanode pods.
    pub datanodes_ready: i32,
    /// Nodes that should run a datanode.
    pub datanodes_desired: i32,
}

/// Inputs of [`compute`].
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// The DfsCluster's generation.
    pub generation: Option<i64>,
    /// Workload readiness.
    pub applied: &'a Applied,
    /// Coordinator report, when it answered.
    pub facts: Option<&'a ClusterFacts>,
    /// Coordinator roll step.
    pub coordinator_step: &'a Step,
    /// Datanode roll step.
    pub datanode_step: &'a Step,
    /// Spec says stopped.
    pub stopped: bool,
}

fn replicas(ready: i32, desired: i32) -> Replicas {
    Replicas {
        ready,
        desired,
        summary: format!("{ready}/{desired}"),
    }
}

fn condition(
    previous: Option<&DfsClusterStatus>,
    now: &str,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
    }
}

fn wait_reason(step: &Step) -> Option<String> {
    match step {
        Step::Idle => None,
        Step::Wait(why) => Some(format!("roll waiting: {why}")),
        Step::EnterMaintenance { pod, .. } => {
            Some(format!("putting the node of {pod} into maintenance"))
        }
        Step::DeletePod { pod } => Some(format!("restarting {pod}")),
    }
}

/// Status of a reconciled cluster; pure.
pub fn compute(
    o: &Observation<'_>,
    previous: Option<&DfsClusterStatus>,
    now: &str,
) -> DfsClusterStatus {
    let a = o.applied;
    let coordinator_up = a.coordinator_ready >= 1;
    let datanodes_up = a.datanodes_ready >= 1;
    let available = coordinator_up && datanodes_up;
    let (a_reason, a_msg) = if o.stopped {
        ("Stopped", "the cluster is stopped".to_string())
    } else if !coordinator_up {
        (
            "CoordinatorUnavailable",
            "no coordinator pod is ready".to_string(),
        )
    } else if !datanodes_up {
        ("NoDatanodes", "no datanode pod is ready".to_string())
    } else {
        (
            "ClusterAvailable",
            format!("{} datanodes ready", a.datanodes_ready),
        )
    };
    let rolling = [o.coordinator_step, o.datanode_step]
        .into_iter()
        .filter_map(wait_reason)
        .collect::<Vec<_>>();
    let scaling =
        a.coordinator_ready < a.coordinator_desired || a.datanodes_ready < a.datanodes_desired;
    let (p, p_reason, p_msg) = if !rolling.is_empty() {
        (true, "Rolling", rolling.join("; "))
    } else if scaling {
        (
            true,
            "PodsStarting",
            format!(
                "coordinator {}/{}, datanodes {}/{} ready",
                a.coordinator_ready, a.coordinator_desired, a.datanodes_ready, a.datanodes_desired
            ),
        )
    } else {
        (
            false,
            "Reconciled",
            "every pod runs the desired template".to_string(),
        )
    };
    let mut problems = Vec::new();
    match o.facts {
        None if !o.stopped => problems.push("coordinator unreachable".to_string()),
        None => {}
        Some(f) => {
            if f.missing_chunks > 0 {
                problems.push(format!("{} missing chunks", f.missing_chunks));
            }
            if f.under_replicated_chunks > 0 {
                problems.push(format!(
                    "{} under-replicated chunks",
                    f.under_replicated_chunks
                ));
            }
            let bad = f
                .nodes
                .iter()
                .filter(|n| matches!(n.state, Some(NodeState::Dead | NodeState::Suspect)))
                .count();
            if bad > 0 {
                problems.push(format!("{bad} datanodes suspect or dead"));
            }
        }
    }
    let degraded = !problems.is_empty();
    let d_reason = match o.facts {
        None => "CoordinatorUnreachable",
        Some(f) if f.missing_chunks > 0 => "MissingChunks",
        Some(f) if f.under_replicated_chunks > 0 => "UnderReplicated",
        Some(_) if degraded => "DatanodesUnhealthy",
        Some(_) => "Healthy",
    };
    let phase = if o.stopped {
        "Stopped"
    } else if !rolling.is_empty() {
        "Rolling"
    } else if !available {
        "Pending"
    } else if degraded {
        "Degraded"
    } else {
        "Running"
    };
    let facts = o.facts;
    DfsClusterStatus {
        observed_generation: o.generation,
        phase: Some(phase.into()),
        conditions: vec![
            condition(previous, now, "Available", available, a_reason, a_msg),
            condition(previous, now, "Progressing", p, p_reason, p_msg),
            condition(
                previous,
                now,
                "Degraded",
                degraded,
                d_reason,
                if degraded {
                    problems.join("; ")
                } else {
                    "no problem reported".into()
                },
            ),
        ],
        coordinator: replicas(a.coordinator_ready, a.coordinator_desired),
        datanodes: replicas(a.datanodes_ready, a.datanodes_desired),
        capacity: facts.map(|f| {
            format!(
                "{}/{}",
                ByteSize(f.capacity_used_bytes),
                ByteSize(f.capacity_total_bytes)
            )
        }),
        capacity_used_bytes: facts.map(|f| f.capacity_used_bytes),
        capacity_total_bytes: facts.map(|f| f.capacity_total_bytes),
        under_replicated_chunks: facts.map(|f| f.under_replicated_chunks),
        missing_chunks: facts.map(|f| f.missing_chunks),
        nodes: facts
            .map(|f| {
                f.nodes
                    .iter()
                    .map(|n| DatanodeState {
                        node_id: n.node_id.clone(),
                        host: n.host.clone(),
                        state: n.state.map_or("UNKNOWN", NodeState::as_str).into(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Status of a cluster whose spec was rejected: Degraded/InvalidSpec, the rest kept.
pub fn invalid(
    generation: Option<i64>,
    message: &str,
    previous: Option<&DfsClusterStatus>,
    now: &str,
) -> DfsClusterStatus {
    let mut s = previous.cloned().unwrap_or_default();
    s.observed_generation = generation;
    s.phase = Some("Invalid".into());
    let degraded = condition(
        previous,
        now,
        "Degraded",
        true,
        "InvalidSpec",
        message.to_string(),
    );
    s.conditions.retain(|c| c.type_ != "Degraded");
    s.conditions.push(degraded);
    s
}

/// Status of a paused cluster: phase Paused, the rest kept.
pub fn paused(generation: Option<i64>, previous: Option<&DfsClusterStatus>) -> DfsClusterStatus {
    let mut s = previous.cloned().unwrap_or_default();
    s.observed_generation = generation;
    s.phase = Some("Paused".into());
    s
}

/// True when `status` already reports this generation's spec as invalid.
pub fn reported_invalid(status: Option<&DfsClusterStatus>, generation: Option<i64>) -> bool {
    status.is_some_and(|s| {
        s.observed_generation == generation && s.phase.as_deref() == Some("Invalid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_cluster_gives_identical_status() {
        let applied = Applied {
            coordinator_ready: 1,
            coordinator_desired: 1,
            datanodes_ready: 3,
            datanodes_desired: 3,
        };
        let facts = ClusterFacts {
            capacity_total_bytes: 10 << 30,
            capacity_used_bytes: 1 << 30,
            ..ClusterFacts::default()
        };
        let o = Observation {
            generation: Some(2),
            applied: &applied,
            facts: Some(&facts),
            coordinator_step: &Step::Idle,
            datanode_step: &Step::Idle,
            stopped: false,
        };
        let first = compute(&o, None, "2026-01-01T00:00:00Z");
        assert_eq!(first.phase.as_deref(), Some("Running"));
        assert_eq!(first.datanodes.summary, "3/3");
        assert_eq!(first.capacity.as_deref(), Some("1.0 GiB/10.0 GiB"));
        let again = compute(&o, Some(&first), "2026-01-01T00:05:00Z");
        assert_eq!(first, again, "same facts, same status: no write");
        let rolling = Observation {
            datanode_step: &Step::Wait("x".into()),
            ..o
        };
        let s = compute(&rolling, Some(&first), "2026-01-01T00:06:00Z");
        let prog = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(
            (prog.status.as_str(), prog.last_transition_time.as_str()),
            ("True", "2026-01-01T00:06:00Z")
        );
        let avail = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Available")
            .unwrap();
        assert_eq!(avail.last_transition_time, "2026-01-01T00:00:00Z");
    }
}
