//! The masked-language-model objective of one model: mean cross-entropy over the labelled
//! positions, its gradient, and (for an RTD generator) sampling replacements from the same
//! training-mode logits.

use alloc::vec::Vec;

use super::workspace::{ModelBuffers, Workspace};
use crate::Error;
use crate::backend::Backend;
use crate::model::BackwardContext;
use crate::model::dropout::Dropout;
use crate::model::{AttentionProbs, Deberta, DeviceBatch, ForwardOptions, MlmRows};
use crate::random::RandomStream;

/// The labelled positions of a batch on the device.
pub struct MlmTargets<B: Backend> {
    /// Flat positions `b·len + i` of the labelled tokens.
    pub positions: B::Indices,
    /// The label (original token id) at each position.
    pub targets: B::Indices,
    /// Number of labelled positions.
    pub count: usize,
}

impl<B: Backend> MlmTargets<B> {
    /// From Hugging Face labels (`−100` = not labelled), validated against the vocabulary.
    pub fn from_labels(backend: &B, labels: &[i64], vocab: usize) -> Result<Self, Error> {
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        for (p, &label) in labels.iter().enumerate() {
            if label == -100 {
                continue;
            }
            if label < 0 || label as u64 >= vocab as u64 {
                return Err(Error::TokenOutOfRange {
                    table: "the MLM vocabulary (label)",
                    position: p,
                    id: label as u64,
                    rows: vocab,
                });
            }
            positions.push(p as u32);
            targets.push(label as u32);
        }
        if positions.is_empty() {
            return Err(Error::EmptyInput {
                what: "the set of labelled (masked) positions",
            });
        }
        Ok(MlmTargets {
            count: positions.len(),
            positions: backend.upload_indices(&positions)?,
            targets: backend.upload_indices(&targets)?,
        })
    }
}

/// The input of an MLM step (the generator's half of an RTD batch): masked ids and the masked
/// positions with their labels.
pub struct GeneratorBatch<B: Backend> {
    /// The generator's input (masked ids).
    pub batch: DeviceBatch<B>,
    /// The masked positions and their original ids.
    pub targets: MlmTargets<B>,
}

/// Where sampled replacements go: one token per labelled position, drawn from the generator's
/// training-mode logits with `stream` (SPEC §6.2).
pub struct Sampler<'a, B: Backend> {
    /// The counter-based stream of this step's sampling.
    pub stream: RandomStream,
    /// Output, one id per labelled position (`count` entries).
    pub out: &'a mut B::Indices,
}

/// One forward and backward of the MLM objective: adds `scale · ∂(mean CE)/∂θ` to
/// `ctx.grads`, samples replacements when asked, and returns the mean cross-entropy (read
/// back).
pub fn mlm_step<B: Backend>(
    model: &Deberta,
    ctx: &mut BackwardContext<'_, B>,
    batch: &GeneratorBatch<B>,
    dropout: Option<&Dropout>,
    scale: f32,
    workspace: &mut Workspace<B>,
    sampler: Option<Sampler<'_, B>>,
) -> Result<f32, Error> {
    let (backend, params) = (ctx.backend, ctx.params);
    let GeneratorBatch { batch, targets } = batch;
    let head = model.mlm_head.as_ref().ok_or(Error::Missing {
        what: "an MLM head on the model",
    })?;
    let options = ForwardOptions {
        dropout,
        mlm_rows: MlmRows::Selected {
            positions: &targets.positions,
            count: targets.count,
        },
        attention_probs: AttentionProbs::Train,
    };
    let relative = model.relative_embeddings(backend, params, Some(batch), dropout)?;
    let ModelBuffers {
        activations: acts,
        scratch,
    } = workspace.prepare(
        model,
        backend,
        batch,
        Some(targets.count),
        dropout.is_some(),
    )?;
    model.forward(backend, params, relative.as_ref(), batch, &options, acts)?;
    let (mlm_acts, mlm_scratch) =
        acts.mlm
            .as_ref()
            .zip(scratch.mlm.as_mut())
            .ok_or(Error::Missing {
                what: "MLM head buffers",
            })?;
    if let Some(sampler) = sampler {
        backend.sample_categorical(&mlm_acts.logits, head.vocab, sampler.stream, sampler.out)?;
    }
    let count = targets.count as f32;
    backend.cross_entropy(
        &mlm_acts.logits,
        &targets.targets,
        &mut mlm_scratch.losses,
        &mut mlm_scratch.dlogits,
        head.vocab,
        scale / count,
    )?;
    let mut total = backend.zeros(1)?;
    backend.sum(&mlm_scratch.losses, &mut total, 0, 1.0 / count)?;
    model.backward(ctx, relative.as_ref(), batch, &options, acts, scratch)?;
    let mut loss = [0.0f32];
    backend.download(&total, &mut loss)?;
    Ok(loss[0])
}
