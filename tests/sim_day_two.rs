//! Day two on the simulated cluster: a node that stays silent is declared
//! dead and its replicas move to the live nodes; when it comes back it is
//! active again, takes a share of replicas, and the replicas it no longer
//! holds are destroyed, rows and Raft state alike, for good.

use std::collections::BTreeSet;

use flotilla::catalog::{Catalog, NodeState};
use flotilla::kv::{Command, Op, Response};
use flotilla::multiraft::DriverConfig;
use flotilla::sim::{Sim, SimConfig};
use flotilla::types::{GroupId, NodeId, CATALOG_GROUP};

const STEPS: u64 = 80_000;
/// Ticks of silence before a node is declared dead in these runs.
const DEAD_AFTER_TICKS: u64 = 100;

fn puts(from: u64, n: u64) -> Vec<Command> {
    (from..from + n)
        .map(|i| Command {
            client: 7,
            seq: i,
            ack_below: 0,
            fresh: true,
            proposed_ms: 0,
            op: Op::Put {
                key: format!("d{}", i % 64).into_bytes(),
                value: i.to_le_bytes().to_vec(),
            },
        })
        .collect()
}

/// The catalog as group 0's leader has applied it.
fn catalog(sim: &Sim) -> Option<Catalog> {
    let l = sim.leader(CATALOG_GROUP)?;
    Some(sim.driver(l)?.catalog().clone())
}

fn state_of(sim: &Sim, node: NodeId) -> Option<NodeState> {
    catalog(sim)?.nodes.get(&node).map(|n| n.state)
}

/// Every data group is led, and its leader's Raft configuration has three
/// voters, none of them `without`.
fn data_groups_led_by_three_voters_without(sim: &Sim, without: NodeId) -> bool {
    sim.group_ids()
        .into_iter()
        .filter(|g| *g != CATALOG_GROUP)
        .all(|g| {
            let Some(s) = sim.leader(g).and_then(|l| sim.driver(l)?.status(g)) else {
                return false;
            };
            s.voters.len() == 3 && !s.voters.contains(&without)
        })
}

/// The node holds exactly the groups its catalog places on it.
fn holds_what_the_catalog_places(sim: &Sim, node: NodeId) -> bool {
    let (Some(c), Some(d)) = (catalog(sim), sim.driver(node)) else {
        return false;
    };
    let placed: BTreeSet<GroupId> = c.groups_of(node).map(|g| g.id).collect();
    let held: BTreeSet<GroupId> = d.group_ids().collect();
    placed == held && d.catalog().epoch == c.epoch
}

#[test]
fn a_silent_node_is_declared_dead_replaced_and_cleaned_up_when_it_returns() {
    let cfg = SimConfig {
        nodes: 4,
        data_groups: 8,
        vshards: 64,
        seed: 41,
        driver: DriverConfig {
            balance_leaders: false,
            dead_after_ticks: DEAD_AFTER_TICKS,
            ..DriverConfig::default()
        },
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg).unwrap();
    assert!(sim.run_until(STEPS, |s| s.all_have_leaders()).unwrap());
    let first = puts(1, 200);
    let ok = sim.write_many(&first, STEPS).unwrap();
    assert!(ok.iter().all(|r| *r == Response::Written));

    let victim = NodeId(4);
    let held_before: BTreeSet<GroupId> = sim
        .driver(victim)
        .unwrap()
        .group_ids()
        .filter(|g| *g != CATALOG_GROUP)
        .collect();
    assert!(!held_before.is_empty());
    sim.crash(victim);

    // Not declared dead before its silence lasted DEAD_AFTER_TICKS.
    sim.run_ticks(DEAD_AFTER_TICKS / 2).unwrap();
    assert_eq!(state_of(&sim, victim), Some(NodeState::Active));
    assert!(
        sim.run_until(STEPS, |s| state_of(s, victim) == Some(NodeState::Dead)
            && data_groups_led_by_three_voters_without(s, victim))
            .unwrap(),
        "the dead node was not replaced:\n{}",
        sim.describe()
    );
    let second = puts(1_000, 100);
    let ok = sim.write_many(&second, STEPS).unwrap();
    assert!(ok.iter().all(|r| *r == Response::Written));

    sim.restart(victim).unwrap();
    assert!(
        sim.run_until(STEPS, |s| state_of(s, victim) == Some(NodeState::Active)
            && holds_what_the_catalog_places(s, victim)
            && s.converged().unwrap_or(false))
            .unwrap(),
        "the returned node did not settle:\n{}",
        sim.describe()
    );
    let d = sim.driver(victim).unwrap();
    let held_now: BTreeSet<GroupId> = d.group_ids().collect();
    assert!(
        held_now.len() > 1,
        "back in service, it takes a share: {held_now:?}"
    );
    let gone: Vec<GroupId> = held_before.difference(&held_now).copied().collect();
    assert!(
        !gone.is_empty(),
        "the scenario must leave some old replica unplaced: {held_before:?} -> {held_now:?}"
    );
    let mut all = first.clone();
    all.extend(second);
    for cmd in &all {
        let g = sim.catalog.group_of(cmd.op.key());
        if gone.contains(&g) {
            assert_eq!(
                d.engine().get(g, cmd.op.key()).unwrap(),
                None,
                "{g}'s rows survived its replica"
            );
        }
    }

    // Destroyed for good: a restart does not bring them back.
    sim.crash(victim);
    sim.restart(victim).unwrap();
    let reopened: BTreeSet<GroupId> = sim.driver(victim).unwrap().group_ids().collect();
    assert!(
        gone.iter().all(|g| !reopened.contains(g)),
        "{gone:?} reopened: {reopened:?}"
    );
    assert!(sim
        .run_until(STEPS, |s| s.converged().unwrap_or(false))
        .unwrap());
}

#[test]
fn a_short_silence_declares_no_one_dead() {
    let cfg = SimConfig {
        nodes: 3,
        data_groups: 4,
        vshards: 64,
        seed: 42,
        driver: DriverConfig {
            balance_leaders: false,
            dead_after_ticks: DEAD_AFTER_TICKS,
            ..DriverConfig::default()
        },
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg).unwrap();
    assert!(sim.run_until(STEPS, |s| s.all_have_leaders()).unwrap());
    let follower = sim
        .node_ids()
        .into_iter()
        .find(|n| Some(*n) != sim.leader(CATALOG_GROUP))
        .unwrap();
    sim.crash(follower);
    sim.run_ticks(DEAD_AFTER_TICKS / 2).unwrap();
    sim.restart(follower).unwrap();
    sim.run_ticks(2 * DEAD_AFTER_TICKS).unwrap();
    assert_eq!(state_of(&sim, follower), Some(NodeState::Active));
    let c = catalog(&sim).unwrap();
    assert!(
        c.groups.values().all(|g| g.voters.len() == 3),
        "{:?}",
        c.groups
    );
}
