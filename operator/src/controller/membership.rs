//! The coordinator group's membership, reconciled one change at a time.
//!
//! `coordinator.replicas` says how many voters the group should have, pod
//! `i` being member `i + 1`. The group forms with pod 0 alone; every other
//! pod starts as a member-to-be (`DFS_INITIAL_CLUSTER_STATE=existing`) and
//! the operator adds it as a learner, then promotes the caught-up learners
//! together, so the voter count goes 1 → 3 → 5 without resting on an even
//! number. Scaling down removes the surplus voters in one change before
//! their pods go. A member that came back on an empty volume (its reported
//! incarnation is not the pinned one) is removed, then added again as a
//! new member: never trusted as the old one.
//!
//! [`plan`] is pure: the group as the leader reports it in, at most one
//! membership call out. The controller makes that call and looks again.

use std::collections::BTreeSet;

use crate::coordinator::{ClusterFacts, CoordinatorFact};

/// Entries a learner may still lack when it is promoted.
pub const MAX_PROMOTE_LAG: u64 = 1000;

/// The one membership call to make now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing to change: the group is as the spec wants.
    None,
    /// A change is needed but cannot be made yet (why).
    Wait(String),
    /// Add member `id` (its pod runs) as a learner.
    Add {
        /// Raft id (pod ordinal + 1).
        id: u64,
    },
    /// Make exactly these the voters.
    SetVoters(Vec<u64>),
}

impl Change {
    /// True while the group is not yet what the spec wants.
    pub fn pending(&self) -> bool {
        !matches!(self, Change::None)
    }

    /// True when this reconcile changes the membership (a roll waits).
    pub fn acts(&self) -> bool {
        matches!(self, Change::Add { .. } | Change::SetVoters(_))
    }
}

/// The next change for a group that should have `replicas` voters, given
/// the ids whose pods are running and the leader's report in `facts`.
pub fn plan(replicas: u64, running: &BTreeSet<u64>, facts: Option<&ClusterFacts>) -> Change {
    let Some(facts) = facts else {
        return Change::Wait("the coordinator does not answer".into());
    };
    let members = &facts.coordinators;
    if !members.iter().any(|m| m.role == "leader") {
        return Change::Wait("the coordinator group has no leader".into());
    }
    let voters: BTreeSet<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let learners: BTreeSet<u64> = members.iter().filter(|m| !m.voter).map(|m| m.id).collect();
    let wanted: BTreeSet<u64> = (1..=replicas).collect();

    // A member on a new volume first: out of the voters, then back in as a
    // new member (a learner on a new volume is replaced by AddCoordinator).
    if let Some(m) = members.iter().find(|m| m.on_new_volume && m.voter) {
        let rest: Vec<u64> = voters.iter().copied().filter(|id| *id != m.id).collect();
        if rest.is_empty() {
            return Change::Wait(format!(
                "coordinator {} came back on an empty volume and was the only voter: \
                 the namespace must be restored",
                m.id
            ));
        }
        return Change::SetVoters(rest);
    }
    if let Some(m) = members
        .iter()
        .find(|m| m.on_new_volume && !m.voter && running.contains(&m.id))
    {
        return Change::Add { id: m.id };
    }
    // Scale down: the surplus voters leave in one change.
    if voters.iter().any(|id| !wanted.contains(id)) {
        let keep: Vec<u64> = voters.intersection(&wanted).copied().collect();
        if keep.is_empty() {
            return Change::Wait("no wanted coordinator is a voter".into());
        }
        return Change::SetVoters(keep);
    }
    // Scale up (or re-add): every wanted member that is not one yet, as a
    // learner, once its pod runs.
    let missing: Vec<u64> = wanted
        .iter()
        .copied()
        .filter(|id| !voters.contains(id) && !learners.contains(id))
        .collect();
    if let Some(id) = missing.iter().copied().find(|id| running.contains(id)) {
        return Change::Add { id };
    }
    if let Some(id) = missing.first() {
        return Change::Wait(format!("waiting for the pod of coordinator {id}"));
    }
    // Then the learners become voters together, once caught up.
    let promote: Vec<&CoordinatorFact> = members
        .iter()
        .filter(|m| !m.voter && wanted.contains(&m.id))
        .collect();
    if promote.is_empty() {
        return Change::None;
    }
    if let Some(m) = promote.iter().find(|m| m.lag > MAX_PROMOTE_LAG) {
        return Change::Wait(format!(
            "learner {} is {} entries behind the leader",
            m.id, m.lag
        ));
    }
    Change::SetVoters(
        voters
            .iter()
            .copied()
            .chain(promote.iter().map(|m| m.id))
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect(),
    )
}

