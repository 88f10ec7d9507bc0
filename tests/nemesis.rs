//! Flotilla's own fault test: three real node processes, clients doing
//! get, put and CAS on a few keys, and a seeded schedule of faults: kill -9
//! and restart, SIGSTOP and SIGCONT, and, as root, partitions between
//! network namespaces (the leader cut off from its peers, a node cut off
//! from everyone, one-way loss). After each fault is healed the cluster
//! must answer on every key again within a deadline. At the end the
//! recorded history must be linearizable (final reads included, so no
//! acknowledged write may be lost) and `flotilla check` must find every
//! replica equal. The run prints the longest stretch without a successful
//! call for each fault; it asserts no availability target.
//!
//! `FLOTILLA_NEMESIS_SECONDS` (default 30) sets the length of the run,
//! `FLOTILLA_NEMESIS_SEED` the schedule (default: drawn, and printed);
//! `FLOTILLA_NEMESIS_NETNS=0` runs on loopback without partitions even as
//! root. No delay is added to any link: this needs netem, which the
//! machines this runs on lack, and the run says so.

mod common;
#[path = "common/nemesis.rs"]
mod nemesis;
#[path = "common/netns.rs"]
mod netns;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use flotilla::client::{Client, ClientConfig};
use flotilla::history::{self, Call, Outcome, Verdict};
use flotilla::types::NodeId;
use nemesis::{Fault, Recorder, Window};
use netns::{Net, Side};

const NODES: usize = 3;
/// Concurrent clients: enough to overlap calls on each key.
const CLIENTS: usize = 4;
/// The keys, few so that clients contend on each.
const KEYS: usize = 4;
/// How long the cluster has after a heal to answer on every key again:
/// generous, since `make test` asserts recovery, not its speed.
const RECOVERY: Duration = Duration::from_secs(60);
/// Search steps per key: far above what a few thousand calls need.
const CHECK_BUDGET: u64 = 50_000_000;
/// The client id of the final reads.
const FINAL_READER: usize = 99;

/// The run's settings, from the environment.
struct Settings {
    seed: u64,
    run: Duration,
    partitions: bool,
}

fn settings() -> Settings {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let seed = var("FLOTILLA_NEMESIS_SEED").map_or_else(rand::random, |s| {
        s.parse().expect("FLOTILLA_NEMESIS_SEED must be a number")
    });
    let secs: u64 = var("FLOTILLA_NEMESIS_SECONDS").map_or(30, |s| {
        s.parse()
            .expect("FLOTILLA_NEMESIS_SECONDS must be a number")
    });
    let wanted = var("FLOTILLA_NEMESIS_NETNS").is_none_or(|v| v != "0");
    let root = netns::is_root();
    if wanted && !root {
        println!("nemesis: not root, so no network namespaces: running WITHOUT partitions (kill and stop faults only), on loopback");
    } else if !wanted {
        println!("nemesis: FLOTILLA_NEMESIS_NETNS=0: running WITHOUT partitions (kill and stop faults only), on loopback");
    }
    Settings {
        seed,
        run: Duration::from_secs(secs),
        partitions: wanted && root,
    }
}

/// The nodes under test and how to start, stop and cut them.
///
/// Fields drop in declaration order: the processes die first, then the
/// namespaces go, then the directory with the logs.
struct Cluster {
    /// The node processes, by index.
    nodes: Nodes,
    /// The namespaces and cuts; `None` on loopback.
    net: Option<Net>,
    /// Data directories, logs and certificates.
    dir: tempfile::TempDir,
    /// Each node's address, by index.
    addrs: Vec<SocketAddr>,
    /// Asks nodes for their reports.
    caller: Client,
}

impl Cluster {
    fn launcher(&self, i: usize) -> Vec<String> {
        self.net.as_ref().map_or_else(Vec::new, |n| n.launcher(i))
    }

    fn start(&mut self, i: usize) {
        let seeds = seed_list(&self.addrs);
        let child = spawn_via(
            &self.launcher(i),
            self.dir.path(),
            i,
            self.addrs[i],
            Some(&seeds),
            &[],
        );
        self.nodes.0.insert(i, child);
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes.0[&i].id();
        let status = Process::new("sh")
            .args(["-c", &format!("kill -{signal} {pid}")])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} n{i} (pid {pid})");
    }

    fn net(&self) -> &Net {
        self.net.as_ref().expect("partitions need the namespaces")
    }

    /// The index of the node leading `key`'s group now, if one does.
    async fn leader_of(
        &self,
        client: &Client,
        key: &[u8],
        ids: &BTreeMap<NodeId, usize>,
    ) -> Option<usize> {
        let group = client.catalog().await.ok()?.group_of(key);
        reports(&self.caller, &self.addrs)
            .await
            .iter()
            .filter(|r| r.groups.iter().any(|g| g.group == group && g.leader))
            .find_map(|r| ids.get(&r.node).copied())
    }
}

