//! The `flotilla` command.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use clap::{Parser, Subcommand};
use flotilla::node::ops::Caller;
use flotilla::node::server::{NodeConfig, NodeServer};
use flotilla::node::Lifecycle;
use flotilla::transport::rpc::{RpcRequest, RpcResponse};

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A sharded, replicated key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Runs a node until Ctrl-C.
    Start {
        /// Where the node keeps its data.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on (UDP, QUIC).
        #[arg(long)]
        listen: SocketAddr,
        /// Address peers and clients should use, when not the listen address.
        #[arg(long)]
        advertise: Option<SocketAddr>,
        /// Seed nodes to join through, comma-separated. Without seeds the
        /// node waits for `flotilla init`.
        #[arg(long, value_delimiter = ',')]
        join: Vec<String>,
        /// Directory with ca.crt, node.crt and node.key.
        #[arg(long, default_value = "certs")]
        certs_dir: PathBuf,
        /// If the seeds belong to another cluster than this data directory,
        /// discard this node's data and join them instead of refusing.
        #[arg(long)]
        wipe_and_join: bool,
    },
    /// Bootstraps a new cluster on the node at ENDPOINT (once per cluster).
    Init {
        /// The node to initialise.
        #[arg(long)]
        endpoint: SocketAddr,
        /// Directory with ca.crt and an admin (or client) certificate.
        #[arg(long, default_value = "certs")]
        certs_dir: PathBuf,
    },
    /// Shows a node's lifecycle and groups.
    Status {
        /// The node to ask.
        #[arg(long)]
        endpoint: SocketAddr,
        /// Directory with ca.crt and an admin (or client) certificate.
        #[arg(long, default_value = "certs")]
        certs_dir: PathBuf,
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
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Creates a cluster CA and node, admin and client certificates.
    Create {
        /// Directory to write them to.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Hosts (IP addresses or DNS names) the node certificate is valid for.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
        /// Replace an existing CA (every certificate it signed stops working).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match Cli::parse().command {
        Command::Demo { keys } => flotilla::demo::run(&mut std::io::stdout(), keys)?,
        Command::Certs {
            command: CertsCommand::Create { dir, hosts, force },
        } => {
            for path in flotilla::certs::create(&dir, &hosts, force)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Start {
            data_dir,
            listen,
            advertise,
            join,
            certs_dir,
            wipe_and_join,
        } => rt.block_on(async {
            let mut cfg = NodeConfig::new(data_dir, listen, certs_dir);
            cfg.advertise = advertise;
            cfg.join = join;
            cfg.wipe_and_join = wipe_and_join;
            let node = NodeServer::start(cfg).await?;
            eprintln!("flotilla node listening on {}", node.addr());
            loop {
                tokio::select! {
                    _ = flotilla::node::ops::shutdown_signal() => break,
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
        })?,
        Command::Init {
            endpoint,
            certs_dir,
        } => rt.block_on(async {
            let caller = Caller::new(&certs_dir)?;
            match caller.call(endpoint, &RpcRequest::Init).await? {
                RpcResponse::Inited { cluster_id } => {
                    println!("initialised cluster {cluster_id:016x}")
                }
                other => anyhow::bail!("unexpected answer: {other:?}"),
            }
            anyhow::Ok(())
        })?,
        Command::Status {
            endpoint,
            certs_dir,
        } => rt.block_on(async {
            let caller = Caller::new(&certs_dir)?;
            let report = caller.status(endpoint).await?;
            print!("{}", flotilla::node::ops::render(endpoint, &report));
            anyhow::Ok(())
        })?,
        Command::Dev { nodes, dir } => rt.block_on(async {
            let exe = std::env::current_exe().context("cannot find the flotilla binary")?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            flotilla::node::ops::dev(&exe, nodes, &dir, &mut std::io::stdout()).await?;
            anyhow::Ok(())
        })?,
    }
    Ok(())
}
