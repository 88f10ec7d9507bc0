//! A deterministic simulated cluster: N nodes in one process.
//!
//! Each node is a real [`Driver`] over a real redb database, kept on a
//! [`MemDisk`] so that a crash (dropping the driver) loses exactly what was
//! only in its memory (the overlay), as a killed process does. Between the
//! nodes sits [`Network`], an in-memory transport that can drop, delay,
//! duplicate, reorder and partition messages. Time is simulated: each
//! [`Sim::step`] delivers the messages that are due and runs one round on
//! every live node (through [`crate::runtime::round`], the path the node's
//! driver thread takes too), and every `steps_per_tick` steps each node
//! ticks. Every random choice comes from one seeded generator, so a failing
//! run is replayed by its seed.
//!
//! Clients are modelled by [`Sim::submit`] (fire a request, get a token) and
//! by helpers that retry a request until it is answered, following leader
//! hints as a real client would.

mod client;
mod network;

pub use network::{Faults, Network};

use crate::runtime;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use raft::eraftpb::MessageType;
use raft::StateRole;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::catalog::{Catalog, CatalogCommand, NodeInfo, NodeState};
use crate::error::{Error, Result};
use crate::multiraft::GroupMessage;
use crate::multiraft::{Applied, Driver, DriverConfig, Proposal, Reply, Token};
use crate::storage::{copy_snapshot, Engine, MemDisk, MemoryConfig, SnapshotLimits, Snapshots};
use crate::types::{GroupId, NodeId, CATALOG_GROUP};

/// How to build a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: u64,
    /// Data groups created at bootstrap.
    pub data_groups: u64,
    /// Vshard count.
    pub vshards: u32,
    /// Replicas per group.
    pub replicas: usize,
    /// The seed of the whole run.
    pub seed: u64,
    /// Network faults.
    pub faults: Faults,
    /// Rounds per tick: messages travel within a tick, as on a real network
    /// whose round trip is far below the tick interval.
    pub steps_per_tick: u64,
    /// Driver settings (the seed is overridden per node from `seed`).
    pub driver: DriverConfig,
    /// Each node's memory budgets.
    pub memory: MemoryConfig,
    /// Every node's snapshot chunk size and transfer bounds.
    pub snapshots: SnapshotLimits,
}

/// The simulation's entry cache: small, so that every scenario evicts
/// entries and serves lagging followers and restarts from the log table.
pub const SIM_RAFT_CACHE_BYTES: usize = 64 << 10;

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            data_groups: 32,
            vshards: 1024,
            replicas: 3,
            seed: 1,
            faults: Faults::default(),
            steps_per_tick: 4,
            // Scenarios move leaders themselves; balancing would fight them.
            driver: DriverConfig {
                balance_leaders: false,
                ..DriverConfig::default()
            },
            memory: MemoryConfig {
                raft_cache: SIM_RAFT_CACHE_BYTES,
                ..MemoryConfig::default()
            },
            snapshots: SnapshotLimits::default(),
        }
    }
}

/// One simulated node: its disk, and its driver while it is up.
pub struct SimNode {
    /// The node's disk; survives crashes.
    pub disk: MemDisk,
    /// The running driver, `None` while crashed.
    pub driver: Option<Driver>,
    /// Every entry this node applied, over all its lives (with tracing on).
    pub applied: Vec<Applied>,
}

/// The simulated cluster.
pub struct Sim {
    /// The configuration it was built with.
    pub cfg: SimConfig,
    /// Nodes by id.
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// The in-memory transport.
    pub net: Network,
    /// The run's random generator.
    pub rng: ChaCha8Rng,
    /// Steps taken.
    pub now: u64,
    /// The bootstrap catalog (for routing).
    pub catalog: Catalog,
    /// Answers received, by token.
    pub completions: BTreeMap<Token, Result<Reply>>,
    next_token: Token,
    /// Nodes up at the start of the current step.
    up: BTreeSet<NodeId>,
}

