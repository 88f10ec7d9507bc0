//! A node's metrics and health checks, served over plain HTTP.
//!
//! `flotilla start --metrics-listen ADDR` serves, from [`http`]:
//!
//! - `/metrics`: the Prometheus text format (version 0.0.4), encoded with
//!   `prometheus-client` from a snapshot taken at each scrape
//!   ([`scrape`]);
//! - `/health`: 200 while the process runs and its driver has not died,
//!   503 once the node failed;
//! - `/ready`: 200 once the node has joined, holds a catalog, and every
//!   group it hosts had a leader within [`READY_LEADER_GRACE`]; else 503
//!   with the reason as one line of text.
//!
//! Nothing here sits on the path of a proposal. The figures already kept
//! elsewhere are read where they live: the driver's counters
//! (`multiraft::DriverStats`), the storage's ([`crate::storage::Meters`]),
//! the transport's refusals (`TransportStats`); per-group state comes from
//! the driver's `status` answer, once per scrape. The only figures this
//! module keeps itself are request latencies ([`Requests`]), one lock-free
//! histogram per operation and outcome, fed by the request dispatch.
//!
//! **Bounded labels.** Operations and outcomes are closed sets (the
//! request and error enums). Per-group series exist for at most
//! [`GROUP_SERIES`] groups, the lowest ids this node hosts; the rest are
//! folded into one series labelled `group="other"`, which reports the
//! largest apply lag among them and no applied index.

pub mod http;
mod scrape;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::api::{RpcError, RpcRequest, RpcResponse};
use crate::meter::Histogram;
use crate::multiraft::DriverStats;
use crate::storage::Meters;
use crate::types::GroupId;

/// Groups with series of their own; see the module doc.
pub const GROUP_SERIES: usize = 64;
/// How long a group may go without a known leader before `/ready` says
/// the node is not ready: a few election timeouts, so one election does
/// not take the node out of a load balancer.
pub const READY_LEADER_GRACE: Duration = Duration::from_secs(5);

/// Request operations, in the order of their histograms.
const OPS: [&str; 12] = [
    "propose",
    "read",
    "scan",
    "catalog",
    "status",
    "transfer_leader",
    "set_node_state",
    "checksum",
    "checksums",
    "init",
    "join",
    "announce",
];

/// Request outcomes, in the order of their histograms.
const OUTCOMES: [&str; 8] = [
    "ok",
    "not_leader",
    "wrong_group",
    "lost",
    "unreachable",
    "denied",
    "invalid",
    "failed",
];

/// The operation of a request, as an index into [`OPS`].
pub fn op_of(req: &RpcRequest) -> usize {
    match req {
        RpcRequest::Propose { .. } => 0,
        RpcRequest::Read { .. } => 1,
        RpcRequest::Scan { .. } => 2,
        RpcRequest::Catalog => 3,
        RpcRequest::Status => 4,
        RpcRequest::TransferLeader { .. } => 5,
        RpcRequest::SetNodeState { .. } => 6,
        RpcRequest::Checksum { .. } => 7,
        RpcRequest::Checksums => 8,
        RpcRequest::Init { .. } => 9,
        RpcRequest::Join { .. } => 10,
        RpcRequest::Announce { .. } => 11,
    }
}

/// The outcome of an answer, as an index into [`OUTCOMES`].
fn outcome_of(resp: &RpcResponse) -> usize {
    let RpcResponse::Error(e) = resp else {
        return 0;
    };
    match e {
        RpcError::NotLeader { .. } => 1,
        RpcError::UnknownGroup(_) | RpcError::WrongGroup { .. } => 2,
        RpcError::ProposalLost { .. }
        | RpcError::ReadUnconfirmed { .. }
        | RpcError::SessionExpired { .. }
        | RpcError::AnswerLost { .. } => 3,
        RpcError::Unreachable(_) => 4,
        RpcError::PermissionDenied(_) => 5,
        RpcError::BatchSpansVShards { .. }
        | RpcError::KeyTooLarge { .. }
        | RpcError::ValueTooLarge { .. }
        | RpcError::Invalid(_) => 6,
        RpcError::Failed(_) => 7,
    }
}

