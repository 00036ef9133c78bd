//! The two building blocks every layer uses, PyTorch `Linear` and `LayerNorm`, forward and
//! backward. By convention every backward **adds** into the input gradient it is given and
//! into the parameter gradients; callers zero buffers when they start a new gradient.

use alloc::format;

use super::context::BackwardContext;
use super::params::{Init, ParamId, ParamLayout, ParamStore};
use crate::Error;
use crate::backend::{Backend, LayerNormGrads};
use crate::kernels::{LayerNormSpec, MatmulSpec, PackedWeight};

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
        layout.mark_linear_weight(weight);
        let bias = bias.then(|| layout.add(format!("{prefix}.bias"), &[output], Init::Zeros));
        Linear {
            weight,
            bias,
            input,
            output,
        }
    }

    /// `out[rows, output] = x[rows, input]·Wᵀ + b`, through the weight's packed copy when
    /// the store holds one ([`ParamStore::pack`]), else at the store's
    /// [`ParamStore::products`] format (f32 unless set).
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        x: &B::Tensor,
        out: &mut B::Tensor,
        rows: usize,
    ) -> Result<(), Error> {
        self.forward_residual(backend, params, x, None, out, rows)
    }

    /// [`Linear::forward`] with `residual` (`[rows, output]`, where given) added to the output
    /// (a residual connection): by the product's kernel as it stores the output where the
    /// layer has a bias and no packed copy ([`Backend::matmul_bias`]), else after it.
    pub fn forward_residual<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        x: &B::Tensor,
        residual: Option<&B::Tensor>,
        out: &mut B::Tensor,
        rows: usize,
    ) -> Result<(), Error> {
        let spec = MatmulSpec::linear(rows, self.input, self.output);
        let (weight, products) = (params.get(self.weight), params.products());
        match (params.packed(self.weight), self.bias) {
            (None, Some(bias)) => {
                let bias = params.get(bias);
                return backend.matmul_bias([x, weight], bias, residual, out, &spec, products);
            }
            (None, None) => backend.matmul_reduced(x, weight, out, &spec, products)?,
            (Some(packed), bias) => {
                backend.matmul_packed(x, packed, out, rows)?;
                if let Some(bias) = bias {
                    backend.add_bias(out, params.get(bias), self.output)?;
                }
            }
        }
        match residual {
            Some(residual) => backend.add_assign(out, residual),
            None => Ok(()),
        }
    }

    /// Adds `∂L/∂W = dyᵀ·x`, `∂L/∂b = Σ dy` to `ctx.grads` and, when `dx` is given,
    /// `∂L/∂x = dy·W` to `dx`. The two products run at the precision of the weight's packed
    /// copy when it has one (bf16-mixed training: bf16 operands, f32 sums), else at the
    /// store's [`ParamStore::products`] format (f32 unless set; f16 in mixed training on
    /// wgpu).
    pub fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        x: &B::Tensor,
        dy: &B::Tensor,
        dx: Option<&mut B::Tensor>,
        rows: usize,
    ) -> Result<(), Error> {
        let (backend, params) = (ctx.backend, ctx.params);
        let precision = params
            .packed(self.weight)
            .map_or(params.products(), PackedWeight::precision);
        backend.matmul_reduced(
            dy,
            x,
            ctx.grads.get_mut(self.weight),
            &MatmulSpec::linear_weight_grad(rows, self.input, self.output),
            precision,
        )?;
        if let Some(bias) = self.bias {
            backend.sum_rows(dy, ctx.grads.get_mut(bias), self.output, true)?;
        }
        if let Some(dx) = dx {
            backend.matmul_reduced(
                dy,
                params.get(self.weight),
                dx,
                &MatmulSpec::linear_input_grad(rows, self.input, self.output),
                precision,
            )?;
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

    fn spec(&self, rows: usize) -> LayerNormSpec {
        LayerNormSpec {
            rows,
            cols: self.width,
            eps: self.eps,
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
            self.spec(rows),
        )
    }

    /// Adds `∂L/∂γ`, `∂L/∂β` to `ctx.grads` and `∂L/∂x` to `dx`, from the forward input `x`
    /// and its `stats`.
    pub fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        x: &B::Tensor,
        stats: &B::Tensor,
        dout: &B::Tensor,
        dx: &mut B::Tensor,
        rows: usize,
    ) -> Result<(), Error> {
        let (backend, params) = (ctx.backend, ctx.params);
        let (dgamma, dbeta) = ctx.grads.pair_mut(self.weight, self.bias)?;
        backend.layer_norm_backward(
            x,
            params.get(self.weight),
            stats,
            dout,
            LayerNormGrads {
                dx,
                dgamma,
                dbeta,
                accumulate_dx: true,
            },
            self.spec(rows),
        )
    }
}
