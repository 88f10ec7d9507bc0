//! Streamed snapshots between real node processes: a node added to a
//! cluster whose groups each hold more than a snapshot chunk (1 MiB)
//! receives its replicas by snapshot over QUIC, and `check` finds them
//! identical to the others.

mod common;

use std::time::Instant;

use common::*;

/// Values written: 48 of 256 KiB, 12 MiB over the groups.
const KEYS: usize = 48;
const VALUE_BYTES: usize = 256 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_receives_groups_larger_than_a_chunk_by_snapshot() {
    let dir = test_dir();
    let (mut addrs, mut nodes) = spawn_cluster(dir.path(), 3);
    init(dir.path(), addrs[0]).await;
    let caller = caller(&dir.path().join("certs"));
    wait_for(&caller, &addrs, "cluster formed", |rs| settled(rs, 3)).await;
    let client = client_through(dir.path(), &addrs);
    for i in 0..KEYS {
        let value = vec![i as u8; VALUE_BYTES];
        client
            .put(format!("big-{i:03}").as_bytes(), &value)
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }

    // A fourth node joins; placement gives it replicas, which only a
    // snapshot can fill (the groups' logs start after their founding).
    let started = Instant::now();
    let new = free_addr();
    nodes
        .0
        .insert(3, spawn(dir.path(), 3, new, Some(&seed_list(&addrs))));
    addrs.push(new);
    wait_for(&caller, &addrs, "the new node holds replicas", |rs| {
        rs.iter()
            .any(|r| r.addr == new.to_string() && r.groups.len() > 1)
    })
    .await;
    wait_caught_up(&caller, &addrs, new).await;
    eprintln!(
        "the new node caught up {:?} after it started ({} MiB written)",
        started.elapsed(),
        (KEYS * VALUE_BYTES) >> 20
    );

    // Every replica, the new ones included, holds the same state.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, text) = run_check(dir.path(), &addrs);
        if code == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "check: {text}");
        tokio::time::sleep(POLL).await;
    }
    for i in (0..KEYS).step_by(7) {
        let v = client.get(format!("big-{i:03}").as_bytes()).await.unwrap();
        assert_eq!(v, Some(vec![i as u8; VALUE_BYTES]), "big-{i:03}");
    }
    drop(nodes);
    keep(dir);
}
