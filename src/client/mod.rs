//! The Flotilla client library: connect to a cluster over mutual TLS, then
//! read and write keys without knowing which node leads which group.
//!
//! A [`Client`] keeps a routing cache taken from the catalog (key → vshard
//! → group → leader). A request goes to the leader it believes in; an answer
//! naming another leader updates the cache, and a stale route refreshes the
//! catalog. Every call retries retryable failures with backoff until its
//! deadline ([`ClientConfig::timeout`], 5 s by default). Writes carry the
//! client's id and a sequence number, so a retried write is applied once
//! and returns the answer of its first application.
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

use crate::catalog::{Catalog, NodeState};
use crate::certs::{role_files, Role, CA_CERT};
use crate::error::{Error, Result};
use crate::kv::{BatchOp, Command, Op, Response};
use crate::transport::rpc::{NodeReport, RpcRequest, RpcResponse};
use crate::transport::tls::PIN_MISMATCH;
use crate::transport::TlsIdentity;
use crate::types::{GroupId, NodeId, CATALOG_GROUP};

mod route;

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
    endpoint: quinn::Endpoint,
    tls: quinn::ClientConfig,
    seeds: Vec<String>,
    timeout: Duration,
    /// This client's session id (never 0).
    id: u64,
    next_seq: AtomicU64,
    /// Sequences sent and not yet answered; the smallest bounds what the
    /// cluster must remember for this client.
    in_flight: Mutex<BTreeSet<u64>>,
    routing: Mutex<Routing>,
    /// One open connection per node address.
    conns: Mutex<BTreeMap<SocketAddr, quinn::Connection>>,
    /// Addresses that recently failed to connect or answer, and when (see
    /// `route`).
    down: Mutex<BTreeMap<SocketAddr, Instant>>,
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
        let identity = TlsIdentity::load(&config.ca, &config.cert, &config.key)?;
        let tls = identity.pinned_client_config(config.pin)?;
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
            .map_err(|e| Error::Unreachable(format!("cannot open a client endpoint: {e}")))?;
        let client = Client {
            inner: Arc::new(Inner {
                endpoint,
                tls,
                seeds: config.endpoints,
                timeout: config.timeout,
                id: rand::random::<u64>().max(1),
                next_seq: AtomicU64::new(1),
                in_flight: Mutex::default(),
                routing: Mutex::default(),
                conns: Mutex::default(),
                down: Mutex::default(),
            }),
        };
        client.refresh_catalog().await?;
        Ok(client)
    }

    /// Reads `key` linearizably: the answer reflects every write
    /// acknowledged before the call began. `None` when the key is absent.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let group = self.group_of(key)?;
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
        let catalog = self.catalog().await?;
        let vshards: BTreeSet<_> = ops.iter().map(|o| catalog.vshard(o.key())).collect();
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

    /// Up to `limit` keys of `range` with their values, in key order,
    /// gathered from every group (each read linearizably).
    ///
    /// ```no_run
    /// # async fn example(client: flotilla::client::Client) -> flotilla::Result<()> {
    /// use flotilla::client::KeyRange;
    /// for (key, value) in client.scan(KeyRange::Prefix(b"user/".to_vec()), 100).await? {
    ///     println!("{} = {} bytes", String::from_utf8_lossy(&key), value.len());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn scan(&self, range: KeyRange, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (start, end) = range.bounds();
        let catalog = self.catalog().await?;
        let groups: Vec<GroupId> = catalog
            .groups
            .keys()
            .copied()
            .filter(|g| *g != CATALOG_GROUP)
            .collect();
        let limit32 = u32::try_from(limit).unwrap_or(u32::MAX);
        let mut calls = tokio::task::JoinSet::new();
        for group in groups {
            let me = self.clone();
            let req = RpcRequest::Scan {
                group,
                start: start.clone(),
                end: end.clone(),
                limit: limit32,
            };
            calls.spawn(async move { me.call_group(group, &req).await });
        }
        let mut rows = Vec::new();
        while let Some(done) = calls.join_next().await {
            let answer = done.map_err(|e| Error::Invalid(format!("scan task failed: {e}")))?;
            match answer? {
                RpcResponse::Kv(Response::Rows(r)) => rows.extend(r),
                other => return Err(unexpected(&other)),
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.truncate(limit);
        Ok(rows)
    }

    /// Every node's report, as the catalog lists them: `Err` for a node
    /// that did not answer.
    pub async fn status(&self) -> Result<Vec<(NodeId, String, Result<NodeReport>)>> {
        let catalog = self.refresh_catalog().await?;
        let mut asks = tokio::task::JoinSet::new();
        let nodes: Vec<_> = catalog
            .nodes
            .values()
            .filter(|n| n.state != NodeState::Removed)
            .map(|n| (n.id, n.addr.clone()))
            .collect();
        for (i, (id, addr)) in nodes.iter().cloned().enumerate() {
            let me = self.clone();
            asks.spawn(async move {
                let deadline = Instant::now() + route::ATTEMPT_TIMEOUT.min(me.inner.timeout);
                let report = match resolve(&addr).await {
                    Ok(sock) => match me.call_within(sock, &RpcRequest::Status, deadline).await {
                        // Another node now listens where this one did (a
                        // node whose disk was replaced rejoined under a new
                        // id).
                        Ok(RpcResponse::Status(r)) if r.node != id => Err(Error::Unreachable(
                            format!("{addr} answers as node {}", r.node.0),
                        )),
                        Ok(RpcResponse::Status(r)) => Ok(r),
                        Ok(other) => Err(unexpected(&other)),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                (i, report)
            });
        }
        let mut reports: BTreeMap<usize, Result<NodeReport>> = BTreeMap::new();
        while let Some(done) = asks.join_next().await {
            let (i, report) =
                done.map_err(|e| Error::Invalid(format!("status task failed: {e}")))?;
            reports.insert(i, report);
        }
        Ok(nodes
            .into_iter()
            .enumerate()
            .map(|(i, (id, addr))| {
                let r = reports
                    .remove(&i)
                    .unwrap_or_else(|| Err(Error::Unreachable(format!("{addr} was not asked"))));
                (id, addr, r)
            })
            .collect())
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

    /// Makes node `to` (a voter of `group`) the group's leader: the choice
    /// is recorded in the catalog, and the group's leader hands over as soon
    /// as `to` is caught up, and again whenever leadership drifts away.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<()> {
        match self
            .call_group(CATALOG_GROUP, &RpcRequest::TransferLeader { group, to })
            .await?
        {
            RpcResponse::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets a node's state through group 0 (admin certificate only).
    pub async fn set_node_state(&self, node: NodeId, state: NodeState) -> Result<()> {
        match self
            .call_group(CATALOG_GROUP, &RpcRequest::SetNodeState { node, state })
            .await?
        {
            RpcResponse::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a consistency check of `group` through its log; returns the
    /// apply index it ran at and the leader's digest.
    pub async fn checksum(&self, group: GroupId) -> Result<(u64, u64)> {
        match self
            .call_group(group, &RpcRequest::Checksum { group })
            .await?
        {
            RpcResponse::Checksum { index, digest } => Ok((index, digest)),
            other => Err(unexpected(&other)),
        }
    }

    /// The last consistency check of every group on the node at `addr`:
    /// (group, apply index, digest).
    pub async fn checksums_of(&self, addr: &str) -> Result<Vec<(GroupId, u64, u64)>> {
        let addr = resolve(addr).await?;
        match self.call_once(addr, &RpcRequest::Checksums).await? {
            RpcResponse::Checksums(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    /// Proposes a write with a fresh sequence number, retried under that
    /// same number until it is answered or the deadline passes.
    async fn write(&self, op: Op) -> Result<Response> {
        crate::kv::Limits::default().check(&op)?;
        let group = self.group_of(op.key())?;
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

    fn group_of(&self, key: &[u8]) -> Result<GroupId> {
        self.lock_routing()
            .catalog
            .as_ref()
            .map(|c| c.group_of(key))
            .ok_or_else(|| Error::Unreachable("no catalog yet".into()))
    }
}

/// Tells certificate refusals apart from other connection failures.
fn classify(e: Error) -> Error {
    let text = e.to_string();
    if text.contains(PIN_MISMATCH) {
        Error::Certificate {
            path: "server".into(),
            detail: PIN_MISMATCH.into(),
        }
    } else if text.contains("UnknownIssuer")
        || text.contains("BadSignature")
        || text.contains("certificate")
    {
        Error::Certificate {
            path: "server".into(),
            detail: text,
        }
    } else {
        e
    }
}

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
