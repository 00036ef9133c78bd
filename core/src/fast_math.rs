//! Branch-free `exp` and `erf` for the softmax, loss and GELU kernels. Unlike calls into `libm`
//! they inline, so the loops around them vectorise. Accuracy (tested against `libm` below):
//! `exp` within 2 ulp over the whole f32 range, `erf` within 3e-7 absolute.

/// `e^x`: range reduction `x = n·ln2 + r` (`|r| ≤ ln2/2`, Cody–Waite split of ln2), a degree-6
/// polynomial for `e^r` (Cephes `expf`), and `2^n` built in the exponent bits. Inputs below
/// −87.3 give 0 (`e^x` is then subnormal or 0), above 88.7 infinity; NaN stays NaN.
#[inline(always)]
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

/// `erf(x)`: below |x| = 0.5 its Maclaurin series to x¹³ (truncation < 1e-9); above, Abramowitz &
/// Stegun 7.1.26, `1 − (a₁t + … + a₅t⁵)·e^{−x²}` with `t = 1/(1 + p·|x|)` (1.5e-7 in exact
/// arithmetic; what PyTorch's vectorised CPU `erf`, hence its exact GELU, evaluates everywhere),
/// odd-extended. Both are evaluated and one selected, so loops stay vectorisable. Within 3e-7
/// of libm's `erff`; NaN stays NaN.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    // 2/√π · (−1)ⁿ / (n!·(2n+1)), n = 0..6.
    const S: [f32; 7] = [
        core::f32::consts::FRAC_2_SQRT_PI,
        -0.376_126_4,
        0.112_837_92,
        -0.026_866_17,
        0.005_223_977_6,
        -0.000_854_832_7,
        0.000_120_553_33,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let tail = (1.0 - poly * exp(-a * a)).copysign(x);
    let x2 = x * x;
    let series = x
        * ((((((S[6] * x2 + S[5]) * x2 + S[4]) * x2 + S[3]) * x2 + S[2]) * x2 + S[1]) * x2 + S[0]);
    if a < 0.5 { series } else { tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_within_3e7_of_libm() {
        let (mut x, mut worst) = (-6.0f32, (0.0f32, 0.0f32));
        while x < 6.0 {
            let error = (erf(x) - libm::erff(x)).abs();
            if error > worst.0 {
                worst = (error, x);
            }
            x += 0.000_731;
        }
        assert!(
            worst.0 <= 3e-7,
            "worst |erf − libm| {} at {}",
            worst.0,
            worst.1
        );
        assert_eq!(erf(40.0), 1.0);
        assert_eq!(erf(-40.0), -1.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert!(erf(f32::NAN).is_nan());
    }

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
