//! Inverted dropout with counter-based masks: element `i` is kept iff
//! `uniform(seed, step, stream, i) ≥ p`, so the backward pass (and any other backend)
//! regenerates the mask instead of storing it.

use crate::random::RandomStream;

/// `x[i] = keep(i) ? x[i]/(1−p) : 0` in place. The same call on a gradient is the backward
/// pass. `p = 0` leaves `x` untouched.
pub fn dropout(x: &mut [f32], p: f32, stream: RandomStream) {
    dropout_from(x, 0, p, stream);
}

/// [`dropout`] of the elements `first_index..` of a larger tensor, held in `x`.
pub(crate) fn dropout_from(x: &mut [f32], first_index: usize, p: f32, stream: RandomStream) {
    if p <= 0.0 {
        return;
    }
    let scale = 1.0 / (1.0 - p);
    for (i, v) in x.iter_mut().enumerate() {
        *v = if stream.uniform((first_index + i) as u64) >= p {
            *v * scale
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
