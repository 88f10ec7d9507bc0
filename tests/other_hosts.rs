//! The CLI reaches a node on an address that is not loopback: a node runs
//! in a network namespace of its own, on a 10.x address behind a bridge,
//! and `init`, `put`, `get`, `status` and `node-status`, run as fresh
//! processes in the root namespace, all work against it; so does its
//! `/ready` over HTTP. Namespaces need root: run as another user, the test
//! says it was skipped and passes.

mod common;
#[allow(dead_code)] // the partitions of the fault test are not used here
#[path = "common/netns.rs"]
mod netns;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command as Process, Output};
use std::time::{Duration, Instant};

use common::*;
use netns::Net;

/// The port the node serves its metrics on, in its namespace.
const METRICS_PORT: u16 = 9100;

/// Runs the CLI against `addr` with the test's certificates.
fn cli(dir: &Path, addr: SocketAddr, args: &[&str]) -> Output {
    Process::new(EXE)
        .args(["--endpoints", &addr.to_string(), "--timeout", "10s"])
        .arg("--certs-dir")
        .arg(dir.join("certs"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `args` until it succeeds; returns its standard output.
async fn until_ok(dir: &Path, addr: SocketAddr, args: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let out = cli(dir, addr, args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The status line of `GET /ready` at `addr`, or why there was none.
fn ready_status(addr: SocketAddr) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok(raw.lines().next().unwrap_or_default().to_string())
    };
    attempt().unwrap_or_else(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_node_on_a_non_loopback_address() {
    if !netns::is_root() {
        println!("other_hosts: skipped: network namespaces need root");
        return;
    }
    let net = Net::create(1).expect("a network namespace");
    let addr = net.addr(0);
    assert!(!addr.ip().is_loopback());
    let dir = test_dir_for(&[addr.ip().to_string()]);
    let metrics = SocketAddr::new(addr.ip(), METRICS_PORT);
    let m = metrics.to_string();
    let node = spawn_via(
        &net.launcher(0),
        dir.path(),
        0,
        addr,
        None,
        &["--metrics-listen", m.as_str()],
    );
    let nodes = Nodes(BTreeMap::from([(0, node)]), dir.path().to_path_buf());

    // `flotilla init`, as a fresh process, until it succeeds.
    init(dir.path(), addr).await;

    until_ok(dir.path(), addr, &["put", "far", "away"]).await;
    let value = until_ok(dir.path(), addr, &["get", "far"]).await;
    assert_eq!(value.trim_end(), "away");
    let status = until_ok(dir.path(), addr, &["status"]).await;
    assert!(status.contains(&addr.to_string()), "{status}");
    let one = Process::new(EXE)
        .args([
            "node-status",
            "--endpoint",
            &addr.to_string(),
            "--certs-dir",
        ])
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(one.status.success(), "{one:?}");
    assert!(String::from_utf8_lossy(&one.stdout).contains("ready"));

    let start = Instant::now();
    loop {
        let line = ready_status(metrics);
        if line.contains(" 200 ") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "/ready at {metrics}: {line}");
        tokio::time::sleep(POLL).await;
    }

    // The processes stop before the namespace goes.
    drop(nodes);
    drop(net);
    keep(dir);
}
