//! The whole model: `DebertaV2Model` plus the optional MLM head (with the optional Enhanced
//! Mask Decoder) and RTD head, forward and backward.

use alloc::format;
use alloc::vec::Vec;

use super::attention::{AttentionInput, AttentionInputGrads, ProjectionGrads};
use super::batch::DeviceBatch;
use super::context::BackwardContext;
use super::dropout::Dropout;
use super::embeddings::{EmbeddingActivations, Embeddings, SharedTables, TableSource};
use super::encoder::{
    ConvActivations, ConvInput, ConvScratch, Encoder, LayerActivations, LayerScratch,
    ProjectionBackwardBuffers, RelativeEmbeddings,
};
use super::heads::{
    MlmActivations, MlmHead, MlmLayout, MlmScratch, RtdActivations, RtdHead, RtdScratch,
};
use super::params::{Init, ParamLayout, ParamStore};
use crate::backend::Backend;
use crate::{Error, ModelConfig};

/// Which heads sit on top of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Heads {
    /// The MLM head and its layout.
    pub mlm: Option<MlmLayout>,
    /// Whether the MLM head reads the Enhanced Mask Decoder (SPEC §5.1) instead of the last
    /// hidden state (pretraining generators; Hugging Face has no EMD).
    pub emd: bool,
    /// Whether the RTD head (`mask_predictions.*`) is present.
    pub rtd: bool,
}

/// The Enhanced Mask Decoder: the last encoder layer applied twice (shared weights) with
/// keys/values `H` = the input of the last layer and queries starting at `E_pos[pos] + H`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedMaskDecoder {
    /// The absolute-position table `E_pos` (the embeddings' own when `position_biased_input`,
    /// else a table registered for the EMD under the same name).
    pub position: TableSource,
}

/// A DeBERTa-v2/v3 encoder with its heads, its parameters registered under one root prefix
/// (`""` for a Hugging Face checkpoint, `"generator."`/`"discriminator."` inside a pretraining
/// pair): the backbone under `{root}deberta.`, the heads beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deberta {
    /// The configuration.
    pub config: ModelConfig,
    /// `deberta.embeddings`.
    pub embeddings: Embeddings,
    /// `deberta.encoder`.
    pub encoder: Encoder,
    /// The MLM head, tied to the word embeddings.
    pub mlm_head: Option<MlmHead>,
    /// The Enhanced Mask Decoder in front of the MLM head.
    pub emd: Option<EnhancedMaskDecoder>,
    /// The RTD head.
    pub rtd_head: Option<RtdHead>,
}

/// Which rows the MLM head runs on.
pub enum MlmRows<'a, B: Backend> {
    /// Every token (inference: `mlm_logits` `[B, S, V]`).
    All,
    /// The listed flat token positions (training: the masked positions).
    Selected {
        /// Flat positions `b·len + i`.
        positions: &'a B::Indices,
        /// How many.
        count: usize,
    },
}

/// Which attentions of a forward pass leave their probabilities in the activations
/// (`LayerActivations::attention.probs`). The others may run the backend's
/// [`fused_attention`](crate::Backend::fused_attention), which never materialises them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionProbs {
    /// Every attention (a [`Deberta::backward`] then runs the composed attention backward
    /// from them; implied by dropout).
    Keep,
    /// None, but every attention saves what the backend's
    /// [`attention_backward`](crate::Backend::attention_backward) needs (training through
    /// [`attention_forward_train`](crate::Backend::attention_forward_train): per-row softmax
    /// statistics on a backend with a fused training attention, the probabilities otherwise).
    Train,
    /// Only encoder layer 0's (the `attentions.0` output of `deberta forward`).
    FirstLayer,
    /// None: inference that reads only hidden states and logits.
    Discard,
}

impl AttentionProbs {
    /// Whether encoder layer `layer` (EMD passes count as layers past the last) keeps them.
    pub fn keeps(self, layer: usize) -> bool {
        match self {
            AttentionProbs::Keep => true,
            AttentionProbs::FirstLayer => layer == 0,
            AttentionProbs::Discard | AttentionProbs::Train => false,
        }
    }
}

