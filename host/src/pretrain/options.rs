//! Every option of a pretraining run, resolved from (lowest to highest priority) built-in
//! defaults, the preset, a `--config` TOML file and command-line flags — or, when resuming,
//! from the run's saved state with flags on top.

use std::path::{Path, PathBuf};

use deberta_core::config::{PosAttType, RawConfig};
use deberta_core::{Activation, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Architecture overrides (`[model]` in a `--config` file); unset fields come from the preset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    /// Hidden size.
    pub hidden_size: Option<usize>,
    /// Discriminator layers.
    pub num_hidden_layers: Option<usize>,
    /// Generator layers (default: half the discriminator's).
    pub generator_layers: Option<usize>,
    /// Attention heads.
    pub num_attention_heads: Option<usize>,
    /// Feed-forward width.
    pub intermediate_size: Option<usize>,
    /// Log-bucket count.
    pub position_buckets: Option<usize>,
    /// Maximum relative distance.
    pub max_relative_positions: Option<usize>,
    /// Absolute positions (the EMD table) and the longest sequence.
    pub max_position_embeddings: Option<usize>,
}

/// All options of `deberta pretrain` (the resolved values; see [`PretrainFlags`] for what a
/// user may set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainOptions {
    /// Text files or directories.
    pub corpus: Vec<PathBuf>,
    /// A tokenizer (`tokenizer.json`, `spm.model` or a directory) to use instead of training
    /// one.
    pub tokenizer: Option<PathBuf>,
    /// A model directory (official layout or an export) the discriminator starts from; its
    /// config and tokenizer fix the model shape and vocabulary.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// A model directory (`DebertaV2ForMaskedLM`) the generator starts from, with
    /// `init_from`; without it the generator is fresh, its word table the discriminator's.
    #[serde(default)]
    pub init_generator: Option<PathBuf>,
    /// Vocabulary size when training a tokenizer.
    pub vocab_size: usize,
    /// Replace invalid UTF-8 instead of failing.
    pub lossy: bool,
    /// Model preset: nano, xsmall, small, base, large.
    pub preset: String,
    /// Architecture overrides.
    pub model: ModelOverrides,
    /// Run length in optimizer steps (the learning-rate schedule's horizon).
    pub steps: u64,
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// Micro-batches per step (the batch is split into this many forward/backward passes).
    pub grad_accum: usize,
    /// Tokens per sequence, `[CLS]` and `[SEP]` included.
    pub max_seq_len: usize,
    /// Seed of every random draw (initialisation, data order, masking, sampling, dropout).
    pub seed: u64,
    /// Compute backend: cpu, wgpu or auto.
    pub backend: String,
    /// CPU threads (default: all cores).
    pub threads: Option<usize>,
    /// Data-parallel runs: MiB of gradient values per bucket exchanged while the backward pass
    /// goes on (`0`: one exchange after it).
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: f64,
    /// Number format of the products: `f32`, `mixed` (the backend's mixed precision with
    /// dynamic loss scaling: f16 `Linear` products on wgpu with `SHADER_F16`, bf16 on the CPU)
    /// or `bf16-mixed` (bf16 `Linear` products, no loss scaling; CPU backend); f32 master
    /// weights, optimizer state and gradients in all.
    #[serde(default = "default_precision")]
    pub precision: String,
    /// With wgpu: the adapter whose name contains this.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Embedding sharing: gdes, es or nes.
    pub sharing: String,
    /// Update schedule: decoupled or joint.
    pub schedule: String,
    /// λ, the weight of the RTD loss.
    pub rtd_weight: f32,
    /// Peak learning rate.
    pub lr: f32,
    /// Peak learning rate of the discriminator's parameters (its own optimizer in the decoupled
    /// schedule, its parameter group in the joint one); `None`: `lr`.
    #[serde(default)]
    pub discriminator_lr: Option<f32>,
    /// Warm-up as a fraction of the run.
    pub warmup: f64,
    /// Optimizer: xadam (official) or adamw.
    pub optimizer: String,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip per optimizer (0 disables).
    pub clip: f32,
    /// Route the generator's MLM through the Enhanced Mask Decoder.
    pub emd: bool,
    /// Masking: official (15 % stratified, all `[MASK]`), bert-80-10-10 or whole-word.
    pub masking: String,
    /// Hidden-state dropout.
    pub dropout: f32,
    /// Attention-probability dropout.
    pub attention_dropout: f32,
    /// Evaluate on the held-out split every N steps (0 = only at the end).
    pub eval_every: u64,
    /// Held-out batches per evaluation.
    pub eval_batches: usize,
    /// Checkpoint every N steps (0 = only at the end).
    pub save_every: u64,
    /// Older checkpoints kept under `checkpoints/`.
    pub keep: usize,
    /// Write a training row to `metrics.jsonl` every N steps.
    pub log_every: u64,
}

