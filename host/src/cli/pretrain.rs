//! `deberta pretrain`, `deberta compare-sharing` and `deberta plot`.

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;
use crate::pretrain::compare::{CompareRequest, run_comparison};
use crate::pretrain::options::{ModelOverrides, PretrainFlags};
use crate::pretrain::{PretrainRequest, plot::plot_run, run_pretraining};

/// The options of a pretraining run that `deberta pretrain` and `deberta compare-sharing`
/// share. Every option defaults to the preset's value; a `--config` TOML file may set any of
/// them (same names with `_`, plus a `[model]` table), and flags override the file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Text files or directories of text (default: the bundled `data/shakespeare/texts`).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub corpus: Option<Vec<PathBuf>>,
    /// A Hugging Face `tokenizer.json`, an `spm.model` or a directory holding one (default:
    /// train a Unigram tokenizer on the corpus).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of a trained tokenizer [nano: 2000, others: 32000].
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Replace invalid UTF-8 in the corpus instead of stopping with an error.
    #[arg(long)]
    pub lossy: bool,
    /// Model preset: nano, xsmall, small, base, large [nano].
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// TOML file of options (any of these flags, plus a `[model]` table).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run length in optimizer steps; the horizon of the learning-rate schedule [every preset: 10000].
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Sequences per optimizer step [nano: 16, others: 64].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Micro-batches per step (gradient accumulation) [1].
    #[arg(long, value_name = "N")]
    pub grad_accum: Option<usize>,
    /// Under MPI: MiB of gradient values per bucket, each exchanged as soon as the backward
    /// pass has produced it (0: one exchange after the backward pass) [1].
    #[arg(long, value_name = "MIB")]
    pub bucket_mb: Option<f64>,
    /// Number format of the products: f32 (the reference); mixed (the backend's mixed
    /// precision with dynamic loss scaling — initial scale 2^14, doubled after 250 clean steps,
    /// halved with the step skipped on an overflow: the Linear products of the forward and
    /// backward passes in f16 on wgpu where the adapter has SHADER_F16, else in f32, and in
    /// bf16 on the CPU); or bf16-mixed (the bf16 products without loss scaling; CPU backend).
    /// f32 master weights, optimizer state and gradients in all, f32 sums [f32].
    #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(
        deberta_core::Precision::TRAINING.map(deberta_core::Precision::name)
    ))]
    pub precision: Option<String>,
    /// Tokens per sequence including [CLS] and [SEP] [nano: 64, others: 512].
    #[arg(long, value_name = "N")]
    pub max_seq_len: Option<usize>,
    /// Seed of every random draw [1234].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Compute backend: cpu, wgpu, auto [cpu].
    #[arg(long)]
    pub backend: Option<String>,
    /// CPU threads [all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// With wgpu: the adapter whose name contains NAME (see `deberta info`).
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
    /// Update schedule: decoupled, joint [pretrain: decoupled; compare-sharing: joint].
    #[arg(long)]
    pub schedule: Option<String>,
    /// λ, the weight of the RTD loss [50].
    #[arg(long, value_name = "LAMBDA")]
    pub rtd_weight: Option<f32>,
    /// Peak learning rate [nano: 2e-3, others: 1e-4].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Peak learning rate of the discriminator (and E_delta); the generator uses --lr [nano:
    /// 5e-4; other presets: --lr].
    #[arg(long, value_name = "LR")]
    pub discriminator_lr: Option<f32>,
    /// Warm-up as a fraction of the run [nano: 0.1, others: 0.01]; update s runs at
    /// lr·warmup_linear(s−1, steps, warmup), so the first runs at 0 (official XAdam).
    #[arg(long, value_name = "FRACTION")]
    pub warmup: Option<f64>,
    /// Optimizer: xadam (official DeBERTa) or adamw [nano: adamw, others: xadam].
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Decoupled weight decay [0.01].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Global gradient-norm clip per optimizer, 0 to disable [1.0].
    #[arg(long)]
    pub clip: Option<f32>,
    /// Generator MLM through the Enhanced Mask Decoder: true or false [true].
    #[arg(long, value_name = "BOOL")]
    pub emd: Option<bool>,
    /// Masking: official (15 % stratified, all [MASK]), bert-80-10-10, whole-word [official].
    #[arg(long)]
    pub masking: Option<String>,
    /// Hidden-state dropout [nano: 0, others: 0.1].
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Attention dropout [nano: 0, others: 0.1].
    #[arg(long)]
    pub attention_dropout: Option<f32>,
    /// Evaluate on the held-out split every N steps, 0 = only at the end [nano: 200, others: 1000].
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// Held-out batches per evaluation [nano: 8, others: 16].
    #[arg(long, value_name = "N")]
    pub eval_batches: Option<usize>,
    /// Checkpoint every N steps, 0 = only at the end [nano: 400, others: 1000].
    #[arg(long, value_name = "N")]
    pub save_every: Option<u64>,
    /// Older checkpoints to keep under checkpoints/ [2].
    #[arg(long, value_name = "K")]
    pub keep: Option<usize>,
    /// Write a metrics row every N steps [1].
    #[arg(long, value_name = "N")]
    pub log_every: Option<u64>,
    /// Hide the progress bar (metrics still go to metrics.jsonl).
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// The options set on the command line over those of `--config`, `sharing` included.
    fn flags(&self, sharing: Option<String>) -> Result<PretrainFlags> {
        let config = match &self.config {
            Some(path) => PretrainFlags::from_toml(path)?,
            None => PretrainFlags::default(),
        };
        let cli = PretrainFlags {
            corpus: self.corpus.clone(),
            tokenizer: self.tokenizer.clone(),
            init_from: None,
            init_generator: None,
            vocab_size: self.vocab_size,
            lossy: self.lossy.then_some(true),
            preset: self.preset.clone(),
            model: None::<ModelOverrides>,
            steps: self.steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_seq_len: self.max_seq_len,
            seed: self.seed,
            backend: self.backend.clone(),
            threads: self.threads,
            bucket_mb: self.bucket_mb,
            precision: self.precision.clone(),
            adapter: self.adapter.clone(),
            sharing,
            schedule: self.schedule.clone(),
            rtd_weight: self.rtd_weight,
            lr: self.lr,
            discriminator_lr: self.discriminator_lr,
            warmup: self.warmup,
            optimizer: self.optimizer.clone(),
            weight_decay: self.weight_decay,
            clip: self.clip,
            emd: self.emd,
            masking: self.masking.clone(),
            dropout: self.dropout,
            attention_dropout: self.attention_dropout,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            save_every: self.save_every,
            keep: self.keep,
            log_every: self.log_every,
        };
        Ok(cli.over(config))
    }
}

