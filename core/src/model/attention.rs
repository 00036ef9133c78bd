//! Disentangled self-attention (HF `DisentangledSelfAttention`, SPEC §3.3–§3.5), forward and
//! backward.
//!
//! Per `(batch, head)` the scores are
//! `A[i,j] = Q_i·K_j/s + (Q_i·Kr[idx(i,j)])/s + (K_j·Qr[idx(i,j)])/s`, masked, softmaxed and
//! applied to `V`. Activations stay in the `[batch·len, heads·d]` layout of the projections:
//! the strided matmuls address one head's columns directly, so no permute is ever
//! materialised, and the context is written head-major exactly as HF concatenates it. The
//! position-score tables are `[heads, batch·len, R]` so that one matmul per head covers the
//! whole batch (and its backward needs no reduction over sequences).

use alloc::format;

use super::batch::DeviceBatch;
use super::context::BackwardContext;
use super::dropout::{Dropout, Site};
use super::modules::Linear;
use super::params::{ParamLayout, ParamStore};
use crate::backend::{
    AttentionBuffers, AttentionDropout, AttentionGrads, AttentionOperands, AttentionSpec, Backend,
    SavedAttention, TrainingBuffers, composed_attention_backward, composed_attention_forward_train,
};
use crate::kernels::{MatmulSpec, MatrixLayout};
use crate::{Error, ModelConfig};

/// A layer's position projections of a contiguous block of rows of the relative table:
/// `Kr = R·Wkᵀ + bk` (c2p) and `Qr = R·Wqᵀ + bq` (p2c), each `[rows, h·d]`. At inference they
/// depend on the weights only and are computed once over the whole table.
pub struct PositionProjection<T> {
    /// `Kr`, when the layer uses c2p.
    pub keys: Option<T>,
    /// `Qr`, when the layer uses p2c.
    pub queries: Option<T>,
    /// The relative-table row that row 0 of the projections holds.
    pub first_row: usize,
    /// Rows projected.
    pub rows: usize,
}

/// Gradients of one layer's [`PositionProjection`] (same shapes).
pub struct ProjectionGrads<T> {
    /// `∂L/∂Kr`.
    pub keys: Option<T>,
    /// `∂L/∂Qr`.
    pub queries: Option<T>,
}

/// What an attention (and a layer) reads besides its weights.
pub struct AttentionInput<'a, B: Backend> {
    /// Gives `Q` and the attention residual: the layer input, or the EMD queries.
    pub query_states: &'a B::Tensor,
    /// Gives `K` and `V`.
    pub hidden: &'a B::Tensor,
    /// The batch: padding mask and relative index.
    pub batch: &'a DeviceBatch<B>,
    /// This layer's position projections (with relative attention).
    pub projection: Option<&'a PositionProjection<B::Tensor>>,
    /// Index of the layer, for its dropout streams.
    pub layer: usize,
    /// Dropout when training, `None` for inference.
    pub dropout: Option<&'a Dropout>,
    /// Whether the forward must leave the attention probabilities in the activations (a
    /// backward pass reads them, and so do the `attentions` outputs); implied by `dropout`.
    /// Without it the backend's fused attention may run. The backward ignores it.
    pub keep_probs: bool,
    /// Training through the backend's [`Backend::attention_forward_train`] and
    /// [`Backend::attention_backward`] (what the forward saves is the backend's choice, so the
    /// probabilities may not be kept: it takes precedence over `keep_probs`) rather than
    /// through their compositions from the kept probabilities. Forward and backward must agree
    /// on it.
    pub train: bool,
}

impl<B: Backend> Clone for AttentionInput<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for AttentionInput<'_, B> {}

/// Where an attention's (and a layer's) backward adds the gradients of its
/// [`AttentionInput`].
pub struct AttentionInputGrads<'a, T> {
    /// `∂L/∂query_states`.
    pub dquery_states: &'a mut T,
    /// `∂L/∂hidden`; `None` for plain self-attention (`hidden` is `query_states`), whose
    /// gradient all goes to `dquery_states`.
    pub dhidden: Option<&'a mut T>,
    /// The gradients of the layer's position projections (with relative attention).
    pub dprojection: Option<&'a mut ProjectionGrads<T>>,
}

