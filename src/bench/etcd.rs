//! etcd for `flotilla bench --compare etcd`: a 3-member cluster of the
//! `etcd` binary on loopback, with its default durability (every write
//! fsynced by a quorum), and a [`super::Target`] over the `etcd-client`
//! crate (cargo feature `etcd`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// etcd member processes; dropping this kills them.
pub struct EtcdCluster {
    children: Vec<Child>,
    /// Client URLs, `http://127.0.0.1:PORT`.
    pub endpoints: Vec<String>,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_tcp_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Unreachable(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Unreachable(e.to_string()))
}

/// Whether an `etcd` binary is on PATH.
pub fn available() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `members` etcd members on loopback under `dir` and waits until
/// each accepts TCP connections on its client port.
pub fn spawn(dir: &Path, members: usize) -> Result<EtcdCluster> {
    let ports: Vec<(u16, u16)> = (0..members)
        .map(|_| Ok((free_tcp_port()?, free_tcp_port()?)))
        .collect::<Result<_>>()?;
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut cluster = EtcdCluster {
        children: Vec::new(),
        endpoints: Vec::new(),
    };
    for (i, (client, peer)) in ports.iter().enumerate() {
        let data = dir.join(format!("etcd{i}"));
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .map_err(|e| Error::Invalid(format!("cannot clear {}: {e}", data.display())))?;
        }
        let log = std::fs::File::create(dir.join(format!("etcd{i}.log")))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--name")
            .arg(format!("e{i}"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "flotilla-bench"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::Invalid(format!("cannot start etcd: {e}")))?;
        cluster.children.push(child);
        cluster.endpoints.push(client_url);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (client, _) in &ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], *client));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                return Err(Error::Unreachable(format!(
                    "etcd did not listen on {addr} within 30 s (logs in {})",
                    dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(cluster)
}

#[cfg(feature = "etcd")]
pub use client::EtcdTarget;

#[cfg(feature = "etcd")]
mod client {
    use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};

    use super::super::{ErrorKind, Target};

    /// The bench's [`Target`] over one etcd client channel.
    #[derive(Clone)]
    pub struct EtcdTarget {
        kv: KvClient,
    }

    impl EtcdTarget {
        /// Connects to the cluster at `endpoints` (a cluster that has just
        /// started may need a few tries while it elects a leader).
        pub async fn connect(endpoints: &[String]) -> crate::error::Result<EtcdTarget> {
            let client = etcd_client::Client::connect(endpoints, None)
                .await
                .map_err(|e| crate::error::Error::Unreachable(format!("etcd: {e}")))?;
            Ok(EtcdTarget {
                kv: client.kv_client(),
            })
        }
    }

    fn kind(e: &etcd_client::Error) -> ErrorKind {
        match e {
            etcd_client::Error::GRpcStatus(s) => format!("grpc_{:?}", s.code()).to_lowercase(),
            etcd_client::Error::TransportError(_) => "unreachable".into(),
            _ => "other".into(),
        }
    }

    impl Target for EtcdTarget {
        async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), ErrorKind> {
            let mut kv = self.kv.clone();
            kv.put(key, value, None)
                .await
                .map(|_| ())
                .map_err(|e| kind(&e))
        }

        async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, ErrorKind> {
            let mut kv = self.kv.clone();
            let r = kv.get(key, None).await.map_err(|e| kind(&e))?;
            Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
        }

        async fn cas(
            &self,
            key: Vec<u8>,
            expected: Option<Vec<u8>>,
            new: Vec<u8>,
        ) -> Result<bool, ErrorKind> {
            let when = match expected {
                Some(v) => Compare::value(key.clone(), CompareOp::Equal, v),
                None => Compare::version(key.clone(), CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when(vec![when])
                .and_then(vec![TxnOp::put(key, new, None)]);
            let mut kv = self.kv.clone();
            kv.txn(txn)
                .await
                .map(|r| r.succeeded())
                .map_err(|e| kind(&e))
        }
    }
}
