//! A node process: storage, driver thread, transport and request service.
//!
//! [`NodeServer::start`] opens the data directory and binds the transport,
//! then takes one of three paths, decided by `is_bootstrapped()` alone:
//!
//! - **restart**: the data directory holds a cluster id; the driver replays
//!   its own state and the node dials the peers its catalog names;
//! - **join**: no cluster id and seeds given; the node asks the seeds
//!   ([`super::join::JoinPlan`]) until the leader of group 0 admits it, then
//!   stores the catalog it received before opening any group;
//! - **wait**: no cluster id and no seeds; the node waits for `init`.
//!
//! Until it is running, the node answers `status` and `init`, and asks
//! callers of anything else to retry; what it does with each request is
//! [`super::handlers`]'.
//!
//! Before a restart, [`standing`] asks whether the cluster still has this
//! node. Once it runs, [`upkeep`] keeps its peers' addresses right: from
//! the catalog, from its own announcements after a move, and from its
//! seeds when it has been cut off. What it counts for `/metrics` is kept
//! in [`super::metrics::NodeMetrics`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod standing;
mod upkeep;

use super::join::{Answer, JoinPlan, JoinPolicy, Step};
use super::metrics::NodeMetrics;
use super::raft_link::{DriverInbox, NoInbox, QuicSender};
use super::Lifecycle;
use crate::api::{RpcError, RpcRequest, RpcResponse};
use crate::catalog::{Catalog, DEFAULT_DATA_GROUPS, DEFAULT_REPLICAS, DEFAULT_VSHARDS};
use crate::certs::spki_sha256;
use crate::error::{Error, Result};
use crate::multiraft::{Driver, DriverConfig, Replayed};
use crate::runtime::runner::{DriverHandle, Runner};
use crate::storage::{Engine, MemoryConfig, SnapshotLimits};
use crate::transport::rpc;
use crate::transport::{TlsIdentity, Transport, SNAPSHOT_RATE as DEFAULT_SNAPSHOT_RATE};
use crate::types::NodeId;
use standing::{standing, Standing};

/// How long a restarting node waits for one seed to say which cluster it
/// belongs to before moving on.
const SEED_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a running node refreshes its peers' addresses from its catalog.
const PEER_REFRESH: Duration = Duration::from_millis(500);
/// How often a node that moved retries recording its new address.
const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);
/// Default for [`NodeConfig::isolation_timeout`].
pub const DEFAULT_ISOLATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`NodeConfig::dead_after`]: five minutes, long enough to
/// ride out a restart or a reboot without moving every replica a node holds.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(300);

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the node keeps its database.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address peers and clients should use; defaults to the bound address.
    pub advertise: Option<SocketAddr>,
    /// Seeds to join through.
    pub join: Vec<String>,
    /// Directory with `ca.crt` and the node's certificate and key.
    pub certs_dir: PathBuf,
    /// Present `node-NAME.crt`/`.key`; without a name, `node.crt`/`.key`.
    pub cert_name: Option<String>,
    /// How hard to try joining.
    pub join_policy: JoinPolicy,
    /// Real time per driver tick.
    pub tick: Duration,
    /// Data groups created by `init`.
    pub data_groups: u64,
    /// Vshards created by `init`.
    pub vshards: u32,
    /// When the seeds belong to another cluster than the data directory,
    /// discard this node's data and join theirs (instead of refusing).
    pub wipe_and_join: bool,
    /// After this long without reaching any peer, the node asks its seeds
    /// where its peers are now, and again every period while isolated.
    pub isolation_timeout: Duration,
    /// How long a node may stay silent before group 0's leader declares it
    /// dead (see `multiraft::liveness`).
    pub dead_after: Duration,
    /// What the storage engine may keep in memory (`--raft-cache`,
    /// `--db-cache`).
    pub memory: MemoryConfig,
    /// Snapshot bytes a second this node sends at most, over all its
    /// transfers (0: unlimited); `--snapshot-rate`.
    pub snapshot_rate: u64,
    /// Chunk size and concurrency of snapshot transfers.
    pub snapshot_limits: SnapshotLimits,
}

impl NodeConfig {
    /// Defaults for everything but the paths and addresses.
    pub fn new(data_dir: PathBuf, listen: SocketAddr, certs_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            data_dir,
            listen,
            advertise: None,
            join: Vec::new(),
            certs_dir,
            cert_name: None,
            join_policy: JoinPolicy::default(),
            tick: Duration::from_millis(100),
            data_groups: DEFAULT_DATA_GROUPS,
            vshards: DEFAULT_VSHARDS,
            wipe_and_join: false,
            isolation_timeout: DEFAULT_ISOLATION_TIMEOUT,
            dead_after: DEFAULT_DEAD_AFTER,
            memory: MemoryConfig::default(),
            snapshot_rate: DEFAULT_SNAPSHOT_RATE,
            snapshot_limits: SnapshotLimits::default(),
        }
    }
}

