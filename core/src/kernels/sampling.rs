//! Sampling from categorical distributions given by logits, with counter-based uniforms.

use super::lanes::{self, LANES};
use super::{product, require};
use crate::random::RandomStream;
use crate::simd::multiversion;
use crate::{Error, fast_math};

/// The operand contract of [`sample_categorical`] (every backend's): `logits` holds
/// `rows·vocab` elements and the vocabulary is not empty.
pub fn check_sample_categorical(rows: usize, vocab: usize, logits: usize) -> Result<(), Error> {
    const KERNEL: &str = "sample_categorical";
    require(KERNEL, "logits", product(KERNEL, &[rows, vocab])?, logits)?;
    if vocab == 0 {
        return Err(Error::EmptyInput {
            what: "the vocabulary to sample from",
        });
    }
    Ok(())
}

/// For each row `r` of `logits` `[out.len(), vocab]`, draws `u = stream.uniform(r)` and writes
/// the smallest id whose cumulative `softmax` probability exceeds `u` (inverse transform
/// sampling at temperature 1). The weights are [`fast_math::exp`] of `z − max`, summed in
/// chunks of 16 ids (each chunk in id order, the chunks in order): every backend that evaluates
/// the same function draws the same tokens.
pub fn sample_categorical(
    logits: &[f32],
    vocab: usize,
    stream: RandomStream,
    out: &mut [u32],
) -> Result<(), Error> {
    check_sample_categorical(out.len(), vocab, logits.len())?;
    sample_categorical_rows(logits, vocab, stream, 0, out);
    Ok(())
}

multiversion! {
    /// [`sample_categorical`] of rows `first_row..` (the logits of `out.len()` rows, `vocab > 0`
    /// checked by the caller): row `r` draws number `r` of `stream`.
    pub(crate) fn sample_categorical_rows(
        logits: &[f32],
        vocab: usize,
        stream: RandomStream,
        first_row: usize,
        out: &mut [u32],
    ) {
        for (local, slot) in out.iter_mut().enumerate() {
            let r = first_row + local;
            let z = &logits[local * vocab..(local + 1) * vocab];
            let max = lanes::max(z);
            let total = z
                .chunks(LANES)
                .fold(0.0, |acc, chunk| acc + chunk_sum(&exp_shifted(chunk, max)));
            let target = stream.uniform(r as u64) * total;
            *slot = inverse_cdf(z, max, target) as u32;
        }
    }
}

/// `e^{z − max}` of a chunk of at most [`LANES`] logits (the unused entries 0).
#[inline(always)]
fn exp_shifted(chunk: &[f32], max: f32) -> [f32; LANES] {
    let mut out = [0.0; LANES];
    for (o, &v) in out.iter_mut().zip(chunk) {
        *o = fast_math::exp(v - max);
    }
    out
}

/// The weights of a chunk added in id order from 0.
#[inline(always)]
fn chunk_sum(weights: &[f32; LANES]) -> f32 {
    weights.iter().fold(0.0, |acc, &w| acc + w)
}

/// The first id whose cumulative weight exceeds `target`, the cumulative weight summed as the
/// total is: chunk sums (each in id order from 0) added in chunk order, so the last id's is the
/// total exactly; inside the chunk where it crosses, the prefix sums of that chunk's sum.
/// `vocab − 1` if it never crosses (`target` ≥ total).
#[inline(always)]
fn inverse_cdf(z: &[f32], max: f32, target: f32) -> usize {
    let mut acc = 0.0f32;
    for (c, chunk) in z.chunks(LANES).enumerate() {
        let weights = exp_shifted(chunk, max);
        let sum = chunk_sum(&weights);
        if acc + sum > target {
            let mut prefix = 0.0f32;
            for (i, &w) in weights[..chunk.len()].iter().enumerate() {
                prefix += w;
                if acc + prefix > target {
                    return c * LANES + i;
                }
            }
        }
        acc += sum;
    }
    z.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, 1.0, 2.0, -30.0];
        let rows = 20_000;
        let tiled: [f32; 4] = logits;
        let mut counts = [0usize; 4];
        let stream = RandomStream {
            seed: 11,
            step: 2,
            stream: 5,
        };
        let mut out = [0u32; 1];
        for r in 0..rows {
            let s = RandomStream {
                step: r as u32,
                ..stream
            };
            sample_categorical(&tiled, 4, s, &mut out).unwrap();
            counts[out[0] as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        for i in 0..3 {
            let expected = (logits[i] as f64).exp() / z;
            let got = counts[i] as f64 / rows as f64;
            assert!((got - expected).abs() < 0.015, "{i}: {got} vs {expected}");
        }
        assert_eq!(counts[3], 0);
        assert!(sample_categorical(&logits, 0, stream, &mut out).is_err());
    }
}
