//! General products `C = α·A·B + β·C` (any [`MatmulSpec`] layouts) with both operands rounded
//! to bf16 and f32 sums: the backward products of bf16-mixed training (`∂L/∂x = dy·W`,
//! `∂L/∂W = dyᵀ·x`). Each batch entry's `B` is packed as a bf16 [`PackedWeight`] (its columns
//! as output channels) and `A`'s rows as bf16 pairs, so the products run on the kernels of
//! [`linear_packed`](super::linear_packed) (AMX where available); the result of an element
//! depends only on its row and column, never on how rows are split between threads.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use super::bf16_rows::{pack_rows, pair_rows};
use super::matmul::MatmulSpec;
use super::packed::{Bf16Source, bf16_padded_len, pair};

/// `B` of batch entry `(outer, inner)` of `spec` as the source of a bf16 packed operand (its
/// `n` columns as output channels, `k` deep).
pub(crate) fn b_source<'b>(
    b: &'b [f32],
    spec: &MatmulSpec,
    (outer, inner): (usize, usize),
) -> Bf16Source<'b> {
    let base = spec.b.batch_offset(outer, inner);
    let (k_stride, j_stride) = (spec.b.row_stride, spec.b.col_stride);
    if j_stride == 1 {
        Bf16Source::Rows {
            data: b,
            base,
            stride: k_stride,
        }
    } else if k_stride == 1 {
        Bf16Source::Columns {
            data: b,
            base,
            stride: j_stride,
        }
    } else {
        Bf16Source::Strided {
            data: b,
            base,
            k_stride,
            j_stride,
        }
    }
}

/// Rows `rows` of `A` of batch entry `(outer, inner)` of `spec` (already checked against
/// `a`) as bf16 pairs, `k.div_ceil(2)` words per row, followed by the zero rows that pad
/// them for [`bf16_product`](super::packed::bf16_product).
pub(crate) fn a_rows(
    a: &[f32],
    spec: &MatmulSpec,
    (outer, inner): (usize, usize),
    rows: Range<usize>,
) -> Vec<u32> {
    let k = spec.k;
    let pairs = k.div_ceil(2);
    let m = rows.len();
    let mut words = vec![0u32; bf16_padded_len(m, pairs)];
    let base = spec.a.batch_offset(outer, inner) + rows.start * spec.a.row_stride;
    let (r_stride, t_stride) = (spec.a.row_stride, spec.a.col_stride);
    if m == 0 || pairs == 0 {
        return words;
    }
    if t_stride == 1 {
        // Rows stored contiguously: converted one by one.
        for (r, row_words) in words.chunks_exact_mut(pairs).take(m).enumerate() {
            pack_rows(&a[base + r * r_stride..][..k], k, row_words);
        }
    } else if r_stride == 1 {
        // A transposed operand (dyᵀ): two storage rows make one word of every row of A.
        // `BLOCK` such words per row are converted along the storage rows (vectorised),
        // then transposed into place.
        const BLOCK: usize = 16;
        let mut block = vec![0u32; BLOCK * m];
        for kb in (0..pairs).step_by(BLOCK) {
            let width = BLOCK.min(pairs - kb);
            for (j, converted) in block.chunks_exact_mut(m).take(width).enumerate() {
                let kk = kb + j;
                let lo = &a[base + 2 * kk * t_stride..][..m];
                let hi = (2 * kk + 1 < k).then(|| &a[base + (2 * kk + 1) * t_stride..][..m]);
                pair_rows(lo, hi, converted);
            }
            for (r, row_words) in words.chunks_exact_mut(pairs).take(m).enumerate() {
                for (j, w) in row_words[kb..kb + width].iter_mut().enumerate() {
                    *w = block[j * m + r];
                }
            }
        }
    } else {
        for (r, row) in words.chunks_exact_mut(pairs).take(m).enumerate() {
            let at = |t: usize| {
                if t < k {
                    a[base + r * r_stride + t * t_stride]
                } else {
                    0.0
                }
            };
            for (kk, word) in row.iter_mut().enumerate() {
                *word = pair(at(2 * kk), at(2 * kk + 1));
            }
        }
    }
    words
}

