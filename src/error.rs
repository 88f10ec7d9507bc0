//! The one error type of the crate, classified by what the caller must do.
//!
//! Every variant answers the question an operator or a client library asks
//! first: *should I retry, go elsewhere, or give up?* [`Error::action`] gives
//! that answer; the message gives the detail.
//!
//! Applying a committed entry can go wrong in two ways that must never be
//! confused. A [`Rejection`] is a decision every replica reaches alike from
//! replicated state (the entry and the state before it): it is the answer to
//! the entry's proposer and the node carries on. An [`Error`] out of apply is
//! a fault of this node alone (its disk, its own stored rows): the node
//! stops. The two are different types, so no storage or decoding failure of
//! the node's own data can turn into an answer, and a rejection can only be
//! built where the apply code decides one.

use std::borrow::Cow;

use crate::types::{GroupId, NodeId};

/// What a caller should do with an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Try the same request again later, at the same place.
    Retry,
    /// Send the request to another node (the error names it when known).
    Redirect,
    /// Do not retry: the request or the local state is wrong.
    Fail,
}

/// Every error Flotilla's library code returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node does not lead the group; `leader` is the current hint, if any.
    #[error("not the leader of {group}; leader hint: {leader:?}")]
    NotLeader {
        /// The group the request was for.
        group: GroupId,
        /// The node believed to lead it, when known.
        leader: Option<NodeId>,
    },
    /// The proposal left this node but its fate is unknown (leadership moved,
    /// or it timed out). Retrying with the same client id and sequence is safe:
    /// the session table applies it at most once.
    #[error("outcome of the proposal to {group} is unknown: {reason}")]
    ProposalLost {
        /// The group the proposal was for.
        group: GroupId,
        /// Why it was given up on.
        reason: Cow<'static, str>,
    },
    /// A linearizable read could not be confirmed in time.
    #[error("read on {group} could not be confirmed: {reason}")]
    ReadUnconfirmed {
        /// The group the read was for.
        group: GroupId,
        /// Why it was given up on.
        reason: Cow<'static, str>,
    },
    /// A peer could not be reached or the connection to it broke.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The caller's certificate role may not make this request.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A remote node failed the request for a reason no retry fixes.
    #[error("remote error: {0}")]
    Remote(String),
    /// This node holds no replica of the group.
    #[error("{0} has no replica on this node")]
    UnknownGroup(GroupId),
    /// The key does not belong to the group the request named: the
    /// caller's routing is stale and must be refreshed from the catalog.
    #[error("a key of the request belongs to {owner}, not {group}")]
    WrongGroup {
        /// The group the request named.
        group: GroupId,
        /// The group that owns the key.
        owner: GroupId,
    },
    /// The keys of one batch fall in more than one vshard.
    #[error("a batch must keep to one vshard; its keys span {vshards} vshards")]
    BatchSpansVShards {
        /// How many vshards the keys fall in.
        vshards: usize,
    },
    /// The key is longer than the configured limit.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than the configured limit.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A retried command whose recorded result was already discarded because
    /// the client acknowledged it.
    #[error("client {client} sequence {seq} is older than its session floor {floor}")]
    SessionExpired {
        /// Client id.
        client: u64,
        /// The sequence number retried.
        seq: u64,
        /// The lowest sequence still remembered.
        floor: u64,
    },
    /// A retried write whose answer the group no longer holds: its client
    /// session expired or was evicted, or the answer of a failed
    /// compare-and-swap was too large to keep and cannot be given again.
    /// Whether or how the write applied is unknown; read before writing
    /// again.
    #[error("client {client} sequence {seq}: the group no longer holds its answer ({why})")]
    AnswerLost {
        /// Client session key.
        client: u64,
        /// The sequence number retried.
        seq: u64,
        /// Why the answer is gone.
        why: String,
    },
    /// Bytes read from disk or a peer did not decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    /// Raft refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A certificate or key could not be made, read or accepted.
    #[error("certificate {path}: {detail}")]
    Certificate {
        /// The file (or peer) it came from.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// A request that is malformed in a way no retry can fix.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    /// What the caller should do about this error.
    pub fn action(&self) -> Action {
        match self {
            Error::NotLeader { .. } | Error::UnknownGroup(_) | Error::WrongGroup { .. } => {
                Action::Redirect
            }
            Error::ProposalLost { .. } | Error::ReadUnconfirmed { .. } | Error::Unreachable(_) => {
                Action::Retry
            }
            Error::KeyTooLarge { .. }
            | Error::ValueTooLarge { .. }
            | Error::SessionExpired { .. }
            | Error::AnswerLost { .. }
            | Error::BatchSpansVShards { .. }
            | Error::Corrupt { .. }
            | Error::Storage(_)
            | Error::Raft(_)
            | Error::Certificate { .. }
            | Error::PermissionDenied(_)
            | Error::Remote(_)
            | Error::Invalid(_) => Action::Fail,
        }
    }
}

/// Why a committed entry was refused, alike on every replica. Only apply
/// code that decides from replicated state builds one; there is no
/// conversion from [`Error`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A retried command whose recorded result was already discarded.
    #[error("client {client} sequence {seq} is older than its session floor {floor}")]
    SessionExpired {
        /// Client id.
        client: u64,
        /// The sequence number retried.
        seq: u64,
        /// The lowest sequence still remembered.
        floor: u64,
    },
    /// A retried command whose answer the group no longer holds (see
    /// [`Error::AnswerLost`]).
    #[error("client {client} sequence {seq}: the group no longer holds its answer ({why})")]
    AnswerLost {
        /// Client session key.
        client: u64,
        /// The sequence number retried.
        seq: u64,
        /// Why the answer is gone.
        why: String,
    },
    /// The command does not fit the state it met (an empty batch, a catalog
    /// change the catalog refuses, a command for the wrong kind of group,
    /// an entry that is not a proposal).
    #[error("{0}")]
    Invalid(String),
    /// A membership change Raft refused, or one that does not parse: the
    /// group's configuration stays as it was.
    #[error("membership change refused: {0}")]
    ConfChange(String),
}

impl From<Rejection> for Error {
    /// The answer the proposer gets. Each kind keeps the variant (and so the
    /// [`Action`]) a client already knows for it.
    fn from(r: Rejection) -> Error {
        match r {
            Rejection::SessionExpired { client, seq, floor } => {
                Error::SessionExpired { client, seq, floor }
            }
            Rejection::AnswerLost { client, seq, why } => Error::AnswerLost { client, seq, why },
            Rejection::Invalid(m) => Error::Invalid(m),
            r @ Rejection::ConfChange(_) => Error::Invalid(r.to_string()),
        }
    }
}

/// What applying one entry decided: its answer, or its rejection.
pub type Outcome<T> = std::result::Result<T, Rejection>;

macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
