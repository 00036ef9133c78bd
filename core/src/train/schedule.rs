//! The learning-rate schedule of microsoft/DeBERTa (`warmup_linear`).

/// The multiplier of the peak learning rate for the update with **0-based** index `step` of a
/// run of `total` updates, with a warm-up over the first `warmup` fraction of the run:
/// `x/warmup` while `x = step/total` is below `warmup`, then `1 − x` (not shifted: the rate
/// drops to `(1 − warmup)·peak` right after the warm-up, as the official code does), never
/// negative.
///
/// The index is the official XAdam's step counter *before* it is incremented, so the first
/// update (`step = 0`) has multiplier 0 whenever `warmup > 0` (its gradient still enters the
/// Adam moments). `K` warm-up steps of `N` are `warmup = K/N`. Computed in `f64`, as the
/// official Python does: in `f32`, `1 − x` loses all precision near the end of a long run
/// (at `total = 10⁶` its last steps would be off by several percent).
pub fn warmup_linear(step: u64, total: u64, warmup: f64) -> f64 {
    if total == 0 {
        return 1.0;
    }
    let x = step as f64 / total as f64;
    if x < warmup {
        x / warmup
    } else {
        (1.0 - x).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_linearly() {
        // The first update (index 0) runs at lr 0 when there is a warm-up.
        assert_eq!(warmup_linear(0, 100, 0.1), 0.0);
        assert!((warmup_linear(5, 100, 0.1) - 0.5).abs() < 1e-12);
        // Index 10 = 0.1·100 is the first step past the warm-up: 1 − 0.1, not 1.
        assert!((warmup_linear(10, 100, 0.1) - 0.9).abs() < 1e-12);
        assert!((warmup_linear(50, 100, 0.1) - 0.5).abs() < 1e-12);
        assert!((warmup_linear(99, 100, 0.1) - 0.01).abs() < 1e-12);
        assert_eq!(warmup_linear(100, 100, 0.1), 0.0);
        assert_eq!(warmup_linear(150, 100, 0.1), 0.0);
        // Without warm-up the first update runs at the peak rate.
        assert_eq!(warmup_linear(0, 100, 0.0), 1.0);
        assert!((warmup_linear(1, 100, 0.0) - 0.99).abs() < 1e-12);
    }

    #[test]
    fn warm_up_of_k_steps_matches_the_fixture_schedule() {
        // K = 3 of N = 12 (tests/fixtures/tiny/train): 0, 1/3, 2/3, then 1 − k/12.
        let lr: alloc::vec::Vec<f64> = (0..12).map(|k| warmup_linear(k, 12, 3.0 / 12.0)).collect();
        assert_eq!(lr[0], 0.0);
        assert!((lr[1] - 1.0 / 3.0).abs() < 1e-15);
        assert!((lr[2] - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(lr[3], 0.75);
        assert!((lr[11] - 1.0 / 12.0).abs() < 1e-15);
    }

    #[test]
    fn the_end_of_a_long_run_keeps_its_precision() {
        let last = warmup_linear(999_999, 1_000_000, 0.01);
        assert!((last - 1e-6).abs() < 1e-15, "{last}");
    }
}
