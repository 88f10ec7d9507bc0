//! Client sessions: what a group remembers of each writer so that a
//! retried write applies once, and how that memory stays bounded.
//!
//! **Keys.** A client picks a random id; the node that proposes its write
//! replaces it with [`session_key`] of that id and the SHA-256 of the
//! caller's certificate key, taken from the TLS handshake and never from
//! the request. Two clients with different certificates therefore never
//! share a session, whatever ids they pick, and the log carries the bound
//! key, so every replica agrees on it.
//!
//! **Log time.** The proposing node stamps its wall clock into each
//! command ([`super::Command::proposed_ms`]). A group's clock is the largest
//! stamp applied so far: it never goes back, and every replica reads the
//! same clock at the same index. A node whose clock runs ahead moves it on
//! early, which only shortens the life of idle sessions by that much.
//! Nothing here reads a local clock.
//!
//! **Bounds.** A group keeps at most [`SessionLimits::max_sessions`]
//! sessions holding at most [`SessionLimits::max_bytes`] (each counted by
//! [`Session::cost`]), and forgets a session idle for
//! [`SessionLimits::ttl_ms`] of log time. Past a bound, the sessions least
//! recently used (by the log index of their last command) go first, down
//! to fifteen sixteenths of the bound, so the scan that finds them runs
//! once per many new sessions, not at each; expired ones go at the same
//! scan, or at one run every quarter of the TTL. The running totals live
//! in the group's [`SessionTable`], the session row of key
//! [`TABLE_KEY`]. Everything is decided from the log, so replicas evict
//! alike.
//!
//! **After eviction.** A command says whether it is `fresh`: its first
//! attempt, which no replica can have applied yet. Only a fresh command
//! opens a session; a retry that finds no session gets
//! [`Rejection::AnswerLost`] rather than applying twice. A session records
//! the sequence that opened it, and a retry older than that which it
//! holds no answer for gets the same refusal: it may have applied in the
//! session before.
//!
//! **Answers kept small.** A kept answer never copies a large value. A
//! swapped compare-and-swap keeps no value (what it found was what it
//! expected, and the retry carries that). A failed one keeps the value it
//! found only up to [`MAX_KEPT_VALUE_BYTES`]; past that it keeps the
//! outcome alone, and its retry reads the key again: a value other than the
//! expected one is a failed swap evaluated now, inside the same call, which
//! changes nothing (so it is linearizable); the expected value itself
//! cannot be explained that way, and the retry gets
//! [`Rejection::AnswerLost`]. Evaluating the swap again is not safe: the
//! client may already hold the first answer from another copy.
//!
//! Left out: copies of one fresh attempt sent to two leaders (a hedged
//! call) apply once only while the session lives; evicting it between the
//! two copies, within one call, would take a whole bound's worth of other
//! clients in that time.

use sha2::{Digest, Sha256};

use super::{execute, Command, KvStore, Op, Response};
use crate::error::{Outcome, Rejection, Result};

/// Answers kept per session at most. A client that never acknowledges
/// anything loses deduplication of its oldest commands past this many.
pub const MAX_SESSION_RESULTS: usize = 256;
/// Largest value a kept answer copies: a CAS on a counter or a lock keeps
/// its answer whole, while a session of [`MAX_SESSION_RESULTS`] answers
/// stays under ~100 KiB.
pub const MAX_KEPT_VALUE_BYTES: usize = 256;
/// Sessions per group by default: a CLI run opens one in each group it
/// writes to, so this is the last 10,000 writers, at ~0.2 KiB each
/// (2 MiB) when they keep one answer.
pub const DEFAULT_MAX_SESSIONS: u64 = 10_000;
/// Session bytes per group by default: 10,000 sessions of ~1.6 KiB, or
/// ~170 sessions of clients keeping every answer they may.
pub const DEFAULT_MAX_SESSION_BYTES: u64 = 16 * 1024 * 1024;
/// Idle life of a session by default, in log time: far beyond any call's
/// retries, short enough that a day of CLI runs leaves one hour's behind.
pub const DEFAULT_SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// The session row key of a group's [`SessionTable`]; [`session_key`]
/// never returns it.
pub const TABLE_KEY: u64 = 0;
/// Bytes a session costs beyond its answers: its row key and fields in
/// the rkyv encoding (40) and a stored row's map node and lengths (64).
const SESSION_BYTES: u64 = 104;
/// Bytes a kept answer costs beyond its value: its slot in the encoding.
const ANSWER_BYTES: u64 = 32;

