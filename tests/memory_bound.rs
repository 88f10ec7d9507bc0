//! A node's memory is set by its configuration, not by its data: three
//! node processes with a small entry cache and page cache take a load many
//! times those caches, and each node's resident memory grows by no more
//! than the README's formula allows for them, less than the data it holds.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use flotilla::client::ClientConfig;

/// Values written: 512 of 256 KiB, 128 MiB, 128 times the entry cache.
const VALUES: usize = 512;
/// What a node may grow by under this load, from the README's formula for
/// these settings: the entry cache (1 MiB) and page cache (8 MiB), the
/// overlay (at most 32 MiB), entries not yet checkpointed (about 5 MiB),
/// and 64 MiB for requests and messages in flight and the allocator's
/// spare pages. Measured: 77 to 89 MiB with this cache; with a 1 GiB
/// entry cache a node grew by 119 MiB after only 40 MiB of data.
const GROWTH_BOUND: u64 = 112 << 20;
const VALUE_BYTES: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_far_larger_than_the_caches_leaves_each_nodes_memory_bounded() {
    let dir = test_dir();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let seeds = seed_list(&addrs);
    let mut nodes = Nodes(Default::default(), dir.path().to_path_buf());
    let small = ["--raft-cache", "1MiB", "--db-cache", "8MiB"];
    for (i, a) in addrs.iter().enumerate() {
        nodes
            .0
            .insert(i, spawn_with(dir.path(), i, *a, Some(&seeds), &small));
    }
    init(dir.path(), addrs[0]).await;
    let caller = caller(&dir.path().join("certs"));
    wait_for(&caller, &addrs, "the cluster to settle", |rs| {
        settled(rs, 3)
    })
    .await;
    let rss =
        |rs: &[flotilla::api::NodeReport]| -> Vec<u64> { rs.iter().map(|r| r.rss_bytes).collect() };
    let before = rss(&reports(&caller, &addrs).await);
    let mut config = ClientConfig::from_certs_dir(
        addrs.iter().map(|a| a.to_string()).collect(),
        &dir.path().join("certs"),
    );
    config.timeout = Duration::from_secs(20);
    let client = flotilla::client::Client::new(config).unwrap();
    let mut peak = vec![0u64; 3];
    for chunk in (0..VALUES).collect::<Vec<_>>().chunks(8) {
        // Eight puts side by side, then a look at every node's memory.
        let mut puts = tokio::task::JoinSet::new();
        for &i in chunk {
            let client = client.clone();
            puts.spawn(async move {
                let key = format!("big-{i}");
                client
                    .put(key.as_bytes(), &vec![i as u8; VALUE_BYTES])
                    .await
            });
        }
        while let Some(done) = puts.join_next().await {
            done.unwrap().unwrap();
        }
        for (p, r) in peak.iter_mut().zip(rss(&reports(&caller, &addrs).await)) {
            *p = (*p).max(r);
        }
    }
    for i in (0..VALUES).step_by(17) {
        let got = client.get(format!("big-{i}").as_bytes()).await.unwrap();
        assert_eq!(got, Some(vec![i as u8; VALUE_BYTES]), "value {i}");
    }
    let data = (VALUES * VALUE_BYTES) as u64;
    for (i, (b, p)) in before.iter().zip(&peak).enumerate() {
        let growth = p.saturating_sub(*b);
        eprintln!(
            "node {i}: {} MiB before, {} MiB at peak, {} MiB of data",
            b >> 20,
            p >> 20,
            data >> 20
        );
        assert!(
            growth <= GROWTH_BOUND,
            "node {i} grew by {} MiB while holding {} MiB of data",
            growth >> 20,
            data >> 20
        );
    }
}
