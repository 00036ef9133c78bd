//! The encoder: post-LN transformer layers over disentangled attention, the relative-embedding
//! table (LayerNorm'ed once per forward) and the v2 ConvLayer (SPEC §4).

use alloc::format;
use alloc::vec::Vec;

use super::attention::{
    AttentionActivations, AttentionInput, DisentangledSelfAttention, PositionProjection,
};
use super::batch::DeviceBatch;
use super::modules::{LayerNorm, Linear};
use super::params::{Init, ParamId, ParamLayout, ParamStore};
use crate::backend::{Backend, Conv1dSpec};
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
}

/// Saved activations of one layer (`N` tokens).
pub struct LayerActivations<T> {
    /// The attention's activations.
    pub attention: AttentionActivations<T>,
    /// `dense(ctx) + q`, the input of the attention LayerNorm, `[N, H]`.
    pub attention_sum: T,
    /// `[mean, rstd]` of the attention LayerNorm, `[N, 2]`.
    pub attention_stats: T,
    /// Attention block output, `[N, H]`.
    pub attention_out: T,
    /// Feed-forward pre-activation, `[N, F]`.
    pub intermediate_pre: T,
    /// Feed-forward activation, `[N, F]`.
    pub intermediate: T,
    /// `dense(f) + attention_out`, `[N, H]`.
    pub output_sum: T,
    /// `[mean, rstd]` of the output LayerNorm.
    pub output_stats: T,
    /// Layer output, `[N, H]`.
    pub output: T,
}

impl<T> LayerActivations<T> {
    /// Buffers for one layer over `batch × len` tokens with a relative window of `rows` rows.
    pub fn new<B: Backend<Tensor = T>>(
        backend: &B,
        layer: &EncoderLayer,
        batch: usize,
        len: usize,
        rows: usize,
    ) -> Result<Self, Error> {
        let n = batch * len;
        let (h, f) = (layer.output_dense.output, layer.intermediate.output);
        Ok(LayerActivations {
            attention: AttentionActivations::new(backend, &layer.attention, batch, len, rows)?,
            attention_sum: backend.zeros(n * h)?,
            attention_stats: backend.zeros(n * 2)?,
            attention_out: backend.zeros(n * h)?,
            intermediate_pre: backend.zeros(n * f)?,
            intermediate: backend.zeros(n * f)?,
            output_sum: backend.zeros(n * h)?,
            output_stats: backend.zeros(n * 2)?,
            output: backend.zeros(n * h)?,
        })
    }
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
        EncoderLayer {
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
        }
    }

    /// One layer (`input.hidden` is `input.query_states` outside the EMD).
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        input: AttentionInput<'_, B>,
        acts: &mut LayerActivations<B::Tensor>,
    ) -> Result<(), Error> {
        let (n, query_states) = (input.batch.tokens(), input.query_states);
        self.attention
            .forward(backend, params, input, &mut acts.attention)?;
        self.attention_dense.forward(
            backend,
            params,
            &acts.attention.context,
            &mut acts.attention_sum,
            n,
        )?;
        backend.add_assign(&mut acts.attention_sum, query_states)?;
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
        backend.activation(
            self.activation,
            &acts.intermediate_pre,
            &mut acts.intermediate,
        )?;
        self.output_dense
            .forward(backend, params, &acts.intermediate, &mut acts.output_sum, n)?;
        backend.add_assign(&mut acts.output_sum, &acts.attention_out)?;
        self.output_norm.forward(
            backend,
            params,
            &acts.output_sum,
            &mut acts.output,
            Some(&mut acts.output_stats),
            n,
        )
    }
}

/// The v2 `ConvLayer` applied to the embedding output after layer 0:
/// `LN(layer0 + act(mask·conv(emb)))·mask`.
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
    /// Masked convolution output, `[N, H]`.
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

    /// Applies the layer to `embeddings` with `layer0` as the residual.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        embeddings: &B::Tensor,
        layer0: &B::Tensor,
        batch: &DeviceBatch<B>,
        acts: &mut ConvActivations<B::Tensor>,
    ) -> Result<(), Error> {
        let h = self.channels;
        backend.conv1d(
            embeddings,
            params.get(self.weight),
            params.get(self.bias),
            &mut acts.conv,
            Conv1dSpec {
                batch: batch.batch,
                len: batch.len,
                in_channels: h,
                out_channels: h,
                kernel: self.kernel,
                groups: self.groups,
            },
        )?;
        backend.scale_rows(&mut acts.conv, &batch.mask, h)?;
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

/// The relative table as the layers read it, plus each layer's position projections.
pub struct RelativeEmbeddings<T> {
    /// `LN(rel_embeddings)` (or the raw table without `norm_rel_ebd`), `[2S, H]`.
    pub normed: T,
    /// LayerNorm statistics of `normed`, when normalised.
    pub stats: Option<T>,
    /// One projection per layer.
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

    /// `get_rel_embedding()` and every layer's position projections; `None` without relative
    /// attention. Depends on the weights only.
    pub fn relative_embeddings<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
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
        let projections = self
            .layers
            .iter()
            .map(|layer| {
                layer
                    .attention
                    .position_projection(backend, params, &normed, rows)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Some(RelativeEmbeddings {
            normed,
            stats,
            projections,
        }))
    }
}
