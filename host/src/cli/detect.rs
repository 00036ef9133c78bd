//! `deberta detect`: the replaced-token probability of every token of one sequence, from a
//! pretraining run directory (its discriminator), a Hugging Face discriminator directory (the
//! host forward pass on the chosen backend), or an edge model file (the same heap-free runtime
//! the firmware runs).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use deberta_core::edge::{EdgeModel, arena_bytes, detect};
use deberta_core::model::HostBatch;
use deberta_core::{Backend, Precision};
use serde_json::json;

use crate::data::spm_tokenizer::SPM_MODEL_FILE;
use crate::data::{SpmTokenizer, Tokenizer};
use crate::device::{BackendChoice, BackendTask, dispatch};
use crate::edge_export::AlignedBytes;
use crate::error::{Error, Result};
use crate::hf_export::{ModelPart, resolve_model_dir};
use crate::inference::{Session, fetch};
use crate::model_dir::{LoadedModel, load_model_dir};

/// Arguments of `deberta detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// The discriminator: a run directory (its `discriminator/`), a checkpoint directory
    /// (RUN_DIR/checkpoints/step-N), a Hugging Face model directory with the RTD head
    /// (`mask_predictions.*`), or an edge model file from `deberta export --format edge`.
    #[arg(long, value_name = "RUN_DIR|MODEL_DIR|model.dbt")]
    pub model: PathBuf,
    /// One sequence of token ids separated by commas, e.g. `--ids "1,5,9"`.
    #[arg(
        long,
        value_name = "IDS",
        conflicts_with = "text",
        required_unless_present = "text"
    )]
    pub ids: Option<String>,
    /// Text to tokenise with the model's tokenizer (`tokenizer.json` or `spm.model` of the
    /// directory, or the one embedded in the edge file); [CLS] and [SEP] are added.
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// Print exactly one JSON object on stdout: `{"tokens": [...], "ids": [...],
    /// "probabilities": [...], "logits": [...]}` (a token is null without a tokenizer).
    #[arg(long)]
    pub json: bool,
    /// Colour tokens by probability: auto (when stdout is a terminal and NO_COLOR is unset),
    /// always, never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub color: String,
    /// Where to compute (a Hugging Face or run directory; edge files run on the CPU).
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Number format of the products (model directories only).
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
}

/// The token string of every id (`None` for an id the tokenizer does not know), when the
/// model has a tokenizer.
type Tokens = Option<Vec<Option<String>>>;

/// The RTD logits of one sequence and what to print with them.
struct Detection {
    ids: Vec<u32>,
    /// The token strings.
    tokens: Tokens,
    logits: Vec<f32>,
    /// One line on the model and where it ran.
    summary: String,
}

fn parse_ids(text: &str) -> Result<Vec<u32>> {
    let (ids, _, batch, _) = super::ids::parse_id_batch(text, 0)?;
    if batch != 1 {
        return Err(Error::Usage(
            "--ids: detect runs one sequence (ids separated by ',', no ';')".into(),
        ));
    }
    ids.into_iter()
        .map(|id| {
            u32::try_from(id)
                .map_err(|_| Error::Usage(format!("--ids: {id} is not a valid token id")))
        })
        .collect()
}

/// The tokenizer of the model: any `tokenizer.json` (special tokens are not required here),
/// or an `spm.model`.
enum DetectTokenizer {
    Json(Box<tokenizers::Tokenizer>),
    Spm(Box<SpmTokenizer>),
}

impl DetectTokenizer {
    /// Reads the tokenizer file of a model directory.
    fn load(path: &Path) -> Result<Self> {
        match path.file_name().is_some_and(|name| name == SPM_MODEL_FILE) {
            true => Ok(DetectTokenizer::Spm(Box::new(SpmTokenizer::load(path)?))),
            false => tokenizers::Tokenizer::from_file(path)
                .map(|t| DetectTokenizer::Json(Box::new(t)))
                .map_err(|e| Error::format(path, format!("not a valid tokenizer: {e}"))),
        }
    }

    fn token(&self, id: u32) -> Option<String> {
        match self {
            DetectTokenizer::Json(t) => t.id_to_token(id),
            DetectTokenizer::Spm(t) => t.token(id),
        }
    }

