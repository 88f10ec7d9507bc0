//! The network between nodes: QUIC (quinn) with mutual TLS (rustls).
//!
//! Each node runs one [`Transport`]: a quinn endpoint that accepts
//! connections from peers and dials them. Every connection is mutual TLS
//! against the cluster CA with ALPN `flotilla/1` ([`tls`]); after the
//! handshake the peer's certificate decides what it may send: only the
//! `node` role may send Raft traffic, and a node whose public key the
//! catalog pins must present that key. Everything travels as length-prefixed
//! rkyv [`frame`]s with a size limit; a bad frame closes that stream, is
//! logged and counted, and the node keeps serving.
//!
//! Outbound, each peer has one task owning one connection and one
//! long-lived unidirectional stream on which the Raft messages of all
//! groups bound for that peer travel in batches; a connection that closes
//! or whose peer falls silent is replaced at once, and failed dials back
//! off for at most a quarter second while the peer was reached recently.
//! The driver thread hands it batches through a channel
//! ([`Transport::send_raft`]), so the driver never waits on the network.
//! The transport knows Raft messages only as (group, message) pairs
//! ([`RaftMessage`]) and requests only as [`crate::api`] types: the node
//! wires it to the driver ([`crate::node::raft_link`]) and to its request
//! handlers ([`crate::node::handlers`]).
//!
//! [`Transport::reload`] swaps the certificate this node presents (on
//! SIGHUP): new connections use the new one, open ones carry on.
//!
//! Requests from clients and operators use a bidirectional stream each
//! ([`rpc`]); the certificate's role decides which requests are allowed.
//!
//! A snapshot's state travels in chunks on a connection of its own
//! ([`snapshot`]), never inside a Raft frame.
//!
//! Left out for now: connection reuse for [`rpc::call`] (one connection
//! per call).

pub mod frame;
mod inbound;
mod outbound;
pub mod rpc;
mod snapshot;
pub mod tls;

pub use snapshot::{Pacer, SNAPSHOT_RATE, SNAPSHOT_STALL};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use tls::TlsIdentity;

use crate::error::{Error, Result};
use crate::types::{GroupId, NodeId};

/// One Raft message and the group it belongs to: what the transport
/// carries between nodes, without knowing what a group is for.
pub type RaftMessage = (GroupId, raft::eraftpb::Message);

/// Where inbound Raft messages go.
pub trait Inbox: Send + Sync + 'static {
    /// Hands over a batch that arrived from `from`.
    fn deliver(&self, from: NodeId, msgs: Vec<RaftMessage>);
}

/// Counters of what the transport saw, refusals included.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Frames received and accepted.
    pub frames_in: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// Frames that failed to decode or exceeded the size limit.
    pub bad_frames: AtomicU64,
    /// Connections whose TLS handshake failed (no certificate, unknown CA,
    /// wrong ALPN).
    pub refused_handshakes: AtomicU64,
    /// Raft frames from a certificate without the node role.
    pub refused_roles: AtomicU64,
    /// Raft frames from a node whose key does not match its pin.
    pub refused_pins: AtomicU64,
    /// Raft messages whose own sender is not the node the frame came
    /// from: one node certificate speaking for another node.
    pub refused_senders: AtomicU64,
    /// Requests refused because of the caller's role.
    pub refused_requests: AtomicU64,
    /// Bytes of accepted Raft frames: what leaders sent this node.
    pub raft_bytes_in: AtomicU64,
    /// Log entries carried by accepted Raft messages.
    pub raft_entries_in: AtomicU64,
}

