//! The encoder: post-LN transformer layers over disentangled attention, the relative-embedding
//! table (LayerNorm'ed once per forward) and the v2 ConvLayer (SPEC §4), forward and backward.

use alloc::format;
use alloc::vec::Vec;

use super::attention::{
    AttentionActivations, AttentionInput, AttentionInputGrads, AttentionScratch,
    DisentangledSelfAttention, PositionProjection, ProjectionGrads,
};
use super::batch::DeviceBatch;
use super::context::BackwardContext;
use super::dropout::{Dropout, Site, maybe_dropout};
use super::modules::{LayerNorm, Linear};
use super::params::{Init, ParamId, ParamLayout, ParamStore};
use crate::backend::{Backend, Conv1dGrads, Conv1dSpec};
use crate::relative_position::IndexWindow;
use crate::{Activation, Error, ModelConfig};

/// One `DebertaV2Layer`: attention, `LN(dense(ctx) + q)`, then `LN(dense(act(dense(x))) + x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderLayer {
    /// `attention.self`.
    pub attention: DisentangledSelfAttention,
    /// `attention.output.dense`.
    pub attention_dense: Linear,
    /// `attention.output.LayerNorm`.
    pub attention_norm: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate: Linear,
    /// The feed-forward activation.
    pub activation: Activation,
    /// `output.dense`.
    pub output_dense: Linear,
    /// `output.LayerNorm`.
    pub output_norm: LayerNorm,
    /// Every parameter of the layer (registered together, in layout order).
    params: Vec<ParamId>,
}

/// Saved activations of one layer (`N` tokens).
pub struct LayerActivations<T> {
    /// The attention's activations.
    pub attention: AttentionActivations<T>,
    /// `dropout(dense(ctx)) + q`, the input of the attention LayerNorm, `[N, H]`.
    pub attention_sum: T,
    /// `[mean, rstd]` of the attention LayerNorm, `[N, 2]`.
    pub attention_stats: T,
    /// Attention block output, `[N, H]`.
    pub attention_out: T,
    /// Feed-forward pre-activation, `[N, F]` (the activation itself is not kept: the forward
    /// writes it to the model's one [`Activations::feed_forward`] buffer, the backward
    /// recomputes it).
    ///
    /// [`Activations::feed_forward`]: crate::model::Activations::feed_forward
    pub intermediate_pre: T,
    /// `dropout(dense(f)) + attention_out`, `[N, H]`.
    pub output_sum: T,
    /// `[mean, rstd]` of the output LayerNorm.
    pub output_stats: T,
    /// Layer output, `[N, H]`.
    pub output: T,
}

/// Scratch buffers of a layer backward, shared by all layers of a model.
pub struct LayerScratch<T> {
    attention: AttentionScratch<T>,
    dsum: T,
    dattention_out: T,
    dintermediate: T,
    dintermediate_pre: T,
    dcontext: T,
}

/// A layer's dense output: the projection, its input, the residual that joins it and the
/// dropout between them (Hugging Face's `DebertaV2SelfOutput` and `DebertaV2Output` before
/// their LayerNorm).
struct DenseOutput<'a, B: Backend> {
    dense: &'a Linear,
    input: &'a B::Tensor,
    residual: &'a B::Tensor,
    dropout: Option<&'a Dropout>,
    /// The layer and site of the dropout's stream.
    site: (usize, Site),
}

/// `out = dropout(dense(input)) + residual`. With no dropout to draw (evaluation, or a
/// probability of 0) the projection's kernel adds the residual as it stores the output
/// ([`Linear::forward_residual`]); else the dropout comes between, in kernels of their own.
/// The same sums either way.
fn dense_dropout_residual<B: Backend>(
    output: DenseOutput<'_, B>,
    backend: &B,
    params: &ParamStore<B::Tensor>,
    out: &mut B::Tensor,
    rows: usize,
) -> Result<(), Error> {
    let (layer, site) = output.site;
    let (dense, input, residual) = (output.dense, output.input, output.residual);
    if !output.dropout.is_some_and(|d| d.probability(site) > 0.0) {
        return dense.forward_residual(backend, params, input, Some(residual), out, rows);
    }
    dense.forward(backend, params, input, out, rows)?;
    maybe_dropout(output.dropout, backend, out, layer, site)?;
    backend.add_assign(out, residual)
}