    /// The ids and tokens of `text` with [CLS] and [SEP].
    fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
        match self {
            DetectTokenizer::Json(t) => {
                let encoding = t
                    .encode(text, true)
                    .map_err(|e| Error::Usage(format!("--text: cannot tokenise: {e}")))?;
                Ok((encoding.get_ids().to_vec(), encoding.get_tokens().to_vec()))
            }
            DetectTokenizer::Spm(t) => {
                let encoded = t.encode(text, true);
                Ok((encoded.ids, encoded.tokens))
            }
        }
    }
}

/// The ids (and token strings) of the sequence: `--ids` as given, or `--text` encoded with
/// special tokens.
fn sequence(
    args: &DetectArgs,
    tokenizer: Option<&DetectTokenizer>,
    no_tokenizer: impl Fn() -> Error,
) -> Result<(Vec<u32>, Tokens)> {
    match (&args.ids, &args.text) {
        (Some(ids), _) => {
            let ids = parse_ids(ids)?;
            let tokens = tokenizer.map(|t| ids.iter().map(|&id| t.token(id)).collect::<Vec<_>>());
            Ok((ids, tokens))
        }
        (None, Some(text)) => {
            let tokenizer = tokenizer.ok_or_else(no_tokenizer)?;
            let (ids, tokens) = tokenizer.encode(text)?;
            if ids.is_empty() {
                return Err(Error::Usage("--text: no tokens".into()));
            }
            Ok((ids, Some(tokens.into_iter().map(Some).collect())))
        }
        (None, None) => Err(Error::Usage("give --ids IDS or --text TEXT".into())),
    }
}

/// `deberta detect` on an edge model file.
fn detect_edge(args: &DetectArgs, path: &Path) -> Result<Detection> {
    if args.precision.precision != "f32" {
        return Err(Error::Usage(format!(
            "--precision {}: an edge model file carries its own number format (export --dtype)",
            args.precision.precision
        )));
    }
    if args.device.backend != "cpu" || args.device.adapter.is_some() {
        eprintln!(
            "warning: --backend {}: an edge model file runs on the CPU runtime",
            args.device.backend
        );
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let aligned = AlignedBytes::new(&bytes);
    let model =
        EdgeModel::parse(aligned.bytes()).map_err(|e| Error::format(path, e.to_string()))?;
    let tokenizer = match model.tokenizer() {
        None => None,
        Some(bytes) => {
            let bytes = bytes.map_err(|e| Error::format(path, e.to_string()))?;
            Some(DetectTokenizer::Json(Box::new(
                tokenizers::Tokenizer::from_bytes(bytes)
                    .map_err(|e| Error::format(path, format!("embedded tokenizer: {e}")))?,
            )))
        }
    };
    let (ids, tokens) = sequence(args, tokenizer.as_ref(), || {
        Error::format(
            path,
            "the model file has no tokenizer (exported with --no-tokenizer or without tokenizer.json); use --ids",
        )
    })?;
    let invalid = |e: deberta_core::edge::EdgeError| Error::Usage(format!("invalid input: {e}"));
    let mut arena = vec![0u8; arena_bytes(&model, ids.len()).map_err(invalid)?];
    let mut logits = vec![0.0f32; ids.len()];
    detect(&model, &ids, &mut arena, &mut logits).map_err(invalid)?;
    let summary = format!(
        "{}: edge model, {} weights, {} tokens, arena {} bytes",
        path.display(),
        model.dtype().name(),
        ids.len(),
        arena.len()
    );
    Ok(Detection {
        ids,
        tokens,
        logits,
        summary,
    })
}

/// The RTD logits of one sequence on a backend.
struct RtdLogits<'a> {
    loaded: &'a LoadedModel,
    ids: &'a [i64],
    precision: Precision,
}

impl BackendTask for RtdLogits<'_> {
    type Output = Vec<f32>;
    fn run<B: Backend>(self, backend: &B) -> Result<Vec<f32>> {
        let session = Session::with_precision(backend, self.loaded, self.precision)?;
        let mask = vec![1i64; self.ids.len()];
        let host = HostBatch {
            input_ids: self.ids,
            attention_mask: &mask,
            token_type_ids: None,
            batch: 1,
            len: self.ids.len(),
        };
        let (_, acts) = session.run(&host)?;
        let rtd = acts
            .rtd
            .as_ref()
            .ok_or_else(|| Error::Usage("the model has no RTD head (mask_predictions.*)".into()))?;
        let logits = fetch(backend, &rtd.logits, vec![1, self.ids.len()])?;
        Ok(logits.as_float().map(<[f32]>::to_vec).unwrap_or_default())
    }
}