/// How a forward pass runs.
pub struct ForwardOptions<'a, B: Backend> {
    /// Dropout when training, `None` for inference.
    pub dropout: Option<&'a Dropout>,
    /// Rows of the MLM head.
    pub mlm_rows: MlmRows<'a, B>,
    /// Which attention probabilities the activations must hold afterwards.
    pub attention_probs: AttentionProbs,
}

impl<B: Backend> ForwardOptions<'_, B> {
    /// Inference: no dropout, the MLM head over every token, no attention probabilities (every
    /// attention may run fused).
    pub fn inference() -> Self {
        ForwardOptions {
            dropout: None,
            mlm_rows: MlmRows::All,
            attention_probs: AttentionProbs::Discard,
        }
    }
}

/// Saved activations of the EMD.
pub struct EmdActivations<T> {
    /// `E_pos[pos] + H`, `[N, H]`.
    pub query: T,
    /// The two passes of the last layer.
    pub passes: [LayerActivations<T>; 2],
}

/// Everything one forward pass saves, allocated once per batch shape and reused.
pub struct Activations<T> {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// Rows of the MLM head.
    pub mlm_rows: usize,
    /// The embedding block.
    pub embeddings: EmbeddingActivations<T>,
    /// One entry per encoder layer that runs (all but the last one under the EMD).
    pub layers: Vec<LayerActivations<T>>,
    /// The feed-forward activation `act(intermediate(x))`, `[N, F]`, of the layer that ran
    /// last: one buffer for every layer, whose backward recomputes it from its
    /// pre-activation (a quarter of a layer's saved activations at `F = 4H`).
    pub feed_forward: T,
    /// The ConvLayer after layer 0.
    pub conv: Option<ConvActivations<T>>,
    /// The EMD.
    pub emd: Option<EmdActivations<T>>,
    /// The MLM head's input rows when they are selected, `[R, H]`.
    pub mlm_input: Option<T>,
    /// The MLM head.
    pub mlm: Option<MlmActivations<T>>,
    /// The RTD head.
    pub rtd: Option<RtdActivations<T>>,
}

impl<T> Activations<T> {
    /// Hidden state `i`: 0 is the embedding output, `i ≥ 1` the output of layer `i − 1`
    /// (after the ConvLayer for layer 0), as HF's `hidden_states`.
    pub fn hidden_state(&self, i: usize) -> Option<&T> {
        let layers = self.layers.get(..i)?;
        Some(last_hidden(layers, &self.conv, &self.embeddings))
    }

    /// The encoder output (of the layers that ran).
    pub fn last_hidden_state(&self) -> &T {
        last_hidden(&self.layers, &self.conv, &self.embeddings)
    }
}

/// The output of the last of `layers` (the embedding output when there are none; the ConvLayer
/// output when only layer 0 ran), borrowing only the encoder's activations so that later
/// buffers can be borrowed mutably beside it.
fn last_hidden<'a, T>(
    layers: &'a [LayerActivations<T>],
    conv: &'a Option<ConvActivations<T>>,
    embeddings: &'a EmbeddingActivations<T>,
) -> &'a T {
    match (layers.len(), conv) {
        (0, _) => &embeddings.output,
        (1, Some(conv)) => &conv.output,
        (_, _) => &layers[layers.len() - 1].output,
    }
}

/// EMD buffers of the backward pass.
struct EmdScratch<T> {
    doutput: T,
    dmiddle: T,
    dquery: T,
}

/// Buffers of the backward pass, allocated once per batch shape.
pub struct BackwardScratch<T> {
    layer: LayerScratch<T>,
    dstate: [T; 2],
    emd: Option<EmdScratch<T>>,
    conv: Option<ConvScratch<T>>,
    dembedding: [T; 2],
    projection: Option<ProjectionGrads<T>>,
    /// `(scratch, ∂L/∂normalised relative table)`, both `[2S, H]`.
    drel: Option<(T, T)>,
    dmlm_input: Option<T>,
    /// The MLM head's loss and gradient buffers (the loss kernel fills `dlogits`).
    pub mlm: Option<MlmScratch<T>>,
    /// The RTD head's loss and gradient buffers (the loss kernel fills `dlogits`).
    pub rtd: Option<RtdScratch<T>>,
}

