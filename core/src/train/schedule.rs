//! The learning-rate schedule of microsoft/DeBERTa (`warmup_linear`).

/// The multiplier of the peak learning rate at update `step` (1-based) of `total`, with a
/// warm-up over the first `warmup` fraction of the run: `x/warmup` while `x = step/total` is
/// below `warmup`, then `1 − x` (not shifted: the rate drops to `(1 − warmup)·peak` right after
/// the warm-up, as the official code does), never negative.
pub fn warmup_linear(step: u64, total: u64, warmup: f32) -> f32 {
    if total == 0 {
        return 1.0;
    }
    let x = step as f32 / total as f32;
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
        assert_eq!(warmup_linear(0, 100, 0.1), 0.0);
        assert!((warmup_linear(5, 100, 0.1) - 0.5).abs() < 1e-6);
        assert!((warmup_linear(10, 100, 0.1) - 0.9).abs() < 1e-6);
        assert!((warmup_linear(50, 100, 0.1) - 0.5).abs() < 1e-6);
        assert_eq!(warmup_linear(100, 100, 0.1), 0.0);
        assert_eq!(warmup_linear(150, 100, 0.1), 0.0);
        assert!((warmup_linear(1, 100, 0.0) - 0.99).abs() < 1e-6);
    }
}