impl EncoderLayer {
    /// Registers the parameters of `{prefix}` (`…encoder.layer.{i}`).
    pub fn new(layout: &mut ParamLayout, prefix: &str, cfg: &ModelConfig) -> Self {
        let (h, f, std, eps) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.initializer_range,
            cfg.layer_norm_eps,
        );
        let first = layout.specs().len();
        let mut layer = EncoderLayer {
            attention: DisentangledSelfAttention::new(
                layout,
                &format!("{prefix}.attention.self"),
                cfg,
            ),
            attention_dense: Linear::new(
                layout,
                &format!("{prefix}.attention.output.dense"),
                cfg.all_head_size(),
                h,
                true,
                std,
            ),
            attention_norm: LayerNorm::new(
                layout,
                &format!("{prefix}.attention.output.LayerNorm"),
                h,
                eps,
            ),
            intermediate: Linear::new(
                layout,
                &format!("{prefix}.intermediate.dense"),
                h,
                f,
                true,
                std,
            ),
            activation: cfg.hidden_act,
            output_dense: Linear::new(layout, &format!("{prefix}.output.dense"), f, h, true, std),
            output_norm: LayerNorm::new(layout, &format!("{prefix}.output.LayerNorm"), h, eps),
            params: Vec::new(),
        };
        layer.params = layout.iter().skip(first).map(|(id, _)| id).collect();
        layer
    }

    /// Every parameter of the layer, in layout order.
    pub fn params(&self) -> &[ParamId] {
        &self.params
    }

    /// Saved-activation buffers for one layer over `batch × len` tokens.
    pub fn activations<B: Backend>(
        &self,
        backend: &B,
        batch: usize,
        len: usize,
        training: bool,
    ) -> Result<LayerActivations<B::Tensor>, Error> {
        let n = batch * len;
        let (h, f) = (self.output_dense.output, self.intermediate.output);
        Ok(LayerActivations {
            attention: self.attention.activations(backend, batch, len, training)?,
            attention_sum: backend.zeros(n * h)?,
            attention_stats: backend.zeros(n * 2)?,
            attention_out: backend.zeros(n * h)?,
            intermediate_pre: backend.zeros(n * f)?,
            output_sum: backend.zeros(n * h)?,
            output_stats: backend.zeros(n * 2)?,
            output: backend.zeros(n * h)?,
        })
    }

    /// Backward scratch for `batch × len` tokens.
    pub fn scratch<B: Backend>(
        &self,
        backend: &B,
        batch: usize,
        len: usize,
        rows: usize,
    ) -> Result<LayerScratch<B::Tensor>, Error> {
        let n = batch * len;
        let (h, f, hd) = (
            self.output_dense.output,
            self.intermediate.output,
            self.attention_dense.input,
        );
        Ok(LayerScratch {
            attention: self.attention.scratch(backend, batch, len, rows)?,
            dsum: backend.zeros(n * h)?,
            dattention_out: backend.zeros(n * h)?,
            dintermediate: backend.zeros(n * f)?,
            dintermediate_pre: backend.zeros(n * f)?,
            dcontext: backend.zeros(n * hd)?,
        })
    }

    /// One layer (`input.hidden` is `input.query_states` outside the EMD), its feed-forward
    /// activation through `feed_forward` (`[N, F]`, the model's buffer for every layer).
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        input: AttentionInput<'_, B>,
        acts: &mut LayerActivations<B::Tensor>,
        feed_forward: &mut B::Tensor,
    ) -> Result<(), Error> {
        let (n, query_states, layer) = (input.batch.tokens(), input.query_states, input.layer);
        self.attention
            .forward(backend, params, input, &mut acts.attention)?;
        dense_dropout_residual(
            DenseOutput {
                dense: &self.attention_dense,
                input: &acts.attention.context,
                residual: query_states,
                dropout: input.dropout,
                site: (layer, Site::AttentionOutput),
            },
            backend,
            params,
            &mut acts.attention_sum,
            n,
        )?;
        self.attention_norm.forward(
            backend,
            params,
            &acts.attention_sum,
            &mut acts.attention_out,
            Some(&mut acts.attention_stats),
            n,
        )?;
        self.intermediate.forward(
            backend,
            params,
            &acts.attention_out,
            &mut acts.intermediate_pre,
            n,
        )?;
        backend.activation(self.activation, &acts.intermediate_pre, feed_forward)?;
        dense_dropout_residual(
            DenseOutput {
                dense: &self.output_dense,
                input: feed_forward,
                residual: &acts.attention_out,
                dropout: input.dropout,
                site: (layer, Site::FeedForwardOutput),
            },
            backend,
            params,
            &mut acts.output_sum,
            n,
        )?;
        self.output_norm.forward(
            backend,
            params,
            &acts.output_sum,
            &mut acts.output,
            Some(&mut acts.output_stats),
            n,
        )
    }

    /// Backward from `doutput` (the gradient of this layer's output): adds to the parameter
    /// gradients and to the input gradients `dinput`.
    pub fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        input: AttentionInput<'_, B>,
        acts: &LayerActivations<B::Tensor>,
        doutput: &B::Tensor,
        scratch: &mut LayerScratch<B::Tensor>,
        dinput: AttentionInputGrads<'_, B::Tensor>,
    ) -> Result<(), Error> {
        let backend = ctx.backend;
        let (n, layer) = (input.batch.tokens(), input.layer);
        // Output LayerNorm: dsum = ∂L/∂(dropout(dense(f)) + attention_out).
        backend.fill(&mut scratch.dsum, 0.0)?;
        self.output_norm.backward(
            ctx,
            &acts.output_sum,
            &acts.output_stats,
            doutput,
            &mut scratch.dsum,
            n,
        )?;
        backend.copy(
            &scratch.dsum,
            0,
            &mut scratch.dattention_out,
            0,
            n * self.output_dense.output,
        )?;
        maybe_dropout(
            input.dropout,
            backend,
            &mut scratch.dsum,
            layer,
            Site::FeedForwardOutput,
        )?;
        backend.fill(&mut scratch.dintermediate, 0.0)?;
        // The feed-forward activation, recomputed (the same kernel on the same values: the
        // forward's bits) into the buffer its gradient overwrites next.
        let feed_forward = &mut scratch.dintermediate_pre;
        backend.activation(self.activation, &acts.intermediate_pre, feed_forward)?;
        self.output_dense.backward(
            ctx,
            feed_forward,
            &scratch.dsum,
            Some(&mut scratch.dintermediate),
            n,
        )?;
        backend.activation_backward(
            self.activation,
            &acts.intermediate_pre,
            &scratch.dintermediate,
            &mut scratch.dintermediate_pre,
            false,
        )?;
        self.intermediate.backward(
            ctx,
            &acts.attention_out,
            &scratch.dintermediate_pre,
            Some(&mut scratch.dattention_out),
            n,
        )?;
        // Attention LayerNorm: dsum = ∂L/∂(dropout(dense(ctx)) + q).
        backend.fill(&mut scratch.dsum, 0.0)?;
        self.attention_norm.backward(
            ctx,
            &acts.attention_sum,
            &acts.attention_stats,
            &scratch.dattention_out,
            &mut scratch.dsum,
            n,
        )?;
        backend.add_assign(dinput.dquery_states, &scratch.dsum)?;
        maybe_dropout(
            input.dropout,
            backend,
            &mut scratch.dsum,
            layer,
            Site::AttentionOutput,
        )?;
        backend.fill(&mut scratch.dcontext, 0.0)?;
        self.attention_dense.backward(
            ctx,
            &acts.attention.context,
            &scratch.dsum,
            Some(&mut scratch.dcontext),
            n,
        )?;
        self.attention.backward(
            ctx,
            input,
            &acts.attention,
            &scratch.dcontext,
            &mut scratch.attention,
            dinput,
        )
    }
}

