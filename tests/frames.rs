//! Frames and streams as a hostile or careless peer would send them, on a
//! node's transport on loopback: a frame over its kind's limit is refused
//! from its length alone, a Raft stream from a client certificate is
//! refused before its body, a frame cut short is counted and one that
//! stops arriving is cut off; streams per connection and connections per
//! certificate are capped. On the sending side, a large Raft batch leaves
//! as several frames under the target with nothing lost, a message over
//! the limit is not sent and the sender hears so, and the largest legal
//! request fits its frame while one byte more is the kv limits' to refuse.

#[path = "common/wire.rs"]
mod wire;

use wire::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla::api::{RpcRequest, RpcResponse};
use flotilla::certs::{self, Role};
use flotilla::kv::{BatchOp, Command, Limits, Op, MAX_BATCH_OPS, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use flotilla::transport::frame::{
    encode_frame, message_bytes, StreamKind, FRAME_STALL, MAX_RAFT_FRAME_BYTES,
    MAX_REQUEST_FRAME_BYTES, MAX_SNAPSHOT_FRAME_BYTES, RAFT_FRAME_TARGET_BYTES,
};
use flotilla::transport::tls::MAX_REQUEST_STREAMS;
use flotilla::transport::{
    RaftMessage, Transport, TransportStats, MAX_CLIENT_CONNECTIONS_PER_CERT,
};
use flotilla::types::{GroupId, NodeId};
use raft::eraftpb::{Entry, Message, MessageType, Snapshot};

/// How long any one expectation may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn certs_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    certs::create(dir.path(), &["127.0.0.1".into()], false).unwrap();
    dir
}

/// A node's transport on loopback; its Raft batches go to the receiver.
fn node(dir: &Path, id: u64) -> (Arc<Transport>, mpsc::Receiver<Delivered>) {
    let (tx, rx) = mpsc::channel();
    let t = Transport::bind(
        NodeId(id),
        "127.0.0.1:0".parse().unwrap(),
        &identity(dir, Role::Node),
    )
    .unwrap();
    t.serve(Arc::new(ChanInbox(Mutex::new(tx))), Arc::new(Done));
    (t, rx)
}

