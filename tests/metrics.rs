//! A node's metrics and health checks over HTTP, with real node processes
//! on loopback: `/ready` says "not ready" while the nodes are joining and
//! "ready" once the cluster runs, `/health` answers all along, and
//! `/metrics` parses as the Prometheus text format with the documented
//! names and types, its counters moving once clients write.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Bounds one HTTP exchange with a node's metrics listener.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One `GET path` over a fresh connection: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).unwrap();
    s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// `get`, retried until the listener is up (the process is starting).
async fn get_when_up(addr: SocketAddr, path: &str) -> (u16, String) {
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).is_ok() {
            return get(addr, path);
        }
        assert!(start.elapsed() < DEADLINE, "no metrics listener at {addr}");
        tokio::time::sleep(POLL).await;
    }
}

/// A scrape, parsed: each metric family's type, and every sample by name
/// with its labels as written.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<(String, String, f64)>,
}

impl Exposition {
    /// Parses the Prometheus text format (version 0.0.4); panics on a line
    /// that is neither a comment nor `name[{labels}] value`.
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                e.types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample and its value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').expect("closed labels")),
                None => (series, ""),
            };
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad metric name in {line:?}"
            );
            e.samples
                .push((name.to_string(), labels.to_string(), value));
        }
        e
    }

    /// The sum of every sample named `name` whose labels contain `with`.
    fn sum(&self, name: &str, with: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && l.contains(with))
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// Every metric family the README lists, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("flotilla_node_ready", "gauge"),
    ("flotilla_process_resident_memory_bytes", "gauge"),
    ("flotilla_quic_connections", "gauge"),
    ("flotilla_transport_frames_received_total", "counter"),
    ("flotilla_transport_frames_sent_total", "counter"),
    ("flotilla_transport_refused_total", "counter"),
    ("flotilla_request_duration_seconds", "histogram"),
    ("flotilla_raft_proposals_total", "counter"),
    ("flotilla_raft_commits_total", "counter"),
    ("flotilla_raft_leader_changes_total", "counter"),
    ("flotilla_raft_elections_total", "counter"),
    ("flotilla_raft_round_duration_seconds", "histogram"),
    ("flotilla_storage_rounds_total", "counter"),
    ("flotilla_storage_round_size_bytes", "histogram"),
    ("flotilla_storage_round_log_bytes_total", "counter"),
    ("flotilla_storage_fsyncs_total", "counter"),
    ("flotilla_storage_fsync_duration_seconds", "histogram"),
    ("flotilla_storage_checkpoints_total", "counter"),
    ("flotilla_storage_overlay_flushes_total", "counter"),
    ("flotilla_storage_overlay_bytes", "gauge"),
    ("flotilla_storage_entry_cache_bytes", "gauge"),
    ("flotilla_sessions", "gauge"),
    ("flotilla_snapshot_sent_bytes_total", "counter"),
    ("flotilla_snapshot_received_bytes_total", "counter"),
    ("flotilla_snapshot_installs_total", "counter"),
    ("flotilla_groups", "gauge"),
    ("flotilla_groups_leaderless", "gauge"),
    ("flotilla_group_applied_index", "gauge"),
    ("flotilla_group_apply_lag", "gauge"),
];

