//! Masked softmax over attention scores, with Hugging Face 5.x semantics for padding, and its
//! backward.

use super::{lanes, product, require};
use crate::simd::multiversion;
use crate::{Error, fast_math};

/// Shape of a batch of self-attention score matrices `[batch, heads, len, len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxSpec {
    /// Sequences.
    pub batch: usize,
    /// Heads per sequence.
    pub heads: usize,
    /// Tokens per sequence (queries = keys).
    pub len: usize,
}

impl SoftmaxSpec {
    /// The operand contract of [`masked_softmax`] (every backend's): `scores` holds
    /// `batch·heads·len²` elements and `mask` `batch·len`. Returns `batch·heads·len²`.
    pub fn check(&self, scores: usize, mask: usize) -> Result<usize, Error> {
        self.check_operands("masked_softmax", scores, mask)
    }

    /// The operand contract of [`masked_softmax_backward`] (every backend's): `probs` and
    /// `grad` hold `batch·heads·len²` elements and `mask` `batch·len`. Returns
    /// `batch·heads·len²`.
    pub fn check_backward(&self, probs: usize, grad: usize, mask: usize) -> Result<usize, Error> {
        const KERNEL: &str = "masked_softmax_backward";
        let total = self.check_operands(KERNEL, grad, mask)?;
        require(KERNEL, "probs", total, probs)?;
        Ok(total)
    }

    fn check_operands(
        &self,
        kernel: &'static str,
        scores: usize,
        mask: usize,
    ) -> Result<usize, Error> {
        let total = product(kernel, &[self.batch, self.heads, self.len, self.len])?;
        require(kernel, "scores", total, scores)?;
        require(kernel, "mask", self.batch * self.len, mask)?;
        Ok(total)
    }
}

/// In-place softmax over the last dimension of `scores` `[batch, heads, len, len]` under the
/// product mask `mask[b,i]·mask[b,j]` (`mask` is `[batch, len]`, 1 = token, 0 = padding).
///
/// Masked keys get probability exactly 0. A padded *query* row is fully masked; Hugging Face
/// 5.x fills it with `finfo.min` before a plain softmax, which yields the uniform `1/len`, and
/// so does this kernel. No output at a valid position depends on those rows.
pub fn masked_softmax(scores: &mut [f32], mask: &[f32], spec: SoftmaxSpec) -> Result<(), Error> {
    let total = spec.check(scores.len(), mask.len())?;
    masked_softmax_rows(&mut scores[..total], 0, mask, spec);
    Ok(())
}

/// The key mask of score row `row` of the `[batch·heads·len, len]` scores (its sequence's
/// `[len]` slice of `mask`) and whether its query token is a real token.
#[inline(always)]
fn row_keys(row: usize, mask: &[f32], spec: SoftmaxSpec) -> (&[f32], bool) {
    let len = spec.len;
    let b = row / (spec.heads * len);
    let keys = &mask[b * len..(b + 1) * len];
    (keys, keys[row % len] != 0.0)
}

multiversion! {
    /// [`masked_softmax`] of the whole score rows in `rows`, the first of which is row `first_row`
    /// of the `[batch·heads·len, len]` scores; the shapes are checked by the caller.
    pub(crate) fn masked_softmax_rows(
        rows: &mut [f32],
        first_row: usize,
        mask: &[f32],
        spec: SoftmaxSpec,
    ) {
        let len = spec.len;
        if len == 0 {
            return;
        }
        let uniform = 1.0 / len as f32;
        for (local, row) in rows.chunks_exact_mut(len).enumerate() {
            let (keys, query_valid) = row_keys(first_row + local, mask, spec);
            if !query_valid {
                row.fill(uniform);
                continue;
            }
            let max = lanes::masked_max(row, keys);
            for (s, &m) in row.iter_mut().zip(keys) {
                *s = if m != 0.0 {
                    fast_math::exp(*s - max)
                } else {
                    0.0
                };
            }
            let inv = 1.0 / lanes::sum(row);
            for s in row.iter_mut() {
                *s *= inv;
            }
        }
    }
}

