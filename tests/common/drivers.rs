//! Three drivers in the test's own process, talking Raft over real QUIC
//! with mutual TLS on loopback, each serving clients as a bare driver
//! ([`DriverService`]): a cluster without node processes, whose
//! [`DriverConfig`] a test chooses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla::catalog::Catalog;
use flotilla::certs::{self, role_files, Role, CA_CERT};
use flotilla::client::{Client, ClientConfig};
use flotilla::multiraft::{Driver, DriverConfig};
use flotilla::node::handlers::DriverService;
use flotilla::node::raft_link::{DriverInbox, QuicSender};
use flotilla::runtime::runner::Runner;
use flotilla::storage::{Engine, MemDisk};
use flotilla::transport::{TlsIdentity, Transport};
use flotilla::types::NodeId;

/// How often the drivers tick.
pub const TICK: Duration = Duration::from_millis(20);

/// The running drivers. Dropped, they stop.
pub struct QuicDrivers {
    /// Where each node listens.
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    /// The catalog they were bootstrapped with.
    pub catalog: Catalog,
    transports: Vec<Arc<Transport>>,
    runners: Vec<Runner>,
}

impl QuicDrivers {
    /// Creates certificates in `dir` and starts nodes 1 to 3 with
    /// `data_groups` groups over `vshards` vshards, each driver configured
    /// by `config`.
    pub fn start(
        dir: &Path,
        vshards: u32,
        data_groups: u64,
        config: impl Fn(NodeId) -> DriverConfig,
    ) -> QuicDrivers {
        certs::create(dir, &["127.0.0.1".into()], false).unwrap();
        let (crt, key) = role_files(dir, Role::Node);
        let identity = TlsIdentity::load(&dir.join(CA_CERT), &crt, &key).unwrap();
        let mut transports = BTreeMap::new();
        for i in 1..=3 {
            let t = Transport::bind(NodeId(i), "127.0.0.1:0".parse().unwrap(), &identity).unwrap();
            transports.insert(NodeId(i), t);
        }
        let addrs: BTreeMap<NodeId, SocketAddr> = transports
            .iter()
            .map(|(id, t)| (*id, t.local_addr().unwrap()))
            .collect();
        let members: Vec<(NodeId, String)> =
            addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
        let catalog = Catalog::bootstrap(7, vshards, &members, data_groups, 3).unwrap();
        let mut runners = Vec::new();
        for (id, t) in &transports {
            for (peer, addr) in &addrs {
                if peer != id {
                    t.set_peer(*peer, *addr, None);
                }
            }
            let engine = Engine::open_backend(MemDisk::new()).unwrap();
            engine.bootstrap(*id, &catalog).unwrap();
            let driver = Driver::open(engine, config(*id)).unwrap();
            let runner = Runner::spawn(driver, QuicSender::new(t.clone()), TICK).unwrap();
            let h = runner.handle();
            t.serve(Arc::new(DriverInbox(h.clone())), Arc::new(DriverService(h)));
            runners.push(runner);
        }
        QuicDrivers {
            addrs,
            catalog,
            transports: transports.into_values().collect(),
            runners,
        }
    }

    /// A client with the `role` certificate of `dir`, routing through
    /// every node, with `timeout` for each call.
    pub fn client(&self, dir: &Path, role: Role, timeout: Duration) -> Client {
        let (cert, key) = role_files(dir, role);
        Client::new(ClientConfig {
            endpoints: self.addrs.values().map(|a| a.to_string()).collect(),
            ca: dir.join(CA_CERT),
            cert,
            key,
            pin: None,
            timeout,
        })
        .unwrap()
    }

    /// Stops every driver, failing the test if one of them had stopped on
    /// a fault of its own.
    pub fn stop(mut self) {
        for t in &self.transports {
            t.close();
        }
        for r in self.runners.drain(..) {
            r.stop().unwrap();
        }
    }
}

impl Drop for QuicDrivers {
    fn drop(&mut self) {
        for t in &self.transports {
            t.close();
        }
        for r in self.runners.drain(..) {
            let _ = r.stop();
        }
    }
}
