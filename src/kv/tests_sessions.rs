//! Session bounds, eviction, certificate binding and kept answers.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// Small bounds, so scenarios reach them in a few commands.
const LIMITS: SessionLimits = SessionLimits {
    max_sessions: 16,
    max_bytes: 1 << 20,
    ttl_ms: 60_000,
};

const MIB: usize = 1024 * 1024;

/// One group's state machine, fed entries at consecutive log indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Group {
    store: MapStore,
    index: u64,
    limits: SessionLimits,
}

impl Group {
    fn new(limits: SessionLimits) -> Group {
        Group {
            store: MapStore::default(),
            index: 0,
            limits,
        }
    }

    /// Applies `c` as the next entry of the log.
    fn apply(&mut self, c: &Command) -> Outcome<Response> {
        self.index += 1;
        apply(&mut self.store, c, self.index, &self.limits).unwrap()
    }

    fn clients(&self) -> Vec<u64> {
        self.store.sessions.keys().copied().collect()
    }

    /// The table's totals agree with the sessions it holds.
    fn assert_honest(&self) {
        let t = &self.store.table;
        assert_eq!(t.count, self.store.sessions.len() as u64);
        let bytes: u64 = self.store.sessions.values().map(Session::cost).sum();
        assert_eq!(t.bytes, bytes);
        assert!(t.count <= self.limits.max_sessions, "{t:?}");
        assert!(t.bytes <= self.limits.max_bytes, "{t:?}");
    }
}

/// A first attempt of `op` by `client`, stamped at log time `ms`.
fn first(client: u64, seq: u64, ms: u64, op: Op) -> Command {
    Command {
        client,
        seq,
        ack_below: seq,
        fresh: true,
        proposed_ms: ms,
        op,
    }
}

/// The same command sent again after an attempt that may have applied.
fn again(c: &Command) -> Command {
    Command {
        fresh: false,
        ..c.clone()
    }
}

fn put(k: &str, v: &[u8]) -> Op {
    Op::Put {
        key: k.into(),
        value: v.to_vec(),
    }
}

