//! The `flotilla` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use clap::{Parser, Subcommand};
use flotilla::bench::command::BenchArgs;
use flotilla::cli::{ClientCommand, Globals};
use flotilla::client::{Client, ClientConfig};
use flotilla::node::config::FileConfig;

/// jemalloc rather than the system allocator: a node allocates for every
/// message, entry and row, and glibc's malloc spent about a fifth of the
/// CPU of the driver benchmark.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use flotilla::api::{RpcRequest, RpcResponse};
use flotilla::node::server::{NodeConfig, NodeServer};
use flotilla::node::Lifecycle;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A sharded, replicated key-value store"
)]
struct Cli {
    /// Nodes to contact, comma-separated (others are found through them).
    #[arg(long, global = true, value_delimiter = ',', env = "FLOTILLA_ENDPOINTS")]
    endpoints: Vec<String>,
    /// Directory with ca.crt and the certificate to present [default: certs].
    #[arg(long, global = true, env = "FLOTILLA_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// Deadline of each request, retries included.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// How log lines are written to standard error: `text` for people,
    /// `json` (one object a line) for log collectors. RUST_LOG filters them
    /// [default: warn].
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a 3-node cluster inside this process over the simulated network,
    /// writes and reads keys, crashes and restarts a node, and says what
    /// happened.
    Demo {
        /// Keys to write.
        #[arg(long, default_value_t = 200)]
        keys: u64,
    },
    /// Certificate management.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Runs a node until Ctrl-C or SIGTERM; SIGHUP reloads its certificate.
    Start {
        /// A TOML file of node settings (keys as the flags, with `_`);
        /// flags given here win over it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the node keeps its data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on (UDP, QUIC).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address peers and clients should use, when not the listen address.
        #[arg(long)]
        advertise: Option<SocketAddr>,
        /// Present node-NAME.crt and node-NAME.key from the certificates
        /// directory [default: the shared node.crt and node.key].
        #[arg(long)]
        cert_name: Option<String>,
        /// Seed nodes to join through, comma-separated. Without seeds the
        /// node waits for `flotilla init`.
        #[arg(long, value_delimiter = ',')]
        join: Vec<String>,
        /// Discard this node's data and join the seeds' cluster as a new
        /// node, instead of refusing to start, when the data directory
        /// cannot rejoin: its seeds belong to another cluster, the cluster
        /// removed this node, or the directory is damaged or of another
        /// on-disk format.
        #[arg(long)]
        wipe_and_join: bool,
        /// How long a node may stay silent before the cluster declares it
        /// dead and moves its replicas to live nodes [default: 5m].
        #[arg(long, value_parser = humantime::parse_duration)]
        dead_after: Option<Duration>,
        /// After this long without reaching any peer, ask the seeds where
        /// the peers are [default: 30s].
        #[arg(long, value_parser = humantime::parse_duration)]
        isolation_timeout: Option<Duration>,
        /// Whole passes over the seeds before joining gives up [default: 12].
        #[arg(long)]
        join_attempts: Option<u32>,
        /// Longest wait between join passes [default: 32s].
        #[arg(long, value_parser = humantime::parse_duration)]
        join_max_backoff: Option<Duration>,
        /// Data groups to create if this node is the one `init` runs on.
        #[arg(long, default_value_t = flotilla::catalog::DEFAULT_DATA_GROUPS)]
        data_groups: u64,
        /// Threads for networking and requests [default: one per core but
        /// one, and at least one; the Raft driver has a thread of its own].
        #[arg(long)]
        io_threads: Option<usize>,
        /// Raft log entries kept in memory over all groups, e.g. 64MiB;
        /// older ones are read from disk when a follower needs them
        /// [default: 64MiB].
        #[arg(long)]
        raft_cache: Option<bytesize::ByteSize>,
        /// Memory the database keeps for pages it read or wrote, e.g.
        /// 128MiB [default: 128MiB].
        #[arg(long)]
        db_cache: Option<bytesize::ByteSize>,
        /// Snapshot bytes a second this node sends at most, over all its
        /// transfers, e.g. `64MiB`; 0 for no limit [default: 64MiB].
        #[arg(long)]
        snapshot_rate: Option<bytesize::ByteSize>,
        /// Serve Prometheus metrics (/metrics) and health checks (/health,
        /// /ready) over HTTP on this address, e.g. 127.0.0.1:9100
        /// [default: off].
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Bootstraps a new cluster on the node at ENDPOINT (once per cluster).
    Init {
        /// The node to initialise.
        #[arg(long)]
        endpoint: SocketAddr,
        /// Vshards the keys hash onto, fixed for the cluster's life: the
        /// cluster can never have more data groups than this (at most
        /// 65536) [default: 16384].
        #[arg(long)]
        vshards: Option<u32>,
    },
    /// Shows one node's lifecycle and every group on it.
    NodeStatus {
        /// The node to ask.
        #[arg(long)]
        endpoint: SocketAddr,
    },
    /// Starts a local cluster of node processes on loopback, initialises it,
    /// shows its status and a few writes and reads, and serves until Ctrl-C.
    Dev {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Directory for data, logs and certificates.
        #[arg(long, default_value = "data/dev")]
        dir: PathBuf,
    },
    /// Measures throughput and latency of a spawned (or running) cluster,
    /// optionally side by side with etcd.
    Bench(BenchArgs),
    /// Prints a completion script for SHELL to standard output, e.g.
    /// `flotilla completions bash > /etc/bash_completion.d/flotilla`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Creates a cluster CA and node, admin and client certificates.
    Create {
        /// Directory to write them to.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Hosts (IP addresses or DNS names) the node certificates are valid for.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
        /// Give nodes 1 to N a key each (node-1.crt, ...) instead of one
        /// shared node.crt.
        #[arg(long)]
        nodes: Option<usize>,
        /// Days the CA is valid.
        #[arg(long, default_value_t = flotilla::certs::DEFAULT_CA_DAYS)]
        ca_days: u32,
        /// Days the node, admin and client certificates are valid.
        #[arg(long, default_value_t = flotilla::certs::DEFAULT_DAYS)]
        days: u32,
        /// Replace an existing CA (every certificate it signed stops working).
        #[arg(long)]
        force: bool,
    },
    /// Signs node-NAME.crt with the CA in DIR (keeping node-NAME.key if it
    /// exists, so that renewing keeps the key the catalog pins).
    Node {
        /// Directory with ca.crt and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The node's name: `flotilla start --cert-name NAME` presents it.
        #[arg(long)]
        name: String,
        /// Hosts (IP addresses or DNS names) the certificate is valid for.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = flotilla::certs::DEFAULT_DAYS)]
        days: u32,
    },
}

/// The async runtime of a command: `worker_threads` workers, or one per
/// core.
fn runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        b.worker_threads(n);
    }
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// clap's report of refused arguments on one line: its message and the
/// arguments it names, without the usage and tips that follow.
fn usage_error(report: &str) -> String {
    report
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Logs to standard error, as text or as one JSON object a line.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// A failed command prints one line naming what went wrong (with its
/// causes), never a backtrace, whatever RUST_BACKTRACE says, and exits 1;
/// arguments clap refuses print one line too, and exit 2.
fn main() -> std::process::ExitCode {
    let args = flotilla::bench::command::rewrite_json_file(std::env::args().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("flotilla: {}", usage_error(&e.render().to_string()));
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let certs = cli
        .certs_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("certs"));
    match cli.command {
        Command::Demo { keys } => flotilla::demo::run(&mut std::io::stdout(), keys)?,
        Command::Certs {
            command:
                CertsCommand::Create {
                    dir,
                    hosts,
                    nodes,
                    ca_days,
                    days,
                    force,
                },
        } => {
            let validity = flotilla::certs::Validity { ca_days, days };
            for path in flotilla::certs::create_set(&dir, &hosts, nodes, validity, force)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Certs {
            command:
                CertsCommand::Node {
                    dir,
                    name,
                    hosts,
                    days,
                },
        } => {
            for path in flotilla::certs::issue_node(&dir, &name, &hosts, days)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Start {
            config,
            data_dir,
            listen,
            advertise,
            cert_name,
            join,
            wipe_and_join,
            dead_after,
            isolation_timeout,
            join_attempts,
            join_max_backoff,
            data_groups,
            io_threads,
            raft_cache,
            db_cache,
            snapshot_rate,
            metrics_listen,
        } => {
            let file = match &config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            let threads = io_threads
                .or(file.io_threads)
                .unwrap_or_else(flotilla::node::config::default_io_threads);
            anyhow::ensure!(threads >= 1, "--io-threads must be at least 1");
            runtime(Some(threads))?.block_on(async {
                let data_dir = data_dir
                    .or(file.data_dir)
                    .context("--data-dir (or data_dir in --config) is required")?;
                let listen = listen
                    .or(file.listen)
                    .context("--listen (or listen in --config) is required")?;
                let certs_dir = cli
                    .certs_dir
                    .or(file.certs_dir)
                    .unwrap_or_else(|| PathBuf::from("certs"));
                let mut cfg = NodeConfig::new(data_dir, listen, certs_dir);
                cfg.advertise = advertise.or(file.advertise);
                cfg.cert_name = cert_name.or(file.cert_name);
                cfg.join = if join.is_empty() {
                    file.join.unwrap_or_default()
                } else {
                    join
                };
                cfg.wipe_and_join = wipe_and_join;
                anyhow::ensure!(data_groups >= 1, "--data-groups must be at least 1");
                cfg.data_groups = data_groups;
                if let Some(t) = isolation_timeout.or(file.isolation_timeout) {
                    cfg.isolation_timeout = t;
                }
                if let Some(t) = file.tick {
                    cfg.tick = t;
                }
                if let Some(r) = snapshot_rate.or(file.snapshot_rate) {
                    cfg.snapshot_rate = r.as_u64();
                }
                if let Some(d) = dead_after.or(file.dead_after) {
                    anyhow::ensure!(
                        d >= cfg.tick * 50,
                        "--dead-after must be at least 50 ticks ({:?}), or nodes would be declared dead between heartbeats",
                        cfg.tick * 50
                    );
                    cfg.dead_after = d;
                }
                if let Some(b) = raft_cache.or(file.raft_cache) {
                    cfg.memory.raft_cache = usize::try_from(b.as_u64())
                        .context("--raft-cache is larger than this machine's address space")?;
                }
                if let Some(b) = db_cache.or(file.db_cache) {
                    anyhow::ensure!(
                        b.as_u64() >= 1 << 20,
                        "--db-cache must be at least 1MiB, or every read goes to the disk"
                    );
                    cfg.memory.db_cache = usize::try_from(b.as_u64())
                        .context("--db-cache is larger than this machine's address space")?;
                }
                if let Some(n) = join_attempts.or(file.join_attempts) {
                    anyhow::ensure!(n > 0, "--join-attempts must be at least 1");
                    cfg.join_policy.attempts = n;
                }
                if let Some(d) = join_max_backoff.or(file.join_max_backoff) {
                    cfg.join_policy.max_backoff = d;
                    cfg.join_policy.initial_backoff = cfg.join_policy.initial_backoff.min(d);
                }
                let mut hangups = flotilla::node::ops::Hangups::new()?;
                let node = NodeServer::start(cfg).await?;
                eprintln!("flotilla node listening on {}", node.addr());
                let _metrics = match metrics_listen.or(file.metrics_listen) {
                    Some(addr) => {
                        let m = flotilla::node::metrics::http::serve(node.clone(), addr).await?;
                        eprintln!("flotilla metrics on http://{}/metrics", m.addr());
                        Some(m)
                    }
                    None => None,
                };
                loop {
                    tokio::select! {
                        _ = flotilla::node::ops::shutdown_signal() => break,
                        _ = hangups.next() => match node.reload_certificates() {
                            Ok(()) => eprintln!("reloaded the node certificate"),
                            Err(e) => eprintln!("kept the node certificate: {e}"),
                        },
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                            if let Lifecycle::Failed { reason } = node.lifecycle() {
                                node.stop();
                                anyhow::bail!("node failed: {reason}");
                            }
                        }
                    }
                }
                node.stop();
                anyhow::Ok(())
            })?
        }
        Command::Init { endpoint, vshards } => runtime(None)?.block_on(async {
            let client = Client::new(ClientConfig::from_certs_dir(vec![], &certs))?;
            match client
                .call_node(endpoint, &RpcRequest::Init { vshards })
                .await?
            {
                RpcResponse::Inited { cluster_id } => {
                    println!("initialised cluster {cluster_id:016x}")
                }
                other => anyhow::bail!("unexpected answer: {other:?}"),
            }
            anyhow::Ok(())
        })?,
        Command::NodeStatus { endpoint } => runtime(None)?.block_on(async {
            let client = Client::new(ClientConfig::from_certs_dir(vec![], &certs))?;
            let report = client.node_status(endpoint).await?;
            print!("{}", flotilla::node::ops::render(endpoint, &report));
            anyhow::Ok(())
        })?,
        Command::Dev { nodes, dir } => runtime(None)?.block_on(async {
            let exe = std::env::current_exe().context("cannot find the flotilla binary")?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            flotilla::node::ops::dev(&exe, nodes, &dir, &mut std::io::stdout()).await?;
            anyhow::Ok(())
        })?,
        Command::Bench(args) => runtime(None)?.block_on(async {
            flotilla::bench::command::run(
                args,
                cli.endpoints,
                &certs,
                cli.timeout,
                cli.json,
                &mut std::io::stdout(),
            )
            .await?;
            anyhow::Ok(())
        })?,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "flotilla", &mut std::io::stdout());
        }
        Command::Client(cmd) => {
            let globals = Globals {
                endpoints: cli.endpoints,
                certs_dir: certs,
                timeout: cli.timeout,
                json: cli.json,
                terminal: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            };
            let code = runtime(None)?.block_on(flotilla::cli::run(
                &globals,
                cmd,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            ));
            std::process::exit(code);
        }
    }
    Ok(())
}
