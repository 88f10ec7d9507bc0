//! Operator commands that talk to nodes: rendering a node's report, the
//! signals a node listens for, and `dev`, which runs a whole local cluster
//! of node processes. They reach nodes through the client library
//! ([`Client`]), so they route and retry as any client does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::api::{NodeReport, RpcRequest, RpcResponse};
use crate::certs::{self, CA_CERT};
use crate::client::{Client, ClientConfig};
use crate::error::{Error, Result};

/// Renders a node report as aligned text.
pub fn render(addr: SocketAddr, r: &NodeReport) -> String {
    let mut out = String::new();
    let cluster = r
        .cluster_id
        .map_or("-".to_string(), |c| format!("{c:016x}"));
    let _ = writeln!(
        out,
        "node {} at {addr}: {} (cluster {cluster})",
        r.node.0, r.lifecycle
    );
    let _ = writeln!(
        out,
        "  replayed {} entries ({} bytes) from its own log at start; peers sent {} entries ({} bytes) since",
        r.replayed_entries, r.replayed_bytes, r.raft_entries_in, r.raft_bytes_in
    );
    let warning = certs::expiry::warning(r.cert_not_after, certs::unix_now())
        .map_or(String::new(), |w| format!(" (WARNING: it {w})"));
    let _ = writeln!(
        out,
        "  certificate valid until {}{warning}",
        certs::expiry::date(r.cert_not_after)
    );
    let _ = writeln!(
        out,
        "  {:<6} {:<8} {:<12} {:>6} {:>8} {:>8}",
        "group", "role", "voters", "term", "commit", "applied"
    );
    for g in &r.groups {
        let voters: Vec<String> = g.voters.iter().map(|v| v.0.to_string()).collect();
        let role = if g.leader { "leader" } else { "follower" };
        let _ = writeln!(
            out,
            "  {:<6} {:<8} {:<12} {:>6} {:>8} {:>8}",
            g.group.0,
            role,
            voters.join(","),
            g.term,
            g.commit,
            g.applied
        );
    }
    out
}

/// One line per node: its lifecycle, how many groups it holds and leads.
pub fn summary(addr: SocketAddr, r: &NodeReport) -> String {
    let leads = r.groups.iter().filter(|g| g.leader).count();
    let full = r.groups.iter().filter(|g| g.voters.len() >= 3).count();
    format!(
        "node {} at {addr}: {}; {} groups ({} with 3+ voters), leads {}",
        r.node.0,
        r.lifecycle,
        r.groups.len(),
        full,
        leads
    )
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUPs, the signal that asks a node to reload its certificate.
pub struct Hangups {
    /// The signal stream; none where the platform has no SIGHUP.
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    /// Starts listening. Must run inside a tokio runtime.
    pub fn new() -> Result<Hangups> {
        Ok(Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| Error::Invalid(format!("cannot listen for SIGHUP: {e}")))?,
        })
    }

    /// Resolves on the next SIGHUP (never, without SIGHUP).
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Node processes started by [`spawn_cluster`]; dropping it kills them.
pub struct Processes {
    children: Vec<std::process::Child>,
    /// Their addresses, in start order.
    pub addrs: Vec<SocketAddr>,
    /// Where each serves its metrics and health checks over HTTP.
    pub metrics: Vec<SocketAddr>,
    /// The certificates they use (and a caller can use).
    pub certs_dir: PathBuf,
    exe: PathBuf,
    dir: PathBuf,
    data_groups: Option<u64>,
}