/// Starts the fault; returns the node it struck.
async fn strike(
    c: &mut Cluster,
    fault: &Fault,
    client: &Client,
    key: &[u8],
    ids: &BTreeMap<NodeId, usize>,
) -> Option<usize> {
    match *fault {
        Fault::Kill(n) => {
            let mut child = c.nodes.0.remove(&n).expect("running");
            child.kill().unwrap();
            child.wait().unwrap();
            Some(n)
        }
        Fault::Pause(n) => {
            c.signal(n, "STOP");
            Some(n)
        }
        Fault::IsolateLeader => {
            let n = c.leader_of(client, key, ids).await.unwrap_or(0);
            for other in (0..NODES).filter(|o| *o != n) {
                c.net().cut_both(Side::Node(n), Side::Node(other)).unwrap();
            }
            Some(n)
        }
        Fault::Split(n) => {
            for other in (0..NODES).filter(|o| *o != n) {
                c.net().cut_both(Side::Node(n), Side::Node(other)).unwrap();
            }
            c.net().cut_both(Side::Node(n), Side::Clients).unwrap();
            Some(n)
        }
        Fault::OneWay { from, to } => {
            c.net().cut(Side::Node(from), Side::Node(to)).unwrap();
            Some(from)
        }
    }
}

fn heal(c: &mut Cluster, fault: &Fault) {
    match *fault {
        Fault::Kill(n) => c.start(n),
        Fault::Pause(n) => c.signal(n, "CONT"),
        Fault::IsolateLeader | Fault::Split(_) | Fault::OneWay { .. } => c.net().heal().unwrap(),
    }
}

