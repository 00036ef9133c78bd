//! Optimizers over a subset of a model's parameters: XAdam (the official DeBERTa optimizer)
//! or AdamW, decoupled weight decay except for `bias` and `LayerNorm.weight`, global-norm
//! clipping; their state is named and can be saved and restored exactly.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::Error;
use crate::backend::{AdamTensors, Backend, Clip};
use crate::kernels::AdamSpec;
use crate::model::{ParamId, ParamLayout, ParamStore};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// microsoft/DeBERTa XAdam: no bias correction, `eps` outside the square root.
    XAdam,
    /// Bias-corrected AdamW (PyTorch semantics).
    AdamW,
}

/// Hyper-parameters (SPEC §6.4 defaults via [`OptimizerConfig::xadam`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerConfig {
    /// The update rule.
    pub kind: OptimizerKind,
    /// First-moment decay (`f64`, so that `1 − β1` is exact before rounding; see
    /// [`crate::kernels::AdamConstants`]).
    pub beta1: f64,
    /// Second-moment decay (`f64`, as `beta1`).
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f32,
    /// Decoupled weight decay of decayed parameters.
    pub weight_decay: f32,
    /// Global-norm clipping threshold (`None` disables clipping).
    pub max_grad_norm: Option<f32>,
}

impl OptimizerConfig {
    /// The official defaults: XAdam, β = (0.9, 0.999), ε = 1e-6, weight decay 0.01, clip 1.0.
    pub fn xadam() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::XAdam,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
        }
    }
}

/// Whether microsoft/DeBERTa's grouping decays a parameter: every name except those
/// containing `bias` or `LayerNorm.weight` (so embeddings and `E_delta` decay).
pub fn decays(name: &str) -> bool {
    !(name.contains("bias") || name.contains("LayerNorm.weight"))
}

/// An optimizer and its state over a set of parameters.
pub struct Optimizer<T> {
    /// Hyper-parameters.
    pub config: OptimizerConfig,
    /// The parameters it updates, in order.
    pub params: Vec<ParamId>,
    decay: Vec<bool>,
    /// First moments, one per parameter.
    pub m: Vec<T>,
    /// Second moments, one per parameter.
    pub v: Vec<T>,
    /// Updates applied so far.
    pub step: u64,
    /// `Σ g²` per parameter of the last update.
    norms: T,
    /// One element: the sum of `norms`, the clipping coefficient's input.
    squared_norm: T,
    /// The loss scale of the gradients `norms` measured (1 without loss scaling).
    measured_scale: f32,
}

impl<T> Optimizer<T> {
    /// A fresh optimizer (zero moments, step 0) over `params` of `layout`.
    pub fn new<B: Backend<Tensor = T>>(
        backend: &B,
        layout: &ParamLayout,
        params: &[ParamId],
        config: OptimizerConfig,
    ) -> Result<Self, Error> {
        let zeros = |id: &ParamId| backend.zeros(layout.spec(*id).numel());
        Ok(Optimizer {
            config,
            params: params.to_vec(),
            decay: params
                .iter()
                .map(|id| decays(&layout.spec(*id).name))
                .collect(),
            m: params.iter().map(zeros).collect::<Result<_, _>>()?,
            v: params.iter().map(zeros).collect::<Result<_, _>>()?,
            step: 0,
            norms: backend.zeros(params.len().max(1))?,
            squared_norm: backend.zeros(1)?,
            measured_scale: 1.0,
        })
    }

