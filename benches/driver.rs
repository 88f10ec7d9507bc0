//! Write throughput of a 3-node cluster of real driver threads, wired in
//! memory, with each node's redb on a real file (real fsyncs): one data
//! group against 32. Also prints fsyncs per 1,000 writes for each case, the
//! figure group commit exists to shrink.
//!
//! The load is a closed loop of independent clients (256, or
//! `FLOTILLA_BENCH_CLIENTS`), each sending its next write as soon as the
//! previous one is answered.
//!
//! `cargo bench --bench driver`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flotilla::kv::{Command, Op};

/// The allocator the `flotilla` binary runs with, so the figures match it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use flotilla::local::LocalCluster;

/// Concurrent clients.
fn clients() -> u64 {
    std::env::var("FLOTILLA_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}
/// Writes each client makes per measured iteration.
const WRITES_PER_CLIENT: u64 = 8;
/// Value size, as in the project's other figures.
const VALUE_BYTES: usize = 256;

async fn run_clients(cluster: &Arc<LocalCluster>, round: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for client in 1..=clients() {
        let c = cluster.clone();
        tasks.spawn(async move {
            for j in 0..WRITES_PER_CLIENT {
                let seq = round * WRITES_PER_CLIENT + j + 1;
                let cmd = Command {
                    client,
                    seq,
                    ack_below: seq,
                    fresh: true,
                    proposed_ms: 0,
                    op: Op::Put {
                        key: format!("c{client}-{j}").into_bytes(),
                        value: vec![b'v'; VALUE_BYTES],
                    },
                };
                c.write(cmd, Duration::from_secs(60)).await.expect("write");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("client task");
    }
}

fn writes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("cluster_writes");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(clients() * WRITES_PER_CLIENT));
    for data_groups in [1u64, 32] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster =
            Arc::new(LocalCluster::start(3, data_groups, 1024, Some(dir.path())).expect("cluster"));
        assert!(
            rt.block_on(cluster.wait_for_leaders(Duration::from_secs(30))),
            "no leaders"
        );
        let mut rounds = 0u64;
        let commits_before = cluster.commits();
        let redb_before = cluster.redb_commits();
        let syncs_before = cluster.syncs();
        group.bench_function(format!("{data_groups}_groups"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    rt.block_on(run_clients(&cluster, rounds));
                    rounds += 1;
                }
                start.elapsed()
            })
        });
        let writes = rounds * clients() * WRITES_PER_CLIENT;
        let commits = cluster.commits() - commits_before;
        let redb = cluster.redb_commits() - redb_before;
        let fsyncs = cluster.syncs() - syncs_before;
        eprintln!(
            "{data_groups} group(s): {writes} writes, {commits} round commits over 3 nodes ({redb} of them to redb), {fsyncs} fsyncs = {:.1} fsyncs per 1,000 writes",
            fsyncs as f64 * 1000.0 / writes as f64
        );
        Arc::into_inner(cluster)
            .expect("sole owner")
            .stop()
            .expect("stop");
    }
    group.finish();
}

criterion_group!(benches, writes);
criterion_main!(benches);
