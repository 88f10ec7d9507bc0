//! Node servers in one process over real QUIC: one node is initialised, two
//! more join through it as their seed, placement gives every group three
//! voters, and a client writes and reads through any node. A second `init`
//! is refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::api::{RpcRequest, RpcResponse};
use flotilla::catalog::Catalog;
use flotilla::certs;
use flotilla::client::{Client, ClientConfig};
use flotilla::kv::{Command, Op, Response};
use flotilla::node::join::JoinPolicy;
use flotilla::node::server::{NodeConfig, NodeServer};
use flotilla::node::Lifecycle;
use flotilla::types::{GroupId, NodeId};
use flotilla::Error;

const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// A client with the admin certificate of `dir`, routing through `seeds`.
fn admin(dir: &std::path::Path, seeds: &[SocketAddr]) -> Client {
    let seeds = seeds.iter().map(|a| a.to_string()).collect();
    let mut config = ClientConfig::from_certs_dir(seeds, dir);
    config.timeout = DEADLINE;
    Client::new(config).unwrap()
}

/// One request to the node at `addr`; `None` if it failed.
async fn ask(admin: &Client, addr: SocketAddr, req: &RpcRequest) -> Option<RpcResponse> {
    admin.call_node(addr, req).await.ok()
}

fn config(
    dir: &std::path::Path,
    certs: &std::path::Path,
    name: &str,
    join: Vec<String>,
) -> NodeConfig {
    let mut cfg = NodeConfig::new(
        dir.join(name),
        "127.0.0.1:0".parse().unwrap(),
        certs.to_path_buf(),
    );
    cfg.join = join;
    cfg.tick = Duration::from_millis(20);
    cfg.data_groups = 8;
    cfg.vshards = 64;
    cfg.join_policy = JoinPolicy {
        attempts: 100,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
    };
    cfg
}

async fn start(
    dir: &std::path::Path,
    certs: &std::path::Path,
    name: &str,
    join: Vec<String>,
) -> Arc<NodeServer> {
    NodeServer::start(config(dir, certs, name, join))
        .await
        .unwrap()
}

