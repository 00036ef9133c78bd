//! Row-wise LayerNorm with affine parameters and biased variance (PyTorch `nn.LayerNorm`).

use super::lanes::{self, LANES};
use super::{product, require};
use crate::Error;
use crate::backend::LayerNormGrads;
use crate::simd::multiversion;

/// Shape and epsilon of a LayerNorm over the last dimension.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormSpec {
    /// Independent rows.
    pub rows: usize,
    /// Normalised width.
    pub cols: usize,
    /// Added to the variance before the square root (DeBERTa: 1e-7).
    pub eps: f32,
}

impl LayerNormSpec {
    /// The operand contract of [`layer_norm`] (every backend's): `x` and `out` hold
    /// `rows·cols` elements, `gamma` and `beta` `cols`, `stats` (when given) `2·rows`. Returns
    /// `rows·cols`.
    pub fn check(
        &self,
        x: usize,
        gamma: usize,
        beta: usize,
        out: usize,
        stats: Option<usize>,
    ) -> Result<usize, Error> {
        const KERNEL: &str = "layer_norm";
        let total = product(KERNEL, &[self.rows, self.cols])?;
        require(KERNEL, "x", total, x)?;
        require(KERNEL, "out", total, out)?;
        require(KERNEL, "gamma", self.cols, gamma)?;
        require(KERNEL, "beta", self.cols, beta)?;
        if let Some(stats) = stats {
            require(KERNEL, "stats", 2 * self.rows, stats)?;
        }
        Ok(total)
    }

    /// The operand contract of [`layer_norm_backward`] (every backend's), given the lengths
    /// of the row operands `[x, dout, dx]`, of `stats` and of the column operands
    /// `[gamma, dgamma, dbeta]`: the row operands hold `rows·cols` elements, `stats` `2·rows`
    /// and the column operands `cols`. Returns `rows·cols`.
    pub fn check_backward(
        &self,
        [x, dout, dx]: [usize; 3],
        stats: usize,
        [gamma, dgamma, dbeta]: [usize; 3],
    ) -> Result<usize, Error> {
        const KERNEL: &str = "layer_norm_backward";
        let total = product(KERNEL, &[self.rows, self.cols])?;
        require(KERNEL, "x", total, x)?;
        require(KERNEL, "dout", total, dout)?;
        require(KERNEL, "dx", total, dx)?;
        require(KERNEL, "stats", 2 * self.rows, stats)?;
        for (name, len) in [("gamma", gamma), ("dgamma", dgamma), ("dbeta", dbeta)] {
            require(KERNEL, name, self.cols, len)?;
        }
        Ok(total)
    }
}

multiversion! {
    /// `out[r] = (x[r] − mean) / sqrt(var + eps) · gamma + beta` per row. When `stats` is given it
    /// receives `[mean, rstd]` per row (`2·rows` values), which the backward pass consumes.
    pub fn layer_norm(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        out: &mut [f32],
        stats: Option<&mut [f32]>,
        spec: LayerNormSpec,
    ) -> Result<(), Error> {
        let mut stats = stats;
        spec.check(
            x.len(),
            gamma.len(),
            beta.len(),
            out.len(),
            stats.as_deref().map(<[f32]>::len),
        )?;
        if spec.cols == 0 {
            return Ok(());
        }
        let n = spec.cols as f32;
        for r in 0..spec.rows {
            let row = &x[r * spec.cols..(r + 1) * spec.cols];
            let mean = lanes::sum(row) / n;
            let var = lanes::squared_deviation(row, mean) / n;
            let rstd = 1.0 / libm::sqrtf(var.max(0.0) + spec.eps);
            let dst = &mut out[r * spec.cols..(r + 1) * spec.cols];
            for (((o, &v), &g), &b) in dst.iter_mut().zip(row).zip(gamma).zip(beta) {
                *o = (v - mean) * rstd * g + b;
            }
            if let Some(s) = stats.as_deref_mut() {
                s[2 * r] = mean;
                s[2 * r + 1] = rstd;
            }
        }
        Ok(())
    }
}

/// Backward of [`layer_norm`] given its input `x` and the `stats` it recorded.
///
/// `dgamma += Σ_rows dout·x̂`, `dbeta += Σ_rows dout` (always accumulated, rows in order), and
/// `dx = rstd·(dout·γ − mean(dout·γ) − x̂·mean(dout·γ·x̂))`, added to `grads.dx` when
/// `grads.accumulate_dx`, written otherwise.
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    dout: &[f32],
    grads: LayerNormGrads<'_, [f32]>,
    spec: LayerNormSpec,
) -> Result<(), Error> {
    let LayerNormGrads {
        dx,
        dgamma,
        dbeta,
        accumulate_dx,
    } = grads;
    let row_operands = [x.len(), dout.len(), dx.len()];
    let col_operands = [gamma.len(), dgamma.len(), dbeta.len()];
    let total = spec.check_backward(row_operands, stats.len(), col_operands)?;
    if spec.cols == 0 {
        return Ok(());
    }
    layer_norm_backward_input(
        &x[..total],
        gamma,
        stats,
        &dout[..total],
        &mut dx[..total],
        spec.cols,
        accumulate_dx,
    );
    layer_norm_backward_params(
        &x[..total],
        stats,
        &dout[..total],
        &mut dgamma[..spec.cols],
        &mut dbeta[..spec.cols],
        0,
        spec.cols,
    );
    Ok(())
}

