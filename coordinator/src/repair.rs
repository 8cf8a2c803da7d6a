//! Re-replication planning (pure: needs in, repair orders out).
//!
//! The driver ([`crate::cluster`]) describes every chunk that has fewer
//! counting replicas than its factor as a [`Need`]; [`plan`] orders them most
//! endangered first (one replica before two), and for each picks a source that
//! holds the chunk and a target chosen by [`crate::placement`], both below the
//! per-node stream limit. [`excess`] picks which replicas of an
//! over-replicated chunk to delete.

use std::collections::HashMap;

use rand::Rng;

use crate::namespace::{ChunkId, NodeId};
use crate::placement::{self, Candidate, Spread};

/// A chunk below its replication factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// Chunk id.
    pub chunk_id: ChunkId,
    /// Size in bytes.
    pub size: u64,
    /// Wanted replicas.
    pub replication: u32,
    /// Nodes whose replicas count toward the factor.
    pub good: Vec<NodeId>,
    /// Nodes able to send the chunk now.
    pub sources: Vec<NodeId>,
    /// Every node holding the chunk (never a target).
    pub holders: Vec<NodeId>,
    /// Repairs of this chunk already in flight.
    pub inflight: u32,
}

impl Need {
    /// Replicas still to create.
    pub fn missing(&self) -> u32 {
        self.replication
            .saturating_sub(self.good.len() as u32 + self.inflight)
    }
}

/// Copy `chunk_id` from `source` to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Chunk id.
    pub chunk_id: ChunkId,
    /// Node that sends it.
    pub source: NodeId,
    /// Node that receives it.
    pub target: NodeId,
    /// Size in bytes.
    pub size: u64,
}

/// Plans repairs. `busy` counts the streams each node already runs (updated
/// with the new orders); no node exceeds `max_streams`. `topology` describes
/// every known node (for spreading); `targets` are the nodes that may
/// receive new replicas.
pub fn plan(
    mut needs: Vec<Need>,
    targets: &[Candidate],
    topology: &HashMap<NodeId, Candidate>,
    busy: &mut HashMap<NodeId, u32>,
    max_streams: u32,
    rng: &mut impl Rng,
) -> Vec<Order> {
    needs.retain(|n| n.missing() > 0);
    needs.sort_by(|a, b| {
        (a.good.len() as u32 + a.inflight)
            .cmp(&(b.good.len() as u32 + b.inflight))
            .then_with(|| a.chunk_id.cmp(&b.chunk_id))
    });
    let mut free: Vec<Candidate> = targets.to_vec();
    let mut orders = Vec::new();
    for need in needs {
        let mut spread = Spread::default();
        for g in &need.good {
            if let Some(c) = topology.get(g) {
                spread.add(c);
            }
        }
        let mut taken: Vec<NodeId> = Vec::new();
        for _ in 0..need.missing() {
            let Some(source) = need
                .sources
                .iter()
                .filter(|s| busy.get(*s).copied().unwrap_or(0) < max_streams)
                .min_by_key(|s| busy.get(*s).copied().unwrap_or(0))
                .cloned()
            else {
                break;
            };
            let eligible: Vec<usize> = free
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    !need.holders.contains(&c.node_id)
                        && !taken.contains(&c.node_id)
                        && busy.get(&c.node_id).copied().unwrap_or(0) < max_streams
                })
                .map(|(i, _)| i)
                .collect();
            let pool: Vec<Candidate> = eligible.iter().map(|&i| free[i].clone()).collect();
            let Some(&pick) = placement::choose(&pool, 1, need.size, spread.clone(), rng).first()
            else {
                break;
            };
            let target = &mut free[eligible[pick]];
            target.free_bytes -= need.size;
            spread.add(target);
            let target = target.node_id.clone();
            *busy.entry(source.clone()).or_default() += 1;
            *busy.entry(target.clone()).or_default() += 1;
            taken.push(target.clone());
            orders.push(Order {
                chunk_id: need.chunk_id.clone(),
                source,
                target,
                size: need.size,
            });
        }
    }
    orders
}

