//! Which dropout masks a training forward draws: every site of every layer has its own
//! counter-based stream, so the backward pass regenerates exactly the forward's masks and a
//! resumed run (or another backend) draws the same ones.

use crate::Error;
use crate::backend::Backend;
use crate::random::RandomStream;

/// Where in the model a dropout applies (Hugging Face `DebertaV2*` modules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// After the embedding LayerNorm and mask.
    Embeddings = 0,
    /// `pos_dropout` on the relative table, fresh per layer.
    RelativeEmbeddings = 1,
    /// On the attention probabilities.
    AttentionProbs = 2,
    /// After the attention output projection, before the residual.
    AttentionOutput = 3,
    /// After the feed-forward output projection, before the residual.
    FeedForwardOutput = 4,
    /// In the ConvLayer, before its activation.
    Conv = 5,
}

/// Dropout of one training forward: probabilities and the stream key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// `hidden_dropout_prob`.
    pub hidden: f32,
    /// `attention_probs_dropout_prob`.
    pub attention: f32,
    /// The run's seed.
    pub seed: u64,
    /// The training step.
    pub step: u32,
    /// Distinguishes models drawing in the same step (generator 0, discriminator 1, …).
    pub model: u32,
}

impl Dropout {
    /// The stream of `site` in layer `layer` (layers ≥ the encoder depth are the EMD passes).
    pub fn stream(&self, layer: usize, site: Site) -> RandomStream {
        RandomStream {
            seed: self.seed,
            step: self.step,
            stream: (self.model << 24) | (((layer as u32) & 0xFFFF) << 8) | site as u32,
        }
    }

    /// The probability that applies at `site`.
    pub fn probability(&self, site: Site) -> f32 {
        match site {
            Site::AttentionProbs => self.attention,
            _ => self.hidden,
        }
    }

    /// Applies the site's dropout to `x` in place (forward, and the identical backward).
    pub fn apply<B: Backend>(
        &self,
        backend: &B,
        x: &mut B::Tensor,
        layer: usize,
        site: Site,
    ) -> Result<(), Error> {
        let p = self.probability(site);
        if p > 0.0 {
            backend.dropout(x, p, self.stream(layer, site))?;
        }
        Ok(())
    }
}

/// Applies `dropout` at a site when training (`Some`), nothing in evaluation.
pub fn maybe_dropout<B: Backend>(
    dropout: Option<&Dropout>,
    backend: &B,
    x: &mut B::Tensor,
    layer: usize,
    site: Site,
) -> Result<(), Error> {
    match dropout {
        Some(d) => d.apply(backend, x, layer, site),
        None => Ok(()),
    }
}
