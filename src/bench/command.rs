//! The `flotilla bench` command line: spawn or target a cluster, optionally
//! spawn etcd beside it, run the workload against each, print, write JSON
//! and draw.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::{Kind, Progress, Report, Stop, Target, Workload};
use crate::client::{Client, ClientConfig};
use crate::error::{Error, Result};

/// Which workload `flotilla bench` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadName {
    /// Puts.
    Write,
    /// Linearizable gets.
    Read,
    /// Gets and puts, `--read-ratio` of them gets.
    Mixed,
    /// Read-then-CAS increments.
    Cas,
    /// YCSB core workload A: 50% reads, 50% updates (zipfian keys unless
    /// --distribution says otherwise).
    YcsbA,
    /// YCSB core workload B: 95% reads, 5% updates.
    YcsbB,
    /// YCSB core workload C: reads only.
    YcsbC,
    /// YCSB core workload F: 50% reads, 50% read-modify-writes.
    YcsbF,
    /// Load `--bytes` into a spawned cluster (each key once), then wipe and
    /// rebuild one node and restart another: MB/s, peak RSS, disk use.
    Load,
}

/// A system to compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Other {
    /// A 3-member etcd cluster on loopback (the `etcd` binary on PATH).
    Etcd,
}

/// `flotilla bench` options.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_enum)]
    pub workload: WorkloadName,
    /// Start N local node processes (fresh data, fsync and mTLS on) instead
    /// of using --endpoints.
    #[arg(long)]
    pub spawn: Option<usize>,
    /// Share of reads in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Keys the operations spread over.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How operations pick their key [default: zipfian for the ycsb-*
    /// workloads, as YCSB's core workloads do; uniform for the others].
    #[arg(long, value_enum)]
    pub distribution: Option<super::keys::Distribution>,
    /// Bytes per value (a number, or a size such as 64KiB).
    #[arg(long, default_value = "256", value_parser = parse_size)]
    pub value_size: usize,
    /// The load workload: how much to load (e.g. 2GiB).
    #[arg(long, default_value = "512MiB")]
    pub bytes: bytesize::ByteSize,
    /// The load workload: the bound on each of its phases.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub phase_timeout: Duration,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to run [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "ops")]
    pub duration: Option<Duration>,
    /// Run this many operations instead of a duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Data groups to create in a spawned cluster.
    #[arg(long, default_value_t = crate::catalog::DEFAULT_DATA_GROUPS)]
    pub groups: u64,
    /// Write the results as JSON to FILE (`--json FILE`).
    #[arg(long = "json-file", value_name = "FILE")]
    pub json_file: Option<PathBuf>,
    /// Draw throughput over time and the latency distribution to an SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Run the same workload against another system and print both.
    #[arg(long, value_enum)]
    pub compare: Option<Other>,
    /// With --compare: split the run into this many turns per system,
    /// taken in alternation (Flotilla first, then etcd first, and so on)
    /// with both clusters up throughout, so that a slow spell of a shared
    /// machine falls on both. The figures cover all turns.
    #[arg(long, default_value_t = 1, requires = "compare", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub turns: u32,
    /// Where spawned clusters keep their data and logs.
    #[arg(long, default_value = "data/bench")]
    pub dir: PathBuf,
}

/// A YCSB core workload's mix.
fn ycsb(letter: char, read_ratio: f64, rmw: bool) -> Kind {
    Kind::Ycsb {
        letter,
        read_ratio,
        rmw,
    }
}

/// A size in bytes: a plain number or one with a unit (`64KiB`).
fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let size: bytesize::ByteSize = s.parse()?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{s} is too large"))
}

