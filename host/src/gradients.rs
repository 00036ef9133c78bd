//! Gradient computations behind `deberta grad` and `deberta step` (one joint gradient, or an
//! `N`-step training trajectory), returning their outputs as named host tensors with the
//! reference fixtures' names and shapes.

use std::path::{Path, PathBuf};

use deberta_core::Backend;
use deberta_core::model::{BackwardContext, DeviceBatch, HostBatch, MlmLayout, ParamStore};
use deberta_core::train::{
    GeneratorBatch, MlmTargets, OptimizerConfig, OptimizerKind, PairBatch, RtdPair, Schedule,
    Sharing, Trainer, Workspace, mlm_step, warmup_linear,
};

use crate::checkpoint::{TensorMap, read_tensor_file};
use crate::error::{Error, Result};
use crate::hf_config::read_config;
use crate::inference::fetch;
use crate::model_dir::{load_model_dir, take_weights};
use crate::tensor::{HostTensor, TensorData, int_matrix, int_tensor};

/// Reads several `[B, S]` integer tensors that must share one shape.
fn int_matrices<const N: usize>(
    tensors: &TensorMap,
    names: [&str; N],
    path: &Path,
) -> Result<([Vec<i64>; N], usize, usize)> {
    let mut shape = None;
    let mut out: [Vec<i64>; N] = std::array::from_fn(|_| Vec::new());
    for (slot, name) in out.iter_mut().zip(names) {
        let (values, b, s) = int_matrix(tensors, name, path)?;
        match shape {
            None => shape = Some((b, s)),
            Some(first) if first != (b, s) => {
                return Err(Error::BadTensor {
                    path: path.to_path_buf(),
                    name: name.into(),
                    reason: format!(
                        "shape [{b}, {s}] differs from `{}` [{}, {}]",
                        names[0], first.0, first.1
                    ),
                });
            }
            Some(_) => {}
        }
        *slot = values;
    }
    let (b, s) = shape.unwrap_or((0, 0));
    Ok((out, b, s))
}

/// `d(mlm_loss)/d(param)` of a Hugging Face MLM model on `input_ids`/`attention_mask` with
/// `labels` (−100 = ignore): every parameter under its HF name, plus `mlm_loss` `[1]`.
pub fn mlm_gradients<B: Backend>(
    backend: &B,
    model_dir: &Path,
    inputs: &Path,
) -> Result<TensorMap> {
    let loaded = load_model_dir(model_dir)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    if loaded.model.mlm_head.is_none() {
        return Err(Error::format(
            model_dir,
            "the checkpoint has no MLM head (lm_predictions.* or cls.predictions.*)",
        ));
    }
    let tensors = read_tensor_file(inputs)?;
    let ([ids, mask, labels], batch, len) =
        int_matrices(&tensors, ["input_ids", "attention_mask", "labels"], inputs)?;
    let params = loaded.upload(backend)?;
    let host = HostBatch {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: None,
        batch,
        len,
    };
    let model_err = |what: &'static str| move |e| Error::model(what, e);
    let mlm_batch = GeneratorBatch {
        batch: DeviceBatch::upload(backend, loaded.config(), &host)
            .map_err(model_err("invalid input"))?,
        targets: MlmTargets::from_labels(backend, &labels, loaded.config().vocab_size)
            .map_err(model_err("invalid labels"))?,
    };
    let mut grads = loaded
        .layout
        .zeros(backend)
        .map_err(model_err("allocating gradients"))?;
    let mut ctx = BackwardContext::new(backend, &params, &mut grads);
    let loss = mlm_step(
        &loaded.model,
        &mut ctx,
        &mlm_batch,
        None,
        1.0,
        &mut Workspace::new(),
        None,
    )
    .map_err(model_err("MLM forward/backward"))?;

    let mut out = TensorMap::new();
    for (id, spec) in loaded.layout.iter() {
        out.insert(
            spec.name.clone(),
            fetch(backend, grads.get(id), spec.shape.clone())?,
        );
    }
    out.insert("mlm_loss".into(), HostTensor::float(vec![1], vec![loss]));
    Ok(out)
}

