//! Placement: which nodes should hold each group. A pure function of the
//! catalog, so every run of it on the same catalog proposes the same moves.
//!
//! The plan keeps every group at `replicas` voters drawn from active nodes,
//! prefers the members a group already has (moving data is expensive),
//! fills gaps from the least-loaded nodes, and then evens out load: while
//! one node holds two or more replicas more than another, one replica moves.
//! Group 0 additionally lists every other active or dead node as a learner,
//! so that every node follows the catalog, and a dead node that comes back
//! answers group 0's leader and is seen alive again.
//!
//! A dead node's voters are replaced by live ones when enough active nodes
//! exist; when they do not (three nodes, one dead), the dead voter stays:
//! taking it out would not make the group any safer, and when the node
//! returns it catches up from its own log instead of a snapshot.
//!
//! The plan only states the goal in the catalog; each group's leader walks
//! its Raft membership there one safe step at a time (learner, catch up,
//! voter, then removal), see `multiraft::membership`.

use std::collections::BTreeMap;

use super::{Catalog, CatalogCommand, GroupInfo, NodeState};
use crate::types::{GroupId, NodeId, CATALOG_GROUP};

/// The catalog changes that bring placement to its goal (empty when it is
/// there already).
pub fn plan(catalog: &Catalog, replicas: usize) -> Vec<CatalogCommand> {
    let with_state = |s: NodeState| -> Vec<NodeId> {
        catalog
            .nodes
            .values()
            .filter(|n| n.state == s)
            .map(|n| n.id)
            .collect()
    };
    let active = with_state(NodeState::Active);
    let dead = with_state(NodeState::Dead);
    if active.is_empty() {
        return Vec::new();
    }
    let target = replicas.clamp(1, active.len() + dead.len());
    let mut load: BTreeMap<NodeId, usize> = active.iter().map(|n| (*n, 0)).collect();
    let mut goal: BTreeMap<GroupId, Vec<NodeId>> = BTreeMap::new();
    for g in catalog.groups.values() {
        let keep: Vec<NodeId> = g
            .voters
            .iter()
            .copied()
            .filter(|v| load.contains_key(v))
            .collect();
        for v in &keep {
            *load.entry(*v).or_default() += 1;
        }
        goal.insert(g.id, keep);
    }
    for (gid, voters) in goal.iter_mut() {
        while voters.len() > target {
            let (i, _) = voters
                .iter()
                .enumerate()
                .max_by_key(|(_, v)| (load[*v], **v))
                .expect("non-empty");
            let v = voters.remove(i);
            *load.get_mut(&v).expect("active") -= 1;
        }
        while voters.len() < target {
            if let Some(pick) = least_loaded(&load, voters) {
                voters.push(pick);
                *load.get_mut(&pick).expect("active") += 1;
                continue;
            }
            // No live node left to take the replica: a dead voter keeps it.
            let current = &catalog.groups[gid].voters;
            match current
                .iter()
                .find(|v| dead.contains(v) && !voters.contains(v))
            {
                Some(v) => voters.push(*v),
                None => break,
            }
        }
    }
    // Even out: move one replica from the most to the least loaded node
    // while they differ by two or more. Each move lowers the spread, so the
    // loop ends; the bound is a guard.
    for _ in 0..catalog.groups.len() * active.len() {
        let (&max_n, &max_l) = load
            .iter()
            .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))
            .expect("active");
        let (&min_n, &min_l) = load.iter().min_by_key(|(n, l)| (**l, **n)).expect("active");
        if max_l < min_l + 2 {
            break;
        }
        let Some(voters) = goal
            .values_mut()
            .find(|v| v.contains(&max_n) && !v.contains(&min_n))
        else {
            break;
        };
        let i = voters.iter().position(|v| *v == max_n).expect("contains");
        voters[i] = min_n;
        *load.get_mut(&max_n).expect("active") -= 1;
        *load.get_mut(&min_n).expect("active") += 1;
    }
    let mut cmds = Vec::new();
    for (id, mut voters) in goal {
        voters.sort();
        let learners: Vec<NodeId> = if id == CATALOG_GROUP {
            active
                .iter()
                .chain(&dead)
                .copied()
                .filter(|n| !voters.contains(n))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        let current = &catalog.groups[&id];
        let mut cur_voters = current.voters.clone();
        cur_voters.sort();
        let mut cur_learners = current.learners.clone();
        cur_learners.sort();
        if cur_voters != voters || cur_learners != learners {
            cmds.push(CatalogCommand::SetGroupMembers(GroupInfo {
                id,
                voters,
                learners,
            }));
        }
    }
    cmds
}

