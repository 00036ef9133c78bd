//! `deberta grad` and `deberta step`: reference gradients of the MLM objective and of the
//! RTD pair.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use deberta_core::train::Sharing;

use deberta_core::Backend;

use crate::checkpoint::{TensorMap, write_safetensors};
use crate::device::{BackendTask, dispatch};
use crate::error::Result;
use crate::gradients::{StepRequest, mlm_gradients, pair_gradients};

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
    /// Output: losses, `rtd_logits` and `grad.<name>` for every trainable parameter.
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: PathBuf,
    /// Where to compute.
    #[command(flatten)]
    pub device: super::DeviceArgs,
}

struct Grad<'a>(&'a GradArgs);

impl BackendTask for Grad<'_> {
    type Output = TensorMap;
    fn run<B: Backend>(self, backend: &B) -> Result<TensorMap> {
        mlm_gradients(backend, &self.0.model, &self.0.input)
    }
}

struct Step<'a>(&'a StepRequest);

impl BackendTask for Step<'_> {
    type Output = TensorMap;
    fn run<B: Backend>(self, backend: &B) -> Result<TensorMap> {
        pair_gradients(backend, self.0)
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

/// Runs `deberta step`.
pub fn run_step(args: StepArgs) -> Result<()> {
    let choice = args.device.choice()?;
    let request = StepRequest {
        weights: args.weights,
        generator_config: args.gen_config,
        discriminator_config: args.disc_config,
        batch: args.batch,
        sharing: args.sharing.into(),
        rtd_weight: args.rtd_weight,
        emd: args.emd == Switch::On,
    };
    let out = dispatch(&choice, Step(&request))?;
    write_safetensors(&args.out, &out)?;
    eprintln!("wrote {} tensors to {}", out.len(), args.out.display());
    Ok(())
}
