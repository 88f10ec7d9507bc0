//! The client library and the `flotilla` data and ops commands against a
//! real cluster of four node processes on loopback: every operation, scans
//! across groups, batches, pins and roles, the CLI's JSON and exit codes,
//! CAS increments that survive SIGKILL of their group's leader, `check`
//! finding a replica altered behind Raft's back, and decommissioning a node
//! under writes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use flotilla::catalog::NodeState;
use flotilla::certs::{self, CA_CERT};
use flotilla::client::{Client, ClientConfig, KeyRange};
use flotilla::kv::{BatchOp, KvStore};
use flotilla::storage::Engine;
use flotilla::types::{GroupId, NodeId};
use flotilla::Error;

/// Long enough to ride out a leader failover without an error.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

fn config(certs_dir: &Path, addrs: &[SocketAddr]) -> ClientConfig {
    let mut c =
        ClientConfig::from_certs_dir(addrs.iter().map(|a| a.to_string()).collect(), certs_dir);
    c.timeout = CLIENT_TIMEOUT;
    c
}

/// A directory holding only the CA and the client-role certificate.
fn client_certs(dir: &Path) -> PathBuf {
    let out = dir.join("client-only");
    std::fs::create_dir_all(&out).unwrap();
    for f in [CA_CERT, "client.crt", "client.key"] {
        std::fs::copy(dir.join("certs").join(f), out.join(f)).unwrap();
    }
    out
}

