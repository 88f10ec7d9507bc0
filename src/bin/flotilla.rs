//! The `flotilla` command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    match Cli::parse().command {
        Command::Demo { keys } => flotilla::demo::run(&mut std::io::stdout(), keys)?,
        Command::Certs {
            command: CertsCommand::Create { dir, hosts, force },
        } => {
            for path in flotilla::certs::create(&dir, &hosts, force)? {
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
