//! Helpers shared by the tests that run real `flotilla` node processes on
//! loopback: spawning and reaping them, `init`, and polling their reports
//! with a deadline.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use flotilla::api::NodeReport;
use flotilla::certs;
use flotilla::client::{Client, ClientConfig};

pub const EXE: &str = env!("CARGO_BIN_EXE_flotilla");
pub const DEADLINE: Duration = Duration::from_secs(90);
pub const POLL: Duration = Duration::from_millis(200);

/// Log lines of each node a failing test prints.
const LOG_TAIL_LINES: usize = 30;

/// The node processes of a test, by index, and the directory their logs
/// (`n{i}.log`) are in. Dropped, it kills every process, so a failing test
/// leaves none; dropped by a failing test, it first prints whether each
/// node had exited and the end of its log, so that a failure seen once in
/// CI can be read without rerunning it.
pub struct Nodes(pub BTreeMap<usize, Child>, pub PathBuf);

impl Drop for Nodes {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for (i, c) in &mut self.0 {
            if failing {
                let state = match c.try_wait() {
                    Ok(Some(status)) => format!("had exited: {status}"),
                    Ok(None) => "was running".to_string(),
                    Err(e) => format!("state unknown: {e}"),
                };
                let log = std::fs::read_to_string(self.1.join(format!("n{i}.log")))
                    .unwrap_or_else(|e| format!("(no log: {e})"));
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                eprintln!("--- node n{i} {state}; last lines of its log:\n{tail}");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

pub fn spawn(dir: &Path, i: usize, addr: SocketAddr, join: Option<&str>) -> Child {
    spawn_with(dir, i, addr, join, &[])
}

pub fn spawn_with(
    dir: &Path,
    i: usize,
    addr: SocketAddr,
    join: Option<&str>,
    extra: &[&str],
) -> Child {
    spawn_via(&[], dir, i, addr, join, extra)
}

/// Like [`spawn_with`], started through `launcher`: a program and its
/// arguments that run the rest of the command line (`ip netns exec NS`).
/// `ip netns exec` execs the node, so the child is the node itself.
pub fn spawn_via(
    launcher: &[String],
    dir: &Path,
    i: usize,
    addr: SocketAddr,
    join: Option<&str>,
    extra: &[&str],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("n{i}.log")))
        .unwrap();
    let mut cmd = match launcher.split_first() {
        Some((program, args)) => {
            let mut c = Process::new(program);
            c.args(args).arg(EXE);
            c
        }
        None => Process::new(EXE),
    };
    cmd.arg("start")
        .arg("--data-dir")
        .arg(dir.join(format!("n{i}")))
        .args(["--listen", &addr.to_string(), "--certs-dir"])
        .arg(dir.join("certs"))
        // Passes every 500 ms at most, and enough of them to outlast
        // DEADLINE: a node started before `init` must still be trying when
        // `init` lands, however slowly a loaded machine gets there (eight
        // passes, the default, end after about three seconds at this pace).
        .args(["--join-max-backoff", "500ms", "--join-attempts", "400"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    cmd.spawn().unwrap()
}

/// Starts `n` nodes on free loopback addresses, each with all of them as
/// seeds (the usual way to start a cluster before `init`).
pub fn spawn_cluster(dir: &Path, n: usize) -> (Vec<SocketAddr>, Nodes) {
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let seeds = seed_list(&addrs);
    let mut nodes = Nodes(BTreeMap::new(), dir.to_path_buf());
    for (i, a) in addrs.iter().enumerate() {
        nodes.0.insert(i, spawn(dir, i, *a, Some(&seeds)));
    }
    (addrs, nodes)
}

pub fn seed_list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A temporary directory with a certificate set. With
/// FLOTILLA_KEEP_TEST_DIRS set it outlives the test (pass or fail), for
/// reading the node logs; its path is printed.
pub fn test_dir() -> tempfile::TempDir {
    test_dir_for(&["127.0.0.1".into()])
}

/// [`test_dir`] with node certificates for `hosts`.
pub fn test_dir_for(hosts: &[String]) -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("FLOTILLA_KEEP_TEST_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("test directory: {}", dir.path().display());
    }
    certs::create(&dir.path().join("certs"), hosts, false).unwrap();
    dir
}

/// Ends a test directory's life (kept or removed, see [`test_dir`]).
pub fn keep(dir: tempfile::TempDir) {
    drop(dir);
}

/// A client with the certificates in `certs_dir` (the admin's), for asking
/// nodes one by one; it learns routing from no seed, so it asks nodes
/// only through [`Client::call_node`] and [`Client::node_status`].
pub fn caller(certs_dir: &Path) -> Client {
    Client::new(ClientConfig::from_certs_dir(vec![], certs_dir)).unwrap()
}

/// A client with the certificates of the test directory `dir`, routing
/// through the nodes at `addrs`, with [`DEADLINE`] for every call.
pub fn client_through(dir: &Path, addrs: &[SocketAddr]) -> Client {
    let seeds = addrs.iter().map(|a| a.to_string()).collect();
    let mut config = ClientConfig::from_certs_dir(seeds, &dir.join("certs"));
    config.timeout = DEADLINE;
    Client::new(config).unwrap()
}

/// Runs `flotilla check` once through the nodes at `addrs` with the
/// certificates of the test directory `dir`: its exit code and everything
/// it printed.
pub fn run_check(dir: &Path, addrs: &[SocketAddr]) -> (Option<i32>, String) {
    let out = Process::new(EXE)
        .arg("--endpoints")
        .arg(seed_list(addrs))
        .arg("--certs-dir")
        .arg(dir.join("certs"))
        .arg("check")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Runs `flotilla init` against `addr` until it succeeds.
pub async fn init(dir: &Path, addr: SocketAddr) {
    let start = Instant::now();
    loop {
        let out = Process::new(EXE)
            .args(["init", "--endpoint", &addr.to_string(), "--certs-dir"])
            .arg(dir.join("certs"))
            .output()
            .unwrap();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("initialised cluster"));
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the nodes at `addrs` until `done` holds for their reports.
pub async fn wait_for(
    caller: &Client,
    addrs: &[SocketAddr],
    what: &str,
    done: impl Fn(&[NodeReport]) -> bool,
) -> Vec<NodeReport> {
    let start = Instant::now();
    loop {
        let rs = reports(caller, addrs).await;
        if done(&rs) {
            return rs;
        }
        if start.elapsed() >= DEADLINE {
            let mut silent = Vec::new();
            for a in addrs {
                if let Err(e) = caller.node_status(*a).await {
                    silent.push(format!("{a}: {e}"));
                }
            }
            panic!(
                "{what}: {:?}; not answering: {silent:?}",
                rs.iter()
                    .map(|r| (r.node, r.lifecycle.clone(), r.groups.len()))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every node answered, is ready and in one cluster; every group is led,
/// with three voters.
pub fn settled(rs: &[NodeReport], nodes: usize) -> bool {
    let clusters: std::collections::BTreeSet<_> = rs.iter().map(|r| r.cluster_id).collect();
    let groups: std::collections::BTreeSet<_> = rs
        .iter()
        .flat_map(|r| r.groups.iter().map(|g| g.group))
        .collect();
    let led: BTreeMap<_, _> = rs
        .iter()
        .flat_map(|r| {
            r.groups
                .iter()
                .filter(|g| g.leader)
                .map(|g| (g.group, g.voters.len()))
        })
        .collect();
    rs.len() == nodes
        && rs.iter().all(|r| r.lifecycle == "ready")
        && clusters.len() == 1
        && !groups.is_empty()
        && led.len() == groups.len()
        && led.values().all(|v| *v == 3)
}

pub async fn reports(caller: &Client, addrs: &[SocketAddr]) -> Vec<NodeReport> {
    let mut out = Vec::new();
    for a in addrs {
        if let Ok(r) = caller.node_status(*a).await {
            out.push(r);
        }
    }
    out
}

/// Waits until the node at `addr` is ready and has applied every group up
/// to its leader's commit index.
pub async fn wait_caught_up(caller: &Client, addrs: &[SocketAddr], addr: SocketAddr) {
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
        if let Ok(me) = caller.node_status(addr).await {
            let caught_up = me.lifecycle == "ready"
                && !me.groups.is_empty()
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
