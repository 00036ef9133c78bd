//! `Linear` products of weights converted once: `Y = X·Wᵀ` with `W` `[output, input]` packed
//! into a [`PackedWeight`] (f32, bf16 or int8) and `X` rounded at the product's input.
//!
//! **bf16.** The weight is stored as bfloat16 pairs along the inner dimension, in panels of
//! [`PANEL`] output columns (`panel · pairs · 16 + pair · 16 + lane`: one 512-bit vector per
//! pair), the operand layout of AVX-512 BF16's `vdpbf16ps`. Activations are rounded to bf16
//! (to nearest even) into the same pair format. Every output element is one f32 accumulator
//! over the pairs in order, adding the odd element's product, then the even one's, as
//! `vdpbf16ps` does; both products are exact in f32 (8-bit significands), so widening the
//! pairs to f32 in registers and adding in the same order (FMAs on AVX-512F, which outrun
//! `vdpbf16ps` on some CPUs: [`Bf16Instructions::Auto`] measures which; a portable loop below
//! AVX-512) gives the same numbers. Subnormal bf16 values are flushed to zero at conversion
//! (the instruction treats them as zero), so the paths agree bit for bit unless a product or
//! partial sum falls below 2⁻¹²⁶ (which `vdpbf16ps` flushes; the portable loop rounds such a
//! product).
//!
//! **f32.** The weight is stored in the same panels as f32 values (the inference sessions'
//! default on CPUs with FMA, so that gemm does not re-pack every weight on every call); each
//! output element is one accumulator over the inner dimension in order with one fused
//! multiply-add per term, on AVX-512F, AVX2 + FMA and the portable loop alike (the same bits
//! at every SIMD level).
//!
//! **int8.** The weight is quantised once per output channel (row of `W`) and each
//! activation row dynamically per row, both by the edge format's symmetric scheme
//! ([`quantize_row`]: `q = round(v·127 / max|v|)`); the weight is stored as four int8 values
//! per 32-bit word in the same panels, the operand layout of AVX-512 VNNI's `vpdpbusd`
//! (unsigned × signed bytes: activations are offset by 128 and `128·Σ w` is subtracted
//! after). Sums are exact in i32 on every path (`vpdpbusd`, or the portable loop compiled for
//! AVX2 and AVX-512F), and the output is `Σ q_x·q_w as f32 · (s_x · s_w)` as the edge runtime
//! computes it.
//!
//! The result of an element depends on nothing but its row and column, never on how rows are
//! split between threads.

use alloc::vec;
use alloc::vec::Vec;

use core::sync::atomic::{AtomicU8, Ordering};

use crate::Error;
use crate::edge::quant::quantize_row;
use crate::precision::Precision;
use crate::simd::multiversion;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
use super::amx;
use super::bf16_rows::{pack_rows, pair_rows};
use super::int8_rows::quantize_offset_rows;

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
    format: Format,
}

/// The stored numbers of a [`PackedWeight`]: `panels · groups · PANEL` words, a group being
/// two bf16 or four int8 values along the inner dimension (zero-padded columns and groups).
#[derive(Debug, Clone, PartialEq)]
enum Format {
    /// f32 values, one per word's place (`panel · input · 16 + k · 16 + lane`).
    F32(Vec<f32>),
    /// bf16 pairs.
    Bf16(Vec<u32>),
    /// int8 quads with one scale and the sum of the int8 values per output channel.
    Int8 {
        words: Vec<u32>,
        scales: Vec<f32>,
        sums: Vec<i32>,
    },
}

/// The bf16 bits of `v` rounded to nearest even; NaN stays NaN, subnormals become ±0.
/// (Selects rather than branches, so that packing a row vectorises.)
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let subnormal = b & 0x7f80_0000 == 0;
    let nan = b & 0x7fff_ffff > 0x7f80_0000;
    let r = if subnormal {
        (b >> 16) & 0x8000
    } else {
        rounded
    };
    if nan { (b >> 16) | 0x40 } else { r }
}

/// The pair `(lo, hi)` as one word: `lo` in the low half (the even element).
#[inline(always)]
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// `v` rounded to bf16 as [`linear_packed`] rounds its operands, back in f32 (for references
/// and tests).
pub fn round_bf16(v: f32) -> f32 {
    f32::from_bits(bf16_bits(v) << 16)
}

impl PackedWeight {
    /// Converts `w` (`[output, input]`, row-major) to `precision` (f32, bf16 or int8; f16 has
    /// no packed form: [`Error::Unsupported`]).
    pub fn new(
        w: &[f32],
        output: usize,
        input: usize,
        precision: Precision,
    ) -> Result<PackedWeight, Error> {
        let needed = check_weight(output, input, w.len())?;
        match precision.products() {
            Precision::Bf16 => {
                let mut words = vec![0u32; bf16_words_len(output, input)];
                let source = Bf16Source::Columns {
                    data: w,
                    base: 0,
                    stride: input,
                };
                source.fill_panels(&mut words, 0, output, input);
                Ok(PackedWeight::from_bf16_words(output, input, words))
            }
            Precision::Int8 => {
                let quads = input.div_ceil(4);
                let mut words = vec![0u32; output.div_ceil(PANEL) * quads * PANEL];
                let (mut scales, mut sums) = (vec![0.0; output], vec![0; output]);
                let mut q = vec![0i8; input];
                for (col, row) in w[..needed].chunks_exact(input.max(1)).enumerate() {
                    scales[col] = quantize_row(row, &mut q);
                    sums[col] = q.iter().map(|&v| i32::from(v)).sum();
                    let (panel, lane) = (col / PANEL, col % PANEL);
                    for (kq, four) in q.chunks(4).enumerate() {
                        let mut bytes = [0u8; 4];
                        for (b, &v) in bytes.iter_mut().zip(four) {
                            *b = v as u8;
                        }
                        words[(panel * quads + kq) * PANEL + lane] = u32::from_le_bytes(bytes);
                    }
                }
                Ok(PackedWeight {
                    output,
                    input,
                    format: Format::Int8 {
                        words,
                        scales,
                        sums,
                    },
                })
            }
            Precision::F32 => {
                let mut values = vec![0.0f32; output.div_ceil(PANEL) * input * PANEL];
                for (col, row) in w[..needed].chunks_exact(input.max(1)).enumerate() {
                    let (panel, lane) = (col / PANEL, col % PANEL);
                    let panel = &mut values[panel * input * PANEL..][..input * PANEL];
                    for (k, &v) in row.iter().enumerate() {
                        panel[k * PANEL + lane] = v;
                    }
                }
                Ok(PackedWeight {
                    output,
                    input,
                    format: Format::F32(values),
                })
            }
            _ => Err(Error::Unsupported {
                what: "packing a weight for f16 products",
            }),
        }
    }

