//! Linear layers and table rows over stored weights of any dtype: f32 weights are read in
//! place, f16 weights are widened one output row at a time, and int8 weights meet
//! int8-quantised activations (one scale per row, or per row and group of columns) with i32
//! accumulation.

use core::ops::Range;

use super::EdgeError;
use super::format::DType;
use super::gemm::{dot, dot_i8, dot2_i8, matmul_transposed};
use super::model::TensorView;
use super::quant::quantize_rows;
use crate::kernels;

/// Row-quantised activations: int8 values and one f32 scale per row, or per group of
/// `cols / groups` consecutive columns of a row (the attention context: one per head).
#[derive(Clone, Copy)]
pub(crate) struct Quantized<'x> {
    /// `[rows, cols]`.
    pub values: &'x [i8],
    /// `[rows, groups]`.
    pub scales: &'x [f32],
    /// Scales per row (1, or a divisor of `cols`).
    pub groups: usize,
}

/// The input of a linear layer: `rows × cols` f32 activations and, for int8 weights, their
/// quantisation.
#[derive(Clone, Copy)]
pub(crate) struct Input<'x> {
    /// `[rows, cols]` (may be empty when `quantized` is given and the weights are int8).
    pub values: &'x [f32],
    /// Rows.
    pub rows: usize,
    /// Columns (the layer's input width).
    pub cols: usize,
    /// The rows quantised to int8 (required by int8 weights, ignored otherwise).
    pub quantized: Option<Quantized<'x>>,
}

impl<'x> Input<'x> {
    /// Rows `start .. start + rows` of this input (and of its quantisation).
    pub fn rows(&self, start: usize, rows: usize) -> Result<Input<'x>, EdgeError> {
        let cols = self.cols;
        let end = start
            .checked_add(rows)
            .filter(|&end| end <= self.rows)
            .ok_or(short("input rows", start.saturating_add(rows), self.rows))?;
        let span = start * cols..end * cols;
        let values = match self.values.is_empty() {
            true => self.values,
            false => {
                self.values
                    .get(span.clone())
                    .ok_or(short("x", span.end, self.values.len()))?
            }
        };
        let quantized = match self.quantized {
            Some(q) => Some(Quantized {
                values: q.values.get(span.clone()).ok_or(short(
                    "quantised x",
                    span.end,
                    q.values.len(),
                ))?,
                scales: q.scales.get(start * q.groups..end * q.groups).ok_or(short(
                    "activation scales",
                    end * q.groups,
                    q.scales.len(),
                ))?,
                groups: q.groups,
            }),
            None => None,
        };
        Ok(Input {
            values,
            rows,
            cols,
            quantized,
        })
    }
}

fn short(operand: &'static str, needed: usize, len: usize) -> EdgeError {
    EdgeError::Kernel(crate::Error::BufferTooSmall {
        kernel: "edge linear",
        operand,
        needed,
        len,
    })
}

fn check(operand: &'static str, needed: usize, len: usize) -> Result<(), EdgeError> {
    if len < needed {
        Err(short(operand, needed, len))
    } else {
        Ok(())
    }
}