/// The published DeBERTa-v3 shapes plus `nano`.
pub const PRESETS: &[&str] = &["nano", "xsmall", "small", "base", "large"];

impl PretrainOptions {
    /// The defaults of a preset.
    ///
    /// `nano` is the recipe of the README's main command: it must show, in about ten minutes
    /// on two CPU cores, a generator that learns the language and a discriminator that learns
    /// to find its replacements. What it changes from the official recipe, and why (the study
    /// behind each choice is in the README, "The nano recipe"):
    /// - vocabulary 2000: at 8000 even a count-based bigram predictor reaches only 17 % MLM
    ///   accuracy on the bundled corpus (24 % at 2000), and the embeddings are most of a
    ///   128-wide model;
    /// - 64-token sequences, batch 16, 10,000 steps: the most updates the budget allows with
    ///   a margin (about eight minutes on two cores; the discriminator still reads 128-token
    ///   inputs: relative positions, no absolute table);
    /// - AdamW at 2e-3 for the generator, 5e-4 for the discriminator, 10 % warm-up, no dropout:
    ///   XAdam has no bias correction (its first updates are up to 6× Adam's), which only the
    ///   official 10,000-step warm-up tames; and a post-LN discriminator at 1e-3 or more
    ///   collapses within the first hundred steps to a constant output (dead GELU units in its
    ///   RTD head, in PyTorch as in ours), a state it never leaves.
    ///
    /// The other presets keep the official recipe: XAdam at 1e-4, 1 % warm-up, dropout 0.1.
    pub fn preset(name: &str) -> Result<Self> {
        if !PRESETS.contains(&name) {
            return Err(Error::Usage(format!(
                "unknown preset \"{name}\" (choose one of {})",
                PRESETS.join(", ")
            )));
        }
        let nano = name == "nano";
        Ok(PretrainOptions {
            corpus: vec![default_corpus()],
            tokenizer: None,
            init_from: None,
            init_generator: None,
            vocab_size: if nano { 2000 } else { 32000 },
            lossy: false,
            preset: name.to_string(),
            model: ModelOverrides::default(),
            steps: 10_000,
            batch_size: if nano { 16 } else { 64 },
            grad_accum: 1,
            max_seq_len: if nano { 64 } else { 512 },
            seed: 1234,
            backend: "cpu".into(),
            threads: None,
            bucket_mb: default_bucket_mb(),
            precision: default_precision(),
            adapter: None,
            sharing: "gdes".into(),
            schedule: "decoupled".into(),
            rtd_weight: 50.0,
            lr: if nano { 2e-3 } else { 1e-4 },
            discriminator_lr: nano.then_some(5e-4),
            warmup: if nano { 0.1 } else { 0.01 },
            optimizer: if nano { "adamw" } else { "xadam" }.into(),
            weight_decay: 0.01,
            clip: 1.0,
            emd: true,
            masking: "official".into(),
            dropout: if nano { 0.0 } else { 0.1 },
            attention_dropout: if nano { 0.0 } else { 0.1 },
            eval_every: if nano { 200 } else { 1000 },
            eval_batches: if nano { 8 } else { 16 },
            save_every: if nano { 400 } else { 1000 },
            keep: 2,
            log_every: 1,
        })
    }

