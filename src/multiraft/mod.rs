//! The multi-raft driver: the one owner of every Raft group on a node.
//!
//! A node runs hundreds of Raft groups. Running each as its own task would
//! mean one fsync and one network write per group per step; instead one
//! [`Driver`] owns every `RawNode` and advances them together in *rounds*,
//! driven the way raft-rs drives one `RawNode`, with the disk work of all
//! groups merged. The caller:
//!
//! 1. hands in inputs in any order: [`Driver::step`] (peers' messages),
//!    [`Driver::propose`], [`Driver::read`], [`Driver::scan`],
//!    [`Driver::tick`];
//! 2. calls [`Driver::ready`]: queued reads become one `read_index` per
//!    group; each busy group's Ready is handled (messages that need no
//!    local persistence go to the outbox, a received snapshot is installed,
//!    committed entries applied, new entries and the hard state staged,
//!    `advance_append_async`), and everything to write lands in one
//!    `storage::WriteBatch`. It returns a [`Ready`];
//! 3. sends what the [`Ready`] lets leave now, persists its batch
//!    (`Engine::persist_then`: one append and at most one fsync of the
//!    round log for all groups), and sends the messages it releases once
//!    the batch is durable (acknowledgements and votes);
//! 4. calls [`Driver::on_persisted`]: each group learns its ready persisted
//!    (`on_persist_ready`), groups open and leave as the catalog's effects
//!    say, and proposals and reads whose entries applied are answered. A
//!    scan's answer is not its rows but a `storage::ScanRead`, taken here
//!    between rounds and read by the caller on another thread, so a large
//!    page does not hold up every group's next round.
//!
//! `runtime::round` does steps 2 to 4 (the only place a batch is handed to
//! the engine); the runner thread, the simulation and the tests all go
//! through it. This module does no networking, writes no file and reads no
//! clock: time
//! arrives through ticks and messages leave in [`RoundOutput::outbound`],
//! batched per destination node. It reads storage (KV rows for applies and
//! reads, snapshots for raft-rs) through the engine's read side; the engine
//! it carries is there for its caller to persist with. Groups live in
//! ordered maps so that a run is a function of its inputs.
//!
//! The driver's state is in parts: the groups and their Raft state
//! (`groups`), requests in flight ([`Requests`]: proposals by group,
//! reads and their batches), and the upkeep of placement and liveness
//! (`Upkeep`, see `liveness` and `membership`).
//!
//! Left out for now: snapshots travel as one message (no chunking), and a
//! message for a group this node does not have is dropped, not used as a
//! hint that the catalog moved on.

mod apply;
mod config;
mod liveness;
mod membership;
mod requests;
mod round;
mod snapshot;
mod stats;

pub use config::{DriverConfig, ELECTION_TICKS, HEARTBEAT_TICKS};
pub use round::Ready;
pub use stats::DriverStats;

use requests::{PendingProposal, PendingRead};

use std::collections::BTreeMap;

use raft::eraftpb::Message;
use raft::{RawNode, StateRole};

use crate::catalog::{Catalog, CatalogCommand};
use crate::error::{Error, Result};
use crate::kv::{Command, Response};
use crate::storage::{Engine, GroupStorage, ScanRead};
use crate::types::{GroupId, NodeId};

/// Bits of a proposal id numbering proposals within one incarnation of the
/// driver; the bits above hold the incarnation. 2^40 proposals per start.
const PROPOSAL_ID_BITS: u32 = 40;

/// A caller-chosen handle that comes back with the answer to a request.
pub type Token = u64;

/// A Raft message of one group.
#[derive(Clone, Debug)]
pub struct GroupMessage {
    /// The group it belongs to.
    pub group: GroupId,
    /// The raft-rs message.
    pub msg: Message,
}

/// What a normal Raft entry carries.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Proposal {
    /// A KV command, for a data group.
    Kv(Command),
    /// A catalog change, for group 0.
    Catalog(CatalogCommand),
    /// A consistency check of a data group: every replica records a digest
    /// of its state when it applies this entry, all at the same index.
    Checksum,
}

/// The successful answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A KV command applied (or a read served).
    Kv(Response),
    /// A scan confirmed: the read of its page, to be read off the driver
    /// thread (see [`ScanRead`]).
    Scan(ScanRead),
    /// A catalog change applied.
    Catalog,
    /// A joining node was admitted with this id.
    NodeAdmitted(NodeId),
    /// A membership change applied.
    ConfChanged,
    /// A consistency check was applied at `index`; this replica's digest.
    Checksum {
        /// The apply index of the check.
        index: u64,
        /// The digest of the group's state there.
        digest: u64,
    },
}

