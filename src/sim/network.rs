//! The simulated network between nodes.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::MessageType;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::multiraft::GroupMessage;
use crate::types::{GroupId, NodeId};

/// Per-message fault probabilities and delays.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Extra delay, in steps, drawn uniformly from `0..=max_delay`; unequal
    /// delays reorder messages.
    pub max_delay: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            max_delay: 0,
        }
    }
}

/// Messages in flight, partitions, and counters of what was carried.
pub struct Network {
    faults: Faults,
    /// In flight: (due step, sequence) → (destination, message).
    flight: BTreeMap<(u64, u64), (NodeId, GroupMessage)>,
    seq: u64,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Log entries delivered inside append messages, per (destination, group).
    pub entries_carried: BTreeMap<(NodeId, GroupId), u64>,
    /// Snapshots delivered, per (destination, group).
    pub snapshots_carried: BTreeMap<(NodeId, GroupId), u64>,
    /// Messages delivered.
    pub delivered: u64,
}

impl Network {
    /// A network with the given faults and no partition.
    pub fn new(faults: Faults) -> Self {
        Network {
            faults,
            flight: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            entries_carried: BTreeMap::new(),
            snapshots_carried: BTreeMap::new(),
            delivered: 0,
        }
    }

    /// Changes the fault settings.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Cuts every link between `node` and the others, both ways.
    pub fn isolate(&mut self, node: NodeId, others: &[NodeId]) {
        for o in others.iter().filter(|o| **o != node) {
            self.cut.insert((node, *o));
            self.cut.insert((*o, node));
        }
    }

    /// Cuts the links between two sides, both ways.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for x in a {
            for y in b {
                self.cut.insert((*x, *y));
                self.cut.insert((*y, *x));
            }
        }
    }

    /// Whether the link from `from` to `to` is cut.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Puts a batch of messages from `from` to `to` in flight, applying the
    /// faults message by message. Returns `false` when the link is cut: the
    /// sender learns the peer is unreachable, as it would from a failed
    /// connection (a message lost in flight tells it nothing).
    pub fn send(
        &mut self,
        rng: &mut ChaCha8Rng,
        now: u64,
        from: NodeId,
        to: NodeId,
        msgs: Vec<GroupMessage>,
    ) -> bool {
        if self.cut.contains(&(from, to)) {
            return false;
        }
        for m in msgs {
            if self.faults.drop > 0.0 && rng.random_bool(self.faults.drop) {
                continue;
            }
            let copies = if self.faults.duplicate > 0.0 && rng.random_bool(self.faults.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = if self.faults.max_delay > 0 {
                    rng.random_range(0..=self.faults.max_delay)
                } else {
                    0
                };
                self.seq += 1;
                self.flight
                    .insert((now + 1 + delay, self.seq), (to, m.clone()));
            }
        }
        true
    }

    /// Takes the messages due by `now`, grouped per destination, in order.
    /// A link cut while a message was in flight loses it.
    pub fn due(&mut self, now: u64) -> BTreeMap<NodeId, Vec<GroupMessage>> {
        let later = self.flight.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.flight, later);
        let mut out: BTreeMap<NodeId, Vec<GroupMessage>> = BTreeMap::new();
        for (_, (to, m)) in due {
            if self.cut.contains(&(NodeId(m.msg.from), to)) {
                continue;
            }
            match m.msg.get_msg_type() {
                MessageType::MsgAppend => {
                    *self.entries_carried.entry((to, m.group)).or_default() +=
                        m.msg.entries.len() as u64;
                }
                MessageType::MsgSnapshot => {
                    *self.snapshots_carried.entry((to, m.group)).or_default() += 1;
                }
                _ => {}
            }
            self.delivered += 1;
            out.entry(to).or_default().push(m);
        }
        out
    }

    /// Messages still in flight.
    pub fn in_flight(&self) -> usize {
        self.flight.len()
    }
}