    /// The preset's `(hidden, layers, heads)`.
    fn preset_shape(&self) -> Result<(usize, usize, usize)> {
        Ok(match self.preset.as_str() {
            "nano" => (128, 4, 4),
            "xsmall" => (384, 12, 6),
            "small" => (768, 6, 12),
            "base" => (768, 12, 12),
            "large" => (1024, 24, 16),
            other => return Err(Error::Usage(format!("unknown preset \"{other}\""))),
        })
    }

    /// The generator's depth: `[model] generator_layers`, else half the discriminator's
    /// (`[model] num_hidden_layers` or the preset's), at least 1.
    pub fn generator_layers(&self) -> Result<usize> {
        let (_, layers, _) = self.preset_shape()?;
        let layers = self.model.num_hidden_layers.unwrap_or(layers);
        Ok(self.model.generator_layers.unwrap_or((layers / 2).max(1)))
    }

    /// The discriminator and generator configurations for a vocabulary of `vocab` tokens.
    pub fn model_configs(&self, vocab: usize, pad: usize) -> Result<(ModelConfig, ModelConfig)> {
        let (hidden, layers, heads) = self.preset_shape()?;
        let nano = self.preset == "nano";
        let m = &self.model;
        let hidden = m.hidden_size.unwrap_or(hidden);
        let heads = m.num_attention_heads.unwrap_or(heads);
        let layers = m.num_hidden_layers.unwrap_or(layers);
        let generator_layers = self.generator_layers()?;
        let raw = |layers: usize| RawConfig {
            vocab_size: Some(vocab as i64),
            hidden_size: Some(hidden as i64),
            num_hidden_layers: Some(layers as i64),
            num_attention_heads: Some(heads as i64),
            intermediate_size: Some(m.intermediate_size.unwrap_or(4 * hidden) as i64),
            hidden_act: Some(Activation::Gelu),
            hidden_dropout_prob: Some(f64::from(self.dropout)),
            attention_probs_dropout_prob: Some(f64::from(self.attention_dropout)),
            max_position_embeddings: Some(m.max_position_embeddings.unwrap_or(512) as i64),
            type_vocab_size: Some(0),
            layer_norm_eps: Some(1e-7),
            relative_attention: Some(true),
            position_buckets: Some(m.position_buckets.unwrap_or(if nano { 64 } else { 256 }) as i64),
            max_relative_positions: Some(m.max_relative_positions.unwrap_or(if nano {
                128
            } else {
                512
            }) as i64),
            pad_token_id: Some(pad as i64),
            position_biased_input: Some(false),
            pos_att_type: Some(PosAttType {
                c2p: true,
                p2c: true,
            }),
            share_att_key: Some(true),
            norm_rel_ebd_layer_norm: Some(true),
            ..RawConfig::default()
        };
        let check = |raw: RawConfig| {
            ModelConfig::from_raw(&raw)
                .map_err(|e| Error::Usage(format!("model configuration: {e}")))
        };
        let discriminator = check(raw(layers))?;
        let generator = check(raw(generator_layers))?;
        if self.max_seq_len > discriminator.max_position_embeddings {
            return Err(Error::Usage(format!(
                "--max-seq-len {} exceeds max_position_embeddings {}",
                self.max_seq_len, discriminator.max_position_embeddings
            )));
        }
        Ok((discriminator, generator))
    }

