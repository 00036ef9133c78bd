//! `deberta detect`: replaced-token probabilities from an edge model file, computed by the
//! same heap-free runtime the firmware runs.

use std::path::{Path, PathBuf};

use clap::Args;
use deberta_core::edge::{EdgeModel, arena_bytes, detect};
use serde_json::json;

use crate::edge_export::AlignedBytes;
use crate::error::{Error, Result};

/// Arguments of `deberta detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Edge model file written by `deberta export --format edge`.
    #[arg(long, value_name = "model.dbt")]
    pub model: PathBuf,
    /// One sequence of token ids separated by commas, e.g. `--ids "1,5,9"`.
    #[arg(
        long,
        value_name = "IDS",
        conflicts_with = "text",
        required_unless_present = "text"
    )]
    pub ids: Option<String>,
    /// Text to tokenise with the tokenizer embedded in the model file (special tokens added).
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// Print exactly one JSON object: `{"ids": [...], "probabilities": [...], "logits": [...]}`
    /// (and `"tokens"` with `--text`).
    #[arg(long)]
    pub json: bool,
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

fn tokenize(model: &EdgeModel<'_>, path: &Path, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
    let bytes = model
        .tokenizer()
        .ok_or_else(|| {
            Error::format(
                path,
                "the model file has no tokenizer (exported with --no-tokenizer or without tokenizer.json); use --ids",
            )
        })?
        .map_err(|e| Error::format(path, e.to_string()))?;
    let tokenizer = tokenizers::Tokenizer::from_bytes(bytes)
        .map_err(|e| Error::format(path, format!("embedded tokenizer: {e}")))?;
    let encoding = tokenizer
        .encode(text, true)
        .map_err(|e| Error::Usage(format!("--text: cannot tokenise: {e}")))?;
    Ok((encoding.get_ids().to_vec(), encoding.get_tokens().to_vec()))
}

/// Runs `deberta detect`.
pub fn run(args: DetectArgs) -> Result<()> {
    let path = &args.model;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let aligned = AlignedBytes::new(&bytes);
    let model =
        EdgeModel::parse(aligned.bytes()).map_err(|e| Error::format(path, e.to_string()))?;
    let (ids, tokens) = match (&args.ids, &args.text) {
        (Some(ids), _) => (parse_ids(ids)?, None),
        (None, Some(text)) => {
            let (ids, tokens) = tokenize(&model, path, text)?;
            (ids, Some(tokens))
        }
        (None, None) => return Err(Error::Usage("give --ids IDS or --text TEXT".into())),
    };
    let invalid = |e: deberta_core::edge::EdgeError| Error::Usage(format!("invalid input: {e}"));
    let mut arena = vec![0u8; arena_bytes(&model, ids.len()).map_err(invalid)?];
    let mut logits = vec![0.0f32; ids.len()];
    detect(&model, &ids, &mut arena, &mut logits).map_err(invalid)?;
    let probabilities: Vec<f64> = logits
        .iter()
        .map(|&l| 1.0 / (1.0 + (-f64::from(l)).exp()))
        .collect();
    if args.json {
        let mut object = json!({
            "ids": ids,
            "probabilities": probabilities,
            "logits": logits,
        });
        if let (Some(tokens), Some(map)) = (tokens, object.as_object_mut()) {
            map.insert("tokens".into(), json!(tokens));
        }
        println!("{object}");
        return Ok(());
    }
    println!(
        "{} tokens, {} weights, arena {} bytes",
        ids.len(),
        model.dtype().name(),
        arena.len()
    );
    println!("position\tid\tp(replaced)");
    for (i, (id, p)) in ids.iter().zip(&probabilities).enumerate() {
        let token = tokens
            .as_ref()
            .and_then(|t| t.get(i))
            .map(|t| format!("\t{t}"))
            .unwrap_or_default();
        println!("{i}\t{id}\t{p:.4}{token}");
    }
    Ok(())
}
