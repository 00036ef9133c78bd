//! Masked softmax over attention scores, with Hugging Face 5.x semantics for padding.

use super::{product, require};
use crate::Error;

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

/// In-place softmax over the last dimension of `scores` `[batch, heads, len, len]` under the
/// product mask `mask[b,i]·mask[b,j]` (`mask` is `[batch, len]`, 1 = token, 0 = padding).
///
/// Masked keys get probability exactly 0. A padded *query* row is fully masked; Hugging Face
/// 5.x fills it with `finfo.min` before a plain softmax, which yields the uniform `1/len`, and
/// so does this kernel. No output at a valid position depends on those rows.
pub fn masked_softmax(scores: &mut [f32], mask: &[f32], spec: SoftmaxSpec) -> Result<(), Error> {
    let total = product(
        "masked_softmax",
        &[spec.batch, spec.heads, spec.len, spec.len],
    )?;
    require("masked_softmax", "scores", total, scores.len())?;
    require("masked_softmax", "mask", spec.batch * spec.len, mask.len())?;
    let len = spec.len;
    if len == 0 {
        return Ok(());
    }
    let uniform = 1.0 / len as f32;
    for (row_index, row) in scores[..total].chunks_exact_mut(len).enumerate() {
        let b = row_index / (spec.heads * len);
        let i = row_index % len;
        let keys = &mask[b * len..(b + 1) * len];
        if keys[i] == 0.0 {
            row.fill(uniform);
            continue;
        }
        let mut max = f32::NEG_INFINITY;
        for (&s, &m) in row.iter().zip(keys) {
            if m != 0.0 && s > max {
                max = s;
            }
        }
        let mut sum = 0.0f32;
        for (s, &m) in row.iter_mut().zip(keys) {
            *s = if m != 0.0 { libm::expf(*s - max) } else { 0.0 };
            sum += *s;
        }
        let inv = 1.0 / sum;
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
    Ok(())
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
}