fn cas(k: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Op {
    Op::Cas {
        key: k.into(),
        expected: expected.map(<[u8]>::to_vec),
        new: new.map(<[u8]>::to_vec),
    }
}

fn is_lost(r: &Outcome<Response>) -> bool {
    matches!(r, Err(Rejection::AnswerLost { .. }))
}

#[test]
fn clients_with_different_certificates_never_share_a_session() {
    let (cert_a, cert_b) = ([1u8; 32], [2u8; 32]);
    let a = session_key(Some(&cert_a), 42);
    let b = session_key(Some(&cert_b), 42);
    assert_ne!(a, b, "same id, different certificates");
    assert_eq!(a, session_key(Some(&cert_a), 42), "the key is stable");
    assert_ne!(a, TABLE_KEY);
    assert_eq!(session_key(Some(&cert_a), 0), 0, "no session stays none");

    let mut g = Group::new(LIMITS);
    let by_a = first(a, 1, 0, put("ka", b"from a"));
    assert_eq!(g.apply(&by_a), Ok(Response::Written));
    // B records the same id and sequence: its write applies all the same.
    assert_eq!(
        g.apply(&first(b, 1, 0, put("kb", b"from b"))),
        Ok(Response::Written)
    );
    assert_eq!(g.store.get(b"kb").unwrap(), Some(b"from b".to_vec()));
    // A's retry is still deduplicated: it does not overwrite a newer value.
    g.apply(&first(0, 0, 0, put("ka", b"newer"))).unwrap();
    assert_eq!(g.apply(&again(&by_a)), Ok(Response::Written));
    assert_eq!(g.store.get(b"ka").unwrap(), Some(b"newer".to_vec()));
}

#[test]
fn the_least_recently_used_sessions_go_first() {
    let mut g = Group::new(LIMITS);
    for client in 1..=16 {
        g.apply(&first(client, 1, 0, put("k", b"v"))).unwrap();
    }
    // Client 1 writes again: now clients 2 and 3 are the oldest.
    g.apply(&first(1, 2, 0, put("k", b"v"))).unwrap();
    g.assert_honest();
    assert_eq!(g.clients().len(), 16, "at the bound, nothing goes");
    g.apply(&first(17, 1, 0, put("k", b"v"))).unwrap();
    // Over the bound: down to 15 (fifteen sixteenths), oldest first.
    let mut expect = vec![1];
    expect.extend(4..=17);
    assert_eq!(g.clients(), expect);
    g.assert_honest();
    // The evicted client's retry is refused, not applied again.
    let before = g.clone();
    let retry = g.apply(&again(&first(2, 1, 0, put("k", b"v"))));
    assert!(is_lost(&retry), "{retry:?}");
    assert_eq!(g.store, before.store, "a refused retry changes nothing");
}

#[test]
fn the_byte_bound_evicts_like_the_count_bound() {
    let one = Session {
        results: vec![(
            1,
            Kept::Answer(Response::Cas {
                swapped: false,
                current: Some(vec![0; 200]),
            }),
        )],
        ..Session::default()
    }
    .cost();
    let limits = SessionLimits {
        max_sessions: 1000,
        max_bytes: 8 * one,
        ..LIMITS
    };
    let mut g = Group::new(limits);
    g.apply(&first(0, 0, 0, put("k", &[7; 200]))).unwrap();
    for client in 1..=9 {
        let failed = g.apply(&first(client, 1, 0, cas("k", None, Some(b"x"))));
        assert!(matches!(failed, Ok(Response::Cas { swapped: false, .. })));
        g.assert_honest();
    }
    // The ninth went over 8 sessions' bytes: down to 15/16 of them, so
    // the two oldest went.
    assert_eq!(g.clients(), (3..=9).collect::<Vec<_>>());
}

#[test]
fn idle_sessions_expire_after_the_ttl_in_log_time() {
    let mut g = Group::new(LIMITS);
    let one = first(1, 1, 1_000, put("k", b"1"));
    g.apply(&one).unwrap();
    g.apply(&first(2, 1, 50_000, put("k", b"2"))).unwrap();
    // A late stamp from a slower clock does not move log time back.
    g.apply(&first(3, 1, 10, put("k", b"3"))).unwrap();
    assert_eq!(g.store.table.clock_ms, 50_000);
    assert_eq!(g.clients(), vec![1, 2, 3]);
    // At 70 s client 1 has been idle 69 s: the sweep (due every quarter
    // TTL) drops it; 2 and 3 were used within the TTL.
    g.apply(&first(4, 1, 70_000, put("k", b"4"))).unwrap();
    assert_eq!(g.clients(), vec![2, 3, 4]);
    g.assert_honest();
    let before = g.clone();
    assert!(is_lost(&g.apply(&again(&one))), "a retry past the TTL");
    assert_eq!(g.store, before.store);
    // Its next first attempt opens a new session.
    let next = first(1, 2, 70_001, put("k", b"1 again"));
    assert_eq!(g.apply(&next), Ok(Response::Written));
    // Client 2 is past the TTL before any sweep: refused on lookup.
    let late = again(&first(2, 1, 200_000, put("k", b"2")));
    assert!(is_lost(&g.apply(&late)));
}

#[test]
fn a_retry_older_than_a_reopened_session_is_refused() {
    let mut g = Group::new(LIMITS);
    let lost = first(5, 2, 1_000, put("k", b"maybe applied"));
    g.apply(&lost).unwrap();
    // The session expires; the client's next write opens a new one while
    // sequences 1 and 2 are still unanswered (it acknowledges below 1).
    let reopen = Command {
        ack_below: 1,
        ..first(5, 3, 100_000, put("k", b"3"))
    };
    g.apply(&reopen).unwrap();
    assert_eq!(g.store.sessions[&5].opened_at, 3);
    // Sequence 2 may have applied in the old session: its retry is refused.
    assert!(is_lost(&g.apply(&again(&lost))));
    assert_eq!(g.store.get(b"k").unwrap(), Some(b"3".to_vec()));
    // A first attempt older than the opener cannot have applied: it does.
    let late_first = first(5, 1, 100_001, put("other", b"1"));
    assert_eq!(g.apply(&late_first), Ok(Response::Written));
    assert_eq!(g.apply(&again(&late_first)), Ok(Response::Written));
}

#[test]
fn a_failed_cas_keeps_no_large_value() {
    let mut g = Group::new(LIMITS);
    let big = vec![9u8; MIB];
    g.apply(&first(0, 0, 0, put("k", &big))).unwrap();
    let c = first(7, 1, 0, cas("k", Some(b"x"), Some(b"y")));
    let answer = Ok(Response::Cas {
        swapped: false,
        current: Some(big.clone()),
    });
    assert_eq!(g.apply(&c), answer);
    let cost = g.store.sessions[&7].cost();
    assert!(cost < 1024, "a session of {cost} bytes");
    g.assert_honest();
    // A retry reads the key again: a value other than the expected one is
    // a failed swap now.
    assert_eq!(g.apply(&again(&c)), answer);
    g.apply(&first(0, 0, 0, put("k", b"other"))).unwrap();
    assert_eq!(
        g.apply(&again(&c)),
        Ok(Response::Cas {
            swapped: false,
            current: Some(b"other".to_vec())
        })
    );
    // The expected value cannot be explained by a failed swap: refused,
    // and the swap is not made.
    g.apply(&first(0, 0, 0, put("k", b"x"))).unwrap();
    assert!(is_lost(&g.apply(&again(&c))));
    assert_eq!(g.store.get(b"k").unwrap(), Some(b"x".to_vec()));
}

#[test]
fn a_swapped_cas_keeps_no_value_and_replays_the_expected_one() {
    let mut g = Group::new(LIMITS);
    let big = vec![3u8; MIB];
    g.apply(&first(0, 0, 0, put("k", &big))).unwrap();
    let c = first(8, 1, 0, cas("k", Some(&big), Some(b"z")));
    let answer = Ok(Response::Cas {
        swapped: true,
        current: Some(big),
    });
    assert_eq!(g.apply(&c), answer);
    assert!(g.store.sessions[&8].cost() < 1024);
    assert_eq!(g.apply(&again(&c)), answer);
    assert_eq!(g.store.get(b"k").unwrap(), Some(b"z".to_vec()));
}

/// A random command stream: many clients, retries, large answers, a clock
/// that mostly moves on and sometimes lags.
fn random_commands(seed: u64, n: usize) -> Vec<Command> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seqs = [0u64; 64];
    let mut ms = 0u64;
    let mut out: Vec<Command> = Vec::new();
    for _ in 0..n {
        ms += rng.random_range(0..4_000);
        let stamp = ms.saturating_sub(rng.random_range(0..2) * 5_000);
        if !out.is_empty() && rng.random_bool(0.2) {
            let i = rng.random_range(0..out.len());
            out.push(again(&out[i]));
            continue;
        }
        let client = rng.random_range(1..=64u64);
        seqs[client as usize - 1] += 1;
        let k = format!("k{}", rng.random_range(0..8));
        let value = vec![client as u8; rng.random_range(0..600)];
        let op = if rng.random_bool(0.5) {
            put(&k, &value)
        } else {
            cas(&k, Some(&value), Some(b"c"))
        };
        out.push(first(client, seqs[client as usize - 1], stamp, op));
    }
    out
}

