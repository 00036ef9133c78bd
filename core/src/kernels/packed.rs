//! `Linear` products at reduced precision: `Y = X·Wᵀ` with `W` `[output, input]` converted
//! once into a [`PackedWeight`] and `X` rounded at the product's input.
//!
//! **bf16.** The weight is stored as bfloat16 pairs along the inner dimension, in panels of
//! [`PANEL`] output columns (`panel · pairs · 16 + pair · 16 + lane`: one 512-bit vector per
//! pair), the operand layout of AVX-512 BF16's `vdpbf16ps`. Activations are rounded to bf16
//! (to nearest even) into the same pair format. Every output element is one f32 accumulator
//! over the pairs in order, adding the odd element's product, then the even one's, as
//! `vdpbf16ps` does; both products are exact in f32 (8-bit significands), so CPUs without
//! AVX-512 BF16 get the same numbers by widening the pairs to f32 in registers and adding in
//! the same order. Subnormal bf16 values are flushed to zero at conversion (the instruction
//! treats them as zero), so the two paths agree bit for bit unless a partial sum itself falls
//! below 2⁻¹²⁶ (which `vdpbf16ps` flushes). The result of an element depends on nothing but
//! its row and column, never on how rows are split between threads.

use alloc::vec;
use alloc::vec::Vec;

use crate::Error;
use crate::precision::Precision;
use crate::simd::multiversion;

/// Output columns per panel of a packed weight.
pub const PANEL: usize = 16;
/// Rows of one micro-tile.
const TILE_ROWS: usize = 6;
/// Panels of one micro-tile.
const TILE_PANELS: usize = 4;
/// Columns of one micro-tile.
const TILE_COLS: usize = TILE_PANELS * PANEL;

/// A `[output, input]` weight converted once for [`linear_packed`].
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeight {
    output: usize,
    input: usize,
    /// bf16 pairs: `panels · pairs · PANEL` words (zero-padded columns and inner element).
    bf16: Vec<u32>,
}

/// The bf16 bits of `v` rounded to nearest even; NaN stays NaN, subnormals become ±0.
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if v.is_nan() {
        (b >> 16) | 0x40
    } else if b & 0x7f80_0000 == 0 {
        (b >> 16) & 0x8000
    } else {
        b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
    }
}

/// The pair `(lo, hi)` as one word: `lo` in the low half (the even element).
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// `v` rounded to bf16 as [`linear_packed`] rounds its operands, back in f32 (for references
/// and tests).
pub fn round_bf16(v: f32) -> f32 {
    f32::from_bits(bf16_bits(v) << 16)
}

impl PackedWeight {
    /// Converts `w` (`[output, input]`, row-major) to `precision`; f32 has no packed form
    /// ([`Error::Unsupported`]).
    pub fn new(
        w: &[f32],
        output: usize,
        input: usize,
        precision: Precision,
    ) -> Result<PackedWeight, Error> {
        let needed = output.checked_mul(input).ok_or(Error::ShapeMismatch {
            what: "packed weight size",
            expected: usize::MAX,
            found: output,
        })?;
        super::require("pack_weight", "w", needed, w.len())?;
        match precision {
            Precision::F32 => Err(Error::Unsupported {
                what: "packing a weight for f32 products",
            }),
            Precision::Bf16 => {
                let pairs = input.div_ceil(2);
                let panels = output.div_ceil(PANEL);
                let mut bf16 = vec![0u32; panels * pairs * PANEL];
                for (col, row) in w[..needed].chunks_exact(input.max(1)).enumerate() {
                    let (panel, lane) = (col / PANEL, col % PANEL);
                    for (kk, two) in row.chunks(2).enumerate() {
                        let hi = two.get(1).copied().unwrap_or(0.0);
                        bf16[(panel * pairs + kk) * PANEL + lane] = pair(two[0], hi);
                    }
                }
                Ok(PackedWeight {
                    output,
                    input,
                    bf16,
                })
            }
        }
    }

