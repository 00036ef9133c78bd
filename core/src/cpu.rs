//! The portable CPU backend: tensors are `Vec<f32>`, kernels are the slice kernels of
//! [`crate::kernels`].

use alloc::vec;
use alloc::vec::Vec;

use crate::backend::Backend;
use crate::kernels::{self, LayerNormSpec, MatmulSpec, RelativeScoresSpec, SoftmaxSpec};
use crate::{Activation, Error};

/// The CPU backend. With the `std` feature sgemm dispatches to AVX/FMA at run time and uses
/// `MATMUL_NUM_THREADS` threads (read once per process by matrixmultiply).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

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
}