impl Sim {
    /// Builds and bootstraps a cluster; no step has run yet.
    pub fn new(cfg: SimConfig) -> Result<Sim> {
        let ids: Vec<(NodeId, String)> = (1..=cfg.nodes)
            .map(|i| (NodeId(i), format!("sim-{i}")))
            .collect();
        let catalog = Catalog::bootstrap(
            0xF10_7111A ^ cfg.seed,
            cfg.vshards,
            &ids,
            cfg.data_groups,
            cfg.replicas,
        )?;
        let mut nodes = BTreeMap::new();
        for (id, _) in &ids {
            let disk = MemDisk::new();
            Engine::open_backend(disk.clone())?.bootstrap(*id, &catalog)?;
            nodes.insert(
                *id,
                SimNode {
                    disk,
                    driver: None,
                    applied: Vec::new(),
                },
            );
        }
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            net: Network::new(cfg.faults.clone()),
            cfg,
            nodes,
            now: 0,
            catalog,
            completions: BTreeMap::new(),
            next_token: 1,
            up: BTreeSet::new(),
        };
        let all: Vec<NodeId> = sim.nodes.keys().copied().collect();
        for id in all {
            sim.restart(id)?;
        }
        Ok(sim)
    }

    /// Builds a cluster and steps it until every group has a leader; an
    /// error when `max_steps` steps were not enough.
    pub fn with_leaders(cfg: SimConfig, max_steps: u64) -> Result<Sim> {
        let seed = cfg.seed;
        let mut sim = Sim::new(cfg)?;
        if !sim.run_until(max_steps, |s| s.all_have_leaders())? {
            return Err(Error::Invalid(format!(
                "seed {seed}: no leader for every group after {max_steps} steps"
            )));
        }
        Ok(sim)
    }

    /// Starts (or restarts) a node from its disk.
    pub fn restart(&mut self, id: NodeId) -> Result<()> {
        let mut dcfg = self.cfg.driver.clone();
        dcfg.seed = self.cfg.seed ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| Error::Invalid(format!("no node {id}")))?;
        assert!(node.driver.is_none(), "{id} is already running");
        let engine = Engine::open_backend_with(node.disk.clone(), self.cfg.memory)?;
        engine.snapshots().set_limits(self.cfg.snapshots);
        node.driver = Some(Driver::open(engine, dcfg)?);
        Ok(())
    }

    /// Adds a node to the running cluster the way a join does: the new node
    /// stores the catalog it was given and an empty group 0, then group 0's
    /// leader registers it. Placement and each group's leader do the rest.
    pub fn join(&mut self, id: NodeId, max_steps: u64) -> Result<()> {
        let leader = self.leader(CATALOG_GROUP).ok_or(Error::NotLeader {
            group: CATALOG_GROUP,
            leader: None,
        })?;
        let catalog = self.driver(leader).expect("leader is up").catalog().clone();
        let disk = MemDisk::new();
        Engine::open_backend(disk.clone())?.bootstrap_joiner(id, &catalog)?;
        self.nodes.insert(
            id,
            SimNode {
                disk,
                driver: None,
                applied: Vec::new(),
            },
        );
        self.restart(id)?;
        let info = NodeInfo {
            id,
            addr: format!("sim-{}", id.0),
            spki_sha256: vec![],
            store_id: id.0,
            state: NodeState::Active,
        };
        let p = Proposal::Catalog(CatalogCommand::UpsertNode(info));
        self.request(CATALOG_GROUP, max_steps, |s, node| {
            s.submit(node, CATALOG_GROUP, &p)
        })?;
        Ok(())
    }

    /// Crashes a node: its driver and everything not synced to its disk are
    /// gone (a commit made without a sync is lost too). Messages in flight to it will be dropped.
    pub fn crash(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            // The image is taken first: the dying driver may still write.
            n.disk = n.disk.crash_image();
            n.driver = None;
        }
    }

    /// Whether a node is up.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.driver.is_some())
    }

    /// The driver of a live node.
    pub fn driver(&self, id: NodeId) -> Option<&Driver> {
        self.nodes.get(&id)?.driver.as_ref()
    }

    /// The driver of a live node, mutably.
    pub fn driver_mut(&mut self, id: NodeId) -> Option<&mut Driver> {
        self.nodes.get_mut(&id)?.driver.as_mut()
    }

    /// All node ids.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// All group ids, group 0 included.
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.catalog.groups.keys().copied().collect()
    }

    /// One step: deliver due messages, run a round on every live node, and
    /// tick every `steps_per_tick` steps.
    pub fn step(&mut self) -> Result<()> {
        self.now += 1;
        let tick = self.now % self.cfg.steps_per_tick == 0;
        for (to, msgs) in self.net.due(self.now) {
            if let Some(d) = self.nodes.get_mut(&to).and_then(|n| n.driver.as_mut()) {
                d.step(msgs);
            }
        }
        self.up = self
            .nodes
            .iter()
            .filter(|(_, n)| n.driver.is_some())
            .map(|(id, _)| *id)
            .collect();
        let stores: BTreeMap<NodeId, Arc<Snapshots>> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| Some((*id, n.driver.as_ref()?.engine().snapshots())))
            .collect();
        for (id, node) in &mut self.nodes {
            let Some(d) = node.driver.as_mut() else {
                continue;
            };
            if tick {
                d.tick();
            }
            let out = runtime::round(d)?;
            node.applied.extend(out.applied);
            for c in out.completions {
                self.completions.insert(c.token, c.result);
            }
            for (to, mut msgs) in out.outbound {
                let failed = carry_snapshots(&stores, &self.net, *id, to, &mut msgs);
                for g in failed {
                    d.report_snapshot(g, to, false);
                }
                let snapshots: Vec<GroupId> = msgs
                    .iter()
                    .filter(|m| m.msg.get_msg_type() == MessageType::MsgSnapshot)
                    .map(|m| m.group)
                    .collect();
                let sent =
                    self.net.send(&mut self.rng, self.now, *id, to, msgs) && self.up.contains(&to);
                if !sent {
                    d.report_unreachable(to);
                }
                for g in snapshots {
                    d.report_snapshot(g, to, sent);
                }
            }
        }
        Ok(())
    }

    /// Steps until `cond` holds, at most `max_steps` times. Returns whether
    /// it held.
    pub fn run_until(
        &mut self,
        max_steps: u64,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Result<bool> {
        for _ in 0..max_steps {
            if cond(self) {
                return Ok(true);
            }
            self.step()?;
        }
        Ok(cond(self))
    }

    /// Steps `ticks` ticks' worth.
    pub fn run_ticks(&mut self, ticks: u64) -> Result<()> {
        for _ in 0..ticks * self.cfg.steps_per_tick {
            self.step()?;
        }
        Ok(())
    }

    /// The live node that leads `group` in the highest term, if any.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| Some((id, n.driver.as_ref()?.status(group)?)))
            .filter(|(_, s)| s.role == StateRole::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| *id)
    }

    /// Whether every group has a live leader.
    pub fn all_have_leaders(&self) -> bool {
        self.group_ids()
            .into_iter()
            .all(|g| self.leader(g).is_some())
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    /// Sends a proposal to `node` and returns the token its answer will come
    /// under (an immediate refusal is recorded as the answer at once).
    pub fn submit(&mut self, node: NodeId, group: GroupId, p: &Proposal) -> Token {
        let token = self.token();
        let r = match self.driver_mut(node) {
            Some(d) => d.propose(token, group, p),
            None => Err(Error::ProposalLost {
                group,
                reason: "node is down".into(),
            }),
        };
        if let Err(e) = r {
            self.completions.insert(token, Err(e));
        }
        token
    }

    /// Sends a linearizable read to `node`.
    pub fn submit_read(&mut self, node: NodeId, group: GroupId, key: &[u8]) -> Token {
        let token = self.token();
        let r = match self.driver_mut(node) {
            Some(d) => d.read(token, group, key),
            None => Err(Error::ReadUnconfirmed {
                group,
                reason: "node is down".into(),
            }),
        };
        if let Err(e) = r {
            self.completions.insert(token, Err(e));
        }
        token
    }

    /// Per group, whether the group is settled: one live leader whose whole
    /// log is committed, and every live member applied exactly that far
    /// with the same state digest. Equal digests alone are not enough: a
    /// leaderless group whose replicas all stopped at one index looks
    /// identical while a committed entry still waits to be applied.
    pub fn converged(&self) -> Result<bool> {
        for g in self.group_ids() {
            let mut leader_commit = None;
            let mut members = Vec::new();
            for n in self.nodes.values() {
                let Some(d) = n.driver.as_ref() else { continue };
                // A replica removed from the group keeps its last state
                // until it is cleaned up; only members must agree.
                let Some(st) = d.status(g) else { continue };
                if !st.voters.contains(&d.id()) && !st.learners.contains(&d.id()) {
                    continue;
                }
                if st.role == StateRole::Leader {
                    if st.commit != st.last_index || leader_commit.is_some() {
                        return Ok(false);
                    }
                    leader_commit = Some(st.commit);
                }
                members.push((st.applied, d.engine().group_digest(g)?));
            }
            let Some(commit) = leader_commit else {
                return Ok(false);
            };
            let (_, digest) = members[0];
            if members.iter().any(|&(a, d)| a != commit || d != digest) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A table of every replica's state (role, term, indexes, digest), for
    /// failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for g in self.group_ids() {
            for (id, n) in &self.nodes {
                let Some(d) = n.driver.as_ref() else {
                    out.push_str(&format!("{g} {id}: down\n"));
                    continue;
                };
                let Some(s) = d.status(g) else { continue };
                let digest = d.engine().group_digest(g).map(|(_, h)| h).unwrap_or(0);
                out.push_str(&format!(
                    "{g} {id}: {:?} term {} leader {:?} commit {} applied {} log {}..={} digest {digest:016x}\n",
                    s.role, s.term, s.leader, s.commit, s.applied, s.first_index, s.last_index
                ));
            }
        }
        out
    }

    /// Steps until every live replica has converged, checking every tick.
    pub fn run_until_converged(&mut self, max_ticks: u64) -> Result<bool> {
        for _ in 0..max_ticks {
            if self.converged()? {
                return Ok(true);
            }
            self.run_ticks(1)?;
        }
        self.converged()
    }
}

