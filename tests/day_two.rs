//! Day two with real node processes on loopback: a node whose data
//! directory was wiped comes back at its old address as a new node, takes
//! the old one's place in every group and loses nothing; a node the
//! cluster removed refuses to start until `--wipe-and-join` makes it a new
//! node.
//!
//! The tests take turns: each runs several processes on two cores.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command as Process, Output};
use std::time::{Duration, Instant};

use common::*;
use flotilla::api::NodeReport;
use flotilla::catalog::{Catalog, NodeState};
use flotilla::client::{Client, ClientConfig};
use flotilla::types::NodeId;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Long enough to ride out a leader failover without an error.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

fn client_config(dir: &Path, addrs: &[SocketAddr]) -> ClientConfig {
    let mut c = ClientConfig::from_certs_dir(
        addrs.iter().map(|a| a.to_string()).collect(),
        &dir.join("certs"),
    );
    c.timeout = CLIENT_TIMEOUT;
    c
}

fn cli(dir: &Path, addrs: &[SocketAddr], args: &[&str]) -> Output {
    Process::new(EXE)
        .arg("--endpoints")
        .arg(seed_list(addrs))
        .arg("--certs-dir")
        .arg(dir.join("certs"))
        .args(args)
        .output()
        .unwrap()
}

async fn write_keys(client: &Client, n: u64) {
    for i in 0..n {
        let key = format!("w{i}");
        client
            .put(key.as_bytes(), format!("v{i}").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
}

async fn read_keys(client: &Client, n: u64) {
    for i in 0..n {
        let key = format!("w{i}");
        let v = client
            .get(key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(v, Some(format!("v{i}").into_bytes()), "{key}");
    }
}

/// Every group is led by a leader whose Raft configuration has three
/// voters, none of them `gone`, and every node answering is ready.
fn replaced(rs: &[NodeReport], gone: NodeId) -> bool {
    let groups: BTreeSet<_> = rs
        .iter()
        .flat_map(|r| r.groups.iter().map(|g| g.group))
        .collect();
    let led: Vec<_> = rs
        .iter()
        .flat_map(|r| r.groups.iter().filter(|g| g.leader))
        .collect();
    rs.iter().all(|r| r.lifecycle == "ready")
        && !groups.is_empty()
        && led.len() == groups.len()
        && led
            .iter()
            .all(|g| g.voters.len() == 3 && !g.voters.contains(&gone))
}

async fn catalog(client: &Client) -> Catalog {
    client.refresh_catalog().await.expect("catalog")
}

/// Polls until `done` holds for the catalog, within the deadline.
async fn wait_catalog(client: &Client, what: &str, done: impl Fn(&Catalog) -> bool) -> Catalog {
    let start = Instant::now();
    loop {
        if let Ok(c) = client.refresh_catalog().await {
            if done(&c) {
                return c;
            }
            assert!(start.elapsed() < DEADLINE, "{what}: {:?}", c.nodes);
        }
        assert!(start.elapsed() < DEADLINE, "{what}: no catalog");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_at_its_old_address_as_a_new_node_and_takes_its_place() {
    let _turn = SERIAL.lock().await;
    let dir = test_dir();
    let (addrs, mut nodes) = spawn_cluster(dir.path(), 3);
    init(dir.path(), addrs[0]).await;
    let caller = caller(&dir.path().join("certs"));
    wait_for(&caller, &addrs, "cluster formed", |rs| settled(rs, 3)).await;
    let client = Client::connect(client_config(dir.path(), &addrs))
        .await
        .unwrap();
    write_keys(&client, 40).await;

    let victim = caller.node_status(addrs[2]).await.unwrap().node;
    let child = nodes.0.get_mut(&2).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(dir.path().join("n2")).unwrap();
    let seeds = seed_list(&addrs);
    nodes
        .0
        .insert(2, spawn(dir.path(), 2, addrs[2], Some(&seeds)));

    // It joins as a new id; the old one is dead, and its replicas move.
    let c = wait_catalog(&client, "the wiped node joined as a new node", |c| {
        c.nodes.get(&victim).map(|n| n.state) == Some(NodeState::Dead)
            && c.nodes.values().any(|n| {
                n.addr == addrs[2].to_string() && n.id > victim && n.state == NodeState::Active
            })
    })
    .await;
    let newcomer = c
        .nodes
        .values()
        .find(|n| n.addr == addrs[2].to_string() && n.state == NodeState::Active)
        .unwrap()
        .id;
    assert!(
        c.nodes.keys().all(|id| *id <= newcomer),
        "a new id, above every id given"
    );
    wait_for(
        &caller,
        &addrs,
        "every group back at three live voters",
        |rs| rs.len() == 3 && replaced(rs, victim),
    )
    .await;
    let c = catalog(&client).await;
    assert!(c
        .groups
        .values()
        .all(|g| !g.has_replica(victim) || g.id.0 == 0));
    read_keys(&client, 40).await;

    let check = cli(dir.path(), &addrs, &["check"]);
    assert!(
        check.status.success(),
        "check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let status = cli(dir.path(), &addrs, &["--json", "status"]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let states: Vec<(u64, String)> = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        states.contains(&(victim.0, "dead".to_string())),
        "status shows the old node dead: {states:?}"
    );
    drop(nodes);
    keep(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_refuses_to_start_until_wiped_and_joins_as_a_new_node() {
    let _turn = SERIAL.lock().await;
    let dir = test_dir();
    let (addrs, mut nodes) = spawn_cluster(dir.path(), 4);
    init(dir.path(), addrs[0]).await;
    let caller = caller(&dir.path().join("certs"));
    wait_for(&caller, &addrs, "cluster formed", |rs| settled(rs, 4)).await;
    let client = Client::connect(client_config(dir.path(), &addrs))
        .await
        .unwrap();

    let leaving = caller.node_status(addrs[3]).await.unwrap().node;
    let child = nodes.0.get_mut(&3).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let removed = cli(
        dir.path(),
        &addrs[..3],
        &["node", "remove", &leaving.0.to_string()],
    );
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    wait_catalog(&client, "the node is removed", |c| {
        c.nodes.get(&leaving).map(|n| n.state) == Some(NodeState::Removed)
    })
    .await;

    // Restarted with the same flags, it refuses, and names the way out.
    let seeds = seed_list(&addrs);
    let mut again = spawn(dir.path(), 3, addrs[3], Some(&seeds));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = again.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < DEADLINE, "the removed node kept running");
        tokio::time::sleep(POLL).await;
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("n3.log")).unwrap();
    assert!(
        log.contains("was removed") && log.contains("--wipe-and-join"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );

    // With --wipe-and-join it discards its data and joins as a new node.
    nodes.0.insert(
        3,
        spawn_with(dir.path(), 3, addrs[3], Some(&seeds), &["--wipe-and-join"]),
    );
    let c = wait_catalog(&client, "the wiped node joined as a new node", |c| {
        c.nodes.values().any(|n| {
            n.addr == addrs[3].to_string() && n.id > leaving && n.state == NodeState::Active
        })
    })
    .await;
    assert_eq!(c.nodes[&leaving].state, NodeState::Removed, "never back");
    wait_for(&caller, &addrs, "the new node is ready", |rs| {
        rs.len() == 4 && rs.iter().all(|r| r.lifecycle == "ready")
    })
    .await;
    drop(nodes);
    keep(dir);
}

/// Runs the CLI with `input` on its standard input.
fn stdin_cli(dir: &Path, endpoints: &[SocketAddr], args: &[&str], input: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Process::new(EXE)
        .arg("--endpoints")
        .arg(seed_list(endpoints))
        .arg("--certs-dir")
        .arg(dir.join("certs"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The CLI stops reading past the limit, so a write may meet a closed pipe.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// Runs the CLI from a fresh process and returns its output and how long
/// it took.
fn timed_cli(dir: &Path, endpoints: &[SocketAddr], args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = cli(dir, endpoints, args);
    (out, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_node_down_a_fresh_cli_never_waits_on_it() {
    let _turn = SERIAL.lock().await;
    let dir = test_dir();
    let (addrs, mut nodes) = spawn_cluster(dir.path(), 3);
    init(dir.path(), addrs[0]).await;
    let caller = caller(&dir.path().join("certs"));
    wait_for(&caller, &addrs, "cluster formed", |rs| settled(rs, 3)).await;
    let (warm, _) = timed_cli(dir.path(), &addrs, &["put", "k0", "v0"]);
    assert!(warm.status.success());

    let child = nodes.0.get_mut(&0).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let live = &addrs[1..];
    wait_for(&caller, live, "leaders moved off the dead node", |rs| {
        rs.len() == 2 && {
            let groups: BTreeSet<_> = rs
                .iter()
                .flat_map(|r| r.groups.iter().map(|g| g.group))
                .collect();
            let led: BTreeSet<_> = rs
                .iter()
                .flat_map(|r| r.groups.iter().filter(|g| g.leader).map(|g| g.group))
                .collect();
            !groups.is_empty() && groups == led
        }
    })
    .await;

    // The dead node first among the endpoints, as an operator's list may
    // have it; every command a fresh process, so nothing is remembered.
    let mut worst = Duration::ZERO;
    for i in 1..=10 {
        let key = format!("k{i}");
        let value = format!("v{i}");
        let (put, put_took) = timed_cli(dir.path(), &addrs, &["put", &key, &value]);
        assert!(
            put.status.success(),
            "{}",
            String::from_utf8_lossy(&put.stderr)
        );
        let (get, get_took) = timed_cli(dir.path(), &addrs, &["get", &key]);
        assert!(
            get.status.success(),
            "{}",
            String::from_utf8_lossy(&get.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), value);
        worst = worst.max(put_took).max(get_took);
    }
    eprintln!("slowest put or get from a fresh CLI with a node down: {worst:?}");

    // A value too long for a command line goes through standard input, and
    // one over the value limit is refused with a clear message.
    let big: Vec<u8> = (0..300 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let put = stdin_cli(dir.path(), &addrs, &["put", "big", "-"], &big);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let (get, _) = timed_cli(dir.path(), &addrs, &["get", "big"]);
    assert_eq!(get.stdout, big, "piped, get prints the exact bytes");
    // Binary values survive the round trip: NUL, newlines, invalid UTF-8,
    // set by `put` and by `cas`, both from standard input.
    let binary: Vec<u8> = (0..=255u8).chain([b'\n', 0, 0xff, b'\n']).collect();
    let put = stdin_cli(dir.path(), &addrs, &["put", "bin", "--file", "-"], &binary);
    assert!(put.status.success(), "{put:?}");
    let (get, _) = timed_cli(dir.path(), &addrs, &["get", "bin"]);
    assert_eq!(get.stdout, binary);
    let swapped: Vec<u8> = binary.iter().rev().copied().collect();
    let cas = stdin_cli(
        dir.path(),
        &addrs,
        &["cas", "fresh-bin", "--expect-absent", "-"],
        &swapped,
    );
    assert!(cas.status.success(), "{cas:?}");
    let (get, _) = timed_cli(dir.path(), &addrs, &["get", "fresh-bin"]);
    assert_eq!(get.stdout, swapped);
    let huge = vec![b'x'; 1024 * 1024 + 1];
    let refused = stdin_cli(dir.path(), &addrs, &["put", "huge", "--file", "-"], &huge);
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("value limit"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // A whole attempt on the dead node would take two seconds.
    assert!(
        worst < Duration::from_millis(1500),
        "a command waited on the dead node: {worst:?}"
    );
    // `check` waits for every replica's digest, but never past --timeout:
    // the dead node's replicas are reported as not answering.
    let (check, took) = timed_cli(dir.path(), &addrs, &["check", "--timeout", "3s"]);
    assert_eq!(check.status.code(), Some(3), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("did not answer"),
        "{check:?}"
    );
    assert!(
        took < Duration::from_millis(3900),
        "check overran its 3 s deadline: {took:?}"
    );
    drop(nodes);
    keep(dir);
}
