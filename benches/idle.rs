//! What idle groups cost the driver: rounds per second of a one-node
//! driver holding 1,000 and 10,000 groups that are all led and have
//! nothing to do (each iteration is one tick plus one round).
//!
//! `cargo bench --bench idle`

use flotilla::runtime;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla::catalog::Catalog;
use flotilla::multiraft::{Driver, DriverConfig};
use flotilla::storage::Engine;
use flotilla::types::NodeId;

fn idle(c: &mut Criterion) {
    let mut group = c.benchmark_group("idle_groups");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    for groups in [1_000u64, 10_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(&dir.path().join("flotilla.redb")).expect("open");
        let catalog =
            Catalog::bootstrap(1, 16_384, &[(NodeId(1), "127.0.0.1:1".into())], groups, 1)
                .expect("catalog");
        engine.bootstrap(NodeId(1), &catalog).expect("bootstrap");
        let mut driver = Driver::open(engine, DriverConfig::default()).expect("driver");
        // Tick until every group has elected this node (one voter each).
        for _ in 0..10_000 {
            driver.tick();
            runtime::round(&mut driver).expect("round");
            if driver
                .group_ids()
                .all(|g| driver.leader_of(g) == Some(NodeId(1)))
            {
                break;
            }
        }
        assert!(
            driver
                .group_ids()
                .all(|g| driver.leader_of(g) == Some(NodeId(1))),
            "every group should be led"
        );
        group.bench_function(BenchmarkId::new("groups", groups), |b| {
            b.iter(|| {
                driver.tick();
                runtime::round(&mut driver).expect("round")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, idle);
criterion_main!(benches);
