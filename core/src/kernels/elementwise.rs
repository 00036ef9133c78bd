//! Element-wise and broadcast kernels.

use super::{product, require};
use crate::simd::multiversion;
use crate::{Activation, Error};

/// The operand contract of [`add_assign`] (every backend's): `y` covers `x`.
pub fn check_add_assign(x: usize, y: usize) -> Result<(), Error> {
    require("add_assign", "y", x, y)
}

/// The operand contract of [`add_bias`] (every backend's): `bias` holds `cols` elements.
pub fn check_add_bias(bias: usize, cols: usize) -> Result<(), Error> {
    require("add_bias", "bias", cols, bias)
}

/// The operand contract of [`scale_rows`] (every backend's): one scale per whole row of `x`
/// (nothing to check when `cols = 0`).
pub fn check_scale_rows(x: usize, scales: usize, cols: usize) -> Result<(), Error> {
    match x.checked_div(cols) {
        Some(rows) => require("scale_rows", "scales", rows, scales),
        None => Ok(()),
    }
}

/// The operand contract of [`activation`] (every backend's): `out` covers `x`.
pub fn check_activation(x: usize, out: usize) -> Result<(), Error> {
    require("activation", "out", x, out)
}

/// The operand contract of [`activation_backward`] (every backend's): `dout` and `dx` cover
/// `x`.
pub fn check_activation_backward(x: usize, dout: usize, dx: usize) -> Result<(), Error> {
    require("activation_backward", "dout", x, dout)?;
    require("activation_backward", "dx", x, dx)
}

/// The operand contract of [`add_sequence_row`] (every backend's): `x` and `out` hold
/// `batch·len·dim` elements and `row < len`. Returns `batch·len·dim`.
pub fn check_add_sequence_row(
    shape: [usize; 3],
    row: usize,
    x: usize,
    out: usize,
) -> Result<usize, Error> {
    let kernel = ("add_sequence_row", "add_sequence_row row index");
    check_sequence_operands(kernel, shape, row, [("x", x), ("out", out)])
}

/// The operand contract of [`add_sequence_row_backward`] (every backend's): `dout` and `dx`
/// hold `batch·len·dim` elements and `row < len`. Returns `batch·len·dim`.
pub fn check_add_sequence_row_backward(
    shape: [usize; 3],
    row: usize,
    dout: usize,
    dx: usize,
) -> Result<usize, Error> {
    let kernel = (
        "add_sequence_row_backward",
        "add_sequence_row_backward row index",
    );
    check_sequence_operands(kernel, shape, row, [("dout", dout), ("dx", dx)])
}