impl TransportStats {
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What the transport knows of a peer.
#[derive(Clone, Debug)]
struct Peer {
    addr: SocketAddr,
    /// SHA-256 of its SubjectPublicKeyInfo, once the catalog knows it.
    pin: Option<[u8; 32]>,
}

/// What the transport keeps of the certificate it presents.
#[derive(Clone, Copy, Debug)]
struct CertInfo {
    /// SHA-256 of its SubjectPublicKeyInfo: what peers pin.
    spki: [u8; 32],
    /// Its expiry, in seconds since the Unix epoch.
    not_after: i64,
}

impl CertInfo {
    /// What `identity` presents; refused when it has expired (peers would
    /// refuse every handshake), warned about when it expires soon.
    fn of(identity: &TlsIdentity) -> Result<CertInfo> {
        let info = CertInfo {
            spki: crate::certs::spki_sha256(&identity.cert)?,
            not_after: crate::certs::not_after(&identity.cert)?,
        };
        let until = crate::certs::expiry::date(info.not_after);
        match crate::certs::expiry::warning(info.not_after, crate::certs::unix_now()) {
            Some(crate::certs::expiry::Expiry::Expired { .. }) => Err(Error::Certificate {
                path: "node certificate".into(),
                detail: format!(
                    "it expired at {until}; renew it with `flotilla certs node` (which keeps the key)"
                ),
            }),
            Some(soon) => {
                tracing::warn!(not_after = %until, expiry = %soon, "the node certificate expires soon");
                Ok(info)
            }
            None => Ok(info),
        }
    }
}

/// A node's QUIC endpoint.
pub struct Transport {
    /// This node's id; 0 until a joining node is admitted.
    node: AtomicU64,
    endpoint: quinn::Endpoint,
    /// How this node dials other nodes to make requests (joins,
    /// announcements); replaced by [`Transport::reload`]. A std lock: held
    /// only to clone or swap it.
    client_config: RwLock<quinn::ClientConfig>,
    /// How this node dials peers to send them Raft traffic (it pings them
    /// often); replaced by [`Transport::reload`].
    peer_config: RwLock<quinn::ClientConfig>,
    /// The certificate this node presents: its key's pin and its expiry.
    cert: RwLock<CertInfo>,
    /// Peers by node id. A std lock: held only to copy an entry.
    peers: RwLock<BTreeMap<NodeId, Peer>>,
    /// Where inbound Raft batches go; set once the driver runs.
    inbox: RwLock<Option<Arc<dyn Inbox>>>,
    /// Who answers requests; set once the driver runs.
    service: RwLock<Option<Arc<dyn rpc::Service>>>,
    /// How snapshots are read, staged and paced; set once the node runs.
    snapshots: RwLock<Option<Arc<snapshot::SnapshotLink>>>,
    /// One outbound task per peer, started on first use.
    senders: Mutex<BTreeMap<NodeId, outbound::PeerSender>>,
    stats: Arc<TransportStats>,
    runtime: tokio::runtime::Handle,
    /// When the transport started; the origin of `last_reached_ms`.
    started: Instant,
    /// Milliseconds after `started` when a frame last went out to a peer.
    last_reached_ms: AtomicU64,
}

impl Transport {
    /// Binds `listen` and starts accepting peers. Until [`Transport::serve`]
    /// names an inbox and a service, Raft batches are dropped and requests
    /// answered with a retryable error. Must run inside a tokio runtime.
    pub fn bind(
        node: NodeId,
        listen: SocketAddr,
        identity: &TlsIdentity,
    ) -> Result<Arc<Transport>> {
        let endpoint = quinn::Endpoint::server(identity.server_config()?, listen)
            .map_err(|e| Error::Unreachable(format!("cannot listen on {listen}: {e}")))?;
        let t = Arc::new(Transport {
            node: AtomicU64::new(node.0),
            endpoint,
            client_config: RwLock::new(identity.client_config()?),
            peer_config: RwLock::new(identity.peer_client_config()?),
            cert: RwLock::new(CertInfo::of(identity)?),
            peers: RwLock::default(),
            inbox: RwLock::default(),
            service: RwLock::default(),
            snapshots: RwLock::default(),
            senders: Mutex::default(),
            stats: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
            started: Instant::now(),
            last_reached_ms: AtomicU64::new(0),
        });
        tokio::spawn(inbound::accept_loop(t.clone()));
        Ok(t)
    }

