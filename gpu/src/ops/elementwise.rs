//! Element-wise and broadcast kernels.

use deberta_core::kernels::{
    check_activation, check_activation_backward, check_add_assign, check_add_bias,
    check_add_sequence_row, check_add_sequence_row_backward, check_scale_rows,
};
use deberta_core::{Activation, Error};

use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{ELEMENTWISE_WG, Kernel};
use crate::params::ElementwiseParams;
use crate::tensor::GpuTensor;

/// The WGSL activation code (`ACT_*` in elementwise.wgsl; any other value is the identity).
fn activation_code(act: Activation) -> u32 {
    match act {
        Activation::Gelu => 0,
        Activation::GeluTanh => 1,
        Activation::Relu => 2,
        Activation::Tanh => 3,
        Activation::Silu => 4,
        Activation::Sigmoid => 5,
        Activation::Identity => 6,
    }
}

/// Launches an element-wise kernel over `n` elements (nothing for `n = 0`).
fn launch(
    gpu: &Gpu,
    kernel: Kernel,
    params: ElementwiseParams,
    n: usize,
    buffers: &[&GpuTensor],
) -> Result<(), Error> {
    let buffers = buffers
        .iter()
        .map(|t| gpu.buf(t))
        .collect::<Result<Vec<_>, _>>()?;
    if n == 0 {
        return Ok(());
    }
    let params = ElementwiseParams {
        n: word(n)?,
        ..params
    };
    gpu.dispatch(kernel, &params, &buffers, gpu.grid_for(n, ELEMENTWISE_WG)?)
}

/// `x += y`.
pub(crate) fn add_assign(gpu: &Gpu, x: &mut GpuTensor, y: &GpuTensor) -> Result<(), Error> {
    check_add_assign(x.len(), y.len())?;
    launch(gpu, Kernel::AddAssign, Default::default(), x.len(), &[x, y])
}

/// `x[r, :] += bias`.
pub(crate) fn add_bias(
    gpu: &Gpu,
    x: &mut GpuTensor,
    bias: &GpuTensor,
    cols: usize,
) -> Result<(), Error> {
    check_add_bias(bias.len(), cols)?;
    if cols == 0 {
        return Ok(());
    }
    let params = ElementwiseParams {
        cols: word(cols)?,
        ..Default::default()
    };
    launch(
        gpu,
        Kernel::AddBias,
        params,
        x.len() / cols * cols,
        &[x, bias],
    )
}

/// `x[r, :] *= scales[r]`.
pub(crate) fn scale_rows(
    gpu: &Gpu,
    x: &mut GpuTensor,
    scales: &GpuTensor,
    cols: usize,
) -> Result<(), Error> {
    check_scale_rows(x.len(), scales.len(), cols)?;
    if cols == 0 {
        return Ok(());
    }
    let params = ElementwiseParams {
        cols: word(cols)?,
        ..Default::default()
    };
    launch(
        gpu,
        Kernel::ScaleRows,
        params,
        x.len() / cols * cols,
        &[x, scales],
    )
}

/// `x *= alpha`.
pub(crate) fn scale(gpu: &Gpu, x: &mut GpuTensor, alpha: f32) -> Result<(), Error> {
    let params = ElementwiseParams {
        alpha,
        ..Default::default()
    };
    launch(gpu, Kernel::Scale, params, x.len(), &[x])
}

/// `out = act(x)`.
pub(crate) fn activation(
    gpu: &Gpu,
    act: Activation,
    x: &GpuTensor,
    out: &mut GpuTensor,
) -> Result<(), Error> {
    check_activation(x.len(), out.len())?;
    let params = ElementwiseParams {
        act: activation_code(act),
        ..Default::default()
    };
    launch(gpu, Kernel::Activation, params, x.len(), &[out, x])
}

/// `dx (+)= dout · act'(x)`.
pub(crate) fn activation_backward(
    gpu: &Gpu,
    act: Activation,
    x: &GpuTensor,
    dout: &GpuTensor,
    dx: &mut GpuTensor,
    accumulate: bool,
) -> Result<(), Error> {
    check_activation_backward(x.len(), dout.len(), dx.len())?;
    let params = ElementwiseParams {
        act: activation_code(act),
        accumulate: flag(accumulate),
        ..Default::default()
    };
    launch(
        gpu,
        Kernel::ActivationBackward,
        params,
        x.len(),
        &[dx, x, dout],
    )
}

/// `out[b, i, :] = x[b, i, :] + x[b, row, :]`.
pub(crate) fn add_sequence_row(
    gpu: &Gpu,
    x: &GpuTensor,
    out: &mut GpuTensor,
    shape: [usize; 3],
    row: usize,
) -> Result<(), Error> {
    let total = check_add_sequence_row(shape, row, x.len(), out.len())?;
    let params = ElementwiseParams {
        cols: word(shape[2])?,
        len: word(shape[1])?,
        row: word(row)?,
        ..Default::default()
    };
    launch(gpu, Kernel::AddSequenceRow, params, total, &[out, x])
}

/// Backward of [`add_sequence_row`].
pub(crate) fn add_sequence_row_backward(
    gpu: &Gpu,
    dout: &GpuTensor,
    dx: &mut GpuTensor,
    shape: [usize; 3],
    row: usize,
    accumulate: bool,
) -> Result<(), Error> {
    let total = check_add_sequence_row_backward(shape, row, dout.len(), dx.len())?;
    let params = ElementwiseParams {
        cols: word(shape[2])?,
        len: word(shape[1])?,
        row: word(row)?,
        accumulate: flag(accumulate),
        ..Default::default()
    };
    launch(
        gpu,
        Kernel::AddSequenceRowBackward,
        params,
        total,
        &[dx, dout],
    )
}
