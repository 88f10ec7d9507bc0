use crate::runtime;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};

use super::*;
use crate::catalog::{GroupInfo, NodeState};
use crate::kv::Op;
use crate::sim::{Sim, SimConfig};
use crate::types::CATALOG_GROUP;

pub(super) fn cluster(seed: u64) -> Sim {
    let cfg = SimConfig {
        seed,
        data_groups: 4,
        vshards: 64,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg).unwrap();
    assert!(sim.run_until(20_000, |s| s.all_have_leaders()).unwrap());
    sim
}

pub(super) fn put(key: &[u8], value: Vec<u8>) -> Proposal {
    Proposal::Kv(Command {
        client: 0,
        seq: 0,
        ack_below: 0,
        fresh: true,
        proposed_ms: 0,
        op: Op::Put {
            key: key.to_vec(),
            value,
        },
    })
}

#[test]
fn a_follower_refuses_requests_and_names_the_leader() {
    let mut sim = cluster(1);
    let g = GroupId(1);
    let leader = sim.leader(g).unwrap();
    let follower = sim.node_ids().into_iter().find(|n| *n != leader).unwrap();
    assert!(sim
        .run_until(1_000, |s| s
            .driver(follower)
            .unwrap()
            .leader_of(g)
            .is_some())
        .unwrap());
    let d = sim.driver_mut(follower).unwrap();
    let err = d.propose(1, g, &put(b"k", vec![1])).unwrap_err();
    assert!(
        matches!(err, Error::NotLeader { group, leader: Some(l) } if group == g && l == leader),
        "{err}"
    );
    let err = d.read(2, g, b"k").unwrap_err();
    assert!(matches!(err, Error::NotLeader { .. }), "{err}");
    let err = d.propose(3, GroupId(99), &put(b"k", vec![1])).unwrap_err();
    assert!(matches!(err, Error::UnknownGroup(GroupId(99))), "{err}");
}

#[test]
fn an_oversize_value_is_refused_before_it_is_proposed() {
    let mut sim = cluster(2);
    let g = GroupId(2);
    let leader = sim.leader(g).unwrap();
    let d = sim.driver_mut(leader).unwrap();
    let last = d.status(g).unwrap().last_index;
    let err = d
        .propose(
            1,
            g,
            &put(b"k", vec![0; crate::kv::Limits::default().max_value + 1]),
        )
        .unwrap_err();
    assert!(matches!(err, Error::ValueTooLarge { .. }), "{err}");
    let err = d.propose(2, g, &put(&[b'k'; 4097], vec![])).unwrap_err();
    assert!(
        matches!(
            err,
            Error::KeyTooLarge {
                len: 4097,
                max: 4096
            }
        ),
        "{err}"
    );
    runtime::round(d).unwrap();
    assert_eq!(
        d.status(g).unwrap().last_index,
        last,
        "nothing reached the log"
    );
}

