//! A cluster of real driver threads inside one process.
//!
//! Where [`crate::sim`] steps nodes one after another under a seed, a
//! [`LocalCluster`] runs each node's [`Driver`] on its own thread with real
//! time and, optionally, real files, connected by the in-memory
//! [`LocalNetwork`]. Benchmarks use it to measure throughput and fsyncs with
//! real concurrency; tests use it to check the threaded runner.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::StateRole;
use tokio::sync::oneshot;

use crate::catalog::Catalog;
use crate::error::{Action, Error, Result};
use crate::kv::{Command, Response};
use crate::multiraft::runner::{DriverHandle, LocalNetwork, Runner};
use crate::multiraft::{Driver, DriverConfig, Proposal, Reply};
use crate::storage::{Engine, MemDisk, Stats};
use crate::types::{GroupId, NodeId};

/// Real time per tick for local clusters: short, so tests and benches do
/// not wait long for elections, yet far above a loopback message's trip.
pub const LOCAL_TICK: Duration = Duration::from_millis(20);

/// N drivers on threads, wired together in memory.
pub struct LocalCluster {
    /// The bootstrap catalog, for routing.
    pub catalog: Catalog,
    network: LocalNetwork,
    runners: BTreeMap<NodeId, Runner>,
    stats: BTreeMap<NodeId, Arc<Stats>>,
    /// Last known leader per group.
    leaders: BTreeMap<GroupId, NodeId>,
}

impl LocalCluster {
    /// Bootstraps and starts `nodes` nodes. With `dir`, each node keeps a
    /// redb file there (real fsyncs); without, memory.
    pub fn start(
        nodes: u64,
        data_groups: u64,
        vshards: u32,
        dir: Option<&Path>,
    ) -> Result<LocalCluster> {
        let ids: Vec<(NodeId, String)> = (1..=nodes)
            .map(|i| (NodeId(i), format!("local-{i}")))
            .collect();
        let catalog = Catalog::bootstrap(0x10CA1, vshards, &ids, data_groups, 3)?;
        let network = LocalNetwork::default();
        let mut runners = BTreeMap::new();
        let mut stats = BTreeMap::new();
        for (id, _) in &ids {
            let engine = match dir {
                Some(d) => Engine::open(&d.join(format!("node-{}.redb", id.0)))?,
                None => Engine::open_backend(MemDisk::new())?,
            };
            engine.bootstrap(*id, &catalog)?;
            stats.insert(*id, engine.stats());
            let cfg = DriverConfig {
                seed: id.0,
                ..DriverConfig::default()
            };
            let runner =
                Runner::spawn(Driver::open(engine, cfg)?, network.transport(), LOCAL_TICK)?;
            network.register(*id, runner.handle());
            runners.insert(*id, runner);
        }
        Ok(LocalCluster {
            catalog,
            network,
            runners,
            stats,
            leaders: BTreeMap::new(),
        })
    }

    /// The handle of a node.
    pub fn handle(&self, node: NodeId) -> Option<DriverHandle> {
        self.runners.get(&node).map(Runner::handle)
    }

    /// Redb commits (fsyncs) of all nodes so far.
    pub fn commits(&self) -> u64 {
        self.stats.values().map(|s| s.commits()).sum()
    }

    /// Asks every node who leads what; remembers the answers.
    pub fn refresh_leaders(&mut self) {
        let mut leaders = BTreeMap::new();
        for (id, r) in &self.runners {
            if let Ok(all) = r.handle().status().blocking_recv() {
                for s in all.into_iter().filter(|s| s.role == StateRole::Leader) {
                    leaders.insert(s.group, *id);
                }
            }
        }
        self.leaders = leaders;
    }

    /// Waits until every group has a leader, polling until `timeout`.
    pub fn wait_for_leaders(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh_leaders();
            if self.leaders.len() == self.catalog.groups.len() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(LOCAL_TICK);
        }
    }

    /// Sends a command to the leader of its group without waiting.
    pub fn submit(&self, cmd: Command) -> oneshot::Receiver<Result<Reply>> {
        let group = self.catalog.group_of(cmd.op.key());
        let node = self.leaders.get(&group).copied().unwrap_or(NodeId(1));
        match self.handle(node) {
            Some(h) => h.propose(group, Proposal::Kv(cmd)),
            None => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(Error::UnknownGroup(group)));
                rx
            }
        }
    }

    /// Applies many commands, all in flight at once, retrying each (same
    /// client and sequence) until answered or `timeout` passes.
    pub fn write_many(&mut self, cmds: &[Command], timeout: Duration) -> Result<Vec<Response>> {
        let deadline = Instant::now() + timeout;
        let mut results: Vec<Option<Response>> = vec![None; cmds.len()];
        while results.iter().any(Option::is_none) {
            if Instant::now() >= deadline {
                return Err(Error::ProposalLost {
                    group: GroupId(0),
                    reason: "not answered in time",
                });
            }
            let pending: Vec<(usize, oneshot::Receiver<Result<Reply>>)> = (0..cmds.len())
                .filter(|i| results[*i].is_none())
                .map(|i| (i, self.submit(cmds[i].clone())))
                .collect();
            let mut stale = false;
            for (i, rx) in pending {
                match rx.blocking_recv() {
                    Ok(Ok(Reply::Kv(r))) => results[i] = Some(r),
                    Ok(Ok(other)) => {
                        return Err(Error::Invalid(format!("unexpected reply {other:?}")))
                    }
                    Ok(Err(e)) if e.action() == Action::Fail => return Err(e),
                    Ok(Err(_)) | Err(_) => stale = true,
                }
            }
            if stale {
                std::thread::sleep(LOCAL_TICK);
                self.refresh_leaders();
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("all answered"))
            .collect())
    }

    /// A linearizable read through the group's leader.
    pub fn read(&mut self, key: &[u8], timeout: Duration) -> Result<Option<Vec<u8>>> {
        let group = self.catalog.group_of(key);
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.leaders.get(&group).copied().unwrap_or(NodeId(1));
            let h = self.handle(node).ok_or(Error::UnknownGroup(group))?;
            match h.read(group, key.to_vec()).blocking_recv() {
                Ok(Ok(Reply::Kv(Response::Value(v)))) => return Ok(v),
                Ok(Err(e)) if e.action() == Action::Fail => return Err(e),
                _ if Instant::now() < deadline => {
                    std::thread::sleep(LOCAL_TICK);
                    self.refresh_leaders();
                }
                Ok(Ok(other)) => return Err(Error::Invalid(format!("unexpected reply {other:?}"))),
                _ => {
                    return Err(Error::ReadUnconfirmed {
                        group,
                        reason: "timed out",
                    })
                }
            }
        }
    }

    /// Stops every node.
    pub fn stop(mut self) -> Result<()> {
        let mut first_err = Ok(());
        for (id, r) in std::mem::take(&mut self.runners) {
            self.network.unregister(id);
            if let Err(e) = r.stop() {
                first_err = first_err.and(Err(e));
            }
        }
        first_err
    }
}
