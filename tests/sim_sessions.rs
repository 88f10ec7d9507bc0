//! Client sessions on the simulated cluster: a long run of one-write
//! clients (as many CLI runs) leaves each group at most its session bound,
//! on every replica alike and across a crash and restart, and sessions idle
//! past the TTL of log time go. Every scenario prints its seed on failure;
//! rerun with the same seed to replay it exactly.

use flotilla::kv::{Command, Op, SessionLimits};
use flotilla::multiraft::DriverConfig;
use flotilla::sim::{Sim, SimConfig};
use flotilla::types::{GroupId, NodeId, CATALOG_GROUP};

const SEED: u64 = 31;
const LIMITS: SessionLimits = SessionLimits {
    max_sessions: 8,
    max_bytes: 1 << 20,
    ttl_ms: 60 * 60 * 1000,
};

fn cluster() -> Sim {
    let mut cfg = SimConfig {
        seed: SEED,
        data_groups: 2,
        ..SimConfig::default()
    };
    cfg.driver = DriverConfig {
        sessions: LIMITS,
        ..cfg.driver
    };
    Sim::with_leaders(cfg, 20_000).expect("a cluster with leaders")
}

/// A first attempt by `client` of a put of `key`, stamped at log time `ms`.
fn put(client: u64, seq: u64, ms: u64, key: Vec<u8>) -> Command {
    Command {
        client,
        seq,
        ack_below: seq,
        fresh: true,
        proposed_ms: ms,
        op: Op::Put {
            key,
            value: b"v".to_vec(),
        },
    }
}

fn data_groups(sim: &Sim) -> Vec<GroupId> {
    let mut g = sim.group_ids();
    g.retain(|g| *g != CATALOG_GROUP);
    g
}

/// The sessions each replica holds, by (node, group); every replica's
/// running count agrees with its rows.
fn sessions(sim: &Sim) -> Vec<(NodeId, GroupId, u64)> {
    let mut out = Vec::new();
    for n in sim.node_ids() {
        let Some(d) = sim.driver(n) else { continue };
        for g in data_groups(sim) {
            let (table, count) = d.engine().sessions_of(g).expect("sessions read");
            assert_eq!(table.count, count, "seed {SEED}: {n} {g}");
            out.push((n, g, count));
        }
    }
    out
}

#[test]
fn a_long_run_of_one_write_clients_leaves_each_group_at_its_bound() {
    let mut sim = cluster();
    let runs: Vec<Command> = (1..=200)
        .map(|c| put(c, 1, c * 1000, format!("run-{c}").into_bytes()))
        .collect();
    sim.write_many(&runs, 200_000)
        .unwrap_or_else(|e| panic!("seed {SEED}: {e}"));
    assert!(
        sim.run_until_converged(4_000).unwrap(),
        "{}",
        sim.describe()
    );
    let after_runs = sessions(&sim);
    assert_eq!(after_runs.len(), 6, "three replicas of two groups");
    for (n, g, count) in &after_runs {
        assert!(
            (1..=LIMITS.max_sessions).contains(count),
            "seed {SEED}: {n} {g} holds {count} sessions"
        );
    }

    // A restarted replica comes back with the same sessions (evictions
    // included), from its flushed rows and its log.
    sim.crash(NodeId(2));
    sim.restart(NodeId(2)).unwrap();
    assert!(
        sim.run_until_converged(4_000).unwrap(),
        "{}",
        sim.describe()
    );
    assert_eq!(sessions(&sim), after_runs, "seed {SEED}");

    // Two hours of log time later, one write per group: every older
    // session is past the TTL and goes.
    let late = 200_000 + 2 * LIMITS.ttl_ms;
    let writes: Vec<Command> = data_groups(&sim)
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let key = (0..)
                .map(|k| format!("late-{k}").into_bytes())
                .find(|k| sim.catalog.group_of(k) == *g)
                .expect("a key");
            put(1_000, i as u64 + 1, late, key)
        })
        .collect();
    sim.write_many(&writes, 100_000).unwrap();
    assert!(
        sim.run_until_converged(4_000).unwrap(),
        "{}",
        sim.describe()
    );
    for (n, g, count) in sessions(&sim) {
        assert_eq!(count, 1, "seed {SEED}: {n} {g}");
    }
}