fn cli(certs_dir: &Path, endpoints: &[SocketAddr], args: &[&str]) -> Output {
    Process::new(EXE)
        .arg("--endpoints")
        .arg(
            endpoints
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("--certs-dir")
        .arg(certs_dir)
        .args(args)
        .env_remove("FLOTILLA_ENDPOINTS")
        .env_remove("FLOTILLA_CERTS_DIR")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The node leading `group`, from the nodes' own reports.
async fn leader_of(caller: &Client, addrs: &[SocketAddr], group: GroupId) -> Option<NodeId> {
    reports(caller, addrs).await.iter().find_map(|r| {
        r.groups
            .iter()
            .any(|g| g.group == group && g.leader)
            .then_some(r.node)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_and_the_cli_against_four_processes() {
    let dir = test_dir();
    let certs_dir = dir.path().join("certs");
    let (addrs, mut nodes) = spawn_cluster(dir.path(), 4);
    init(dir.path(), addrs[0]).await;
    let caller = caller(&certs_dir);
    let rs = wait_for(&caller, &addrs, "four nodes did not settle", |rs| {
        settled(rs, 4)
    })
    .await;
    let index_of: BTreeMap<NodeId, usize> = rs.iter().zip(0..).map(|(r, i)| (r.node, i)).collect();
    let client = Client::connect(config(&certs_dir, &addrs[..1]))
        .await
        .unwrap();
    let catalog = client.catalog().await.unwrap();

    // Every single-key operation.
    client.put(b"k", b"v1").await.unwrap();
    assert_eq!(client.get(b"k").await.unwrap(), Some(b"v1".to_vec()));
    let no = client.cas(b"k", Some(b"other"), Some(b"v2")).await.unwrap();
    assert!(!no.swapped);
    assert_eq!(no.current, Some(b"v1".to_vec()));
    let yes = client.cas(b"k", Some(b"v1"), Some(b"v2")).await.unwrap();
    assert!(yes.swapped);
    assert_eq!(client.get(b"k").await.unwrap(), Some(b"v2".to_vec()));
    assert!(
        client
            .cas(b"fresh", None, Some(b"1"))
            .await
            .unwrap()
            .swapped
    );
    assert!(client.delete(b"k").await.unwrap());
    assert!(!client.delete(b"k").await.unwrap());
    assert_eq!(client.get(b"k").await.unwrap(), None);

    // Scans gather every group and merge in key order.
    let keys: Vec<String> = (0..60).map(|i| format!("scan/{i:03}")).collect();
    for k in &keys {
        client.put(k.as_bytes(), k.as_bytes()).await.unwrap();
    }
    let groups: BTreeSet<GroupId> = keys
        .iter()
        .map(|k| catalog.group_of(k.as_bytes()))
        .collect();
    assert!(
        groups.len() >= 10,
        "the keys should span groups: {groups:?}"
    );
    let all = client
        .scan(KeyRange::Prefix(b"scan/".to_vec()), 1000)
        .await
        .unwrap();
    let got: Vec<String> = all
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    assert_eq!(got, keys);
    let first = client
        .scan(KeyRange::Prefix(b"scan/".to_vec()), 7)
        .await
        .unwrap();
    assert_eq!(first, all[..7].to_vec());
    let middle = client
        .scan(
            KeyRange::Range {
                start: b"scan/010".to_vec(),
                end: Some(b"scan/020".to_vec()),
            },
            1000,
        )
        .await
        .unwrap();
    assert_eq!(middle, all[10..20].to_vec());

    // A batch inside one vshard is applied whole; one across vshards is
    // refused before it is sent.
    let mut by_vshard: BTreeMap<_, Vec<Vec<u8>>> = BTreeMap::new();
    let same = (0..20_000)
        .map(|i| format!("batch/{i}").into_bytes())
        .find_map(|k| {
            let v = by_vshard.entry(catalog.vshard(&k)).or_default();
            v.push(k);
            (v.len() == 3).then(|| v.clone())
        })
        .expect("three keys in one vshard");
    client.put(&same[2], b"old").await.unwrap();
    client
        .batch(vec![
            BatchOp::Put {
                key: same[0].clone(),
                value: b"a".to_vec(),
            },
            BatchOp::Put {
                key: same[1].clone(),
                value: b"b".to_vec(),
            },
            BatchOp::Delete {
                key: same[2].clone(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(client.get(&same[0]).await.unwrap(), Some(b"a".to_vec()));
    assert_eq!(client.get(&same[1]).await.unwrap(), Some(b"b".to_vec()));
    assert_eq!(client.get(&same[2]).await.unwrap(), None);
    let spread = client
        .batch(vec![
            BatchOp::Delete {
                key: b"scan/000".to_vec(),
            },
            BatchOp::Delete {
                key: b"scan/001".to_vec(),
            },
        ])
        .await;
    if catalog.vshard(b"scan/000") != catalog.vshard(b"scan/001") {
        assert!(
            matches!(spread, Err(Error::BatchSpansVShards { .. })),
            "{spread:?}"
        );
    }

    // Status reaches every node.
    let status = client.status().await.unwrap();
    assert_eq!(status.len(), 4);
    assert!(status
        .iter()
        .all(|(_, _, r)| r.as_ref().is_ok_and(|r| r.lifecycle == "ready")));

    // Pins: the CA's key or the server's key passes, anything else is refused.
    let ca = flotilla::transport::TlsIdentity::load(
        &certs_dir.join(CA_CERT),
        &certs_dir.join("client.crt"),
        &certs_dir.join("client.key"),
    )
    .unwrap()
    .ca;
    let mut pinned = config(&certs_dir, &addrs[..1]);
    pinned.pin = Some(certs::spki_sha256(&ca).unwrap());
    Client::connect(pinned.clone()).await.expect("the CA pin");
    pinned.pin = Some([7; 32]);
    pinned.timeout = Duration::from_secs(2);
    let refused = Client::connect(pinned).await.err();
    assert!(
        matches!(refused, Some(Error::Certificate { ref detail, .. }) if detail.contains("pin")),
        "{refused:?}"
    );
    let foreign = tempfile::tempdir().unwrap();
    certs::create(foreign.path(), &["127.0.0.1".into()], false).unwrap();
    let mut other_ca = config(foreign.path(), &addrs[..1]);
    other_ca.timeout = Duration::from_secs(2);
    let refused = Client::connect(other_ca).await.err();
    assert!(
        matches!(refused, Some(Error::Certificate { .. })),
        "{refused:?}"
    );

    // A client certificate reads and writes but may not change membership.
    let client_only = client_certs(dir.path());
    let plain = Client::connect(config(&client_only, &addrs[..1]))
        .await
        .unwrap();
    plain.put(b"by-client", b"ok").await.unwrap();
    let denied = plain
        .set_node_state(NodeId(2), NodeState::Decommissioning)
        .await;
    assert!(
        matches!(denied, Err(Error::PermissionDenied(_))),
        "{denied:?}"
    );

    // The CLI: its JSON shape and its exit codes.
    let out = cli(&certs_dir, &addrs[..1], &["--json", "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(4), "{doc}");
    for n in doc["nodes"].as_array().unwrap() {
        for field in [
            "id",
            "addr",
            "lifecycle",
            "live",
            "groups",
            "leads",
            "apply_lag",
            "rss_bytes",
            "disk_bytes",
            "cert_not_after",
        ] {
            assert!(n.get(field).is_some(), "node without {field}: {n}");
        }
        assert_eq!(n["live"], serde_json::json!(true));
        // A running node holds memory and its redb file and round log.
        assert!(n["rss_bytes"].as_u64().is_some_and(|b| b > 0), "{n}");
        assert!(n["disk_bytes"].as_u64().is_some_and(|b| b > 0), "{n}");
    }
    assert_eq!(doc["groups"]["total"], serde_json::json!(33));
    assert!(doc["cluster_id"].is_string());
    let got = cli(&certs_dir, &addrs[..1], &["get", "scan/005"]);
    assert_eq!(
        (got.status.code(), stdout(&got)),
        (Some(0), "scan/005".into()),
        "piped, get prints the value's bytes and nothing else"
    );
    let scan = cli(
        &certs_dir,
        &addrs[..1],
        &["scan", "--prefix", "scan/00", "--limit", "3"],
    );
    assert_eq!(
        stdout(&scan),
        "scan/000\tscan/000\nscan/001\tscan/001\nscan/002\tscan/002\n"
    );
    let missing = cli(&certs_dir, &addrs[..1], &["get", "no-such-key"]);
    assert_eq!(missing.status.code(), Some(1));
    let cas = cli(
        &certs_dir,
        &addrs[..1],
        &["cas", "fresh", "--expect", "nope", "2"],
    );
    assert_eq!(cas.status.code(), Some(1));
    let usage = cli(&certs_dir, &addrs[..1], &["get", "k", "--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2));
    let dead = free_addr();
    let unreachable = cli(&certs_dir, &[dead], &["--timeout", "1s", "get", "k"]);
    assert_eq!(unreachable.status.code(), Some(3));
    let permission = cli(&client_only, &addrs[..1], &["node", "decommission", "2"]);
    assert_eq!(
        permission.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&permission.stderr)
    );

    // An operator's leader choice is carried out and then kept: the
    // balancer does not move leadership back to its own rotation.
    let moved = GroupId(5);
    let before = leader_of(&caller, &addrs, moved).await.expect("a leader");
    let to = *catalog.groups[&moved]
        .voters
        .iter()
        .find(|v| **v != before)
        .expect("another voter");
    let out = cli(
        &certs_dir,
        &addrs[..1],
        &[
            "leader",
            "transfer",
            "--group",
            "5",
            "--to",
            &to.0.to_string(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        assert_eq!(leader_of(&caller, &addrs, moved).await, Some(to));
        tokio::time::sleep(POLL).await;
    }

    // CAS increments from several clients while the counter's leader is
    // killed: the counter ends equal to the number of acknowledged swaps.
    let counter = b"counter".to_vec();
    let group = catalog.group_of(&counter);
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let c = Client::connect(config(&certs_dir, &addrs)).await.unwrap();
        let (acked, failed, stop, key) =
            (acked.clone(), failed.clone(), stop.clone(), counter.clone());
        workers.spawn(async move {
            for _ in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let current = match c.get(&key).await {
                    Ok(v) => v,
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let n: u64 = current
                    .as_deref()
                    .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                let next = (n + 1).to_string();
                match c.cas(&key, current.as_deref(), Some(next.as_bytes())).await {
                    Ok(o) if o.swapped => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let start = Instant::now();
    while acked.load(Ordering::Relaxed) < 30 {
        assert!(start.elapsed() < DEADLINE, "no progress on the counter");
        tokio::time::sleep(POLL).await;
    }
    let victim = leader_of(&caller, &addrs, group).await.expect("a leader");
    let vi = index_of[&victim];
    let mut child = nodes.0.remove(&vi).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = acked.load(Ordering::Relaxed);
    while acked.load(Ordering::Relaxed) < at_kill + 50 {
        assert!(start.elapsed() < DEADLINE, "no progress after the kill");
        tokio::time::sleep(POLL).await;
    }
    nodes.0.insert(vi, spawn(dir.path(), vi, addrs[vi], None));
    stop.store(true, Ordering::Relaxed);
    while let Some(w) = workers.join_next().await {
        w.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "calls failed despite retries"
    );
    let total: u64 = String::from_utf8(client.get(&counter).await.unwrap().unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, acked.load(Ordering::Relaxed));
    wait_caught_up(&caller, &addrs, addrs[vi]).await;
    let check = cli(&certs_dir, &addrs[..1], &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));

    // Decommission a node under writes: nothing acknowledged is lost,
    // every group keeps three voters, none on the node.
    let leaving = rs
        .iter()
        .map(|r| r.node)
        .find(|n| index_of[n] != 0)
        .expect("a node other than the first");
    let li = index_of[&leaving];
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, written, stop) = (client.clone(), written.clone(), stop.clone());
        tokio::spawn(async move {
            for i in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let key = format!("d/{i}");
                if c.put(key.as_bytes(), b"x").await.is_ok() {
                    written.lock().unwrap().push(key);
                }
            }
        })
    };
    let out = cli(
        &certs_dir,
        &addrs[..1],
        &[
            "node",
            "decommission",
            &leaving.0.to_string(),
            "--wait",
            "80s",
        ],
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    // The command returns once the leader has applied the removal; the
    // node the client reads its catalog from may apply it a moment later.
    let start = Instant::now();
    let after = loop {
        let c = client.refresh_catalog().await.unwrap();
        if c.nodes[&leaving].state == NodeState::Removed || start.elapsed() > DEADLINE {
            break c;
        }
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(after.nodes[&leaving].state, NodeState::Removed);
    for g in after.groups.values() {
        assert_eq!(g.voters.len(), 3, "{g:?}");
        assert!(!g.has_replica(leaving), "{g:?}");
    }
    let mut child = nodes.0.remove(&li).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let written = written.lock().unwrap().clone();
    assert!(!written.is_empty());
    for key in &written {
        assert_eq!(
            client.get(key.as_bytes()).await.unwrap(),
            Some(b"x".to_vec()),
            "{key}"
        );
    }
    let check = cli(&certs_dir, &addrs[..1], &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));

    // Alter one replica of the counter's group behind Raft's back: check
    // names it.
    let info = &client.refresh_catalog().await.unwrap().groups[&group];
    let tampered = *info
        .voters
        .iter()
        .find(|n| index_of[n] != 0)
        .expect("a voter other than the first node");
    assert_ne!(tampered, leaving);
    let ti = index_of[&tampered];
    let mut child = nodes.0.remove(&ti).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    {
        let engine =
            Engine::open(&dir.path().join(format!("n{ti}")).join("flotilla.redb")).unwrap();
        let mut w = engine.batch();
        w.kv(group).put(&counter, b"999999").unwrap();
        // Applied rows reach redb when the overlay is flushed.
        w.flush_all();
        engine.persist(w).unwrap();
    }
    nodes.0.insert(ti, spawn(dir.path(), ti, addrs[ti], None));
    let living: Vec<SocketAddr> = (0..4).filter(|i| *i != li).map(|i| addrs[i]).collect();
    wait_caught_up(&caller, &living, addrs[ti]).await;
    let check = cli(&certs_dir, &addrs[..1], &["--json", "check"]);
    assert_eq!(check.status.code(), Some(5), "{}", stdout(&check));
    let doc: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let bad: Vec<&serde_json::Value> = doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["consistent"] == serde_json::json!(false))
        .collect();
    assert_eq!(bad.len(), 1, "{doc}");
    assert_eq!(bad[0]["group"], serde_json::json!(group.0));
    assert_eq!(bad[0]["differing"], serde_json::json!([tampered.0]));

    drop(nodes);
    keep(dir);
}
