//! `deberta export`: convert a Hugging Face discriminator directory to the edge model format.

use std::path::PathBuf;

use clap::Args;

use crate::edge_export::{export_dir, parse_dtype};
use crate::error::Result;

/// Arguments of `deberta export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format: `edge`, the flat file of the heap-free runtime (`deberta detect`, the
    /// Cortex-M firmware).
    #[arg(long, default_value = "edge", value_parser = ["edge"])]
    pub format: String,
    /// Storage type of the weight matrices: `f32`, `f16`, or `int8` (per-output-channel
    /// scales). LayerNorm parameters and biases stay f32.
    #[arg(long, default_value = "int8", value_parser = ["f32", "f16", "int8"])]
    pub dtype: String,
    /// Longest sequence the file supports; the position projections are stored for the
    /// relative rows such a sequence reads.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_seq_len: usize,
    /// Hugging Face model directory with the RTD head (`mask_predictions.*`).
    #[arg(long = "in", value_name = "MODEL_DIR")]
    pub input: PathBuf,
    /// Where to write the model file (atomically).
    #[arg(long, value_name = "model.dbt")]
    pub out: PathBuf,
    /// Do not embed `MODEL_DIR/tokenizer.json`.
    #[arg(long)]
    pub no_tokenizer: bool,
}

/// Runs `deberta export`.
pub fn run(args: ExportArgs) -> Result<()> {
    let dtype = parse_dtype(&args.dtype)?;
    let summary = export_dir(
        &args.input,
        &args.out,
        dtype,
        args.max_seq_len,
        !args.no_tokenizer,
    )?;
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    let tokenizer = match summary.tokenizer_bytes {
        0 => "no tokenizer".to_string(),
        n => format!("tokenizer {n} bytes"),
    };
    eprintln!(
        "wrote {}: {} bytes, {} tensors, {}, max_seq_len {}, {tokenizer}",
        args.out.display(),
        summary.bytes,
        summary.tensors,
        dtype.name(),
        args.max_seq_len
    );
    Ok(())
}
