//! The I/O shell around the driver: where a round's batch is persisted and
//! its messages leave.
//!
//! [`crate::multiraft::Driver`] is a state machine that writes nothing: a
//! round is its [`Driver::ready`](crate::multiraft::Driver::ready), then the caller's disk and network work,
//! then its
//! [`Driver::on_persisted`](crate::multiraft::Driver::on_persisted). This module is that caller. [`round`]
//! and [`round_with`] run one whole round against the driver's engine, and
//! are the one path the runner thread, the simulation, the threaded cluster,
//! the benchmarks and the tests all take; [`runner`] gives a driver a
//! thread, an inbox and a [`runner::Transport`] to send through.

pub mod runner;

use crate::error::Result;
use crate::multiraft::{Driver, RoundOutput};

/// Runs one whole round and returns everything it produced.
/// An error means the disk failed; the node must stop.
pub fn round(driver: &mut Driver) -> Result<RoundOutput> {
    round_with(driver, |_| {})
}

/// Runs one whole round, handing `send` what may leave before the round's
/// batch is persisted, twice. First, before anything is made durable:
/// messages raft-rs allows to be sent before local persistence (a leader's
/// appends, so followers write in parallel with it) and answers to
/// proposals whose entries applied (they are committed on a quorum
/// already; replaying the log re-applies them after a crash). Then, once
/// the round log holds the batch durably: the messages that wait on
/// persistence (a follower's acknowledgements, votes), so they do not also
/// wait for redb's commit. `send` takes what it sends out of the output;
/// the rest is returned. The round's duration goes to the driver's
/// [`DriverStats::round`](crate::multiraft::DriverStats::round).
pub fn round_with(
    driver: &mut Driver,
    mut send: impl FnMut(&mut RoundOutput),
) -> Result<RoundOutput> {
    let start = std::time::Instant::now();
    let mut ready = driver.ready()?;
    send(&mut ready.out);
    let persisted = match ready.take_batch() {
        Some(batch) => driver.engine().persist_then(batch, |durable| {
            ready.release(durable);
            send(&mut ready.out);
        })?,
        None => Default::default(),
    };
    let out = driver.on_persisted(ready, persisted);
    driver.stats().round.observe_duration(start.elapsed());
    out
}

/// Flushes the overlay and checkpoints the round log now (before a clean
/// stop, so a restart has nothing to re-apply or replay).
pub fn flush_now(driver: &Driver) -> Result<()> {
    driver.engine().flush_and_checkpoint()
}