#[test]
fn a_group_created_through_the_catalog_opens_on_its_members_and_serves() {
    let mut sim = cluster(3);
    let new = GroupInfo {
        id: GroupId(50),
        voters: vec![NodeId(1), NodeId(2)],
        learners: vec![],
    };
    let leader0 = sim.leader(CATALOG_GROUP).unwrap();
    let t = sim.submit(
        leader0,
        CATALOG_GROUP,
        &Proposal::Catalog(CatalogCommand::CreateGroup(new.clone())),
    );
    assert!(sim
        .run_until(4_000, |s| s.completions.contains_key(&t))
        .unwrap());
    assert!(matches!(
        sim.completions.remove(&t),
        Some(Ok(Reply::Catalog))
    ));
    assert!(sim
        .run_until(20_000, |s| s.leader(new.id).is_some())
        .unwrap());
    // Its members open it, with the catalog that created it persisted first;
    // placement then gives it a third replica like every other group.
    for n in &new.voters {
        let d = sim.driver(*n).unwrap();
        let persisted = d.engine().catalog().unwrap().unwrap();
        assert!(
            persisted.groups.contains_key(&new.id),
            "{n} persisted the catalog"
        );
        assert!(d.status(new.id).is_some(), "{n} opened the group");
    }
    assert!(sim
        .run_until(20_000, |s| s
            .leader(new.id)
            .and_then(|l| s.driver(l)?.status(new.id))
            .is_some_and(|st| st.voters.len() == 3))
        .unwrap());
    // It serves the keys of the vshards it is given.
    let v = sim.driver(leader0).unwrap().catalog().vshard(b"fresh").0;
    let leader0 = sim.leader(CATALOG_GROUP).unwrap();
    let t = sim.submit(
        leader0,
        CATALOG_GROUP,
        &Proposal::Catalog(CatalogCommand::AssignVShards {
            first: v,
            last: v,
            group: new.id,
        }),
    );
    assert!(sim
        .run_until(4_000, |s| s.completions.contains_key(&t))
        .unwrap());
    let l = sim.leader(new.id).unwrap();
    assert!(sim
        .run_until(4_000, |s| s
            .driver(l)
            .is_some_and(|d| d.catalog().group_of(b"fresh") == new.id))
        .unwrap());
    let t = sim.submit(l, new.id, &put(b"fresh", b"yes".to_vec()));
    assert!(sim
        .run_until(4_000, |s| s.completions.contains_key(&t))
        .unwrap());
    assert!(matches!(
        sim.completions.remove(&t),
        Some(Ok(Reply::Kv(Response::Written)))
    ));
    // A member restarted from disk still holds the group.
    sim.crash(NodeId(2));
    sim.restart(NodeId(2)).unwrap();
    assert!(sim.driver(NodeId(2)).unwrap().status(new.id).is_some());
    // A command that does not fit the catalog is refused on every replica alike.
    let bad = CatalogCommand::SetNodeState {
        node: NodeId(9),
        state: NodeState::Removed,
    };
    let leader0 = sim.leader(CATALOG_GROUP).unwrap();
    let t = sim.submit(leader0, CATALOG_GROUP, &Proposal::Catalog(bad));
    assert!(sim
        .run_until(4_000, |s| s.completions.contains_key(&t))
        .unwrap());
    assert!(matches!(
        sim.completions.remove(&t),
        Some(Err(Error::Invalid(_)))
    ));
}

#[test]
fn reads_are_batched_into_one_read_index_per_group_per_round() {
    let mut sim = cluster(4);
    let g = GroupId(1);
    let leader = sim.leader(g).unwrap();
    // A new leader serves ReadIndex once its first entry of the term commits;
    // wait until every replica follows it and that entry applied.
    let settled = |s: &Sim| {
        let all_follow = s
            .node_ids()
            .iter()
            .all(|n| s.driver(*n).and_then(|d| d.leader_of(g)) == Some(leader));
        all_follow
            && s.driver(leader)
                .and_then(|d| d.status(g))
                .is_some_and(|st| st.applied == st.last_index)
    };
    assert!(sim.run_until(1_000, settled).unwrap());
    let d = sim.driver_mut(leader).unwrap();
    for t in 0..10 {
        d.read(100 + t, g, b"nothing").unwrap();
    }
    let out = runtime::round(d).unwrap();
    let heartbeats = out
        .outbound
        .values()
        .flatten()
        .filter(|m| {
            m.group == g && m.msg.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat
        })
        .count();
    assert_eq!(
        heartbeats, 2,
        "one ReadIndex heartbeat to each follower for all ten reads"
    );
    // Deliver what the measured round sent, as the sim's own steps would.
    for (to, msgs) in out.outbound {
        sim.net.send(&mut sim.rng, sim.now, leader, to, msgs);
    }
    assert!(sim
        .run_until(1_000, |s| (100..110)
            .all(|t| s.completions.contains_key(&t)))
        .unwrap());
    for t in 100..110 {
        let got = sim.completions.get(&t);
        assert!(
            matches!(got, Some(Ok(Reply::Kv(Response::Value(None))))),
            "{got:?}\n{}",
            sim.describe()
        );
    }
}

/// Followers that group `g`'s appends in a round's output go to, with the
/// entries those appends carry (an empty append counts, with none).
fn appends_of(out: &RoundOutput, g: GroupId) -> BTreeMap<NodeId, usize> {
    let mut per = BTreeMap::new();
    for (to, msgs) in &out.outbound {
        for m in msgs.iter().filter(|m| m.group == g) {
            if m.msg.get_msg_type() == raft::eraftpb::MessageType::MsgAppend {
                *per.entry(*to).or_default() += m.msg.entries.len();
            }
        }
    }
    per
}

