//! Building a [`Namespace`] from a snapshot, entry by entry.
//!
//! [`Namespace::restore`] takes a decoded [`Snapshot`](super::Snapshot); [`RestoreSeed`]
//! decodes one straight into the namespace, an entry at a time, so the
//! whole decoded image (about as large as the namespace itself) never
//! exists beside it. With ten million entries that image was gigabytes of
//! memory touched for the first time, which on this kind of machine costs
//! more than the decoding.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{
    ChunkKey, ChunkOwner, ClusterId, Entry, Namespace, NamespaceError, NodeRecord, OnceRecord,
    SnapshotEntry, Upload,
};
use crate::path::NsPath;
use dfs_common::id::NodeId;

/// A namespace being rebuilt from a snapshot's entries, parents first.
pub(super) struct Restorer {
    ns: Namespace,
    /// One copy of each replica's node id, shared by every chunk on it.
    node_ids: HashSet<NodeId>,
}

impl Restorer {
    /// An empty namespace with room for `chunks` chunk ids.
    pub(super) fn new(chunks: usize) -> Restorer {
        Restorer {
            ns: Namespace {
                chunk_index: HashMap::with_capacity(chunks),
                ..Namespace::default()
            },
            node_ids: HashSet::new(),
        }
    }

    /// Adds one entry (its parent directories are created if missing).
    pub(super) fn entry(&mut self, entry: SnapshotEntry) -> Result<(), NamespaceError> {
        let ns = &mut self.ns;
        match entry {
            SnapshotEntry::Dir { path, meta } => {
                let p = NsPath::parse(&path)?;
                ns.create_dirs(&p, meta.created_ms);
                if let Entry::Dir(d) = ns
                    .dir_mut(&p.parent())?
                    .children
                    .get_mut(p.name())
                    .expect("created above")
                {
                    d.meta = meta;
                }
            }
            SnapshotEntry::File { path, mut file } => {
                let p = NsPath::parse(&path)?;
                for c in &mut file.chunks {
                    for n in &mut c.replicas {
                        match self.node_ids.get(n) {
                            Some(shared) => *n = shared.clone(),
                            None => {
                                self.node_ids.insert(n.clone());
                            }
                        }
                    }
                }
                ns.create_dirs(&p.parent(), file.created_ms);
                ns.files += 1;
                ns.chunks += file.chunks.len() as u64;
                for c in &file.chunks {
                    ns.chunk_index.insert(
                        ChunkKey::of(&c.id),
                        ChunkOwner::File {
                            size: c.size,
                            replication: file.replication,
                            checksum: c.checksum,
                            algorithm: c.algorithm,
                        },
                    );
                }
                ns.dir_mut(&p.parent())?
                    .children
                    .insert(p.name().into(), Entry::File(Box::new(file)));
            }
        }
        Ok(())
    }

    /// The namespace, with the snapshot's other parts.
    pub(super) fn finish(
        self,
        cluster_id: Option<ClusterId>,
        uploads: Vec<Upload>,
        nodes: Vec<NodeRecord>,
        once: Vec<OnceRecord>,
    ) -> Namespace {
        let mut ns = self.ns;
        ns.cluster_id = cluster_id;
        for upload in uploads {
            for c in &upload.chunks {
                ns.chunk_index
                    .insert(ChunkKey::of(&c.chunk_id), ChunkOwner::Upload);
            }
            ns.uploads.insert(upload.upload_id.clone(), upload);
        }
        for node in nodes {
            let key = self.node_ids.get(&node.node_id).cloned();
            ns.nodes
                .insert(key.unwrap_or_else(|| node.node_id.clone()), node);
        }
        for r in once {
            ns.once.order.push_back((r.request_id.clone(), r.at_ms));
            ns.once.outcomes.insert(r.request_id, r.outcome);
        }
        ns
    }
}

/// Decodes a serialised [`Snapshot`](super::Snapshot) (any serde format it was written in)
/// into a [`Namespace`], entry by entry: the same namespace as
/// `Namespace::restore(Snapshot::deserialize(d)?)`, without the decoded
/// snapshot in memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreSeed;

