//! Loading a Hugging Face model directory (`config.json` + `model.safetensors`, a sharded
//! `model.safetensors.index.json`, or `pytorch_model.bin`) into the core model.

use std::path::{Path, PathBuf};

use deberta_core::model::{Deberta, Heads, MlmLayout, ParamLayout, ParamStore, SharedTables};
use deberta_core::{Backend, ModelConfig};

use crate::checkpoint::{TensorMap, read_tensor_file};
use crate::error::{Error, Result};
use crate::hf_config::{HfConfig, read_config};
use crate::tensor::TensorData;

/// A model read from disk: its structure, parameter names, and weights on the host.
pub struct LoadedModel {
    /// The model structure (parameters registered under the root prefix `""`).
    pub model: Deberta,
    /// Names and shapes of every parameter.
    pub layout: ParamLayout,
    /// The weights, as `f32` on the host, in layout order.
    pub weights: Vec<Vec<f32>>,
    /// The checkpoint file the weights came from.
    pub weights_path: PathBuf,
    /// One-line warnings (e.g. unexpected tensors that were ignored).
    pub warnings: Vec<String>,
}

impl LoadedModel {
    /// Uploads the weights to a backend.
    pub fn upload<B: Backend>(&self, backend: &B) -> Result<ParamStore<B::Tensor>> {
        self.layout
            .build(|id, _| backend.upload(&self.weights[id.index()]))
            .map_err(|e| Error::model("uploading weights", e))
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }
}

/// Finds the weights file of a model directory.
fn weights_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&index, format!("invalid JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "no `weight_map` object"))?;
        let mut files: Vec<String> = Vec::new();
        for shard in map.values() {
            let shard = shard
                .as_str()
                .ok_or_else(|| Error::format(&index, "`weight_map` values must be file names"))?;
            if shard.contains('/') || shard.contains('\\') || shard == ".." {
                return Err(Error::format(
                    &index,
                    format!("shard name \"{shard}\" is not a plain file name"),
                ));
            }
            if !files.iter().any(|f| f == shard) {
                files.push(shard.to_string());
            }
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(vec![bin]);
    }
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
        ));
    }
    Err(Error::format(
        dir,
        "no model.safetensors, model.safetensors.index.json or pytorch_model.bin in the directory",
    ))
}

/// Adds the `deberta.` prefix to backbone tensors saved by a bare `DebertaV2Model`
/// (`embeddings.*`, `encoder.*`), as transformers does when loading them into a model with a
/// head.
fn normalise_names(tensors: TensorMap) -> TensorMap {
    let bare = tensors
        .keys()
        .any(|k| k.starts_with("embeddings.") || k.starts_with("encoder."))
        && !tensors.keys().any(|k| k.starts_with("deberta."));
    if !bare {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(k, v)| {
            if k.starts_with("embeddings.") || k.starts_with("encoder.") {
                (format!("deberta.{k}"), v)
            } else {
                (k, v)
            }
        })
        .collect()
}

/// The heads a checkpoint carries, decided by its tensor names (and `legacy` when it has both
/// MLM layouts).
pub fn detect_heads(tensors: &TensorMap, legacy: bool) -> Heads {
    let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
    let lm = has("lm_predictions.lm_head.");
    let cls = has("cls.predictions.");
    let mlm = match (lm, cls) {
        (true, true) if legacy => Some(MlmLayout::ClsPredictions),
        (true, _) => Some(MlmLayout::LmPredictions),
        (false, true) => Some(MlmLayout::ClsPredictions),
        (false, false) => None,
    };
    Heads {
        mlm,
        emd: false,
        rtd: has("mask_predictions."),
    }
}

/// Tensors a checkpoint may hold (also under a prefix such as `generator.`) that the model
/// reads from elsewhere (tied decoders) or never needs (buffers).
const TIED_OR_BUFFERS: &[&str] = &[
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "lm_predictions.lm_head.weight",
    "deberta.embeddings.position_ids",
];

/// Loads `dir/config.json` and the weights. Missing tensors are an error naming them; a wrong
/// shape or an integer tensor is an error naming the tensor; unexpected tensors become one
/// warning line.
pub fn load_model_dir(dir: &Path) -> Result<LoadedModel> {
    let (hf, tensors, weights_path) = read_model_dir(dir)?;
    model_from_tensors(&hf, tensors, weights_path)
}

