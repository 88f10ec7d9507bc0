//! The entry cache: eviction, reads back from the log table, restarts.

use raft::eraftpb::Entry;
use raft::{GetEntriesContext, Storage as _};

use super::cache::TermRuns;
use super::tests::{append_round, bootstrapped, group_of, B};
use super::*;
use crate::types::GroupId;

fn all(s: &GroupStorage, low: u64, high: u64, max: Option<u64>) -> Vec<Entry> {
    s.entries(low, high, max, GetEntriesContext::empty(false))
        .unwrap()
}

#[test]
fn term_runs_follow_appends_truncations_and_compaction() {
    let mut t = TermRuns::default();
    for (i, term) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)] {
        t.push(i, term);
    }
    assert_eq!(t.len(), 3, "one run per term");
    assert_eq!(
        (t.term(2), t.term(4), t.term(5)),
        (Some(1), Some(2), Some(3))
    );
    // A new leader replaces 4 and 5 with 4 at term 4.
    t.truncate(4);
    t.push(4, 4);
    assert_eq!((t.term(3), t.term(4)), (Some(2), Some(4)));
    // Compacting into the middle of a run keeps the rest of it.
    t.compact(2);
    assert_eq!((t.term(3), t.term(4)), (Some(2), Some(4)));
    assert_eq!(t.term(2), None, "compacted");
}

#[test]
fn applied_entries_leave_memory_once_redb_holds_them_and_read_back_the_same() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    for i in 1..=40 {
        append_round(&e, &mut s, B + i, 1000);
    }
    let cached: Vec<Entry> = s.entries.clone();
    s.applied = B + 40;
    let before = s.cached_bytes();
    // Some records are still only in the round log: those stay.
    let freed_early = s.evict();
    e.checkpoint().unwrap();
    let freed = s.evict();
    assert!(
        freed > 0 && freed_early < before,
        "{freed_early} then {freed}"
    );
    assert_eq!(s.cached_bytes(), 0, "every applied entry left memory");
    assert_eq!(e.entry_cache().used(), 0);
    let reads = e.entry_cache().disk_reads();
    assert_eq!(all(&s, B + 1, B + 41, None), cached);
    assert_eq!(e.entry_cache().disk_reads() - reads, 40);
    // raft-rs's size limit: at least one entry, and stop before passing it.
    assert_eq!(all(&s, B + 1, B + 41, Some(2500)).len(), 2);
    assert_eq!(all(&s, B + 5, B + 41, Some(1)).len(), 1);
    assert_eq!(s.term(B + 7).unwrap(), 1);
}

#[test]
fn unapplied_entries_and_those_only_the_round_log_holds_stay_in_memory() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    for i in 1..=10 {
        append_round(&e, &mut s, B + i, 100);
    }
    s.applied = B + 10;
    assert_eq!(s.evict(), 0, "no record is in redb yet");
    e.checkpoint().unwrap();
    s.applied = B + 6;
    s.evict();
    assert_eq!(s.first_cached, B + 7, "unapplied entries stay");
    append_round(&e, &mut s, B + 11, 100);
    s.applied = B + 11;
    s.evict();
    assert_eq!(
        s.first_cached,
        B + 11,
        "the record of entry 11 is only in the round log"
    );
    assert_eq!(all(&s, B + 1, B + 12, None).len(), 11);
}

#[test]
fn a_restart_keeps_no_entries_in_memory_and_a_new_leaders_suffix_wins() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    for i in 1..=6 {
        append_round(&e, &mut s, B + i, 10);
    }
    drop(s);
    drop(e);
    let e = Engine::open_backend(disk.clone()).unwrap();
    let mut s = group_of(&e, 1);
    assert_eq!((s.cached_bytes(), s.last_index().unwrap()), (0, B + 6));
    // A new leader replaces entries 4 to 6, which are only in redb now.
    let new = vec![Entry {
        index: B + 4,
        term: 2,
        data: vec![9].into(),
        ..Default::default()
    }];
    let mut w = e.batch();
    let record = w.append(GroupId(1), &new).unwrap();
    s.append(&new, record);
    e.persist(w).unwrap();
    let terms = |s: &GroupStorage| -> Vec<u64> {
        all(s, B + 1, B + 5, None).iter().map(|e| e.term).collect()
    };
    assert_eq!(terms(&s), vec![1, 1, 1, 2]);
    assert_eq!(s.last_index().unwrap(), B + 4);
    // The older record still holds entry 4 of term 1 in redb; the term
    // runs make the newer one win after a checkpoint and a restart too.
    e.checkpoint().unwrap();
    drop(s);
    drop(e);
    let e = Engine::open_backend(disk).unwrap();
    let s = group_of(&e, 1);
    assert_eq!(terms(&s), vec![1, 1, 1, 2]);
    assert_eq!(all(&s, B + 4, B + 5, None)[0].data.as_ref(), &[9]);
}

#[test]
fn the_overlay_flushes_at_twice_its_threshold_even_while_a_checkpoint_runs() {
    use super::persist::FlushDue;
    let p = FlushPolicy {
        bytes: 1000,
        ticks: 10,
        ..FlushPolicy::default()
    };
    let running = || true;
    let idle = || false;
    // (overlay bytes, quiet ticks, the batch asks for all, checkpoint) → due
    let table = [
        ((10, 0, false), idle(), FlushDue::Aged),
        ((1000, 0, false), idle(), FlushDue::All),
        ((10, 10, false), idle(), FlushDue::All),
        ((1000, 0, false), running(), FlushDue::Nothing),
        ((1999, 0, false), running(), FlushDue::Nothing),
        ((2000, 0, false), running(), FlushDue::All),
        ((10, 0, true), running(), FlushDue::All),
    ];
    for ((bytes, ticks, all), checkpoint, want) in table {
        assert_eq!(
            p.due(bytes, ticks, all, || checkpoint),
            want,
            "{bytes} bytes, {ticks} ticks, all {all}, checkpoint {checkpoint}"
        );
    }
}