    /// Checks value ranges and choices.
    pub fn validate(&self) -> Result<()> {
        let usage = |m: String| Err(Error::Usage(m));
        let choice = |flag: &str, value: &str, allowed: &[&str]| -> Result<()> {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(Error::Usage(format!(
                    "--{flag} {value}: choose one of {}",
                    allowed.join(", ")
                )))
            }
        };
        choice("preset", &self.preset, PRESETS)?;
        choice("sharing", &self.sharing, &["gdes", "es", "nes"])?;
        choice("schedule", &self.schedule, &["decoupled", "joint"])?;
        choice("optimizer", &self.optimizer, &["xadam", "adamw"])?;
        choice(
            "masking",
            &self.masking,
            &["official", "bert-80-10-10", "whole-word"],
        )?;
        choice("backend", &self.backend, &["cpu", "wgpu", "auto"])?;
        let training = deberta_core::Precision::TRAINING.map(deberta_core::Precision::name);
        choice("precision", &self.precision, &training)?;
        if self.precision == "bf16-mixed" && self.backend != "cpu" {
            return usage(format!(
                "--precision {} runs on the CPU backend only (use --backend cpu, or --precision \
                 mixed)",
                self.precision
            ));
        }
        if self.corpus.is_empty() {
            return usage("--corpus: give at least one file or directory".into());
        }
        if self.steps == 0 || self.batch_size == 0 || self.grad_accum == 0 || self.log_every == 0 {
            return usage(
                "--steps, --batch-size, --grad-accum and --log-every must be at least 1".into(),
            );
        }
        if !self.batch_size.is_multiple_of(self.grad_accum) {
            return usage(format!(
                "--batch-size {} is not divisible by --grad-accum {}",
                self.batch_size, self.grad_accum
            ));
        }
        if self.max_seq_len < 8 {
            return usage("--max-seq-len must be at least 8".into());
        }
        let positive = |lr: f32| lr > 0.0 && lr.is_finite();
        if self.discriminator_lr.is_some_and(|lr| !positive(lr)) {
            return usage("--discriminator-lr must be positive".into());
        }
        let lr_ok = positive(self.lr);
        if !lr_ok || !(0.0..1.0).contains(&self.warmup) {
            return usage("--lr must be positive and --warmup a fraction in [0, 1)".into());
        }
        for (flag, p) in [
            ("dropout", self.dropout),
            ("attention-dropout", self.attention_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return usage(format!("--{flag} must be in [0, 1)"));
            }
        }
        if !(self.bucket_mb >= 0.0 && self.bucket_mb.is_finite()) {
            return usage("--bucket-mb must be a size in MiB, at least 0".into());
        }
        if self.vocab_size < 16 {
            return usage("--vocab-size must be at least 16".into());
        }
        Ok(())
    }

    /// Options whose change would alter the model or the data a resumed run sees: a resume
    /// refuses to change them. Returns the name of the first difference. (`--grad-accum` may
    /// change with the process count of a data-parallel run as long as the micro-batches of a
    /// step stay the same: `pretrain` checks that.)
    pub fn incompatible_change(&self, saved: &PretrainOptions) -> Option<&'static str> {
        let checks: [(&'static str, bool); 18] = [
            ("corpus", self.corpus != saved.corpus),
            ("tokenizer", self.tokenizer != saved.tokenizer),
            ("init-from", self.init_from != saved.init_from),
            (
                "init-generator",
                self.init_generator != saved.init_generator,
            ),
            ("vocab-size", self.vocab_size != saved.vocab_size),
            ("lossy", self.lossy != saved.lossy),
            ("preset", self.preset != saved.preset),
            ("config [model]", self.model != saved.model),
            ("batch-size", self.batch_size != saved.batch_size),
            ("max-seq-len", self.max_seq_len != saved.max_seq_len),
            ("seed", self.seed != saved.seed),
            ("sharing", self.sharing != saved.sharing),
            ("schedule", self.schedule != saved.schedule),
            ("optimizer", self.optimizer != saved.optimizer),
            ("emd", self.emd != saved.emd),
            ("masking", self.masking != saved.masking),
            ("dropout", self.dropout != saved.dropout),
            (
                "attention-dropout",
                self.attention_dropout != saved.attention_dropout,
            ),
        ];
        checks
            .into_iter()
            .find(|(_, changed)| *changed)
            .map(|(name, _)| name)
    }
}

/// The default `--precision`: f32.
fn default_precision() -> String {
    "f32".into()
}

