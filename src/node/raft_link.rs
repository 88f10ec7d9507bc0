//! The driver's seams with the transport: its outbound messages leave
//! through [`QuicSender`], and peers' messages reach it through
//! [`DriverInbox`].
//!
//! The transport knows Raft messages only as (group, message) pairs; the
//! driver speaks in [`GroupMessage`]s. Converting one into the other moves
//! each message and copies nothing, so this seam costs the driver thread
//! one pass over a batch.

use std::sync::Arc;

use crate::multiraft::GroupMessage;
use crate::runtime::runner::{self, DriverHandle, SnapshotDone};
use crate::transport::{Inbox, RaftMessage, Transport};
use crate::types::NodeId;

/// The driver thread's [`runner::Transport`] over QUIC.
pub struct QuicSender(Arc<Transport>);

impl QuicSender {
    /// Sends through `t`.
    pub fn new(t: Arc<Transport>) -> QuicSender {
        QuicSender(t)
    }
}

impl runner::Transport for QuicSender {
    fn send(&mut self, to: NodeId, msgs: Vec<GroupMessage>) -> bool {
        let msgs = msgs.into_iter().map(|m| (m.group, m.msg)).collect();
        self.0.send_raft(to, msgs)
    }

    fn send_snapshot(&mut self, to: NodeId, m: GroupMessage, done: SnapshotDone) {
        self.0
            .send_snapshot(to, m.group, m.msg, move |sent| done.report(sent));
    }
}

/// Hands the batches peers send to a running driver.
pub struct DriverInbox(pub DriverHandle);

impl Inbox for DriverInbox {
    fn deliver(&self, _from: NodeId, msgs: Vec<RaftMessage>) {
        let msgs = msgs
            .into_iter()
            .map(|(group, msg)| GroupMessage { group, msg })
            .collect();
        self.0.deliver(msgs);
    }
}

/// Drops the batches that arrive before the driver runs: Raft resends them.
pub struct NoInbox;

impl Inbox for NoInbox {
    fn deliver(&self, _from: NodeId, _msgs: Vec<RaftMessage>) {}
}
