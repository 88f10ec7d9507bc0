//! The network between nodes: QUIC (quinn) with mutual TLS (rustls).
//!
//! Each node runs one [`Transport`]: a quinn endpoint that accepts
//! connections from peers and dials them. Every connection is mutual TLS
//! against the cluster CA with ALPN `flotilla/1` ([`tls`]); after the
//! handshake the peer's certificate decides what it may do: how many
//! connections it may hold at once ([`MAX_CLIENT_CONNECTIONS_PER_CERT`],
//! [`MAX_NODE_CONNECTIONS_PER_CERT`]), which kinds of stream it may open
//! (only the `node` role may open Raft and snapshot streams), and, for a
//! node whose public key the catalog pins, that it presents that key.
//! Every stream names its kind in its first byte and carries
//! length-prefixed rkyv [`frame`]s with a limit per kind, read without
//! trusting the declared length; whatever is refused (a stream, a frame, a
//! connection) is counted by reason in [`TransportStats`] and logged
//! without flooding, and the node keeps serving.
//!
//! Outbound, each peer has one task owning one connection and one
//! long-lived unidirectional stream on which the Raft messages of all
//! groups bound for that peer travel in batches, split into frames of at
//! most [`frame::RAFT_FRAME_TARGET_BYTES`] (one larger message travels
//! alone); a message too large for any frame is not sent, and the driver
//! hears that it was not ([`Transport::send_raft`]). A connection that
//! closes or whose peer falls silent is replaced at once, and failed dials
//! back off for at most a quarter second while the peer was reached
//! recently. The driver thread hands it batches through a channel, so the
//! driver never waits on the network. The transport knows Raft messages
//! only as (group, message) pairs ([`RaftMessage`]) and requests only as
//! [`crate::api`] types: the node wires it to the driver
//! ([`crate::node::raft_link`]) and to its request handlers
//! ([`crate::node::handlers`]).
//!
//! [`Transport::reload`] swaps the certificate this node presents (on
//! SIGHUP): new connections use the new one, open ones carry on.
//!
//! Requests from clients and operators use a bidirectional stream each
//! ([`rpc`]); the certificate's role decides which requests are allowed.
//!
//! A snapshot's state travels in chunks on a stream of its own
//! ([`snapshot`]), never inside a Raft frame.
//!
//! Left out for now: connection reuse for [`rpc::call`] (one connection
//! per call), and a byte budget per connection: a peer that really sends
//! a frame's bytes holds up to its kind's limit on each of its streams
//! until the frame is read.

pub mod frame;
mod inbound;
mod outbound;
mod refusal;
pub mod rpc;
mod snapshot;
pub mod tls;

pub use snapshot::{Pacer, SNAPSHOT_RATE, SNAPSHOT_STALL};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use tls::TlsIdentity;

use crate::certs::Role;
use crate::error::{Error, Result};
use crate::types::{GroupId, NodeId};
use refusal::{Refusal, RefusalLog};

