//! Small histories with a known answer, and random ones compared against
//! a brute-force search over every order.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

const BUDGET: u64 = 1_000_000;

fn v(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

/// An operation on key `k` from `from` to `to` (milliseconds).
fn op(client: usize, from: u64, to: u64, call: Call, outcome: Outcome) -> Entry {
    Entry {
        client,
        key: b"k".to_vec(),
        call,
        invoked: Duration::from_millis(from),
        completed: Duration::from_millis(to),
        outcome,
    }
}

fn get(c: usize, from: u64, to: u64, seen: Option<Vec<u8>>) -> Entry {
    op(c, from, to, Call::Get, Outcome::Read(seen))
}

fn put(c: usize, from: u64, to: u64, value: &str, outcome: Outcome) -> Entry {
    let value = value.as_bytes().to_vec();
    op(c, from, to, Call::Put { value }, outcome)
}

fn cas(c: usize, from: u64, to: u64, expected: Option<Vec<u8>>, new: &str, o: Outcome) -> Entry {
    let new = new.as_bytes().to_vec();
    op(c, from, to, Call::Cas { expected, new }, o)
}

fn swapped(current: Option<Vec<u8>>) -> Outcome {
    Outcome::Cas {
        swapped: true,
        current,
    }
}

fn refused(current: Option<Vec<u8>>) -> Outcome {
    Outcome::Cas {
        swapped: false,
        current,
    }
}

fn linearizable(h: &[Entry]) -> bool {
    match check(h, BUDGET) {
        Verdict::Linearizable { .. } => true,
        Verdict::Violation { .. } => false,
        other => panic!("no answer: {other:?}"),
    }
}

#[test]
fn histories_with_a_known_answer() {
    use Outcome::{Failed, Unknown, Written};
    let cases: Vec<(&str, Vec<Entry>, bool)> = vec![
        (
            "one client, in order",
            vec![
                get(0, 0, 1, None),
                put(0, 2, 3, "a", Written),
                cas(0, 4, 5, v("a"), "b", swapped(v("a"))),
                cas(0, 6, 7, v("a"), "c", refused(v("b"))),
                get(0, 8, 9, v("b")),
            ],
            true,
        ),
        (
            "a read sees the new value, a later read the old one",
            vec![
                put(0, 0, 1, "a", Written),
                put(0, 2, 10, "b", Written),
                get(1, 3, 4, v("b")),
                get(2, 5, 6, v("a")),
            ],
            false,
        ),
        (
            "reads overlapping a write, old then new",
            vec![
                put(0, 0, 1, "a", Written),
                put(0, 2, 10, "b", Written),
                get(1, 3, 4, v("a")),
                get(2, 5, 6, v("b")),
            ],
            true,
        ),
        (
            "a stale read after an acknowledged write",
            vec![
                put(0, 0, 1, "a", Written),
                put(0, 2, 3, "b", Written),
                get(1, 4, 5, v("a")),
            ],
            false,
        ),
        (
            "a lost acknowledged write: the final read sees the value before it",
            vec![
                put(0, 0, 1, "a", Written),
                put(1, 2, 3, "b", Written),
                cas(2, 4, 5, v("b"), "c", swapped(v("b"))),
                get(0, 10, 11, v("b")),
            ],
            false,
        ),
        (
            "an acknowledged write lost entirely",
            vec![put(0, 0, 1, "a", Written), get(1, 2, 3, None)],
            false,
        ),
        (
            "two CAS from the same value cannot both swap",
            vec![
                put(0, 0, 1, "a", Written),
                cas(1, 2, 5, v("a"), "b", swapped(v("a"))),
                cas(2, 2, 5, v("a"), "c", swapped(v("a"))),
            ],
            false,
        ),
        (
            "concurrent CAS: one swaps, the other sees its value",
            vec![
                put(0, 0, 1, "a", Written),
                cas(1, 2, 5, v("a"), "b", swapped(v("a"))),
                cas(2, 2, 5, v("a"), "c", refused(v("b"))),
                get(0, 6, 7, v("b")),
            ],
            true,
        ),
        (
            "a timed-out write seen long after it was given up on",
            vec![
                put(0, 0, 1, "a", Written),
                put(1, 2, 3, "b", Unknown),
                get(0, 20, 21, v("a")),
                get(0, 30, 31, v("b")),
            ],
            true,
        ),
        (
            "a timed-out write seen before it was invoked",
            vec![get(0, 0, 1, v("b")), put(1, 2, 3, "b", Unknown)],
            false,
        ),
        (
            "a timed-out write never seen",
            vec![
                put(0, 0, 1, "a", Written),
                put(1, 2, 3, "b", Unknown),
                get(0, 4, 5, v("a")),
            ],
            true,
        ),
        (
            "a timed-out write seen, then the value before it again",
            vec![
                put(0, 0, 1, "a", Written),
                put(1, 2, 3, "b", Unknown),
                get(0, 4, 5, v("b")),
                get(0, 6, 7, v("a")),
            ],
            false,
        ),
        (
            "a timed-out CAS that swapped, seen by a later CAS",
            vec![
                put(0, 0, 1, "a", Written),
                cas(1, 2, 3, v("a"), "b", Unknown),
                cas(0, 4, 5, v("b"), "c", swapped(v("b"))),
            ],
            true,
        ),
        (
            "a failed write is dropped, and a read of its value is not explained",
            vec![
                put(0, 0, 1, "a", Failed),
                get(1, 2, 3, v("a")),
                get(1, 4, 5, None),
            ],
            false,
        ),
        (
            "a failed read is dropped",
            vec![
                put(0, 0, 1, "a", Written),
                op(1, 2, 3, Call::Get, Failed),
                get(1, 4, 5, v("a")),
            ],
            true,
        ),
    ];
    for (name, history, expected) in cases {
        assert_eq!(linearizable(&history), expected, "{name}");
    }
}

#[test]
fn keys_are_checked_apart_and_the_bad_one_is_named() {
    let mut h = vec![put(0, 0, 1, "a", Outcome::Written), get(0, 2, 3, v("a"))];
    let mut other = vec![put(1, 0, 1, "x", Outcome::Written), get(1, 2, 3, v("y"))];
    for e in &mut other {
        e.key = b"other".to_vec();
    }
    // The same read on key "k" would be fine: only "other" is wrong.
    h.extend(other);
    match check(&h, BUDGET) {
        Verdict::Violation { key, stuck, .. } => {
            assert_eq!(key, b"other");
            assert_eq!(stuck.call, Call::Get);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_entries_and_exhausted_budgets_are_said_so() {
    let bad = op(0, 0, 1, Call::Get, Outcome::Written);
    assert!(matches!(check(&[bad], BUDGET), Verdict::Malformed(_)));
    let backwards = get(0, 5, 1, None);
    assert!(matches!(check(&[backwards], BUDGET), Verdict::Malformed(_)));
    let h: Vec<Entry> = (0..10)
        .map(|i| put(i, 0, 100, &i.to_string(), Outcome::Written))
        .chain([get(0, 200, 201, v("nothing wrote this"))])
        .collect();
    assert!(matches!(check(&h, 5), Verdict::GaveUp { .. }));
}

#[test]
fn unobserved_timed_out_writes_are_pruned_only_when_values_are_unique() {
    let h = vec![
        put(0, 0, 1, "a", Outcome::Written),
        put(1, 2, 3, "b", Outcome::Unknown),
        put(2, 2, 3, "c", Outcome::Unknown),
        get(0, 4, 5, v("a")),
    ];
    assert_eq!(
        check(&h, BUDGET),
        Verdict::Linearizable {
            searched: 2,
            pruned: 2
        }
    );
    let mut twice = h.clone();
    twice[2] = put(2, 2, 3, "b", Outcome::Unknown);
    assert_eq!(
        check(&twice, BUDGET),
        Verdict::Linearizable {
            searched: 4,
            pruned: 0
        }
    );
}

/// Every order of the operations that respects real time (an operation
/// that completed before another was invoked comes first), with each
/// unknown operation placed or left out: is one legal?
fn brute_force(h: &[Entry]) -> bool {
    let ops: Vec<&Entry> = h
        .iter()
        .filter(|e| e.outcome != Outcome::Failed)
        .filter(|e| !(e.outcome == Outcome::Unknown && e.call == Call::Get))
        .collect();
    fn go(ops: &[&Entry], used: &mut Vec<bool>, state: Option<Vec<u8>>) -> bool {
        if (0..ops.len()).all(|i| used[i] || ops[i].outcome == Outcome::Unknown) {
            return true;
        }
        for i in 0..ops.len() {
            if used[i] {
                continue;
            }
            // Not before a known operation that completed before i began.
            let blocked = (0..ops.len()).any(|j| {
                !used[j]
                    && j != i
                    && ops[j].outcome != Outcome::Unknown
                    && ops[j].completed < ops[i].invoked
            });
            if blocked {
                continue;
            }
            let e = ops[i];
            let next = match (&e.call, &e.outcome) {
                (Call::Get, Outcome::Read(seen)) => (*seen == state).then(|| state.clone()),
                (Call::Put { value }, _) => Some(Some(value.clone())),
                (Call::Cas { expected, new }, outcome) => {
                    let swaps = state == *expected;
                    let after = if swaps {
                        Some(new.clone())
                    } else {
                        state.clone()
                    };
                    match outcome {
                        Outcome::Cas { swapped, current } => {
                            (*swapped == swaps && *current == state).then_some(after)
                        }
                        _ => Some(after),
                    }
                }
                _ => unreachable!(),
            };
            if let Some(next) = next {
                used[i] = true;
                if go(ops, used, next) {
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    go(&ops, &mut vec![false; ops.len()], None)
}

/// A random small history: a few clients, overlapping calls, values from
/// a tiny set (so CAS often succeeds and reads often match), every kind of
/// outcome; about half of them are linearizable.
fn random_history(rng: &mut ChaCha8Rng) -> Vec<Entry> {
    let values = ["a", "b", "c"];
    let pick = |rng: &mut ChaCha8Rng| {
        let i = rng.random_range(0..=values.len());
        values.get(i).map(|s| s.as_bytes().to_vec())
    };
    let n = rng.random_range(1..=6);
    (0..n)
        .map(|i| {
            let from = rng.random_range(0..20);
            let to = from + rng.random_range(0..8);
            let unknown = rng.random_bool(0.2);
            let (call, outcome) = match rng.random_range(0..3) {
                0 => (Call::Get, Outcome::Read(pick(rng))),
                1 => {
                    let value = pick(rng).unwrap_or_else(|| b"d".to_vec());
                    (Call::Put { value }, Outcome::Written)
                }
                _ => {
                    let new = pick(rng).unwrap_or_else(|| b"d".to_vec());
                    let outcome = Outcome::Cas {
                        swapped: rng.random_bool(0.5),
                        current: pick(rng),
                    };
                    (
                        Call::Cas {
                            expected: pick(rng),
                            new,
                        },
                        outcome,
                    )
                }
            };
            let outcome = if unknown { Outcome::Unknown } else { outcome };
            op(i, from, to, call, outcome)
        })
        .collect()
}

#[test]
fn the_search_agrees_with_brute_force_on_random_small_histories() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let mut yes = 0;
    for round in 0..3_000 {
        let h = random_history(&mut rng);
        let expected = brute_force(&h);
        assert_eq!(linearizable(&h), expected, "round {round}: {h:#?}");
        yes += usize::from(expected);
    }
    // Both answers occur often enough for the comparison to mean something.
    assert!((300..2_700).contains(&yes), "{yes} of 3000 linearizable");
}

/// The same with unique written values, where pruning applies.
#[test]
fn pruning_agrees_with_brute_force_when_values_are_unique() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let mut pruned_any = 0;
    for round in 0..3_000 {
        let mut h = random_history(&mut rng);
        for (i, e) in h.iter_mut().enumerate() {
            match &mut e.call {
                Call::Put { value } | Call::Cas { new: value, .. } => {
                    value.push(b'0' + i as u8);
                }
                Call::Get => {}
            }
        }
        // Reads and expectations name written values (or the first
        // letters, which no write stores now) half of the time.
        let written: Vec<Vec<u8>> = h
            .iter()
            .filter_map(|e| e.writes())
            .map(<[u8]>::to_vec)
            .collect();
        for e in &mut h {
            if written.is_empty() || rng.random_bool(0.5) {
                continue;
            }
            let w = written[rng.random_range(0..written.len())].clone();
            match (&mut e.call, &mut e.outcome) {
                (_, Outcome::Read(seen)) => *seen = Some(w),
                (Call::Cas { expected, .. }, _) => *expected = Some(w),
                _ => {}
            }
        }
        let expected = brute_force(&h);
        match check(&h, BUDGET) {
            Verdict::Linearizable { pruned, .. } => {
                assert!(expected, "round {round}: {h:#?}");
                pruned_any += usize::from(pruned > 0);
            }
            Verdict::Violation { .. } => assert!(!expected, "round {round}: {h:#?}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(pruned_any > 100, "pruning happened in {pruned_any} rounds");
}

/// Hundreds of operations, so the memo's sets span many words: puts
/// overlapping each other and reads between them, then a final read that
/// is right or stale.
#[test]
fn long_histories_are_decided_both_ways() {
    let mut h = Vec::new();
    for i in 0..300u64 {
        let (from, to) = (10 * i, 10 * i + 15);
        h.push(put(0, from, to, &format!("a{i}"), Outcome::Written));
        let seen = if i == 0 {
            None
        } else {
            v(&format!("a{}", i - 1))
        };
        h.push(get(1, from + 1, from + 2, seen));
    }
    let end = 10 * 300 + 20;
    let mut right = h.clone();
    right.push(get(1, end, end + 1, v("a299")));
    assert!(linearizable(&right), "{:?}", check(&right, BUDGET));
    // a298 would pass: the last two puts overlap, so a298 may land last.
    // a297 completed before a299 began, so it cannot.
    let mut stale = h;
    stale.push(get(1, end, end + 1, v("a297")));
    assert!(!linearizable(&stale));
}
