//! The ids of dfs, each a newtype with exactly one validation rule, and the
//! one state a datanode can be in.
//!
//! Ids arrive as strings from the wire, from files on disk and from flags.
//! They are parsed once, at that edge, with `TryFrom` (a gRPC handler maps
//! the [`InvalidId`] to INVALID_ARGUMENT with `Status::from`), and code past
//! the edge only sees the typed id: a [`ChunkId`] is the only thing ever
//! turned into a file path, so `../../etc/passwd` cannot reach a file system.
//!
//! | type        | rule                                         | made by            |
//! |-------------|----------------------------------------------|--------------------|
//! | [`ChunkId`]   | 32 lowercase hex characters                | [`ChunkId::random`]  |
//! | [`UploadId`]  | 32 lowercase hex characters                | [`UploadId::random`] |
//! | [`ClusterId`] | 32 lowercase hex characters                | [`ClusterId::random`]|
//! | [`NodeId`]    | 1–128 characters of `[A-Za-z0-9._:-]`      | [`NodeId::random`] or an operator's choice |
//!
//! ```
//! use dfs_common::id::{ChunkId, NodeId};
//!
//! let id = ChunkId::try_from("0123456789abcdef0123456789abcdef").unwrap();
//! assert_eq!(id, "0123456789abcdef0123456789abcdef");
//! // A hostile id never becomes a ChunkId, and the edge answers INVALID_ARGUMENT.
//! let err = ChunkId::parse("../../etc/passwd").unwrap_err();
//! assert_eq!(tonic::Status::from(err).code(), tonic::Code::InvalidArgument);
//! assert!(NodeId::parse("dn-0.rack-a").is_ok());
//! ```

use std::borrow::Borrow;
use std::fmt;

/// Length of the random hex ids (chunk, upload, cluster, generated node ids).
pub const HEX_ID_LEN: usize = dfs_proto::CHUNK_ID_LEN;
/// Longest node id accepted.
pub const MAX_NODE_ID_LEN: usize = 128;

/// A fresh random id: 32 lowercase hex characters (128 random bits). The one
/// generator every id kind uses.
pub fn random_hex_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// True when `s` is 32 lowercase hex characters (the protocol's chunk id
/// rule, which every hex id shares).
fn is_hex_id(s: &str) -> bool {
    dfs_proto::frame::is_valid_chunk_id(s)
}

/// True when `s` is a usable node id.
fn is_node_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NODE_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A string that is not a valid id of `kind`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: expected {rule}")]
pub struct InvalidId {
    /// Which id ("chunk id", "node id", …).
    pub kind: &'static str,
    /// The offending value, cut to 64 characters (it may be hostile).
    pub value: String,
    /// The rule it broke.
    pub rule: &'static str,
}

impl From<InvalidId> for tonic::Status {
    fn from(e: InvalidId) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// How an id kind holds its text. Hex ids are 32 ASCII bytes kept inline (no
/// heap allocation, a clone is a copy: the namespace holds two per chunk);
/// node ids are shared text (a clone is a reference count: every replica
/// entry of a node can point at one copy).
trait Repr: Sized {
    /// `s` has passed the id's rule.
    fn from_valid(s: &str) -> Self;
    fn text(&self) -> &str;
    /// `n` as 32 lowercase hex characters.
    fn from_u128(n: u128) -> Self {
        Self::from_valid(&format!("{n:032x}"))
    }
}

/// 32 lowercase hex characters, inline.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HexText([u8; HEX_ID_LEN]);

impl Repr for HexText {
    fn from_valid(s: &str) -> Self {
        let mut b = [0u8; HEX_ID_LEN];
        b.copy_from_slice(s.as_bytes());
        HexText(b)
    }

    fn text(&self) -> &str {
        // Only ever made from a string that passed the hex rule.
        std::str::from_utf8(&self.0).expect("a hex id is ASCII")
    }

    /// Without a formatted string in between (the coordinator turns its
    /// chunk index's 128-bit keys back into ids this way, per chunk).
    fn from_u128(n: u128) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut b = [0u8; HEX_ID_LEN];
        for (i, d) in b.iter_mut().enumerate() {
            *d = DIGITS[((n >> (4 * (HEX_ID_LEN - 1 - i))) & 0xf) as usize];
        }
        HexText(b)
    }
}

/// Hashes as its text does, so a map keyed by the id can be searched with a
/// `&str` (`Borrow<str>`).
impl std::hash::Hash for HexText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text().hash(state)
    }
}

/// Shared text (node ids: up to 128 characters, few distinct values).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SharedText(std::sync::Arc<str>);

impl Repr for SharedText {
    fn from_valid(s: &str) -> Self {
        SharedText(s.into())
    }

