//! `deberta grad` and `deberta step`: reference gradients of the MLM objective and of the
//! RTD pair.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use deberta_core::train::{OptimizerKind, Schedule, Sharing};

use deberta_core::Backend;

use crate::checkpoint::{TensorMap, write_safetensors};
use crate::device::{BackendTask, dispatch};
use crate::error::{Error, Result};
use crate::gradients::{StepRequest, Training, mlm_gradients, pair_gradients, pair_trajectory};

/// Arguments of `deberta grad`.
#[derive(Debug, Args)]
pub struct GradArgs {
    /// Hugging Face MLM model directory.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// safetensors with `input_ids`, `attention_mask` and `labels` (−100 = ignore).
    #[arg(long, value_name = "INPUTS.safetensors")]
    pub input: PathBuf,
    /// Output: `d(mlm_loss)/d(param)` under the HF names, plus `mlm_loss`.
    #[arg(long, value_name = "GRADS.safetensors")]
    pub out: PathBuf,
    /// Where to compute.
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// Embedding sharing between generator and discriminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SharingArg {
    /// Gradient-disentangled sharing: E_D = sg(E_G) + E_delta.
    Gdes,
    /// Vanilla sharing: both losses train one table.
    Es,
    /// No sharing.
    Nes,
}

impl From<SharingArg> for Sharing {
    fn from(value: SharingArg) -> Self {
        match value {
            SharingArg::Gdes => Sharing::Gdes,
            SharingArg::Es => Sharing::Es,
            SharingArg::Nes => Sharing::Nes,
        }
    }
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Arguments of `deberta step`.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// Weights (`generator.*`, `discriminator.*`, optional `E_delta`); repeat to merge files.
    #[arg(long, value_name = "W.safetensors", required = true)]
    pub weights: Vec<PathBuf>,
    /// Generator `config.json`.
    #[arg(long, value_name = "G.json")]
    pub gen_config: PathBuf,
    /// Discriminator `config.json`.
    #[arg(long, value_name = "D.json")]
    pub disc_config: PathBuf,
    /// Batch: `gen_input_ids`, `mlm_labels`, `corrupted_ids`, `attention_mask`.
    #[arg(long, value_name = "B.safetensors")]
    pub batch: PathBuf,
    /// Embedding sharing.
    #[arg(long, value_enum)]
    pub sharing: SharingArg,
    /// λ, the weight of the RTD loss.
    #[arg(long, default_value_t = 50.0)]
    pub rtd_weight: f32,
    /// Route the generator's MLM through the Enhanced Mask Decoder.
    #[arg(long, value_enum, default_value = "off")]
    pub emd: Switch,
    /// Output: losses, `rtd_logits` and `grad.<name>` for every trainable parameter; with
    /// `--steps`, `loss_mlm`/`loss_rtd`/`lr`/`grad_norm.*` `[N]` and `param.<name>` after the
    /// last step.
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: PathBuf,
    /// Train N optimizer steps instead of one gradient: every batch tensor is `[N, B, S]` and
    /// step k uses slice k, teacher-forced (no sampling, dropout off).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// With --steps: decoupled (generator then discriminator update, two optimizers) or joint
    /// (one loss, one optimizer).
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// With --steps: xadam (official, no bias correction) or adamw.
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// With --steps: the peak learning rate.
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// With --steps: warm-up steps K; step k (0-based) runs at lr·warmup_linear(k, N, K/N),
    /// so step 0 runs at 0 when K > 0.
    #[arg(long, value_name = "K")]
    pub warmup_steps: Option<usize>,
    /// With --steps: decoupled weight decay (not on `bias`/`LayerNorm.weight`) [0.01].
    #[arg(long, value_name = "WD")]
    pub weight_decay: Option<f32>,
    /// With --steps: global gradient-norm clip per optimizer, 0 disables [1.0].
    #[arg(long, value_name = "NORM")]
    pub clip: Option<f32>,
    /// Where to compute.
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

/// The update schedule of `deberta step --steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// Generator step, then discriminator step, each with its own optimizer and clip.
    Decoupled,
    /// One loss L_MLM + λ·L_RTD, one optimizer, one clip.
    Joint,
}

