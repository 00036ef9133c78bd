//! Inverted dropout with counter-based masks: element `i` is kept iff
//! `uniform(seed, step, stream, i) ≥ p`, so the backward pass (and any other backend)
//! regenerates the mask instead of storing it.

use crate::random::{RandomStream, uniform_from_bits};
use crate::simd::multiversion;

/// `x[i] = keep(i) ? x[i]/(1−p) : 0` in place. The same call on a gradient is the backward
/// pass. `p = 0` leaves `x` untouched.
pub fn dropout(x: &mut [f32], p: f32, stream: RandomStream) {
    dropout_from(x, 0, p, stream);
}

multiversion! {
    /// [`dropout`] of the elements `first_index..` of a larger tensor, held in `x`.
    pub(crate) fn dropout_from(x: &mut [f32], first_index: usize, p: f32, stream: RandomStream) {
        if p <= 0.0 {
            return;
        }
        let scale = 1.0 / (1.0 - p);
        // One Philox block gives the words of four consecutive indices: a possibly partial first
        // block up to a multiple of 4, then whole blocks.
        let lead = ((4 - first_index % 4) % 4).min(x.len());
        let (head, rest) = x.split_at_mut(lead);
        let keep = |v: &mut f32, bits: u32| {
            *v = if uniform_from_bits(bits) >= p {
                *v * scale
            } else {
                0.0
            };
        };
        if lead > 0 {
            let words = stream.block((first_index / 4) as u64);
            for (v, &bits) in head.iter_mut().zip(&words[first_index % 4..]) {
                keep(v, bits);
            }
        }
        // Whole groups of BLOCKS blocks at a time (vectorised Philox), then the rest one by one.
        const BLOCKS: usize = 16;
        let first_block = ((first_index + lead) / 4) as u64;
        let mut groups = rest.chunks_exact_mut(4 * BLOCKS);
        let mut block = first_block;
        for group in &mut groups {
            let words = stream.blocks::<BLOCKS>(block);
            for (v, &bits) in group.iter_mut().zip(words.as_flattened()) {
                keep(v, bits);
            }
            block += BLOCKS as u64;
        }
        for chunk in groups.into_remainder().chunks_mut(4) {
            let words = stream.block(block);
            for (v, &bits) in chunk.iter_mut().zip(&words) {
                keep(v, bits);
            }
            block += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_range_keeps_exactly_the_elements_of_its_indices() {
        let stream = RandomStream {
            seed: 5,
            step: 1,
            stream: 2,
        };
        for first in 0..9 {
            for len in [0, 1, 3, 4, 5, 13, 64, 67, 70, 131, 200] {
                let mut x = [1.0f32; 200];
                dropout_from(&mut x[..len], first, 0.5, stream);
                for (i, &v) in x[..len].iter().enumerate() {
                    let kept = stream.uniform((first + i) as u64) >= 0.5;
                    assert_eq!(
                        v,
                        if kept { 2.0 } else { 0.0 },
                        "first {first}, element {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn keeps_the_expected_fraction_and_is_reproducible() {
        let stream = RandomStream {
            seed: 3,
            step: 9,
            stream: 4,
        };
        let mut a = [1.0f32; 10_000];
        dropout(&mut a, 0.1, stream);
        let kept = a.iter().filter(|&&v| v != 0.0).count();
        assert!((8_800..9_200).contains(&kept), "{kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let mut b = [1.0f32; 10_000];
        dropout(&mut b, 0.1, stream);
        assert_eq!(a, b);
        let mut c = [2.0f32; 4];
        dropout(&mut c, 0.0, stream);
        assert_eq!(c, [2.0; 4]);
    }
}
