//! The probe of a driver's f32 → f16 conversion, run once when a device with `SHADER_F16` opens.
//! SPIR-V leaves the rounding mode of a conversion to the driver (Mesa 26's lavapipe truncates,
//! NVIDIA's and Mesa 22's round to nearest even), and mixed precision needs round to nearest
//! even with overflow to infinity, which the loss scaler watches for. Where the driver does
//! exactly that on every probe value, the f16 matmuls convert with it alone; elsewhere they
//! round each operand themselves first (`f16_round.wgsl`), which costs about ten integer
//! operations per staged operand.

use deberta_core::Error;

use crate::device::Gpu;
use crate::kernels::{ELEMENTWISE_WG, Kernel};
use crate::params::F16ProbeParams;

/// `(value, its binary16 rounding to nearest, ties to even)`: ties in both directions and at
/// both signs (which tell nearest-even from truncation and from rounding up or down), values
/// just past a tie, the largest finite value and the overflows beyond it. No subnormals: a
/// driver may flush binary16 subnormals to zero (Vulkan allows it), which the kernels' rounding
/// could not undo (their exactly rounded subnormal would be flushed as it is converted), so
/// such a driver keeps the conversion of its own.
const PROBES: [(f32, f32); 13] = [
    // 1 + 2⁻¹¹: halfway between 1 and 1 + 2⁻¹⁰; even is 1.
    (1.000_488_3, 1.0),
    (-1.000_488_3, -1.0),
    // 1 + 3·2⁻¹¹: halfway between 1 + 2⁻¹⁰ and 1 + 2⁻⁹; even is 1 + 2⁻⁹.
    (1.001_464_8, 1.001_953_1),
    (-1.001_464_8, -1.001_953_1),
    // 1 + 2⁻¹¹ + 2⁻²⁰: past the first tie, so up (truncation gives 1).
    (1.000_489_2, 1.000_976_6),
    (-1.000_489_2, -1.000_976_6),
    // 1 + 2⁻¹⁰ − 2⁻²⁰: below 1 + 2⁻¹⁰ by less than half a step, so up (truncation gives 1).
    (1.000_975_6, 1.000_976_6),
    // 65504 + 15: under the halfway point 65520, so the largest finite binary16.
    (65519.0, 65504.0),
    // 65520: halfway to 65536, ties to even: 2¹⁶, beyond binary16, so infinity.
    (65520.0, f32::INFINITY),
    (1.0e5, f32::INFINITY),
    (-1.0e5, f32::NEG_INFINITY),
    // Exact values stay.
    (0.5, 0.5),
    (-2048.0, -2048.0),
];

impl Gpu {
    /// Whether this device's f32 → f16 conversion gives every [`PROBES`] value its rounding to
    /// nearest even (run on the `f16_probe` kernel; the device must have `SHADER_F16`).
    pub(crate) fn conversion_rounds_to_nearest_even(&self) -> Result<bool, Error> {
        let inputs: Vec<f32> = PROBES.iter().map(|&(value, _)| value).collect();
        let bytes = (4 * inputs.len()) as u64;
        let input = self.pool.take(bytes)?;
        let output = self.pool.take(bytes)?;
        self.write_bytes(&input, 0, bytemuck::cast_slice(&inputs))?;
        let params = F16ProbeParams {
            n: inputs.len() as u32,
            ..F16ProbeParams::default()
        };
        let groups = (inputs.len() as u32).div_ceil(ELEMENTWISE_WG);
        self.dispatch(
            Kernel::F16Probe,
            &params,
            &[&output, &input],
            [groups, 1, 1],
        )?;
        let mut found = vec![0.0f32; inputs.len()];
        self.read_bytes(&output, bytemuck::cast_slice_mut(&mut found))?;
        // Dropped rather than kept for reuse: a device starts with an empty pool.
        self.pool.give(input);
        self.pool.give(output);
        self.pool.trim();
        self.readback.trim();
        Ok(PROBES
            .iter()
            .zip(&found)
            .all(|(&(_, expected), &converted)| converted.to_bits() == expected.to_bits()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is right: each expected value is the input's binary16 rounding to nearest
    /// even, as the `half` crate computes it, and each input is what its comment says.
    #[test]
    fn every_probe_expects_the_rounding_to_nearest_even() {
        for (value, expected) in PROBES {
            let rounded = half::f16::from_f32(value).to_f32();
            assert_eq!(rounded.to_bits(), expected.to_bits(), "{value:e}");
        }
        let (one, step) = (1.0f32, 2.0f32.powi(-11));
        assert_eq!(PROBES[0].0, one + step);
        assert_eq!(PROBES[2].0, one + 3.0 * step);
        assert_eq!(PROBES[4].0, one + step + 2.0f32.powi(-20));
        assert_eq!(PROBES[6].0, one + 2.0 * step - 2.0f32.powi(-20));
        // Normal binary16 values throughout (2⁻¹⁴ and up), or zero.
        assert!(PROBES.iter().all(
            |&(v, e)| v.abs() >= 2.0f32.powi(-14) && (e == 0.0 || e.abs() >= 2.0f32.powi(-14))
        ));
        // Truncation would differ from the expected rounding somewhere.
        assert!(
            PROBES
                .iter()
                .any(|&(value, expected)| truncated(value).to_bits() != expected.to_bits())
        );
    }

    /// `value` rounded to binary16 toward zero (normal range): the truncating driver's answer.
    fn truncated(value: f32) -> f32 {
        f32::from_bits(value.to_bits() & 0xffff_e000)
    }
}
