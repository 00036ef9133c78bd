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
//! phases' sums last. In the last micro-batch each encoder layer's accumulated gradients are
//! handed to the reducer as soon as the backward pass is done with them (the top layer first),
//! so that it can exchange them while the rest of the pass runs; the sums themselves do not
//! depend on when a gradient was handed over. The additions are the same whether the
//! micro-batches ran in one process or one per process, so `N` processes of one micro-batch
//! each give the bits of one process accumulating `N`.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::loss_scale::LossScaler;
use super::mlm::GeneratorBatch;
use super::mlm::Sampler;
use super::optim::{Optimizer, OptimizerConfig};
use super::pair::{DiscriminatorBatch, Losses, PairBatch, RtdPair};
use super::workspace::Workspace;
use crate::backend::Backend;
use crate::model::dropout::Dropout;
use crate::model::{BackwardContext, GradientsReady};
use crate::model::{ParamId, ParamStore};
use crate::{Error, Precision};

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
    /// Gradient buffers. Where the backend [recycles](Backend::recycles_tensor_memory) memory,
    /// a phase allocates its parameters' gradients when it zeroes them and empties them after
    /// its update, so between steps they hold no elements.
    pub grads: ParamStore<B::Tensor>,
    /// The schedule.
    pub schedule: Schedule,
    /// λ.
    pub rtd_weight: f32,
    /// Decoupled: `[generator, discriminator]`; joint: one optimizer over everything.
    pub optimizers: Vec<Optimizer<B::Tensor>>,
    /// The buffers of the two models' passes: `[generator, discriminator]`.
    workspaces: [Workspace<B>; 2],
    /// The learning rate of the last generator phase: the generator's rate in the joint
    /// update.
    generator_lr: f32,
    /// Per-phase sums of the micro-batch gradients (`[generator phase, discriminator
    /// phase]`), allocated by the first step of more than one micro-batch.
    accumulated: Option<[ParamStore<B::Tensor>; 2]>,
    /// Sums the gradients over the processes of a data-parallel run (`None`: one process).
    reducer: Option<Box<dyn GradientReducer<B>>>,
    /// The training precision ([`Precision::TRAINING`]).
    precision: Precision,
    /// The format of its `Linear` products on this backend.
    products: Precision,
    /// One loss scaler per optimizer under [`Precision::Mixed`], none otherwise.
    scalers: Vec<LossScaler>,
}

/// Sums gradients over the processes of a data-parallel run.
///
/// Within a phase, [`GradientsReady::ready`] is called for groups of parameters as the
/// backward pass finishes them — the tensors of `ids` in `grads` (this process's sums over its
/// micro-batches) are final for this step, so the reducer may start exchanging them; it must
/// not keep references, and `grads` is not changed at `ids` until [`GradientReducer::finish`]
/// — then [`GradientReducer::finish`] once; every process makes the same calls in the same
/// order.
pub trait GradientReducer<B: Backend>: GradientsReady<B> {
    /// Replaces the tensors of `ids` (every parameter of the phase; those not reported ready
    /// yet are ready now) with their sum over every process: starting from zeros, each
    /// process's tensor added in process order with [`Backend::add_assign`], so that every
    /// process gets the same bits whatever groups the gradients were exchanged in.
    fn finish(
        &mut self,
        backend: &B,
        grads: &mut ParamStore<B::Tensor>,
        ids: &[ParamId],
    ) -> Result<(), Error>;
}