/// Request latencies: one histogram per operation and outcome.
#[derive(Debug)]
pub struct Requests {
    /// `OPS.len() * OUTCOMES.len()` histograms, by operation then outcome.
    by_op: Box<[Histogram]>,
}

impl Default for Requests {
    fn default() -> Requests {
        Requests {
            by_op: (0..OPS.len() * OUTCOMES.len())
                .map(|_| Histogram::default())
                .collect(),
        }
    }
}

impl Requests {
    /// Counts one request of operation `op` ([`op_of`]) that took
    /// `elapsed` and was answered `resp`.
    pub fn observe(&self, op: usize, resp: &RpcResponse, elapsed: Duration) {
        if let Some(h) = self.by_op.get(op * OUTCOMES.len() + outcome_of(resp)) {
            h.observe_duration(elapsed);
        }
    }

    /// Every (operation, outcome, histogram) that has seen a request.
    fn seen(&self) -> impl Iterator<Item = (&'static str, &'static str, &Histogram)> {
        self.by_op.iter().enumerate().filter_map(|(i, h)| {
            let op = OPS[i / OUTCOMES.len()];
            let outcome = OUTCOMES[i % OUTCOMES.len()];
            (h.snapshot().count > 0).then_some((op, outcome, h))
        })
    }
}

/// What a node keeps for its metrics and health checks.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// Request latencies, fed by the dispatch.
    pub requests: Requests,
    /// The driver's and the storage's figures, from the moment the driver
    /// starts.
    running: OnceLock<Running>,
    /// When each group was last seen with a leader, for `/ready`. A std
    /// lock: held only by a `/ready` answer, never across an await.
    led: Mutex<BTreeMap<GroupId, Instant>>,
}

/// The shared figures of a running driver.
#[derive(Clone)]
struct Running {
    driver: Arc<DriverStats>,
    storage: Meters,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// Starts reading the figures of a driver that is starting (once; a
    /// second call is ignored).
    pub fn attach(&self, driver: Arc<DriverStats>, storage: Meters) {
        let _ = self.running.set(Running { driver, storage });
    }

    /// Notes which groups have a leader now and returns the groups that
    /// had none within [`READY_LEADER_GRACE`] (or never since this process
    /// started).
    fn leaderless(&self, groups: &[(GroupId, bool)], now: Instant) -> Vec<GroupId> {
        let mut led = self.led.lock().unwrap_or_else(|p| p.into_inner());
        led.retain(|g, _| groups.iter().any(|(h, _)| h == g));
        let mut out = Vec::new();
        for (g, has_leader) in groups {
            if *has_leader {
                led.insert(*g, now);
            } else if led
                .get(g)
                .is_none_or(|seen| now.duration_since(*seen) > READY_LEADER_GRACE)
            {
                out.push(*g);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_leaderless_only_past_the_grace() {
        let m = NodeMetrics::default();
        let t0 = Instant::now();
        let (a, b) = (GroupId(1), GroupId(2));
        assert_eq!(m.leaderless(&[(a, true), (b, false)], t0), vec![b]);
        let soon = t0 + READY_LEADER_GRACE / 2;
        assert_eq!(m.leaderless(&[(a, false), (b, true)], soon), vec![]);
        let late = soon + READY_LEADER_GRACE * 2;
        assert_eq!(m.leaderless(&[(a, false), (b, true)], late), vec![a]);
    }

    #[test]
    fn every_request_and_error_has_its_series() {
        let r = Requests::default();
        let ok = RpcResponse::Done;
        let denied = RpcResponse::Error(RpcError::PermissionDenied("no".into()));
        r.observe(op_of(&RpcRequest::Status), &ok, Duration::from_millis(1));
        r.observe(
            op_of(&RpcRequest::Init { vshards: None }),
            &denied,
            Duration::from_millis(2),
        );
        let seen: Vec<_> = r.seen().map(|(op, outcome, _)| (op, outcome)).collect();
        assert_eq!(seen, vec![("status", "ok"), ("init", "denied")]);
    }
}