/// Carries the state of every snapshot in `msgs` from `from` into `to`'s
/// staging at once, through the same sources and stagings the QUIC
/// transport streams between (see `storage::snapshot`), chunk by chunk.
/// A snapshot whose transfer fails (its peer down or cut off, its staging
/// refused) is taken out of `msgs`; its group is returned, for the sender
/// to hear of the failure. The messages themselves then travel through the
/// network's faults like any other.
fn carry_snapshots(
    stores: &BTreeMap<NodeId, Arc<Snapshots>>,
    net: &Network,
    from: NodeId,
    to: NodeId,
    msgs: &mut Vec<GroupMessage>,
) -> Vec<GroupId> {
    let mut failed = Vec::new();
    let Some(source) = stores.get(&from) else {
        return failed;
    };
    msgs.retain(|m| {
        if m.msg.get_msg_type() != MessageType::MsgSnapshot {
            return true;
        }
        let snap = m.msg.get_snapshot();
        let carried = match stores.get(&to).filter(|_| !net.is_cut(from, to)) {
            Some(dest) => {
                copy_snapshot(source, dest, m.group, snap.get_metadata().index, &snap.data).is_ok()
            }
            None => {
                source.abandon(&snap.data);
                false
            }
        };
        if !carried {
            failed.push(m.group);
        }
        carried
    });
    failed
}
