//! What the transport turns away, counted by reason and logged without
//! flooding.
//!
//! Every refusal bumps its reason's counter in [`TransportStats`] and is
//! logged with the peer's address; a peer that provokes the same refusal
//! thousands of times a second would drown the log, so each reason logs
//! at most once per [`LOG_EVERY`] and the next line says how many went
//! unlogged in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::TransportStats;

/// Shortest gap between two log lines of the same reason.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Why a stream, frame or connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// A frame declared more bytes than its kind allows.
    Oversize,
    /// A stream ended partway through a frame.
    Truncated,
    /// A frame (or a request stream) stopped arriving partway.
    Stalled,
    /// A frame's body did not decode.
    Malformed,
    /// A stream named no kind, a kind that does not travel in its
    /// direction, or one this node does not serve.
    Kind,
    /// A stream of a kind the certificate's role may not open.
    Role,
    /// A peer opened more streams than the connection allows.
    StreamCap,
    /// A certificate already had as many connections as it may.
    ConnectionCap,
    /// A Raft message too large for any frame, on the sending side.
    OversizeOutbound,
}

const REASONS: [Refusal; 9] = [
    Refusal::Oversize,
    Refusal::Truncated,
    Refusal::Stalled,
    Refusal::Malformed,
    Refusal::Kind,
    Refusal::Role,
    Refusal::StreamCap,
    Refusal::ConnectionCap,
    Refusal::OversizeOutbound,
];

impl Refusal {
    /// The reason's name in log lines.
    fn name(self) -> &'static str {
        match self {
            Refusal::Oversize => "oversize",
            Refusal::Truncated => "truncated",
            Refusal::Stalled => "stalled",
            Refusal::Malformed => "malformed",
            Refusal::Kind => "kind",
            Refusal::Role => "role",
            Refusal::StreamCap => "stream cap",
            Refusal::ConnectionCap => "connection cap",
            Refusal::OversizeOutbound => "oversize outbound",
        }
    }

    /// The counter the reason bumps.
    fn counter(self, stats: &TransportStats) -> &AtomicU64 {
        match self {
            Refusal::Oversize => &stats.refused_oversize,
            Refusal::Truncated => &stats.refused_truncated,
            Refusal::Stalled => &stats.refused_stalled,
            Refusal::Malformed => &stats.bad_frames,
            Refusal::Kind => &stats.refused_kinds,
            Refusal::Role => &stats.refused_roles,
            Refusal::StreamCap => &stats.refused_streams,
            Refusal::ConnectionCap => &stats.refused_connections,
            Refusal::OversizeOutbound => &stats.oversize_outbound,
        }
    }

    fn index(self) -> usize {
        REASONS.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// When each reason was last logged, and how many refusals since.
#[derive(Debug, Default)]
pub(super) struct RefusalLog {
    /// Per reason (in [`REASONS`] order): when it last logged, and the
    /// refusals not logged since. A std `Mutex`: held only to read and
    /// update two numbers.
    last: Mutex<[(Option<Instant>, u64); REASONS.len()]>,
}

impl RefusalLog {
    /// Counts a refusal of `why` from `peer` and logs it, unless the same
    /// reason logged within [`LOG_EVERY`].
    pub(super) fn refuse(
        &self,
        stats: &TransportStats,
        node: u64,
        why: Refusal,
        peer: &dyn std::fmt::Display,
        detail: &dyn std::fmt::Display,
    ) {
        why.counter(stats).fetch_add(1, Ordering::Relaxed);
        let unlogged = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let (at, skipped) = &mut last[why.index()];
            if at.is_some_and(|t| t.elapsed() < LOG_EVERY) {
                *skipped += 1;
                return;
            }
            *at = Some(Instant::now());
            std::mem::take(skipped)
        };
        tracing::warn!(
            node_id = node,
            peer = %peer,
            reason = why.name(),
            detail = %detail,
            unlogged,
            "refused"
        );
    }
}