/// The attention module's weights and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct DisentangledSelfAttention {
    /// `query_proj`.
    pub query: Linear,
    /// `key_proj`.
    pub key: Linear,
    /// `value_proj`.
    pub value: Linear,
    /// `pos_key_proj` (c2p without `share_att_key`).
    pub pos_key: Option<Linear>,
    /// `pos_query_proj` (p2c without `share_att_key`).
    pub pos_query: Option<Linear>,
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// `sqrt(d·(1 + #terms))`.
    pub scale: f32,
    /// Whether c2p scores are added.
    pub c2p: bool,
    /// Whether p2c scores are added.
    pub p2c: bool,
}

/// Saved activations of one attention forward (`N = batch·len` tokens, `R` window rows).
pub struct AttentionActivations<T> {
    /// `Q`, `[N, h·d]`.
    pub query: T,
    /// `K`, `[N, h·d]`.
    pub key: T,
    /// `V`, `[N, h·d]`.
    pub value: T,
    /// `Q·Krᵀ` over the window, `[h, N, R]` (empty until a pass that uses it).
    pub c2p: Option<T>,
    /// `K·Qrᵀ` over the window, `[h, N, R]` (empty until a pass that uses it).
    pub p2c: Option<T>,
    /// Attention probabilities, `[batch, h, len, len]`: empty until a pass keeps them (the
    /// backend's fused attentions never do).
    pub probs: T,
    /// The probabilities after dropout (training with attention dropout only; empty until a
    /// pass keeps them).
    pub probs_dropped: Option<T>,
    /// Per-query-row softmax statistics of a fused training forward, `batch·h·len`
    /// ([`TrainingBuffers::stats`]).
    pub stats: T,
    /// `P·V` with heads concatenated, `[N, h·d]`.
    pub context: T,
}

/// Scratch buffers of the attention backward, shared by all layers of a model.
pub struct AttentionScratch<T> {
    dquery: T,
    dkey: T,
    dvalue: T,
    dscores: T,
    drows: T,
    dc2p: Option<T>,
    dp2c: Option<T>,
}