/// Waits until every node answers as ready and every key has answered a
/// successful call since `healed`; returns how long that took from heal.
async fn wait_recovered(
    c: &Cluster,
    rec: &Recorder,
    keys: &[Vec<u8>],
    healed: Duration,
    what: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        let answered = rec.answered_since(healed, keys);
        let rs = reports(&c.caller, &c.addrs).await;
        if answered && rs.len() == NODES && rs.iter().all(|r| r.lifecycle == "ready") {
            return rec.now() - healed;
        }
        assert!(
            start.elapsed() < RECOVERY,
            "no recovery within {RECOVERY:?} after healing {what}: every key answered: {answered}, nodes ready: {:?}",
            rs.iter().map(|r| (r.node, r.lifecycle.clone())).collect::<Vec<_>>()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `flotilla check` until it answers for every replica; asserts it
/// found them equal.
fn check_replicas(c: &Cluster) {
    let start = Instant::now();
    loop {
        let (code, text) = run_check(c.dir.path(), &c.addrs);
        // 3: a replica did not answer in time (it may still be catching
        // up); 5 would be replicas that differ, which no wait fixes.
        if code != Some(3) || start.elapsed() > DEADLINE {
            assert_eq!(code, Some(0), "flotilla check: {text}");
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// A seed names one schedule; each round of it strikes every kind of
/// fault once, so even a short run meets all of them.
#[test]
fn a_seed_draws_one_schedule_and_every_round_has_every_kind() {
    let run = Duration::from_secs(60);
    let a = nemesis::schedule(7, run, NODES, true);
    assert_eq!(a, nemesis::schedule(7, run, NODES, true));
    assert_ne!(a, nemesis::schedule(8, run, NODES, true));
    let kind = |f: &Fault| std::mem::discriminant(f);
    let first: std::collections::BTreeSet<String> = a[..5]
        .iter()
        .map(|p| format!("{:?}", kind(&p.fault)))
        .collect();
    assert_eq!(first.len(), 5, "{a:?}");
    let quiet = nemesis::schedule(7, run, NODES, false);
    assert!(quiet
        .iter()
        .all(|p| matches!(p.fault, Fault::Kill(_) | Fault::Pause(_))));
    for p in &a {
        if let Fault::OneWay { from, to } = p.fault {
            assert_ne!(from, to);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_under_faults_stays_linearizable_and_recovers() {
    let s = settings();
    let plan = nemesis::schedule(s.seed, s.run, NODES, s.partitions);
    println!(
        "nemesis: seed {} (replay: FLOTILLA_NEMESIS_SEED={} FLOTILLA_NEMESIS_SECONDS={}), {} faults, {}; links run WITHOUT added delay (that needs netem)",
        s.seed,
        s.seed,
        s.run.as_secs(),
        plan.len(),
        if s.partitions { "partitions in network namespaces" } else { "loopback, no partitions" }
    );
    for (i, p) in plan.iter().enumerate() {
        println!(
            "  {i:>3}. {:<32} hold {:>5} ms, then quiet {:>5} ms",
            p.fault.name(),
            p.hold.as_millis(),
            p.quiet.as_millis()
        );
    }

    let net = s.partitions.then(|| {
        Net::create(NODES).unwrap_or_else(|e| {
            panic!("cannot make the namespaces ({e}); FLOTILLA_NEMESIS_NETNS=0 runs without them")
        })
    });
    let addrs: Vec<SocketAddr> = match &net {
        Some(n) => (0..NODES).map(|i| n.addr(i)).collect(),
        None => (0..NODES).map(|_| free_addr()).collect(),
    };
    let hosts: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    let dir = test_dir_for(&hosts);
    let nodes = Nodes(BTreeMap::new(), dir.path().to_path_buf());
    let caller = caller(&dir.path().join("certs"));
    let mut c = Cluster {
        nodes,
        net,
        dir,
        addrs,
        caller,
    };
    for i in 0..NODES {
        c.start(i);
    }
    init(c.dir.path(), c.addrs[0]).await;
    wait_for(&c.caller, &c.addrs, "the cluster did not settle", |rs| {
        settled(rs, NODES)
    })
    .await;
    let mut ids = BTreeMap::new();
    for (i, a) in c.addrs.iter().enumerate() {
        ids.insert(c.caller.node_status(*a).await.unwrap().node, i);
    }

    let certs = c.dir.path().join("certs");
    let connect = |deadline: Duration| {
        let endpoints = c.addrs.iter().map(|a| a.to_string()).collect();
        let mut config = ClientConfig::from_certs_dir(endpoints, &certs);
        config.timeout = deadline;
        async move { Client::connect(config).await.unwrap() }
    };
    let keys: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..KEYS)
            .map(|k| format!("nemesis/{k}").into_bytes())
            .collect(),
    );
    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        let deadline = nemesis::DEADLINES[id % nemesis::DEADLINES.len()];
        let client = connect(deadline).await;
        workers.spawn(nemesis::run_client(
            id,
            client,
            deadline,
            keys.clone(),
            rec.clone(),
            stop.clone(),
            s.seed,
        ));
    }
    let long = flotilla::client::DEFAULT_TIMEOUT;
    let observer = connect(long).await;

    let mut windows: Vec<Window> = Vec::new();
    for p in &plan {
        let struck = rec.now();
        if let Some(w) = windows.last_mut() {
            w.ended = struck;
        }
        let target = strike(&mut c, &p.fault, &observer, &keys[0], &ids).await;
        println!(
            "nemesis: {:>6.1} s  {} (n{})",
            struck.as_secs_f64(),
            p.fault.name(),
            target.unwrap_or(0)
        );
        // The fault's duration, drawn from the seed: a hold, not a wait
        // for a condition.
        tokio::time::sleep(p.hold).await;
        heal(&mut c, &p.fault);
        let healed = rec.now();
        let what = format!("{} (seed {})", p.fault.name(), s.seed);
        let recovered_in = wait_recovered(&c, &rec, &keys, healed, &what).await;
        windows.push(Window {
            fault: p.fault.clone(),
            target,
            struck,
            healed,
            ended: healed,
            recovered_in,
        });
        tokio::time::sleep(p.quiet).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(w) = workers.join_next().await {
        w.unwrap();
    }
    if let Some(w) = windows.last_mut() {
        w.ended = rec.now();
    }

    // Final reads, part of the history: each must succeed within the
    // recovery deadline and agree with every acknowledged write.
    for k in keys.iter() {
        let start = Instant::now();
        while matches!(
            rec.call(FINAL_READER, &observer, long, k, Call::Get).await,
            Outcome::Failed | Outcome::Unknown
        ) {
            assert!(
                start.elapsed() < RECOVERY,
                "the final read of {} kept failing (seed {})",
                String::from_utf8_lossy(k),
                s.seed
            );
        }
    }
    for a in c.addrs.clone() {
        wait_caught_up(&c.caller, &c.addrs, a).await;
    }
    check_replicas(&c);

    let history = rec.snapshot();
    nemesis::print_table(&windows, &history);
    let checking = Instant::now();
    let verdict = tokio::task::spawn_blocking({
        let history = history.clone();
        move || history::check(&history, CHECK_BUDGET)
    })
    .await
    .unwrap();
    println!(
        "\nnemesis: {} calls recorded; linearizability ({:.1} s to check): {verdict:?}; flotilla check: clean",
        history.len(),
        checking.elapsed().as_secs_f64()
    );
    if let Verdict::Violation { key, stuck, .. } = &verdict {
        let near = |e: &&history::Entry| {
            e.key == *key
                && e.invoked + Duration::from_secs(3) >= stuck.invoked
                && e.invoked <= stuck.completed + Duration::from_secs(3)
        };
        for e in history.iter().filter(near) {
            eprintln!("  {e:?}");
        }
    }
    assert!(
        matches!(verdict, Verdict::Linearizable { .. }),
        "not linearizable (seed {}): {verdict:?}",
        s.seed
    );
    let Cluster {
        nodes, net, dir, ..
    } = c;
    drop(nodes);
    drop(net);
    keep(dir);
}
