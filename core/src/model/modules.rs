//! The two building blocks every layer uses: PyTorch `Linear` and `LayerNorm`.

use alloc::format;

use super::params::{Init, ParamId, ParamLayout, ParamStore};
use crate::Error;
use crate::backend::Backend;
use crate::kernels::{LayerNormSpec, MatmulSpec};

/// `y = x·Wᵀ (+ b)` with `W` `[output, input]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Linear {
    /// `{prefix}.weight`, `[output, input]`.
    pub weight: ParamId,
    /// `{prefix}.bias`, `[output]`, when the layer has one.
    pub bias: Option<ParamId>,
    /// Input width.
    pub input: usize,
    /// Output width.
    pub output: usize,
}

impl Linear {
    /// Registers `{prefix}.weight` (and `{prefix}.bias`).
    pub fn new(
        layout: &mut ParamLayout,
        prefix: &str,
        input: usize,
        output: usize,
        bias: bool,
        std: f32,
    ) -> Self {
        let weight = layout.add(
            format!("{prefix}.weight"),
            &[output, input],
            Init::Normal(std),
        );
        let bias = bias.then(|| layout.add(format!("{prefix}.bias"), &[output], Init::Zeros));
        Linear {
            weight,
            bias,
            input,
            output,
        }
    }

    /// `out[rows, output] = x[rows, input]·Wᵀ + b`.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        x: &B::Tensor,
        out: &mut B::Tensor,
        rows: usize,
    ) -> Result<(), Error> {
        let spec = MatmulSpec::linear(rows, self.input, self.output);
        backend.matmul(x, params.get(self.weight), out, &spec)?;
        if let Some(bias) = self.bias {
            backend.add_bias(out, params.get(bias), self.output)?;
        }
        Ok(())
    }
}

/// PyTorch `nn.LayerNorm(width, eps)` with affine parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNorm {
    /// `{prefix}.weight` (γ).
    pub weight: ParamId,
    /// `{prefix}.bias` (β).
    pub bias: ParamId,
    /// Normalised width.
    pub width: usize,
    /// Epsilon.
    pub eps: f32,
}

impl LayerNorm {
    /// Registers `{prefix}.weight` and `{prefix}.bias`.
    pub fn new(layout: &mut ParamLayout, prefix: &str, width: usize, eps: f32) -> Self {
        LayerNorm {
            weight: layout.add(format!("{prefix}.weight"), &[width], Init::Ones),
            bias: layout.add(format!("{prefix}.bias"), &[width], Init::Zeros),
            width,
            eps,
        }
    }

    /// Normalises `rows` rows of `x` into `out`, recording `[mean, rstd]` per row in `stats`.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        x: &B::Tensor,
        out: &mut B::Tensor,
        stats: Option<&mut B::Tensor>,
        rows: usize,
    ) -> Result<(), Error> {
        backend.layer_norm(
            x,
            params.get(self.weight),
            params.get(self.bias),
            out,
            stats,
            LayerNormSpec {
                rows,
                cols: self.width,
                eps: self.eps,
            },
        )
    }
}