/// The optimizer of `deberta step --steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// microsoft/DeBERTa XAdam: no bias correction, eps outside the square root.
    Xadam,
    /// Bias-corrected AdamW (PyTorch).
    Adamw,
}

struct Grad<'a>(&'a GradArgs);

impl BackendTask for Grad<'_> {
    type Output = TensorMap;
    fn run<B: Backend>(self, backend: &B) -> Result<TensorMap> {
        mlm_gradients(backend, &self.0.model, &self.0.input)
    }
}

struct Step<'a>(&'a StepRequest, Option<Training>);

impl BackendTask for Step<'_> {
    type Output = TensorMap;
    fn run<B: Backend>(self, backend: &B) -> Result<TensorMap> {
        match &self.1 {
            None => pair_gradients(backend, self.0),
            Some(training) => pair_trajectory(backend, self.0, training),
        }
    }
}

/// Runs `deberta grad`.
pub fn run_grad(args: GradArgs) -> Result<()> {
    let choice = args.device.choice()?;
    let out = dispatch(&choice, Grad(&args))?;
    write_safetensors(&args.out, &out)?;
    eprintln!("wrote {} tensors to {}", out.len(), args.out.display());
    Ok(())
}

/// The `--steps` options, checked: all or none (one-line usage errors, not clap's).
fn training(args: &StepArgs) -> Result<Option<Training>> {
    let Some(steps) = args.steps else {
        let given = [
            ("schedule", args.schedule.is_some()),
            ("optimizer", args.optimizer.is_some()),
            ("lr", args.lr.is_some()),
            ("warmup-steps", args.warmup_steps.is_some()),
            ("weight-decay", args.weight_decay.is_some()),
            ("clip", args.clip.is_some()),
        ];
        return match given.iter().find(|(_, given)| *given) {
            Some((flag, _)) => Err(Error::Usage(format!(
                "--{flag} only applies to a multi-step run: add --steps N"
            ))),
            None => Ok(None),
        };
    };
    let missing = |flag: &str| Error::Usage(format!("--steps needs --{flag}"));
    let clip = args.clip.unwrap_or(1.0);
    Ok(Some(Training {
        steps,
        schedule: match args
            .schedule
            .ok_or_else(|| missing("schedule decoupled|joint"))?
        {
            ScheduleArg::Decoupled => Schedule::Decoupled,
            ScheduleArg::Joint => Schedule::Joint,
        },
        optimizer: match args
            .optimizer
            .ok_or_else(|| missing("optimizer xadam|adamw"))?
        {
            OptimizerArg::Xadam => OptimizerKind::XAdam,
            OptimizerArg::Adamw => OptimizerKind::AdamW,
        },
        lr: args.lr.ok_or_else(|| missing("lr LR"))?,
        warmup_steps: args.warmup_steps.ok_or_else(|| missing("warmup-steps K"))?,
        weight_decay: args.weight_decay.unwrap_or(0.01),
        clip: (clip != 0.0).then_some(clip),
    }))
}

/// Runs `deberta step`.
pub fn run_step(args: StepArgs) -> Result<()> {
    let choice = args.device.choice()?;
    let training = training(&args)?;
    let request = StepRequest {
        weights: args.weights,
        generator_config: args.gen_config,
        discriminator_config: args.disc_config,
        batch: args.batch,
        sharing: args.sharing.into(),
        rtd_weight: args.rtd_weight,
        emd: args.emd == Switch::On,
    };
    let out = dispatch(&choice, Step(&request, training))?;
    write_safetensors(&args.out, &out)?;
    eprintln!("wrote {} tensors to {}", out.len(), args.out.display());
    Ok(())
}
