//! The round log's checkpoints: log rows reaching redb only there, the
//! checkpoint thread, and power cuts around it.

use raft::eraftpb::Entry;
use raft::Storage as _;

use super::tests::{
    append_round, apply_round, bootstrapped, catalog, entry, group_of, scan_all, B,
};
use super::*;
use crate::types::{GroupId, NodeId};
use redb::{ReadableDatabase, ReadableTable};
use schema::{LOG, META, META_LOG_ROWS_APPLIED};

/// Opens `disk` and checks that group 1 holds exactly the `rounds` entries
/// [`append_round`] wrote, each of `bytes` bytes.
pub(super) fn assert_holds_rounds(disk: MemDisk, rounds: u64, bytes: usize) {
    let e = Engine::open_backend(disk).unwrap();
    let s = group_of(&e, 1);
    assert_eq!(s.last_index().unwrap(), B + rounds);
    let got = s
        .entries(
            B + 1,
            B + rounds + 1,
            None,
            raft::GetEntriesContext::empty(false),
        )
        .unwrap();
    assert!(got
        .iter()
        .all(|en| en.data.len() == bytes && en.data[0] == en.index as u8));
}

#[test]
fn synced_rounds_reach_the_round_log_not_redb_and_survive_a_crash() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let stats = e.stats();
    let (syncs, commits, redb) = (stats.syncs(), stats.commits(), stats.redb_commits());
    let mut s = group_of(&e, 1);
    for i in 1..=10 {
        append_round(&e, &mut s, B + i, 100);
    }
    assert_eq!(stats.commits() - commits, 10, "one commit per round");
    assert_eq!(
        stats.redb_commits(),
        redb,
        "rounds of log entries alone leave redb alone"
    );
    assert_eq!(stats.syncs() - syncs, 10, "one fsync per round");
    assert_eq!(stats.checkpoints(), 0, "no redb commit was synced");
    // Power cut: redb rolls back to the bootstrap; the log brings it back.
    let image = disk.crash_image();
    drop(e);
    let e = Engine::open_backend(image.clone()).unwrap();
    assert_eq!(group_of(&e, 1).last_index().unwrap(), B + 10);
    // Opening replayed and checkpointed: reopening after another power cut
    // needs no log.
    drop(e);
    let e = Engine::open_backend(image.crash_image()).unwrap();
    assert_eq!(group_of(&e, 1).last_index().unwrap(), B + 10);
}

#[test]
fn the_log_checkpoints_into_redb_and_starts_again_losing_nothing() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    // 2 KiB a round: the 64 KiB log of the in-memory disk fills in about
    // 32 rounds, so 100 rounds pass several checkpoints.
    for i in 1..=100 {
        append_round(&e, &mut s, B + i, 2048);
    }
    let checkpoints = e.stats().checkpoints();
    assert!((2..=4).contains(&checkpoints), "{checkpoints} checkpoints");
    let image = disk.crash_image();
    drop(e);
    assert_holds_rounds(image, 100, 2048);
}

#[test]
fn a_round_log_that_does_not_continue_the_database_is_refused() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    append_round(&e, &mut s, B + 1, 10);
    let image = disk.crash_image();
    drop(e);
    // A log whose first record is far past what the database holds: some
    // records in between are missing.
    let mut foreign = super::wal::Wal::new(image.log_backends(), WalConfig::MEMORY);
    foreign.restart(1000).unwrap();
    foreign.append(b"").unwrap();
    foreign.sync().unwrap();
    let err = Engine::open_backend(image).err().expect("refused");
    assert!(
        err.to_string()
            .contains("hold records up to 0 but the log resumes at 1000"),
        "{err}"
    );
}

#[test]
fn a_crash_while_a_checkpoints_sync_still_runs_behind_loses_nothing() {
    // Power cut before that sync: redb falls back to its commit before the
    // checkpoint, and both log files together bring back every round.
    assert_holds_rounds(cut_before_a_checkpoints_sync(), 40, 2048);
}

/// Writes 40 rounds of 2 KiB to a fresh engine whose checkpoint syncs are
/// held, so the checkpoint after about 32 rounds (the log is 64 KiB)
/// commits to redb behind the driver and then waits at its sync; returns
/// the disk as a power cut there leaves it.
pub(super) fn cut_before_a_checkpoints_sync() -> MemDisk {
    let disk = MemDisk::new();
    let (e, sync) = Engine::open_backend_behind(disk.clone()).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    sync.hold(true);
    let mut s = group_of(&e, 1);
    for i in 1..=40 {
        append_round(&e, &mut s, B + i, 2048);
    }
    assert_eq!(e.stats().checkpoints(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sync.pending() {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint never reached its sync"
        );
        std::thread::yield_now();
    }
    let image = disk.crash_image();
    sync.hold(false);
    drop(e);
    image
}

#[test]
fn power_cuts_anywhere_around_background_checkpoints_lose_no_synced_round() {
    // A round that waited for a checkpoint while holding redb's write
    // lock, which the checkpoint needed, once hung here: fail instead.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        power_cut_trials();
        let _ = done.send(());
    });
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_secs(120))
            .is_ok(),
        "the trials failed or did not finish within 2 minutes"
    );
}