impl BenchArgs {
    fn workload(&self) -> Result<Workload> {
        if self.clients == 0 || self.keys == 0 {
            return Err(Error::Invalid(
                "--clients and --keys must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(Error::Invalid("--read-ratio is between 0 and 1".into()));
        }
        let kind = match self.workload {
            WorkloadName::Write => Kind::Write,
            WorkloadName::Read => Kind::Read,
            WorkloadName::Mixed => Kind::Mixed {
                read_ratio: self.read_ratio,
            },
            WorkloadName::Cas => Kind::Cas,
            WorkloadName::YcsbA => ycsb('a', 0.5, false),
            WorkloadName::YcsbB => ycsb('b', 0.95, false),
            WorkloadName::YcsbC => ycsb('c', 1.0, false),
            WorkloadName::YcsbF => ycsb('f', 0.5, true),
            WorkloadName::Load => {
                return Err(Error::Invalid(
                    "the load workload runs on its own (see load_plan)".into(),
                ))
            }
        };
        let stop = match (self.ops, self.duration) {
            (Some(n), _) => Stop::Ops(n),
            (None, Some(d)) => Stop::After(d),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        let distribution = self.distribution.unwrap_or(match kind {
            Kind::Ycsb { .. } => super::keys::Distribution::Zipfian,
            _ => super::keys::Distribution::Uniform,
        });
        Ok(Workload {
            kind,
            keys: self.keys,
            distribution,
            value_size: self.value_size,
            clients: self.clients,
            stop,
        })
    }
}

/// `flotilla --json bench ...` replaces `--json FILE` with
/// `--json-file FILE` before parsing: the global `--json` is a flag, and
/// `bench` documents `--json FILE`.
pub fn rewrite_json_file(args: Vec<String>) -> Vec<String> {
    if !args.iter().any(|a| a == "bench") {
        return args;
    }
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        let takes_file = a == "--json" && it.peek().is_some_and(|n| !n.starts_with('-'));
        if takes_file && it.peek().is_some_and(|n| n != "bench") {
            out.push("--json-file".to_string());
        } else {
            out.push(a);
        }
    }
    out
}

fn progress_bar(w: &Workload, label: &str) -> ProgressBar {
    let bar = match w.stop {
        Stop::After(d) => ProgressBar::new(d.as_secs().max(1)),
        Stop::Ops(n) => ProgressBar::new(n),
    };
    let template = match w.stop {
        Stop::After(_) => "{prefix} [{bar:30}] {pos}/{len} s  {msg}",
        Stop::Ops(_) => "{prefix} [{bar:30}] {pos}/{len} ops  {msg}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

/// Runs `w` against `target` with a progress bar on stderr, after loading
/// its keys when `preload` (the first turn).
async fn measured<T: Target>(
    target: &T,
    w: &Workload,
    label: &str,
    preload: bool,
) -> Result<Report> {
    let bar = progress_bar(w, label);
    if preload {
        bar.set_message("preloading keys");
        super::preload(target, w)
            .await
            .map_err(|e| Error::Unreachable(format!("{label}: preloading keys failed: {e}")))?;
    }
    let progress = Arc::new(Progress::default());
    let ticker = {
        let (bar, progress, stop) = (bar.clone(), progress.clone(), w.stop);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let done = progress.done.load(Ordering::Relaxed);
                let failed = progress.failed.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                match stop {
                    Stop::After(_) => bar.set_position(started.elapsed().as_secs()),
                    Stop::Ops(_) => bar.set_position(done + failed),
                }
                bar.set_message(format!("{:.0} ops/s, {failed} errors", done as f64 / secs));
            }
        })
    };
    let report = super::run(target, w, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    Ok(report)
}

/// Runs `flotilla bench`; human output to `out`.
pub async fn run(
    args: BenchArgs,
    endpoints: Vec<String>,
    certs_dir: &Path,
    timeout: Duration,
    json_stdout: bool,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    if args.workload == WorkloadName::Load {
        return load(args, endpoints, timeout, json_stdout, out).await;
    }
    let w = args.workload()?;
    // Before any cluster starts: a comparison that cannot run would
    // otherwise fail only after Flotilla's whole run.
    if let Some(other) = args.compare {
        comparison_ready(other)?;
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("cannot find the flotilla binary: {e}")))?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", args.dir.display())))?;
    let spawn = match (args.spawn, endpoints.is_empty()) {
        (Some(n), _) => Some(n),
        (None, true) => Some(3),
        (None, false) => None,
    };
    // Spawned node processes live until this function returns.
    let mut sink = std::io::sink();
    let (procs, endpoints, certs_dir) = match spawn {
        Some(n) => {
            let _ = writeln!(
                out,
                "starting {n} Flotilla nodes under {}",
                args.dir.display()
            );
            let (p, _) = crate::node::ops::spawn_cluster(
                &exe,
                n,
                &args.dir.join("flotilla"),
                Some(args.groups),
                &mut sink,
            )
            .await?;
            let endpoints = p.addrs.iter().map(|a| a.to_string()).collect();
            let certs = p.certs_dir.clone();
            (Some(p), endpoints, certs)
        }
        None => (None, endpoints, certs_dir.to_path_buf()),
    };
    let mut config = ClientConfig::from_certs_dir(endpoints, &certs_dir);
    config.timeout = timeout;
    let client = Client::connect(config).await?;
    let (ours, theirs) = match args.compare {
        None => (measured(&client, &w, "flotilla", true).await?, None),
        Some(Other::Etcd) => {
            let etcd = Etcd::start(&args, out).await?;
            let turn = w.turn(args.turns);
            let mut ours: Option<Report> = None;
            let mut theirs: Option<Report> = None;
            for i in 0..args.turns {
                let first = i == 0;
                let label = |name: &str| match args.turns {
                    1 => name.to_string(),
                    n => format!("{name} {}/{n}", i + 1),
                };
                // Every other turn etcd goes first, so a machine that
                // speeds up or slows down over the run favours neither.
                let (a, b) = if i % 2 == 0 {
                    let a = measured(&client, &turn, &label("flotilla"), first).await?;
                    (a, etcd.measured(&turn, &label("etcd"), first).await?)
                } else {
                    let b = etcd.measured(&turn, &label("etcd"), first).await?;
                    (
                        measured(&client, &turn, &label("flotilla"), first).await?,
                        b,
                    )
                };
                for (sum, r) in [(&mut ours, a), (&mut theirs, b)] {
                    match sum {
                        Some(s) => s.absorb(r),
                        None => *sum = Some(r),
                    }
                }
            }
            match ours {
                Some(o) => (o, theirs),
                None => return Err(Error::Invalid("no turn ran".into())),
            }
        }
    };
    drop(procs);
    let title = format!(
        "{} workload, {} clients, {}-byte values",
        w.kind.name(),
        w.clients,
        w.value_size
    );
    let mut doc = super::document(&w, &ours, theirs.as_ref());
    if theirs.is_some() {
        doc["workload"]["turns"] = args.turns.into();
    }
    if json_stdout {
        let _ = writeln!(out, "{doc}");
    } else {
        let _ = writeln!(out, "{title}");
        match &theirs {
            Some(t) => {
                let _ = write!(out, "{}", super::compare_table(&ours, "etcd", t));
            }
            None => {
                let _ = writeln!(out, "{}", super::summary("flotilla", &ours));
            }
        }
    }
    if let Some(path) = &args.json_file {
        write_json(path, &doc)?;
    }
    if let Some(path) = &args.plot {
        let mut runs = vec![("flotilla", &ours)];
        if let Some(t) = &theirs {
            runs.push(("etcd", t));
        }
        super::plot::draw(path, &title, &runs)?;
    }
    Ok(())
}

/// Writes the results document to `path`.
fn write_json(path: &Path, doc: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(doc)
        .map_err(|e| Error::Invalid(format!("cannot encode the results: {e}")))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| Error::Invalid(format!("cannot write {}: {e}", path.display())))
}

