//! Streamed snapshots at the storage level: sources read in chunks,
//! staging that leaves the live rows alone until one install, and what a
//! crash or a cut transfer leaves.

use std::sync::atomic::Ordering;

use raft::Storage as _;
use redb::{ReadableDatabase, ReadableTableMetadata};

use super::staging::{STAGED, STAGED_KV};
use super::tests::{apply_round, catalog, group_of, scan_all, B};
use super::*;
use crate::types::{GroupId, NodeId};

const G: GroupId = GroupId(1);

/// Limits with chunks of `chunk_bytes`.
fn small_chunks(chunk_bytes: usize) -> SnapshotLimits {
    SnapshotLimits {
        chunk_bytes,
        ..SnapshotLimits::default()
    }
}

/// A leader holding 200 rows of 1000 bytes in redb, with changes of its
/// overlay over them (a deletion, a replaced and a new row), whose source
/// reads in chunks of 8 KiB.
fn leader() -> Engine {
    let e = Engine::open_backend(MemDisk::new()).unwrap();
    e.bootstrap(NodeId(1), &catalog()).unwrap();
    e.snapshots().set_limits(small_chunks(8 << 10));
    let value = "v".repeat(1000);
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i:04}")).collect();
    let rows: Vec<(&str, Option<&str>)> = keys
        .iter()
        .map(|k| (k.as_str(), Some(value.as_str())))
        .collect();
    apply_round(&e, &rows, B + 1, true);
    apply_round(
        &e,
        &[
            ("key-0003", None),
            ("key-0007", Some("new")),
            ("zz", Some("last")),
        ],
        B + 2,
        false,
    );
    e
}

/// A follower (node 2) with rows of its own in group 1.
fn follower(disk: &MemDisk) -> Engine {
    let e = Engine::open_backend(disk.clone()).unwrap();
    e.bootstrap(NodeId(2), &catalog()).unwrap();
    apply_round(&e, &[("old", Some("row"))], B + 1, true);
    e
}

/// The snapshot group 1 of `e` gives for node 2: its index and data.
fn snapshot_for_node_2(e: &Engine) -> (u64, Vec<u8>) {
    let mut s = group_of(e, 1);
    // Its state as of the compaction point, whose term the group knows.
    s.applied = s.snap_index;
    let snap = s.snapshot(0, 2).unwrap();
    (snap.get_metadata().index, snap.data.to_vec())
}

/// Installs the claimed staging of group 1 at `index` in one round.
fn install(e: &Engine, index: u64, data: &[u8]) {
    assert!(e.snapshots().claim(G, index), "the staging is complete");
    let desc = SnapshotDescriptor::decode(data).unwrap();
    let mut w = e.batch();
    w.install_snapshot(G, index, &desc, &[]);
    e.persist(w).unwrap();
    e.snapshots().settle(G, true);
}

fn staged_rows(e: &Engine) -> (u64, u64) {
    let txn = e.db.begin_read().unwrap();
    (
        txn.open_table(STAGED).unwrap().len().unwrap(),
        txn.open_table(STAGED_KV).unwrap().len().unwrap(),
    )
}

fn digest(e: &Engine) -> u64 {
    e.group_digest(G).unwrap().1
}

#[test]
fn a_group_of_many_chunks_is_staged_apart_and_installed_in_one_round() {
    let l = leader();
    let disk = MemDisk::new();
    let f = follower(&disk);
    let (index, data) = snapshot_for_node_2(&l);
    assert!(
        data.len() < 100,
        "the snapshot message carries a descriptor only"
    );
    assert_eq!(l.snapshots().open_sources(), 1);

    copy_snapshot(&l.snapshots(), &f.snapshots(), G, index, &data).unwrap();
    let chunks = f.snapshots().stats.chunks_staged.load(Ordering::Relaxed);
    assert!(chunks >= 20, "200 KB in chunks of 8 KiB: {chunks} chunks");
    assert_eq!(l.snapshots().open_sources(), 0, "the source closed");
    assert_eq!(
        scan_all(&f),
        vec![("old".to_string(), "row".to_string())],
        "the live rows wait for the install"
    );

    install(&f, index, &data);
    assert_eq!(
        digest(&f),
        digest(&l),
        "the replica holds the leader's state"
    );
    assert_eq!(f.get(G, b"key-0003").unwrap(), None);
    assert_eq!(f.get(G, b"key-0007").unwrap(), Some(b"new".to_vec()));
    assert_eq!(f.get(G, b"old").unwrap(), None);
    assert_eq!(staged_rows(&f), (0, 0), "the staging is gone");
}

