//! Run checkpoints: atomic, complete, and restorable bit for bit.
//!
//! A checkpoint of step N is written to `checkpoints/.step-N.tmp/`, every file fsynced, then
//! renamed to `checkpoints/step-N/` — so a directory under its final name is always complete.
//! The latest checkpoint is published as the symbolic links `discriminator/`, `generator/`
//! and `state/` of the run directory, each replaced atomically (a new link renamed over the
//! old one); older checkpoints beyond `--keep` are then removed.
//!
//! * `discriminator/`: Hugging Face `config.json` (`DebertaV2Model`), `model.safetensors`
//!   (`deberta.*` with the GDES word table `E_G + E_Δ` merged, and `mask_predictions.*`),
//!   the tokenizer (`tokenizer.json`, or `spm.model` with `tokenizer_config.json`).
//! * `generator/`: `config.json` (`DebertaV2ForMaskedLM`, `legacy: false`), `model.safetensors`
//!   (`deberta.*`, `lm_predictions.lm_head.*`, and the EMD's absolute position table),
//!   the tokenizer.
//! * `state/`: `weights.safetensors` (every parameter of the pair under its layout name,
//!   `E_delta` included), `optimizer.safetensors` (`opt{i}.m.<name>`, `opt{i}.v.<name>`) and
//!   `state.json` (step, optimizer steps, data cursor, the resolved options).

use std::path::{Path, PathBuf};

use deberta_core::Backend;
use deberta_core::train::{RtdPair, Trainer};
use serde::{Deserialize, Serialize};

use super::options::PretrainOptions;
use crate::checkpoint::{
    TensorMap, read_safetensors, write_safetensors, write_safetensors_with_metadata,
};
use crate::error::{Error, Result};
use crate::fs_util::write_atomic;
use crate::hf_config::config_json;
use crate::inference::fetch;
use crate::tensor::HostTensor;

/// Version of the `state/` layout.
pub const STATE_VERSION: u32 = 1;

/// `state/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// Layout version ([`STATE_VERSION`]).
    pub version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Steps of each optimizer.
    pub optimizer_steps: Vec<u64>,
    /// Where the data stream stands.
    pub cursor: serde_json::Value,
    /// Every option of the run, resolved.
    pub options: PretrainOptions,
    /// Processes of the data-parallel run that wrote it (1 in states written before data
    /// parallelism).
    #[serde(default = "one_process")]
    pub world_size: usize,
    /// The loss scalers of `--precision mixed`, one per optimizer (absent otherwise, and in
    /// states written before mixed precision: a resumed run then starts fresh scalers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_scalers: Vec<LossScalerState>,
}

/// A [`deberta_core::train::LossScaler`]'s state in `state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScalerState {
    /// The scale of the next update (a power of two).
    pub scale: f32,
    /// Clean updates since the scale last changed.
    pub clean_steps: u32,
    /// Updates skipped so far.
    pub skipped_steps: u64,
}

impl LossScalerState {
    /// The state of `scaler`.
    pub fn of(scaler: &deberta_core::train::LossScaler) -> Self {
        LossScalerState {
            scale: scaler.scale(),
            clean_steps: scaler.clean_steps(),
            skipped_steps: scaler.skipped_steps(),
        }
    }

    /// The scaler, or `None` for a state no scaler reaches (see
    /// [`deberta_core::train::LossScaler::restore`]).
    pub fn scaler(self) -> Option<deberta_core::train::LossScaler> {
        deberta_core::train::LossScaler::restore(self.scale, self.clean_steps, self.skipped_steps)
    }
}

fn one_process() -> usize {
    1
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn model_error(what: &'static str) -> impl Fn(deberta_core::Error) -> Error {
    move |e| Error::model(what, e)
}

/// Every parameter of the pair, on the host, under its layout name.
fn all_weights<B: Backend>(backend: &B, trainer: &Trainer<B>) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (id, spec) in trainer.pair.layout.iter() {
        out.insert(
            spec.name.clone(),
            fetch(backend, trainer.params.get(id), spec.shape.clone())?,
        );
    }
    Ok(out)
}