    /// A bf16 weight of `output` columns, `input` deep, from `words` filled by
    /// [`Bf16Source::fill_panels`] (all of [`bf16_words_len`] words).
    pub(crate) fn from_bf16_words(output: usize, input: usize, words: Vec<u32>) -> PackedWeight {
        debug_assert_eq!(words.len(), bf16_words_len(output, input));
        PackedWeight {
            output,
            input,
            format: Format::Bf16(words),
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
        match self.format {
            Format::F32(_) => Precision::F32,
            Format::Bf16(_) => Precision::Bf16,
            Format::Int8 { .. } => Precision::Int8,
        }
    }
}

/// The operand contract of packing an `[output, input]` weight: `len` covers it; returns
/// its element count.
pub(crate) fn check_weight(output: usize, input: usize, len: usize) -> Result<usize, Error> {
    let needed = output.checked_mul(input).ok_or(Error::ShapeMismatch {
        what: "packed weight size",
        expected: usize::MAX,
        found: output,
    })?;
    super::require("pack_weight", "w", needed, len)?;
    Ok(needed)
}

/// Words of a bf16 weight of `output` columns, `input` deep: whole panels of pairs.
pub(crate) fn bf16_words_len(output: usize, input: usize) -> usize {
    output.div_ceil(PANEL) * input.div_ceil(2) * PANEL
}

/// Where the values of a bf16 operand of `output` columns, `input` deep come from; each
/// variant is read in its storage order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bf16Source<'a> {
    /// Column `j` stored contiguously at `base + j·stride` (a `Linear` weight, `[output,
    /// input]` row-major with `stride = input`; or a transposed operand such as `Kᵀ`).
    Columns {
        /// The values.
        data: &'a [f32],
        /// Index of element `(0, 0)`.
        base: usize,
        /// Distance between columns.
        stride: usize,
    },
    /// `input × output` stored row by row at `stride` from `base` (the backward products'
    /// `W` and `x`).
    Rows {
        /// The values.
        data: &'a [f32],
        /// Index of element `(0, 0)`.
        base: usize,
        /// Distance between rows.
        stride: usize,
    },
    /// Element `(k, j)` at `base + k·k_stride + j·j_stride`.
    Strided {
        /// The values.
        data: &'a [f32],
        /// Index of element `(0, 0)`.
        base: usize,
        /// Distance between consecutive `k`.
        k_stride: usize,
        /// Distance between consecutive columns.
        j_stride: usize,
    },
}

impl Bf16Source<'_> {
    /// Fills `words` (whole panels, starting at panel `first_panel`) with the source's
    /// columns as bf16 pairs: word `(panel · pairs + kk) · 16 + lane` holds column
    /// `panel · 16 + lane` at `2kk` (low half) and `2kk + 1` (high half); padding stays zero.
    pub(crate) fn fill_panels(
        &self,
        words: &mut [u32],
        first_panel: usize,
        output: usize,
        input: usize,
    ) {
        let pairs = input.div_ceil(2);
        if pairs == 0 {
            return;
        }
        for (p, panel_words) in words.chunks_exact_mut(pairs * PANEL).enumerate() {
            let col0 = (first_panel + p) * PANEL;
            let cols = output.saturating_sub(col0).min(PANEL);
            match *self {
                Bf16Source::Columns { data, base, stride } => {
                    // Each column converted as a row (vectorised), then transposed into the
                    // panel's lanes.
                    let mut converted = vec![0u32; cols * pairs];
                    for (lane, words) in converted.chunks_exact_mut(pairs).enumerate() {
                        let column = &data[base + (col0 + lane) * stride..][..input];
                        pack_rows(column, input, words);
                    }
                    for (kk, out) in panel_words.chunks_exact_mut(PANEL).enumerate() {
                        for (lane, w) in out.iter_mut().enumerate().take(cols) {
                            *w = converted[lane * pairs + kk];
                        }
                    }
                }
                Bf16Source::Rows { data, base, stride } => {
                    for (kk, out) in panel_words.chunks_exact_mut(PANEL).enumerate() {
                        let lo = &data[base + 2 * kk * stride + col0..][..cols];
                        let hi = (2 * kk + 1 < input)
                            .then(|| &data[base + (2 * kk + 1) * stride + col0..][..cols]);
                        pair_rows(lo, hi, &mut out[..cols]);
                    }
                }
                Bf16Source::Strided {
                    data,
                    base,
                    k_stride,
                    j_stride,
                } => {
                    let at = |k: usize, j: usize| {
                        if k < input {
                            data[base + k * k_stride + j * j_stride]
                        } else {
                            0.0
                        }
                    };
                    for (kk, out) in panel_words.chunks_exact_mut(PANEL).enumerate() {
                        for (lane, w) in out.iter_mut().enumerate().take(cols) {
                            *w = pair(at(2 * kk, col0 + lane), at(2 * kk + 1, col0 + lane));
                        }
                    }
                }
            }
        }
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
    match &w.format {
        Format::F32(values) => f32_tiles(w, values, x, rows, out),
        Format::Bf16(words) => {
            let pairs = w.input.div_ceil(2);
            let amx = amx_blocks(pairs);
            // The rows' activations as bf16 pairs, padded to whole micro-tiles (or AMX
            // blocks) with zero rows.
            let mut a = vec![0u32; padded_rows(rows, amx) * pairs];
            if w.input > 0 {
                pack_rows(x, w.input, &mut a[..rows * pairs]);
            }
            bf16_tiles(w, words, (&a, rows), amx, (out, false));
        }
        Format::Int8 {
            words,
            scales,
            sums,
        } => {
            let quads = w.input.div_ceil(4);
            let amx = amx_blocks(quads);
            // Each row quantised with its own scale, as unsigned bytes `q + 128`.
            let mut a = vec![0u32; padded_rows(rows, amx) * quads];
            let mut row_scales = vec![0.0f32; rows];
            if w.input > 0 {
                quantize_offset_rows(x, w.input, &mut a, &mut row_scales);
            }
            let store = |r: usize, c: usize, acc: &[i32]| {
                let out = &mut out[r * w.output + c..][..acc.len()];
                dequantize_sums(acc, &sums[c..], &scales[c..], row_scales[r], out);
            };
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            if amx {
                amx_int8(w, words, (&a, rows, quads), store);
                return;
            }
            let hardware = vnni_hardware();
            for_each_tile(
                w,
                words,
                (&a, rows, quads),
                |_, a_tile, b, np, tile: &mut [[i32; TILE_COLS]; TILE_ROWS]| {
                    if hardware {
                        #[cfg(all(feature = "std", target_arch = "x86_64"))]
                        // SAFETY: `vnni_hardware` checked AVX-512F and AVX-512 VNNI at run time.
                        unsafe {
                            match np {
                                1 => tile_avx512_vnni::<1>(a_tile, quads, b, tile),
                                2 => tile_avx512_vnni::<2>(a_tile, quads, b, tile),
                                3 => tile_avx512_vnni::<3>(a_tile, quads, b, tile),
                                _ => tile_avx512_vnni::<4>(a_tile, quads, b, tile),
                            }
                        }
                    } else {
                        tile_int32(a_tile, quads, b, np, tile);
                    }
                },
                store,
            );
        }
    }
}

