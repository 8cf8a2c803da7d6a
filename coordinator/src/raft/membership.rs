//! Who is in the coordinator group, and how that changes: bootstrapping a
//! group exactly once, adding a member as a learner under its pinned
//! incarnation, replacing the voters, and the leader's view of which
//! incarnation each member answers with now.
//!
//! The rule behind all of it: a member is its volume. A coordinator that
//! comes back on an empty directory has a new incarnation ([`super::Node`]);
//! it never bootstraps a second group beside a formed one, the group refuses
//! it as the old member, and it serves again only after it was removed and
//! added again (what the operator does, or `dfs coordinators`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_common::tls::Security;
use openraft::{ChangeMembers, Raft};

use super::network::{Identity, hello};
use super::{MemberId, Node, TypeConfig};
pub use crate::config::InitialState;
use crate::config::Peer;

/// How long one Hello may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the leader asks every member who it is.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Most members a group has.
pub const MAX_MEMBERS: usize = 5;

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The request itself cannot work.
    #[error("{0}")]
    Invalid(String),
    /// The group is not in a state that allows it.
    #[error("{0}")]
    Precondition(String),
    /// The member to add did not answer.
    #[error("coordinator {id} at {addr} did not answer: {reason}")]
    Unreachable {
        id: MemberId,
        addr: String,
        reason: String,
    },
    /// Raft refused (not the leader, a change in progress, ...).
    #[error("the group refused the change: {0}")]
    Raft(String),
}

/// What the lowest seed does, given what each other seed answered
/// (`None`: no answer yet).
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Every seed is new: form the group of these nodes.
    Form(BTreeMap<MemberId, Node>),
    /// Some seeds have not answered: ask again.
    Wait,
    /// A seed already belongs to a group: this member is new beside it and
    /// must be added, never form a second group.
    Refuse(String),
}

/// The bootstrap decision for member `me` with `seeds` (this one included)
/// and the Hello answers `(id, incarnation, initialized)` by seed id.
pub fn bootstrap_decision(
    me: Identity,
    seeds: &[Peer],
    answers: &BTreeMap<MemberId, Option<(MemberId, u64, bool)>>,
) -> Bootstrap {
    let mut nodes = BTreeMap::new();
    for p in seeds {
        if p.id == me.id {
            nodes.insert(
                p.id,
                Node {
                    addr: p.url.clone(),
                    incarnation: me.incarnation,
                },
            );
            continue;
        }
        match answers.get(&p.id).copied().flatten() {
            None => return Bootstrap::Wait,
            Some((id, _, _)) if id != p.id => {
                return Bootstrap::Refuse(format!(
                    "{} answers as coordinator {id}, but --peers names it {}",
                    p.url, p.id
                ));
            }
            Some((_, _, true)) => {
                return Bootstrap::Refuse(format!(
                    "coordinator {} ({}) already belongs to a group, so this member came back on a \
                     new volume: it will not form a second group; remove it from the group and add \
                     it again",
                    p.id, p.url
                ));
            }
            Some((_, incarnation, false)) => {
                nodes.insert(
                    p.id,
                    Node {
                        addr: p.url.clone(),
                        incarnation,
                    },
                );
            }
        }
    }
    Bootstrap::Form(nodes)
}

