//! Three drivers in one process talking over real QUIC with mutual TLS on
//! loopback: Raft traffic elects leaders, and a client
//! certificate writes and reads keys through requests that follow leader
//! hints, and a follower answers with a typed hint instead of serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::catalog::Catalog;
use flotilla::certs::{self, role_files, Role, CA_CERT};
use flotilla::kv::{Command, Op, Response};
use flotilla::multiraft::runner::Runner;
use flotilla::multiraft::{Driver, DriverConfig};
use flotilla::storage::{Engine, MemDisk};
use flotilla::transport::rpc::{call, RpcErrorKind, RpcRequest, RpcResponse};
use flotilla::transport::{TlsIdentity, Transport};
use flotilla::types::{GroupId, NodeId};

const DEADLINE: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(20);

fn identity(dir: &std::path::Path, role: Role) -> TlsIdentity {
    let (crt, key) = role_files(dir, role);
    TlsIdentity::load(&dir.join(CA_CERT), &crt, &key).unwrap()
}

/// Sends `req` for `group`, following NotLeader hints, until it is answered
/// or the deadline passes.
async fn request(
    client: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    addrs: &BTreeMap<NodeId, SocketAddr>,
    req: RpcRequest,
) -> RpcResponse {
    let start = Instant::now();
    let mut target = NodeId(1);
    loop {
        assert!(start.elapsed() < DEADLINE, "no answer to {req:?}");
        match call(client, cfg, addrs[&target], &req).await {
            Ok(RpcResponse::Error(e))
                if e.kind == RpcErrorKind::NotLeader || e.kind == RpcErrorKind::Retry =>
            {
                target = e
                    .leader
                    .filter(|l| addrs.contains_key(l))
                    .unwrap_or(NodeId(target.0 % 3 + 1));
                tokio::time::sleep(TICK).await;
            }
            Ok(other) => return other,
            Err(_) => tokio::time::sleep(TICK).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_quic_elect_and_serve_a_client() {
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
    let members: Vec<(NodeId, String)> = addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
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
        let runner = Runner::spawn(driver, t.sender(), TICK).unwrap();
        let h = runner.handle();
        t.serve(Arc::new(h.clone()), Arc::new(h));
        runners.push(runner);
    }

    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let client_cfg = identity(dir.path(), Role::Client).client_config().unwrap();

    // Writes succeed once groups have leaders over QUIC; `request` retries
    // and follows hints until then.
    for i in 0..30u64 {
        let key = format!("quic-{i}").into_bytes();
        let group = catalog.group_of(&key);
        let command = Command {
            client: 42,
            seq: i + 1,
            ack_below: i + 1,
            op: Op::Put {
                key,
                value: i.to_le_bytes().to_vec(),
            },
        };
        let r = request(
            &client,
            &client_cfg,
            &addrs,
            RpcRequest::Propose { group, command },
        )
        .await;
        assert_eq!(r, RpcResponse::Kv(Response::Written));
    }
    for i in 0..30u64 {
        let key = format!("quic-{i}").into_bytes();
        let group = catalog.group_of(&key);
        let r = request(
            &client,
            &client_cfg,
            &addrs,
            RpcRequest::Read { group, key },
        )
        .await;
        assert_eq!(
            r,
            RpcResponse::Kv(Response::Value(Some(i.to_le_bytes().to_vec())))
        );
    }
    // A follower names the leader instead of serving.
    let group = GroupId(1);
    let answers: Vec<RpcResponse> = {
        let mut v = Vec::new();
        for addr in addrs.values() {
            v.push(
                call(
                    &client,
                    &client_cfg,
                    *addr,
                    &RpcRequest::Read {
                        group,
                        key: b"quic-0".to_vec(),
                    },
                )
                .await
                .unwrap(),
            );
        }
        v
    };
    assert!(answers
        .iter()
        .any(|r| matches!(r, RpcResponse::Error(e) if e.kind == RpcErrorKind::NotLeader)));

    client.close(0u32.into(), b"done");
    for t in transports.values() {
        t.close();
    }
    for r in runners {
        r.stop().unwrap();
    }
}
