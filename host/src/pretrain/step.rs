//! One training step of `deberta pretrain`: this process's micro-batches through the two
//! phases of the trainer, and the step's losses and statistics combined over the processes of
//! a data-parallel run.
//!
//! A step of `--batch-size B` over `P` processes with `--grad-accum A` has `P·A` micro-batches
//! of `B/(P·A)` rows; process `p` trains micro-batches `p·A … p·A + A − 1`. Everything random
//! is keyed by the global micro-batch index (sampling, dropout) or the global row (masking),
//! never by the process, and losses are summed in micro-batch order: `P` processes give the
//! rows and weights of one process with `--grad-accum P·A` (bit for bit when `A = 1`; see
//! [`deberta_core::train::Trainer`] for the gradient sum).

use deberta_core::Backend;
use deberta_core::model::{Dropout, HostBatch};
use deberta_core::random::RandomStream;
use deberta_core::train::{
    DiscriminatorBatch, GeneratorBatch, MicroBatch, MlmTargets, Sampler, Trainer,
};

use super::options::PretrainOptions;
use super::{SAMPLING_STREAM, model_error};
use crate::data::{Batch, MaskedBatch};
use crate::distributed::World;
use crate::error::{Error, Result};

/// What one optimizer step trains on: this process's rows of the step's batch.
pub(super) struct StepInput<'a> {
    /// The step, from 1.
    pub step: u64,
    /// Learning rates `(generator, discriminator)`.
    pub rates: (f32, f32),
    /// This process's rows.
    pub batch: &'a Batch,
    /// Those rows, masked.
    pub masked: &'a MaskedBatch,
    /// Whether the step is logged (statistics gathered).
    pub logging: bool,
}

/// Step-level statistics, over every process, gathered on logging steps.
#[derive(Default)]
pub(super) struct StepStats {
    /// Masked tokens the generator predicted right.
    pub mlm_correct: u64,
    /// Masked tokens.
    pub mlm_total: u64,
    /// Masked tokens whose sample differs from the original.
    pub replaced: u64,
    /// `(RTD logit, replaced)` of every real token, in micro-batch order.
    pub rtd: Vec<(f32, bool)>,
}

impl StepStats {
    /// The statistics of every process, combined in rank (so micro-batch) order.
    fn combined(self, world: World) -> StepStats {
        if world.size() == 1 {
            return self;
        }
        let sums = world.sum_u64(&[self.mlm_correct, self.mlm_total, self.replaced]);
        let (logits, labels): (Vec<f32>, Vec<f32>) = self
            .rtd
            .iter()
            .map(|&(logit, replaced)| (logit, f32::from(u8::from(replaced))))
            .unzip();
        let logits = world.all_gather_varcount_f32(&logits);
        let labels = world.all_gather_varcount_f32(&labels);
        StepStats {
            mlm_correct: sums[0],
            mlm_total: sums[1],
            replaced: sums[2],
            rtd: logits
                .into_iter()
                .zip(labels.into_iter().map(|l| l != 0.0))
                .collect(),
        }
    }
}

/// Index of the most probable token of each row.
fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks_exact(vocab)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// The sum, in order from 0, of every process's per-micro-batch values: the step's loss.
fn sum_in_order(world: World, local: &[f32]) -> f32 {
    world
        .all_gather_f32(local)
        .into_iter()
        .fold(0.0f32, |sum, v| sum + v)
}