/// `out[r, o − outputs.start] = Σᵢ x[r, i]·W[o, i] + b[o]` for the output channels `outputs`
/// of a `[out, in]` weight (`out` is `[rows, outputs.len()]`). `row` is scratch of at least
/// `in` values (f16 weights).
pub(crate) fn linear(
    weight: &TensorView<'_>,
    bias: &[f32],
    outputs: Range<usize>,
    input: &Input<'_>,
    out: &mut [f32],
    row: &mut [f32],
) -> Result<(), EdgeError> {
    let (rows, cols) = (input.rows, input.cols);
    let n = outputs.len();
    if weight.shape.cols != cols {
        return Err(EdgeError::Kernel(crate::Error::ShapeMismatch {
            what: "edge linear input width",
            expected: weight.shape.cols,
            found: cols,
        }));
    }
    check("outputs", outputs.end, weight.shape.rows)?;
    check("bias", outputs.end, bias.len())?;
    let total = rows.checked_mul(n).ok_or(short("out", usize::MAX, 0))?;
    check("out", total, out.len())?;
    let x_len = rows.checked_mul(cols).ok_or(short("x", usize::MAX, 0))?;
    if weight.dtype != DType::I8 {
        check("x", x_len, input.values.len())?;
    }
    let bias = &bias[outputs.clone()];
    let out = &mut out[..total];
    match weight.dtype {
        DType::F32 => {
            let weights = weight.f32s()?;
            let weights = weights
                .get(outputs.start * cols..outputs.end * cols)
                .ok_or(short("f32 weight", outputs.end * cols, weights.len()))?;
            matmul_transposed(input.values, weights, out, (rows, n, cols), 1.0)?;
            kernels::add_bias(out, bias, n)?;
        }
        DType::F16 => {
            check("row", cols, row.len())?;
            let row = &mut row[..cols];
            let data = weight.data;
            for (j, (o, &b)) in outputs.zip(bias).enumerate() {
                let bytes = data.get(o * cols * 2..(o + 1) * cols * 2).ok_or(short(
                    "f16 weight",
                    (o + 1) * cols * 2,
                    data.len(),
                ))?;
                for (w, c) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                    *w = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
                for (r, x) in input.values[..x_len].chunks_exact(cols).enumerate() {
                    out[r * n + j] = dot(x, row) + b;
                }
            }
        }
        DType::I8 => {
            let q = input
                .quantized
                .ok_or(EdgeError::Kernel(crate::Error::Missing {
                    what: "the quantised activations that int8 weights need",
                }))?;
            check("quantised x", x_len, q.values.len())?;
            let groups = q.groups;
            if groups == 0 || !cols.is_multiple_of(groups) {
                return Err(EdgeError::Kernel(crate::Error::ShapeMismatch {
                    what: "edge linear scale groups (a divisor of the input width)",
                    expected: cols,
                    found: groups,
                }));
            }
            let scale_count = rows.checked_mul(groups).ok_or(short("x", usize::MAX, 0))?;
            check("activation scales", scale_count, q.scales.len())?;
            let (weights, scales) = weight.int8()?;
            check("int8 weight", outputs.end * cols, weights.len())?;
            check("weight scales", outputs.end, scales.len())?;
            let values = &q.values[..x_len];
            for (j, o) in outputs.enumerate() {
                let w = &weights[o * cols..(o + 1) * cols];
                let (w_scale, b) = (scales[o], bias[j]);
                if groups == 1 {
                    int8_column(values, q.scales, w, (w_scale, b), out, (j, n));
                } else {
                    grouped_column(values, q.scales, w, (groups, w_scale, b), out, (j, n));
                }
            }
        }
    }
    Ok(())
}

/// Output column `j` of `n` (`out[r·n + j]`) of an int8 layer with one activation scale per
/// row: `Σ x·w` in i32, scaled by the row's and the weight row's scales, plus the bias.
fn int8_column(
    values: &[i8],
    row_scales: &[f32],
    w: &[i8],
    (w_scale, b): (f32, f32),
    out: &mut [f32],
    (j, n): (usize, usize),
) {
    let cols = w.len();
    // |Σ| ≤ cols·128² < 2³¹ for cols ≤ 65536 (format::MAX_WIDTH). Rows in pairs share the
    // weight row's loads (`dot2_i8`); the sums are the same as one at a time.
    let pairs = values.chunks_exact(2 * cols);
    let single = pairs.remainder();
    let mut r = 0;
    for pair in pairs {
        let (x0, x1) = pair.split_at(cols);
        let (acc0, acc1) = dot2_i8(x0, x1, w);
        out[r * n + j] = acc0 as f32 * (row_scales[r] * w_scale) + b;
        out[(r + 1) * n + j] = acc1 as f32 * (row_scales[r + 1] * w_scale) + b;
        r += 2;
    }
    if !single.is_empty() {
        out[r * n + j] = dot_i8(single, w) as f32 * (row_scales[r] * w_scale) + b;
    }
}

/// [`int8_column`] with `groups` activation scales per row: `Σ_g s_g·Σ_{i∈g} x·w`, rows in
/// pairs as there.
fn grouped_column(
    values: &[i8],
    scales: &[f32],
    w: &[i8],
    (groups, w_scale, b): (usize, f32, f32),
    out: &mut [f32],
    (j, n): (usize, usize),
) {
    let cols = w.len();
    let width = cols / groups;
    let pairs = values.chunks_exact(2 * cols);
    let single = pairs.remainder();
    let mut r = 0;
    for pair in pairs {
        let (x0, x1) = pair.split_at(cols);
        let (mut sum0, mut sum1) = (0.0f32, 0.0f32);
        for (g, wg) in w.chunks_exact(width).enumerate() {
            let span = g * width..(g + 1) * width;
            let (acc0, acc1) = dot2_i8(&x0[span.clone()], &x1[span], wg);
            sum0 += acc0 as f32 * scales[r * groups + g];
            sum1 += acc1 as f32 * scales[(r + 1) * groups + g];
        }
        out[r * n + j] = sum0 * w_scale + b;
        out[(r + 1) * n + j] = sum1 * w_scale + b;
        r += 2;
    }
    if !single.is_empty() {
        let mut sum = 0.0f32;
        for ((xg, wg), &s) in single
            .chunks_exact(width)
            .zip(w.chunks_exact(width))
            .zip(&scales[r * groups..(r + 1) * groups])
        {
            sum += dot_i8(xg, wg) as f32 * s;
        }
        out[r * n + j] = sum * w_scale + b;
    }
}

