//! Pure mapping of the coordinator's view of each datanode onto the
//! Kubernetes Node it runs on, as the label `dfs.io/datanode`
//! (`ready` | `full` | `unhealthy`), so client workloads can use node affinity
//! to run next to healthy storage.

use std::collections::{BTreeMap, BTreeSet};

use super::roll::PodView;
use crate::coordinator::{ClusterFacts, NodeState};

/// Label value for a datanode state.
pub fn label_value(state: Option<NodeState>) -> &'static str {
    match state {
        Some(NodeState::Healthy) => "ready",
        Some(NodeState::Full) => "full",
        _ => "unhealthy",
    }
}

/// Label changes: node name → new value (`None` removes the label).
/// `current` holds the label value of every node (None when absent). When the
/// coordinator could not be asked, nodes keep their labels (no flapping);
/// nodes no longer running a datanode lose the label.
pub fn label_changes(
    current: &BTreeMap<String, Option<String>>,
    datanode_pods: &[PodView],
    facts: Option<&ClusterFacts>,
) -> BTreeMap<String, Option<String>> {
    let hosts: BTreeSet<&str> = datanode_pods
        .iter()
        .filter(|p| !p.terminating)
        .filter_map(|p| p.node.as_deref())
        .collect();
    let mut out = BTreeMap::new();
    for (node, value) in current {
        let want = if hosts.contains(node.as_str()) {
            match facts {
                Some(f) => Some(label_value(f.node_on(node).and_then(|n| n.state)).to_string()),
                None => continue,
            }
        } else {
            None
        };
        if &want != value {
            out.insert(node.clone(), want);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::DatanodeFact;

    #[test]
    fn states_become_labels_and_stale_labels_go() {
        let current = BTreeMap::from([
            ("n1".to_string(), None),
            ("n2".to_string(), Some("ready".to_string())),
            ("n3".to_string(), Some("ready".to_string())),
            ("n4".to_string(), Some("ready".to_string())),
        ]);
        let pod = |n: &str| PodView {
            name: format!("p-{n}"),
            node: Some(n.into()),
            hash: None,
            ready: true,
            terminating: false,
        };
        let pods = [pod("n1"), pod("n2"), pod("n3")];
        let facts = ClusterFacts {
            nodes: vec![
                DatanodeFact {
                    node_id: "a".into(),
                    host: "n1".into(),
                    state: Some(NodeState::Full),
                },
                DatanodeFact {
                    node_id: "b".into(),
                    host: "n2".into(),
                    state: Some(NodeState::Healthy),
                },
                DatanodeFact {
                    node_id: "c".into(),
                    host: "n3".into(),
                    state: Some(NodeState::Dead),
                },
            ],
            ..ClusterFacts::default()
        };
        let changes = label_changes(&current, &pods, Some(&facts));
        assert_eq!(
            changes,
            BTreeMap::from([
                ("n1".to_string(), Some("full".to_string())),
                ("n3".to_string(), Some("unhealthy".to_string())),
                ("n4".to_string(), None),
            ])
        );
        // Coordinator unreachable: only the stale label goes.
        let changes = label_changes(&current, &pods, None);
        assert_eq!(changes, BTreeMap::from([("n4".to_string(), None)]));
    }
}
