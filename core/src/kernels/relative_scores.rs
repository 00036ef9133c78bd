//! The disentangled c2p/p2c terms: gather from the position-projected score tables and add to
//! the content-to-content scores, and the scatter that is its backward.
//!
//! Score matrices are `[batch, heads, len, len]`; the projected tables are
//! `[heads, batch, len, rows]` (head-major, so that one matmul per head covers every token of
//! the batch), where `rows` is the relative window of the sequence length.

use super::{product, require};
use crate::Error;
use crate::simd::multiversion;

/// Shape of [`add_relative_scores`] and [`relative_scores_backward`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelativeScoresSpec {
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Tokens per sequence (queries = keys).
    pub len: usize,
    /// Columns of the projected tables (the rows of the relative window).
    pub rows: usize,
    /// The attention scale `s`; both terms are divided by it after the gather.
    pub scale: f32,
}

impl RelativeScoresSpec {
    /// The operand contract of [`add_relative_scores`] (every backend's): `scores` holds
    /// `batch·heads·len²` elements, `index` `len²` and each table present (`[c2p, p2c]`)
    /// `batch·heads·len·rows`. Returns `batch·heads·len²`. The index values are checked apart
    /// by the CPU kernels; a device backend validates them where it builds the index.
    pub fn check(
        &self,
        scores: usize,
        tables: [Option<usize>; 2],
        index: usize,
    ) -> Result<usize, Error> {
        self.check_operands("add_relative_scores", scores, tables, index)
    }

    /// The operand contract of [`relative_scores_backward`]: as [`Self::check`], with the
    /// score gradient `dscores` and the table gradients `[dc2p, dp2c]`.
    pub fn check_backward(
        &self,
        dscores: usize,
        tables: [Option<usize>; 2],
        index: usize,
    ) -> Result<usize, Error> {
        self.check_operands("relative_scores_backward", dscores, tables, index)
    }

    fn check_operands(
        &self,
        kernel: &'static str,
        scores: usize,
        tables: [Option<usize>; 2],
        index: usize,
    ) -> Result<usize, Error> {
        let len = self.len;
        let total = product(kernel, &[self.batch, self.heads, len, len])?;
        let table = product(kernel, &[self.batch, self.heads, len, self.rows])?;
        require(kernel, "scores", total, scores)?;
        require(kernel, "index", len * len, index)?;
        for (name, t) in ["c2p", "p2c"].into_iter().zip(tables) {
            if let Some(t) = t {
                require(kernel, name, table, t)?;
            }
        }
        Ok(total)
    }

    /// That every entry of the `[len, len]` relative index (whose length [`Self::check`]
    /// has checked) is a column of the projected tables.
    pub(crate) fn check_index(&self, index: &[u32]) -> Result<(), Error> {
        let len = self.len;
        if let Some(&bad) = index[..len * len]
            .iter()
            .find(|&&r| r as usize >= self.rows)
        {
            return Err(Error::ShapeMismatch {
                what: "relative index beyond the projected table",
                expected: self.rows,
                found: bad as usize,
            });
        }
        Ok(())
    }

    /// Offset of `(batch b, head h)`'s `[len, rows]` table.
    pub(crate) fn table_offset(&self, b: usize, h: usize) -> usize {
        (h * self.batch + b) * self.len * self.rows
    }
}

/// `scores[b,h,i,j] += c2p[h,b,i,idx[i,j]]/s + p2c[h,b,j,idx[i,j]]/s` (either term optional).
///
/// `c2p` is `Q·Krᵀ` and `p2c` is `K·Qrᵀ` over the window; `index` is the `[len, len]` table of
/// [`fill_relative_index`](crate::relative_position::fill_relative_index). Both terms use the
/// same index (SPEC §3.4), and the sum is formed in Hugging Face's order.
pub fn add_relative_scores(
    scores: &mut [f32],
    c2p: Option<&[f32]>,
    p2c: Option<&[f32]>,
    index: &[u32],
    spec: RelativeScoresSpec,
) -> Result<(), Error> {
    let total = spec.check(
        scores.len(),
        [c2p.map(<[f32]>::len), p2c.map(<[f32]>::len)],
        index.len(),
    )?;
    spec.check_index(index)?;
    add_relative_scores_rows(&mut scores[..total], 0, c2p, p2c, index, spec);
    Ok(())
}

