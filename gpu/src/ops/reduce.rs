//! Fixed-order sums: whole-tensor sums (`sum`, `sum_of_squares`, the clipping norm) and column
//! sums (`sum_rows`, the LayerNorm γ/β gradients).

use deberta_core::Error;
use deberta_core::kernels::check_sum_rows;

use super::memory::alloc;
use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{Kernel, PARAM_CHUNK_ROWS, ROW_WG, SUM_ITEMS};
use crate::params::ReduceParams;
use crate::pool::PooledBuffer;
use crate::tensor::GpuTensor;

/// Elements one `reduce_sum` workgroup covers.
const PER_GROUP: usize = (ROW_WG * SUM_ITEMS) as usize;

/// `dst[index] = alpha · Σ src[..n]` (of squares when `square`), in stages of fixed shape.
pub(crate) fn reduce_into(
    gpu: &Gpu,
    src: &PooledBuffer,
    n: usize,
    square: bool,
    dst: &PooledBuffer,
    index: usize,
    alpha: f32,
) -> Result<(), Error> {
    let mut groups = n.div_ceil(PER_GROUP).max(1);
    let mut params = ReduceParams {
        n: word(n)?,
        square: flag(square),
        dst_index: word(index)?,
        alpha,
        ..Default::default()
    };
    if groups == 1 {
        return gpu.dispatch(Kernel::ReduceSum, &params, &[dst, src], gpu.grid(1)?);
    }
    // First stage: partial sums of src.
    let mut partial: GpuTensor = alloc(gpu, groups)?;
    let stage = ReduceParams {
        dst_index: 0,
        alpha: 1.0,
        ..params
    };
    gpu.dispatch(
        Kernel::ReduceSum,
        &stage,
        &[gpu.buf(&partial)?, src],
        gpu.grid(groups as u64)?,
    )?;
    params.square = 0;
    loop {
        let n = groups;
        groups = n.div_ceil(PER_GROUP);
        params.n = word(n)?;
        if groups == 1 {
            return gpu.dispatch(
                Kernel::ReduceSum,
                &params,
                &[dst, gpu.buf(&partial)?],
                gpu.grid(1)?,
            );
        }
        let next: GpuTensor = alloc(gpu, groups)?;
        let stage = ReduceParams {
            dst_index: 0,
            alpha: 1.0,
            ..params
        };
        gpu.dispatch(
            Kernel::ReduceSum,
            &stage,
            &[gpu.buf(&next)?, gpu.buf(&partial)?],
            gpu.grid(groups as u64)?,
        )?;
        partial = next;
    }
}

/// `out[index] = alpha · Σ x` (or `Σ x²`), the CPU backend's range check first.
pub(crate) fn sum(
    gpu: &Gpu,
    kernel: &'static str,
    x: &GpuTensor,
    out: &mut GpuTensor,
    index: usize,
    alpha: f32,
    square: bool,
) -> Result<(), Error> {
    if index >= out.len() {
        return Err(Error::BufferTooSmall {
            kernel,
            operand: "tensor",
            needed: index.saturating_add(1),
            len: out.len(),
        });
    }
    reduce_into(
        gpu,
        gpu.buf(x)?,
        x.len(),
        square,
        gpu.buf(out)?,
        index,
        alpha,
    )
}

/// The shape of a [`sum_columns`]: `rows` rows of width `cols` read at
/// `src[offset + r·stride + c]`, summed in chunks of `chunk_rows` rows.
pub(crate) struct ColumnSum {
    pub(crate) offset: usize,
    pub(crate) stride: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) chunk_rows: usize,
}

impl ColumnSum {
    /// A dense `[rows, cols]` buffer from its start, in chunks of `chunk_rows` rows.
    fn dense(rows: usize, cols: usize, chunk_rows: usize) -> Self {
        ColumnSum {
            offset: 0,
            stride: cols,
            rows,
            cols,
            chunk_rows,
        }
    }
}

/// A column-sum of `src` in row order within each chunk of `sum.chunk_rows` rows: writes (or
/// adds to) `dst[chunk·cols + c]`.
pub(crate) fn sum_columns(
    gpu: &Gpu,
    src: &PooledBuffer,
    sum: ColumnSum,
    dst: &PooledBuffer,
    accumulate: bool,
) -> Result<(), Error> {
    let ColumnSum {
        offset,
        stride,
        rows,
        cols,
        chunk_rows,
    } = sum;
    let params = ReduceParams {
        n: word(rows)?,
        cols: word(cols)?,
        src_offset: word(offset)?,
        src_stride: word(stride)?,
        chunk_rows: word(chunk_rows.max(1))?,
        accumulate: flag(accumulate),
        ..Default::default()
    };
    let threads = rows.div_ceil(chunk_rows.max(1)).max(1) * cols;
    gpu.dispatch(
        Kernel::SumColumns,
        &params,
        &[dst, src],
        gpu.grid_for(threads, ROW_WG)?,
    )
}

/// `out[c] (+)= Σ_r x[r, c]`: chunks of [`PARAM_CHUNK_ROWS`] rows, then the chunks in order.
pub(crate) fn sum_rows(
    gpu: &Gpu,
    x: &GpuTensor,
    out: &mut GpuTensor,
    cols: usize,
    accumulate: bool,
) -> Result<(), Error> {
    check_sum_rows(out.len(), cols)?;
    let (src, dst) = (gpu.buf(x)?, gpu.buf(out)?);
    if cols == 0 {
        return Ok(());
    }
    let rows = x.len() / cols;
    let chunk = PARAM_CHUNK_ROWS as usize;
    if rows <= chunk {
        return sum_columns(
            gpu,
            src,
            ColumnSum::dense(rows, cols, rows),
            dst,
            accumulate,
        );
    }
    let chunks = rows.div_ceil(chunk);
    let partials: GpuTensor = alloc(gpu, chunks * cols)?;
    let partial = gpu.buf(&partials)?;
    sum_columns(
        gpu,
        src,
        ColumnSum::dense(rows, cols, chunk),
        partial,
        false,
    )?;
    let partial_sum = ColumnSum::dense(chunks, cols, chunks);
    sum_columns(gpu, partial, partial_sum, dst, accumulate)
}