#[test]
fn replicas_fed_the_same_commands_keep_the_same_sessions() {
    let limits = SessionLimits {
        max_sessions: 20,
        max_bytes: 12 * 1024,
        ttl_ms: 100_000,
    };
    for seed in 0..4 {
        let (mut a, mut b) = (Group::new(limits), Group::new(limits));
        for c in random_commands(seed, 3_000) {
            let (ra, rb) = (a.apply(&c), b.apply(&c));
            assert_eq!(ra, rb, "seed {seed}");
            a.assert_honest();
        }
        assert_eq!(a, b, "seed {seed}");
        assert!(!a.store.sessions.is_empty());
    }
}

#[test]
fn a_long_run_of_fresh_clients_keeps_the_table_bounded() {
    // As many one-write CLI runs as 1.2 times the default bound.
    let mut g = Group::new(SessionLimits::default());
    let runs = g.limits.max_sessions * 6 / 5;
    for client in 1..=runs {
        g.apply(&first(client, 1, client, put("k", b"v"))).unwrap();
        assert!(g.store.table.count <= g.limits.max_sessions);
    }
    g.assert_honest();
    assert!(g.store.sessions.contains_key(&runs), "the newest stays");
    assert!(!g.store.sessions.contains_key(&1), "the oldest went");
}

#[test]
fn a_sessions_cost_is_its_encoding_plus_a_rows_overhead() {
    let mut s = Session::default();
    for seq in 0..40u64 {
        let kept = match seq % 4 {
            0 => Kept::Answer(Response::Written),
            1 => Kept::Answer(Response::Cas {
                swapped: false,
                current: Some(vec![1; seq as usize * 6]),
            }),
            2 => Kept::Swapped,
            _ => Kept::FailedLarge,
        };
        s.results.push((seq, kept));
        let stored = crate::wire::encode(&s).len() as u64 + 64;
        // The encoding may pad each value to 8 bytes; the cost does not.
        let padding = 8 * s.results.len() as u64;
        let cost = s.cost();
        assert!(cost <= stored, "cost {cost}, stored {stored}");
        assert!(cost + padding >= stored, "cost {cost}, stored {stored}");
    }
}
