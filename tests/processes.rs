//! Real node processes on loopback: three `flotilla start` processes form a
//! cluster through `flotilla init` and their seeds, with leadership spread
//! over them; a node killed with SIGKILL restarts from its own data without
//! any seed and catches up; killing the leader of group 0 moves every
//! leadership it held and loses no acknowledged write. Five nodes started at
//! once join one cluster, and a joiner whose only seed is a follower is
//! redirected to the leader. A node whose peers all moved finds them again
//! through its seeds.
//!
//! The tests take turns: each runs several processes, and two cores shared
//! by two clusters would blur the timings one of them checks.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use common::*;
use flotilla::api::NodeReport;
use flotilla::client::Client;
use flotilla::types::{GroupId, NodeId};

/// The bound on electing new leaders after a node dies.
const FAILOVER: Duration = Duration::from_secs(3);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// All nodes ready in one cluster, all 33 groups led with three voters,
/// leadership spread.
fn formed(rs: &[NodeReport], nodes: usize) -> bool {
    // 33 groups over 3 nodes: each leads about 11 once leadership spread.
    let spread = rs
        .iter()
        .all(|r| r.groups.iter().filter(|g| g.leader).count() >= 8);
    settled(rs, nodes) && rs.iter().map(|r| r.groups.len()).max() == Some(33) && spread
}

/// Writes `p{seq}` through the client library, which finds the leader.
async fn put(client: &Client, seq: u64) {
    let r = client
        .put(format!("p{seq}").as_bytes(), &seq.to_le_bytes())
        .await;
    assert!(r.is_ok(), "write {seq}: {r:?}");
}