async fn init(admin: &Client, node: &NodeServer) -> u64 {
    match ask(admin, node.addr(), &RpcRequest::Init { vshards: None }).await {
        Some(RpcResponse::Inited { cluster_id }) => cluster_id,
        other => panic!("init failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_join_forms_a_three_replica_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::create(&certs_dir, &["127.0.0.1".into()], false).unwrap();
    let n1 = start(dir.path(), &certs_dir, "n1", vec![]).await;
    let seed = n1.addr().to_string();
    let n2 = start(dir.path(), &certs_dir, "n2", vec![seed.clone()]).await;
    let n3 = start(dir.path(), &certs_dir, "n3", vec![seed]).await;
    let admin = admin(&certs_dir, &[n1.addr(), n2.addr(), n3.addr()]);

    // More vshards than a cluster may have is refused before anything is
    // written; the count asked for is the one the catalog keeps.
    let too_many = admin
        .call_node(
            n1.addr(),
            &RpcRequest::Init {
                vshards: Some(70_000),
            },
        )
        .await;
    assert!(
        matches!(too_many, Err(Error::Invalid(ref m)) if m.contains("more than the 65536")),
        "{too_many:?}"
    );
    let Some(RpcResponse::Inited { cluster_id }) = ask(
        &admin,
        n1.addr(),
        &RpcRequest::Init {
            vshards: Some(2048),
        },
    )
    .await
    else {
        panic!("init failed");
    };
    let again = admin
        .call_node(n1.addr(), &RpcRequest::Init { vshards: None })
        .await;
    assert!(
        matches!(again, Err(Error::Invalid(ref m)) if m.contains("already belongs")),
        "{again:?}"
    );

    let nodes = [&n1, &n2, &n3];
    let start_t = Instant::now();
    loop {
        assert!(
            start_t.elapsed() < DEADLINE,
            "cluster did not form: {:?}",
            nodes.map(|n| n.lifecycle())
        );
        let mut ready = 0;
        let mut voters: BTreeMap<GroupId, usize> = BTreeMap::new();
        for n in nodes {
            if let Some(RpcResponse::Status(r)) = ask(&admin, n.addr(), &RpcRequest::Status).await {
                if r.lifecycle == Lifecycle::Ready.to_string() && r.cluster_id == Some(cluster_id) {
                    ready += 1;
                }
                for g in r.groups.iter().filter(|g| g.leader) {
                    voters.insert(g.group, g.voters.len());
                }
            }
        }
        if ready == 3 && voters.len() == 9 && voters.values().all(|v| *v == 3) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }

    // A client writes through any node, following leader hints. The vshard
    // map depends only on the vshard and group counts.
    let client = &admin;
    assert_eq!(client.refresh_catalog().await.unwrap().vshard_count, 2048);
    let routing = Catalog::bootstrap(0, 2048, &[(NodeId(1), String::new())], 8, 1).unwrap();
    for i in 0..20u64 {
        let key = format!("node-{i}").into_bytes();
        let group = routing.group_of(&key);
        let command = Command {
            client: 9,
            seq: i + 1,
            ack_below: i + 1,
            fresh: true,
            proposed_ms: 0,
            op: Op::Put {
                key,
                value: vec![i as u8],
            },
        };
        let r = client
            .request(&RpcRequest::Propose { group, command })
            .await;
        assert!(
            matches!(r, Ok(RpcResponse::Kv(Response::Written))),
            "write {i}: {r:?}"
        );
    }
    for n in nodes {
        n.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused_unless_told_to_wipe() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::create(&certs_dir, &["127.0.0.1".into()], false).unwrap();
    let admin = admin(&certs_dir, &[]);
    let y = start(dir.path(), &certs_dir, "y", vec![]).await;
    let theirs = init(&admin, &y).await;
    let x = start(dir.path(), &certs_dir, "x", vec![]).await;
    let ours = init(&admin, &x).await;
    x.stop();

    let mut cfg = config(dir.path(), &certs_dir, "x", vec![y.addr().to_string()]);
    let err = NodeServer::start(cfg.clone())
        .await
        .err()
        .expect("a node of another cluster must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{ours:016x}")) && msg.contains(&format!("{theirs:016x}")),
        "{msg}"
    );
    assert!(msg.contains("--wipe-and-join"), "{msg}");

    cfg.wipe_and_join = true;
    let x = NodeServer::start(cfg).await.unwrap();
    let start_t = Instant::now();
    loop {
        assert!(
            start_t.elapsed() < DEADLINE,
            "the wiped node did not join: {}",
            x.lifecycle()
        );
        if let Some(RpcResponse::Status(r)) = ask(&admin, x.addr(), &RpcRequest::Status).await {
            if r.lifecycle == Lifecycle::Ready.to_string() && r.cluster_id == Some(theirs) {
                break;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    x.stop();
    y.stop();
}

/// Polls `node` until it is ready in cluster `cluster`.
async fn wait_ready_in(admin: &Client, node: &NodeServer, cluster: u64) {
    let start_t = Instant::now();
    loop {
        assert!(
            start_t.elapsed() < DEADLINE,
            "the node did not join: {}",
            node.lifecycle()
        );
        if let Some(RpcResponse::Status(r)) = ask(admin, node.addr(), &RpcRequest::Status).await {
            if r.lifecycle == Lifecycle::Ready.to_string() && r.cluster_id == Some(cluster) {
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A round log record (the layout in `src/storage/wal.rs`) whose synced
/// mark vouches for records up to `seq - 1`.
fn round_log_record(seq: u64) -> Vec<u8> {
    let synced = seq - 1;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&seq.to_le_bytes());
    h.update(&synced.to_le_bytes());
    let mut out = 0u32.to_le_bytes().to_vec();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    out.extend_from_slice(&h.digest().to_le_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_round_log_is_damaged_is_refused_unless_told_to_wipe() {
    use std::os::unix::fs::FileExt as _;
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::create(&certs_dir, &["127.0.0.1".into()], false).unwrap();
    let admin = admin(&certs_dir, &[]);
    let y = start(dir.path(), &certs_dir, "y", vec![]).await;
    let cluster = init(&admin, &y).await;
    let seeds = vec![y.addr().to_string()];
    let x = start(dir.path(), &certs_dir, "x", seeds.clone()).await;
    wait_ready_in(&admin, &x, cluster).await;
    x.stop();

    // A record far ahead vouches for a million records the log lacks: as
    // if the ones after the clean stop's checkpoint were damaged.
    let wal = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("x").join("flotilla.wal.0"))
        .unwrap();
    wal.write_all_at(&round_log_record(1 << 20), 1 << 20)
        .unwrap();
    drop(wal);
    let mut cfg = config(dir.path(), &certs_dir, "x", seeds);
    let err = NodeServer::start(cfg.clone())
        .await
        .err()
        .expect("a node with a damaged round log must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt round log") && msg.contains("--wipe-and-join"),
        "{msg}"
    );

    cfg.wipe_and_join = true;
    let x = NodeServer::start(cfg).await.unwrap();
    wait_ready_in(&admin, &x, cluster).await;
    x.stop();
    y.stop();
}