/// The f32 product of `x` (`rows` rows of `w.input`) with an f32 weight: every output element
/// one accumulator over the inner dimension in order, one fused multiply-add per term, on
/// every kernel (so the bits depend neither on the SIMD level nor on the row split).
fn f32_tiles(w: &PackedWeight, values: &[f32], x: &[f32], rows: usize, out: &mut [f32]) {
    let input = w.input;
    // The rows as they are when they fill whole micro-tiles, else padded with zero rows.
    let padded;
    let a = if rows.is_multiple_of(TILE_ROWS) {
        &x[..rows * input]
    } else {
        let mut a = vec![0.0f32; rows.next_multiple_of(TILE_ROWS) * input];
        a[..rows * input].copy_from_slice(&x[..rows * input]);
        padded = a;
        &padded[..]
    };
    let kernel = f32_kernel();
    for_each_tile(
        w,
        values,
        (a, rows, input),
        |_, a_tile, b, np, tile: &mut [[f32; TILE_COLS]; TILE_ROWS]| match kernel {
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            // SAFETY: `f32_kernel` checked AVX-512F at run time.
            F32Kernel::Avx512 => unsafe {
                match np {
                    1 => tile_avx512_f32::<1>(a_tile, input, b, tile),
                    2 => tile_avx512_f32::<2>(a_tile, input, b, tile),
                    3 => tile_avx512_f32::<3>(a_tile, input, b, tile),
                    _ => tile_avx512_f32::<4>(a_tile, input, b, tile),
                }
            },
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            // SAFETY: `f32_kernel` checked AVX2 and FMA at run time.
            F32Kernel::Avx2 => unsafe { tile_avx2_f32(a_tile, input, b, np, tile) },
            _ => tile_f32_fused(a_tile, input, b, np, tile),
        },
        |r, c, values| out[r * w.output + c..][..values.len()].copy_from_slice(values),
    );
}

/// The micro-kernel of the f32 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(all(feature = "std", target_arch = "x86_64")),
    expect(dead_code, reason = "the AVX kernels exist on x86-64 with std only")
)]
enum F32Kernel {
    /// 512-bit FMAs, four panels at a time.
    Avx512,
    /// 256-bit FMAs, one panel at a time.
    Avx2,
    /// `f32::mul_add` per element.
    Fused,
}

/// The f32 kernel for this CPU and `DEBERTA_CPU_SIMD` cap.
fn f32_kernel() -> F32Kernel {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        use crate::simd::{SimdLevel, simd_level};
        match simd_level() {
            SimdLevel::Avx512 => return F32Kernel::Avx512,
            SimdLevel::Avx2 if std::is_x86_feature_detected!("fma") => return F32Kernel::Avx2,
            _ => {}
        }
    }
    F32Kernel::Fused
}

/// Whether this CPU multiplies packed f32 weights ([`PackedWeight::new`] at
/// [`Precision::F32`]) at full speed: x86-64 with FMA (AVX2 or AVX-512F). Elsewhere the
/// backends leave f32 weights unpacked for the general matmul.
pub fn f32_packing_pays() -> bool {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    {
        false
    }
}

/// `w·x + acc` with one rounding (hardware FMA where the target has it).
#[inline(always)]
fn fused_multiply_add(w: f32, x: f32, acc: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        w.mul_add(x, acc)
    }
    #[cfg(not(feature = "std"))]
    {
        libm::fmaf(w, x, acc)
    }
}

/// One f32 micro-tile, portable: one fused multiply-add per term, as the FMA kernels.
fn tile_f32_fused(
    a: &[f32],
    input: usize,
    b: &[f32],
    np: usize,
    tile: &mut [[f32; TILE_COLS]; TILE_ROWS],
) {
    for (r, out) in tile.iter_mut().enumerate() {
        let a_row = &a[r * input..][..input];
        for p in 0..np {
            let panel = &b[p * input * PANEL..][..input * PANEL];
            let mut acc = [0.0f32; PANEL];
            for (&x, lanes) in a_row.iter().zip(panel.chunks_exact(PANEL)) {
                for (acc, &w) in acc.iter_mut().zip(lanes) {
                    *acc = fused_multiply_add(w, x, *acc);
                }
            }
            out[p * PANEL..][..PANEL].copy_from_slice(&acc);
        }
    }
}