/// What a [`ConvLayer`] reads besides its weights.
pub struct ConvInput<'a, B: Backend> {
    /// The embedding output, which the convolution reads.
    pub embeddings: &'a B::Tensor,
    /// The batch: padding mask and shape.
    pub batch: &'a DeviceBatch<B>,
    /// Dropout when training, `None` for inference.
    pub dropout: Option<&'a Dropout>,
}

impl<B: Backend> Clone for ConvInput<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for ConvInput<'_, B> {}

/// The buffers of a [`ConvLayer`]'s backward pass, each `[N, H]`.
pub struct ConvScratch<T> {
    /// `∂L/∂layer0` (added to).
    pub dlayer0: T,
    /// `∂L/∂embeddings` (added to).
    pub dembeddings: T,
    /// Work buffers.
    pub buffers: [T; 2],
}

/// The v2 `ConvLayer` applied to the embedding output after layer 0:
/// `LN(layer0 + act(dropout(mask·conv(emb))))·mask`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayer {
    /// `encoder.conv.conv.weight`, `[H, H/groups, k]`.
    pub weight: ParamId,
    /// `encoder.conv.conv.bias`.
    pub bias: ParamId,
    /// `encoder.conv.LayerNorm`.
    pub norm: LayerNorm,
    /// `conv_act`.
    pub activation: Activation,
    /// Kernel width.
    pub kernel: usize,
    /// Channel groups.
    pub groups: usize,
    /// Channels (= hidden size).
    pub channels: usize,
}