/// How much a group keeps of its clients' sessions. Part of the state
/// machine: every replica of a group must use the same limits, so they are
/// not a node flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Sessions at most.
    pub max_sessions: u64,
    /// Bytes of sessions at most, by [`Session::cost`].
    pub max_bytes: u64,
    /// Log time a session may stay idle.
    pub ttl_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_bytes: DEFAULT_MAX_SESSION_BYTES,
            ttl_ms: DEFAULT_SESSION_TTL_MS,
        }
    }
}

/// A kept answer.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Kept {
    /// The answer, whole.
    Answer(Response),
    /// A compare-and-swap that swapped (it found the value it expected).
    Swapped,
    /// A compare-and-swap that failed, finding a value too large to keep.
    FailedLarge,
}

/// What a group remembers of one client.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Session {
    /// Every sequence below this was acknowledged by the client.
    pub floor: u64,
    /// The sequence of the fresh command that opened the session.
    pub opened_at: u64,
    /// Log index of the last command applied in it: the LRU order.
    pub last_index: u64,
    /// Log time of that command.
    pub last_ms: u64,
    /// Kept answers by sequence, oldest first.
    pub results: Vec<(u64, Kept)>,
}

/// A group's session totals and clock, kept as the row of [`TABLE_KEY`].
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct SessionTable {
    /// Log time: the largest stamp applied in the group.
    pub clock_ms: u64,
    /// Sessions held.
    pub count: u64,
    /// Their [`Session::cost`], summed.
    pub bytes: u64,
    /// Log time of the last scan for expired sessions.
    pub swept_ms: u64,
}

/// The key of client `client`'s session when the caller's certificate key
/// hash is `spki` (`None`: a caller without a certificate, in-process).
/// `0` stays `0` (no session).
pub fn session_key(spki: Option<&[u8; 32]>, client: u64) -> u64 {
    if client == 0 {
        return 0;
    }
    let mut h = Sha256::new();
    h.update(spki.unwrap_or(&[0; 32]));
    h.update(client.to_le_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first).max(1)
}

impl Session {
    /// Bytes the session is counted as: its fixed part and every kept
    /// answer with the bytes it holds.
    pub fn cost(&self) -> u64 {
        let answers: u64 = self
            .results
            .iter()
            .map(|(_, k)| {
                ANSWER_BYTES
                    + match k {
                        Kept::Answer(Response::Cas {
                            current: Some(v), ..
                        }) => v.len() as u64,
                        _ => 0,
                    }
            })
            .sum();
        SESSION_BYTES + answers
    }

    fn expired(&self, clock_ms: u64, limits: &SessionLimits) -> bool {
        self.last_ms.saturating_add(limits.ttl_ms) < clock_ms
    }

    /// Keeps the answer to `cmd` and moves the floor up as `cmd` allows.
    fn record(&mut self, cmd: &Command, response: &Response) {
        let kept = match response {
            Response::Cas { swapped: true, .. } => Kept::Swapped,
            Response::Cas {
                swapped: false,
                current: Some(v),
            } if v.len() > MAX_KEPT_VALUE_BYTES => Kept::FailedLarge,
            r => Kept::Answer(r.clone()),
        };
        let at = self.results.partition_point(|(seq, _)| *seq < cmd.seq);
        self.results.insert(at, (cmd.seq, kept));
        // Never forget the answer just recorded: its retry must still dedupe.
        self.floor = self.floor.max(cmd.ack_below.min(cmd.seq));
        if self.results.len() > MAX_SESSION_RESULTS {
            self.floor = self
                .floor
                .max(self.results[self.results.len() - MAX_SESSION_RESULTS].0);
        }
        let floor = self.floor;
        self.results.retain(|(seq, _)| *seq >= floor);
    }
}