/// Forms the group of `seeds` once, if this member is the lowest seed, the
/// group may be new, this member holds no log, and every other seed answers
/// that it holds none either. Returns when formed, refused or not ours.
pub async fn bootstrap(
    raft: Raft<TypeConfig>,
    me: Identity,
    seeds: Vec<Peer>,
    state: InitialState,
    security: Security,
) {
    let lowest = seeds.iter().map(|p| p.id).min();
    if state == InitialState::Existing || lowest != Some(me.id) {
        return;
    }
    if raft.is_initialized().await.unwrap_or(true) {
        return;
    }
    let mut logged_wait = false;
    loop {
        let mut answers = BTreeMap::new();
        for p in seeds.iter().filter(|p| p.id != me.id) {
            let a = hello(&p.url, HELLO_TIMEOUT, &security)
                .await
                .ok()
                .map(|h| (h.id, h.incarnation, h.initialized));
            answers.insert(p.id, a);
        }
        match bootstrap_decision(me, &seeds, &answers) {
            Bootstrap::Form(nodes) => {
                match raft.initialize(nodes).await {
                    Ok(()) => tracing::info!(peers = seeds.len(), "coordinator group bootstrapped"),
                    Err(e) => tracing::info!("group not bootstrapped here: {e}"),
                }
                return;
            }
            Bootstrap::Refuse(why) => {
                tracing::error!("not bootstrapping a coordinator group: {why}");
                return;
            }
            Bootstrap::Wait => {
                if !logged_wait {
                    tracing::info!(
                        "waiting for every --peers member to answer before forming the group"
                    );
                    logged_wait = true;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// The incarnation each member answered with when the leader last asked
/// (0: it did not answer).
#[derive(Debug, Default)]
pub struct Reported(Mutex<BTreeMap<MemberId, u64>>);

impl Reported {
    /// What member `id` last answered.
    pub fn get(&self, id: MemberId) -> u64 {
        self.0
            .lock()
            .expect("reported lock poisoned")
            .get(&id)
            .copied()
            .unwrap_or(0)
    }
}

/// On the leader, asks every other member who it is each second, so the
/// status shows a member that came back on a new volume.
pub fn spawn_prober(
    raft: Raft<TypeConfig>,
    me: Identity,
    reported: Arc<Reported>,
    security: Security,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tick.tick().await;
            let m = raft.metrics().borrow().clone();
            if m.running_state.is_err() {
                return;
            }
            if m.current_leader != Some(me.id) {
                continue;
            }
            let nodes: Vec<(MemberId, String)> = m
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != me.id)
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            let mut now = BTreeMap::from([(me.id, me.incarnation)]);
            for (id, addr) in nodes {
                let inc = match hello(&addr, HELLO_TIMEOUT, &security).await {
                    Ok(h) if h.id == id => h.incarnation,
                    _ => 0,
                };
                now.insert(id, inc);
            }
            *reported.0.lock().expect("reported lock poisoned") = now;
        }
    });
}

/// The membership this member knows now.
fn current(raft: &Raft<TypeConfig>) -> openraft::Membership<MemberId, Node> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .clone()
}

fn raft_err(e: impl std::fmt::Display) -> MembershipError {
    MembershipError::Raft(e.to_string())
}

/// Adds coordinator `id` at `addr` as a learner under the incarnation it
/// answers with (it then catches up in the background). The same member again is
/// a no-op; the same id on another volume is refused until removed.
pub async fn add_learner(
    raft: &Raft<TypeConfig>,
    id: MemberId,
    addr: &str,
    security: &Security,
) -> Result<(), MembershipError> {
    if id == 0 || id > u16::MAX as u64 {
        return Err(MembershipError::Invalid(format!(
            "coordinator id {id} is out of range (1..=65535)"
        )));
    }
    if !(addr.starts_with("http://") || addr.starts_with("https://")) || addr.len() > 256 {
        return Err(MembershipError::Invalid(format!(
            "{addr:?}: the address must be http(s)://host:port"
        )));
    }
    let h = hello(addr, HELLO_TIMEOUT * 3, security)
        .await
        .map_err(|s| MembershipError::Unreachable {
            id,
            addr: addr.to_string(),
            reason: s.message().to_string(),
        })?;
    if h.id != id {
        return Err(MembershipError::Invalid(format!(
            "{addr} answers as coordinator {}, not {id}",
            h.id
        )));
    }
    let membership = current(raft);
    let voter = membership.voter_ids().any(|v| v == id);
    if let Some(n) = membership.get_node(&id) {
        if n.incarnation == h.incarnation && n.addr == addr {
            return Ok(());
        }
        if !voter && !h.initialized {
            // A learner that came back empty (or moved): it never voted, so
            // it is let go and added again as the member that answers now.
            raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(raft_err)?;
            tracing::info!(id, "learner on a new volume removed, adding it again");
            return Box::pin(add_learner(raft, id, addr, security)).await;
        }
        return Err(MembershipError::Precondition(format!(
            "coordinator {id} is already a member ({n}); the one at {addr} is incarnation {:016x}: \
             remove the old member first (SetCoordinatorVoters without it)",
            h.incarnation
        )));
    }
    if h.initialized {
        return Err(MembershipError::Precondition(format!(
            "coordinator {id} at {addr} already belongs to a group: only a member on a new \
             volume can be added"
        )));
    }
    if membership.nodes().count() > MAX_MEMBERS {
        return Err(MembershipError::Precondition(format!(
            "the group already has {} members",
            membership.nodes().count()
        )));
    }
    // Not blocking: the call returns once the learner is in the
    // membership; catching up (a snapshot of a large namespace can take
    // longer than a caller's deadline) shows as its lag, which promotion
    // waits on.
    raft.add_learner(
        id,
        Node {
            addr: addr.to_string(),
            incarnation: h.incarnation,
        },
        false,
    )
    .await
    .map_err(raft_err)?;
    Ok(())
}