/// One f32 micro-tile (`TILE_ROWS` rows × `NP` panels) with AVX-512F FMAs: 24 accumulators at
/// most, the weights loaded once per inner index, the activations broadcast.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512_f32<const NP: usize>(
    a: &[f32],
    input: usize,
    b: &[f32],
    tile: &mut [[f32; TILE_COLS]; TILE_ROWS],
) {
    use core::arch::x86_64::*;
    assert!(a.len() >= TILE_ROWS * input && b.len() >= NP * input * PANEL);
    let mut acc = [[_mm512_setzero_ps(); NP]; TILE_ROWS];
    for k in 0..input {
        let mut w = [_mm512_setzero_ps(); NP];
        for (p, w) in w.iter_mut().enumerate() {
            // SAFETY: `(p·input + k)·16 + 16 ≤ NP·input·16 ≤ b.len()` (asserted above).
            *w = unsafe { _mm512_loadu_ps(b.as_ptr().add((p * input + k) * PANEL)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `r·input + k < TILE_ROWS·input ≤ a.len()` (asserted above).
            let x = _mm512_set1_ps(unsafe { *a.get_unchecked(r * input + k) });
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_fmadd_ps(w, x, *acc);
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

/// One f32 micro-tile with AVX2 FMAs, one panel (two 8-lane halves) at a time: 12
/// accumulators, so that they stay in the 16 registers.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_f32(
    a: &[f32],
    input: usize,
    b: &[f32],
    np: usize,
    tile: &mut [[f32; TILE_COLS]; TILE_ROWS],
) {
    use core::arch::x86_64::*;
    assert!(np <= TILE_PANELS && a.len() >= TILE_ROWS * input && b.len() >= np * input * PANEL);
    for p in 0..np {
        let mut acc = [[_mm256_setzero_ps(); 2]; TILE_ROWS];
        for k in 0..input {
            let at = (p * input + k) * PANEL;
            // SAFETY: `at + 16 ≤ np·input·16 ≤ b.len()` (asserted above).
            let w = unsafe {
                [
                    _mm256_loadu_ps(b.as_ptr().add(at)),
                    _mm256_loadu_ps(b.as_ptr().add(at + 8)),
                ]
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `r·input + k < TILE_ROWS·input ≤ a.len()` (asserted above).
                let x = _mm256_set1_ps(unsafe { *a.get_unchecked(r * input + k) });
                acc[0] = _mm256_fmadd_ps(w[0], x, acc[0]);
                acc[1] = _mm256_fmadd_ps(w[1], x, acc[1]);
            }
        }
        for (out, acc) in tile.iter_mut().zip(&acc) {
            // SAFETY: `p·16 + 16 ≤ np·16 ≤ TILE_COLS`: inside the row.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr().add(p * PANEL), acc[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(p * PANEL + 8), acc[1]);
            }
        }
    }
}

/// The bf16 product of activations already packed as pairs (`a`: `rows` rows of
/// `w.input.div_ceil(2)` words, padded with zero rows to whole micro-tiles, or to whole AMX
/// blocks when `amx`, which [`amx_blocks`] decided) into `out` (`rows × w.output`).
fn bf16_tiles(
    w: &PackedWeight,
    words: &[u32],
    (a, rows): (&[u32], usize),
    amx: bool,
    (out, accumulate): (&mut [f32], bool),
) {
    let pairs = w.input.div_ceil(2);
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    let _ = amx;
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if amx {
        amx_bf16(w, words, (a, rows, pairs), (out, accumulate));
        return;
    }
    let store = |r: usize, c: usize, values: &[f32]| {
        let out = &mut out[r * w.output + c..][..values.len()];
        if accumulate {
            out.iter_mut().zip(values).for_each(|(o, &v)| *o += v);
        } else {
            out.copy_from_slice(values);
        }
    };
    let kernel = bf16_kernel();
    // The FMA kernel broadcasts the activations as f32, odd element first.
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    let widened: Vec<f32> = match kernel {
        Bf16Kernel::Fma => widen_pairs(a),
        _ => Vec::new(),
    };
    for_each_tile(
        w,
        words,
        (a, rows, pairs),
        |#[cfg_attr(
            not(all(feature = "std", target_arch = "x86_64")),
            expect(unused_variables, reason = "only the FMA kernel reads the tile index")
        )]
         t,
         a_tile,
         b,
         np,
         tile: &mut [[f32; TILE_COLS]; TILE_ROWS]| match kernel {
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            // SAFETY: `bf16_kernel` checked AVX-512F and AVX-512 BF16 at run time.
            Bf16Kernel::Dpbf16 => unsafe {
                match np {
                    1 => tile_avx512_bf16::<1>(a_tile, pairs, b, tile),
                    2 => tile_avx512_bf16::<2>(a_tile, pairs, b, tile),
                    3 => tile_avx512_bf16::<3>(a_tile, pairs, b, tile),
                    _ => tile_avx512_bf16::<4>(a_tile, pairs, b, tile),
                }
            },
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            // SAFETY: `bf16_kernel` checked AVX-512F at run time.
            Bf16Kernel::Fma => unsafe {
                let a = &widened[2 * t * TILE_ROWS * pairs..][..2 * TILE_ROWS * pairs];
                match np {
                    1 => tile_avx512_fma::<1>(a, pairs, b, tile),
                    2 => tile_avx512_fma::<2>(a, pairs, b, tile),
                    3 => tile_avx512_fma::<3>(a, pairs, b, tile),
                    _ => tile_avx512_fma::<4>(a, pairs, b, tile),
                }
            },
            _ => tile_widened(a_tile, pairs, b, np, tile),
        },
        store,
    );
}

/// `out[rows, w.output] = A·Wᵀ` (or `+=` when `accumulate`) for a bf16 `w` and activations
/// `a` already packed as pairs ([`pair`]: `rows` rows of `w.input.div_ceil(2)` words; when
/// `a` holds [`bf16_padded_len`] words, its rows past `rows` are zero and serve as the
/// padding, else the rows are copied into a padded buffer).
pub(crate) fn bf16_product(
    a: &[u32],
    rows: usize,
    w: &PackedWeight,
    (out, accumulate): (&mut [f32], bool),
) -> Result<(), Error> {
    let Format::Bf16(words) = &w.format else {
        return Err(Error::Unsupported {
            what: "a bf16 product with a weight packed for another precision",
        });
    };
    let pairs = w.input.div_ceil(2);
    let amx = amx_blocks(pairs);
    let needed = padded_rows(rows, amx) * pairs;
    if a.len() >= needed {
        bf16_tiles(w, words, (&a[..needed], rows), amx, (out, accumulate));
    } else {
        let mut padded = vec![0u32; needed];
        padded[..rows * pairs].copy_from_slice(&a[..rows * pairs]);
        bf16_tiles(w, words, (&padded, rows), amx, (out, accumulate));
    }
    Ok(())
}

/// The words an operand of `rows` rows of `pairs` bf16 pairs takes in [`bf16_product`]
/// with its padding rows (zero): what lets the product use it without a padded copy.
pub(crate) fn bf16_padded_len(rows: usize, pairs: usize) -> usize {
    padded_rows(rows, amx_blocks(pairs)) * pairs
}

/// Whether a product whose rows hold `groups` words (pairs or quads) runs on AMX blocks:
/// AMX is [`available`](amx::available) and the inner dimension fills whole tile steps.
fn amx_blocks(groups: usize) -> bool {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        groups > 0 && groups.is_multiple_of(amx::GROUPS_PER_STEP) && amx::available()
    }
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    {
        let _ = groups;
        false
    }
}

/// The rows a piece of a product split between threads should be a multiple of: an AMX
/// block where AMX runs, else a micro-tile (any split gives the same results).
pub(crate) fn packed_piece_rows() -> usize {
    if amx_blocks(amx_step_groups()) {
        AMX_BLOCK
    } else {
        TILE_ROWS
    }
}

/// Groups of one AMX step (any positive value where there is no AMX).
fn amx_step_groups() -> usize {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        amx::GROUPS_PER_STEP
    }
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    {
        1
    }
}

/// Rows of the activation buffer: whole micro-tiles, or whole AMX blocks.
fn padded_rows(rows: usize, amx: bool) -> usize {
    rows.next_multiple_of(if amx { AMX_BLOCK } else { TILE_ROWS })
}

/// Rows of an AMX block.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
const AMX_BLOCK: usize = amx::BLOCK;
#[cfg(not(all(feature = "std", target_arch = "x86_64")))]
const AMX_BLOCK: usize = 32;

/// The panel pairs of a packed weight for AMX blocks: `(first column, columns, [b0, b1])`,
/// the second panel `zero_panel` past an odd last one.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn amx_panel_pairs<'w>(
    w: &PackedWeight,
    words: &'w [u32],
    groups: usize,
    zero_panel: &'w [u32],
) -> Vec<(usize, usize, [&'w [u32]; 2])> {
    let panels = w.output.div_ceil(PANEL);
    let panel_words = groups * PANEL;
    (0..panels)
        .step_by(2)
        .map(|pair| {
            let b0 = &words[pair * panel_words..][..panel_words];
            let b1 = if pair + 1 < panels {
                &words[(pair + 1) * panel_words..][..panel_words]
            } else {
                &zero_panel[..panel_words]
            };
            let col0 = pair * PANEL;
            (col0, (w.output - col0).min(2 * PANEL), [b0, b1])
        })
        .collect()
}

/// A zero panel of `groups` groups where the weight has an odd number of panels (the
/// partner of the last one in an AMX block), else nothing.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn zero_partner(w: &PackedWeight, groups: usize) -> Vec<u32> {
    if w.output.div_ceil(PANEL) % 2 == 1 {
        vec![0u32; groups * PANEL]
    } else {
        Vec::new()
    }
}

