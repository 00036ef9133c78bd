//! The whole model: `DebertaV2Model` plus the optional MLM and RTD heads.

use alloc::format;
use alloc::vec::Vec;

use super::attention::AttentionInput;
use super::batch::DeviceBatch;
use super::embeddings::{EmbeddingActivations, Embeddings};
use super::encoder::{ConvActivations, Encoder, LayerActivations, RelativeEmbeddings};
use super::heads::{MlmActivations, MlmHead, MlmLayout, RtdActivations, RtdHead};
use super::params::{ParamLayout, ParamStore};
use crate::backend::Backend;
use crate::{Error, ModelConfig};

/// Which heads sit on top of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Heads {
    /// The MLM head and its layout.
    pub mlm: Option<MlmLayout>,
    /// Whether the RTD head (`mask_predictions.*`) is present.
    pub rtd: bool,
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
    /// The RTD head.
    pub rtd_head: Option<RtdHead>,
}

/// Everything one forward pass saves, allocated once per `(batch, len)` and reused.
pub struct Activations<T> {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// The embedding block.
    pub embeddings: EmbeddingActivations<T>,
    /// One entry per encoder layer.
    pub layers: Vec<LayerActivations<T>>,
    /// The ConvLayer after layer 0.
    pub conv: Option<ConvActivations<T>>,
    /// The MLM head over every token.
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

    /// The encoder output.
    pub fn last_hidden_state(&self) -> &T {
        last_hidden(&self.layers, &self.conv, &self.embeddings)
    }
}

impl Deberta {
    /// Builds the model and registers its parameters in `layout` under `root`.
    pub fn new(layout: &mut ParamLayout, root: &str, config: &ModelConfig, heads: Heads) -> Self {
        let embeddings = Embeddings::new(layout, &format!("{root}deberta.embeddings"), config);
        let encoder = Encoder::new(layout, &format!("{root}deberta.encoder"), config);
        let mlm_head = heads
            .mlm
            .map(|kind| MlmHead::new(layout, root, kind, config, embeddings.word));
        let rtd_head = heads.rtd.then(|| RtdHead::new(layout, root, config));
        Deberta {
            config: *config,
            embeddings,
            encoder,
            mlm_head,
            rtd_head,
        }
    }

    /// Buffers for a batch of `batch × len` tokens.
    pub fn activations<B: Backend>(
        &self,
        backend: &B,
        batch: &DeviceBatch<B>,
    ) -> Result<Activations<B::Tensor>, Error> {
        let n = batch.tokens();
        Ok(Activations {
            batch: batch.batch,
            len: batch.len,
            embeddings: self.embeddings.activations(backend, n)?,
            layers: self
                .encoder
                .layers
                .iter()
                .map(|layer| {
                    LayerActivations::new(backend, layer, batch.batch, batch.len, batch.window.rows)
                })
                .collect::<Result<Vec<_>, Error>>()?,
            conv: match &self.encoder.conv {
                Some(conv) => Some(conv.activations(backend, n)?),
                None => None,
            },
            mlm: match &self.mlm_head {
                Some(head) => Some(head.activations(backend, n)?),
                None => None,
            },
            rtd: match &self.rtd_head {
                Some(head) => Some(head.activations(backend, n)?),
                None => None,
            },
        })
    }

    /// Inference forward (dropout off, no EMD): embeddings, encoder, and every head over every
    /// token. `relative` comes from [`Encoder::relative_embeddings`] and can be computed once
    /// per set of weights.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        relative: Option<&RelativeEmbeddings<B::Tensor>>,
        batch: &DeviceBatch<B>,
        acts: &mut Activations<B::Tensor>,
    ) -> Result<(), Error> {
        if acts.batch != batch.batch || acts.len != batch.len {
            return Err(Error::ShapeMismatch {
                what: "activations allocated for another batch shape",
                expected: acts.batch * acts.len,
                found: batch.tokens(),
            });
        }
        self.embeddings
            .forward(backend, params, batch, &mut acts.embeddings)?;
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            let projection = relative.and_then(|r| r.projections.get(i));
            let (done, rest) = acts.layers.split_at_mut(i);
            let input = last_hidden(done, &acts.conv, &acts.embeddings);
            let input = AttentionInput {
                query_states: input,
                hidden: input,
                batch,
                projection,
            };
            layer.forward(backend, params, input, &mut rest[0])?;
            if i == 0 {
                if let (Some(conv), Some(conv_acts)) = (&self.encoder.conv, acts.conv.as_mut()) {
                    conv.forward(
                        backend,
                        params,
                        &acts.embeddings.output,
                        &rest[0].output,
                        batch,
                        conv_acts,
                    )?;
                }
            }
        }
        if let (Some(head), Some(mlm)) = (&self.mlm_head, acts.mlm.as_mut()) {
            let hidden = last_hidden(&acts.layers, &acts.conv, &acts.embeddings);
            head.forward(backend, params, hidden, batch.tokens(), mlm)?;
        }
        if let (Some(head), Some(rtd)) = (&self.rtd_head, acts.rtd.as_mut()) {
            let hidden = last_hidden(&acts.layers, &acts.conv, &acts.embeddings);
            head.forward(backend, params, hidden, batch.batch, batch.len, rtd)?;
        }
        Ok(())
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
