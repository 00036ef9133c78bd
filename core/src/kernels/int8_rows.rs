//! Rows of f32 activations quantised for the int8 packed products: each row with its own
//! scale ([`quantize_row`], the edge format's scheme: `q = round(v·127 / max|v|)`), stored as
//! unsigned bytes `q + 128`, four per word. With AVX-512 a row is quantised 16 values at a
//! time in registers; elsewhere through [`quantize_row`]. Both give the same bits.

use alloc::vec;

use crate::edge::quant::quantize_row;

/// Quantises each `input`-wide row of `x` (`input > 0`) into `scales` and `words`
/// (`input.div_ceil(4)` per row): unsigned bytes `q + 128`, four per word, the last word
/// padded with 128 (whose weights are zero).
pub(crate) fn quantize_offset_rows(x: &[f32], input: usize, words: &mut [u32], scales: &mut [f32]) {
    let quads = input.div_ceil(4);
    let rows = x
        .chunks_exact(input)
        .zip(scales.iter_mut())
        .zip(words.chunks_exact_mut(quads));
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if crate::simd::simd_level() == crate::simd::SimdLevel::Avx512 {
        for ((row, scale), words) in rows {
            // SAFETY: `simd_level` never exceeds what the CPU supports (run-time check).
            *scale = unsafe { quantize_offset_row_avx512(row, words) };
        }
        return;
    }
    let mut q = vec![0i8; quads * 4];
    for ((row, scale), words) in rows {
        *scale = quantize_row(row, &mut q[..input]);
        for (word, four) in words.iter_mut().zip(q.chunks_exact(4)) {
            let bytes = [four[0], four[1], four[2], four[3]].map(|v| (v as u8) ^ 0x80);
            *word = u32::from_le_bytes(bytes);
        }
    }
}

/// One row of [`quantize_offset_rows`] (`words.len() == row.len().div_ceil(4)`), returning
/// its scale. The same operations as [`quantize_row`], lane by lane: the largest `|v|` (a
/// NaN never wins, as in its fold: `vmaxps` returns its second operand, the running maximum,
/// when the first is NaN), `y = v·(127/max)`, then `y + (½ − ε/4)·sign(y)` truncated
/// (`vcvttps2dq` gives `0x8000_0000` for NaN and below `i32::MIN`, whose low byte is 0 as for
/// Rust's `as`; above `i32::MAX` it is replaced by `i32::MAX`, Rust's saturated value).
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_offset_row_avx512(row: &[f32], words: &mut [u32]) -> f32 {
    use core::arch::x86_64::*;
    let n = row.len();
    assert_eq!(n.div_ceil(4), words.len());
    let blocks = n / 16;
    let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
    let mut lanes = _mm512_setzero_ps();
    for i in 0..blocks {
        // SAFETY: `16·i + 16 ≤ n`.
        let v = unsafe { _mm512_loadu_ps(row.as_ptr().add(16 * i)) };
        let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
        lanes = _mm512_max_ps(a, lanes);
    }
    let mut max = _mm512_reduce_max_ps(lanes);
    for &v in &row[16 * blocks..] {
        let a = v.abs();
        if a > max {
            max = a;
        }
    }
    if max == 0.0 {
        words.fill(0x8080_8080);
        return 0.0;
    }
    let inverse = 127.0 / max;
    let scale = _mm512_set1_ps(inverse);
    let sign_mask = _mm512_set1_epi32(i32::MIN);
    let half = _mm512_set1_epi32((0.5f32 - 0.25 * f32::EPSILON).to_bits() as i32);
    let offset = _mm_set1_epi8(0x80u8 as i8);
    for i in 0..blocks {
        // SAFETY: `16·i + 16 ≤ n`, and words `4·i .. 4·i + 4` lie inside `words`
        // (`4·i + 4 ≤ n / 4 ≤ words.len()`).
        unsafe {
            let y = _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(16 * i)), scale);
            let signed_half =
                _mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(y), sign_mask), half);
            let t = _mm512_add_ps(y, _mm512_castsi512_ps(signed_half));
            // Rust's `as i32` saturates where `vcvttps2dq` gives `0x8000_0000`; the two
            // differ in the low byte only above `i32::MAX` (a row whose largest `|v|` is so
            // small that `127/max` overflows).
            let above = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(t, _mm512_set1_ps(2_147_483_648.0));
            let q =
                _mm512_mask_mov_epi32(_mm512_cvttps_epi32(t), above, _mm512_set1_epi32(i32::MAX));
            let bytes = _mm_xor_si128(_mm512_cvtepi32_epi8(q), offset);
            _mm_storeu_si128(words.as_mut_ptr().add(4 * i).cast(), bytes);
        }
    }
    let mut q = [0i8; 16];
    let rest = &row[16 * blocks..];
    for (q, &v) in q.iter_mut().zip(rest) {
        *q = crate::edge::quant::round_small(v * inverse) as i8;
    }
    for (word, four) in words[4 * blocks..].iter_mut().zip(q.chunks_exact(4)) {
        let bytes = [four[0], four[1], four[2], four[3]].map(|v| (v as u8) ^ 0x80);
        *word = u32::from_le_bytes(bytes);
    }
    max / 127.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantised words and scales of rows with every awkward value (NaN, infinities,
    /// zeros, ties of the rounding, subnormals) and of ordinary rows of every tail length,
    /// against [`quantize_row`] followed by the offset.
    #[test]
    fn rows_follow_quantize_row_on_every_path() {
        let mut rows: alloc::vec::Vec<alloc::vec::Vec<f32>> = alloc::vec::Vec::new();
        for len in [1, 3, 4, 15, 16, 17, 33, 64, 70] {
            rows.push((0..len).map(|i| ((i as f32) * 0.917).sin() * 3.0).collect());
        }
        rows.push(alloc::vec![0.0; 20]);
        rows.push(alloc::vec![
            -0.0, 1e-40, -1e-41, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            1e-42
        ]);
        let mut ties: alloc::vec::Vec<f32> = (0..=254).map(|i| i as f32 - 127.0).collect();
        ties.extend((0..40).map(|i| (i as f32 + 0.5) - 20.0));
        rows.push(ties);
        let mut special: alloc::vec::Vec<f32> = (0..37).map(|i| i as f32 * 0.3 - 5.0).collect();
        special[3] = f32::NAN;
        special[20] = f32::NAN;
        rows.push(special.clone());
        special[7] = f32::INFINITY;
        rows.push(special.clone());
        special[30] = f32::NEG_INFINITY;
        rows.push(special);
        for row in rows {
            let input = row.len();
            let quads = input.div_ceil(4);
            let (mut words, mut scale) = (alloc::vec![0u32; quads], [0.0f32]);
            quantize_offset_rows(&row, input, &mut words, &mut scale);
            let mut q = alloc::vec![0i8; quads * 4];
            let expected_scale = quantize_row(&row, &mut q[..input]);
            assert_eq!(
                scale[0].to_bits(),
                expected_scale.to_bits(),
                "scale of {row:?}"
            );
            for (kq, (&word, four)) in words.iter().zip(q.chunks_exact(4)).enumerate() {
                let bytes = [four[0], four[1], four[2], four[3]].map(|v| (v as u8) ^ 0x80);
                assert_eq!(word, u32::from_le_bytes(bytes), "word {kq} of {row:?}");
            }
        }
    }
}
