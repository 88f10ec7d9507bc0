//! Requests to a node: one bidirectional QUIC stream per call.
//!
//! A caller opens a stream, writes one [`RpcRequest`] frame and finishes
//! its side; the node checks that the caller's certificate role may make
//! that request, hands it to its [`Service`], and answers with one
//! [`RpcResponse`] frame. Errors travel typed ([`RpcError`]) so a client can
//! follow a leader hint or retry without parsing text.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use crate::catalog::NodeState;
use crate::certs::Role;
use crate::error::{Action, Error, Result};
use crate::kv::{Command, Response};
use crate::multiraft::GroupStatus;
use crate::types::{GroupId, NodeId};

use super::frame::{read_frame, write_frame};

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
    /// Up to `limit` rows of a group with `start <= key < end`, read
    /// linearizably through the group's leader.
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
    Init,
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
            RpcRequest::Init => matches!(role, Some(Role::Admin) | Some(Role::Node)),
            RpcRequest::Join { .. } | RpcRequest::Announce { .. } => role == Some(Role::Node),
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

/// One group's state, as the wire carries it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireGroupStatus {
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

impl From<&GroupStatus> for WireGroupStatus {
    fn from(s: &GroupStatus) -> Self {
        WireGroupStatus {
            group: s.group,
            voters: s.voters.clone(),
            leader: s.role == raft::StateRole::Leader,
            leader_id: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
        }
    }
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
    pub groups: Vec<WireGroupStatus>,
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
}

/// What kind of failure an [`RpcError`] is: what the caller must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RpcErrorKind {
    /// Go to `leader`.
    NotLeader,
    /// Try again.
    Retry,
    /// The caller's certificate may not make this request.
    PermissionDenied,
    /// Give up.
    Fail,
}

/// A typed failure.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RpcError {
    /// What the caller must do.
    pub kind: RpcErrorKind,
    /// The group involved, if any.
    pub group: Option<GroupId>,
    /// The leader hint, for `NotLeader`.
    pub leader: Option<NodeId>,
    /// The leader's address, when the node knows it.
    pub leader_addr: Option<String>,
    /// The node's message.
    pub message: String,
}

impl From<&Error> for RpcError {
    fn from(e: &Error) -> Self {
        let (kind, group, leader) = match e {
            Error::NotLeader { group, leader } => (RpcErrorKind::NotLeader, Some(*group), *leader),
            Error::PermissionDenied(_) => (RpcErrorKind::PermissionDenied, None, None),
            e if e.action() == Action::Retry => (RpcErrorKind::Retry, None, None),
            e if e.action() == Action::Redirect => (RpcErrorKind::NotLeader, None, None),
            _ => (RpcErrorKind::Fail, None, None),
        };
        RpcError {
            kind,
            group,
            leader,
            leader_addr: None,
            message: e.to_string(),
        }
    }
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        match e.kind {
            RpcErrorKind::NotLeader => Error::NotLeader {
                group: e.group.unwrap_or_default(),
                leader: e.leader,
            },
            RpcErrorKind::Retry => Error::Unreachable(e.message),
            RpcErrorKind::PermissionDenied => Error::PermissionDenied(e.message),
            RpcErrorKind::Fail => Error::Remote(e.message),
        }
    }
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
    /// A failure.
    Error(RpcError),
}

/// What a node does with requests.
pub trait Service: Send + Sync + 'static {
    /// Answers one request from a caller whose certificate has `role`.
    fn handle(&self, req: RpcRequest) -> Pin<Box<dyn Future<Output = RpcResponse> + Send + '_>>;
}

/// Makes one call to the node at `addr` over `endpoint`.
pub async fn call(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
    req: &RpcRequest,
) -> Result<RpcResponse> {
    let conn = connect(endpoint, config, addr).await?;
    let resp = call_on(&conn, req).await;
    conn.close(0u32.into(), b"done");
    resp
}

/// Dials the node at `addr`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection> {
    endpoint
        .connect_with(config.clone(), addr, &addr.ip().to_string())
        .map_err(|e| Error::Unreachable(format!("{addr}: {e}")))?
        .await
        .map_err(|e| Error::Unreachable(format!("{addr}: {e}")))
}

/// Makes one call on an open connection (a stream of its own).
pub async fn call_on(conn: &quinn::Connection, req: &RpcRequest) -> Result<RpcResponse> {
    let addr = conn.remote_address();
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::Unreachable(format!("{addr}: {e}")))?;
    write_frame(&mut send, req).await?;
    let _ = send.finish();
    read_frame::<RpcResponse>(&mut recv)
        .await?
        .ok_or_else(|| Error::Unreachable(format!("{addr} closed the stream without answering")))
}

/// A running driver answers data requests directly.
impl Service for crate::multiraft::runner::DriverHandle {
    fn handle(&self, req: RpcRequest) -> Pin<Box<dyn Future<Output = RpcResponse> + Send + '_>> {
        Box::pin(async move {
            let answer = match req {
                RpcRequest::Propose { group, command } => {
                    self.propose(group, crate::multiraft::Proposal::Kv(command))
                        .await
                }
                RpcRequest::Read { group, key } => self.read(group, key).await,
                RpcRequest::Scan {
                    group,
                    start,
                    end,
                    limit,
                } => self.scan(group, start, end, limit as usize).await,
                RpcRequest::Checksum { group } => {
                    self.propose(group, crate::multiraft::Proposal::Checksum)
                        .await
                }
                RpcRequest::Checksums => {
                    return match self.checksums().await {
                        Ok(Ok(m)) => RpcResponse::Checksums(
                            m.into_iter().map(|(g, (i, d))| (g, i, d)).collect(),
                        ),
                        Ok(Err(e)) => RpcResponse::Error(RpcError::from(&e)),
                        Err(_) => RpcResponse::Error(RpcError::from(&Error::Unreachable(
                            "the driver stopped".into(),
                        ))),
                    };
                }
                RpcRequest::TransferLeader { group, to } => {
                    let prefer = crate::catalog::CatalogCommand::PreferLeader { group, node: to };
                    self.propose(
                        crate::types::CATALOG_GROUP,
                        crate::multiraft::Proposal::Catalog(prefer),
                    )
                    .await
                }
                RpcRequest::Catalog => {
                    return match self.catalog().await {
                        Ok(c) => RpcResponse::Catalog(crate::wire::encode(&c)),
                        Err(_) => RpcResponse::Error(RpcError::from(&Error::Unreachable(
                            "the driver stopped".into(),
                        ))),
                    };
                }
                other => {
                    let e = Error::Invalid(format!("{other:?} is not a data request"));
                    return RpcResponse::Error(RpcError::from(&e));
                }
            };
            match answer {
                Ok(Ok(crate::multiraft::Reply::Kv(r))) => RpcResponse::Kv(r),
                Ok(Ok(crate::multiraft::Reply::Catalog)) => RpcResponse::Done,
                Ok(Ok(crate::multiraft::Reply::Checksum { index, digest })) => {
                    RpcResponse::Checksum { index, digest }
                }
                Ok(Ok(other)) => RpcResponse::Error(RpcError::from(&Error::Invalid(format!(
                    "unexpected reply {other:?}"
                )))),
                Ok(Err(e)) => RpcResponse::Error(RpcError::from(&e)),
                Err(_) => RpcResponse::Error(RpcError::from(&Error::Unreachable(
                    "the driver stopped".into(),
                ))),
            }
        })
    }
}
