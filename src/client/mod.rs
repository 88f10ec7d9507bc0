//! The Flotilla client library: connect to a cluster over mutual TLS, then
//! read and write keys without knowing which node leads which group.
//!
//! A [`Client`] keeps a routing cache taken from the catalog (key → vshard
//! → group → leader). A request goes to the leader it believes in; an answer
//! naming another leader updates the cache, and a stale route refreshes the
//! catalog. Every call retries retryable failures with backoff until its
//! deadline ([`ClientConfig::timeout`], 5 s by default). Writes carry the
//! client's id and a sequence number, so a retried write is applied once
//! and returns the answer of its first application; the nodes key the
//! client's session by that id and its certificate. A retry that finds its
//! session gone (idle past its TTL, or evicted) fails with
//! [`Error::AnswerLost`] instead of applying again.
//!
//! This is the one client core of Flotilla: the CLI, the operator commands
//! (`init`, `node-status`, `dev`) and the process tests all talk to nodes
//! through it (`route`: finding the leader; `conn`: connections and
//! failures; `scan`: range scans, page by page; `admin`: one node's
//! report, routed requests of any kind, the operator's requests). The request types are [`crate::api`]'s; nothing
//! here depends on the node's code.
//!
//! ```no_run
//! # async fn example() -> flotilla::Result<()> {
//! use flotilla::client::{Client, ClientConfig};
//!
//! let config = ClientConfig::from_certs_dir(vec!["127.0.0.1:7001".into()], "certs".as_ref());
//! let client = Client::connect(config).await?;
//! client.put(b"greeting", b"hello").await?;
//! assert_eq!(client.get(b"greeting").await?, Some(b"hello".to_vec()));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::{RpcRequest, RpcResponse};
use crate::catalog::{Catalog, NodeState};
use crate::certs::{role_files, Role, CA_CERT};
use crate::error::{Error, Result};
use crate::kv::{BatchOp, Command, Op, Response};
use crate::transport::TlsIdentity;
use crate::types::{GroupId, NodeId};

mod admin;
mod conn;
mod route;
mod scan;

pub use admin::NODE_CALL_TIMEOUT;
pub use scan::{Row, Scanner};

/// Default deadline of one call, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach a cluster and who to be.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Addresses of some nodes (`host:port`); the rest are learned from the
    /// catalog.
    pub endpoints: Vec<String>,
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This client's certificate (PEM), signed by the cluster CA.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// SPKI SHA-256 of the CA or of the servers' certificate; a server that
    /// proves neither is refused.
    pub pin: Option<[u8; 32]>,
    /// Deadline of one call, retries included.
    pub timeout: Duration,
}

