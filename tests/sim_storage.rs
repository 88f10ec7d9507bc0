//! Scenarios of a node's storage on the deterministic simulated cluster:
//! group commit (one commit for a round that persists entries of 32
//! groups) and the catalog group's log compaction. Every scenario prints
//! its seed on failure; rerun with the same seed to replay it exactly.

use flotilla::kv::{Command, Op};
use flotilla::multiraft::{DriverConfig, Proposal};
use flotilla::runtime;
use flotilla::sim::{Sim, SimConfig};
use flotilla::types::{GroupId, NodeId, CATALOG_GROUP};

/// A cluster whose drivers run with `driver`, every group with a leader.
fn cluster_with(seed: u64, driver: DriverConfig) -> Sim {
    let cfg = SimConfig {
        seed,
        driver,
        ..SimConfig::default()
    };
    Sim::with_leaders(cfg, 20_000).expect("a cluster with leaders")
}

/// The first key named `{prefix}{i}` that routes to `group`.
fn key_in(sim: &Sim, group: GroupId, prefix: &str) -> Vec<u8> {
    (0..)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .find(|k| sim.catalog.group_of(k) == group)
        .expect("a key")
}

#[test]
fn a_round_with_entries_for_32_groups_makes_exactly_one_commit() {
    let mut sim = cluster_with(16, SimConfig::default().driver);
    let node = NodeId(1);
    let data: Vec<GroupId> = sim
        .group_ids()
        .into_iter()
        .filter(|g| *g != CATALOG_GROUP)
        .collect();
    assert_eq!(data.len(), 32);
    for g in &data {
        if sim.leader(*g) != Some(node) {
            let l = sim.leader(*g).unwrap();
            sim.driver_mut(l)
                .unwrap()
                .transfer_leader(*g, node)
                .unwrap();
        }
    }
    assert!(sim
        .run_until(20_000, |s| data.iter().all(|g| s.leader(*g) == Some(node)))
        .unwrap());
    sim.run_ticks(2).unwrap();
    let d = sim.driver_mut(node).unwrap();
    let stats = d.engine().stats();
    // Let any leftover work finish so the measured round is ours alone.
    for _ in 0..3 {
        runtime::round(d).unwrap();
    }
    let keys: Vec<Vec<u8>> = data.iter().map(|g| key_in(&sim, *g, "one-round")).collect();
    let d = sim.driver_mut(node).unwrap();
    let (rounds, commits, entries) = (stats.rounds(), stats.commits(), stats.entries());
    let redb = stats.redb_commits();
    for (i, g) in data.iter().enumerate() {
        let p = Proposal::Kv(Command {
            client: 0,
            seq: 0,
            ack_below: 0,
            fresh: true,
            proposed_ms: 0,
            op: Op::Put {
                key: keys[i].clone(),
                value: vec![i as u8],
            },
        });
        d.propose(i as u64 + 1, *g, &p).unwrap();
    }
    let out = runtime::round(d).unwrap();
    assert!(out.committed);
    assert_eq!(stats.rounds() - rounds, 1);
    assert_eq!(
        stats.commits() - commits,
        1,
        "one commit for the whole round"
    );
    assert!(
        stats.redb_commits() - redb <= 1,
        "at most one redb transaction for the whole round"
    );
    assert_eq!(stats.entries() - entries, 32, "one new entry per group");
    let messaged: usize = out
        .outbound
        .values()
        .map(|v| v.iter().filter(|m| !m.msg.entries.is_empty()).count())
        .sum();
    assert_eq!(messaged, 64, "each group's entry goes to both followers");
    assert_eq!(
        out.outbound.len(),
        2,
        "messages are batched per destination node"
    );
}

#[test]
fn the_catalog_groups_log_is_compacted_as_it_applies() {
    let seed = 17;
    let mut sim = cluster_with(
        seed,
        DriverConfig {
            log_keep: 16,
            compact_slack: 8,
            ..SimConfig::default().driver
        },
    );
    let leader = sim.leader(CATALOG_GROUP).unwrap();
    let voters = sim.node_ids();
    for i in 0..60u64 {
        let cmd = flotilla::catalog::CatalogCommand::PreferLeader {
            group: GroupId(1 + i % 32),
            node: voters[(i % 3) as usize],
        };
        sim.submit(leader, CATALOG_GROUP, &Proposal::Catalog(cmd));
    }
    let first_index = |s: &Sim, n: NodeId| {
        s.driver(n)
            .and_then(|d| d.status(CATALOG_GROUP))
            .map_or(0, |st| st.first_index)
    };
    let compacted = sim
        .run_until(20_000, |s| {
            voters
                .iter()
                .all(|n| first_index(s, *n) > flotilla::storage::INIT_INDEX + 1)
        })
        .unwrap();
    assert!(
        compacted,
        "seed {seed}: group 0's log was never compacted: {:?}",
        voters
            .iter()
            .map(|n| sim.driver(*n).and_then(|d| d.status(CATALOG_GROUP)))
            .collect::<Vec<_>>()
    );
}

/// A put of `value` to `key` without a session.
fn put(key: Vec<u8>, value: Vec<u8>) -> Proposal {
    Proposal::Kv(Command {
        client: 0,
        seq: 0,
        ack_below: 0,
        fresh: true,
        proposed_ms: 0,
        op: Op::Put { key, value },
    })
}

#[test]
fn a_follower_back_from_a_crash_catches_up_from_entries_that_left_the_leaders_memory() {
    let seed = 23;
    let mut sim = cluster_with(seed, SimConfig::default().driver);
    let budget = SimConfig::default().memory.raft_cache;
    let group = GroupId(1);
    let leader = sim.leader(group).unwrap();
    let down = sim.node_ids().into_iter().find(|n| *n != leader).unwrap();
    sim.crash(down);
    let keys: Vec<Vec<u8>> = (0..)
        .map(|i| format!("evict-{i}").into_bytes())
        .filter(|k| sim.catalog.group_of(k) == group)
        .take(400)
        .collect();
    // 400 values of 1 KiB, six times the simulation's entry cache, ten a
    // tick; the leader's entries in memory stay near the budget all along.
    let cache = |s: &Sim| s.driver(leader).unwrap().engine().entry_cache();
    let mut peak = 0;
    for chunk in keys.chunks(10) {
        for k in chunk {
            sim.submit(leader, group, &put(k.clone(), vec![k[k.len() - 1]; 1024]));
        }
        sim.run_ticks(1).unwrap();
        peak = peak.max(cache(&sim).used());
    }
    assert_eq!(
        sim.leader(group),
        Some(leader),
        "seed {seed}: the leader moved"
    );
    // Entries wait in memory until a checkpoint puts their record in redb,
    // which the simulation's small round log does every 64 KiB or so.
    assert!(
        peak <= budget + 256 * 1024,
        "seed {seed}: {peak} bytes of entries in memory against a budget of {budget}"
    );
    let reads = cache(&sim).disk_reads();
    sim.restart(down).unwrap();
    assert!(
        sim.run_until_converged(2_000).unwrap(),
        "seed {seed}: the follower never caught up: {}",
        sim.describe()
    );
    assert!(
        cache(&sim).disk_reads() > reads,
        "seed {seed}: the follower was served without reading the log table"
    );
    let follower = sim.driver(down).unwrap();
    let status = follower.status(group).unwrap();
    assert!(
        status.first_index <= flotilla::storage::INIT_INDEX + 1,
        "seed {seed}: caught up by snapshot, not from the log: {status:?}"
    );
}