    /// Output width (rows of the original weight).
    pub fn output(&self) -> usize {
        self.output
    }

    /// Input width (columns of the original weight).
    pub fn input(&self) -> usize {
        self.input
    }

    /// The number format.
    pub fn precision(&self) -> Precision {
        Precision::Bf16
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bf16.len() * 4
    }
}

/// The operand contract of [`linear_packed`] (and of every backend's
/// [`Backend::matmul_packed`](crate::Backend::matmul_packed)): `x` holds `rows × input`
/// elements and `out` `rows × output`.
pub fn check_linear_packed(
    w: &PackedWeight,
    rows: usize,
    x_len: usize,
    out_len: usize,
) -> Result<(), Error> {
    let x = rows.checked_mul(w.input);
    let out = rows.checked_mul(w.output);
    match (x, out) {
        (Some(x), Some(out)) => {
            super::require("matmul_packed", "x", x, x_len)?;
            super::require("matmul_packed", "out", out, out_len)
        }
        _ => Err(Error::ShapeMismatch {
            what: "matmul_packed rows",
            expected: usize::MAX,
            found: rows,
        }),
    }
}

/// `out[rows, output] = x[rows, input]·Wᵀ` (overwrites `out`).
pub fn linear_packed(
    x: &[f32],
    w: &PackedWeight,
    out: &mut [f32],
    rows: usize,
) -> Result<(), Error> {
    check_linear_packed(w, rows, x.len(), out.len())?;
    linear_packed_rows(&x[..rows * w.input], w, &mut out[..rows * w.output]);
    Ok(())
}

/// [`linear_packed`] over whole rows: `x` holds the rows' inputs, `out` their outputs
/// (lengths already checked to be multiples of `input` and `output` for the same rows).
pub(crate) fn linear_packed_rows(x: &[f32], w: &PackedWeight, out: &mut [f32]) {
    if w.output == 0 {
        return;
    }
    let rows = out.len() / w.output;
    let pairs = w.input.div_ceil(2);
    // The rows' activations as bf16 pairs, padded to whole micro-tiles with zero rows.
    let tiles = rows.div_ceil(TILE_ROWS);
    let mut a = vec![0u32; tiles * TILE_ROWS * pairs];
    if w.input > 0 {
        pack_rows(x, w.input, &mut a[..rows * pairs]);
    }
    let panels = w.output.div_ceil(PANEL);
    let hardware = bf16_hardware();
    let mut tile = [[0.0f32; TILE_COLS]; TILE_ROWS];
    for strip in (0..panels).step_by(TILE_PANELS) {
        let np = (panels - strip).min(TILE_PANELS);
        let b = &w.bf16[strip * pairs * PANEL..][..np * pairs * PANEL];
        let (col0, cols) = (strip * PANEL, (w.output - strip * PANEL).min(TILE_COLS));
        for t in 0..tiles {
            let a_tile = &a[t * TILE_ROWS * pairs..][..TILE_ROWS * pairs];
            if hardware {
                #[cfg(all(feature = "std", target_arch = "x86_64"))]
                // SAFETY: `bf16_hardware` checked AVX-512F and AVX-512 BF16 at run time.
                unsafe {
                    match np {
                        1 => tile_avx512_bf16::<1>(a_tile, pairs, b, &mut tile),
                        2 => tile_avx512_bf16::<2>(a_tile, pairs, b, &mut tile),
                        3 => tile_avx512_bf16::<3>(a_tile, pairs, b, &mut tile),
                        _ => tile_avx512_bf16::<4>(a_tile, pairs, b, &mut tile),
                    }
                }
            } else {
                tile_widened(a_tile, pairs, b, np, &mut tile);
            }
            let first = t * TILE_ROWS;
            for (r, values) in tile.iter().enumerate().take(rows.saturating_sub(first)) {
                out[(first + r) * w.output + col0..][..cols].copy_from_slice(&values[..cols]);
            }
        }
    }
}