    fn text(&self) -> &str {
        &self.0
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $repr:ty, $kind:literal, $rule:literal, $check:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($repr);

        impl $name {
            /// What kind of id this is, for messages.
            pub const KIND: &'static str = $kind;
            /// The rule a valid id follows, for messages.
            pub const RULE: &'static str = $rule;

            /// Validates `s`.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if $check(s) {
                    Ok(Self(<$repr>::from_valid(s)))
                } else {
                    Err(Self::invalid(s))
                }
            }

            /// The error for `s`, naming the kind and the rule.
            fn invalid(s: &str) -> InvalidId {
                InvalidId {
                    kind: $kind,
                    value: s.chars().take(64).collect(),
                    rule: $rule,
                }
            }

            /// The id whose 128 bits are `n`, written as 32 lowercase hex
            /// characters (valid under every id rule): deterministic ids for
            /// planning and tests.
            pub fn from_u128(n: u128) -> Self {
                Self(<$repr>::from_u128(n))
            }

            /// A fresh random id (128 random bits, from the one generator).
            pub fn random() -> Self {
                Self(<$repr>::from_valid(&random_hex_id()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                self.0.text()
            }

            /// The id as an owned string (for the wire).
            pub fn into_string(self) -> String {
                self.as_str().to_owned()
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(&s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidId;
            fn try_from(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.into_string()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }

        /// Stored as its text (metadata log rows, snapshots, JSON).
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        /// Loaded with the same rule as at the gRPC edge: a stored id that
        /// breaks it is corruption, and loading fails instead of guessing.
        /// Borrowed text is parsed in place (no string is allocated for an
        /// id that is kept inline).
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visit;
                impl serde::de::Visitor<'_> for Visit {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a {}: {}", $kind, $rule)
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$name, E> {
                        $name::parse(s).map_err(E::custom)
                    }
                    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<$name, E> {
                        let s = std::str::from_utf8(b).map_err(E::custom)?;
                        self.visit_str(s)
                    }
                }
                d.deserialize_str(Visit)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }
    };
}

id_type!(
    /// A chunk's id: 32 lowercase hex characters, chosen by the coordinator
    /// when it plans an upload and never given other bytes afterwards.
    ChunkId,
    HexText,
    "chunk id",
    "32 lowercase hex characters",
    is_hex_id
);
id_type!(
    /// An open upload's id (32 lowercase hex characters).
    UploadId,
    HexText,
    "upload id",
    "32 lowercase hex characters",
    is_hex_id
);
id_type!(
    /// A cluster's id (32 lowercase hex characters), made once by its first
    /// coordinator; datanodes obey only the cluster they first joined.
    ClusterId,
    HexText,
    "cluster id",
    "32 lowercase hex characters",
    is_hex_id
);
id_type!(
    /// A datanode's id: generated on its first start, or set by an operator
    /// (a pod name, say), so the rule is wider than the hex ids'.
    NodeId,
    SharedText,
    "node id",
    "1-128 characters of [A-Za-z0-9._:-]",
    is_node_id
);

/// A datanode's state as the coordinator sees it: the one definition the
/// coordinator, the client library, the CLI and the operator share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeState {
    /// Heartbeating, accepting chunks.
    Healthy,
    /// Heartbeating, no room.
    Full,
    /// Silent for a short while.
    Suspect,
    /// Silent past dead-after.
    Dead,
    /// Being decommissioned.
    Draining,
    /// Drained: safe to remove.
    Decommissioned,
    /// In maintenance (a planned restart).
    Maintenance,
}

impl NodeState {
    /// Every state, for metrics (a series per state from the start).
    pub const ALL: [NodeState; 7] = [
        NodeState::Healthy,
        NodeState::Full,
        NodeState::Suspect,
        NodeState::Dead,
        NodeState::Draining,
        NodeState::Decommissioned,
        NodeState::Maintenance,
    ];

