//! Data requests: KV commands, reads and scans, each served by the group's
//! leader through the driver (a follower answers with a redirect). A scan
//! is answered one page at a time, read off the driver thread.
//!
//! A command is bound to its caller here, before it is proposed: its
//! session key becomes `kv::session_key` of the client's id and the
//! caller's certificate key hash, which the handshake proved and the
//! request cannot change, and it is stamped with this node's clock (the
//! group's log time; only a leader's proposal gets into the log).

use std::time::{SystemTime, UNIX_EPOCH};

use super::{applied, ask};
use crate::api::RpcResponse;
use crate::error::{Error, Result};
use crate::kv::{session_key, Command};
use crate::multiraft::{Proposal, Reply};
use crate::runtime::runner::DriverHandle;
use crate::types::GroupId;

/// Applies a KV command of the caller whose certificate key hash is
/// `caller` through the group's log.
pub async fn propose(
    h: &DriverHandle,
    group: GroupId,
    mut command: Command,
    caller: Option<[u8; 32]>,
) -> Result<RpcResponse> {
    command.client = session_key(caller.as_ref(), command.client);
    command.proposed_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    applied(ask(h.propose(group, Proposal::Kv(command))).await??)
}

/// Reads a key linearizably.
pub async fn read(h: &DriverHandle, group: GroupId, key: Vec<u8>) -> Result<RpcResponse> {
    applied(ask(h.read(group, key)).await??)
}

/// Serves one page of `start..end`: the driver confirms the read and
/// takes it between rounds; its rows are read here, on a blocking thread,
/// so a page of megabytes holds up no group's round.
pub async fn scan(
    h: &DriverHandle,
    group: GroupId,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    limit: u32,
) -> Result<RpcResponse> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let read = match ask(h.scan(group, start, end, limit)).await?? {
        Reply::Scan(read) => read,
        other => return Err(Error::Invalid(format!("unexpected reply {other:?}"))),
    };
    let page = tokio::task::spawn_blocking(move || read.page())
        .await
        .map_err(|e| Error::Invalid(format!("the scan page read failed: {e}")))??;
    Ok(RpcResponse::ScanPage {
        rows: page.rows,
        resume: page.resume,
    })
}
