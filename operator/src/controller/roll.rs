//! Pure roll planning: which pod may be restarted next so that an upgrade
//! never takes two replicas of a chunk offline.
//!
//! Both workloads use `updateStrategy: OnDelete`; a pod whose template-hash
//! annotation differs from the desired one is outdated. One reconcile takes at
//! most one step:
//!
//! ```text
//!   datanode pod outdated ─▶ all pods ready? ─▶ coordinator: 0 under-replicated, 0 missing?
//!        ─▶ node not in MAINTENANCE: SetNodeMaintenance(on)      (next reconcile)
//!        ─▶ node in MAINTENANCE:     delete the pod              (DaemonSet recreates it)
//!   updated pod ready and its node still in MAINTENANCE ─▶ SetNodeMaintenance(off)
//! ```
//!
//! The coordinator rolls first under the same replication gate (without the
//! maintenance call); datanodes roll only once every coordinator pod is current.

use crate::coordinator::{ClusterFacts, NodeState};

/// A pod as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Kubernetes node it runs on.
    pub node: Option<String>,
    /// Its template-hash annotation.
    pub hash: Option<String>,
    /// Ready condition is True.
    pub ready: bool,
    /// Has a deletionTimestamp.
    pub terminating: bool,
}

/// The one action of this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to roll.
    Idle,
    /// A roll is pending but not safe yet, for this reason.
    Wait(String),
    /// Put the datanode into maintenance before deleting `pod`.
    EnterMaintenance {
        /// Coordinator id of the datanode.
        node_id: String,
        /// Pod to delete next.
        pod: String,
    },
    /// Delete `pod`; its controller recreates it from the new template.
    DeletePod {
        /// Pod to delete.
        pod: String,
    },
}

impl Step {
    /// True while a roll is under way (requeue soon).
    pub fn rolling(&self) -> bool {
        !matches!(self, Step::Idle)
    }
}

/// The planner's answer for a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Datanodes whose maintenance can end (their pod is current and ready).
    pub exit_maintenance: Vec<String>,
    /// The roll step.
    pub step: Step,
}

fn outdated<'a>(pods: &'a [PodView], hash: &str) -> Vec<&'a PodView> {
    let mut out: Vec<_> = pods
        .iter()
        .filter(|p| p.hash.as_deref() != Some(hash))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn replication_gate(facts: Option<&ClusterFacts>) -> Result<(), String> {
    match facts {
        None => Err("coordinator unreachable: replication cannot be checked".into()),
        Some(f) if f.missing_chunks > 0 || f.under_replicated_chunks > 0 => Err(format!(
            "coordinator reports {} under-replicated and {} missing chunks",
            f.under_replicated_chunks, f.missing_chunks
        )),
        Some(_) => Ok(()),
    }
}

/// Plans the coordinator roll.
pub fn plan_coordinator(pods: &[PodView], hash: &str, facts: Option<&ClusterFacts>) -> Step {
    if let Some(p) = pods.iter().find(|p| p.terminating) {
        return Step::Wait(format!("coordinator pod {} is terminating", p.name));
    }
    let old = outdated(pods, hash);
    let Some(first) = old.first() else {
        return Step::Idle;
    };
    if pods.iter().all(|p| !p.ready) {
        // No coordinator is serving: restarting one cannot lose availability
        // and may be the fix (e.g. a bad configuration being replaced).
        return Step::DeletePod {
            pod: first.name.clone(),
        };
    }
    if let Some(p) = pods.iter().find(|p| !p.ready) {
        return Step::Wait(format!("coordinator pod {} is not ready", p.name));
    }
    match replication_gate(facts).and_then(|()| group_gate(facts, pods.len())) {
        Ok(()) => Step::DeletePod {
            pod: first.name.clone(),
        },
        Err(why) => Step::Wait(why),
    }
}

/// Most entries a coordinator may lag behind the leader when the next one
/// is restarted (a member further behind is still catching up).
pub const MAX_ROLL_LAG: u64 = 1000;

