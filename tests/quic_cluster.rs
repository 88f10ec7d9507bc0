//! Three drivers in one process talking over real QUIC with mutual TLS on
//! loopback: Raft traffic elects leaders, and a client
//! certificate writes and reads keys through the client library, which
//! follows leader hints, and a follower answers with a typed hint (naming
//! the group) instead of serving; two certificates that pick the same
//! client id keep separate sessions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla::api::{RpcRequest, RpcResponse};
use flotilla::catalog::Catalog;
use flotilla::certs::{self, role_files, Role, CA_CERT};
use flotilla::client::{Client, ClientConfig};
use flotilla::kv::{Command, Op, Response};
use flotilla::multiraft::{Driver, DriverConfig};
use flotilla::node::handlers::DriverService;
use flotilla::node::raft_link::{DriverInbox, QuicSender};
use flotilla::runtime::runner::Runner;
use flotilla::storage::{Engine, MemDisk};
use flotilla::transport::{TlsIdentity, Transport};
use flotilla::types::{GroupId, NodeId};
use flotilla::Error;

const DEADLINE: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(20);

fn identity(dir: &std::path::Path, role: Role) -> TlsIdentity {
    let (crt, key) = role_files(dir, role);
    TlsIdentity::load(&dir.join(CA_CERT), &crt, &key).unwrap()
}

/// Three drivers serving over QUIC, with the certificates of a cluster.
struct Cluster {
    dir: tempfile::TempDir,
    catalog: Catalog,
    addrs: BTreeMap<NodeId, SocketAddr>,
    transports: BTreeMap<NodeId, Arc<Transport>>,
    runners: Vec<Runner>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        certs::create(dir.path(), &["127.0.0.1".into()], false).unwrap();
        let node_id = identity(dir.path(), Role::Node);
        let mut transports = BTreeMap::new();
        for i in 1..=3 {
            let t = Transport::bind(NodeId(i), "127.0.0.1:0".parse().unwrap(), &node_id).unwrap();
            transports.insert(NodeId(i), t);
        }
        let addrs: BTreeMap<NodeId, SocketAddr> = transports
            .iter()
            .map(|(id, t)| (*id, t.local_addr().unwrap()))
            .collect();
        let members: Vec<(NodeId, String)> =
            addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
        let catalog = Catalog::bootstrap(7, 256, &members, 8, 3).unwrap();
        let mut runners = Vec::new();
        for (id, t) in &transports {
            for (peer, addr) in &addrs {
                if peer != id {
                    t.set_peer(*peer, *addr, None);
                }
            }
            let engine = Engine::open_backend(MemDisk::new()).unwrap();
            engine.bootstrap(*id, &catalog).unwrap();
            let driver = Driver::open(
                engine,
                DriverConfig {
                    seed: id.0,
                    ..DriverConfig::default()
                },
            )
            .unwrap();
            let runner = Runner::spawn(driver, QuicSender::new(t.clone()), TICK).unwrap();
            let h = runner.handle();
            t.serve(Arc::new(DriverInbox(h.clone())), Arc::new(DriverService(h)));
            runners.push(runner);
        }
        Cluster {
            dir,
            catalog,
            addrs,
            transports,
            runners,
        }
    }

    /// A client with the certificate of `role`.
    fn client(&self, role: Role) -> Client {
        let (cert, key) = role_files(self.dir.path(), role);
        Client::new(ClientConfig {
            endpoints: self.addrs.values().map(|a| a.to_string()).collect(),
            ca: self.dir.path().join(CA_CERT),
            cert,
            key,
            pin: None,
            timeout: DEADLINE,
        })
        .unwrap()
    }

    fn stop(self) {
        for t in self.transports.values() {
            t.close();
        }
        for r in self.runners {
            r.stop().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_quic_elect_and_serve_a_client() {
    let cluster = Cluster::start();
    let (catalog, addrs) = (&cluster.catalog, &cluster.addrs);
    // The client library, with a client certificate, finds the leaders.
    let client = cluster.client(Role::Client);

    // Writes succeed once groups have leaders over QUIC; `request` retries
    // and follows hints until then.
    for i in 0..30u64 {
        let key = format!("quic-{i}").into_bytes();
        let group = catalog.group_of(&key);
        let command = Command {
            client: 42,
            seq: i + 1,
            ack_below: i + 1,
            fresh: true,
            proposed_ms: 0,
            op: Op::Put {
                key,
                value: i.to_le_bytes().to_vec(),
            },
        };
        let r = client
            .request(&RpcRequest::Propose { group, command })
            .await;
        assert_eq!(r.unwrap(), RpcResponse::Kv(Response::Written));
    }
    for i in 0..30u64 {
        let key = format!("quic-{i}").into_bytes();
        let group = catalog.group_of(&key);
        let r = client.request(&RpcRequest::Read { group, key }).await;
        assert_eq!(
            r.unwrap(),
            RpcResponse::Kv(Response::Value(Some(i.to_le_bytes().to_vec())))
        );
    }
    // A follower names the leader instead of serving: the redirect keeps
    // its group across the wire.
    let group = GroupId(1);
    let mut answers = Vec::new();
    for addr in addrs.values() {
        let read = RpcRequest::Read {
            group,
            key: b"quic-0".to_vec(),
        };
        answers.push(client.call_node(*addr, &read).await);
    }
    assert!(
        answers.iter().any(|r| matches!(
            r,
            Err(Error::NotLeader { group: g, leader: Some(_) }) if *g == group
        )),
        "{answers:?}"
    );

    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_certificates_with_the_same_client_id_do_not_share_a_session() {
    let cluster = Cluster::start();
    let (alice, bob) = (cluster.client(Role::Client), cluster.client(Role::Admin));
    let key = b"bound".to_vec();
    let group = cluster.catalog.group_of(&key);
    // Both pick client id 7 and send sequence 1.
    let put = |value: &[u8], fresh: bool| RpcRequest::Propose {
        group,
        command: Command {
            client: 7,
            seq: 1,
            ack_below: 1,
            fresh,
            proposed_ms: 0,
            op: Op::Put {
                key: key.clone(),
                value: value.to_vec(),
            },
        },
    };
    let written = RpcResponse::Kv(Response::Written);
    let value = |v: &[u8]| RpcResponse::Kv(Response::Value(Some(v.to_vec())));
    let read = RpcRequest::Read {
        group,
        key: key.clone(),
    };
    assert_eq!(alice.request(&put(b"alice", true)).await.unwrap(), written);
    // Bob's certificate differs: his write applies, it is not taken for a
    // retry of Alice's.
    assert_eq!(bob.request(&put(b"bob", true)).await.unwrap(), written);
    assert_eq!(alice.request(&read).await.unwrap(), value(b"bob"));
    // Alice's own retry is still deduplicated: Bob's value stays.
    assert_eq!(alice.request(&put(b"alice", false)).await.unwrap(), written);
    assert_eq!(alice.request(&read).await.unwrap(), value(b"bob"));
    cluster.stop();
}