multiversion! {
    /// `x`'s rows (`input` wide) as bf16 pairs into `out` (`pairs` words per row).
    fn pack_rows(x: &[f32], input: usize, out: &mut [u32]) {
        let pairs = input.div_ceil(2);
        for (row, words) in x.chunks_exact(input).zip(out.chunks_exact_mut(pairs)) {
            let (even, odd) = row.split_at(input - input % 2);
            for (word, two) in words.iter_mut().zip(even.chunks_exact(2)) {
                *word = pair(two[0], two[1]);
            }
            if let [last] = odd {
                words[pairs - 1] = pair(*last, 0.0);
            }
        }
    }
}

multiversion! {
    /// One micro-tile without bf16 instructions: the pairs widened to f32 in registers and
    /// added in `vdpbf16ps`'s order (odd element, then even).
    fn tile_widened(
        a: &[u32],
        pairs: usize,
        b: &[u32],
        np: usize,
        tile: &mut [[f32; TILE_COLS]; TILE_ROWS],
    ) {
        for (r, out) in tile.iter_mut().enumerate() {
            let a_row = &a[r * pairs..][..pairs];
            for p in 0..np {
                let panel = &b[p * pairs * PANEL..][..pairs * PANEL];
                let mut acc = [0.0f32; PANEL];
                for (&word, lanes) in a_row.iter().zip(panel.chunks_exact(PANEL)) {
                    let hi = f32::from_bits(word & 0xffff_0000);
                    let lo = f32::from_bits(word << 16);
                    for (acc, &w) in acc.iter_mut().zip(lanes) {
                        *acc += f32::from_bits(w & 0xffff_0000) * hi;
                        *acc += f32::from_bits(w << 16) * lo;
                    }
                }
                out[p * PANEL..][..PANEL].copy_from_slice(&acc);
            }
        }
    }
}

/// Whether the bf16 products run on `vdpbf16ps` (AVX-512 BF16, within the
/// `DEBERTA_CPU_SIMD` cap) rather than widened to f32.
pub fn bf16_hardware() -> bool {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        crate::simd::simd_level() == crate::simd::SimdLevel::Avx512
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    {
        false
    }
}

/// How the bf16 products run on this CPU: `avx512_bf16` or `f32-widened`.
pub fn bf16_kernel_name() -> &'static str {
    if bf16_hardware() {
        "avx512_bf16"
    } else {
        "f32-widened"
    }
}

