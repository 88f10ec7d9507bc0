//! What a node does with each request: one file per family, one dispatch.
//!
//! - [`data`]: `Propose`, `Read`, `Scan`, served by the group's leader;
//! - [`info`]: `Catalog` and `Status`, which any node answers from what it
//!   has applied;
//! - [`admin`]: `TransferLeader`, `SetNodeState`, `Checksum`, `Checksums`,
//!   an operator's requests;
//! - [`membership`]: `Init`, `Join`, `Announce`, how nodes enter a cluster
//!   and say where they moved.
//!
//! Every handler returns a [`Result`]; `answer` turns it into the
//! [`RpcResponse`] the caller gets, so a failure keeps its [`Error`]
//! variant on the wire ([`RpcError`]). A redirect for group 0 also carries
//! the leader's address: nodes joining or announcing have no catalog to
//! look it up in.
//!
//! Before the driver runs, a node answers `Status` and `Init` and asks the
//! callers of anything else to retry. [`DriverService`] serves a bare
//! driver (no node around it), for in-process clusters.

pub mod admin;
pub mod data;
pub mod info;
pub mod membership;

use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;

use super::server::NodeServer;
use crate::api::{RpcError, RpcRequest, RpcResponse};
use crate::error::{Error, Result};
use crate::multiraft::Reply;
use crate::runtime::runner::DriverHandle;
use crate::transport::rpc::Service;
use crate::types::CATALOG_GROUP;

impl Service for NodeServer {
    fn handle(
        &self,
        req: RpcRequest,
        caller: Option<[u8; 32]>,
    ) -> Pin<Box<dyn Future<Output = RpcResponse> + Send + '_>> {
        Box::pin(async move {
            let start = std::time::Instant::now();
            let op = super::metrics::op_of(&req);
            let driver = self.driver();
            let resp = answer(Some(self), driver, req, caller).await;
            self.metrics.requests.observe(op, &resp, start.elapsed());
            resp
        })
    }
}

/// A running driver without a node around it: data, catalog and admin
/// requests only.
pub struct DriverService(pub DriverHandle);

impl Service for DriverService {
    fn handle(
        &self,
        req: RpcRequest,
        caller: Option<[u8; 32]>,
    ) -> Pin<Box<dyn Future<Output = RpcResponse> + Send + '_>> {
        Box::pin(answer(None, Some(self.0.clone()), req, caller))
    }
}

/// Serves `req` from the caller whose certificate key hash is `caller`
/// with the node `node` (none for a bare driver) and its driver (none
/// before it runs), and says how it went.
async fn answer(
    node: Option<&NodeServer>,
    driver: Option<DriverHandle>,
    req: RpcRequest,
    caller: Option<[u8; 32]>,
) -> RpcResponse {
    let group = req.group();
    let result = serve(node, driver.as_ref(), req, caller).await;
    match result {
        Ok(r) => r,
        Err(e) => {
            let mut wire = RpcError::from(&e);
            if let (
                Some(h),
                Some(CATALOG_GROUP),
                RpcError::NotLeader {
                    leader: Some(l),
                    leader_addr,
                    ..
                },
            ) = (driver.as_ref(), group, &mut wire)
            {
                if let Ok(c) = ask(h.catalog()).await {
                    *leader_addr = c.nodes.get(l).map(|n| n.addr.clone());
                }
            }
            RpcResponse::Error(wire)
        }
    }
}

/// The dispatch: each request to its family.
async fn serve(
    node: Option<&NodeServer>,
    driver: Option<&DriverHandle>,
    req: RpcRequest,
    caller: Option<[u8; 32]>,
) -> Result<RpcResponse> {
    let no_node = || Error::Invalid("a bare driver serves no membership or status request".into());
    match req {
        RpcRequest::Status => info::status(node.ok_or_else(no_node)?, driver).await,
        RpcRequest::Init { vshards } => membership::init(node.ok_or_else(no_node)?, vshards).await,
        req => {
            let h = driver.ok_or_else(|| {
                Error::Unreachable("this node has not joined a cluster yet".into())
            })?;
            driven(h, req, caller).await
        }
    }
}

/// The requests a running driver serves, for the caller whose certificate
/// key hash is `caller`.
async fn driven(
    h: &DriverHandle,
    req: RpcRequest,
    caller: Option<[u8; 32]>,
) -> Result<RpcResponse> {
    match req {
        RpcRequest::Propose { group, command } => data::propose(h, group, command, caller).await,
        RpcRequest::Read { group, key } => data::read(h, group, key).await,
        RpcRequest::Scan {
            group,
            start,
            end,
            limit,
        } => data::scan(h, group, start, end, limit).await,
        RpcRequest::Catalog => info::catalog(h).await,
        RpcRequest::TransferLeader { group, to } => admin::transfer_leader(h, group, to).await,
        RpcRequest::SetNodeState { node, state } => admin::set_node_state(h, node, state).await,
        RpcRequest::Checksum { group } => admin::checksum(h, group).await,
        RpcRequest::Checksums => admin::checksums(h).await,
        RpcRequest::Join {
            addr,
            spki_sha256,
            store_id,
        } => membership::admit(h, addr, spki_sha256, store_id).await,
        RpcRequest::Announce {
            node,
            addr,
            spki_sha256,
        } => membership::announce(h, node, addr, spki_sha256).await,
        RpcRequest::Status | RpcRequest::Init { .. } => Err(Error::Invalid(
            "status and init are answered by the node, not its driver".into(),
        )),
    }
}

/// Waits for the driver's answer; a driver that stopped never gives one.
pub(super) async fn ask<T>(rx: oneshot::Receiver<T>) -> Result<T> {
    rx.await
        .map_err(|_| Error::Unreachable("the driver stopped".into()))
}

/// The answer to a proposal the driver applied.
fn applied(reply: Reply) -> Result<RpcResponse> {
    match reply {
        Reply::Kv(r) => Ok(RpcResponse::Kv(r)),
        Reply::Catalog => Ok(RpcResponse::Done),
        Reply::Checksum { index, digest } => Ok(RpcResponse::Checksum { index, digest }),
        other => Err(Error::Invalid(format!("unexpected reply {other:?}"))),
    }
}