/// Columns `cols` of row `row` of a stored table (embeddings, position projections), widened
/// to f32 into `out` (`cols.len()` values).
pub(crate) fn table_row(
    table: &TensorView<'_>,
    row: usize,
    cols: Range<usize>,
    out: &mut [f32],
) -> Result<(), EdgeError> {
    let width = table.shape.cols;
    check("table rows", row + 1, table.shape.rows)?;
    check("table columns", cols.end, width)?;
    check("out", cols.len(), out.len())?;
    let start = row * width + cols.start;
    let out = &mut out[..cols.len()];
    match table.dtype {
        DType::F32 => {
            let values = table.f32s()?;
            let values = values.get(start..start + cols.len()).ok_or(short(
                "f32 table",
                start + cols.len(),
                values.len(),
            ))?;
            out.copy_from_slice(values);
        }
        DType::F16 => {
            let bytes = table
                .data
                .get(start * 2..(start + cols.len()) * 2)
                .ok_or(short(
                    "f16 table",
                    (start + cols.len()) * 2,
                    table.data.len(),
                ))?;
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::I8 => {
            let (values, scales) = table.int8()?;
            let scale = *scales
                .get(row)
                .ok_or(short("table scales", row + 1, scales.len()))?;
            let values = values.get(start..start + cols.len()).ok_or(short(
                "int8 table",
                start + cols.len(),
                values.len(),
            ))?;
            for (o, &q) in out.iter_mut().zip(values) {
                *o = f32::from(q) * scale;
            }
        }
    }
    Ok(())
}

/// The input of a linear layer over `rows × cols` values; for int8 models the rows are first
/// quantised into `quantized` and `scales`.
pub(crate) fn prepare<'x>(
    dtype: DType,
    values: &'x [f32],
    rows: usize,
    cols: usize,
    quantized: &'x mut [i8],
    scales: &'x mut [f32],
) -> Input<'x> {
    let quantized = match dtype {
        DType::I8 => {
            let n = rows.saturating_mul(cols).min(quantized.len());
            let r = rows.min(scales.len());
            let (q, s) = (&mut quantized[..n], &mut scales[..r]);
            quantize_rows(values, cols, q, s);
            Some(Quantized {
                values: q,
                scales: s,
                groups: 1,
            })
        }
        DType::F32 | DType::F16 => None,
    };
    Input {
        values,
        rows,
        cols,
        quantized,
    }
}

/// `hidden ← LayerNorm(sum + hidden)` with `(gamma, beta)`: the residual connection and
/// normalisation that close an attention or feed-forward block (`sum` is overwritten).
pub(crate) fn residual_layer_norm(
    sum: &mut [f32],
    hidden: &mut [f32],
    (gamma, beta): (&[f32], &[f32]),
    spec: kernels::LayerNormSpec,
) -> Result<(), EdgeError> {
    kernels::add_assign(sum, hidden)?;
    kernels::layer_norm(sum, gamma, beta, hidden, None, spec)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int8(n: usize, seed: usize) -> [i8; 48] {
        core::array::from_fn(|i| {
            if i < n {
                ((i * 37 + seed * 11) % 255) as i8
            } else {
                0
            }
        })
    }

    #[test]
    fn grouped_scales_match_naive_sums() {
        // 3 rows (a pair and a single) of 16 columns in 4 groups of 4, two output channels.
        let (rows, cols, groups, n) = (3, 16, 4, 2);
        let x = int8(rows * cols, 1);
        let w = int8(n * cols, 2);
        let scales: [f32; 12] = core::array::from_fn(|i| 0.01 * (i as f32 + 1.0));
        let mut out = [0.0f32; 6];
        for j in 0..n {
            let w_row = &w[j * cols..(j + 1) * cols];
            let (w_scale, b) = (0.5 + j as f32, 0.25);
            let values = &x[..rows * cols];
            grouped_column(
                values,
                &scales,
                w_row,
                (groups, w_scale, b),
                &mut out,
                (j, n),
            );
            for r in 0..rows {
                let mut naive = 0.0f32;
                for g in 0..groups {
                    let span = r * cols + g * 4..r * cols + g * 4 + 4;
                    let sum: i32 = x[span.clone()]
                        .iter()
                        .zip(&w_row[g * 4..g * 4 + 4])
                        .map(|(&a, &b)| i32::from(a) * i32::from(b))
                        .sum();
                    naive += sum as f32 * scales[r * groups + g];
                }
                assert_eq!(out[r * n + j], naive * w_scale + b);
            }
            // One group is the per-row layout of `int8_column`, with its grouping of scales.
            let mut single = [0.0f32; 6];
            int8_column(values, &scales, w_row, (w_scale, b), &mut single, (j, n));
            for r in 0..rows {
                let sum: i32 = x[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(w_row)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum();
                assert_eq!(single[r * n + j], sum as f32 * (scales[r] * w_scale) + b);
            }
        }
    }
}