/// The voter set after [`set_voters`] with `want`, checked against the
/// current `voters` and `members` (voters and learners).
pub fn check_voters(
    want: &[MemberId],
    members: &BTreeSet<MemberId>,
) -> Result<BTreeSet<MemberId>, MembershipError> {
    let set: BTreeSet<MemberId> = want.iter().copied().collect();
    if set.len() != want.len() {
        return Err(MembershipError::Invalid("voter ids repeat".into()));
    }
    if set.is_empty() || set.len() > MAX_MEMBERS {
        return Err(MembershipError::Invalid(format!(
            "a group has 1 to {MAX_MEMBERS} voters, not {}",
            set.len()
        )));
    }
    if let Some(id) = set.iter().find(|id| !members.contains(id)) {
        return Err(MembershipError::Precondition(format!(
            "coordinator {id} is not a member: add it as a learner first (AddCoordinator)"
        )));
    }
    Ok(set)
}

/// Makes `want` the voters: learners in it are promoted, voters not in it
/// leave the group. One joint-consensus change.
pub async fn set_voters(raft: &Raft<TypeConfig>, want: &[MemberId]) -> Result<(), MembershipError> {
    let membership = current(raft);
    let members: BTreeSet<MemberId> = membership.nodes().map(|(id, _)| *id).collect();
    let set = check_voters(want, &members)?;
    let voters: BTreeSet<MemberId> = membership.voter_ids().collect();
    if set == voters {
        return Ok(());
    }
    raft.change_membership(ChangeMembers::ReplaceAllVoters(set), false)
        .await
        .map_err(raft_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> Vec<Peer> {
        (1..=3)
            .map(|i| Peer {
                id: i,
                url: format!("http://c{i}:7000"),
            })
            .collect()
    }

    const ME: Identity = Identity {
        id: 1,
        incarnation: 11,
    };

    #[test]
    fn a_group_forms_only_when_every_seed_is_new_and_pins_their_incarnations() {
        let mut answers = BTreeMap::from([(2, Some((2, 22, false))), (3, None)]);
        assert_eq!(bootstrap_decision(ME, &seeds(), &answers), Bootstrap::Wait);
        answers.insert(3, Some((3, 33, false)));
        let Bootstrap::Form(nodes) = bootstrap_decision(ME, &seeds(), &answers) else {
            panic!("should form");
        };
        let incs: Vec<u64> = nodes.values().map(|n| n.incarnation).collect();
        assert_eq!(incs, vec![11, 22, 33]);
    }

    /// The lowest seed on a wiped volume, its peers still in the group:
    /// it must not form a second, empty group beside them.
    #[test]
    fn a_seed_on_a_new_volume_beside_a_formed_group_never_bootstraps() {
        let answers = BTreeMap::from([(2, Some((2, 22, true))), (3, None)]);
        assert!(matches!(
            bootstrap_decision(ME, &seeds(), &answers),
            Bootstrap::Refuse(why) if why.contains("already belongs to a group")
        ));
        let wrong = BTreeMap::from([(2, Some((5, 22, false))), (3, Some((3, 33, false)))]);
        assert!(matches!(
            bootstrap_decision(ME, &seeds(), &wrong),
            Bootstrap::Refuse(_)
        ));
    }

    #[test]
    fn a_group_of_one_forms_at_once() {
        let one = &seeds()[..1];
        assert!(matches!(
            bootstrap_decision(ME, one, &BTreeMap::new()),
            Bootstrap::Form(n) if n.len() == 1
        ));
    }

    #[test]
    fn voters_are_members_one_to_five_without_repeats() {
        let members = BTreeSet::from([1, 2, 3, 4]);
        assert_eq!(
            check_voters(&[1, 2, 3], &members).unwrap(),
            BTreeSet::from([1, 2, 3])
        );
        assert!(matches!(
            check_voters(&[1, 5], &members),
            Err(MembershipError::Precondition(_))
        ));
        assert!(matches!(
            check_voters(&[], &members),
            Err(MembershipError::Invalid(_))
        ));
        assert!(matches!(
            check_voters(&[1, 1], &members),
            Err(MembershipError::Invalid(_))
        ));
    }
}