/// The answer to one request.
#[derive(Debug)]
pub struct Completion {
    /// The token the request was made with.
    pub token: Token,
    /// What happened.
    pub result: Result<Reply>,
}

/// One applied entry, reported when `trace_applies` is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The group.
    pub group: GroupId,
    /// The entry's index.
    pub index: u64,
    /// The command's client and sequence, when it was a KV command.
    pub command: Option<Command>,
    /// Its outcome (the response, or the error's text).
    pub outcome: Result<Response, String>,
}

/// Everything a round produced for the caller to act on.
#[derive(Debug, Default)]
pub struct RoundOutput {
    /// Messages to send, batched per destination node.
    pub outbound: BTreeMap<NodeId, Vec<GroupMessage>>,
    /// Answers to requests.
    pub completions: Vec<Completion>,
    /// Applied entries (only with `trace_applies`).
    pub applied: Vec<Applied>,
    /// Whether the round committed a write transaction.
    pub committed: bool,
    /// Whether a group already has more work after the round (its own
    /// persistence completed a quorum, say): the caller should run the next
    /// round at once rather than wait for a message or a tick.
    pub more: bool,
}

/// One group on this node.
struct Group {
    node: RawNode<GroupStorage>,
    /// Proposals of this node awaiting apply, by proposal id.
    proposals: BTreeMap<u64, PendingProposal>,
    /// Reads queued since the last round, or held because the leader has
    /// not yet committed an entry of its term.
    reads: Vec<PendingRead>,
    /// The term and role the election timeout was last chosen for, and the
    /// timeout chosen.
    timeout_for: Option<(u64, StateRole, usize)>,
    /// The leader this replica last reported (0: none yet), to count
    /// leader changes.
    leader_seen: u64,
}

/// The state of one group on this node, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// This replica's role.
    pub role: StateRole,
    /// Current term.
    pub term: u64,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: u64,
    /// Apply index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Voters of the applied configuration.
    pub voters: Vec<NodeId>,
    /// Learners of the applied configuration.
    pub learners: Vec<NodeId>,
}

/// The multi-raft driver of one node. See the module documentation.
pub struct Driver {
    id: NodeId,
    cfg: DriverConfig,
    engine: Engine,
    logger: slog::Logger,
    groups: BTreeMap<GroupId, Group>,
    catalog: Catalog,
    /// Ticks since the driver opened.
    now: u64,
    /// Requests in flight.
    requests: Requests,
    /// Placement and liveness upkeep.
    upkeep: Upkeep,
    /// What the driver read back from its own log when it opened.
    replayed: Replayed,
    /// Ticks since the last round, for the engine's flush schedule.
    ticks_since_round: u64,
    /// The group the next eviction from the entry cache starts at, so that
    /// every group's entries take their turn.
    evict_from: GroupId,
    /// Counters for the node's metrics.
    stats: std::sync::Arc<DriverStats>,
}

/// Requests in flight that are not tied to one group's Raft state.
#[derive(Default)]
struct Requests {
    /// The next proposal id.
    next_proposal: u64,
    /// The next read batch id.
    next_read_batch: u64,
    /// Read batches sent to raft as one `read_index`, awaiting a ReadState.
    read_batches: BTreeMap<u64, (GroupId, Vec<PendingRead>)>,
    /// Confirmed reads awaiting apply of their read index.
    reads_ready: Vec<(GroupId, u64, Vec<PendingRead>)>,
    /// Answers produced outside a round (timeouts), delivered with the next.
    early: Vec<Completion>,
}

/// What the driver keeps to place replicas and watch nodes' liveness.
#[derive(Default)]
struct Upkeep {
    /// Catalog epoch the placement plan last ran on (group 0's leader only).
    last_plan_epoch: u64,
    /// Tick the placement plan last ran at.
    last_plan_tick: u64,
    /// The tick each node was last heard from (see `liveness`).
    last_heard: BTreeMap<NodeId, u64>,
    /// The tick this node became group 0's leader, while it leads it.
    leader_since: Option<u64>,
    /// Dead nodes this leader has seen dead, so it counts only what it
    /// hears from them afterwards.
    seen_dead: std::collections::BTreeSet<NodeId>,
    /// The tick a liveness change for each node was last proposed.
    liveness_proposed: BTreeMap<NodeId, u64>,
    /// Groups the catalog moved off this node, with the tick a leader of
    /// the group last sent this replica anything (see `liveness`).
    leaving: BTreeMap<GroupId, u64>,
    /// Groups whose replica the next round destroys.
    destroying: Vec<GroupId>,
}

