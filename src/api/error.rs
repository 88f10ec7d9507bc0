//! Failures as they travel: one variant per [`Error`] variant a caller acts
//! on, so the error a client gets back is the error the node had.
//!
//! A node's own faults (its disk, Raft, a corrupt row of its own) say
//! nothing the caller can act on but "this failed": they travel as
//! [`RpcError::Failed`] with their message and arrive as [`Error::Remote`].

use crate::error::Error;
use crate::types::{GroupId, NodeId};

/// A typed failure, as a node answers it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RpcError {
    /// [`Error::NotLeader`]: ask `leader` instead.
    NotLeader {
        /// The group the request was for.
        group: GroupId,
        /// The leader the node knows of.
        leader: Option<NodeId>,
        /// Where that leader listens, when the answer needs it (joins and
        /// announcements, whose callers have no catalog to look it up in).
        leader_addr: Option<String>,
    },
    /// [`Error::UnknownGroup`].
    UnknownGroup(GroupId),
    /// [`Error::WrongGroup`].
    WrongGroup {
        /// The group the request named.
        group: GroupId,
        /// The group that owns the key.
        owner: GroupId,
    },
    /// [`Error::ProposalLost`].
    ProposalLost {
        /// The group.
        group: GroupId,
        /// Why it was given up on.
        reason: String,
    },
    /// [`Error::ReadUnconfirmed`].
    ReadUnconfirmed {
        /// The group.
        group: GroupId,
        /// Why it was given up on.
        reason: String,
    },
    /// [`Error::Unreachable`]: the node cannot serve yet (starting, not
    /// joined, its driver stopped).
    Unreachable(String),
    /// [`Error::PermissionDenied`].
    PermissionDenied(String),
    /// [`Error::SessionExpired`].
    SessionExpired {
        /// Client id.
        client: u64,
        /// The sequence number retried.
        seq: u64,
        /// The lowest sequence still remembered.
        floor: u64,
    },
    /// [`Error::AnswerLost`].
    AnswerLost {
        /// Client session key.
        client: u64,
        /// The sequence number retried.
        seq: u64,
        /// Why the answer is gone.
        why: String,
    },
    /// [`Error::BatchSpansVShards`].
    BatchSpansVShards {
        /// How many vshards the keys fall in.
        vshards: u64,
    },
    /// [`Error::KeyTooLarge`].
    KeyTooLarge {
        /// The key's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// [`Error::ValueTooLarge`].
    ValueTooLarge {
        /// The value's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// [`Error::Invalid`].
    Invalid(String),
    /// Any other failure of the serving node; arrives as [`Error::Remote`].
    Failed(String),
}

impl From<&Error> for RpcError {
    fn from(e: &Error) -> Self {
        match e {
            Error::NotLeader { group, leader } => RpcError::NotLeader {
                group: *group,
                leader: *leader,
                leader_addr: None,
            },
            Error::UnknownGroup(g) => RpcError::UnknownGroup(*g),
            Error::WrongGroup { group, owner } => RpcError::WrongGroup {
                group: *group,
                owner: *owner,
            },
            Error::ProposalLost { group, reason } => RpcError::ProposalLost {
                group: *group,
                reason: reason.to_string(),
            },
            Error::ReadUnconfirmed { group, reason } => RpcError::ReadUnconfirmed {
                group: *group,
                reason: reason.to_string(),
            },
            Error::Unreachable(m) => RpcError::Unreachable(m.clone()),
            Error::PermissionDenied(m) => RpcError::PermissionDenied(m.clone()),
            Error::SessionExpired { client, seq, floor } => RpcError::SessionExpired {
                client: *client,
                seq: *seq,
                floor: *floor,
            },
            Error::AnswerLost { client, seq, why } => RpcError::AnswerLost {
                client: *client,
                seq: *seq,
                why: why.clone(),
            },
            Error::BatchSpansVShards { vshards } => RpcError::BatchSpansVShards {
                vshards: *vshards as u64,
            },
            Error::KeyTooLarge { len, max } => RpcError::KeyTooLarge {
                len: *len as u64,
                max: *max as u64,
            },
            Error::ValueTooLarge { len, max } => RpcError::ValueTooLarge {
                len: *len as u64,
                max: *max as u64,
            },
            Error::Invalid(m) => RpcError::Invalid(m.clone()),
            Error::Remote(m) => RpcError::Failed(m.clone()),
            other @ (Error::Corrupt { .. }
            | Error::Storage(_)
            | Error::Raft(_)
            | Error::Certificate { .. }) => RpcError::Failed(other.to_string()),
        }
    }
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        match e {
            RpcError::NotLeader { group, leader, .. } => Error::NotLeader { group, leader },
            RpcError::UnknownGroup(g) => Error::UnknownGroup(g),
            RpcError::WrongGroup { group, owner } => Error::WrongGroup { group, owner },
            RpcError::ProposalLost { group, reason } => Error::ProposalLost {
                group,
                reason: reason.into(),
            },
            RpcError::ReadUnconfirmed { group, reason } => Error::ReadUnconfirmed {
                group,
                reason: reason.into(),
            },
            RpcError::Unreachable(m) => Error::Unreachable(m),
            RpcError::PermissionDenied(m) => Error::PermissionDenied(m),
            RpcError::SessionExpired { client, seq, floor } => {
                Error::SessionExpired { client, seq, floor }
            }
            RpcError::AnswerLost { client, seq, why } => Error::AnswerLost { client, seq, why },
            RpcError::BatchSpansVShards { vshards } => Error::BatchSpansVShards {
                vshards: size(vshards),
            },
            RpcError::KeyTooLarge { len, max } => Error::KeyTooLarge {
                len: size(len),
                max: size(max),
            },
            RpcError::ValueTooLarge { len, max } => Error::ValueTooLarge {
                len: size(len),
                max: size(max),
            },
            RpcError::Invalid(m) => Error::Invalid(m),
            RpcError::Failed(m) => Error::Remote(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Action;

    /// Every error a node answers with arrives as the same variant, with
    /// the same fields, and so asks the caller for the same action.
    #[test]
    fn errors_keep_their_type_across_the_wire() {
        let cases = [
            Error::NotLeader {
                group: GroupId(7),
                leader: Some(NodeId(3)),
            },
            Error::UnknownGroup(GroupId(4)),
            Error::WrongGroup {
                group: GroupId(1),
                owner: GroupId(2),
            },
            Error::ProposalLost {
                group: GroupId(5),
                reason: "leadership changed".into(),
            },
            Error::ReadUnconfirmed {
                group: GroupId(5),
                reason: "timed out".into(),
            },
            Error::Unreachable("starting".into()),
            Error::PermissionDenied("client role".into()),
            Error::SessionExpired {
                client: 9,
                seq: 1,
                floor: 4,
            },
            Error::AnswerLost {
                client: 9,
                seq: 2,
                why: "session evicted".into(),
            },
            Error::BatchSpansVShards { vshards: 2 },
            Error::KeyTooLarge { len: 10, max: 4 },
            Error::ValueTooLarge { len: 10, max: 4 },
            Error::Invalid("no such node".into()),
        ];
        for e in cases {
            let wire = crate::wire::encode(&RpcError::from(&e));
            let back: RpcError = crate::wire::decode("error", &wire).unwrap();
            let back = Error::from(back);
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
            assert_eq!(back.action(), e.action());
        }
    }

    /// A redirect names the group it is about, never group 0 by default.
    #[test]
    fn a_redirect_names_its_group_and_leader() {
        let e = Error::NotLeader {
            group: GroupId(12),
            leader: Some(NodeId(2)),
        };
        match Error::from(RpcError::from(&e)) {
            Error::NotLeader { group, leader } => {
                assert_eq!(group, GroupId(12));
                assert_eq!(leader, Some(NodeId(2)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Error::from(RpcError::from(&e)).action(), Action::Redirect);
    }

    #[test]
    fn a_node_fault_arrives_as_a_remote_failure() {
        let e = Error::Corrupt {
            what: "row",
            detail: "short".into(),
        };
        assert!(matches!(
            Error::from(RpcError::from(&e)),
            Error::Remote(m) if m.contains("corrupt row")
        ));
    }
}
