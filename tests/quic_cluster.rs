//! Three drivers in one process talking over real QUIC with mutual TLS on
//! loopback: Raft traffic elects leaders, and a client
//! certificate writes and reads keys through the client library, which
//! follows leader hints, and a follower answers with a typed hint (naming
//! the group) instead of serving; two certificates that pick the same
//! client id keep separate sessions.

#[path = "common/drivers.rs"]
mod drivers;

use std::time::Duration;

use drivers::QuicDrivers;
use flotilla::api::{RpcRequest, RpcResponse};
use flotilla::certs::Role;
use flotilla::kv::{Command, Op, Response};
use flotilla::multiraft::DriverConfig;
use flotilla::types::{GroupId, NodeId};
use flotilla::Error;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_quic_elect_and_serve_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = QuicDrivers::start(dir.path(), 256, 8, |id: NodeId| DriverConfig {
        seed: id.0,
        ..DriverConfig::default()
    });
    let catalog = nodes.catalog.clone();

    // The client library, with a client certificate, finds the leaders.
    let client = nodes.client(dir.path(), Role::Client, DEADLINE);

    // Writes succeed once groups have leaders over QUIC; `request` retries
    // and follows hints until then.
    for i in 0..30u64 {
        let key = format!("quic-{i}").into_bytes();
        let group = catalog.group_of(&key);
        let command = Command {
            client: 42,
            seq: i + 1,
            ack_below: i + 1,
            fresh: true,
            proposed_ms: 0,
            op: Op::Put {
                key,
                value: i.to_le_bytes().to_vec(),
            },
        };
        let r = client
            .request(&RpcRequest::Propose { group, command })
            .await;
        assert_eq!(r.unwrap(), RpcResponse::Kv(Response::Written));
    }
    for i in 0..30u64 {
        let key = format!("quic-{i}").into_bytes();
        let group = catalog.group_of(&key);
        let r = client.request(&RpcRequest::Read { group, key }).await;
        assert_eq!(
            r.unwrap(),
            RpcResponse::Kv(Response::Value(Some(i.to_le_bytes().to_vec())))
        );
    }
    // A follower names the leader instead of serving: the redirect keeps
    // its group across the wire.
    let group = GroupId(1);
    let mut answers = Vec::new();
    for addr in nodes.addrs.values() {
        let read = RpcRequest::Read {
            group,
            key: b"quic-0".to_vec(),
        };
        answers.push(client.call_node(*addr, &read).await);
    }
    assert!(
        answers.iter().any(|r| matches!(
            r,
            Err(Error::NotLeader { group: g, leader: Some(_) }) if *g == group
        )),
        "{answers:?}"
    );

    nodes.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_certificates_with_the_same_client_id_do_not_share_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = QuicDrivers::start(dir.path(), 256, 8, |id: NodeId| DriverConfig {
        seed: id.0,
        ..DriverConfig::default()
    });
    let alice = nodes.client(dir.path(), Role::Client, DEADLINE);
    let bob = nodes.client(dir.path(), Role::Admin, DEADLINE);
    let key = b"bound".to_vec();
    let group = nodes.catalog.group_of(&key);
    // Both pick client id 7 and send sequence 1.
    let put = |value: &[u8], fresh: bool| RpcRequest::Propose {
        group,
        command: Command {
            client: 7,
            seq: 1,
            ack_below: 1,
            fresh,
            proposed_ms: 0,
            op: Op::Put {
                key: key.clone(),
                value: value.to_vec(),
            },
        },
    };
    let written = RpcResponse::Kv(Response::Written);
    let value = |v: &[u8]| RpcResponse::Kv(Response::Value(Some(v.to_vec())));
    let read = RpcRequest::Read {
        group,
        key: key.clone(),
    };
    assert_eq!(alice.request(&put(b"alice", true)).await.unwrap(), written);
    // Bob's certificate differs: his write applies, it is not taken for a
    // retry of Alice's.
    assert_eq!(bob.request(&put(b"bob", true)).await.unwrap(), written);
    assert_eq!(alice.request(&read).await.unwrap(), value(b"bob"));
    // Alice's own retry is still deduplicated: Bob's value stays.
    assert_eq!(alice.request(&put(b"alice", false)).await.unwrap(), written);
    assert_eq!(alice.request(&read).await.unwrap(), value(b"bob"));
    nodes.stop();
}
