//! Continued pretraining from published weights: `deberta pretrain --init-from DIR
//! [--init-generator DIR2]`.
//!
//! DIR is a model directory in the official `microsoft/deberta-v3-*` layout (`config.json`,
//! `pytorch_model.bin` or `model.safetensors`, `spm.model` + `tokenizer_config.json` or
//! `tokenizer.json`) or one of our exports. Its `config.json` fixes the discriminator's shape
//! and its tokenizer the vocabulary; options that contradict them are an error.
//!
//! * The discriminator takes every backbone tensor of DIR, and the RTD head
//!   (`mask_predictions.*`) when DIR has one, else the head is initialised as from scratch.
//! * The generator: DIR2's weights when given; else a fresh generator of the preset's
//!   generator depth at the discriminator's width, initialised as from scratch except its word
//!   table, which starts as DIR's.
//! * Under GDES (`E_D = sg(E_G) + E_Δ`), `E_Δ = E_D − E_G` with `E_D` the checkpoint's table:
//!   zero for a fresh generator, so that the discriminator starts exactly as published. Under
//!   ES the one shared table is DIR's; under NES each model keeps its own.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use deberta_core::train::{RtdPair, Sharing};
use deberta_core::{Backend, ModelConfig};

use super::options::{ModelOverrides, PretrainFlags, PretrainOptions};
use crate::checkpoint::TensorMap;
use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::hf_config::read_config;
use crate::model_dir::read_model_dir;
use crate::tensor::TensorData;

/// The word table's name in a checkpoint.
const WORD_TABLE: &str = "deberta.embeddings.word_embeddings.weight";

/// The absolute-position table's name (the EMD's, in a pretraining generator).
const POSITION_TABLE: &str = "deberta.embeddings.position_embeddings.weight";

/// A model directory read for initialisation.
pub struct InitSource {
    /// The directory.
    pub dir: PathBuf,
    /// Its validated configuration.
    pub config: ModelConfig,
    tensors: TensorMap,
    weights_path: PathBuf,
}

impl InitSource {
    /// Reads `dir`'s `config.json` and weights.
    pub fn read(dir: &Path) -> Result<Self> {
        let (hf, tensors, weights_path) = read_model_dir(dir)?;
        Ok(InitSource {
            dir: dir.to_path_buf(),
            config: hf.model,
            tensors,
            weights_path,
        })
    }

    /// The float values of tensor `name`, checked against `shape`; `None` when absent.
    fn values(&self, name: &str, shape: &[usize]) -> Result<Option<&[f32]>> {
        let Some(tensor) = self.tensors.get(name) else {
            return Ok(None);
        };
        let bad = |reason: String| Error::BadTensor {
            path: self.weights_path.clone(),
            name: name.to_string(),
            reason,
        };
        if tensor.shape != shape {
            return Err(bad(format!(
                "shape {:?} does not match the model's {shape:?}",
                tensor.shape
            )));
        }
        match &tensor.data {
            TensorData::Float(v) => Ok(Some(v)),
            TensorData::Int(_) => Err(bad(format!(
                "dtype {} is not a floating-point type",
                tensor.stored_as
            ))),
        }
    }
}

/// The weights a run starts from: DIR, and DIR2 when given.
pub struct InitSources {
    /// The discriminator's directory.
    pub discriminator: InitSource,
    /// The generator's, when given.
    pub generator: Option<InitSource>,
}

impl InitSources {
    /// Reads `--init-from` and `--init-generator` of `options` (`None` without them).
    pub fn read(options: &PretrainOptions) -> Result<Option<Self>> {
        let Some(dir) = &options.init_from else {
            return Ok(None);
        };
        Ok(Some(InitSources {
            discriminator: InitSource::read(dir)?,
            generator: options
                .init_generator
                .as_deref()
                .map(InitSource::read)
                .transpose()?,
        }))
    }