multiversion! {
    /// [`add_relative_scores`] on whole score rows: `rows` holds rows `first_row..` of the
    /// `[batch·heads·len, len]` scores; the shapes are checked by the caller.
    pub(crate) fn add_relative_scores_rows(
        scores: &mut [f32],
        first_row: usize,
        c2p: Option<&[f32]>,
        p2c: Option<&[f32]>,
        index: &[u32],
        spec: RelativeScoresSpec,
    ) {
        let (len, rows, s) = (spec.len, spec.rows, spec.scale);
        if len == 0 {
            return;
        }
        for (local, out) in scores.chunks_exact_mut(len).enumerate() {
            let row = first_row + local;
            let (matrix, i) = (row / len, row % len);
            let (b, h) = (matrix / spec.heads, matrix % spec.heads);
            let t = spec.table_offset(b, h);
            let idx = &index[i * len..(i + 1) * len];
            match (c2p, p2c) {
                (Some(c2p), Some(p2c)) => {
                    let c2p_row = &c2p[t + i * rows..][..rows];
                    for (j, (o, &r)) in out.iter_mut().zip(idx).enumerate() {
                        let r = r as usize;
                        *o += c2p_row[r] / s + p2c[t + j * rows + r] / s;
                    }
                }
                (Some(c2p), None) => {
                    let c2p_row = &c2p[t + i * rows..][..rows];
                    for (o, &r) in out.iter_mut().zip(idx) {
                        *o += c2p_row[r as usize] / s;
                    }
                }
                (None, Some(p2c)) => {
                    for (j, (o, &r)) in out.iter_mut().zip(idx).enumerate() {
                        *o += p2c[t + j * rows + r as usize] / s;
                    }
                }
                (None, None) => {}
            }
        }
    }
}

/// Backward of [`add_relative_scores`]: `dc2p[h,b,i,r] = Σ_{j: idx[i,j]=r} dscores[b,h,i,j]/s`
/// and `dp2c[h,b,j,r] = Σ_{i: idx[i,j]=r} dscores[b,h,i,j]/s`, written (not accumulated).
/// Each output element has one owner that sums in index order: deterministic.
pub fn relative_scores_backward(
    dscores: &[f32],
    index: &[u32],
    dc2p: Option<&mut [f32]>,
    dp2c: Option<&mut [f32]>,
    spec: RelativeScoresSpec,
) -> Result<(), Error> {
    spec.check_backward(
        dscores.len(),
        [
            dc2p.as_deref().map(<[f32]>::len),
            dp2c.as_deref().map(<[f32]>::len),
        ],
        index.len(),
    )?;
    spec.check_index(index)?;
    let table = spec.batch * spec.heads * spec.len * spec.rows;
    if let Some(dc2p) = dc2p {
        for (t, out) in dc2p[..table]
            .chunks_exact_mut(spec.len * spec.rows)
            .enumerate()
        {
            relative_table_backward(dscores, index, RelativeTerm::C2p, t, out, spec);
        }
    }
    if let Some(dp2c) = dp2c {
        for (t, out) in dp2c[..table]
            .chunks_exact_mut(spec.len * spec.rows)
            .enumerate()
        {
            relative_table_backward(dscores, index, RelativeTerm::P2c, t, out, spec);
        }
    }
    Ok(())
}

/// Which position term a table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelativeTerm {
    /// Content-to-position, `Q·Krᵀ`: row `i` is the query.
    C2p,
    /// Position-to-content, `K·Qrᵀ`: row `j` is the key.
    P2c,
}

