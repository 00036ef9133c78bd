//! `DebertaV2Embeddings` (SPEC §2): word (+ absolute position) (+ token type) embeddings,
//! optional `embed_proj`, LayerNorm, and the padding mask.

use alloc::format;

use super::batch::DeviceBatch;
use super::modules::{LayerNorm, Linear};
use super::params::{Init, ParamId, ParamLayout, ParamStore};
use crate::backend::Backend;
use crate::{Error, ModelConfig};

/// The embedding block's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// `embeddings.word_embeddings.weight`, `[vocab, E]`.
    pub word: ParamId,
    /// `embeddings.position_embeddings.weight`, `[max_position, E]` (`position_biased_input`).
    pub position: Option<ParamId>,
    /// `embeddings.token_type_embeddings.weight`, `[type_vocab, E]`.
    pub token_type: Option<ParamId>,
    /// `embeddings.embed_proj` (no bias), when `E ≠ H`.
    pub projection: Option<Linear>,
    /// `embeddings.LayerNorm`.
    pub norm: LayerNorm,
    /// Embedding width `E`.
    pub embedding_size: usize,
    /// Hidden size `H`.
    pub hidden: usize,
}

/// Saved activations of the embedding block.
pub struct EmbeddingActivations<T> {
    /// Sum of the looked-up embeddings, `[N, E]`.
    pub summed: T,
    /// `embed_proj` output, `[N, H]`, when `E ≠ H`.
    pub projected: Option<T>,
    /// LayerNorm statistics.
    pub stats: T,
    /// The embedding output (LayerNorm'ed, padding rows zero), `[N, H]`.
    pub output: T,
}

impl Embeddings {
    /// Registers `{prefix}.word_embeddings` and the other tables the configuration asks for.
    pub fn new(layout: &mut ParamLayout, prefix: &str, cfg: &ModelConfig) -> Self {
        let (e, std) = (cfg.embedding_size, cfg.initializer_range);
        let word = layout.add(
            format!("{prefix}.word_embeddings.weight"),
            &[cfg.vocab_size, e],
            Init::Normal(std),
        );
        let position = cfg.position_biased_input.then(|| {
            layout.add(
                format!("{prefix}.position_embeddings.weight"),
                &[cfg.max_position_embeddings, e],
                Init::Normal(std),
            )
        });
        let token_type = (cfg.type_vocab_size > 0).then(|| {
            layout.add(
                format!("{prefix}.token_type_embeddings.weight"),
                &[cfg.type_vocab_size, e],
                Init::Normal(std),
            )
        });
        let projection = (e != cfg.hidden_size).then(|| {
            Linear::new(
                layout,
                &format!("{prefix}.embed_proj"),
                e,
                cfg.hidden_size,
                false,
                std,
            )
        });
        Embeddings {
            word,
            position,
            token_type,
            projection,
            norm: LayerNorm::new(
                layout,
                &format!("{prefix}.LayerNorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            ),
            embedding_size: e,
            hidden: cfg.hidden_size,
        }
    }

    /// Saved-activation buffers for `tokens` tokens.
    pub fn activations<B: Backend>(
        &self,
        backend: &B,
        tokens: usize,
    ) -> Result<EmbeddingActivations<B::Tensor>, Error> {
        Ok(EmbeddingActivations {
            summed: backend.zeros(tokens * self.embedding_size)?,
            projected: match self.projection {
                Some(_) => Some(backend.zeros(tokens * self.hidden)?),
                None => None,
            },
            stats: backend.zeros(tokens * 2)?,
            output: backend.zeros(tokens * self.hidden)?,
        })
    }

    /// Embeds a batch into `acts.output`.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        batch: &DeviceBatch<B>,
        acts: &mut EmbeddingActivations<B::Tensor>,
    ) -> Result<(), Error> {
        let n = batch.tokens();
        let e = self.embedding_size;
        backend.embedding_lookup(
            params.get(self.word),
            &batch.input_ids,
            &mut acts.summed,
            e,
            false,
        )?;
        if let Some(position) = self.position {
            let ids = batch.position_ids.as_ref().ok_or(Error::ShapeMismatch {
                what: "position ids for absolute position embeddings",
                expected: 1,
                found: 0,
            })?;
            backend.embedding_lookup(params.get(position), ids, &mut acts.summed, e, true)?;
        }
        if let Some(token_type) = self.token_type {
            let ids = batch.token_type_ids.as_ref().ok_or(Error::ShapeMismatch {
                what: "token-type ids for the token-type embeddings",
                expected: 1,
                found: 0,
            })?;
            backend.embedding_lookup(params.get(token_type), ids, &mut acts.summed, e, true)?;
        }
        let normalised_input = match (&self.projection, acts.projected.as_mut()) {
            (Some(projection), Some(projected)) => {
                projection.forward(backend, params, &acts.summed, projected, n)?;
                &*projected
            }
            _ => &acts.summed,
        };
        self.norm.forward(
            backend,
            params,
            normalised_input,
            &mut acts.output,
            Some(&mut acts.stats),
            n,
        )?;
        backend.scale_rows(&mut acts.output, &batch.mask, self.hidden)
    }
}
