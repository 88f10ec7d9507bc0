use raft::eraftpb::Entry;
use raft::Storage as _;

use super::redo::decode_all;
use super::*;
use crate::types::{GroupId, NodeId};
use schema::{META, META_CATALOG, RAFT_STATE};

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