/// How many coordinator pods the StatefulSet should run: what the spec
/// wants, and never fewer than the highest member still in the group (a
/// voter's pod stays until the group has let it go).
pub fn pods(replicas: u64, facts: Option<&ClusterFacts>, running: &BTreeSet<u64>) -> u64 {
    let highest_member = match facts {
        Some(f) if !f.coordinators.is_empty() => f.coordinators.iter().map(|m| m.id).max(),
        // Not known: keep what runs.
        _ => running.iter().copied().max(),
    };
    replicas.max(highest_member.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group the way the coordinator would change it for each call.
    #[derive(Default)]
    struct Group {
        members: Vec<CoordinatorFact>,
    }

    impl Group {
        fn of_one() -> Group {
            let mut g = Group::default();
            g.add(1);
            g.members[0].voter = true;
            g.members[0].role = "leader".into();
            g
        }

        fn add(&mut self, id: u64) {
            self.members.retain(|m| m.id != id);
            self.members.push(CoordinatorFact {
                id,
                role: "learner".into(),
                lag: 0,
                voter: false,
                on_new_volume: false,
            });
            self.members.sort_by_key(|m| m.id);
        }

        fn set_voters(&mut self, ids: &[u64]) {
            self.members.retain(|m| ids.contains(&m.id) || !m.voter);
            for m in &mut self.members {
                m.voter = ids.contains(&m.id);
                if m.voter && m.role == "learner" {
                    m.role = "follower".into();
                }
            }
        }

        fn facts(&self) -> ClusterFacts {
            ClusterFacts {
                coordinators: self.members.clone(),
                ..ClusterFacts::default()
            }
        }

        /// Reconciles to `replicas` with every pod running; returns the calls.
        fn reconcile(&mut self, replicas: u64) -> Vec<Change> {
            let mut calls = Vec::new();
            for _ in 0..20 {
                let facts = self.facts();
                let running: BTreeSet<u64> =
                    (1..=pods(replicas, Some(&facts), &BTreeSet::new())).collect();
                match plan(replicas, &running, Some(&facts)) {
                    Change::None => return calls,
                    Change::Wait(why) => panic!("stuck: {why}"),
                    c @ Change::Add { id } => {
                        self.add(id);
                        calls.push(c);
                    }
                    Change::SetVoters(ids) => {
                        self.set_voters(&ids);
                        calls.push(Change::SetVoters(ids));
                    }
                }
            }
            panic!("did not converge: {calls:?}");
        }

        fn voters(&self) -> Vec<u64> {
            self.members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.id)
                .collect()
        }
    }

    /// 1 → 3 → 5 → 3: learners first, promoted together; scale-down in one
    /// change; never an even number of voters at rest.
    #[test]
    fn scaling_one_three_five_three_makes_these_calls_in_this_order() {
        let mut g = Group::of_one();
        assert_eq!(
            g.reconcile(3),
            vec![
                Change::Add { id: 2 },
                Change::Add { id: 3 },
                Change::SetVoters(vec![1, 2, 3]),
            ]
        );
        assert_eq!(
            g.reconcile(5),
            vec![
                Change::Add { id: 4 },
                Change::Add { id: 5 },
                Change::SetVoters(vec![1, 2, 3, 4, 5]),
            ]
        );
        assert_eq!(g.reconcile(3), vec![Change::SetVoters(vec![1, 2, 3])]);
        assert_eq!(g.voters(), vec![1, 2, 3]);
        assert_eq!(g.reconcile(3), vec![], "at rest nothing is called");
    }

    #[test]
    fn a_member_on_an_empty_volume_is_removed_then_added_again() {
        let mut g = Group::of_one();
        g.reconcile(3);
        g.members[1].on_new_volume = true; // member 2
        let calls = g.reconcile(3);
        assert_eq!(
            calls,
            vec![
                Change::SetVoters(vec![1, 3]),
                Change::Add { id: 2 },
                Change::SetVoters(vec![1, 2, 3]),
            ]
        );
        assert!(!g.members.iter().any(|m| m.on_new_volume));
    }

    #[test]
    fn learners_are_promoted_only_when_caught_up_and_pods_wait() {
        let mut g = Group::of_one();
        g.add(2);
        g.add(3);
        g.members[2].lag = MAX_PROMOTE_LAG + 1;
        let all: BTreeSet<u64> = [1, 2, 3].into();
        assert!(
            matches!(plan(3, &all, Some(&g.facts())), Change::Wait(w) if w.contains("learner 3"))
        );
        // A wanted member whose pod does not run yet is waited for.
        let g = Group::of_one();
        assert!(matches!(
            plan(3, &[1].into(), Some(&g.facts())),
            Change::Wait(w) if w.contains("pod of coordinator 2")
        ));
        assert_eq!(
            plan(3, &[1, 3].into(), Some(&g.facts())),
            Change::Add { id: 3 }
        );
    }

    #[test]
    fn nothing_changes_without_a_leader_or_an_answer() {
        let mut g = Group::of_one();
        assert!(matches!(plan(3, &[1, 2, 3].into(), None), Change::Wait(_)));
        g.members[0].role = "candidate".into();
        assert!(matches!(
            plan(3, &[1, 2, 3].into(), Some(&g.facts())),
            Change::Wait(w) if w.contains("no leader")
        ));
        // The only voter on a new volume: nothing to remove it in favour of.
        let mut g = Group::of_one();
        g.members[0].on_new_volume = true;
        assert!(matches!(
            plan(1, &[1].into(), Some(&g.facts())),
            Change::Wait(_)
        ));
    }

    /// Pods of members the group still counts stay until it lets them go.
    #[test]
    fn pods_of_voters_stay_until_they_leave_the_group() {
        let mut g = Group::of_one();
        g.reconcile(5);
        assert_eq!(pods(3, Some(&g.facts()), &BTreeSet::new()), 5);
        g.reconcile(3);
        assert_eq!(pods(3, Some(&g.facts()), &BTreeSet::new()), 3);
        assert_eq!(pods(3, None, &[1, 2, 3, 4, 5].into()), 5, "unknown: keep");
        assert_eq!(pods(5, None, &[1].into()), 5);
    }
}