multiversion! {
    /// The `dx` part of [`layer_norm_backward`] for the whole rows in `x`, `dout` and `dx` (their
    /// `[mean, rstd]` pairs first in `stats`); shapes checked by the caller, `cols > 0`.
    pub(crate) fn layer_norm_backward_input(
        x: &[f32],
        gamma: &[f32],
        stats: &[f32],
        dout: &[f32],
        dx: &mut [f32],
        cols: usize,
        accumulate_dx: bool,
    ) {
        let n = cols as f32;
        for (r, ((xr, gr), dxr)) in x
            .chunks_exact(cols)
            .zip(dout.chunks_exact(cols))
            .zip(dx.chunks_exact_mut(cols))
            .enumerate()
        {
            let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
            let (sum_g, sum_gx) = gradient_sums(xr, gr, gamma, mean, rstd);
            let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
            for c in 0..cols {
                let xhat = (xr[c] - mean) * rstd;
                let d = rstd * (gr[c] * gamma[c] - mean_g - xhat * mean_gx);
                if accumulate_dx {
                    dxr[c] += d;
                } else {
                    dxr[c] = d;
                }
            }
        }
    }
}

/// `(Σ g·γ, Σ g·γ·x̂)` over one row, `x̂ = (x − mean)·rstd`, with the fixed partial-sum
/// structure of [`lanes::sum`] (vectorised, and the same bits on every machine).
#[inline(always)]
fn gradient_sums(x: &[f32], g: &[f32], gamma: &[f32], mean: f32, rstd: f32) -> (f32, f32) {
    let (mut sum_g, mut sum_gx) = ([0.0f32; LANES], [0.0f32; LANES]);
    let mut add = |lane: usize, xv: f32, gv: f32, gam: f32| {
        let gg = gv * gam;
        sum_g[lane] += gg;
        sum_gx[lane] += gg * ((xv - mean) * rstd);
    };
    let cols = x.len().min(g.len()).min(gamma.len());
    let whole = cols - cols % LANES;
    for ((xc, gc), gamc) in x[..whole]
        .chunks_exact(LANES)
        .zip(g[..whole].chunks_exact(LANES))
        .zip(gamma[..whole].chunks_exact(LANES))
    {
        for lane in 0..LANES {
            add(lane, xc[lane], gc[lane], gamc[lane]);
        }
    }
    for (lane, c) in (whole..cols).enumerate() {
        add(lane, x[c], g[c], gamma[c]);
    }
    (sum_g.iter().sum(), sum_gx.iter().sum())
}

