//! The in-process demo behind `make run` until real nodes exist: a 3-node
//! simulated cluster, some writes and reads across vshards, a crash and a
//! restart, told in plain words.

use std::io::Write;

use crate::error::Result;
use crate::kv::{Op, Response};
use crate::sim::{Sim, SimConfig};
use crate::types::NodeId;

/// Steps a single demo request may take before it is reported as failed.
const REQUEST_STEPS: u64 = 4_000;

/// Runs the demo, writing its story to `out`.
pub fn run(out: &mut impl Write, keys: u64) -> Result<()> {
    let mut sim = Sim::new(SimConfig::default())?;
    let say = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
    };
    say(
        out,
        format!(
            "Started 3 nodes in one process: group 0 (catalog) + {} data groups, {} vshards.",
            sim.cfg.data_groups, sim.cfg.vshards
        ),
    );
    let elected = sim.run_until(20_000, |s| s.all_have_leaders())?;
    say(
        out,
        format!(
            "Every group elected a leader: {elected} (after {} simulated ticks).",
            sim.now / sim.cfg.steps_per_tick
        ),
    );
    let mut groups = std::collections::BTreeSet::new();
    for i in 0..keys {
        let key = format!("user/{i}");
        groups.insert(sim.catalog.group_of(key.as_bytes()));
        sim.write(
            1,
            i + 1,
            Op::Put {
                key: key.into(),
                value: format!("value-{i}").into(),
            },
            REQUEST_STEPS,
        )?;
    }
    say(
        out,
        format!(
            "Wrote {keys} keys; they landed in {} different groups.",
            groups.len()
        ),
    );
    let g0 = crate::types::CATALOG_GROUP;
    let victim = sim.leader(g0).unwrap_or(NodeId(1));
    sim.crash(victim);
    say(
        out,
        format!("Crashed {victim}, the leader of the catalog group."),
    );
    let r = sim.write(
        1,
        keys + 1,
        Op::Put {
            key: "after-crash".into(),
            value: "still-writable".into(),
        },
        REQUEST_STEPS,
    )?;
    say(
        out,
        format!(
            "A write after the crash: {:?}; the catalog is now led by {:?}.",
            r,
            sim.leader(g0)
        ),
    );
    sim.restart(victim)?;
    let converged = sim.run_until_converged(2_000)?;
    let role = sim
        .driver(victim)
        .and_then(|d| d.status(g0))
        .map(|s| s.role);
    say(out, format!(
        "Restarted {victim} from its own disk: it rejoined as {role:?}; all replicas identical: {converged}."
    ));
    let mut ok = 0;
    for i in 0..keys {
        let key = format!("user/{i}");
        if sim.read(key.as_bytes(), REQUEST_STEPS)? == Some(format!("value-{i}").into_bytes()) {
            ok += 1;
        }
    }
    say(
        out,
        format!("Read back {ok} of {keys} keys with linearizable reads."),
    );
    let cas = sim.write(
        2,
        1,
        Op::Cas {
            key: "user/0".into(),
            expected: Some(b"value-0".to_vec()),
            new: Some(b"swapped".to_vec()),
        },
        REQUEST_STEPS,
    )?;
    let swapped = matches!(cas, Response::Cas { swapped: true, .. });
    say(
        out,
        format!(
            "Compare-and-swap on user/0 from value-0 to swapped: {}.",
            if swapped { "done" } else { "refused" }
        ),
    );
    for id in sim.node_ids() {
        if let Some(d) = sim.driver(id) {
            let leads = d
                .group_ids()
                .filter(|g| {
                    d.status(*g)
                        .is_some_and(|s| s.role == raft::StateRole::Leader)
                })
                .count();
            let stats = d.engine().stats();
            say(out, format!(
                "{id}: leads {leads} groups; {} round commits ({} of them also to redb) since its last start, {} log entries persisted.",
                stats.commits(), stats.redb_commits(), stats.entries()
            ));
        }
    }
    Ok(())
}
