//! The join loop as a pure state machine.
//!
//! A node without a cluster id asks its seeds, in sorted order, to admit it.
//! A seed that does not lead the catalog group answers with a redirect to
//! the leader it knows; the plan follows at most [`MAX_REDIRECTS`] of them
//! per seed, never visiting an address twice in a pass. When a pass ends
//! without success the plan waits, doubling the wait each pass up to a
//! ceiling, with jitter so that nodes started together do not ask in step,
//! and gives up after the policy's number of passes.
//!
//! The plan does no I/O and reads no clock: the caller performs each
//! [`Step`], reports the [`Answer`], and sleeps when told. Randomness comes
//! from a seed.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Lifecycle;

/// Redirects followed from one seed before moving to the next: enough for
/// a leadership change in flight, few enough that a redirect loop ends.
pub const MAX_REDIRECTS: usize = 3;

/// How hard a node tries to join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinPolicy {
    /// Whole passes over the seeds before giving up.
    pub attempts: u32,
    /// Wait after the first failed pass.
    pub initial_backoff: Duration,
    /// Longest wait between passes.
    pub max_backoff: Duration,
}

impl Default for JoinPolicy {
    /// 12 passes, waits from 500 ms doubling to a 32 s ceiling (each
    /// scaled by jitter): one and a half to three minutes of trying, time
    /// for an operator to start every node and then run `flotilla init`.
    fn default() -> Self {
        JoinPolicy {
            attempts: 12,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(32),
        }
    }
}

/// What the caller should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send a join request to this address.
    Ask(String),
    /// Wait this long, then call [`JoinPlan::next_step`] again.
    Wait(Duration),
    /// Stop: joining failed for the reason given.
    GiveUp(String),
}

/// What the asked address said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Admitted.
    Joined,
    /// Not the leader; the leader's address, if it knows one.
    Redirect(Option<String>),
    /// No answer, or an error worth retrying.
    Unreachable,
}

/// The join loop's state.
pub struct JoinPlan {
    policy: JoinPolicy,
    seeds: Vec<String>,
    rng: ChaCha8Rng,
    /// Passes started so far.
    attempt: u32,
    /// Index of the next seed in this pass.
    next_seed: usize,
    /// Where a redirect pointed, and how many redirects led there.
    redirect: Option<(String, usize)>,
    /// Addresses asked this pass.
    visited: BTreeSet<String>,
    /// Set once a pass ended; the next call waits.
    pass_over: bool,
    joined: bool,
}

impl JoinPlan {
    /// A plan over `seeds` (sorted and deduplicated here).
    pub fn new(mut seeds: Vec<String>, policy: JoinPolicy, seed: u64) -> JoinPlan {
        seeds.sort();
        seeds.dedup();
        JoinPlan {
            policy,
            seeds,
            rng: ChaCha8Rng::seed_from_u64(seed),
            attempt: 1,
            next_seed: 0,
            redirect: None,
            visited: BTreeSet::new(),
            pass_over: false,
            joined: false,
        }
    }

    /// The lifecycle state this plan stands for.
    pub fn lifecycle(&self) -> Lifecycle {
        if self.joined {
            Lifecycle::Ready
        } else {
            Lifecycle::Joining {
                attempt: self.attempt,
            }
        }
    }