/// Counters that must have moved on some node once clients wrote.
const MOVED: &[(&str, &str)] = &[
    ("flotilla_raft_proposals_total", ""),
    ("flotilla_raft_commits_total", ""),
    ("flotilla_raft_leader_changes_total", ""),
    ("flotilla_raft_elections_total", ""),
    ("flotilla_storage_rounds_total", ""),
    ("flotilla_storage_round_log_bytes_total", ""),
    ("flotilla_storage_fsyncs_total", ""),
    ("flotilla_storage_fsync_duration_seconds_count", ""),
    ("flotilla_raft_round_duration_seconds_count", ""),
    ("flotilla_transport_frames_received_total", ""),
    (
        "flotilla_request_duration_seconds_count",
        "op=\"propose\",outcome=\"ok\"",
    ),
    ("flotilla_process_resident_memory_bytes", ""),
    ("flotilla_quic_connections", ""),
    ("flotilla_sessions", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_and_ready_follows_the_join() {
    let dir = test_dir();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let metrics: Vec<SocketAddr> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
        })
        .collect();
    let seeds = seed_list(&addrs);
    let mut nodes = Nodes(BTreeMap::new(), dir.path().to_path_buf());
    for i in 0..3 {
        let m = metrics[i].to_string();
        let extra = ["--metrics-listen", m.as_str()];
        let child = spawn_with(dir.path(), i, addrs[i], Some(&seeds), &extra);
        nodes.0.insert(i, child);
    }

    // Before `init` every node is joining: alive, not ready.
    for m in &metrics {
        let (code, body) = get_when_up(*m, "/ready").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("not ready"), "{body}");
        assert_eq!(get(*m, "/health").0, 200);
        assert_eq!(get(*m, "/nowhere").0, 404);
    }

    init(dir.path(), addrs[0]).await;
    let caller = caller(&dir.path().join("certs"));
    wait_for(&caller, &addrs, "the cluster settles", |rs| settled(rs, 3)).await;
    let start = Instant::now();
    for m in &metrics {
        loop {
            let (code, body) = get(*m, "/ready");
            if code == 200 {
                break;
            }
            assert_eq!(code, 503, "{body}");
            assert!(start.elapsed() < DEADLINE, "{m} never got ready: {body}");
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(get(*m, "/health"), (200, "ok\n".to_string()));
    }

    let client = client_through(dir.path(), &addrs);
    for i in 0..30 {
        let key = format!("m{i}");
        client.put(key.as_bytes(), b"v").await.unwrap();
    }

    let scrapes: Vec<Exposition> = metrics
        .iter()
        .map(|m| {
            let (code, body) = get(*m, "/metrics");
            assert_eq!(code, 200, "{body}");
            Exposition::parse(&body)
        })
        .collect();
    for (m, e) in metrics.iter().zip(&scrapes) {
        for (name, kind) in FAMILIES {
            assert_eq!(
                e.types.get(*name).map(String::as_str),
                Some(*kind),
                "{m}: the type of {name}"
            );
        }
        assert_eq!(e.sum("flotilla_node_ready", ""), 1.0, "{m}");
        // Per-group series: one per group on the node, under the cap.
        let groups = e.sum("flotilla_groups", "");
        let applied = e
            .samples
            .iter()
            .filter(|(n, _, _)| n == "flotilla_group_applied_index")
            .count();
        assert_eq!(applied as f64, groups.min(64.0), "{m}");
        assert!(e.sum("flotilla_raft_commits_total", "") > 0.0, "{m}");
    }
    for (name, labels) in MOVED {
        let total: f64 = scrapes.iter().map(|e| e.sum(name, labels)).sum();
        assert!(total > 0.0, "{name}{{{labels}}} did not move");
    }
    let proposed: f64 = scrapes
        .iter()
        .map(|e| e.sum("flotilla_raft_proposals_total", ""))
        .sum();
    assert!(proposed >= 30.0, "30 writes, {proposed} proposals");

    drop(nodes);
    keep(dir);
}

/// The Grafana dashboard in `ops/grafana` asks only for metrics a node
/// exports: every `flotilla_` name in its queries is a listed family, or
/// a histogram's `_bucket`, `_sum` or `_count`.
#[test]
fn the_dashboard_names_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/grafana/flotilla.json");
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut names = Vec::new();
    for target in panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
    {
        let expr = target["expr"].as_str().expect("a query");
        let mut rest = expr;
        while let Some(at) = rest.find("flotilla_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.push(name);
        }
    }
    assert!(names.len() > 20, "{names:?}");
    for name in names {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| FAMILIES.iter().any(|(f, k)| f == base && *k == "histogram"))
            .unwrap_or(&name);
        assert!(
            FAMILIES.iter().any(|(f, _)| *f == family),
            "the dashboard asks for {name}, which no node exports"
        );
    }
}