/// The default `--bucket-mb`: 1 MiB of gradient values per bucket. PyTorch DDP's 25 MiB suits
/// models of hundreds of MiB of gradients; at the nano preset's 7 MiB it would leave nothing to
/// overlap, and 1 MiB keeps the per-bucket cost (one immediate all-gather of the lengths, one of
/// the messages) well under the transfer time.
fn default_bucket_mb() -> f64 {
    1.0
}

/// The bundled public-domain corpus: `data/shakespeare/texts` of the working directory, else
/// the copy in the source tree this binary was built from (the texts only: the directory's
/// README and preparation script are not corpus).
pub fn default_corpus() -> PathBuf {
    let local = Path::new("data").join("shakespeare").join("texts");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("data")
        .join("shakespeare")
        .join("texts")
}

/// Options as they may appear in a `--config` TOML file: any subset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainFlags {
    /// See [`PretrainOptions`]; every field optional.
    pub corpus: Option<Vec<PathBuf>>,
    #[allow(missing_docs)]
    pub tokenizer: Option<PathBuf>,
    #[allow(missing_docs)]
    pub init_from: Option<PathBuf>,
    #[allow(missing_docs)]
    pub init_generator: Option<PathBuf>,
    #[allow(missing_docs)]
    pub vocab_size: Option<usize>,
    #[allow(missing_docs)]
    pub lossy: Option<bool>,
    #[allow(missing_docs)]
    pub preset: Option<String>,
    #[allow(missing_docs)]
    pub model: Option<ModelOverrides>,
    #[allow(missing_docs)]
    pub steps: Option<u64>,
    #[allow(missing_docs)]
    pub batch_size: Option<usize>,
    #[allow(missing_docs)]
    pub grad_accum: Option<usize>,
    #[allow(missing_docs)]
    pub max_seq_len: Option<usize>,
    #[allow(missing_docs)]
    pub seed: Option<u64>,
    #[allow(missing_docs)]
    pub backend: Option<String>,
    #[allow(missing_docs)]
    pub threads: Option<usize>,
    #[allow(missing_docs)]
    pub bucket_mb: Option<f64>,
    #[allow(missing_docs)]
    pub precision: Option<String>,
    #[allow(missing_docs)]
    pub adapter: Option<String>,
    #[allow(missing_docs)]
    pub sharing: Option<String>,
    #[allow(missing_docs)]
    pub schedule: Option<String>,
    #[allow(missing_docs)]
    pub rtd_weight: Option<f32>,
    #[allow(missing_docs)]
    pub lr: Option<f32>,
    #[allow(missing_docs)]
    pub discriminator_lr: Option<f32>,
    #[allow(missing_docs)]
    pub warmup: Option<f64>,
    #[allow(missing_docs)]
    pub optimizer: Option<String>,
    #[allow(missing_docs)]
    pub weight_decay: Option<f32>,
    #[allow(missing_docs)]
    pub clip: Option<f32>,
    #[allow(missing_docs)]
    pub emd: Option<bool>,
    #[allow(missing_docs)]
    pub masking: Option<String>,
    #[allow(missing_docs)]
    pub dropout: Option<f32>,
    #[allow(missing_docs)]
    pub attention_dropout: Option<f32>,
    #[allow(missing_docs)]
    pub eval_every: Option<u64>,
    #[allow(missing_docs)]
    pub eval_batches: Option<usize>,
    #[allow(missing_docs)]
    pub save_every: Option<u64>,
    #[allow(missing_docs)]
    pub keep: Option<usize>,
    #[allow(missing_docs)]
    pub log_every: Option<u64>,
}

