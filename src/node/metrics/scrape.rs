//! One scrape: every figure read once into a [`Scrape`], then encoded in
//! the Prometheus text format by `prometheus-client`.
//!
//! Metric names, all prefixed `flotilla_`, are listed in the README
//! (*Metrics and health*) and used by `ops/grafana/flotilla.json`; a
//! change here is a change there.

use std::fmt;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use raft::StateRole;

use super::{NodeMetrics, Running, GROUP_SERIES};
use crate::meter::HistogramSnapshot;
use crate::multiraft::{DriverStats, GroupStatus};
use crate::node::resources;
use crate::node::server::NodeServer;
use crate::node::Lifecycle;
use crate::transport::TransportStats;

/// How long a scrape waits for the driver's status before leaving the
/// per-group series out.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(2);

/// The Prometheus text of `node`'s metrics now.
pub(super) async fn render(node: &NodeServer) -> String {
    let scrape = Scrape::take(node).await;
    let mut registry = Registry::with_prefix("flotilla");
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::warn!(error = %e, "metrics did not encode");
    }
    text
}

/// Every figure of one scrape.
#[derive(Debug)]
struct Scrape {
    /// Whether the node's lifecycle is `ready`.
    ready: bool,
    rss_bytes: Option<u64>,
    connections: u64,
    frames_in: u64,
    frames_out: u64,
    refusals: [(&'static str, u64); 13],
    requests: Vec<(&'static str, &'static str, HistogramSnapshot)>,
    /// Once the driver runs.
    driver: Option<DriverFigures>,
}

/// The figures of a running driver and its storage.
#[derive(Debug)]
struct DriverFigures {
    proposals: u64,
    commits: u64,
    leader_changes: u64,
    elections: u64,
    round: HistogramSnapshot,
    rounds: u64,
    round_bytes: HistogramSnapshot,
    round_log_bytes: u64,
    fsyncs: u64,
    fsync: HistogramSnapshot,
    checkpoints: u64,
    flushes: u64,
    overlay_bytes: u64,
    entry_cache_bytes: u64,
    snapshot_sent_bytes: u64,
    snapshot_received_bytes: u64,
    snapshot_installs: u64,
    /// Every group on the node, by id; none when the driver did not answer.
    groups: Vec<GroupStatus>,
    /// Sessions over those groups; none when a session table did not read.
    sessions: Option<u64>,
}

impl Scrape {
    async fn take(node: &NodeServer) -> Scrape {
        let metrics: &NodeMetrics = &node.metrics;
        let t = node.transport.stats();
        let get = TransportStats::get;
        let mut scrape = Scrape {
            ready: node.lifecycle() == Lifecycle::Ready,
            rss_bytes: resources::rss_bytes(),
            connections: node.transport.endpoint().open_connections() as u64,
            frames_in: get(&t.frames_in),
            frames_out: get(&t.frames_out),
            refusals: t.refusals(),
            requests: metrics
                .requests
                .seen()
                .map(|(op, outcome, h)| (op, outcome, h.snapshot()))
                .collect(),
            driver: None,
        };
        if let Some(running) = metrics.running.get() {
            let groups = match node.driver() {
                Some(h) => tokio::time::timeout(DRIVER_TIMEOUT, h.status())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            scrape.driver = Some(DriverFigures::take(running, groups).await);
        }
        scrape
    }
}

impl DriverFigures {
    async fn take(running: &Running, groups: Vec<GroupStatus>) -> DriverFigures {
        let d = &running.driver;
        let s = running.storage.stats();
        let get = DriverStats::get;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let (sent, staged, installs) = running
            .storage
            .snapshots(|s| {
                (
                    load(&s.bytes_sent),
                    load(&s.bytes_staged),
                    load(&s.installs),
                )
            })
            .unwrap_or_default();
        // Session tables are read from redb: off the async workers.
        let storage = running.storage.clone();
        let ids: Vec<_> = groups.iter().map(|g| g.group).collect();
        let sessions = tokio::task::spawn_blocking(move || {
            ids.iter()
                .map(|g| storage.sessions(*g))
                .sum::<crate::Result<u64>>()
        })
        .await
        .ok()
        .and_then(|r| {
            r.map_err(|e| tracing::warn!(error = %e, "a session table did not read"))
                .ok()
        });
        DriverFigures {
            proposals: get(&d.proposals),
            commits: get(&d.entries_applied),
            leader_changes: get(&d.leader_changes),
            elections: get(&d.elections),
            round: d.round.snapshot(),
            rounds: s.rounds(),
            round_bytes: s.round_bytes.snapshot(),
            round_log_bytes: load(&s.round_log_bytes),
            fsyncs: s.syncs(),
            fsync: s.fsync.snapshot(),
            checkpoints: s.checkpoints(),
            flushes: s.flushes(),
            overlay_bytes: running.storage.overlay_bytes(),
            entry_cache_bytes: running.storage.entry_cache_bytes(),
            snapshot_sent_bytes: sent,
            snapshot_received_bytes: staged,
            snapshot_installs: installs,
            groups,
            sessions,
        }
    }
}

/// Writes one metric without labels.
fn one(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    v: u64,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
        _ => m.encode_gauge(&v),
    }
}

/// Writes one metric with one series per label set.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: &[(L, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in series {
        let mut s = m.encode_family(labels)?;
        match kind {
            MetricType::Counter => s.encode_counter::<NoLabelSet, _, u64>(v, None)?,
            _ => s.encode_gauge(v)?,
        }
    }
    Ok(())
}