impl DisentangledSelfAttention {
    /// Registers `{prefix}.query_proj`, `key_proj`, `value_proj` and, without
    /// `share_att_key`, `pos_key_proj` / `pos_query_proj`.
    pub fn new(layout: &mut ParamLayout, prefix: &str, cfg: &ModelConfig) -> Self {
        let (h, width, std) = (cfg.hidden_size, cfg.all_head_size(), cfg.initializer_range);
        let query = Linear::new(layout, &format!("{prefix}.query_proj"), h, width, true, std);
        let key = Linear::new(layout, &format!("{prefix}.key_proj"), h, width, true, std);
        let value = Linear::new(layout, &format!("{prefix}.value_proj"), h, width, true, std);
        let separate = cfg.relative_attention && !cfg.share_att_key;
        let pos_key = (separate && cfg.pos_att_type.c2p).then(|| {
            Linear::new(
                layout,
                &format!("{prefix}.pos_key_proj"),
                h,
                width,
                true,
                std,
            )
        });
        let pos_query = (separate && cfg.pos_att_type.p2c).then(|| {
            Linear::new(
                layout,
                &format!("{prefix}.pos_query_proj"),
                h,
                width,
                true,
                std,
            )
        });
        DisentangledSelfAttention {
            query,
            key,
            value,
            pos_key,
            pos_query,
            heads: cfg.num_attention_heads,
            head_dim: cfg.attention_head_size,
            scale: cfg.attention_scale(),
            c2p: cfg.uses_c2p(),
            p2c: cfg.uses_p2c(),
        }
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The projection producing `Kr` (the content `key_proj` under `share_att_key`).
    fn key_position(&self) -> &Linear {
        self.pos_key.as_ref().unwrap_or(&self.key)
    }

    /// The projection producing `Qr` (the content `query_proj` under `share_att_key`).
    fn query_position(&self) -> &Linear {
        self.pos_query.as_ref().unwrap_or(&self.query)
    }

    /// Saved-activation buffers for `batch × len` tokens (the probabilities and the c2p/p2c
    /// tables empty until a forward pass needs them).
    pub fn activations<B: Backend>(
        &self,
        backend: &B,
        batch: usize,
        len: usize,
        training: bool,
    ) -> Result<AttentionActivations<B::Tensor>, Error> {
        let n = batch * len;
        let width = self.width();
        // The probabilities and tables are sized by the forward pass that needs them
        // ([`Self::forward`]); a fused attention never does.
        Ok(AttentionActivations {
            query: backend.zeros(n * width)?,
            key: backend.zeros(n * width)?,
            value: backend.zeros(n * width)?,
            c2p: if self.c2p {
                Some(backend.zeros(0)?)
            } else {
                None
            },
            p2c: if self.p2c {
                Some(backend.zeros(0)?)
            } else {
                None
            },
            probs: backend.zeros(0)?,
            probs_dropped: if training {
                Some(backend.zeros(0)?)
            } else {
                None
            },
            stats: backend.zeros(batch * self.heads * len)?,
            context: backend.zeros(n * width)?,
        })
    }

    /// Backward scratch for `batch × len` tokens and a window of `rows` rows.
    pub fn scratch<B: Backend>(
        &self,
        backend: &B,
        batch: usize,
        len: usize,
        rows: usize,
    ) -> Result<AttentionScratch<B::Tensor>, Error> {
        let n = batch * len;
        let table = self.heads * n * rows;
        Ok(AttentionScratch {
            dquery: backend.zeros(n * self.width())?,
            dkey: backend.zeros(n * self.width())?,
            dvalue: backend.zeros(n * self.width())?,
            // Sized by the backward pass that needs it ([`Self::backward`]).
            dscores: backend.zeros(0)?,
            drows: backend.zeros(batch * self.heads * len)?,
            dc2p: if self.c2p {
                Some(backend.zeros(table)?)
            } else {
                None
            },
            dp2c: if self.p2c {
                Some(backend.zeros(table)?)
            } else {
                None
            },
        })
    }

    /// Projects rows `[first_row, first_row + rows)` of the relative table `rel` `[2S, H]`.
    pub fn position_projection<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        rel: &B::Tensor,
        first_row: usize,
        rows: usize,
    ) -> Result<PositionProjection<B::Tensor>, Error> {
        let project = |linear: &Linear| -> Result<B::Tensor, Error> {
            let mut out = backend.zeros(rows * self.width())?;
            let mut spec = MatmulSpec::linear(rows, linear.input, linear.output);
            spec.a = spec.a.at(first_row * linear.input);
            let (weight, products) = (params.get(linear.weight), params.products());
            match linear.bias {
                Some(bias) => {
                    let bias = params.get(bias);
                    backend.matmul_bias([rel, weight], bias, None, &mut out, &spec, products)?;
                }
                None => backend.matmul_reduced(rel, weight, &mut out, &spec, products)?,
            }
            Ok(out)
        };
        Ok(PositionProjection {
            keys: if self.c2p {
                Some(project(self.key_position())?)
            } else {
                None
            },
            queries: if self.p2c {
                Some(project(self.query_position())?)
            } else {
                None
            },
            first_row,
            rows,
        })
    }

    /// Zeroed gradient buffers for a projection of `rows` rows.
    pub fn projection_grads<B: Backend>(
        &self,
        backend: &B,
        rows: usize,
    ) -> Result<ProjectionGrads<B::Tensor>, Error> {
        let n = rows * self.width();
        Ok(ProjectionGrads {
            keys: if self.c2p {
                Some(backend.zeros(n)?)
            } else {
                None
            },
            queries: if self.p2c {
                Some(backend.zeros(n)?)
            } else {
                None
            },
        })
    }

