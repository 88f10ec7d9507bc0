//! The deterministic key-value state machine of a data group.
//!
//! A data group's Raft log is a sequence of [`Command`]s; applying them in
//! log order on every replica yields identical state. The machine is pure
//! logic over a [`KvStore`] trait: storage supplies the trait over the round's
//! redb write transaction, tests supply a `BTreeMap`.
//!
//! **Sessions.** Each command may carry a client id and a sequence number. The
//! first application of `(client, seq)` records its [`Response`]; a retry of
//! the same pair (a client that timed out and asked again, possibly at a new
//! leader) gets the recorded response and changes nothing. Clients tell the
//! machine which results they no longer need with `ack_below`, which bounds
//! the table per client.
//!
//! **Two kinds of failure.** [`apply`] returns `Result<Outcome<Response>>`.
//! The inner [`Rejection`] is a refusal every replica reaches alike (an
//! expired session, an empty batch): it is the command's answer. The outer
//! error is the store failing on this node alone (a row that will not read
//! or decode): it is never an answer, and the node must stop.
//!
//! Left out for now: expiry of idle client sessions (a client that never
//! comes back keeps its last few rows until the group is rebuilt).

mod limits;
mod model;

pub use limits::Limits;
pub use model::MapStore;

use crate::error::{Outcome, Rejection, Result};

/// One mutation of a data group.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Set `key` to `new` (or remove it when `new` is `None`) only if its
    /// current value equals `expected` (`None`: the key must be absent).
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value the key must hold for the swap to happen.
        expected: Option<Vec<u8>>,
        /// The value to store; `None` deletes.
        new: Option<Vec<u8>>,
    },
    /// Puts and deletes applied together or not at all. Every key must be
    /// in the same vshard (so in the same group); a batch holds at least one
    /// operation.
    Batch {
        /// The operations, applied in order.
        ops: Vec<BatchOp>,
    },
}

/// One write of a [`Op::Batch`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl BatchOp {
    /// The key written.
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

impl Op {
    /// The key the operation touches.
    /// For a batch, the key of its first operation (all share a vshard).
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => key,
            Op::Batch { ops } => ops.first().map_or(&[][..], BatchOp::key),
        }
    }
}

/// A command as it travels in a Raft entry.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Command {
    /// Client session id; `0` means no session (no deduplication).
    pub client: u64,
    /// Sequence number of this command within the client's session (from 1).
    pub seq: u64,
    /// The client has seen the results of every sequence below this one.
    pub ack_below: u64,
    /// What to do.
    pub op: Op,
}

/// The result of applying a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Response {
    /// A put was applied.
    Written,
    /// A delete was applied; `existed` tells whether the key was present.
    Deleted {
        /// Whether the key held a value before.
        existed: bool,
    },
    /// A compare-and-swap was evaluated.
    Cas {
        /// Whether the swap happened.
        swapped: bool,
        /// The value the key held when the CAS was evaluated.
        current: Option<Vec<u8>>,
    },
    /// The result of a read (never stored in a log).
    Value(Option<Vec<u8>>),
}

/// What a group remembers of one client: the answers it may still ask for
/// again, and the sequence below which it promised never to ask.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Session {
    /// Every sequence below this was acknowledged by the client.
    pub floor: u64,
    /// Recorded answers by sequence, oldest first.
    pub results: Vec<(u64, Response)>,
}

/// Answers kept per client and group at most. A client that never
/// acknowledges anything loses deduplication of its oldest commands past
/// this many, instead of growing its session row without bound.
pub const MAX_SESSION_RESULTS: usize = 256;

/// The storage a state machine applies to: the KV rows and the session rows
/// of one group.
pub trait KvStore {
    /// Reads a key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Writes a key.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes a key; returns whether it existed.
    fn delete(&mut self, key: &[u8]) -> Result<bool>;
    /// The session of `client`, if it has one.
    fn session(&self, client: u64) -> Result<Option<Session>>;
    /// Stores the session of `client`.
    fn put_session(&mut self, client: u64, session: &Session) -> Result<()>;
}

/// Applies one command to a store. Deterministic: the same store contents and
/// command give the same response (or the same [`Rejection`]) and the same
/// new contents on every replica; a rejected command changes nothing. An
/// `Err` is the store failing on this node: the store may then hold part of
/// the command, so the caller must stop rather than carry on.
pub fn apply(store: &mut impl KvStore, cmd: &Command) -> Result<Outcome<Response>> {
    let mut session = None;
    if cmd.client != 0 {
        let s = store.session(cmd.client)?.unwrap_or_default();
        if cmd.seq < s.floor {
            return Ok(Err(Rejection::SessionExpired {
                client: cmd.client,
                seq: cmd.seq,
                floor: s.floor,
            }));
        }
        if let Some((_, previous)) = s.results.iter().find(|(seq, _)| *seq == cmd.seq) {
            return Ok(Ok(previous.clone()));
        }
        session = Some(s);
    }
    let response = match &cmd.op {
        Op::Put { key, value } => {
            store.put(key, value)?;
            Response::Written
        }
        Op::Delete { key } => Response::Deleted {
            existed: store.delete(key)?,
        },
        Op::Cas { key, expected, new } => {
            let current = store.get(key)?;
            let swapped = current == *expected;
            if swapped {
                match new {
                    Some(v) => store.put(key, v)?,
                    None => {
                        store.delete(key)?;
                    }
                }
            }
            Response::Cas { swapped, current }
        }
        Op::Batch { ops } => {
            // Validated before proposing; checked again here so an empty
            // batch is refused alike on every replica.
            if ops.is_empty() {
                return Ok(Err(Rejection::Invalid("an empty batch".into())));
            }
            for op in ops {
                match op {
                    BatchOp::Put { key, value } => store.put(key, value)?,
                    BatchOp::Delete { key } => {
                        store.delete(key)?;
                    }
                }
            }
            Response::Written
        }
    };
    if let Some(mut s) = session {
        let at = s.results.partition_point(|(seq, _)| *seq < cmd.seq);
        s.results.insert(at, (cmd.seq, response.clone()));
        // Never forget the answer just recorded: its retry must still dedupe.
        s.floor = s.floor.max(cmd.ack_below.min(cmd.seq));
        if s.results.len() > MAX_SESSION_RESULTS {
            s.floor = s
                .floor
                .max(s.results[s.results.len() - MAX_SESSION_RESULTS].0);
        }
        let floor = s.floor;
        s.results.retain(|(seq, _)| *seq >= floor);
        store.put_session(cmd.client, &s)?;
    }
    Ok(Ok(response))
}

#[cfg(test)]
mod tests;
