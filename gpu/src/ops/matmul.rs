//! Batched strided matmul: picks the tile size (or the thin-product kernel), converts the layouts to the
//! kernel's 32-bit parameters and splits the batch over dispatches.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use deberta_core::Error;
use deberta_core::kernels::{MatmulSpec, MatrixLayout};

use super::memory::alloc;
use super::word;
use crate::adapter::CooperativeShape;
use crate::device::Gpu;
use crate::error::device_error;
use crate::kernels::{Kernel, MATMUL_THREADS, TILE_K};
use crate::matmul_source::BlockLayout;
use crate::measured_tiles::ProductShape;
use crate::params::MatmulParams;
use crate::pool::PooledBuffer;
use crate::tensor::GpuTensor;

/// Below this many rows or columns of C the tiled kernels waste most of their tile.
const TILED_MIN_SIDE: usize = 32;

/// A product runs on the largest tiles of which it has at least this many workgroups (else
/// on 32×32 tiles): enough to keep every multiprocessor of a large GPU (132 on an H100/H200)
/// busy with two workgroups, since a larger tile does more work per byte staged but leaves
/// multiprocessors idle when there are too few of them.
const LARGE_TILE_MIN_WORKGROUPS: usize = 256;

/// Which tiled kernel the products use (thin products always take the one-thread-per-output
/// kernel). All compute the same sums in the same order; the choice is only about speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulTiles {
    /// Per product shape, the tiled kernel (tile size and block layout) that ran fastest on
    /// this device the first time the shape came (each one that fits timed on the product
    /// itself, into C where β = 0, else into a scratch C of at most 16 MiB), kept for the
    /// device's lifetime (and in a file, see `WgpuBackend::keep_matmul_tiles_in`). Products the
    /// rule gives the thin kernel, and those whose C is read and larger than that, keep the
    /// rule's plan; those it splits along k keep its split and 64-wide pieces (a split sums in
    /// another order), the pieces' block layout measured.
    #[default]
    Measured,
    /// Per product: the largest tiles it has enough of (the occupancy rule, see the README),
    /// within the adapter's workgroup memory.
    Auto,
    /// Always 32×32 tiles.
    Tiles32,
    /// Always 64×64 tiles.
    Tiles64,
    /// Always 128×128 tiles (64×64 where the adapter lacks the workgroup memory).
    Tiles128,
    /// Always 64×64 tiles with each thread's 4×4 outputs contiguous, its operands read from
    /// workgroup memory four at a time (the contiguous block layout).
    Tiles64Vec4,
    /// Always 128×128 tiles with contiguous 8×8 blocks (64×64 ones where the adapter lacks
    /// the workgroup memory).
    Tiles128Vec4,
}

impl MatmulTiles {
    /// Every policy, in declaration order (a test or sweep that runs them all).
    pub const ALL: [MatmulTiles; 7] = [
        MatmulTiles::Measured,
        MatmulTiles::Auto,
        MatmulTiles::Tiles32,
        MatmulTiles::Tiles64,
        MatmulTiles::Tiles128,
        MatmulTiles::Tiles64Vec4,
        MatmulTiles::Tiles128Vec4,
    ];