/// What changes as the node goes through its life.
struct State {
    lifecycle: Lifecycle,
    /// The database until the driver takes it.
    engine: Option<Engine>,
    runner: Option<Runner>,
    handle: Option<DriverHandle>,
    /// What the driver read back from its own log when it started.
    replayed: Replayed,
    /// Peer addresses learned from seeds while isolated, by node: the
    /// catalog's (stale) address at the time, and the address learned. The
    /// learned one wins until the catalog records a change for that node.
    learned: BTreeMap<NodeId, (String, SocketAddr)>,
}

/// A running node.
pub struct NodeServer {
    cfg: NodeConfig,
    /// The node's QUIC endpoint; the request handlers read its counters.
    pub(super) transport: Arc<Transport>,
    /// Request latencies and the figures `/metrics` reads.
    pub(super) metrics: Arc<NodeMetrics>,
    advertise: SocketAddr,
    spki: [u8; 32],
    /// A std lock: held only to read or swap fields, never across an await.
    state: Mutex<State>,
    /// This server itself, for requests that start the driver.
    me: std::sync::Weak<NodeServer>,
}

impl NodeServer {
    /// Opens the data directory, binds the transport and takes the restart,
    /// join or wait path. Must run inside a tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Arc<NodeServer>> {
        let identity = TlsIdentity::load_node(&cfg.certs_dir, cfg.cert_name.as_deref())?;
        let spki = spki_sha256(&identity.cert)?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| Error::Invalid(format!("{}: {e}", cfg.data_dir.display())))?;
        let db_path = cfg.data_dir.join("flotilla.redb");
        // Without seeds a wiped node would wait for `init`, a cluster of its
        // own: data is discarded only to join one.
        let wipe = cfg.wipe_and_join && !cfg.join.is_empty();
        tracing::info!(path = %db_path.display(), "opening the data directory");
        let mut engine = open_or_wipe(&db_path, cfg.memory, wipe)?;
        engine.ensure_store_id(random_store_id())?;
        let node = engine.node_id()?.unwrap_or_default();
        let transport = Transport::bind(node, cfg.listen, &identity)?;
        if let Some(ours) = engine.cluster_id()? {
            let refusal = match standing(&transport, &identity, &cfg.join, &engine).await? {
                Standing::Member => None,
                Standing::OtherCluster { seed, theirs } => Some(format!(
                    "this data directory belongs to cluster {ours:016x} but seed {seed} belongs to cluster \
                     {theirs:016x}; pass --wipe-and-join to discard this node's data and join that cluster"
                )),
                Standing::Removed { by } => Some(format!(
                    "node {} was removed from cluster {ours:016x} ({by}); a removed node never comes back: \
                     pass --wipe-and-join to discard this node's data and join as a new node",
                    node.0
                )),
            };
            if let Some(refusal) = refusal {
                if !cfg.wipe_and_join {
                    transport.close();
                    return Err(Error::Invalid(refusal));
                }
                tracing::warn!(reason = %refusal, "wiping this node's data to join as a new node");
                drop(engine);
                Engine::remove(&db_path)?;
                engine = Engine::open_with(&db_path, cfg.memory)?;
                engine.ensure_store_id(random_store_id())?;
                transport.set_node(NodeId::default());
            }
        }
        let advertise = cfg.advertise.unwrap_or(transport.local_addr()?);
        let bootstrapped = engine.is_bootstrapped()?;
        let server = Arc::new_cyclic(|me| NodeServer {
            cfg,
            transport: transport.clone(),
            metrics: Arc::default(),
            advertise,
            spki,
            state: Mutex::new(State {
                lifecycle: Lifecycle::Starting,
                engine: Some(engine),
                runner: None,
                handle: None,
                replayed: Replayed::default(),
                learned: BTreeMap::new(),
            }),
            me: me.clone(),
        });
        transport.serve(Arc::new(NoInbox), server.clone());
        if bootstrapped {
            server.set_lifecycle(Lifecycle::Restarting);
            server.launch()?;
        } else if !server.cfg.join.is_empty() {
            tokio::spawn(server.clone().join_loop());
        }
        Ok(server)
    }

    /// The address the node advertises.
    pub fn addr(&self) -> SocketAddr {
        self.advertise
    }

    /// Where the node keeps its data.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.cfg.data_dir
    }

    /// Where the node is in its life. A driver that ended by itself makes
    /// the node failed, so `flotilla start` exits loudly instead of
    /// answering every request with "unreachable".
    pub fn lifecycle(&self) -> Lifecycle {
        let st = self.lock();
        if st.runner.as_ref().is_some_and(Runner::finished) {
            return Lifecycle::Failed {
                reason: "the Raft driver stopped on a local fault (its cause is logged above); \
                         restart the node once the disk is sound"
                    .into(),
            };
        }
        st.lifecycle.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_lifecycle(&self, l: Lifecycle) {
        tracing::info!(node_id = self.transport.node().0, lifecycle = %l, "lifecycle");
        self.lock().lifecycle = l;
    }

    /// Sets the lifecycle unless the driver already runs (checked under the
    /// same lock `launch` takes); returns whether it did.
    fn set_lifecycle_unless_running(&self, l: Lifecycle) -> bool {
        let mut st = self.lock();
        if st.handle.is_some() {
            return false;
        }
        if st.lifecycle != l {
            tracing::info!(node_id = self.transport.node().0, lifecycle = %l, "lifecycle");
        }
        st.lifecycle = l;
        true
    }

    /// The running driver, once there is one.
    pub(super) fn driver(&self) -> Option<DriverHandle> {
        self.lock().handle.clone()
    }

    /// What the driver read back from its own log when it started.
    pub(super) fn replayed(&self) -> Replayed {
        self.lock().replayed
    }

    /// Starts the driver on the bootstrapped engine and begins serving.
    fn launch(self: &Arc<Self>) -> Result<()> {
        let engine = self
            .lock()
            .engine
            .take()
            .ok_or_else(|| Error::Invalid("the node is already running".into()))?;
        let node = engine
            .node_id()?
            .ok_or_else(|| Error::Invalid("no node id after bootstrap".into()))?;
        self.transport.set_node(node);
        let tick_nanos = self.cfg.tick.as_nanos().max(1);
        let cfg = DriverConfig {
            seed: rand::random(),
            replicas: DEFAULT_REPLICAS,
            dead_after_ticks: u64::try_from(self.cfg.dead_after.as_nanos() / tick_nanos)
                .unwrap_or(u64::MAX),
            ..DriverConfig::default()
        };
        let snapshots = engine.snapshots();
        snapshots.set_limits(self.cfg.snapshot_limits);
        let driver = Driver::open(engine, cfg)?;
        self.metrics
            .attach(driver.stats(), driver.engine().meters());
        let replayed = driver.replayed();
        self.refresh_peers(driver.catalog());
        let sender = QuicSender::new(self.transport.clone());
        let runner = Runner::spawn(driver, sender, self.cfg.tick)?;
        let handle = runner.handle();
        self.transport
            .serve_snapshots(snapshots, self.cfg.snapshot_rate);
        self.transport
            .serve(Arc::new(DriverInbox(handle.clone())), self.clone());
        {
            let mut st = self.lock();
            st.runner = Some(runner);
            st.handle = Some(handle.clone());
            st.replayed = replayed;
        }
        self.set_lifecycle(Lifecycle::Ready);
        self.start_upkeep(handle);
        Ok(())
    }

    async fn join_loop(self: Arc<Self>) {
        let mut plan = JoinPlan::new(
            self.cfg.join.clone(),
            self.cfg.join_policy.clone(),
            rand::random(),
        );
        loop {
            // `init` may have made this node a cluster of its own meanwhile;
            // then the join is over and must not touch the lifecycle.
            if !self.set_lifecycle_unless_running(plan.lifecycle()) {
                return;
            }
            match plan.next_step() {
                Step::Wait(d) => tokio::time::sleep(d).await,
                Step::GiveUp(reason) => {
                    if self.set_lifecycle_unless_running(Lifecycle::Failed {
                        reason: reason.clone(),
                    }) {
                        tracing::error!(reason = %reason, "joining failed");
                    }
                    return;
                }
                Step::Ask(seed) if seed == self.advertise.to_string() => {
                    plan.answer(Answer::Unreachable)
                }
                Step::Ask(seed) => {
                    let answer = self.ask_to_join(&seed).await;
                    let done = matches!(answer, Ok(()));
                    plan.answer(match answer {
                        Ok(()) => Answer::Joined,
                        Err(Some(leader)) => Answer::Redirect(leader),
                        Err(None) => Answer::Unreachable,
                    });
                    if done {
                        return;
                    }
                }
            }
        }
    }

    /// One join request. `Err(Some(hint))` is a redirect.
    async fn ask_to_join(
        self: &Arc<Self>,
        seed: &str,
    ) -> std::result::Result<(), Option<Option<String>>> {
        let addr = tokio::net::lookup_host(seed)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or(None::<Option<String>>)?;
        let store_id = {
            let st = self.lock();
            match st.engine.as_ref().map(Engine::store_id) {
                Some(Ok(Some(id))) => id,
                _ => return Err(None),
            }
        };
        let req = RpcRequest::Join {
            addr: self.advertise.to_string(),
            spki_sha256: self.spki.to_vec(),
            store_id,
        };
        let config = self.client_config().map_err(|_| None::<Option<String>>)?;
        let endpoint = self.transport.endpoint();
        match rpc::call(endpoint, &config, addr, &req).await {
            Ok(RpcResponse::Joined { node_id, catalog }) => {
                let catalog: Catalog =
                    Catalog::decode(&catalog).map_err(|_| None::<Option<String>>)?;
                let stored = {
                    let st = self.lock();
                    st.engine
                        .as_ref()
                        .map(|e| e.bootstrap_joiner(node_id, &catalog))
                };
                match stored {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "could not store the catalog");
                        return Err(None);
                    }
                    None => return Err(None),
                }
                if let Err(e) = self.launch() {
                    self.set_lifecycle(Lifecycle::Failed {
                        reason: e.to_string(),
                    });
                }
                Ok(())
            }
            Ok(RpcResponse::Error(RpcError::NotLeader { leader_addr, .. })) => {
                Err(Some(leader_addr))
            }
            Ok(other) => {
                tracing::debug!(seed, answer = ?other, "join not accepted");
                Err(None)
            }
            Err(e) => {
                tracing::debug!(seed, error = %e, "seed unreachable");
                Err(None)
            }
        }
    }

    fn client_config(&self) -> Result<quinn::ClientConfig> {
        Ok(self.transport.client_config())
    }

    /// Reads the node's certificate files again and presents them to new
    /// connections (see [`Transport::reload`]); on SIGHUP.
    pub fn reload_certificates(&self) -> Result<()> {
        let name = self.cfg.cert_name.as_deref();
        self.transport
            .reload(&TlsIdentity::load_node(&self.cfg.certs_dir, name)?)
    }

    /// Bootstraps a new cluster on this node (once, ever) with `vshards`
    /// (else the node's default) and starts its driver; returns the
    /// cluster id.
    pub(super) fn init(&self, vshards: Option<u32>) -> Result<u64> {
        let cluster_id = {
            let st = self.lock();
            let engine = st
                .engine
                .as_ref()
                .ok_or_else(|| Error::Invalid("this node already belongs to a cluster".into()))?;
            if let Some(id) = engine.cluster_id()? {
                return Err(Error::Invalid(format!(
                    "this node already belongs to cluster {id:016x}"
                )));
            }
            let cluster_id: u64 = rand::random();
            let me = [(NodeId(1), self.advertise.to_string())];
            let mut catalog = Catalog::bootstrap(
                cluster_id,
                vshards.unwrap_or(self.cfg.vshards),
                &me,
                self.cfg.data_groups,
                DEFAULT_REPLICAS,
            )?;
            if let Some(n) = catalog.nodes.get_mut(&NodeId(1)) {
                n.spki_sha256 = self.spki.to_vec();
                n.store_id = engine.ensure_store_id(random_store_id())?;
            }
            engine.bootstrap(NodeId(1), &catalog)?;
            cluster_id
        };
        self.me
            .upgrade()
            .ok_or_else(|| Error::Unreachable("the node is stopping".into()))?
            .launch()?;
        Ok(cluster_id)
    }

    /// Stops the driver and closes the transport.
    pub fn stop(&self) {
        self.transport.close();
        let runner = self.lock().runner.take();
        if let Some(r) = runner {
            if let Err(e) = r.stop() {
                tracing::error!(error = %e, "driver ended with an error");
            }
        }
    }
}

/// Opens the database at `path`. With `wipe`, a database this build
/// cannot use (another on-disk format, a damaged round log) is discarded
/// and a new one made, so the node joins as a new store; without it, the
/// error says how to do that.
fn open_or_wipe(path: &std::path::Path, mem: MemoryConfig, wipe: bool) -> Result<Engine> {
    match Engine::open_with(path, mem) {
        Err(e @ (Error::Invalid(_) | Error::Corrupt { .. })) if wipe => {
            tracing::warn!(error = %e, "discarding this node's data (--wipe-and-join)");
            Engine::remove(path)?;
            Engine::open_with(path, mem)
        }
        r => r,
    }
}

/// A fresh, non-zero store id.
fn random_store_id() -> u64 {
    rand::random::<u64>().max(1)
}