/// Arguments of `deberta pretrain`. With `--resume`, the run's saved options are the defaults.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// The options of the run.
    #[command(flatten)]
    pub run: RunArgs,
    /// Embedding sharing: gdes, es, nes [gdes].
    #[arg(long)]
    pub sharing: Option<String>,
    /// Run directory [runs/<preset>-<seed>].
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Start the discriminator from a model directory: the official layout (config.json,
    /// pytorch_model.bin or model.safetensors, spm.model + tokenizer_config.json or
    /// tokenizer.json) or an export. Its config and tokenizer fix the model shape and the
    /// vocabulary; the RTD head (mask_predictions.*) is read when present.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// With --init-from: start the generator from this model directory
    /// (DebertaV2ForMaskedLM); default: a fresh generator of the preset's generator depth
    /// whose word table starts as DIR's (E_delta = 0).
    #[arg(long, value_name = "DIR2", requires = "init_from")]
    pub init_generator: Option<PathBuf>,
    /// End after step K with a checkpoint, exactly as an interruption would.
    #[arg(long, value_name = "K")]
    pub stop_after: Option<u64>,
}

/// Runs `deberta pretrain`.
pub fn run(args: PretrainArgs) -> Result<()> {
    let mut flags = args.run.flags(args.sharing.clone())?;
    if args.init_from.is_some() {
        flags.init_from = args.init_from.clone();
        flags.init_generator = args.init_generator.clone();
    }
    let request = PretrainRequest {
        flags,
        out: args.out.clone(),
        resume: args.resume.clone(),
        stop_after: args.stop_after,
        progress: !args.run.quiet,
    };
    run_pretraining(request)
}

/// Arguments of `deberta compare-sharing`: the options of `deberta pretrain` but the sharing
/// (all three modes are trained; a `sharing` in `--config` is ignored) and resuming. The
/// schedule defaults to joint here, the one under which ES trains its shared table with both
/// losses.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The options of the three runs; `--steps` defaults to the preset's run length.
    #[command(flatten)]
    pub run: RunArgs,
    /// Directory of the three runs (DIR/gdes, DIR/es, DIR/nes) and of the comparison
    /// [runs/compare-<preset>-<seed>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Runs `deberta compare-sharing`.
pub fn run_compare(args: CompareArgs) -> Result<()> {
    run_comparison(CompareRequest {
        flags: args.run.flags(None)?,
        out: args.out,
        progress: !args.run.quiet,
    })?;
    Ok(())
}

/// Arguments of `deberta plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A pretraining run directory (with `metrics.jsonl`).
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
}

/// Runs `deberta plot`: redraws `RUN_DIR/loss.png`.
pub fn run_plot(args: PlotArgs) -> Result<()> {
    let out = plot_run(&args.run_dir)?;
    println!("wrote {}", out.display());
    Ok(())
}
