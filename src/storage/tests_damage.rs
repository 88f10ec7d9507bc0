//! Scenarios of a damaged disk and of power cuts around a checkpoint: a
//! damaged round log record with synced ones after it refuses the node,
//! a torn unsynced tail does not, a checkpoint never makes redb durable
//! ahead of the log, and creating or removing a node's files syncs their
//! directory.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::tests::{append_round, bootstrapped, catalog, group_of, B};
use super::tests_checkpoint::{assert_holds_rounds, cut_before_a_checkpoints_sync};
use super::wal::HEADER;
use super::*;
use crate::types::{NodeId, CATALOG_GROUP};

thread_local! {
    /// Directories this thread synced, for the tests that look for them.
    static DIR_SYNCS: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
}

/// Records that this thread synced `dir` (called by `sync_dir`).
pub(super) fn note_dir_sync(dir: &Path) {
    DIR_SYNCS.with(|d| d.borrow_mut().push(dir.to_path_buf()));
}

fn take_dir_syncs() -> Vec<PathBuf> {
    DIR_SYNCS.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

/// The offset and sequence number of each record of `file`'s run, read
/// from the length and sequence fields alone (for an undamaged file the
/// simulation never preallocated).
fn run_of(file: &MemFile) -> Vec<(u64, u64)> {
    let mut data = vec![0; LogFile::size(file).unwrap() as usize];
    LogFile::read(file, 0, &mut data).unwrap();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    while at + HEADER <= data.len() {
        let n = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(data[at + 4..at + 12].try_into().unwrap());
        if out.last().is_some_and(|(_, prev)| seq != prev + 1) {
            break;
        }
        out.push((at as u64, seq));
        at += HEADER + n;
    }
    out
}

/// Flips every bit of the byte at `offset` of `file`.
fn flip(file: &MemFile, offset: u64) {
    let mut b = [0u8];
    LogFile::read(file, offset, &mut b).unwrap();
    LogFile::write(file, offset, &[!b[0]]).unwrap();
}

/// A round that applies group 0 up to `index`: it writes to redb, and
/// needs no sync of its own.
fn catalog_apply_round(e: &Engine, index: u64) {
    let mut w = e.batch();
    assert!(w.set_applied(CATALOG_GROUP, index));
    assert!(e.persist(w).unwrap().committed);
}

fn corrupt_message(disk: MemDisk) -> String {
    match Engine::open_backend(disk) {
        Ok(_) => panic!("a damaged round log was opened"),
        Err(
            e @ Error::Corrupt {
                what: "round log", ..
            },
        ) => e.to_string(),
        Err(e) => panic!("not reported as a corrupt round log: {e}"),
    }
}

#[test]
fn a_damaged_record_with_synced_records_after_it_refuses_the_node() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    for i in 1..=10 {
        append_round(&e, &mut s, B + i, 100);
    }
    let image = disk.crash_image();
    drop(e);
    // Opening moved appends to the second file, from its start.
    let file = &image.log_files()[1];
    let run = run_of(file);
    assert_eq!(run.len(), 10);
    let (offset, seq) = run[4];
    flip(file, offset + HEADER as u64 + 10);
    let msg = corrupt_message(image);
    for part in [
        format!("memory wal.1: record {seq} (number 5 in the file) at offset {offset} is damaged"),
        format!("yet record {} at offset {}", run[9].1, run[9].0),
        "--wipe-and-join".to_string(),
    ] {
        assert!(msg.contains(&part), "{part:?} not in: {msg}");
    }
}

#[test]
fn a_damaged_record_in_the_file_a_pending_checkpoint_left_refuses_the_node() {
    // redb falls back to before the checkpoint, so it needs every record
    // of the file the log left; the last one of those is damaged, and the
    // records of the other file vouch for it.
    let image = cut_before_a_checkpoints_sync();
    let [next, left] = image.log_files();
    let run = run_of(&left);
    let (offset, seq) = *run.last().unwrap();
    flip(&left, offset + 5);
    let (witness_offset, witness) = *run_of(&next).last().unwrap();
    let msg = corrupt_message(image);
    let part = format!(
        "memory wal.1: record {seq} (number {} in the file) at offset {offset} is damaged, \
         yet record {witness} at offset {witness_offset} of memory wal.0",
        run.len(),
    );
    assert!(msg.contains(&part), "{part:?} not in: {msg}");
}

#[test]
fn damage_to_records_redb_holds_already_is_no_reason_to_refuse() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    // Past a checkpoint, which the simulation's engine syncs in the round.
    for i in 1..=40 {
        append_round(&e, &mut s, B + i, 2048);
    }
    assert_eq!(e.stats().checkpoints(), 1);
    let image = disk.crash_image();
    drop(e);
    let left = &image.log_files()[1];
    let (offset, _) = run_of(left)[3];
    flip(left, offset + HEADER as u64);
    assert_holds_rounds(image, 40, 2048);
}

#[test]
fn a_torn_unsynced_record_is_the_end_though_a_later_unsynced_one_reached_the_disk() {
    let disk = MemDisk::new();
    let e = bootstrapped(&disk);
    let mut s = group_of(&e, 1);
    for i in 1..=3 {
        append_round(&e, &mut s, B + i, 100);
    }
    catalog_apply_round(&e, 1);
    catalog_apply_round(&e, 2);
    // The power cut loses the first apply's record, but the page cache had
    // written the second one back: it vouches for nothing after record 3.
    let image = disk.crash_image();
    let (live, cut) = (&disk.log_files()[1], &image.log_files()[1]);
    let run = run_of(live);
    assert_eq!(run.len(), 5);
    let (second, end) = (run[4].0, LogFile::size(live).unwrap());
    let mut bytes = vec![0; (end - second) as usize];
    LogFile::read(live, second, &mut bytes).unwrap();
    LogFile::write(cut, second, &bytes).unwrap();
    drop(e);
    let e = Engine::open_backend(image.clone()).unwrap();
    assert_eq!(group_of(&e, 0).applied, INIT_INDEX, "both applies lost");
    drop(e);
    assert_holds_rounds(image, 3, 100);
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

#[test]
fn creating_and_removing_a_nodes_files_syncs_their_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    take_dir_syncs();
    let e = Engine::open(&path).unwrap();
    assert_eq!(take_dir_syncs(), vec![dir.path().to_path_buf()]);
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    drop(e);
    let e = Engine::open(&path).unwrap();
    assert_eq!(take_dir_syncs(), Vec::<PathBuf>::new(), "nothing new");
    assert_eq!(e.node_id().unwrap(), Some(NodeId(1)));
    drop(e);
    Engine::remove(&path).unwrap();
    assert_eq!(take_dir_syncs(), vec![dir.path().to_path_buf()]);
    for p in std::iter::once(path.clone()).chain(wal_paths(&path)) {
        assert!(!p.exists(), "{} is left", p.display());
    }
    Engine::remove(&path).unwrap();
    assert_eq!(take_dir_syncs(), Vec::<PathBuf>::new(), "nothing removed");
}
