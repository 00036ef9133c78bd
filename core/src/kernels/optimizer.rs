//! The optimizer update: XAdam (microsoft/DeBERTa: no bias correction, eps outside the square
//! root) or bias-corrected AdamW, both with decoupled weight decay and global-norm clipping.

use super::require;
use crate::Error;
use crate::simd::multiversion;

/// One Adam update's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamSpec {
    /// Learning rate of this step (after the schedule).
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to `sqrt(v)` (outside the root).
    pub eps: f32,
    /// Decoupled weight decay of this parameter (0 for biases and LayerNorm weights).
    pub weight_decay: f32,
    /// `Some(t)` for standard AdamW with bias correction at step `t ≥ 1`; `None` for XAdam.
    pub bias_correction_step: Option<u64>,
    /// Multiplier of the gradient (the clipping coefficient, 1 without clipping).
    pub grad_scale: f32,
}

/// The clipping coefficient of PyTorch's `clip_grad_norm_`: `min(1, max_norm/(‖g‖ + 1e-6))`
/// from the sum of squared gradients.
pub fn clip_coefficient(sum_of_squares: f32, max_norm: f32) -> f32 {
    let norm = libm::sqrtf(sum_of_squares.max(0.0));
    (max_norm / (norm + 1e-6)).min(1.0)
}

multiversion! {
    /// Updates `param`, `m`, `v` in place from `grad`:
    ///
    /// * XAdam: `m = β1·m + (1−β1)·g`, `v = β2·v + (1−β2)·g²`, `u = m/(√v + ε) + wd·p`,
    ///   `p −= lr·u`.
    /// * AdamW (bias-corrected, PyTorch order): `p −= lr·wd·p`, then the same moments and
    ///   `p −= lr·(m/(1−β1ᵗ))/(√(v/(1−β2ᵗ)) + ε)`.
    pub fn adam_update(
        param: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        spec: AdamSpec,
    ) -> Result<(), Error> {
        let n = param.len();
        for (name, len) in [("grad", grad.len()), ("m", m.len()), ("v", v.len())] {
            require("adam_update", name, n, len)?;
        }
        let (b1, b2) = (spec.beta1, spec.beta2);
        // Zipped slices of one length: no bounds checks, so the loops vectorise.
        let state = param
            .iter_mut()
            .zip(&grad[..n])
            .zip(m[..n].iter_mut().zip(&mut v[..n]));
        match spec.bias_correction_step {
            None => {
                for ((p, &grad), (m, v)) in state {
                    let g = grad * spec.grad_scale;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let update = *m / (libm::sqrtf(*v) + spec.eps) + spec.weight_decay * *p;
                    *p -= spec.lr * update;
                }
            }
            Some(step) => {
                let t = step.max(1) as i32;
                let bc1 = 1.0 - libm::powf(b1, t as f32);
                let bc2 = 1.0 - libm::powf(b2, t as f32);
                for ((p, &grad), (m, v)) in state {
                    let g = grad * spec.grad_scale;
                    *p *= 1.0 - spec.lr * spec.weight_decay;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let denom = libm::sqrtf(*v / bc2) + spec.eps;
                    *p -= spec.lr * (*m / bc1) / denom;
                }
            }
        }
        Ok(())
    }
}

/// `Σ x²` in index order, accumulated in `f64`.
pub fn sum_of_squares(x: &[f32]) -> f32 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() as f32
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
        // g = 1, 2 after scaling.
        let (b1, b2) = (0.9f32, 0.999f32);
        let m0: f32 = b1 * 0.1 + (1.0 - b1) * 1.0;
        let v0: f32 = b2 * 0.04 + (1.0 - b2) * 1.0;
        let expected0 = 1.0 - 0.1 * (m0 / (libm::sqrtf(v0) + 1e-6) + 0.01 * 1.0);
        assert!((p[0] - expected0).abs() < 1e-6, "{} vs {expected0}", p[0]);
        let m1: f32 = (1.0 - b1) * 2.0;
        let v1: f32 = (1.0 - b2) * 4.0;
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
        assert!((clip_coefficient(25.0, 1.0) - 0.2).abs() < 1e-6);
        assert_eq!(clip_coefficient(0.25, 1.0), 1.0);
    }
}
