//! The language clients and nodes speak: requests, answers and typed
//! failures, shared by both sides and owned by neither.
//!
//! A call is one [`RpcRequest`] answered by one [`RpcResponse`]; how they
//! travel (a QUIC stream each, rkyv frames) is [`crate::transport`]'s
//! business, what a node does with them is [`crate::node::handlers`]', and
//! how a client finds the node to ask is [`crate::client`]'s. Keeping the
//! types here lets the client library compile without the node's code, and
//! lets either side change without the other importing it.
//!
//! Failures keep their type across the wire ([`RpcError`] mirrors the
//! variants of [`crate::Error`] a caller acts on), so a client follows a
//! redirect to the right group's leader, retries what may be retried and
//! gives up on the rest without reading messages.
//!
//! Left out: versioning. Client and nodes must come from the same build;
//! there is no compatibility promise yet.

mod error;

pub use error::RpcError;

use crate::catalog::NodeState;
use crate::certs::Role;
use crate::kv::{Command, Response};
use crate::types::{GroupId, NodeId, CATALOG_GROUP};

/// A request to a node.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RpcRequest {
    /// Apply a KV command through a group's leader.
    Propose {
        /// The group owning the key.
        group: GroupId,
        /// The command.
        command: Command,
    },
    /// Read a key linearizably through a group's leader.
    Read {
        /// The group owning the key.
        group: GroupId,
        /// The key.
        key: Vec<u8>,
    },
    /// One page of a group's rows with `start <= key < end`, read
    /// linearizably through the group's leader: at most `limit` rows and
    /// the node's page budget of bytes, answered by
    /// [`RpcResponse::ScanPage`].
    Scan {
        /// The group.
        group: GroupId,
        /// First key.
        start: Vec<u8>,
        /// End (exclusive); none: to the end of the group.
        end: Option<Vec<u8>>,
        /// Most rows returned.
        limit: u32,
    },
    /// The catalog as this node last applied it (routing for clients).
    Catalog,
    /// The node's lifecycle and the state of every group on it.
    Status,
    /// Make `to` the leader of `group`: recorded in the catalog (ask group
    /// 0's leader), then carried out, and kept, by the group's leader.
    TransferLeader {
        /// The group.
        group: GroupId,
        /// The new leader.
        to: NodeId,
    },
    /// Change a node's state in the catalog (decommission, remove), through
    /// the leader of group 0.
    SetNodeState {
        /// The node.
        node: NodeId,
        /// Its new state.
        state: NodeState,
    },
    /// Run a consistency check of `group` through its log (ask its leader).
    Checksum {
        /// The group.
        group: GroupId,
    },
    /// Every group's last consistency check on the node asked.
    Checksums,
    /// Bootstrap a new cluster on this node (once, ever).
    Init {
        /// Vshards of the cluster, fixed for its life (`None`: the node's
        /// default, [`crate::catalog::DEFAULT_VSHARDS`]).
        vshards: Option<u32>,
    },
    /// Admit the calling node, which listens at `addr`.
    Join {
        /// Where the joiner is reached.
        addr: String,
        /// SHA-256 of the joiner's SubjectPublicKeyInfo.
        spki_sha256: Vec<u8>,
        /// The random id of the joiner's data directory: a retried join of
        /// the same directory gets the same node id, a new one a new id.
        store_id: u64,
    },
    /// Record that node `node`, a member already, now listens at `addr`
    /// (it restarted elsewhere with its data).
    Announce {
        /// The calling node.
        node: NodeId,
        /// Where it is reached now.
        addr: String,
        /// SHA-256 of its SubjectPublicKeyInfo; must match the catalog's pin.
        spki_sha256: Vec<u8>,
    },
}

impl RpcRequest {
    /// Whether a caller with `role` may make this request.
    pub fn allowed(&self, role: Option<Role>) -> bool {
        match self {
            RpcRequest::Propose { .. }
            | RpcRequest::Read { .. }
            | RpcRequest::Scan { .. }
            | RpcRequest::Catalog
            | RpcRequest::Status => role.is_some(),
            RpcRequest::TransferLeader { .. }
            | RpcRequest::SetNodeState { .. }
            | RpcRequest::Checksum { .. }
            | RpcRequest::Checksums => matches!(role, Some(Role::Admin) | Some(Role::Node)),
            RpcRequest::Init { .. } => matches!(role, Some(Role::Admin) | Some(Role::Node)),
            RpcRequest::Join { .. } | RpcRequest::Announce { .. } => role == Some(Role::Node),
        }
    }