/// `C = α·product + β·C` for batch entry `(outer, inner)` of `spec`, `product` being its
/// `m × n` result row-major (`β = 0` overwrites `C` without reading it).
pub fn store_product(
    product: &[f32],
    c: &mut [f32],
    spec: &MatmulSpec,
    (outer, inner): (usize, usize),
) {
    let base = spec.c.batch_offset(outer, inner);
    let (rows, cols) = (spec.c.row_stride, spec.c.col_stride);
    let (alpha, beta) = (spec.alpha, spec.beta);
    let n = spec.n;
    for (r, values) in product.chunks_exact(n.max(1)).enumerate().take(spec.m) {
        if cols == 1 {
            let out = &mut c[base + r * rows..][..n];
            if beta == 0.0 {
                out.iter_mut()
                    .zip(values)
                    .for_each(|(o, &v)| *o = alpha * v);
            } else {
                out.iter_mut()
                    .zip(values)
                    .for_each(|(o, &v)| *o = alpha * v + beta * *o);
            }
            continue;
        }
        for (col, &v) in values.iter().enumerate() {
            let out = &mut c[base + r * rows + col * cols];
            *out = if beta == 0.0 {
                alpha * v
            } else {
                alpha * v + beta * *out
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{MatrixLayout, PackedWeight, round_bf16};

    use crate::kernels::test_values::uniform as fill;

    /// The CPU backend's bf16 products of the backward pass (`dyᵀ·x` and `dy·W` added into
    /// `C`, and a scaled product through the buffer) against the exact sums of the rounded
    /// operands, within f32's accumulation bound.
    #[cfg(feature = "std")]
    #[test]
    fn cpu_backend_products_follow_the_rounded_operands() {
        use crate::{Backend, CpuBackend, Precision};
        let backend = CpuBackend::new();
        let (rows, input, output) = (70, 64, 48);
        let dy = fill(rows * output, 4);
        let x = fill(rows * input, 5);
        let w = fill(output * input, 6);
        let weight_grad = MatmulSpec::linear_weight_grad(rows, input, output);
        let input_grad = MatmulSpec::linear_input_grad(rows, input, output);
        let scaled = MatmulSpec {
            alpha: 0.25,
            ..input_grad
        };
        for (spec, a, b) in [
            (weight_grad, &dy, &x),
            (input_grad, &dy, &w),
            (scaled, &dy, &w),
        ] {
            let start = fill(spec.m * spec.n, 7);
            let mut c = start.clone();
            backend
                .matmul_reduced(a, b, &mut c, &spec, Precision::Bf16Mixed)
                .unwrap();
            let get = |v: &[f32], l: MatrixLayout, r: usize, col: usize| {
                f64::from(round_bf16(v[r * l.row_stride + col * l.col_stride]))
            };
            for r in 0..spec.m {
                for col in 0..spec.n {
                    let (mut exact, mut magnitude) = (0.0f64, 0.0f64);
                    for t in 0..spec.k {
                        let p = get(a, spec.a, r, t) * get(b, spec.b, t, col);
                        exact += p;
                        magnitude += p.abs();
                    }
                    let i = r * spec.n + col;
                    let expected = f64::from(spec.alpha) * exact + f64::from(start[i]);
                    let bound = magnitude * spec.k as f64 * f64::from(f32::EPSILON) + 1e-6;
                    let err = (f64::from(c[i]) - expected).abs();
                    assert!(err <= bound, "[{r},{col}]: {err} > {bound}");
                }
            }
        }
    }

    /// The operands as packed equal the rounded values of `A` and `B` at every layout: rows
    /// (`A` row-major, `B` row-major), columns (both transposed: `dyᵀ`, `Kᵀ`) and neither
    /// stride 1 (an offset, every other element), with inner widths on both sides of a
    /// 16-pair conversion block.
    #[test]
    fn operands_and_store_follow_the_layouts() {
        let strided = |cols: usize| MatrixLayout {
            offset: 3,
            row_stride: 2 * cols + 1,
            col_stride: 2,
            batch_strides: [0, 0],
        };
        for (m, n, k) in [(5, 19, 7), (21, 17, 40)] {
            for (a_layout, b_layout) in [
                (MatrixLayout::row_major(k), MatrixLayout::row_major(n)),
                (
                    MatrixLayout::row_major(m).transposed(),
                    MatrixLayout::row_major(k).transposed(),
                ),
                (strided(k), strided(n)),
            ] {
                check_operands_and_store(m, n, k, a_layout, b_layout);
            }
        }
    }

    /// One case of [`operands_and_store_follow_the_layouts`]: `C = 0.5·A·B + C`.
    fn check_operands_and_store(
        m: usize,
        n: usize,
        k: usize,
        a_layout: MatrixLayout,
        b_layout: MatrixLayout,
    ) {
        let spec = MatmulSpec {
            a: a_layout,
            b: b_layout,
            alpha: 0.5,
            beta: 1.0,
            ..MatmulSpec::dense(m, n, k)
        };
        let extent = |l: MatrixLayout, rows: usize, cols: usize| {
            l.offset + (rows - 1) * l.row_stride + (cols - 1) * l.col_stride + 1
        };
        let (a, b) = (
            fill(extent(a_layout, m, k), 1),
            fill(extent(b_layout, k, n), 2),
        );
        let a_words = a_rows(&a, &spec, (0, 0), 0..m);
        let mut b_words = vec![0u32; crate::kernels::packed::bf16_words_len(n, k)];
        b_source(&b, &spec, (0, 0)).fill_panels(&mut b_words, 0, n, k);
        let w = PackedWeight::from_bf16_words(n, k, b_words);
        let mut product = vec![0.0f32; m * n];
        crate::kernels::packed::bf16_product(&a_words, m, &w, (&mut product, false)).unwrap();
        let mut c = fill(m * n, 3);
        let before = c.clone();
        store_product(&product, &mut c, &spec, (0, 0));
        let get = |v: &[f32], l: MatrixLayout, r: usize, col: usize| {
            round_bf16(v[l.offset + r * l.row_stride + col * l.col_stride])
        };
        for r in 0..m {
            for col in 0..n {
                let exact: f64 = (0..k)
                    .map(|t| f64::from(get(&a, a_layout, r, t) * get(&b, b_layout, t, col)))
                    .sum();
                let i = r * n + col;
                let expected = 0.5 * exact + f64::from(before[i]);
                assert!((f64::from(c[i]) - expected).abs() < 1e-5, "[{r},{col}]");
            }
        }
    }
}
