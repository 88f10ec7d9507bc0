use raft::eraftpb::Entry;
use raft::Storage as _;

use super::redo::decode_all;
use super::*;
use crate::types::{GroupId, NodeId};
use redb::{ReadableDatabase, ReadableTable};
use schema::{LOG, META, META_CATALOG, META_LOG_ROWS_APPLIED, RAFT_STATE};

/// Where a founding member's log starts.
pub(super) const B: u64 = INIT_INDEX;
use crate::catalog::Catalog;

pub(super) fn catalog() -> Catalog {
    let nodes: Vec<_> = (1..=3).map(|i| (NodeId(i), format!("n{i}"))).collect();
    Catalog::bootstrap(99, 64, &nodes, 4, 3).unwrap()
}

pub(super) fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8].into(),
        ..Default::default()
    }
}

/// An engine on `disk`, bootstrapped as node 1 of [`catalog`].
pub(super) fn bootstrapped(disk: &MemDisk) -> Engine {
    let e = Engine::open_backend(disk.clone()).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    e
}

pub(super) fn group_of(engine: &Engine, g: u64) -> GroupStorage {
    engine
        .load_groups()
        .unwrap()
        .into_iter()
        .find(|s| s.group == GroupId(g))
        .unwrap()
}

#[test]
fn bootstrap_writes_identity_catalog_and_groups_once() {
    let disk = MemDisk::new();
    let e = Engine::open_backend(disk.clone()).unwrap();
    assert!(!e.is_bootstrapped().unwrap());
    e.bootstrap(NodeId(2), &catalog()).unwrap();
    let err = e.bootstrap(NodeId(2), &catalog()).unwrap_err();
    assert!(
        err.to_string().contains("already belongs to cluster"),
        "{err}"
    );
    drop(e);
    let e = Engine::open_backend(disk).unwrap();
    assert_eq!(e.node_id().unwrap(), Some(NodeId(2)));
    assert_eq!(e.cluster_id().unwrap(), Some(99));
    assert_eq!(e.catalog().unwrap(), Some(catalog()));
    let groups = e.load_groups().unwrap();
    assert_eq!(groups.len(), 5, "group 0 and 4 data groups");
    for g in &groups {
        let mut voters = g.conf_state.voters.clone();
        voters.sort_unstable();
        assert_eq!(voters, vec![1, 2, 3], "{}", g.group);
    }
}

#[test]
fn entries_of_many_groups_persist_in_one_commit_and_reload() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let before = e.stats().commits();
    let mut w = e.batch();
    for g in 1..=4 {
        let es: Vec<Entry> = (1..=5).map(|i| entry(B + i, 1)).collect();
        w.append(GroupId(g), &es).unwrap();
    }
    e.persist(w).unwrap();
    assert_eq!(e.stats().commits() - before, 1);
    drop(e);
    let e = Engine::open_backend(disk).unwrap();
    for g in 1..=4 {
        let s = group_of(&e, g);
        assert_eq!(s.last_index().unwrap(), B + 5);
        assert_eq!(s.term(B + 3).unwrap(), 1);
    }
}

#[test]
fn a_conflicting_append_replaces_the_old_suffix_on_disk() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    let write = |e: &Engine, s: &mut GroupStorage, es: Vec<Entry>| {
        let mut w = e.batch();
        let record = w.append(GroupId(1), &es).unwrap();
        s.append(&es, record);
        e.persist(w).unwrap();
    };
    write(&e, &mut s, (1..=6).map(|i| entry(B + i, 1)).collect());
    // A new leader overwrites from index 4 with a shorter suffix.
    write(&e, &mut s, vec![entry(B + 4, 2)]);
    assert_eq!(s.last_index().unwrap(), B + 4);
    drop(e);
    let e = Engine::open_backend(disk).unwrap();
    let s = group_of(&e, 1);
    assert_eq!(
        s.last_index().unwrap(),
        B + 4,
        "entries 5 and 6 of term 1 are gone from disk"
    );
    assert_eq!(s.term(B + 4).unwrap(), 2);
}

