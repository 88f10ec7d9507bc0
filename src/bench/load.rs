//! `flotilla bench load`: how a spawned cluster takes a volume of data, and
//! what it costs to rebuild and restart a node that holds it.
//!
//! The phases, each bounded by `--phase-timeout`:
//! 1. **load**: `--clients` tasks write `--bytes` in `--value-size` values,
//!    each over keys of its own drawn from one counter, so every key is
//!    written once. Values are pseudo-random bytes, so nothing on the way
//!    can shrink them. Then every node is waited for until it has applied
//!    every group it holds up to its leader's commit.
//! 2. **disk**: each node's data directory, in allocated bytes (as
//!    `status` counts them), against the bytes loaded times the replicas.
//! 3. **rebuild**: the last node is killed, its data directory deleted,
//!    and it is started again at its address with `--wipe-and-join`. It
//!    joins as a new member and takes the old member's place; the phase
//!    ends when no group's leader names the old member any more and the new
//!    member holds every group whose leader names it, applied up to that
//!    leader's commit. Its rate is the logical bytes those groups hold
//!    (the bytes loaded times its share of the data groups) over the time
//!    from its start.
//! 4. **restart**: the first node is killed and started again on its data.
//!    Serving means its `status` says `ready` and every group it holds is
//!    applied up to its leader's commit (a node just restarted leads no
//!    group, so a read routed to one it leads would wait for an election).
//!
//! Throughout, a background task reads every node process's `VmRSS` from
//! `/proc/PID/status` every 200 ms and keeps the peak of each phase.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};

use crate::api::NodeReport;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::node::ops::Processes;
use crate::node::resources::{disk_bytes, rss_of};
use crate::types::{GroupId, NodeId};

/// How often peaks of resident memory are sampled, and nodes polled.
const SAMPLE: Duration = Duration::from_millis(200);
/// The longest one node report may take. Short, so that a node that is
/// not up yet (or a connection to a killed process) costs a poll at most
/// this much, and a restart is timed to within a poll.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
const MIB: f64 = 1024.0 * 1024.0;

/// What `flotilla bench load` does.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Logical bytes to load (rounded up to whole values).
    pub bytes: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Concurrent writers.
    pub clients: usize,
    /// Data groups of the cluster.
    pub groups: u64,
    /// The bound on each phase.
    pub phase_timeout: Duration,
}

impl Plan {
    /// Values to write.
    pub fn keys(&self) -> u64 {
        self.bytes.div_ceil(self.value_size.max(1) as u64)
    }

    /// Bytes the values add up to.
    pub fn loaded(&self) -> u64 {
        self.keys() * self.value_size as u64
    }
}

