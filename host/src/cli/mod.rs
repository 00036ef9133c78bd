//! Command-line interface: argument parsing and one module per subcommand.

mod bench;
mod detect;
mod export;
mod forward;
mod grad;
mod ids;
mod pretrain;
mod tokenizer;

use clap::{Args, Parser, Subcommand};

use crate::device::{BackendChoice, set_threads};
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
    /// Pretrain GDES, ES and NES pairs on the same data, seed and budget, and compare them
    /// (held-out figures, curves, word-embedding cosine similarities).
    CompareSharing(Box<pretrain::CompareArgs>),
    /// Redraw RUN_DIR/loss.png from RUN_DIR/metrics.jsonl.
    Plot(pretrain::PlotArgs),
    /// Export a run's discriminator (or generator) as a Hugging Face model directory
    /// (`--format hf`), or a discriminator as an edge model file (`--format edge`).
    Export(export::ExportArgs),
    /// Replaced-token probability of every token, from a run directory, a Hugging Face
    /// discriminator directory, or an edge model file.
    Detect(detect::DetectArgs),
    /// Train a tokenizer on a corpus, or encode text with one.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// Show the version, CPU threads and GPU adapters, and what `--backend auto` chooses.
    Info,
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
        Command::CompareSharing(args) => pretrain::run_compare(*args),
        Command::Plot(args) => pretrain::run_plot(args),
        Command::Export(args) => export::run(args),
        Command::Detect(args) => detect::run(args),
        Command::Tokenizer(cmd) => tokenizer::run(cmd),
        Command::Info => info(),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

/// The `--precision` of the inference commands (`forward`, `detect`, `bench forward`).
#[derive(Debug, Clone, Args)]
pub struct PrecisionArgs {
    /// Number format of the Linear products (projections, feed-forward, head layers) on the
    /// CPU backend: f32 (the reference: bit-identical for any thread count and SIMD level),
    /// bf16 (weights converted once, activations rounded at each product, f32 accumulation;
    /// AVX-512 BF16 when the CPU has it) or int8 (weights quantised once per output channel,
    /// activations per row, exact integer sums; AVX-512 VNNI when the CPU has it). Everything
    /// else stays f32.
    #[arg(
        long,
        default_value = "f32",
        value_parser = clap::builder::PossibleValuesParser::new(
            deberta_core::Precision::INFERENCE.map(deberta_core::Precision::name)
        )
    )]
    pub precision: String,
}

impl PrecisionArgs {
    /// The precision, checked against the backend (only the CPU backend has narrower products).
    pub fn resolve(&self, choice: &BackendChoice) -> Result<deberta_core::Precision> {
        resolve_precision(&self.precision, choice)
    }
}

/// The `--precision` of training (`bench step`; `pretrain` has its own in its options).
#[derive(Debug, Clone, Args)]
pub struct TrainingPrecisionArgs {
    /// Number format of the products: f32 (the reference); mixed (the backend's mixed
    /// precision with dynamic loss scaling: the Linear products in f16 on wgpu where the
    /// adapter has SHADER_F16, else in f32, and in bf16 on the CPU); or bf16-mixed (the bf16
    /// products without loss scaling; CPU backend). f32 master weights, optimizer state and
    /// gradients in all, f32 sums.
    #[arg(
        long,
        default_value = "f32",
        value_parser = clap::builder::PossibleValuesParser::new(
            deberta_core::Precision::TRAINING.map(deberta_core::Precision::name)
        )
    )]
    pub precision: String,
}

impl TrainingPrecisionArgs {
    /// The precision, checked against the backend.
    pub fn resolve(&self, choice: &BackendChoice) -> Result<deberta_core::Precision> {
        resolve_precision(&self.precision, choice)
    }
}

/// The precision called `name`, refused (one line) on backends without its products (`mixed`
/// runs everywhere).
fn resolve_precision(name: &str, choice: &BackendChoice) -> Result<deberta_core::Precision> {
    let precision = deberta_core::Precision::from_name(name)
        .ok_or_else(|| crate::error::Error::Usage(format!("unknown --precision {name}")))?;
    let everywhere = [deberta_core::Precision::F32, deberta_core::Precision::Mixed];
    if !everywhere.contains(&precision) && !matches!(choice, BackendChoice::Cpu) {
        return Err(crate::error::Error::Usage(format!(
            "--precision {} runs on the CPU backend only (use --backend cpu)",
            precision.name()
        )));
    }
    Ok(precision)
}

/// Where a command computes.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Compute backend: cpu; wgpu (any GPU through Vulkan, Metal or DX12, or Mesa's software
    /// lavapipe); auto (wgpu on a hardware GPU, else cpu).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "wgpu", "auto"])]
    pub backend: String,
    /// With wgpu: the adapter whose name contains NAME (see `deberta info`).
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl DeviceArgs {
    /// Sizes the CPU pool and resolves the backend.
    pub fn choice(&self) -> Result<BackendChoice> {
        set_threads(self.threads);
        BackendChoice::resolve(&self.backend, self.adapter.as_deref())
    }
}

/// `deberta info`.
fn info() -> Result<()> {
    println!("deberta {}", env!("CARGO_PKG_VERSION"));
    let threads = set_threads(None);
    println!("cpu backend: {threads} threads");
    let adapters = crate::device::adapter_descriptions();
    if adapters.is_empty() {
        println!(
            "wgpu adapters: none (install a Vulkan, Metal or DX12 driver; Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
        );
    } else {
        println!("wgpu adapters:");
        for adapter in &adapters {
            println!("  {adapter}");
        }
    }
    if let Some(options) = crate::device::wgpu_options()? {
        println!("wgpu kernel options: {options}");
    }
    if let Some(device) = crate::device::describe_wgpu_device()? {
        println!("wgpu device (--backend wgpu): {device}");
    }
    println!(
        "--backend auto chooses: {}",
        crate::device::describe_auto()?
    );
    Ok(())
}