    /// The wait after pass `attempt` failed: doubling from the initial
    /// backoff, capped, then scaled by a random factor in [0.5, 1.0].
    fn backoff(&mut self) -> Duration {
        let doublings = self.attempt.saturating_sub(1).min(30);
        let base = self
            .policy
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.policy.max_backoff);
        base.mul_f64(self.rng.random_range(0.5..=1.0))
    }

    /// The next thing to do.
    pub fn next_step(&mut self) -> Step {
        if self.seeds.is_empty() {
            return Step::GiveUp("no seeds to join through (--join is empty)".into());
        }
        if self.pass_over {
            if self.attempt >= self.policy.attempts {
                return Step::GiveUp(format!(
                    "no seed admitted this node after {} attempts (seeds: {})",
                    self.attempt,
                    self.seeds.join(", ")
                ));
            }
            let wait = self.backoff();
            self.attempt += 1;
            self.pass_over = false;
            self.next_seed = 0;
            self.visited.clear();
            return Step::Wait(wait);
        }
        if let Some((addr, _)) = &self.redirect {
            if !self.visited.contains(addr) {
                let addr = addr.clone();
                self.visited.insert(addr.clone());
                return Step::Ask(addr);
            }
            self.redirect = None;
        }
        while self.next_seed < self.seeds.len() {
            let s = self.seeds[self.next_seed].clone();
            self.next_seed += 1;
            if self.visited.insert(s.clone()) {
                return Step::Ask(s);
            }
        }
        self.pass_over = true;
        self.next_step()
    }

    /// Reports what the last asked address answered.
    pub fn answer(&mut self, a: Answer) {
        match a {
            Answer::Joined => self.joined = true,
            Answer::Redirect(Some(leader)) => {
                let hops = self.redirect.as_ref().map_or(0, |(_, h)| *h) + 1;
                self.redirect = (hops <= MAX_REDIRECTS).then_some((leader, hops));
            }
            Answer::Redirect(None) | Answer::Unreachable => self.redirect = None,
        }
    }

    /// Whether the node is in.
    pub fn joined(&self) -> bool {
        self.joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seeds: &[&str]) -> JoinPlan {
        let policy = JoinPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        };
        JoinPlan::new(seeds.iter().map(|s| s.to_string()).collect(), policy, 1)
    }

    fn ask(s: &str) -> Step {
        Step::Ask(s.into())
    }

    #[test]
    fn seeds_are_tried_in_sorted_order_then_the_pass_backs_off() {
        let mut p = plan(&["c:1", "a:1", "b:1", "a:1"]);
        for expected in ["a:1", "b:1", "c:1"] {
            assert_eq!(p.next_step(), ask(expected));
            p.answer(Answer::Unreachable);
        }
        let Step::Wait(w) = p.next_step() else {
            panic!("expected a wait")
        };
        assert!(
            w >= Duration::from_millis(50) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        assert_eq!(p.lifecycle(), Lifecycle::Joining { attempt: 2 });
        assert_eq!(
            p.next_step(),
            ask("a:1"),
            "a new pass starts from the first seed"
        );
    }

    #[test]
    fn a_redirect_is_followed_to_the_leader() {
        let mut p = plan(&["a:1", "b:1"]);
        assert_eq!(p.next_step(), ask("a:1"));
        p.answer(Answer::Redirect(Some("z:9".into())));
        assert_eq!(p.next_step(), ask("z:9"));
        p.answer(Answer::Joined);
        assert!(p.joined());
        assert_eq!(p.lifecycle(), Lifecycle::Ready);
    }

    #[test]
    fn redirects_stop_after_three_hops_and_never_revisit() {
        let mut p = plan(&["a:1", "b:1"]);
        assert_eq!(p.next_step(), ask("a:1"));
        for hop in ["x:1", "y:1", "z:1"] {
            p.answer(Answer::Redirect(Some(hop.into())));
            assert_eq!(p.next_step(), ask(hop));
        }
        // A fourth redirect is not followed: the next seed is asked.
        p.answer(Answer::Redirect(Some("w:1".into())));
        assert_eq!(p.next_step(), ask("b:1"));
        // A redirect back to an address asked this pass is not followed.
        p.answer(Answer::Redirect(Some("a:1".into())));
        assert!(matches!(p.next_step(), Step::Wait(_)));
    }

    #[test]
    fn backoff_doubles_to_the_ceiling_and_the_plan_gives_up() {
        let mut p = plan(&["a:1"]);
        let mut waits = Vec::new();
        loop {
            match p.next_step() {
                Step::Ask(_) => p.answer(Answer::Unreachable),
                Step::Wait(w) => waits.push(w),
                Step::GiveUp(reason) => {
                    assert!(reason.contains("3 attempts"), "{reason}");
                    break;
                }
            }
        }
        assert_eq!(waits.len(), 2, "a wait between each of the 3 passes");
        assert!(waits[0] <= Duration::from_millis(100));
        assert!(waits[1] >= Duration::from_millis(100) && waits[1] <= Duration::from_millis(200));
    }

    #[test]
    fn the_same_seed_gives_the_same_waits() {
        let waits = |seed| {
            let mut p = JoinPlan::new(vec!["a:1".into()], JoinPolicy::default(), seed);
            let mut w = Vec::new();
            for _ in 0..40 {
                match p.next_step() {
                    Step::Ask(_) => p.answer(Answer::Unreachable),
                    Step::Wait(d) => w.push(d),
                    Step::GiveUp(_) => break,
                }
            }
            w
        };
        assert_eq!(waits(5), waits(5));
        assert_ne!(waits(5), waits(6));
        assert!(waits(5).iter().all(|w| *w <= Duration::from_secs(32)));
    }

    #[test]
    fn no_seeds_is_a_clear_failure() {
        let mut p = plan(&[]);
        assert!(matches!(p.next_step(), Step::GiveUp(r) if r.contains("--join")));
    }
}