/// Both operands of a `[batch, len, dim]` sequence kernel (named `kernel.0`) hold
/// `batch·len·dim` elements, and `row < len` (or a mismatch in `kernel.1`).
fn check_sequence_operands(
    (kernel, row_index): (&'static str, &'static str),
    [batch, len, dim]: [usize; 3],
    row: usize,
    operands: [(&'static str, usize); 2],
) -> Result<usize, Error> {
    let total = product(kernel, &[batch, len, dim])?;
    for (name, operand) in operands {
        require(kernel, name, total, operand)?;
    }
    if row >= len {
        return Err(Error::ShapeMismatch {
            what: row_index,
            expected: len,
            found: row,
        });
    }
    Ok(total)
}

/// The operand contract of [`sum_rows`] (every backend's): `out` holds `cols` elements.
pub fn check_sum_rows(out: usize, cols: usize) -> Result<(), Error> {
    require("sum_rows", "out", cols, out)
}

/// `x += y` element-wise over `x.len()` elements.
pub fn add_assign(x: &mut [f32], y: &[f32]) -> Result<(), Error> {
    check_add_assign(x.len(), y.len())?;
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
    Ok(())
}

/// `x[r, c] += bias[c]` for every row of a row-major `[rows, cols]` buffer (`rows = len/cols`).
pub fn add_bias(x: &mut [f32], bias: &[f32], cols: usize) -> Result<(), Error> {
    check_add_bias(bias.len(), cols)?;
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
    check_scale_rows(x.len(), scales.len(), cols)?;
    if cols == 0 {
        return Ok(());
    }
    for (row, &s) in x.chunks_exact_mut(cols).zip(scales) {
        for a in row.iter_mut() {
            *a *= s;
        }
    }
    Ok(())
}

/// Evaluates `$body` with `$a` bound to `$act` as a constant of each variant in turn, so that
/// a loop in `$body` is compiled once per function, with no `match` per element, and vectorises.
macro_rules! per_activation {
    ($act:expr, |$a:ident| $body:expr) => {
        match $act {
            Activation::Gelu => {
                let $a = Activation::Gelu;
                $body
            }
            Activation::GeluTanh => {
                let $a = Activation::GeluTanh;
                $body
            }
            Activation::Relu => {
                let $a = Activation::Relu;
                $body
            }
            Activation::Tanh => {
                let $a = Activation::Tanh;
                $body
            }
            Activation::Silu => {
                let $a = Activation::Silu;
                $body
            }
            Activation::Sigmoid => {
                let $a = Activation::Sigmoid;
                $body
            }
            Activation::Identity => {
                let $a = Activation::Identity;
                $body
            }
        }
    };
}

multiversion! {
    /// `out = f(x)` element-wise over `x.len()` elements.
    pub fn activation(act: Activation, x: &[f32], out: &mut [f32]) -> Result<(), Error> {
        check_activation(x.len(), out.len())?;
        per_activation!(act, |a| {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = a.apply(v);
            }
        });
        Ok(())
    }
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
    check_add_sequence_row([batch, len, dim], row, x.len(), out.len())?;
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

multiversion! {
    /// Backward of [`activation`]: `dx (+)= dout · f'(x)`.
    pub fn activation_backward(
        act: Activation,
        x: &[f32],
        dout: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) -> Result<(), Error> {
        check_activation_backward(x.len(), dout.len(), dx.len())?;
        per_activation!(act, |a| {
            if accumulate {
                for ((d, &v), &g) in dx.iter_mut().zip(x).zip(dout) {
                    *d += g * a.derivative(v);
                }
            } else {
                for ((d, &v), &g) in dx.iter_mut().zip(x).zip(dout) {
                    *d = g * a.derivative(v);
                }
            }
        });
        Ok(())
    }
}

/// Backward of [`add_sequence_row`]: `dx[b,i] (+)= dout[b,i]`, and row `row` of each sequence
/// also receives `Σ_i dout[b,i]` (summed in order).
pub fn add_sequence_row_backward(
    dout: &[f32],
    dx: &mut [f32],
    shape: [usize; 3],
    row: usize,
    accumulate: bool,
) -> Result<(), Error> {
    let [batch, len, dim] = shape;
    check_add_sequence_row_backward(shape, row, dout.len(), dx.len())?;
    for b in 0..batch {
        let g = &dout[b * len * dim..(b + 1) * len * dim];
        let d = &mut dx[b * len * dim..(b + 1) * len * dim];
        if accumulate {
            for (a, &v) in d.iter_mut().zip(g) {
                *a += v;
            }
        } else {
            d.copy_from_slice(g);
        }
        for i in 0..len {
            for c in 0..dim {
                d[row * dim + c] += g[i * dim + c];
            }
        }
    }
    Ok(())
}

/// `out[c] (+)= Σ_r x[r, c]` over the rows of a `[rows, cols]` buffer (`rows = len/cols`), in
/// row order: the gradient of a bias.
pub fn sum_rows(x: &[f32], out: &mut [f32], cols: usize, accumulate: bool) -> Result<(), Error> {
    check_sum_rows(out.len(), cols)?;
    if !accumulate {
        out[..cols].fill(0.0);
    }
    if cols == 0 {
        return Ok(());
    }
    for row in x.chunks_exact(cols) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    Ok(())
}

/// `x *= alpha` element-wise.
pub fn scale(x: &mut [f32], alpha: f32) {
    for v in x.iter_mut() {
        *v *= alpha;
    }
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

    #[test]
    fn backward_kernels() {
        let mut dx = [0.0f32; 4];
        add_sequence_row_backward(&[1.0, 2.0, 3.0, 4.0], &mut dx, [1, 2, 2], 0, false).unwrap();
        assert_eq!(dx, [5.0, 8.0, 3.0, 4.0]);
        let mut out = [1.0f32; 2];
        sum_rows(&[1.0, 2.0, 3.0, 4.0], &mut out, 2, true).unwrap();
        assert_eq!(out, [5.0, 7.0]);
        sum_rows(&[1.0, 2.0, 3.0, 4.0], &mut out, 2, false).unwrap();
        assert_eq!(out, [4.0, 6.0]);
        let mut d = [0.0f32; 2];
        activation_backward(Activation::Relu, &[-1.0, 2.0], &[3.0, 4.0], &mut d, false).unwrap();
        assert_eq!(d, [0.0, 4.0]);
    }
}
