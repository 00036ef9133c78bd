//! A keyed pseudo-random permutation of `0..n` computed index by index (no list in memory):
//! a balanced Feistel network over the smallest even number of bits covering `n`, with
//! cycle-walking back into range. Round keys come from
//! `RandomStream { seed, step: epoch, stream: PERMUTATION_STREAM }`, so each (seed, epoch)
//! gives its own order.

use deberta_core::random::RandomStream;

/// The [`RandomStream::stream`] of the training-order permutation (ASCII `PERM`).
pub const PERMUTATION_STREAM: u32 = 0x5045_524D;

/// Feistel rounds.
const ROUNDS: u64 = 6;

/// The permutation of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    rng: RandomStream,
}

impl Permutation {
    /// The permutation of `0..n` for `seed` and `epoch`.
    pub fn new(n: u64, seed: u64, epoch: u32) -> Self {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        Permutation {
            n,
            half_bits: bits.div_ceil(2).max(1),
            rng: RandomStream {
                seed,
                step: epoch,
                stream: PERMUTATION_STREAM,
            },
        }
    }

    /// The size of the permuted range.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The image of `i` (`i < n`).
    pub fn apply(&self, i: u64) -> u64 {
        debug_assert!(i < self.n, "{i} outside 0..{}", self.n);
        // The Feistel domain is < 4n, so this loop runs < 4 times on average.
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x);
        }
        x
    }

    fn feistel(&self, x: u64) -> u64 {
        let h = self.half_bits;
        let mask = (1u64 << h) - 1;
        let (mut left, mut right) = (x >> h, x & mask);
        for round in 0..ROUNDS {
            let f = u64::from(self.rng.bits((round << 32) | right)) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << h) | right
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_index_exactly_once(n in 1u64..3000, seed in any::<u64>(), epoch in any::<u32>()) {
            let p = Permutation::new(n, seed, epoch);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let j = p.apply(i);
                prop_assert!(j < n);
                prop_assert!(!seen[j as usize], "{j} twice");
                seen[j as usize] = true;
            }
        }
    }

    #[test]
    fn epochs_and_seeds_differ_and_large_ranges_work() {
        let n = 10_000;
        let a: Vec<u64> = (0..50)
            .map(|i| Permutation::new(n, 1, 0).apply(i))
            .collect();
        let b: Vec<u64> = (0..50)
            .map(|i| Permutation::new(n, 1, 1).apply(i))
            .collect();
        let c: Vec<u64> = (0..50)
            .map(|i| Permutation::new(n, 2, 0).apply(i))
            .collect();
        assert_ne!(a, b);
        assert_ne!(a, c);
        let fixed = (0..n)
            .filter(|&i| Permutation::new(n, 1, 0).apply(i) == i)
            .count();
        assert!(fixed < 10, "{fixed} fixed points");
        let big = Permutation::new(u64::MAX, 3, 0);
        assert!(big.apply(u64::MAX - 1) < u64::MAX);
        assert_eq!(Permutation::new(1, 9, 9).apply(0), 0);
    }
}
