//! Membership on the simulated cluster: a cluster started on one node grows
//! to three replicas per group as nodes join, and a fourth node joining a
//! busy three-node cluster takes its share while every group keeps three
//! voters and no acknowledged write is lost.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use flotilla::catalog::placement;
use flotilla::kv::{Command, Op, Response};
use flotilla::multiraft::DriverConfig;
use flotilla::sim::{Sim, SimConfig};
use flotilla::storage::SnapshotLimits;
use flotilla::types::{GroupId, NodeId, CATALOG_GROUP};

const STEPS: u64 = 40_000;

fn puts(client: u64, from: u64, n: u64) -> Vec<Command> {
    (from..from + n)
        .map(|i| Command {
            client,
            seq: i,
            ack_below: 0,
            fresh: true,
            proposed_ms: 0,
            op: Op::Put {
                key: format!("m{}", i % 200).into_bytes(),
                value: i.to_le_bytes().to_vec(),
            },
        })
        .collect()
}

/// Per group, the voters the live leader's configuration holds.
fn voters(sim: &Sim) -> BTreeMap<GroupId, Vec<NodeId>> {
    sim.group_ids()
        .into_iter()
        .filter_map(|g| {
            let l = sim.leader(g)?;
            Some((g, sim.driver(l)?.status(g)?.voters))
        })
        .collect()
}

/// Placement is done: the catalog needs no more moves, every group's Raft
/// voters are the catalog's, each group has `n` of them, and all members
/// of every group have converged.
fn settled(sim: &Sim, n: usize) -> bool {
    let Some(catalog) = sim
        .leader(CATALOG_GROUP)
        .and_then(|l| sim.driver(l))
        .map(|d| d.catalog().clone())
    else {
        return false;
    };
    if !placement::plan(&catalog, n).is_empty() {
        return false;
    }
    let v = voters(sim);
    v.len() == sim.group_ids().len()
        && v.iter().all(|(g, vs)| {
            let mut want = catalog.groups[g].voters.clone();
            want.sort();
            let mut have = vs.clone();
            have.sort();
            have == want && have.len() == n
        })
        && sim.converged().unwrap_or(false)
        && v.iter().all(|(g, vs)| {
            vs.iter()
                .all(|n| sim.driver(*n).and_then(|d| d.status(*g)).is_some())
        })
}

/// The last value written to each key by `cmds`, as every replica must hold.
fn expected(cmds: &[Command]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for c in cmds {
        if let Op::Put { key, value } = &c.op {
            m.insert(key.clone(), value.clone());
        }
    }
    m
}

fn check_all_replicas(sim: &Sim, want: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for (k, v) in want {
        let g = sim.catalog.group_of(k);
        for n in sim.node_ids() {
            let Some(d) = sim.driver(n) else { continue };
            if d.status(g).is_some_and(|s| s.voters.contains(&n)) {
                assert_eq!(
                    d.engine().get(g, k).unwrap().as_ref(),
                    Some(v),
                    "{n} {g} {:?}",
                    String::from_utf8_lossy(k)
                );
            }
        }
    }
}

#[test]
fn a_one_node_cluster_grows_to_three_replicas_as_nodes_join() {
    let cfg = SimConfig {
        nodes: 1,
        data_groups: 8,
        vshards: 64,
        seed: 21,
        driver: DriverConfig {
            log_keep: 64,
            compact_slack: 16,
            ..DriverConfig::default()
        },
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg).unwrap();
    assert!(sim.run_until(STEPS, |s| s.all_have_leaders()).unwrap());
    let first = puts(1, 1, 300);
    assert!(sim
        .write_many(&first, STEPS)
        .unwrap()
        .iter()
        .all(|r| *r == Response::Written));

    sim.join(NodeId(2), STEPS).unwrap();
    sim.join(NodeId(3), STEPS).unwrap();
    assert!(
        sim.run_until(STEPS, |s| settled(s, 3)).unwrap(),
        "not settled:\n{}",
        sim.describe()
    );
    check_all_replicas(&sim, &expected(&first));

    // The grown cluster survives the loss of the original node.
    sim.crash(NodeId(1));
    let second = puts(1, 1_000, 100);
    assert!(sim
        .write_many(&second, STEPS)
        .unwrap()
        .iter()
        .all(|r| *r == Response::Written));
    sim.restart(NodeId(1)).unwrap();
    assert!(
        sim.run_until(STEPS, |s| settled(s, 3)).unwrap(),
        "not settled:\n{}",
        sim.describe()
    );
    let mut all = first.clone();
    all.extend(second);
    check_all_replicas(&sim, &expected(&all));
}

