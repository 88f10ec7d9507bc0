//! Which nodes are alive, and which replicas this node should give up.
//!
//! **Liveness.** The leader of group 0 watches every node: each message
//! stepped from a node counts as hearing from it, and group 0 reaches every
//! active or dead node (as voter or learner), so every live node answers
//! its heartbeats. An active node silent for `dead_after_ticks` is proposed
//! dead ([`CatalogCommand::SetLiveness`]); placement then moves its
//! replicas to live nodes where there are enough of them. A dead node heard
//! from again is proposed active, and placement gives it a share again.
//! A new leader counts every node as heard at the moment it took over, so
//! a change of leader never declares anyone dead early. Observations live
//! in memory only: what matters is in the catalog once proposed.
//!
//! **Leaving.** When the catalog stops placing a group on this node
//! ([`crate::catalog::Effect::LeaveGroup`]), the replica is not destroyed
//! at once: the group's leader is still walking Raft membership (a new
//! replica catches up before this one is removed), and until it has, this
//! replica may be needed for a quorum. It is destroyed when either:
//! - its own applied configuration no longer names this node; or
//! - no leader of the group has sent it anything (append, heartbeat or
//!   snapshot) for `leave_grace_ticks`: leaders stop sending to a replica
//!   once its removal has committed, and a replica that missed the commit
//!   would otherwise wait for it forever.
//!
//! Destroying deletes the group's rows, sessions, Raft state and log in one
//! synced round; the catalog change that caused it was applied in an
//! earlier round, so it is in the round log before the deletion. The group
//! stops ticking, and its waiting requests are answered `NotLeader`.
//!
//! Left out: a replica cut off from its group at the moment it is moved
//! out is destroyed after the grace even though Raft may still count it;
//! the group's other voters carry on and the move completes without it.

use raft::eraftpb::MessageType;
use raft::StateRole;

use super::{Completion, Driver, Group, Proposal};
use crate::catalog::{CatalogCommand, NodeState};
use crate::error::Error;
use crate::types::{GroupId, NodeId, CATALOG_GROUP};
use crate::wire;

impl Driver {
    /// Notes a message stepped from `from` for `group`.
    pub(super) fn heard(&mut self, from: NodeId, group: GroupId, kind: MessageType) {
        self.upkeep.last_heard.insert(from, self.now);
        let from_leader = matches!(
            kind,
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
        );
        if from_leader {
            if let Some(since) = self.upkeep.leaving.get_mut(&group) {
                *since = self.now;
            }
        }
    }

    /// On the leader of group 0: proposes the liveness changes that the
    /// silence (or the return) of nodes calls for. Called on ticks.
    pub(super) fn observe_liveness(&mut self) {
        let leads = self
            .groups
            .get(&CATALOG_GROUP)
            .is_some_and(|g| g.node.raft.state == StateRole::Leader);
        if !leads {
            self.upkeep.leader_since = None;
            self.upkeep.seen_dead.clear();
            return;
        }
        let now = self.now;
        let since = *self.upkeep.leader_since.get_or_insert(now);
        let mut changes = Vec::new();
        for n in self.catalog.nodes.values().filter(|n| n.id != self.id) {
            match n.state {
                NodeState::Active => {
                    self.upkeep.seen_dead.remove(&n.id);
                    let last = self
                        .upkeep
                        .last_heard
                        .get(&n.id)
                        .copied()
                        .unwrap_or(0)
                        .max(since);
                    if now.saturating_sub(last) >= self.cfg.dead_after_ticks {
                        changes.push((n.id, true));
                    }
                }
                NodeState::Dead => {
                    // Only what is heard after the node was seen dead counts:
                    // its last words before it went quiet do not.
                    if self.upkeep.seen_dead.insert(n.id) {
                        self.upkeep.last_heard.remove(&n.id);
                    } else if self.upkeep.last_heard.contains_key(&n.id) {
                        changes.push((n.id, false));
                    }
                }
                NodeState::Decommissioning | NodeState::Removed => {}
            }
        }
        let retry = self.cfg.election_ticks as u64 * 2;
        let Some(g) = self.groups.get_mut(&CATALOG_GROUP) else {
            return;
        };
        for (node, dead) in changes {
            let last = self.upkeep.liveness_proposed.get(&node).copied();
            if last.is_some_and(|t| now < t + retry) {
                continue;
            }
            self.upkeep.liveness_proposed.insert(node, now);
            tracing::info!(
                node_id = self.id.0,
                peer = node.0,
                dead,
                "proposing a liveness change"
            );
            let data = wire::encode(&Proposal::Catalog(CatalogCommand::SetLiveness {
                node,
                dead,
            }));
            if let Err(e) = g.node.propose(vec![], data) {
                tracing::debug!(node_id = self.id.0, error = %e, "liveness change not proposed");
            }
        }
    }