/// What `deberta step` computes.
pub struct StepRequest {
    /// Weight files, merged in order.
    pub weights: Vec<PathBuf>,
    /// The generator's `config.json`.
    pub generator_config: PathBuf,
    /// The discriminator's `config.json`.
    pub discriminator_config: PathBuf,
    /// The batch: `gen_input_ids`, `attention_mask`, `mlm_labels`, `corrupted_ids`.
    pub batch: PathBuf,
    /// Embedding sharing.
    pub sharing: Sharing,
    /// λ.
    pub rtd_weight: f32,
    /// Whether the generator's MLM goes through the Enhanced Mask Decoder.
    pub emd: bool,
}

/// The pair of a [`StepRequest`] with its weights on `backend` (`E_Δ` zero unless the weight
/// files carry it).
fn load_pair<B: Backend>(
    backend: &B,
    request: &StepRequest,
) -> Result<(RtdPair, ParamStore<B::Tensor>)> {
    let mut tensors = TensorMap::new();
    for file in &request.weights {
        tensors.extend(read_tensor_file(file)?);
    }
    let first = request.weights.first().cloned().unwrap_or_default();
    let gen_cfg = read_config(&request.generator_config)?;
    let disc_cfg = read_config(&request.discriminator_config)?;
    let head = if tensors
        .keys()
        .any(|k| k.starts_with("generator.lm_predictions."))
    {
        MlmLayout::LmPredictions
    } else if tensors
        .keys()
        .any(|k| k.starts_with("generator.cls.predictions."))
        || gen_cfg.legacy
    {
        MlmLayout::ClsPredictions
    } else {
        MlmLayout::LmPredictions
    };
    let pair = RtdPair::new(
        &gen_cfg.model,
        &disc_cfg.model,
        request.sharing,
        head,
        request.emd,
    )
    .map_err(|e| Error::model("building the generator/discriminator pair", e))?;
    // E_Δ starts at zero unless the weights carry it.
    for delta in [pair.word_delta, pair.position_delta].into_iter().flatten() {
        let spec = pair.layout.spec(delta);
        tensors
            .entry(spec.name.clone())
            .or_insert_with(|| HostTensor::float(spec.shape.clone(), vec![0.0; spec.numel()]));
    }
    let (weights, warnings) = take_weights(&pair.layout, tensors, &first)?;
    for warning in warnings {
        eprintln!("note: {warning}");
    }
    let params = pair
        .layout
        .build(|id, _| backend.upload(&weights[id.index()]))
        .map_err(|e| Error::model("uploading weights", e))?;
    Ok((pair, params))
}

/// The batch tensors `deberta step` reads, in this order.
const BATCH_NAMES: [&str; 4] = [
    "gen_input_ids",
    "attention_mask",
    "mlm_labels",
    "corrupted_ids",
];

