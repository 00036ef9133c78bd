//! Command-line interface: argument parsing and one module per subcommand.

mod bench;
mod detect;
mod export;
mod forward;
mod grad;
mod ids;
mod pretrain;
mod tokenizer;

use clap::{Parser, Subcommand};

use crate::error::Result;

/// DeBERTa-v3 in Rust: Hugging Face-exact inference, RTD + GDES pretraining tools.
#[derive(Debug, Parser)]
#[command(name = "deberta", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a model directory on inputs and write (or print) its outputs.
    Forward(forward::ForwardArgs),
    /// Gradient of the MLM loss of a Hugging Face model on labelled inputs.
    Grad(grad::GradArgs),
    /// One joint forward + backward of a generator/discriminator pair on a fixed batch.
    Step(grad::StepArgs),
    /// Pretrain a DeBERTa-v3 generator/discriminator pair with RTD and GDES.
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Redraw RUN_DIR/loss.png from RUN_DIR/metrics.jsonl.
    Plot(pretrain::PlotArgs),
    /// Convert a model directory for the edge runtime (`--format edge`).
    Export(export::ExportArgs),
    /// Replaced-token probabilities from an edge model file (the firmware's runtime, on the host).
    Detect(detect::DetectArgs),
    /// Train a tokenizer on a corpus, or encode text with one.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// Benchmark the forward pass on a published shape with random weights.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Parses the process arguments and runs the chosen subcommand.
pub fn run() -> Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and succeed; usage errors print clap's message.
            let _ = e.print();
            if e.use_stderr() {
                std::process::exit(2);
            }
            return Ok(());
        }
    };
    match cli.command {
        Command::Forward(args) => forward::run(args),
        Command::Grad(args) => grad::run_grad(args),
        Command::Step(args) => grad::run_step(args),
        Command::Pretrain(args) => pretrain::run(*args),
        Command::Plot(args) => pretrain::run_plot(args),
        Command::Export(args) => export::run(args),
        Command::Detect(args) => detect::run(args),
        Command::Tokenizer(cmd) => tokenizer::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

/// Sets the number of sgemm threads. matrixmultiply reads `MATMUL_NUM_THREADS` once, at its
/// first multiplication, so this must run before any model work.
pub(crate) fn set_threads(threads: Option<usize>) -> usize {
    let threads = threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    // SAFETY: called at the start of a subcommand, before the process starts any thread
    // (matrixmultiply's pool is created lazily at the first sgemm), so no other thread can
    // read the environment concurrently.
    unsafe { std::env::set_var("MATMUL_NUM_THREADS", threads.to_string()) };
    threads
}