impl Deberta {
    /// Builds the model and registers its parameters in `layout` under `root`; `shared`
    /// supplies embedding tables owned by another model (ES / GDES discriminators).
    pub fn new(
        layout: &mut ParamLayout,
        root: &str,
        config: &ModelConfig,
        heads: Heads,
        shared: SharedTables,
    ) -> Self {
        let embeddings =
            Embeddings::new(layout, &format!("{root}deberta.embeddings"), config, shared);
        let encoder = Encoder::new(layout, &format!("{root}deberta.encoder"), config);
        let emd = (heads.emd && heads.mlm.is_some()).then(|| EnhancedMaskDecoder {
            position: embeddings.position.unwrap_or_else(|| {
                TableSource::Param(layout.add(
                    format!("{root}deberta.embeddings.position_embeddings.weight"),
                    &[config.max_position_embeddings, config.embedding_size],
                    Init::Normal(config.initializer_range),
                ))
            }),
        });
        let mlm_head = match (heads.mlm, embeddings.word) {
            (Some(kind), TableSource::Param(word)) => {
                Some(MlmHead::new(layout, root, kind, config, word))
            }
            _ => None,
        };
        let rtd_head = heads.rtd.then(|| RtdHead::new(layout, root, config));
        Deberta {
            config: *config,
            embeddings,
            encoder,
            mlm_head,
            emd,
            rtd_head,
        }
    }

    /// Encoder layers that run in the normal pass (the last one is left to the EMD).
    pub fn encoder_depth(&self) -> usize {
        let layers = self.encoder.layers.len();
        if self.emd.is_some() {
            layers - 1
        } else {
            layers
        }
    }

    /// Relative-table applications: the encoder layers, then the EMD's two passes (which use
    /// the last layer's weights with dropout streams of their own).
    pub fn relative_applications(&self) -> Vec<usize> {
        let last = self.encoder.layers.len() - 1;
        let mut apps: Vec<usize> = (0..self.encoder.layers.len()).collect();
        if self.emd.is_some() {
            apps.extend([last, last]);
        }
        apps
    }

    /// Buffers for a batch. `selected_mlm_rows` is the number of rows the MLM head gathers
    /// ([`MlmRows::Selected`]); `None` runs it on every token ([`MlmRows::All`]). `training`
    /// adds the buffers dropout needs.
    pub fn activations<B: Backend>(
        &self,
        backend: &B,
        batch: &DeviceBatch<B>,
        selected_mlm_rows: Option<usize>,
        training: bool,
    ) -> Result<Activations<B::Tensor>, Error> {
        let mlm_rows = selected_mlm_rows.unwrap_or(batch.tokens());
        let n = batch.tokens();
        let (bsz, len) = (batch.batch, batch.len);
        let layer_acts = |i: usize| self.encoder.layers[i].activations(backend, bsz, len, training);
        let last = self.encoder.layers.len() - 1;
        Ok(Activations {
            batch: bsz,
            len,
            mlm_rows,
            embeddings: self.embeddings.activations(backend, n)?,
            layers: (0..self.encoder_depth())
                .map(layer_acts)
                .collect::<Result<Vec<_>, Error>>()?,
            feed_forward: backend.zeros(n * self.config.intermediate_size)?,
            conv: match &self.encoder.conv {
                Some(conv) => Some(conv.activations(backend, n)?),
                None => None,
            },
            emd: match self.emd {
                Some(_) => Some(EmdActivations {
                    query: backend.zeros(n * self.config.hidden_size)?,
                    passes: [layer_acts(last)?, layer_acts(last)?],
                }),
                None => None,
            },
            mlm_input: match (&self.mlm_head, selected_mlm_rows) {
                (Some(_), Some(rows)) => Some(backend.zeros(rows * self.config.hidden_size)?),
                _ => None,
            },
            mlm: match &self.mlm_head {
                Some(head) => Some(head.activations(backend, mlm_rows)?),
                None => None,
            },
            rtd: match &self.rtd_head {
                Some(head) => Some(head.activations(backend, n)?),
                None => None,
            },
        })
    }

