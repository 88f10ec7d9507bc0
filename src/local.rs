//! A cluster of real driver threads inside one process.
//!
//! Where [`crate::sim`] steps nodes one after another under a seed, a
//! [`LocalCluster`] runs each node's [`Driver`] on its own thread with real
//! time and, optionally, real files, connected by the in-memory
//! [`LocalNetwork`]. Benchmarks use it to measure throughput and fsyncs with
//! real concurrency; tests use it to check the threaded runner.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raft::StateRole;
use tokio::sync::oneshot;

use crate::catalog::Catalog;
use crate::error::{Action, Error, Result};
use crate::kv::{Command, Response};
use crate::multiraft::{Driver, DriverConfig, Proposal, Reply};
use crate::runtime::runner::{DriverHandle, LocalNetwork, Runner};
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
    /// Last known leader per group. A std lock: held only to copy or swap
    /// the map, never across an await.
    leaders: RwLock<BTreeMap<GroupId, NodeId>>,
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
            let snapshots = engine.snapshots();
            let cfg = DriverConfig {
                seed: id.0,
                ..DriverConfig::default()
            };
            let runner =
                Runner::spawn(Driver::open(engine, cfg)?, network.transport(), LOCAL_TICK)?;
            network.register(*id, runner.handle(), snapshots);
            runners.insert(*id, runner);
        }
        Ok(LocalCluster {
            catalog,
            network,
            runners,
            stats,
            leaders: RwLock::default(),
        })
    }

    /// The handle of a node.
    pub fn handle(&self, node: NodeId) -> Option<DriverHandle> {
        self.runners.get(&node).map(Runner::handle)
    }

    /// Round commits of all nodes so far (synced or not).
    pub fn commits(&self) -> u64 {
        self.stats.values().map(|s| s.commits()).sum()
    }

    /// Round commits of all nodes so far that also committed to redb.
    pub fn redb_commits(&self) -> u64 {
        self.stats.values().map(|s| s.redb_commits()).sum()
    }

    /// Synced commits (fsyncs) of all nodes so far.
    pub fn syncs(&self) -> u64 {
        self.stats.values().map(|s| s.syncs()).sum()
    }

    fn leader(&self, group: GroupId) -> NodeId {
        let leaders = self.leaders.read().unwrap_or_else(|p| p.into_inner());
        leaders.get(&group).copied().unwrap_or(NodeId(1))
    }

    /// Asks every node who leads what; remembers the answers.
    pub async fn refresh_leaders(&self) {
        let mut leaders = BTreeMap::new();
        for (id, r) in &self.runners {
            if let Ok(all) = r.handle().status().await {
                for s in all.into_iter().filter(|s| s.role == StateRole::Leader) {
                    leaders.insert(s.group, *id);
                }
            }
        }
        *self.leaders.write().unwrap_or_else(|p| p.into_inner()) = leaders;
    }

    /// Waits until every group has a leader, polling until `timeout`.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh_leaders().await;
            let known = self.leaders.read().unwrap_or_else(|p| p.into_inner()).len();
            if known == self.catalog.groups.len() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(LOCAL_TICK).await;
        }
    }

    /// Runs one request against the leader of `group`, retrying retryable
    /// errors (after refreshing the leader map) until `timeout`.
    async fn request(
        &self,
        group: GroupId,
        timeout: Duration,
        send: impl Fn(&DriverHandle) -> oneshot::Receiver<Result<Reply>>,
    ) -> Result<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self
                .handle(self.leader(group))
                .ok_or(Error::UnknownGroup(group))?;
            let err = match send(&h).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) if e.action() == Action::Fail => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => Error::ProposalLost {
                    group,
                    reason: "the node stopped".into(),
                },
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(LOCAL_TICK).await;
            self.refresh_leaders().await;
        }
    }

    /// Applies one command, retried with the same client and sequence.
    pub async fn write(&self, cmd: Command, timeout: Duration) -> Result<Response> {
        let group = self.catalog.group_of(cmd.op.key());
        let p = Proposal::Kv(cmd);
        match self
            .request(group, timeout, |h| h.propose(group, p.clone()))
            .await?
        {
            Reply::Kv(r) => Ok(r),
            other => Err(Error::Invalid(format!("unexpected reply {other:?}"))),
        }
    }

    /// A linearizable read through the group's leader.
    pub async fn read(&self, key: &[u8], timeout: Duration) -> Result<Option<Vec<u8>>> {
        let group = self.catalog.group_of(key);
        match self
            .request(group, timeout, |h| h.read(group, key.to_vec()))
            .await?
        {
            Reply::Kv(Response::Value(v)) => Ok(v),
            other => Err(Error::Invalid(format!("unexpected reply {other:?}"))),
        }
    }

    /// Applies many commands, all in flight at once.
    pub async fn write_many(
        self: &Arc<Self>,
        cmds: Vec<Command>,
        timeout: Duration,
    ) -> Result<Vec<Response>> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, cmd) in cmds.into_iter().enumerate() {
            let me = self.clone();
            tasks.spawn(async move { (i, me.write(cmd, timeout).await) });
        }
        let mut out = vec![None; tasks.len()];
        while let Some(done) = tasks.join_next().await {
            let (i, r) = done.map_err(|e| Error::Invalid(format!("client task failed: {e}")))?;
            out[i] = Some(r?);
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every task answered"))
            .collect())
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