/// The bf16 product on AMX into `out` (`rows × w.output`; added to it when `accumulate`):
/// blocks of 32 rows of `a` (`pairs` words per row, padded to whole blocks) by two panels,
/// whole blocks stored straight into `out`, the edges through a scratch block.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn amx_bf16(
    w: &PackedWeight,
    words: &[u32],
    (a, rows, pairs): (&[u32], usize, usize),
    (out, accumulate): (&mut [f32], bool),
) {
    let steps = pairs / amx::GROUPS_PER_STEP;
    let zero_panel = zero_partner(w, pairs);
    let mut tiles = amx::Tiles::configure();
    let mut block = [[0u32; amx::BLOCK]; amx::BLOCK];
    let panel_pairs = amx_panel_pairs(w, words, pairs, &zero_panel);
    for first in (0..rows).step_by(amx::BLOCK) {
        let a_block = &a[first * pairs..][..amx::BLOCK * pairs];
        for &(col0, cols, b) in &panel_pairs {
            if cols == amx::BLOCK && first + amx::BLOCK <= rows {
                let out = &mut out[first * w.output + col0..];
                tiles.bf16_block_into((a_block, pairs), b, steps, (out, w.output, accumulate));
                continue;
            }
            tiles.block(amx::Dot::Bf16, (a_block, pairs), b, steps, &mut block);
            for (r, bits) in block.iter().enumerate().take(rows - first) {
                let out = &mut out[(first + r) * w.output + col0..][..cols];
                for (o, &bits) in out.iter_mut().zip(bits) {
                    let v = f32::from_bits(bits);
                    *o = if accumulate { *o + v } else { v };
                }
            }
        }
    }
}

/// The int8 product on AMX: blocks of 32 rows of `a` (`quads` words per row, padded to whole
/// blocks) by two panels, each valid row of a block handed to `store(row, first column,
/// sums)`.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn amx_int8(
    w: &PackedWeight,
    words: &[u32],
    (a, rows, quads): (&[u32], usize, usize),
    mut store: impl FnMut(usize, usize, &[i32]),
) {
    let steps = quads / amx::GROUPS_PER_STEP;
    let zero_panel = zero_partner(w, quads);
    let mut tiles = amx::Tiles::configure();
    let mut block = [[0i32; amx::BLOCK]; amx::BLOCK];
    let pairs = amx_panel_pairs(w, words, quads, &zero_panel);
    for first in (0..rows).step_by(amx::BLOCK) {
        let a_block = &a[first * quads..][..amx::BLOCK * quads];
        for &(col0, cols, b) in &pairs {
            tiles.block(amx::Dot::Int8, (a_block, quads), b, steps, &mut block);
            for (r, sums) in block.iter().enumerate().take(rows - first) {
                store(first + r, col0, &sums[..cols]);
            }
        }
    }
}

/// Runs `kernel(tile_index, a_tile, b_strip, panels, tile)` over every micro-tile of the product (strips
/// of up to [`TILE_PANELS`] panels, then tiles of [`TILE_ROWS`] rows of `a`, `groups` words per
/// row, padded past `rows` to whole tiles) and hands each valid row of the tile to
/// `store(row, first column, values)`.
fn for_each_tile<W, T: Copy + Default>(
    w: &PackedWeight,
    words: &[W],
    (a, rows, groups): (&[W], usize, usize),
    mut kernel: impl FnMut(usize, &[W], &[W], usize, &mut [[T; TILE_COLS]; TILE_ROWS]),
    mut store: impl FnMut(usize, usize, &[T]),
) {
    let panels = w.output.div_ceil(PANEL);
    let mut tile = [[T::default(); TILE_COLS]; TILE_ROWS];
    for strip in (0..panels).step_by(TILE_PANELS) {
        let np = (panels - strip).min(TILE_PANELS);
        let b = &words[strip * groups * PANEL..][..np * groups * PANEL];
        let (col0, cols) = (strip * PANEL, (w.output - strip * PANEL).min(TILE_COLS));
        for t in 0..rows.div_ceil(TILE_ROWS) {
            kernel(
                t,
                &a[t * TILE_ROWS * groups..][..TILE_ROWS * groups],
                b,
                np,
                &mut tile,
            );
            let first = t * TILE_ROWS;
            for (r, values) in tile.iter().enumerate().take(rows - first) {
                store(first + r, col0, &values[..cols]);
            }
        }
    }
}

multiversion! {
    /// One row's int8 outputs from its exact sums: `out[c] = (acc[c] − 128·Σw[c]) as f32 ·
    /// (row_scale · scale[c])` (wrapping i32 arithmetic; the offset of the unsigned
    /// activations removed), over `out.len()` columns.
    fn dequantize_sums(
        acc: &[i32],
        sums: &[i32],
        scales: &[f32],
        row_scale: f32,
        out: &mut [f32],
    ) {
        let columns = sums.iter().zip(scales);
        for ((o, &acc), (&sum, &scale)) in out.iter_mut().zip(acc).zip(columns) {
            let dot = acc.wrapping_sub(sum.wrapping_mul(128));
            *o = dot as f32 * (row_scale * scale);
        }
    }
}

