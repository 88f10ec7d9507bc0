//! The Wing–Gong search with Lowe's memo, over one register.
//!
//! The operations become a list of events, invocations and completions,
//! in time order (an unknown operation's completion goes to the very end;
//! at equal times invocations come first, which counts touching operations
//! as concurrent, the permissive reading). The search walks the list:
//!
//! - at an invocation, it tries to place that operation next in the order:
//!   if the register allows the answer the operation got, and the pair
//!   (operations placed, register value) was not reached before, it takes
//!   both of the operation's events out of the list, remembers the step
//!   and starts again from the head;
//! - at a completion, the operation it ends was never placed although
//!   everything after it began later: the last placement was wrong, so the
//!   search puts it back and tries the invocation after it;
//! - with nothing to put back, no order exists.
//!
//! The list is empty exactly when every operation is placed. Values are
//! interned to small integers so that the memo holds a bit set and an
//! integer per state.

use std::collections::{BTreeMap, HashSet};

use super::{Call, Entry, Outcome};

/// The register: absent, or the interned id of its value.
type State = Option<u32>;

/// Where a search ended.
pub(super) enum Found {
    /// Every operation has a place.
    Order,
    /// No order exists; `op` is the operation whose completion the deepest
    /// attempt could not get past, with `placed` operations before it.
    Stuck { op: usize, placed: usize },
    /// The step budget ran out.
    OutOfSteps(u64),
}

/// One operation with its values interned.
enum Step {
    Get(State),
    Put(State),
    Cas {
        expected: State,
        new: State,
        /// The answer, when there was one: (swapped, current).
        answer: Option<(bool, State)>,
    },
}

impl Step {
    /// Applies the step to `s`: the next state, or `None` when the step's
    /// answer is impossible from `s`.
    fn apply(&self, s: State) -> Option<State> {
        match self {
            Step::Get(seen) => (*seen == s).then_some(s),
            Step::Put(v) => Some(*v),
            Step::Cas {
                expected,
                new,
                answer,
            } => {
                let swaps = s == *expected;
                match answer {
                    Some((swapped, current)) if (*swapped, *current) != (swaps, s) => None,
                    _ => Some(if swaps { *new } else { s }),
                }
            }
        }
    }
}

/// Interns values into dense ids.
#[derive(Default)]
struct Values(BTreeMap<Vec<u8>, u32>);

impl Values {
    fn id(&mut self, v: &Option<Vec<u8>>) -> State {
        let next = u32::try_from(self.0.len()).expect("fewer than 2^32 values per key");
        v.as_ref().map(|v| *self.0.entry(v.clone()).or_insert(next))
    }
}

fn steps(ops: &[Entry]) -> Vec<Step> {
    let mut values = Values::default();
    ops.iter()
        .map(|e| match (&e.call, &e.outcome) {
            (Call::Get, Outcome::Read(v)) => Step::Get(values.id(v)),
            (Call::Put { value }, _) => Step::Put(values.id(&Some(value.clone()))),
            (Call::Cas { expected, new }, outcome) => Step::Cas {
                expected: values.id(expected),
                new: values.id(&Some(new.clone())),
                answer: match outcome {
                    Outcome::Cas { swapped, current } => Some((*swapped, values.id(current))),
                    _ => None,
                },
            },
            (call, outcome) => unreachable!("checked well formed: {call:?} {outcome:?}"),
        })
        .collect()
}

/// The event list: event `2i` invokes operation `i`, event `2i + 1`
/// completes it. `next`/`prev` link the events still in the list, in time
/// order, behind a head at index `head`.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

/// The end of the list.
const NIL: usize = usize::MAX;

impl Events {
    fn new(ops: &[Entry]) -> Events {
        let mut order: Vec<(std::time::Duration, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, e) in ops.iter().enumerate() {
            order.push((e.invoked, 0, 2 * i));
            let done = match e.outcome {
                Outcome::Unknown => std::time::Duration::MAX,
                _ => e.completed,
            };
            order.push((done, 1, 2 * i + 1));
        }
        order.sort_unstable();
        let head = 2 * ops.len();
        let mut next = vec![NIL; head + 1];
        let mut prev = vec![NIL; head + 1];
        let mut last = head;
        for &(_, _, ev) in &order {
            next[last] = ev;
            prev[ev] = last;
            last = ev;
        }
        Events { next, prev, head }
    }