    /// DIR's tokenizer, after checking that no option contradicts DIR and that the tokenizer
    /// fits the checkpoint's vocabulary.
    pub fn tokenizer(&self, flags: &PretrainFlags) -> Result<Tokenizer> {
        let dir = &self.discriminator.dir;
        let shown = dir.display();
        if flags.tokenizer.is_some() {
            return Err(Error::Usage(format!(
                "--tokenizer contradicts --init-from: the tokenizer is {shown}'s"
            )));
        }
        if let Some(vocab) = flags.vocab_size {
            return Err(Error::Usage(format!(
                "--vocab-size {vocab} contradicts --init-from: the vocabulary is {shown}'s"
            )));
        }
        if let Some(model) = &flags.model {
            contradictions(model, &self.discriminator.config, dir)?;
        }
        let tokenizer = Tokenizer::from_dir(dir)?;
        let vocab = self.discriminator.config.vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::format(
                dir,
                format!(
                    "the tokenizer has {} tokens, more than the checkpoint's vocabulary of {vocab}",
                    tokenizer.vocab_size()
                ),
            ));
        }
        Ok(tokenizer)
    }

    /// The discriminator's and generator's configurations: DIR's (DIR2's), dropout from the
    /// options; a fresh generator is the discriminator at the preset's generator depth.
    pub fn configs(&self, options: &PretrainOptions) -> Result<(ModelConfig, ModelConfig)> {
        let generator = match &self.generator {
            Some(source) => source.config,
            None => ModelConfig {
                num_hidden_layers: options.generator_layers()?,
                ..self.discriminator.config
            },
        };
        run_configs(options, self.discriminator.config, generator)
    }

    /// The first weights of the pair: see the module documentation. Returns the weights and
    /// one-line warnings (checkpoint tensors left unused).
    pub fn params<B: Backend>(
        &self,
        backend: &B,
        pair: &RtdPair,
        seed: u64,
    ) -> Result<(deberta_core::model::ParamStore<B::Tensor>, Vec<String>)> {
        let upload_error = |e| Error::model("initialising weights", e);
        let mut params = pair
            .layout
            .initialise(backend, seed)
            .map_err(upload_error)?;
        if pair.position_delta.is_some() {
            return Err(Error::Usage(
                "--init-from: a shared absolute-position table under GDES (position_biased_input) is not supported"
                    .into(),
            ));
        }
        let disc = &self.discriminator;
        let mut used: HashSet<&str> = HashSet::new();
        let mut missing = Vec::new();
        let mut missing_generator = Vec::new();
        let mut word = None;
        for (id, spec) in pair.layout.iter() {
            let generator_rest = spec.name.strip_prefix("generator.");
            if generator_rest == Some(WORD_TABLE) {
                word = Some((id, spec.shape.clone()));
            }
            let (source, rest, missing) = match (
                spec.name.strip_prefix("discriminator."),
                generator_rest,
                &self.generator,
            ) {
                (Some(rest), _, _) => (disc, rest, &mut missing),
                (_, Some(rest), Some(generator)) => (generator, rest, &mut missing_generator),
                _ => continue,
            };
            let is_discriminator = generator_rest.is_none();
            match source.values(rest, &spec.shape)? {
                Some(values) => {
                    if is_discriminator {
                        used.insert(rest);
                    }
                    params.set(id, backend.upload(values).map_err(upload_error)?);
                }
                // Initialised as from scratch: the RTD head of a checkpoint without one, and
                // the EMD's position table, which transformers' generators do not have.
                None if is_discriminator && rest.starts_with("mask_predictions.") => {}
                None if !is_discriminator && rest == POSITION_TABLE => {}
                None => missing.push(rest.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(Error::MissingTensors {
                path: disc.weights_path.clone(),
                names: missing,
            });
        }
        if let (Some(generator), false) = (&self.generator, missing_generator.is_empty()) {
            return Err(Error::MissingTensors {
                path: generator.weights_path.clone(),
                names: missing_generator,
            });
        }
        // The tables shared with the generator: E_G (and E_Δ under GDES).
        let (word_id, shape) =
            word.ok_or_else(|| Error::Usage("the generator has no word table".into()))?;
        let published = disc
            .values(WORD_TABLE, &shape)?
            .ok_or_else(|| Error::MissingTensors {
                path: disc.weights_path.clone(),
                names: vec![WORD_TABLE.into()],
            })?;
        used.insert(WORD_TABLE);
        match (pair.sharing, &self.generator, pair.word_delta) {
            (Sharing::Gdes, Some(generator), Some(delta)) => {
                let own =
                    generator
                        .values(WORD_TABLE, &shape)?
                        .ok_or_else(|| Error::MissingTensors {
                            path: generator.weights_path.clone(),
                            names: vec![WORD_TABLE.into()],
                        })?;
                let difference: Vec<f32> = published.iter().zip(own).map(|(d, g)| d - g).collect();
                params.set(delta, backend.upload(&difference).map_err(upload_error)?);
            }
            (Sharing::Gdes | Sharing::Es, None, _) | (Sharing::Es, Some(_), _) => {
                params.set(word_id, backend.upload(published).map_err(upload_error)?);
            }
            _ => {}
        }
        let unused: Vec<&str> = disc
            .tensors
            .keys()
            .map(String::as_str)
            .filter(|name| !used.contains(name))
            .collect();
        let warnings = match unused.is_empty() {
            true => Vec::new(),
            false => vec![format!(
                "{}: {} tensor(s) not used to initialise the discriminator: {}{}",
                disc.weights_path.display(),
                unused.len(),
                unused[..unused.len().min(4)].join(", "),
                if unused.len() > 4 { ", …" } else { "" }
            )],
        };
        Ok((params, warnings))
    }
}

/// Errors for `[model]` values that differ from the checkpoint's configuration.
fn contradictions(model: &ModelOverrides, config: &ModelConfig, dir: &Path) -> Result<()> {
    let pairs = [
        ("hidden_size", model.hidden_size, config.hidden_size),
        (
            "num_hidden_layers",
            model.num_hidden_layers,
            config.num_hidden_layers,
        ),
        (
            "num_attention_heads",
            model.num_attention_heads,
            config.num_attention_heads,
        ),
        (
            "intermediate_size",
            model.intermediate_size,
            config.intermediate_size,
        ),
        (
            "position_buckets",
            model.position_buckets,
            config.position_buckets,
        ),
        (
            "max_relative_positions",
            model.max_relative_positions,
            config.max_relative_positions,
        ),
        (
            "max_position_embeddings",
            model.max_position_embeddings,
            config.max_position_embeddings,
        ),
    ];
    for (name, given, actual) in pairs {
        if let Some(given) = given.filter(|&g| g != actual) {
            return Err(Error::Usage(format!(
                "[model] {name} = {given} contradicts --init-from: {}/config.json has {actual}",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// The configurations a run trains: dropout from the options; `--max-seq-len` must fit.
fn run_configs(
    options: &PretrainOptions,
    discriminator: ModelConfig,
    generator: ModelConfig,
) -> Result<(ModelConfig, ModelConfig)> {
    let with_dropout = |config: ModelConfig| ModelConfig {
        hidden_dropout_prob: options.dropout,
        attention_probs_dropout_prob: options.attention_dropout,
        ..config
    };
    if options.max_seq_len > discriminator.max_position_embeddings {
        return Err(Error::Usage(format!(
            "--max-seq-len {} exceeds max_position_embeddings {} of the checkpoint",
            options.max_seq_len, discriminator.max_position_embeddings
        )));
    }
    Ok((with_dropout(discriminator), with_dropout(generator)))
}

/// The configurations of a resumed `--init-from` run: those of its latest checkpoint.
pub fn resumed_configs(
    run_dir: &Path,
    options: &PretrainOptions,
) -> Result<(ModelConfig, ModelConfig)> {
    let read = |part: &str| read_config(&run_dir.join(part).join("config.json"));
    run_configs(
        options,
        read("discriminator")?.model,
        read("generator")?.model,
    )
}