/// Saved activations of the ConvLayer.
pub struct ConvActivations<T> {
    /// Masked (and dropped-out) convolution output, `[N, H]`.
    pub conv: T,
    /// After the activation.
    pub activated: T,
    /// `layer0 + activated`.
    pub sum: T,
    /// LayerNorm statistics.
    pub stats: T,
    /// Masked LayerNorm output: replaces layer 0's output.
    pub output: T,
}

impl ConvLayer {
    fn spec(&self, batch: &DeviceBatch<impl Backend>) -> Conv1dSpec {
        Conv1dSpec {
            batch: batch.batch,
            len: batch.len,
            in_channels: self.channels,
            out_channels: self.channels,
            kernel: self.kernel,
            groups: self.groups,
        }
    }

    /// Saved-activation buffers for `tokens` tokens.
    pub fn activations<B: Backend>(
        &self,
        backend: &B,
        tokens: usize,
    ) -> Result<ConvActivations<B::Tensor>, Error> {
        let n = tokens * self.channels;
        Ok(ConvActivations {
            conv: backend.zeros(n)?,
            activated: backend.zeros(n)?,
            sum: backend.zeros(n)?,
            stats: backend.zeros(tokens * 2)?,
            output: backend.zeros(n)?,
        })
    }

    /// Applies the layer to `input.embeddings` with `layer0` as the residual.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        input: ConvInput<'_, B>,
        layer0: &B::Tensor,
        acts: &mut ConvActivations<B::Tensor>,
    ) -> Result<(), Error> {
        let ConvInput {
            embeddings,
            batch,
            dropout,
        } = input;
        let h = self.channels;
        backend.conv1d(
            embeddings,
            params.get(self.weight),
            params.get(self.bias),
            &mut acts.conv,
            self.spec(batch),
        )?;
        backend.scale_rows(&mut acts.conv, &batch.mask, h)?;
        maybe_dropout(dropout, backend, &mut acts.conv, 0, Site::Conv)?;
        backend.activation(self.activation, &acts.conv, &mut acts.activated)?;
        backend.copy(layer0, 0, &mut acts.sum, 0, batch.tokens() * h)?;
        backend.add_assign(&mut acts.sum, &acts.activated)?;
        self.norm.forward(
            backend,
            params,
            &acts.sum,
            &mut acts.output,
            Some(&mut acts.stats),
            batch.tokens(),
        )?;
        backend.scale_rows(&mut acts.output, &batch.mask, h)
    }

    /// Backward from `doutput`: adds `∂L/∂layer0` to `scratch.dlayer0` and `∂L/∂embeddings`
    /// to `scratch.dembeddings`.
    pub fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        input: ConvInput<'_, B>,
        acts: &ConvActivations<B::Tensor>,
        doutput: &B::Tensor,
        scratch: &mut ConvScratch<B::Tensor>,
    ) -> Result<(), Error> {
        let ConvInput {
            embeddings,
            batch,
            dropout,
        } = input;
        let ConvScratch {
            dlayer0,
            dembeddings,
            buffers: [dmasked, dsum],
        } = scratch;
        let (backend, params) = (ctx.backend, ctx.params);
        let (h, n) = (self.channels, batch.tokens());
        backend.copy(doutput, 0, dmasked, 0, n * h)?;
        backend.scale_rows(dmasked, &batch.mask, h)?;
        backend.fill(dsum, 0.0)?;
        self.norm
            .backward(ctx, &acts.sum, &acts.stats, dmasked, dsum, n)?;
        backend.add_assign(dlayer0, dsum)?;
        backend.activation_backward(self.activation, &acts.conv, dsum, dmasked, false)?;
        maybe_dropout(dropout, backend, dmasked, 0, Site::Conv)?;
        backend.scale_rows(dmasked, &batch.mask, h)?;
        let (dweight, dbias) = ctx.grads.pair_mut(self.weight, self.bias)?;
        backend.conv1d_backward(
            embeddings,
            params.get(self.weight),
            dmasked,
            Conv1dGrads {
                dinput: dembeddings,
                dweight,
                dbias,
            },
            self.spec(batch),
        )
    }
}

