//! `flotilla bench`: closed-loop load against a cluster, and the same load
//! against etcd for comparison.
//!
//! Each of `clients` tasks sends its next request as soon as the previous
//! one is answered, until the duration (or the op count) is reached. Every
//! latency goes into an HDR histogram; throughput is counted per second for
//! the timeline. The same driver runs against any [`Target`], so Flotilla
//! and etcd are measured by the same client process model: one process,
//! tokio tasks, one shared client connection per system.
//!
//! The `load` workload ([`load`]) is of another kind: it writes a volume
//! once into a cluster it spawns, then wipes and rebuilds one node and
//! restarts another, and reports rates, memory peaks and disk use.

pub mod command;
pub mod etcd;
pub mod keys;
pub mod load;
pub mod plot;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::client::Client;

/// What the clients send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Puts only.
    Write,
    /// Linearizable gets only.
    Read,
    /// Gets with probability `read_ratio`, puts otherwise.
    Mixed {
        /// Share of reads, 0 to 1.
        read_ratio: f64,
    },
    /// Compare-and-swap of a key's current value (a get, then a CAS).
    Cas,
    /// A YCSB core workload: reads with probability `read_ratio`; the rest
    /// are updates (a put) or, where `rmw`, read-modify-writes (a get, then
    /// a put of the key it read).
    Ycsb {
        /// Which one: `'a'`, `'b'`, `'c'` or `'f'`.
        letter: char,
        /// Share of reads, 0 to 1.
        read_ratio: f64,
        /// Whether the writes are read-modify-writes.
        rmw: bool,
    },
}

impl Kind {
    /// The workload's name.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Read => "read",
            Kind::Mixed { .. } => "mixed",
            Kind::Cas => "cas",
            Kind::Ycsb { letter: 'a', .. } => "ycsb-a",
            Kind::Ycsb { letter: 'b', .. } => "ycsb-b",
            Kind::Ycsb { letter: 'c', .. } => "ycsb-c",
            Kind::Ycsb { .. } => "ycsb-f",
        }
    }
}

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many operations in all.
    Ops(u64),
}

/// A benchmark's parameters.
#[derive(Clone, Debug)]
pub struct Workload {
    /// What the clients send.
    pub kind: Kind,
    /// Keys the operations spread over.
    pub keys: u64,
    /// How each operation picks its key.
    pub distribution: keys::Distribution,
    /// Bytes per value.
    pub value_size: usize,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// When to stop.
    pub stop: Stop,
}

impl Workload {
    /// One of `turns` equal parts of the workload: its duration or its
    /// operation count divided (at least one second or one operation).
    pub fn turn(&self, turns: u32) -> Workload {
        let turns = turns.max(1);
        let stop = match self.stop {
            Stop::After(d) => Stop::After((d / turns).max(Duration::from_secs(1))),
            Stop::Ops(n) => Stop::Ops((n / u64::from(turns)).max(1)),
        };
        Workload {
            stop,
            ..self.clone()
        }
    }

    /// The workload as JSON.
    pub fn to_json(&self) -> Value {
        let (duration, ops) = match self.stop {
            Stop::After(d) => (Some(d.as_secs_f64()), None),
            Stop::Ops(n) => (None, Some(n)),
        };
        json!({
            "kind": self.kind.name(),
            "read_ratio": match self.kind {
                Kind::Mixed { read_ratio } | Kind::Ycsb { read_ratio, .. } => Some(read_ratio),
                _ => None,
            },
            "keys": self.keys,
            "distribution": self.distribution.name(),
            "value_size": self.value_size,
            "clients": self.clients,
            "duration_s": duration,
            "ops": ops,
        })
    }
}

/// Why an operation failed, in a few words (the key of the error counts).
pub type ErrorKind = String;