/// The peak resident memory of each node process while it runs.
struct Peaks {
    peaks: Arc<Vec<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peaks {
    /// Starts sampling the processes of `procs` (as they are now).
    fn start(procs: &Processes) -> Peaks {
        let pids: Vec<Option<u32>> = (0..procs.addrs.len()).map(|i| procs.pid(i)).collect();
        let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
        let task = {
            let peaks = peaks.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE);
                loop {
                    tick.tick().await;
                    for (pid, peak) in pids.iter().zip(peaks.iter()) {
                        if let Some(rss) = pid.and_then(rss_of) {
                            peak.fetch_max(rss, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Peaks { peaks, task }
    }

    /// Stops sampling; the peak of each node, in start order.
    fn finish(self) -> Vec<u64> {
        self.task.abort();
        self.peaks
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect()
    }
}

/// Every node's report that came within [`STATUS_TIMEOUT`], by start
/// order; the nodes are asked at once.
async fn reports(client: &Client, addrs: &[SocketAddr]) -> BTreeMap<usize, NodeReport> {
    let mut asks = tokio::task::JoinSet::new();
    for (i, a) in addrs.iter().copied().enumerate() {
        let client = client.clone();
        asks.spawn(async move {
            let r = tokio::time::timeout(STATUS_TIMEOUT, client.node_status(a)).await;
            (i, r)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(done) = asks.join_next().await {
        if let Ok((i, Ok(Ok(r)))) = done {
            out.insert(i, r);
        }
    }
    out
}

/// Each led group's commit index and voters, as its leader reports them.
fn leaders(rs: &BTreeMap<usize, NodeReport>) -> BTreeMap<GroupId, (u64, Vec<NodeId>)> {
    rs.values()
        .flat_map(|r| r.groups.iter().filter(|g| g.leader))
        .map(|g| (g.group, (g.commit, g.voters.clone())))
        .collect()
}

/// Whether `me` is ready and has applied every group it holds up to that
/// group's leader's commit.
fn caught_up(me: &NodeReport, led: &BTreeMap<GroupId, (u64, Vec<NodeId>)>) -> bool {
    me.lifecycle == "ready"
        && !me.groups.is_empty()
        && me
            .groups
            .iter()
            .all(|g| led.get(&g.group).is_some_and(|(c, _)| g.applied >= *c))
}

/// Polls node reports until `done` holds for them, or fails naming `what`
/// after `timeout`. Returns how long it took.
async fn wait_until(
    client: &Client,
    addrs: &[SocketAddr],
    timeout: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<usize, NodeReport>) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if done(&reports(client, addrs).await) {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(Error::Unreachable(format!(
                "{what}: not within {timeout:?}"
            )));
        }
        tokio::time::sleep(SAMPLE / 4).await;
    }
}

/// Every node answers and has caught up, and every one of `groups` is led.
fn all_caught_up(rs: &BTreeMap<usize, NodeReport>, nodes: usize, groups: usize) -> bool {
    let led = leaders(rs);
    rs.len() == nodes && led.len() == groups && rs.values().all(|r| caught_up(r, &led))
}

/// Writes the plan's values, `clients` at a time; returns the time taken
/// and the failed attempts (each retried until the phase times out).
async fn load(client: &Client, plan: &Plan) -> Result<(Duration, u64)> {
    let keys = plan.keys();
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(plan.loaded());
    if let Ok(style) = ProgressStyle::with_template(
        "load [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let start = Instant::now();
    let deadline = start + plan.phase_timeout;
    let mut tasks: tokio::task::JoinSet<Result<()>> = tokio::task::JoinSet::new();
    for c in 0..plan.clients.max(1) {
        let (client, next, written, failed) = (
            client.clone(),
            next.clone(),
            written.clone(),
            failed.clone(),
        );
        let size = plan.value_size;
        tasks.spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c as u64 + 1);
            let mut value = vec![0u8; size];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok(());
                }
                rng.fill_bytes(&mut value);
                let key = super::key(i);
                while let Err(e) = client.put(&key, &value).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(SAMPLE / 4).await;
                }
                written.fetch_add(size as u64, Ordering::Relaxed);
            }
        });
    }
    let ticker = {
        let (bar, written, failed) = (bar.clone(), written.clone(), failed.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                bar.set_position(written.load(Ordering::Relaxed));
                bar.set_message(format!("{} errors", failed.load(Ordering::Relaxed)));
            }
        })
    };
    let mut outcome = Ok(());
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| Error::Invalid(format!("a load task failed: {e}")));
        if let (Err(e), true) = (r.and_then(|r| r), outcome.is_ok()) {
            // The first failure is the one to tell; the rest stop.
            outcome = Err(e);
            tasks.abort_all();
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    outcome?;
    Ok((start.elapsed(), failed.load(Ordering::Relaxed)))
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

fn rounded(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs the phases against the cluster of `procs`, prints a table to
/// `out` unless `quiet`, and returns the results as JSON.
pub async fn run(
    procs: &mut Processes,
    client: &Client,
    plan: &Plan,
    out: &mut (dyn std::io::Write + Send),
    quiet: bool,
) -> Result<Value> {
    let addrs = procs.addrs.clone();
    let nodes = addrs.len();
    let replicas = nodes.min(3) as u64;
    let timeout = plan.phase_timeout;
    let groups = leaders(&reports(client, &addrs).await).len();

    let peaks = Peaks::start(procs);
    let (took, failed) = match load(client, plan).await {
        Ok(r) => r,
        Err(e) => {
            peaks.finish();
            return Err(e);
        }
    };
    let settled = wait_until(client, &addrs, timeout, "every node caught up", |rs| {
        all_caught_up(rs, nodes, groups)
    })
    .await;
    let load_rss = peaks.finish();
    settled?;
    let loaded = plan.loaded();
    let disk: Vec<u64> = (0..nodes).map(|i| disk_bytes(&procs.data_dir(i))).collect();
    let logical_per_node = (loaded * replicas) as f64 / nodes as f64;

    // Rebuild: the last node loses its disk and joins again.
    let victim = nodes - 1;
    let old = reports(client, &addrs[victim..])
        .await
        .remove(&0)
        .map(|r| r.node)
        .ok_or_else(|| Error::Unreachable("the node to wipe did not answer".into()))?;
    procs.kill(victim)?;
    let data = procs.data_dir(victim);
    std::fs::remove_dir_all(&data)
        .map_err(|e| Error::Invalid(format!("cannot delete {}: {e}", data.display())))?;
    let began = Instant::now();
    procs.restart(victim, true)?;
    let peaks = Peaks::start(procs);
    let rebuilt = wait_until(client, &addrs, timeout, "the wiped node rebuilt", |rs| {
        let Some(me) = rs.get(&victim) else {
            return false;
        };
        let led = leaders(rs);
        let held: BTreeSet<GroupId> = me.groups.iter().map(|g| g.group).collect();
        me.node != old
            && led.len() == groups
            && led.values().all(|(_, voters)| !voters.contains(&old))
            && led
                .iter()
                .filter(|(_, (_, voters))| voters.contains(&me.node))
                .all(|(g, _)| held.contains(g))
            && caught_up(me, &led)
    })
    .await;
    let rebuild_rss = peaks.finish();
    rebuilt?;
    let rebuild_took = began.elapsed();
    let me = reports(client, &addrs[victim..]).await.remove(&0);
    let held_data_groups = me.as_ref().map_or(0, |r| {
        r.groups.iter().filter(|g| g.group.0 != 0).count() as u64
    });
    let rebuilt_bytes = loaded * held_data_groups / plan.groups.max(1);
    let rebuilt_disk = disk_bytes(&procs.data_dir(victim));

    // Restart: the first node stops and starts again on its data.
    let again = 0;
    procs.kill(again)?;
    let began = Instant::now();
    procs.restart(again, false)?;
    let peaks = Peaks::start(procs);
    let serving = wait_until(
        client,
        &addrs,
        timeout,
        "the restarted node serving",
        |rs| rs.get(&again).is_some_and(|me| caught_up(me, &leaders(rs))),
    )
    .await;
    let restart_rss = peaks.finish();
    serving?;
    let serving_after = began.elapsed();

    let doc = json!({
        "workload": {
            "kind": "load",
            "bytes": loaded,
            "value_size": plan.value_size,
            "keys": plan.keys(),
            "clients": plan.clients,
            "groups": plan.groups,
            "nodes": nodes,
            "replicas": replicas,
        },
        "load": {
            "mb_per_s": rounded(mb_per_s(loaded, took)),
            "elapsed_s": rounded(took.as_secs_f64()),
            "failed_attempts": failed,
            "peak_rss_bytes": load_rss,
        },
        "disk": {
            "bytes": disk,
            "per_logical_byte": rounded(disk.iter().sum::<u64>() as f64 / (loaded * replicas) as f64),
            "per_node_logical_byte": disk.iter().map(|d| rounded(*d as f64 / logical_per_node)).collect::<Vec<_>>(),
        },
        "rebuild": {
            "node": victim + 1,
            "elapsed_s": rounded(rebuild_took.as_secs_f64()),
            "logical_bytes": rebuilt_bytes,
            "disk_bytes": rebuilt_disk,
            "mb_per_s": rounded(mb_per_s(rebuilt_bytes, rebuild_took)),
            "peak_rss_bytes": rebuild_rss,
        },
        "restart": {
            "node": again + 1,
            "serving_s": rounded(serving_after.as_secs_f64()),
            "serving_means": "status ready and every group it holds applied up to its leader's commit",
            "peak_rss_bytes": restart_rss,
        },
    });
    if !quiet {
        let _ = write!(out, "{}", table(&doc));
    }
    Ok(doc)
}

/// The results document as a table.
pub fn table(doc: &Value) -> String {
    let mut out = String::new();
    let w = &doc["workload"];
    let _ = writeln!(
        out,
        "load: {} MiB in {} data groups, {} values of {} bytes, {} clients, {} nodes",
        w["bytes"].as_u64().unwrap_or(0) as f64 / MIB,
        w["groups"],
        w["keys"],
        w["value_size"],
        w["clients"],
        w["nodes"]
    );
    let nodes = w["nodes"].as_u64().unwrap_or(0) as usize;
    let _ = write!(out, "{:<22}", "");
    for i in 1..=nodes {
        let _ = write!(out, " {:>8}", format!("n{i}"));
    }
    let _ = writeln!(out);
    let row = |out: &mut String, name: &str, xs: &Value, scale: f64| {
        let _ = write!(out, "{name:<22}");
        for x in xs.as_array().into_iter().flatten() {
            let _ = write!(out, " {:>8.2}", x.as_f64().unwrap_or(0.0) / scale);
        }
        let _ = writeln!(out);
    };
    row(
        &mut out,
        "peak RSS MiB, load",
        &doc["load"]["peak_rss_bytes"],
        MIB,
    );
    row(
        &mut out,
        "peak RSS MiB, rebuild",
        &doc["rebuild"]["peak_rss_bytes"],
        MIB,
    );
    row(
        &mut out,
        "peak RSS MiB, restart",
        &doc["restart"]["peak_rss_bytes"],
        MIB,
    );
    row(&mut out, "disk MiB", &doc["disk"]["bytes"], MIB);
    row(
        &mut out,
        "disk / logical",
        &doc["disk"]["per_node_logical_byte"],
        1.0,
    );
    let _ = writeln!(
        out,
        "load {} MB/s over {} s ({} failed attempts, retried); disk {}x the logical data times replicas",
        doc["load"]["mb_per_s"],
        doc["load"]["elapsed_s"],
        doc["load"]["failed_attempts"],
        doc["disk"]["per_logical_byte"]
    );
    let _ = writeln!(
        out,
        "rebuild of n{} (wiped, --wipe-and-join): {} MB/s, {} logical MiB in {} s",
        doc["rebuild"]["node"],
        doc["rebuild"]["mb_per_s"],
        (doc["rebuild"]["logical_bytes"].as_u64().unwrap_or(0) as f64 / MIB).round(),
        doc["rebuild"]["elapsed_s"]
    );
    let _ = writeln!(
        out,
        "restart of n{} (killed, started on its data): serving after {} s ({})",
        doc["restart"]["node"],
        doc["restart"]["serving_s"],
        doc["restart"]["serving_means"].as_str().unwrap_or("")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_rounds_up_to_whole_values() {
        let plan = Plan {
            bytes: 100,
            value_size: 30,
            clients: 1,
            groups: 1,
            phase_timeout: Duration::from_secs(1),
        };
        assert_eq!(plan.keys(), 4);
        assert_eq!(plan.loaded(), 120);
    }

    #[test]
    fn resident_memory_of_this_process_is_read() {
        if cfg!(target_os = "linux") {
            assert!(rss_of(std::process::id()).is_some_and(|b| b > 0));
        }
    }
}
