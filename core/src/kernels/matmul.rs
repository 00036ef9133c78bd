//! Batched, strided matrix multiplication `C = α·A·B + β·C`.
//!
//! With `std` the products go through the `gemm` crate, which picks its AVX-512, AVX2/FMA or
//! NEON kernels at run time (1.3–1.6× matrixmultiply's throughput on our shapes, mostly from
//! AVX-512 and cheaper packing of the `[out, in]` weights); portable `alloc` builds (no
//! runtime feature detection) use matrixmultiply. Both cut the inner dimension into blocks
//! whose size depends only on `k` (and, for gemm, on the CPU's cache sizes), so splitting a
//! product's rows or columns between threads never changes a result's bits.
//!
//! Operands are described by [`MatrixLayout`]s: an element offset, a row and a column stride
//! (a transpose is a swap of the two) and strides for two batch dimensions, so attention can
//! address `[B, L, h·d]` activations per `(batch, head)` without any permute copies.

use super::{product, require};
use crate::Error;

/// Where a matrix lives inside a flat buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixLayout {
    /// Index of element `(0, 0)` of batch `(0, 0)`.
    pub offset: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
    /// Distance between consecutive entries of the outer and inner batch dimension
    /// (0 broadcasts one matrix over that dimension).
    pub batch_strides: [usize; 2],
}

impl MatrixLayout {
    /// A dense row-major matrix with `cols` columns at offset 0, not batched.
    pub const fn row_major(cols: usize) -> Self {
        MatrixLayout {
            offset: 0,
            row_stride: cols,
            col_stride: 1,
            batch_strides: [0, 0],
        }
    }