multiversion! {
    /// bf16 pairs as f32, odd element first (the FMA kernel's activations).
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    fn widen_pairs(words: &[u32]) -> Vec<f32> {
        let mut out = vec![0.0f32; 2 * words.len()];
        for (two, &w) in out.chunks_exact_mut(2).zip(words) {
            two[0] = f32::from_bits(w & 0xffff_0000);
            two[1] = f32::from_bits(w << 16);
        }
        out
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

multiversion! {
    /// One int8 micro-tile without VNNI: the same exact i32 sums (unsigned activation byte ×
    /// signed weight byte), widened in registers.
    fn tile_int32(
        a: &[u32],
        quads: usize,
        b: &[u32],
        np: usize,
        tile: &mut [[i32; TILE_COLS]; TILE_ROWS],
    ) {
        for (r, out) in tile.iter_mut().enumerate() {
            let a_row = &a[r * quads..][..quads];
            for p in 0..np {
                let panel = &b[p * quads * PANEL..][..quads * PANEL];
                let mut acc = [0i32; PANEL];
                for (&word, lanes) in a_row.iter().zip(panel.chunks_exact(PANEL)) {
                    let x = word.to_le_bytes().map(i32::from);
                    for (acc, &w) in acc.iter_mut().zip(lanes) {
                        let w = w.to_le_bytes().map(|v| i32::from(v as i8));
                        *acc += x[0] * w[0] + x[1] * w[1] + x[2] * w[2] + x[3] * w[3];
                    }
                }
                out[p * PANEL..][..PANEL].copy_from_slice(&acc);
            }
        }
    }
}

/// Whether the int8 products run on `vpdpbusd` (AVX-512 VNNI, within the `DEBERTA_CPU_SIMD`
/// cap) rather than the portable integer loop.
pub fn vnni_hardware() -> bool {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        crate::simd::simd_level() == crate::simd::SimdLevel::Avx512
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    {
        false
    }
}

/// The kernel the products of packed weights at `precision` run on with this CPU,
/// `DEBERTA_CPU_SIMD` cap and `DEBERTA_CPU_AMX` choice: `avx512_f32`, `avx2_f32` or
/// `f32-fused` (f32, where [`f32_packing_pays`]; else `None`: sgemm), `amx_bf16`,
/// `avx512_bf16`, `avx512_fma` or `f32-widened` (bf16), `amx_int8`, `avx512_vnni` or
/// `int32-widened` (int8). AMX takes the
/// products whose inner width is a multiple of 32 (bf16) or 64 (int8); the others run on the
/// AVX-512 kernel named without it.
pub fn packed_kernel_name(precision: Precision) -> Option<&'static str> {
    let precision = precision.products();
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if amx::available() {
        match precision {
            Precision::Bf16 => return Some("amx_bf16"),
            Precision::Int8 => return Some("amx_int8"),
            _ => {}
        }
    }
    match precision {
        Precision::F32 if f32_packing_pays() => Some(match f32_kernel() {
            F32Kernel::Avx512 => "avx512_f32",
            F32Kernel::Avx2 => "avx2_f32",
            F32Kernel::Fused => "f32-fused",
        }),
        Precision::F32 => None,
        Precision::Bf16 => Some(match bf16_kernel() {
            Bf16Kernel::Dpbf16 => "avx512_bf16",
            Bf16Kernel::Fma => "avx512_fma",
            Bf16Kernel::Widened => "f32-widened",
        }),
        Precision::Int8 if vnni_hardware() => Some("avx512_vnni"),
        Precision::Int8 => Some("int32-widened"),
        Precision::Bf16Mixed | Precision::Mixed | Precision::F16 => None,
    }
}

/// One int8 micro-tile (`TILE_ROWS` rows × `NP` panels) on `vpdpbusd`.
///
/// # Safety
///
/// The CPU must support AVX-512F and AVX-512 VNNI.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile_avx512_vnni<const NP: usize>(
    a: &[u32],
    quads: usize,
    b: &[u32],
    tile: &mut [[i32; TILE_COLS]; TILE_ROWS],
) {
    use core::arch::x86_64::*;
    assert!(a.len() >= TILE_ROWS * quads && b.len() >= NP * quads * PANEL);
    let mut acc = [[_mm512_setzero_si512(); NP]; TILE_ROWS];
    for kq in 0..quads {
        let mut w = [_mm512_setzero_si512(); NP];
        for (p, w) in w.iter_mut().enumerate() {
            // SAFETY: `(p·quads + kq)·16 + 16 ≤ NP·quads·16 ≤ b.len()` (asserted above).
            *w = unsafe { _mm512_loadu_si512(b.as_ptr().add((p * quads + kq) * PANEL).cast()) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `r·quads + kq < TILE_ROWS·quads ≤ a.len()` (asserted above).
            let x = _mm512_set1_epi32(unsafe { *a.get_unchecked(r * quads + kq) } as i32);
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_dpbusd_epi32(*acc, x, w);
            }
        }
    }
    for (out, acc) in tile.iter_mut().zip(&acc) {
        for (p, &v) in acc.iter().enumerate() {
            // SAFETY: `p·16 + 16 ≤ NP·16 ≤ TILE_COLS`: inside the row.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(p * PANEL).cast(), v) };
        }
    }
}

/// Which instructions the bf16 products use at the AVX-512 level (`DEBERTA_CPU_BF16`); all
/// give the same sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Instructions {
    /// The pairs widened to f32 in registers and multiplied by `vfmadd231ps`.
    Fma = 0,
    /// AVX-512 BF16's `vdpbf16ps` where the CPU has it (else [`Bf16Instructions::Fma`]).
    Dpbf16 = 1,
    /// The faster of the two on this CPU, measured once per process on one micro-tile (the
    /// default). Neither wins everywhere: on a Sapphire Rapids-class Xeon two FMAs retire
    /// about three times as fast as one `vdpbf16ps` (FMAs 1.5× faster end to end), on an AMD
    /// EPYC (Zen 4) `vdpbf16ps` makes the bf16 forward xsmall 8×128 1.7× faster.
    Auto = 2,
}

static BF16_INSTRUCTIONS: AtomicU8 = AtomicU8::new(Bf16Instructions::Auto as u8);

/// Chooses the instructions of the bf16 products from now on.
pub fn set_bf16_instructions(instructions: Bf16Instructions) {
    BF16_INSTRUCTIONS.store(instructions as u8, Ordering::Relaxed);
}

/// The micro-kernel of the bf16 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(all(feature = "std", target_arch = "x86_64")),
    expect(
        dead_code,
        reason = "the AVX-512 kernels exist on x86-64 with std only"
    )
)]
enum Bf16Kernel {
    /// `vdpbf16ps` (AVX-512 BF16).
    Dpbf16,
    /// Pairs widened in registers, `vfmadd231ps` (AVX-512F).
    Fma,
    /// The portable loop, compiled per SIMD level.
    Widened,
}

/// The bf16 kernel for this CPU, `DEBERTA_CPU_SIMD` cap and [`set_bf16_instructions`] choice.
fn bf16_kernel() -> Bf16Kernel {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
        if !std::is_x86_feature_detected!("avx512bf16") {
            return Bf16Kernel::Fma;
        }
        let choice = BF16_INSTRUCTIONS.load(Ordering::Relaxed);
        let dpbf16 = if choice == Bf16Instructions::Auto as u8 {
            dpbf16_measured_faster()
        } else {
            choice == Bf16Instructions::Dpbf16 as u8
        };
        return if dpbf16 {
            Bf16Kernel::Dpbf16
        } else {
            Bf16Kernel::Fma
        };
    }
    Bf16Kernel::Widened
}

