//! A scan's answer from the driver is the read of its page, not its rows:
//! the driver takes it once the read index applied, and whoever reads it
//! later, while the driver runs on, reads the state of that moment.

use super::tests::cluster;
use super::*;
use crate::kv::Op;

#[test]
fn a_scan_is_answered_with_a_read_that_later_rounds_leave_alone() {
    let mut sim = cluster(9);
    let g = GroupId(2);
    let keys: Vec<Vec<u8>> = (0..2_000)
        .map(|i| format!("s/{i:04}").into_bytes())
        .filter(|k| sim.catalog.group_of(k) == g)
        .take(20)
        .collect();
    let put = |k: &[u8], v: &[u8]| Op::Put {
        key: k.to_vec(),
        value: v.to_vec(),
    };
    for (seq, k) in (1..).zip(&keys) {
        sim.write(1, seq, put(k, b"old"), 20_000).unwrap();
    }
    let leader = sim.leader(g).unwrap();
    let token = 9_000;
    sim.driver_mut(leader)
        .unwrap()
        .scan(token, g, b"s/", Some(b"s0"), 1000)
        .unwrap();
    assert!(sim
        .run_until(4_000, |s| s.completions.contains_key(&token))
        .unwrap());
    let read = match sim.completions.remove(&token) {
        Some(Ok(Reply::Scan(read))) => read,
        other => panic!("a scan is answered with its read, not {other:?}"),
    };
    assert_eq!(read.group(), g);
    // The driver goes on: every key rewritten, and enough ticks for the
    // overlay to be flushed into redb.
    for (seq, k) in (100..).zip(&keys) {
        sim.write(1, seq, put(k, b"new"), 20_000).unwrap();
    }
    sim.run_ticks(4 * crate::storage::FLUSH_TICKS).unwrap();
    let page = read.page().unwrap();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(
        page.rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        want
    );
    assert!(
        page.rows.iter().all(|r| r.1 == b"old"),
        "the state it was taken in"
    );
    assert_eq!(page.resume, None);
}
