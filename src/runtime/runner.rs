//! Running a [`Driver`] on its own thread.
//!
//! The driver is synchronous and owns its state; this runner gives it a
//! thread and an inbox, so nothing else ever touches a `RawNode` and no lock
//! is held across an await. Everything else talks to it through a
//! [`DriverHandle`]: peers' messages and client requests go into the inbox,
//! answers come back on `tokio` oneshot channels (awaitable from async code,
//! or `blocking_recv` from threads).
//!
//! The loop: wait for input until the next tick is due, take everything
//! else already queued, tick if due, run one round, hand its messages to
//! the [`Transport`] and its answers to their waiters. Requests that arrive
//! while a round is fsyncing are handled together in the next round, which
//! is where group commit comes from under load.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::eraftpb::MessageType;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::multiraft::{Driver, GroupMessage, GroupStatus, Proposal, Reply, RoundOutput, Token};
use crate::storage::{copy_snapshot, Snapshots};
use crate::types::{GroupId, NodeId};

/// Where the driver's outbound messages go.
pub trait Transport: Send + 'static {
    /// Sends one batch to `to`. Returns `false` when the peer cannot be
    /// reached (the driver then probes it instead of streaming to it).
    fn send(&mut self, to: NodeId, msgs: Vec<GroupMessage>) -> bool;

    /// Carries a snapshot message to `to`: its group's state (which the
    /// message only describes, see `storage::snapshot`) first, then the
    /// message. Must not wait for the transfer; `done` is told how it went,
    /// whenever that is.
    fn send_snapshot(&mut self, to: NodeId, msg: GroupMessage, done: SnapshotDone);
}

/// Tells a driver how a snapshot transfer ended: raft-rs holds the peer
/// until it hears (see [`Driver::report_snapshot`]). Dropped unreported, it
/// reports a failure.
pub struct SnapshotDone {
    tx: Option<mpsc::Sender<Input>>,
    group: GroupId,
    to: NodeId,
}

impl SnapshotDone {
    /// Reports the transfer as carried (`true`) or failed.
    pub fn report(mut self, sent: bool) {
        self.send(sent);
    }

    fn send(&mut self, sent: bool) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Input::SnapshotDone {
                group: self.group,
                to: self.to,
                sent,
            });
        }
    }
}

impl Drop for SnapshotDone {
    fn drop(&mut self) {
        self.send(false);
    }
}

/// A request to the driver thread.
pub enum Input {
    /// Messages from a peer.
    Messages(Vec<GroupMessage>),
    /// A proposal; the answer goes to `reply`.
    Propose {
        /// Target group.
        group: GroupId,
        /// What to propose.
        proposal: Proposal,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Reply>>,
    },
    /// A linearizable read.
    Read {
        /// Target group.
        group: GroupId,
        /// The key.
        key: Vec<u8>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Reply>>,
    },
    /// A linearizable scan of one page of one group. The answer is a
    /// [`Reply::Scan`]: the read of the page, not its rows, so that the
    /// caller reads them on a thread of its own.
    Scan {
        /// Target group.
        group: GroupId,
        /// First key.
        start: Vec<u8>,
        /// End (exclusive); none: to the end of the group.
        end: Option<Vec<u8>>,
        /// Most rows returned.
        limit: usize,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Reply>>,
    },
    /// Every group's last consistency check on this node.
    Checksums(oneshot::Sender<Result<BTreeMap<GroupId, (u64, u64)>>>),
    /// The status of every group on the node.
    Status(oneshot::Sender<Vec<GroupStatus>>),
    /// The catalog as this node last applied it.
    Catalog(oneshot::Sender<crate::catalog::Catalog>),
    /// How a snapshot transfer to a peer ended.
    SnapshotDone {
        /// The group.
        group: GroupId,
        /// The peer.
        to: NodeId,
        /// Whether it was carried.
        sent: bool,
    },
    /// Stop the thread after the current round.
    Stop,
}

/// The way into a driver thread. Cheap to clone.
#[derive(Clone)]
pub struct DriverHandle {
    /// The inbox. A std channel: the driver thread blocks on it with a
    /// timeout (the next tick), which tokio channels cannot do off-runtime.
    tx: mpsc::Sender<Input>,
}

impl DriverHandle {
    /// Delivers messages from a peer.
    pub fn deliver(&self, msgs: Vec<GroupMessage>) -> bool {
        self.tx.send(Input::Messages(msgs)).is_ok()
    }

    fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Reply>>) -> Input,
    ) -> oneshot::Receiver<Result<Reply>> {
        let (reply, rx) = oneshot::channel();
        // A stopped driver drops the sender; the receiver then reports it.
        let _ = self.tx.send(make(reply));
        rx
    }

    /// Proposes; await (or `blocking_recv`) the receiver for the answer.
    pub fn propose(&self, group: GroupId, proposal: Proposal) -> oneshot::Receiver<Result<Reply>> {
        self.call(|reply| Input::Propose {
            group,
            proposal,
            reply,
        })
    }

    /// Reads linearizably; await the receiver for the answer.
    pub fn read(&self, group: GroupId, key: Vec<u8>) -> oneshot::Receiver<Result<Reply>> {
        self.call(|reply| Input::Read { group, key, reply })
    }

    /// Scans one page of `group` linearizably; await the receiver for the
    /// read of the page ([`Reply::Scan`]), then read it off this thread.
    pub fn scan(
        &self,
        group: GroupId,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> oneshot::Receiver<Result<Reply>> {
        self.call(|reply| Input::Scan {
            group,
            start,
            end,
            limit,
            reply,
        })
    }

    /// Every group's last consistency check on this node: group -> (apply
    /// index, digest).
    pub fn checksums(&self) -> oneshot::Receiver<Result<BTreeMap<GroupId, (u64, u64)>>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Input::Checksums(tx));
        rx
    }

    /// The catalog as the node last applied it.
    pub fn catalog(&self) -> oneshot::Receiver<crate::catalog::Catalog> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Input::Catalog(tx));
        rx
    }

    /// The status of every group on the node.
    pub fn status(&self) -> oneshot::Receiver<Vec<GroupStatus>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Input::Status(tx));
        rx
    }
}

/// A running driver thread.
pub struct Runner {
    handle: DriverHandle,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Runner {
    /// Starts `driver` on a thread of its own, ticking every `tick`.
    pub fn spawn(driver: Driver, transport: impl Transport, tick: Duration) -> Result<Runner> {
        let (tx, rx) = mpsc::channel();
        let node_id = driver.id().0;
        let name = format!("flotilla-driver-{node_id}");
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn({
                let tx = tx.clone();
                move || {
                    let ended = run(driver, transport, rx, tx, tick);
                    // Said when it happens, not only when the runner is dropped:
                    // from here on every request to this node fails.
                    if let Err(e) = &ended {
                        tracing::error!(node_id, cause = %e, "driver stopped on a local fault");
                    }
                    ended
                }
            })
            .map_err(|e| Error::Invalid(format!("cannot start the driver thread: {e}")))?;
        Ok(Runner {
            handle: DriverHandle { tx },
            thread: Some(thread),
        })
    }

    /// A handle to the running driver.
    pub fn handle(&self) -> DriverHandle {
        self.handle.clone()
    }

    /// Whether the driver thread ended by itself (a local fault: the disk
    /// failed, or the node's own data did not decode).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Stops the thread and returns how it ended.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let _ = self.handle.tx.send(Input::Stop);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("the driver thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::error!(error = %e, "driver thread ended with an error");
        }
    }
}

fn run(
    mut driver: Driver,
    mut transport: impl Transport,
    rx: mpsc::Receiver<Input>,
    tx: mpsc::Sender<Input>,
    tick: Duration,
) -> Result<()> {
    let span = tracing::info_span!("driver", node_id = driver.id().0);
    let _enter = span.enter();
    let mut waiting: BTreeMap<Token, oneshot::Sender<Result<Reply>>> = BTreeMap::new();
    let mut next_token: Token = 1;
    let mut next_tick = Instant::now() + tick;
    let mut more = false;
    loop {
        let wait = if more {
            Duration::ZERO
        } else {
            next_tick.saturating_duration_since(Instant::now())
        };
        let first = match rx.recv_timeout(wait) {
            Ok(input) => Some(input),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return super::flush_now(&driver),
        };
        for input in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match input {
                Input::Messages(msgs) => driver.step(msgs),
                Input::Propose {
                    group,
                    proposal,
                    reply,
                } => {
                    let token = next_token;
                    next_token += 1;
                    wait_for(
                        &mut waiting,
                        token,
                        reply,
                        driver.propose(token, group, &proposal),
                    );
                }
                Input::Read { group, key, reply } => {
                    let token = next_token;
                    next_token += 1;
                    wait_for(&mut waiting, token, reply, driver.read(token, group, &key));
                }
                Input::Scan {
                    group,
                    start,
                    end,
                    limit,
                    reply,
                } => {
                    let token = next_token;
                    next_token += 1;
                    let accepted = driver.scan(token, group, &start, end.as_deref(), limit);
                    wait_for(&mut waiting, token, reply, accepted);
                }
                Input::Checksums(reply) => {
                    let _ = reply.send(driver.checksums());
                }
                Input::Status(reply) => {
                    let all = driver.group_ids().collect::<Vec<_>>();
                    let _ = reply.send(all.into_iter().filter_map(|g| driver.status(g)).collect());
                }
                Input::Catalog(reply) => {
                    let _ = reply.send(driver.catalog().clone());
                }
                Input::SnapshotDone { group, to, sent } => {
                    driver.report_snapshot(group, to, sent);
                }
                // A clean stop leaves nothing for the restart to re-apply.
                Input::Stop => return super::flush_now(&driver),
            }
        }
        if Instant::now() >= next_tick {
            driver.tick();
            next_tick += tick;
            // After a long stall, do not replay the missed ticks in a burst.
            if next_tick < Instant::now() {
                next_tick = Instant::now() + tick;
            }
        }
        // Messages and answers leave as soon as the driver allows: leaders'
        // appends before the round's fsync, the rest after it.
        let mut unreachable: Vec<NodeId> = Vec::new();
        let mut dispatch = |out: &mut RoundOutput, unreachable: &mut Vec<NodeId>| {
            for (to, mut msgs) in std::mem::take(&mut out.outbound) {
                // Snapshots leave on their own: their state travels first.
                msgs.retain_mut(|m| {
                    if m.msg.get_msg_type() != MessageType::MsgSnapshot {
                        return true;
                    }
                    let done = SnapshotDone {
                        tx: Some(tx.clone()),
                        group: m.group,
                        to,
                    };
                    let msg = std::mem::take(&mut m.msg);
                    transport.send_snapshot(
                        to,
                        GroupMessage {
                            group: m.group,
                            msg,
                        },
                        done,
                    );
                    false
                });
                if !msgs.is_empty() && !transport.send(to, msgs) {
                    unreachable.push(to);
                }
            }
            for c in out.completions.drain(..) {
                if let Some(reply) = waiting.remove(&c.token) {
                    let _ = reply.send(c.result);
                }
            }
        };
        let mut out = super::round_with(&mut driver, |o| dispatch(o, &mut unreachable))?;
        more = out.more;
        dispatch(&mut out, &mut unreachable);
        for to in unreachable {
            driver.report_unreachable(to);
        }
    }
}

