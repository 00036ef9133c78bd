//! The disentangled c2p/p2c terms: gather from the position-projected score tables and add to
//! the content-to-content scores.

use super::{product, require};
use crate::Error;

/// Shape of [`add_relative_scores`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelativeScoresSpec {
    /// Score matrices (`batch · heads`).
    pub matrices: usize,
    /// Tokens per sequence (queries = keys).
    pub len: usize,
    /// Columns of the projected tables (the rows of the relative window).
    pub rows: usize,
    /// The attention scale `s`; both terms are divided by it after the gather.
    pub scale: f32,
}

/// `scores[n,i,j] += c2p[n,i,idx[i,j]]/s + p2c[n,j,idx[i,j]]/s` (either term optional).
///
/// `c2p` is `Q·Krᵀ` and `p2c` is `K·Qrᵀ`, both `[matrices, len, rows]`; `index` is the
/// `[len, len]` table of [`fill_relative_index`](crate::relative_position::fill_relative_index).
/// Both terms use the same index (SPEC §3.4), and the sum is formed in Hugging Face's order.
pub fn add_relative_scores(
    scores: &mut [f32],
    c2p: Option<&[f32]>,
    p2c: Option<&[f32]>,
    index: &[u32],
    spec: RelativeScoresSpec,
) -> Result<(), Error> {
    let len = spec.len;
    let total = product("add_relative_scores", &[spec.matrices, len, len])?;
    let table = product("add_relative_scores", &[spec.matrices, len, spec.rows])?;
    require("add_relative_scores", "scores", total, scores.len())?;
    require("add_relative_scores", "index", len * len, index.len())?;
    if let Some(t) = c2p {
        require("add_relative_scores", "c2p", table, t.len())?;
    }
    if let Some(t) = p2c {
        require("add_relative_scores", "p2c", table, t.len())?;
    }
    if let Some(&bad) = index[..len * len]
        .iter()
        .find(|&&r| r as usize >= spec.rows)
    {
        return Err(Error::ShapeMismatch {
            what: "relative index beyond the projected table",
            expected: spec.rows,
            found: bad as usize,
        });
    }
    let s = spec.scale;
    for n in 0..spec.matrices {
        let tables = n * len * spec.rows;
        for i in 0..len {
            let out = &mut scores[(n * len + i) * len..(n * len + i + 1) * len];
            let idx = &index[i * len..(i + 1) * len];
            match (c2p, p2c) {
                (Some(c2p), Some(p2c)) => {
                    let c2p_row = &c2p[tables + i * spec.rows..tables + (i + 1) * spec.rows];
                    for (j, (o, &r)) in out.iter_mut().zip(idx).enumerate() {
                        let r = r as usize;
                        *o += c2p_row[r] / s + p2c[tables + j * spec.rows + r] / s;
                    }
                }
                (Some(c2p), None) => {
                    let c2p_row = &c2p[tables + i * spec.rows..tables + (i + 1) * spec.rows];
                    for (o, &r) in out.iter_mut().zip(idx) {
                        *o += c2p_row[r as usize] / s;
                    }
                }
                (None, Some(p2c)) => {
                    for (j, (o, &r)) in out.iter_mut().zip(idx).enumerate() {
                        *o += p2c[tables + j * spec.rows + r as usize] / s;
                    }
                }
                (None, None) => {}
            }
        }
    }
    Ok(())
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
            matrices: 1,
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
}
