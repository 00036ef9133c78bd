//! Finding a model in what the user names (a pretraining run directory, one of its checkpoint
//! directories, or a Hugging Face model directory) and exporting it as a Hugging Face model
//! directory (`deberta export --format hf`).
//!
//! The exported directory holds exactly what transformers' `save_pretrained` writes for the
//! model: `config.json` with the `DebertaV2Config` keys ([`crate::hf_config::config_json`]),
//! `model.safetensors` (float32, metadata `{"format": "pt"}`) with the transformers state-dict
//! names, and the source's tokenizer in the form it came in: `tokenizer.json`, or `spm.model`
//! with `tokenizer_config.json` (both byte for byte), which `AutoTokenizer` loads as
//! `DebertaV2Tokenizer`.
//!
//! * The discriminator: `deberta.*` (the GDES word table `E_G + E_Δ` already merged by the
//!   checkpoint) and the RTD head `mask_predictions.{dense,LayerNorm,classifier}.*`, with
//!   `architectures: ["DebertaV2Model"]`. transformers has no class for the RTD head: its
//!   `DebertaV2Model` loads the backbone and reports the `mask_predictions.*` tensors as unused,
//!   exactly as with the official `microsoft/deberta-v3-*` checkpoints, which carry the same
//!   head; this crate's loader (and `deberta detect`) runs it.
//! * The generator: `deberta.*` and `lm_predictions.lm_head.*` (`DebertaV2ForMaskedLM`,
//!   `legacy: false`). The Enhanced Mask Decoder's absolute position table of a pretraining
//!   generator is left out: transformers has no Enhanced Mask Decoder and no such tensor.
//!
//! The directory is written under a temporary name beside the destination, checked by loading
//! it back, and renamed into place, so the destination is either absent, its previous contents,
//! or the complete export.

use std::path::{Path, PathBuf};

use deberta_core::model::MlmLayout;

use crate::checkpoint::TensorMap;
use crate::data::spm_tokenizer::SPM_MODEL_FILE;
use crate::data::tokenizer::TOKENIZER_JSON_FILE;
use crate::data::{SpmTokenizer, Tokenizer};
use crate::error::{Error, Result};
use crate::hf_config::config_json;
use crate::model_dir::{LoadedModel, load_model_dir};
use crate::pretrain::checkpoint::write_hf_dir;
use crate::tensor::HostTensor;

/// One of the two models of a pretraining run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelPart {
    /// The discriminator (RTD head, `mask_predictions.*`).
    Discriminator,
    /// The generator (MLM head, `lm_predictions.lm_head.*`).
    Generator,
}

impl ModelPart {
    /// The subdirectory of a run (and of a checkpoint) that holds the model.
    pub fn dir_name(self) -> &'static str {
        match self {
            ModelPart::Discriminator => "discriminator",
            ModelPart::Generator => "generator",
        }
    }

    /// Parses `discriminator` or `generator`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "discriminator" => Ok(ModelPart::Discriminator),
            "generator" => Ok(ModelPart::Generator),
            other => Err(Error::Usage(format!(
                "--part {other}: choose discriminator or generator"
            ))),
        }
    }
}

const WHAT_IS_ACCEPTED: &str = "expected a run directory (with discriminator/ and generator/), \
     a checkpoint directory (RUN_DIR/checkpoints/step-N) or a Hugging Face model directory \
     (with config.json)";

/// The Hugging Face model directory `path` names for `part`: `path/<part>` when `path` is a
/// run directory or a checkpoint directory (`RUN_DIR/checkpoints/step-N`), else `path` itself
/// when it holds a `config.json`. Anything else is a one-line error naming `path`.
pub fn resolve_model_dir(path: &Path, part: ModelPart) -> Result<PathBuf> {
    let metadata = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !metadata.is_dir() {
        return Err(Error::format(
            path,
            format!("not a directory: {WHAT_IS_ACCEPTED}"),
        ));
    }
    let sub = path.join(part.dir_name());
    if sub.join("config.json").is_file() {
        return Ok(sub);
    }
    if path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if sub.is_symlink() && !sub.exists() {
        return Err(Error::format(
            &sub,
            "links to a checkpoint that no longer exists",
        ));
    }
    if sub.is_dir() {
        return Err(Error::format(
            &sub,
            "no config.json: an incomplete or damaged checkpoint",
        ));
    }
    if path.join("checkpoints").is_dir() || path.join("metrics.jsonl").is_file() {
        return Err(Error::format(
            path,
            format!(
                "a run directory without a checkpoint yet (no {}/)",
                part.dir_name()
            ),
        ));
    }
    Err(Error::format(
        path,
        format!("not a model: {WHAT_IS_ACCEPTED}"),
    ))
}

/// What [`export_hf`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct HfExportSummary {
    /// The model directory the export was read from.
    pub source: PathBuf,
    /// The class named in `config.json`'s `architectures`.
    pub architecture: &'static str,
    /// Tensors in `model.safetensors`.
    pub tensors: usize,
    /// Parameters in `model.safetensors`.
    pub parameters: usize,
    /// The tokenizer files written (`tokenizer.json`, or `spm.model` and
    /// `tokenizer_config.json`; none without a tokenizer).
    pub tokenizer: Vec<&'static str>,
    /// One-line warnings (ignored source tensors, no tokenizer).
    pub warnings: Vec<String>,
}