    /// The same storage read as its transpose.
    pub const fn transposed(self) -> Self {
        MatrixLayout {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The same layout starting at element `offset`.
    pub const fn at(self, offset: usize) -> Self {
        MatrixLayout { offset, ..self }
    }

    /// The same layout with the given batch strides.
    pub const fn batched(self, outer: usize, inner: usize) -> Self {
        MatrixLayout {
            batch_strides: [outer, inner],
            ..self
        }
    }

    /// One past the largest index touched for a `rows × cols` matrix over `batch`, or `None` on
    /// overflow. Empty shapes touch nothing (returns 0).
    fn extent(&self, batch: [usize; 2], rows: usize, cols: usize) -> Option<usize> {
        if batch[0] == 0 || batch[1] == 0 || rows == 0 || cols == 0 {
            return Some(0);
        }
        let last = self.batch_strides[0]
            .checked_mul(batch[0] - 1)?
            .checked_add(self.batch_strides[1].checked_mul(batch[1] - 1)?)?
            .checked_add(self.row_stride.checked_mul(rows - 1)?)?
            .checked_add(self.col_stride.checked_mul(cols - 1)?)?
            .checked_add(self.offset)?;
        last.checked_add(1)
    }

    /// Index of element `(0, 0)` of batch entry `(outer, inner)`.
    #[cfg(feature = "alloc")]
    pub(crate) fn batch_offset(&self, outer: usize, inner: usize) -> usize {
        self.offset + outer * self.batch_strides[0] + inner * self.batch_strides[1]
    }
}

/// One batched multiplication `C[o,i] = α·A[o,i]·B[o,i] + β·C[o,i]` for every batch entry
/// `(o, i)` in `0..batch[0] × 0..batch[1]`, with `A` `m × k`, `B` `k × n`, `C` `m × n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulSpec {
    /// Outer and inner batch sizes.
    pub batch: [usize; 2],
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// Layout of `A`.
    pub a: MatrixLayout,
    /// Layout of `B`.
    pub b: MatrixLayout,
    /// Layout of `C`; its elements must be distinct within one batch entry.
    pub c: MatrixLayout,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the existing `C` (0 overwrites it without reading).
    pub beta: f32,
}

impl MatmulSpec {
    /// A single unbatched product of dense row-major matrices.
    pub fn dense(m: usize, n: usize, k: usize) -> Self {
        MatmulSpec {
            batch: [1, 1],
            m,
            n,
            k,
            a: MatrixLayout::row_major(k),
            b: MatrixLayout::row_major(n),
            c: MatrixLayout::row_major(n),
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// `Y = X·Wᵀ` for a PyTorch `Linear` weight `W` of shape `[out, in]` and `rows` inputs.
    pub fn linear(rows: usize, input: usize, output: usize) -> Self {
        MatmulSpec {
            b: MatrixLayout::row_major(input).transposed(),
            ..MatmulSpec::dense(rows, output, input)
        }
    }

    /// `∂L/∂W += dyᵀ·x` of a `Linear` (`W` `[output, input]`) over `rows` inputs.
    pub fn linear_weight_grad(rows: usize, input: usize, output: usize) -> Self {
        MatmulSpec {
            a: MatrixLayout::row_major(output).transposed(),
            b: MatrixLayout::row_major(input),
            c: MatrixLayout::row_major(input),
            beta: 1.0,
            ..MatmulSpec::dense(output, input, rows)
        }
    }

    /// `∂L/∂x += dy·W` of a `Linear` (`W` `[output, input]`) over `rows` inputs.
    pub fn linear_input_grad(rows: usize, input: usize, output: usize) -> Self {
        MatmulSpec {
            beta: 1.0,
            ..MatmulSpec::dense(rows, input, output)
        }
    }

    /// The operand contract of [`Backend::matmul`](crate::Backend::matmul) (every backend's): every operand's length covers
    /// its layout, the batch entries can be counted, and `C`'s elements are distinct within a
    /// batch entry.
    pub fn check(&self, a_len: usize, b_len: usize, c_len: usize) -> Result<(), Error> {
        product("matmul", &self.batch)?;
        let overflow = Error::BufferTooSmall {
            kernel: "matmul",
            operand: "shape",
            needed: usize::MAX,
            len: 0,
        };
        let a = self
            .a
            .extent(self.batch, self.m, self.k)
            .ok_or(overflow.clone())?;
        let b = self
            .b
            .extent(self.batch, self.k, self.n)
            .ok_or(overflow.clone())?;
        let c = self.c.extent(self.batch, self.m, self.n).ok_or(overflow)?;
        require("matmul", "a", a, a_len)?;
        require("matmul", "b", b, b_len)?;
        require("matmul", "c", c, c_len)?;
        // Injectivity of C inside one batch entry: the larger stride must step over the whole
        // extent of the smaller one.
        let mut dims = [(self.c.row_stride, self.m), (self.c.col_stride, self.n)];
        dims.sort_unstable();
        let [(inner_stride, inner_extent), (outer_stride, outer_extent)] = dims;
        // Dimensions of extent 1 never step; the others must not revisit an element.
        let needed_outer = match inner_extent {
            0 | 1 => 1,
            e => inner_stride.saturating_mul(e),
        };
        let inner_ok = inner_extent <= 1 || inner_stride >= 1;
        let outer_ok = outer_extent <= 1 || outer_stride >= needed_outer;
        if !(inner_ok && outer_ok) {
            return Err(Error::ShapeMismatch {
                what: "matmul output layout (rows or columns overlap)",
                expected: needed_outer,
                found: outer_stride,
            });
        }
        let max_stride = isize::MAX as usize;
        for layout in [self.a, self.b, self.c] {
            if layout.row_stride > max_stride || layout.col_stride > max_stride {
                return Err(Error::ShapeMismatch {
                    what: "matmul stride",
                    expected: max_stride,
                    found: layout.row_stride.max(layout.col_stride),
                });
            }
        }
        Ok(())
    }

    /// The operand contract of [`Backend::matmul_bias`](crate::Backend::matmul_bias) (every
    /// backend's), besides [`MatmulSpec::check`]: one product whose `C` is the dense row-major
    /// `[m, n]` of all of its `c_len` elements (a linear layer's output), a `bias` of `n` and,
    /// where one is given, a residual of `m·n`.
    pub fn check_bias(
        &self,
        c_len: usize,
        bias_len: usize,
        residual_len: Option<usize>,
    ) -> Result<(), Error> {
        require("matmul_bias", "bias", self.n, bias_len)?;
        if let Some(len) = residual_len {
            require(
                "matmul_bias",
                "residual",
                self.m.saturating_mul(self.n),
                len,
            )?;
        }
        let entries = product("matmul_bias", &self.batch)?;
        if entries != 1 {
            return Err(Error::ShapeMismatch {
                what: "matmul_bias batch entries",
                expected: 1,
                found: entries,
            });
        }
        if self.c != MatrixLayout::row_major(self.n) {
            return Err(Error::ShapeMismatch {
                what: "matmul_bias output layout (dense row-major from element 0): row stride",
                expected: self.n,
                found: self.c.row_stride,
            });
        }
        let elements = self.m.saturating_mul(self.n);
        if c_len != elements {
            return Err(Error::ShapeMismatch {
                what: "matmul_bias output elements (m·n)",
                expected: elements,
                found: c_len,
            });
        }
        Ok(())
    }
}

/// A block of a product: one batch entry and a rectangle of its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulBlock {
    /// Outer batch index.
    pub outer: usize,
    /// Inner batch index.
    pub inner: usize,
    /// First output row.
    pub row_start: usize,
    /// One past the last output row.
    pub row_end: usize,
    /// First output column.
    pub col_start: usize,
    /// One past the last output column.
    pub col_end: usize,
}

impl MatmulSpec {
    /// The product cut into blocks: every batch entry, its output split into `splits`
    /// near-equal ranges along the longer of its two dimensions (so that each block packs as
    /// little of the operands as possible), in batch order, then range order.
    pub fn blocks(&self, splits: usize) -> impl Iterator<Item = MatmulBlock> + '_ {
        let by_columns = self.n > self.m;
        let extent = if by_columns { self.n } else { self.m };
        let splits = splits.clamp(1, extent.max(1));
        (0..self.batch[0]).flat_map(move |outer| {
            (0..self.batch[1]).flat_map(move |inner| {
                (0..splits).filter_map(move |s| {
                    let (start, end) = (s * extent / splits, (s + 1) * extent / splits);
                    let ((row_start, row_end), (col_start, col_end)) = if by_columns {
                        ((0, self.m), (start, end))
                    } else {
                        ((start, end), (0, self.n))
                    };
                    (end > start).then_some(MatmulBlock {
                        outer,
                        inner,
                        row_start,
                        row_end,
                        col_start,
                        col_end,
                    })
                })
            })
        })
    }

