//! Group commit in the storage engine: one redb write transaction, made
//! durable by one fsync of the round log, carries the new log entries of
//! every group in a round. Writes
//! the same 256-entry round spread over 1 group and over 64 groups, to a
//! real file, and reports entries per second; fsyncs per 1,000 entries is
//! 1000 / 256 = 3.9 in both cases by construction, which is the point: the
//! number of groups does not multiply fsyncs.
//!
//! `cargo bench --bench storage`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla::catalog::Catalog;
use flotilla::storage::Engine;
use flotilla::types::{GroupId, NodeId};
use raft::eraftpb::Entry;

/// Entries per round, over all groups.
const ROUND: usize = 256;
const PAYLOAD: usize = 256;

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage_round");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(ROUND as u64));
    for groups in [1usize, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(&dir.path().join("flotilla.redb")).expect("open");
        let catalog = Catalog::bootstrap(1, 1024, &[(NodeId(1), "127.0.0.1:1".into())], 64, 1)
            .expect("catalog");
        engine.bootstrap(NodeId(1), &catalog).expect("bootstrap");
        let mut last = vec![5u64; groups];
        let stats = engine.stats();
        let before = stats.commits();
        let mut entries = 0u64;
        group.bench_function(BenchmarkId::new("groups", groups), |b| {
            b.iter(|| {
                let mut w = engine.batch();
                for (g, last) in last.iter_mut().enumerate() {
                    let n = ROUND / groups;
                    let batch: Vec<Entry> = (1..=n as u64)
                        .map(|i| Entry {
                            term: 6,
                            index: *last + i,
                            data: vec![b'v'; PAYLOAD].into(),
                            ..Default::default()
                        })
                        .collect();
                    w.append(GroupId(g as u64 + 1), &batch).expect("append");
                    *last += n as u64;
                }
                engine.persist(w).expect("persist");
                entries += ROUND as u64;
            })
        });
        let fsyncs = stats.commits() - before;
        eprintln!(
            "{groups} group(s): {entries} entries in {fsyncs} commits = {:.1} fsyncs per 1,000 entries",
            fsyncs as f64 * 1000.0 / entries.max(1) as f64
        );
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
