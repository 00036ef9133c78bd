//! One optimisation step of the pair under the two schedules of SPEC §6.3: decoupled (the
//! generator's update, then the discriminator's with `E_D` rebuilt from the updated `E_G`; the
//! default) and joint (`L_MLM + λ·L_RTD`, one optimizer).
//!
//! A step has two phases so that the generator's samples can become the discriminator's
//! input in between: [`Trainer::generator_phase`] (forward, sampling, backward, and in the
//! decoupled schedule the generator's update) and [`Trainer::discriminator_phase`].
//!
//! A step of several micro-batches (gradient accumulation, data parallelism, or both) sums
//! whole micro-batch gradients: each micro-batch's gradient is computed into zeroed buffers and
//! added, in micro-batch order, to an accumulator per phase; a [`GradientReducer`] then sums
//! the accumulators of every process in process order, and the joint schedule adds the two
//! phases' sums last. The additions are the same whether the micro-batches ran in one process
//! or one per process, so `N` processes of one micro-batch each give the bits of one process
//! accumulating `N`.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::mlm::GeneratorBatch;
use super::mlm::Sampler;
use super::optim::{Optimizer, OptimizerConfig};
use super::pair::{DiscriminatorBatch, Losses, PairBatch, RtdPair};
use super::workspace::Workspace;
use crate::Error;
use crate::backend::Backend;
use crate::model::BackwardContext;
use crate::model::dropout::Dropout;
use crate::model::{ParamId, ParamStore};

/// The update schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Generator step, then discriminator step, each with its own optimizer and clipping.
    Decoupled,
    /// One loss `L_MLM + λ·L_RTD`, one optimizer over every parameter.
    Joint,
}

/// The pair, its weights, gradients, optimizers and buffers.
pub struct Trainer<B: Backend> {
    /// The models.
    pub pair: RtdPair,
    /// Current weights.
    pub params: ParamStore<B::Tensor>,
    /// Gradient buffers.
    pub grads: ParamStore<B::Tensor>,
    /// The schedule.
    pub schedule: Schedule,
    /// λ.
    pub rtd_weight: f32,
    /// Decoupled: `[generator, discriminator]`; joint: one optimizer over everything.
    pub optimizers: Vec<Optimizer<B::Tensor>>,
    generator_workspace: Workspace<B>,
    discriminator_workspace: Workspace<B>,
    /// The learning rate of the last generator phase: the generator's rate in the joint
    /// update.
    generator_lr: f32,
    /// Per-phase sums of the micro-batch gradients (`[generator phase, discriminator
    /// phase]`), allocated by the first step of more than one micro-batch.
    accumulated: Option<[ParamStore<B::Tensor>; 2]>,
    /// Sums the gradients over the processes of a data-parallel run (`None`: one process).
    reducer: Option<Box<dyn GradientReducer<B>>>,
}

/// Sums gradients over the processes of a data-parallel run.
pub trait GradientReducer<B: Backend> {
    /// Replaces the tensors of `ids` in `grads` (this process's sum over its micro-batches)
    /// with their sum over every process: starting from zeros, each process's tensor added in
    /// process order with [`Backend::add_assign`], so that every process gets the same bits.
    fn all_reduce(
        &mut self,
        backend: &B,
        grads: &mut ParamStore<B::Tensor>,
        ids: &[ParamId],
    ) -> Result<(), Error>;
}

/// Dropout of the two models in one step (`None`: evaluation mode).
pub type PairDropout = Option<(Dropout, Dropout)>;

/// Which micro-batch of a step a phase processes: each loss is scaled by `1/total`, the
/// gradients of the process's micro-batches are summed, and the update follows its last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicroBatch {
    /// Position among this process's micro-batches of the step, from 0.
    pub index: usize,
    /// This process's micro-batches per step (at least 1).
    pub count: usize,
    /// Micro-batches per step over every process (`count` × processes).
    pub total: usize,
}

impl MicroBatch {
    /// A step without accumulation.
    pub const WHOLE: MicroBatch = MicroBatch {
        index: 0,
        count: 1,
        total: 1,
    };

    /// Micro-batch `index` of `count`, in one process.
    pub fn of(index: usize, count: usize) -> MicroBatch {
        MicroBatch {
            index,
            count,
            total: count,
        }
    }

