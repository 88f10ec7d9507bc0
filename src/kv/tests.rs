use super::*;
use crate::error::Error;

fn cmd(client: u64, seq: u64, op: Op) -> Command {
    Command {
        client,
        seq,
        ack_below: 0,
        fresh: true,
        proposed_ms: 0,
        op,
    }
}

/// Applies `c` at an index that does not matter here, with the default
/// session bounds.
fn run(s: &mut impl KvStore, c: &Command) -> Result<Outcome<Response>> {
    apply(s, c, 1, &SessionLimits::default())
}

fn put(k: &str, v: &str) -> Op {
    Op::Put {
        key: k.into(),
        value: v.into(),
    }
}

fn cas(k: &str, expected: Option<&str>, new: Option<&str>) -> Op {
    Op::Cas {
        key: k.into(),
        expected: expected.map(Into::into),
        new: new.map(Into::into),
    }
}

#[test]
fn cas_table() {
    // (stored value before, expected, new) -> (swapped, stored value after)
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        bool,
        Option<&'static str>,
    );
    let cases: &[Case] = &[
        (None, None, Some("a"), true, Some("a")),
        (None, Some("a"), Some("b"), false, None),
        (Some("a"), Some("a"), Some("b"), true, Some("b")),
        (Some("a"), Some("x"), Some("b"), false, Some("a")),
        (Some("a"), None, Some("b"), false, Some("a")),
        (Some("a"), Some("a"), None, true, None),
    ];
    for &(before, expected, new, swapped, after) in cases {
        let mut s = MapStore::default();
        if let Some(b) = before {
            s.put(b"k", b.as_bytes()).unwrap();
        }
        let r = run(&mut s, &cmd(0, 0, cas("k", expected, new)))
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            Response::Cas {
                swapped,
                current: before.map(Into::into)
            },
            "case {before:?} {expected:?} {new:?}"
        );
        assert_eq!(s.get(b"k").unwrap(), after.map(|a| a.as_bytes().to_vec()));
    }
}

#[test]
fn same_client_and_sequence_applies_once_and_replays_the_first_result() {
    let mut s = MapStore::default();
    let first = run(&mut s, &cmd(9, 1, cas("k", None, Some("1"))))
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        Response::Cas {
            swapped: true,
            current: None
        }
    );
    // Someone else changes the key; the retry must not re-evaluate.
    run(&mut s, &cmd(0, 0, put("k", "other"))).unwrap().unwrap();
    let retry = run(&mut s, &cmd(9, 1, cas("k", None, Some("1"))))
        .unwrap()
        .unwrap();
    assert_eq!(retry, first);
    assert_eq!(s.get(b"k").unwrap(), Some(b"other".to_vec()));
}

#[test]
fn acknowledged_sequences_are_trimmed_and_then_refused() {
    let mut s = MapStore::default();
    for seq in 1..=5 {
        run(&mut s, &cmd(3, seq, put("k", "v"))).unwrap().unwrap();
    }
    let mut c = cmd(3, 6, put("k", "v"));
    c.ack_below = 5;
    run(&mut s, &c).unwrap().unwrap();
    let session = s.session(3).unwrap().unwrap();
    assert_eq!(session.floor, 5);
    let kept: Vec<u64> = session.results.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(kept, vec![5, 6], "only seqs 5 and 6 remain");
    let before = s.clone();
    let refused = run(&mut s, &cmd(3, 2, put("k", "v"))).unwrap();
    assert_eq!(s, before, "a refused command changes nothing");
    assert!(matches!(
        refused,
        Err(Rejection::SessionExpired {
            client: 3,
            seq: 2,
            floor: 5
        })
    ));
}

#[test]
fn limits_reject_oversize_keys_and_values() {
    let l = Limits {
        max_key: 4,
        max_value: 8,
    };
    assert!(l.check(&put("abcd", "12345678")).is_ok());
    assert!(matches!(
        l.check(&put("abcde", "")),
        Err(Error::KeyTooLarge { len: 5, max: 4 })
    ));
    assert!(matches!(
        l.check(&put("a", "123456789")),
        Err(Error::ValueTooLarge { len: 9, max: 8 })
    ));
    assert!(matches!(
        l.check(&cas("a", Some("123456789"), None)),
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(matches!(l.check(&put("", "v")), Err(Error::Invalid(_))));
}

#[test]
fn a_client_that_never_acknowledges_keeps_a_bounded_session() {
    let mut s = MapStore::default();
    let n = MAX_SESSION_RESULTS as u64 + 50;
    for seq in 1..=n {
        run(&mut s, &cmd(4, seq, put("k", "v"))).unwrap().unwrap();
    }
    let session = s.session(4).unwrap().unwrap();
    assert_eq!(session.results.len(), MAX_SESSION_RESULTS);
    assert_eq!(session.floor, n - MAX_SESSION_RESULTS as u64 + 1);
    // The newest answers still deduplicate.
    assert_eq!(
        run(&mut s, &cmd(4, n, cas("k", None, Some("x"))))
            .unwrap()
            .unwrap(),
        Response::Written
    );
}

#[test]
fn an_empty_batch_is_rejected_and_changes_nothing() {
    let mut s = MapStore::default();
    let before = s.clone();
    let refused = run(&mut s, &cmd(5, 1, Op::Batch { ops: vec![] })).unwrap();
    assert!(matches!(refused, Err(Rejection::Invalid(_))), "{refused:?}");
    assert_eq!(s, before);
}

/// A store whose reads fail the way this node's own disk can: a session
/// row that does not decode, or a key read that errs.
struct FaultyStore {
    inner: MapStore,
    sessions_fail: bool,
    gets_fail: bool,
}

impl KvStore for FaultyStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.gets_fail {
            return Err(Error::Invalid("table did not open".into()));
        }
        self.inner.get(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put(key, value)
    }
    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        // A delete reads the key to tell whether it existed.
        self.get(key)?;
        self.inner.delete(key)
    }
    fn session(&self, client: u64) -> Result<Option<Session>> {
        if self.sessions_fail {
            return Err(Error::Corrupt {
                what: "client session",
                detail: "bad bytes".into(),
            });
        }
        self.inner.session(client)
    }
    fn put_session(&mut self, client: u64, session: &Session) -> Result<()> {
        self.inner.put_session(client, session)
    }
    fn delete_session(&mut self, client: u64) -> Result<()> {
        self.inner.delete_session(client)
    }
    fn sessions(&self) -> Result<Vec<(u64, Session)>> {
        self.inner.sessions()
    }
    fn session_table(&self) -> Result<SessionTable> {
        self.inner.session_table()
    }
    fn put_session_table(&mut self, table: &SessionTable) -> Result<()> {
        self.inner.put_session_table(table)
    }
}

#[test]
fn a_store_that_fails_to_read_is_a_fault_not_an_answer() {
    // (sessions fail, gets fail, command): every one must come back as the
    // outer error, whatever variant the store used.
    let cases = [
        (true, false, cmd(1, 1, put("k", "v"))),
        (false, true, cmd(0, 0, cas("k", None, Some("v")))),
        (false, true, cmd(0, 0, Op::Delete { key: b"k".to_vec() })),
    ];
    for (sessions_fail, gets_fail, c) in cases {
        let mut s = FaultyStore {
            inner: MapStore::default(),
            sessions_fail,
            gets_fail,
        };
        let r = run(&mut s, &c);
        assert!(r.is_err(), "{c:?} gave {r:?}");
    }
}
