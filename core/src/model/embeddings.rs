//! `DebertaV2Embeddings` (SPEC §2): word (+ absolute position) (+ token type) embeddings,
//! optional `embed_proj`, LayerNorm, the padding mask — and where their gradients go.
//!
//! An embedding table is read through a [`TableSource`]: a parameter of its own (or, under
//! ES, the generator's), or the GDES sum `sg(E_G) + E_Δ`. The GDES variant holds the
//! generator's table as a [`FrozenParam`], which can be read but offers no way to reach a
//! gradient slot: the discriminator's backward has nowhere to write into `E_G`.

use alloc::format;

use super::batch::DeviceBatch;
use super::context::BackwardContext;
use super::dropout::{Dropout, Site, maybe_dropout};
use super::modules::{LayerNorm, Linear};
use super::params::{Init, ParamId, ParamLayout, ParamStore};
use crate::backend::Backend;
use crate::{Error, ModelConfig};

/// A parameter that may be read but never receives gradient (the stop-gradient of GDES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrozenParam(ParamId);

impl FrozenParam {
    /// Wraps a parameter as read-only for the model holding it.
    pub fn new(id: ParamId) -> Self {
        FrozenParam(id)
    }

    /// The tensor's current value.
    pub fn read<'a, T>(&self, params: &'a ParamStore<T>) -> &'a T {
        params.get(self.0)
    }
}

/// Where an embedding table comes from, and so where its gradient goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSource {
    /// A trainable parameter: the model's own table (NES, a standalone model), or another
    /// model's table shared with it (ES): the gradient is added to that parameter.
    Param(ParamId),
    /// GDES: the table is `sg(frozen) + delta`; the gradient reaches `delta` only.
    Disentangled {
        /// The generator's table, read through a stop-gradient.
        frozen: FrozenParam,
        /// The discriminator's own offset `E_Δ`.
        delta: ParamId,
    },
}

impl TableSource {
    /// Looks `ids` up into `out` (rows of width `dim`), overwriting it.
    pub(crate) fn lookup<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        ids: &B::Indices,
        out: &mut B::Tensor,
        dim: usize,
    ) -> Result<(), Error> {
        match *self {
            TableSource::Param(id) => {
                backend.embedding_lookup(params.get(id), ids, out, dim, false)
            }
            TableSource::Disentangled { frozen, delta } => {
                backend.embedding_lookup(frozen.read(params), ids, out, dim, false)?;
                backend.embedding_lookup(params.get(delta), ids, out, dim, true)
            }
        }
    }

    /// Looks `ids` up and adds the rows to `out` (rows of width `dim`). A GDES table needs
    /// `scratch` (`[rows, dim]`) to form `E_G[id] + E_Δ[id]` before adding.
    pub(crate) fn lookup_add<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        ids: &B::Indices,
        out: &mut B::Tensor,
        scratch: Option<&mut B::Tensor>,
        dim: usize,
    ) -> Result<(), Error> {
        match *self {
            TableSource::Param(id) => backend.embedding_lookup(params.get(id), ids, out, dim, true),
            TableSource::Disentangled { .. } => {
                // (E_G[id] + E_Δ[id]) formed first, then added: the order of a lookup in the
                // materialised table E_G + E_Δ.
                let tmp = scratch.ok_or(Error::Missing {
                    what: "scratch buffer for a GDES table lookup",
                })?;
                self.lookup(backend, params, ids, tmp, dim)?;
                backend.add_assign(out, tmp)
            }
        }
    }

    /// Adds the lookup's gradient to the trainable side of the table.
    pub(crate) fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        ids: &B::Indices,
        dout: &B::Tensor,
        dim: usize,
        skip: Option<u32>,
    ) -> Result<(), Error> {
        let target = match *self {
            TableSource::Param(id) => id,
            TableSource::Disentangled { delta, .. } => delta,
        };
        ctx.backend
            .embedding_backward(ids, dout, ctx.grads.get_mut(target), dim, skip)
    }
}

/// The embedding block's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// `embeddings.word_embeddings.weight`, `[vocab, E]`.
    pub word: TableSource,
    /// `embeddings.position_embeddings.weight`, `[max_position, E]` (`position_biased_input`).
    pub position: Option<TableSource>,
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
    /// `pad_token_id`: its word-embedding row receives no lookup gradient.
    pub pad_token_id: u32,
}

/// Saved activations of the embedding block.
pub struct EmbeddingActivations<T> {
    /// Sum of the looked-up embeddings, `[N, E]`.
    pub summed: T,
    /// Scratch for GDES position lookups, `[N, E]`.
    pub lookup_scratch: Option<T>,
    /// `embed_proj` output, `[N, H]`, when `E ≠ H`.
    pub projected: Option<T>,
    /// LayerNorm statistics.
    pub stats: T,
    /// The embedding output (LayerNorm'ed, padding rows zero, dropped out when training).
    pub output: T,
}