/// Parks `reply` under `token` when the driver accepted the request, or
/// answers it at once with the refusal.
fn wait_for(
    waiting: &mut BTreeMap<Token, oneshot::Sender<Result<Reply>>>,
    token: Token,
    reply: oneshot::Sender<Result<Reply>>,
    accepted: Result<()>,
) {
    match accepted {
        Ok(()) => {
            waiting.insert(token, reply);
        }
        Err(e) => {
            let _ = reply.send(Err(e));
        }
    }
}

/// A [`Transport`] that hands batches straight to other drivers of the same
/// process: the in-memory transport of the threaded demo, tests and benches.
/// It carries a snapshot's state synchronously, on the sender's driver
/// thread, through the same sources and stagings as QUIC (see
/// [`crate::storage::copy_snapshot`]).
pub struct LocalTransport {
    peers: LocalPeers,
}

/// Each node's handle and snapshot store.
type LocalPeers = std::sync::Arc<std::sync::RwLock<BTreeMap<NodeId, LocalPeer>>>;

/// What a [`LocalNetwork`] knows of a node.
#[derive(Clone)]
struct LocalPeer {
    handle: DriverHandle,
    snapshots: std::sync::Arc<Snapshots>,
}

/// The directory of drivers a [`LocalTransport`] delivers to.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    /// A std lock: it is only held to clone a handle, never across an await.
    peers: LocalPeers,
}

impl LocalNetwork {
    /// A transport for one node of this network.
    pub fn transport(&self) -> LocalTransport {
        LocalTransport {
            peers: self.peers.clone(),
        }
    }

    /// Registers (or replaces) a node's handle and its snapshot store.
    pub fn register(
        &self,
        node: NodeId,
        handle: DriverHandle,
        snapshots: std::sync::Arc<Snapshots>,
    ) {
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, LocalPeer { handle, snapshots });
    }

    /// Removes a node, as if it went down.
    pub fn unregister(&self, node: NodeId) {
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
    }
}

impl LocalTransport {
    fn peer(&self, node: NodeId) -> Option<LocalPeer> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned()
    }
}

impl Transport for LocalTransport {
    fn send(&mut self, to: NodeId, msgs: Vec<GroupMessage>) -> bool {
        self.peer(to).is_some_and(|p| p.handle.deliver(msgs))
    }

    fn send_snapshot(&mut self, to: NodeId, m: GroupMessage, done: SnapshotDone) {
        let from = NodeId(m.msg.from);
        let snap = m.msg.get_snapshot();
        let carried = match (self.peer(from), self.peer(to)) {
            (Some(src), Some(dst)) => copy_snapshot(
                &src.snapshots,
                &dst.snapshots,
                m.group,
                snap.get_metadata().index,
                &snap.data,
            )
            .is_ok(),
            (Some(src), None) => {
                src.snapshots.abandon(&snap.data);
                false
            }
            _ => false,
        };
        done.report(carried && self.send(to, vec![m]));
    }
}
