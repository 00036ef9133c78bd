//! Rows of f32 values converted to the bf16 pairs of the packed products ([`pair`]: the
//! even element in the low half of a word, the odd one in the high half), rounded to nearest
//! even with NaN kept and subnormals flushed to ±0 ([`pair`]'s rule, which is also what
//! `vcvtne2ps2bf16` computes). With AVX-512 BF16 the conversions run on that instruction,
//! 32 values at a time; elsewhere on the portable loop compiled per SIMD level. Both give the
//! same bits.

use super::packed::pair;
use crate::simd::multiversion;

/// `x`'s rows (`input` wide, `input > 0`) as bf16 pairs into `out` (`input.div_ceil(2)`
/// words per row).
pub(crate) fn pack_rows(x: &[f32], input: usize, out: &mut [u32]) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if hardware() {
        let pairs = input.div_ceil(2);
        for (row, words) in x.chunks_exact(input).zip(out.chunks_exact_mut(pairs)) {
            // SAFETY: `hardware` checked AVX-512F and AVX-512 BF16 at run time.
            unsafe { pack_row_avx512_bf16(row, words) };
        }
        return;
    }
    pack_rows_portable(x, input, out);
}

/// `out[i] = pair(lo[i], hi[i])` (`hi` zero where absent) over `out.len()` words: two rows
/// of values as the bf16 pairs of one step along the inner dimension.
pub(crate) fn pair_rows(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if hardware() {
        // SAFETY: `hardware` checked AVX-512F and AVX-512 BF16 at run time.
        unsafe { pair_rows_avx512_bf16(lo, hi, out) };
        return;
    }
    pair_rows_portable(lo, hi, out);
}

/// Whether the conversions run on `vcvtne2ps2bf16`: AVX-512 (not capped by
/// `DEBERTA_CPU_SIMD`) with AVX-512 BF16.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn hardware() -> bool {
    crate::simd::simd_level() == crate::simd::SimdLevel::Avx512
        && std::is_x86_feature_detected!("avx512bf16")
}

multiversion! {
    /// [`pack_rows`] without bf16 instructions.
    fn pack_rows_portable(x: &[f32], input: usize, out: &mut [u32]) {
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
    /// [`pair_rows`] without bf16 instructions.
    fn pair_rows_portable(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
        match hi {
            Some(hi) => {
                for ((w, &lo), &hi) in out.iter_mut().zip(lo).zip(hi) {
                    *w = pair(lo, hi);
                }
            }
            None => {
                for (w, &lo) in out.iter_mut().zip(lo) {
                    *w = pair(lo, 0.0);
                }
            }
        }
    }
}

/// One row of [`pack_rows`] (`row.len().div_ceil(2) == words.len()`): 32 values per
/// `vcvtne2ps2bf16`, the tail through [`pair`].
///
/// # Safety
///
/// The CPU must support AVX-512F and AVX-512 BF16.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_row_avx512_bf16(row: &[f32], words: &mut [u32]) {
    use core::arch::x86_64::*;
    assert_eq!(row.len().div_ceil(2), words.len());
    let blocks = row.len() / 32;
    for i in 0..blocks {
        // SAFETY: `32·i + 32 ≤ row.len()` and `16·i + 16 ≤ words.len()`.
        unsafe {
            let lo = _mm512_loadu_ps(row.as_ptr().add(32 * i));
            let hi = _mm512_loadu_ps(row.as_ptr().add(32 * i + 16));
            // `hi`'s values go to the upper half, `lo`'s to the lower: memory order.
            let v: __m512i = core::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(words.as_mut_ptr().add(16 * i).cast(), v);
        }
    }
    let rest = &row[32 * blocks..];
    for (kk, word) in words[16 * blocks..].iter_mut().enumerate() {
        *word = pair(rest[2 * kk], rest.get(2 * kk + 1).copied().unwrap_or(0.0));
    }
}