/// Runs the load workload on a cluster it spawns (3 nodes unless
/// `--spawn`): it kills and restarts node processes, so it refuses
/// `--endpoints`.
async fn load(
    args: BenchArgs,
    endpoints: Vec<String>,
    timeout: Duration,
    json_stdout: bool,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let nodes = match (args.spawn, endpoints.is_empty()) {
        (Some(n), _) => n,
        (None, true) => 3,
        (None, false) => {
            return Err(Error::Invalid(
                "the load workload restarts nodes: it needs a cluster it spawns (--spawn N), not --endpoints".into(),
            ))
        }
    };
    if args.clients == 0 || args.value_size == 0 || args.bytes.as_u64() == 0 || nodes == 0 {
        return Err(Error::Invalid(
            "--clients, --value-size, --bytes and --spawn must be at least 1".into(),
        ));
    }
    if args.compare.is_some() {
        return Err(Error::Invalid(
            "the load workload compares with nothing".into(),
        ));
    }
    let plan = super::load::Plan {
        bytes: args.bytes.as_u64(),
        value_size: args.value_size,
        clients: args.clients,
        groups: args.groups,
        phase_timeout: args.phase_timeout,
    };
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("cannot find the flotilla binary: {e}")))?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", args.dir.display())))?;
    let _ = writeln!(
        out,
        "starting {nodes} Flotilla nodes under {}",
        args.dir.display()
    );
    let (mut procs, _) = crate::node::ops::spawn_cluster(
        &exe,
        nodes,
        &args.dir.join("flotilla"),
        Some(args.groups),
        &mut std::io::sink(),
    )
    .await?;
    let mut config = ClientConfig::from_certs_dir(
        procs.addrs.iter().map(|a| a.to_string()).collect(),
        &procs.certs_dir,
    );
    config.timeout = timeout;
    let client = Client::connect(config).await?;
    let doc = super::load::run(&mut procs, &client, &plan, out, json_stdout).await?;
    drop(procs);
    if json_stdout {
        let _ = writeln!(out, "{doc}");
    }
    if let Some(path) = &args.json_file {
        write_json(path, &doc)?;
    }
    Ok(())
}