    /// Names where inbound Raft batches go and who answers requests.
    pub fn serve(&self, inbox: Arc<dyn Inbox>, service: Arc<dyn rpc::Service>) {
        *self.inbox.write().unwrap_or_else(|p| p.into_inner()) = Some(inbox);
        *self.service.write().unwrap_or_else(|p| p.into_inner()) = Some(service);
    }

    fn inbox(&self) -> Option<Arc<dyn Inbox>> {
        self.inbox.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn service(&self) -> Option<Arc<dyn rpc::Service>> {
        self.service
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The QUIC endpoint (it can also dial, as a client).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(|e| Error::Unreachable(e.to_string()))
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        NodeId(self.node.load(Ordering::Relaxed))
    }

    /// Sets this node's id, once a join admitted it.
    pub fn set_node(&self, node: NodeId) {
        self.node.store(node.0, Ordering::Relaxed);
    }

    /// Records (or updates) a peer's address and key pin.
    pub fn set_peer(&self, node: NodeId, addr: SocketAddr, pin: Option<[u8; 32]>) {
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, Peer { addr, pin });
    }

    fn peer(&self, node: NodeId) -> Option<Peer> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned()
    }

    /// The pin of the node `node`, if known.
    fn pin_of(&self, node: NodeId) -> Option<[u8; 32]> {
        self.peer(node).and_then(|p| p.pin)
    }

    /// Notes that a frame just reached a peer.
    fn reached_peer(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_reached_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since a frame last reached any peer (since the transport
    /// started, if none ever did).
    pub fn since_reached(&self) -> Duration {
        let at = Duration::from_millis(self.last_reached_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(at)
    }

    /// The transport's counters.
    pub fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }

    /// Queues `msgs` for the peer `to`, starting its outbound task on
    /// first use; never waits. Returns `false`, dropping the batch, while
    /// the peer is not connected: Raft resends what matters, and the caller
    /// (the driver) then probes the peer instead of streaming to it.
    pub fn send_raft(self: &Arc<Self>, to: NodeId, msgs: Vec<RaftMessage>) -> bool {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let s = senders
            .entry(to)
            .or_insert_with(|| outbound::PeerSender::start(self.clone(), to));
        s.send(msgs)
    }

    /// The configuration this node dials other nodes with to make
    /// requests.
    pub fn client_config(&self) -> quinn::ClientConfig {
        self.client_config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configuration this node dials peers with to send Raft traffic.
    fn peer_config(&self) -> quinn::ClientConfig {
        self.peer_config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// When the certificate this node presents expires, in seconds since
    /// the Unix epoch.
    pub fn cert_not_after(&self) -> i64 {
        self.cert
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .not_after
    }

    /// Presents `identity` from now on: new connections, both accepted and
    /// dialled, use it; open connections keep the certificate they started
    /// with and go on working. Refused, with the old identity kept, when
    /// the new certificate does not match its key, has expired, or holds
    /// another key than the one presented so far (peers pin that key, so
    /// they would refuse this node).
    pub fn reload(&self, identity: &TlsIdentity) -> Result<()> {
        let new = CertInfo::of(identity)?;
        let old = *self.cert.read().unwrap_or_else(|p| p.into_inner());
        if new.spki != old.spki {
            return Err(Error::Certificate {
                path: "new node certificate".into(),
                detail: "it holds another key than the one this node's peers pin; renew with the same key \
                         (`flotilla certs node` keeps node-NAME.key); keeping the current one"
                    .into(),
            });
        }
        let server = identity.server_config()?;
        let client = identity.client_config()?;
        let peers = identity.peer_client_config()?;
        self.endpoint.set_server_config(Some(server));
        *self
            .client_config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = client;
        *self.peer_config.write().unwrap_or_else(|p| p.into_inner()) = peers;
        *self.cert.write().unwrap_or_else(|p| p.into_inner()) = new;
        tracing::info!(
            node_id = self.node().0,
            not_after = %crate::certs::expiry::date(new.not_after),
            "node certificate reloaded"
        );
        Ok(())
    }

    /// Closes every connection and stops listening.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}