/// The fields of [`Snapshot`](super::Snapshot); others are skipped, as serde's derive does.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    ClusterId,
    Entries,
    Uploads,
    Nodes,
    Once,
    #[serde(other)]
    Other,
}

/// The cluster id under the snapshot's own rule ("" for none).
#[derive(Deserialize)]
struct SnapshotClusterId(#[serde(with = "super::cluster_id_or_empty")] Option<ClusterId>);

impl<'de> DeserializeSeed<'de> for RestoreSeed {
    type Value = Namespace;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Namespace, D::Error> {
        d.deserialize_struct(
            "Snapshot",
            &["cluster_id", "entries", "uploads", "nodes", "once"],
            SnapshotVisitor,
        )
    }
}

struct SnapshotVisitor;

impl<'de> Visitor<'de> for SnapshotVisitor {
    type Value = Namespace;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a namespace snapshot")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Namespace, A::Error> {
        let mut cluster_id = None;
        let mut restorer = None;
        let (mut uploads, mut nodes, mut once) = (None, None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::ClusterId => {
                    cluster_id = Some(map.next_value::<SnapshotClusterId>()?.0);
                }
                Field::Entries => {
                    if restorer.is_some() {
                        return Err(de::Error::duplicate_field("entries"));
                    }
                    restorer = Some(map.next_value_seed(EntriesSeed)?);
                }
                Field::Uploads => uploads = Some(map.next_value()?),
                Field::Nodes => nodes = Some(map.next_value()?),
                Field::Once => once = Some(map.next_value()?),
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // The fields the derived `Snapshot` requires are required here too.
        let cluster_id = cluster_id.ok_or_else(|| de::Error::missing_field("cluster_id"))?;
        let restorer = restorer.ok_or_else(|| de::Error::missing_field("entries"))?;
        let uploads = uploads.ok_or_else(|| de::Error::missing_field("uploads"))?;
        let nodes = nodes.ok_or_else(|| de::Error::missing_field("nodes"))?;
        Ok(restorer.finish(cluster_id, uploads, nodes, once.unwrap_or_default()))
    }
}

/// The `entries` sequence, each element added as it is decoded.
struct EntriesSeed;

impl<'de> DeserializeSeed<'de> for EntriesSeed {
    type Value = Restorer;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Restorer, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed {
    type Value = Restorer;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of snapshot entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Restorer, A::Error> {
        // Most files have one chunk; the map grows if they have more.
        let mut r = Restorer::new(seq.size_hint().unwrap_or(0));
        while let Some(entry) = seq.next_element::<SnapshotEntry>()? {
            r.entry(entry).map_err(de::Error::custom)?;
        }
        Ok(r)
    }
}

impl Namespace {
    /// [`RestoreSeed`] over the JSON of a snapshot (tests).
    #[cfg(test)]
    pub(super) fn restore_streamed(json: &[u8]) -> Result<Namespace, serde_json::Error> {
        RestoreSeed.deserialize(&mut serde_json::Deserializer::from_slice(json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot without `once` (every one before it existed) restores; one
    /// without its entries is refused, as the derived decoder refuses it;
    /// an unknown field is skipped; an entry under a bad path fails the
    /// whole restore.
    #[test]
    fn a_streamed_restore_keeps_the_derived_rules() {
        let ok = br#"{"cluster_id":"","entries":[{"Dir":{"path":"/a","meta":{"created_ms":1,"modified_ms":2}}}],"uploads":[],"nodes":[],"later":7}"#;
        let ns = Namespace::restore_streamed(ok).unwrap();
        assert_eq!(ns.dir_count(), 2, "the root and /a");
        let missing = br#"{"cluster_id":"","uploads":[],"nodes":[]}"#;
        let e = Namespace::restore_streamed(missing).unwrap_err();
        assert!(e.to_string().contains("entries"), "{e}");
        let bad = br#"{"cluster_id":"","entries":[{"Dir":{"path":"a/../b","meta":{"created_ms":1,"modified_ms":2}}}],"uploads":[],"nodes":[]}"#;
        assert!(Namespace::restore_streamed(bad).is_err());
        let bad_id = br#"{"cluster_id":"nope","entries":[],"uploads":[],"nodes":[]}"#;
        assert!(Namespace::restore_streamed(bad_id).is_err());
    }
}
