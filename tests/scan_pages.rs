//! Paged scans through the client library against three drivers in one
//! process over QUIC, with a 64 KiB page budget so that a small data set
//! spans many pages: every row once and in order, a row larger than the
//! budget on a page of its own, and pages that each show one state of
//! their group while batches rewrite it.

#[path = "common/drivers.rs"]
mod drivers;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivers::QuicDrivers;
use flotilla::certs::Role;
use flotilla::client::{Client, KeyRange};
use flotilla::kv::BatchOp;
use flotilla::multiraft::DriverConfig;
use flotilla::storage::ScanPage;
use flotilla::types::{GroupId, NodeId};

const DEADLINE: Duration = Duration::from_secs(30);
/// The page budget of these nodes.
const BUDGET: usize = 64 * 1024;

/// Three drivers over QUIC with a page budget of [`BUDGET`], and a client.
fn cluster(dir: &std::path::Path) -> (QuicDrivers, Client) {
    let nodes = QuicDrivers::start(dir, 64, 4, |id: NodeId| DriverConfig {
        seed: id.0,
        scan_page_bytes: BUDGET,
        // Flushes every few rounds, so pages are read while the overlay
        // moves into redb.
        flush_rounds: 2,
        ..DriverConfig::default()
    });
    let client = nodes.client(dir, Role::Client, DEADLINE);
    (nodes, client)
}

fn bytes(page: &ScanPage) -> usize {
    page.rows.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Every page of `group` over `prefix`, each checked against the budget.
async fn group_pages(client: &Client, group: GroupId, prefix: &[u8]) -> Vec<ScanPage> {
    let mut end = prefix.to_vec();
    *end.last_mut().unwrap() += 1;
    let mut pages = Vec::new();
    let mut from = Some(prefix.to_vec());
    while let Some(start) = from {
        let page = client
            .scan_page(group, start, Some(end.clone()), 1000)
            .await
            .unwrap();
        assert!(page.rows.len() == 1 || bytes(&page) <= BUDGET);
        from = page.resume.clone();
        pages.push(page);
    }
    pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_come_in_pages_that_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, client) = cluster(dir.path());
    let client = &client;

    // 200 rows of 10 KiB: about 2 MB, some thirty pages.
    let keys: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("row/{i:03}").into_bytes())
        .collect();
    let value = |k: &[u8]| {
        let mut v = k.repeat(10 * 1024 / k.len() + 1);
        v.truncate(10 * 1024);
        v
    };
    for k in &keys {
        client.put(k, &value(k)).await.unwrap();
    }
    let rows = client
        .scan(KeyRange::Prefix(b"row/".to_vec()), 1000)
        .await
        .unwrap();
    let got: Vec<&Vec<u8>> = rows.iter().map(|(k, _)| k).collect();
    assert_eq!(got, keys.iter().collect::<Vec<_>>());
    assert!(rows.iter().all(|(k, v)| *v == value(k)));
    let mut pages = 0;
    for g in 1..=4 {
        pages += group_pages(client, GroupId(g), b"row/").await.len();
    }
    assert!(pages >= 200 * 10 * 1024 / BUDGET, "{pages} pages");
    // The stream hands out rows in order as the groups answer, up to the
    // limit.
    let mut scan = client
        .scan_pages(KeyRange::Prefix(b"row/".to_vec()), 150)
        .await
        .unwrap();
    let mut streamed = Vec::new();
    while let Some(page) = scan.next_page().await.unwrap() {
        assert!(!page.is_empty());
        streamed.extend(page.into_iter().map(|(k, _)| k));
    }
    assert_eq!(streamed, keys[..150].to_vec());

    // A row larger than the budget comes alone, between its neighbours.
    client.put(b"row/100+", &vec![7; 3 * BUDGET]).await.unwrap();
    let rows = client
        .scan(KeyRange::Prefix(b"row/".to_vec()), 1000)
        .await
        .unwrap();
    assert_eq!(rows.len(), 201);
    assert_eq!(rows[101].0, b"row/100+".to_vec());
    assert_eq!(rows[101].1.len(), 3 * BUDGET);
    nodes.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_one_state_while_batches_rewrite_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, client) = cluster(dir.path());
    let catalog = &nodes.catalog;
    // 40 keys of one vshard, rewritten together by each batch: about four
    // pages.
    let vshard = catalog.vshard(b"v/0");
    let keys: Vec<Vec<u8>> = (0..100_000)
        .map(|i| format!("v/{i}").into_bytes())
        .filter(|k| catalog.vshard(k) == vshard)
        .take(40)
        .collect();
    let group = catalog.group_of(&keys[0]);
    let batch = {
        let keys = keys.clone();
        move |version: u64| {
            keys.iter()
                .map(|k| {
                    let mut value = version.to_le_bytes().to_vec();
                    value.resize(6 * 1024, 0);
                    BatchOp::Put {
                        key: k.clone(),
                        value,
                    }
                })
                .collect::<Vec<_>>()
        }
    };
    client.batch(batch(0)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut version = 1;
            while !stop.load(Ordering::Relaxed) {
                client.batch(batch(version)).await.unwrap();
                written.store(version, Ordering::Relaxed);
                version += 1;
            }
        })
    };
    let version = |v: &[u8]| u64::from_le_bytes(v[..8].try_into().unwrap());
    let start = Instant::now();
    let mut scans = 0;
    let mut mixed = 0;
    // Scan until the writer has landed many batches, and some scan saw the
    // version change between its pages.
    while scans < 10 || written.load(Ordering::Relaxed) < 20 || mixed == 0 {
        assert!(start.elapsed() < DEADLINE, "{scans} scans, {mixed} mixed");
        let pages = group_pages(&client, group, b"v/").await;
        assert!(pages.len() >= 3, "{} pages", pages.len());
        let mut last = 0;
        let mut seen = Vec::new();
        for p in &pages {
            let versions: Vec<u64> = p.rows.iter().map(|(_, v)| version(v)).collect();
            assert!(
                versions.windows(2).all(|w| w[0] == w[1]),
                "a page mixes states: {versions:?}"
            );
            let v = versions.first().copied().unwrap_or(last);
            assert!(v >= last, "a later page shows an older state");
            last = v;
            seen.extend(p.rows.iter().map(|(k, _)| k.clone()));
        }
        let mut want = keys.clone();
        want.sort();
        assert_eq!(seen, want, "every key once, in order");
        mixed += usize::from(version(&pages[0].rows[0].1) != last);
        scans += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    nodes.stop();
}
