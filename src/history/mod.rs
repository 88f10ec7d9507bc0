//! Client histories and their linearizability check.
//!
//! A fault test drives clients against a cluster and writes down, for every
//! operation, when it was invoked, when it completed and what it returned.
//! This module decides whether such a [`History`] could have come from one
//! register per key that applied each operation atomically at some instant
//! between its invocation and its completion: whether the cluster was
//! *linearizable* for this run.
//!
//! **Outcomes.** An operation either completed with an answer
//! ([`Outcome::Read`], [`Outcome::Written`], [`Outcome::Cas`]), failed in a
//! way that proves it had no effect ([`Outcome::Failed`]; such operations
//! are dropped), or gave no answer in time ([`Outcome::Unknown`]). An
//! unknown operation may have taken effect at any instant after its
//! invocation, or never: the search gives it no completion time, so it may
//! be placed anywhere after its invocation, including after every other
//! operation, where it changes nothing anyone saw (which is what "never"
//! means). An unknown read observes nothing and is dropped.
//!
//! **The search.** Keys are independent registers, so each key is checked
//! on its own (a history is linearizable iff every key's sub-history is).
//! Per key, [`search`] is the Wing–Gong depth-first search with Lowe's
//! memo: walk the invocations and completions in time order, try to place
//! each pending invocation next, and back up when a completion arrives for
//! an operation not yet placed; a set of placed operations together with
//! the register's value that was seen before is never explored twice.
//!
//! **Pruning.** A timed-out write whose value nobody ever observed (no read
//! returned it, no CAS reported it as current or expected it) can always go
//! last, so it is removed before the search. This is exact only when every
//! value is written at most once per key; [`check`] prunes only then. It
//! keeps the search from doubling on every write lost to a fault.
//!
//! Left out: deletes (the fault test's clients never delete), and
//! multi-key operations (batches, scans), which would need the keys checked
//! together.

mod search;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// Read the key.
    Get,
    /// Set the key to `value`.
    Put {
        /// The value written.
        value: Vec<u8>,
    },
    /// Set the key to `new` if it holds `expected` (`None`: absent).
    Cas {
        /// The value the key must hold.
        expected: Option<Vec<u8>>,
        /// The value stored on a swap.
        new: Vec<u8>,
    },
}

/// How a call ended, as far as its client knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A [`Call::Get`] returned this value (`None`: absent).
    Read(Option<Vec<u8>>),
    /// A [`Call::Put`] was acknowledged.
    Written,
    /// A [`Call::Cas`] answered.
    Cas {
        /// Whether the new value was stored.
        swapped: bool,
        /// The value the key held when the CAS was evaluated.
        current: Option<Vec<u8>>,
    },
    /// The call certainly had no effect.
    Failed,
    /// No answer in time: it may have taken effect, once, or not at all.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Which client issued it (for reports only).
    pub client: usize,
    /// The key it touched.
    pub key: Vec<u8>,
    /// What was asked.
    pub call: Call,
    /// When it was invoked, from the start of the run.
    pub invoked: Duration,
    /// When its client stopped waiting (answer, failure or timeout).
    pub completed: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl Entry {
    /// Whether the outcome is an answer the call can give.
    fn well_formed(&self) -> bool {
        matches!(
            (&self.call, &self.outcome),
            (_, Outcome::Failed | Outcome::Unknown)
                | (Call::Get, Outcome::Read(_))
                | (Call::Put { .. }, Outcome::Written)
                | (Call::Cas { .. }, Outcome::Cas { .. })
        ) && self.invoked <= self.completed
    }

    /// The value this operation stores, if it stores one.
    fn writes(&self) -> Option<&[u8]> {
        match &self.call {
            Call::Get => None,
            Call::Put { value } => Some(value),
            Call::Cas { new, .. } => Some(new),
        }
    }

    /// Values this operation reports having seen or compares against.
    fn observes(&self) -> impl Iterator<Item = &[u8]> {
        let read = match &self.outcome {
            Outcome::Read(Some(v))
            | Outcome::Cas {
                current: Some(v), ..
            } => Some(v.as_slice()),
            _ => None,
        };
        let expected = match &self.call {
            Call::Cas {
                expected: Some(e), ..
            } => Some(e.as_slice()),
            _ => None,
        };
        read.into_iter().chain(expected)
    }
}

/// A recorded run: every operation of every client, in any order.
pub type History = Vec<Entry>;

/// The answer of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's operations have a legal order.
    Linearizable {
        /// Operations searched (after dropping and pruning), all keys.
        searched: usize,
        /// Timed-out writes removed by pruning, all keys.
        pruned: usize,
    },
    /// A key whose operations have no legal order.
    Violation {
        /// The key.
        key: Vec<u8>,
        /// An operation that completed before the search could place it,
        /// from the deepest point the search reached.
        stuck: Box<Entry>,
        /// How many of the key's operations that deepest attempt placed.
        placed: usize,
    },
    /// The search of a key used up its step budget without an answer.
    GaveUp {
        /// The key.
        key: Vec<u8>,
        /// Steps taken.
        steps: u64,
    },
    /// An entry's outcome cannot answer its call (a `Get` that was
    /// `Written`), or it completed before it was invoked.
    Malformed(Box<Entry>),
}

/// Checks `history` one key at a time, giving each key's search at most
/// `budget` steps. The first key that is not linearizable (in key order)
/// decides the verdict.
pub fn check(history: &[Entry], budget: u64) -> Verdict {
    if let Some(bad) = history.iter().find(|e| !e.well_formed()) {
        return Verdict::Malformed(Box::new(bad.clone()));
    }
    let mut by_key: BTreeMap<&[u8], Vec<&Entry>> = BTreeMap::new();
    for e in history {
        by_key.entry(&e.key).or_default().push(e);
    }
    let (mut searched, mut pruned) = (0, 0);
    for (key, entries) in by_key {
        let (ops, gone) = prepare(&entries);
        searched += ops.len();
        pruned += gone;
        match search::linearize(&ops, budget) {
            search::Found::Order => {}
            search::Found::Stuck { op, placed } => {
                return Verdict::Violation {
                    key: key.to_vec(),
                    stuck: Box::new(ops[op].clone()),
                    placed,
                }
            }
            search::Found::OutOfSteps(steps) => {
                return Verdict::GaveUp {
                    key: key.to_vec(),
                    steps,
                }
            }
        }
    }
    Verdict::Linearizable { searched, pruned }
}

/// One key's operations as the search takes them, in invocation order:
/// failed calls and unknown reads dropped, unobserved timed-out writes
/// pruned when values are unique. Returns them and how many were pruned.
fn prepare(entries: &[&Entry]) -> (Vec<Entry>, usize) {
    let mut kept: Vec<&Entry> = entries
        .iter()
        .copied()
        .filter(|e| match e.outcome {
            Outcome::Failed => false,
            Outcome::Unknown => e.call != Call::Get,
            _ => true,
        })
        .collect();
    let mut written = BTreeSet::new();
    let unique = kept
        .iter()
        .filter_map(|e| e.writes())
        .all(|v| written.insert(v));
    let observed: BTreeSet<&[u8]> = kept.iter().flat_map(|e| e.observes()).collect();
    kept.sort_by_key(|e| e.invoked);
    let mut ops = Vec::with_capacity(kept.len());
    let mut pruned = 0;
    for e in kept {
        let unseen = e.writes().is_some_and(|v| !observed.contains(v));
        if unique && e.outcome == Outcome::Unknown && unseen {
            pruned += 1;
        } else {
            ops.push(e.clone());
        }
    }
    (ops, pruned)
}

#[cfg(test)]
mod tests;