multiversion! {
    /// The parameter part of [`layer_norm_backward`] for columns `first_col..first_col +
    /// dgamma.len()` of rows of width `cols`: `dgamma += Σ_rows dout·x̂`, `dbeta += Σ_rows dout`,
    /// rows in order (so any split into column ranges gives the same bits).
    pub(crate) fn layer_norm_backward_params(
        x: &[f32],
        stats: &[f32],
        dout: &[f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
        first_col: usize,
        cols: usize,
    ) {
        let width = dgamma.len();
        for (r, (xr, gr)) in x
            .chunks_exact(cols)
            .zip(dout.chunks_exact(cols))
            .enumerate()
        {
            let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
            let xr = &xr[first_col..first_col + width];
            let gr = &gr[first_col..first_col + width];
            for (((dg, db), &xv), &g) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(xr).zip(gr) {
                let xhat = (xv - mean) * rstd;
                *dg += g * xhat;
                *db += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn invariant_to_a_constant_shift(
            values in proptest::collection::vec(-4.0f32..4.0, 2..48),
            shift in -8.0f32..8.0,
        ) {
            let cols = values.len();
            let gamma: [f32; 48] = core::array::from_fn(|i| 0.5 + i as f32 * 0.03);
            let beta: [f32; 48] = core::array::from_fn(|i| i as f32 * -0.01);
            let shifted: [f32; 48] = core::array::from_fn(|i| values.get(i).copied().unwrap_or(0.0) + shift);
            let mut a = [0.0f32; 48];
            let mut b = [0.0f32; 48];
            let spec = LayerNormSpec { rows: 1, cols, eps: 1e-7 };
            layer_norm(&values, &gamma, &beta, &mut a, None, spec).unwrap();
            layer_norm(&shifted[..cols], &gamma, &beta, &mut b, None, spec).unwrap();
            // Normalisation of nearly constant rows amplifies rounding by 1/std: compare
            // relative to that amplification.
            let mean = values.iter().sum::<f32>() / cols as f32;
            let std = libm::sqrtf(values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32);
            let tol = 1e-5 * (1.0 + (mean.abs() + shift.abs()) / std.max(1e-3));
            for i in 0..cols {
                prop_assert!((a[i] - b[i]).abs() <= tol, "{} vs {} (tol {})", a[i], b[i], tol);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        // L = Σ w·LN(x); check dx, dγ, dβ against central differences in f64 of the f32 kernel.
        const R: usize = 3;
        const C: usize = 5;
        let x: [f32; R * C] = core::array::from_fn(|k| ((k * 7 + 3) % 11) as f32 * 0.37 - 1.5);
        let gamma: [f32; C] = core::array::from_fn(|k| 0.8 + k as f32 * 0.11);
        let beta: [f32; C] = core::array::from_fn(|k| k as f32 * 0.05 - 0.1);
        let w: [f32; R * C] = core::array::from_fn(|k| ((k * 5 + 1) % 7) as f32 * 0.3 - 0.9);
        let spec = LayerNormSpec {
            rows: R,
            cols: C,
            eps: 1e-5,
        };
        let loss = |x: &[f32; R * C], g: &[f32; C], b: &[f32; C]| -> f64 {
            let mut out = [0.0f32; R * C];
            layer_norm(x, g, b, &mut out, None, spec).unwrap();
            out.iter().zip(&w).map(|(o, w)| *o as f64 * *w as f64).sum()
        };
        let mut stats = [0.0f32; 2 * R];
        let mut out = [0.0f32; R * C];
        layer_norm(&x, &gamma, &beta, &mut out, Some(&mut stats), spec).unwrap();
        let (mut dx, mut dg, mut db) = ([1.0f32; R * C], [0.0f32; C], [0.0f32; C]);
        let grads = LayerNormGrads {
            dx: &mut dx[..],
            dgamma: &mut dg[..],
            dbeta: &mut db[..],
            accumulate_dx: false,
        };
        layer_norm_backward(&x, &gamma, &stats, &w, grads, spec).unwrap();
        let h = 1e-2f32;
        for k in 0..R * C {
            let (mut p, mut m) = (x, x);
            p[k] += h;
            m[k] -= h;
            let num = (loss(&p, &gamma, &beta) - loss(&m, &gamma, &beta)) / (2.0 * h as f64);
            assert!(
                (num - dx[k] as f64).abs() < 2e-3,
                "dx[{k}]: {num} vs {}",
                dx[k]
            );
        }
        for k in 0..C {
            let (mut p, mut m) = (gamma, gamma);
            p[k] += h;
            m[k] -= h;
            let num = (loss(&x, &p, &beta) - loss(&x, &m, &beta)) / (2.0 * h as f64);
            assert!(
                (num - dg[k] as f64).abs() < 2e-3,
                "dgamma[{k}]: {num} vs {}",
                dg[k]
            );
            let (mut p, mut m) = (beta, beta);
            p[k] += h;
            m[k] -= h;
            let num = (loss(&x, &gamma, &p) - loss(&x, &gamma, &m)) / (2.0 * h as f64);
            assert!(
                (num - db[k] as f64).abs() < 2e-3,
                "dbeta[{k}]: {num} vs {}",
                db[k]
            );
        }
        // Accumulation adds onto an existing gradient.
        let mut acc = [1.0f32; R * C];
        let grads = LayerNormGrads {
            dx: &mut acc[..],
            dgamma: &mut dg[..],
            dbeta: &mut db[..],
            accumulate_dx: true,
        };
        layer_norm_backward(&x, &gamma, &stats, &w, grads, spec).unwrap();
        for k in 0..R * C {
            assert!((acc[k] - (dx[k] + 1.0)).abs() < 1e-6);
        }
    }

    #[test]
    fn normalises_and_records_stats() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = [0.0f32; 4];
        let mut stats = [0.0f32; 2];
        let spec = LayerNormSpec {
            rows: 1,
            cols: 4,
            eps: 0.0,
        };
        layer_norm(&x, &[1.0; 4], &[0.0; 4], &mut out, Some(&mut stats), spec).unwrap();
        assert_eq!(stats[0], 2.5);
        assert!((stats[1] - 1.0 / libm::sqrtf(1.25)).abs() < 1e-6);
        assert!((out.iter().sum::<f32>()).abs() < 1e-6);
        assert!(layer_norm(&x[..3], &[1.0; 4], &[0.0; 4], &mut out, None, spec).is_err());
    }
}