    fn first(self) -> bool {
        self.index == 0
    }

    fn last(self) -> bool {
        self.index + 1 >= self.count
    }

    fn scale(self) -> f32 {
        1.0 / self.total.max(1) as f32
    }

    /// Whether the step sums several micro-batch gradients (in this process or over many).
    fn summed(self) -> bool {
        self.total > 1
    }
}

impl<B: Backend> Trainer<B> {
    /// A trainer with fresh optimizer state.
    pub fn new(
        backend: &B,
        pair: RtdPair,
        params: ParamStore<B::Tensor>,
        schedule: Schedule,
        rtd_weight: f32,
        config: OptimizerConfig,
    ) -> Result<Self, Error> {
        let grads = pair.layout.zeros(backend)?;
        let optimizers = match schedule {
            Schedule::Decoupled => alloc::vec![
                Optimizer::new(backend, &pair.layout, pair.generator_params(), config)?,
                Optimizer::new(backend, &pair.layout, pair.discriminator_params(), config)?,
            ],
            Schedule::Joint => {
                let all: Vec<ParamId> = pair.layout.iter().map(|(id, _)| id).collect();
                alloc::vec![Optimizer::new(backend, &pair.layout, &all, config)?]
            }
        };
        Ok(Trainer {
            pair,
            params,
            grads,
            schedule,
            rtd_weight,
            optimizers,
            generator_workspace: Workspace::new(),
            discriminator_workspace: Workspace::new(),
            generator_lr: 0.0,
            accumulated: None,
            reducer: None,
        })
    }

    /// Makes this trainer one process of a data-parallel run: `reducer` sums the gradients
    /// over the processes before every update (with [`MicroBatch::total`] counting every
    /// process's micro-batches).
    pub fn set_reducer(&mut self, reducer: Box<dyn GradientReducer<B>>) {
        self.reducer = Some(reducer);
    }

    fn zero(&mut self, backend: &B, ids: &[ParamId]) -> Result<(), Error> {
        for id in ids {
            backend.fill(self.grads.get_mut(*id), 0.0)?;
        }
        Ok(())
    }

    /// The parameters whose gradients the discriminator phase produces.
    fn discriminator_phase_params(&self) -> Vec<ParamId> {
        match self.schedule {
            Schedule::Decoupled => self.pair.discriminator_params().to_vec(),
            Schedule::Joint => self.pair.layout.iter().map(|(id, _)| id).collect(),
        }
    }

    /// Adds the micro-batch gradients of `ids` to the accumulator of `phase` (0: generator,
    /// 1: discriminator; zeroed at the process's first micro-batch). After the last one, sums
    /// the accumulator over the processes and moves it into the gradient buffers — except the
    /// generator phase's of the joint schedule, which the discriminator phase then adds to its
    /// own (the joint gradient).
    fn accumulate(
        &mut self,
        backend: &B,
        phase: usize,
        ids: &[ParamId],
        micro: MicroBatch,
    ) -> Result<(), Error> {
        let accumulated = match self.accumulated.take() {
            Some(stores) => self.accumulated.insert(stores),
            None => self.accumulated.insert([
                self.pair.layout.zeros(backend)?,
                self.pair.layout.zeros(backend)?,
            ]),
        };
        for &id in ids {
            if micro.first() {
                backend.fill(accumulated[phase].get_mut(id), 0.0)?;
            }
            backend.add_assign(accumulated[phase].get_mut(id), self.grads.get(id))?;
        }
        if !micro.last() {
            return Ok(());
        }
        if let Some(reducer) = self.reducer.as_mut() {
            reducer.all_reduce(backend, &mut accumulated[phase], ids)?;
        }
        let joint = self.schedule == Schedule::Joint;
        if phase == 0 && joint {
            return Ok(());
        }
        for &id in ids {
            core::mem::swap(self.grads.get_mut(id), accumulated[phase].get_mut(id));
        }
        if joint {
            for &id in self.pair.generator_params() {
                backend.add_assign(self.grads.get_mut(id), accumulated[0].get(id))?;
            }
        }
        Ok(())
    }