/// Tables a model reads from another model instead of registering its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SharedTables {
    /// The word-embedding table.
    pub word: Option<TableSource>,
    /// The absolute-position table.
    pub position: Option<TableSource>,
}

impl Embeddings {
    /// Registers `{prefix}.word_embeddings` and the other tables the configuration asks for,
    /// except those `shared` provides.
    pub fn new(
        layout: &mut ParamLayout,
        prefix: &str,
        cfg: &ModelConfig,
        shared: SharedTables,
    ) -> Self {
        let (e, std) = (cfg.embedding_size, cfg.initializer_range);
        let word = shared.word.unwrap_or_else(|| {
            TableSource::Param(layout.add(
                format!("{prefix}.word_embeddings.weight"),
                &[cfg.vocab_size, e],
                Init::Normal(std),
            ))
        });
        let position = cfg.position_biased_input.then(|| {
            shared.position.unwrap_or_else(|| {
                TableSource::Param(layout.add(
                    format!("{prefix}.position_embeddings.weight"),
                    &[cfg.max_position_embeddings, e],
                    Init::Normal(std),
                ))
            })
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
            pad_token_id: cfg.pad_token_id as u32,
        }
    }

    /// Saved-activation buffers for `tokens` tokens.
    pub fn activations<B: Backend>(
        &self,
        backend: &B,
        tokens: usize,
    ) -> Result<EmbeddingActivations<B::Tensor>, Error> {
        let gdes_position = matches!(self.position, Some(TableSource::Disentangled { .. }));
        Ok(EmbeddingActivations {
            summed: backend.zeros(tokens * self.embedding_size)?,
            lookup_scratch: if gdes_position {
                Some(backend.zeros(tokens * self.embedding_size)?)
            } else {
                None
            },
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
        dropout: Option<&Dropout>,
        acts: &mut EmbeddingActivations<B::Tensor>,
    ) -> Result<(), Error> {
        let n = batch.tokens();
        let e = self.embedding_size;
        self.word
            .lookup(backend, params, &batch.input_ids, &mut acts.summed, e)?;
        if let Some(position) = &self.position {
            position.lookup_add(
                backend,
                params,
                &batch.position_ids,
                &mut acts.summed,
                acts.lookup_scratch.as_mut(),
                e,
            )?;
        }
        if let Some(token_type) = self.token_type {
            let ids = batch.token_type_ids.as_ref().ok_or(Error::Missing {
                what: "token-type ids for the token-type embeddings",
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
        backend.scale_rows(&mut acts.output, &batch.mask, self.hidden)?;
        maybe_dropout(dropout, backend, &mut acts.output, 0, Site::Embeddings)
    }

    /// Backward from `doutput` (gradient of the embedding output; consumed as scratch): adds
    /// to the LayerNorm, projection and table gradients, routing each table's gradient by its
    /// [`TableSource`]. `scratch` holds `[N, H]` and `[N, E]` buffers.
    pub fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        batch: &DeviceBatch<B>,
        dropout: Option<&Dropout>,
        acts: &EmbeddingActivations<B::Tensor>,
        doutput: &mut B::Tensor,
        scratch: (&mut B::Tensor, &mut B::Tensor),
    ) -> Result<(), Error> {
        let backend = ctx.backend;
        let (n, e) = (batch.tokens(), self.embedding_size);
        let (dnormed_input, dsummed) = scratch;
        maybe_dropout(dropout, backend, doutput, 0, Site::Embeddings)?;
        backend.scale_rows(doutput, &batch.mask, self.hidden)?;
        let normalised_input = acts.projected.as_ref().unwrap_or(&acts.summed);
        match &self.projection {
            Some(projection) => {
                backend.fill(dnormed_input, 0.0)?;
                self.norm.backward(
                    ctx,
                    normalised_input,
                    &acts.stats,
                    doutput,
                    dnormed_input,
                    n,
                )?;
                backend.fill(dsummed, 0.0)?;
                projection.backward(ctx, &acts.summed, dnormed_input, Some(&mut *dsummed), n)?;
            }
            None => {
                backend.fill(dsummed, 0.0)?;
                self.norm
                    .backward(ctx, normalised_input, &acts.stats, doutput, dsummed, n)?;
            }
        }
        self.word
            .backward(ctx, &batch.input_ids, dsummed, e, Some(self.pad_token_id))?;
        if let Some(position) = &self.position {
            position.backward(ctx, &batch.position_ids, dsummed, e, None)?;
        }
        if let (Some(token_type), Some(ids)) = (self.token_type, batch.token_type_ids.as_ref()) {
            backend.embedding_backward(ids, dsummed, ctx.grads.get_mut(token_type), e, None)?;
        }
        Ok(())
    }
}