/// [`pair_rows`] on `vcvtneps2bf16`: 16 words per step, the tail through [`pair`].
///
/// # Safety
///
/// The CPU must support AVX-512F and AVX-512 BF16.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pair_rows_avx512_bf16(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    use core::arch::x86_64::*;
    let n = out.len();
    assert!(lo.len() >= n && hi.is_none_or(|h| h.len() >= n));
    let widen = |v: __m256bh| -> __m512i {
        // SAFETY: `__m256bh` and `__m256i` are both 256-bit vectors.
        _mm512_cvtepu16_epi32(unsafe { core::mem::transmute::<__m256bh, __m256i>(v) })
    };
    let blocks = n / 16;
    for i in 0..blocks {
        // SAFETY: `16·i + 16 ≤ n`, inside `out`, `lo` and `hi` (asserted).
        unsafe {
            let low = widen(_mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(16 * i))));
            let words = match hi {
                Some(hi) => {
                    let high = widen(_mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr().add(16 * i))));
                    _mm512_or_si512(low, _mm512_slli_epi32::<16>(high))
                }
                None => low,
            };
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * i).cast(), words);
        }
    }
    for j in 16 * blocks..n {
        out[j] = pair(lo[j], hi.map_or(0.0, |h| h[j]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that exercise every rule: ties to even in both directions, NaN (quiet and
    /// signalling), infinities, subnormals of both signs, the largest finite values (which
    /// round to infinity) and ordinary numbers.
    fn awkward_values() -> alloc::vec::Vec<f32> {
        let bits = [
            0x3f80_8000u32, // tie, rounds down to even
            0x3f81_8000,    // tie, rounds up to even
            0x3f80_7fff,
            0x3f80_8001,
            0x7fc0_0001, // quiet NaN with payload
            0x7f80_0001, // signalling NaN
            0xff80_0000, // -inf
            0x7f80_0000, // +inf
            0x0000_0001, // smallest subnormal
            0x8040_0000, // negative subnormal
            0x007f_ffff, // largest subnormal
            0x0080_0000, // smallest normal
            0x7f7f_ffff, // largest finite: rounds to +inf
            0xff7f_ffff,
            0x0000_0000,
            0x8000_0000,
        ];
        let mut values: alloc::vec::Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        values.extend((0..77).map(|i| (i as f32 * 0.731).sin() * 10f32.powi(i % 9 - 4)));
        values
    }

    /// Both conversions give [`pair`]'s bits, whatever the path, for every tail length.
    #[test]
    fn conversions_follow_the_pair_rule_on_every_path() {
        let values = awkward_values();
        for len in [1, 2, 15, 16, 17, 31, 32, 33, 64, values.len()] {
            let x = &values[..len];
            let pairs = len.div_ceil(2);
            let mut words = alloc::vec![0u32; pairs];
            pack_rows(x, len, &mut words);
            for (kk, &w) in words.iter().enumerate() {
                let expected = pair(x[2 * kk], x.get(2 * kk + 1).copied().unwrap_or(0.0));
                assert_eq!(w, expected, "pack_rows, len {len}, word {kk}");
            }
            let (lo, hi) = (x, &values[values.len() - len..]);
            for hi in [Some(hi), None] {
                let mut words = alloc::vec![0u32; len];
                pair_rows(lo, hi, &mut words);
                for (j, &w) in words.iter().enumerate() {
                    assert_eq!(
                        w,
                        pair(lo[j], hi.map_or(0.0, |h| h[j])),
                        "pair_rows, len {len}"
                    );
                }
            }
        }
    }

    /// The portable loops give the same bits as the dispatching functions.
    #[test]
    fn portable_loops_equal_the_dispatched_conversions() {
        let values = awkward_values();
        let len = values.len();
        let (mut fast, mut portable) = (
            alloc::vec![0u32; len.div_ceil(2)],
            alloc::vec![0u32; len.div_ceil(2)],
        );
        pack_rows(&values, len, &mut fast);
        pack_rows_portable(&values, len, &mut portable);
        assert_eq!(fast, portable);
        let (mut fast, mut portable) = (alloc::vec![0u32; len], alloc::vec![0u32; len]);
        let hi: alloc::vec::Vec<f32> = values.iter().rev().copied().collect();
        pair_rows(&values, Some(&hi), &mut fast);
        pair_rows_portable(&values, Some(&hi), &mut portable);
        assert_eq!(fast, portable);
    }
}
