//! Fixed-order sums: whole-tensor sums (`sum`, `sums_of_squares`, the clipping norm) and column
//! sums (`sum_rows`, the bias gradients; the LayerNorm γ/β gradients' are in `layer_norm`).

use deberta_core::Error;
use deberta_core::backend::check_range;
use deberta_core::kernels::check_sum_rows;

use super::memory::{alloc, zeros};
use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{Kernel, PARAM_CHUNK_ROWS, ROW_WG, SUM_ITEMS, SUM_SOURCES};
use crate::params::{ReduceManyParams, ReduceParams};
use crate::pool::PooledBuffer;
use crate::tensor::GpuTensor;

/// Elements one `reduce_sum` workgroup covers.
const PER_GROUP: usize = (ROW_WG * SUM_ITEMS) as usize;

/// `dst[index] = alpha · Σ src[..n]` (of squares when `square`), in stages of fixed shape.
fn reduce_into(
    gpu: &Gpu,
    src: &PooledBuffer,
    n: usize,
    square: bool,
    dst: &PooledBuffer,
    index: usize,
    alpha: f32,
) -> Result<(), Error> {
    let params = ReduceParams {
        n: word(n)?,
        square: flag(square),
        dst_index: word(index)?,
        alpha,
        ..Default::default()
    };
    if n <= PER_GROUP {
        return gpu.dispatch(Kernel::ReduceSum, &params, &[dst, src], gpu.grid(1)?);
    }
    let partials: GpuTensor = alloc(gpu, partial_count(n))?;
    let count = partials_into(gpu, src, n, square, gpu.buf(&partials)?, 0)?;
    let last = ReduceParams {
        n: word(count)?,
        square: 0,
        ..params
    };
    gpu.dispatch(
        Kernel::ReduceSum,
        &last,
        &[dst, gpu.buf(&partials)?],
        gpu.grid(1)?,
    )
}

/// How many partial sums [`partials_into`] leaves of `n` elements: at most [`PER_GROUP`].
fn partial_count(n: usize) -> usize {
    let mut count = n.div_ceil(PER_GROUP).max(1);
    while count > PER_GROUP {
        count = count.div_ceil(PER_GROUP);
    }
    count
}

/// Reduces `src[..n]` (of squares when `square`) in stages of [`PER_GROUP`] elements, at least
/// one, until at most `PER_GROUP` partial sums remain, and writes those to
/// `dst[index..][..count]`; returns `count` ([`partial_count`]). Their sum in `reduce_sum`'s
/// order is [`reduce_into`]'s result, bit for bit.
fn partials_into(
    gpu: &Gpu,
    src: &PooledBuffer,
    n: usize,
    square: bool,
    dst: &PooledBuffer,
    index: usize,
) -> Result<usize, Error> {
    let mut stage = ReduceParams {
        n: word(n)?,
        square: flag(square),
        alpha: 1.0,
        ..Default::default()
    };
    let mut groups = n.div_ceil(PER_GROUP).max(1);
    // The stages before the last, each into a buffer of its own.
    let mut partial: Option<GpuTensor> = None;
    while groups > PER_GROUP {
        let next: GpuTensor = alloc(gpu, groups)?;
        let input = match &partial {
            Some(partial) => gpu.buf(partial)?,
            None => src,
        };
        gpu.dispatch(
            Kernel::ReduceSum,
            &stage,
            &[gpu.buf(&next)?, input],
            gpu.grid(groups as u64)?,
        )?;
        partial = Some(next);
        stage.n = word(groups)?;
        stage.square = 0;
        groups = groups.div_ceil(PER_GROUP);
    }
    let input = match &partial {
        Some(partial) => gpu.buf(partial)?,
        None => src,
    };
    stage.dst_index = word(index)?;
    gpu.dispatch(
        Kernel::ReduceSum,
        &stage,
        &[dst, input],
        gpu.grid(groups as u64)?,
    )?;
    Ok(groups)
}

/// `out[index] = alpha · Σ x`, the CPU backend's range check first.
pub(crate) fn sum(
    gpu: &Gpu,
    x: &GpuTensor,
    out: &mut GpuTensor,
    index: usize,
    alpha: f32,
) -> Result<(), Error> {
    check_range("sum", index, 1, out.len())?;
    reduce_into(
        gpu,
        gpu.buf(x)?,
        x.len(),
        false,
        gpu.buf(out)?,
        index,
        alpha,
    )
}

