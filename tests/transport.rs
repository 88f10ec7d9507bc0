//! The QUIC transport on loopback: Raft batches between nodes, and every
//! refusal the blueprint names: a foreign CA, a client certificate sending
//! Raft traffic, a client without any certificate, a pinned key that does
//! not match, malformed and oversize frames, a stream of no kind, and
//! non-QUIC garbage. After each refusal the node still serves.
//!
//! With a key per node: a node presenting another node's key, and Raft
//! messages speaking for another node, are refused; a reloaded certificate
//! is what new connections see; a dev cluster's catalog pins each node's
//! own key.

#[path = "common/wire.rs"]
mod wire;

use wire::*;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla::api::{RpcError, RpcRequest, RpcResponse};
use flotilla::certs::{self, Role, CA_CERT};
use flotilla::transport::frame::{write_frame, write_tag, Frame, StreamKind, MAX_RAFT_FRAME_BYTES};
use flotilla::transport::rpc::Service;
use flotilla::transport::{RaftMessage, TlsIdentity, Transport, TransportStats};
use flotilla::types::{GroupId, NodeId};
use raft::eraftpb::{Entry, Message, MessageType};

/// How long any one expectation may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);

/// A transport on a free loopback port whose Raft batches go to `tx`.
fn bound(
    node: NodeId,
    id: &TlsIdentity,
    tx: mpsc::Sender<(NodeId, Vec<RaftMessage>)>,
) -> Arc<Transport> {
    let t = Transport::bind(node, loopback(), id).unwrap();
    t.serve(Arc::new(ChanInbox(Mutex::new(tx))), Arc::new(NoService));
    t
}

/// Answers every request with a failure; these tests send none.
struct NoService;

impl Service for NoService {
    fn handle(
        &self,
        _req: RpcRequest,
        _caller: Option<[u8; 32]>,
    ) -> Pin<Box<dyn Future<Output = RpcResponse> + Send + '_>> {
        Box::pin(async {
            RpcResponse::Error(RpcError::from(&flotilla::Error::Invalid(
                "no service".into(),
            )))
        })
    }
}

