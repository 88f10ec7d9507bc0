//! `flotilla start --config FILE`: node settings from a TOML file.
//!
//! Every key is optional and mirrors a `start` flag; a flag given on the
//! command line wins over the file, and the file wins over the defaults.
//! Durations are written the human way (`"30s"`, `"500ms"`). Unknown keys
//! are an error, so a misspelt setting is never silently ignored.
//!
//! ```toml
//! data_dir = "/var/lib/flotilla"
//! listen = "10.0.0.5:7000"
//! advertise = "10.0.0.5:7000"
//! join = ["10.0.0.5:7000", "10.0.0.6:7000", "10.0.0.7:7000"]
//! certs_dir = "/etc/flotilla/certs"
//! cert_name = "east-1"
//! isolation_timeout = "30s"
//! dead_after = "5m"
//! tick = "100ms"
//! join_attempts = 12
//! join_max_backoff = "32s"
//! io_threads = 3
//! raft_cache = "64MiB"
//! db_cache = "128MiB"
//! snapshot_rate = "64MiB"
//! metrics_listen = "10.0.0.5:9100"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The settings a config file may hold.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the node keeps its data.
    pub data_dir: Option<PathBuf>,
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// Address peers and clients should use.
    pub advertise: Option<SocketAddr>,
    /// Seeds to join through.
    pub join: Option<Vec<String>>,
    /// Directory with the certificates.
    pub certs_dir: Option<PathBuf>,
    /// The node's certificate name (`node-NAME.crt`).
    pub cert_name: Option<String>,
    /// How long without reaching a peer before asking the seeds.
    #[serde(default, with = "opt_duration")]
    pub isolation_timeout: Option<Duration>,
    /// How long a node may stay silent before it is declared dead.
    #[serde(default, with = "opt_duration")]
    pub dead_after: Option<Duration>,
    /// Real time per Raft tick.
    #[serde(default, with = "opt_duration")]
    pub tick: Option<Duration>,
    /// Whole passes over the seeds before a join gives up.
    pub join_attempts: Option<u32>,
    /// Longest wait between join passes.
    #[serde(default, with = "opt_duration")]
    pub join_max_backoff: Option<Duration>,
    /// Threads for networking (see [`default_io_threads`]).
    pub io_threads: Option<usize>,
    /// Raft log entries kept in memory, over all groups.
    pub raft_cache: Option<bytesize::ByteSize>,
    /// redb's page cache.
    pub db_cache: Option<bytesize::ByteSize>,
    /// Snapshot bytes a second the node sends at most; 0 for no limit.
    pub snapshot_rate: Option<bytesize::ByteSize>,
    /// Where to serve metrics and health checks over HTTP.
    pub metrics_listen: Option<SocketAddr>,
}

/// Threads a node gives its network (QUIC, TLS, requests) by default: one
/// per core but one, which the driver thread keeps busy under load. More
/// only take turns with the driver: on a 2-core machine with one worker
/// instead of two, a 64-client write run measured about a tenth more
/// writes a second, the difference being time spent switching threads.
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_sub(1)
        .max(1)
}

impl FileConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
        FileConfig::parse(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses config text.
    pub fn parse(text: &str) -> std::result::Result<FileConfig, String> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if cfg.tick == Some(Duration::ZERO) {
            return Err("tick must be longer than zero".into());
        }
        if cfg.join_attempts == Some(0) {
            return Err("join_attempts must be at least 1".into());
        }
        if cfg.io_threads == Some(0) {
            return Err("io_threads must be at least 1".into());
        }
        Ok(cfg)
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses() {
        let cfg = FileConfig::parse(
            r#"
            data_dir = "/d"
            listen = "127.0.0.1:7000"
            advertise = "127.0.0.2:7000"
            join = ["127.0.0.1:7000", "127.0.0.1:7001"]
            certs_dir = "/c"
            cert_name = "east-1"
            isolation_timeout = "2s"
            tick = "50ms"
            join_attempts = 3
            join_max_backoff = "1s"
            io_threads = 2
            metrics_listen = "127.0.0.1:9100"
            "#,
        )
        .expect("valid config");
        assert_eq!(cfg.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(cfg.listen, Some("127.0.0.1:7000".parse().expect("addr")));
        assert_eq!(cfg.join.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(cfg.cert_name.as_deref(), Some("east-1"));
        assert_eq!(cfg.isolation_timeout, Some(Duration::from_secs(2)));
        assert_eq!(cfg.tick, Some(Duration::from_millis(50)));
        assert_eq!(cfg.join_attempts, Some(3));
        assert_eq!(cfg.join_max_backoff, Some(Duration::from_secs(1)));
        assert_eq!(cfg.io_threads, Some(2));
        assert_eq!(
            cfg.metrics_listen,
            Some("127.0.0.1:9100".parse().expect("addr"))
        );
    }

    #[test]
    fn mistakes_are_named() {
        let unknown = FileConfig::parse("listn = \"127.0.0.1:1\"").expect_err("unknown key");
        assert!(unknown.contains("listn"), "{unknown}");
        let duration = FileConfig::parse("tick = \"soon\"").expect_err("bad duration");
        assert!(duration.contains("soon"), "{duration}");
        let addr = FileConfig::parse("listen = \"nowhere\"").expect_err("bad address");
        assert!(addr.contains("address"), "{addr}");
        assert!(FileConfig::parse("join_attempts = 0").is_err());
        let threads = FileConfig::parse("io_threads = 0").expect_err("no threads");
        assert!(threads.contains("io_threads"), "{threads}");
        assert_eq!(FileConfig::parse(""), Ok(FileConfig::default()));
    }
}