    fn unlink(&mut self, ev: usize) {
        let (p, n) = (self.prev[ev], self.next[ev]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Puts `ev` back where it was; events must be put back in the reverse
    /// order of their removal.
    fn relink(&mut self, ev: usize) {
        let (p, n) = (self.prev[ev], self.next[ev]);
        self.next[p] = ev;
        if n != NIL {
            self.prev[n] = ev;
        }
    }
}

/// A set of placed operations as the memo keeps it: the operations are in
/// invocation order and the search places them roughly in that order, so
/// a set is mostly a run of every operation below some index, plus a few
/// beyond it. Kept that way, a memo entry of a long history is a few
/// words where the bit set would be thousands.
#[derive(PartialEq, Eq, Hash)]
struct Placed {
    /// Every operation below this index is placed.
    below: usize,
    /// The placed operations at or above `below`.
    beyond: Vec<u32>,
}

impl Placed {
    fn of(bits: &[u64]) -> Placed {
        let full = bits.iter().take_while(|w| **w == u64::MAX).count();
        let mut below = full * 64;
        if let Some(w) = bits.get(full) {
            below += w.trailing_ones() as usize;
        }
        let mut beyond = Vec::new();
        for (i, w) in bits.iter().enumerate().skip(below / 64) {
            let mut rest = *w;
            while rest != 0 {
                let bit = i * 64 + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                if bit >= below {
                    beyond.push(u32::try_from(bit).expect("fewer than 2^32 operations per key"));
                }
            }
        }
        Placed { below, beyond }
    }
}

/// Searches an order for `ops` (one key's, in invocation order), within
/// `budget` steps.
pub(super) fn linearize(ops: &[Entry], budget: u64) -> Found {
    let steps = steps(ops);
    let mut events = Events::new(ops);
    let mut placed = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Placed, State)> = HashSet::new();
    // (operation, register before it) for each placed operation, in order.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut deepest: Option<(usize, usize)> = None;
    let mut ev = events.next[events.head];
    let mut taken = 0u64;
    while ev != NIL {
        taken += 1;
        if taken > budget {
            return Found::OutOfSteps(taken - 1);
        }
        let op = ev / 2;
        if ev % 2 == 0 {
            if let Some(after) = steps[op].apply(state) {
                placed[op / 64] |= 1 << (op % 64);
                if seen.insert((Placed::of(&placed), after)) {
                    stack.push((op, state));
                    state = after;
                    events.unlink(ev);
                    events.unlink(ev + 1);
                    ev = events.next[events.head];
                    continue;
                }
                placed[op / 64] &= !(1 << (op % 64));
            }
            ev = events.next[ev];
        } else {
            if deepest.is_none_or(|(_, n)| stack.len() > n) {
                deepest = Some((op, stack.len()));
            }
            let Some((back, before)) = stack.pop() else {
                let (op, placed) = deepest.unwrap_or((op, 0));
                return Found::Stuck { op, placed };
            };
            state = before;
            placed[back / 64] &= !(1 << (back % 64));
            events.relink(2 * back + 1);
            events.relink(2 * back);
            ev = events.next[2 * back];
        }
    }
    Found::Order
}

#[cfg(test)]
mod tests {
    use super::Placed;

    #[test]
    fn a_placed_set_is_its_full_prefix_and_the_rest() {
        // Operations 0..=69 placed, then 72 and 130.
        let mut bits = vec![0u64; 3];
        for op in (0..70).chain([72, 130]) {
            bits[op / 64] |= 1 << (op % 64);
        }
        let p = Placed::of(&bits);
        assert_eq!((p.below, p.beyond), (70, vec![72, 130]));
        assert_eq!(Placed::of(&[0, 0]).below, 0);
        assert_eq!(Placed::of(&[u64::MAX, u64::MAX]).beyond, Vec::<u32>::new());
        assert_eq!(Placed::of(&[u64::MAX, u64::MAX]).below, 128);
    }
}