/// A store the harness can load.
pub trait Target: Clone + Send + Sync + 'static {
    /// Writes `value` at `key`.
    fn put(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<(), ErrorKind>> + Send;
    /// Reads `key` linearizably.
    fn get(&self, key: Vec<u8>) -> impl Future<Output = Result<Option<Vec<u8>>, ErrorKind>> + Send;
    /// Stores `new` if `key` holds `expected` (absent when `None`); returns
    /// whether it did.
    fn cas(
        &self,
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> impl Future<Output = Result<bool, ErrorKind>> + Send;
}

impl Target for Client {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), ErrorKind> {
        Client::put(self, &key, &value)
            .await
            .map_err(|e| kind_of(&e))
    }

    async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, ErrorKind> {
        Client::get(self, &key).await.map_err(|e| kind_of(&e))
    }

    async fn cas(
        &self,
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, ErrorKind> {
        Client::cas(self, &key, expected.as_deref(), Some(&new))
            .await
            .map(|o| o.swapped)
            .map_err(|e| kind_of(&e))
    }
}

/// A short name for an error's kind.
fn kind_of(e: &crate::Error) -> ErrorKind {
    use crate::Error as E;
    match e {
        E::NotLeader { .. } | E::WrongGroup { .. } | E::UnknownGroup(_) => "not_leader",
        E::ProposalLost { .. } => "proposal_lost",
        E::ReadUnconfirmed { .. } => "read_unconfirmed",
        E::Unreachable(m) if m.contains("did not answer") => "timeout",
        E::Unreachable(_) => "unreachable",
        E::PermissionDenied(_) | E::Certificate { .. } => "refused",
        _ => "other",
    }
    .to_string()
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Operations that succeeded.
    pub ops: u64,
    /// Wall time of the measured part.
    pub elapsed: Duration,
    /// Latency of successful operations, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Failed operations by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Successful operations completed in each second of the run.
    pub per_second: Vec<u64>,
}

impl Report {
    /// Adds a later turn of the same workload: counts, time and latencies
    /// add up, and its seconds follow this one's.
    pub fn absorb(&mut self, later: Report) {
        self.ops += later.ops;
        self.elapsed += later.elapsed;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_us.add(&later.latency_us);
        for (kind, n) in later.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.per_second.extend(later.per_second);
    }

    /// Successful operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest latency in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }

    /// The figures as JSON (`ops_per_sec`, `latency_ms`, `errors`, ...).
    pub fn to_json(&self) -> Value {
        json!({
            "ops_per_sec": round(self.ops_per_sec()),
            "ops": self.ops,
            "elapsed_s": round(self.elapsed.as_secs_f64()),
            "latency_ms": {
                "p50": round(self.quantile_ms(0.5)),
                "p90": round(self.quantile_ms(0.9)),
                "p99": round(self.quantile_ms(0.99)),
                "p999": round(self.quantile_ms(0.999)),
                "max": round(self.max_ms()),
            },
            "errors": self.errors,
            "per_second": self.per_second,
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The key of index `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("bench/{i:010}").into_bytes()
}

/// Writes every key once (reads and CAS need them to exist), `clients` at
/// a time.
pub async fn preload<T: Target>(target: &T, w: &Workload) -> Result<(), ErrorKind> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks: tokio::task::JoinSet<Result<(), ErrorKind>> = tokio::task::JoinSet::new();
    for _ in 0..w.clients.max(1) {
        let (t, next, keys, size) = (target.clone(), next.clone(), w.keys, w.value_size);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok(());
                }
                t.put(key(i), counter_value(0, size)).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| format!("preload task: {e}"))??;
    }
    Ok(())
}

/// A value of `size` bytes that starts with a decimal counter (for CAS).
fn counter_value(n: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{n:020}").into_bytes();
    v.resize(size.max(v.len()), b'.');
    v
}

fn counter_of(v: &[u8]) -> u64 {
    std::str::from_utf8(&v[..v.len().min(20)])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Counters the running clients share, for the progress display.
#[derive(Default)]
pub struct Progress {
    /// Successful operations so far.
    pub done: AtomicU64,
    /// Failed operations so far.
    pub failed: AtomicU64,
}

/// Runs the workload against `target` and reports what it measured.
/// `progress` is updated as operations complete.
pub async fn run<T: Target>(target: &T, w: &Workload, progress: Arc<Progress>) -> Report {
    let start = Instant::now();
    let stop_flag = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicU64::new(match w.stop {
        Stop::Ops(n) => n,
        Stop::After(_) => u64::MAX,
    }));
    let seconds = match w.stop {
        Stop::After(d) => d.as_secs() as usize + 2,
        Stop::Ops(_) => 3600,
    };
    let timeline: Arc<Vec<AtomicU64>> = Arc::new((0..seconds).map(|_| AtomicU64::new(0)).collect());
    let errors: Arc<Mutex<BTreeMap<ErrorKind, u64>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..w.clients.max(1) {
        let (t, w) = (target.clone(), w.clone());
        let (stop_flag, budget, timeline, errors, progress) = (
            stop_flag.clone(),
            budget.clone(),
            timeline.clone(),
            errors.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let mut hist = new_histogram();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c as u64 + 1);
            let chooser = keys::KeyChooser::new(w.distribution, w.keys);
            let value = counter_value(0, w.value_size);
            loop {
                if stop_flag.load(Ordering::Relaxed) {
                    break;
                }
                if budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                let k = key(chooser.next(&mut rng));
                let read = match w.kind {
                    Kind::Read => true,
                    Kind::Mixed { read_ratio } | Kind::Ycsb { read_ratio, .. } => {
                        rng.random_bool(read_ratio.clamp(0.0, 1.0))
                    }
                    _ => false,
                };
                let rmw = matches!(w.kind, Kind::Ycsb { rmw: true, .. });
                let began = Instant::now();
                let result = if w.kind == Kind::Cas {
                    match t.get(k.clone()).await {
                        Ok(cur) => {
                            let n = cur.as_deref().map_or(0, counter_of);
                            t.cas(k, cur, counter_value(n + 1, w.value_size))
                                .await
                                .map(|_| ())
                        }
                        Err(e) => Err(e),
                    }
                } else if read {
                    t.get(k).await.map(|_| ())
                } else if rmw {
                    match t.get(k.clone()).await {
                        Ok(_) => t.put(k, value.clone()).await,
                        Err(e) => Err(e),
                    }
                } else {
                    t.put(k, value.clone()).await
                };
                match result {
                    Ok(()) => {
                        let us = began.elapsed().as_micros() as u64;
                        let _ = hist.record(us.max(1));
                        let sec = start.elapsed().as_secs() as usize;
                        if let Some(slot) = timeline.get(sec) {
                            slot.fetch_add(1, Ordering::Relaxed);
                        }
                        progress.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(kind) => {
                        *errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(kind)
                            .or_default() += 1;
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        });
    }
    if let Stop::After(d) = w.stop {
        let flag = stop_flag.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            flag.store(true, Ordering::Relaxed);
        });
    }
    let mut latency = new_histogram();
    while let Some(h) = tasks.join_next().await {
        if let Ok(h) = h {
            let _ = latency.add(&h);
        }
    }
    let elapsed = start.elapsed();
    // Whole seconds only: a last, partial second would plot as a dip
    // (at every turn's end, when a comparison takes turns).
    let secs = (elapsed.as_secs() as usize).clamp(1, timeline.len());
    let per_second = timeline[..secs]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Report {
        ops: latency.len(),
        elapsed,
        latency_us: latency,
        errors,
        per_second,
    }
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: 1 µs to 10 minutes at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The side-by-side table of Flotilla against another system, with the
/// ratio Flotilla / other for every figure.
pub fn compare_table(ours: &Report, other_name: &str, other: &Report) -> String {
    use std::fmt::Write as _;
    let rows: [(&str, f64, f64); 6] = [
        ("ops/s", ours.ops_per_sec(), other.ops_per_sec()),
        ("p50 ms", ours.quantile_ms(0.5), other.quantile_ms(0.5)),
        ("p90 ms", ours.quantile_ms(0.9), other.quantile_ms(0.9)),
        ("p99 ms", ours.quantile_ms(0.99), other.quantile_ms(0.99)),
        ("p999 ms", ours.quantile_ms(0.999), other.quantile_ms(0.999)),
        ("max ms", ours.max_ms(), other.max_ms()),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:>12} {:>12} {:>16}",
        "",
        "flotilla",
        other_name,
        format!("flotilla/{other_name}")
    );
    for (name, a, b) in rows {
        let ratio = if b > 0.0 { a / b } else { f64::NAN };
        let _ = writeln!(out, "{name:<9} {a:>12.2} {b:>12.2} {ratio:>15.2}x");
    }
    let _ = writeln!(
        out,
        "{:<9} {:>12} {:>12}",
        "errors",
        ours.errors.values().sum::<u64>(),
        other.errors.values().sum::<u64>()
    );
    out
}

/// One report as text.
pub fn summary(name: &str, r: &Report) -> String {
    format!(
        "{name}: {:.0} ops/s over {:.1} s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p999 {:.2} max {:.2}; errors {:?}",
        r.ops_per_sec(),
        r.elapsed.as_secs_f64(),
        r.quantile_ms(0.5),
        r.quantile_ms(0.9),
        r.quantile_ms(0.99),
        r.quantile_ms(0.999),
        r.max_ms(),
        r.errors
    )
}

/// The `--json` document: `{"flotilla": ..., "etcd": ..., "workload": ...}`
/// with `ratio` (Flotilla / etcd) when both ran.
pub fn document(w: &Workload, ours: &Report, etcd: Option<&Report>) -> Value {
    let mut doc = json!({ "flotilla": ours.to_json(), "workload": w.to_json() });
    if let Some(e) = etcd {
        doc["etcd"] = e.to_json();
        let ratio = |a: f64, b: f64| if b > 0.0 { round(a / b) } else { f64::NAN };
        doc["ratio"] = json!({
            "ops_per_sec": ratio(ours.ops_per_sec(), e.ops_per_sec()),
            "p50": ratio(ours.quantile_ms(0.5), e.quantile_ms(0.5)),
            "p90": ratio(ours.quantile_ms(0.9), e.quantile_ms(0.9)),
            "p99": ratio(ours.quantile_ms(0.99), e.quantile_ms(0.99)),
            "p999": ratio(ours.quantile_ms(0.999), e.quantile_ms(0.999)),
            "max": ratio(ours.max_ms(), e.max_ms()),
        });
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_padded_values() {
        let v = counter_value(42, 256);
        assert_eq!(v.len(), 256);
        assert_eq!(counter_of(&v), 42);
        assert_eq!(counter_of(&counter_value(7, 4)), 7);
    }

    fn report(ops: &[u64], latencies_us: &[u64], errors: &[(&str, u64)]) -> Report {
        let mut h = new_histogram();
        for l in latencies_us {
            h.record(*l).unwrap();
        }
        Report {
            ops: latencies_us.len() as u64,
            elapsed: Duration::from_secs(ops.len() as u64),
            latency_us: h,
            errors: errors.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            per_second: ops.to_vec(),
        }
    }

    #[test]
    fn turns_add_up_to_one_report() {
        let mut a = report(&[2, 1], &[100, 300, 200], &[("timeout", 1)]);
        a.absorb(report(
            &[4],
            &[5_000, 400, 600, 700],
            &[("timeout", 2), ("other", 1)],
        ));
        assert_eq!(a.ops, 7);
        assert_eq!(a.elapsed, Duration::from_secs(3));
        assert_eq!(a.per_second, vec![2, 1, 4]);
        assert_eq!(a.errors["timeout"], 3);
        assert_eq!(a.errors["other"], 1);
        assert_eq!(a.latency_us.len(), 7);
        assert!((a.max_ms() - 5.0).abs() < 0.01, "{}", a.max_ms());
        assert!((a.ops_per_sec() - 7.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_turn_is_an_equal_part_of_the_run() {
        let w = Workload {
            kind: Kind::Write,
            keys: 10,
            distribution: keys::Distribution::Uniform,
            value_size: 8,
            clients: 2,
            stop: Stop::After(Duration::from_secs(20)),
        };
        assert_eq!(w.turn(4).stop, Stop::After(Duration::from_secs(5)));
        assert_eq!(w.turn(100).stop, Stop::After(Duration::from_secs(1)));
        let w = Workload {
            stop: Stop::Ops(10),
            ..w
        };
        assert_eq!(w.turn(3).stop, Stop::Ops(3));
        assert_eq!(w.turn(0).stop, Stop::Ops(10));
    }
}