/// One joint forward + backward of the pair: `loss_mlm`, `loss_rtd`, `loss_total`,
/// `rtd_logits` and `grad.<name>` for every trainable parameter (all float32).
pub fn pair_gradients<B: Backend>(backend: &B, request: &StepRequest) -> Result<TensorMap> {
    let (pair, params) = load_pair(backend, request)?;
    let batch_tensors = read_tensor_file(&request.batch)?;
    let ([ids, mask, labels, corrupted], batch, len) =
        int_matrices(&batch_tensors, BATCH_NAMES, &request.batch)?;
    let model_err = |what: &'static str| move |e| Error::model(what, e);
    let host = HostBatch {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: None,
        batch,
        len,
    };
    let device = PairBatch::upload(backend, &pair, &host, &corrupted, &labels)
        .map_err(model_err("invalid batch"))?;
    let mut grads = pair
        .layout
        .zeros(backend)
        .map_err(model_err("allocating gradients"))?;
    let mut logits = vec![0.0f32; batch * len];
    let mut ctx = BackwardContext::new(backend, &params, &mut grads);
    let losses = pair
        .joint_gradient(
            &mut ctx,
            &device,
            request.rtd_weight,
            None,
            Some(&mut logits),
        )
        .map_err(model_err("pair forward/backward"))?;
    let mut out = TensorMap::new();
    for (name, value) in [
        ("loss_mlm", losses.mlm),
        ("loss_rtd", losses.rtd),
        ("loss_total", losses.total),
    ] {
        out.insert(name.into(), HostTensor::float(vec![1], vec![value]));
    }
    out.insert(
        "rtd_logits".into(),
        HostTensor::float(vec![batch, len], logits),
    );
    for (id, spec) in pair.layout.iter() {
        out.insert(
            format!("grad.{}", spec.name),
            fetch(backend, grads.get(id), spec.shape.clone())?,
        );
    }
    debug_assert!(out.values().all(|t| matches!(t.data, TensorData::Float(_))));
    Ok(out)
}

/// The optimisation of a multi-step `deberta step --steps N` run (SPEC §6.3–§6.4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Training {
    /// Optimizer steps `N`; the batch file's tensors are `[N, B, S]`.
    pub steps: usize,
    /// Decoupled (two optimizers, each clipping its own gradients) or joint (one).
    pub schedule: Schedule,
    /// XAdam (official) or AdamW.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps `K`: step `k` (0-based) runs at `lr·warmup_linear(k, N, K/N)`.
    pub warmup_steps: usize,
    /// Decoupled weight decay of the decayed parameters.
    pub weight_decay: f32,
    /// Global-norm clipping threshold per optimizer (`None`: no clipping).
    pub clip: Option<f32>,
}

impl Training {
    /// The learning rate of step `k` (0-based): the official XAdam evaluates the schedule at
    /// its step counter before incrementing it, so step 0 runs at 0 when `K > 0`.
    pub fn lr_at(&self, k: usize) -> f32 {
        let warmup = self.warmup_steps as f64 / self.steps.max(1) as f64;
        (self.lr * warmup_linear(k as u64, self.steps as u64, warmup)) as f32
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Usage(what.into()));
        if self.steps == 0 {
            return bad("--steps must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("--lr must be a finite learning rate ≥ 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("--weight-decay must be finite and ≥ 0");
        }
        if self.clip.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("--clip must be finite and > 0 (0 disables clipping)");
        }
        Ok(())
    }
}

/// Reads several `[N, B, S]` integer tensors that must share one shape with `N = steps`.
fn int_steps<const K: usize>(
    tensors: &TensorMap,
    names: [&str; K],
    path: &Path,
    steps: usize,
) -> Result<([Vec<i64>; K], usize, usize)> {
    let mut shape: Option<(usize, usize)> = None;
    let mut out: [Vec<i64>; K] = std::array::from_fn(|_| Vec::new());
    for (slot, name) in out.iter_mut().zip(names) {
        let tensor = int_tensor(tensors, name, path)?;
        let bad = |reason| tensor.bad(reason);
        let (b, s) = match tensor.shape {
            [n, b, s] if *n == steps => (*b, *s),
            [n, _, _] => {
                return Err(bad(format!(
                    "leading step axis has {n} steps, but --steps is {steps}"
                )));
            }
            other => {
                return Err(bad(format!(
                    "shape {other:?} is not [steps, batch, sequence] (--steps {steps})"
                )));
            }
        };
        match shape {
            None => shape = Some((b, s)),
            Some(first) if first != (b, s) => {
                return Err(bad(format!(
                    "shape [{steps}, {b}, {s}] differs from `{}` [{steps}, {}, {}]",
                    names[0], first.0, first.1
                )));
            }
            Some(_) => {}
        }
        *slot = tensor.values.to_vec();
    }
    let (b, s) = shape.unwrap_or((0, 0));
    Ok((out, b, s))
}