multiversion! {
    /// [`relative_scores_backward`] for one `[len, rows]` table, the `table`-th of the
    /// `[heads, batch]` tables (`table = h·batch + b`), written to `out`; the shapes are checked
    /// by the caller.
    pub(crate) fn relative_table_backward(
        dscores: &[f32],
        index: &[u32],
        term: RelativeTerm,
        table: usize,
        out: &mut [f32],
        spec: RelativeScoresSpec,
    ) {
        let (len, rows, s) = (spec.len, spec.rows, spec.scale);
        let (h, b) = (table / spec.batch, table % spec.batch);
        let d = &dscores[(b * spec.heads + h) * len * len..][..len * len];
        out.fill(0.0);
        match term {
            RelativeTerm::C2p => {
                for i in 0..len {
                    let dst = &mut out[i * rows..][..rows];
                    let di = &d[i * len..(i + 1) * len];
                    for (&g, &r) in di.iter().zip(&index[i * len..(i + 1) * len]) {
                        dst[r as usize] += g / s;
                    }
                }
            }
            RelativeTerm::P2c => {
                for j in 0..len {
                    let dst = &mut out[j * rows..][..rows];
                    for i in 0..len {
                        dst[index[i * len + j] as usize] += d[i * len + j] / s;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_with_one_index_for_both_terms() {
        // len 2, rows 3: idx = [[1, 0], [2, 1]].
        let index = [1u32, 0, 2, 1];
        let c2p = [10.0f32, 11.0, 12.0, 20.0, 21.0, 22.0];
        let p2c = [100.0f32, 101.0, 102.0, 200.0, 201.0, 202.0];
        let mut scores = [0.0f32; 4];
        let spec = RelativeScoresSpec {
            batch: 1,
            heads: 1,
            len: 2,
            rows: 3,
            scale: 1.0,
        };
        add_relative_scores(&mut scores, Some(&c2p), Some(&p2c), &index, spec).unwrap();
        // (0,0): c2p[0][1] + p2c[0][1]; (0,1): c2p[0][0] + p2c[1][0];
        // (1,0): c2p[1][2] + p2c[0][2]; (1,1): c2p[1][1] + p2c[1][1].
        assert_eq!(
            scores,
            [11.0 + 101.0, 10.0 + 200.0, 22.0 + 102.0, 21.0 + 201.0]
        );
        let bad = [3u32, 0, 0, 0];
        assert!(add_relative_scores(&mut scores, Some(&c2p), None, &bad, spec).is_err());
    }

    #[test]
    fn backward_is_the_adjoint_of_the_gather() {
        // <add(c2p, p2c), g> = <c2p, dc2p(g)> + <p2c, dp2c(g)> for any tables and g.
        let spec = RelativeScoresSpec {
            batch: 2,
            heads: 3,
            len: 4,
            rows: 7,
            scale: 2.0,
        };
        let index: [u32; 16] = core::array::from_fn(|k| (3 + k / 4 - k % 4) as u32);
        let table = 2 * 3 * 4 * 7;
        let c2p: [f32; 168] = core::array::from_fn(|k| ((k * 37) % 11) as f32 - 5.0);
        let p2c: [f32; 168] = core::array::from_fn(|k| ((k * 53) % 13) as f32 - 6.0);
        let g: [f32; 96] = core::array::from_fn(|k| ((k * 29) % 7) as f32 - 3.0);
        let mut scores = [0.0f32; 96];
        add_relative_scores(&mut scores, Some(&c2p), Some(&p2c), &index, spec).unwrap();
        let lhs: f64 = scores
            .iter()
            .zip(&g)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        let mut dc2p = [9.0f32; 168];
        let mut dp2c = [9.0f32; 168];
        relative_scores_backward(&g, &index, Some(&mut dc2p), Some(&mut dp2c), spec).unwrap();
        let rhs: f64 = (0..table)
            .map(|k| c2p[k] as f64 * dc2p[k] as f64 + p2c[k] as f64 * dp2c[k] as f64)
            .sum();
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}