/// Hands the gradients of a phase's last micro-batch to the reducer as the backward pass
/// finishes them: each is added to its accumulator first — or, in the process's only
/// micro-batch on a backend whose addition is the host's ([`Backend::host_values`]), copied
/// into it: `+0.0 + g` and `g` differ only where `g` is `-0.0`, and the reducer's sum starts
/// from `+0.0`, which absorbs a `-0.0` either way, so the sum has the same bits for one pass
/// over the gradient instead of two. (A device that flushes subnormal results would turn
/// `+0.0 + g` into `+0.0` where `g` is subnormal, so it adds.)
struct Handover<'r, B: Backend> {
    reducer: &'r mut dyn GradientReducer<B>,
    accumulated: &'r mut ParamStore<B::Tensor>,
    /// The parameters of the phase.
    phase: &'r [ParamId],
    /// Whether the accumulators start from zero (the process's only micro-batch).
    first: bool,
    /// The parameters handed over so far.
    handed: Vec<ParamId>,
    /// The parameters of the current hand-over (a reused buffer).
    batch: Vec<ParamId>,
}

impl<B: Backend> GradientsReady<B> for Handover<'_, B> {
    fn ready(
        &mut self,
        backend: &B,
        grads: &ParamStore<B::Tensor>,
        ids: &[ParamId],
    ) -> Result<(), Error> {
        self.batch.clear();
        for &id in ids {
            if self.phase.contains(&id) && !self.handed.contains(&id) {
                let g = grads.get(id);
                if self.first && backend.host_values(g).is_some() {
                    backend.copy(g, 0, self.accumulated.get_mut(id), 0, backend.len(g))?;
                } else {
                    add_micro_batch(backend, self.accumulated, grads, id, self.first)?;
                }
                self.batch.push(id);
            }
        }
        self.handed.extend_from_slice(&self.batch);
        if self.batch.is_empty() {
            return Ok(());
        }
        self.reducer.ready(backend, self.accumulated, &self.batch)
    }
}

/// Adds a micro-batch's gradient of `id` to its accumulator (zeroed first when `first`).
fn add_micro_batch<B: Backend>(
    backend: &B,
    accumulated: &mut ParamStore<B::Tensor>,
    grads: &ParamStore<B::Tensor>,
    id: ParamId,
    first: bool,
) -> Result<(), Error> {
    let sum = accumulated.get_mut(id);
    if first {
        zero_or_allocate(backend, sum, backend.len(grads.get(id)))?;
    }
    backend.add_assign(sum, grads.get(id))
}

