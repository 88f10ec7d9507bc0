use super::*;

fn three() -> Vec<(NodeId, String)> {
    (1..=3)
        .map(|i| (NodeId(i), format!("127.0.0.1:{}", 7000 + i)))
        .collect()
}

#[test]
fn bootstrap_spreads_groups_and_vshards_evenly() {
    let c = Catalog::bootstrap(42, 1024, &three(), 32, 3).unwrap();
    assert_eq!(c.groups.len(), 33);
    assert!(c.groups.values().all(|g| g.voters.len() == 3));
    let mut per_group = BTreeMap::new();
    for g in &c.vshards {
        *per_group.entry(*g).or_insert(0) += 1;
    }
    assert_eq!(per_group.len(), 32);
    assert!(per_group.values().all(|&n| n == 32), "{per_group:?}");
}

#[test]
fn vshard_hash_is_stable_and_in_range() {
    // The hash decides on-disk placement: pin a few values.
    assert_eq!(vshard_of(b"", 1024), vshard_of(b"", 1024));
    for i in 0..1000u32 {
        assert!(vshard_of(&i.to_be_bytes(), 1024).0 < 1024);
    }
    assert_eq!(
        vshard_of(b"flotilla", 1024).0 as u64,
        xxhash_rust::xxh3::xxh3_64(b"flotilla") % 1024
    );
}

#[test]
fn creating_a_group_opens_it_only_on_its_members() {
    let mut c = Catalog::bootstrap(1, 64, &three(), 4, 3).unwrap();
    let info = GroupInfo {
        id: GroupId(9),
        voters: vec![NodeId(1), NodeId(2)],
        learners: vec![],
    };
    let epoch = c.epoch;
    let mut other = c.clone();
    let fx = c
        .apply(&CatalogCommand::CreateGroup(info.clone()), NodeId(1))
        .unwrap();
    assert_eq!(
        fx,
        vec![Effect::OpenGroup {
            info: info.clone(),
            fresh: true
        }]
    );
    assert!(other
        .apply(&CatalogCommand::CreateGroup(info), NodeId(3))
        .unwrap()
        .is_empty());
    assert_eq!(c, other, "the catalog itself is the same everywhere");
    assert_eq!(c.epoch, epoch + 1);
}

#[test]
fn invalid_commands_change_nothing() {
    let mut c = Catalog::bootstrap(1, 64, &three(), 4, 3).unwrap();
    let before = c.clone();
    let members = |id: u64, voters: &[u64], learners: &[u64]| GroupInfo {
        id: GroupId(id),
        voters: voters.iter().copied().map(NodeId).collect(),
        learners: learners.iter().copied().map(NodeId).collect(),
    };
    // Every arm that can refuse, with each of its reasons; the catalog
    // (its epoch included) must come out exactly as it went in.
    let bad = [
        CatalogCommand::SetGroupMembers(members(8, &[1, 2], &[])),
        CatalogCommand::SetGroupMembers(members(1, &[], &[2])),
        CatalogCommand::SetGroupMembers(members(1, &[1, 99], &[])),
        CatalogCommand::SetGroupMembers(members(1, &[1, 2], &[2])),
        CatalogCommand::SetGroupMembers(members(1, &[1, 1], &[])),
        CatalogCommand::CreateGroup(members(8, &[], &[])),
        CatalogCommand::CreateGroup(members(8, &[1], &[3, 3])),
        CatalogCommand::PreferLeader {
            group: GroupId(8),
            node: NodeId(1),
        },
        CatalogCommand::AssignVShards {
            first: 3,
            last: 2,
            group: GroupId(1),
        },
        CatalogCommand::AssignVShards {
            first: 0,
            last: 1,
            group: GroupId(8),
        },
        CatalogCommand::CreateGroup(GroupInfo {
            id: GroupId(1),
            voters: vec![NodeId(1)],
            learners: vec![],
        }),
        CatalogCommand::CreateGroup(GroupInfo {
            id: GroupId(8),
            voters: vec![NodeId(99)],
            learners: vec![],
        }),
        CatalogCommand::AssignVShards {
            first: 0,
            last: 64,
            group: GroupId(1),
        },
        CatalogCommand::AssignVShards {
            first: 0,
            last: 1,
            group: CATALOG_GROUP,
        },
        CatalogCommand::SetNodeState {
            node: NodeId(7),
            state: NodeState::Removed,
        },
    ];
    for cmd in bad {
        let refused = c.apply(&cmd, NodeId(1));
        assert!(matches!(refused, Err(Rejection::Invalid(_))), "{cmd:?}");
        assert_eq!(c, before, "{cmd:?}");
    }
}