/// Runs of different lengths stop at different points of the last
/// checkpoint (being written, committed, synced, or done), as the thread's
/// timing falls; each must come back whole.
fn power_cut_trials() {
    for trial in 0..24u64 {
        let disk = MemDisk::new();
        let (e, _sync) = Engine::open_backend_behind(disk.clone()).unwrap();
        e.bootstrap(NodeId(1), &catalog()).unwrap();
        let mut s = group_of(&e, 1);
        // 2 KiB a round: the 64 KiB log checkpoints about every 32 rounds.
        let rounds = 40 + trial * 5;
        let mut rows = Vec::new();
        for i in 1..=rounds {
            append_round(&e, &mut s, B + i, 2048);
            if i % 7 == 0 {
                let key = format!("k{i:03}");
                apply_round(&e, &[(key.as_str(), Some("v"))], B + i, true);
                rows.push((key, "v".to_string()));
            }
        }
        assert!(e.stats().checkpoints() >= 1, "trial {trial}");
        let power_cut = disk.crash_image();
        drop(e);
        // The dropped engine finished its checkpoint; the power cut did not.
        for image in [disk, power_cut] {
            assert_holds_rounds(image.clone(), rounds, 2048);
            let e = Engine::open_backend(image).unwrap();
            assert_eq!(scan_all(&e), rows, "trial {trial}");
        }
    }
}

#[test]
fn a_round_due_to_checkpoint_waits_for_the_one_before_without_holding_redb() {
    let disk = MemDisk::new();
    let (e, _sync) = Engine::open_backend_behind(disk).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    let cp = e.checkpointer.clone().unwrap();
    cp.hold(true);
    let mut s = group_of(&e, 1);
    // Rounds of entries go on while a checkpoint waits, up to the next one.
    let mut i = 0;
    while e.stats().checkpoints() == 0 || !e.wal.lock().unwrap().checkpoint_due() {
        i += 1;
        assert!(i < 200, "no second checkpoint came due");
        append_round(&e, &mut s, B + i, 2048);
    }
    // The round due to checkpoint next also writes to redb (a flush).
    let e = Arc::new(e);
    let (done, finished) = std::sync::mpsc::channel();
    let round = {
        let e = e.clone();
        std::thread::spawn(move || {
            apply_round(&e, &[("a", Some("1"))], B + i, true);
            let _ = done.send(());
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cp.waiting() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the round never waited"
        );
        std::thread::yield_now();
    }
    cp.hold(false);
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_ok(),
        "the round and the checkpoint before it wait for each other"
    );
    round.join().unwrap();
    assert_eq!(e.stats().checkpoints(), 2);
    assert_eq!(scan_all(&e), vec![("a".to_string(), "1".to_string())]);
}

fn log_rows_in_redb(e: &Engine) -> usize {
    let txn = e.db.begin_read().unwrap();
    let log = txn.open_table(LOG).unwrap();
    log.iter().unwrap().count()
}

#[test]
fn log_rows_reach_redb_only_at_a_checkpoint() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    let before = log_rows_in_redb(&e);
    // 100 bytes a round stays far below the 64 KiB checkpoint size.
    for i in 1..=10 {
        append_round(&e, &mut s, B + i, 100);
    }
    assert_eq!(e.stats().checkpoints(), 0);
    assert_eq!(
        log_rows_in_redb(&e),
        before,
        "rows written before a checkpoint"
    );
    e.checkpoint().unwrap();
    assert_eq!(
        log_rows_in_redb(&e),
        before + 1,
        "one row for the group's ten records"
    );
    drop(e);
    assert_holds_rounds(disk, 10, 100);
}

/// A process that is killed leaves redb's unsynced commits readable (the
/// page cache outlives it), so the database is ahead of its log rows: the
/// reopen applies the rows of those records and nothing else twice.
#[test]
fn a_reopen_without_a_checkpoint_restores_the_log_rows_from_the_round_log() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    for i in 1..=10 {
        append_round(&e, &mut s, B + i, 100);
    }
    // A compaction in an unsynced round: its deletions are deferred too.
    let mut w = e.batch();
    s.applied = B + 10;
    let gone = s.compact(B + 4);
    assert_eq!(gone.len(), 4);
    w.delete_log_records(&gone);
    w.put_raft_state(GroupId(1), &s.record());
    e.persist(w).unwrap();
    drop(e);
    let e = Engine::open_backend(disk.clone()).unwrap();
    let back = group_of(&e, 1);
    assert_eq!(back.first_index().unwrap(), B + 5);
    assert_eq!(back.last_index().unwrap(), B + 10);
    drop(e);
    // The replay made its own checkpoint: a second open finds the same.
    let e = Engine::open_backend(disk).unwrap();
    assert_eq!(group_of(&e, 1).first_index().unwrap(), B + 5);
}

