//! Gradient computations behind `deberta grad` and `deberta step`, returning their outputs as
//! named host tensors with the reference fixtures' names and shapes.

use std::path::{Path, PathBuf};

use deberta_core::Backend;
use deberta_core::model::{HostBatch, MlmLayout};
use deberta_core::train::{MlmTargets, PairBatch, RtdPair, Sharing, Workspace, mlm_step};

use crate::checkpoint::{TensorMap, read_tensor_file};
use crate::error::{Error, Result};
use crate::hf_config::read_config;
use crate::inference::fetch;
use crate::model_dir::{load_model_dir, take_weights};
use crate::tensor::{HostTensor, TensorData};

/// Reads a `[B, S]` integer tensor named `name` from an inputs file.
pub fn int_matrix(
    tensors: &TensorMap,
    name: &str,
    path: &Path,
) -> Result<(Vec<i64>, usize, usize)> {
    let tensor = tensors
        .get(name)
        .ok_or_else(|| Error::format(path, format!("no `{name}` tensor")))?;
    let bad = |reason: String| Error::BadTensor {
        path: path.to_path_buf(),
        name: name.into(),
        reason,
    };
    let values = tensor.as_int().ok_or_else(|| {
        bad(format!(
            "dtype {} is not an integer type (expected I64 or I32)",
            tensor.stored_as
        ))
    })?;
    match tensor.shape.as_slice() {
        [b, s] => Ok((values.to_vec(), *b, *s)),
        other => Err(bad(format!("shape {other:?} is not [batch, sequence]"))),
    }
}

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
    let device = deberta_core::model::DeviceBatch::upload(backend, loaded.config(), &host)
        .map_err(model_err("invalid input"))?;
    let targets = MlmTargets::from_labels(backend, &labels, loaded.config().vocab_size)
        .map_err(model_err("invalid labels"))?;
    let mut grads = loaded
        .layout
        .zeros(backend)
        .map_err(model_err("allocating gradients"))?;
    let loss = mlm_step(
        &loaded.model,
        backend,
        &params,
        &mut grads,
        &device,
        &targets,
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

/// One joint forward + backward of the pair: `loss_mlm`, `loss_rtd`, `loss_total`,
/// `rtd_logits` and `grad.<name>` for every trainable parameter (all float32).
pub fn pair_gradients<B: Backend>(backend: &B, request: &StepRequest) -> Result<TensorMap> {
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
    let batch_tensors = read_tensor_file(&request.batch)?;
    let ([ids, mask, labels, corrupted], batch, len) = int_matrices(
        &batch_tensors,
        [
            "gen_input_ids",
            "attention_mask",
            "mlm_labels",
            "corrupted_ids",
        ],
        &request.batch,
    )?;
    let model_err = |what: &'static str| move |e| Error::model(what, e);
    let params = pair
        .layout
        .build(|id, _| backend.upload(&weights[id.index()]))
        .map_err(model_err("uploading weights"))?;
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
    let losses = pair
        .joint_gradient(
            backend,
            &params,
            &mut grads,
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