/// Options of [`export_hf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfExportOptions {
    /// Which model of a run.
    pub part: ModelPart,
    /// Replace a destination directory that is not empty.
    pub force: bool,
    /// Copy the source's tokenizer, in the form it has there.
    pub with_tokenizer: bool,
}

/// Exports the model `input` names (see [`resolve_model_dir`]) to the Hugging Face model
/// directory `out`. `out` must not exist, or be an empty directory, or `force` must be set;
/// it is never the source itself or a directory containing it.
pub fn export_hf(input: &Path, out: &Path, options: HfExportOptions) -> Result<HfExportSummary> {
    let source = resolve_model_dir(input, options.part)?;
    check_destination(out, &source, options.force)?;
    let loaded = load_model_dir(&source)?;
    let (architecture, legacy) = architecture(&loaded, &source, options.part)?;
    let config = config_json(loaded.config(), architecture, legacy);
    // A pretraining generator's Enhanced Mask Decoder position table is not a transformers
    // tensor; the loader reports it as unexpected, and the export leaves it out on purpose.
    let emd_table =
        "ignoring 1 unexpected tensor(s): deberta.embeddings.position_embeddings.weight";
    let mut warnings: Vec<String> = loaded
        .warnings
        .iter()
        .map(
            |w| match options.part == ModelPart::Generator && w.ends_with(emd_table) {
                true => "left out the Enhanced Mask Decoder's absolute position table \
                     (transformers' DebertaV2ForMaskedLM has no Enhanced Mask Decoder)"
                    .to_string(),
                false => w.clone(),
            },
        )
        .collect();
    let tokenizer = match options.with_tokenizer {
        false => Vec::new(),
        true => match Tokenizer::find_in_dir(&source)? {
            Some(path) => tokenizer_files(&path, loaded.config().vocab_size)?,
            None => {
                warnings.push(format!(
                    "{}: no tokenizer.json or spm.model; the export has none",
                    source.display()
                ));
                Vec::new()
            }
        },
    };
    let tensors: TensorMap = loaded
        .layout
        .specs()
        .iter()
        .zip(&loaded.weights)
        .map(|(spec, values)| {
            (
                spec.name.clone(),
                HostTensor::float(spec.shape.clone(), values.clone()),
            )
        })
        .collect();
    let parameters = tensors.values().map(HostTensor::numel).sum();
    let summary = HfExportSummary {
        source: source.clone(),
        architecture,
        tensors: tensors.len(),
        parameters,
        tokenizer: tokenizer.iter().map(|(name, _)| *name).collect(),
        warnings,
    };
    write_dir_atomically(out, options.force, |tmp| {
        write_hf_dir(tmp, config, &tensors, &tokenizer)?;
        drop(tensors);
        verify(tmp, &loaded)
    })?;
    Ok(summary)
}

/// The files of the tokenizer at `path`, checked: an `spm.model` (with the
/// `tokenizer_config.json` beside it, if any) must load and fit the model's `vocab` rows; a
/// `tokenizer.json` must load.
fn tokenizer_files(path: &Path, vocab: usize) -> Result<Vec<(&'static str, Vec<u8>)>> {
    if path.file_name().is_some_and(|name| name == SPM_MODEL_FILE) {
        let tokenizer = SpmTokenizer::load(path)?;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::format(
                path,
                format!(
                    "the tokenizer has {} tokens, more than the model's vocabulary of {vocab}",
                    tokenizer.vocab_size()
                ),
            ));
        }
        return Ok(tokenizer
            .files()
            .into_iter()
            .map(|(name, bytes)| (name, bytes.to_vec()))
            .collect());
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    tokenizers::Tokenizer::from_bytes(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid tokenizer: {e}")))?;
    Ok(vec![(TOKENIZER_JSON_FILE, bytes)])
}

/// The `architectures` entry and the `legacy` flag for the part, after checking that the
/// model has the part's head.
fn architecture(
    loaded: &LoadedModel,
    source: &Path,
    part: ModelPart,
) -> Result<(&'static str, bool)> {
    let model = &loaded.model;
    match part {
        ModelPart::Discriminator => match model.rtd_head {
            Some(_) => Ok(("DebertaV2Model", false)),
            None => Err(Error::format(
                source,
                "no RTD head (mask_predictions.*): not a discriminator (use --part generator for a generator)",
            )),
        },
        ModelPart::Generator => match model.mlm_head.as_ref().map(|h| h.layout) {
            Some(MlmLayout::LmPredictions) => Ok(("DebertaV2ForMaskedLM", false)),
            Some(MlmLayout::ClsPredictions) => Ok(("DebertaV2ForMaskedLM", true)),
            None => Err(Error::format(
                source,
                "no MLM head (lm_predictions.* or cls.predictions.*): not a generator",
            )),
        },
    }
}