/// For a coordinator group: the group has a leader, and every member is
/// there and caught up, so restarting one keeps a majority that is current.
fn group_gate(facts: Option<&ClusterFacts>, pods: usize) -> Result<(), String> {
    let Some(f) = facts else {
        return Err("coordinator unreachable: the group cannot be checked".into());
    };
    if pods <= 1 {
        return Ok(());
    }
    if !f.coordinators.iter().any(|m| m.role == "leader") {
        return Err("the coordinator group has no leader".into());
    }
    if f.coordinators.len() < pods {
        return Err(format!(
            "the coordinator group reports {} of {pods} members",
            f.coordinators.len()
        ));
    }
    match f.coordinators.iter().find(|m| m.lag > MAX_ROLL_LAG) {
        Some(m) => Err(format!(
            "coordinator {} is {} entries behind the leader (catching up)",
            m.id, m.lag
        )),
        None => Ok(()),
    }
}

/// Plans the datanode roll.
pub fn plan_datanodes(pods: &[PodView], hash: &str, facts: Option<&ClusterFacts>) -> Plan {
    let exit_maintenance = facts
        .map(|f| {
            f.nodes
                .iter()
                .filter(|n| n.state == Some(NodeState::Maintenance))
                .filter(|n| {
                    pods.iter().any(|p| {
                        p.node.as_deref() == Some(n.host.as_str())
                            && p.ready
                            && !p.terminating
                            && p.hash.as_deref() == Some(hash)
                    })
                })
                .map(|n| n.node_id.clone())
                .collect()
        })
        .unwrap_or_default();
    let step = (|| {
        if let Some(p) = pods.iter().find(|p| p.terminating) {
            return Step::Wait(format!("datanode pod {} is terminating", p.name));
        }
        let old = outdated(pods, hash);
        let Some(first) = old.first() else {
            return Step::Idle;
        };
        if let Some(p) = pods.iter().find(|p| !p.ready) {
            return Step::Wait(format!("datanode pod {} is not ready", p.name));
        }
        if let Err(why) = replication_gate(facts) {
            return Step::Wait(why);
        }
        let registered = first
            .node
            .as_deref()
            .and_then(|host| facts.and_then(|f| f.node_on(host)));
        match registered {
            // Never registered: it holds no chunk the coordinator counts on.
            None => Step::DeletePod {
                pod: first.name.clone(),
            },
            Some(n) if n.state == Some(NodeState::Maintenance) => Step::DeletePod {
                pod: first.name.clone(),
            },
            Some(n) => Step::EnterMaintenance {
                node_id: n.node_id.clone(),
                pod: first.name.clone(),
            },
        }
    })();
    Plan {
        exit_maintenance,
        step,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::DatanodeFact;

    fn pod(name: &str, node: &str, hash: &str, ready: bool) -> PodView {
        PodView {
            name: name.into(),
            node: Some(node.into()),
            hash: Some(hash.into()),
            ready,
            terminating: false,
        }
    }

    fn facts(states: &[(&str, NodeState)], under: u64) -> ClusterFacts {
        ClusterFacts {
            nodes: states
                .iter()
                .map(|(h, s)| DatanodeFact {
                    node_id: format!("id-{h}"),
                    host: (*h).into(),
                    state: Some(*s),
                })
                .collect(),
            under_replicated_chunks: under,
            ..ClusterFacts::default()
        }
    }

    #[test]
    fn current_pods_need_nothing() {
        let pods = [pod("a", "n1", "new", true)];
        let f = facts(&[("n1", NodeState::Healthy)], 0);
        assert_eq!(plan_datanodes(&pods, "new", Some(&f)).step, Step::Idle);
    }

    #[test]
    fn maintenance_first_then_delete_one_pod() {
        let pods = [pod("a", "n1", "old", true), pod("b", "n2", "old", true)];
        let f = facts(&[("n1", NodeState::Healthy), ("n2", NodeState::Healthy)], 0);
        assert_eq!(
            plan_datanodes(&pods, "new", Some(&f)).step,
            Step::EnterMaintenance {
                node_id: "id-n1".into(),
                pod: "a".into()
            }
        );
        let f = facts(
            &[("n1", NodeState::Maintenance), ("n2", NodeState::Healthy)],
            0,
        );
        assert_eq!(
            plan_datanodes(&pods, "new", Some(&f)).step,
            Step::DeletePod { pod: "a".into() }
        );
    }

    #[test]
    fn gate_blocks_on_replication_readiness_and_reachability() {
        let pods = [pod("a", "n1", "old", true), pod("b", "n2", "new", false)];
        let f = facts(&[("n1", NodeState::Maintenance)], 0);
        assert!(
            matches!(plan_datanodes(&pods, "new", Some(&f)).step, Step::Wait(w) if w.contains("not ready"))
        );
        let pods = [pod("a", "n1", "old", true)];
        let f = facts(&[("n1", NodeState::Maintenance)], 3);
        assert!(
            matches!(plan_datanodes(&pods, "new", Some(&f)).step, Step::Wait(w) if w.contains("3 under-replicated"))
        );
        assert!(
            matches!(plan_datanodes(&pods, "new", None).step, Step::Wait(w) if w.contains("unreachable"))
        );
        let mut t = pod("a", "n1", "old", true);
        t.terminating = true;
        assert!(matches!(
            plan_datanodes(&[t], "new", Some(&f)).step,
            Step::Wait(_)
        ));
    }

    #[test]
    fn maintenance_ends_when_the_new_pod_is_ready() {
        let pods = [pod("a", "n1", "new", true), pod("b", "n2", "old", true)];
        let f = facts(
            &[("n1", NodeState::Maintenance), ("n2", NodeState::Healthy)],
            0,
        );
        let plan = plan_datanodes(&pods, "new", Some(&f));
        assert_eq!(plan.exit_maintenance, vec!["id-n1".to_string()]);
        let pods = [pod("a", "n1", "new", false)];
        assert!(
            plan_datanodes(&pods, "new", Some(&f))
                .exit_maintenance
                .is_empty()
        );
    }

    #[test]
    fn coordinator_rolls_behind_the_same_gate() {
        let pods = [pod("c-0", "n1", "old", true)];
        let f = facts(&[], 0);
        assert_eq!(
            plan_coordinator(&pods, "new", Some(&f)),
            Step::DeletePod { pod: "c-0".into() }
        );
        let f = facts(&[], 1);
        assert!(matches!(
            plan_coordinator(&pods, "new", Some(&f)),
            Step::Wait(_)
        ));
        assert!(matches!(
            plan_coordinator(&pods, "new", None),
            Step::Wait(_)
        ));
        let down = [pod("c-0", "n1", "old", false)];
        assert_eq!(
            plan_coordinator(&down, "new", None),
            Step::DeletePod { pod: "c-0".into() }
        );
    }

    #[test]
    fn a_group_rolls_only_with_a_leader_and_every_member_caught_up() {
        let pods = [
            pod("c-0", "n1", "new", true),
            pod("c-1", "n2", "old", true),
            pod("c-2", "n3", "old", true),
        ];
        let member = |id, role: &str, lag| crate::coordinator::CoordinatorFact {
            id,
            role: role.into(),
            lag,
            voter: true,
            on_new_volume: false,
        };
        let mut f = facts(&[], 0);
        f.coordinators = vec![
            member(1, "leader", 0),
            member(2, "follower", 3),
            member(3, "follower", 0),
        ];
        assert_eq!(
            plan_coordinator(&pods, "new", Some(&f)),
            Step::DeletePod { pod: "c-1".into() }
        );
        // The restarted member is still catching up.
        f.coordinators[0].lag = 0;
        f.coordinators[1].lag = MAX_ROLL_LAG + 1;
        assert!(
            matches!(plan_coordinator(&pods, "new", Some(&f)), Step::Wait(w) if w.contains("behind"))
        );
        // No leader (an election under way).
        f.coordinators[1].lag = 0;
        f.coordinators[0].role = "candidate".into();
        assert!(
            matches!(plan_coordinator(&pods, "new", Some(&f)), Step::Wait(w) if w.contains("no leader"))
        );
        // A member missing from the group's report.
        f.coordinators[0].role = "leader".into();
        f.coordinators.pop();
        assert!(
            matches!(plan_coordinator(&pods, "new", Some(&f)), Step::Wait(w) if w.contains("2 of 3"))
        );
    }
}
