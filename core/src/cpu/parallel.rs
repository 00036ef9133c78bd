//! How the CPU backend splits work: into pieces whose boundaries depend only on the shapes
//! (never on the thread count), run on rayon's global pool with the `std` feature and in order
//! on the calling thread without it. Every piece is computed the same way either way, and
//! reductions combine per-piece partial results in piece order, so results are identical for
//! any number of threads and with or without `std`.

use alloc::vec::Vec;

use crate::Error;
#[cfg(feature = "std")]
use crate::kernels;
#[cfg(feature = "std")]
use crate::kernels::MatmulSpec;

/// Elements per piece of the element-wise and row-wise kernels (about 10–50 µs of work: far
/// more than the cost of handing a piece to a thread).
pub(super) const PIECE: usize = 1 << 14;

/// Elements per piece of a fill: 1 MiB, about 50–100 µs of memory writes (a fill does too
/// little per element for [`PIECE`]).
pub(super) const FILL_PIECE: usize = 1 << 18;

/// Whole rows of `cols` elements per piece: at least one.
pub(super) fn rows_per_piece(cols: usize) -> usize {
    (PIECE / cols.max(1)).max(1)
}

/// Columns per piece of a column-wise reduction over `rows` rows: about [`PIECE`] elements,
/// at least 8 columns.
pub(super) fn cols_per_piece(rows: usize) -> usize {
    (PIECE / rows.max(1)).max(8)
}

/// Calls `f(piece_index, piece)` for the consecutive `piece`-element pieces of `x`.
pub(super) fn for_each_piece<T, F>(x: &mut [T], piece: usize, f: F) -> Result<(), Error>
where
    T: Send,
    F: Fn(usize, &mut [T]) -> Result<(), Error> + Send + Sync,
{
    let piece = piece.max(1);
    #[cfg(feature = "std")]
    if x.len() > piece {
        use rayon::prelude::*;
        return x
            .par_chunks_mut(piece)
            .enumerate()
            .try_for_each(|(i, c)| f(i, c));
    }
    x.chunks_mut(piece)
        .enumerate()
        .try_for_each(|(i, c)| f(i, c))
}

/// Like [`for_each_piece`] over two tensors cut into the same number of pieces (`piece_a`
/// elements of `a` go with `piece_b` of `b`).
pub(super) fn for_each_piece2<A, B, F>(
    a: &mut [A],
    piece_a: usize,
    b: &mut [B],
    piece_b: usize,
    f: F,
) -> Result<(), Error>
where
    A: Send,
    B: Send,
    F: Fn(usize, &mut [A], &mut [B]) -> Result<(), Error> + Send + Sync,
{
    let (piece_a, piece_b) = (piece_a.max(1), piece_b.max(1));
    #[cfg(feature = "std")]
    if a.len() > piece_a {
        use rayon::prelude::*;
        return a
            .par_chunks_mut(piece_a)
            .zip(b.par_chunks_mut(piece_b))
            .enumerate()
            .try_for_each(|(i, (x, y))| f(i, x, y));
    }
    a.chunks_mut(piece_a)
        .zip(b.chunks_mut(piece_b))
        .enumerate()
        .try_for_each(|(i, (x, y))| f(i, x, y))
}

/// Like [`for_each_piece`] over three equally long tensors cut into `piece`-element pieces.
pub(super) fn for_each_piece3<F>(
    a: &mut [f32],
    b: &mut [f32],
    c: &mut [f32],
    piece: usize,
    f: F,
) -> Result<(), Error>
where
    F: Fn(usize, &mut [f32], &mut [f32], &mut [f32]) -> Result<(), Error> + Send + Sync,
{
    let piece = piece.max(1);
    #[cfg(feature = "std")]
    if a.len() > piece {
        use rayon::prelude::*;
        return a
            .par_chunks_mut(piece)
            .zip(b.par_chunks_mut(piece))
            .zip(c.par_chunks_mut(piece))
            .enumerate()
            .try_for_each(|(i, ((x, y), z))| f(i, x, y, z));
    }
    a.chunks_mut(piece)
        .zip(b.chunks_mut(piece))
        .zip(c.chunks_mut(piece))
        .enumerate()
        .try_for_each(|(i, ((x, y), z))| f(i, x, y, z))
}

/// `Σ_pieces f(piece)` over consecutive `piece`-element pieces of `x`, each partial summed in
/// `f64` and the partials added in piece order.
pub(super) fn sum_pieces<F>(x: &[f32], piece: usize, f: F) -> f64
where
    F: Fn(&[f32]) -> f64 + Send + Sync,
{
    let piece = piece.max(1);
    #[cfg(feature = "std")]
    if x.len() > piece {
        use rayon::prelude::*;
        let partials: Vec<f64> = x.par_chunks(piece).map(&f).collect();
        return partials.iter().sum();
    }
    let partials: Vec<f64> = x.chunks(piece).map(&f).collect();
    partials.iter().sum()
}

/// Products smaller than this many multiply-adds run on the calling thread.
#[cfg(feature = "std")]
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// An output buffer shared by the threads computing its disjoint blocks: a raw pointer and
/// its length, taken from a mutable borrow that outlives the parallel section.
#[cfg(feature = "std")]
#[derive(Clone, Copy)]
pub(super) struct SharedOutput(*mut f32, usize);

#[cfg(feature = "std")]
impl SharedOutput {
    /// Shares `output` (the caller keeps the borrow for as long as the value is used).
    pub(super) fn new(output: &mut [f32]) -> SharedOutput {
        SharedOutput(output.as_mut_ptr(), output.len())
    }

    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }

    /// Elements of the shared buffer.
    pub(super) fn len(self) -> usize {
        self.1
    }
}

// SAFETY: `SharedOutput` is used by `parallel_matmul` and the fused attention, which hand every
// thread a block of output elements no other thread touches (the product's output layout is
// checked to be injective and the blocks are disjoint; an attention entry writes only its own
// rows and head columns), and the borrow of the output outlives the parallel section.
#[cfg(feature = "std")]
unsafe impl Send for SharedOutput {}
// SAFETY: see `Send`: concurrent use never touches the same element.
#[cfg(feature = "std")]
unsafe impl Sync for SharedOutput {}

/// Runs a validated product on rayon's pool when it is large enough and its output layout
/// allows disjoint blocks; returns whether it did.
#[cfg(feature = "std")]
pub(super) fn parallel_matmul(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    spec: &MatmulSpec,
) -> Result<bool, Error> {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    if threads < 2 || spec.work() < PARALLEL_MIN_WORK || !spec.output_is_injective() {
        return Ok(false);
    }
    spec.check(a.len(), b.len(), c.len())?;
    let splits = spec.parallel_splits(threads);
    let blocks: Vec<kernels::MatmulBlock> = spec.blocks(splits).collect();
    let output = SharedOutput::new(c);
    blocks.par_iter().for_each(|block| {
        // SAFETY: validated above for these buffers; the output is injective and the blocks
        // are disjoint, so each thread writes only its own elements of `c`, which stays
        // borrowed mutably for the whole parallel section.
        unsafe { kernels::matmul_block(a, b, output.get(), spec, *block) };
    });
    Ok(true)
}
