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

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $check:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// What kind of id this is, for messages.
            pub const KIND: &'static str = $kind;
            /// The rule a valid id follows, for messages.
            pub const RULE: &'static str = $rule;

            /// Validates `s`.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if $check(s) {
                    Ok(Self(s.to_string()))
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
                Self(format!("{n:032x}"))
            }

            /// A fresh random id (128 random bits, from the one generator).
            pub fn random() -> Self {
                Self(random_hex_id())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string (for the wire).
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                if $check(&s) { Ok(Self(s)) } else { Err(Self::invalid(&s)) }
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
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        /// Stored as its text (metadata log rows, snapshots, JSON).
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        /// Loaded with the same rule as at the gRPC edge: a stored id that
        /// breaks it is corruption, and loading fails instead of guessing.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

id_type!(
    /// A chunk's id: 32 lowercase hex characters, chosen by the coordinator
    /// when it plans an upload and never given other bytes afterwards.
    ChunkId,
    "chunk id",
    "32 lowercase hex characters",
    is_hex_id
);
id_type!(
    /// An open upload's id (32 lowercase hex characters).
    UploadId,
    "upload id",
    "32 lowercase hex characters",
    is_hex_id
);
id_type!(
    /// A cluster's id (32 lowercase hex characters), made once by its first
    /// coordinator; datanodes obey only the cluster they first joined.
    ClusterId,
    "cluster id",
    "32 lowercase hex characters",
    is_hex_id
);
id_type!(
    /// A datanode's id: generated on its first start, or set by an operator
    /// (a pod name, say), so the rule is wider than the hex ids'.
    NodeId,
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
