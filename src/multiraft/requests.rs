//! Requests into the driver: proposals, reads and scans, and the operator
//! and transport calls that steer a group (leader transfer, campaigns,
//! unreachable peers, snapshot reports).
//!
//! A request is accepted or refused at once; an accepted one is answered in
//! a later round's completions under the caller's token. Proposals wait in
//! their group for their entry to apply; reads wait in their group until
//! the next round turns them into one ReadIndex request (see `round`).

use std::collections::BTreeMap;

use raft::eraftpb::ConfChangeV2;
use raft::{RawNode, SnapshotStatus, StateRole};

use super::{proposal_context, Driver, DriverStats, Group, Proposal, Token};
use crate::error::{Error, Result};
use crate::kv;
use crate::storage::GroupStorage;
use crate::types::{GroupId, NodeId};
use crate::wire;

/// A proposal waiting for its entry to apply.
pub(super) struct PendingProposal {
    pub(super) token: Token,
    /// The leader term it was proposed in; a new term means it may be lost.
    pub(super) term: u64,
    pub(super) deadline: u64,
}

/// A read waiting for its turn.
pub(super) struct PendingRead {
    pub(super) token: Token,
    /// The key, or the first key of a scan.
    pub(super) key: Vec<u8>,
    /// For a scan: where it stops (exclusive) and how many rows at most.
    pub(super) scan: Option<(Option<Vec<u8>>, usize)>,
    pub(super) deadline: u64,
}

impl Driver {
    fn leader_group(&mut self, group: GroupId) -> Result<&mut Group> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(Error::UnknownGroup(group))?;
        if g.node.raft.state != StateRole::Leader {
            let l = g.node.raft.leader_id;
            return Err(Error::NotLeader {
                group,
                leader: (l != 0).then_some(NodeId(l)),
            });
        }
        Ok(g)
    }

    /// Proposes a command to `group`. `Ok` means the answer will come in a
    /// later round's completions under `token`; an error means nothing was
    /// proposed.
    pub fn propose(&mut self, token: Token, group: GroupId, proposal: &Proposal) -> Result<()> {
        if let Proposal::Kv(cmd) = proposal {
            self.cfg.limits.check(&cmd.op)?;
            // Not the leader (or no such group here) is the answer that
            // tells the caller most; routing is checked on the leader.
            self.leader_group(group)?;
            self.check_routing(group, &cmd.op)?;
        }
        let data = wire::encode(proposal);
        self.track(token, group, |node, ctx| {
            node.propose(ctx, data).map_err(|e| match e {
                raft::Error::ProposalDropped => Error::NotLeader {
                    group,
                    leader: None,
                },
                e => Error::Raft(e),
            })
        })?;
        DriverStats::bump(&self.stats.proposals, 1);
        Ok(())
    }

    /// Refuses an operation whose keys this node's catalog does not place
    /// in `group` (the caller's routing is stale), or a batch whose keys
    /// span vshards.
    fn check_routing(&self, group: GroupId, op: &kv::Op) -> Result<()> {
        let keys: Vec<&[u8]> = match op {
            kv::Op::Batch { ops } => ops.iter().map(kv::BatchOp::key).collect(),
            op => vec![op.key()],
        };
        let vshards: std::collections::BTreeSet<_> =
            keys.iter().map(|k| self.catalog.vshard(k)).collect();
        if vshards.len() > 1 {
            return Err(Error::BatchSpansVShards {
                vshards: vshards.len(),
            });
        }
        match keys.first().map(|k| self.catalog.group_of(k)) {
            Some(owner) if owner != group => Err(Error::WrongGroup { group, owner }),
            _ => Ok(()),
        }
    }

    /// Proposes a membership change to `group`.
    pub fn propose_conf_change(
        &mut self,
        token: Token,
        group: GroupId,
        cc: ConfChangeV2,
    ) -> Result<()> {
        self.track(token, group, |node, ctx| {
            Ok(node.propose_conf_change(ctx, cc)?)
        })
    }

    /// Hands a proposal to the leader of `group` with a fresh context, and
    /// remembers it so its answer can find `token`.
    fn track(
        &mut self,
        token: Token,
        group: GroupId,
        propose: impl FnOnce(&mut RawNode<GroupStorage>, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let id = self.requests.next_proposal;
        let deadline = self.now + self.cfg.proposal_timeout_ticks;
        let me = self.id;
        let g = self.leader_group(group)?;
        let term = g.node.raft.term;
        propose(&mut g.node, proposal_context(me, id))?;
        g.proposals.insert(
            id,
            PendingProposal {
                token,
                term,
                deadline,
            },
        );
        self.requests.next_proposal += 1;
        Ok(())
    }

    /// Queues a linearizable read of `key` in `group`. Reads queued before a
    /// round share one ReadIndex round trip per group.
    pub fn read(&mut self, token: Token, group: GroupId, key: &[u8]) -> Result<()> {
        self.cfg.limits.check_key(key)?;
        let deadline = self.now + self.cfg.read_timeout_ticks;
        let g = self.leader_group(group)?;
        g.reads.push(PendingRead {
            token,
            key: key.to_vec(),
            scan: None,
            deadline,
        });
        Ok(())
    }

    /// Queues a linearizable scan of one page of `group`: up to `limit`
    /// rows with `start <= key < end` (to the end of the group without
    /// `end`) and at most the configured page bytes. Its answer is a
    /// [`crate::storage::ScanRead`] taken once the read index applied, for
    /// the caller to read.
    pub fn scan(
        &mut self,
        token: Token,
        group: GroupId,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<()> {
        if start.len() > self.cfg.limits.max_key {
            return Err(Error::KeyTooLarge {
                len: start.len(),
                max: self.cfg.limits.max_key,
            });
        }
        let deadline = self.now + self.cfg.read_timeout_ticks;
        let g = self.leader_group(group)?;
        g.reads.push(PendingRead {
            token,
            key: start.to_vec(),
            scan: Some((end.map(<[u8]>::to_vec), limit)),
            deadline,
        });
        Ok(())
    }

    /// Every group's last consistency check on this node: group -> (apply
    /// index, digest).
    pub fn checksums(&self) -> Result<BTreeMap<GroupId, (u64, u64)>> {
        self.engine.checksums()
    }

    /// Asks the leader of `group` (this node) to hand leadership to `to`.
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) -> Result<()> {
        let g = self.leader_group(group)?;
        g.node.transfer_leader(to.0);
        Ok(())
    }

    /// Tells every group this node leads that `peer` could not be reached,
    /// so that replication to it falls back to probing from its last known
    /// position instead of streaming entries that will be lost.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        for g in self.groups.values_mut() {
            if g.node.raft.state == StateRole::Leader {
                g.node.report_unreachable(peer.0);
            }
        }
    }

    /// Tells the leader of `group` whether a snapshot message to `peer` left
    /// this node. raft-rs holds replication to a peer while a snapshot is
    /// outstanding, so the transport must report every one it was handed.
    pub fn report_snapshot(&mut self, group: GroupId, peer: NodeId, sent: bool) {
        if let Some(g) = self.groups.get_mut(&group) {
            let status = if sent {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            g.node.report_snapshot(peer.0, status);
        }
    }

    /// Makes this node campaign for `group` now (tests and operators).
    pub fn campaign(&mut self, group: GroupId) -> Result<()> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(Error::UnknownGroup(group))?;
        g.node.campaign()?;
        Ok(())
    }
}