impl ClientConfig {
    /// The files of a certificate directory made by `flotilla certs
    /// create`: `admin.crt` when present (operators), else `client.crt`.
    ///
    /// ```
    /// use flotilla::client::ClientConfig;
    ///
    /// let config = ClientConfig::from_certs_dir(vec!["127.0.0.1:7001".into()], "certs".as_ref());
    /// assert!(config.ca.ends_with("ca.crt"));
    /// ```
    pub fn from_certs_dir(endpoints: Vec<String>, dir: &Path) -> ClientConfig {
        let role = if role_files(dir, Role::Admin).0.exists() {
            Role::Admin
        } else {
            Role::Client
        };
        let (cert, key) = role_files(dir, role);
        ClientConfig {
            endpoints,
            ca: dir.join(CA_CERT),
            cert,
            key,
            pin: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The outcome of [`Client::cas`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the new value was stored.
    pub swapped: bool,
    /// The value the key held when the swap was evaluated.
    pub current: Option<Vec<u8>>,
}

/// Which keys [`Client::scan`] visits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// Every key that starts with these bytes.
    Prefix(Vec<u8>),
    /// Keys from `start` (inclusive) to `end` (exclusive; none: no end).
    Range {
        /// First key.
        start: Vec<u8>,
        /// End, exclusive.
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    /// The range as (start, end-exclusive).
    fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            KeyRange::Range { start, end } => (start.clone(), end.clone()),
            KeyRange::Prefix(p) => (p.clone(), prefix_end(p)),
        }
    }
}

/// The first key after every key starting with `prefix` (none when every
/// byte is 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// What the client believes about the cluster.
#[derive(Default)]
struct Routing {
    catalog: Option<Catalog>,
    /// Leaders learned from answers, by group.
    leaders: BTreeMap<GroupId, NodeId>,
    /// When the catalog was last fetched.
    fetched: Option<Instant>,
}

struct Inner {
    /// Connections to nodes, by address (see `conn`).
    conns: conn::Conns,
    /// The configured endpoints.
    seeds: Vec<String>,
    /// Deadline of one call, retries included.
    timeout: Duration,
    /// This client's id (never 0): with its certificate, the key of its
    /// session in each group it writes to.
    id: u64,
    next_seq: AtomicU64,
    /// Sequences sent and not yet answered; the smallest bounds what the
    /// cluster must remember for this client.
    in_flight: Mutex<BTreeSet<u64>>,
    routing: Mutex<Routing>,
}

/// A connection to a Flotilla cluster. Cheap to clone; clones share the
/// routing cache, connections and session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Loads the certificates, dials the endpoints and fetches the catalog.
    /// Fails with [`Error::Certificate`] when a server is refused (wrong CA,
    /// pin mismatch) and [`Error::Unreachable`] when no endpoint answers.
    /// Must run inside a tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        if config.endpoints.is_empty() {
            return Err(Error::Invalid("no endpoints given".into()));
        }
        let client = Client::new(config)?;
        client.refresh_catalog().await?;
        Ok(client)
    }

    /// Loads the certificates and opens an endpoint, without asking any
    /// node yet: for talking to nodes that may not form a cluster yet
    /// ([`Client::call_node`]); the first request routed by group fetches
    /// the catalog from `config.endpoints`. Must run inside a tokio runtime.
    pub fn new(config: ClientConfig) -> Result<Client> {
        let identity = TlsIdentity::load(&config.ca, &config.cert, &config.key)?;
        let tls = identity.pinned_client_config(config.pin)?;
        Ok(Client {
            inner: Arc::new(Inner {
                conns: conn::Conns::new(tls)?,
                seeds: config.endpoints,
                timeout: config.timeout,
                id: rand::random::<u64>().max(1),
                next_seq: AtomicU64::new(1),
                in_flight: Mutex::default(),
                routing: Mutex::default(),
            }),
        })
    }

    /// Reads `key` linearizably: the answer reflects every write
    /// acknowledged before the call began. `None` when the key is absent.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let group = self.group_of(key).await?;
        let req = RpcRequest::Read {
            group,
            key: key.to_vec(),
        };
        match self.call_group(group, &req).await? {
            RpcResponse::Kv(Response::Value(v)) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let op = Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        match self.write(op).await? {
            Response::Written => Ok(()),
            other => Err(Error::Remote(format!("unexpected answer {other:?}"))),
        }
    }

    /// Removes `key`; returns whether it held a value.
    pub async fn delete(&self, key: &[u8]) -> Result<bool> {
        match self.write(Op::Delete { key: key.to_vec() }).await? {
            Response::Deleted { existed } => Ok(existed),
            other => Err(Error::Remote(format!("unexpected answer {other:?}"))),
        }
    }

    /// Stores `new` at `key` (removes the key when `new` is `None`) only if
    /// the key currently holds `expected` (`None`: the key must be absent).
    ///
    /// ```no_run
    /// # async fn example(client: flotilla::client::Client) -> flotilla::Result<()> {
    /// let outcome = client.cas(b"counter", None, Some(b"1")).await?;
    /// if !outcome.swapped {
    ///     println!("someone else set it to {:?}", outcome.current);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<CasOutcome> {
        let op = Op::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        };
        match self.write(op).await? {
            Response::Cas { swapped, current } => Ok(CasOutcome { swapped, current }),
            other => Err(Error::Remote(format!("unexpected answer {other:?}"))),
        }
    }

    /// Applies puts and deletes together, all or none. Every key must fall
    /// in the same vshard (use keys sharing a hash tag the application
    /// controls); otherwise the batch is refused before it is sent with
    /// [`Error::BatchSpansVShards`].
    ///
    /// ```no_run
    /// # async fn example(client: flotilla::client::Client) -> flotilla::Result<()> {
    /// use flotilla::kv::BatchOp;
    /// client
    ///     .batch(vec![
    ///         BatchOp::Put { key: b"k".to_vec(), value: b"v".to_vec() },
    ///         BatchOp::Delete { key: b"old".to_vec() },
    ///     ])
    ///     .await
    ///     .ok(); // refused if "k" and "old" hash to different vshards
    /// # Ok(())
    /// # }
    /// ```
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        // The count alone: the vshard map is not copied for every batch.
        let known = self.lock_routing().catalog.as_ref().map(|c| c.vshard_count);
        let count = match known {
            Some(n) => n,
            None => self.refresh_catalog().await?.vshard_count,
        };
        let vshards: BTreeSet<_> = ops
            .iter()
            .map(|o| crate::catalog::vshard_of(o.key(), count))
            .collect();
        if vshards.len() > 1 {
            return Err(Error::BatchSpansVShards {
                vshards: vshards.len(),
            });
        }
        match self.write(Op::Batch { ops }).await? {
            Response::Written => Ok(()),
            other => Err(Error::Remote(format!("unexpected answer {other:?}"))),
        }
    }

    /// The catalog, from the cache when it has one.
    pub async fn catalog(&self) -> Result<Catalog> {
        let cached = self.lock_routing().catalog.clone();
        match cached {
            Some(c) => Ok(c),
            None => self.refresh_catalog().await,
        }
    }

    /// Fetches the catalog from the first node that answers (the cached
    /// catalog's nodes, then the configured endpoints).
    pub async fn refresh_catalog(&self) -> Result<Catalog> {
        let mut candidates: Vec<String> = self
            .lock_routing()
            .catalog
            .as_ref()
            .map(|c| {
                c.nodes
                    .values()
                    .filter(|n| n.state != NodeState::Removed)
                    .map(|n| n.addr.clone())
                    .collect()
            })
            .unwrap_or_default();
        candidates.extend(self.inner.seeds.iter().cloned());
        let mut seen = BTreeSet::new();
        candidates.retain(|c| seen.insert(c.clone()));
        // Every candidate at once, nodes that failed lately only when no
        // other is left; the first catalog wins.
        let mut last = Error::Unreachable("no endpoint answered".into());
        let mut addrs = Vec::new();
        for c in candidates {
            match resolve(&c).await {
                Ok(a) => addrs.push(a),
                Err(e) => last = e,
            }
        }
        let (up, down): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| !self.is_down(a));
        for batch in [up, down] {
            let mut asks = tokio::task::JoinSet::new();
            for addr in batch {
                let me = self.clone();
                asks.spawn(async move { (addr, me.call_once(addr, &RpcRequest::Catalog).await) });
            }
            while let Some(done) = asks.join_next().await {
                let Ok((_, answer)) = done else { continue };
                match answer {
                    Ok(RpcResponse::Catalog(bytes)) => {
                        let catalog = Catalog::decode(&bytes)?;
                        let mut r = self.lock_routing();
                        r.catalog = Some(catalog.clone());
                        r.fetched = Some(Instant::now());
                        return Ok(catalog);
                    }
                    Ok(other) => last = unexpected(&other),
                    // A refused certificate will not get better elsewhere.
                    Err(e @ (Error::Certificate { .. } | Error::PermissionDenied(_))) => {
                        return Err(e)
                    }
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// Proposes a write with a fresh sequence number, retried under that
    /// same number until it is answered or the deadline passes.
    async fn write(&self, op: Op) -> Result<Response> {
        crate::kv::Limits::default().check(&op)?;
        let group = self.group_of(op.key()).await?;
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let ack_below = {
            let mut f = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            f.insert(seq);
            f.first().copied().unwrap_or(seq)
        };
        let command = Command {
            client: self.inner.id,
            seq,
            ack_below,
            fresh: true,
            proposed_ms: 0,
            op,
        };
        let answer = self
            .call_group(group, &RpcRequest::Propose { group, command })
            .await;
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
        match answer? {
            RpcResponse::Kv(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    fn lock_routing(&self) -> std::sync::MutexGuard<'_, Routing> {
        self.inner.routing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group owning `key`, by the catalog (fetched first if the client
    /// has none yet).
    async fn group_of(&self, key: &[u8]) -> Result<GroupId> {
        let known = self
            .lock_routing()
            .catalog
            .as_ref()
            .map(|c| c.group_of(key));
        match known {
            Some(g) => Ok(g),
            None => Ok(self.refresh_catalog().await?.group_of(key)),
        }
    }
}

/// The error an answer of the wrong kind stands for.
fn unexpected(r: &RpcResponse) -> Error {
    match r {
        RpcResponse::Error(e) => Error::from(e.clone()),
        other => Error::Remote(format!("unexpected answer {other:?}")),
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| Error::Unreachable(format!("cannot resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| Error::Unreachable(format!("{addr} resolves to nothing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