/// One optimizer step over this process's `--grad-accum` micro-batches; returns the step's
/// mean MLM and RTD losses (over every process) and, on logging steps, its statistics.
pub(super) fn train_step<B: Backend>(
    backend: &B,
    trainer: &mut Trainer<B>,
    options: &PretrainOptions,
    world: World,
    input: &StepInput<'_>,
) -> Result<(f32, f32, StepStats)> {
    let StepInput {
        step,
        rates: (lr, discriminator_lr),
        batch,
        masked,
        logging,
    } = *input;
    let count = options.grad_accum;
    let total = count * world.size();
    let rows = batch.batch / count;
    let len = batch.len;
    let gen_cfg = trainer.pair.generator.config;
    let disc_cfg = trainer.pair.discriminator.config;
    let micro = |j: usize| MicroBatch {
        index: j,
        count,
        total,
    };
    // The micro-batch's index in the step over every process: the key of its randoms.
    let global = |j: usize| world.rank() * count + j;
    let dropout = |model: u32| Dropout {
        hidden: options.dropout,
        attention: options.attention_dropout,
        seed: options.seed,
        step: step as u32,
        model,
    };
    let mut stats = StepStats::default();
    let mut discriminator_batches = Vec::with_capacity(count);
    let mut losses_mlm = Vec::with_capacity(count);
    for j in 0..count {
        let k = global(j);
        let span = j * rows * len..(j + 1) * rows * len;
        let host = HostBatch {
            input_ids: &masked.input_ids[span.clone()],
            attention_mask: &batch.attention_mask[span.clone()],
            token_type_ids: None,
            batch: rows,
            len,
        };
        let labels = &masked.labels[span.clone()];
        let generator = GeneratorBatch {
            batch: deberta_core::model::DeviceBatch::upload(backend, &gen_cfg, &host)
                .map_err(model_error("generator input"))?,
            targets: MlmTargets::from_labels(backend, labels, gen_cfg.vocab_size)
                .map_err(model_error("masked labels"))?,
        };
        let positions: Vec<usize> = (0..labels.len()).filter(|&p| labels[p] != -100).collect();
        let mut sampled = backend
            .upload_indices(&vec![0; positions.len()])
            .map_err(model_error("sample buffer"))?;
        let sampler = Sampler {
            stream: RandomStream {
                seed: options.seed,
                step: step as u32,
                stream: SAMPLING_STREAM + k as u32,
            },
            out: &mut sampled,
        };
        let loss = trainer
            .generator_phase(
                backend,
                &generator,
                lr,
                Some(&dropout(2 * k as u32)),
                Some(sampler),
                micro(j),
            )
            .map_err(model_error("generator step"))?;
        losses_mlm.push(loss / total as f32);
        let mut ids = vec![0u32; positions.len()];
        backend
            .download_indices(&sampled, &mut ids)
            .map_err(model_error("reading samples"))?;
        if logging {
            let logits = trainer
                .generator_logits()
                .ok_or_else(|| Error::Usage("generator logits missing".into()))?;
            let mut host_logits = vec![0.0f32; positions.len() * gen_cfg.vocab_size];
            backend
                .download(logits, &mut host_logits)
                .map_err(model_error("reading logits"))?;
            let predicted = argmax_rows(&host_logits, gen_cfg.vocab_size);
            for (&p, &guess) in positions.iter().zip(&predicted) {
                stats.mlm_correct += u64::from(i64::from(guess) == labels[p]);
            }
        }
        stats.mlm_total += positions.len() as u64;
        let mut corrupted = batch.input_ids[span.clone()].to_vec();
        for (&p, &id) in positions.iter().zip(&ids) {
            corrupted[p] = i64::from(id);
            stats.replaced += u64::from(i64::from(id) != labels[p]);
        }
        let host_disc = HostBatch {
            input_ids: &corrupted,
            ..host
        };
        discriminator_batches.push((
            DiscriminatorBatch::upload(backend, &disc_cfg, &host_disc, &corrupted, labels)
                .map_err(model_error("discriminator input"))?,
            corrupted,
            span,
        ));
    }
    let mut losses_rtd = Vec::with_capacity(count);
    for (j, (discriminator, corrupted, span)) in discriminator_batches.iter().enumerate() {
        let mut logits = vec![0.0f32; corrupted.len()];
        let loss = trainer
            .discriminator_phase(
                backend,
                discriminator,
                discriminator_lr,
                Some(&dropout(2 * global(j) as u32 + 1)),
                logging.then_some(logits.as_mut_slice()),
                micro(j),
            )
            .map_err(model_error("discriminator step"))?;
        losses_rtd.push(loss / total as f32);
        if logging {
            let labels = &masked.labels[span.clone()];
            let mask = &batch.attention_mask[span.clone()];
            for p in 0..corrupted.len() {
                if mask[p] != 0 {
                    stats
                        .rtd
                        .push((logits[p], labels[p] != -100 && labels[p] != corrupted[p]));
                }
            }
        }
    }
    let stats = if logging {
        stats.combined(world)
    } else {
        stats
    };
    Ok((
        sum_in_order(world, &losses_mlm),
        sum_in_order(world, &losses_rtd),
        stats,
    ))
}