#[test]
fn compaction_keeps_the_term_of_the_compaction_point() {
    let disk = MemDisk::new();
    let e = Engine::open_backend(disk).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    let mut s = group_of(&e, 1);
    s.append(
        &(1..=10)
            .map(|i| entry(B + i, i / 4 + 1))
            .collect::<Vec<_>>(),
        None,
    );
    s.applied = B + 8;
    s.compact(B + 6);
    assert_eq!(s.first_index().unwrap(), B + 7);
    assert_eq!(s.term(B + 6).unwrap(), 2);
    assert!(matches!(
        s.term(B + 5),
        Err(raft::Error::Store(raft::StorageError::Compacted))
    ));
    assert!(matches!(
        s.entries(B + 5, B + 8, None, raft::GetEntriesContext::empty(false)),
        Err(raft::Error::Store(raft::StorageError::Compacted))
    ));
    assert_eq!(
        s.entries(B + 7, B + 11, None, raft::GetEntriesContext::empty(false))
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn a_corrupt_database_is_an_error_not_a_panic() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    drop(e);
    // Scribble over everything past the header region.
    let size = disk.size();
    disk.scribble(0, size);
    let result = std::panic::catch_unwind(|| {
        Engine::open_backend(disk.clone()).and_then(|e| e.load_groups())
    });
    match result {
        Ok(r) => assert!(r.is_err(), "a scribbled database must not open cleanly"),
        Err(_) => panic!("opening a corrupt database panicked"),
    }
}

#[test]
fn garbage_in_a_row_is_reported_as_corrupt() {
    let e = Engine::open_backend(MemDisk::new()).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    let txn = e.db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert(META_CATALOG, [0xde, 0xad, 0xbe, 0xef].as_slice())
            .unwrap();
        let mut raft = txn.open_table(RAFT_STATE).unwrap();
        raft.insert(1, [1u8, 2, 3].as_slice()).unwrap();
    }
    txn.commit().unwrap();
    assert!(matches!(
        e.catalog(),
        Err(Error::Corrupt {
            what: "catalog",
            ..
        })
    ));
    assert!(matches!(
        e.load_groups(),
        Err(Error::Corrupt {
            what: "raft state",
            ..
        })
    ));
}

#[test]
fn compaction_deletes_only_records_it_no_longer_needs_and_the_log_reloads() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    // Three records: 1..=4, 5..=8, 9..=12.
    for chunk in 0..3u64 {
        let es: Vec<Entry> = (1..=4).map(|i| entry(B + chunk * 4 + i, 1)).collect();
        let mut w = e.batch();
        let record = w.append(GroupId(1), &es).unwrap();
        s.append(&es, record);
        e.persist(w).unwrap();
    }
    s.applied = B + 12;
    // Compacting to 6 frees the first record only: the second still holds 7 and 8.
    let dead = s.compact(B + 6);
    assert_eq!(dead.len(), 1);
    let mut w = e.batch();
    w.delete_log_records(&dead);
    // A compaction alone is not synced (losing it is harmless); this
    // test wants it on disk.
    w.require_sync();
    w.put_raft_state(GroupId(1), &s.record());
    w.set_applied(GroupId(1), B + 12);
    w.flush_all();
    e.persist(w).unwrap();
    drop(e);
    let e = Engine::open_backend(disk).unwrap();
    let back = group_of(&e, 1);
    assert_eq!(back.first_index().unwrap(), B + 7);
    assert_eq!(back.last_index().unwrap(), B + 12);
    assert_eq!(back.records.len(), 2);
}

#[test]
fn a_gap_between_log_records_is_reported_as_corrupt() {
    let e = Engine::open_backend(MemDisk::new()).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    let mut w = e.batch();
    w.append(GroupId(1), &[entry(B + 1, 1)]).unwrap();
    // Index B + 2 is missing.
    w.append(GroupId(1), &[entry(B + 3, 1)]).unwrap();
    e.persist(w).unwrap();
    // Log rows reach redb at a checkpoint (or when a reopen replays them).
    e.checkpoint().unwrap();
    assert!(matches!(
        e.load_groups(),
        Err(Error::Corrupt {
            what: "raft log",
            ..
        })
    ));
}

#[test]
fn a_round_of_many_groups_appends_records_side_by_side() {
    let e = Engine::open_backend(MemDisk::new()).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    let mut seqs = Vec::new();
    let mut w = e.batch();
    for g in 1..=4 {
        seqs.push(w.append(GroupId(g), &[entry(B + 1, 1)]).unwrap().unwrap());
    }
    e.persist(w).unwrap();
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "{seqs:?}");
}

#[test]
fn a_round_that_only_applies_is_not_synced_and_a_crash_loses_only_it() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let stats = e.stats();
    let mut w = e.batch();
    w.append(GroupId(1), &[entry(B + 1, 1)]).unwrap();
    e.persist(w).unwrap();
    let synced = stats.syncs();
    let mut w = e.batch();
    w.set_applied(GroupId(1), B + 1);
    w.flush_all();
    let persisted = e.persist(w).unwrap();
    assert_eq!(persisted.flushed, vec![(GroupId(1), B + 1)]);
    assert!(persisted.committed, "a flush is a commit");
    assert_eq!(stats.syncs(), synced, "an apply-only round must not sync");
    // Crash: the appended entry survives, the unsynced apply index does not.
    let image = disk.crash_image();
    drop(e);
    let e = Engine::open_backend(image).unwrap();
    let s = group_of(&e, 1);
    assert_eq!(s.last_index().unwrap(), B + 1);
    assert_eq!(s.applied, B);
}

