//! `deberta forward`: run a model directory on inputs.

use std::path::PathBuf;

use clap::Args;
use deberta_core::Backend;
use deberta_core::model::HostBatch;

use crate::checkpoint::{read_tensor_file, write_safetensors};
use crate::data::Tokenizer;
use crate::device::{BackendTask, dispatch};
use crate::error::{Error, Result};
use crate::inference::Session;
use crate::model_dir::load_model_dir;
use crate::tensor::HostTensor;
use crate::tensor::int_matrix;

/// Arguments of `deberta forward`.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Hugging Face model directory (`config.json` + `model.safetensors` or `pytorch_model.bin`).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// safetensors file with `input_ids` and `attention_mask` (i64 or i32, `[B, S]`); other
    /// tensors are ignored (`token_type_ids` is used when the model has token types).
    #[arg(
        long,
        value_name = "INPUTS.safetensors",
        conflicts_with_all = ["ids", "text"],
        required_unless_present_any = ["ids", "text"]
    )]
    pub input: Option<PathBuf>,
    /// Token ids instead of a file: sequences separated by `;`, ids by `,` (padded with the
    /// pad token), e.g. `--ids "1,5,9;1,7"`.
    #[arg(long, value_name = "IDS", conflicts_with = "text")]
    pub ids: Option<String>,
    /// Text instead of ids: one sequence, encoded with [CLS] and [SEP] by the tokenizer of the
    /// model directory (`tokenizer.json`, or `spm.model` with `tokenizer_config.json`) or of
    /// `--tokenizer`.
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// The tokenizer for `--text` (`tokenizer.json`, `spm.model` or a directory holding one),
    /// instead of the model directory's.
    #[arg(long, value_name = "PATH", requires = "text")]
    pub tokenizer: Option<PathBuf>,
    /// Where to write the outputs (float32 safetensors: `embedding_output`,
    /// `hidden_states.{0..L}`, `last_hidden_state`, `attentions.0`, `rel_pos`, `mlm_logits`,
    /// `rtd_logits`). Without it a summary is printed.
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: Option<PathBuf>,
    /// Where to compute.
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Number format of the products.
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
}

struct Outputs<'a> {
    loaded: &'a crate::model_dir::LoadedModel,
    host: HostBatch<'a>,
    precision: deberta_core::Precision,
}

impl BackendTask for Outputs<'_> {
    type Output = crate::checkpoint::TensorMap;
    fn run<B: Backend>(self, backend: &B) -> Result<Self::Output> {
        Session::with_precision(backend, self.loaded, self.precision)?.outputs(&self.host)
    }
}

/// Runs `deberta forward`.
pub fn run(args: ForwardArgs) -> Result<()> {
    let choice = args.device.choice()?;
    let precision = args.precision.resolve(&choice)?;
    let loaded = load_model_dir(&args.model)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let pad = loaded.config().pad_token_id as i64;
    let (ids, mask, types, batch, len) = match (&args.input, &args.ids, &args.text) {
        (Some(path), _, _) => {
            let tensors = read_tensor_file(path)?;
            let (ids, b, s) = int_matrix(&tensors, "input_ids", path)?;
            let (mask, mb, ms) = int_matrix(&tensors, "attention_mask", path)?;
            if (mb, ms) != (b, s) {
                return Err(Error::BadTensor {
                    path: path.clone(),
                    name: "attention_mask".into(),
                    reason: format!("shape [{mb}, {ms}] differs from input_ids [{b}, {s}]"),
                });
            }
            let types = match tensors.contains_key("token_type_ids") {
                true => Some(int_matrix(&tensors, "token_type_ids", path)?.0),
                false => None,
            };
            (ids, mask, types, b, s)
        }
        (None, Some(text), _) => {
            let (ids, mask, b, s) = super::ids::parse_id_batch(text, pad)?;
            (ids, mask, None, b, s)
        }
        (None, None, Some(text)) => {
            let tokenizer = Tokenizer::load(args.tokenizer.as_ref().unwrap_or(&args.model))?;
            let vocab = loaded.config().vocab_size;
            if tokenizer.vocab_size() > vocab {
                return Err(Error::Usage(format!(
                    "the tokenizer has {} tokens but the model's vocabulary has {vocab}",
                    tokenizer.vocab_size()
                )));
            }
            let ids: Vec<i64> = tokenizer
                .encode(text, true)?
                .ids
                .into_iter()
                .map(i64::from)
                .collect();
            let len = ids.len();
            (ids, vec![1; len], None, 1, len)
        }
        (None, None, None) => {
            return Err(Error::Usage(
                "give --input FILE, --ids IDS or --text TEXT".into(),
            ));
        }
    };
    let host = HostBatch {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: types.as_deref(),
        batch,
        len,
    };
    let outputs = dispatch(
        &choice,
        Outputs {
            loaded: &loaded,
            host,
            precision,
        },
    )?;
    match &args.out {
        Some(out) => {
            write_safetensors(out, &outputs)?;
            eprintln!("wrote {} tensors to {}", outputs.len(), out.display());
        }
        None => print_summary(&outputs, &mask, batch, len),
    }
    Ok(())
}

fn print_summary(outputs: &crate::checkpoint::TensorMap, mask: &[i64], batch: usize, len: usize) {
    let floats = |name: &str| outputs.get(name).and_then(HostTensor::as_float);
    println!("batch {batch} x {len} tokens");
    for b in 0..batch {
        let valid: Vec<usize> = (0..len).filter(|&t| mask[b * len + t] != 0).collect();
        println!("sequence {b} ({} tokens)", valid.len());
        if let (Some(state), Some(t)) = (
            outputs.get("last_hidden_state"),
            floats("last_hidden_state"),
        ) {
            let h = state.shape[2];
            let row = &t[(b * len + valid.first().copied().unwrap_or(0)) * h..][..h];
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            println!("  last_hidden_state[0] L2 norm {norm:.4}");
        }
        if let (Some(logits), Some(t)) = (outputs.get("mlm_logits"), floats("mlm_logits")) {
            let v = logits.shape[2];
            let top: Vec<String> = valid
                .iter()
                .map(|&p| {
                    let row = &t[(b * len + p) * v..][..v];
                    let (arg, _) =
                        row.iter()
                            .enumerate()
                            .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                                if x > best.1 { (i, x) } else { best }
                            });
                    arg.to_string()
                })
                .collect();
            println!("  mlm argmax ids: {}", top.join(","));
        }
        if let Some(t) = floats("rtd_logits") {
            let probs: Vec<String> = valid
                .iter()
                .map(|&p| format!("{:.3}", 1.0 / (1.0 + (-t[b * len + p]).exp())))
                .collect();
            println!("  p(replaced): {}", probs.join(" "));
        }
    }
}
