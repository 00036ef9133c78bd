//! The optimizer update: XAdam (microsoft/DeBERTa: no bias correction, eps outside the square
//! root) or bias-corrected AdamW, both with decoupled weight decay and global-norm clipping.

use super::require;
use crate::Error;
use crate::simd::{multiversion, sqrt};

/// One Adam update's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamSpec {
    /// Learning rate of this step (after the schedule).
    pub lr: f32,
    /// First-moment decay, as the decimal the user wrote (`f64`: see [`AdamConstants`]).
    pub beta1: f64,
    /// Second-moment decay (`f64`, as `beta1`).
    pub beta2: f64,
    /// Added to `sqrt(v)` (outside the root).
    pub eps: f32,
    /// Decoupled weight decay of this parameter (0 for biases and LayerNorm weights).
    pub weight_decay: f32,
    /// `Some(t)` for standard AdamW with bias correction at step `t ≥ 1`; `None` for XAdam.
    pub bias_correction_step: Option<u64>,
    /// Multiplier of the gradient (the clipping coefficient, 1 without clipping).
    pub grad_scale: f32,
}

/// The `f32` constants of one update, derived in `f64` from an [`AdamSpec`] the way PyTorch
/// and the official XAdam derive theirs from Python floats: `1 − β` is computed before
/// rounding. (In `f32`, `1 − 0.999f32` is `0.000999987`, 1.3e-5 below 0.001, which biases
/// every second moment of an update without bias correction and so every XAdam step.) Every
/// backend derives its constants here, so all round them identically.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConstants {
    /// `β1`.
    pub beta1: f32,
    /// `1 − β1`.
    pub one_minus_beta1: f32,
    /// `β2`.
    pub beta2: f32,
    /// `1 − β2`.
    pub one_minus_beta2: f32,
    /// XAdam: `lr`; AdamW: `lr/(1 − β1ᵗ)` (PyTorch's `step_size`).
    pub step_size: f32,
    /// XAdam: 1; AdamW: `sqrt(1 − β2ᵗ)`.
    pub bias_correction2_sqrt: f32,
    /// AdamW's decoupled decay factor `1 − lr·wd`, applied first; 1 for XAdam (whose decay is
    /// part of the update).
    pub decay_factor: f32,
}

impl AdamSpec {
    /// The operand contract of [`adam_update`] (every backend's): `grad`, `m` and `v` hold at
    /// least the `param` elements.
    pub fn check(&self, param: usize, grad: usize, m: usize, v: usize) -> Result<(), Error> {
        for (name, len) in [("grad", grad), ("m", m), ("v", v)] {
            require("adam_update", name, param, len)?;
        }
        Ok(())
    }

    /// The update's `f32` constants.
    pub fn constants(&self) -> AdamConstants {
        let lr = f64::from(self.lr);
        let (step_size, bias_correction2_sqrt, decay_factor) = match self.bias_correction_step {
            None => (lr, 1.0, 1.0),
            Some(step) => {
                let t = step.max(1) as f64;
                let bias_correction1 = 1.0 - libm::pow(self.beta1, t);
                let bias_correction2 = 1.0 - libm::pow(self.beta2, t);
                (
                    lr / bias_correction1,
                    libm::sqrt(bias_correction2),
                    1.0 - lr * f64::from(self.weight_decay),
                )
            }
        };
        AdamConstants {
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            step_size: step_size as f32,
            bias_correction2_sqrt: bias_correction2_sqrt as f32,
            decay_factor: decay_factor as f32,
        }
    }
}

/// The global-norm clipping coefficient of microsoft/DeBERTa (`Fp16Optimizer._grad_scale`):
/// with `n = sqrt(Σ g²)`, gradients are divided by `n/max_norm` when that exceeds 1, so the
/// coefficient is `1/(n/max_norm)`, else 1. Unlike PyTorch's `clip_grad_norm_` there is no
/// `+1e-6` in the denominator. The sum arrives in `f64` and the coefficient is rounded to
/// `f32` once.
pub fn clip_coefficient(sum_of_squares: f64, max_norm: f32) -> f32 {
    let norm = libm::sqrt(sum_of_squares.max(0.0));
    let scale = norm / f64::from(max_norm);
    if scale > 1.0 {
        (1.0 / scale) as f32
    } else {
        1.0
    }
}

