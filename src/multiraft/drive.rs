//! Driving a [`Driver`] through whole rounds: the one path the runner
//! thread, the simulation, the threaded cluster and the tests all take.
//!
//! A round is [`Driver::ready`], the engine persisting the round's batch,
//! and [`Driver::on_persisted`]. This is the only place in `multiraft` that
//! hands a batch to storage; the driver itself writes nothing.

use super::{Driver, RoundOutput};
use crate::error::Result;

impl Driver {
    /// Runs one whole round and returns everything it produced.
    /// An error means the disk failed; the node must stop.
    pub fn round(&mut self) -> Result<RoundOutput> {
        self.round_with(|_| {})
    }

    /// Runs one whole round, handing `send` what may leave before the
    /// round's batch is persisted, twice. First, before anything is made
    /// durable: messages raft-rs allows to be sent before local persistence
    /// (a leader's appends, so followers write in parallel with it) and
    /// answers to proposals whose entries applied (they are committed on a
    /// quorum already; replaying the log re-applies them after a crash).
    /// Then, once the round log holds the batch durably: the messages that
    /// wait on persistence (a follower's acknowledgements, votes), so they
    /// do not also wait for redb's commit. `send` takes what it sends out of
    /// the output; the rest is returned.
    pub fn round_with(&mut self, mut send: impl FnMut(&mut RoundOutput)) -> Result<RoundOutput> {
        let mut ready = self.ready()?;
        send(&mut ready.out);
        let persisted = match ready.take_batch() {
            Some(batch) => self.engine().persist_then(batch, |durable| {
                ready.release(durable);
                send(&mut ready.out);
            })?,
            None => Default::default(),
        };
        self.on_persisted(ready, persisted)
    }

    /// Flushes the overlay and checkpoints the round log now (before a
    /// clean stop, so a restart has nothing to re-apply or replay).
    pub fn flush_now(&mut self) -> Result<()> {
        self.engine().flush_and_checkpoint()
    }
}