/// `N` optimizer steps of the pair, teacher-forced on the batch file's step slices (no
/// sampling, dropout off): `loss_mlm` `[N]` and `loss_rtd` `[N]` (each from step `k`'s forward
/// before its update; decoupled: `loss_rtd` with `E_D` built from the generator's
/// already-updated `E_G`), `lr` `[N]`, the global gradient norms before clipping
/// (`grad_norm.generator`/`grad_norm.discriminator`, or `grad_norm.joint`) `[N]`, and
/// `param.<name>` after the last step for every trainable parameter (the names of
/// [`pair_gradients`]' `grad.<name>`).
pub fn pair_trajectory<B: Backend>(
    backend: &B,
    request: &StepRequest,
    training: &Training,
) -> Result<TensorMap> {
    training.validate()?;
    let n = training.steps;
    let batch_tensors = read_tensor_file(&request.batch)?;
    let ([ids, mask, labels, corrupted], batch, len) =
        int_steps(&batch_tensors, BATCH_NAMES, &request.batch, n)?;
    let (pair, params) = load_pair(backend, request)?;
    let config = OptimizerConfig {
        kind: training.optimizer,
        weight_decay: training.weight_decay,
        max_grad_norm: training.clip,
        ..OptimizerConfig::xadam()
    };
    let mut trainer = Trainer::new(
        backend,
        pair,
        params,
        training.schedule,
        request.rtd_weight,
        config,
    )
    .map_err(|e| Error::model("creating the optimizers", e))?;
    let norm_names: &[&str] = match training.schedule {
        Schedule::Decoupled => &["grad_norm.generator", "grad_norm.discriminator"],
        Schedule::Joint => &["grad_norm.joint"],
    };
    let mut loss_mlm = Vec::with_capacity(n);
    let mut loss_rtd = Vec::with_capacity(n);
    let mut rates = Vec::with_capacity(n);
    let mut norms = vec![Vec::with_capacity(n); norm_names.len()];
    let per_step = batch * len;
    for k in 0..n {
        let at = |what: &'static str| {
            let path = request.batch.display().to_string();
            move |e| Error::model(format!("{path}: step {k}: {what}"), e)
        };
        let span = k * per_step..(k + 1) * per_step;
        let host = HostBatch {
            input_ids: &ids[span.clone()],
            attention_mask: &mask[span.clone()],
            token_type_ids: None,
            batch,
            len,
        };
        let device = PairBatch::upload(
            backend,
            &trainer.pair,
            &host,
            &corrupted[span.clone()],
            &labels[span],
        )
        .map_err(at("invalid batch"))?;
        let lr = training.lr_at(k);
        let losses = trainer
            .step(backend, &device, lr, None)
            .map_err(at("training step"))?;
        loss_mlm.push(losses.mlm);
        loss_rtd.push(losses.rtd);
        rates.push(lr);
        for (slot, optimizer) in norms.iter_mut().zip(&trainer.optimizers) {
            slot.push(
                optimizer
                    .last_grad_norm(backend)
                    .map_err(at("reading the gradient norm"))?,
            );
        }
    }
    let mut out = TensorMap::new();
    out.insert("loss_mlm".into(), HostTensor::float(vec![n], loss_mlm));
    out.insert("loss_rtd".into(), HostTensor::float(vec![n], loss_rtd));
    out.insert("lr".into(), HostTensor::float(vec![n], rates));
    for (name, values) in norm_names.iter().zip(norms) {
        out.insert((*name).into(), HostTensor::float(vec![n], values));
    }
    for (id, spec) in trainer.pair.layout.iter() {
        out.insert(
            format!("param.{}", spec.name),
            fetch(backend, trainer.params.get(id), spec.shape.clone())?,
        );
    }
    Ok(out)
}
