//! The deterministic key-value state machine of a data group.
//!
//! A data group's Raft log is a sequence of [`Command`]s; applying them in
//! log order on every replica yields identical state. The machine is pure
//! logic over a [`KvStore`] trait: storage supplies the trait over the round's
//! redb write transaction, tests supply a `BTreeMap`.
//!
//! **Sessions.** Each command may carry a client session key and a
//! sequence number. The first application of `(client, seq)` keeps its
//! [`Response`]; a retry of the same pair (a client that timed out and asked
//! again, possibly at a new leader) gets the kept response and changes
//! nothing. Clients tell the machine which results they no longer need with
//! `ack_below`. How sessions are keyed to certificates, bounded, evicted and
//! kept small is the `session` module's essay.
//!
//! **Two kinds of failure.** [`apply`] returns `Result<Outcome<Response>>`.
//! The inner [`Rejection`] is a refusal every replica reaches alike (an
//! expired session, an empty batch): it is the command's answer. The outer
//! error is the store failing on this node alone (a row that will not read
//! or decode): it is never an answer, and the node must stop.
//!
//! Left out: the session bounds are constants of the build, not settings
//! a running cluster can change (every replica must evict alike).

mod limits;
mod model;
mod session;

pub use limits::{Limits, MAX_BATCH_OPS, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use model::MapStore;
pub use session::{
    session_key, Kept, Session, SessionLimits, SessionTable, MAX_KEPT_VALUE_BYTES,
    MAX_SESSION_RESULTS, TABLE_KEY,
};

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
    /// Client session key; `0` means no session (no deduplication). A
    /// client sends the id it picked; the node that proposes replaces it
    /// with [`session_key`] of that id and the caller's certificate.
    pub client: u64,
    /// Sequence number of this command within the client's session (from 1).
    pub seq: u64,
    /// The client has seen the results of every sequence below this one.
    pub ack_below: u64,
    /// This is the command's first attempt: no replica can have applied it
    /// yet, so it may open a session (a retry may not; see `session`).
    pub fresh: bool,
    /// Log time: milliseconds since the Unix epoch on the clock of the node
    /// that proposed it, set by that node (a client's value is replaced).
    pub proposed_ms: u64,
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
    /// Forgets the session of `client`.
    fn delete_session(&mut self, client: u64) -> Result<()>;
    /// Every session, by client key ([`TABLE_KEY`]'s row is not one).
    fn sessions(&self) -> Result<Vec<(u64, Session)>>;
    /// The group's session totals and clock (default when it has none).
    fn session_table(&self) -> Result<SessionTable>;
    /// Stores the group's session totals and clock.
    fn put_session_table(&mut self, table: &SessionTable) -> Result<()>;
}

/// Applies one command, the entry at log `index`, to a store.
/// Deterministic: the same store contents, command, index and limits give
/// the same response (or the same [`Rejection`]) and the same new contents
/// on every replica; a rejected command changes nothing. An `Err` is the
/// store failing on this node: the store may then hold part of the
/// command, so the caller must stop rather than carry on.
pub fn apply(
    store: &mut impl KvStore,
    cmd: &Command,
    index: u64,
    limits: &SessionLimits,
) -> Result<Outcome<Response>> {
    if cmd.client == 0 {
        return execute(store, &cmd.op);
    }
    session::apply_in_session(store, cmd, index, limits)
}

/// Carries out one operation, with no session.
fn execute(store: &mut impl KvStore, op: &Op) -> Result<Outcome<Response>> {
    Ok(Ok(match op {
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
    }))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_sessions;