    /// How many ranges [`Self::blocks`] should cut each batch entry into for `threads`
    /// threads: none when there are at least as many entries as threads, else enough for every
    /// thread, as long as each block keeps at least 16 rows or columns along the cut side and
    /// more than 256 elements (when the whole entry has them: sgemm libraries switch to
    /// differently ordered dot-product kernels for tiny outputs, and a block must not change
    /// kernel just because it is a block).
    pub fn parallel_splits(&self, threads: usize) -> usize {
        let entries = (self.batch[0] * self.batch[1]).max(1);
        if entries >= threads {
            return 1;
        }
        let (long, short) = (self.m.max(self.n), self.m.min(self.n).max(1));
        let min_long = 16usize.max((TINY_OUTPUT + 1).div_ceil(short));
        threads.div_ceil(entries).min((long / min_long).max(1))
    }

    /// Whether every `(batch entry, row, column)` addresses a different element of C, so that
    /// disjoint blocks may be computed concurrently (a sufficient, mixed-radix test).
    pub fn output_is_injective(&self) -> bool {
        let mut dims = [
            (self.c.row_stride, self.m),
            (self.c.col_stride, self.n),
            (self.c.batch_strides[0], self.batch[0]),
            (self.c.batch_strides[1], self.batch[1]),
        ];
        dims.sort_unstable();
        let mut reach = 0usize;
        for (stride, extent) in dims {
            if extent <= 1 {
                continue;
            }
            if stride <= reach {
                return false;
            }
            reach = match stride
                .checked_mul(extent - 1)
                .and_then(|s| s.checked_add(reach))
            {
                Some(r) => r,
                None => return false,
            };
        }
        true
    }