#[test]
fn a_data_groups_commit_sends_no_append_of_its_own() {
    let mut sim = cluster(7);
    let g = GroupId(3);
    let leader = sim.leader(g).unwrap();
    let followers: Vec<NodeId> = sim
        .node_ids()
        .into_iter()
        .filter(|n| *n != leader)
        .collect();
    // Let every replica settle, so what follows is only the new writes.
    sim.run_ticks(50).unwrap();

    let d = sim.driver_mut(leader).unwrap();
    let keys: Vec<Vec<u8>> = (0..10_000u64)
        .map(|i| format!("k{i}").into_bytes())
        .filter(|k| d.catalog().group_of(k) == g)
        .take(20)
        .collect();
    assert_eq!(keys.len(), 20);
    for (i, k) in keys.iter().enumerate() {
        d.propose(100 + i as u64, g, &put(k, vec![7; 64])).unwrap();
    }
    let out = runtime::round(d).unwrap();
    let appends = appends_of(&out, g);
    for f in &followers {
        assert_eq!(appends.get(f), Some(&20), "to {f:?}: {appends:?}");
    }

    // The followers persist the entries and acknowledge them; the
    // acknowledgements move the leader's commit index, which must not send
    // another (empty) append to anyone.
    let mut acks = Vec::new();
    for f in &followers {
        let fd = sim.driver_mut(*f).unwrap();
        fd.step(out.outbound.get(f).cloned().unwrap_or_default());
        let fo = runtime::round(fd).unwrap();
        acks.extend(fo.outbound.get(&leader).cloned().unwrap_or_default());
    }
    let d = sim.driver_mut(leader).unwrap();
    let before = d.status(g).unwrap().commit;
    d.step(acks);
    let out = runtime::round(d).unwrap();
    assert!(d.status(g).unwrap().commit >= before + 20);
    assert!(appends_of(&out, g).is_empty(), "{:?}", appends_of(&out, g));
}

/// The first key named `{prefix}{i}` that routes to `g`.
fn key_in(sim: &Sim, g: GroupId, prefix: &str) -> Vec<u8> {
    (0..10_000)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .find(|k| sim.catalog.group_of(k) == g)
        .expect("some key routes to every group")
}

/// The voters of `g` on every live node.
fn voters_everywhere(sim: &Sim, g: GroupId) -> Vec<(NodeId, Vec<NodeId>)> {
    sim.node_ids()
        .into_iter()
        .filter_map(|n| Some((n, sim.driver(n)?.status(g)?.voters)))
        .collect()
}

#[test]
fn a_membership_change_raft_refuses_is_skipped_alike_and_the_group_keeps_serving() {
    let mut sim = cluster(5);
    let g = GroupId(1);
    let leader = sim.leader(g).unwrap();
    let voters = sim.driver(leader).unwrap().status(g).unwrap().voters;
    assert_eq!(voters.len(), 3);
    // Removing every voter at once: raft-rs takes the proposal into the
    // log, and refuses it when it applies, on every replica.
    let steps: Vec<ConfChangeSingle> = voters
        .iter()
        .map(|v| ConfChangeSingle {
            change_type: ConfChangeType::RemoveNode,
            node_id: v.0,
            ..Default::default()
        })
        .collect();
    let cc = ConfChangeV2 {
        changes: steps.into(),
        ..Default::default()
    };
    let d = sim.driver_mut(leader).unwrap();
    d.propose_conf_change(1_000, g, cc).unwrap();
    let index = d.groups[&g].node.raft.raft_log.last_index();

    assert!(sim
        .run_until(4_000, |s| s.completions.contains_key(&1_000))
        .unwrap());
    let answer = sim.completions.remove(&1_000).unwrap();
    assert!(
        matches!(&answer, Err(Error::Invalid(m)) if m.contains("membership change refused")),
        "{answer:?}"
    );
    assert!(sim
        .run_until(4_000, |s| s.node_ids().iter().all(|n| s
            .driver(*n)
            .and_then(|d| d.status(g))
            .is_some_and(|st| st.applied >= index)))
        .unwrap());
    let unchanged: Vec<_> = sim
        .node_ids()
        .into_iter()
        .map(|n| (n, voters.clone()))
        .collect();
    assert_eq!(voters_everywhere(&sim, g), unchanged);
    let key = key_in(&sim, g, "after-refusal-");
    let put = |v: &str| Op::Put {
        key: key.clone(),
        value: v.into(),
    };
    assert_eq!(
        sim.write(7, 1, put("one"), 4_000).unwrap(),
        Response::Written
    );

    // Every node restarts from its own disk, where the refused change may
    // still wait to be applied again; each refuses it again and serves.
    for n in sim.node_ids() {
        sim.crash(n);
    }
    for n in sim.node_ids() {
        sim.restart(n).unwrap();
    }
    assert!(sim.run_until(20_000, |s| s.leader(g).is_some()).unwrap());
    assert_eq!(
        sim.write(7, 2, put("two"), 4_000).unwrap(),
        Response::Written
    );
    assert_eq!(sim.read(&key, 4_000).unwrap(), Some(b"two".to_vec()));
    assert_eq!(voters_everywhere(&sim, g), unchanged);
}

