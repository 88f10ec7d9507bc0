//! Scenarios of power cuts around a checkpoint: a checkpoint never makes
//! redb durable ahead of the round log.

use super::tests::{append_round, assert_holds_rounds, catalog, group_of, B};
use super::*;

/// A round that applies group 0 up to `index`: it writes to redb, and
/// needs no sync of its own.
fn catalog_apply_round(e: &Engine, index: u64) {
    let round = e.begin_round().unwrap();
    {
        let mut w = round.writer().unwrap();
        assert!(w.set_applied(CATALOG_GROUP, index).unwrap());
    }
    assert!(round.commit(0).unwrap());
}

#[test]
fn power_cuts_at_each_step_of_a_checkpoint_behind_an_unsynced_redb_round_lose_nothing() {
    let disk = MemDisk::new();
    let (e, sync) = Engine::open_backend_behind(disk.clone()).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    let cp = e.checkpointer.clone().unwrap();
    cp.hold(true);
    let mut s = group_of(&e, 1);
    let mut rounds = 0;
    while e.stats().checkpoints() == 0 {
        rounds += 1;
        assert!(rounds < 200, "no checkpoint came due");
        append_round(&e, &mut s, B + rounds, 2048);
    }
    let mut cuts = vec![("checkpoint handed over", disk.crash_image(), false)];
    // Before the checkpoint's transaction opens, a round commits to redb
    // without a sync: the checkpoint's commit will carry it.
    catalog_apply_round(&e, INIT_INDEX + 1);
    cuts.push(("unsynced redb round after it", disk.crash_image(), false));
    sync.hold(true);
    cp.hold(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sync.pending() {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint never reached its sync"
        );
        std::thread::yield_now();
    }
    cuts.push((
        "checkpoint committed, not synced",
        disk.crash_image(),
        false,
    ));
    sync.hold(false);
    cp.wait().unwrap();
    cuts.push(("checkpoint synced", disk.crash_image(), true));
    drop(e);
    for (step, image, applied) in cuts {
        let e = Engine::open_backend(image.clone())
            .unwrap_or_else(|err| panic!("power cut at {step:?}: {err}"));
        if applied {
            assert_eq!(group_of(&e, 0).applied, INIT_INDEX + 1, "{step}");
        }
        drop(e);
        assert_holds_rounds(image, rounds, 2048);
    }
}
