//! Lower-precision storage: symmetric int8 quantisation with one scale per row, shared by the
//! exporter (weights and tables) and the runtime (activations in front of an int8 linear
//! layer), and IEEE f16 rounding for the exporter.

/// `v` rounded to the nearest IEEE binary16, little-endian.
pub fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Quantises `row` into `out` (same length) as `q = round(v / s)` with `s = max|v| / 127`, so
/// `q ∈ [−127, 127]` and `v ≈ q·s`; returns `s` (0 for an all-zero row, whose `q` are 0).
/// Ties round away from zero (as `roundf`).
#[inline(always)]
pub fn quantize_row(row: &[f32], out: &mut [i8]) -> f32 {
    // `m.max(|v|)` without the `fmaxf` call that `f32::max` becomes on Cortex-M: `m` starts at
    // 0 and only grows, so it is never NaN, and a NaN `|v|` leaves it as `max` would.
    let max = row.iter().fold(0.0f32, |m, &v| {
        let a = v.abs();
        if a > m { a } else { m }
    });
    if max == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let inverse = 127.0 / max;
    for (q, &v) in out.iter_mut().zip(row) {
        *q = round_small(v * inverse) as i8;
    }
    max / 127.0
}

/// `roundf(y)` (ties away from zero) for `|y| < 2²³`, as an integer, in operations that
/// vectorise: adding just under one half with `y`'s sign, then truncating (`as` truncates
/// toward zero and maps NaN to 0). `quantize_row` only rounds `|y| ≤ 127·(1 + 2⁻²²)`.
#[inline(always)]
pub(crate) fn round_small(y: f32) -> i32 {
    const JUST_UNDER_HALF: f32 = 0.5 - 0.25 * f32::EPSILON;
    (y + JUST_UNDER_HALF.copysign(y)) as i32
}

/// Quantises each `cols`-wide row of `x` into `out` and its scale into `scales`, for as many
/// rows as all three buffers hold.
pub fn quantize_rows(x: &[f32], cols: usize, out: &mut [i8], scales: &mut [f32]) {
    if cols == 0 {
        return;
    }
    for ((row, q), s) in x
        .chunks_exact(cols)
        .zip(out.chunks_exact_mut(cols))
        .zip(scales.iter_mut())
    {
        *s = quantize_row(row, q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `round_small` against `libm::roundf` on every f32 of magnitude ≤ 128 (about 2·10⁹
    /// values, both signs), so the quantisation rounds exactly as `roundf` would.
    #[test]
    fn rounding_equals_roundf_on_every_f32_up_to_128() {
        let limit = 128.0f32.to_bits();
        for bits in 0..=limit {
            for y in [f32::from_bits(bits), -f32::from_bits(bits)] {
                assert_eq!(round_small(y), libm::roundf(y) as i32, "{y:e}");
            }
        }
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let row = [0.5f32, -1.27, 0.003, 1.0, 0.0];
        let mut q = [0i8; 5];
        let s = quantize_row(&row, &mut q);
        assert_eq!(q[1], -127);
        for (&v, &qv) in row.iter().zip(&q) {
            assert!((v - f32::from(qv) * s).abs() <= 0.5 * s + 1e-7);
        }
        assert_eq!(quantize_row(&[0.0; 3], &mut q[..3]), 0.0);
        assert_eq!(&q[..3], &[0, 0, 0]);
        // A NaN is skipped by the maximum (as `f32::max` does) and quantises to 0.
        assert_eq!(
            quantize_row(&[f32::NAN, 2.0, -1.0], &mut q[..3]),
            2.0 / 127.0
        );
        assert_eq!(&q[..3], &[0, 127, -64]);
        let mut scales = [0.0f32; 2];
        let mut out = [0i8; 4];
        quantize_rows(&[1.0, -2.0, 0.0, 4.0], 2, &mut out, &mut scales);
        assert_eq!(out, [64, -127, 0, 127]);
        assert_eq!(scales, [2.0 / 127.0, 4.0 / 127.0]);
    }
}