/// Reads `dir/config.json` and every tensor of the weights, bare `DebertaV2Model` names given
/// the `deberta.` prefix; returns them with the (first) weights file.
pub fn read_model_dir(dir: &Path) -> Result<(HfConfig, TensorMap, PathBuf)> {
    let config_path = dir.join("config.json");
    let hf = read_config(&config_path)?;
    let files = weights_files(dir)?;
    let mut tensors = TensorMap::new();
    for file in &files {
        tensors.extend(read_tensor_file(file)?);
    }
    Ok((hf, normalise_names(tensors), files[0].clone()))
}

/// Builds the model of a parsed `config.json` from the tensors of its checkpoint (what
/// [`load_model_dir`] does once the files are read): bare `DebertaV2Model` names get the
/// `deberta.` prefix, the heads are chosen from the tensor names, and every parameter is taken
/// with its shape and dtype checked. `weights_path` labels errors and is recorded in the result.
///
/// # Errors
///
/// [`Error::MissingTensors`] naming every absent parameter, or [`Error::BadTensor`] for a
/// wrong shape or an integer tensor.
pub fn model_from_tensors(
    hf: &HfConfig,
    tensors: TensorMap,
    weights_path: PathBuf,
) -> Result<LoadedModel> {
    let tensors = normalise_names(tensors);
    let heads = detect_heads(&tensors, hf.legacy);
    let mut layout = ParamLayout::new();
    let model = Deberta::new(&mut layout, "", &hf.model, heads, SharedTables::default());
    let (weights, warnings) = take_weights(&layout, tensors, &weights_path)?;
    Ok(LoadedModel {
        model,
        layout,
        weights,
        weights_path,
        warnings,
    })
}

/// Moves the tensors named by `layout` out of `tensors`, checking shapes and dtypes.
pub fn take_weights(
    layout: &ParamLayout,
    mut tensors: TensorMap,
    path: &Path,
) -> Result<(Vec<Vec<f32>>, Vec<String>)> {
    let missing: Vec<String> = layout
        .specs()
        .iter()
        .filter(|s| !tensors.contains_key(&s.name))
        .map(|s| s.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(Error::MissingTensors {
            path: path.to_path_buf(),
            names: missing,
        });
    }
    let mut weights = Vec::with_capacity(layout.specs().len());
    for spec in layout.specs() {
        let tensor = tensors
            .remove(&spec.name)
            .ok_or_else(|| Error::MissingTensors {
                path: path.to_path_buf(),
                names: vec![spec.name.clone()],
            })?;
        let bad = |reason: String| Error::BadTensor {
            path: path.to_path_buf(),
            name: spec.name.clone(),
            reason,
        };
        if tensor.shape != spec.shape {
            return Err(bad(format!(
                "shape {:?} does not match the config's {:?}",
                tensor.shape, spec.shape
            )));
        }
        match tensor.data {
            TensorData::Float(v) => weights.push(v),
            TensorData::Int(_) => {
                return Err(bad(format!(
                    "dtype {} is not a floating-point type",
                    tensor.stored_as
                )));
            }
        }
    }
    let mut warnings = Vec::new();
    let tied_or_buffer = |name: &str| {
        TIED_OR_BUFFERS.iter().any(|t| {
            name == *t
                || name
                    .strip_suffix(t)
                    .is_some_and(|prefix| prefix.ends_with('.'))
        })
    };
    let unexpected: Vec<&String> = tensors.keys().filter(|k| !tied_or_buffer(k)).collect();

    if !unexpected.is_empty() {
        let shown: Vec<&str> = unexpected.iter().take(4).map(|s| s.as_str()).collect();
        let more = if unexpected.len() > 4 {
            format!(" and {} more", unexpected.len() - 4)
        } else {
            String::new()
        };
        warnings.push(format!(
            "{}: ignoring {} unexpected tensor(s): {}{more}",
            path.display(),
            unexpected.len(),
            shown.join(", ")
        ));
    }
    Ok((weights, warnings))
}
