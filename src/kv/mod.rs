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
//! Left out for now: expiry of idle client sessions (a client that never
//! comes back keeps its last few rows until the group is rebuilt).

mod limits;
mod model;

pub use limits::Limits;
pub use model::MapStore;

use crate::error::{Error, Result};

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
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => key,
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

/// The storage a state machine applies to: the KV rows and the session rows
/// of one group.
pub trait KvStore {
    /// Reads a key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Writes a key.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes a key; returns whether it existed.
    fn delete(&mut self, key: &[u8]) -> Result<bool>;
    /// The recorded response of `(client, seq)`, if any.
    fn session_get(&self, client: u64, seq: u64) -> Result<Option<Response>>;
    /// Records the response of `(client, seq)`.
    fn session_put(&mut self, client: u64, seq: u64, response: &Response) -> Result<()>;
    /// The lowest sequence of `client` whose response is still remembered.
    fn session_floor(&self, client: u64) -> Result<u64>;
    /// Forgets every response of `client` below `floor` and raises the floor.
    fn session_trim(&mut self, client: u64, floor: u64) -> Result<()>;
}

/// Applies one command to a store. Deterministic: the same store contents and
/// command give the same response and the same new contents on every replica.
pub fn apply(store: &mut impl KvStore, cmd: &Command) -> Result<Response> {
    if cmd.client != 0 {
        let floor = store.session_floor(cmd.client)?;
        if cmd.seq < floor {
            return Err(Error::SessionExpired {
                client: cmd.client,
                seq: cmd.seq,
                floor,
            });
        }
        if let Some(previous) = store.session_get(cmd.client, cmd.seq)? {
            return Ok(previous);
        }
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
    };
    if cmd.client != 0 {
        store.session_put(cmd.client, cmd.seq, &response)?;
        let floor = store.session_floor(cmd.client)?;
        // Never trim the entry just written: a retry of it must still dedupe.
        let ack = cmd.ack_below.min(cmd.seq);
        if ack > floor {
            store.session_trim(cmd.client, ack)?;
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests;
