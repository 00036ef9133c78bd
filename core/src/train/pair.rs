//! The generator/discriminator pair of RTD pretraining and its three embedding-sharing modes
//! (SPEC §7): GDES (`E_D = sg(E_G) + E_Δ`), ES (one shared table) and NES (independent).
//!
//! Both models live in one [`ParamLayout`] with the names of the reference fixtures:
//! `generator.…`, `discriminator.…`, and `E_delta` / `E_delta_position` for GDES. The routing
//! is decided once, at construction, by the discriminator's [`TableSource`]s; the backward pass
//! follows them and has no other notion of sharing.

use alloc::vec::Vec;

use super::mlm::{GeneratorBatch, MlmTargets, Sampler, mlm_step};
use super::workspace::{ModelBuffers, Workspace};
use crate::backend::Backend;
use crate::model::BackwardContext;
use crate::model::dropout::Dropout;
use crate::model::{
    AttentionProbs, Deberta, DeviceBatch, ForwardOptions, FrozenParam, Heads, HostBatch, Init,
    MlmLayout, MlmRows, ParamId, ParamLayout, ParamStore, SharedTables, TableSource,
};
use crate::{Error, ModelConfig};

/// How the discriminator's embedding tables relate to the generator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Gradient-disentangled sharing: `E_D = sg(E_G) + E_Δ`, `E_Δ` zero-initialised.
    Gdes,
    /// Vanilla sharing: both losses train one table.
    Es,
    /// No sharing: independent tables.
    Nes,
}

/// The two models and the parameters of both.
#[derive(Debug, Clone, PartialEq)]
pub struct RtdPair {
    /// The generator (MLM head, optionally through the EMD), parameters `generator.…`.
    pub generator: Deberta,
    /// The discriminator (RTD head), parameters `discriminator.…`.
    pub discriminator: Deberta,
    /// The sharing mode.
    pub sharing: Sharing,
    /// Every parameter of both models.
    pub layout: ParamLayout,
    /// `E_delta` under GDES.
    pub word_delta: Option<ParamId>,
    /// `E_delta_position` under GDES with absolute positions.
    pub position_delta: Option<ParamId>,
    generator_params: Vec<ParamId>,
    discriminator_params: Vec<ParamId>,
}

/// Losses of one pair step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// Mean cross-entropy over the masked positions.
    pub mlm: f32,
    /// Mean BCE over the non-padding tokens.
    pub rtd: f32,
    /// `mlm + λ·rtd`.
    pub total: f32,
}

/// The discriminator's half of a batch: ids after replacement and the RTD labels.
pub struct DiscriminatorBatch<B: Backend> {
    /// The discriminator's input (ids after sampling).
    pub batch: DeviceBatch<B>,
    /// 1 where a token was replaced by a different one, `[B·S]`.
    pub labels: B::Tensor,
    /// Non-padding tokens (the RTD mean's denominator).
    pub tokens: usize,
}

impl<B: Backend> DiscriminatorBatch<B> {
    /// Uploads the discriminator's input: `corrupted_ids` with the generator batch's mask; a
    /// token's RTD label is `masked && corrupted ≠ original` (`mlm_labels` holds the original
    /// id at masked positions and −100 elsewhere).
    pub fn upload(
        backend: &B,
        config: &ModelConfig,
        generator: &HostBatch<'_>,
        corrupted_ids: &[i64],
        mlm_labels: &[i64],
    ) -> Result<Self, Error> {
        let total = generator.batch * generator.len;
        for (what, len) in [
            ("corrupted_ids", corrupted_ids.len()),
            ("mlm_labels", mlm_labels.len()),
        ] {
            if len != total {
                return Err(Error::ShapeMismatch {
                    what,
                    expected: total,
                    found: len,
                });
            }
        }
        let host = HostBatch {
            input_ids: corrupted_ids,
            ..*generator
        };
        let batch = DeviceBatch::upload(backend, config, &host)?;
        let labels: Vec<f32> = mlm_labels
            .iter()
            .zip(corrupted_ids)
            .map(|(&label, &id)| f32::from(u8::from(label != -100 && label != id)))
            .collect();
        let tokens = generator.attention_mask.iter().filter(|&&m| m != 0).count();
        if tokens == 0 {
            return Err(Error::EmptyInput {
                what: "the batch's non-padding tokens",
            });
        }
        Ok(DiscriminatorBatch {
            batch,
            labels: backend.upload(&labels)?,
            tokens,
        })
    }
}

/// One batch of RTD pretraining with given replacements (the reference fixtures' form).
pub struct PairBatch<B: Backend> {
    /// The generator's half.
    pub generator: GeneratorBatch<B>,
    /// The discriminator's half.
    pub discriminator: DiscriminatorBatch<B>,
}

