//! Row reductions written as `LANES` independent partial results combined in a fixed order:
//! the compiler vectorises them (a plain `sum += x` loop must stay scalar, as float addition
//! does not reassociate), and the order, hence every bit of the result, is the same on every
//! machine and vector width.

/// Partial results per reduction: one 512-bit vector of `f32`.
pub(crate) const LANES: usize = 16;

/// `Σ f(x)`: element `j` goes to partial `j % LANES`; the partials are added in order.
#[inline(always)]
fn sum_of(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += f(v);
    }
    lanes.iter().sum()
}

/// `Σ x`, with the partial-sum structure of [`sum_of`].
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    sum_of(x, |v| v)
}

/// `Σ a·b` over the common length, with the partial-sum structure of [`sum_of`].
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0.0f32; LANES];
    let mut chunks = a.chunks_exact(LANES).zip(b.chunks_exact(LANES));
    for (x, y) in &mut chunks {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    let tail = n - n % LANES;
    for ((lane, &x), &y) in lanes.iter_mut().zip(&a[tail..]).zip(&b[tail..]) {
        *lane += x * y;
    }
    lanes.iter().sum()
}

/// `Σ (x − centre)²`, with the partial-sum structure of [`sum_of`] (a variance's numerator).
#[inline(always)]
pub(crate) fn squared_deviation(x: &[f32], centre: f32) -> f32 {
    sum_of(x, |v| (v - centre) * (v - centre))
}

/// The largest element (−∞ for an empty slice; NaN elements are skipped).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane = lane.max(v);
    }
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// The largest `x[j]` with `keep[j] != 0` (−∞ when there is none; NaN elements are skipped).
#[inline(always)]
pub(crate) fn masked_max(x: &[f32], keep: &[f32]) -> f32 {
    let n = x.len().min(keep.len());
    let (x, keep) = (&x[..n], &keep[..n]);
    let masked = |v: f32, m: f32| if m != 0.0 { v } else { f32::NEG_INFINITY };
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES).zip(keep.chunks_exact(LANES));
    for (values, mask) in &mut chunks {
        for ((lane, &v), &m) in lanes.iter_mut().zip(values).zip(mask) {
            *lane = lane.max(masked(v, m));
        }
    }
    let tail = n - n % LANES;
    for ((lane, &v), &m) in lanes.iter_mut().zip(&x[tail..]).zip(&keep[tail..]) {
        *lane = lane.max(masked(v, m));
    }
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> [f32; 100] {
        let mut out = [0.0; 100];
        for (i, v) in out.iter_mut().take(n).enumerate() {
            *v = ((i * 37) % 23) as f32 * 0.25 - 2.0;
        }
        out
    }

    #[test]
    fn reductions_match_sequential_ones_on_every_tail_length() {
        for n in [0, 1, 15, 16, 17, 33, 100] {
            let x = &values(n)[..n];
            let y = &values(n)[..n];
            let seq_sum: f64 = x.iter().map(|&v| v as f64).sum();
            let seq_dot: f64 = x.iter().zip(y).map(|(&a, &b)| (a * b) as f64).sum();
            // The values are multiples of 1/4 (products of 1/16) with small sums: exact.
            assert_eq!(sum(x) as f64, seq_sum, "sum of {n}");
            assert_eq!(dot(x, y) as f64, seq_dot, "dot of {n}");
            let seq_dev: f64 = x.iter().map(|&v| ((v - 0.5) * (v - 0.5)) as f64).sum();
            assert_eq!(
                squared_deviation(x, 0.5) as f64,
                seq_dev,
                "deviation of {n}"
            );
            let seq_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(x), seq_max, "max of {n}");
            let keep: [f32; 100] = core::array::from_fn(|i| (i % 3 != 0) as u8 as f32);
            let seq_masked = x
                .iter()
                .zip(&keep)
                .filter(|&(_, &k)| k != 0.0)
                .map(|(&v, _)| v)
                .fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(masked_max(x, &keep[..n]), seq_masked, "masked max of {n}");
        }
        assert_eq!(max(&[f32::NAN, 1.0, f32::NAN]), 1.0);
    }
}