impl PretrainFlags {
    /// Reads a TOML file of options.
    pub fn from_toml(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| {
            let message = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            Error::format(path, format!("invalid config: {message}"))
        })
    }

    /// `self` over `lower`: each set field of `self` wins.
    pub fn over(self, lower: PretrainFlags) -> PretrainFlags {
        macro_rules! pick {
            ($($field:ident),*) => { PretrainFlags { $($field: self.$field.or(lower.$field)),* } };
        }
        pick!(
            corpus,
            tokenizer,
            init_from,
            init_generator,
            vocab_size,
            lossy,
            preset,
            model,
            steps,
            batch_size,
            grad_accum,
            max_seq_len,
            seed,
            backend,
            threads,
            bucket_mb,
            precision,
            adapter,
            sharing,
            schedule,
            rtd_weight,
            lr,
            discriminator_lr,
            warmup,
            optimizer,
            weight_decay,
            clip,
            emd,
            masking,
            dropout,
            attention_dropout,
            eval_every,
            eval_batches,
            save_every,
            keep,
            log_every
        )
    }

    /// Applies the set fields to `options`.
    pub fn apply(self, mut options: PretrainOptions) -> PretrainOptions {
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { options.$field = v; })* };
        }
        set!(
            corpus,
            vocab_size,
            lossy,
            preset,
            model,
            steps,
            batch_size,
            grad_accum,
            max_seq_len,
            seed,
            backend,
            bucket_mb,
            precision,
            sharing,
            schedule,
            rtd_weight,
            lr,
            warmup,
            optimizer,
            weight_decay,
            clip,
            emd,
            masking,
            dropout,
            attention_dropout,
            eval_every,
            eval_batches,
            save_every,
            keep,
            log_every
        );
        if self.discriminator_lr.is_some() {
            options.discriminator_lr = self.discriminator_lr;
        }
        if self.tokenizer.is_some() {
            options.tokenizer = self.tokenizer;
        }
        if self.init_from.is_some() {
            options.init_from = self.init_from;
        }
        if self.init_generator.is_some() {
            options.init_generator = self.init_generator;
        }
        if self.threads.is_some() {
            options.threads = self.threads;
        }
        if self.adapter.is_some() {
            options.adapter = self.adapter;
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_preset_and_toml() {
        let toml_flags: PretrainFlags =
            toml::from_str("steps = 7\nlr = 0.5\n[model]\nhidden_size = 64\n").unwrap();
        let cli = PretrainFlags {
            steps: Some(9),
            ..PretrainFlags::default()
        };
        let merged = cli.over(toml_flags);
        let options = merged.apply(PretrainOptions::preset("nano").unwrap());
        assert_eq!(options.steps, 9);
        assert_eq!(options.lr, 0.5);
        assert_eq!(options.model.hidden_size, Some(64));
        options.validate().unwrap();
        let (disc, generator) = options.model_configs(100, 0).unwrap();
        assert_eq!(
            (
                disc.hidden_size,
                disc.num_hidden_layers,
                generator.num_hidden_layers
            ),
            (64, 4, 2)
        );
        assert!(toml::from_str::<PretrainFlags>("stepz = 1").is_err());
    }

    #[test]
    fn bucket_sizes_are_checked_and_free_to_change_on_resume() {
        let saved = PretrainOptions::preset("nano").unwrap();
        assert_eq!(saved.bucket_mb, 1.0);
        let mut changed = saved.clone();
        changed.bucket_mb = 0.0;
        changed.validate().unwrap();
        assert_eq!(changed.incompatible_change(&saved), None);
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            changed.bucket_mb = bad;
            assert!(changed.validate().is_err(), "--bucket-mb {bad} accepted");
        }
        // Options saved before the flag existed read as the default.
        let mut json = serde_json::to_value(&saved).unwrap();
        json.as_object_mut().unwrap().remove("bucket_mb");
        let read: PretrainOptions = serde_json::from_value(json).unwrap();
        assert_eq!(read, saved);
    }

    #[test]
    fn resume_refuses_model_or_data_changes() {
        let saved = PretrainOptions::preset("nano").unwrap();
        let mut changed = saved.clone();
        changed.threads = Some(1);
        changed.steps = 500;
        assert_eq!(changed.incompatible_change(&saved), None);
        changed.seed = 9;
        assert_eq!(changed.incompatible_change(&saved), Some("seed"));
    }
}
