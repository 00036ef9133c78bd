//! Loss kernels: cross-entropy over selected rows (MLM) and BCE-with-logits over tokens (RTD),
//! each writing per-row losses and the scaled gradient of the logits in one pass.

use super::{lanes, product, require};
use crate::simd::multiversion;
use crate::{Error, fast_math};

/// The operand contract of [`cross_entropy`] (every backend's): `logits` and `dlogits` hold
/// `rows·vocab` elements and `losses` `rows`. Returns `rows·vocab`.
pub fn check_cross_entropy(
    rows: usize,
    vocab: usize,
    logits: usize,
    dlogits: usize,
    losses: usize,
) -> Result<usize, Error> {
    const KERNEL: &str = "cross_entropy";
    let total = product(KERNEL, &[rows, vocab])?;
    require(KERNEL, "logits", total, logits)?;
    require(KERNEL, "dlogits", total, dlogits)?;
    require(KERNEL, "losses", rows, losses)?;
    Ok(total)
}

/// The operand contract of [`bce_with_logits`] (every backend's): `labels`, `weights`,
/// `losses` and `dlogits` cover `logits`.
pub fn check_bce_with_logits(
    logits: usize,
    labels: usize,
    weights: usize,
    losses: usize,
    dlogits: usize,
) -> Result<(), Error> {
    for (name, len) in [
        ("labels", labels),
        ("weights", weights),
        ("losses", losses),
        ("dlogits", dlogits),
    ] {
        require("bce_with_logits", name, logits, len)?;
    }
    Ok(())
}

/// Per-row cross-entropy `lse(z) − z[target]` into `losses[r]` and its gradient
/// `(softmax(z) − onehot(target))·grad_scale` into `dlogits`, for `logits` `[rows, vocab]`.
/// Targets are validated (`< vocab`).
pub fn cross_entropy(
    logits: &[f32],
    targets: &[u32],
    losses: &mut [f32],
    dlogits: &mut [f32],
    vocab: usize,
    grad_scale: f32,
) -> Result<(), Error> {
    let rows = targets.len();
    check_cross_entropy(rows, vocab, logits.len(), dlogits.len(), losses.len())?;
    if vocab == 0 {
        return Ok(());
    }
    cross_entropy_rows(logits, targets, 0, losses, dlogits, vocab, grad_scale)
}

multiversion! {
    /// [`cross_entropy`] of rows `first_row..` (whose logits, targets, losses and gradients the
    /// slices hold; shapes checked by the caller, `vocab > 0`). A target out of range is an error
    /// naming its row.
    pub(crate) fn cross_entropy_rows(
        logits: &[f32],
        targets: &[u32],
        first_row: usize,
        losses: &mut [f32],
        dlogits: &mut [f32],
        vocab: usize,
        grad_scale: f32,
    ) -> Result<(), Error> {
        for (r, &target) in targets.iter().enumerate() {
            let t = target as usize;
            if t >= vocab {
                return Err(Error::TokenOutOfRange {
                    table: "the MLM vocabulary (target)",
                    position: first_row + r,
                    id: target as u64,
                    rows: vocab,
                });
            }
            let z = &logits[r * vocab..(r + 1) * vocab];
            let max = lanes::max(z);
            let d = &mut dlogits[r * vocab..(r + 1) * vocab];
            for (o, &v) in d.iter_mut().zip(z) {
                *o = fast_math::exp(v - max);
            }
            let sum = lanes::sum(d);
            losses[r] = libm::logf(sum) + max - z[t];
            let inv = grad_scale / sum;
            for o in d.iter_mut() {
                *o *= inv;
            }
            d[t] -= grad_scale;
        }
        Ok(())
    }
}

