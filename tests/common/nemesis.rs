//! The fault schedule and client workload of the nemesis test, and the
//! availability table it prints.
//!
//! The schedule is drawn from a seed with ChaCha, so a seed names a run's
//! faults, their targets and their timings; it is drawn whole before the
//! run and printed. Faults come in rounds: each round takes every kind of
//! fault once, in a shuffled order, so even a short run meets each kind.
//! One fault's target is decided when it strikes, not drawn: "the leader"
//! is whichever node leads then.
//!
//! Clients run closed loops of get, put and CAS on a few keys, each call
//! bounded by a timeout, and record every call in a shared
//! [`flotilla::history::History`]. Written values are unique (client and
//! count), which the linearizability check relies on to prune timed-out
//! writes nobody saw. A failed read certainly changed nothing, so it is
//! recorded as failed; a write that failed or timed out may still have
//! been proposed before the error, so it is recorded as unknown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla::client::Client;
use flotilla::history::{Call, Entry, Outcome};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Each client's deadline per call, retries included, by client index
/// modulo two. The library's default (5 s) outlasts an election (1 to 2 s
/// at the default 100 ms tick) and leaves room, after one attempt that a
/// silent node used up (2 s), to try another: those clients see few
/// timeouts. The short one times out under most faults, so the history
/// holds calls of unknown outcome, which are where a lost or doubled write
/// would hide.
pub const DEADLINES: [Duration; 2] = [
    Duration::from_millis(1_500),
    flotilla::client::DEFAULT_TIMEOUT,
];
/// How far past its deadline a call is cut off regardless: what the
/// client library's own deadline would miss (a stuck connect) ends here.
const OVERRUN: Duration = Duration::from_secs(1);
/// What a schedule counts for the wait after each heal (the run waits for
/// the real recovery): about what a kill or pause takes on a small
/// machine, so that `run` is close to the length of the fault phase.
const RECOVERY_GUESS: Duration = Duration::from_secs(1);
/// Calls per client at most: a bound on the loop far above what a
/// 300-second run reaches on a small machine.
const MAX_CALLS: u64 = 10_000_000;

/// One kind of fault, with its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the node; it restarts on the same data directory at heal.
    Kill(usize),
    /// SIGSTOP the node; SIGCONT at heal.
    Pause(usize),
    /// Cut the node leading the first key's group off from the other
    /// nodes, both ways; the clients still reach it, so it may go on
    /// answering as a leader that is no longer one.
    IsolateLeader,
    /// Cut the node off from the other nodes and from the clients: the
    /// clients stay with the majority.
    Split(usize),
    /// Drop what node `from` sends to node `to`; the other way works.
    OneWay {
        /// The node whose packets are dropped.
        from: usize,
        /// Where they were going.
        to: usize,
    },
}

impl Fault {
    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Fault::Kill(n) => format!("kill -9 n{n}, restart"),
            Fault::Pause(n) => format!("SIGSTOP n{n}, SIGCONT"),
            Fault::IsolateLeader => "isolate the leader from peers".into(),
            Fault::Split(n) => format!("split n{n} | rest+clients"),
            Fault::OneWay { from, to } => format!("one-way loss n{from} -> n{to}"),
        }
    }
}

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// What strikes.
    pub fault: Fault,
    /// How long it lasts before it is healed.
    pub hold: Duration,
    /// Fault-free time after the cluster recovered, before the next step.
    pub quiet: Duration,
}

/// Draws the faults for about `run` of faults, recoveries and quiet time
/// over `nodes` nodes; without `partitions`, only kills and pauses.
pub fn schedule(seed: u64, run: Duration, nodes: usize, partitions: bool) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kinds: &[u8] = if partitions {
        &[0, 1, 2, 3, 4]
    } else {
        &[0, 1]
    };
    let mut out = Vec::new();
    let mut planned = Duration::ZERO;
    // Each round is at least one second per fault: bounded by `run`.
    while planned < run {
        let mut round = kinds.to_vec();
        round.shuffle(&mut rng);
        for kind in round {
            let node = rng.random_range(0..nodes);
            let fault = match kind {
                0 => Fault::Kill(node),
                1 => Fault::Pause(node),
                2 => Fault::IsolateLeader,
                3 => Fault::Split(node),
                _ => Fault::OneWay {
                    from: node,
                    to: (node + rng.random_range(1..nodes)) % nodes,
                },
            };
            let hold = Duration::from_millis(rng.random_range(2_000..=3_500));
            let quiet = Duration::from_millis(rng.random_range(1_000..=1_500));
            planned += hold + quiet + RECOVERY_GUESS;
            out.push(Planned { fault, hold, quiet });
            if planned >= run {
                break;
            }
        }
    }
    out
}

/// The shared record of a run.
pub struct Recorder {
    /// Time zero of the history.
    pub start: Instant,
    /// Every call so far. A std `Mutex`: held only to push or copy.
    pub entries: Mutex<Vec<Entry>>,
}