/// Chooses which of `holders` (replicas on healthy nodes) to delete so that
/// `replication` remain, keeping the widest spread: a replica sharing its
/// host (then zone) with another goes first, then the one on the fullest node.
pub fn excess(holders: &[Candidate], replication: u32) -> Vec<NodeId> {
    let mut keep: Vec<Candidate> = holders.to_vec();
    let mut victims = Vec::new();
    while keep.len() > replication as usize {
        let shared = |c: &Candidate, keep: &[Candidate]| {
            let host = |x: &Candidate| -> String {
                if x.host.is_empty() {
                    x.node_id.to_string()
                } else {
                    x.host.clone()
                }
            };
            let hosts = keep
                .iter()
                .filter(|o| o.node_id != c.node_id && host(o) == host(c))
                .count();
            let zones = keep
                .iter()
                .filter(|o| o.node_id != c.node_id && o.zone == c.zone)
                .count();
            (hosts, zones, std::cmp::Reverse(c.free_bytes))
        };
        let victim = (0..keep.len())
            .max_by_key(|&i| shared(&keep[i], &keep))
            .expect("keep is longer than replication");
        victims.push(keep.remove(victim).node_id);
    }
    victims
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ids::{named as id, nodes};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn cand(name: &str) -> Candidate {
        Candidate {
            node_id: id(name),
            zone: String::new(),
            rack: String::new(),
            host: String::new(),
            free_bytes: 1 << 30,
        }
    }

    fn need(name: &str, good: &[&str]) -> Need {
        Need {
            chunk_id: id(name),
            size: 10,
            replication: 3,
            good: nodes(good),
            sources: nodes(good),
            holders: nodes(good),
            inflight: 0,
        }
    }

    fn topo(ids: &[&str]) -> (Vec<Candidate>, HashMap<NodeId, Candidate>) {
        let v: Vec<Candidate> = ids.iter().map(|i| cand(i)).collect();
        let m = v.iter().map(|c| (c.node_id.clone(), c.clone())).collect();
        (v, m)
    }

    #[test]
    fn most_endangered_first_under_throttle() {
        let (targets, topology) = topo(&["a", "b", "c", "d", "e"]);
        let needs = vec![need("two", &["a", "b"]), need("one", &["c"])];
        let mut busy = HashMap::new();
        // One stream per node: "one" (a single replica) goes first.
        let orders = plan(
            needs,
            &targets,
            &topology,
            &mut busy,
            1,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(orders[0].chunk_id, id::<ChunkId>("one"));
        assert_eq!(orders[0].source, "c");
        for o in &orders {
            assert!(!["a", "b"].contains(&o.target.as_str()) || o.chunk_id == id::<ChunkId>("one"));
        }
        assert!(busy.values().all(|&b| b <= 1), "{busy:?}");
    }

    #[test]
    fn targets_never_hold_the_chunk_and_inflight_counts() {
        let (targets, topology) = topo(&["a", "b", "c", "d"]);
        let mut n = need("x", &["a"]);
        n.holders.push(id("b")); // e.g. a dead node's replica
        let orders = plan(
            vec![n.clone()],
            &targets,
            &topology,
            &mut HashMap::new(),
            10,
            &mut StdRng::seed_from_u64(2),
        );
        assert_eq!(orders.len(), 2);
        let mut t: Vec<_> = orders.iter().map(|o| o.target.clone()).collect();
        t.sort();
        assert_eq!(t, ["c", "d"]);
        n.inflight = 2;
        assert!(
            plan(
                vec![n],
                &targets,
                &topology,
                &mut HashMap::new(),
                10,
                &mut StdRng::seed_from_u64(2)
            )
            .is_empty()
        );
    }

    #[test]
    fn no_source_below_the_limit_means_no_order() {
        let (targets, topology) = topo(&["a", "b"]);
        let mut busy = HashMap::from([(id("a"), 2)]);
        assert!(
            plan(
                vec![need("x", &["a"])],
                &targets,
                &topology,
                &mut busy,
                2,
                &mut StdRng::seed_from_u64(3)
            )
            .is_empty()
        );
    }

    #[test]
    fn excess_removes_colocated_replicas_first() {
        let mut a = cand("a");
        a.host = "h1".into();
        let mut b = cand("b");
        b.host = "h1".into();
        b.free_bytes = 5;
        let c = cand("c");
        let d = cand("d");
        assert_eq!(excess(&[a, b, c, d], 3), ["b"]);
    }
}