/// A raw QUIC connection to `addr` presenting the certificate of `role`.
async fn dial(
    endpoint: &quinn::Endpoint,
    dir: &Path,
    role: Role,
    addr: SocketAddr,
) -> quinn::Connection {
    let config = identity(dir, role).client_config().unwrap();
    endpoint
        .connect_with(config, addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap()
}

/// A stream's first bytes: its kind's tag and a frame length.
fn opening(kind: StreamKind, declared: usize) -> Vec<u8> {
    let mut b = vec![kind.tag()];
    b.extend_from_slice(&(declared as u32).to_be_bytes());
    b
}

async fn wait_for(counter: &AtomicU64, at_least: u64) {
    wait_for_count(counter, at_least, DEADLINE).await
}

/// Whether a request answered on `conn` (the node still serves it).
async fn answers(conn: &quinn::Connection) -> bool {
    flotilla::transport::rpc::call_on(conn, &RpcRequest::Status)
        .await
        .is_ok_and(|r| r == RpcResponse::Done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_and_wrong_kinds_are_refused_before_their_body() {
    let dir = certs_dir();
    let (t, _rx) = node(dir.path(), 1);
    let addr = t.local_addr().unwrap();
    let stats = t.stats();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let as_node = dial(&endpoint, dir.path(), Role::Node, addr).await;
    let as_client = dial(&endpoint, dir.path(), Role::Client, addr).await;

    // (who, stream direction, first bytes, the counter that must move).
    let over_request = opening(StreamKind::Request, MAX_REQUEST_FRAME_BYTES + 1);
    let over_raft = opening(StreamKind::Raft, MAX_RAFT_FRAME_BYTES + 1);
    let client_raft = opening(StreamKind::Raft, 64 << 20);
    let over_snapshot = opening(StreamKind::Snapshot, MAX_SNAPSHOT_FRAME_BYTES + 1);
    let client_snapshot = opening(StreamKind::Snapshot, 1024);
    let cases: [(&quinn::Connection, bool, &[u8], &AtomicU64); 6] = [
        (&as_client, true, &over_request, &stats.refused_oversize),
        (&as_node, false, &over_raft, &stats.refused_oversize),
        (&as_client, false, &client_raft, &stats.refused_roles),
        (&as_node, false, &over_snapshot, &stats.refused_oversize),
        (&as_client, false, &client_snapshot, &stats.refused_roles),
        (&as_node, true, &[0x7f, 0, 0, 0, 8], &stats.refused_kinds),
    ];
    for (conn, bi, bytes, counter) in cases {
        let before = TransportStats::get(counter);
        let mut send = if bi {
            conn.open_bi().await.unwrap().0
        } else {
            conn.open_uni().await.unwrap()
        };
        // Eight bytes of body follow and the stream stays open: the
        // refusal cannot have waited for the rest. The node may stop the
        // stream before those eight bytes go, failing their write.
        send.write_all(bytes).await.unwrap();
        let _ = send.write_all(&[9; 8]).await;
        wait_for(counter, before + 1).await;
        assert!(answers(conn).await, "the connection still serves requests");
    }
    assert_eq!(TransportStats::get(&stats.refused_stalled), 0);
    t.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_is_counted_and_a_stalled_one_is_cut_off() {
    let dir = certs_dir();
    let (t, _rx) = node(dir.path(), 1);
    let addr = t.local_addr().unwrap();
    let stats = t.stats();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = dial(&endpoint, dir.path(), Role::Node, addr).await;

    // A Raft frame whose stream ends partway.
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&opening(StreamKind::Raft, 100)).await.unwrap();
    s.write_all(&[1; 8]).await.unwrap();
    s.finish().unwrap();
    wait_for(&stats.refused_truncated, 1).await;

    // A request that starts and stops: reset once the stall timeout passes.
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&opening(StreamKind::Request, 1000))
        .await
        .unwrap();
    send.write_all(&[1; 8]).await.unwrap();
    let answer = tokio::time::timeout(DEADLINE, recv.read_to_end(1 << 20)).await;
    assert!(
        matches!(answer, Ok(Err(_))),
        "the stalled stream was not reset: {answer:?}"
    );
    assert!(started.elapsed() >= FRAME_STALL - Duration::from_secs(1));
    wait_for(&stats.refused_stalled, 1).await;

    // A Raft stream may idle between frames, but not within one.
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&opening(StreamKind::Raft, 1000)).await.unwrap();
    wait_for(&stats.refused_stalled, 2).await;
    assert!(answers(&conn).await);
    t.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_and_connections_per_certificate_are_capped() {
    let dir = certs_dir();
    let (t, _rx) = node(dir.path(), 1);
    let addr = t.local_addr().unwrap();
    let stats = t.stats();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();

    // Every request stream the connection allows, each holding half a
    // frame: one more is not granted until one of them ends.
    let conn = dial(&endpoint, dir.path(), Role::Client, addr).await;
    let mut held = Vec::new();
    for _ in 0..MAX_REQUEST_STREAMS {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&opening(StreamKind::Request, 1000))
            .await
            .unwrap();
        held.push((send, recv));
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
    assert!(extra.is_err(), "a stream past the cap was granted");
    let (mut send, _) = held.pop().unwrap();
    send.reset(0u32.into()).unwrap();
    drop(held);
    let granted = tokio::time::timeout(DEADLINE, conn.open_bi()).await;
    assert!(matches!(granted, Ok(Ok(_))), "no stream after one ended");

    // Connections of one certificate, up to the cap (the one above counts).
    let mut open = vec![conn];
    while open.len() < MAX_CLIENT_CONNECTIONS_PER_CERT {
        open.push(dial(&endpoint, dir.path(), Role::Client, addr).await);
    }
    assert!(answers(open.last().unwrap()).await);
    let refused = dial(&endpoint, dir.path(), Role::Client, addr).await;
    let reason = tokio::time::timeout(DEADLINE, refused.closed()).await;
    assert!(
        matches!(&reason, Ok(quinn::ConnectionError::ApplicationClosed(c)) if c.reason.starts_with(b"too many connections")),
        "{reason:?}"
    );
    assert_eq!(TransportStats::get(&stats.refused_connections), 1);
    // Another certificate is not affected, and a closed connection frees
    // its place.
    assert!(answers(&dial(&endpoint, dir.path(), Role::Admin, addr).await).await);
    open.pop().unwrap().close(0u32.into(), b"done");
    let start = Instant::now();
    while !answers(&dial(&endpoint, dir.path(), Role::Client, addr).await).await {
        assert!(
            start.elapsed() < DEADLINE,
            "the freed place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.close();
}

/// An append to `to` of one entry of `bytes` bytes at `index`.
fn big_append(to: u64, index: u64, bytes: usize) -> RaftMessage {
    let msg = Message {
        msg_type: MessageType::MsgAppend,
        from: 1,
        to,
        term: 2,
        index,
        entries: vec![Entry {
            term: 2,
            index: index + 1,
            data: vec![index as u8; bytes].into(),
            ..Default::default()
        }]
        .into(),
        ..Default::default()
    };
    (GroupId(3), msg)
}

/// The group of the messages [`linked`] sends to connect.
const WARM_UP: GroupId = GroupId(99);

/// What `rx` delivers next, without [`linked`]'s warm-up messages.
fn next(rx: &mpsc::Receiver<Delivered>) -> Delivered {
    loop {
        let (from, mut msgs) = rx.recv_timeout(DEADLINE).unwrap();
        msgs.retain(|(g, _)| *g != WARM_UP);
        if !msgs.is_empty() {
            return (from, msgs);
        }
    }
}

/// Two connected nodes: sends a small message from the first until the
/// second receives it.
async fn linked(dir: &Path) -> (Arc<Transport>, Arc<Transport>, mpsc::Receiver<Delivered>) {
    let (a, _) = node(dir, 1);
    let (b, rx) = node(dir, 2);
    a.set_peer(NodeId(2), b.local_addr().unwrap(), None);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "the nodes never connected");
        a.send_raft(NodeId(2), vec![(WARM_UP, big_append(2, 0, 1).1)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if rx.try_recv().is_ok() {
            return (a, b, rx);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_raft_batch_leaves_in_frames_under_the_target_and_arrives_whole() {
    let dir = certs_dir();
    let (a, b, rx) = linked(dir.path()).await;

    // What a follower far behind gets: many 1 MiB appends in one batch.
    let batch: Vec<RaftMessage> = (1..=24).map(|i| big_append(2, i, 1 << 20)).collect();
    assert!(a.send_raft(NodeId(2), batch.clone()));
    let mut got = Vec::new();
    let mut frames = 0;
    while got.len() < batch.len() {
        let (from, msgs) = next(&rx);
        assert_eq!(from, NodeId(1));
        let bytes: usize = msgs.iter().map(|(_, m)| message_bytes(m)).sum();
        assert!(bytes <= RAFT_FRAME_TARGET_BYTES, "a frame of {bytes} bytes");
        frames += 1;
        got.extend(msgs);
    }
    assert_eq!(got, batch, "every message, in order");
    assert!(
        frames >= 24 * (1 << 20) / RAFT_FRAME_TARGET_BYTES,
        "{frames} frames"
    );
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_raft_limit_is_not_sent_and_the_sender_hears_so() {
    let dir = certs_dir();
    let (a, b, rx) = linked(dir.path()).await;

    let snapshot = Snapshot {
        data: vec![0; MAX_RAFT_FRAME_BYTES + 1].into(),
        ..Default::default()
    };
    let huge = Message {
        msg_type: MessageType::MsgSnapshot,
        from: 1,
        to: 2,
        term: 2,
        snapshot: protobuf::SingularPtrField::some(snapshot),
        ..Default::default()
    };
    let small = big_append(2, 40, 10);
    let sent = a.send_raft(NodeId(2), vec![(GroupId(3), huge), small.clone()]);
    assert!(
        !sent,
        "the driver must hear that the batch was not delivered"
    );
    assert_eq!(TransportStats::get(&a.stats().oversize_outbound), 1);
    // The message that fits still goes.
    let (_, msgs) = next(&rx);
    assert_eq!(msgs, vec![small]);
    a.close();
    b.close();
}

#[test]
fn the_largest_legal_request_fits_its_frame_and_one_byte_more_is_for_the_kv_limits() {
    let limits = Limits::default();
    let propose = |op: Op| RpcRequest::Propose {
        group: GroupId(1),
        command: Command {
            client: u64::MAX,
            seq: u64::MAX,
            ack_below: u64::MAX,
            fresh: true,
            proposed_ms: u64::MAX,
            op,
        },
    };
    let key = vec![b'k'; MAX_KEY_BYTES];
    let cas = |value: usize| Op::Cas {
        key: key.clone(),
        expected: Some(vec![1; value]),
        new: Some(vec![2; value]),
    };
    // A batch as large as the kv limits allow: the most operations, the
    // most bytes of keys and values.
    let mut ops = vec![BatchOp::Delete { key: vec![b'd'] }; MAX_BATCH_OPS - 64];
    ops.extend((0..63).map(|_| BatchOp::Delete { key: key.clone() }));
    let keys: usize = ops.iter().map(|o| o.key().len()).sum::<usize>() + MAX_KEY_BYTES;
    let value = MAX_VALUE_BYTES + 64 * MAX_KEY_BYTES - keys;
    ops.push(BatchOp::Put {
        key: key.clone(),
        value: vec![3; value],
    });
    let batch = Op::Batch { ops };

    for op in [cas(MAX_VALUE_BYTES), batch] {
        limits.check(&op).unwrap();
        let framed = encode_frame(&propose(op), MAX_REQUEST_FRAME_BYTES);
        assert!(framed.is_ok(), "{:?}", framed.err());
    }
    // One byte more: still a frame, so the node reads it and its kv
    // limits refuse it with their own error.
    let over = cas(MAX_VALUE_BYTES + 1);
    assert!(matches!(
        limits.check(&over),
        Err(flotilla::Error::ValueTooLarge { .. })
    ));
    assert!(encode_frame(&propose(over), MAX_REQUEST_FRAME_BYTES).is_ok());
}
