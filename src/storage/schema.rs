//! The redb tables of a node, and the records stored in them.
//!
//! One database file holds every group of the node. Rows of all groups share
//! each table, keyed by group id first, so a group's rows are one contiguous
//! range and one write transaction can touch any number of groups.

use raft::eraftpb::{ConfState, HardState};
use redb::TableDefinition;

/// Raft log entries: (group, index) → protobuf-encoded `Entry` (as raft-rs
/// produces it; these bytes never leave the node).
pub(crate) const LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("raft_log");
/// Per group: the [`RaftStateRecord`] (HardState, ConfState, compaction point).
pub(crate) const RAFT_STATE: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_state");
/// Per group: the index of the last entry applied to the state machine.
pub(crate) const APPLIED: TableDefinition<u64, u64> = TableDefinition::new("applied");
/// KV rows: (group, key) → value.
pub(crate) const KV: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("kv");
/// Client sessions: (group, client) → rkyv `kv::Session`.
pub(crate) const SESSIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("sessions");
/// Node-wide facts: see the `META_*` keys.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// group -> (apply index, digest) of the group's last consistency check.
pub(crate) const CHECKSUMS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("checksums");

/// META key: this node's id (u64, little endian).
pub(crate) const META_NODE_ID: &str = "node_id";
/// META key: the cluster id (u64, little endian). Its presence alone means
/// "bootstrapped".
pub(crate) const META_CLUSTER_ID: &str = "cluster_id";
/// META key: the rkyv-encoded catalog, as of group 0's apply index.
pub(crate) const META_CATALOG: &str = "catalog";
/// META key: how many times a driver has opened this database (u64, little
/// endian). Proposal ids carry it, so an entry proposed before a restart is
/// never mistaken for one proposed after.
pub(crate) const META_INCARNATION: &str = "incarnation";

/// What a group's Raft state looks like on disk.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct RaftStateRecord {
    /// HardState.term
    pub term: u64,
    /// HardState.vote
    pub vote: u64,
    /// HardState.commit
    pub commit: u64,
    /// ConfState.voters
    pub voters: Vec<u64>,
    /// ConfState.learners
    pub learners: Vec<u64>,
    /// ConfState.voters_outgoing
    pub voters_outgoing: Vec<u64>,
    /// ConfState.learners_next
    pub learners_next: Vec<u64>,
    /// ConfState.auto_leave
    pub auto_leave: bool,
    /// Index of the last entry compacted away (folded into the state).
    pub snap_index: u64,
    /// Term of that entry.
    pub snap_term: u64,
}

impl RaftStateRecord {
    /// Builds the record from raft-rs types.
    pub fn new(hs: &HardState, cs: &ConfState, snap_index: u64, snap_term: u64) -> Self {
        RaftStateRecord {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
            snap_index,
            snap_term,
        }
    }

    /// The HardState part.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
            ..Default::default()
        }
    }

    /// The ConfState part.
    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
            ..Default::default()
        }
    }
}

/// The payload of a Raft snapshot of one group: its whole applied state.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct SnapshotData {
    /// KV rows.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Sessions: (client, rkyv `kv::Session`).
    pub sessions: Vec<(u64, Vec<u8>)>,
    /// For group 0: the rkyv-encoded catalog.
    pub catalog: Option<Vec<u8>>,
}