/// `DebertaV2Encoder`: the layers, the relative-embedding table with its optional LayerNorm,
/// and the optional ConvLayer.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoder {
    /// `encoder.layer.{i}`.
    pub layers: Vec<EncoderLayer>,
    /// `encoder.rel_embeddings.weight`, `[2S, H]`, with relative attention.
    pub rel_embeddings: Option<ParamId>,
    /// `encoder.LayerNorm` over the relative table (`norm_rel_ebd` contains `layer_norm`).
    pub rel_norm: Option<LayerNorm>,
    /// `encoder.conv`.
    pub conv: Option<ConvLayer>,
    /// Rows of the relative table.
    pub rel_rows: usize,
    /// Hidden size.
    pub hidden: usize,
}

/// The buffers of one [`Encoder::position_projection_backward`].
pub struct ProjectionBackwardBuffers<'a, T> {
    /// The application's position-projection gradients (read).
    pub dprojection: &'a ProjectionGrads<T>,
    /// A `[2S, H]` work buffer.
    pub scratch: &'a mut T,
    /// The gradient of the normalised relative table, `[2S, H]` (added to).
    pub drel_normed: &'a mut T,
}

/// The relative table as the layers read it, plus each layer's position projections.
pub struct RelativeEmbeddings<T> {
    /// `LN(rel_embeddings)` (or the raw table without `norm_rel_ebd`), `[2S, H]`.
    pub normed: T,
    /// LayerNorm statistics of `normed`, when normalised.
    pub stats: Option<T>,
    /// Per application, the table after its `pos_dropout` (training only), `[2S, H]`.
    pub dropped: Vec<Option<T>>,
    /// One projection per application (encoder layers, then EMD passes).
    pub projections: Vec<PositionProjection<T>>,
}