    fn code(self) -> u8 {
        match self {
            MatmulTiles::Measured => 0,
            MatmulTiles::Auto => 1,
            MatmulTiles::Tiles32 => 2,
            MatmulTiles::Tiles64 => 3,
            MatmulTiles::Tiles128 => 4,
            MatmulTiles::Tiles64Vec4 => 5,
            MatmulTiles::Tiles128Vec4 => 6,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => MatmulTiles::Auto,
            2 => MatmulTiles::Tiles32,
            3 => MatmulTiles::Tiles64,
            4 => MatmulTiles::Tiles128,
            5 => MatmulTiles::Tiles64Vec4,
            6 => MatmulTiles::Tiles128Vec4,
            _ => MatmulTiles::Measured,
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

/// Rounds of the timing of each candidate tile size (the fastest counts), after one untimed
/// run that compiles its pipeline.
const MEASURE_ROUNDS: usize = 3;

/// The largest scratch C (bytes) the timing of a product whose C is read (β ≠ 0) allocates;
/// larger ones keep the occupancy rule (the scratch would stay in the buffer pool).
const MEASURE_SCRATCH_MAX_BYTES: usize = 16 << 20;

/// A tiled kernel: the side of its tiles and the layout of each thread's block of outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tiling {
    pub(crate) side: u32,
    pub(crate) layout: BlockLayout,
}

impl Tiling {
    const fn new(side: u32, layout: BlockLayout) -> Self {
        Tiling { side, layout }
    }

    /// Its f32 kernel (`None` for a side or layout without one).
    pub(crate) const fn kernel(self) -> Option<Kernel> {
        Some(match (self.side, self.layout) {
            (32, BlockLayout::Strided) => Kernel::MatmulTiled32,
            (64, BlockLayout::Strided) => Kernel::MatmulTiled64,
            (128, BlockLayout::Strided) => Kernel::MatmulTiled128,
            (64, BlockLayout::Contiguous) => Kernel::MatmulTiled64Vec4,
            (128, BlockLayout::Contiguous) => Kernel::MatmulTiled128Vec4,
            _ => return None,
        })
    }

    /// Workgroup memory of the kernel: A's and B's padded stages.
    const fn workgroup_bytes(self) -> u32 {
        2 * TILE_K * self.layout.tile_stride(self.side) * 4
    }
}

/// The tiled kernels of the rules (the strided layout), largest tile first.
const TILED: [Tiling; 3] = [
    Tiling::new(128, BlockLayout::Strided),
    Tiling::new(64, BlockLayout::Strided),
    Tiling::new(32, BlockLayout::Strided),
];

/// The tiled kernels with contiguous blocks, largest tile first.
const TILED_VEC4: [Tiling; 2] = [
    Tiling::new(128, BlockLayout::Contiguous),
    Tiling::new(64, BlockLayout::Contiguous),
];

/// Every tiled kernel [`MatmulTiles::Measured`] times for an unsplit product (the smallest
/// last: it fits where the others may not).
const MEASURED_TILED: [Tiling; 5] = [TILED[0], TILED_VEC4[0], TILED[1], TILED_VEC4[1], TILED[2]];

/// The kernels it times for the pieces of a split product: the 64-wide tiles of the split's
/// rule, in either block layout (the strided one last: it fits where the other may not).
const SPLIT_TILED: [Tiling; 2] = [TILED_VEC4[1], TILED[1]];

/// The kernel of a tiling in [`TILED`] or [`TILED_VEC4`], which all have one.
const fn kernel_of(tiling: Tiling) -> Kernel {
    match tiling.kernel() {
        Some(kernel) => kernel,
        None => Kernel::MatmulTiled32,
    }
}

/// Split-K cuts the inner dimension into pieces of at least this many elements.
const SPLIT_MIN_DEPTH: usize = 512;

/// How a product runs: the kernel, its tile's side, and into how many pieces its inner
/// dimension is split (1: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    kernel: Kernel,
    tile: u32,
    splits: usize,
}

/// The plan of a `m × n × k` product of `entries` batch entries on an adapter with
/// `workgroup_memory` bytes per workgroup. Under [`MatmulTiles::Auto`], a single product with
/// too few workgroups even on 32-wide tiles and a deep inner dimension (a weight gradient,
/// whose k is the token count) runs on 64-wide tiles split along k until it has enough
/// workgroups, each piece at least [`SPLIT_MIN_DEPTH`] deep.
fn plan(tiles: MatmulTiles, [m, n, k, entries]: [usize; 4], workgroup_memory: u32) -> Plan {
    // Measured starts from the rule's plan (the tile of an unsplit tiled product is then
    // timed).
    let tiles = match tiles {
        MatmulTiles::Measured => MatmulTiles::Auto,
        other => other,
    };
    let (kernel, tile) = choose_kernel(tiles, [m, n, entries], workgroup_memory);
    let unsplit = Plan {
        kernel,
        tile,
        splits: 1,
    };
    let workgroups = |side: usize| m.div_ceil(side) * n.div_ceil(side);
    if tiles != MatmulTiles::Auto
        || kernel == Kernel::MatmulSmall
        || entries != 1
        || workgroups(32) >= LARGE_TILE_MIN_WORKGROUPS
        || k < 2 * SPLIT_MIN_DEPTH
    {
        return unsplit;
    }
    let (kernel, tile) = choose_kernel(MatmulTiles::Tiles64, [m, n, entries], workgroup_memory);
    let splits = LARGE_TILE_MIN_WORKGROUPS
        .div_ceil(workgroups(tile as usize))
        .min(k / SPLIT_MIN_DEPTH);
    Plan {
        kernel,
        tile,
        splits,
    }
}

/// The kernel for a `m × n` product of `entries` batch entries on an adapter with
/// `workgroup_memory` bytes per workgroup, and its tile's side.
fn choose_kernel(
    tiles: MatmulTiles,
    [m, n, entries]: [usize; 3],
    workgroup_memory: u32,
) -> (Kernel, u32) {
    if m < TILED_MIN_SIDE || n < TILED_MIN_SIDE {
        return (Kernel::MatmulSmall, MATMUL_THREADS);
    }
    let fits = |tiling: &Tiling| tiling.workgroup_bytes() <= workgroup_memory;
    let widest = |candidates: &[Tiling], max: u32| {
        candidates
            .iter()
            .find(|t| t.side <= max && fits(t))
            .copied()
            .unwrap_or(TILED[2])
    };
    let workgroups = |side: u32| m.div_ceil(side as usize) * n.div_ceil(side as usize) * entries;
    let tiling = match tiles {
        MatmulTiles::Auto | MatmulTiles::Measured => TILED
            .into_iter()
            .find(|t| fits(t) && workgroups(t.side) >= LARGE_TILE_MIN_WORKGROUPS)
            .unwrap_or(TILED[2]),
        MatmulTiles::Tiles128 => widest(&TILED, 128),
        MatmulTiles::Tiles64 => widest(&TILED, 64),
        MatmulTiles::Tiles32 => TILED[2],
        MatmulTiles::Tiles128Vec4 => widest(&TILED_VEC4, 128),
        MatmulTiles::Tiles64Vec4 => widest(&TILED_VEC4, 64),
    };
    (kernel_of(tiling), tiling.side)
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

/// Whether the tiled kernels can read an operand (`[offset, row stride, column stride, batch
/// strides]`) four elements at a time: the four neighbours they stage together (along k where
/// `k_contiguous`, else along A's rows or B's columns) are neighbours in memory, and the offset,
/// the other stride and both batch strides are multiples of 4, so that every group starts on a
/// vec4 (every group's first row, column and k is a multiple of 4 within its tile, and split-K
/// pieces start at multiples of TILE_K). `is_b`: the operand is B, whose k is its row index.
fn reads_in_fours(k_contiguous: bool, words: [u32; 5], is_b: bool) -> bool {
    let [offset, row_stride, col_stride, batch0, batch1] = words;
    let (k_stride, other_stride) = match is_b {
        true => (row_stride, col_stride),
        false => (col_stride, row_stride),
    };
    let (unit, other) = match k_contiguous {
        true => (k_stride, other_stride),
        false => (other_stride, k_stride),
    };
    unit == 1 && [offset, other, batch0, batch1].iter().all(|w| w % 4 == 0)
}

/// What a product adds to each output it stores: `bias[col]`, then the residual's element at
/// the output's index (the caller has checked [`MatmulSpec::check_bias`]).
#[derive(Clone, Copy, Default)]
pub(crate) struct Added<'a> {
    pub(crate) bias: Option<&'a GpuTensor>,
    pub(crate) residual: Option<&'a GpuTensor>,
}

/// `C = α·A·B + β·C` per batch entry, plus what `added` holds; with `f16_operands` (a device
/// with `SHADER_F16`) both operands are rounded to f16 as they are loaded, the products and
/// sums staying f32.
pub(crate) fn matmul(
    gpu: &Gpu,
    [a, b]: [&GpuTensor; 2],
    added: Added<'_>,
    c: &mut GpuTensor,
    spec: &MatmulSpec,
    f16_operands: bool,
) -> Result<(), Error> {
    spec.check(a.len(), b.len(), c.len())?;
    // Without a bias or residual the kernels' binding of it holds A, which they do not read.
    let [bias_buffer, residual_buffer] = [added.bias, added.residual].map(|t| t.unwrap_or(a));
    let buffers = [
        gpu.buf(c)?,
        gpu.buf(bias_buffer)?,
        gpu.buf(residual_buffer)?,
        gpu.buf(a)?,
        gpu.buf(b)?,
    ];
    // `check` has made sure that the batch entries can be counted.
    let entries = spec.batch[0] * spec.batch[1];
    if spec.m == 0 || spec.n == 0 || entries == 0 {
        return Ok(());
    }
    let a_words = layout_words(&spec.a, spec.batch, spec.m, spec.k)?;
    let [
        a_offset,
        a_row_stride,
        a_col_stride,
        a_batch_stride0,
        a_batch_stride1,
    ] = a_words;
    let b_words = layout_words(&spec.b, spec.batch, spec.k, spec.n)?;
    let [
        b_offset,
        b_row_stride,
        b_col_stride,
        b_batch_stride0,
        b_batch_stride1,
    ] = b_words;
    let [
        c_offset,
        c_row_stride,
        c_col_stride,
        c_batch_stride0,
        c_batch_stride1,
    ] = layout_words(&spec.c, spec.batch, spec.m, spec.n)?;
    // Which stride of each operand the staging follows (its unit stride, where one is).
    let a_k_contiguous = spec.a.col_stride == 1;
    let b_k_contiguous = spec.b.row_stride == 1 && spec.b.col_stride != 1;
    let params = MatmulParams {
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
        a_k_contiguous: u32::from(a_k_contiguous),
        b_k_contiguous: u32::from(b_k_contiguous),
        alpha: spec.alpha,
        beta: spec.beta,
        k_split: 0,
        splits: 1,
        a_vector_loads: u32::from(
            gpu.matmul_vector_loads && reads_in_fours(a_k_contiguous, a_words, false),
        ),
        b_vector_loads: u32::from(
            gpu.matmul_vector_loads && reads_in_fours(b_k_contiguous, b_words, true),
        ),
        has_bias: u32::from(added.bias.is_some()),
        has_residual: u32::from(added.residual.is_some()),
        ..MatmulParams::default()
    };
    // The f16 variants stage half the bytes, so whatever fits in f32 fits.
    let policy = gpu.matmul_tiles.get();
    let Plan {
        kernel,
        tile,
        splits,
    } = plan(
        policy,
        [spec.m, spec.n, spec.k, entries],
        gpu.limits.max_compute_workgroup_storage_size,
    );
    // Entries run concurrently when no two write the same element of C; otherwise one at a
    // time, in order, as the CPU runs them (e.g. a C shared by every entry, accumulated).
    let per_dispatch = if spec.output_is_injective() {
        gpu.limits.max_compute_workgroups_per_dimension as usize
    } else {
        1
    };
    let shape = ProductShape {
        m: spec.m,
        n: spec.n,
        k: spec.k,
        entries,
        f16_operands,
        a_k_contiguous: params.a_k_contiguous != 0,
        b_k_contiguous: params.b_k_contiguous != 0,
        sequential: per_dispatch == 1,
    };
    // Where C is read (β ≠ 0) the timing runs need a scratch C: not beyond
    // MEASURE_SCRATCH_MAX_BYTES (e.g. the tied embedding's accumulated gradient keeps the rule).
    let measured = policy == MatmulTiles::Measured
        && kernel != Kernel::MatmulSmall
        && (spec.beta == 0.0 || c.len() * 4 <= MEASURE_SCRATCH_MAX_BYTES);
    if let Some(shape) = gpu
        .cooperative
        .filter(|_| f16_operands && kernel != Kernel::MatmulSmall)
    {
        // Cooperative matrices take every tiled f16 product, split as the rule splits it (the
        // pieces on one-subgroup workgroups); they are not among the measured kernels, whose
        // sums are all the same bits.
        if splits > 1 {
            let pieces = (Kernel::MatmulCooperative, shape.tile(1, 4));
            return split_k(gpu, [a, b, c], added, params, pieces, splits);
        }
        let (kernel, tile) = cooperative_kernel(policy, shape, [spec.m, spec.n, entries]);
        let grid = tile_grid(gpu, spec.m, spec.n, tile)?;
        return dispatch_entries(gpu, (kernel, grid), params, &buffers, entries, per_dispatch);
    }
    if splits > 1 {
        // The split and its 64-wide pieces stay the rule's (a split sums in its own order);
        // which block layout the pieces' kernel holds is measured: the same sums either way.
        let tiling = match measured {
            true => measured_choice(gpu, spec, c, shape, &SPLIT_TILED, |tiling, output| {
                let pieces = (kernel_of(tiling).with_operands(f16_operands), tiling.side);
                split_k(gpu, [a, b, output], added, params, pieces, splits)
            })?,
            false => Tiling::new(tile, BlockLayout::Strided),
        };
        let pieces = (kernel_of(tiling).with_operands(f16_operands), tiling.side);
        return split_k(gpu, [a, b, c], added, params, pieces, splits);
    }
    let (kernel, tile) = match measured {
        true => {
            let tiling =
                measured_choice(gpu, spec, c, shape, &MEASURED_TILED, |tiling, output| {
                    let grid = tile_grid(gpu, spec.m, spec.n, tiling.side)?;
                    let kernel = kernel_of(tiling).with_operands(f16_operands);
                    let timed = [
                        gpu.buf(output)?,
                        buffers[1],
                        buffers[2],
                        buffers[3],
                        buffers[4],
                    ];
                    dispatch_entries(gpu, (kernel, grid), params, &timed, entries, per_dispatch)
                })?;
            (kernel_of(tiling), tiling.side)
        }
        false => (kernel, tile),
    };
    let grid = tile_grid(gpu, spec.m, spec.n, tile)?;
    dispatch_entries(
        gpu,
        (kernel.with_operands(f16_operands), grid),
        params,
        &buffers,
        entries,
        per_dispatch,
    )
}

/// The cooperative-matrix kernel an unsplit product of `[m, n, entries]` runs on, and its tile
/// side. By default the largest tiles of which the product has at least
/// [`LARGE_TILE_MIN_WORKGROUPS`] (the register-blocked kernels' occupancy rule): 2 × 2
/// subgroups per workgroup (tiles of eight matrix sides, each staged operand feeding two
/// subgroups, so half the device-memory reads per multiply-add), else one subgroup of 4 × 4
/// accumulators, else one of 2 × 2 (tiles of two sides: four times the workgroups, so a small
/// product still spreads over the multiprocessors). Forced tile sizes force the kernel (128:
/// four subgroups, 64: one, 32: 2 × 2 accumulators). All add the same matrix products in the
/// same order: the same bits.
fn cooperative_kernel(
    tiles: MatmulTiles,
    shape: CooperativeShape,
    [m, n, entries]: [usize; 3],
) -> (Kernel, u32) {
    let candidates = [
        (Kernel::MatmulCooperativeWide, 2, 4),
        (Kernel::MatmulCooperative, 1, 4),
        (Kernel::MatmulCooperativeSmall, 1, 2),
    ];
    let fits = |&&(_, split, block): &&(Kernel, u32, u32)| shape.groups(split, block).is_some();
    let chosen = match tiles {
        MatmulTiles::Tiles128 | MatmulTiles::Tiles128Vec4 => candidates.iter().find(fits),
        MatmulTiles::Tiles64 | MatmulTiles::Tiles64Vec4 => Some(&candidates[1]),
        MatmulTiles::Tiles32 => candidates[1..].iter().rev().find(fits),
        MatmulTiles::Measured | MatmulTiles::Auto => {
            candidates.iter().filter(fits).find(|&&(_, split, block)| {
                let tile = shape.tile(split, block) as usize;
                m.div_ceil(tile) * n.div_ceil(tile) * entries >= LARGE_TILE_MIN_WORKGROUPS
            })
        }
    };
    // The one-subgroup 4 × 4 kernel runs wherever cooperative matrices are chosen at all.
    let &(kernel, split, block) = chosen
        .or(candidates[1..].iter().rev().find(fits))
        .unwrap_or(&candidates[1]);
    (kernel, shape.tile(split, block))
}

/// The tiled kernel [`MatmulTiles::Measured`] runs the product of `shape` on: the one kept for
/// it (measured here, or loaded from the file of this adapter) if it is one of `candidates`
/// that the device can run, else the fastest of [`measure`] over `candidates`, each `run` into
/// C where β = 0 (which the real run then overwrites) or else into a scratch C, kept from then
/// on.
fn measured_choice(
    gpu: &Gpu,
    spec: &MatmulSpec,
    c: &GpuTensor,
    shape: ProductShape,
    candidates: &[Tiling],
    run: impl Fn(Tiling, &GpuTensor) -> Result<(), Error>,
) -> Result<Tiling, Error> {
    if let Some(tiling) = gpu.measured_tiles.get(&shape)?
        && candidates.contains(&tiling)
        && runs(gpu, spec, tiling)
    {
        return Ok(tiling);
    }
    let scratch: Option<GpuTensor> = match spec.beta == 0.0 {
        true => None,
        false => Some(alloc(gpu, c.len())?),
    };
    let output = scratch.as_ref().unwrap_or(c);
    let choice = measure(gpu, spec, candidates, |tiling| run(tiling, output))?;
    gpu.measured_tiles.insert(shape, choice)?;
    Ok(choice)
}

/// Whether `tiling` fits the device's workgroup memory and its grid the product's output.
fn runs(gpu: &Gpu, spec: &MatmulSpec, tiling: Tiling) -> bool {
    tiling.workgroup_bytes() <= gpu.limits.max_compute_workgroup_storage_size
        && tile_grid(gpu, spec.m, spec.n, tiling.side).is_ok()
}

/// The `[x, y]` workgroup grid of an `m × n` output on `tile`-wide tiles, within the device's
/// per-dimension limit.
fn tile_grid(gpu: &Gpu, m: usize, n: usize, tile: u32) -> Result<[u32; 2], Error> {
    let max = gpu.limits.max_compute_workgroups_per_dimension;
    let x = word(n.div_ceil(tile as usize))?;
    let y = word(m.div_ceil(tile as usize))?;
    if x > max || y > max {
        return Err(Error::ShapeMismatch {
            what: "matmul output larger than the device's workgroup grid",
            expected: (max as usize) * tile as usize,
            found: m.max(n),
        });
    }
    Ok([x, y])
}

/// Records the product (`params`) over `grid` on `kernel`, `per_dispatch` batch entries per
/// dispatch.
fn dispatch_entries(
    gpu: &Gpu,
    (kernel, [x, y]): (Kernel, [u32; 2]),
    mut params: MatmulParams,
    buffers: &[&PooledBuffer; 5],
    entries: usize,
    per_dispatch: usize,
) -> Result<(), Error> {
    let mut first = 0;
    while first < entries {
        let count = per_dispatch.min(entries - first);
        params.entry_base = word(first)?;
        let bound = with_views(*buffers);
        gpu.dispatch(
            kernel,
            &params,
            &bound[..kernel.bindings().len()],
            [x, y, count as u32],
        )?;
        first += count;
    }
    Ok(())
}

/// Times `run` (the product, into C or scratch) on each of `candidates` that fits the device
/// and its grid, after waiting for the work recorded before; returns the fastest. One untimed
/// run per kernel first (its pipeline compiles there), then the best of [`MEASURE_ROUNDS`]
/// runs.
fn measure(
    gpu: &Gpu,
    spec: &MatmulSpec,
    candidates: &[Tiling],
    run: impl Fn(Tiling) -> Result<(), Error>,
) -> Result<Tiling, Error> {
    let [.., smallest] = *candidates else {
        return Err(device_error("no tiled matmul kernel to measure"));
    };
    let candidates = candidates
        .iter()
        .copied()
        .filter(|&tiling| runs(gpu, spec, tiling));
    gpu.wait()?;
    let mut best: Option<(Tiling, Duration)> = None;
    for candidate in candidates {
        run(candidate)?;
        gpu.wait()?;
        let mut fastest = Duration::MAX;
        for _ in 0..MEASURE_ROUNDS {
            let start = Instant::now();
            run(candidate)?;
            gpu.wait()?;
            fastest = fastest.min(start.elapsed());
        }
        if best.is_none_or(|(_, time)| fastest < time) {
            best = Some((candidate, fastest));
        }
    }
    // The last candidate, the smallest, fits where none is faster (WebGPU's default workgroup
    // memory holds the 32- and 64-wide strided tiles).
    Ok(best.map_or(smallest, |(choice, _)| choice))
}

/// C, the bias, the residual, A and B, then A and B again: a matmul kernel binds the first
/// `kernel.bindings().len()` (the 64- and 128-wide tiled kernels all seven, the second A and B
/// as the vec4 views they read four elements at a time through).
fn with_views([c, bias, residual, a, b]: [&PooledBuffer; 5]) -> [&PooledBuffer; 7] {
    [c, bias, residual, a, b, a, b]
}

/// One product (`params`, already checked) as `splits` pieces along k into a scratch slab
/// each, summed in order into C (adding the bias and the residual, where `params` has them,
/// there): `kernel` over its grid of `side`-wide tiles per piece.
fn split_k(
    gpu: &Gpu,
    [a, b, c]: [&GpuTensor; 3],
    added: Added<'_>,
    params: MatmulParams,
    (kernel, side): (Kernel, u32),
    splits: usize,
) -> Result<(), Error> {
    let (m, n, k) = (params.m as usize, params.n as usize, params.k as usize);
    let [x, y] = tile_grid(gpu, m, n, side)?;
    let depth = k.div_ceil(splits).next_multiple_of(TILE_K as usize);
    let splits = k.div_ceil(depth);
    let slabs: GpuTensor = alloc(gpu, splits * m * n)?;
    let pieces = MatmulParams {
        c_offset: 0,
        c_row_stride: word(n)?,
        c_col_stride: 1,
        c_batch_stride0: 0,
        c_batch_stride1: 0,
        alpha: 1.0,
        beta: 0.0,
        k_split: word(depth)?,
        splits: word(splits)?,
        has_bias: 0,
        has_residual: 0,
        ..params
    };
    let (a, b) = (gpu.buf(a)?, gpu.buf(b)?);
    let bound = with_views([gpu.buf(&slabs)?, a, a, a, b]);
    gpu.dispatch(
        kernel,
        &pieces,
        &bound[..kernel.bindings().len()],
        [x, y, word(splits)?],
    )?;
    let sum = MatmulParams {
        splits: word(splits)?,
        ..params
    };
    let groups = [
        word(n.div_ceil(MATMUL_THREADS as usize))?,
        word(m.div_ceil(MATMUL_THREADS as usize))?,
        1,
    ];
    let slabs = gpu.buf(&slabs)?;
    let [bias, residual] = [added.bias, added.residual].map(|t| match t {
        Some(t) => gpu.buf(t),
        None => Ok(slabs),
    });
    gpu.dispatch(
        Kernel::MatmulSumSplits,
        &sum,
        &[gpu.buf(c)?, bias?, residual?, slabs],
        groups,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WebGPU's default workgroup memory, and what most discrete GPUs offer.
    const DEFAULT_MEMORY: u32 = 16_384;
    const LARGE_MEMORY: u32 = 49_152;

    #[test]
    fn operands_are_read_four_at_a_time_only_where_every_group_starts_on_a_vec4() {
        // [offset, row stride, column stride, batch strides]; A's k is its column, B's its row.
        let a = |k_contiguous, words| reads_in_fours(k_contiguous, words, false);
        let b = |k_contiguous, words| reads_in_fours(k_contiguous, words, true);
        // Row-major A (groups along k) and its transpose (groups along rows).
        assert!(a(true, [8, 40, 1, 4000, 0]));
        assert!(a(false, [8, 1, 40, 4000, 0]));
        // An offset, a leading dimension or a batch stride off the vec4 grid.
        assert!(!a(true, [2, 40, 1, 4000, 0]));
        assert!(!a(true, [8, 37, 1, 4000, 0]));
        assert!(!a(true, [8, 40, 1, 4000, 6]));
        // Groups along a stride that is not 1: neighbours in the tile, not in memory.
        assert!(!a(true, [8, 1, 40, 4000, 0]));
        assert!(!a(false, [8, 40, 1, 4000, 0]));
        // B row-major (groups along columns) and transposed (groups along k).
        assert!(b(false, [0, 260, 1, 0, 0]));
        assert!(b(true, [0, 1, 260, 0, 0]));
        assert!(!b(false, [0, 1, 260, 0, 0]));
        assert!(!b(true, [0, 1, 262, 0, 0]));
    }

    #[test]
    fn auto_takes_the_largest_tiles_the_product_has_enough_of() {
        let side =
            |m, n, entries, memory| choose_kernel(MatmulTiles::Auto, [m, n, entries], memory).1;
        // 2048²: 256 tiles of 128.
        assert_eq!(side(2048, 2048, 1, LARGE_MEMORY), 128);
        // ... but 128-wide stages (16,512 B) exceed WebGPU's default 16 KiB.
        assert_eq!(TILED[0].workgroup_bytes(), 16_512);
        assert_eq!(side(2048, 2048, 1, DEFAULT_MEMORY), 64);
        // xsmall 8×128 projections: 1024 × 384 has 96 tiles of 64, 384 of 32.
        assert_eq!(side(1024, 384, 1, LARGE_MEMORY), 32);
        assert_eq!(side(1024, 1536, 1, LARGE_MEMORY), 64);
        // Thin products take the one-thread-per-output kernel.
        assert_eq!(
            choose_kernel(MatmulTiles::Tiles128, [8, 4096, 1], LARGE_MEMORY).0,
            Kernel::MatmulSmall
        );
    }

    #[test]
    fn cooperative_products_take_the_largest_tiles_they_have_enough_of() {
        let tensor_cores = CooperativeShape::TENSOR_CORES;
        let kernel =
            |tiles, m, n, entries| cooperative_kernel(tiles, tensor_cores, [m, n, entries]);
        let (small, one, wide) = (
            (Kernel::MatmulCooperativeSmall, 32),
            (Kernel::MatmulCooperative, 64),
            (Kernel::MatmulCooperativeWide, 128),
        );
        // 2048²: 256 tiles of 128; 2047 × 2048: 16 × 16 too.
        assert_eq!(kernel(MatmulTiles::Measured, 2048, 2048, 1), wide);
        assert_eq!(kernel(MatmulTiles::Auto, 2047, 2048, 1), wide);
        // xsmall 32×512 feed-forward: 16384 × 1536, 1536 tiles of 128.
        assert_eq!(kernel(MatmulTiles::Measured, 16_384, 1536, 1), wide);
        // xsmall 8×128 feed-forward: 1024 × 1536, 96 tiles of 128, 384 of 64.
        assert_eq!(kernel(MatmulTiles::Measured, 1024, 1536, 1), one);
        // xsmall 8×128 projections: 1024 × 384, 96 tiles of 64, 384 of 32; attention scores
        // per head batched: 128 × 128 × 48 entries, 192 of 64, 768 of 32.
        assert_eq!(kernel(MatmulTiles::Measured, 1024, 384, 1), small);
        assert_eq!(kernel(MatmulTiles::Measured, 128, 128, 48), small);
        // ... 256 entries of one tile each are enough for the largest.
        assert_eq!(kernel(MatmulTiles::Measured, 128, 128, 256), wide);
        // Too few even of the smallest: the smallest.
        assert_eq!(kernel(MatmulTiles::Auto, 40, 40, 1), small);
        // Forced tiles force the kernel.
        for tiles in [MatmulTiles::Tiles128, MatmulTiles::Tiles128Vec4] {
            assert_eq!(kernel(tiles, 40, 40, 1), wide);
        }
        for tiles in [MatmulTiles::Tiles64, MatmulTiles::Tiles64Vec4] {
            assert_eq!(kernel(tiles, 4096, 4096, 1), one);
        }
        assert_eq!(kernel(MatmulTiles::Tiles32, 4096, 4096, 1), small);
        // Lavapipe's 8×8 matrices: tiles of 16, 32 and 64.
        let lavapipe = CooperativeShape {
            side: 8,
            threads: 8,
        };
        assert_eq!(
            cooperative_kernel(MatmulTiles::Tiles128, lavapipe, [40, 40, 1]),
            (Kernel::MatmulCooperativeWide, 64)
        );
        assert_eq!(
            cooperative_kernel(MatmulTiles::Tiles64, lavapipe, [40, 40, 1]),
            (Kernel::MatmulCooperative, 32)
        );
        assert_eq!(
            cooperative_kernel(MatmulTiles::Measured, lavapipe, [40, 40, 1]),
            (Kernel::MatmulCooperativeSmall, 16)
        );
        // A shape whose workgroups of four subgroups or of 2 × 2 accumulators cannot share a
        // step evenly keeps one subgroup of 4 × 4.
        let narrow = CooperativeShape {
            side: 8,
            threads: 64,
        };
        assert_eq!(narrow.groups(2, 4), None);
        assert_eq!(narrow.groups(1, 2), None);
        for tiles in [
            MatmulTiles::Tiles128,
            MatmulTiles::Tiles32,
            MatmulTiles::Measured,
        ] {
            assert_eq!(
                cooperative_kernel(tiles, narrow, [4096, 4096, 1]),
                (Kernel::MatmulCooperative, 32)
            );
        }
    }

    #[test]
    fn only_deep_products_with_too_few_workgroups_are_split() {
        let auto = |shape| plan(MatmulTiles::Auto, shape, LARGE_MEMORY);
        // xsmall weight gradient at 32×512 tokens: 384 × 384 × 16384 → 36 tiles of 64, ×8.
        assert_eq!(
            auto([384, 384, 16_384, 1]),
            Plan {
                kernel: Kernel::MatmulTiled64,
                tile: 64,
                splits: 8
            }
        );
        // ... at 8×128 tokens, k = 1024 allows two pieces of 512.
        assert_eq!(auto([384, 384, 1024, 1]).splits, 2);
        // Enough 32-wide workgroups, a shallow k, batched products or forced tiles: no split.
        assert_eq!(auto([384, 1536, 16_384, 1]).splits, 1);
        assert_eq!(auto([384, 384, 1000, 1]).splits, 1);
        assert_eq!(auto([384, 384, 16_384, 2]).splits, 1);
        assert_eq!(
            plan(MatmulTiles::Tiles64, [384, 384, 16_384, 1], LARGE_MEMORY).splits,
            1
        );
    }

    #[test]
    fn forced_tiles_fall_back_to_what_fits() {
        let kernel = |tiles| choose_kernel(tiles, [100, 100, 1], DEFAULT_MEMORY).0;
        assert_eq!(kernel(MatmulTiles::Tiles128), Kernel::MatmulTiled64);
        assert_eq!(kernel(MatmulTiles::Tiles64), Kernel::MatmulTiled64);
        assert_eq!(kernel(MatmulTiles::Tiles32), Kernel::MatmulTiled32);
        // Contiguous 128-wide blocks stage 16,896 B: 64-wide ones where 16 KiB is all there is.
        assert_eq!(TILED_VEC4[0].workgroup_bytes(), 16_896);
        assert_eq!(kernel(MatmulTiles::Tiles128Vec4), Kernel::MatmulTiled64Vec4);
        assert_eq!(
            choose_kernel(MatmulTiles::Tiles128Vec4, [100, 100, 1], LARGE_MEMORY).0,
            Kernel::MatmulTiled128Vec4
        );
        assert_eq!(
            choose_kernel(MatmulTiles::Tiles128, [100, 100, 1], LARGE_MEMORY).0,
            Kernel::MatmulTiled128
        );
    }
}