#[test]
fn a_transfer_cut_midway_leaves_the_old_state_and_a_later_one_completes() {
    let l = leader();
    let disk = MemDisk::new();
    let f = follower(&disk);
    let before = digest(&f);
    let (index, data) = snapshot_for_node_2(&l);
    let source = SnapshotDescriptor::decode(&data).unwrap().source;

    // The sender goes away after three chunks: the receiver gives up.
    f.snapshots().begin_receive(G, index).unwrap();
    let mut cursor = ChunkCursor::start();
    for _ in 0..3 {
        let chunk = l.snapshots().read_chunk(source, &cursor).unwrap();
        f.snapshots().stage_chunk(G, &chunk).unwrap();
        cursor = chunk.next.unwrap();
    }
    f.snapshots().abort_receive(G);
    assert_eq!(staged_rows(&f), (0, 0));
    assert_eq!(digest(&f), before);

    // Again, and this time the receiver crashes after three chunks.
    f.snapshots().begin_receive(G, index).unwrap();
    let mut cursor = ChunkCursor::start();
    for _ in 0..3 {
        let chunk = l.snapshots().read_chunk(source, &cursor).unwrap();
        f.snapshots().stage_chunk(G, &chunk).unwrap();
        cursor = chunk.next.unwrap();
    }
    let image = disk.crash_image();
    drop(f);
    let f = Engine::open_backend(image).unwrap();
    assert_eq!(
        staged_rows(&f),
        (0, 0),
        "opening drops what was never installed"
    );
    assert_eq!(digest(&f), before, "the old state is intact");
    assert!(!f.snapshots().claim(G, index), "nothing to claim");

    // The leader's next transfer, from a new source, completes.
    l.snapshots().close_source(source);
    let (index, data) = snapshot_for_node_2(&l);
    copy_snapshot(&l.snapshots(), &f.snapshots(), G, index, &data).unwrap();
    install(&f, index, &data);
    assert_eq!(digest(&f), digest(&l));
}

#[test]
fn sources_and_incoming_transfers_are_bounded() {
    let l = leader();
    l.snapshots().set_limits(SnapshotLimits {
        sends: 2,
        receives: 1,
        ..small_chunks(8 << 10)
    });
    let mut s = group_of(&l, 1);
    s.applied = s.snap_index;
    s.snapshot(0, 2).unwrap();
    s.snapshot(0, 3).unwrap();
    // A new snapshot for the same peer replaces its older source.
    s.snapshot(0, 3).unwrap();
    assert_eq!(l.snapshots().open_sources(), 2);
    let err = s.snapshot(0, 4).unwrap_err();
    assert!(
        matches!(
            err,
            raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)
        ),
        "{err:?}"
    );

    let f = follower(&MemDisk::new());
    f.snapshots().set_limits(SnapshotLimits {
        receives: 1,
        ..SnapshotLimits::default()
    });
    f.snapshots().begin_receive(GroupId(1), 9).unwrap();
    assert!(
        f.snapshots().begin_receive(GroupId(2), 9).is_err(),
        "one at a time"
    );
    assert!(
        f.snapshots().begin_receive(GroupId(1), 10).is_err(),
        "the group is busy"
    );
    f.snapshots().abort_receive(GroupId(1));
    f.snapshots().begin_receive(GroupId(2), 9).unwrap();
    let refused = f.snapshots().stats.receives_refused.load(Ordering::Relaxed);
    assert_eq!(refused, 2);
}

#[test]
fn a_crash_between_staging_and_install_installs_exactly_once_on_replay() {
    let l = leader();
    let disk = MemDisk::new();
    let f = follower(&disk);
    let before = digest(&f);
    let (index, data) = snapshot_for_node_2(&l);
    copy_snapshot(&l.snapshots(), &f.snapshots(), G, index, &data).unwrap();

    // Staged and synced, never installed: a restart drops it.
    let f2 = Engine::open_backend(disk.crash_image()).unwrap();
    assert_eq!(digest(&f2), before);
    assert_eq!(staged_rows(&f2), (0, 0));
    drop(f2);

    // The install's round reached the round log (synced), not redb's disk.
    install(&f, index, &data);
    let image = disk.crash_image();
    drop(f);
    let f = Engine::open_backend(image.clone()).unwrap();
    assert_eq!(digest(&f), digest(&l), "the replay installed the staging");
    assert_eq!(staged_rows(&f), (0, 0));
    // And a second crash and replay changes nothing.
    let image = image.crash_image();
    drop(f);
    let f = Engine::open_backend(image).unwrap();
    assert_eq!(digest(&f), digest(&l));
    assert_eq!(f.get(G, b"zz").unwrap(), Some(b"last".to_vec()));
}