/// Per-token BCE-with-logits `w·(max(z,0) − z·y + log(1 + e^{−|z|}))` into `losses` and its
/// gradient `w·(σ(z) − y)·grad_scale` into `dlogits` (`w` = `weights`, e.g. the padding mask).
pub fn bce_with_logits(
    logits: &[f32],
    labels: &[f32],
    weights: &[f32],
    losses: &mut [f32],
    dlogits: &mut [f32],
    grad_scale: f32,
) -> Result<(), Error> {
    let n = logits.len();
    check_bce_with_logits(n, labels.len(), weights.len(), losses.len(), dlogits.len())?;
    for i in 0..n {
        let (z, y, w) = (logits[i], labels[i], weights[i]);
        losses[i] = w * (z.max(0.0) - z * y + libm::log1pf(libm::expf(-z.abs())));
        let sigmoid = 1.0 / (1.0 + libm::expf(-z));
        dlogits[i] = w * (sigmoid - y) * grad_scale;
    }
    Ok(())
}

/// `Σ x` in index order, accumulated in `f64` and rounded once.
pub fn sum(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64).sum::<f64>() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_value_and_gradient() {
        let logits = [1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0];
        let mut losses = [0.0f32; 2];
        let mut d = [0.0f32; 6];
        cross_entropy(&logits, &[2, 0], &mut losses, &mut d, 3, 0.5).unwrap();
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((losses[0] as f64 - (lse - 3.0)).abs() < 1e-6);
        assert!((losses[1] as f64 - 3f64.ln()).abs() < 1e-6);
        let p2 = (3.0 - lse).exp();
        assert!((d[2] as f64 - 0.5 * (p2 - 1.0)).abs() < 1e-6);
        assert!((d.iter().sum::<f32>()).abs() < 1e-6);
        assert!(cross_entropy(&logits, &[3, 0], &mut losses, &mut d, 3, 1.0).is_err());
    }

    #[test]
    fn gradients_match_finite_differences() {
        let logits: [f32; 8] = [0.3, -1.2, 2.0, 0.1, -0.4, 0.9, 1.5, -2.2];
        let targets = [2u32, 1];
        let ce = |z: &[f32; 8]| -> f64 {
            let mut losses = [0.0f32; 2];
            let mut d = [0.0f32; 8];
            cross_entropy(z, &targets, &mut losses, &mut d, 4, 1.0).unwrap();
            losses.iter().map(|&l| l as f64).sum()
        };
        let mut losses = [0.0f32; 2];
        let mut d = [0.0f32; 8];
        cross_entropy(&logits, &targets, &mut losses, &mut d, 4, 1.0).unwrap();
        let labels = [1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let weights = [1.0f32, 1.0, 0.5, 1.0, 0.0, 2.0, 1.0, 1.0];
        let bce = |z: &[f32; 8]| -> f64 {
            let mut l = [0.0f32; 8];
            let mut g = [0.0f32; 8];
            bce_with_logits(z, &labels, &weights, &mut l, &mut g, 1.0).unwrap();
            l.iter().map(|&v| v as f64).sum()
        };
        let mut l = [0.0f32; 8];
        let mut g = [0.0f32; 8];
        bce_with_logits(&logits, &labels, &weights, &mut l, &mut g, 1.0).unwrap();
        for k in 0..8 {
            let (mut p, mut m) = (logits, logits);
            p[k] += 1e-2;
            m[k] -= 1e-2;
            let num = (ce(&p) - ce(&m)) / 2e-2;
            assert!(
                (num - d[k] as f64).abs() < 1e-3,
                "ce {k}: {num} vs {}",
                d[k]
            );
            let num = (bce(&p) - bce(&m)) / 2e-2;
            assert!(
                (num - g[k] as f64).abs() < 1e-3,
                "bce {k}: {num} vs {}",
                g[k]
            );
        }
    }

    #[test]
    fn bce_value_gradient_and_weights() {
        let mut losses = [0.0f32; 3];
        let mut d = [0.0f32; 3];
        bce_with_logits(
            &[0.0, 40.0, -3.0],
            &[1.0, 1.0, 1.0],
            &[1.0, 1.0, 0.0],
            &mut losses,
            &mut d,
            2.0,
        )
        .unwrap();
        assert!((losses[0] - core::f32::consts::LN_2).abs() < 1e-6);
        assert!(losses[1] < 1e-12 && losses[1] >= 0.0);
        assert_eq!((losses[2], d[2]), (0.0, 0.0));
        assert!((d[0] + 1.0).abs() < 1e-6);
    }
}