multiversion! {
    /// Updates `param`, `m`, `v` in place from `grad` (`g = grad·grad_scale`; the constants
    /// are [`AdamSpec::constants`]):
    ///
    /// * XAdam (microsoft/DeBERTa `adamw(..., bias_correction=0)`): `m = β1·m + (1−β1)·g`,
    ///   `v = β2·v + (1−β2)·g²`, `u = m/(√v + ε) + wd·p`, `p −= lr·u`.
    /// * AdamW (PyTorch's single-tensor order): `p *= 1 − lr·wd`, the same moments, then
    ///   `p −= step_size·m/(√v/√(1−β2ᵗ) + ε)` with `step_size = lr/(1−β1ᵗ)`.
    pub fn adam_update(
        param: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        spec: AdamSpec,
    ) -> Result<(), Error> {
        let n = param.len();
        spec.check(n, grad.len(), m.len(), v.len())?;
        let c = spec.constants();
        let (b1, c1, b2, c2) = (c.beta1, c.one_minus_beta1, c.beta2, c.one_minus_beta2);
        // Zipped slices of one length: no bounds checks, so the loops vectorise.
        let state = param
            .iter_mut()
            .zip(&grad[..n])
            .zip(m[..n].iter_mut().zip(&mut v[..n]));
        match spec.bias_correction_step {
            None => {
                for ((p, &grad), (m, v)) in state {
                    let g = grad * spec.grad_scale;
                    *m = b1 * *m + c1 * g;
                    *v = b2 * *v + c2 * g * g;
                    let update = *m / (sqrt(*v) + spec.eps) + spec.weight_decay * *p;
                    *p -= c.step_size * update;
                }
            }
            Some(_) => {
                for ((p, &grad), (m, v)) in state {
                    let g = grad * spec.grad_scale;
                    *p *= c.decay_factor;
                    *m = b1 * *m + c1 * g;
                    *v = b2 * *v + c2 * g * g;
                    let denom = sqrt(*v) / c.bias_correction2_sqrt + spec.eps;
                    *p -= c.step_size * *m / denom;
                }
            }
        }
        Ok(())
    }
}

/// `Σ x²`, accumulated in `f64` as `sum_of_squares_f64` does.
pub fn sum_of_squares(x: &[f32]) -> f32 {
    sum_of_squares_f64(x) as f32
}

/// `f64` partial sums of [`sum_of_squares_f64`]: two 512-bit vectors.
const SQUARE_LANES: usize = 16;

multiversion! {
    /// `Σ x²` in `f64`: element `j` goes to partial `j % 16`, the partials are added in order
    /// (vectorised, and the same bits on every machine and vector width; a single running sum
    /// is a serial chain of dependent additions, which made the clipping norm 9 % of a
    /// training step).
    pub(crate) fn sum_of_squares_f64(x: &[f32]) -> f64 {
        let mut lanes = [0.0f64; SQUARE_LANES];
        let mut chunks = x.chunks_exact(SQUARE_LANES);
        for chunk in &mut chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += f64::from(v) * f64::from(v);
            }
        }
        for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
            *lane += f64::from(v) * f64::from(v);
        }
        lanes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xadam_closed_form() {
        let mut p = [1.0f32, -2.0];
        let mut m = [0.1f32, 0.0];
        let mut v = [0.04f32, 0.0];
        let spec = AdamSpec {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.01,
            bias_correction_step: None,
            grad_scale: 0.5,
        };
        adam_update(&mut p, &[2.0, 4.0], &mut m, &mut v, spec).unwrap();
        // g = 1, 2 after scaling; 1 − β rounded from the exact decimal, not 1 − f32(β).
        let (b1, b2) = (0.9f32, 0.999f32);
        let (c1, c2) = (0.1f32, 0.001f32);
        assert_ne!(1.0 - b2, c2);
        let m0: f32 = b1 * 0.1 + c1 * 1.0;
        let v0: f32 = b2 * 0.04 + c2 * 1.0;
        let expected0 = 1.0 - 0.1 * (m0 / (libm::sqrtf(v0) + 1e-6) + 0.01 * 1.0);
        assert!((p[0] - expected0).abs() < 1e-6, "{} vs {expected0}", p[0]);
        let m1: f32 = c1 * 2.0;
        let v1: f32 = c2 * 4.0;
        let expected1 = -2.0 - 0.1 * (m1 / (libm::sqrtf(v1) + 1e-6) + 0.01 * -2.0);
        assert!((p[1] - expected1).abs() < 1e-6);
        assert_eq!((m[0], v[1]), (m0, v1));
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        // With bias correction, the first update is lr·sign(g) (up to eps), after decay.
        let mut p = [1.0f32];
        let (mut m, mut v) = ([0.0f32], [0.0f32]);
        let spec = AdamSpec {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            bias_correction_step: Some(1),
            grad_scale: 1.0,
        };
        adam_update(&mut p, &[-3.0], &mut m, &mut v, spec).unwrap();
        let expected = 1.0 * (1.0 - 0.01 * 0.1) + 0.01;
        assert!((p[0] - expected).abs() < 1e-6, "{}", p[0]);
        assert_eq!(clip_coefficient(25.0, 1.0), 0.2);
        assert_eq!(clip_coefficient(25.0, 2.0), 0.4);
        assert_eq!(clip_coefficient(0.25, 1.0), 1.0);
        // Exactly at the threshold nothing is scaled; just above it, exactly max/n.
        assert_eq!(clip_coefficient(1.0, 1.0), 1.0);
        assert_eq!(
            clip_coefficient(1.0 + 1e-6, 1.0),
            (1.0 / libm::sqrt(1.0 + 1e-6)) as f32
        );
    }
}
