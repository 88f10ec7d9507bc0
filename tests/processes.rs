//! Real node processes on loopback: three `flotilla start` processes form a
//! cluster through `flotilla init` and their seeds, with leadership spread
//! over them; a node killed with SIGKILL restarts from its own data without
//! any seed and catches up; killing the leader of group 0 moves every
//! leadership it held and loses no acknowledged write.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use flotilla::catalog::Catalog;
use flotilla::certs;
use flotilla::kv::{Command, Op, Response};
use flotilla::node::ops::Caller;
use flotilla::transport::rpc::{NodeReport, RpcRequest, RpcResponse};
use flotilla::types::{GroupId, NodeId};

const EXE: &str = env!("CARGO_BIN_EXE_flotilla");
const DEADLINE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);

/// Kills every process it holds when dropped, so a failing test leaves none.
struct Nodes(BTreeMap<usize, Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in self.0.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn spawn(dir: &Path, i: usize, addr: SocketAddr, join: Option<&str>) -> Child {
    let mut cmd = Process::new(EXE);
    cmd.arg("start")
        .arg("--data-dir")
        .arg(dir.join(format!("n{i}")))
        .args(["--listen", &addr.to_string(), "--certs-dir"])
        .arg(dir.join("certs"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    cmd.spawn().unwrap()
}

async fn reports(caller: &Caller, addrs: &[SocketAddr]) -> Vec<NodeReport> {
    let mut out = Vec::new();
    for a in addrs {
        if let Ok(r) = caller.status(*a).await {
            out.push(r);
        }
    }
    out
}

/// All nodes ready, every group led with three voters, leadership spread.
fn formed(rs: &[NodeReport], nodes: usize) -> bool {
    let led: BTreeMap<_, _> = rs
        .iter()
        .flat_map(|r| {
            r.groups
                .iter()
                .filter(|g| g.leader)
                .map(|g| (g.group, g.voters.len()))
        })
        .collect();
    // 33 groups over 3 nodes: each leads about 11 once leadership spread.
    let spread = rs
        .iter()
        .all(|r| r.groups.iter().filter(|g| g.leader).count() >= 8);
    rs.len() == nodes
        && rs.iter().all(|r| r.lifecycle == "ready")
        && led.len() == 33
        && led.values().all(|v| *v == 3)
        && spread
}

async fn put(caller: &Caller, addrs: &BTreeMap<NodeId, SocketAddr>, routing: &Catalog, seq: u64) {
    let key = format!("p{seq}").into_bytes();
    let group = routing.group_of(&key);
    let command = Command {
        client: 5,
        seq,
        ack_below: seq,
        op: Op::Put {
            key,
            value: seq.to_le_bytes().to_vec(),
        },
    };
    let r = caller
        .request_leader(addrs, &RpcRequest::Propose { group, command }, DEADLINE)
        .await;
    assert!(
        matches!(r, Ok(RpcResponse::Kv(Response::Written))),
        "write {seq}: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_form_a_cluster_and_a_killed_follower_restarts_from_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    certs::create(&dir.path().join("certs"), &["127.0.0.1".into()], false).unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let seeds = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Nodes(BTreeMap::new());
    for (i, a) in addrs.iter().enumerate() {
        nodes.0.insert(i, spawn(dir.path(), i, *a, Some(&seeds)));
    }

    // `flotilla init`, as an operator would run it, retried until the node listens.
    let start = Instant::now();
    loop {
        let out = Process::new(EXE)
            .args(["init", "--endpoint", &addrs[0].to_string(), "--certs-dir"])
            .arg(dir.path().join("certs"))
            .output()
            .unwrap();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("initialised cluster"));
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(POLL).await;
    }
    let second = Process::new(EXE)
        .args(["init", "--endpoint", &addrs[0].to_string(), "--certs-dir"])
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(!second.status.success(), "a second init must be refused");
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already belongs"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    let caller = Caller::new(&dir.path().join("certs")).unwrap();
    let start = Instant::now();
    let mut rs = reports(&caller, &addrs).await;
    while !formed(&rs, 3) {
        assert!(
            start.elapsed() < DEADLINE,
            "cluster did not form: {:?}",
            rs.iter()
                .map(|r| (r.node, r.lifecycle.clone(), r.groups.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(POLL).await;
        rs = reports(&caller, &addrs).await;
    }
    let by_id: BTreeMap<NodeId, SocketAddr> =
        addrs.iter().zip(&rs).map(|(a, r)| (r.node, *a)).collect();
    let routing = Catalog::bootstrap(0, 1024, &[(NodeId(1), String::new())], 32, 1).unwrap();

    // The status command shows the same thing to a person.
    let status = Process::new(EXE)
        .args(["status", "--endpoint", &addrs[1].to_string(), "--certs-dir"])
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains(": ready"));

    for seq in 1..=20 {
        put(&caller, &by_id, &routing, seq).await;
    }
    // Kill -9 a node, write more, restart it without seeds.
    // Leaders are spread, so the victim leads some groups and follows in
    // the rest: its groups elect new leaders while it is gone.
    let victim = 2;
    let mut child = nodes.0.remove(&victim).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for seq in 21..=40 {
        put(&caller, &by_id, &routing, seq).await;
    }
    nodes
        .0
        .insert(victim, spawn(dir.path(), victim, addrs[victim], None));
    wait_caught_up(&caller, &addrs, addrs[victim]).await;

    // Kill -9 the node leading group 0 (and its share of data groups); the
    // other two elect new leaders and keep taking writes.
    let rs = reports(&caller, &addrs).await;
    let g0_addr = rs
        .iter()
        .find(|r| r.groups.iter().any(|g| g.group == GroupId(0) && g.leader))
        .map(|r| by_id[&r.node])
        .expect("group 0 has a leader");
    let g0 = addrs
        .iter()
        .position(|a| *a == g0_addr)
        .expect("a known address");
    let mut child = nodes.0.remove(&g0).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let living: Vec<SocketAddr> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != g0)
        .map(|(_, a)| *a)
        .collect();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "no new leaders after the leader of group 0 died"
        );
        let rs = reports(&caller, &living).await;
        let led: std::collections::BTreeSet<_> = rs
            .iter()
            .flat_map(|r| r.groups.iter().filter(|g| g.leader).map(|g| g.group))
            .collect();
        if led.len() == 33 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    for seq in 41..=60 {
        put(&caller, &by_id, &routing, seq).await;
    }
    nodes.0.insert(g0, spawn(dir.path(), g0, addrs[g0], None));
    wait_caught_up(&caller, &addrs, addrs[g0]).await;
    // Every acknowledged write is there, read linearizably.
    for seq in 1..=60u64 {
        let key = format!("p{seq}").into_bytes();
        let group = routing.group_of(&key);
        let r = caller
            .request_leader(&by_id, &RpcRequest::Read { group, key }, DEADLINE)
            .await;
        assert!(
            matches!(r, Ok(RpcResponse::Kv(Response::Value(Some(ref v)))) if *v == seq.to_le_bytes()),
            "key p{seq}: {r:?}"
        );
    }
}

/// Waits until the node at `addr` is ready and has applied every group up
/// to its leader's commit index.
async fn wait_caught_up(caller: &Caller, addrs: &[SocketAddr], addr: SocketAddr) {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "the restarted node at {addr} did not catch up"
        );
        let rs = reports(caller, addrs).await;
        let leaders: BTreeMap<_, _> = rs
            .iter()
            .flat_map(|r| {
                r.groups
                    .iter()
                    .filter(|g| g.leader)
                    .map(|g| (g.group, g.commit))
            })
            .collect();
        if let Ok(me) = caller.status(addr).await {
            let caught_up = me.lifecycle == "ready"
                && me.groups.len() == 33
                && me
                    .groups
                    .iter()
                    .all(|g| leaders.get(&g.group).is_some_and(|c| g.applied >= *c));
            if caught_up {
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