impl Processes {
    /// The data directory of the node at `i` in start order.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}", i + 1))
    }

    /// The process id of the node at `i`.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i).map(|c| c.id())
    }

    /// Kills the node at `i` (no clean stop) and waits for it to exit.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let child = self
            .children
            .get_mut(i)
            .ok_or_else(|| Error::Invalid(format!("no node {i}")))?;
        let _ = child.kill();
        child
            .wait()
            .map(|_| ())
            .map_err(|e| Error::Invalid(format!("waiting for node {}: {e}", i + 1)))
    }

    /// Starts the node at `i` again at its address with its data directory
    /// (discarding it first, with `--wipe-and-join`, when `wipe`). Kill it
    /// first.
    pub fn restart(&mut self, i: usize, wipe: bool) -> Result<()> {
        if i >= self.children.len() {
            return Err(Error::Invalid(format!("no node {i}")));
        }
        let child = self.start(i, wipe)?;
        self.children[i] = child;
        Ok(())
    }

    /// Starts the node at `i`, its stderr appended to `n<i+1>.log`.
    fn start(&self, i: usize, wipe: bool) -> Result<std::process::Child> {
        let seeds = self
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{}.log", i + 1)))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.args(["start", "--data-dir"])
            .arg(self.data_dir(i))
            .args([
                "--listen",
                &self.addrs[i].to_string(),
                "--join",
                &seeds,
                "--certs-dir",
            ])
            .arg(&self.certs_dir)
            .args(["--cert-name", &(i + 1).to_string()])
            .args(["--metrics-listen", &self.metrics[i].to_string()])
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(g) = self.data_groups {
            cmd.args(["--data-groups", &g.to_string()]);
        }
        if wipe {
            cmd.arg("--wipe-and-join");
        }
        cmd.spawn()
            .map_err(|e| Error::Invalid(format!("cannot start {}: {e}", self.exe.display())))
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    let s =
        std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| Error::Unreachable(e.to_string()))?;
    Ok(s.local_addr()
        .map_err(|e| Error::Unreachable(e.to_string()))?
        .port())
}

/// A loopback TCP address free when asked.
fn free_tcp_addr() -> Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Unreachable(e.to_string()))
}

/// Runs `nodes` node processes on loopback under `dir` (clearing data a
/// previous run left there), initialises the cluster, waits until every
/// group has three voters, prints the status, writes and reads a few keys,
/// then serves until Ctrl-C.
pub async fn dev(
    exe: &Path,
    nodes: usize,
    dir: &Path,
    out: &mut (dyn std::io::Write + Send),
) -> Result<()> {
    let (procs, reports) = spawn_cluster(exe, nodes, dir, None, out).await?;
    for (a, r) in &reports {
        let _ = writeln!(out, "{}", summary(*a, r));
    }
    let _ = writeln!(
        out,
        "(`flotilla status --endpoints ADDR --certs-dir {}` shows the cluster; `flotilla groups` every group)",
        procs.certs_dir.display()
    );
    for (i, m) in procs.metrics.iter().enumerate() {
        let _ = writeln!(
            out,
            "node {}: metrics http://{m}/metrics, health http://{m}/health, ready http://{m}/ready",
            i + 1
        );
    }
    let seeds = procs.addrs.iter().map(|a| a.to_string()).collect();
    let client = Client::new(ClientConfig::from_certs_dir(seeds, &procs.certs_dir))?;
    demo_writes(&client, out).await?;
    let _ = writeln!(out, "cluster running; press Ctrl-C to stop it");
    shutdown_signal().await;
    drop(procs);
    Ok(())
}