    /// Clips the gradients of this optimizer's parameters by their global norm (see
    /// [`crate::backend::Clip`]) and applies one update with learning rate `lr`, the rate of
    /// this update's 0-based index (see [`super::warmup_linear`]); the moments take the
    /// gradient and AdamW's bias-correction count advances even when `lr` is 0. No readback:
    /// the clip coefficient is computed on the device.
    pub fn update<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        weights: &mut ParamStore<T>,
        grads: &ParamStore<T>,
        lr: f32,
    ) -> Result<(), Error> {
        self.update_each(backend, weights, grads, |_| lr)
    }

    /// [`Self::update`] with a learning rate per parameter, `lr(id)` (parameter groups: one
    /// clip over all of them, each group at its own rate).
    pub fn update_each<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        weights: &mut ParamStore<T>,
        grads: &ParamStore<T>,
        lr: impl Fn(ParamId) -> f32,
    ) -> Result<(), Error> {
        self.measure(backend, grads, 1.0)?;
        self.apply(backend, weights, grads, lr, 1.0)
    }

    /// [`Self::update_each`] of gradients seeded with the loss scale `loss_scale` (a power of
    /// two; see [`super::LossScaler`]): when every gradient is finite, the update of the
    /// unscaled gradients (divided by `loss_scale` inside the update, the clipping threshold
    /// multiplied by it, so that clipping sees the true norm) and `true`; otherwise `false`
    /// and nothing changes (weights, moments and step count), only the norms
    /// [`Self::last_grad_norm`] reads. Reads the per-parameter squared norms back to decide.
    pub fn update_scaled<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        weights: &mut ParamStore<T>,
        grads: &ParamStore<T>,
        lr: impl Fn(ParamId) -> f32,
        loss_scale: f32,
    ) -> Result<bool, Error> {
        self.measure(backend, grads, loss_scale)?;
        let mut norms = alloc::vec![0.0f32; self.params.len()];
        backend.download(&self.norms, &mut norms)?;
        if !norms.iter().all(|v| v.is_finite()) {
            return Ok(false);
        }
        self.apply(backend, weights, grads, lr, loss_scale)?;
        Ok(true)
    }

    /// `Σ g²` of every parameter's gradient (`loss_scale` times the loss's) into the norms.
    fn measure<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        grads: &ParamStore<T>,
        loss_scale: f32,
    ) -> Result<(), Error> {
        self.measured_scale = loss_scale;
        let each: Vec<&T> = self.params.iter().map(|id| grads.get(*id)).collect();
        backend.sums_of_squares(&each, &mut self.norms)
    }

    /// One update from gradients `loss_scale` times the loss's, their norms measured.
    fn apply<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        weights: &mut ParamStore<T>,
        grads: &ParamStore<T>,
        lr: impl Fn(ParamId) -> f32,
        loss_scale: f32,
    ) -> Result<(), Error> {
        self.step += 1;
        // The global norm once for every parameter's update, on the device.
        let clip = match self.config.max_grad_norm {
            Some(max_norm) => {
                backend.sum(&self.norms, &mut self.squared_norm, 0, 1.0)?;
                Some(max_norm * loss_scale)
            }
            None => None,
        };
        let clip = clip.map(|max_norm| Clip {
            squared_norm: &self.squared_norm,
            max_norm,
        });
        let tensors = weights.many_mut(&self.params)?;
        let mut updates = Vec::with_capacity(self.params.len());
        for (i, ((id, param), (m, v))) in self
            .params
            .iter()
            .zip(tensors)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
            .enumerate()
        {
            let spec = AdamSpec {
                lr: lr(*id),
                beta1: self.config.beta1,
                beta2: self.config.beta2,
                eps: self.config.eps,
                weight_decay: if self.decay[i] {
                    self.config.weight_decay
                } else {
                    0.0
                },
                bias_correction_step: match self.config.kind {
                    OptimizerKind::XAdam => None,
                    OptimizerKind::AdamW => Some(self.step),
                },
                grad_scale: 1.0 / loss_scale,
            };
            updates.push(AdamTensors {
                param,
                grad: grads.get(*id),
                m,
                v,
                spec,
            });
        }
        backend.adam_updates(&mut updates, clip)
    }

    /// The global gradient norm of the last update (before clipping, unscaled under loss
    /// scaling; not finite after a skipped one); reads the device.
    pub fn last_grad_norm<B: Backend<Tensor = T>>(&self, backend: &B) -> Result<f32, Error> {
        let mut norms = alloc::vec![0.0f32; self.params.len()];
        backend.download(&self.norms, &mut norms)?;
        let norm = libm::sqrt(norms.iter().map(|&v| f64::from(v)).sum::<f64>());
        Ok((norm / f64::from(self.measured_scale)) as f32)
    }

    /// The state as named host tensors: `m.<param>` and `v.<param>` (the step is separate).
    pub fn named_state<B: Backend<Tensor = T>>(
        &self,
        backend: &B,
        layout: &ParamLayout,
    ) -> Result<Vec<(String, Vec<f32>)>, Error> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (moment, tensors) in [("m", &self.m), ("v", &self.v)] {
            for (id, tensor) in self.params.iter().zip(tensors) {
                let mut values = alloc::vec![0.0f32; layout.spec(*id).numel()];
                backend.download(tensor, &mut values)?;
                out.push((format!("{moment}.{}", layout.spec(*id).name), values));
            }
        }
        Ok(out)
    }

    /// Restores the state written by [`Self::named_state`]: `get(name)` returns the saved
    /// values of a moment; a missing or mis-sized one is an error naming it.
    pub fn restore<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        layout: &ParamLayout,
        step: u64,
        mut get: impl FnMut(&str) -> Option<Vec<f32>>,
    ) -> Result<(), Error> {
        for (moment, tensors) in [("m", &mut self.m), ("v", &mut self.v)] {
            for (id, tensor) in self.params.iter().zip(tensors.iter_mut()) {
                let spec = layout.spec(*id);
                let name = format!("{moment}.{}", spec.name);
                let values = get(&name).ok_or(Error::EmptyInput {
                    what: "optimizer state tensor",
                })?;
                if values.len() != spec.numel() {
                    return Err(Error::ShapeMismatch {
                        what: "optimizer state tensor size",
                        expected: spec.numel(),
                        found: values.len(),
                    });
                }
                backend.write(tensor, 0, &values)?;
            }
        }
        self.step = step;
        Ok(())
    }
}