/// Connections one client or admin certificate may hold at once on a
/// node: a client keeps one per node it talks to, and an application's
/// processes may share one certificate.
pub const MAX_CLIENT_CONNECTIONS_PER_CERT: usize = 64;
/// Connections one node certificate may hold at once on a node: each
/// other node keeps one for its Raft traffic and opens one per call it
/// makes; nodes that share one certificate all count against it, so this
/// leaves room for a cluster of a few dozen of them.
pub const MAX_NODE_CONNECTIONS_PER_CERT: usize = 32;

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
    /// Frames whose body failed to decode.
    pub bad_frames: AtomicU64,
    /// Frames that declared more bytes than their kind allows.
    pub refused_oversize: AtomicU64,
    /// Frames whose stream ended partway through them.
    pub refused_truncated: AtomicU64,
    /// Frames (or request streams) that stopped arriving partway.
    pub refused_stalled: AtomicU64,
    /// Streams that named no kind, or a kind not served on their
    /// direction or by this node.
    pub refused_kinds: AtomicU64,
    /// Connections closed because their peer opened more streams than
    /// the connection allows.
    pub refused_streams: AtomicU64,
    /// Connections refused because their certificate already held as
    /// many as it may.
    pub refused_connections: AtomicU64,
    /// Raft messages too large for any frame, not sent (this side).
    pub oversize_outbound: AtomicU64,
    /// Connections whose TLS handshake failed (no certificate, unknown CA,
    /// wrong ALPN).
    pub refused_handshakes: AtomicU64,
    /// Raft or snapshot streams opened by a certificate without the node
    /// role.
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

    /// Every refusal counter by a short reason name, for metrics.
    pub fn refusals(&self) -> [(&'static str, u64); 13] {
        [
            ("handshake", &self.refused_handshakes),
            ("connection_cap", &self.refused_connections),
            ("stream_cap", &self.refused_streams),
            ("kind", &self.refused_kinds),
            ("role", &self.refused_roles),
            ("pin", &self.refused_pins),
            ("sender", &self.refused_senders),
            ("request", &self.refused_requests),
            ("oversize", &self.refused_oversize),
            ("truncated", &self.refused_truncated),
            ("stalled", &self.refused_stalled),
            ("malformed", &self.bad_frames),
            ("oversize_outbound", &self.oversize_outbound),
        ]
        .map(|(name, c)| (name, Self::get(c)))
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

/// One accepted connection counted against its certificate; uncounted
/// when dropped.
struct ConnectionSlot {
    t: Arc<Transport>,
    spki: [u8; 32],
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut live = self.t.connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = live.get_mut(&self.spki) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.spki);
            }
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
    /// When each reason of refusal was last logged.
    refusals: RefusalLog,
    /// Live accepted connections per peer certificate key (SPKI SHA-256).
    /// A std lock: held only to count.
    connections: Mutex<HashMap<[u8; 32], usize>>,
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
        let listen_err =
            |e: std::io::Error| Error::Unreachable(format!("cannot listen on {listen}: {e}"));
        let socket = std::net::UdpSocket::bind(listen).map_err(listen_err)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Invalid("no tokio runtime for the transport".into()))?;
        let endpoint = quinn::Endpoint::new(
            identity.endpoint_config(),
            Some(identity.server_config()?),
            socket,
            runtime,
        )
        .map_err(listen_err)?;
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
            refusals: RefusalLog::default(),
            connections: Mutex::default(),
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
    /// first use; never waits. Returns `false` while the peer is not
    /// connected, dropping the batch: Raft resends what matters, and the
    /// caller (the driver) then probes the peer instead of streaming to it.
    /// Also returns `false` when a message is too large for any frame
    /// ([`frame::MAX_RAFT_FRAME_BYTES`]): that message is dropped, counted
    /// and logged, the rest are sent, and the driver treats the whole batch
    /// as undelivered (its leaders probe the peer again and a snapshot in
    /// it is reported failed), rather than believing a dropped message
    /// arrived.
    pub fn send_raft(self: &Arc<Self>, to: NodeId, msgs: Vec<RaftMessage>) -> bool {
        let (fits, over): (Vec<RaftMessage>, Vec<RaftMessage>) = msgs
            .into_iter()
            .partition(|(_, m)| frame::message_bytes(m) <= frame::MAX_RAFT_FRAME_BYTES);
        for (group, m) in &over {
            let detail = format!(
                "a {:?} of group {} takes about {} bytes, over the Raft frame limit of {}; not sent",
                m.get_msg_type(),
                group.0,
                frame::message_bytes(m),
                frame::MAX_RAFT_FRAME_BYTES
            );
            self.refuse(
                Refusal::OversizeOutbound,
                &format_args!("node {}", to.0),
                &detail,
            );
        }
        if fits.is_empty() {
            return false;
        }
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let s = senders
            .entry(to)
            .or_insert_with(|| outbound::PeerSender::start(self.clone(), to));
        s.send(fits) && over.is_empty()
    }

    /// Counts and logs a refusal of `why` concerning `peer`.
    fn refuse(&self, why: Refusal, peer: &dyn std::fmt::Display, detail: &dyn std::fmt::Display) {
        self.refusals
            .refuse(&self.stats, self.node().0, why, peer, detail);
    }

    /// Admits one more connection from the certificate `spki` of `role`,
    /// or `None` when it already holds as many as its role may
    /// ([`MAX_CLIENT_CONNECTIONS_PER_CERT`],
    /// [`MAX_NODE_CONNECTIONS_PER_CERT`]). The connection counts until the
    /// returned slot is dropped.
    fn admit(self: &Arc<Self>, spki: [u8; 32], role: Option<Role>) -> Option<ConnectionSlot> {
        let cap = match role {
            Some(Role::Node) => MAX_NODE_CONNECTIONS_PER_CERT,
            _ => MAX_CLIENT_CONNECTIONS_PER_CERT,
        };
        let mut live = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let n = live.entry(spki).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            t: self.clone(),
            spki,
        })
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