/// Starts `nodes` node processes of `exe` on loopback under `dir` (fresh
/// data directories; certificates made if missing, a key of its own for
/// each node, named by its place in the start order), initialises the
/// cluster with `data_groups` data groups (the default when `None`), and
/// waits until every node is ready and every group led with its replicas.
/// Every node serves its metrics on a loopback port of its own
/// ([`Processes::metrics`]). Returns the processes and each node's report.
pub async fn spawn_cluster(
    exe: &Path,
    nodes: usize,
    dir: &Path,
    data_groups: Option<u64>,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(Processes, Vec<(SocketAddr, NodeReport)>)> {
    let certs_dir = dir.join("certs");
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    if !certs_dir.join(CA_CERT).exists() {
        certs::create_set(
            &certs_dir,
            &hosts,
            Some(nodes),
            certs::Validity::default(),
            false,
        )?;
    }
    // A directory from an earlier run may lack some nodes' certificates
    // (fewer nodes then, or one shared node.crt): sign what is missing.
    for name in (1..=nodes).map(|i| i.to_string()) {
        if !certs::node_files(&certs_dir, Some(&name))?.0.exists() {
            certs::issue_node(&certs_dir, &name, &hosts, certs::DEFAULT_DAYS)?;
        }
    }
    let addrs: Vec<SocketAddr> = (0..nodes)
        .map(|_| free_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
        .collect::<Result<_>>()?;
    let seeds = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Processes {
        children: Vec::new(),
        addrs: addrs.clone(),
        metrics: (0..nodes).map(|_| free_tcp_addr()).collect::<Result<_>>()?,
        certs_dir: certs_dir.clone(),
        exe: exe.to_path_buf(),
        dir: dir.to_path_buf(),
        data_groups,
    };
    for i in 0..nodes {
        let data = procs.data_dir(i);
        // A dev cluster starts fresh: its ports are new every run, so an old
        // catalog would point at addresses nobody listens on.
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .map_err(|e| Error::Invalid(format!("cannot clear {}: {e}", data.display())))?;
        }
        // A fresh log too.
        let log = dir.join(format!("n{}.log", i + 1));
        std::fs::File::create(&log)
            .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", log.display())))?;
        let child = procs.start(i, false)?;
        procs.children.push(child);
    }
    let _ = writeln!(
        out,
        "started {nodes} nodes: {seeds} (logs in {})",
        dir.display()
    );
    let client = Client::new(ClientConfig::from_certs_dir(vec![], &certs_dir))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Init once; a node that already belongs to a cluster (a rerun on the
    // same directory) restarts instead, which is fine too.
    loop {
        match client
            .call_node(addrs[0], &RpcRequest::Init { vshards: None })
            .await
        {
            Ok(RpcResponse::Inited { cluster_id }) => {
                let _ = writeln!(out, "initialised cluster {cluster_id:016x}");
                break;
            }
            Err(Error::Invalid(m)) | Err(Error::Remote(m)) if m.contains("already belongs") => {
                break
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => {
                return Err(Error::Unreachable(format!(
                    "init did not succeed: {other:?}"
                )))
            }
        }
    }
    let mut reports = Vec::new();
    loop {
        reports.clear();
        for a in &addrs {
            if let Ok(r) = client.node_status(*a).await {
                reports.push((*a, r));
            }
        }
        let ready = reports.len() == nodes && reports.iter().all(|(_, r)| r.lifecycle == "ready");
        let groups: std::collections::BTreeSet<_> = reports
            .iter()
            .flat_map(|(_, r)| r.groups.iter().map(|g| g.group))
            .collect();
        let led: std::collections::BTreeMap<_, _> = reports
            .iter()
            .flat_map(|(_, r)| {
                r.groups
                    .iter()
                    .filter(|g| g.leader)
                    .map(|g| (g.group, g.voters.len()))
            })
            .collect();
        if ready
            && !groups.is_empty()
            && led.len() == groups.len()
            && led.values().all(|v| *v == nodes.min(3))
        {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::Unreachable(
                "the cluster did not become ready within 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((procs, reports))
}

/// Writes and reads back a few keys, saying which group each went to.
async fn demo_writes(client: &Client, out: &mut (dyn std::io::Write + Send)) -> Result<()> {
    let catalog = client.refresh_catalog().await?;
    for i in 1..=5u64 {
        let key = format!("hello/{i}");
        client
            .put(key.as_bytes(), format!("world {i}").as_bytes())
            .await?;
        let shown = client
            .get(key.as_bytes())
            .await?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| "(absent)".into());
        let _ = writeln!(
            out,
            "put {key} = \"world {i}\" via group {}; read back \"{shown}\"",
            catalog.group_of(key.as_bytes()).0
        );
    }
    Ok(())
}
