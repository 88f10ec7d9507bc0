//! Identifier newtypes shared by every layer.
//!
//! Raft-rs speaks in bare `u64`s; Flotilla wraps them so that a node id can
//! never be passed where a group id is expected. The wrappers are `Copy`,
//! ordered (the driver keeps its groups in ordered maps so that a simulated
//! run is deterministic) and archivable with rkyv for the catalog and the wire.

use std::fmt;

/// A node of the cluster. Raft requires ids to be non-zero; `0` means "none".
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct NodeId(pub u64);

/// A Raft group. Group 0 is the catalog; data groups start at 1.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct GroupId(pub u64);

/// A virtual shard: `xxh3_64(key) % vshard_count`. Fixed for the cluster's life.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct VShard(pub u32);

/// The group whose state machine is the cluster catalog.
pub const CATALOG_GROUP: GroupId = GroupId(0);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

impl fmt::Display for VShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}
