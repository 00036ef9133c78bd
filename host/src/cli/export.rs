//! `deberta export`: a pretraining run's discriminator (or generator) as a Hugging Face model
//! directory (`--format hf`), or a discriminator in the edge model format (`--format edge`).

use std::path::PathBuf;

use clap::Args;

use crate::edge_export::{export_dir, parse_dtype};
use crate::error::{Error, Result};
use crate::hf_export::{HfExportOptions, ModelPart, export_hf, resolve_model_dir};

/// Arguments of `deberta export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format: `hf`, a Hugging Face model directory (config.json, model.safetensors,
    /// the tokenizer as it came: tokenizer.json, or spm.model + tokenizer_config.json); `edge`, the flat file of the heap-free runtime (`deberta detect`, the
    /// Cortex-M firmware).
    #[arg(long, default_value = "edge", value_parser = ["edge", "hf"])]
    pub format: String,
    /// A pretraining run directory, one of its checkpoints (RUN_DIR/checkpoints/step-N), or a
    /// Hugging Face model directory (the discriminator, with `mask_predictions.*`, for edge).
    #[arg(long = "in", value_name = "RUN_DIR|MODEL_DIR")]
    pub input: PathBuf,
    /// Where to write: a directory for hf (new or empty unless --force), a file for edge;
    /// both are written atomically.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Which model of a run to export with `--format hf`: discriminator
    /// (`DebertaV2Model` + RTD head) or generator (`DebertaV2ForMaskedLM`).
    #[arg(long, default_value = "discriminator", value_parser = ["discriminator", "generator"])]
    pub part: String,
    /// With `--format hf`: replace an existing, non-empty output directory.
    #[arg(long)]
    pub force: bool,
    /// Edge only: storage type of the weight matrices, `f32`, `f16`, or `int8`
    /// (per-output-channel scales); LayerNorm parameters and biases stay f32 [int8].
    #[arg(long, value_parser = ["f32", "f16", "int8"])]
    pub dtype: Option<String>,
    /// Edge only: longest sequence the file supports; the position projections are stored for
    /// the relative rows such a sequence reads [128].
    #[arg(long, value_name = "N")]
    pub max_seq_len: Option<usize>,
    /// Do not include the model's tokenizer (`tokenizer.json`, or for hf `spm.model`).
    #[arg(long)]
    pub no_tokenizer: bool,
}

/// Runs `deberta export`.
pub fn run(args: ExportArgs) -> Result<()> {
    let part = ModelPart::parse(&args.part)?;
    match args.format.as_str() {
        "hf" => run_hf(args, part),
        _ => run_edge(args, part),
    }
}

fn run_hf(args: ExportArgs, part: ModelPart) -> Result<()> {
    for (given, flag) in [
        (args.dtype.is_some(), "--dtype"),
        (args.max_seq_len.is_some(), "--max-seq-len"),
    ] {
        if given {
            return Err(Error::Usage(format!(
                "{flag} applies to --format edge; --format hf writes float32 weights"
            )));
        }
    }
    let summary = export_hf(
        &args.input,
        &args.out,
        HfExportOptions {
            part,
            force: args.force,
            with_tokenizer: !args.no_tokenizer,
        },
    )?;
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "wrote {} ({}, from {}): {} tensors, {:.2}M parameters, {}",
        args.out.display(),
        summary.architecture,
        summary.source.display(),
        summary.tensors,
        summary.parameters as f64 / 1e6,
        match summary.tokenizer.is_empty() {
            true => "no tokenizer".to_string(),
            false => summary.tokenizer.join(" + "),
        }
    );
    Ok(())
}

fn run_edge(args: ExportArgs, part: ModelPart) -> Result<()> {
    if part != ModelPart::Discriminator {
        return Err(Error::Usage(
            "--part generator needs --format hf: the edge format holds a discriminator".into(),
        ));
    }
    let dtype = parse_dtype(args.dtype.as_deref().unwrap_or("int8"))?;
    let max_seq_len = args.max_seq_len.unwrap_or(128);
    let source = resolve_model_dir(&args.input, part)?;
    let summary = export_dir(&source, &args.out, dtype, max_seq_len, !args.no_tokenizer)?;
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    let tokenizer = match summary.tokenizer_bytes {
        0 => "no tokenizer".to_string(),
        n => format!("tokenizer {n} bytes"),
    };
    eprintln!(
        "wrote {} (from {}): {} bytes, {} tensors, {}, max_seq_len {max_seq_len}, {tokenizer}",
        args.out.display(),
        source.display(),
        summary.bytes,
        summary.tensors,
        dtype.name(),
    );
    eprintln!(
        "arena {} bytes at {} tokens",
        thousands(summary.arena_bytes),
        summary.max_seq_len
    );
    Ok(())
}

/// `n` with its digits in groups of three separated by commas (`163,840`).
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(163_840), "163,840");
        assert_eq!(thousands(1_251_968), "1,251,968");
    }
}
