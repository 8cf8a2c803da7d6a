//! Replica placement (pure: the caller passes the candidates and the RNG).
//!
//! Candidates are nodes with room and health (the caller filters them). For
//! each replica, the candidates that add the most diversity win: first a host
//! not used yet, then a new zone, then a new rack; among equals, one is drawn
//! at random weighted by free space. A node is never chosen twice.

use std::collections::HashSet;

use rand::Rng;

use crate::namespace::NodeId;

/// A node placement may choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Node id.
    pub node_id: NodeId,
    /// Zone label ("" when unknown).
    pub zone: String,
    /// Rack label ("" when unknown).
    pub rack: String,
    /// Host label ("" when unknown: the node counts as its own host).
    pub host: String,
    /// Free bytes (after what was already planned on it).
    pub free_bytes: u64,
}

impl Candidate {
    fn host_key(&self) -> &str {
        if self.host.is_empty() {
            self.node_id.as_str()
        } else {
            &self.host
        }
    }
}

/// Topology already used by existing replicas of a chunk.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    hosts: HashSet<String>,
    zones: HashSet<String>,
    racks: HashSet<(String, String)>,
}

impl Spread {
    /// Records a node's topology as used.
    pub fn add(&mut self, c: &Candidate) {
        self.hosts.insert(c.host_key().to_string());
        self.zones.insert(c.zone.clone());
        self.racks.insert((c.zone.clone(), c.rack.clone()));
    }

    fn score(&self, c: &Candidate) -> (bool, bool, bool) {
        (
            !self.hosts.contains(c.host_key()),
            !self.zones.contains(&c.zone),
            !self.racks.contains(&(c.zone.clone(), c.rack.clone())),
        )
    }
}

/// Chooses up to `count` distinct candidates with at least `bytes` free,
/// spreading away from `spread` (the chunk's existing replicas). Returns
/// indices into `candidates`, best first; fewer than `count` when there are
/// not enough candidates.
pub fn choose(
    candidates: &[Candidate],
    count: usize,
    bytes: u64,
    mut spread: Spread,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let mut chosen: Vec<usize> = Vec::with_capacity(count);
    while chosen.len() < count {
        let mut best: Option<(bool, bool, bool)> = None;
        let mut tier: Vec<usize> = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            if c.free_bytes < bytes || chosen.contains(&i) {
                continue;
            }
            let s = spread.score(c);
            match best {
                Some(b) if s < b => {}
                Some(b) if s == b => tier.push(i),
                _ => {
                    best = Some(s);
                    tier.clear();
                    tier.push(i);
                }
            }
        }
        if tier.is_empty() {
            break;
        }
        let total: u128 = tier
            .iter()
            .map(|&i| u128::from(candidates[i].free_bytes.max(1)))
            .sum();
        let mut pick = rng.random_range(0..total);
        let mut winner = tier[tier.len() - 1];
        for &i in &tier {
            let w = u128::from(candidates[i].free_bytes.max(1));
            if pick < w {
                winner = i;
                break;
            }
            pick -= w;
        }
        spread.add(&candidates[winner]);
        chosen.push(winner);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn cand(id: &str, zone: &str, host: &str, free: u64) -> Candidate {
        Candidate {
            node_id: crate::test_ids::named(id),
            zone: zone.into(),
            rack: String::new(),
            host: host.into(),
            free_bytes: free,
        }
    }

    #[test]
    fn never_colocates_and_honours_zones() {
        let nodes: Vec<Candidate> = (0..6)
            .map(|i| {
                cand(
                    &format!("n{i}"),
                    &format!("z{}", i % 3),
                    &format!("h{i}"),
                    100,
                )
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let got = choose(&nodes, 3, 10, Spread::default(), &mut rng);
            assert_eq!(got.len(), 3);
            let zones: HashSet<_> = got.iter().map(|&i| nodes[i].zone.clone()).collect();
            assert_eq!(zones.len(), 3, "one replica per zone");
            let ids: HashSet<_> = got.iter().collect();
            assert_eq!(ids.len(), 3, "never two on one node");
        }
    }

    #[test]
    fn hosts_come_before_zones_and_nodes_are_never_reused() {
        // Two nodes on one host in zone a, one node on another host in zone a,
        // one in zone b on the first host's sibling.
        let nodes = vec![
            cand("a1", "a", "h1", 100),
            cand("a2", "a", "h1", 100),
            cand("a3", "a", "h2", 100),
        ];
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..100 {
            let got = choose(&nodes, 2, 1, Spread::default(), &mut rng);
            let hosts: HashSet<_> = got.iter().map(|&i| nodes[i].host.clone()).collect();
            assert_eq!(hosts.len(), 2);
        }
        // Asking for more than there are nodes gives each node once.
        let got = choose(&nodes, 5, 1, Spread::default(), &mut rng);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn skips_full_nodes_and_prefers_free_space() {
        let nodes = vec![
            cand("big", "", "", 1_000_000),
            cand("small", "", "", 1_000),
            cand("full", "", "", 5),
        ];
        let mut rng = StdRng::seed_from_u64(3);
        let mut big = 0;
        for _ in 0..1000 {
            let got = choose(&nodes, 1, 10, Spread::default(), &mut rng);
            assert_ne!(nodes[got[0]].node_id, "full");
            if nodes[got[0]].node_id == "big" {
                big += 1;
            }
        }
        assert!(big > 950, "weighted toward free space: {big}");
    }

    #[test]
    fn repair_targets_avoid_existing_zones() {
        let nodes = [
            cand("a", "z1", "h1", 100),
            cand("b", "z1", "h2", 100),
            cand("c", "z2", "h3", 100),
        ];
        let mut spread = Spread::default();
        spread.add(&nodes[0]);
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..50 {
            let got = choose(&nodes[1..], 1, 1, spread.clone(), &mut rng);
            assert_eq!(nodes[1 + got[0]].node_id, "c");
        }
    }
}