/// `deberta detect` on a run, checkpoint or Hugging Face model directory.
fn detect_dir(args: &DetectArgs, path: &Path) -> Result<Detection> {
    let choice = args.device.choice()?;
    let precision = args.precision.resolve(&choice)?;
    let dir = resolve_model_dir(path, ModelPart::Discriminator)?;
    let loaded = load_model_dir(&dir)?;
    if loaded.model.rtd_head.is_none() {
        return Err(Error::format(
            &dir,
            "no RTD head (mask_predictions.*): detect needs a discriminator",
        ));
    }
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let tokenizer = match Tokenizer::find_in_dir(&dir)? {
        Some(path) => Some(DetectTokenizer::load(&path)?),
        None => None,
    };
    let (ids, tokens) = sequence(args, tokenizer.as_ref(), || {
        Error::format(
            &dir,
            "no tokenizer in the model directory (tokenizer.json or spm.model); use --ids",
        )
    })?;
    let wide: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
    let logits = dispatch(
        &choice,
        RtdLogits {
            loaded: &loaded,
            ids: &wide,
            precision,
        },
    )?;
    let backend = match choice {
        BackendChoice::Cpu => "cpu",
        BackendChoice::Wgpu(_) => "wgpu",
    };
    let summary = format!(
        "{}: {} layers, {} tokens, on {backend}, {} products",
        dir.display(),
        loaded.config().num_hidden_layers,
        ids.len(),
        precision.name()
    );
    Ok(Detection {
        ids,
        tokens,
        logits,
        summary,
    })
}

/// A 256-colour ANSI foreground from green (p = 0) through yellow to red (p = 1).
fn paint(text: &str, p: f64) -> String {
    let p = if p.is_nan() { 0.5 } else { p.clamp(0.0, 1.0) };
    let red = (p * 5.0).round() as u32;
    let green = ((1.0 - p) * 5.0).round() as u32;
    format!("\x1b[38;5;{}m{text}\x1b[0m", 16 + 36 * red + 6 * green)
}

/// The sequence as text, each token painted: SentencePiece pieces (`▁` marks a word start)
/// are joined as the text they spell, other tokens with spaces.
fn coloured_text(tokens: &[String], probabilities: &[f64]) -> String {
    let pieces = tokens.iter().any(|t| t.starts_with('\u{2581}'));
    let mut line = String::new();
    for (i, (token, &p)) in tokens.iter().zip(probabilities).enumerate() {
        let text = match pieces {
            true => token.replace('\u{2581}', " "),
            false if i > 0 => format!(" {token}"),
            false => token.clone(),
        };
        // Leading spaces stay unpainted so that only the token itself is coloured.
        let trimmed = text.trim_start();
        line.push_str(&text[..text.len() - trimmed.len()]);
        line.push_str(&paint(trimmed, p));
    }
    line
}

fn use_colour(choice: &str) -> bool {
    match choice {
        "always" => true,
        "never" => false,
        _ => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

/// Runs `deberta detect`.
pub fn run(args: DetectArgs) -> Result<()> {
    let path = &args.model;
    let metadata = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let detection = match metadata.is_dir() {
        true => detect_dir(&args, path)?,
        false => detect_edge(&args, path)?,
    };
    let probabilities: Vec<f64> = detection
        .logits
        .iter()
        .map(|&l| 1.0 / (1.0 + (-f64::from(l)).exp()))
        .collect();
    let tokens: Vec<Option<String>> = match detection.tokens {
        Some(tokens) => tokens,
        None => vec![None; detection.ids.len()],
    };
    if args.json {
        let object = json!({
            "tokens": tokens,
            "ids": detection.ids,
            "probabilities": probabilities,
            "logits": detection.logits,
        });
        println!("{object}");
        return Ok(());
    }
    let colour = use_colour(&args.color);
    println!("{}", detection.summary);
    let shown: Vec<String> = tokens
        .iter()
        .zip(&detection.ids)
        .map(|(token, id)| token.clone().unwrap_or_else(|| format!("#{id}")))
        .collect();
    if colour {
        println!("{}", coloured_text(&shown, &probabilities));
    }
    println!("position\tid\tp(replaced)\ttoken");
    for (i, ((id, &p), token)) in detection
        .ids
        .iter()
        .zip(&probabilities)
        .zip(&shown)
        .enumerate()
    {
        let (p_text, token) = match colour {
            true => (paint(&format!("{p:.4}"), p), paint(token, p)),
            false => (format!("{p:.4}"), token.clone()),
        };
        println!("{i}\t{id}\t{p_text}\t{token}");
    }
    Ok(())
}
