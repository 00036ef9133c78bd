//! Batched, strided matrix multiplication `C = α·A·B + β·C` through matrixmultiply's sgemm.
//!
//! Operands are described by [`MatrixLayout`]s: an element offset, a row and a column stride
//! (a transpose is a swap of the two) and strides for two batch dimensions, so attention can
//! address `[B, L, h·d]` activations per `(batch, head)` without any permute copies.

use super::require;
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

    fn batch_offset(&self, outer: usize, inner: usize) -> usize {
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

    /// Checks every operand's length and that `C`'s elements are distinct within a batch entry.
    pub fn validate(&self, a_len: usize, b_len: usize, c_len: usize) -> Result<(), Error> {
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
}

/// `C = α·A·B + β·C` for every batch entry, in batch order.
pub fn matmul(a: &[f32], b: &[f32], c: &mut [f32], spec: &MatmulSpec) -> Result<(), Error> {
    spec.validate(a.len(), b.len(), c.len())?;
    if spec.m == 0 || spec.n == 0 || spec.batch[0] == 0 || spec.batch[1] == 0 {
        return Ok(());
    }
    for outer in 0..spec.batch[0] {
        for inner in 0..spec.batch[1] {
            let c_off = spec.c.batch_offset(outer, inner);
            if spec.k == 0 {
                scale_output(c, c_off, spec);
                continue;
            }
            let a_off = spec.a.batch_offset(outer, inner);
            let b_off = spec.b.batch_offset(outer, inner);
            // SAFETY: `validate` proved that every element addressed by the layouts for all
            // batch entries lies inside the respective slice (with overflow-checked
            // arithmetic), that strides fit in `isize`, and that the elements of C within one
            // batch entry are distinct, so sgemm's writes never alias each other or A/B
            // (which are separate borrows). sgemm reads/writes exactly
            // `ptr + r*row_stride + col*col_stride` for r < m (k), col < k (n).
            unsafe {
                matrixmultiply::sgemm(
                    spec.m,
                    spec.k,
                    spec.n,
                    spec.alpha,
                    a.as_ptr().add(a_off),
                    spec.a.row_stride as isize,
                    spec.a.col_stride as isize,
                    b.as_ptr().add(b_off),
                    spec.b.row_stride as isize,
                    spec.b.col_stride as isize,
                    spec.beta,
                    c.as_mut_ptr().add(c_off),
                    spec.c.row_stride as isize,
                    spec.c.col_stride as isize,
                );
            }
        }
    }
    Ok(())
}

/// `C = β·C` (the `k = 0` case, which sgemm does not define).
fn scale_output(c: &mut [f32], offset: usize, spec: &MatmulSpec) {
    for r in 0..spec.m {
        for col in 0..spec.n {
            let idx = offset + r * spec.c.row_stride + col * spec.c.col_stride;
            c[idx] = if spec.beta == 0.0 {
                0.0
            } else {
                spec.beta * c[idx]
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn fill(n: usize, seed: u32) -> [f32; 256] {
        let mut out = [0.0; 256];
        let mut x = seed;
        for v in out.iter_mut().take(n) {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v = (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
        }
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
}
