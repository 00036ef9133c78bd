//! One optimisation step of the pair under the two schedules of SPEC §6.3: decoupled (the
//! generator's update, then the discriminator's with `E_D` rebuilt from the updated `E_G`; the
//! default) and joint (`L_MLM + λ·L_RTD`, one optimizer).

use alloc::vec::Vec;

use super::optim::{Optimizer, OptimizerConfig};
use super::pair::{Losses, PairBatch, RtdPair};
use crate::Error;
use crate::backend::Backend;
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

/// The pair, its weights, gradients and optimizers.
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
}

/// Dropout of the two models in one step (`None`: evaluation mode).
pub type PairDropout = Option<(Dropout, Dropout)>;

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
        })
    }

    fn zero(&mut self, backend: &B, ids: &[ParamId]) -> Result<(), Error> {
        for id in ids {
            backend.fill(self.grads.get_mut(*id), 0.0)?;
        }
        Ok(())
    }

    /// One step at learning rate `lr`; returns the losses (computed before the updates).
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
        let generator_params = self.pair.generator_params().to_vec();
        let discriminator_params = self.pair.discriminator_params().to_vec();
        let (mlm, rtd) = match self.schedule {
            Schedule::Decoupled => {
                self.zero(backend, &generator_params)?;
                let mlm = self.pair.generator_step(
                    backend,
                    &self.params,
                    &mut self.grads,
                    batch,
                    gen_dropout,
                )?;
                self.optimizers[0].update(backend, &mut self.params, &self.grads, lr)?;
                self.zero(backend, &discriminator_params)?;
                let rtd = self.pair.discriminator_step(
                    backend,
                    &self.params,
                    &mut self.grads,
                    batch,
                    self.rtd_weight,
                    disc_dropout,
                    None,
                )?;
                self.optimizers[1].update(backend, &mut self.params, &self.grads, lr)?;
                (mlm, rtd)
            }
            Schedule::Joint => {
                self.zero(backend, &generator_params)?;
                self.zero(backend, &discriminator_params)?;
                let mlm = self.pair.generator_step(
                    backend,
                    &self.params,
                    &mut self.grads,
                    batch,
                    gen_dropout,
                )?;
                let rtd = self.pair.discriminator_step(
                    backend,
                    &self.params,
                    &mut self.grads,
                    batch,
                    self.rtd_weight,
                    disc_dropout,
                    None,
                )?;
                self.optimizers[0].update(backend, &mut self.params, &self.grads, lr)?;
                (mlm, rtd)
            }
        };
        Ok(Losses {
            mlm,
            rtd,
            total: mlm + self.rtd_weight * rtd,
        })
    }
}