/// Whether this binary and machine can run the comparison with `other`.
#[cfg(feature = "etcd")]
fn comparison_ready(other: Other) -> Result<()> {
    match other {
        Other::Etcd if super::etcd::available() => Ok(()),
        Other::Etcd => Err(Error::Invalid(
            "--compare etcd needs an `etcd` binary on PATH (Debian: apt install etcd-server)"
                .into(),
        )),
    }
}

/// Whether this binary and machine can run the comparison with `other`.
#[cfg(not(feature = "etcd"))]
fn comparison_ready(other: Other) -> Result<()> {
    match other {
        Other::Etcd => Err(Error::Invalid(
            "this flotilla was built without the etcd client: build with `--features etcd` (needs protoc), or run `make bench-compare`".into(),
        )),
    }
}

/// The etcd cluster of a comparison, up until dropped.
#[cfg(feature = "etcd")]
struct Etcd {
    target: super::etcd::EtcdTarget,
    _cluster: super::etcd::EtcdCluster,
}

#[cfg(feature = "etcd")]
impl Etcd {
    /// Starts 3 members under the bench directory and waits until they
    /// accept a write.
    async fn start(args: &BenchArgs, out: &mut (dyn Write + Send)) -> Result<Etcd> {
        comparison_ready(Other::Etcd)?;
        let dir = args.dir.join("etcd");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        let _ = writeln!(out, "starting 3 etcd members under {}", dir.display());
        let cluster = super::etcd::spawn(&dir, 3)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match super::etcd::EtcdTarget::connect(&cluster.endpoints).await {
                Ok(t) if t.put(b"bench/ready".to_vec(), b"1".to_vec()).await.is_ok() => {
                    return Ok(Etcd {
                        target: t,
                        _cluster: cluster,
                    })
                }
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                _ => {
                    return Err(Error::Unreachable(
                        "etcd did not accept writes within 30 s".into(),
                    ))
                }
            }
        }
    }

    async fn measured(&self, w: &Workload, label: &str, preload: bool) -> Result<Report> {
        measured(&self.target, w, label, preload).await
    }
}

/// Stands in for the etcd cluster in a build without its client; never
/// built, since `comparison_ready` refuses first.
#[cfg(not(feature = "etcd"))]
struct Etcd;

#[cfg(not(feature = "etcd"))]
impl Etcd {
    async fn start(_: &BenchArgs, _: &mut (dyn Write + Send)) -> Result<Etcd> {
        comparison_ready(Other::Etcd)?;
        Err(Error::Invalid("no etcd client in this build".into()))
    }

    async fn measured(&self, _: &Workload, _: &str, _: bool) -> Result<Report> {
        Err(Error::Invalid("no etcd client in this build".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::{rewrite_json_file, BenchArgs};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn turns_need_a_comparison_and_at_least_one() {
        let parse = |args: &str| Cli::try_parse_from(args.split(' ')).map(|c| c.bench.turns);
        assert_eq!(parse("bench write").unwrap(), 1);
        assert_eq!(parse("bench write --compare etcd --turns 4").unwrap(), 4);
        let err = parse("bench write --turns 4").unwrap_err().to_string();
        assert!(err.contains("--compare"), "{err}");
        let err = parse("bench write --compare etcd --turns 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--turns"), "{err}");
    }

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn only_bench_turns_json_file_into_its_own_option() {
        assert_eq!(
            rewrite_json_file(words("flotilla bench write --json out.json")),
            words("flotilla bench write --json-file out.json")
        );
        assert_eq!(
            rewrite_json_file(words("flotilla --json bench write")),
            words("flotilla --json bench write")
        );
        assert_eq!(
            rewrite_json_file(words("flotilla bench write --json --clients 1")),
            words("flotilla bench write --json --clients 1")
        );
        assert_eq!(
            rewrite_json_file(words("flotilla --json status")),
            words("flotilla --json status")
        );
    }
}