    /// Backward buffers for a batch with `mlm_rows` MLM rows.
    pub fn backward_scratch<B: Backend>(
        &self,
        backend: &B,
        batch: &DeviceBatch<B>,
        mlm_rows: usize,
    ) -> Result<BackwardScratch<B::Tensor>, Error> {
        let n = batch.tokens();
        let (h, e) = (self.config.hidden_size, self.embeddings.embedding_size);
        let layer = &self.encoder.layers[0];
        let rel = self.encoder.rel_rows * h;
        let relative = self.encoder.rel_embeddings.is_some();
        let zeros = |len: usize| backend.zeros(len);
        Ok(BackwardScratch {
            layer: layer.scratch(backend, batch.batch, batch.len, batch.window.rows)?,
            dstate: [zeros(n * h)?, zeros(n * h)?],
            emd: match self.emd {
                Some(_) => Some(EmdScratch {
                    doutput: zeros(n * h)?,
                    dmiddle: zeros(n * h)?,
                    dquery: zeros(n * h)?,
                }),
                None => None,
            },
            conv: match self.encoder.conv {
                Some(_) => Some(ConvScratch {
                    dlayer0: zeros(n * h)?,
                    dembeddings: zeros(n * h)?,
                    buffers: [zeros(n * h)?, zeros(n * h)?],
                }),
                None => None,
            },
            dembedding: [zeros(n * h)?, zeros(n * e)?],
            projection: if relative {
                Some(
                    layer
                        .attention
                        .projection_grads(backend, batch.window.rows)?,
                )
            } else {
                None
            },
            drel: if relative {
                Some((zeros(rel)?, zeros(rel)?))
            } else {
                None
            },
            dmlm_input: match &self.mlm_head {
                Some(_) => Some(backend.zeros(mlm_rows * h)?),
                None => None,
            },
            mlm: match &self.mlm_head {
                Some(head) => Some(head.scratch(backend, mlm_rows)?),
                None => None,
            },
            rtd: match &self.rtd_head {
                Some(head) => Some(head.scratch(backend, n)?),
                None => None,
            },
        })
    }

