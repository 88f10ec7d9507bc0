//! The driver as a state machine: what a round hands back before and after
//! its batch is persisted.

use super::tests::{cluster, put};
use super::*;
use crate::runtime;
use raft::eraftpb::MessageType;

/// A follower's acknowledgement of new entries waits in the [`Ready`]
/// until the engine hands out proof that the batch is durable; the
/// leader's appends leave at once, before its own batch is persisted; and
/// `ready` itself writes nothing: the round's writes are all in its batch.
#[test]
fn acknowledgements_wait_for_the_batch_and_appends_do_not() {
    let mut sim = cluster(11);
    let g = GroupId(1);
    let leader = sim.leader(g).unwrap();
    let follower = sim.node_ids().into_iter().find(|n| *n != leader).unwrap();
    sim.run_ticks(50).unwrap();

    let d = sim.driver_mut(leader).unwrap();
    let key = (0..10_000u64)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| d.catalog().group_of(k) == g)
        .unwrap();
    d.propose(1, g, &put(&key, vec![1; 16])).unwrap();
    let stats = d.engine().stats();
    let before = (
        stats.commits(),
        stats.redb_commits(),
        stats.syncs(),
        stats.entries(),
    );
    let mut ready = d.ready().unwrap();
    assert_eq!(
        (
            stats.commits(),
            stats.redb_commits(),
            stats.syncs(),
            stats.entries()
        ),
        before,
        "ready() stages its writes and makes none"
    );
    let appends: Vec<GroupMessage> = ready
        .out
        .outbound
        .get(&follower)
        .cloned()
        .unwrap_or_default();
    assert!(
        appends
            .iter()
            .any(|m| m.msg.get_msg_type() == MessageType::MsgAppend),
        "the leader's append is out before its batch is persisted"
    );
    let batch = ready.take_batch().unwrap();
    assert!(batch.needs_sync() && batch.entries() == 1);
    let persisted = d.engine().persist(batch).unwrap();
    d.on_persisted(ready, persisted).unwrap();

    let fd = sim.driver_mut(follower).unwrap();
    fd.step(appends);
    let mut ready = fd.ready().unwrap();
    assert!(
        ready.out.outbound.get(&leader).is_none_or(|m| m
            .iter()
            .all(|m| m.msg.get_msg_type() != MessageType::MsgAppendResponse)),
        "no acknowledgement before the batch is durable"
    );
    assert!(ready.waiting_messages() > 0);
    let batch = ready.take_batch().unwrap();
    assert!(batch.needs_sync(), "new entries must be synced");
    let mut released = 0;
    let persisted = fd
        .engine()
        .persist_then(batch, |durable| {
            ready.release(durable);
            released = ready.out.outbound.get(&leader).map_or(0, Vec::len);
        })
        .unwrap();
    assert!(
        released > 0,
        "the acknowledgement leaves once it is durable"
    );
    assert_eq!(ready.waiting_messages(), 0);
    let out = fd.on_persisted(ready, persisted).unwrap();
    assert!(out.committed);
}

/// A round with nothing to do stages an empty batch, which the engine
/// neither logs nor syncs.
#[test]
fn an_idle_round_writes_nothing() {
    let mut sim = cluster(12);
    sim.run_ticks(50).unwrap();
    let node = sim.node_ids()[0];
    let d = sim.driver_mut(node).unwrap();
    runtime::round(d).unwrap();
    let stats = d.engine().stats();
    let (commits, syncs) = (stats.commits(), stats.syncs());
    let mut ready = d.ready().unwrap();
    let batch = ready.take_batch().unwrap();
    assert!(batch.is_empty());
    let persisted = d.engine().persist(batch).unwrap();
    assert!(!persisted.committed);
    d.on_persisted(ready, persisted).unwrap();
    assert_eq!((stats.commits(), stats.syncs()), (commits, syncs));
}