/// Whether `vdpbf16ps` computes a full-width micro-tile faster than the FMA kernel on this
/// CPU: measured once per process (a few milliseconds: both kernels in turn on the same
/// operands, the fastest of several rounds each, so that a busy neighbour slows both).
#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn dpbf16_measured_faster() -> bool {
    static FASTER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FASTER.get_or_init(|| {
        use std::time::{Duration, Instant};
        // One tile of an xsmall projection: 384 deep, four panels wide.
        const PAIRS: usize = 192;
        const CALLS: usize = 32;
        const ROUNDS: usize = 5;
        let a: Vec<u32> = (0..TILE_ROWS * PAIRS)
            .map(|i| pair(i as f32 * 0.01, 1.0 - i as f32 * 0.003))
            .collect();
        let b: Vec<u32> = (0..TILE_PANELS * PAIRS * PANEL)
            .map(|i| pair(0.5 - i as f32 * 0.001, i as f32 * 0.002))
            .collect();
        let widened = widen_pairs(&a);
        let mut tile = [[0.0f32; TILE_COLS]; TILE_ROWS];
        let (mut dpbf16, mut fma) = (Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for _ in 0..CALLS {
                // SAFETY: the caller, `bf16_kernel`, checked AVX-512F and AVX-512 BF16.
                unsafe { tile_avx512_bf16::<TILE_PANELS>(&a, PAIRS, &b, &mut tile) };
                core::hint::black_box(&mut tile);
            }
            dpbf16 = dpbf16.min(start.elapsed());
            let start = Instant::now();
            for _ in 0..CALLS {
                // SAFETY: as above (AVX-512F).
                unsafe { tile_avx512_fma::<TILE_PANELS>(&widened, PAIRS, &b, &mut tile) };
                core::hint::black_box(&mut tile);
            }
            fma = fma.min(start.elapsed());
        }
        dpbf16 < fma
    })
}

