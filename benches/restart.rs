//! How long a node takes to come back with a long log: open its redb file
//! and replay a group holding 100,000 entries (256-byte payloads) into the
//! driver, which is what stands between `flotilla start` and a node that
//! serves. The target is well under 2 s.
//!
//! `cargo bench --bench restart`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use flotilla::catalog::Catalog;
use flotilla::multiraft::{Driver, DriverConfig};
use flotilla::storage::{Engine, RaftStateRecord, INIT_INDEX, INIT_TERM};
use flotilla::types::{GroupId, NodeId};
use raft::eraftpb::Entry;

const ENTRIES: u64 = 100_000;
const PAYLOAD: usize = 256;
/// Entries written per transaction while building the file.
const BATCH: u64 = 10_000;

/// A one-node data directory whose group 1 holds `ENTRIES` applied entries.
fn build(path: &std::path::Path) {
    let engine = Engine::open(path).expect("open");
    let catalog =
        Catalog::bootstrap(1, 1024, &[(NodeId(1), "127.0.0.1:1".into())], 1, 1).expect("catalog");
    engine.bootstrap(NodeId(1), &catalog).expect("bootstrap");
    let group = GroupId(1);
    let term = INIT_TERM + 1;
    let mut last = INIT_INDEX;
    while last < INIT_INDEX + ENTRIES {
        let entries: Vec<Entry> = (last + 1..=last + BATCH)
            .map(|index| Entry {
                term,
                index,
                data: vec![b'v'; PAYLOAD].into(),
                ..Default::default()
            })
            .collect();
        let mut w = engine.batch();
        w.append(group, &entries).expect("append");
        last += BATCH;
        let rec = RaftStateRecord {
            term,
            vote: 1,
            commit: last,
            voters: vec![1],
            snap_index: INIT_INDEX,
            snap_term: INIT_TERM,
            ..Default::default()
        };
        w.put_raft_state(group, &rec);
        w.set_applied(group, last);
        w.flush_all();
        engine.persist(w).expect("persist");
    }
}

fn restart(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flotilla.redb");
    build(&path);
    let mut group = c.benchmark_group("restart");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("open_and_replay_100k_entries", |b| {
        b.iter(|| {
            let engine = Engine::open(&path).expect("open");
            let driver = Driver::open(engine, DriverConfig::default()).expect("driver");
            assert!(driver.replayed().entries >= ENTRIES);
            driver
        })
    });
    group.finish();
}

criterion_group!(benches, restart);
criterion_main!(benches);