impl<B: Backend> PairBatch<B> {
    /// Validates and uploads a batch whose replacements are already known.
    pub fn upload(
        backend: &B,
        pair: &RtdPair,
        generator: &HostBatch<'_>,
        corrupted_ids: &[i64],
        mlm_labels: &[i64],
    ) -> Result<Self, Error> {
        Ok(PairBatch {
            generator: GeneratorBatch {
                batch: DeviceBatch::upload(backend, &pair.generator.config, generator)?,
                targets: MlmTargets::from_labels(
                    backend,
                    mlm_labels,
                    pair.generator.config.vocab_size,
                )?,
            },
            discriminator: DiscriminatorBatch::upload(
                backend,
                &pair.discriminator.config,
                generator,
                corrupted_ids,
                mlm_labels,
            )?,
        })
    }
}

fn incompatible(what: &'static str, expected: usize, found: usize) -> Error {
    Error::ShapeMismatch {
        what,
        expected,
        found,
    }
}

impl RtdPair {
    /// Builds the pair. Under ES and GDES the two configurations must agree on the vocabulary
    /// and the embedding width; absolute-position tables are shared when both models have one
    /// (the generator's may be its EMD table).
    pub fn new(
        generator: &ModelConfig,
        discriminator: &ModelConfig,
        sharing: Sharing,
        generator_head: MlmLayout,
        emd: bool,
    ) -> Result<Self, Error> {
        if emd && generator.embedding_size != generator.hidden_size {
            return Err(incompatible(
                "the EMD needs the generator's embedding_size to equal its hidden_size",
                generator.hidden_size,
                generator.embedding_size,
            ));
        }
        let mut layout = ParamLayout::new();
        let gen_heads = Heads {
            mlm: Some(generator_head),
            emd,
            rtd: false,
        };
        let generator_model = Deberta::new(
            &mut layout,
            "generator.",
            generator,
            gen_heads,
            SharedTables::default(),
        );
        let generator_params: Vec<ParamId> = layout.iter().map(|(id, _)| id).collect();
        let shares = sharing != Sharing::Nes;
        if shares {
            if generator.vocab_size != discriminator.vocab_size {
                return Err(incompatible(
                    "shared embeddings: vocab_size",
                    generator.vocab_size,
                    discriminator.vocab_size,
                ));
            }
            if generator.embedding_size != discriminator.embedding_size {
                return Err(incompatible(
                    "shared embeddings: embedding_size",
                    generator.embedding_size,
                    discriminator.embedding_size,
                ));
            }
        }
        let gen_word = match generator_model.embeddings.word {
            TableSource::Param(id) => id,
            TableSource::Disentangled { .. } => {
                return Err(Error::Missing {
                    what: "the generator's own embedding tables (it reads another model's)",
                });
            }
        };
        let gen_position = generator_model
            .embeddings
            .position
            .or(generator_model.emd.map(|e| e.position))
            .and_then(|t| match t {
                TableSource::Param(id) => Some(id),
                TableSource::Disentangled { .. } => None,
            });
        let share_position = shares
            && discriminator.position_biased_input
            && gen_position.is_some()
            && generator.max_position_embeddings == discriminator.max_position_embeddings;
        let (mut word_delta, mut position_delta) = (None, None);
        let e = discriminator.embedding_size;
        let mut shared = SharedTables::default();
        match sharing {
            Sharing::Nes => {}
            Sharing::Es => {
                shared.word = Some(TableSource::Param(gen_word));
                if share_position {
                    shared.position = gen_position.map(TableSource::Param);
                }
            }
            Sharing::Gdes => {
                let delta = layout.add(
                    "E_delta".into(),
                    &[discriminator.vocab_size, e],
                    Init::Zeros,
                );
                word_delta = Some(delta);
                shared.word = Some(TableSource::Disentangled {
                    frozen: FrozenParam::new(gen_word),
                    delta,
                });
                if let (true, Some(position)) = (share_position, gen_position) {
                    let delta = layout.add(
                        "E_delta_position".into(),
                        &[discriminator.max_position_embeddings, e],
                        Init::Zeros,
                    );
                    position_delta = Some(delta);
                    shared.position = Some(TableSource::Disentangled {
                        frozen: FrozenParam::new(position),
                        delta,
                    });
                }
            }
        }
        let disc_heads = Heads {
            mlm: None,
            emd: false,
            rtd: true,
        };
        let disc = Deberta::new(
            &mut layout,
            "discriminator.",
            discriminator,
            disc_heads,
            shared,
        );
        // Everything after the generator's parameters: the E_delta offsets, then the
        // discriminator's own.
        let discriminator_params: Vec<ParamId> = layout
            .iter()
            .skip(generator_params.len())
            .map(|(id, _)| id)
            .collect();

        Ok(RtdPair {
            generator: generator_model,
            discriminator: disc,
            sharing,
            layout,
            word_delta,
            position_delta,
            generator_params,
            discriminator_params,
        })
    }

    /// The parameters the generator's optimizer updates (everything `generator.…`, including
    /// `E_G`, which ES also trains with the RTD loss under the joint schedule).
    pub fn generator_params(&self) -> &[ParamId] {
        &self.generator_params
    }