impl Recorder {
    /// An empty record whose time zero is now.
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            entries: Mutex::new(Vec::new()),
        }
    }

    /// Time since the start of the run.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// A copy of every call recorded so far.
    pub fn snapshot(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether every key in `keys` has answered a call invoked at or
    /// after `since`. Reads back from the newest call only as far as
    /// calls that completed before `since`.
    pub fn answered_since(&self, since: Duration, keys: &[Vec<u8>]) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let recent: Vec<&Entry> = entries
            .iter()
            .rev()
            .take_while(|e| e.completed >= since)
            .filter(|e| e.invoked >= since)
            .filter(|e| !matches!(e.outcome, Outcome::Failed | Outcome::Unknown))
            .collect();
        keys.iter().all(|k| recent.iter().any(|e| e.key == *k))
    }

    /// Makes one call, given `deadline` (the one `c` was configured
    /// with), and records it; returns its outcome.
    pub async fn call(
        &self,
        client: usize,
        c: &Client,
        deadline: Duration,
        key: &[u8],
        call: Call,
    ) -> Outcome {
        let invoked = self.now();
        let answer = tokio::time::timeout(deadline + OVERRUN, async {
            match &call {
                Call::Get => c.get(key).await.map(Outcome::Read),
                Call::Put { value } => c.put(key, value).await.map(|()| Outcome::Written),
                Call::Cas { expected, new } => c
                    .cas(key, expected.as_deref(), Some(new))
                    .await
                    .map(|o| Outcome::Cas {
                        swapped: o.swapped,
                        current: o.current,
                    }),
            }
        })
        .await;
        let outcome = match answer {
            Ok(Ok(o)) => o,
            Ok(Err(_)) if call == Call::Get => Outcome::Failed,
            Ok(Err(_)) | Err(_) => Outcome::Unknown,
        };
        let entry = Entry {
            client,
            key: key.to_vec(),
            call,
            invoked,
            completed: self.now(),
            outcome: outcome.clone(),
        };
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
        outcome
    }
}

/// One client's closed loop until `stop`, each call within `deadline`: 40% gets, 30% puts, 30% CAS
/// that expect the last value this client saw for the key.
pub async fn run_client(
    id: usize,
    client: Client,
    deadline: Duration,
    keys: Arc<Vec<Vec<u8>>>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9));
    let mut last_seen: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
    for n in 0..MAX_CALLS {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let k = rng.random_range(0..keys.len());
        let value = format!("c{id}-{n}").into_bytes();
        let call = match rng.random_range(0..10) {
            0..=3 => Call::Get,
            4..=6 => Call::Put { value },
            _ => Call::Cas {
                expected: last_seen[k].clone(),
                new: value,
            },
        };
        let written = match &call {
            Call::Put { value } => Some(value.clone()),
            _ => None,
        };
        match rec.call(id, &client, deadline, &keys[k], call).await {
            Outcome::Read(v) => last_seen[k] = v,
            Outcome::Written => last_seen[k] = written,
            Outcome::Cas { swapped, current } => {
                last_seen[k] = if swapped {
                    Some(format!("c{id}-{n}").into_bytes())
                } else {
                    current
                }
            }
            Outcome::Failed | Outcome::Unknown => {}
        }
    }
}

/// What happened while one fault was on, and until the next one.
pub struct Window {
    /// The fault.
    pub fault: Fault,
    /// The node it struck (for a one-way loss, the sender).
    pub target: Option<usize>,
    /// When it struck, in run time.
    pub struck: Duration,
    /// When it was healed.
    pub healed: Duration,
    /// When the next step struck (or the clients stopped).
    pub ended: Duration,
    /// From heal until every key had answered a call again and every
    /// node answered as ready.
    pub recovered_in: Duration,
}

/// Prints one row per fault: the longest stretch without any successful
/// call, from the fault to the next step, and the calls in that window.
pub fn print_table(windows: &[Window], history: &[Entry]) {
    let mut ok: Vec<Duration> = history
        .iter()
        .filter(|e| !matches!(e.outcome, Outcome::Failed | Outcome::Unknown))
        .map(|e| e.completed)
        .collect();
    ok.sort_unstable();
    println!(
        "\n{:<32} {:>5} {:>7} {:>12} {:>10} {:>7} {:>8} {:>7}",
        "fault", "node", "held s", "longest gap", "recovered", "ok", "unknown", "failed"
    );
    for w in windows {
        let mut gap = Duration::ZERO;
        let mut last = w.struck;
        for t in ok.iter().filter(|t| **t > w.struck && **t <= w.ended) {
            gap = gap.max(*t - last);
            last = *t;
        }
        gap = gap.max(w.ended - last);
        let count = |f: fn(&Outcome) -> bool| {
            history
                .iter()
                .filter(|e| e.invoked >= w.struck && e.invoked < w.ended && f(&e.outcome))
                .count()
        };
        println!(
            "{:<32} {:>5} {:>7.1} {:>10.2} s {:>8.2} s {:>7} {:>8} {:>7}",
            w.fault.name(),
            w.target.map_or("-".into(), |n| format!("n{n}")),
            (w.healed - w.struck).as_secs_f64(),
            gap.as_secs_f64(),
            w.recovered_in.as_secs_f64(),
            count(|o| !matches!(o, Outcome::Failed | Outcome::Unknown)),
            count(|o| *o == Outcome::Unknown),
            count(|o| *o == Outcome::Failed),
        );
    }
}