#[test]
fn a_fourth_node_takes_its_share_under_writes_and_every_group_keeps_three_voters() {
    let cfg = SimConfig {
        data_groups: 16,
        vshards: 128,
        seed: 22,
        // Chunks of a few rows: every snapshot travels in several.
        snapshots: SnapshotLimits {
            chunk_bytes: 128,
            ..SnapshotLimits::default()
        },
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg).unwrap();
    assert!(sim.run_until(STEPS, |s| s.all_have_leaders()).unwrap());
    let first = puts(2, 1, 300);
    sim.write_many(&first, STEPS).unwrap();
    sim.join(NodeId(4), STEPS).unwrap();
    // Writes continue while replicas move.
    let second = puts(2, 1_000, 300);
    assert!(sim
        .write_many(&second, STEPS)
        .unwrap()
        .iter()
        .all(|r| *r == Response::Written));
    assert!(
        sim.run_until(STEPS, |s| settled(s, 3)).unwrap(),
        "not settled:\n{}",
        sim.describe()
    );
    let held = voters(&sim)
        .values()
        .filter(|vs| vs.contains(&NodeId(4)))
        .count();
    // 17 groups x 3 replicas over 4 nodes: 12 or 13 each.
    assert!((12..=13).contains(&held), "node 4 holds {held} replicas");
    let stats = &sim.driver(NodeId(4)).unwrap().engine().snapshots().stats;
    let installs = stats.installs.load(Ordering::Relaxed);
    let chunks = stats.chunks_staged.load(Ordering::Relaxed);
    assert!(
        installs >= 11,
        "data replicas filled by snapshot: {installs}"
    );
    assert!(
        chunks >= 3 * installs,
        "{chunks} chunks for {installs} snapshots"
    );
    let mut all = first.clone();
    all.extend(second);
    check_all_replicas(&sim, &expected(&all));
}

/// Replicas created on joining nodes open before they know their group's
/// voters. Once the original node is gone they are each group's only two
/// voters, and every group must still elect a leader: two replicas whose
/// election timeouts matched must not split the vote term after term.
#[test]
fn the_two_joined_voters_left_after_the_first_node_dies_elect_leaders() {
    for seed in 30..36 {
        let cfg = SimConfig {
            nodes: 1,
            data_groups: 16,
            vshards: 64,
            seed,
            ..SimConfig::default()
        };
        let mut sim = Sim::new(cfg).unwrap();
        assert!(sim.run_until(STEPS, |s| s.all_have_leaders()).unwrap());
        sim.join(NodeId(2), STEPS).unwrap();
        sim.join(NodeId(3), STEPS).unwrap();
        assert!(
            sim.run_until(STEPS, |s| settled(s, 3)).unwrap(),
            "seed {seed}: not settled:\n{}",
            sim.describe()
        );
        sim.crash(NodeId(1));
        // Pre-vote, a few election timeouts, and the catalog's leader too.
        let ticks = 40 * flotilla::multiraft::ELECTION_TICKS as u64;
        let steps = ticks * sim.cfg.steps_per_tick;
        assert!(
            sim.run_until(steps, |s| s.all_have_leaders()).unwrap(),
            "seed {seed}: groups without a leader {ticks} ticks after node 1 died:\n{}",
            sim.describe()
        );
        let after = puts(3, 1, 50);
        assert!(sim
            .write_many(&after, STEPS)
            .unwrap()
            .iter()
            .all(|r| *r == Response::Written));
        assert!(sim
            .run_until(STEPS, |s| s.converged().unwrap_or(false))
            .unwrap());
        check_all_replicas(&sim, &expected(&after));
    }
}
