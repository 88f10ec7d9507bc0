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
use crate::types::{GroupId, NodeId};

/// Where the driver's outbound messages go.
pub trait Transport: Send + 'static {
    /// Sends one batch to `to`. Returns `false` when the peer cannot be
    /// reached (the driver then probes it instead of streaming to it).
    fn send(&mut self, to: NodeId, msgs: Vec<GroupMessage>) -> bool;
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
            .spawn(move || {
                let ended = run(driver, transport, rx, tick);
                // Said when it happens, not only when the runner is dropped:
                // from here on every request to this node fails.
                if let Err(e) = &ended {
                    tracing::error!(node_id, cause = %e, "driver stopped on a local fault");
                }
                ended
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
        let mut reports: Vec<(NodeId, bool, Vec<GroupId>)> = Vec::new();
        let mut dispatch =
            |out: &mut RoundOutput, reports: &mut Vec<(NodeId, bool, Vec<GroupId>)>| {
                for (to, msgs) in std::mem::take(&mut out.outbound) {
                    let snapshots: Vec<GroupId> = msgs
                        .iter()
                        .filter(|m| m.msg.get_msg_type() == MessageType::MsgSnapshot)
                        .map(|m| m.group)
                        .collect();
                    let sent = transport.send(to, msgs);
                    if !sent || !snapshots.is_empty() {
                        reports.push((to, sent, snapshots));
                    }
                }
                for c in out.completions.drain(..) {
                    if let Some(reply) = waiting.remove(&c.token) {
                        let _ = reply.send(c.result);
                    }
                }
            };
        let mut out = super::round_with(&mut driver, |o| dispatch(o, &mut reports))?;
        more = out.more;
        dispatch(&mut out, &mut reports);
        for (to, sent, snapshots) in reports {
            if !sent {
                driver.report_unreachable(to);
            }
            for g in snapshots {
                driver.report_snapshot(g, to, sent);
            }
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
pub struct LocalTransport {
    peers: std::sync::Arc<std::sync::RwLock<BTreeMap<NodeId, DriverHandle>>>,
}

/// The directory of drivers a [`LocalTransport`] delivers to.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    /// A std lock: it is only held to clone a handle, never across an await.
    peers: std::sync::Arc<std::sync::RwLock<BTreeMap<NodeId, DriverHandle>>>,
}

impl LocalNetwork {
    /// A transport for one node of this network.
    pub fn transport(&self) -> LocalTransport {
        LocalTransport {
            peers: self.peers.clone(),
        }
    }

    /// Registers (or replaces) a node's handle.
    pub fn register(&self, node: NodeId, handle: DriverHandle) {
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, handle);
    }

    /// Removes a node, as if it went down.
    pub fn unregister(&self, node: NodeId) {
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
    }
}

impl Transport for LocalTransport {
    fn send(&mut self, to: NodeId, msgs: Vec<GroupMessage>) -> bool {
        let peer = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .cloned();
        peer.is_some_and(|h| h.deliver(msgs))
    }
}