/// Reads every key `put` wrote, `p1` to `p{last}`, linearizably, and checks
/// each holds its value.
async fn read_back(client: &Client, last: u64) {
    for seq in 1..=last {
        let r = client.get(format!("p{seq}").as_bytes()).await;
        assert!(
            matches!(r, Ok(Some(ref v)) if *v == seq.to_le_bytes()),
            "key p{seq}: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_form_a_cluster_and_a_killed_follower_restarts_from_its_own_log() {
    let _turn = SERIAL.lock().await;
    let dir = test_dir();
    let (addrs, mut nodes) = spawn_cluster(dir.path(), 3);

    // `flotilla init`, as an operator would run it, retried until the node listens.
    init(dir.path(), addrs[0]).await;
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

    let caller = caller(&dir.path().join("certs"));
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
    let client = client_through(dir.path(), &addrs);

    // The status command shows the same thing to a person.
    let status = Process::new(EXE)
        .args([
            "status",
            "--endpoints",
            &addrs[1].to_string(),
            "--certs-dir",
        ])
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(status.status.success());
    let shown = String::from_utf8_lossy(&status.stdout);
    assert_eq!(shown.matches(" ready ").count(), 3, "{shown}");
    assert!(shown.contains("33 with 3 voters"), "{shown}");

    for seq in 1..=100 {
        put(&client, seq).await;
    }
    // Kill -9 a node, write more, restart it without seeds.
    // Leaders are spread, so the victim leads some groups and follows in
    // the rest: its groups elect new leaders while it is gone.
    let victim = 2;
    let mut child = nodes.0.remove(&victim).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for seq in 101..=120 {
        put(&client, seq).await;
    }
    nodes
        .0
        .insert(victim, spawn(dir.path(), victim, addrs[victim], None));
    wait_caught_up(&caller, &addrs, addrs[victim]).await;
    // It read its log back from disk and was sent only what it lacked: the
    // 20 writes it missed plus, per group, at most a few entries of new
    // terms and probes.
    let back = caller.node_status(addrs[victim]).await.unwrap();
    assert!(
        back.replayed_entries >= 100,
        "it should have replayed its own log: {back:?}"
    );
    assert!(
        back.raft_entries_in < back.replayed_entries / 2,
        "it was sent {} entries but holds {} of its own",
        back.raft_entries_in,
        back.replayed_entries
    );

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
    let killed = Instant::now();
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
    let failover = killed.elapsed();
    eprintln!("new leaders for every group {failover:?} after the kill");
    assert!(
        failover <= FAILOVER,
        "new leaders took {failover:?}, more than {FAILOVER:?}"
    );
    for seq in 121..=140 {
        put(&client, seq).await;
    }
    nodes.0.insert(g0, spawn(dir.path(), g0, addrs[g0], None));
    wait_caught_up(&caller, &addrs, addrs[g0]).await;
    // Every acknowledged write is there, read linearizably.
    read_back(&client, 140).await;
    drop(nodes);
    keep(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_started_at_once_join_one_cluster_and_a_follower_seed_redirects() {
    let _turn = SERIAL.lock().await;
    let dir = test_dir();
    let (addrs, mut nodes) = spawn_cluster(dir.path(), 5);
    init(dir.path(), addrs[2]).await;
    let caller = caller(&dir.path().join("certs"));
    let rs = wait_for(&caller, &addrs, "five nodes did not settle", |rs| {
        settled(rs, 5)
    })
    .await;
    let ids: std::collections::BTreeSet<_> = rs.iter().map(|r| r.node).collect();
    assert_eq!(ids.len(), 5, "every node has its own id: {ids:?}");
    let cluster = rs[0].cluster_id;

    // A sixth node whose only seed follows in group 0: the follower answers
    // with a redirect, and the joiner follows it to the leader.
    let follower = rs
        .iter()
        .zip(&addrs)
        .find(|(r, _)| {
            r.groups
                .iter()
                .any(|g| g.group == GroupId(0) && !g.leader && g.voters.contains(&r.node))
        })
        .map(|(_, a)| *a)
        .expect("group 0 has a follower");
    let sixth = free_addr();
    nodes
        .0
        .insert(5, spawn(dir.path(), 5, sixth, Some(&follower.to_string())));
    let rs = wait_for(&caller, &[sixth], "the sixth node did not join", |rs| {
        rs.len() == 1 && rs[0].lifecycle == "ready"
    })
    .await;
    assert_eq!(
        rs[0].cluster_id, cluster,
        "the sixth node joined another cluster"
    );
    assert!(!ids.contains(&rs[0].node), "the sixth node reused an id");
    drop(nodes);
    keep(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_node_finds_its_moved_peers_through_its_seeds() {
    let _turn = SERIAL.lock().await;
    let dir = test_dir();
    let a = free_addr();
    let old: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect();
    let moved: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect();
    // Node 0's seeds are where its peers will live after the move (as a DNS
    // name would follow them); the peers join through node 0.
    let quick = ["--isolation-timeout", "1s"];
    let mut nodes = Nodes(BTreeMap::new(), dir.path().to_path_buf());
    nodes.0.insert(
        0,
        spawn_with(dir.path(), 0, a, Some(&seed_list(&moved)), &quick),
    );
    init(dir.path(), a).await;
    for (i, addr) in old.iter().enumerate() {
        nodes.0.insert(
            i + 1,
            spawn_with(dir.path(), i + 1, *addr, Some(&a.to_string()), &quick),
        );
    }
    let caller = caller(&dir.path().join("certs"));
    let all_old = [a, old[0], old[1]];
    wait_for(&caller, &all_old, "the cluster did not settle", |rs| {
        settled(rs, 3)
    })
    .await;
    let client = client_through(dir.path(), &all_old);
    for seq in 1..=10 {
        put(&client, seq).await;
    }

    // Both peers stop and come back, with their data, on new addresses.
    for i in 1..=2 {
        let mut child = nodes.0.remove(&i).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
    for (i, addr) in moved.iter().enumerate() {
        nodes.0.insert(
            i + 1,
            spawn_with(dir.path(), i + 1, *addr, Some(&a.to_string()), &quick),
        );
    }
    let all_new = [a, moved[0], moved[1]];
    let rs = wait_for(
        &caller,
        &all_new,
        "the moved cluster did not settle",
        |rs| settled(rs, 3),
    )
    .await;
    // A client of the moved cluster, as its users would make one.
    let client = client_through(dir.path(), &all_new);
    for (r, addr) in rs.iter().zip(&all_new) {
        assert_eq!(
            r.addr,
            addr.to_string(),
            "node {} advertises {}",
            r.node.0,
            r.addr
        );
    }
    for seq in 11..=20 {
        put(&client, seq).await;
    }
    // Node 0 takes part again: it holds every write, old and new.
    wait_caught_up(&caller, &all_new, a).await;
    read_back(&client, 20).await;
    let log = std::fs::read_to_string(dir.path().join("n0.log")).unwrap();
    assert!(
        log.contains("learned a peer's new address from a seed"),
        "node 0 should have found its peers through its seeds"
    );
    drop(nodes);
    keep(dir);
}

/// A client whose connection to a node outlived the node's process (killed
/// with SIGKILL, started again at the same address) learns so from the new
/// process, which can sign a stateless reset for the old connection because
/// it derives its reset key from the node's private key: the client dials
/// anew at once instead of waiting on the dead connection until it idles
/// out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connected_to_a_killed_node_reaches_its_restarted_process_at_once() {
    let _turn = SERIAL.lock().await;
    let dir = test_dir();
    let addr = free_addr();
    let mut nodes = Nodes(BTreeMap::new(), dir.path().to_path_buf());
    nodes.0.insert(0, spawn(dir.path(), 0, addr, None));
    let certs = dir.path().join("certs");
    let answers = |c: Client| async move {
        let start = Instant::now();
        while c.node_status(addr).await.is_err() {
            assert!(start.elapsed() < DEADLINE, "{addr} never answered");
            tokio::time::sleep(POLL).await;
        }
    };
    let old = caller(&certs);
    answers(old.clone()).await;
    let mut first = nodes.0.remove(&0).unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    nodes.0.insert(0, spawn(dir.path(), 0, addr, None));
    answers(caller(&certs)).await;
    // The old client's connection belongs to the killed process: its next
    // call is answered, or fails with the reset and the one after it is.
    if let Err(e) = old.node_status(addr).await {
        assert!(e.to_string().contains("reset"), "{e}");
        old.node_status(addr).await.unwrap();
    }
}