/// What a driver read back from its own storage when it opened: the log
/// entries it holds, so it never asks a leader for them again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Groups restored.
    pub groups: u64,
    /// Log entries restored, over all groups.
    pub entries: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

fn proposal_context(node: NodeId, id: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&node.0.to_le_bytes());
    ctx.extend_from_slice(&id.to_le_bytes());
    ctx
}

/// The proposal id in an entry's context, if this node proposed it.
fn own_proposal(node: NodeId, ctx: &[u8]) -> Option<u64> {
    let (n, id) = ctx.split_at_checked(8)?;
    let n = u64::from_le_bytes(n.try_into().ok()?);
    let id = u64::from_le_bytes(id.try_into().ok()?);
    (n == node.0).then_some(id)
}

fn raft_logger() -> slog::Logger {
    slog::Logger::root(tracing_slog::TracingSlogDrain, slog::o!())
}

impl Driver {
    /// Opens the driver of a bootstrapped node: every group is rebuilt from
    /// its persisted log, hard state and apply index before any message is
    /// handled.
    pub fn open(engine: Engine, cfg: DriverConfig) -> Result<Driver> {
        let id = engine
            .node_id()?
            .ok_or_else(|| Error::Invalid("the node has not been bootstrapped".into()))?;
        let catalog = engine
            .catalog()?
            .ok_or_else(|| Error::Invalid("the node has no catalog".into()))?;
        let incarnation = engine.next_incarnation()?;
        engine.set_flush_policy(cfg.flush_policy());
        let logger = raft_logger();
        let mut groups = BTreeMap::new();
        let mut replayed = Replayed::default();
        let began = std::time::Instant::now();
        for store in engine.load_groups()? {
            let gid = store.group;
            replayed.groups += 1;
            replayed.entries += store.last_index_() - store.snap_index;
            replayed.bytes += store.log_bytes();
            groups.insert(gid, Group::new(id, &cfg, store, &logger)?);
        }
        tracing::info!(
            node_id = id.0,
            groups = replayed.groups,
            entries = replayed.entries,
            bytes = replayed.bytes,
            took = ?began.elapsed(),
            "replayed this node's own log"
        );
        let mut driver = Driver {
            id,
            cfg,
            engine,
            logger,
            groups,
            catalog,
            now: 0,
            requests: Requests {
                // Ids of this incarnation never repeat those of an earlier one.
                next_proposal: incarnation << PROPOSAL_ID_BITS,
                next_read_batch: 1,
                ..Requests::default()
            },
            upkeep: Upkeep::default(),
            replayed,
            ticks_since_round: 0,
            evict_from: GroupId(0),
            stats: Default::default(),
        };
        // Replicas moved off this node while it was down (or before it
        // stopped) wait to be destroyed like any other.
        for gid in driver.misplaced_groups() {
            driver.leave(gid);
        }
        Ok(driver)
    }

    /// What the driver read back from its own storage when it opened.
    pub fn replayed(&self) -> Replayed {
        self.replayed
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The catalog as of group 0's last applied entry.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The storage engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The driver's counters, readable from any thread.
    pub fn stats(&self) -> std::sync::Arc<DriverStats> {
        self.stats.clone()
    }

    /// The groups this node holds.
    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// The state of one group.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        let g = self.groups.get(&group)?;
        let r = &g.node.raft;
        let store = g.node.store();
        Some(GroupStatus {
            group,
            role: r.state,
            term: r.term,
            leader: (r.leader_id != 0).then_some(NodeId(r.leader_id)),
            commit: r.raft_log.committed,
            applied: store.applied,
            last_index: store.last_index_(),
            first_index: store.snap_index + 1,
            voters: store.conf_state.voters.iter().map(|n| NodeId(*n)).collect(),
            learners: store
                .conf_state
                .learners
                .iter()
                .map(|n| NodeId(*n))
                .collect(),
        })
    }

