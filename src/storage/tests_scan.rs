//! Paged scans: every row once and in order across pages, whatever mix of
//! redb and overlay holds the rows; the byte budget and its one exception;
//! a read taken before later rounds reads the state it was taken in.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::tests::{bootstrapped, B};
use super::*;
use crate::kv::KvStore as _;
use crate::types::GroupId;

const G: GroupId = GroupId(1);

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Applies `rows` (`None` deletes) to group 1 in one round, keeping `model`
/// in step; flushes the whole overlay in that round when `flush`.
fn round(e: &Engine, model: &mut Model, rows: &[(Vec<u8>, Option<Vec<u8>>)], flush: bool) {
    let mut w = e.batch();
    let mut kv = w.kv(G);
    for (k, v) in rows {
        match v {
            Some(v) => {
                kv.put(k, v).unwrap();
                model.insert(k.clone(), v.clone());
            }
            None => {
                kv.delete(k).unwrap();
                model.remove(k);
            }
        }
    }
    w.set_applied(G, B + 1);
    if flush {
        w.flush_all();
    }
    e.persist(w).unwrap();
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

/// Every page of `from..end` with `limit` and `budget`, checked page by
/// page: within the limit, within the budget unless one row, and resuming
/// just past its last row.
fn pages(
    e: &Engine,
    from: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    budget: usize,
) -> Vec<ScanPage> {
    let mut out: Vec<ScanPage> = Vec::new();
    let mut from = Some(from.to_vec());
    while let Some(start) = from {
        let page = e
            .scan_read(G, &start, end, limit, budget)
            .unwrap()
            .page()
            .unwrap();
        let bytes: usize = page.rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(page.rows.len() <= limit);
        assert!(
            page.rows.len() == 1 || bytes <= budget,
            "{bytes} > {budget}"
        );
        if let (Some(last), Some(next)) = (page.rows.last(), &page.resume) {
            assert!(&last.0 < next, "the resume key follows the page");
        }
        assert!(out.len() < 10_000, "the pages do not end");
        from = page.resume.clone();
        out.push(page);
    }
    out
}

fn rows_of(pages: &[ScanPage]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pages.iter().flat_map(|p| p.rows.clone()).collect()
}

fn expected(model: &Model, from: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .iter()
        .filter(|(k, _)| k.as_slice() >= from && end.is_none_or(|e| k.as_slice() < e))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn pages_hold_every_row_once_in_order_within_the_budget() {
    let e = bootstrapped(&MemDisk::new());
    let mut model = Model::new();
    // 200 rows of 10 KiB in redb; then, in the overlay, a third of them
    // replaced, a run deleted (more bytes of keys than one copy takes) and
    // new rows between.
    let value = |i: usize, v: u8| vec![v; 10 * 1024 + i % 7];
    let all: Vec<_> = (0..200).map(|i| (key(i * 2), Some(value(i, 1)))).collect();
    round(&e, &mut model, &all, true);
    let mut changes: Vec<_> = (0..200)
        .step_by(3)
        .map(|i| (key(i * 2), Some(value(i, 2))))
        .collect();
    changes.extend((100..160).map(|i| (key(i * 2), None)));
    changes.extend((0..40).map(|i| (key(i * 10 + 1), Some(value(i, 3)))));
    round(&e, &mut model, &changes, false);
    assert!(
        e.overlay_bytes().unwrap() > 64 * 1024,
        "the overlay alone fills pages"
    );

    let budget = 64 * 1024;
    let all = pages(&e, b"", None, 1000, budget);
    assert_eq!(rows_of(&all), expected(&model, b"", None));
    let bytes: usize = model.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(all.len() >= bytes / budget, "{} pages", all.len());
    assert_eq!(all.last().unwrap().resume, None);
    // A row limit below the budget, and a range with an end.
    let limited = pages(&e, b"", None, 4, budget);
    assert!(limited.iter().all(|p| p.rows.len() <= 4));
    assert_eq!(rows_of(&limited), expected(&model, b"", None));
    let (from, to) = (key(33), key(301));
    let ranged = pages(&e, &from, Some(&to), 1000, budget);
    assert_eq!(rows_of(&ranged), expected(&model, &from, Some(&to)));
    assert!(pages(&e, &to, Some(&from), 1000, budget)[0].rows.is_empty());
}

#[test]
fn a_row_larger_than_the_budget_comes_alone() {
    let e = bootstrapped(&MemDisk::new());
    let mut model = Model::new();
    let rows = [
        (b"a".to_vec(), Some(vec![1; 100])),
        (b"b".to_vec(), Some(vec![2; 100 * 1024])),
        (b"c".to_vec(), Some(vec![3; 100])),
    ];
    round(&e, &mut model, &rows[..2], true);
    round(&e, &mut model, &rows[2..], false);
    let got = pages(&e, b"", None, 1000, 64 * 1024);
    let keys: Vec<Vec<&[u8]>> = got
        .iter()
        .map(|p| p.rows.iter().map(|r| r.0.as_slice()).collect())
        .collect();
    assert_eq!(keys, vec![vec![&b"a"[..]], vec![b"b"], vec![b"c"]]);
    assert_eq!(got[1].rows[0].1.len(), 100 * 1024);
}

#[test]
fn a_read_reads_the_state_it_was_taken_in() {
    let e = bootstrapped(&MemDisk::new());
    let mut model = Model::new();
    let first: Vec<_> = (0..50).map(|i| (key(i), Some(vec![1; 1000]))).collect();
    round(&e, &mut model, &first[..25], true);
    round(&e, &mut model, &first[25..], false);
    let taken = model.clone();
    let read = e.scan_read(G, b"", None, 1000, usize::MAX).unwrap();
    // Later rounds: the overlay flushed into redb, rows replaced and
    // deleted both in redb and in the overlay.
    let later: Vec<_> = (0..50).step_by(2).map(|i| (key(i), None)).collect();
    round(&e, &mut model, &later, true);
    let again: Vec<_> = (0..50)
        .step_by(3)
        .map(|i| (key(i), Some(vec![9; 10])))
        .collect();
    round(&e, &mut model, &again, false);
    assert_ne!(model, taken);
    let page = read.page().unwrap();
    assert_eq!(page.rows, expected(&taken, b"", None));
    assert_eq!(page.resume, None);
    let now = e.scan(G, b"", None, 1000).unwrap();
    assert_eq!(now, expected(&model, b"", None));
}

#[test]
fn random_histories_page_like_a_model() {
    for seed in 0..20 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let e = bootstrapped(&MemDisk::new());
        let mut model = Model::new();
        for _ in 0..20 {
            let rows: Vec<_> = (0..rng.random_range(1..40))
                .map(|_| {
                    let k = key(rng.random_range(0..120));
                    let v = rng
                        .random_bool(0.7)
                        .then(|| vec![7; rng.random_range(0..3000)]);
                    (k, v)
                })
                .collect();
            round(&e, &mut model, &rows, rng.random_bool(0.3));
            let limit = rng.random_range(1..30);
            let budget = rng.random_range(1..20_000);
            let from = key(rng.random_range(0..60));
            let end = rng.random_bool(0.5).then(|| key(rng.random_range(30..130)));
            let got = pages(&e, &from, end.as_deref(), limit, budget);
            let want = expected(&model, &from, end.as_deref());
            assert_eq!(rows_of(&got), want, "seed {seed}");
        }
    }
}