/// `out[i] = Σ xs[i]²` for every tensor, the CPU backend's range check first. Each tensor's
/// stages but the last run as in [`reduce_into`]; their partial sums go to row `i` of one
/// zeroed `[xs.len(), PER_GROUP]` buffer, and one `reduce_sum` over its rows takes every
/// tensor's last stage at once (a row's zeros past its partials add exactly nothing, so each
/// sum is [`reduce_into`]'s, bit for bit). The tensors of one stage (at most `PER_GROUP²`
/// elements: an optimizer's parameters but the largest embedding tables) have it in
/// `reduce_squares_many` dispatches of up to [`SUM_SOURCES`] tensors, each partial the
/// `reduce_sum` one's (unless `multi_tensor` is off: then each its own).
pub(crate) fn sums_of_squares(
    gpu: &Gpu,
    xs: &[&GpuTensor],
    out: &mut GpuTensor,
) -> Result<(), Error> {
    check_range("sums_of_squares", 0, xs.len(), out.len())?;
    let dst = gpu.buf(out)?;
    if xs.is_empty() {
        return Ok(());
    }
    let rows: GpuTensor = zeros(gpu, xs.len() * PER_GROUP)?;
    let partials = gpu.buf(&rows)?;
    let (one_stage, staged): (Vec<_>, Vec<_>) = xs
        .iter()
        .enumerate()
        .partition(|(_, x)| gpu.multi_tensor && x.len() <= PER_GROUP * PER_GROUP);
    for (i, x) in staged {
        partials_into(gpu, gpu.buf(x)?, x.len(), true, partials, i * PER_GROUP)?;
    }
    for sources in one_stage.chunks(SUM_SOURCES as usize) {
        squares_many_into(gpu, sources, partials)?;
    }
    let last = ReduceParams {
        n: word(rows.len())?,
        alpha: 1.0,
        ..Default::default()
    };
    gpu.dispatch(
        Kernel::ReduceSum,
        &last,
        &[dst, partials],
        gpu.grid(xs.len() as u64)?,
    )
}

/// The one stage of each of `sources` (`(i, tensor)`, at most [`SUM_SOURCES`], each of at most
/// `PER_GROUP²` elements) into row `i` of the zeroed `partials`, in one dispatch.
fn squares_many_into(
    gpu: &Gpu,
    sources: &[(usize, &&GpuTensor)],
    partials: &PooledBuffer,
) -> Result<(), Error> {
    let mut params = ReduceManyParams {
        count: word(sources.len())?,
        ..Default::default()
    };
    let mut bound = vec![partials];
    let mut groups = 0;
    for (t, (i, x)) in sources.iter().enumerate() {
        params.n[t] = word(x.len())?;
        params.row[t] = word(i * PER_GROUP)?;
        params.first_group[t] = word(groups)?;
        bound.push(gpu.buf(x)?);
        groups += x.len().div_ceil(PER_GROUP);
    }
    // The bindings past the sources hold the first one, which the kernel does not read there.
    bound.resize(1 + SUM_SOURCES as usize, bound[1]);
    gpu.dispatch(
        Kernel::ReduceSquaresMany,
        &params,
        &bound,
        gpu.grid(groups as u64)?,
    )
}

/// A column-sum of the dense `[rows, cols]` `src` in row order within each chunk of
/// `chunk_rows` rows: writes (or adds to) `dst[chunk·cols + c]`.
fn sum_columns(
    gpu: &Gpu,
    src: &PooledBuffer,
    [rows, cols, chunk_rows]: [usize; 3],
    dst: &PooledBuffer,
    accumulate: bool,
) -> Result<(), Error> {
    let params = ReduceParams {
        n: word(rows)?,
        cols: word(cols)?,
        src_offset: 0,
        src_stride: word(cols)?,
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
        return sum_columns(gpu, src, [rows, cols, rows], dst, accumulate);
    }
    let chunks = rows.div_ceil(chunk);
    let partials: GpuTensor = alloc(gpu, chunks * cols)?;
    let partial = gpu.buf(&partials)?;
    sum_columns(gpu, src, [rows, cols, chunk], partial, false)?;
    sum_columns(gpu, partial, [chunks, cols, chunks], dst, accumulate)
}
