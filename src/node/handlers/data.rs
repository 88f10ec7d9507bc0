//! Data requests: KV commands, reads and scans, each served by the group's
//! leader through the driver (a follower answers with a redirect).

use super::{applied, ask};
use crate::api::RpcResponse;
use crate::error::Result;
use crate::kv::Command;
use crate::multiraft::Proposal;
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

/// Reads up to `limit` rows of `start..end` linearizably.
pub async fn scan(
    h: &DriverHandle,
    group: GroupId,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    limit: u32,
) -> Result<RpcResponse> {
    applied(ask(h.scan(group, start, end, limit as usize)).await??)
}