    /// Multiply-adds of the whole product.
    pub fn work(&self) -> usize {
        self.batch[0]
            .saturating_mul(self.batch[1])
            .saturating_mul(self.m)
            .saturating_mul(self.n)
            .saturating_mul(self.k)
    }
}

/// Computes one block of a product whose C is given as a raw pointer.
///
/// # Safety
///
/// `spec.check(a.len(), b.len(), c_len)` must have succeeded for the `c_len` elements
/// starting at `c`, and no other thread may access the C elements of `block` while this runs
/// (disjoint blocks of a product whose [`MatmulSpec::output_is_injective`] holds satisfy this).
#[cfg(feature = "alloc")]
pub unsafe fn matmul_block(
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    spec: &MatmulSpec,
    block: MatmulBlock,
) {
    let rows = block.row_end - block.row_start;
    let cols = block.col_end - block.col_start;
    let c_off = spec.c.batch_offset(block.outer, block.inner)
        + block.row_start * spec.c.row_stride
        + block.col_start * spec.c.col_stride;
    if spec.k == 0 {
        for r in 0..rows {
            for col in 0..cols {
                // SAFETY: the index lies in C's validated extent and belongs to this block.
                let element =
                    unsafe { &mut *c.add(c_off + r * spec.c.row_stride + col * spec.c.col_stride) };
                *element = if spec.beta == 0.0 {
                    0.0
                } else {
                    spec.beta * *element
                };
            }
        }
        return;
    }
    let a_off = spec.a.batch_offset(block.outer, block.inner) + block.row_start * spec.a.row_stride;
    let b_off = spec.b.batch_offset(block.outer, block.inner) + block.col_start * spec.b.col_stride;
    // SAFETY: `check` proved that every element the layouts address for all batch entries
    // and rows lies inside A, B and C (overflow-checked), that strides fit in `isize`, and
    // that C's elements within a batch entry are distinct; the caller guarantees exclusive
    // access to this block's C elements. `sgemm` touches exactly `ptr + r·rs + c·cs` for the
    // block's rows and columns.
    unsafe {
        sgemm(
            [rows, cols, spec.k],
            (spec.alpha, spec.beta),
            (a.as_ptr().add(a_off), spec.a),
            (b.as_ptr().add(b_off), spec.b),
            (c.add(c_off), spec.c),
        );
    }
}

/// The most output elements (`m·n`) of a product that gemm computes with its horizontal
/// dot-product kernels when A's rows and Bᵀ's rows are contiguous, which sum in another order
/// than its tiled kernels: a product cut into pieces must keep every piece above this size
/// (when the whole product is) to keep its bits.
pub(crate) const TINY_OUTPUT: usize = 256;

/// The inner-dimension chunk of one gemm call: at most gemm's smallest block, so that gemm
/// never chooses its own (shape-dependent) split of `k`.
#[cfg(feature = "std")]
const SGEMM_DEPTH: usize = 512;

/// One strided product `C = α·A·B + β·C` of `[m, n, k]` through gemm (`β = 0` never reads C).
///
/// # Safety
///
/// Every `ptr + r·row_stride + c·col_stride` of the three `m × k`, `k × n`, `m × n` matrices
/// must be in bounds, strides must fit in `isize`, and C's elements must be distinct and not
/// accessed by anyone else during the call.
#[cfg(feature = "std")]
unsafe fn sgemm(
    [m, n, k]: [usize; 3],
    (alpha, beta): (f32, f32),
    (a, a_layout): (*const f32, MatrixLayout),
    (b, b_layout): (*const f32, MatrixLayout),
    (c, c_layout): (*mut f32, MatrixLayout),
) {
    // gemm sizes its inner-dimension blocks from the block's own `m` and `n` once `k` exceeds
    // 512; cutting `k` into fixed chunks here keeps every element's summation order a function
    // of `k` alone (chunk partial sums added to C in order).
    let mut done = 0;
    while done < k {
        let depth = (k - done).min(SGEMM_DEPTH);
        let (read_c, scale_c) = if done == 0 {
            (beta != 0.0, beta)
        } else {
            (true, 1.0)
        };
        // SAFETY: the caller's contract is gemm's: in-bounds strided operands (the chunk's
        // columns of A and rows of B lie inside them) and an exclusively borrowed,
        // non-overlapping destination. gemm computes `dst = α'·dst + β'·lhs·rhs` and reads
        // `dst` only when told to, hence the swapped scale names.
        unsafe {
            gemm::gemm(
                m,
                n,
                depth,
                c,
                c_layout.col_stride as isize,
                c_layout.row_stride as isize,
                read_c,
                a.add(done * a_layout.col_stride),
                a_layout.col_stride as isize,
                a_layout.row_stride as isize,
                b.add(done * b_layout.row_stride),
                b_layout.col_stride as isize,
                b_layout.row_stride as isize,
                scale_c,
                alpha,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        done += depth;
    }
}

/// One strided product `C = α·A·B + β·C` of `[m, n, k]` through matrixmultiply (`β = 0` never
/// reads C).
///
/// # Safety
///
/// As for the `std` variant.
#[cfg(all(feature = "alloc", not(feature = "std")))]
unsafe fn sgemm(
    [m, n, k]: [usize; 3],
    (alpha, beta): (f32, f32),
    (a, a_layout): (*const f32, MatrixLayout),
    (b, b_layout): (*const f32, MatrixLayout),
    (c, c_layout): (*mut f32, MatrixLayout),
) {
    // SAFETY: the caller's contract is matrixmultiply's: in-bounds strided operands and an
    // exclusively borrowed destination with distinct elements.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a,
            a_layout.row_stride as isize,
            a_layout.col_stride as isize,
            b,
            b_layout.row_stride as isize,
            b_layout.col_stride as isize,
            beta,
            c,
            c_layout.row_stride as isize,
            c_layout.col_stride as isize,
        );
    }
}

/// `C = α·A·B + β·C` for every batch entry, in batch order, on the calling thread.
#[cfg(feature = "alloc")]
pub fn matmul(a: &[f32], b: &[f32], c: &mut [f32], spec: &MatmulSpec) -> Result<(), Error> {
    spec.check(a.len(), b.len(), c.len())?;
    let c_ptr = c.as_mut_ptr();
    for block in spec.blocks(1) {
        // SAFETY: validated above; this thread holds `c` exclusively.
        unsafe { matmul_block(a, b, c_ptr, spec, block) };
    }
    Ok(())
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use crate::kernels::test_values::uniform;

    fn naive(a: &[f32], b: &[f32], c: &mut [f32], s: &MatmulSpec) {
        for o in 0..s.batch[0] {
            for i in 0..s.batch[1] {
                for r in 0..s.m {
                    for col in 0..s.n {
                        let mut acc = 0.0f64;
                        for t in 0..s.k {
                            acc += a
                                [s.a.batch_offset(o, i) + r * s.a.row_stride + t * s.a.col_stride]
                                as f64
                                * b[s.b.batch_offset(o, i)
                                    + t * s.b.row_stride
                                    + col * s.b.col_stride]
                                    as f64;
                        }
                        let idx =
                            s.c.batch_offset(o, i) + r * s.c.row_stride + col * s.c.col_stride;
                        c[idx] = (s.alpha as f64 * acc + s.beta as f64 * c[idx] as f64) as f32;
                    }
                }
            }
        }
    }

    /// `n` test values at the start of a fixed-size array (copied to compare two products).
    fn fill(n: usize, seed: u32) -> [f32; 256] {
        let mut out = [0.0; 256];
        out[..n].copy_from_slice(&uniform(n, seed));
        out
    }

    #[test]
    fn transposed_batched_accumulating_product_matches_naive() {
        // A: 2 heads of [3 x 4] inside a [3, 8] buffer (head-major columns), B = Aᵀ-like view.
        let a = fill(24, 1);
        let b = fill(24, 2);
        let spec = MatmulSpec {
            batch: [1, 2],
            m: 3,
            n: 3,
            k: 4,
            a: MatrixLayout::row_major(8).batched(0, 4),
            b: MatrixLayout::row_major(8).transposed().batched(0, 4),
            c: MatrixLayout::row_major(3).batched(0, 9),
            alpha: 0.5,
            beta: 1.0,
        };
        let mut c1 = fill(18, 3);
        let mut c2 = c1;
        matmul(&a[..24], &b[..24], &mut c1[..18], &spec).unwrap();
        naive(&a, &b, &mut c2, &spec);
        for i in 0..18 {
            assert!((c1[i] - c2[i]).abs() < 1e-6);
        }
    }

    use crate::kernels::test_values::uniform as fill_vec;

    /// A linear-layer-like product large enough for the sgemm's inner-dimension blocking and
    /// its partial edge tiles, with `Wᵀ` read through strides.
    fn large_spec(beta: f32) -> MatmulSpec {
        MatmulSpec {
            alpha: 0.75,
            beta,
            ..MatmulSpec::linear(53, 1201, 70)
        }
    }

    #[test]
    fn large_product_matches_naive_and_never_reads_c_when_beta_is_zero() {
        let a = fill_vec(53 * 1201, 4);
        let b = fill_vec(70 * 1201, 5);
        for beta in [0.0, -1.5] {
            let spec = large_spec(beta);
            let start = if beta == 0.0 {
                alloc::vec![f32::NAN; 53 * 70]
            } else {
                fill_vec(53 * 70, 6)
            };
            let (mut ours, mut reference) = (start.clone(), start.clone());
            if beta == 0.0 {
                reference.fill(0.0);
            }
            matmul(&a, &b, &mut ours, &spec).unwrap();
            naive(&a, &b, &mut reference, &spec);
            let worst = ours
                .iter()
                .zip(&reference)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            // Sums of 1201 products of magnitude ≤ 1/4: f32 accumulation error ≲ 1e-5.
            assert!(worst < 1e-4, "beta {beta}: max |diff| {worst}");
        }
    }

    #[test]
    fn splitting_for_any_thread_count_keeps_every_bit() {
        // [m, n, k] with B transposed: inner-dimension blocking (k > 512), blocks that would
        // fall under the tiny-output size, matrix-vector shapes, and plain linear layers.
        let shapes = [
            [53, 70, 1201],
            [64, 1024, 1536],
            [2, 128, 300],
            [24, 40, 700],
            [1, 600, 300],
            [600, 1, 300],
            [128, 96, 64],
        ];
        for [m, n, k] in shapes {
            let spec = MatmulSpec {
                alpha: 0.75,
                beta: 1.0,
                ..MatmulSpec::linear(m, k, n)
            };
            let a = fill_vec(m * k, 7);
            let b = fill_vec(n * k, 8);
            let start = fill_vec(m * n, 9);
            let mut whole = start.clone();
            matmul(&a, &b, &mut whole, &spec).unwrap();
            for threads in 2..=6 {
                let mut split = start.clone();
                let c = split.as_mut_ptr();
                for block in spec.blocks(spec.parallel_splits(threads)) {
                    // SAFETY: the spec fits these buffers (checked by the `matmul` above) and
                    // the blocks run one after another on this thread.
                    unsafe { matmul_block(&a, &b, c, &spec, block) };
                }
                assert!(
                    split
                        .iter()
                        .zip(&whole)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{m}x{n}x{k}: {threads} threads changed the result"
                );
            }
        }
    }

    #[test]
    fn short_buffers_and_overlapping_output_are_errors() {
        let a = [0.0f32; 6];
        let b = [0.0f32; 6];
        let mut c = [0.0f32; 4];
        let spec = MatmulSpec::dense(2, 2, 3);
        assert!(matmul(&a, &b, &mut c, &spec).is_ok());
        assert!(matmul(&a[..5], &b, &mut c, &spec).is_err());
        assert!(matmul(&a, &b, &mut c[..3], &spec).is_err());
        let overlapping = MatmulSpec {
            c: MatrixLayout {
                row_stride: 1,
                ..MatrixLayout::row_major(1)
            },
            ..spec
        };
        assert!(matmul(&a, &b, &mut c, &overlapping).is_err());
    }

    #[test]
    fn empty_inner_dimension_scales_output() {
        let mut c = [2.0f32; 4];
        let spec = MatmulSpec {
            beta: 0.5,
            ..MatmulSpec::dense(2, 2, 0)
        };
        matmul(&[], &[], &mut c, &spec).unwrap();
        assert_eq!(c, [1.0; 4]);
    }

    #[test]
    fn a_bias_needs_one_dense_output_and_a_value_per_column() {
        let linear = MatmulSpec::linear(3, 5, 4);
        assert_eq!(linear.check_bias(12, 4, None), Ok(()));
        assert_eq!(linear.check_bias(12, 9, Some(12)), Ok(()));
        assert!(matches!(
            linear.check_bias(12, 4, Some(11)),
            Err(Error::BufferTooSmall {
                operand: "residual",
                needed: 12,
                len: 11,
                ..
            })
        ));
        assert!(matches!(
            linear.check_bias(12, 3, None),
            Err(Error::BufferTooSmall {
                operand: "bias",
                needed: 4,
                len: 3,
                ..
            })
        ));
        // C longer than [m, n], a batched product, C at an offset or transposed.
        assert!(matches!(
            linear.check_bias(13, 4, None),
            Err(Error::ShapeMismatch {
                expected: 12,
                found: 13,
                ..
            })
        ));
        let batched = MatmulSpec {
            batch: [1, 2],
            ..linear
        };
        assert!(batched.check_bias(12, 4, None).is_err());
        for c in [linear.c.at(1), linear.c.transposed()] {
            assert!(MatmulSpec { c, ..linear }.check_bias(12, 4, None).is_err());
        }
    }
}