#[test]
fn a_read_at_a_freshly_elected_leader_is_served_without_waiting_out_its_timeout() {
    let mut sim = cluster(6);
    let g = GroupId(2);
    let old = sim.leader(g).unwrap();
    let next = sim.node_ids().into_iter().find(|n| *n != old).unwrap();
    let caught_up = |s: &Sim| {
        let last = |n| {
            s.driver(n)
                .and_then(|d| d.status(g))
                .map(|st| st.last_index)
        };
        last(next) == last(old)
    };
    assert!(sim.run_until(4_000, caught_up).unwrap());
    sim.driver_mut(old)
        .unwrap()
        .transfer_leader(g, next)
        .unwrap();
    let leads = |s: &Sim| {
        s.driver(next)
            .and_then(|d| d.status(g))
            .is_some_and(|st| st.role == StateRole::Leader)
    };
    assert!(sim.run_until(1_000, leads).unwrap());
    // It leads, but no entry of its term has committed yet: raft-rs would
    // drop a ReadIndex asked of it now.
    let raft = &sim.driver(next).unwrap().groups[&g].node.raft;
    assert!(!raft.commit_to_current_term());

    let start = sim.now;
    let t = sim.submit_read(next, g, b"anything");
    let timeout = sim.cfg.driver.read_timeout_ticks;
    let per_tick = sim.cfg.steps_per_tick;
    assert!(sim
        .run_until(timeout * per_tick * 2, |s| s.completions.contains_key(&t))
        .unwrap());
    let ticks = (sim.now - start).div_ceil(per_tick);
    let got = sim.completions.remove(&t);
    assert!(
        matches!(got, Some(Ok(Reply::Kv(Response::Value(None))))),
        "{got:?} after {ticks} ticks"
    );
    assert!(
        ticks * 10 <= timeout,
        "answered after {ticks} ticks; the read timeout is {timeout}"
    );
}

#[test]
fn a_session_row_that_does_not_decode_stops_the_leader_instead_of_answering() {
    let mut sim = cluster(8);
    let g = GroupId(3);
    let victim = sim.leader(g).unwrap();
    let client = 4_242;
    // While the node is down, its own disk grows a session row for a
    // client no replica has seen, in bytes that do not decode as one.
    sim.crash(victim);
    {
        let disk = &sim.nodes[&victim].disk;
        let db = redb::Database::builder()
            .create_with_backend(disk.db_file())
            .unwrap();
        let sessions: redb::TableDefinition<(u64, u64), &[u8]> =
            redb::TableDefinition::new("sessions");
        let txn = db.begin_write().unwrap();
        txn.open_table(sessions)
            .unwrap()
            .insert((g.0, client), &[0xFF_u8; 3][..])
            .unwrap();
        txn.commit().unwrap();
    }
    sim.restart(victim).unwrap();
    let settled = |s: &Sim| {
        let last = |n| {
            s.driver(n)
                .and_then(|d| d.status(g))
                .map(|st| st.last_index)
        };
        s.leader(g).is_some_and(|l| last(l) == last(victim))
    };
    assert!(sim.run_until(20_000, settled).unwrap());
    let l = sim.leader(g).unwrap();
    if l != victim {
        sim.driver_mut(l)
            .unwrap()
            .transfer_leader(g, victim)
            .unwrap();
    }
    assert!(sim
        .run_until(1_000, |s| s.leader(g) == Some(victim))
        .unwrap());

    let key = key_in(&sim, g, "faulty-");
    let cmd = Command {
        client,
        seq: 1,
        ack_below: 0,
        fresh: true,
        proposed_ms: 0,
        op: Op::Put {
            key,
            value: b"v".to_vec(),
        },
    };
    let t = sim.submit(victim, g, &Proposal::Kv(cmd));
    let mut stopped = None;
    for _ in 0..4_000 {
        if sim.completions.contains_key(&t) {
            break;
        }
        if let Err(e) = sim.step() {
            stopped = Some(e);
            break;
        }
    }
    let answered = sim.completions.get(&t);
    assert!(
        answered.is_none(),
        "the fault became an answer: {answered:?}"
    );
    let e = stopped.expect("the victim's round fails");
    assert!(
        matches!(
            e,
            Error::Corrupt {
                what: "client session",
                ..
            }
        ),
        "{e}"
    );
}
