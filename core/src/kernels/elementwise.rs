//! Element-wise and broadcast kernels.

use super::{product, require};
use crate::{Activation, Error};

/// `x += y` element-wise over `x.len()` elements.
pub fn add_assign(x: &mut [f32], y: &[f32]) -> Result<(), Error> {
    require("add_assign", "y", x.len(), y.len())?;
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
    Ok(())
}

/// `x[r, c] += bias[c]` for every row of a row-major `[rows, cols]` buffer (`rows = len/cols`).
pub fn add_bias(x: &mut [f32], bias: &[f32], cols: usize) -> Result<(), Error> {
    require("add_bias", "bias", cols, bias.len())?;
    if cols == 0 {
        return Ok(());
    }
    for row in x.chunks_exact_mut(cols) {
        for (a, &b) in row.iter_mut().zip(bias) {
            *a += b;
        }
    }
    Ok(())
}

/// `x[r, :] *= scales[r]` for every row (`rows = len/cols`): the padding mask on hidden states.
pub fn scale_rows(x: &mut [f32], scales: &[f32], cols: usize) -> Result<(), Error> {
    if cols == 0 {
        return Ok(());
    }
    require("scale_rows", "scales", x.len() / cols, scales.len())?;
    for (row, &s) in x.chunks_exact_mut(cols).zip(scales) {
        for a in row.iter_mut() {
            *a *= s;
        }
    }
    Ok(())
}

/// `out = f(x)` element-wise over `x.len()` elements.
pub fn activation(act: Activation, x: &[f32], out: &mut [f32]) -> Result<(), Error> {
    require("activation", "out", x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = act.apply(v);
    }
    Ok(())
}

/// `out[b, i, :] = x[b, i, :] + x[b, row, :]` for `x` `[batch, len, dim]`: adds one token's
/// state (the `[CLS]` state for the RTD head, `row = 0`) to every token of its sequence.
pub fn add_sequence_row(
    x: &[f32],
    out: &mut [f32],
    batch: usize,
    len: usize,
    dim: usize,
    row: usize,
) -> Result<(), Error> {
    let total = product("add_sequence_row", &[batch, len, dim])?;
    require("add_sequence_row", "x", total, x.len())?;
    require("add_sequence_row", "out", total, out.len())?;
    if row >= len {
        return Err(Error::ShapeMismatch {
            what: "add_sequence_row row index",
            expected: len,
            found: row,
        });
    }
    for b in 0..batch {
        let seq = &x[b * len * dim..(b + 1) * len * dim];
        let shared = &seq[row * dim..(row + 1) * dim];
        let dst = &mut out[b * len * dim..(b + 1) * len * dim];
        for (o_row, x_row) in dst.chunks_exact_mut(dim).zip(seq.chunks_exact(dim)) {
            for ((o, &v), &c) in o_row.iter_mut().zip(x_row).zip(shared) {
                *o = c + v;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        add_bias(&mut x, &[10.0, 20.0], 2).unwrap();
        assert_eq!(x, [11.0, 22.0, 13.0, 24.0]);
        scale_rows(&mut x, &[0.0, 1.0], 2).unwrap();
        assert_eq!(x, [0.0, 0.0, 13.0, 24.0]);
        let mut out = [0.0f32; 4];
        add_sequence_row(&[1.0, 2.0, 3.0, 4.0], &mut out, 1, 2, 2, 0).unwrap();
        assert_eq!(out, [2.0, 4.0, 4.0, 6.0]);
        assert!(add_sequence_row(&[1.0; 4], &mut out, 1, 2, 2, 2).is_err());
        assert!(scale_rows(&mut x, &[1.0], 2).is_err());
    }
}
