//! `flotilla scan` over megabyte values against three node processes: 20
//! values of 1 MiB, all in one group, come back in pages of at most the
//! 4 MiB budget, and the CLI with its default `--limit 1000` prints every
//! one of them, byte for byte.

mod common;

use std::process::Command as Process;

use common::*;
use flotilla::client::KeyRange;
use flotilla::storage::SCAN_PAGE_BYTES;

const ROWS: usize = 20;
const VALUE_BYTES: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_scans_megabyte_values_in_pages() {
    let dir = test_dir();
    let certs_dir = dir.path().join("certs");
    let (addrs, nodes) = spawn_cluster(dir.path(), 3);
    init(dir.path(), addrs[0]).await;
    wait_for(
        &caller(&certs_dir),
        &addrs,
        "three nodes did not settle",
        |rs| settled(rs, 3),
    )
    .await;
    let client = client_through(dir.path(), &addrs);
    let catalog = client.catalog().await.unwrap();

    // Keys of one group, so that its rows alone are five pages' worth.
    let group = catalog.group_of(b"big/000000");
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("big/{i:06}"))
        .filter(|k| catalog.group_of(k.as_bytes()) == group)
        .take(ROWS)
        .collect();
    assert_eq!(keys.len(), ROWS);
    let value = |k: &str| {
        let mut v = k.as_bytes().repeat(VALUE_BYTES / k.len() + 1);
        v.truncate(VALUE_BYTES);
        v
    };
    for k in &keys {
        client.put(k.as_bytes(), &value(k)).await.unwrap();
    }

    // The group answers in pages of at most the budget.
    let mut pages = Vec::new();
    let mut from = Some(b"big/".to_vec());
    while let Some(start) = from {
        let page = client
            .scan_page(group, start, Some(b"big0".to_vec()), 1000)
            .await
            .unwrap();
        from = page.resume.clone();
        pages.push(page);
    }
    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p.rows.iter().map(|(k, v)| k.len() + v.len()).sum())
        .collect();
    assert!(
        sizes.iter().all(|s| *s <= SCAN_PAGE_BYTES),
        "page bytes {sizes:?}"
    );
    assert!(
        pages.len() >= ROWS * VALUE_BYTES / SCAN_PAGE_BYTES,
        "{sizes:?}"
    );
    let paged: usize = pages.iter().map(|p| p.rows.len()).sum();
    assert_eq!(paged, ROWS);

    // The CLI, with its default limit, prints all of them as
    // KEY<TAB>VALUE lines of raw bytes.
    let out = Process::new(EXE)
        .arg("--endpoints")
        .arg(seed_list(&addrs))
        .arg("--certs-dir")
        .arg(&certs_dir)
        .args(["scan", "--prefix", "big/"])
        .env_remove("FLOTILLA_ENDPOINTS")
        .env_remove("FLOTILLA_CERTS_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = Vec::new();
    for k in &keys {
        expected.extend_from_slice(k.as_bytes());
        expected.push(b'\t');
        expected.extend_from_slice(&value(k));
        expected.push(b'\n');
    }
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected, "the rows differ from what was put");

    // The library's stream gives the same rows, and a limit stops it.
    let first = client
        .scan(KeyRange::Prefix(b"big/".to_vec()), 7)
        .await
        .unwrap();
    let want: Vec<&[u8]> = keys[..7].iter().map(|k| k.as_bytes()).collect();
    let got: Vec<&[u8]> = first.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(got, want);
    drop(nodes);
    keep(dir);
}