#[test]
fn a_database_without_a_log_rows_position_is_taken_to_hold_every_row() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    for i in 1..=3 {
        append_round(&e, &mut s, B + i, 100);
    }
    e.checkpoint().unwrap();
    // As a database from before log rows were deferred: no such key.
    let txn = e.db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .remove(META_LOG_ROWS_APPLIED)
        .unwrap();
    txn.commit().unwrap();
    drop(e);
    assert_holds_rounds(disk, 3, 100);
}

#[test]
fn merged_log_records_replay_to_the_same_log_as_the_records_in_order() {
    use super::schema::{decode_log_record, encode_log_record, merge_log_records};
    let rec = |first: u64, last: u64, term: u64| {
        let es: Vec<Entry> = (first..=last).map(|i| entry(i, term)).collect();
        encode_log_record(7, &es).unwrap()
    };
    let terms = |bytes: &[u8]| -> Vec<(u64, u64)> {
        let (g, es) = decode_log_record(bytes).unwrap();
        assert_eq!(g, 7);
        es.iter().map(|e| (e.index, e.term)).collect()
    };
    // Appends that follow on, one that replaces a suffix (a new leader's),
    // and one that replaces everything from before the first record.
    let a = rec(10, 13, 1);
    let b = rec(14, 15, 1);
    let c = rec(12, 16, 2);
    let merged = merge_log_records(&[&a, &b, &c]).unwrap().unwrap();
    let want: Vec<(u64, u64)> = [(10, 1), (11, 1)]
        .into_iter()
        .chain((12..=16).map(|i| (i, 2)))
        .collect();
    assert_eq!(terms(&merged), want);
    let d = rec(8, 9, 3);
    let merged = merge_log_records(&[&a, &b, &c, &d]).unwrap().unwrap();
    assert_eq!(terms(&merged), vec![(8, 3), (9, 3)]);
    // A gap is left for the restore to report, not papered over.
    let gap = rec(18, 19, 2);
    assert!(merge_log_records(&[&a, &gap]).unwrap().is_none());
}

/// After a checkpoint merged a group's records into one row, compacting
/// part of them (which deletes the earlier records, no longer rows) and
/// restarting gives the compacted log; compacting past the last deletes the
/// row itself.
#[test]
fn compaction_after_a_checkpoint_merged_the_records_keeps_the_log_right() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    let rows_at_start = log_rows_in_redb(&e);
    for i in 1..=10 {
        append_round(&e, &mut s, B + i, 100);
    }
    e.checkpoint().unwrap();
    let compact = |e: &Engine, s: &mut GroupStorage, upto: u64| {
        s.applied = B + 10;
        let mut w = e.batch();
        let gone = s.compact(upto);
        w.delete_log_records(&gone);
        w.require_sync();
        w.put_raft_state(GroupId(1), &s.record());
        e.persist(w).unwrap();
        e.checkpoint().unwrap();
    };
    compact(&e, &mut s, B + 6);
    assert_eq!(
        log_rows_in_redb(&e),
        rows_at_start + 1,
        "the merged row stays"
    );
    drop(e);
    let e = Engine::open_backend(disk.clone()).unwrap();
    let mut s = group_of(&e, 1);
    assert_eq!(s.first_index().unwrap(), B + 7);
    assert_eq!(s.last_index().unwrap(), B + 10);
    assert_eq!(s.term(B + 8).unwrap(), 1);
    compact(&e, &mut s, B + 10);
    assert_eq!(
        log_rows_in_redb(&e),
        rows_at_start,
        "the merged row is gone"
    );
}

fn full_repairs(disk: MemDisk) -> u64 {
    let stats = Engine::open_backend(disk).unwrap().stats();
    stats
        .full_repairs
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn opening_after_a_power_cut_loads_the_allocator_state_instead_of_checking_every_page() {
    // Cut while a checkpoint's sync runs behind, and after rounds whose
    // checkpoint completed: every commit recorded its allocator state.
    assert_eq!(full_repairs(cut_before_a_checkpoints_sync()), 0);
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    for i in 1..=40 {
        append_round(&e, &mut s, B + i, 2048);
    }
    apply_round(&e, &[("k", Some("v"))], B + 40, true);
    assert!(e.stats().checkpoints() >= 1);
    let image = disk.crash_image();
    drop(e);
    assert_eq!(full_repairs(image.clone()), 0);
    // A commit that records no allocator state, as redb makes by default,
    // leaves a file that must be checked whole: counted, and still opened.
    let e = Engine::open_backend(image.clone()).unwrap();
    let txn = e.db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("plain", &[1u8][..])
        .unwrap();
    txn.commit().unwrap();
    let image = image.crash_image();
    drop(e);
    assert_eq!(full_repairs(image.clone()), 1);
    assert_holds_rounds(image, 40, 2048);
}
