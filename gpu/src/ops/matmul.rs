//! Batched strided matmul: picks the tiled or the small kernel, converts the layouts to the
//! kernel's 32-bit parameters and splits the batch over dispatches.

use deberta_core::Error;
use deberta_core::kernels::{MatmulSpec, MatrixLayout};

use super::{product, word};
use crate::device::Gpu;
use crate::kernels::{Kernel, MATMUL_THREADS, TILE_M, TILE_N};
use crate::params::MatmulParams;
use crate::tensor::GpuTensor;

/// Below this many rows or columns of C the tiled kernel wastes most of its 64×64 tile.
const TILED_MIN_SIDE: usize = 32;

/// A stride as a kernel word; strides of dimensions that never step are irrelevant (0).
fn stride(value: usize, extent: usize) -> Result<u32, Error> {
    if extent <= 1 { Ok(0) } else { word(value) }
}

/// `(offset, row, col, batch0, batch1)` strides of a `rows × cols` operand.
fn layout_words(
    layout: &MatrixLayout,
    batch: [usize; 2],
    rows: usize,
    cols: usize,
) -> Result<[u32; 5], Error> {
    Ok([
        word(layout.offset)?,
        stride(layout.row_stride, rows)?,
        stride(layout.col_stride, cols)?,
        stride(layout.batch_strides[0], batch[0])?,
        stride(layout.batch_strides[1], batch[1])?,
    ])
}

/// `C = α·A·B + β·C` per batch entry.
pub(crate) fn matmul(
    gpu: &Gpu,
    a: &GpuTensor,
    b: &GpuTensor,
    c: &mut GpuTensor,
    spec: &MatmulSpec,
) -> Result<(), Error> {
    spec.validate(a.len(), b.len(), c.len())?;
    let buffers = [gpu.buf(c)?, gpu.buf(a)?, gpu.buf(b)?];
    let entries = product("matmul", &spec.batch)?;
    if spec.m == 0 || spec.n == 0 || entries == 0 {
        return Ok(());
    }
    let [
        a_offset,
        a_row_stride,
        a_col_stride,
        a_batch_stride0,
        a_batch_stride1,
    ] = layout_words(&spec.a, spec.batch, spec.m, spec.k)?;
    let [
        b_offset,
        b_row_stride,
        b_col_stride,
        b_batch_stride0,
        b_batch_stride1,
    ] = layout_words(&spec.b, spec.batch, spec.k, spec.n)?;
    let [
        c_offset,
        c_row_stride,
        c_col_stride,
        c_batch_stride0,
        c_batch_stride1,
    ] = layout_words(&spec.c, spec.batch, spec.m, spec.n)?;
    let mut params = MatmulParams {
        batch1: word(spec.batch[1])?,
        m: word(spec.m)?,
        n: word(spec.n)?,
        k: word(spec.k)?,
        a_offset,
        a_row_stride,
        a_col_stride,
        a_batch_stride0,
        a_batch_stride1,
        b_offset,
        b_row_stride,
        b_col_stride,
        b_batch_stride0,
        b_batch_stride1,
        c_offset,
        c_row_stride,
        c_col_stride,
        c_batch_stride0,
        c_batch_stride1,
        entry_base: 0,
        a_k_contiguous: u32::from(spec.a.col_stride == 1),
        b_k_contiguous: u32::from(spec.b.row_stride == 1 && spec.b.col_stride != 1),
        alpha: spec.alpha,
        beta: spec.beta,
    };
    let tiled = spec.m >= TILED_MIN_SIDE && spec.n >= TILED_MIN_SIDE;
    let (kernel, tile_rows, tile_cols) = if tiled {
        (Kernel::MatmulTiled, TILE_M, TILE_N)
    } else {
        (Kernel::MatmulSmall, MATMUL_THREADS, MATMUL_THREADS)
    };
    let max = gpu.limits.max_compute_workgroups_per_dimension;
    let x = word(spec.n.div_ceil(tile_cols as usize))?;
    let y = word(spec.m.div_ceil(tile_rows as usize))?;
    if x > max || y > max {
        return Err(Error::ShapeMismatch {
            what: "matmul output larger than the device's workgroup grid",
            expected: (max as usize) * tile_rows as usize,
            found: spec.m.max(spec.n),
        });
    }
    // Entries run concurrently when no two write the same element of C; otherwise one at a
    // time, in order, as the CPU runs them (e.g. a C shared by every entry, accumulated).
    let per_dispatch = if spec.output_is_injective() {
        max as usize
    } else {
        1
    };
    let mut first = 0;
    while first < entries {
        let count = per_dispatch.min(entries - first);
        params.entry_base = word(first)?;
        gpu.dispatch(kernel, &params, &buffers, [x, y, count as u32])?;
        first += count;
    }
    Ok(())
}
