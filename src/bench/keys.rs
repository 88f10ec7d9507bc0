//! Which key each operation of a bench touches: uniformly at random, or
//! zipfian as YCSB draws it.
//!
//! YCSB's zipfian request distribution (constant 0.99) makes a few keys
//! hot: with 10,000 keys the most popular one takes about 10% of the
//! operations. Ranks are scrambled through a hash before they become keys,
//! as YCSB's scrambled zipfian does, so the hot keys are spread over the
//! key space (and so over vshards and groups) instead of being the first
//! few keys.

use rand::Rng;
use rand_distr::{Distribution as _, Zipf};

/// The zipfian constant YCSB uses.
const ZIPFIAN_CONSTANT: f64 = 0.99;

/// How operations pick their key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few keys hot, as YCSB's scrambled zipfian.
    Zipfian,
}

impl Distribution {
    /// Its name, as `--distribution` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        }
    }
}

/// Draws key indexes in `0..keys` by a [`Distribution`].
#[derive(Clone, Debug)]
pub struct KeyChooser {
    keys: u64,
    zipf: Option<Zipf<f64>>,
}

impl KeyChooser {
    /// A chooser over `keys` keys (at least 1).
    pub fn new(distribution: Distribution, keys: u64) -> KeyChooser {
        let keys = keys.max(1);
        let zipf = match distribution {
            Distribution::Uniform => None,
            // Valid for every n ≥ 1 and a positive constant.
            Distribution::Zipfian => Zipf::new(keys as f64, ZIPFIAN_CONSTANT).ok(),
        };
        KeyChooser { keys, zipf }
    }

    /// The next key index.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match &self.zipf {
            None => rng.random_range(0..self.keys),
            Some(z) => {
                let rank = z.sample(rng) as u64;
                xxhash_rust::xxh3::xxh3_64(&rank.to_le_bytes()) % self.keys
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn counts(d: Distribution, keys: u64, draws: usize) -> Vec<u64> {
        let chooser = KeyChooser::new(d, keys);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut counts = vec![0u64; keys as usize];
        for _ in 0..draws {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipfian_makes_a_few_scattered_keys_hot_and_uniform_does_not() {
        let (keys, draws) = (10_000u64, 200_000usize);
        let zipf = counts(Distribution::Zipfian, keys, draws);
        let mut sorted = zipf.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // The hottest key takes several percent; the top 1% of keys most.
        assert!(sorted[0] as f64 > 0.05 * draws as f64, "{:?}", &sorted[..5]);
        let top: u64 = sorted[..100].iter().sum();
        assert!(top as f64 > 0.4 * draws as f64, "top 100 keys: {top}");
        // Scrambled: the hottest key is not key 0.
        let hottest = zipf.iter().position(|c| *c == sorted[0]).unwrap_or(0);
        assert_ne!(hottest, 0);
        let uniform = counts(Distribution::Uniform, keys, draws);
        let max = *uniform.iter().max().unwrap_or(&0);
        assert!((max as f64) < 0.001 * draws as f64, "uniform max {max}");
        assert_eq!(uniform.iter().sum::<u64>(), draws as u64);
    }

    #[test]
    fn one_key_is_always_that_key() {
        for d in [Distribution::Uniform, Distribution::Zipfian] {
            assert!(counts(d, 1, 100) == vec![100]);
        }
    }
}