/// Writes one histogram with one series per label set.
fn histograms<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, &HistogramSnapshot)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        m.encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}

/// Writes one histogram without labels.
fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

/// One group's series: its label and value.
type GroupSeries = ([(&'static str, String); 1], u64);

/// The per-group series: the first [`GROUP_SERIES`] groups by id, then
/// the rest as `other` (largest lag, no applied index).
fn group_series(groups: &[GroupStatus]) -> (Vec<GroupSeries>, Vec<GroupSeries>) {
    let lag = |g: &GroupStatus| g.commit.saturating_sub(g.applied);
    let mut applied = Vec::new();
    let mut lags = Vec::new();
    for g in groups.iter().take(GROUP_SERIES) {
        applied.push(([("group", g.group.0.to_string())], g.applied));
        lags.push(([("group", g.group.0.to_string())], lag(g)));
    }
    if let Some(max) = groups.iter().skip(GROUP_SERIES).map(lag).max() {
        lags.push(([("group", "other".to_string())], max));
    }
    (applied, lags)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let e = &mut enc;
        one(
            e,
            "node_ready",
            "1 when the node's lifecycle is ready, else 0",
            Gauge,
            u64::from(self.ready),
        )?;
        if let Some(rss) = self.rss_bytes {
            one(
                e,
                "process_resident_memory_bytes",
                "Resident memory of the node process",
                Gauge,
                rss,
            )?;
        }
        one(
            e,
            "quic_connections",
            "QUIC connections open on the node's endpoint, both ways",
            Gauge,
            self.connections,
        )?;
        one(
            e,
            "transport_frames_received",
            "Frames received and accepted",
            Counter,
            self.frames_in,
        )?;
        one(
            e,
            "transport_frames_sent",
            "Frames sent",
            Counter,
            self.frames_out,
        )?;
        let refused: Vec<_> = self
            .refusals
            .iter()
            .map(|(r, n)| ([("reason", *r)], *n))
            .collect();
        family(
            e,
            "transport_refused",
            "Handshakes, connections, streams and frames refused, by reason",
            Counter,
            &refused,
        )?;
        let requests: Vec<_> = self
            .requests
            .iter()
            .map(|(op, outcome, h)| ([("op", *op), ("outcome", *outcome)], h))
            .collect();
        histograms(
            e,
            "request_duration_seconds",
            "Time to answer a request, by operation and outcome",
            &requests,
        )?;
        let Some(d) = &self.driver else {
            return Ok(());
        };
        one(
            e,
            "raft_proposals",
            "Proposals this node accepted as leader",
            Counter,
            d.proposals,
        )?;
        one(
            e,
            "raft_commits",
            "Log entries committed and applied by this node's replicas",
            Counter,
            d.commits,
        )?;
        one(
            e,
            "raft_leader_changes",
            "Times a replica here learnt of a new leader",
            Counter,
            d.leader_changes,
        )?;
        one(
            e,
            "raft_elections",
            "Terms a replica here entered, each begun by an election",
            Counter,
            d.elections,
        )?;
        histogram(
            e,
            "raft_round_duration_seconds",
            "Time of one driver round",
            &d.round,
        )?;
        one(
            e,
            "storage_rounds",
            "Round batches persisted",
            Counter,
            d.rounds,
        )?;
        histogram(
            e,
            "storage_round_size_bytes",
            "Bytes of each round's record in the round log",
            &d.round_bytes,
        )?;
        one(
            e,
            "storage_round_log_bytes",
            "Bytes appended to the round log",
            Counter,
            d.round_log_bytes,
        )?;
        one(
            e,
            "storage_fsyncs",
            "Syncs of the round log and of redb",
            Counter,
            d.fsyncs,
        )?;
        histogram(
            e,
            "storage_fsync_duration_seconds",
            "Time of one sync of the round log",
            &d.fsync,
        )?;
        one(
            e,
            "storage_checkpoints",
            "Checkpoints of the round log into redb",
            Counter,
            d.checkpoints,
        )?;
        one(
            e,
            "storage_overlay_flushes",
            "Rounds that flushed applied state to redb",
            Counter,
            d.flushes,
        )?;
        one(
            e,
            "storage_overlay_bytes",
            "Applied state not yet flushed to redb",
            Gauge,
            d.overlay_bytes,
        )?;
        one(
            e,
            "storage_entry_cache_bytes",
            "Raft log entries held in memory",
            Gauge,
            d.entry_cache_bytes,
        )?;
        if let Some(n) = d.sessions {
            one(
                e,
                "sessions",
                "Client sessions held by the groups on this node",
                Gauge,
                n,
            )?;
        }
        one(
            e,
            "snapshot_sent_bytes",
            "Snapshot bytes read for peers",
            Counter,
            d.snapshot_sent_bytes,
        )?;
        one(
            e,
            "snapshot_received_bytes",
            "Snapshot bytes received and staged",
            Counter,
            d.snapshot_received_bytes,
        )?;
        one(
            e,
            "snapshot_installs",
            "Snapshots installed",
            Counter,
            d.snapshot_installs,
        )?;
        let roles = [
            ("leader", StateRole::Leader),
            ("follower", StateRole::Follower),
            ("candidate", StateRole::Candidate),
            ("pre_candidate", StateRole::PreCandidate),
        ]
        .map(|(name, role)| {
            (
                [("role", name)],
                d.groups.iter().filter(|g| g.role == role).count() as u64,
            )
        });
        family(
            e,
            "groups",
            "Groups on this node, by this replica's role",
            Gauge,
            &roles,
        )?;
        let leaderless = d.groups.iter().filter(|g| g.leader.is_none()).count() as u64;
        one(
            e,
            "groups_leaderless",
            "Groups on this node that know no leader",
            Gauge,
            leaderless,
        )?;
        let (applied, lags) = group_series(&d.groups);
        family(
            e,
            "group_applied_index",
            "Apply index of a group's replica here",
            Gauge,
            &applied,
        )?;
        family(
            e,
            "group_apply_lag",
            "Entries committed on a group's replica here and not yet applied",
            Gauge,
            &lags,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::GroupId;

    fn group(id: u64, commit: u64, applied: u64) -> GroupStatus {
        GroupStatus {
            group: GroupId(id),
            role: StateRole::Follower,
            term: 1,
            leader: None,
            commit,
            applied,
            last_index: commit,
            first_index: 1,
            voters: Vec::new(),
            learners: Vec::new(),
        }
    }

    #[test]
    fn groups_past_the_cap_share_one_other_series() {
        let groups: Vec<_> = (0..GROUP_SERIES as u64 + 6)
            .map(|g| group(g, 100, 100 - g % 7))
            .collect();
        let (applied, lags) = group_series(&groups);
        assert_eq!(applied.len(), GROUP_SERIES);
        assert_eq!(lags.len(), GROUP_SERIES + 1);
        assert_eq!(applied[0], ([("group", "0".to_string())], 100));
        // Groups 64..70 lag by 1, 2, 3, 4, 5, 6: "other" reports the largest.
        assert_eq!(lags.last(), Some(&([("group", "other".to_string())], 6)));
        let (applied, lags) = group_series(&groups[..3]);
        assert_eq!(
            (applied.len(), lags.len()),
            (3, 3),
            "no other under the cap"
        );
    }
}
