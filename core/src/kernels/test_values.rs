//! Test support for the CPU kernels' unit tests: deterministic operands, and the lock that
//! serialises the tests which change or depend on the process-wide kernel choices.

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

/// Serialises the tests that change or depend on the process-wide kernel choices (SIMD cap,
/// bf16 instructions, AMX): a test comparing bits between two runs must not see another
/// test switch AMX off between them.
#[cfg(feature = "std")]
static KNOBS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the kernel-choice lock for as long as the guard lives.
#[cfg(feature = "std")]
pub(crate) fn knobs() -> std::sync::MutexGuard<'static, ()> {
    KNOBS.lock().unwrap_or_else(|e| e.into_inner())
}
