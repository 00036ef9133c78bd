//! `deberta tokenizer`: train a tokenizer on a corpus, or encode text with one.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};

use crate::data::corpus::Corpus;
use crate::data::tokenizer::{Tokenizer, TrainOptions};
use crate::error::{Error, Result};

/// The `deberta tokenizer` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// Train a Unigram (SentencePiece-style) tokenizer on a corpus; deterministic.
    Train(TrainArgs),
    /// Encode text and print its tokens and ids.
    Encode(EncodeArgs),
}

/// Arguments of `deberta tokenizer train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Text files or directories (read recursively, sorted, hidden entries skipped).
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// Vocabulary size, the five special tokens (PAD, CLS, SEP, UNK, MASK = ids 0–4) included.
    #[arg(long, value_name = "N", default_value_t = 8000)]
    pub vocab_size: usize,
    /// Where to write the Hugging Face `tokenizer.json`.
    #[arg(long, value_name = "tokenizer.json")]
    pub out: PathBuf,
    /// Replace invalid UTF-8 with U+FFFD instead of failing.
    #[arg(long)]
    pub lossy: bool,
}

/// Arguments of `deberta tokenizer encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// A Hugging Face `tokenizer.json`, a SentencePiece `spm.model` (with the
    /// `tokenizer_config.json` beside it, if any), or a model directory holding either.
    #[arg(long, value_name = "tokenizer.json|spm.model|DIR")]
    pub tokenizer: PathBuf,
    /// The text to encode.
    #[arg(long)]
    pub text: String,
    /// Leave out the CLS and SEP tokens around the text.
    #[arg(long)]
    pub no_special_tokens: bool,
    /// Print one JSON object `{"tokens": [...], "ids": [...]}`.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `deberta tokenizer` subcommand.
pub fn run(command: TokenizerCommand) -> Result<()> {
    match command {
        TokenizerCommand::Train(args) => train(args),
        TokenizerCommand::Encode(args) => encode(args),
    }
}

fn train(args: TrainArgs) -> Result<()> {
    let start = Instant::now();
    let corpus = Corpus::open(&args.corpus, args.lossy)?;
    let options = TrainOptions {
        vocab_size: args.vocab_size,
    };
    let (tokenizer, report) = Tokenizer::train(&corpus, &options)?;
    tokenizer.save(&args.out)?;
    eprintln!(
        "trained {} tokens{} on {} file(s), {} bytes, {} distinct words in {:.1} s; wrote {}",
        report.vocab_size,
        if report.vocab_size < args.vocab_size {
            format!(
                " (of {} asked: the corpus has too few pieces)",
                args.vocab_size
            )
        } else {
            String::new()
        },
        report.corpus.files,
        report.corpus.bytes,
        report.distinct_words,
        start.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn encode(args: EncodeArgs) -> Result<()> {
    let tokenizer = Tokenizer::load(&args.tokenizer)?;
    let encoded = tokenizer.encode(&args.text, !args.no_special_tokens)?;
    if args.json {
        let json = serde_json::to_string(&encoded)
            .map_err(|e| Error::Usage(format!("writing JSON: {e}")))?;
        println!("{json}");
    } else {
        println!("{} tokens", encoded.ids.len());
        for (token, id) in encoded.tokens.iter().zip(&encoded.ids) {
            println!("{id}\t{token}");
        }
    }
    Ok(())
}