    /// The leader of `group` as this node knows it.
    pub fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        self.status(group).and_then(|s| s.leader)
    }

    /// Advances logical time by one tick for every group, and gives up on
    /// requests past their deadline.
    pub fn tick(&mut self) {
        self.now += 1;
        self.ticks_since_round += 1;
        let now = self.now;
        for (gid, g) in &mut self.groups {
            g.pin_election_timeout(self.id, *gid, &self.cfg);
            g.node.tick();
            g.fail_proposals(*gid, "timed out", &mut self.requests.early, |p| {
                p.deadline > now
            });
        }
        self.reconcile_membership();
        self.plan_placement();
        self.observe_liveness();
        self.check_leaving();
        let early = &mut self.requests.early;
        let mut expire = |group: GroupId, reads: &mut Vec<PendingRead>| {
            reads.retain(|r| {
                let keep = r.deadline > now;
                if !keep {
                    early.push(Completion {
                        token: r.token,
                        result: Err(Error::ReadUnconfirmed {
                            group,
                            reason: "timed out".into(),
                        }),
                    });
                }
                keep
            });
        };
        for (group, reads) in self.requests.read_batches.values_mut() {
            expire(*group, reads);
        }
        self.requests
            .read_batches
            .retain(|_, (_, reads)| !reads.is_empty());
        // Reads a new leader holds until it commits in its term.
        for (group, g) in &mut self.groups {
            expire(*group, &mut g.reads);
        }
    }

    /// Hands the driver messages a peer sent. Messages for groups this node
    /// does not hold, or addressed to another node id (one that used to
    /// live at this address), are dropped.
    pub fn step(&mut self, msgs: impl IntoIterator<Item = GroupMessage>) {
        let snapshots = self.engine.snapshots();
        for GroupMessage { group, msg } in msgs {
            if msg.to != self.id.0 {
                tracing::debug!(
                    node_id = self.id.0,
                    to = msg.to,
                    group_id = group.0,
                    "message for another node id dropped"
                );
                continue;
            }
            self.heard(NodeId(msg.from), group, msg.get_msg_type());
            match self.groups.get_mut(&group) {
                Some(g) => {
                    let Ok(claimed) = snapshot::claim(&snapshots, group, &msg) else {
                        tracing::debug!(
                            node_id = self.id.0,
                            group_id = group.0,
                            "snapshot whose state is not staged dropped"
                        );
                        continue;
                    };
                    if let Err(e) = g.node.step(msg) {
                        tracing::debug!(node_id = self.id.0, group_id = group.0, error = %e, "step refused");
                    }
                    if let Some(index) = claimed {
                        snapshot::settle_refused(&snapshots, g, group, index);
                    }
                }
                None => {
                    tracing::debug!(
                        node_id = self.id.0,
                        group_id = group.0,
                        "message for unknown group dropped"
                    );
                }
            }
        }
    }
}

impl Group {
    /// Answers, with `ProposalLost`, every pending proposal `keep` rejects.
    fn fail_proposals(
        &mut self,
        gid: GroupId,
        reason: &'static str,
        out: &mut Vec<Completion>,
        keep: impl Fn(&PendingProposal) -> bool,
    ) {
        self.proposals.retain(|_, p| {
            let kept = keep(p);
            if !kept {
                out.push(Completion {
                    token: p.token,
                    result: Err(Error::ProposalLost {
                        group: gid,
                        reason: reason.into(),
                    }),
                });
            }
            kept
        });
    }

    fn new(
        id: NodeId,
        cfg: &DriverConfig,
        mut store: GroupStorage,
        logger: &slog::Logger,
    ) -> Result<Group> {
        // Applied entries were committed, whatever the last saved commit says.
        store.hard_state.commit = store.hard_state.commit.max(store.applied);
        let rc = cfg.raft_config(id, store.group, store.applied);
        let logger = logger.new(slog::o!("group_id" => store.group.0, "node_id" => id.0));
        Ok(Group {
            node: RawNode::new(&rc, store, &logger)?,
            proposals: BTreeMap::new(),
            reads: Vec::new(),
            timeout_for: None,
            leader_seen: 0,
        })
    }

    /// Replaces the election timeout raft-rs drew from its own RNG with the
    /// seeded one for the replica's current term and role (see
    /// [`DriverConfig::election_timeout`]). Called before every tick, the
    /// only place raft-rs compares against the timeout.
    fn pin_election_timeout(&mut self, id: NodeId, gid: GroupId, cfg: &DriverConfig) {
        let raft = &mut self.node.raft;
        let timeout = match self.timeout_for {
            Some((term, role, timeout)) if term == raft.term && role == raft.state => timeout,
            _ => {
                let voters: Vec<u64> = raft.prs().conf().voters().ids().iter().collect();
                let timeout = cfg.election_timeout(id, gid, &voters, raft.term, raft.state);
                self.timeout_for = Some((raft.term, raft.state, timeout));
                timeout
            }
        };
        if raft.randomized_election_timeout() != timeout {
            raft.set_randomized_election_timeout(timeout);
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ready;
#[cfg(test)]
mod tests_scan;