/// Applies `rows` (a `None` value deletes) to group 1 in one round, with
/// apply index `applied`; flushes the overlay in that round when `flush`.
pub(super) fn apply_round(e: &Engine, rows: &[(&str, Option<&str>)], applied: u64, flush: bool) {
    use crate::kv::KvStore as _;
    let mut w = e.batch();
    let mut kv = w.kv(GroupId(1));
    for (k, v) in rows {
        match v {
            Some(v) => kv.put(k.as_bytes(), v.as_bytes()).unwrap(),
            None => {
                kv.delete(k.as_bytes()).unwrap();
            }
        }
    }
    w.set_applied(GroupId(1), applied);
    if flush {
        w.flush_all();
        w.require_sync();
    }
    e.persist(w).unwrap();
}

pub(super) fn scan_all(e: &Engine) -> Vec<(String, String)> {
    e.scan(GroupId(1), b"", None, 100)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

#[test]
fn applied_rows_wait_in_the_overlay_and_reads_see_them_merged() {
    let e = Engine::open_backend(MemDisk::new()).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    apply_round(
        &e,
        &[("a", Some("1")), ("b", Some("2")), ("c", Some("3"))],
        B + 1,
        true,
    );
    assert_eq!(e.overlay_bytes(), None, "the flush emptied the overlay");
    let flushed_digest = e.group_digest(GroupId(1)).unwrap();
    apply_round(
        &e,
        &[("b", None), ("c", Some("33")), ("d", Some("4"))],
        B + 2,
        false,
    );
    assert!(e.overlay_bytes().is_some());
    assert_eq!(e.stats().flushes(), 1);
    // Reads see the overlay over redb: a replaced value, a deleted row, a new one.
    assert_eq!(e.get(GroupId(1), b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(e.get(GroupId(1), b"b").unwrap(), None);
    assert_eq!(e.get(GroupId(1), b"c").unwrap(), Some(b"33".to_vec()));
    let merged = vec![
        ("a".to_string(), "1".to_string()),
        ("c".to_string(), "33".to_string()),
        ("d".to_string(), "4".to_string()),
    ];
    assert_eq!(scan_all(&e), merged);
    assert_eq!(e.scan(GroupId(1), b"b", Some(b"d"), 10).unwrap().len(), 1);
    assert!(e.scan(GroupId(1), b"c", Some(b"c"), 10).unwrap().is_empty());
    assert!(e.scan(GroupId(1), b"d", Some(b"b"), 10).unwrap().is_empty());
    let before_flush = e.group_digest(GroupId(1)).unwrap();
    assert_eq!(before_flush.0, B + 2);
    assert_ne!(before_flush, flushed_digest);
    // Flushing changes where the rows live, not what they are.
    apply_round(&e, &[], B + 2, true);
    assert_eq!(e.overlay_bytes(), None);
    assert_eq!(scan_all(&e), merged);
    assert_eq!(e.group_digest(GroupId(1)).unwrap(), before_flush);
}

#[test]
fn a_crash_loses_the_overlay_and_restarts_from_the_last_flush() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    apply_round(&e, &[("a", Some("1"))], B + 1, true);
    apply_round(&e, &[("a", Some("2")), ("b", Some("3"))], B + 2, false);
    // A synced round that does not flush (new log entries) keeps the
    // overlay in memory only.
    let mut w = e.batch();
    w.append(GroupId(1), &[entry(B + 1, 1), entry(B + 2, 1)])
        .unwrap();
    e.persist(w).unwrap();
    let image = disk.crash_image();
    drop(e);
    let e = Engine::open_backend(image).unwrap();
    let s = group_of(&e, 1);
    assert_eq!(s.applied, B + 1, "resumes applying after the last flush");
    assert_eq!(s.flushed, B + 1);
    assert_eq!(
        s.last_index().unwrap(),
        B + 2,
        "with the entries to re-apply"
    );
    assert_eq!(scan_all(&e), vec![("a".to_string(), "1".to_string())]);
}

/// Appends one entry of `bytes` bytes to group 1 in its own synced round.
pub(super) fn append_round(e: &Engine, s: &mut GroupStorage, index: u64, bytes: usize) {
    let es = vec![Entry {
        index,
        term: 1,
        data: vec![index as u8; bytes].into(),
        ..Default::default()
    }];
    let mut w = e.batch();
    let record = w.append(GroupId(1), &es).unwrap();
    s.append(&es, record);
    e.persist(w).unwrap();
}

/// Rounds pass their encoding buffers on to the next round: what a round
/// logs must still be its own ops alone, never a leftover of the round
/// before (replay would apply that twice), also after a round that staged
/// nothing.
#[test]
fn each_round_logs_only_its_own_ops_though_rounds_share_buffers() {
    use super::redo::Op;
    let e = bootstrapped(&MemDisk::new());
    let mut s = group_of(&e, 1);
    let first = e.wal.lock().unwrap().next_seq();
    let rows_before = e.log_rows.lock().unwrap().len();
    for i in 1..=3 {
        append_round(&e, &mut s, B + i, 100 * i as usize);
        assert!(!e.persist(e.batch()).unwrap().committed);
    }
    let records = e.wal.lock().unwrap().read(1).unwrap().records;
    let ours: Vec<_> = records.range(first..).map(|(_, body)| body).collect();
    assert_eq!(ours.len(), 3, "one record per round that staged something");
    for (i, body) in ours.iter().enumerate() {
        let ops = decode_all(body).unwrap();
        assert_eq!(ops.len(), 1, "record {i} holds {} ops", ops.len());
        let Op::LogPut { record, .. } = &ops[0] else {
            panic!("record {i} is not the round's log put");
        };
        let (_, first_index, last_index) = schema::log_record_header(record).unwrap();
        assert_eq!(
            (first_index, last_index),
            (B + 1 + i as u64, B + 1 + i as u64)
        );
    }
    let rows = e.log_rows.lock().unwrap();
    assert_eq!(decode_all(&rows[rows_before..]).unwrap().len(), 3);
}

#[test]
fn rounds_of_log_entries_alone_skip_redb_and_replay_between_those_that_do_not() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let stats = e.stats();
    let redb = stats.redb_commits();
    let mut s = group_of(&e, 1);
    append_round(&e, &mut s, B + 1, 100);
    apply_round(&e, &[("a", Some("1"))], B + 1, true);
    assert_eq!(
        stats.redb_commits() - redb,
        1,
        "only the flush touched redb"
    );
    append_round(&e, &mut s, B + 2, 100);
    append_round(&e, &mut s, B + 3, 100);
    apply_round(&e, &[("b", Some("2"))], B + 2, true);
    append_round(&e, &mut s, B + 4, 100);
    assert_eq!(stats.redb_commits() - redb, 2);
    assert_eq!(stats.checkpoints(), 0);
    let both = vec![
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
    ];
    // A killed process (redb keeps its unsynced commits) and a power cut
    // (redb falls back to the bootstrap) both come back with every entry
    // and both flushes: the round log fills in what redb lacks.
    let power_cut = disk.crash_image();
    drop(e);
    for image in [disk, power_cut] {
        let e = Engine::open_backend(image).unwrap();
        let s = group_of(&e, 1);
        assert_eq!(s.last_index().unwrap(), B + 4);
        assert_eq!(s.flushed, B + 2);
        assert_eq!(scan_all(&e), both);
    }
}

#[test]
fn a_round_of_log_entries_alone_never_waits_for_redbs_write_lock() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    apply_round(&e, &[("a", Some("1"))], B, true);
    // A checkpoint committing behind the driver holds the lock like this.
    let held = e.db.begin_write().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            append_round(&e, &mut s, B + 1, 100);
            // Applying reads through a read transaction meanwhile.
            apply_round(&e, &[("a", None), ("b", Some("2"))], B + 1, false);
            let _ = tx.send(());
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok();
        // Released either way, so that the round can end.
        held.abort().unwrap();
        assert!(done, "the rounds waited for redb's write lock");
    });
    assert_eq!(s.last_index().unwrap(), B + 1);
    assert_eq!(scan_all(&e), vec![("b".to_string(), "2".to_string())]);
}

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
    let disk = MemDisk::new();
    let (e, sync) = Engine::open_backend_behind(disk.clone()).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    sync.hold(true);
    let mut s = group_of(&e, 1);
    // 2 KiB a round: the 64 KiB log checkpoints after about 32 rounds.
    for i in 1..=40 {
        append_round(&e, &mut s, B + i, 2048);
    }
    assert_eq!(e.stats().checkpoints(), 1);
    // The checkpoint commits behind the driver; its sync then waits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sync.pending() {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint never reached its sync"
        );
        std::thread::yield_now();
    }
    // Power cut before that sync: redb falls back to its commit before the
    // checkpoint, and both log files together bring back every round.
    let image = disk.crash_image();
    sync.hold(false);
    drop(e);
    assert_holds_rounds(image, 40, 2048);
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