    /// Backward of [`Self::position_projection`]: adds the projection weights' gradients to
    /// `ctx.grads` and `∂L/∂rel` for the projected rows to `drel` (`[2S, H]`).
    pub fn position_projection_backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        rel: &B::Tensor,
        dprojection: &ProjectionGrads<B::Tensor>,
        first_row: usize,
        rows: usize,
        drel: &mut B::Tensor,
    ) -> Result<(), Error> {
        let (backend, params) = (ctx.backend, ctx.params);
        let products = params.products();
        let pairs = [
            (self.key_position(), dprojection.keys.as_ref()),
            (self.query_position(), dprojection.queries.as_ref()),
        ];
        for (linear, dy) in pairs {
            let Some(dy) = dy else { continue };
            let (input, output) = (linear.input, linear.output);
            // dW += dyᵀ · rel[rows]
            backend.matmul_reduced(
                dy,
                rel,
                ctx.grads.get_mut(linear.weight),
                &MatmulSpec {
                    a: MatrixLayout::row_major(output).transposed(),
                    b: MatrixLayout::row_major(input).at(first_row * input),
                    c: MatrixLayout::row_major(input),
                    beta: 1.0,
                    ..MatmulSpec::dense(output, input, rows)
                },
                products,
            )?;
            if let Some(bias) = linear.bias {
                backend.sum_rows(dy, ctx.grads.get_mut(bias), output, true)?;
            }
            // drel[rows] += dy · W
            backend.matmul_reduced(
                dy,
                params.get(linear.weight),
                drel,
                &MatmulSpec {
                    c: MatrixLayout::row_major(input).at(first_row * input),
                    beta: 1.0,
                    ..MatmulSpec::dense(rows, input, output)
                },
                products,
            )?;
        }
        Ok(())
    }

    /// One head's `[batch·len, d]` slice of a `[batch·len, h·d]` activation, batched over
    /// heads (inner batch dimension).
    fn token_layout(&self) -> MatrixLayout {
        MatrixLayout::row_major(self.width()).batched(0, self.head_dim)
    }

    /// The `[h, N, R]` position-score tables, batched over heads.
    fn table_layout(&self, tokens: usize, rows: usize) -> MatrixLayout {
        MatrixLayout::row_major(rows).batched(0, tokens * rows)
    }

    /// The window's rows of one head of a projection `[rows, h·d]`, as a `[R, d]` matrix
    /// batched over heads.
    fn projection_layout(
        &self,
        projection: &PositionProjection<impl Sized>,
        batch: &DeviceBatch<impl Backend>,
    ) -> Result<MatrixLayout, Error> {
        let window = batch.window;
        if window.first < projection.first_row
            || window.first + window.rows > projection.first_row + projection.rows
        {
            return Err(Error::ShapeMismatch {
                what: "position projection does not cover the sequence's relative window",
                expected: window.first + window.rows,
                found: projection.first_row + projection.rows,
            });
        }
        Ok(MatrixLayout::row_major(self.width())
            .at((window.first - projection.first_row) * self.width())
            .batched(0, self.head_dim))
    }

    /// The shape of this attention over `batch` (window row 0 at projection row 0).
    fn spec(&self, batch: &DeviceBatch<impl Backend>) -> AttentionSpec {
        AttentionSpec {
            batch: batch.batch,
            heads: self.heads,
            len: batch.len,
            head_dim: self.head_dim,
            rows: if self.c2p || self.p2c {
                batch.window.rows
            } else {
                0
            },
            first_row: 0,
            scale: self.scale,
        }
    }

    /// The operands and shape of the attention core (everything after the Q/K/V projections).
    fn core<'a, B: Backend>(
        &self,
        input: &AttentionInput<'a, B>,
        query: &'a B::Tensor,
        key: &'a B::Tensor,
        value: &'a B::Tensor,
    ) -> Result<(AttentionOperands<'a, B>, AttentionSpec), Error> {
        let batch = input.batch;
        let mut spec = self.spec(batch);
        let mut ops = AttentionOperands {
            query,
            key,
            value,
            pos_key: None,
            pos_query: None,
            index: None,
            mask: &batch.mask,
        };
        if self.c2p || self.p2c {
            let projection = input.projection.ok_or(Error::Missing {
                what: "position projections for relative attention",
            })?;
            self.projection_layout(projection, batch)?;
            spec.first_row = batch.window.first - projection.first_row;
            ops.index = Some(batch.relative_index.as_ref().ok_or(Error::Missing {
                what: "relative index for relative attention",
            })?);
            if self.c2p {
                ops.pos_key = Some(
                    projection
                        .keys
                        .as_ref()
                        .ok_or(Error::Missing { what: "Kr" })?,
                );
            }
            if self.p2c {
                ops.pos_query = Some(
                    projection
                        .queries
                        .as_ref()
                        .ok_or(Error::Missing { what: "Qr" })?,
                );
            }
        }
        Ok((ops, spec))
    }

    /// Runs the attention; the context lands in `acts.context`. With `input.train` the
    /// backend's [`Backend::attention_forward_train`] saves what its backward needs; otherwise
    /// with `input.keep_probs` (or dropout) the probabilities land in `acts.probs` through the
    /// unfused kernels; otherwise the backend's [`Backend::fused_attention`] runs and
    /// `acts.probs` and the c2p/p2c tables are scratch whose contents are unspecified.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        input: AttentionInput<'_, B>,
        acts: &mut AttentionActivations<B::Tensor>,
    ) -> Result<(), Error> {
        let n = input.batch.tokens();
        self.query
            .forward(backend, params, input.query_states, &mut acts.query, n)?;
        self.key
            .forward(backend, params, input.hidden, &mut acts.key, n)?;
        self.value
            .forward(backend, params, input.hidden, &mut acts.value, n)?;

        let (ops, spec) = self.core(&input, &acts.query, &acts.key, &acts.value)?;
        let fused = !input.keep_probs && !input.train && input.dropout.is_none();
        let products = params.products();
        let uses_probabilities = if fused {
            backend.fused_attention_uses_buffers(&spec)
        } else if input.train {
            backend.attention_training_uses_probabilities(&spec, products)
        } else {
            true
        };
        if uses_probabilities {
            grow(backend, &mut acts.probs, spec.scores())?;
            for table in [acts.c2p.as_mut(), acts.p2c.as_mut()].into_iter().flatten() {
                grow(backend, table, spec.table())?;
            }
            if let Some(dropped) = acts.probs_dropped.as_mut() {
                grow(backend, dropped, spec.scores())?;
            }
        }
        let buffers = AttentionBuffers {
            probs: &mut acts.probs,
            c2p: acts.c2p.as_mut(),
            p2c: acts.p2c.as_mut(),
        };
        if fused {
            return backend.fused_attention(ops, buffers, &mut acts.context, spec);
        }
        let training = TrainingBuffers {
            probs: buffers.probs,
            dropped: acts.probs_dropped.as_mut(),
            c2p: buffers.c2p,
            p2c: buffers.p2c,
            stats: &mut acts.stats,
        };
        let dropout = self.attention_dropout(&input, training.dropped.is_some());
        if input.train {
            backend.attention_forward_train(
                ops,
                training,
                &mut acts.context,
                dropout,
                spec,
                products,
            )
        } else {
            // The probabilities themselves are wanted (a composed backward, the `attentions`
            // outputs).
            composed_attention_forward_train(
                backend,
                ops,
                training,
                &mut acts.context,
                dropout,
                spec,
                products,
            )
        }
    }

    /// The attention dropout of a training forward (`None` without dropout, at probability 0
    /// or without a buffer for the dropped probabilities).
    fn attention_dropout<B: Backend>(
        &self,
        input: &AttentionInput<'_, B>,
        buffer: bool,
    ) -> Option<AttentionDropout> {
        input
            .dropout
            .filter(|d| d.attention > 0.0 && buffer)
            .map(|d| AttentionDropout {
                p: d.attention,
                stream: d.stream(input.layer, Site::AttentionProbs),
            })
    }

    /// Backward from `dcontext`: adds to the parameter gradients and to the input gradients
    /// `dinput`.
    pub fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        input: AttentionInput<'_, B>,
        acts: &AttentionActivations<B::Tensor>,
        dcontext: &B::Tensor,
        scratch: &mut AttentionScratch<B::Tensor>,
        dinput: AttentionInputGrads<'_, B::Tensor>,
    ) -> Result<(), Error> {
        let AttentionInputGrads {
            dquery_states,
            dhidden,
            dprojection,
        } = dinput;
        let backend = ctx.backend;
        // The products run at the store's format (f16 in mixed-precision training on wgpu).
        let products = ctx.params.products();
        let batch = input.batch;
        let n = batch.tokens();
        let (ops, spec) = self.core(&input, &acts.query, &acts.key, &acts.value)?;
        if !input.train || backend.attention_training_uses_probabilities(&spec, products) {
            grow(backend, &mut scratch.dscores, spec.scores())?;
        }
        let dropout = self.attention_dropout(&input, acts.probs_dropped.is_some());
        let saved = SavedAttention {
            probs: &acts.probs,
            dropped: acts.probs_dropped.as_ref(),
            stats: &acts.stats,
            context: &acts.context,
        };
        let grads = AttentionGrads {
            dscores: &mut scratch.dscores,
            drows: &mut scratch.drows,
            dquery: &mut scratch.dquery,
            dkey: &mut scratch.dkey,
            dvalue: &mut scratch.dvalue,
            dc2p: scratch.dc2p.as_mut(),
            dp2c: scratch.dp2c.as_mut(),
        };
        if input.train {
            backend.attention_backward(ops, saved, dcontext, dropout, grads, spec, products)?;
        } else {
            composed_attention_backward(
                backend, ops, saved, dcontext, dropout, grads, spec, products,
            )?;
        }
        let matmul = |a: &B::Tensor, b: &B::Tensor, c: &mut B::Tensor, spec: &MatmulSpec| {
            backend.matmul_reduced(a, b, c, spec, products)
        };
        if let (Some(projection), true) = (input.projection, self.c2p || self.p2c) {
            let dprojection = dprojection.ok_or(Error::Missing {
                what: "position projection gradients",
            })?;
            let rows = batch.window.rows;
            let table = self.projection_layout(projection, batch)?;
            // dP_win += dtableᵀ · content
            let into_projection = MatmulSpec {
                batch: [1, self.heads],
                m: rows,
                n: self.head_dim,
                k: n,
                a: self.table_layout(n, rows).transposed(),
                b: self.token_layout(),
                c: table,
                alpha: 1.0,
                beta: 1.0,
            };
            if self.c2p {
                let dtable = scratch.dc2p.as_ref().ok_or(Error::Missing {
                    what: "c2p scratch",
                })?;
                let dkr = dprojection
                    .keys
                    .as_mut()
                    .ok_or(Error::Missing { what: "dKr" })?;
                matmul(dtable, &acts.query, dkr, &into_projection)?;
            }
            if self.p2c {
                let dtable = scratch.dp2c.as_ref().ok_or(Error::Missing {
                    what: "p2c scratch",
                })?;
                let dqr = dprojection
                    .queries
                    .as_mut()
                    .ok_or(Error::Missing { what: "dQr" })?;
                matmul(dtable, &acts.key, dqr, &into_projection)?;
            }
        }
        self.query.backward(
            ctx,
            input.query_states,
            &scratch.dquery,
            Some(&mut *dquery_states),
            n,
        )?;
        let dhidden = match dhidden {
            Some(dh) => dh,
            None => dquery_states,
        };
        self.key
            .backward(ctx, input.hidden, &scratch.dkey, Some(&mut *dhidden), n)?;
        self.value
            .backward(ctx, input.hidden, &scratch.dvalue, Some(dhidden), n)
    }
}

/// Replaces `tensor` by a zeroed one of `len` elements unless it already holds that many (the
/// probability buffers grow on the first pass that needs them and are reused after).
fn grow<B: Backend>(backend: &B, tensor: &mut B::Tensor, len: usize) -> Result<(), Error> {
    if backend.len(tensor) < len {
        *tensor = backend.zeros(len)?;
    }
    Ok(())
}