    /// Lowercase label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            NodeState::Healthy => "healthy",
            NodeState::Full => "full",
            NodeState::Suspect => "suspect",
            NodeState::Dead => "dead",
            NodeState::Draining => "draining",
            NodeState::Decommissioned => "decommissioned",
            NodeState::Maintenance => "maintenance",
        }
    }

    /// Upper-case name, as `dfs nodes` and the DfsCluster status show it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Healthy => "HEALTHY",
            NodeState::Full => "FULL",
            NodeState::Suspect => "SUSPECT",
            NodeState::Dead => "DEAD",
            NodeState::Draining => "DRAINING",
            NodeState::Decommissioned => "DECOMMISSIONED",
            NodeState::Maintenance => "MAINTENANCE",
        }
    }

    /// The wire value (`dfs.v1.NodeState`).
    pub fn to_wire(self) -> dfs_proto::NodeState {
        use dfs_proto::NodeState as W;
        match self {
            NodeState::Healthy => W::Healthy,
            NodeState::Full => W::Full,
            NodeState::Suspect => W::Suspect,
            NodeState::Dead => W::Dead,
            NodeState::Draining => W::Draining,
            NodeState::Decommissioned => W::Decommissioned,
            NodeState::Maintenance => W::Maintenance,
        }
    }

    /// The state of a wire value; `None` for UNSPECIFIED or a value this
    /// build does not know (a newer coordinator).
    pub fn from_wire(value: i32) -> Option<Self> {
        use dfs_proto::NodeState as W;
        match W::try_from(value).ok()? {
            W::Healthy => Some(NodeState::Healthy),
            W::Full => Some(NodeState::Full),
            W::Suspect => Some(NodeState::Suspect),
            W::Dead => Some(NodeState::Dead),
            W::Draining => Some(NodeState::Draining),
            W::Decommissioned => Some(NodeState::Decommissioned),
            W::Maintenance => Some(NodeState::Maintenance),
            W::Unspecified => None,
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_has_one_rule() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert!(ChunkId::parse(hex).is_ok());
        assert!(UploadId::try_from(hex.to_string()).is_ok());
        assert!(ClusterId::try_from(hex).is_ok());
        for bad in [
            "",
            "../../etc/passwd",
            &hex.to_uppercase(),
            &hex[..31],
            "g".repeat(32).as_str(),
        ] {
            assert!(ChunkId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(NodeId::parse("dn-0.rack:1_a").is_ok());
        assert!(NodeId::parse("").is_err());
        assert!(NodeId::parse("a/b").is_err());
        assert!(NodeId::parse(&"n".repeat(129)).is_err());
        assert!(NodeId::parse(&"n".repeat(128)).is_ok());
    }

    #[test]
    fn an_invalid_id_is_invalid_argument_naming_kind_and_rule() {
        let status = tonic::Status::from(ChunkId::parse(&"x".repeat(500)).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("invalid chunk id \"xxx"),
            "{}",
            status.message()
        );
        assert!(
            status
                .message()
                .ends_with("expected 32 lowercase hex characters")
        );
        // A hostile value is cut.
        assert!(status.message().len() < 200);
    }

    #[test]
    fn ids_are_held_compactly_and_found_by_their_text() {
        // A hex id is its 32 bytes, inline; a node id shares its text.
        assert_eq!(std::mem::size_of::<ChunkId>(), HEX_ID_LEN);
        assert_eq!(std::mem::size_of::<NodeId>(), 16);
        let id = ChunkId::from_u128(0xabc);
        let node = NodeId::parse("dn-0.rack-a").unwrap();
        let shared = node.clone();
        assert!(std::ptr::eq(node.as_str(), shared.as_str()));
        // Hash agrees with the text's, so maps can be searched by &str.
        let chunks: std::collections::HashMap<ChunkId, u8> = [(id.clone(), 1)].into();
        assert_eq!(chunks.get(id.as_str()), Some(&1));
        assert_eq!(chunks.get("00000000000000000000000000000abc"), Some(&1));
        let nodes: std::collections::HashSet<NodeId> = [node].into();
        assert!(nodes.contains("dn-0.rack-a"));
        // Ordered as text (BTreeMaps keyed by ids list in text order).
        assert!(ChunkId::from_u128(0x9) < ChunkId::from_u128(0xa));
        let n = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        assert_eq!(ChunkId::from_u128(n), format!("{n:032x}"));
        assert_eq!(NodeId::from_u128(n), format!("{n:032x}"));
        assert_eq!(ChunkId::from_u128(u128::MAX), "f".repeat(32));
        // Borrowed and owned text (and MessagePack's bytes) load alike.
        let owned: ChunkId = serde_json::from_str("\"00000000000000000000000000000abc\"").unwrap();
        assert_eq!(owned, id);
        let packed = rmp_serde::to_vec(&id).unwrap();
        assert_eq!(rmp_serde::from_slice::<ChunkId>(&packed).unwrap(), id);
        assert!(serde_json::from_str::<ChunkId>("\"../x\"").is_err());
    }

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let a = ChunkId::random();
        assert!(ChunkId::parse(a.as_str()).is_ok());
        assert_ne!(a, ChunkId::random());
        assert!(NodeId::parse(NodeId::random().as_str()).is_ok());
    }

    #[test]
    fn ids_are_stored_as_text_and_loaded_with_their_rule() {
        let id = ChunkId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"0123456789abcdef0123456789abcdef\"");
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
        let err = serde_json::from_str::<ChunkId>("\"../../etc/passwd\"").unwrap_err();
        assert!(err.to_string().contains("invalid chunk id"), "{err}");
        assert!(serde_json::from_str::<NodeId>("\"a/b\"").is_err());
    }

    #[test]
    fn node_states_round_trip_the_wire() {
        for s in NodeState::ALL {
            assert_eq!(NodeState::from_wire(s.to_wire() as i32), Some(s));
        }
        assert_eq!(NodeState::from_wire(0), None);
        assert_eq!(NodeState::from_wire(99), None);
    }
}
