//! Histograms a hot path can feed without a lock.
//!
//! A [`Histogram`] counts observations into fixed buckets, each an
//! `AtomicU64`, and keeps their sum; observing is a few relaxed atomic
//! adds, so the driver thread can time every round and every fsync, and
//! the request path every request, without taking a lock or allocating.
//! Whoever exports the figures (the node's `/metrics`, see
//! `node::metrics`) reads a [`HistogramSnapshot`]: counts and sum read one
//! after another, not as one atomic picture, which a scrape tolerates (a
//! bucket may be one observation ahead of the sum).
//!
//! Values are whole base units (nanoseconds, bytes); the buckets are the
//! bounds a [`Buckets`] names. Left out: quantiles, resetting, and
//! buckets chosen at run time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds of durations, in nanoseconds: 50 µs to 10 s, about
/// two and a half per decade, which covers an in-memory round on one end
/// and a request that waited out an election on the other.
const DURATION_NANOS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Bucket upper bounds of sizes, in bytes: 256 B to 16 MiB, a factor of
/// four apart, from a heartbeat round to a round full of large writes.
const SIZE_BYTES: [u64; 9] = [
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
];

/// What a histogram measures, which fixes its buckets and its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buckets {
    /// Durations, observed in nanoseconds and exported in seconds.
    Duration,
    /// Sizes, in bytes.
    Size,
}

impl Buckets {
    fn bounds(self) -> &'static [u64] {
        match self {
            Buckets::Duration => &DURATION_NANOS,
            Buckets::Size => &SIZE_BYTES,
        }
    }

    /// What one base unit is in the exported unit (seconds or bytes).
    pub fn scale(self) -> f64 {
        match self {
            Buckets::Duration => 1e-9,
            Buckets::Size => 1.0,
        }
    }
}

/// A fixed-bucket histogram fed with atomics. See the module doc.
#[derive(Debug)]
pub struct Histogram {
    buckets: Buckets,
    /// Observations per bucket, one more than the bounds: the last counts
    /// what is above every bound.
    counts: Box<[AtomicU64]>,
    /// Sum of the observations, in base units (saturating is not needed:
    /// 2^64 ns is 584 years).
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram of `buckets`.
    pub fn new(buckets: Buckets) -> Histogram {
        Histogram {
            buckets,
            counts: (0..=buckets.bounds().len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `value` base units.
    pub fn observe(&self, value: u64) {
        let bounds = self.buckets.bounds();
        let i = bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts one duration (in nanoseconds, saturating at 584 years).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The counts and sum as they are now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let scale = self.buckets.scale();
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let mut buckets: Vec<(f64, u64)> = self
            .buckets
            .bounds()
            .iter()
            .zip(&counts)
            .map(|(b, c)| (*b as f64 * scale, *c))
            .collect();
        buckets.push((f64::INFINITY, counts.last().copied().unwrap_or(0)));
        HistogramSnapshot {
            count: counts.iter().sum(),
            sum: self.sum.load(Ordering::Relaxed) as f64 * scale,
            buckets,
        }
    }
}

impl Default for Histogram {
    /// A histogram of durations.
    fn default() -> Histogram {
        Histogram::new(Buckets::Duration)
    }
}

/// A histogram's figures in the exported unit.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations in all.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Per bucket, its upper bound and the observations in it (not
    /// cumulative), the last bound infinite.
    pub buckets: Vec<(f64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_that_holds_it() {
        let h = Histogram::new(Buckets::Size);
        h.observe(256); // a bound is inclusive
        h.observe(257);
        h.observe(1 << 30); // above every bound
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.sum, (256 + 257 + (1u64 << 30)) as f64);
        assert_eq!(s.buckets[0], (256.0, 1));
        assert_eq!(s.buckets[1], (1024.0, 1));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(s.buckets.len(), SIZE_BYTES.len() + 1);
    }

    #[test]
    fn durations_are_exported_in_seconds() {
        let h = Histogram::default();
        h.observe_duration(Duration::from_millis(3));
        let s = h.snapshot();
        assert!((s.sum - 0.003).abs() < 1e-12, "{}", s.sum);
        let (bound, n) = s
            .buckets
            .iter()
            .find(|(_, n)| *n == 1)
            .copied()
            .expect("one bucket");
        assert!((bound - 0.005).abs() < 1e-12 && n == 1, "{bound}");
    }
}
