//! Batched strided matmul: picks the tiled or the small kernel, converts the layouts to the
//! kernel's 32-bit parameters and splits the batch over dispatches.

use std::sync::atomic::{AtomicU8, Ordering};

use deberta_core::Error;
use deberta_core::kernels::{MatmulSpec, MatrixLayout};

use super::word;
use crate::device::Gpu;
use crate::kernels::{Kernel, MATMUL_THREADS, SMALL_TILE, TILE_M, TILE_N};
use crate::params::MatmulParams;
use crate::tensor::GpuTensor;

/// Below this many rows or columns of C the tiled kernels waste most of their tile.
const TILED_MIN_SIDE: usize = 32;

/// With fewer 64×64 workgroups than this, a product runs on 32×32 tiles instead: four times
/// the workgroups, so that a large GPU has enough of them in flight.
const LARGE_TILE_MIN_WORKGROUPS: usize = 256;

/// Which tiled kernel the products use (thin products always take the one-thread-per-output
/// kernel). All compute the same sums in the same order; the choice is only about speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulTiles {
    /// 64×64 tiles when the product has enough of them, else 32×32.
    #[default]
    Auto,
    /// Always 64×64 tiles.
    Large,
    /// Always 32×32 tiles.
    Small,
}

impl MatmulTiles {
    fn code(self) -> u8 {
        match self {
            MatmulTiles::Auto => 0,
            MatmulTiles::Large => 1,
            MatmulTiles::Small => 2,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => MatmulTiles::Large,
            2 => MatmulTiles::Small,
            _ => MatmulTiles::Auto,
        }
    }
}

/// The device's current [`MatmulTiles`] policy.
#[derive(Debug, Default)]
pub(crate) struct TilePolicy(AtomicU8);

impl TilePolicy {
    pub(crate) fn get(&self) -> MatmulTiles {
        MatmulTiles::from_code(self.0.load(Ordering::Relaxed))
    }

    pub(crate) fn set(&self, tiles: MatmulTiles) {
        self.0.store(tiles.code(), Ordering::Relaxed);
    }
}

/// The kernel for a `m × n` product of `entries` batch entries, and its tile's rows and columns.
fn choose_kernel(tiles: MatmulTiles, m: usize, n: usize, entries: usize) -> (Kernel, u32, u32) {
    if m < TILED_MIN_SIDE || n < TILED_MIN_SIDE {
        return (Kernel::MatmulSmall, MATMUL_THREADS, MATMUL_THREADS);
    }
    let large_workgroups = m.div_ceil(TILE_M as usize) * n.div_ceil(TILE_N as usize) * entries;
    let large = match tiles {
        MatmulTiles::Auto => large_workgroups >= LARGE_TILE_MIN_WORKGROUPS,
        MatmulTiles::Large => true,
        MatmulTiles::Small => false,
    };
    if large {
        (Kernel::MatmulTiled, TILE_M, TILE_N)
    } else {
        (Kernel::MatmulTiled32, SMALL_TILE, SMALL_TILE)
    }
}

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
    spec.check(a.len(), b.len(), c.len())?;
    let buffers = [gpu.buf(c)?, gpu.buf(a)?, gpu.buf(b)?];
    // `check` has made sure that the batch entries can be counted.
    let entries = spec.batch[0] * spec.batch[1];
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
    let (kernel, tile_rows, tile_cols) =
        choose_kernel(gpu.matmul_tiles.get(), spec.m, spec.n, entries);
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