/// A client configuration that trusts the cluster CA but has no certificate.
fn no_certificate(dir: &Path) -> quinn::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let ca = rustls::pki_types::CertificateDer::from_pem_file(dir.join(CA_CERT)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"flotilla/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(quic))
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn append(to: u64, index: u64) -> RaftMessage {
    let msg = Message {
        msg_type: MessageType::MsgAppend,
        from: 1,
        to,
        term: 3,
        index,
        entries: vec![Entry {
            term: 3,
            index: index + 1,
            data: vec![7; 32].into(),
            ..Default::default()
        }]
        .into(),
        ..Default::default()
    };
    (GroupId(5), msg)
}

/// Sends from `t` to `to` until a batch arrives on `rx` (the first sends
/// report the peer unreachable while the connection is being made).
async fn deliver(
    t: &Arc<Transport>,
    to: NodeId,
    rx: &mpsc::Receiver<(NodeId, Vec<RaftMessage>)>,
    index: u64,
) -> (NodeId, Vec<RaftMessage>) {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        t.send_raft(to, vec![append(to.0, index)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(got) = rx.try_recv() {
            return got;
        }
    }
    panic!("nothing delivered within {DEADLINE:?}");
}

async fn wait_for(counter: &AtomicU64, at_least: u64) {
    wait_for_count(counter, at_least, DEADLINE).await
}

/// Keeps sending from `t` (whose connections will be refused) until the
/// counter moves.
async fn send_until(t: &Arc<Transport>, to: NodeId, counter: &AtomicU64) {
    let start = Instant::now();
    while TransportStats::get(counter) == 0 {
        assert!(start.elapsed() < DEADLINE, "refusal never counted");
        t.send_raft(to, vec![append(to.0, 1)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_exchange_raft_batches_and_refuse_what_they_must() {
    let dir = tempfile::tempdir().unwrap();
    certs::create(dir.path(), &["127.0.0.1".into()], false).unwrap();
    let (tx_b, rx_b) = mpsc::channel();
    let b = bound(NodeId(2), &identity(dir.path(), Role::Node), tx_b);
    let b_addr = b.local_addr().unwrap();
    let b_stats = b.stats();
    let (tx_a, _rx_a) = mpsc::channel();
    let a = bound(NodeId(1), &identity(dir.path(), Role::Node), tx_a);
    a.set_peer(NodeId(2), b_addr, None);

    // A batch arrives intact.
    let (from, msgs) = deliver(&a, NodeId(2), &rx_b, 10).await;
    assert_eq!(from, NodeId(1));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, GroupId(5));
    assert_eq!(msgs[0].1, append(2, 10).1);

    // A client certificate may connect but not speak Raft.
    let (tx_c, _rx_c) = mpsc::channel();
    let c = bound(NodeId(9), &identity(dir.path(), Role::Client), tx_c);
    c.set_peer(NodeId(2), b_addr, None);
    send_until(&c, NodeId(2), &b_stats.refused_roles).await;

    // A certificate from another CA does not get past the handshake.
    let other = tempfile::tempdir().unwrap();
    certs::create(other.path(), &["127.0.0.1".into()], false).unwrap();
    let (tx_d, _rx_d) = mpsc::channel();
    let d = bound(NodeId(3), &identity(other.path(), Role::Node), tx_d);
    d.set_peer(NodeId(2), b_addr, None);
    send_until(&d, NodeId(2), &b_stats.refused_handshakes).await;

    // A client that presents no certificate at all is refused in the
    // handshake, even though it trusts the right CA.
    let before = TransportStats::get(&b_stats.refused_handshakes);
    let anonymous = quinn::Endpoint::client(loopback()).unwrap();
    let refused = anonymous
        .connect_with(no_certificate(dir.path()), b_addr, "127.0.0.1")
        .unwrap()
        .await;
    let refused = match refused {
        // TLS 1.3 lets the client finish first; the server's refusal
        // arrives as the connection's close.
        Ok(conn) => conn.accept_uni().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        refused.is_err(),
        "a connection without a certificate was accepted"
    );
    wait_for(&b_stats.refused_handshakes, before + 1).await;

    // Malformed and oversize frames close their stream and are counted,
    // and so does a stream that names no kind.
    let raw = quinn::Endpoint::client(loopback()).unwrap();
    let conn = raw
        .connect_with(
            identity(dir.path(), Role::Node).client_config().unwrap(),
            b_addr,
            "127.0.0.1",
        )
        .unwrap()
        .await
        .unwrap();
    let raft = StreamKind::Raft.tag();
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&[raft, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    s.finish().unwrap();
    wait_for(&b_stats.bad_frames, 1).await;
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&[raft]).await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    s.finish().unwrap();
    wait_for(&b_stats.refused_oversize, 1).await;
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    s.finish().unwrap();
    wait_for(&b_stats.refused_kinds, 1).await;

    // Non-QUIC bytes on the port are dropped.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"GET / HTTP/1.1\r\n\r\n", b_addr).unwrap();

    // After all of that, B still takes A's traffic.
    while rx_b.try_recv().is_ok() {}
    let (_, msgs) = deliver(&a, NodeId(2), &rx_b, 20).await;
    assert!(msgs.iter().all(|m| m.0 == GroupId(5)));

    // Pin A to a key it does not have: B refuses A's frames.
    b.set_peer(NodeId(1), a.local_addr().unwrap(), Some([0xAB; 32]));
    send_until(&a, NodeId(2), &b_stats.refused_pins).await;

    for t in [&a, &b, &c, &d] {
        t.close();
    }
    raw.close(0u32.into(), b"done");
}

/// A Raft heartbeat to `to` that names `from` as its sender.
fn heartbeat(from: u64, to: u64) -> RaftMessage {
    let msg = Message {
        msg_type: MessageType::MsgHeartbeat,
        from,
        to,
        term: 3,
        ..Default::default()
    };
    (GroupId(5), msg)
}

fn messages(batch: &[RaftMessage]) -> Vec<Message> {
    batch.iter().map(|m| m.1.clone()).collect()
}

fn node_identity(dir: &Path, name: &str) -> TlsIdentity {
    TlsIdentity::load_node(dir, Some(name)).unwrap()
}

fn node_pin(dir: &Path, name: &str) -> [u8; 32] {
    certs::spki_sha256(&node_identity(dir, name).cert).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_key_speaks_only_for_its_own_node() {
    let dir = tempfile::tempdir().unwrap();
    let validity = certs::Validity::default();
    certs::create_set(dir.path(), &["127.0.0.1".into()], Some(3), validity, false).unwrap();
    let (tx_b, rx_b) = mpsc::channel();
    let b = bound(NodeId(2), &node_identity(dir.path(), "2"), tx_b);
    let b_addr = b.local_addr().unwrap();
    let b_stats = b.stats();
    let (tx_a, _rx_a) = mpsc::channel();
    let a = bound(NodeId(1), &node_identity(dir.path(), "1"), tx_a);
    a.set_peer(NodeId(2), b_addr, None);
    // B pins node 1 and node 3 to their own keys, as the catalog does.
    b.set_peer(
        NodeId(1),
        a.local_addr().unwrap(),
        Some(node_pin(dir.path(), "1")),
    );
    b.set_peer(NodeId(3), loopback(), Some(node_pin(dir.path(), "3")));

    // Node 1's frames carry one message of its own and one that claims to
    // come from node 3: only its own arrives; the other is counted.
    let start = Instant::now();
    let got = loop {
        assert!(start.elapsed() < DEADLINE, "nothing delivered");
        a.send_raft(NodeId(2), vec![heartbeat(3, 2), heartbeat(1, 2)]);
        match rx_b.recv_timeout(Duration::from_millis(20)) {
            Ok(got) => break got,
            Err(_) => continue,
        }
    };
    assert_eq!(got.0, NodeId(1));
    assert_eq!(
        messages(&got.1),
        vec![heartbeat(1, 2).1],
        "the impostor message is dropped"
    );
    assert!(TransportStats::get(&b_stats.refused_senders) >= 1);
    assert_eq!(TransportStats::get(&b_stats.refused_pins), 0);

    // Node 3's key claiming to be node 1 is refused by node 1's pin.
    let (tx_c, _rx_c) = mpsc::channel();
    let c = bound(NodeId(1), &node_identity(dir.path(), "3"), tx_c);
    c.set_peer(NodeId(2), b_addr, None);
    send_until(&c, NodeId(2), &b_stats.refused_pins).await;

    // Node 1 itself is still served.
    while rx_b.try_recv().is_ok() {}
    let (from, _) = deliver(&a, NodeId(2), &rx_b, 30).await;
    assert_eq!(from, NodeId(1));
    for t in [&a, &b, &c] {
        t.close();
    }
}

/// The certificate the server at `addr` presents to a new connection.
async fn served_certificate(
    client: &quinn::Endpoint,
    id: &TlsIdentity,
    addr: SocketAddr,
) -> Vec<u8> {
    let conn = client
        .connect_with(id.client_config().unwrap(), addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let certs = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    conn.close(0u32.into(), b"done");
    certs[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_serves_new_connections_and_old_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec!["127.0.0.1".to_string()];
    let validity = certs::Validity {
        ca_days: 3650,
        days: 20,
    };
    certs::create_set(dir.path(), &hosts, Some(2), validity, false).unwrap();
    let (tx_b, rx_b) = mpsc::channel();
    let old = node_identity(dir.path(), "1");
    let b = bound(NodeId(2), &old, tx_b);
    let b_addr = b.local_addr().unwrap();
    let b_stats = b.stats();
    let caller = node_identity(dir.path(), "2");
    let client = quinn::Endpoint::client(loopback()).unwrap();
    assert_eq!(
        served_certificate(&client, &caller, b_addr).await,
        old.cert.to_vec()
    );

    // A connection opened before the reload.
    let open = client
        .connect_with(caller.client_config().unwrap(), b_addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();

    // Renewed with the same key: reloaded.
    certs::issue_node(dir.path(), "1", &hosts, 400).unwrap();
    let renewed = node_identity(dir.path(), "1");
    assert_ne!(renewed.cert, old.cert);
    b.reload(&renewed).unwrap();
    assert_eq!(
        served_certificate(&client, &caller, b_addr).await,
        renewed.cert.to_vec()
    );
    assert_eq!(b.cert_not_after(), certs::not_after(&renewed.cert).unwrap());

    // Another node's key: refused, and the renewed certificate stays.
    let err = b.reload(&node_identity(dir.path(), "2")).unwrap_err();
    assert!(err.to_string().contains("another key"), "{err}");
    assert_eq!(
        served_certificate(&client, &caller, b_addr).await,
        renewed.cert.to_vec()
    );

    // The connection opened before the reload still carries frames.
    let before = TransportStats::get(&b_stats.frames_in);
    let mut s = open.open_uni().await.unwrap();
    let frame = Frame::Raft {
        from: NodeId(1),
        batch: vec![(GroupId(5), (&heartbeat(1, 2).1).into())],
    };
    write_tag(&mut s, StreamKind::Raft).await.unwrap();
    write_frame(&mut s, &frame, MAX_RAFT_FRAME_BYTES)
        .await
        .unwrap();
    s.finish().unwrap();
    wait_for(&b_stats.frames_in, before + 1).await;
    let got = rx_b.recv_timeout(DEADLINE).unwrap();
    assert_eq!(messages(&got.1), vec![heartbeat(1, 2).1]);
    open.close(0u32.into(), b"done");
    b.close();
}

/// A UDP relay on loopback between one dialer and `target`, which the test
/// can cut (every packet dropped, both ways) and heal.
struct Relay {
    /// Where the dialer should send.
    addr: SocketAddr,
    /// Set while the link is cut.
    cut: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::net::UdpSocket;
        let front = Arc::new(UdpSocket::bind(loopback()).await.unwrap());
        let back = Arc::new(UdpSocket::bind(loopback()).await.unwrap());
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let dialer = Arc::new(Mutex::new(None::<SocketAddr>));
        let forward = {
            let (front, back, cut, dialer) =
                (front.clone(), back.clone(), cut.clone(), dialer.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *dialer.lock().unwrap() = Some(from);
                    if !cut.load(Ordering::Relaxed) {
                        let _ = back.send_to(&buf[..n], target).await;
                    }
                }
            })
        };
        let backward = {
            let cut = cut.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, _)) = back.recv_from(&mut buf).await {
                    let to = *dialer.lock().unwrap();
                    if let (Some(to), false) = (to, cut.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            })
        };
        Relay {
            addr,
            cut,
            tasks: vec![forward, backward],
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How long after a link is cut the sender must have noticed: far below
/// QUIC's 5 s idle timeout, which was all that noticed it before.
const NOTICE_WITHIN: Duration = Duration::from_secs(3);
/// Between two looks at a condition being polled.
const POLL: Duration = Duration::from_millis(10);
/// How long after a link heals a batch must get through: what a group
/// needs to elect a leader within 2 s of losing its old one.
const HEALED_WITHIN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_is_redialled_promptly_once_it_heals() {
    let dir = tempfile::tempdir().unwrap();
    let validity = certs::Validity::default();
    certs::create_set(dir.path(), &["127.0.0.1".into()], Some(2), validity, false).unwrap();
    let (tx_b, rx_b) = mpsc::channel();
    let b = bound(NodeId(2), &node_identity(dir.path(), "2"), tx_b);
    let relay = Relay::start(b.local_addr().unwrap()).await;
    let (tx_a, _rx_a) = mpsc::channel();
    let a = bound(NodeId(1), &node_identity(dir.path(), "1"), tx_a);
    a.set_peer(NodeId(2), relay.addr, None);
    deliver(&a, NodeId(2), &rx_b, 1).await;

    for round in 0..2u64 {
        // Cut the link while batches flow, until the sender says the peer
        // is down (its sends stop being accepted).
        relay.set_cut(true);
        let cut_at = Instant::now();
        while a.send_raft(NodeId(2), vec![append(2, 100 + round)]) {
            assert!(
                cut_at.elapsed() < NOTICE_WITHIN,
                "the cut was not noticed within {NOTICE_WITHIN:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        let noticed = cut_at.elapsed();

        // Heal it: the next sends get through promptly.
        relay.set_cut(false);
        while rx_b.try_recv().is_ok() {}
        let healed_at = Instant::now();
        loop {
            a.send_raft(NodeId(2), vec![append(2, 200 + round)]);
            if rx_b.recv_timeout(Duration::from_millis(10)).is_ok() {
                break;
            }
            assert!(
                healed_at.elapsed() < HEALED_WITHIN,
                "nothing got through within {HEALED_WITHIN:?} of the link healing"
            );
        }
        eprintln!(
            "round {round}: cut noticed after {noticed:?}; delivered {:?} after healing",
            healed_at.elapsed()
        );
    }
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_cluster_pins_each_nodes_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_flotilla"));
    let mut out = Vec::new();
    let (procs, _) = flotilla::node::ops::spawn_cluster(exe, 3, dir.path(), Some(1), &mut out)
        .await
        .unwrap();
    let seeds = vec![procs.addrs[0].to_string()];
    let config = flotilla::client::ClientConfig::from_certs_dir(seeds, &procs.certs_dir);
    let client = flotilla::client::Client::new(config).unwrap();
    let catalog = client.refresh_catalog().await.unwrap();
    assert_eq!(catalog.nodes.len(), 3);
    for (i, addr) in procs.addrs.iter().enumerate() {
        let node = catalog
            .nodes
            .values()
            .find(|n| n.addr == addr.to_string())
            .unwrap_or_else(|| panic!("no node at {addr} in {:?}", catalog.nodes));
        let own = node_pin(&procs.certs_dir, &(i + 1).to_string());
        assert_eq!(
            node.spki_sha256,
            own.to_vec(),
            "node {} at {addr}",
            node.id.0
        );
    }
    drop(procs);
}
