//! Data requests: KV commands, reads and scans, each served by the group's
//! leader through the driver (a follower answers with a redirect). A scan
//! is answered one page at a time, read off the driver thread.

use super::{applied, ask};
use crate::api::RpcResponse;
use crate::error::{Error, Result};
use crate::kv::Command;
use crate::multiraft::{Proposal, Reply};
use crate::runtime::runner::DriverHandle;
use crate::types::GroupId;

/// Applies a KV command through the group's log.
pub async fn propose(h: &DriverHandle, group: GroupId, command: Command) -> Result<RpcResponse> {
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
