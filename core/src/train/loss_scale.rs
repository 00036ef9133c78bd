//! Dynamic loss scaling, the recipe of the official mixed-precision training (microsoft/DeBERTa
//! `Fp16Optimizer` with its `ExpLossScaler`, whose class defaults are 2¹⁶ and 1000; this
//! project's specification sets 2¹⁴ and 250): the loss gradient is seeded with `scale`
//! (initially 2¹⁴) so that small gradients survive f16 products; after the backward pass the
//! gradients are checked, and an update whose gradients hold an infinity or a NaN is skipped
//! (weights and optimizer state untouched, the optimizer's step count not advanced) and halves
//! the scale; after [`LossScaler::GROWTH_INTERVAL`] clean updates in a row the scale doubles.
//!
//! The scale is a power of two, so scaling and unscaling change no bit of an f32 gradient that
//! neither overflows nor underflows: with f32 products, a scaled run gives the bits of an
//! unscaled one.

/// The state of one model's loss scaler (one per optimizer: the decoupled schedule scales the
/// generator and the discriminator independently).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaler {
    /// The scale of the next update's loss gradient.
    scale: f32,
    /// Clean updates since the scale last changed (or since the start).
    clean_steps: u32,
    /// Updates skipped so far.
    skipped_steps: u64,
    /// What the last update did (`None` before the first since creation or restore).
    last: Option<ScaledUpdate>,
}

/// What one update under loss scaling did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaledUpdate {
    /// The scale its loss gradient was seeded with.
    pub scale: f32,
    /// Whether its gradients overflowed, so that it was skipped.
    pub skipped: bool,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new()
    }
}

impl LossScaler {
    /// The first scale: 2¹⁴.
    pub const INITIAL_SCALE: f32 = 16384.0;
    /// Clean updates in a row after which the scale doubles.
    pub const GROWTH_INTERVAL: u32 = 250;
    /// The smallest scale an overflow halves to (a run whose gradients overflow at scale 1
    /// keeps skipping at 1 rather than underflowing every gradient; the official
    /// `ExpLossScaler`'s floor).
    pub const MIN_SCALE: f32 = 1.0;
    /// The largest scale growth reaches (2²⁴: beyond it f32 products of ordinary gradients
    /// overflow anyway).
    pub const MAX_SCALE: f32 = 16_777_216.0;

    /// A fresh scaler at [`LossScaler::INITIAL_SCALE`].
    pub fn new() -> Self {
        LossScaler {
            scale: Self::INITIAL_SCALE,
            clean_steps: 0,
            skipped_steps: 0,
            last: None,
        }
    }

    /// A scaler restored from its saved state ([`LossScaler::scale`],
    /// [`LossScaler::clean_steps`], [`LossScaler::skipped_steps`]); `None` unless `scale` is a
    /// power of two within [`LossScaler::MIN_SCALE`]..=[`LossScaler::MAX_SCALE`] and
    /// `clean_steps` below [`LossScaler::GROWTH_INTERVAL`].
    pub fn restore(scale: f32, clean_steps: u32, skipped_steps: u64) -> Option<Self> {
        let power_of_two = scale.is_finite() && scale > 0.0 && scale.to_bits() & 0x007f_ffff == 0;
        (power_of_two
            && (Self::MIN_SCALE..=Self::MAX_SCALE).contains(&scale)
            && clean_steps < Self::GROWTH_INTERVAL)
            .then_some(LossScaler {
                scale,
                clean_steps,
                skipped_steps,
                last: None,
            })
    }

    /// The scale of the next update's loss gradient.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Clean updates since the scale last changed.
    pub fn clean_steps(&self) -> u32 {
        self.clean_steps
    }

    /// Updates skipped so far.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// What the last update did, if one ran since this scaler was created or restored.
    pub fn last(&self) -> Option<ScaledUpdate> {
        self.last
    }

    /// Records an update whose gradients (seeded with [`LossScaler::scale`]) were all finite
    /// or not; returns whether the update may be applied (`finite`). An overflow halves the
    /// scale (down to [`LossScaler::MIN_SCALE`]) and restarts the count of clean updates; the
    /// [`LossScaler::GROWTH_INTERVAL`]-th clean update in a row doubles it (up to
    /// [`LossScaler::MAX_SCALE`]).
    pub fn record(&mut self, finite: bool) -> bool {
        self.last = Some(ScaledUpdate {
            scale: self.scale,
            skipped: !finite,
        });
        if finite {
            self.clean_steps += 1;
            if self.clean_steps >= Self::GROWTH_INTERVAL {
                self.scale = (self.scale * 2.0).min(Self::MAX_SCALE);
                self.clean_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(Self::MIN_SCALE);
            self.clean_steps = 0;
            self.skipped_steps += 1;
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_after_250_clean_updates_and_halves_on_overflow() {
        let mut scaler = LossScaler::new();
        assert_eq!(scaler.scale(), 16384.0);
        for _ in 0..249 {
            assert!(scaler.record(true));
        }
        assert_eq!((scaler.scale(), scaler.clean_steps()), (16384.0, 249));
        assert!(scaler.record(true));
        assert_eq!((scaler.scale(), scaler.clean_steps()), (32768.0, 0));
        assert_eq!(
            scaler.last(),
            Some(ScaledUpdate {
                scale: 16384.0,
                skipped: false
            })
        );
        for _ in 0..100 {
            scaler.record(true);
        }
        assert!(!scaler.record(false));
        assert_eq!(
            (scaler.scale(), scaler.clean_steps(), scaler.skipped_steps()),
            (16384.0, 0, 1)
        );
        assert_eq!(
            scaler.last(),
            Some(ScaledUpdate {
                scale: 32768.0,
                skipped: true
            })
        );
        // The count restarts after an overflow: 249 clean updates are not enough.
        for _ in 0..249 {
            scaler.record(true);
        }
        assert_eq!(scaler.scale(), 16384.0);
    }

    #[test]
    fn stays_within_its_bounds() {
        let mut scaler = LossScaler::new();
        for _ in 0..40 {
            scaler.record(false);
        }
        assert_eq!(scaler.scale(), LossScaler::MIN_SCALE);
        assert_eq!(scaler.skipped_steps(), 40);
        let mut scaler = LossScaler::restore(LossScaler::MAX_SCALE, 249, 0).unwrap();
        scaler.record(true);
        assert_eq!(scaler.scale(), LossScaler::MAX_SCALE);
    }

    #[test]
    fn restores_exactly_and_refuses_impossible_states() {
        let mut scaler = LossScaler::new();
        for i in 0..300 {
            scaler.record(i % 97 != 0);
        }
        let restored =
            LossScaler::restore(scaler.scale(), scaler.clean_steps(), scaler.skipped_steps())
                .unwrap();
        assert_eq!(restored.scale(), scaler.scale());
        assert_eq!(restored.clean_steps(), scaler.clean_steps());
        assert_eq!(restored.skipped_steps(), scaler.skipped_steps());
        for bad in [
            3.0,
            0.0,
            -2.0,
            f32::INFINITY,
            f32::NAN,
            0.5,
            2.0f32.powi(25),
        ] {
            assert_eq!(LossScaler::restore(bad, 0, 0), None, "{bad}");
        }
        assert_eq!(LossScaler::restore(1024.0, 250, 0), None);
    }
}