    /// The relative table and projections a forward needs: for inference (`dropout = None`,
    /// all rows; computed once per set of weights) or for one training step (the batch's
    /// window, fresh `pos_dropout` masks).
    pub fn relative_embeddings<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        batch: Option<&DeviceBatch<B>>,
        dropout: Option<&Dropout>,
    ) -> Result<Option<RelativeEmbeddings<B::Tensor>>, Error> {
        self.encoder.relative_embeddings(
            backend,
            params,
            batch.map(|b| b.window),
            dropout,
            &self.relative_applications(),
        )
    }

    /// Forward pass: embeddings, encoder, EMD, heads.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        relative: Option<&RelativeEmbeddings<B::Tensor>>,
        batch: &DeviceBatch<B>,
        options: &ForwardOptions<'_, B>,
        acts: &mut Activations<B::Tensor>,
    ) -> Result<(), Error> {
        if acts.batch != batch.batch || acts.len != batch.len {
            return Err(Error::ShapeMismatch {
                what: "activations allocated for another batch shape",
                expected: acts.batch * acts.len,
                found: batch.tokens(),
            });
        }
        let dropout = options.dropout;
        self.embeddings
            .forward(backend, params, batch, dropout, &mut acts.embeddings)?;
        let depth = self.encoder_depth();
        for i in 0..depth {
            let (done, rest) = acts.layers.split_at_mut(i);
            let input = last_hidden(done, &acts.conv, &acts.embeddings);
            let input = AttentionInput {
                query_states: input,
                hidden: input,
                batch,
                projection: relative.and_then(|r| r.projections.get(i)),
                layer: i,
                dropout,
                keep_probs: options.attention_probs.keeps(i),
                train: options.attention_probs == AttentionProbs::Train,
            };
            self.encoder.layers[i].forward(
                backend,
                params,
                input,
                &mut rest[0],
                &mut acts.feed_forward,
            )?;
            if let (0, Some(conv), Some(conv_acts)) = (i, &self.encoder.conv, acts.conv.as_mut()) {
                let input = ConvInput {
                    embeddings: &acts.embeddings.output,
                    batch,
                    dropout,
                };
                conv.forward(backend, params, input, &rest[0].output, conv_acts)?;
            }
        }
        self.emd_forward(backend, params, relative, batch, options, acts)?;
        let hidden = last_hidden(&acts.layers, &acts.conv, &acts.embeddings);
        if let (Some(head), Some(mlm)) = (&self.mlm_head, acts.mlm.as_mut()) {
            let top = match &acts.emd {
                Some(emd) => &emd.passes[1].output,
                None => hidden,
            };
            let input = match (&options.mlm_rows, acts.mlm_input.as_mut()) {
                (MlmRows::Selected { positions, count }, Some(rows)) => {
                    if *count != acts.mlm_rows {
                        return Err(Error::ShapeMismatch {
                            what: "MLM rows",
                            expected: acts.mlm_rows,
                            found: *count,
                        });
                    }
                    backend.embedding_lookup(
                        top,
                        positions,
                        rows,
                        self.config.hidden_size,
                        false,
                    )?;
                    &*rows
                }
                (MlmRows::All, _) => top,
                (MlmRows::Selected { .. }, None) => {
                    return Err(Error::Missing {
                        what: "MLM row buffer",
                    });
                }
            };
            head.forward(backend, params, input, acts.mlm_rows, mlm)?;
        }
        if let (Some(head), Some(rtd)) = (&self.rtd_head, acts.rtd.as_mut()) {
            head.forward(backend, params, hidden, batch.batch, batch.len, rtd)?;
        }
        Ok(())
    }

    /// The EMD's two passes over the encoder output into `acts.emd` (nothing without an EMD).
    fn emd_forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        relative: Option<&RelativeEmbeddings<B::Tensor>>,
        batch: &DeviceBatch<B>,
        options: &ForwardOptions<'_, B>,
        acts: &mut Activations<B::Tensor>,
    ) -> Result<(), Error> {
        let (Some(emd), Some(emd_acts)) = (&self.emd, acts.emd.as_mut()) else {
            return Ok(());
        };
        let hidden = last_hidden(&acts.layers, &acts.conv, &acts.embeddings);
        let feed_forward = &mut acts.feed_forward;
        let dropout = options.dropout;
        let h = self.config.hidden_size;
        let last = self.encoder.layers.len() - 1;
        emd.position
            .lookup(backend, params, &batch.position_ids, &mut emd_acts.query, h)?;
        backend.add_assign(&mut emd_acts.query, hidden)?;
        let [first, second] = &mut emd_acts.passes;
        let input = |query_states, pass: usize| AttentionInput {
            query_states,
            hidden,
            batch,
            projection: relative.and_then(|r| r.projections.get(last + 1 + pass)),
            layer: last + 1 + pass,
            dropout,
            keep_probs: options.attention_probs.keeps(last + 1 + pass),
            train: options.attention_probs == AttentionProbs::Train,
        };
        let layer = &self.encoder.layers[last];
        layer.forward(
            backend,
            params,
            input(&emd_acts.query, 0),
            first,
            feed_forward,
        )?;
        layer.forward(
            backend,
            params,
            input(&first.output, 1),
            second,
            feed_forward,
        )
    }

    /// Backward pass from the head gradients the loss kernels left in `scratch.mlm.dlogits`
    /// and `scratch.rtd.dlogits`: adds every parameter's gradient to `ctx.grads`, telling the
    /// context each encoder layer's parameters as soon as the pass is done with them (the top
    /// layer first). `options` must be the forward's.
    pub fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        relative: Option<&RelativeEmbeddings<B::Tensor>>,
        batch: &DeviceBatch<B>,
        options: &ForwardOptions<'_, B>,
        acts: &Activations<B::Tensor>,
        scratch: &mut BackwardScratch<B::Tensor>,
    ) -> Result<(), Error> {
        let backend = ctx.backend;
        let train = options.attention_probs == AttentionProbs::Train;
        if options.attention_probs != AttentionProbs::Keep && !train && options.dropout.is_none() {
            return Err(Error::Missing {
                what: "the attention probabilities of the forward (a backward pass needs \
                       AttentionProbs::Keep or AttentionProbs::Train)",
            });
        }
        let dropout = options.dropout;
        let h = self.config.hidden_size;
        let hidden = last_hidden(&acts.layers, &acts.conv, &acts.embeddings);
        let [dstate_a, dstate_b] = &mut scratch.dstate;
        backend.fill(dstate_a, 0.0)?;
        // Heads: ∂L/∂(top hidden state), or ∂L/∂(EMD output) for the MLM head under the EMD.
        if let (Some(head), Some(mlm), Some(mlm_scratch)) =
            (&self.mlm_head, &acts.mlm, scratch.mlm.as_mut())
        {
            let target: &mut B::Tensor = match scratch.emd.as_mut() {
                Some(emd) => {
                    backend.fill(&mut emd.doutput, 0.0)?;
                    &mut emd.doutput
                }
                None => &mut *dstate_a,
            };
            let input = match (&options.mlm_rows, acts.mlm_input.as_ref(), &acts.emd) {
                (MlmRows::Selected { .. }, Some(rows), _) => rows,
                (_, _, Some(emd)) => &emd.passes[1].output,
                _ => hidden,
            };
            match (&options.mlm_rows, scratch.dmlm_input.as_mut()) {
                (MlmRows::Selected { positions, .. }, Some(drows)) => {
                    backend.fill(drows, 0.0)?;
                    head.backward(ctx, input, acts.mlm_rows, mlm, mlm_scratch, drows)?;
                    backend.embedding_backward(positions, drows, target, h, None)?;
                }
                _ => head.backward(ctx, input, acts.mlm_rows, mlm, mlm_scratch, target)?,
            }
        }
        if let (Some(head), Some(rtd), Some(rtd_scratch)) =
            (&self.rtd_head, &acts.rtd, scratch.rtd.as_mut())
        {
            head.backward(ctx, batch.batch, batch.len, rtd, rtd_scratch, dstate_a)?;
        }
        if let Some((_, drel_normed)) = scratch.drel.as_mut() {
            backend.fill(drel_normed, 0.0)?;
        }
        let depth = self.encoder_depth();
        if let (Some(emd), Some(emd_acts), Some(emd_scratch)) =
            (&self.emd, &acts.emd, scratch.emd.as_mut())
        {
            let last = self.encoder.layers.len() - 1;
            let layer = &self.encoder.layers[last];
            let input = |query_states, pass: usize| AttentionInput {
                query_states,
                hidden,
                batch,
                projection: relative.and_then(|r| r.projections.get(last + 1 + pass)),
                layer: last + 1 + pass,
                dropout,
                keep_probs: true,
                train,
            };
            // Pass 2 (queries = pass-1 output), then pass 1 (queries = E_pos + H); both read
            // keys and values from H, whose gradient collects in `dstate_a`.
            backend.fill(&mut emd_scratch.dmiddle, 0.0)?;
            zero_projection(backend, scratch.projection.as_mut())?;
            layer.backward(
                ctx,
                input(&emd_acts.passes[0].output, 1),
                &emd_acts.passes[1],
                &emd_scratch.doutput,
                &mut scratch.layer,
                AttentionInputGrads {
                    dquery_states: &mut emd_scratch.dmiddle,
                    dhidden: Some(&mut *dstate_a),
                    dprojection: scratch.projection.as_mut(),
                },
            )?;
            self.projection_backward(
                ctx,
                relative,
                (last + 2, last),
                dropout,
                scratch_parts(&mut scratch.projection, &mut scratch.drel),
            )?;
            backend.fill(&mut emd_scratch.dquery, 0.0)?;
            zero_projection(backend, scratch.projection.as_mut())?;
            layer.backward(
                ctx,
                input(&emd_acts.query, 0),
                &emd_acts.passes[0],
                &emd_scratch.dmiddle,
                &mut scratch.layer,
                AttentionInputGrads {
                    dquery_states: &mut emd_scratch.dquery,
                    dhidden: Some(&mut *dstate_a),
                    dprojection: scratch.projection.as_mut(),
                },
            )?;
            self.projection_backward(
                ctx,
                relative,
                (last + 1, last),
                dropout,
                scratch_parts(&mut scratch.projection, &mut scratch.drel),
            )?;
            backend.add_assign(dstate_a, &emd_scratch.dquery)?;
            emd.position
                .backward(ctx, &batch.position_ids, &emd_scratch.dquery, h, None)?;
        }
        // Encoder layers, top to bottom: `dcur` is ∂L/∂(hidden state i + 1).
        let (mut dcur, mut dprev) = (dstate_a, dstate_b);
        for i in (0..depth).rev() {
            let input_state = last_hidden(&acts.layers[..i], &acts.conv, &acts.embeddings);
            let doutput: &B::Tensor =
                match (i, &self.encoder.conv, &acts.conv, scratch.conv.as_mut()) {
                    (0, Some(conv), Some(conv_acts), Some(conv_scratch)) => {
                        backend.fill(&mut conv_scratch.dlayer0, 0.0)?;
                        backend.fill(&mut conv_scratch.dembeddings, 0.0)?;
                        let input = ConvInput {
                            embeddings: &acts.embeddings.output,
                            batch,
                            dropout,
                        };
                        conv.backward(ctx, input, conv_acts, dcur, conv_scratch)?;
                        &conv_scratch.dlayer0
                    }
                    _ => dcur,
                };
            backend.fill(dprev, 0.0)?;
            zero_projection(backend, scratch.projection.as_mut())?;
            let input = AttentionInput {
                query_states: input_state,
                hidden: input_state,
                batch,
                projection: relative.and_then(|r| r.projections.get(i)),
                layer: i,
                dropout,
                keep_probs: true,
                train,
            };
            self.encoder.layers[i].backward(
                ctx,
                input,
                &acts.layers[i],
                doutput,
                &mut scratch.layer,
                AttentionInputGrads {
                    dquery_states: dprev,
                    dhidden: None,
                    dprojection: scratch.projection.as_mut(),
                },
            )?;
            self.projection_backward(
                ctx,
                relative,
                (i, i),
                dropout,
                scratch_parts(&mut scratch.projection, &mut scratch.drel),
            )?;
            // Nothing below layer i reads its weights (the EMD passes, which reuse the top
            // layer, ran first): its gradients are final.
            ctx.gradients_ready(self.encoder.layers[i].params())?;
            core::mem::swap(&mut dcur, &mut dprev);
        }
        // `dcur` is ∂L/∂(embedding output); the ConvLayer read it too.
        if let Some(conv_scratch) = scratch.conv.as_ref() {
            backend.add_assign(dcur, &conv_scratch.dembeddings)?;
        }
        if let (Some(relative), Some((_, drel_normed))) = (relative, scratch.drel.as_ref()) {
            self.encoder
                .relative_table_backward(ctx, relative, drel_normed)?;
        }
        let [dnormed_input, dsummed] = &mut scratch.dembedding;
        self.embeddings.backward(
            ctx,
            batch,
            dropout,
            &acts.embeddings,
            dcur,
            (dnormed_input, dsummed),
        )
    }

    /// Position-projection backward of one application into the relative-table gradient.
    fn projection_backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        relative: Option<&RelativeEmbeddings<B::Tensor>>,
        application: (usize, usize),
        dropout: Option<&Dropout>,
        parts: Option<ProjectionBackwardBuffers<'_, B::Tensor>>,
    ) -> Result<(), Error> {
        match (relative, parts) {
            (Some(relative), Some(buffers)) => self.encoder.position_projection_backward(
                ctx,
                relative,
                application,
                dropout,
                buffers,
            ),
            _ => Ok(()),
        }
    }
}

/// Splits the relative-attention gradient buffers for one projection backward.
fn scratch_parts<'a, T>(
    projection: &'a mut Option<ProjectionGrads<T>>,
    drel: &'a mut Option<(T, T)>,
) -> Option<ProjectionBackwardBuffers<'a, T>> {
    match (projection.as_ref(), drel.as_mut()) {
        (Some(dprojection), Some((scratch, drel_normed))) => Some(ProjectionBackwardBuffers {
            dprojection,
            scratch,
            drel_normed,
        }),
        _ => None,
    }
}

/// Zeroes a layer's position-projection gradients before its backward.
fn zero_projection<B: Backend>(
    backend: &B,
    projection: Option<&mut ProjectionGrads<B::Tensor>>,
) -> Result<(), Error> {
    if let Some(p) = projection {
        for t in [p.keys.as_mut(), p.queries.as_mut()].into_iter().flatten() {
            backend.fill(t, 0.0)?;
        }
    }
    Ok(())
}