/// One micro-tile (`TILE_ROWS` rows × `NP` panels) with AVX-512F FMAs: the weight pairs
/// widened to f32 in registers, the activations (`a`: two f32 per pair, odd element first)
/// broadcast; the odd element's product is added first, as `vdpbf16ps` does, and since a
/// product of two bf16 values is exact in f32, each FMA rounds exactly as its addition does.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512_fma<const NP: usize>(
    a: &[f32],
    pairs: usize,
    b: &[u32],
    tile: &mut [[f32; TILE_COLS]; TILE_ROWS],
) {
    use core::arch::x86_64::*;
    assert!(a.len() >= 2 * TILE_ROWS * pairs && b.len() >= NP * pairs * PANEL);
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let mut acc = [[_mm512_setzero_ps(); NP]; TILE_ROWS];
    for kk in 0..pairs {
        let (mut odd, mut even) = ([_mm512_setzero_ps(); NP], [_mm512_setzero_ps(); NP]);
        for p in 0..NP {
            // SAFETY: `(p·pairs + kk)·16 + 16 ≤ NP·pairs·16 ≤ b.len()` (asserted above).
            let w = unsafe { _mm512_loadu_si512(b.as_ptr().add((p * pairs + kk) * PANEL).cast()) };
            odd[p] = _mm512_castsi512_ps(_mm512_and_si512(w, high));
            even[p] = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `2·(r·pairs + kk) + 1 < 2·TILE_ROWS·pairs ≤ a.len()` (asserted above).
            let (x_odd, x_even) = unsafe {
                let at = 2 * (r * pairs + kk);
                (*a.get_unchecked(at), *a.get_unchecked(at + 1))
            };
            let (x_odd, x_even) = (_mm512_set1_ps(x_odd), _mm512_set1_ps(x_even));
            for (p, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(odd[p], x_odd, *acc);
                *acc = _mm512_fmadd_ps(even[p], x_even, *acc);
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

    use crate::kernels::test_values::{knobs, uniform as fill};

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

    /// Whether this machine runs the AMX kernels (when allowed).
    fn amx_here() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            amx::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Allows or forbids AMX (where the target has it).
    fn allow_amx(allowed: bool) {
        #[cfg(target_arch = "x86_64")]
        amx::set_amx(allowed);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = allowed;
    }

    #[test]
    fn f32_products_are_ordered_fused_sums_on_every_kernel() {
        let _knobs = knobs();
        // Odd widths (partial panels and micro-tiles), a deep product, an empty inner width.
        for [rows, input, output] in [
            [1, 1, 1],
            [7, 33, 17],
            [13, 384, 100],
            [6, 1536, 70],
            [5, 0, 9],
        ] {
            let x = fill(rows * input, 3);
            let wt = fill(output * input, 4);
            let w = PackedWeight::new(&wt, output, input, Precision::F32).unwrap();
            assert_eq!(w.precision(), Precision::F32);
            // Each element: one fused multiply-add per inner index, in order.
            let mut expected = vec![0.0f32; rows * output];
            for r in 0..rows {
                for c in 0..output {
                    let (xr, wc) = (&x[r * input..][..input], &wt[c * input..][..input]);
                    expected[r * output + c] = xr
                        .iter()
                        .zip(wc)
                        .fold(0.0f32, |acc, (&x, &w)| w.mul_add(x, acc));
                }
            }
            for level in [
                None,
                Some(crate::simd::SimdLevel::Avx2),
                Some(crate::simd::SimdLevel::Baseline),
            ] {
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
        let _knobs = knobs();
        allow_amx(false);
        // Odd widths (padding of the pair and of the panels), partial micro-tiles.
        for [rows, input, output] in [[1, 1, 1], [7, 33, 17], [13, 384, 100], [6, 64, 64]] {
            let x = fill(rows * input, 1);
            let wt = fill(output * input, 2);
            let w = PackedWeight::new(&wt, output, input, Precision::Bf16).unwrap();
            let expected = reference(&x, &wt, rows, input, output);
            // Every kernel: vdpbf16ps, the FMAs and the measured choice at AVX-512 (the CPU
            // permitting), the portable loop at AVX2 and the baseline.
            let runs = [
                (None, Bf16Instructions::Dpbf16),
                (None, Bf16Instructions::Fma),
                (None, Bf16Instructions::Auto),
                (Some(crate::simd::SimdLevel::Avx2), Bf16Instructions::Fma),
                (
                    Some(crate::simd::SimdLevel::Baseline),
                    Bf16Instructions::Fma,
                ),
            ];
            for (level, instructions) in runs {
                crate::simd::set_max_simd_level(level);
                set_bf16_instructions(instructions);
                let mut out = vec![f32::NAN; rows * output];
                linear_packed(&x, &w, &mut out, rows).unwrap();
                crate::simd::set_max_simd_level(None);
                set_bf16_instructions(Bf16Instructions::Auto);
                for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{rows}x{input}x{output} at {level:?} {instructions:?}, element {i}: \
                         {a} vs {b}"
                    );
                }
            }
        }
        allow_amx(true);
    }

    /// Runs `linear_packed` on AMX (when this machine has it) over all rows at once and in
    /// pieces of `piece` rows (as threads split them), checks the two agree bit for bit, and
    /// returns the result.
    fn amx_product(x: &[f32], w: &PackedWeight, rows: usize, piece: usize) -> Vec<f32> {
        let (input, output) = (w.input(), w.output());
        let mut whole = vec![f32::NAN; rows * output];
        linear_packed(x, w, &mut whole, rows).unwrap();
        let mut split = vec![f32::NAN; rows * output];
        for (xs, out) in x
            .chunks(piece * input)
            .zip(split.chunks_mut(piece * output))
        {
            linear_packed(xs, w, out, out.len() / output).unwrap();
        }
        let same = whole
            .iter()
            .zip(&split)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "AMX results depend on the row split");
        whole
    }

    #[test]
    fn amx_bf16_products_are_deterministic_and_within_the_accumulation_bound() {
        let _knobs = knobs();
        if !amx_here() {
            std::eprintln!("no AMX on this machine: the AMX bf16 kernel is not exercised");
            return;
        }
        // Inner widths of whole 32-value steps; odd panel counts; partial blocks of rows.
        for [rows, input, output] in [[1, 32, 1], [45, 64, 40], [70, 384, 100], [32, 1536, 64]] {
            let x = fill(rows * input, 11);
            let wt = fill(output * input, 12);
            let w = PackedWeight::new(&wt, output, input, Precision::Bf16).unwrap();
            assert_eq!(packed_kernel_name(Precision::Bf16), Some("amx_bf16"));
            let out = amx_product(&x, &w, rows, 7);
            let ordered = reference(&x, &wt, rows, input, output);
            for r in 0..rows {
                for c in 0..output {
                    // The exact sum of the rounded products, and the f32 accumulation bound
                    // γ_k·Σ|products| that any summation order meets.
                    let (mut exact, mut magnitude) = (0.0f64, 0.0f64);
                    for k in 0..input {
                        let p = f64::from(round_bf16(x[r * input + k]))
                            * f64::from(round_bf16(wt[c * input + k]));
                        exact += p;
                        magnitude += p.abs();
                    }
                    let bound = magnitude * input as f64 * f64::from(f32::EPSILON) / 2.0;
                    let i = r * output + c;
                    let err = (f64::from(out[i]) - exact).abs();
                    assert!(
                        err <= bound,
                        "{rows}x{input}x{output} [{r},{c}]: {err} > {bound}"
                    );
                    let other = (f64::from(ordered[i]) - exact).abs();
                    assert!(other <= bound);
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

    /// The int8 product from the edge format's quantisation, in i64, element by element.
    fn int8_reference(x: &[f32], w: &[f32], rows: usize, input: usize, output: usize) -> Vec<f32> {
        let quantize = |v: &[f32]| {
            let mut q = vec![0i8; v.len()];
            let s = quantize_row(v, &mut q);
            (q, s)
        };
        let weights: Vec<_> = w.chunks_exact(input).map(quantize).collect();
        let mut out = vec![0.0f32; rows * output];
        for (r, row) in x.chunks_exact(input).enumerate() {
            let (qx, sx) = quantize(row);
            for (c, (qw, sw)) in weights.iter().enumerate() {
                let dot: i64 = qx
                    .iter()
                    .zip(qw)
                    .map(|(&a, &b)| i64::from(a) * i64::from(b))
                    .sum();
                out[r * output + c] = dot as i32 as f32 * (sx * sw);
            }
        }
        out
    }

    #[test]
    fn int8_products_match_the_edge_scheme_bit_for_bit_on_every_path() {
        let _knobs = knobs();
        // Odd widths (padding), partial tiles and blocks, inner widths of whole AMX steps.
        for [rows, input, output] in [[1, 1, 1], [7, 33, 17], [13, 384, 100], [70, 64, 64]] {
            let mut x = fill(rows * input, 5);
            // A row of zeros (scale 0) and one with a single large value.
            x[..input].fill(0.0);
            if rows > 1 {
                x[input] = 40.0;
            }
            let wt = fill(output * input, 6);
            let w = PackedWeight::new(&wt, output, input, Precision::Int8).unwrap();
            assert_eq!(w.precision(), Precision::Int8);
            let expected = int8_reference(&x, &wt, rows, input, output);
            // AMX (where this machine has it and the width allows), VNNI, the portable loop.
            let runs = [
                (None, true),
                (None, false),
                (Some(crate::simd::SimdLevel::Avx2), false),
                (Some(crate::simd::SimdLevel::Baseline), false),
            ];
            for (level, amx) in runs {
                crate::simd::set_max_simd_level(level);
                allow_amx(amx);
                let out = if amx && amx_here() {
                    amx_product(&x, &w, rows, 7)
                } else {
                    let mut out = vec![f32::NAN; rows * output];
                    linear_packed(&x, &w, &mut out, rows).unwrap();
                    out
                };
                crate::simd::set_max_simd_level(None);
                allow_amx(true);
                for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{rows}x{input}x{output} at {level:?}, AMX {amx}, element {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn int8_error_against_f32_is_within_the_quantisation_bound() {
        let (rows, input, output) = (9, 256, 40);
        let x = fill(rows * input, 7);
        let wt = fill(output * input, 8);
        let w = PackedWeight::new(&wt, output, input, Precision::Int8).unwrap();
        let mut out = vec![0.0; rows * output];
        linear_packed(&x, &w, &mut out, rows).unwrap();
        let max = |v: &[f32]| v.iter().fold(0.0f32, |m, &a| m.max(a.abs()));
        for r in 0..rows {
            let xr = &x[r * input..][..input];
            for c in 0..output {
                let wc = &wt[c * input..][..input];
                let exact: f64 = xr
                    .iter()
                    .zip(wc)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                // |x·w − x̂·ŵ| ≤ Σ |x|·|ŵ − w| + |x̂ − x|·|ŵ| with half a step of error each.
                let (sx, sw) = (f64::from(max(xr)) / 127.0, f64::from(max(wc)) / 127.0);
                let l1 = |v: &[f32]| v.iter().map(|&a| f64::from(a.abs())).sum::<f64>();
                let bound = 0.5 * sw * l1(xr) + 0.5 * sx * (l1(wc) + 0.5 * sw * input as f64);
                let err = (f64::from(out[r * output + c]) - exact).abs();
                assert!(err <= bound + 1e-6, "{err} > {bound}");
            }
        }
    }

    #[test]
    fn bad_operands_are_errors() {
        let w = PackedWeight::new(&[0.0; 6], 2, 3, Precision::Bf16).unwrap();
        assert!(linear_packed(&[0.0; 5], &w, &mut [0.0; 4], 2).is_err());
        assert!(linear_packed(&[0.0; 6], &w, &mut [0.0; 3], 2).is_err());
        assert!(PackedWeight::new(&[0.0; 5], 2, 3, Precision::Bf16).is_err());
        assert!(PackedWeight::new(&[0.0; 5], 2, 3, Precision::F32).is_err());
        // f16 has no packed form (wgpu converts the f32 weights in the product).
        assert!(PackedWeight::new(&[0.0; 6], 2, 3, Precision::F16).is_err());
    }
}