    /// The group whose leader must serve the request: the group it names,
    /// or group 0 for changes recorded in the catalog; none for requests
    /// any node answers itself.
    pub fn group(&self) -> Option<GroupId> {
        match self {
            RpcRequest::Propose { group, .. }
            | RpcRequest::Read { group, .. }
            | RpcRequest::Scan { group, .. }
            | RpcRequest::Checksum { group } => Some(*group),
            RpcRequest::TransferLeader { .. }
            | RpcRequest::SetNodeState { .. }
            | RpcRequest::Join { .. }
            | RpcRequest::Announce { .. } => Some(CATALOG_GROUP),
            RpcRequest::Catalog
            | RpcRequest::Status
            | RpcRequest::Checksums
            | RpcRequest::Init { .. } => None,
        }
    }

    /// The public key the request claims for its caller, which must be the
    /// key the caller's certificate holds.
    pub fn claimed_key(&self) -> Option<&[u8]> {
        match self {
            RpcRequest::Join { spki_sha256, .. } | RpcRequest::Announce { spki_sha256, .. } => {
                Some(spki_sha256)
            }
            _ => None,
        }
    }
}

/// One group's state on one node, as a node reports it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupReport {
    /// The group.
    pub group: GroupId,
    /// Voters of its configuration.
    pub voters: Vec<NodeId>,
    /// Whether this replica leads it.
    pub leader: bool,
    /// The leader this replica knows of.
    pub leader_id: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Apply index.
    pub applied: u64,
}

/// What a node says about itself.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeReport {
    /// Its id (0 before it joined).
    pub node: NodeId,
    /// The address it advertises.
    pub addr: String,
    /// Its lifecycle state, in words.
    pub lifecycle: String,
    /// Its cluster, once it has one.
    pub cluster_id: Option<u64>,
    /// Its groups.
    pub groups: Vec<GroupReport>,
    /// Log entries it read back from its own storage when it last started.
    pub replayed_entries: u64,
    /// Their payload bytes.
    pub replayed_bytes: u64,
    /// Bytes of Raft traffic it has received from peers since it started.
    pub raft_bytes_in: u64,
    /// Log entries peers have sent it since it started.
    pub raft_entries_in: u64,
    /// When the certificate it presents expires, in seconds since the Unix
    /// epoch.
    pub cert_not_after: i64,
    /// Its resident memory in bytes (0: unknown on this platform).
    pub rss_bytes: u64,
    /// Bytes its data directory takes on disk.
    pub disk_bytes: u64,
}

/// A node's answer.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RpcResponse {
    /// A KV command's or read's result.
    Kv(Response),
    /// The node's report.
    Status(NodeReport),
    /// The catalog records the caller's new address.
    Announced,
    /// A cluster was created.
    Inited {
        /// Its id.
        cluster_id: u64,
    },
    /// The caller was admitted.
    Joined {
        /// The caller's node id.
        node_id: NodeId,
        /// The rkyv-encoded catalog, to store before opening any group.
        catalog: Vec<u8>,
    },
    /// The rkyv-encoded catalog.
    Catalog(Vec<u8>),
    /// Done, nothing to report.
    Done,
    /// A consistency check ran at `index`; the leader's digest.
    Checksum {
        /// Apply index of the check.
        index: u64,
        /// Digest of the group's state there.
        digest: u64,
    },
    /// (group, apply index, digest) of each group's last check on a node.
    Checksums(Vec<(GroupId, u64, u64)>),
    /// One page of a scan, in key order.
    ScanPage {
        /// The rows.
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        /// The first key the page left out, where the next page starts;
        /// none: the range is exhausted.
        resume: Option<Vec<u8>>,
    },
    /// A failure.
    Error(RpcError),
}