    /// The generator's half of a (micro-)step: `L_MLM` and its gradient (sampling
    /// replacements into `sampler` from the same logits); under the decoupled schedule the
    /// generator is updated with learning rate `lr` after the last micro-batch. Returns `L_MLM`.
    pub fn generator_phase(
        &mut self,
        backend: &B,
        batch: &GeneratorBatch<B>,
        lr: f32,
        dropout: Option<&Dropout>,
        sampler: Option<Sampler<'_, B>>,
        micro: MicroBatch,
    ) -> Result<f32, Error> {
        let generator_params = self.pair.generator_params().to_vec();
        if micro.first() || micro.summed() {
            self.zero(backend, &generator_params)?;
            if self.schedule == Schedule::Joint && !micro.summed() {
                let discriminator_params = self.pair.discriminator_params().to_vec();
                self.zero(backend, &discriminator_params)?;
            }
        }
        let mut ctx = BackwardContext::new(backend, &self.params, &mut self.grads);
        let loss = self.pair.generator_step(
            &mut ctx,
            batch,
            dropout,
            micro.scale(),
            &mut self.generator_workspace,
            sampler,
        )?;
        if micro.summed() {
            self.accumulate(backend, 0, &generator_params, micro)?;
        }
        if self.schedule == Schedule::Decoupled && micro.last() {
            self.optimizers[0].update(backend, &mut self.params, &self.grads, lr)?;
        }
        self.generator_lr = lr;
        Ok(loss)
    }

    /// The generator's MLM logits of the last generator phase, `[masked rows, vocab]`.
    pub fn generator_logits(&self) -> Option<&B::Tensor> {
        self.generator_workspace.logits()
    }

    /// The discriminator's half of a (micro-)step (reading the generator's tables as they
    /// are now, so after the generator's update under the decoupled schedule); after the last
    /// micro-batch its update at learning rate `lr` — or the joint update, in which the
    /// generator's parameters take the rate of the last generator phase and the rest `lr`.
    /// Returns `L_RTD`; `logits` receives the RTD logits when given.
    pub fn discriminator_phase(
        &mut self,
        backend: &B,
        batch: &DiscriminatorBatch<B>,
        lr: f32,
        dropout: Option<&Dropout>,
        logits: Option<&mut [f32]>,
        micro: MicroBatch,
    ) -> Result<f32, Error> {
        let phase_params = self.discriminator_phase_params();
        if micro.summed() || (self.schedule == Schedule::Decoupled && micro.first()) {
            self.zero(backend, &phase_params)?;
        }
        let mut ctx = BackwardContext::new(backend, &self.params, &mut self.grads);
        let loss = self.pair.discriminator_step(
            &mut ctx,
            batch,
            self.rtd_weight * micro.scale(),
            dropout,
            &mut self.discriminator_workspace,
            logits,
        )?;
        if micro.summed() {
            self.accumulate(backend, 1, &phase_params, micro)?;
        }
        if micro.last() {
            match self.schedule {
                Schedule::Decoupled => {
                    self.optimizers[1].update(backend, &mut self.params, &self.grads, lr)?
                }
                Schedule::Joint => {
                    let generator = self.pair.generator_params();
                    let generator_lr = self.generator_lr;
                    self.optimizers[0].update_each(
                        backend,
                        &mut self.params,
                        &self.grads,
                        |id| {
                            if generator.contains(&id) {
                                generator_lr
                            } else {
                                lr
                            }
                        },
                    )?
                }
            }
        }
        Ok(loss)
    }

    /// A whole step on a batch whose replacements are given; returns the losses (computed
    /// before the updates).
    pub fn step(
        &mut self,
        backend: &B,
        batch: &PairBatch<B>,
        lr: f32,
        dropout: PairDropout,
    ) -> Result<Losses, Error> {
        let (gen_dropout, disc_dropout) = match &dropout {
            Some((g, d)) => (Some(g), Some(d)),
            None => (None, None),
        };
        let mlm = self.generator_phase(
            backend,
            &batch.generator,
            lr,
            gen_dropout,
            None,
            MicroBatch::WHOLE,
        )?;
        let rtd = self.discriminator_phase(
            backend,
            &batch.discriminator,
            lr,
            disc_dropout,
            None,
            MicroBatch::WHOLE,
        )?;
        Ok(Losses {
            mlm,
            rtd,
            total: mlm + self.rtd_weight * rtd,
        })
    }
}