fn add(addr: &str, store_id: u64) -> CatalogCommand {
    CatalogCommand::AddNode {
        addr: addr.into(),
        spki_sha256: vec![7],
        store_id,
    }
}

#[test]
fn admitting_a_node_assigns_the_next_id_once_per_store() {
    let mut c = Catalog::bootstrap(1, 64, &three(), 4, 3).unwrap();
    assert_eq!(
        c.apply(&add("127.0.0.4:7000", 44), NodeId(1)).unwrap(),
        vec![Effect::NodeAdmitted(NodeId(4))]
    );
    assert_eq!(
        c.apply(&add("127.0.0.4:7000", 44), NodeId(1)).unwrap(),
        vec![Effect::NodeAdmitted(NodeId(4))],
        "a retried join of the same store is admitted once"
    );
    assert_eq!(
        c.apply(&add("127.0.0.5:7000", 55), NodeId(1)).unwrap(),
        vec![Effect::NodeAdmitted(NodeId(5))]
    );
    assert_eq!(c.nodes.len(), 5);
    assert_eq!(c.nodes[&NodeId(4)].store_id, 44);
}

#[test]
fn a_new_store_at_an_old_members_address_is_a_new_node_and_the_old_one_is_dead() {
    let mut c = Catalog::bootstrap(1, 64, &three(), 4, 3).unwrap();
    let addr = c.nodes[&NodeId(2)].addr.clone();
    let fx = c.apply(&add(&addr, 9_999), NodeId(1)).unwrap();
    assert_eq!(fx, vec![Effect::NodeAdmitted(NodeId(4))]);
    assert_eq!(c.nodes[&NodeId(2)].state, NodeState::Dead);
    assert_eq!(c.nodes[&NodeId(4)].state, NodeState::Active);
    assert_eq!(c.nodes[&NodeId(4)].addr, addr);
}

#[test]
fn ids_are_never_reused_and_a_removed_store_never_comes_back() {
    let mut c = Catalog::bootstrap(1, 64, &three(), 4, 3).unwrap();
    c.apply(&add("127.0.0.4:7000", 44), NodeId(1)).unwrap();
    let remove = CatalogCommand::SetNodeState {
        node: NodeId(4),
        state: NodeState::Removed,
    };
    c.apply(&remove, NodeId(1)).unwrap();
    let before = c.clone();
    let refused = c.apply(&add("127.0.0.4:7000", 44), NodeId(1));
    assert!(
        matches!(&refused, Err(crate::error::Rejection::Invalid(m)) if m.contains("--wipe-and-join")),
        "{refused:?}"
    );
    assert_eq!(c, before, "a refused join changes nothing");
    for state in [
        NodeState::Active,
        NodeState::Decommissioning,
        NodeState::Dead,
    ] {
        let back = CatalogCommand::SetNodeState {
            node: NodeId(4),
            state,
        };
        assert!(c.apply(&back, NodeId(1)).is_err(), "{state:?}");
        let alive = CatalogCommand::SetLiveness {
            node: NodeId(4),
            dead: false,
        };
        c.apply(&alive, NodeId(1)).unwrap();
        assert_eq!(c.nodes[&NodeId(4)].state, NodeState::Removed);
    }
    // The same address with a new store: a new id, above every id given.
    assert_eq!(
        c.apply(&add("127.0.0.4:7000", 45), NodeId(1)).unwrap(),
        vec![Effect::NodeAdmitted(NodeId(5))]
    );
}

