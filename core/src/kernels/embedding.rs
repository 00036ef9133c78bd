//! Embedding-table lookups.

use super::{product, require};
use crate::Error;

/// The operand contract of [`embedding_lookup`] (every backend's): `out` holds a row of
/// width `dim` per id. Returns `ids·dim`. (Ids are checked against the table as they are read.)
pub fn check_embedding_lookup(ids: usize, dim: usize, out: usize) -> Result<usize, Error> {
    let needed = product("embedding_lookup", &[ids, dim])?;
    require("embedding_lookup", "out", needed, out)?;
    Ok(needed)
}

/// The operand contract of [`embedding_backward`] (every backend's): `dout` holds a row of
/// width `dim` per id. Returns `ids·dim`.
pub fn check_embedding_backward(ids: usize, dim: usize, dout: usize) -> Result<usize, Error> {
    let needed = product("embedding_backward", &[ids, dim])?;
    require("embedding_backward", "dout", needed, dout)?;
    Ok(needed)
}

/// `out[r] (+)= table[ids[r]]` for every id, rows of width `dim`. With `accumulate` the row is
/// added to `out` (position and token-type embeddings), otherwise it overwrites it.
/// An id outside the table is a [`Error::TokenOutOfRange`] naming its position.
pub fn embedding_lookup(
    table: &[f32],
    ids: &[u32],
    out: &mut [f32],
    dim: usize,
    accumulate: bool,
    table_name: &'static str,
) -> Result<(), Error> {
    check_embedding_lookup(ids.len(), dim, out.len())?;
    if dim == 0 {
        return Ok(());
    }
    let rows = table.len() / dim;
    for (position, (&id, dst)) in ids.iter().zip(out.chunks_exact_mut(dim)).enumerate() {
        let id = id as usize;
        if id >= rows {
            return Err(Error::TokenOutOfRange {
                table: table_name,
                position,
                id: id as u64,
                rows,
            });
        }
        let src = &table[id * dim..(id + 1) * dim];
        if accumulate {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        } else {
            dst.copy_from_slice(src);
        }
    }
    Ok(())
}

/// Backward of [`embedding_lookup`]: `dtable[ids[r]] += dout[r]` for every row in order,
/// except rows whose id equals `skip` (PyTorch's `padding_idx`: the lookup never adds gradient
/// to that row).
pub fn embedding_backward(
    ids: &[u32],
    dout: &[f32],
    dtable: &mut [f32],
    dim: usize,
    skip: Option<u32>,
) -> Result<(), Error> {
    check_embedding_backward(ids.len(), dim, dout.len())?;
    if dim == 0 {
        return Ok(());
    }
    let rows = dtable.len() / dim;
    for (position, (&id, src)) in ids.iter().zip(dout.chunks_exact(dim)).enumerate() {
        if Some(id) == skip {
            continue;
        }
        let row = id as usize;
        if row >= rows {
            return Err(Error::TokenOutOfRange {
                table: "embedding gradient",
                position,
                id: id as u64,
                rows,
            });
        }
        for (d, &g) in dtable[row * dim..(row + 1) * dim].iter_mut().zip(src) {
            *d += g;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_accumulates_and_rejects_out_of_range_ids() {
        let table = [0.0f32, 1.0, 10.0, 11.0, 20.0, 21.0];
        let mut out = [0.0f32; 4];
        embedding_lookup(&table, &[2, 0], &mut out, 2, false, "t").unwrap();
        assert_eq!(out, [20.0, 21.0, 0.0, 1.0]);
        embedding_lookup(&table, &[1, 1], &mut out, 2, true, "t").unwrap();
        assert_eq!(out, [30.0, 32.0, 10.0, 12.0]);
        let err = embedding_lookup(&table, &[0, 3], &mut out, 2, false, "t").unwrap_err();
        assert_eq!(
            err,
            Error::TokenOutOfRange {
                table: "t",
                position: 1,
                id: 3,
                rows: 3
            }
        );
    }
}
