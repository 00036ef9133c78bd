//! Sampling from categorical distributions given by logits, with counter-based uniforms.

use super::{product, require};
use crate::Error;
use crate::random::RandomStream;

/// For each row `r` of `logits` `[out.len(), vocab]`, draws `u = stream.uniform(r)` and writes
/// the smallest id whose cumulative `softmax` probability exceeds `u` (inverse transform
/// sampling at temperature 1; the scan runs in id order, so every backend that evaluates the
/// same function draws the same tokens).
pub fn sample_categorical(
    logits: &[f32],
    vocab: usize,
    stream: RandomStream,
    out: &mut [u32],
) -> Result<(), Error> {
    let rows = out.len();
    require(
        "sample_categorical",
        "logits",
        product("sample_categorical", &[rows, vocab])?,
        logits.len(),
    )?;
    if vocab == 0 {
        return Err(Error::EmptyInput {
            what: "the vocabulary to sample from",
        });
    }
    sample_categorical_rows(logits, vocab, stream, 0, out);
    Ok(())
}

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
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = z.iter().map(|&v| libm::expf(v - max)).sum();
        let target = stream.uniform(r as u64) * total;
        let mut acc = 0.0f32;
        let mut pick = vocab - 1;
        for (i, &v) in z.iter().enumerate() {
            acc += libm::expf(v - max);
            if acc > target {
                pick = i;
                break;
            }
        }
        *slot = pick as u32;
    }
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
