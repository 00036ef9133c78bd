//! The portable CPU backend: tensors are `Vec<f32>`, kernels are the slice kernels of
//! [`crate::kernels`].

use alloc::vec;
use alloc::vec::Vec;

#[cfg(feature = "std")]
mod attention;
mod parallel;

#[cfg(feature = "std")]
use crate::backend::{AttentionBuffers, AttentionOperands, AttentionSpec, composed_attention};
use crate::backend::{Backend, Clip, LayerNormGrads, check_range};
use crate::kernels::{
    self, AdamSpec, LayerNormSpec, MatmulSpec, RelativeScoresSpec, RelativeTerm, SoftmaxSpec,
};
use crate::random::RandomStream;
use crate::{Activation, Error};
use parallel::{
    FILL_PIECE, PIECE, cols_per_piece, for_each_piece, for_each_piece2, for_each_piece3,
    rows_per_piece, sum_pieces,
};

/// The CPU backend. With the `std` feature sgemm dispatches to AVX/FMA at run time, and the
/// kernels split their work (products into blocks of disjoint outputs, the others into
/// fixed-size pieces of rows or elements) over rayon's global thread pool (size it with
/// `rayon::ThreadPoolBuilder::build_global`). Every piece is computed the same way whatever
/// the thread count, so results do not depend on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend.
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    type Tensor = Vec<f32>;
    type Indices = Vec<u32>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>, Error> {
        Ok(vec![0.0; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, Error> {
        Ok(data.to_vec())
    }

    fn upload_indices(&self, data: &[u32]) -> Result<Vec<u32>, Error> {
        Ok(data.to_vec())
    }

    fn len(&self, tensor: &Vec<f32>) -> usize {
        tensor.len()
    }

    fn write(&self, tensor: &mut Vec<f32>, offset: usize, data: &[f32]) -> Result<(), Error> {
        check_range("write", offset, data.len(), tensor.len())?;
        tensor[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn download(&self, tensor: &Vec<f32>, out: &mut [f32]) -> Result<(), Error> {
        check_range("download", 0, out.len(), tensor.len())?;
        out.copy_from_slice(&tensor[..out.len()]);
        Ok(())
    }

    fn download_indices(&self, indices: &Vec<u32>, out: &mut [u32]) -> Result<(), Error> {
        check_range("download_indices", 0, out.len(), indices.len())?;
        out.copy_from_slice(&indices[..out.len()]);
        Ok(())
    }

    /// In pieces over the threads (the gradient zeroing of a training step is hundreds of MB).
    fn fill(&self, tensor: &mut Vec<f32>, value: f32) -> Result<(), Error> {
        for_each_piece(tensor, FILL_PIECE, |_, piece| {
            piece.fill(value);
            Ok(())
        })
    }

    fn host_values<'t>(&self, tensor: &'t Vec<f32>) -> Option<&'t [f32]> {
        Some(tensor)
    }

    fn host_values_mut<'t>(&self, tensor: &'t mut Vec<f32>) -> Option<&'t mut [f32]> {
        Some(tensor)
    }

    fn copy(
        &self,
        src: &Vec<f32>,
        src_offset: usize,
        dst: &mut Vec<f32>,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        check_range("copy", src_offset, len, src.len())?;
        check_range("copy", dst_offset, len, dst.len())?;
        dst[dst_offset..dst_offset + len].copy_from_slice(&src[src_offset..src_offset + len]);
        Ok(())
    }

    fn matmul(
        &self,
        a: &Vec<f32>,
        b: &Vec<f32>,
        c: &mut Vec<f32>,
        spec: &MatmulSpec,
    ) -> Result<(), Error> {
        #[cfg(feature = "std")]
        if parallel::parallel_matmul(a, b, c, spec)? {
            return Ok(());
        }
        kernels::matmul(a, b, c, spec)
    }

    fn pack_weight(
        &self,
        weight: &Vec<f32>,
        output: usize,
        input: usize,
        precision: crate::Precision,
    ) -> Result<kernels::PackedWeight, Error> {
        if precision.products() == crate::Precision::Bf16 {
            kernels::check_weight(output, input, weight.len())?;
            let source = kernels::Bf16Source::Columns {
                data: weight,
                base: 0,
                stride: input,
            };
            return pack_bf16(source, output, input);
        }
        kernels::PackedWeight::new(weight, output, input, precision)
    }

    /// Where the CPU has FMA (x86-64 with AVX2 or AVX-512F): the packed f32 product reads
    /// the weights in the kernel's own layout instead of gemm re-packing them on every call.
    fn packs_f32_weights(&self) -> bool {
        kernels::f32_packing_pays()
    }

    /// bf16: the CPU's narrower training products (AVX-512 BF16 or AMX where available).
    fn mixed_products(&self) -> crate::Precision {
        crate::Precision::Bf16
    }

    #[cfg(feature = "std")]
    fn fused_attention_uses_buffers(&self, spec: &AttentionSpec) -> bool {
        !attention::fuses(spec)
    }

    #[cfg(feature = "std")]
    fn fused_attention(
        &self,
        ops: AttentionOperands<'_, Self>,
        buffers: AttentionBuffers<'_, Vec<f32>>,
        context: &mut Vec<f32>,
        spec: AttentionSpec,
    ) -> Result<(), Error> {
        if !attention::fuses(&spec) {
            return composed_attention(self, ops, buffers, context, spec);
        }
        attention::fused_attention(ops, context, spec)
    }

    fn matmul_reduced(
        &self,
        a: &Vec<f32>,
        b: &Vec<f32>,
        c: &mut Vec<f32>,
        spec: &MatmulSpec,
        precision: crate::Precision,
    ) -> Result<(), Error> {
        match precision.products() {
            crate::Precision::F32 => return self.matmul(a, b, c, spec),
            crate::Precision::Bf16 => {}
            _ => {
                return Err(Error::Unsupported {
                    what: "this product format in a general matmul on the CPU (f32 or bf16)",
                });
            }
        }
        spec.check(a.len(), b.len(), c.len())?;
        let (m, n) = (spec.m, spec.n);
        if m == 0 || n == 0 {
            return Ok(());
        }
        #[cfg(feature = "std")]
        let threads = rayon::current_num_threads();
        #[cfg(not(feature = "std"))]
        let threads = 1;
        let piece_rows = m
            .div_ceil(2 * threads)
            .next_multiple_of(kernels::packed_piece_rows());
        // A dense row-major C with α = 1 takes the sums directly (β = 0 or 1: the backward
        // products); anything else goes through a buffer.
        let direct = spec.alpha == 1.0
            && (spec.beta == 0.0 || spec.beta == 1.0)
            && spec.c.col_stride == 1
            && spec.c.row_stride == n;
        let mut product = if direct {
            Vec::new()
        } else {
            vec![0.0f32; m * n]
        };
        for outer in 0..spec.batch[0] {
            for inner in 0..spec.batch[1] {
                let entry = (outer, inner);
                let b = pack_bf16(kernels::b_source(b, spec, entry), n, spec.k)?;
                let (out, accumulate) = if direct {
                    let base = spec.c.batch_offset(outer, inner);
                    (&mut c[base..][..m * n], spec.beta == 1.0)
                } else {
                    (&mut product[..], false)
                };
                for_each_piece(out, piece_rows * n, |i, piece| {
                    let rows = piece.len() / n;
                    let first = i * piece_rows;
                    let a = kernels::a_rows(a, spec, entry, first..first + rows);
                    kernels::bf16_product(&a, rows, &b, (piece, accumulate))
                })?;
                if !direct {
                    kernels::store_product(&product, c, spec, entry);
                }
            }
        }
        Ok(())
    }

    fn matmul_packed(
        &self,
        x: &Vec<f32>,
        weight: &kernels::PackedWeight,
        out: &mut Vec<f32>,
        rows: usize,
    ) -> Result<(), Error> {
        kernels::check_linear_packed(weight, rows, x.len(), out.len())?;
        let (input, output) = (weight.input(), weight.output());
        if rows == 0 || output == 0 {
            return Ok(());
        }
        // Every output element is computed the same way whatever the split, so the piece size
        // may follow the thread count: whole micro-tiles (or AMX blocks), two pieces per
        // thread.
        #[cfg(feature = "std")]
        let threads = rayon::current_num_threads();
        #[cfg(not(feature = "std"))]
        let threads = 1;
        let piece_rows = rows
            .div_ceil(2 * threads)
            .next_multiple_of(kernels::packed_piece_rows());
        for_each_piece(
            &mut out[..rows * output],
            piece_rows * output,
            |i, piece| {
                let first = i * piece_rows;
                let n = piece.len() / output;
                kernels::linear_packed_rows(&x[first * input..][..n * input], weight, piece);
                Ok(())
            },
        )
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<(), Error> {
        kernels::check_add_assign(x.len(), y.len())?;
        for_each_piece(x, PIECE, |i, piece| {
            kernels::add_assign(piece, &y[i * PIECE..][..piece.len()])
        })
    }

    fn add_bias(&self, x: &mut Vec<f32>, bias: &Vec<f32>, cols: usize) -> Result<(), Error> {
        kernels::check_add_bias(bias.len(), cols)?;
        for_each_piece(x, rows_per_piece(cols) * cols, |_, piece| {
            kernels::add_bias(piece, bias, cols)
        })
    }

    fn scale_rows(&self, x: &mut Vec<f32>, scales: &Vec<f32>, cols: usize) -> Result<(), Error> {
        kernels::check_scale_rows(x.len(), scales.len(), cols)?;
        if cols == 0 {
            return Ok(());
        }
        let rows = rows_per_piece(cols);
        for_each_piece(x, rows * cols, |i, piece| {
            kernels::scale_rows(piece, &scales[i * rows..], cols)
        })
    }

    fn activation(&self, act: Activation, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<(), Error> {
        kernels::check_activation(x.len(), out.len())?;
        for_each_piece(&mut out[..x.len()], PIECE, |i, piece| {
            kernels::activation(act, &x[i * PIECE..][..piece.len()], piece)
        })
    }

    fn layer_norm(
        &self,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        out: &mut Vec<f32>,
        stats: Option<&mut Vec<f32>>,
        spec: LayerNormSpec,
    ) -> Result<(), Error> {
        let total = spec.check(
            x.len(),
            gamma.len(),
            beta.len(),
            out.len(),
            stats.as_deref().map(Vec::len),
        )?;
        if spec.cols == 0 || spec.rows == 0 {
            return Ok(());
        }
        let rows = rows_per_piece(spec.cols);
        let piece_spec = |len: usize| LayerNormSpec {
            rows: len / spec.cols,
            ..spec
        };
        let x_piece = |i: usize, len: usize| &x[i * rows * spec.cols..][..len];
        match stats {
            Some(stats) => for_each_piece2(
                &mut out[..total],
                rows * spec.cols,
                &mut stats[..2 * spec.rows],
                2 * rows,
                |i, o, s| {
                    let n = o.len();
                    kernels::layer_norm(x_piece(i, n), gamma, beta, o, Some(s), piece_spec(n))
                },
            ),
            None => for_each_piece(&mut out[..total], rows * spec.cols, |i, o| {
                let n = o.len();
                kernels::layer_norm(x_piece(i, n), gamma, beta, o, None, piece_spec(n))
            }),
        }
    }

    fn masked_softmax(
        &self,
        scores: &mut Vec<f32>,
        mask: &Vec<f32>,
        spec: SoftmaxSpec,
    ) -> Result<(), Error> {
        let total = spec.check(scores.len(), mask.len())?;
        let rows = rows_per_piece(spec.len);
        for_each_piece(&mut scores[..total], rows * spec.len.max(1), |i, piece| {
            kernels::masked_softmax_rows(piece, i * rows, mask, spec);
            Ok(())
        })
    }

    fn add_relative_scores(
        &self,
        scores: &mut Vec<f32>,
        c2p: Option<&Vec<f32>>,
        p2c: Option<&Vec<f32>>,
        index: &Vec<u32>,
        spec: RelativeScoresSpec,
    ) -> Result<(), Error> {
        let (c2p, p2c) = (c2p.map(|t| t.as_slice()), p2c.map(|t| t.as_slice()));
        let total = spec.check(
            scores.len(),
            [c2p.map(<[f32]>::len), p2c.map(<[f32]>::len)],
            index.len(),
        )?;
        spec.check_index(index)?;
        let rows = rows_per_piece(spec.len);
        for_each_piece(&mut scores[..total], rows * spec.len.max(1), |i, piece| {
            kernels::add_relative_scores_rows(piece, i * rows, c2p, p2c, index, spec);
            Ok(())
        })
    }

    fn embedding_lookup(
        &self,
        table: &Vec<f32>,
        ids: &Vec<u32>,
        out: &mut Vec<f32>,
        dim: usize,
        accumulate: bool,
    ) -> Result<(), Error> {
        kernels::embedding_lookup(table, ids, out, dim, accumulate, "embedding table")
    }

    fn add_sequence_row(
        &self,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        batch: usize,
        len: usize,
        dim: usize,
        row: usize,
    ) -> Result<(), Error> {
        kernels::add_sequence_row(x, out, batch, len, dim, row)
    }

    fn layer_norm_backward(
        &self,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        stats: &Vec<f32>,
        dout: &Vec<f32>,
        grads: LayerNormGrads<'_, Vec<f32>>,
        spec: LayerNormSpec,
    ) -> Result<(), Error> {
        let (rows, cols) = (spec.rows, spec.cols);
        let row_operands = [x.len(), dout.len(), grads.dx.len()];
        let col_operands = [gamma.len(), grads.dgamma.len(), grads.dbeta.len()];
        let total = spec.check_backward(row_operands, stats.len(), col_operands)?;
        if cols == 0 || rows == 0 {
            return Ok(());
        }
        let (x, dout, stats) = (&x[..total], &dout[..total], &stats[..2 * rows]);
        let piece_rows = rows_per_piece(cols);
        let accumulate = grads.accumulate_dx;
        for_each_piece(&mut grads.dx[..total], piece_rows * cols, |i, dx| {
            let (start, n) = (i * piece_rows * cols, dx.len());
            let stats = &stats[2 * i * piece_rows..];
            let (x, dout) = (&x[start..][..n], &dout[start..][..n]);
            kernels::layer_norm_backward_input(x, gamma, stats, dout, dx, cols, accumulate);
            Ok(())
        })?;
        let width = cols_per_piece(rows);
        for_each_piece2(
            &mut grads.dgamma[..cols],
            width,
            &mut grads.dbeta[..cols],
            width,
            |i, dgamma, dbeta| {
                kernels::layer_norm_backward_params(x, stats, dout, dgamma, dbeta, i * width, cols);
                Ok(())
            },
        )
    }

    fn activation_backward(
        &self,
        act: Activation,
        x: &Vec<f32>,
        dout: &Vec<f32>,
        dx: &mut Vec<f32>,
        accumulate: bool,
    ) -> Result<(), Error> {
        kernels::check_activation_backward(x.len(), dout.len(), dx.len())?;
        for_each_piece(&mut dx[..x.len()], PIECE, |i, dx| {
            let (x, dout) = (&x[i * PIECE..][..dx.len()], &dout[i * PIECE..][..dx.len()]);
            kernels::activation_backward(act, x, dout, dx, accumulate)
        })
    }

    fn masked_softmax_backward(
        &self,
        probs: &Vec<f32>,
        grad: &mut Vec<f32>,
        mask: &Vec<f32>,
        spec: SoftmaxSpec,
    ) -> Result<(), Error> {
        let total = spec.check_backward(probs.len(), grad.len(), mask.len())?;
        let rows = rows_per_piece(spec.len);
        let piece = rows * spec.len.max(1);
        for_each_piece(&mut grad[..total], piece, |i, grad| {
            let probs = &probs[i * piece..][..grad.len()];
            kernels::masked_softmax_backward_rows(probs, grad, i * rows, mask, spec);
            Ok(())
        })
    }

    fn relative_scores_backward(
        &self,
        dscores: &Vec<f32>,
        index: &Vec<u32>,
        dc2p: Option<&mut Vec<f32>>,
        dp2c: Option<&mut Vec<f32>>,
        spec: RelativeScoresSpec,
    ) -> Result<(), Error> {
        let (dc2p, dp2c) = (
            dc2p.map(|t| t.as_mut_slice()),
            dp2c.map(|t| t.as_mut_slice()),
        );
        spec.check_backward(
            dscores.len(),
            [
                dc2p.as_deref().map(<[f32]>::len),
                dp2c.as_deref().map(<[f32]>::len),
            ],
            index.len(),
        )?;
        spec.check_index(index)?;
        let table = spec.len * spec.rows;
        let total = spec.batch * spec.heads * table;
        for (out, term) in [(dc2p, RelativeTerm::C2p), (dp2c, RelativeTerm::P2c)] {
            if let Some(out) = out {
                for_each_piece(&mut out[..total], table, |t, out| {
                    kernels::relative_table_backward(dscores, index, term, t, out, spec);
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    fn embedding_backward(
        &self,
        ids: &Vec<u32>,
        dout: &Vec<f32>,
        dtable: &mut Vec<f32>,
        dim: usize,
        skip: Option<u32>,
    ) -> Result<(), Error> {
        kernels::embedding_backward(ids, dout, dtable, dim, skip)
    }

    fn add_sequence_row_backward(
        &self,
        dout: &Vec<f32>,
        dx: &mut Vec<f32>,
        shape: [usize; 3],
        row: usize,
        accumulate: bool,
    ) -> Result<(), Error> {
        kernels::add_sequence_row_backward(dout, dx, shape, row, accumulate)
    }

    fn sum_rows(
        &self,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        cols: usize,
        accumulate: bool,
    ) -> Result<(), Error> {
        kernels::check_sum_rows(out.len(), cols)?;
        if !accumulate {
            out[..cols].fill(0.0);
        }
        if cols == 0 {
            return Ok(());
        }
        let rows = x.len() / cols;
        let x = &x[..rows * cols];
        let width = cols_per_piece(rows);
        // Column pieces: every column is still summed over the rows in order.
        for_each_piece(&mut out[..cols], width, |i, out| {
            let first = i * width;
            for row in x.chunks_exact(cols) {
                for (o, &v) in out.iter_mut().zip(&row[first..]) {
                    *o += v;
                }
            }
            Ok(())
        })
    }

    fn scale(&self, x: &mut Vec<f32>, alpha: f32) -> Result<(), Error> {
        for_each_piece(x, PIECE, |_, piece| {
            kernels::scale(piece, alpha);
            Ok(())
        })
    }

    fn dropout(&self, x: &mut Vec<f32>, p: f32, stream: RandomStream) -> Result<(), Error> {
        for_each_piece(x, PIECE, |i, piece| {
            kernels::dropout_from(piece, i * PIECE, p, stream);
            Ok(())
        })
    }

    fn cross_entropy(
        &self,
        logits: &Vec<f32>,
        targets: &Vec<u32>,
        losses: &mut Vec<f32>,
        dlogits: &mut Vec<f32>,
        vocab: usize,
        grad_scale: f32,
    ) -> Result<(), Error> {
        let rows = targets.len();
        let total =
            kernels::check_cross_entropy(rows, vocab, logits.len(), dlogits.len(), losses.len())?;
        if vocab == 0 || rows == 0 {
            return Ok(());
        }
        let piece_rows = rows_per_piece(vocab);
        for_each_piece2(
            &mut dlogits[..total],
            piece_rows * vocab,
            &mut losses[..rows],
            piece_rows,
            |i, dlogits, losses| {
                let first = i * piece_rows;
                let (logits, targets) = (
                    &logits[first * vocab..][..dlogits.len()],
                    &targets[first..][..losses.len()],
                );
                kernels::cross_entropy_rows(
                    logits, targets, first, losses, dlogits, vocab, grad_scale,
                )
            },
        )
    }

    fn bce_with_logits(
        &self,
        logits: &Vec<f32>,
        labels: &Vec<f32>,
        weights: &Vec<f32>,
        losses: &mut Vec<f32>,
        dlogits: &mut Vec<f32>,
        grad_scale: f32,
    ) -> Result<(), Error> {
        kernels::bce_with_logits(logits, labels, weights, losses, dlogits, grad_scale)
    }

    fn sample_categorical(
        &self,
        logits: &Vec<f32>,
        vocab: usize,
        stream: RandomStream,
        out: &mut Vec<u32>,
    ) -> Result<(), Error> {
        kernels::check_sample_categorical(out.len(), vocab, logits.len())?;
        let piece_rows = rows_per_piece(vocab);
        for_each_piece(out, piece_rows, |i, out| {
            let first = i * piece_rows;
            let logits = &logits[first * vocab..][..out.len() * vocab];
            kernels::sample_categorical_rows(logits, vocab, stream, first, out);
            Ok(())
        })
    }

    fn sum(&self, x: &Vec<f32>, out: &mut Vec<f32>, index: usize, alpha: f32) -> Result<(), Error> {
        check_range("sum", index, 1, out.len())?;
        let total = sum_pieces(x, PIECE, |p| p.iter().map(|&v| f64::from(v)).sum());
        out[index] = alpha * total as f32;
        Ok(())
    }

    fn sums_of_squares(&self, xs: &[&Vec<f32>], out: &mut Vec<f32>) -> Result<(), Error> {
        check_range("sums_of_squares", 0, xs.len(), out.len())?;
        for (x, out) in xs.iter().zip(out.iter_mut()) {
            *out = sum_pieces(x, PIECE, kernels::sum_of_squares_f64) as f32;
        }
        Ok(())
    }

    fn adam_update(
        &self,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        moments: (&mut Vec<f32>, &mut Vec<f32>),
        spec: AdamSpec,
        clip: Option<Clip<'_, Vec<f32>>>,
    ) -> Result<(), Error> {
        let coefficient = match clip {
            Some(clip) => {
                check_range("adam_update", 0, 1, clip.squared_norm.len())?;
                kernels::clip_coefficient(f64::from(clip.squared_norm[0]), clip.max_norm)
            }
            None => 1.0,
        };
        let spec = AdamSpec {
            grad_scale: spec.grad_scale * coefficient,
            ..spec
        };
        let n = param.len();
        let (m, v) = moments;
        spec.check(n, grad.len(), m.len(), v.len())?;
        let (m, v) = (&mut m[..n], &mut v[..n]);
        for_each_piece3(param, m, v, PIECE, |i, param, m, v| {
            kernels::adam_update(param, &grad[i * PIECE..][..param.len()], m, v, spec)
        })
    }
}

#[cfg(all(test, feature = "std"))]
mod thread_independence;

/// A bf16 packed operand of `output` columns, `input` deep from `source`, its panels
/// converted in parallel.
fn pack_bf16(
    source: kernels::Bf16Source<'_>,
    output: usize,
    input: usize,
) -> Result<kernels::PackedWeight, Error> {
    let mut words = vec![0u32; kernels::bf16_words_len(output, input)];
    let panel_words = input.div_ceil(2) * kernels::PANEL;
    #[cfg(feature = "std")]
    let threads = rayon::current_num_threads();
    #[cfg(not(feature = "std"))]
    let threads = 1;
    let panels = output.div_ceil(kernels::PANEL);
    let per_piece = panels.div_ceil(2 * threads).max(1);
    for_each_piece(&mut words, per_piece * panel_words, |i, chunk| {
        source.fill_panels(chunk, i * per_piece, output, input);
        Ok(())
    })?;
    Ok(kernels::PackedWeight::from_bf16_words(output, input, words))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Conv1dGrads, Conv1dSpec};

    #[test]
    fn conv1d_and_its_backward_match_direct_sums_and_finite_differences() {
        let backend = CpuBackend::new();
        let spec = Conv1dSpec {
            batch: 2,
            len: 5,
            in_channels: 4,
            out_channels: 4,
            kernel: 3,
            groups: 2,
        };
        let (cin_g, k) = (2usize, 3usize);
        let x: Vec<f32> = (0..40).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let w: Vec<f32> = (0..4 * cin_g * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let bias = vec![0.1f32, -0.2, 0.3, 0.05];
        let direct = |x: &[f32], w: &[f32]| -> Vec<f32> {
            let mut out = vec![0.0f32; 40];
            for b in 0..2 {
                for t in 0..5 {
                    for o in 0..4 {
                        let g = o / 2;
                        let mut acc = bias[o];
                        for c in 0..cin_g {
                            for u in 0..k {
                                let src = t as isize + u as isize - 1;
                                if (0..5).contains(&src) {
                                    acc += w[o * cin_g * k + c * k + u]
                                        * x[(b * 5 + src as usize) * 4 + g * cin_g + c];
                                }
                            }
                        }
                        out[(b * 5 + t) * 4 + o] = acc;
                    }
                }
            }
            out
        };
        let mut out = vec![0.0f32; 40];
        backend.conv1d(&x, &w, &bias, &mut out, spec).unwrap();
        for (a, b) in out.iter().zip(direct(&x, &w)) {
            assert!((a - b).abs() < 1e-5);
        }
        let dout: Vec<f32> = (0..40).map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.2).collect();
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            direct(x, w)
                .iter()
                .zip(&dout)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let (mut dx, mut dw, mut db) = (vec![0.0f32; 40], vec![0.0f32; w.len()], vec![0.0f32; 4]);
        backend
            .conv1d_backward(
                &x,
                &w,
                &dout,
                Conv1dGrads {
                    dinput: &mut dx,
                    dweight: &mut dw,
                    dbias: &mut db,
                },
                spec,
            )
            .unwrap();
        for i in 0..40 {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += 1e-2;
            m[i] -= 1e-2;
            let num = (loss(&p, &w) - loss(&m, &w)) / 2e-2;
            assert!((num - dx[i] as f64).abs() < 1e-3, "dx[{i}]");
        }
        for i in 0..w.len() {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[i] += 1e-2;
            m[i] -= 1e-2;
            let num = (loss(&x, &p) - loss(&x, &m)) / 2e-2;
            assert!((num - dw[i] as f64).abs() < 1e-3, "dw[{i}]");
        }
        let db_expected: Vec<f32> = (0..4)
            .map(|o| (0..10).map(|r| dout[r * 4 + o]).sum())
            .collect();
        for (a, b) in db.iter().zip(db_expected) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