    /// Starts the wait before destroying this node's replica of `group`
    /// (see the module documentation).
    pub(super) fn leave(&mut self, group: GroupId) {
        if group != CATALOG_GROUP && self.groups.contains_key(&group) {
            self.upkeep.leaving.entry(group).or_insert(self.now);
        }
    }

    /// Groups this node holds that its catalog no longer places here.
    pub(super) fn misplaced_groups(&self) -> Vec<GroupId> {
        self.groups
            .keys()
            .copied()
            .filter(|g| {
                *g != CATALOG_GROUP
                    && !self
                        .catalog
                        .groups
                        .get(g)
                        .is_some_and(|info| info.has_replica(self.id))
            })
            .collect()
    }

    /// Moves the groups whose wait is over to `destroying`, for the next
    /// round to delete. Called on ticks.
    pub(super) fn check_leaving(&mut self) {
        let now = self.now;
        let me = self.id;
        let mut done = Vec::new();
        for (gid, since) in &self.upkeep.leaving {
            let placed_here = self
                .catalog
                .groups
                .get(gid)
                .is_some_and(|info| info.has_replica(me));
            let Some(g) = self.groups.get(gid) else {
                done.push((*gid, false));
                continue;
            };
            if placed_here {
                // Placed here again before the wait was over: keep it.
                done.push((*gid, false));
                continue;
            }
            let cs = &g.node.store().conf_state;
            let named = [
                &cs.voters,
                &cs.learners,
                &cs.voters_outgoing,
                &cs.learners_next,
            ]
            .iter()
            .any(|ids| ids.contains(&me.0));
            let leads = g.node.raft.state == StateRole::Leader;
            if !leads && (!named || now.saturating_sub(*since) >= self.cfg.leave_grace_ticks) {
                done.push((*gid, true));
            }
        }
        for (gid, destroy) in done {
            self.upkeep.leaving.remove(&gid);
            if destroy {
                self.upkeep.destroying.push(gid);
            }
        }
    }

    /// Takes the groups due to be destroyed out of the driver, answering
    /// their waiting requests; the caller deletes their storage in the
    /// round it is running.
    pub(super) fn take_destroyed(&mut self, out: &mut Vec<Completion>) -> Vec<Group> {
        let mut gone = Vec::new();
        for gid in std::mem::take(&mut self.upkeep.destroying) {
            let Some(mut g) = self.groups.remove(&gid) else {
                continue;
            };
            g.fail_proposals(gid, "this replica left the group", out, |_| false);
            let not_here = || Error::NotLeader {
                group: gid,
                leader: None,
            };
            for r in g.reads.drain(..) {
                out.push(Completion {
                    token: r.token,
                    result: Err(not_here()),
                });
            }
            let batches = std::mem::take(&mut self.requests.read_batches);
            for (id, (group, reads)) in batches {
                if group != gid {
                    self.requests.read_batches.insert(id, (group, reads));
                    continue;
                }
                for r in reads {
                    out.push(Completion {
                        token: r.token,
                        result: Err(not_here()),
                    });
                }
            }
            self.requests.reads_ready.retain(|(group, _, reads)| {
                if *group == gid {
                    for r in reads {
                        out.push(Completion {
                            token: r.token,
                            result: Err(not_here()),
                        });
                    }
                }
                *group != gid
            });
            tracing::info!(node_id = self.id.0, group_id = gid.0, "replica destroyed");
            gone.push(g);
        }
        gone
    }
}
