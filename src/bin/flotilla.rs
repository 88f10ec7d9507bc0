//! The `flotilla` command.

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
    }
    Ok(())
}
