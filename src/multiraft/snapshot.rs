//! The driver's side of a streamed snapshot (see `storage::snapshot`): a
//! snapshot message reaches raft-rs only once its state is durably staged
//! on this node, and a staging raft-rs refuses is dropped.

use raft::eraftpb::{Message, MessageType};

use super::Group;
use crate::storage::{SnapshotDescriptor, Snapshots};
use crate::types::GroupId;

/// Whether `msg` may be stepped: `Ok(None)` for any message but a data
/// group's snapshot, `Ok(Some(index))` for a snapshot whose staging it
/// claimed, `Err` for a snapshot with no complete staging here (a late
/// duplicate, or a transfer that a newer one replaced): dropped, the
/// leader sends another.
pub(super) fn claim(
    snapshots: &Snapshots,
    group: GroupId,
    msg: &Message,
) -> Result<Option<u64>, ()> {
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        return Ok(None);
    }
    let snap = msg.get_snapshot();
    match SnapshotDescriptor::decode(&snap.data) {
        Ok(d) if !d.streamed() => Ok(None),
        Ok(_) => {
            let index = snap.get_metadata().index;
            snapshots
                .claim(group, index)
                .then_some(Some(index))
                .ok_or(())
        }
        Err(_) => Err(()),
    }
}

/// After stepping a snapshot whose staging was claimed: if raft-rs did not
/// take it (it is stale), the staging is dropped; else the round that
/// installs it settles the claim.
pub(super) fn settle_refused(snapshots: &Snapshots, g: &Group, group: GroupId, index: u64) {
    let taken = g
        .node
        .raft
        .raft_log
        .unstable
        .snapshot
        .as_ref()
        .is_some_and(|s| s.get_metadata().index == index);
    if !taken {
        snapshots.settle(group, false);
    }
}