fn least_loaded(load: &BTreeMap<NodeId, usize>, exclude: &[NodeId]) -> Option<NodeId> {
    load.iter()
        .filter(|(n, _)| !exclude.contains(n))
        .min_by_key(|(n, l)| (**l, **n))
        .map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::NodeInfo;

    fn catalog(nodes: u64, groups: u64) -> Catalog {
        let ids: Vec<_> = (1..=nodes).map(|i| (NodeId(i), format!("n{i}"))).collect();
        Catalog::bootstrap(1, 64, &ids, groups, 3).unwrap()
    }

    fn apply_all(c: &mut Catalog, cmds: &[CatalogCommand]) {
        for cmd in cmds {
            c.apply(cmd, NodeId(1)).unwrap();
        }
    }

    fn loads(c: &Catalog) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for g in c.groups.values() {
            for v in &g.voters {
                *m.entry(*v).or_default() += 1;
            }
        }
        m
    }

    fn add_node(c: &mut Catalog, id: u64) {
        let info = NodeInfo {
            id: NodeId(id),
            addr: format!("n{id}"),
            spki_sha256: vec![],
            store_id: id,
            state: NodeState::Active,
        };
        c.apply(&CatalogCommand::UpsertNode(info), NodeId(1))
            .unwrap();
    }

    #[test]
    fn a_balanced_catalog_needs_no_change_beyond_catalog_learners() {
        let c = catalog(3, 8);
        assert!(plan(&c, 3).is_empty(), "{:?}", plan(&c, 3));
    }

    #[test]
    fn a_new_node_takes_an_even_share_and_follows_the_catalog() {
        let mut c = catalog(3, 32);
        add_node(&mut c, 4);
        let cmds = plan(&c, 3);
        apply_all(&mut c, &cmds);
        assert!(c.groups.values().all(|g| g.voters.len() == 3));
        let l = loads(&c);
        let (min, max) = (l.values().min().unwrap(), l.values().max().unwrap());
        assert!(max - min <= 1, "{l:?}");
        let g0 = &c.groups[&CATALOG_GROUP];
        assert_eq!(
            g0.voters.len() + g0.learners.len(),
            4,
            "group 0 reaches every node: {g0:?}"
        );
        assert!(plan(&c, 3).is_empty(), "the plan is stable once applied");
    }

    #[test]
    fn a_single_node_cluster_grows_to_three_replicas() {
        let mut c = catalog(1, 4);
        assert!(c.groups.values().all(|g| g.voters == vec![NodeId(1)]));
        add_node(&mut c, 2);
        add_node(&mut c, 3);
        let cmds = plan(&c, 3);
        apply_all(&mut c, &cmds);
        assert!(
            c.groups.values().all(|g| g.voters.len() == 3),
            "{:?}",
            c.groups
        );
    }

    #[test]
    fn a_decommissioning_node_loses_every_replica_and_groups_keep_three() {
        let mut c = catalog(4, 16);
        let cmds = plan(&c, 3);
        apply_all(&mut c, &cmds);
        c.apply(
            &CatalogCommand::SetNodeState {
                node: NodeId(2),
                state: NodeState::Decommissioning,
            },
            NodeId(1),
        )
        .unwrap();
        let cmds = plan(&c, 3);
        apply_all(&mut c, &cmds);
        for g in c.groups.values() {
            assert_eq!(g.voters.len(), 3, "{g:?}");
            assert!(!g.has_replica(NodeId(2)), "{g:?}");
        }
    }

    fn set_dead(c: &mut Catalog, id: u64) {
        let cmd = CatalogCommand::SetLiveness {
            node: NodeId(id),
            dead: true,
        };
        c.apply(&cmd, NodeId(1)).unwrap();
    }

    #[test]
    fn a_dead_nodes_replicas_move_to_live_nodes_when_there_are_enough() {
        let mut c = catalog(4, 16);
        let cmds = plan(&c, 3);
        apply_all(&mut c, &cmds);
        assert!(c.groups.values().any(|g| g.voters.contains(&NodeId(2))));
        set_dead(&mut c, 2);
        let cmds = plan(&c, 3);
        apply_all(&mut c, &cmds);
        for g in c.groups.values().filter(|g| g.id != CATALOG_GROUP) {
            assert_eq!(g.voters.len(), 3, "{g:?}");
            assert!(!g.voters.contains(&NodeId(2)), "{g:?}");
        }
        let g0 = &c.groups[&CATALOG_GROUP];
        assert!(
            g0.learners.contains(&NodeId(2)),
            "a dead node still follows the catalog, so its return is seen: {g0:?}"
        );
        assert!(plan(&c, 3).is_empty(), "stable once applied");
    }

    #[test]
    fn a_dead_voter_stays_when_no_live_node_can_take_its_place() {
        let mut c = catalog(3, 8);
        set_dead(&mut c, 3);
        assert!(
            plan(&c, 3).is_empty(),
            "three nodes, one dead: every group keeps its three voters"
        );
    }

    #[test]
    fn a_dead_node_gets_no_new_replicas_until_it_is_active_again() {
        let mut c = catalog(3, 8);
        set_dead(&mut c, 3);
        add_node(&mut c, 4);
        let cmds = plan(&c, 3);
        apply_all(&mut c, &cmds);
        assert!(c.groups_of(NodeId(3)).all(|g| g.id == CATALOG_GROUP));
        c.apply(
            &CatalogCommand::SetLiveness {
                node: NodeId(3),
                dead: false,
            },
            NodeId(1),
        )
        .unwrap();
        let cmds = plan(&c, 3);
        apply_all(&mut c, &cmds);
        let l = loads(&c);
        assert!(
            l[&NodeId(3)] >= 2,
            "back in service, it takes a share: {l:?}"
        );
    }
}