impl Encoder {
    /// Registers `{prefix}.layer.*`, `{prefix}.rel_embeddings`, `{prefix}.LayerNorm`,
    /// `{prefix}.conv.*` as the configuration asks.
    pub fn new(layout: &mut ParamLayout, prefix: &str, cfg: &ModelConfig) -> Self {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(layout, &format!("{prefix}.layer.{i}"), cfg))
            .collect();
        let rel_rows = cfg.relative_embedding_rows();
        let rel_embeddings = cfg.relative_attention.then(|| {
            layout.add(
                format!("{prefix}.rel_embeddings.weight"),
                &[rel_rows, cfg.hidden_size],
                Init::Normal(cfg.initializer_range),
            )
        });
        let rel_norm = (cfg.relative_attention && cfg.norm_rel_ebd_layer_norm).then(|| {
            LayerNorm::new(
                layout,
                &format!("{prefix}.LayerNorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )
        });
        let conv = cfg.conv.map(|conv| ConvLayer {
            weight: layout.add(
                format!("{prefix}.conv.conv.weight"),
                &[
                    cfg.hidden_size,
                    cfg.hidden_size / conv.groups,
                    conv.kernel_size,
                ],
                Init::Normal(cfg.initializer_range),
            ),
            bias: layout.add(
                format!("{prefix}.conv.conv.bias"),
                &[cfg.hidden_size],
                Init::Zeros,
            ),
            norm: LayerNorm::new(
                layout,
                &format!("{prefix}.conv.LayerNorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            ),
            activation: conv.activation,
            kernel: conv.kernel_size,
            groups: conv.groups,
            channels: cfg.hidden_size,
        });
        Encoder {
            layers,
            rel_embeddings,
            rel_norm,
            conv,
            rel_rows,
            hidden: cfg.hidden_size,
        }
    }

    /// `get_rel_embedding()` and the position projections of every *application* of the
    /// table: `applications[k]` names the layer whose weights application `k` uses (the
    /// encoder layers in order, then any EMD passes), and application `k` draws its own
    /// `pos_dropout` mask. For inference pass `window = None` (all rows, computed once per set
    /// of weights); a training step passes the batch's window and its dropout.
    pub fn relative_embeddings<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        window: Option<IndexWindow>,
        dropout: Option<&Dropout>,
        applications: &[usize],
    ) -> Result<Option<RelativeEmbeddings<B::Tensor>>, Error> {
        let Some(table) = self.rel_embeddings else {
            return Ok(None);
        };
        let rows = self.rel_rows;
        let mut normed = backend.zeros(rows * self.hidden)?;
        let stats = match &self.rel_norm {
            Some(norm) => {
                let mut stats = backend.zeros(rows * 2)?;
                norm.forward(
                    backend,
                    params,
                    params.get(table),
                    &mut normed,
                    Some(&mut stats),
                    rows,
                )?;
                Some(stats)
            }
            None => {
                backend.copy(params.get(table), 0, &mut normed, 0, rows * self.hidden)?;
                None
            }
        };
        let window = window.unwrap_or(IndexWindow { first: 0, rows });
        let mut dropped = Vec::with_capacity(applications.len());
        let mut projections = Vec::with_capacity(applications.len());
        for (i, &weights) in applications.iter().enumerate() {
            let layer = self.layers.get(weights).ok_or(Error::ShapeMismatch {
                what: "relative-table application of a layer that does not exist",
                expected: self.layers.len(),
                found: weights,
            })?;
            let table = match dropout.filter(|d| d.hidden > 0.0) {
                Some(d) => {
                    let mut t = backend.zeros(rows * self.hidden)?;
                    backend.copy(&normed, 0, &mut t, 0, rows * self.hidden)?;
                    d.apply(backend, &mut t, i, Site::RelativeEmbeddings)?;
                    Some(t)
                }
                None => None,
            };
            let source = table.as_ref().unwrap_or(&normed);
            projections.push(layer.attention.position_projection(
                backend,
                params,
                source,
                window.first,
                window.rows,
            )?);
            dropped.push(table);
        }
        Ok(Some(RelativeEmbeddings {
            normed,
            stats,
            dropped,
            projections,
        }))
    }

    /// Backward of application `application`'s position projection (made with layer
    /// `weights`' projections) from `buffers.dprojection` into `buffers.drel_normed`, through
    /// its `pos_dropout`.
    pub fn position_projection_backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        relative: &RelativeEmbeddings<B::Tensor>,
        (application, weights): (usize, usize),
        dropout: Option<&Dropout>,
        buffers: ProjectionBackwardBuffers<'_, B::Tensor>,
    ) -> Result<(), Error> {
        let ProjectionBackwardBuffers {
            dprojection,
            scratch,
            drel_normed,
        } = buffers;
        let backend = ctx.backend;
        let projection = relative
            .projections
            .get(application)
            .ok_or(Error::ShapeMismatch {
                what: "position projection of an application of the relative table",
                expected: application + 1,
                found: relative.projections.len(),
            })?;
        let attention = &self
            .layers
            .get(weights)
            .ok_or(Error::ShapeMismatch {
                what: "layer of a position projection",
                expected: self.layers.len(),
                found: weights,
            })?
            .attention;
        match relative.dropped.get(application).and_then(Option::as_ref) {
            Some(dropped) => {
                backend.fill(scratch, 0.0)?;
                attention.position_projection_backward(
                    ctx,
                    dropped,
                    dprojection,
                    projection.first_row,
                    projection.rows,
                    scratch,
                )?;
                maybe_dropout(
                    dropout,
                    backend,
                    scratch,
                    application,
                    Site::RelativeEmbeddings,
                )?;
                backend.add_assign(drel_normed, scratch)
            }
            None => attention.position_projection_backward(
                ctx,
                &relative.normed,
                dprojection,
                projection.first_row,
                projection.rows,
                drel_normed,
            ),
        }
    }

    /// Backward of [`Self::relative_embeddings`]'s LayerNorm: `∂L/∂rel_embeddings` from the
    /// gradient of the normalised table.
    pub fn relative_table_backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        relative: &RelativeEmbeddings<B::Tensor>,
        drel_normed: &B::Tensor,
    ) -> Result<(), Error> {
        let (backend, params) = (ctx.backend, ctx.params);
        let Some(table) = self.rel_embeddings else {
            return Ok(());
        };
        match (&self.rel_norm, &relative.stats) {
            (Some(norm), Some(stats)) => {
                // The LayerNorm's input is the parameter itself; its gradient is written there.
                let mut dtable = backend.zeros(self.rel_rows * self.hidden)?;
                norm.backward(
                    ctx,
                    params.get(table),
                    stats,
                    drel_normed,
                    &mut dtable,
                    self.rel_rows,
                )?;
                backend.add_assign(ctx.grads.get_mut(table), &dtable)
            }
            _ => backend.add_assign(ctx.grads.get_mut(table), drel_normed),
        }
    }
}