/// The answer a retry of `cmd` gets from what its first application kept.
fn replay(store: &impl KvStore, cmd: &Command, kept: &Kept) -> Result<Outcome<Response>> {
    let expected = match &cmd.op {
        Op::Cas { expected, .. } => Some(expected),
        _ => None,
    };
    Ok(match (kept, expected) {
        (Kept::Answer(r), _) => Ok(r.clone()),
        (Kept::Swapped, e) => Ok(Response::Cas {
            swapped: true,
            current: e.cloned().flatten(),
        }),
        (Kept::FailedLarge, e) => {
            let current = store.get(cmd.op.key())?;
            if Some(&current) == e {
                Err(lost(
                    cmd,
                    "a failed compare-and-swap whose value was too large to keep; \
                     the key now holds the expected value",
                ))
            } else {
                Ok(Response::Cas {
                    swapped: false,
                    current,
                })
            }
        }
    })
}

fn lost(cmd: &Command, why: &str) -> Rejection {
    Rejection::AnswerLost {
        client: cmd.client,
        seq: cmd.seq,
        why: why.into(),
    }
}

/// Applies `cmd` (whose `client` is not 0) in its session, at log index
/// `index`; see the module documentation. Writes nothing when it refuses.
pub(super) fn apply_in_session(
    store: &mut impl KvStore,
    cmd: &Command,
    index: u64,
    limits: &SessionLimits,
) -> Result<Outcome<Response>> {
    let mut table = store.session_table()?;
    let clock = table.clock_ms.max(cmd.proposed_ms);
    let stored = store.session(cmd.client)?;
    let old_cost = stored.as_ref().map(Session::cost);
    let mut s = match stored.filter(|s| !s.expired(clock, limits)) {
        Some(s) => {
            if cmd.seq < s.floor {
                return Ok(Err(Rejection::SessionExpired {
                    client: cmd.client,
                    seq: cmd.seq,
                    floor: s.floor,
                }));
            }
            if let Some((_, kept)) = s.results.iter().find(|(seq, _)| *seq == cmd.seq) {
                return replay(store, cmd, kept);
            }
            if !cmd.fresh && cmd.seq < s.opened_at {
                return Ok(Err(lost(cmd, "it is older than the client's session")));
            }
            s
        }
        None if cmd.fresh => Session {
            floor: cmd.ack_below.min(cmd.seq),
            opened_at: cmd.seq,
            ..Session::default()
        },
        None => {
            return Ok(Err(lost(
                cmd,
                "the client's session expired or was evicted",
            )))
        }
    };
    let response = match execute(store, &cmd.op)? {
        Ok(r) => r,
        Err(refused) => return Ok(Err(refused)),
    };
    s.record(cmd, &response);
    s.last_index = index;
    s.last_ms = clock;
    table.clock_ms = clock;
    table.bytes = table.bytes.saturating_sub(old_cost.unwrap_or(0)) + s.cost();
    table.count += u64::from(old_cost.is_none());
    store.put_session(cmd.client, &s)?;
    let swept_by = table.swept_ms.saturating_add((limits.ttl_ms / 4).max(1));
    if table.count > limits.max_sessions || table.bytes > limits.max_bytes || clock >= swept_by {
        sweep(store, &mut table, limits, cmd.client)?;
    }
    store.put_session_table(&table)?;
    Ok(Ok(response))
}

/// Drops expired sessions and, when the table is over a bound, the least
/// recently used ones down to fifteen sixteenths of it; never `keep`, the
/// session just used. Recounts the totals from what stays.
fn sweep(
    store: &mut impl KvStore,
    table: &mut SessionTable,
    limits: &SessionLimits,
    keep: u64,
) -> Result<()> {
    let mut all: Vec<(u64, u64, u64, bool)> = store
        .sessions()?
        .into_iter()
        .map(|(client, s)| {
            let expired = s.expired(table.clock_ms, limits);
            (s.last_index, client, s.cost(), expired)
        })
        .collect();
    all.sort_unstable();
    let mut count = all.len() as u64;
    let mut bytes: u64 = all.iter().map(|(_, _, cost, _)| cost).sum();
    let over = count > limits.max_sessions || bytes > limits.max_bytes;
    let low_count = limits.max_sessions - limits.max_sessions / 16;
    let low_bytes = limits.max_bytes - limits.max_bytes / 16;
    for (_, client, cost, expired) in all {
        let pressed = over && (count > low_count || bytes > low_bytes);
        if client != keep && (expired || pressed) {
            store.delete_session(client)?;
            count -= 1;
            bytes -= cost;
        }
    }
    table.count = count;
    table.bytes = bytes;
    table.swept_ms = table.clock_ms;
    Ok(())
}
