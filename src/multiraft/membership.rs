//! Walking each group's Raft membership to the catalog's goal, and keeping
//! the goal itself up to date.
//!
//! The catalog says which nodes should hold each group
//! ([`crate::catalog::placement`]); Raft's configuration says which do. The
//! leader of each group closes the gap one single-step change at a time,
//! never with a change pending:
//!
//! 1. a wanted node that is not a member joins as a **learner** (it receives
//!    a snapshot and the log but does not vote, so a slow newcomer cannot
//!    stall the group);
//! 2. a learner that should vote is **promoted** once it has every
//!    committed entry;
//! 3. only when every wanted voter votes is an unwanted voter **removed**
//!    (a leader to be removed first hands leadership to a wanted voter), and
//!    unwanted learners go last.
//!
//! With membership in place, a leader hands the group to its preferred
//! leader (round-robin over the voters by group id) once that voter is
//! caught up, so leadership spreads over the nodes.
//!
//! The leader of group 0 also re-runs the placement plan when the catalog
//! changes and proposes what it says.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use raft::StateRole;

use super::{Driver, Group, Proposal};
use crate::catalog::{placement, GroupInfo};
use crate::types::{NodeId, CATALOG_GROUP};
use crate::wire;

/// The one membership step a group's leader should take now, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberStep {
    AddLearner(u64),
    Promote(u64),
    Remove(u64),
    TransferTo(u64),
}

fn next_step(g: &Group, me: u64, want: &GroupInfo) -> Option<MemberStep> {
    let raft = &g.node.raft;
    let cs = &g.node.store().conf_state;
    let wanted_voters: Vec<u64> = want.voters.iter().map(|n| n.0).collect();
    let wanted: Vec<u64> = wanted_voters
        .iter()
        .copied()
        .chain(want.learners.iter().map(|n| n.0))
        .collect();
    let member = |n: &u64| cs.voters.contains(n) || cs.learners.contains(n);
    if let Some(n) = wanted.iter().find(|n| !member(n)) {
        return Some(MemberStep::AddLearner(*n));
    }
    let committed = raft.raft_log.committed;
    if let Some(n) = wanted_voters.iter().find(|n| {
        cs.learners.contains(n) && raft.prs().get(**n).is_some_and(|p| p.matched >= committed)
    }) {
        return Some(MemberStep::Promote(*n));
    }
    if wanted_voters.iter().any(|n| !cs.voters.contains(n)) {
        return None; // wait for promotions before removing anyone
    }
    if let Some(n) = cs.voters.iter().find(|n| !wanted_voters.contains(n)) {
        if *n == me {
            return wanted_voters.first().map(|t| MemberStep::TransferTo(*t));
        }
        return Some(MemberStep::Remove(*n));
    }
    cs.learners
        .iter()
        .find(|n| !wanted.contains(n))
        .map(|n| MemberStep::Remove(*n))
}

/// Whether the leader (`me`) should hand its group to the preferred leader:
/// only once that voter has every committed entry, so the transfer is quick.
fn balance_step(g: &Group, me: u64, chosen: Option<NodeId>) -> Option<MemberStep> {
    let raft = &g.node.raft;
    let cs = &g.node.store().conf_state;
    let preferred = match chosen {
        Some(n) if cs.voters.contains(&n.0) => n.0,
        _ => super::config::preferred_leader(g.node.store().group, &cs.voters)?,
    };
    // A voter that has not answered lately (down, or cut off) is not handed
    // leadership however caught up it looked when it was last heard from.
    let caught_up = raft
        .prs()
        .get(preferred)
        .is_some_and(|p| p.recent_active && p.matched >= raft.raft_log.committed);
    (preferred != me && caught_up && raft.lead_transferee.is_none())
        .then_some(MemberStep::TransferTo(preferred))
}

fn single(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let step = ConfChangeSingle {
        change_type,
        node_id,
        ..Default::default()
    };
    ConfChangeV2 {
        changes: vec![step].into(),
        ..Default::default()
    }
}

impl Driver {
    /// Takes one membership step in every group this node leads whose Raft
    /// configuration differs from the catalog. Called on ticks.
    pub(super) fn reconcile_membership(&mut self) {
        let me = self.id.0;
        for (gid, g) in &mut self.groups {
            if g.node.raft.state != StateRole::Leader || g.node.raft.has_pending_conf() {
                continue;
            }
            let Some(want) = self.catalog.groups.get(gid) else {
                continue;
            };
            let chosen = self.catalog.preferred_leaders.get(gid).copied();
            let balance = || {
                self.cfg
                    .balance_leaders
                    .then(|| balance_step(g, me, chosen))
                    .flatten()
            };
            let Some(step) = next_step(g, me, want).or_else(balance) else {
                continue;
            };
            tracing::debug!(node_id = me, group_id = gid.0, step = ?step, "membership step");
            let result = match step {
                MemberStep::AddLearner(n) => g
                    .node
                    .propose_conf_change(vec![], single(ConfChangeType::AddLearnerNode, n)),
                MemberStep::Promote(n) => g
                    .node
                    .propose_conf_change(vec![], single(ConfChangeType::AddNode, n)),
                MemberStep::Remove(n) => g
                    .node
                    .propose_conf_change(vec![], single(ConfChangeType::RemoveNode, n)),
                MemberStep::TransferTo(n) => {
                    g.node.transfer_leader(n);
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::debug!(node_id = me, group_id = gid.0, error = %e, "membership step not proposed");
            }
        }
    }

    /// On the leader of group 0: proposes the placement plan's changes when
    /// the catalog moved on since the last plan (or a plan went unapplied
    /// for a while).
    pub(super) fn plan_placement(&mut self) {
        let Some(g) = self.groups.get_mut(&CATALOG_GROUP) else {
            return;
        };
        if g.node.raft.state != StateRole::Leader {
            return;
        }
        let stale = self.now >= self.upkeep.last_plan_tick + self.cfg.proposal_timeout_ticks;
        if self.catalog.epoch == self.upkeep.last_plan_epoch && !stale {
            return;
        }
        self.upkeep.last_plan_epoch = self.catalog.epoch;
        self.upkeep.last_plan_tick = self.now;
        for cmd in placement::plan(&self.catalog, self.cfg.replicas) {
            let data = wire::encode(&Proposal::Catalog(cmd));
            if let Err(e) = g.node.propose(vec![], data) {
                tracing::debug!(node_id = self.id.0, error = %e, "placement change not proposed");
            }
        }
    }

    /// The node ids the catalog knows, for status displays.
    pub fn known_nodes(&self) -> Vec<NodeId> {
        self.catalog.nodes.keys().copied().collect()
    }
}