/// Loads the written directory back: same tensors, bit for bit, and nothing unexpected.
fn verify(dir: &Path, expected: &LoadedModel) -> Result<()> {
    let back = load_model_dir(dir)?;
    let same = back.layout.specs() == expected.layout.specs()
        && back.weights.len() == expected.weights.len()
        && back.weights.iter().zip(&expected.weights).all(|(a, b)| {
            a.iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits()))
        });
    if !same || !back.warnings.is_empty() {
        return Err(Error::format(
            dir,
            "the written model does not load back identically",
        ));
    }
    Ok(())
}

/// Refuses a destination that is a file, a symbolic link, the source or one of its
/// ancestors, or a non-empty directory without `force`.
fn check_destination(out: &Path, source: &Path, force: bool) -> Result<()> {
    let Ok(metadata) = std::fs::symlink_metadata(out) else {
        return Ok(());
    };
    if metadata.file_type().is_symlink() {
        return Err(Error::format(
            out,
            "is a symbolic link; give a new or plain directory",
        ));
    }
    if !metadata.is_dir() {
        return Err(Error::format(out, "exists and is not a directory"));
    }
    let canonical = |p: &Path| std::fs::canonicalize(p).map_err(|e| Error::io(p, e));
    if canonical(source)?.starts_with(canonical(out)?) {
        return Err(Error::format(
            out,
            "would replace the model being exported; choose another --out",
        ));
    }
    let empty = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .next()
        .is_none();
    if !empty && !force {
        return Err(Error::format(
            out,
            "exists and is not empty (add --force to replace it)",
        ));
    }
    Ok(())
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        // Directory fsync makes renames durable; some file systems refuse it.
        let _ = d.sync_all();
    }
}

/// Runs `fill` on a fresh temporary directory beside `out`, then renames it to `out`
/// (replacing an existing `out`, which [`check_destination`] has vetted). On failure the
/// temporary directory is removed and `out` is untouched.
fn write_dir_atomically(
    out: &Path,
    replace: bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let name = out
        .file_name()
        .ok_or_else(|| Error::format(out, "not a directory path"))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| -> Result<()> {
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        fill(&tmp)?;
        fsync_dir(&tmp);
        if out.exists() {
            if !replace && std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
                return Err(Error::format(
                    out,
                    "exists and is not empty (add --force to replace it)",
                ));
            }
            std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
            if let Err(e) = std::fs::rename(&tmp, out) {
                let _ = std::fs::rename(&old, out);
                return Err(Error::io(out, e));
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
        }
        fsync_dir(&parent);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("deberta-hf-export-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn resolves_runs_checkpoints_and_model_dirs() {
        let dir = scratch("resolve");
        let run = dir.join("run");
        for sub in ["discriminator", "generator"] {
            std::fs::create_dir_all(run.join(sub)).unwrap();
            std::fs::write(run.join(sub).join("config.json"), "{}").unwrap();
        }
        assert_eq!(
            resolve_model_dir(&run, ModelPart::Discriminator).unwrap(),
            run.join("discriminator")
        );
        assert_eq!(
            resolve_model_dir(&run, ModelPart::Generator).unwrap(),
            run.join("generator")
        );
        let model = run.join("discriminator");
        assert_eq!(
            resolve_model_dir(&model, ModelPart::Discriminator).unwrap(),
            model
        );
        let err = |p: &Path| {
            resolve_model_dir(p, ModelPart::Discriminator)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&dir.join("missing")).contains("No such file"));
        assert!(err(&dir).contains("not a model"));
        std::fs::write(dir.join("file"), "x").unwrap();
        assert!(err(&dir.join("file")).contains("not a directory"));
        let empty_run = dir.join("empty-run");
        std::fs::create_dir_all(empty_run.join("checkpoints")).unwrap();
        assert!(err(&empty_run).contains("without a checkpoint"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn destinations_are_vetted_and_replaced_whole() {
        let dir = scratch("dest");
        let source = dir.join("source");
        std::fs::create_dir_all(&source).unwrap();
        let out = dir.join("out");
        check_destination(&out, &source, false).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        check_destination(&out, &source, false).unwrap();
        std::fs::write(out.join("old.txt"), "old").unwrap();
        assert!(
            check_destination(&out, &source, false)
                .unwrap_err()
                .to_string()
                .contains("--force")
        );
        check_destination(&out, &source, true).unwrap();
        assert!(check_destination(&dir, &source, true).is_err());
        assert!(check_destination(&source, &source, true).is_err());
        // A failing fill leaves the destination as it was.
        let failed = write_dir_atomically(&out, true, |tmp| {
            std::fs::write(tmp.join("new.txt"), "new").unwrap();
            Err(Error::Usage("boom".into()))
        });
        assert!(failed.is_err());
        assert!(out.join("old.txt").is_file() && !out.join("new.txt").exists());
        write_dir_atomically(&out, true, |tmp| {
            std::fs::write(tmp.join("new.txt"), "new").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        assert!(!out.join("old.txt").exists() && out.join("new.txt").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