    /// The parameters the discriminator's optimizer updates (`discriminator.…` and the
    /// `E_delta` offsets; never a generator table).
    pub fn discriminator_params(&self) -> &[ParamId] {
        &self.discriminator_params
    }

    /// Generator MLM step: adds `scale·∂L_MLM/∂θ` and returns `L_MLM`; samples replacements
    /// when given a sampler.
    pub fn generator_step<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        batch: &GeneratorBatch<B>,
        dropout: Option<&Dropout>,
        scale: f32,
        workspace: &mut Workspace<B>,
        sampler: Option<Sampler<'_, B>>,
    ) -> Result<f32, Error> {
        mlm_step(
            &self.generator,
            ctx,
            batch,
            dropout,
            scale,
            workspace,
            sampler,
        )
    }

    /// Discriminator RTD step: adds `λ·∂L_RTD/∂θ` and returns `L_RTD`; with `logits` the
    /// per-token RTD logits are copied out (`[B·S]`).
    pub fn discriminator_step<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        batch: &DiscriminatorBatch<B>,
        rtd_weight: f32,
        dropout: Option<&Dropout>,
        workspace: &mut Workspace<B>,
        logits: Option<&mut [f32]>,
    ) -> Result<f32, Error> {
        let (backend, params) = (ctx.backend, ctx.params);
        let model = &self.discriminator;
        let device = &batch.batch;
        let options = ForwardOptions::<B> {
            dropout,
            mlm_rows: MlmRows::All,
            attention_probs: AttentionProbs::Train,
        };
        let relative = model.relative_embeddings(backend, params, Some(device), dropout)?;
        let ModelBuffers {
            activations: acts,
            scratch,
        } = workspace.prepare(model, backend, device, None, dropout.is_some())?;
        model.forward(backend, params, relative.as_ref(), device, &options, acts)?;
        let (rtd_acts, rtd_scratch) =
            acts.rtd
                .as_ref()
                .zip(scratch.rtd.as_mut())
                .ok_or(Error::Missing {
                    what: "RTD head buffers",
                })?;
        let tokens = batch.tokens as f32;
        backend.bce_with_logits(
            &rtd_acts.logits,
            &batch.labels,
            &device.mask,
            &mut rtd_scratch.losses,
            &mut rtd_scratch.dlogits,
            rtd_weight / tokens,
        )?;
        let mut total = backend.zeros(1)?;
        backend.sum(&rtd_scratch.losses, &mut total, 0, 1.0 / tokens)?;
        if let Some(out) = logits {
            backend.download(&rtd_acts.logits, out)?;
        }
        model.backward(ctx, relative.as_ref(), device, &options, acts, scratch)?;
        let mut loss = [0.0f32];
        backend.download(&total, &mut loss)?;
        Ok(loss[0])
    }

    /// The gradient of `L_MLM + λ·L_RTD` at the current weights in one joint backward (both
    /// steps, no update in between): the semantics of the reference fixtures.
    pub fn joint_gradient<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        batch: &PairBatch<B>,
        rtd_weight: f32,
        dropout: Option<(&Dropout, &Dropout)>,
        logits: Option<&mut [f32]>,
    ) -> Result<Losses, Error> {
        let mut workspace = Workspace::new();
        let mlm = self.generator_step(
            ctx,
            &batch.generator,
            dropout.map(|d| d.0),
            1.0,
            &mut workspace,
            None,
        )?;
        let mut workspace = Workspace::new();
        let rtd = self.discriminator_step(
            ctx,
            &batch.discriminator,
            rtd_weight,
            dropout.map(|d| d.1),
            &mut workspace,
            logits,
        )?;
        Ok(Losses {
            mlm,
            rtd,
            total: mlm + rtd_weight * rtd,
        })
    }

    /// The discriminator's effective embedding tables: `(word, position)` with the GDES sum
    /// `E_G + E_Δ` materialised — what an exported discriminator stores.
    pub fn discriminator_tables<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
    ) -> Result<(B::Tensor, Option<B::Tensor>), Error> {
        let materialise = |source: TableSource, rows_x_dim: usize| -> Result<B::Tensor, Error> {
            let mut out = backend.zeros(rows_x_dim)?;
            match source {
                TableSource::Param(id) => {
                    backend.copy(params.get(id), 0, &mut out, 0, rows_x_dim)?
                }
                TableSource::Disentangled { frozen, delta } => {
                    backend.copy(frozen.read(params), 0, &mut out, 0, rows_x_dim)?;
                    backend.add_assign(&mut out, params.get(delta))?;
                }
            }
            Ok(out)
        };
        let cfg = &self.discriminator.config;
        let e = cfg.embedding_size;
        let word = materialise(self.discriminator.embeddings.word, cfg.vocab_size * e)?;
        let position = match self.discriminator.embeddings.position {
            Some(source) => Some(materialise(source, cfg.max_position_embeddings * e)?),
            None => None,
        };
        Ok((word, position))
    }
}