/// Zeroes `tensor`, or replaces it with `numel` zeros where an update released it (a
/// [recycling](Backend::recycles_tensor_memory) backend's gradients and their sums).
fn zero_or_allocate<B: Backend>(
    backend: &B,
    tensor: &mut B::Tensor,
    numel: usize,
) -> Result<(), Error> {
    match backend.len(tensor) == numel {
        true => backend.fill(tensor, 0.0),
        false => {
            *tensor = backend.zeros(numel)?;
            Ok(())
        }
    }
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
        // Where the backend recycles memory, each phase allocates its gradients when it zeroes
        // them and releases them after its update (see `Trainer::zero`).
        let grads = match backend.recycles_tensor_memory() {
            true => pair.layout.build(|_, _| backend.zeros(0))?,
            false => pair.layout.zeros(backend)?,
        };
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
            workspaces: [Workspace::new(), Workspace::new()],
            generator_lr: 0.0,
            accumulated: None,
            reducer: None,
            precision: Precision::F32,
            products: Precision::F32,
            scalers: Vec::new(),
        })
    }

    /// Makes this trainer one process of a data-parallel run: `reducer` sums the gradients
    /// over the processes before every update (with [`MicroBatch::total`] counting every
    /// process's micro-batches).
    pub fn set_reducer(&mut self, reducer: Box<dyn GradientReducer<B>>) {
        self.reducer = Some(reducer);
    }

    /// Trains at `precision` ([`Precision::TRAINING`]): [`Precision::F32`];
    /// [`Precision::Bf16Mixed`] (f32 master weights, optimizer state and gradients, the
    /// `Linear` products in bf16 with each weight's bf16 copy made again after its update); or
    /// [`Precision::Mixed`], the `Linear` products at `backend`'s
    /// [`Backend::mixed_products`] with dynamic loss scaling (fresh [`LossScaler`]s, one per
    /// optimizer; f16 products convert the f32 weights as the kernel loads them, so they need
    /// no copies).
    pub fn set_precision(&mut self, backend: &B, precision: Precision) -> Result<(), Error> {
        if !Precision::TRAINING.contains(&precision) {
            return Err(Error::Unsupported {
                what: "this precision in training (f32, mixed or bf16-mixed)",
            });
        }
        self.precision = precision;
        self.products = match precision {
            Precision::Mixed => backend.mixed_products(),
            other => other.products(),
        };
        self.params.unpack();
        // Formats with a packed layout multiply the copies `refresh_copies` makes (weights
        // without one, between an update and the next phase, stay f32 as before); the others
        // convert the f32 weights in the product.
        self.params.set_products(match self.packs() {
            true => Precision::F32,
            false => self.products,
        });
        self.set_loss_scaling(precision.scales_loss());
        Ok(())
    }

    /// Turns dynamic loss scaling on (fresh [`LossScaler`]s, one per optimizer) or off, at any
    /// product format: what [`Trainer::set_precision`] does for [`Precision::Mixed`] (on) and
    /// the others (off). With f32 products it changes no bit of a run whose scaled gradients
    /// stay finite (the scale is a power of two).
    pub fn set_loss_scaling(&mut self, on: bool) {
        self.scalers = match on {
            true => alloc::vec![LossScaler::new(); self.optimizers.len()],
            false => Vec::new(),
        };
    }

    /// The training precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The format of the `Linear` products on this backend ([`Precision::F32`] for
    /// [`Precision::Mixed`] on a backend without narrower products: f32 products, the loss
    /// scaler still on).
    pub fn products(&self) -> Precision {
        self.products
    }

    /// The loss scalers, one per optimizer (`[generator, discriminator]` under the decoupled
    /// schedule), under [`Precision::Mixed`]; empty otherwise.
    pub fn loss_scalers(&self) -> &[LossScaler] {
        &self.scalers
    }

    /// Replaces the loss scalers with saved ones (a resumed run): as many as
    /// [`Trainer::loss_scalers`] holds.
    pub fn restore_loss_scalers(&mut self, scalers: &[LossScaler]) -> Result<(), Error> {
        if scalers.len() != self.scalers.len() {
            return Err(Error::ShapeMismatch {
                what: "loss scalers (one per optimizer under mixed precision)",
                expected: self.scalers.len(),
                found: scalers.len(),
            });
        }
        self.scalers = scalers.to_vec();
        Ok(())
    }

    /// The loss scale of optimizer `i`'s gradients (1 without loss scaling).
    fn loss_scale(&self, i: usize) -> f32 {
        self.scalers.get(i).map_or(1.0, LossScaler::scale)
    }

    /// Updates with optimizer `i` (parameter `id` at rate `lr(id)`); under loss scaling, skips
    /// the update when its gradients overflowed, and tells the scaler.
    fn update(&mut self, backend: &B, i: usize, lr: impl Fn(ParamId) -> f32) -> Result<(), Error> {
        let optimizer = &mut self.optimizers[i];
        match self.scalers.get_mut(i) {
            None => optimizer.update_each(backend, &mut self.params, &self.grads, lr),
            Some(scaler) => {
                let applied = optimizer.update_scaled(
                    backend,
                    &mut self.params,
                    &self.grads,
                    lr,
                    scaler.scale(),
                )?;
                scaler.record(applied);
                Ok(())
            }
        }
    }

    /// Whether the products multiply packed copies of the weights (bf16 and int8 have a packed
    /// layout; f16 converts the f32 weights as the kernel loads them).
    fn packs(&self) -> bool {
        matches!(self.products, Precision::Bf16 | Precision::Int8)
    }

    /// Makes the reduced-precision copies the passes multiply: those of weights new or
    /// updated since their copy (nothing in f32).
    fn refresh_copies(&mut self, backend: &B) -> Result<(), Error> {
        if !self.packs() {
            return Ok(());
        }
        self.params
            .pack_missing(backend, &self.pair.layout, self.products)
    }

    /// Zeroes the gradients of `ids`, allocating those released since their last phase.
    fn zero(&mut self, backend: &B, ids: &[ParamId]) -> Result<(), Error> {
        for &id in ids {
            let numel = self.pair.layout.spec(id).numel();
            zero_or_allocate(backend, self.grads.get_mut(id), numel)?;
        }
        Ok(())
    }

    /// After an update, where the backend recycles memory: gives the gradients of `ids` back,
    /// and their micro-batch sums (their phase zeroes them before it writes them again), so
    /// that their memory serves the other model's phase — the generator's gradients are dead
    /// while the discriminator trains, and the discriminator's while the generator does.
    fn release_gradients(&mut self, backend: &B, ids: &[ParamId]) -> Result<(), Error> {
        if !backend.recycles_tensor_memory() {
            return Ok(());
        }
        let sums = self.accumulated.iter_mut().flatten();
        for store in core::iter::once(&mut self.grads).chain(sums) {
            for &id in ids {
                let tensor = store.get_mut(id);
                if backend.len(tensor) > 0 {
                    *tensor = backend.zeros(0)?;
                }
            }
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

    /// Allocates the per-phase accumulators on the first step that sums micro-batches: each
    /// phase's for the parameters it trains (the others' entries are empty; all are, where the
    /// backend recycles memory, until a phase's first micro-batch adds to them).
    fn allocate_accumulators(&mut self, backend: &B) -> Result<(), Error> {
        if self.accumulated.is_none() {
            let layout = &self.pair.layout;
            let lazy = backend.recycles_tensor_memory();
            let for_phase = |ids: &[ParamId]| {
                layout.build(|id, spec| match ids.contains(&id) && !lazy {
                    true => backend.zeros(spec.numel()),
                    false => backend.zeros(0),
                })
            };
            let generator = for_phase(self.pair.generator_params())?;
            let discriminator = for_phase(&self.discriminator_phase_params())?;
            self.accumulated = Some([generator, discriminator]);
        }
        Ok(())
    }

    /// The backward pass of one phase (`run`, given the context), handing the gradients of
    /// `phase_params` over to the reducer as the pass finishes them when this is the last
    /// micro-batch of a data-parallel step; returns the pass's result and the parameters
    /// handed over (added to the accumulator of `phase` already).
    fn backward_phase<T>(
        &mut self,
        backend: &B,
        phase: usize,
        phase_params: &[ParamId],
        micro: MicroBatch,
        run: impl FnOnce(
            &RtdPair,
            &mut BackwardContext<'_, B>,
            &mut [Workspace<B>; 2],
        ) -> Result<T, Error>,
    ) -> Result<(T, Vec<ParamId>), Error> {
        if micro.summed() {
            self.allocate_accumulators(backend)?;
        }
        let Trainer {
            pair,
            params,
            grads,
            workspaces,
            accumulated,
            reducer,
            ..
        } = self;
        let mut handover = match (micro.last(), reducer.as_deref_mut(), accumulated.as_mut()) {
            (true, Some(reducer), Some(stores)) if micro.summed() => Some(Handover {
                reducer,
                accumulated: &mut stores[phase],
                phase: phase_params,
                first: micro.first(),
                handed: Vec::new(),
                batch: Vec::new(),
            }),
            _ => None,
        };
        let mut ctx = BackwardContext::new(backend, params, grads);
        if let Some(handover) = handover.as_mut() {
            ctx = ctx.with_ready(handover);
        }
        let result = run(pair, &mut ctx, workspaces)?;
        Ok((result, handover.map(|h| h.handed).unwrap_or_default()))
    }

    /// Adds the micro-batch gradients of `ids` to the accumulator of `phase` (0: generator,
    /// 1: discriminator; zeroed at the process's first micro-batch), except those `handed`
    /// over (added already). After the last one, sums the accumulator over the processes and
    /// moves it into the gradient buffers — except the generator phase's of the joint
    /// schedule, which the discriminator phase then adds to its own (the joint gradient).
    fn accumulate(
        &mut self,
        backend: &B,
        phase: usize,
        ids: &[ParamId],
        micro: MicroBatch,
        handed: &[ParamId],
    ) -> Result<(), Error> {
        self.allocate_accumulators(backend)?;
        let Some(accumulated) = self.accumulated.as_mut() else {
            return Err(Error::Missing {
                what: "the gradient accumulators",
            });
        };
        for &id in ids {
            if !handed.contains(&id) {
                add_micro_batch(
                    backend,
                    &mut accumulated[phase],
                    &self.grads,
                    id,
                    micro.first(),
                )?;
            }
        }
        if !micro.last() {
            return Ok(());
        }
        if let Some(reducer) = self.reducer.as_mut() {
            reducer.finish(backend, &mut accumulated[phase], ids)?;
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
        self.refresh_copies(backend)?;
        // The discriminator's activations are dead until its next phase, which prepares them
        // again: where the backend recycles memory, theirs serves the generator's.
        if backend.recycles_tensor_memory() {
            self.workspaces[1].release();
        }
        let generator_params = self.pair.generator_params().to_vec();
        if micro.first() || micro.summed() {
            self.zero(backend, &generator_params)?;
            if self.schedule == Schedule::Joint && !micro.summed() {
                let discriminator_params = self.pair.discriminator_params().to_vec();
                self.zero(backend, &discriminator_params)?;
            }
        }
        // Exact: the loss scale is a power of two.
        let scale = micro.scale() * self.loss_scale(0);
        let (loss, handed) =
            self.backward_phase(backend, 0, &generator_params, micro, |pair, ctx, ws| {
                pair.generator_step(ctx, batch, dropout, scale, &mut ws[0], sampler)
            })?;
        if micro.summed() {
            self.accumulate(backend, 0, &generator_params, micro, &handed)?;
        }
        if self.schedule == Schedule::Decoupled && micro.last() {
            self.update(backend, 0, |_| lr)?;
            self.release_gradients(backend, &generator_params)?;
        }
        self.generator_lr = lr;
        Ok(loss)
    }

    /// The generator's MLM logits of the last generator phase, `[masked rows, vocab]`, until
    /// the next discriminator phase (which releases the generator's activations on a backend
    /// that [recycles](Backend::recycles_tensor_memory) memory).
    pub fn generator_logits(&self) -> Option<&B::Tensor> {
        self.workspaces[0].logits()
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
        self.refresh_copies(backend)?;
        // Likewise the generator's activations (its logits were read after its phase).
        if backend.recycles_tensor_memory() {
            self.workspaces[0].release();
        }
        let phase_params = self.discriminator_phase_params();
        if micro.summed() || (self.schedule == Schedule::Decoupled && micro.first()) {
            self.zero(backend, &phase_params)?;
        }
        let optimizer = match self.schedule {
            Schedule::Decoupled => 1,
            Schedule::Joint => 0,
        };
        let weight = self.rtd_weight * micro.scale() * self.loss_scale(optimizer);
        let (loss, handed) =
            self.backward_phase(backend, 1, &phase_params, micro, |pair, ctx, ws| {
                pair.discriminator_step(ctx, batch, weight, dropout, &mut ws[1], logits)
            })?;
        if micro.summed() {
            self.accumulate(backend, 1, &phase_params, micro, &handed)?;
        }
        if micro.last() {
            match self.schedule {
                Schedule::Decoupled => self.update(backend, 1, |_| lr)?,
                Schedule::Joint => {
                    let generator = self.pair.generator_params().to_vec();
                    let generator_lr = self.generator_lr;
                    self.update(backend, 0, |id| {
                        if generator.contains(&id) {
                            generator_lr
                        } else {
                            lr
                        }
                    })?
                }
            }
            self.release_gradients(backend, &phase_params)?;
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
