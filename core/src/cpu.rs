//! The portable CPU backend: tensors are `Vec<f32>`, kernels are the slice kernels of
//! [`crate::kernels`].

use alloc::vec;
use alloc::vec::Vec;

use crate::backend::{Backend, Clip, LayerNormGrads};
use crate::kernels::{self, AdamSpec, LayerNormSpec, MatmulSpec, RelativeScoresSpec, SoftmaxSpec};
use crate::random::RandomStream;
use crate::{Activation, Error};

/// The CPU backend. With the `std` feature sgemm dispatches to AVX/FMA at run time, and large
/// products are split into blocks of disjoint output rows computed on rayon's global thread
/// pool (size it with `rayon::ThreadPoolBuilder::build_global`). Every block is computed the
/// same way whatever the thread count, so results do not depend on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

/// Products smaller than this many multiply-adds run on the calling thread.
#[cfg(feature = "std")]
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// The output pointer of a product shared by the threads computing its disjoint blocks.
#[cfg(feature = "std")]
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32);

#[cfg(feature = "std")]
impl SharedOutput {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: `SharedOutput` is only used by `parallel_matmul`, which hands every thread a block of
// output elements no other thread touches (the output layout is checked to be injective and
// the blocks are disjoint), and the borrow of the output slice outlives the parallel section.
#[cfg(feature = "std")]
unsafe impl Send for SharedOutput {}
// SAFETY: see `Send`: concurrent use never touches the same element.
#[cfg(feature = "std")]
unsafe impl Sync for SharedOutput {}

/// Runs a validated product on rayon's pool when it is large enough and its output layout
/// allows disjoint blocks; returns whether it did.
#[cfg(feature = "std")]
fn parallel_matmul(a: &[f32], b: &[f32], c: &mut [f32], spec: &MatmulSpec) -> Result<bool, Error> {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    if threads < 2 || spec.work() < PARALLEL_MIN_WORK || !spec.output_is_injective() {
        return Ok(false);
    }
    spec.validate(a.len(), b.len(), c.len())?;
    let entries = (spec.batch[0] * spec.batch[1]).max(1);
    // Enough blocks for every thread: whole batch entries when there are many, else each
    // entry cut along its longer side (at least 16 rows or columns per block).
    let splits = if entries >= threads {
        1
    } else {
        threads
            .div_ceil(entries)
            .min(spec.m.max(spec.n).div_ceil(16).max(1))
    };
    let blocks: Vec<kernels::MatmulBlock> = spec.blocks(splits).collect();
    let output = SharedOutput(c.as_mut_ptr());
    blocks.par_iter().for_each(|block| {
        // SAFETY: validated above for these buffers; the output is injective and the blocks
        // are disjoint, so each thread writes only its own elements of `c`, which stays
        // borrowed mutably for the whole parallel section.
        unsafe { kernels::matmul_block(a, b, output.get(), spec, *block) };
    });
    Ok(true)
}

impl CpuBackend {
    /// A CPU backend.
    pub fn new() -> Self {
        CpuBackend
    }
}

fn range_check(what: &'static str, offset: usize, len: usize, size: usize) -> Result<(), Error> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::BufferTooSmall {
            kernel: what,
            operand: "tensor",
            needed: offset.saturating_add(len),
            len: size,
        }),
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
        range_check("write", offset, data.len(), tensor.len())?;
        tensor[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn download(&self, tensor: &Vec<f32>, out: &mut [f32]) -> Result<(), Error> {
        range_check("download", 0, out.len(), tensor.len())?;
        out.copy_from_slice(&tensor[..out.len()]);
        Ok(())
    }

    fn download_indices(&self, indices: &Vec<u32>, out: &mut [u32]) -> Result<(), Error> {
        range_check("download_indices", 0, out.len(), indices.len())?;
        out.copy_from_slice(&indices[..out.len()]);
        Ok(())
    }

    fn fill(&self, tensor: &mut Vec<f32>, value: f32) -> Result<(), Error> {
        tensor.fill(value);
        Ok(())
    }

    fn copy(
        &self,
        src: &Vec<f32>,
        src_offset: usize,
        dst: &mut Vec<f32>,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        range_check("copy", src_offset, len, src.len())?;
        range_check("copy", dst_offset, len, dst.len())?;
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
        if parallel_matmul(a, b, c, spec)? {
            return Ok(());
        }
        kernels::matmul(a, b, c, spec)
    }

    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<(), Error> {
        kernels::add_assign(x, y)
    }

    fn add_bias(&self, x: &mut Vec<f32>, bias: &Vec<f32>, cols: usize) -> Result<(), Error> {
        kernels::add_bias(x, bias, cols)
    }

    fn scale_rows(&self, x: &mut Vec<f32>, scales: &Vec<f32>, cols: usize) -> Result<(), Error> {
        kernels::scale_rows(x, scales, cols)
    }

    fn activation(&self, act: Activation, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<(), Error> {
        kernels::activation(act, x, out)
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
        kernels::layer_norm(x, gamma, beta, out, stats.map(|s| s.as_mut_slice()), spec)
    }

    fn masked_softmax(
        &self,
        scores: &mut Vec<f32>,
        mask: &Vec<f32>,
        spec: SoftmaxSpec,
    ) -> Result<(), Error> {
        kernels::masked_softmax(scores, mask, spec)
    }

    fn add_relative_scores(
        &self,
        scores: &mut Vec<f32>,
        c2p: Option<&Vec<f32>>,
        p2c: Option<&Vec<f32>>,
        index: &Vec<u32>,
        spec: RelativeScoresSpec,
    ) -> Result<(), Error> {
        kernels::add_relative_scores(
            scores,
            c2p.map(|t| t.as_slice()),
            p2c.map(|t| t.as_slice()),
            index,
            spec,
        )
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
        kernels::layer_norm_backward(
            x,
            gamma,
            stats,
            dout,
            grads.dx,
            grads.dgamma,
            grads.dbeta,
            spec,
            grads.accumulate_dx,
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
        kernels::activation_backward(act, x, dout, dx, accumulate)
    }

    fn masked_softmax_backward(
        &self,
        probs: &Vec<f32>,
        grad: &mut Vec<f32>,
        mask: &Vec<f32>,
        spec: SoftmaxSpec,
    ) -> Result<(), Error> {
        kernels::masked_softmax_backward(probs, grad, mask, spec)
    }

    fn relative_scores_backward(
        &self,
        dscores: &Vec<f32>,
        index: &Vec<u32>,
        dc2p: Option<&mut Vec<f32>>,
        dp2c: Option<&mut Vec<f32>>,
        spec: RelativeScoresSpec,
    ) -> Result<(), Error> {
        kernels::relative_scores_backward(
            dscores,
            index,
            dc2p.map(|t| t.as_mut_slice()),
            dp2c.map(|t| t.as_mut_slice()),
            spec,
        )
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
        kernels::sum_rows(x, out, cols, accumulate)
    }

    fn scale(&self, x: &mut Vec<f32>, alpha: f32) -> Result<(), Error> {
        kernels::scale(x, alpha);
        Ok(())
    }

    fn dropout(&self, x: &mut Vec<f32>, p: f32, stream: RandomStream) -> Result<(), Error> {
        kernels::dropout(x, p, stream);
        Ok(())
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
        kernels::cross_entropy(logits, targets, losses, dlogits, vocab, grad_scale)
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
        kernels::sample_categorical(logits, vocab, stream, out)
    }

    fn sum(&self, x: &Vec<f32>, out: &mut Vec<f32>, index: usize, alpha: f32) -> Result<(), Error> {
        range_check("sum", index, 1, out.len())?;
        out[index] = alpha * kernels::sum(x);
        Ok(())
    }

    fn sum_of_squares(&self, x: &Vec<f32>, out: &mut Vec<f32>, index: usize) -> Result<(), Error> {
        range_check("sum_of_squares", index, 1, out.len())?;
        out[index] = kernels::sum_of_squares(x);
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
                kernels::clip_coefficient(kernels::sum(clip.squared_norms), clip.max_norm)
            }
            None => 1.0,
        };
        let spec = AdamSpec {
            grad_scale: spec.grad_scale * coefficient,
            ..spec
        };
        kernels::adam_update(param, grad, moments.0, moments.1, spec)
    }
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