/// One micro-tile (`TILE_ROWS` rows × `NP` panels) on `vdpbf16ps`: 24 accumulators at most.
///
/// # Safety
///
/// The CPU must support AVX-512F and AVX-512 BF16.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_avx512_bf16<const NP: usize>(
    a: &[u32],
    pairs: usize,
    b: &[u32],
    tile: &mut [[f32; TILE_COLS]; TILE_ROWS],
) {
    use core::arch::x86_64::*;
    assert!(a.len() >= TILE_ROWS * pairs && b.len() >= NP * pairs * PANEL);
    let mut acc = [[_mm512_setzero_ps(); NP]; TILE_ROWS];
    for kk in 0..pairs {
        let mut w = [_mm512_setzero_si512(); NP];
        for (p, w) in w.iter_mut().enumerate() {
            // SAFETY: `(p·pairs + kk)·16 + 16 ≤ NP·pairs·16 ≤ b.len()` (asserted above).
            *w = unsafe { _mm512_loadu_si512(b.as_ptr().add((p * pairs + kk) * PANEL).cast()) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `r·pairs + kk < TILE_ROWS·pairs ≤ a.len()` (asserted above).
            let x = _mm512_set1_epi32(unsafe { *a.get_unchecked(r * pairs + kk) } as i32);
            for (acc, &w) in acc.iter_mut().zip(&w) {
                // SAFETY: `__m512i` and `__m512bh` are both 512-bit vectors; the words hold
                // bf16 pairs, the lane format `vdpbf16ps` reads.
                let (w, x) = unsafe {
                    (
                        core::mem::transmute::<__m512i, __m512bh>(w),
                        core::mem::transmute::<__m512i, __m512bh>(x),
                    )
                };
                *acc = _mm512_dpbf16_ps(*acc, w, x);
            }
        }
    }
    for (out, acc) in tile.iter_mut().zip(&acc) {
        for (p, &v) in acc.iter().enumerate() {
            // SAFETY: `p·16 + 16 ≤ NP·16 ≤ TILE_COLS`: inside the row.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(p * PANEL), v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The same products in the same order, element by element, from the rounded values.
    fn reference(x: &[f32], w: &[f32], rows: usize, input: usize, output: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; rows * output];
        for r in 0..rows {
            for c in 0..output {
                let mut acc = 0.0f32;
                for kk in 0..input.div_ceil(2) {
                    let at = |v: &[f32], i: usize| {
                        if i < input { round_bf16(v[i]) } else { 0.0 }
                    };
                    let (xr, wc) = (&x[r * input..], &w[c * input..]);
                    acc += at(xr, 2 * kk + 1) * at(wc, 2 * kk + 1);
                    acc += at(xr, 2 * kk) * at(wc, 2 * kk);
                }
                out[r * output + c] = acc;
            }
        }
        out
    }

    #[test]
    fn rounding_is_to_nearest_even_and_flushes_subnormals() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties to even (1).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round_bf16(-3.0e-39), 0.0);
        assert!(round_bf16(-3.0e-39).is_sign_negative());
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn products_match_the_ordered_reference_bit_for_bit_on_every_path() {
        // Odd widths (padding of the pair and of the panels), partial micro-tiles.
        for [rows, input, output] in [[1, 1, 1], [7, 33, 17], [13, 384, 100], [6, 64, 64]] {
            let x = fill(rows * input, 1);
            let wt = fill(output * input, 2);
            let w = PackedWeight::new(&wt, output, input, Precision::Bf16).unwrap();
            let expected = reference(&x, &wt, rows, input, output);
            let levels = [
                None,
                Some(crate::simd::SimdLevel::Avx2),
                Some(crate::simd::SimdLevel::Baseline),
            ];
            for level in levels {
                crate::simd::set_max_simd_level(level);
                let mut out = vec![f32::NAN; rows * output];
                linear_packed(&x, &w, &mut out, rows).unwrap();
                crate::simd::set_max_simd_level(None);
                for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{rows}x{input}x{output} at {level:?}, element {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_error_against_f32_is_within_the_rounding_bound() {
        let (rows, input, output) = (9, 256, 40);
        let x = fill(rows * input, 3);
        let wt = fill(output * input, 4);
        let w = PackedWeight::new(&wt, output, input, Precision::Bf16).unwrap();
        let mut out = vec![0.0; rows * output];
        linear_packed(&x, &w, &mut out, rows).unwrap();
        for r in 0..rows {
            for c in 0..output {
                let (mut exact, mut bound) = (0.0f64, 0.0f64);
                for k in 0..input {
                    let p = f64::from(x[r * input + k]) * f64::from(wt[c * input + k]);
                    exact += p;
                    bound += p.abs();
                }
                // Two roundings of relative size 2⁻⁹ per product, plus f32 accumulation.
                let err = (f64::from(out[r * output + c]) - exact).abs();
                assert!(err <= bound * (2.0 / 512.0 + 1e-5), "{err} > bound {bound}");
            }
        }
    }

    #[test]
    fn bad_operands_are_errors() {
        let w = PackedWeight::new(&[0.0; 6], 2, 3, Precision::Bf16).unwrap();
        assert!(linear_packed(&[0.0; 5], &w, &mut [0.0; 4], 2).is_err());
        assert!(linear_packed(&[0.0; 6], &w, &mut [0.0; 3], 2).is_err());
        assert!(PackedWeight::new(&[0.0; 5], 2, 3, Precision::Bf16).is_err());
        assert!(PackedWeight::new(&[0.0; 6], 2, 3, Precision::F32).is_err());
    }
}
