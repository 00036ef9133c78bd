//! Deterministic test operands for the kernels' unit tests.

use alloc::vec::Vec;

/// `n` values uniform in `[-0.5, 0.5)` from a linear congruential generator seeded by `seed`.
pub(crate) fn uniform(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}