#[test]
fn liveness_only_moves_between_active_and_dead() {
    let mut c = Catalog::bootstrap(1, 64, &three(), 4, 3).unwrap();
    let live = |node: u64, dead: bool| CatalogCommand::SetLiveness {
        node: NodeId(node),
        dead,
    };
    c.apply(&live(2, true), NodeId(1)).unwrap();
    assert_eq!(c.nodes[&NodeId(2)].state, NodeState::Dead);
    c.apply(&live(2, false), NodeId(1)).unwrap();
    assert_eq!(c.nodes[&NodeId(2)].state, NodeState::Active);
    let decommission = CatalogCommand::SetNodeState {
        node: NodeId(3),
        state: NodeState::Decommissioning,
    };
    c.apply(&decommission, NodeId(1)).unwrap();
    c.apply(&live(3, true), NodeId(1)).unwrap();
    assert_eq!(
        c.nodes[&NodeId(3)].state,
        NodeState::Decommissioning,
        "an observation never overrides an operator's decision"
    );
}

#[test]
fn leaving_a_group_is_an_effect_on_the_node_that_leaves_only() {
    let mut c = Catalog::bootstrap(1, 64, &three(), 4, 3).unwrap();
    let mut info = c.groups[&GroupId(1)].clone();
    info.voters.retain(|n| *n != NodeId(3));
    let cmd = CatalogCommand::SetGroupMembers(info);
    let mut other = c.clone();
    assert_eq!(
        c.apply(&cmd, NodeId(3)).unwrap(),
        vec![Effect::LeaveGroup(GroupId(1))]
    );
    assert!(other.apply(&cmd, NodeId(1)).unwrap().is_empty());
}

#[test]
fn a_preferred_leader_must_be_a_voter() {
    let mut c = Catalog::bootstrap(1, 64, &three(), 4, 2).unwrap();
    let voters = c.groups[&GroupId(2)].voters.clone();
    let outsider = (1..=3).map(NodeId).find(|n| !voters.contains(n)).unwrap();
    let refused = c.apply(
        &CatalogCommand::PreferLeader {
            group: GroupId(2),
            node: outsider,
        },
        NodeId(1),
    );
    assert!(matches!(refused, Err(Rejection::Invalid(_))), "{refused:?}");
    assert!(c.preferred_leaders.is_empty());
    let epoch = c.epoch;
    c.apply(
        &CatalogCommand::PreferLeader {
            group: GroupId(2),
            node: voters[1],
        },
        NodeId(1),
    )
    .unwrap();
    assert_eq!(c.preferred_leaders.get(&GroupId(2)), Some(&voters[1]));
    assert_eq!(c.epoch, epoch + 1);
}

#[test]
fn a_catalog_whose_routing_is_not_whole_is_refused_as_corrupt() {
    let good = Catalog::bootstrap(1, 64, &three(), 4, 3).unwrap();
    assert_eq!(Catalog::decode(&crate::wire::encode(&good)).unwrap(), good);
    let mut short = good.clone();
    short.vshards.pop();
    let mut zero = good.clone();
    zero.vshard_count = 0;
    zero.vshards.clear();
    let mut orphan = good.clone();
    orphan.vshards[3] = GroupId(99);
    let mut catalog_owned = good;
    catalog_owned.vshards[0] = CATALOG_GROUP;
    for bad in [short, zero, orphan, catalog_owned] {
        let r = Catalog::decode(&crate::wire::encode(&bad));
        assert!(
            matches!(
                r,
                Err(Error::Corrupt {
                    what: "catalog",
                    ..
                })
            ),
            "{r:?}"
        );
    }
}