/// Backward of [`masked_softmax`], in place: `grad` holds `dP` on entry and `dS` on return,
/// `dS = P ⊙ (dP − Σ_j P·dP)`. Masked entries (and whole padded query rows, whose scores
/// Hugging Face overwrites with `finfo.min`) get exactly 0.
pub fn masked_softmax_backward(
    probs: &[f32],
    grad: &mut [f32],
    mask: &[f32],
    spec: SoftmaxSpec,
) -> Result<(), Error> {
    let total = spec.check_backward(probs.len(), grad.len(), mask.len())?;
    masked_softmax_backward_rows(&probs[..total], &mut grad[..total], 0, mask, spec);
    Ok(())
}

multiversion! {
    /// [`masked_softmax_backward`] of the whole rows in `probs`/`grad`, the first of which is row
    /// `first_row` of the `[batch·heads·len, len]` scores; the shapes are checked by the caller.
    pub(crate) fn masked_softmax_backward_rows(
        probs: &[f32],
        grad: &mut [f32],
        first_row: usize,
        mask: &[f32],
        spec: SoftmaxSpec,
    ) {
        let len = spec.len;
        if len == 0 {
            return;
        }
        for (local, (g, p)) in grad
            .chunks_exact_mut(len)
            .zip(probs.chunks_exact(len))
            .enumerate()
        {
            let (keys, query_valid) = row_keys(first_row + local, mask, spec);
            if !query_valid {
                g.fill(0.0);
                continue;
            }
            let dot = lanes::dot(g, p);
            for ((gv, &pv), &m) in g.iter_mut().zip(p).zip(keys) {
                *gv = if m != 0.0 { pv * (*gv - dot) } else { 0.0 };
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
        fn rows_sum_to_one_under_any_mask_with_a_valid_key(
            len in 1usize..12,
            heads in 1usize..3,
            seed in any::<u64>(),
        ) {
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
            let mut mask = [0.0f32; 12];
            for m in mask.iter_mut().take(len) { *m = (next() % 2) as f32; }
            mask[(next() % len as u64) as usize] = 1.0; // at least one valid key
            let mut scores = [0.0f32; 3 * 12 * 12];
            for s in scores.iter_mut() { *s = (next() % 2000) as f32 / 50.0 - 20.0; }
            let spec = SoftmaxSpec { batch: 1, heads, len };
            masked_softmax(&mut scores, &mask, spec).unwrap();
            for h in 0..heads {
                for i in 0..len {
                    let row = &scores[(h * len + i) * len..(h * len + i + 1) * len];
                    let sum: f32 = row.iter().sum();
                    prop_assert!((sum - 1.0).abs() < 1e-5, "row sum {}", sum);
                    if mask[i] != 0.0 {
                        for j in 0..len {
                            if mask[j] == 0.0 { prop_assert_eq!(row[j], 0.0); }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn padded_query_rows_are_uniform() {
        let mut scores = [1.0f32, 5.0, 2.0, 7.0];
        masked_softmax(
            &mut scores,
            &[1.0, 0.0],
            SoftmaxSpec {
                batch: 1,
                heads: 1,
                len: 2,
            },
        )
        .unwrap();
        assert_eq!(scores, [1.0, 0.0, 0.5, 0.5]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let spec = SoftmaxSpec {
            batch: 1,
            heads: 1,
            len: 4,
        };
        let mask = [1.0f32, 1.0, 0.0, 1.0];
        let scores: [f32; 16] = core::array::from_fn(|k| ((k * 7) % 5) as f32 * 0.3 - 0.6);
        let w: [f32; 16] = core::array::from_fn(|k| ((k * 11) % 9) as f32 * 0.25 - 1.0);
        let loss = |s: &[f32; 16]| -> f64 {
            let mut p = *s;
            masked_softmax(&mut p, &mask, spec).unwrap();
            p.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let mut probs = scores;
        masked_softmax(&mut probs, &mask, spec).unwrap();
        let mut grad = w;
        masked_softmax_backward(&probs, &mut grad, &mask, spec).unwrap();
        for k in 0..16 {
            let (mut plus, mut minus) = (scores, scores);
            plus[k] += 1e-2;
            minus[k] -= 1e-2;
            let numeric = (loss(&plus) - loss(&minus)) / 2e-2;
            let expected = if mask[k / 4] == 0.0 || mask[k % 4] == 0.0 {
                0.0
            } else {
                numeric
            };
            assert!(
                (grad[k] as f64 - expected).abs() < 1e-3,
                "{k}: {} vs {expected}",
                grad[k]
            );
        }
    }
}