/// The Hugging Face state dicts of both models: `(discriminator, generator)`, names without
/// the pair prefixes, the discriminator's tables materialised (`E_G + E_Δ` under GDES).
pub fn hf_state_dicts<B: Backend>(
    backend: &B,
    trainer: &Trainer<B>,
) -> Result<(TensorMap, TensorMap)> {
    let weights = all_weights(backend, trainer)?;
    let pair: &RtdPair = &trainer.pair;
    let mut discriminator = TensorMap::new();
    let mut generator = TensorMap::new();
    for (name, tensor) in weights {
        if let Some(rest) = name.strip_prefix("discriminator.") {
            discriminator.insert(rest.to_string(), tensor);
        } else if let Some(rest) = name.strip_prefix("generator.") {
            generator.insert(rest.to_string(), tensor);
        }
    }
    let (word, position) = pair
        .discriminator_tables(backend, &trainer.params)
        .map_err(model_error("materialising the discriminator's embeddings"))?;
    let cfg = &pair.discriminator.config;
    let e = cfg.embedding_size;
    discriminator.insert(
        "deberta.embeddings.word_embeddings.weight".into(),
        fetch(backend, &word, vec![cfg.vocab_size, e])?,
    );
    if let Some(position) = position {
        discriminator.insert(
            "deberta.embeddings.position_embeddings.weight".into(),
            fetch(backend, &position, vec![cfg.max_position_embeddings, e])?,
        );
    }
    Ok((discriminator, generator))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::format(path, e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

/// The files of a tokenizer, by name (see `Tokenizer::files`).
pub type TokenizerFiles = [(&'static str, Vec<u8>)];

/// Writes a Hugging Face model directory (`config.json`, `model.safetensors` with the
/// `{"format": "pt"}` metadata transformers writes, and the tokenizer's files).
pub fn write_hf_dir(
    dir: &Path,
    config: serde_json::Value,
    tensors: &TensorMap,
    tokenizer: &TokenizerFiles,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_json(&dir.join("config.json"), &config)?;
    let metadata = [("format".to_string(), "pt".to_string())].into();
    write_safetensors_with_metadata(&dir.join("model.safetensors"), tensors, Some(&metadata))?;
    for (name, bytes) in tokenizer {
        write_atomic(&dir.join(name), bytes)?;
    }
    Ok(())
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        // Directory fsync makes renames durable; some file systems refuse it.
        let _ = d.sync_all();
    }
}

/// Writes checkpoint `state.step` of `trainer` into `run_dir` and publishes it as the latest.
pub fn save<B: Backend>(
    backend: &B,
    run_dir: &Path,
    trainer: &Trainer<B>,
    state: &RunState,
    tokenizer: &TokenizerFiles,
) -> Result<PathBuf> {
    let checkpoints = run_dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoints).map_err(io(&checkpoints))?;
    let tmp = checkpoints.join(format!(".step-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;

    let (discriminator, generator) = hf_state_dicts(backend, trainer)?;
    let pair = &trainer.pair;
    write_hf_dir(
        &tmp.join("discriminator"),
        config_json(&pair.discriminator.config, "DebertaV2Model", false),
        &discriminator,
        tokenizer,
    )?;
    write_hf_dir(
        &tmp.join("generator"),
        config_json(&pair.generator.config, "DebertaV2ForMaskedLM", false),
        &generator,
        tokenizer,
    )?;
    let state_dir = tmp.join("state");
    std::fs::create_dir_all(&state_dir).map_err(io(&state_dir))?;
    write_safetensors(
        &state_dir.join("weights.safetensors"),
        &all_weights(backend, trainer)?,
    )?;
    let mut moments = TensorMap::new();
    for (i, optimizer) in trainer.optimizers.iter().enumerate() {
        for (name, values) in optimizer
            .named_state(backend, &pair.layout)
            .map_err(model_error("reading optimizer state"))?
        {
            moments.insert(
                format!("opt{i}.{name}"),
                HostTensor::float(vec![values.len()], values),
            );
        }
    }
    write_safetensors(&state_dir.join("optimizer.safetensors"), &moments)?;
    let json = serde_json::to_value(state).map_err(|e| Error::format(&state_dir, e.to_string()))?;
    write_json(&state_dir.join("state.json"), &json)?;
    for sub in ["discriminator", "generator", "state"] {
        fsync_dir(&tmp.join(sub));
    }
    fsync_dir(&tmp);

    let final_dir = checkpoints.join(format!("step-{}", state.step));
    if final_dir.exists() {
        retire(&checkpoints, state.step)?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    fsync_dir(&checkpoints);
    publish_latest(run_dir, &final_dir)?;
    prune(&checkpoints, state.options.keep.max(1), state.step)?;
    Ok(final_dir)
}

/// Points `run_dir/{discriminator,generator,state}` at `checkpoint`'s subdirectories, each by
/// an atomic rename of a fresh symbolic link.
fn publish_latest(run_dir: &Path, checkpoint: &Path) -> Result<()> {
    let relative = checkpoint
        .strip_prefix(run_dir)
        .map_err(|_| Error::format(checkpoint, "checkpoint is not inside the run directory"))?;
    for sub in ["discriminator", "generator", "state"] {
        let link = run_dir.join(sub);
        let tmp = run_dir.join(format!(".{sub}.link-tmp"));
        let _ = std::fs::remove_file(&tmp);
        symlink_dir(&relative.join(sub), &tmp).map_err(io(&tmp))?;
        if link.exists() && !link.is_symlink() {
            return Err(Error::format(
                &link,
                "exists and is not a link to a checkpoint; refusing to replace it",
            ));
        }
        std::fs::rename(&tmp, &link).map_err(io(&link))?;
    }
    fsync_dir(run_dir);
    Ok(())
}

#[cfg(unix)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

/// The steps of the complete checkpoints under `checkpoints/`, ascending.
pub fn checkpoint_steps(checkpoints: &Path) -> Result<Vec<u64>> {
    let mut steps = Vec::new();
    let entries = match std::fs::read_dir(checkpoints) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(steps),
        Err(e) => return Err(Error::io(checkpoints, e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(checkpoints))?;
        let name = entry.file_name();
        if let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse().ok())
        {
            steps.push(step);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// Removes all but the newest `keep` checkpoints (never `current`) and stale temporaries.
/// Each is first renamed to a temporary name, so that an interruption during the (non-atomic)
/// deletion never leaves a partial directory under a `step-N` name.
fn prune(checkpoints: &Path, keep: usize, current: u64) -> Result<()> {
    let steps = checkpoint_steps(checkpoints)?;
    let excess = steps.len().saturating_sub(keep);
    for step in steps.into_iter().take(excess).filter(|&s| s != current) {
        retire(checkpoints, step)?;
    }
    fsync_dir(checkpoints);
    remove_temporaries(checkpoints)
}

/// Renames `checkpoints/step-{step}` to a temporary name that [`remove_temporaries`] deletes.
fn retire(checkpoints: &Path, step: u64) -> Result<()> {
    let dir = checkpoints.join(format!("step-{step}"));
    let doomed = checkpoints.join(format!(".step-{step}.removed.tmp"));
    if doomed.exists() {
        std::fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
    }
    std::fs::rename(&dir, &doomed).map_err(io(&dir))
}

/// Deletes `.step-*.tmp` leftovers of interrupted saves.
pub fn remove_temporaries(checkpoints: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(checkpoints) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(".step-") && n.ends_with(".tmp"))
        {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// A checkpoint read back from `state/`: the run state, weights by name, optimizer moments.
pub struct LoadedState {
    /// `state.json`.
    pub state: RunState,
    /// `weights.safetensors`.
    pub weights: TensorMap,
    /// `optimizer.safetensors`.
    pub moments: TensorMap,
}

/// Reads `run_dir/state/`; anything missing or malformed is an error naming the file.
pub fn load_state(run_dir: &Path) -> Result<LoadedState> {
    let dir = run_dir.join("state");
    if !dir.is_dir() {
        return Err(Error::format(
            run_dir,
            "no state/ checkpoint to resume from",
        ));
    }
    let state_path = dir.join("state.json");
    let bytes = std::fs::read(&state_path).map_err(io(&state_path))?;
    let state = parse_run_state(&state_path, &bytes)?;
    Ok(LoadedState {
        weights: read_safetensors(&dir.join("weights.safetensors"))?,
        moments: read_safetensors(&dir.join("optimizer.safetensors"))?,
        state,
    })
}

/// Parses the bytes of a `state/state.json` (what [`load_state`] reads); `path` only labels
/// errors.
///
/// # Errors
///
/// [`Error::Format`] when the bytes are not the JSON of a [`RunState`] (unknown or missing
/// fields included) or its `version` is not [`STATE_VERSION`].
pub fn parse_run_state(path: &Path, bytes: &[u8]) -> Result<RunState> {
    let state: RunState = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(path, format!("corrupted run state: {e}")))?;
    if state.version != STATE_VERSION {
        return Err(Error::format(
            path,
            format!(
                "state version {} is not supported (expected {STATE_VERSION})",
                state.version
            ),
        ));
    }
    Ok(state)
}
