//! `deberta bench`: timings of the forward pass and of a full RTD + GDES training step on the
//! published shapes (and the `nano` pretraining preset) with random weights, and of one square
//! sgemm, with a JSON line for scripts.

use std::time::Instant;

use clap::{Args, Subcommand};
use deberta_core::kernels::MatmulSpec;
use deberta_core::model::{
    AttentionProbs, Deberta, DeviceBatch, Dropout, ForwardOptions, Heads, HostBatch, MlmLayout,
    ParamLayout, SharedTables,
};
use deberta_core::random::RandomStream;
use deberta_core::train::{
    DiscriminatorBatch, GeneratorBatch, MicroBatch, MlmTargets, OptimizerConfig, RtdPair, Sampler,
    Schedule, Sharing, Trainer,
};
use deberta_core::{Backend, ModelConfig, Precision};
use serde_json::json;

use crate::device::{BackendChoice, BackendTask, dispatch};
use crate::error::{Error, Result};
use crate::resources::peak_rss_mib;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Encoder forward pass (`DebertaV2Model`, no head).
    Forward(ForwardBenchArgs),
    /// One full RTD + GDES training step: generator (half the layers, EMD) forward, sampling,
    /// backward and update, then discriminator forward, backward and update.
    Step(StepBenchArgs),
    /// Square matrix product `C = A·B` (`n × n`, row-major, f32 in and out; the operands in
    /// the product format of `--precision`), in GFLOP/s.
    Matmul(MatmulArgs),
}

/// Arguments of `deberta bench matmul`.
#[derive(Debug, Args)]
pub struct MatmulArgs {
    /// Matrix side `n` (repeat for several sizes).
    #[arg(long = "size", value_name = "N", default_values_t = [512usize, 1024, 2048])]
    pub sizes: Vec<usize>,
    /// Where to compute.
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Untimed runs before measuring (per size).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs (per size).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Product format: f32; f16 (binary16 operands, f32 sums: wgpu with SHADER_F16); bf16
    /// (bfloat16 operands, f32 sums: the CPU backend).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub precision: String,
    /// Print one JSON object per size, each as its own line after that size's report.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `deberta bench forward`.
#[derive(Debug, Args)]
pub struct ForwardBenchArgs {
    /// Shape, device and timing.
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Number format of the products.
    #[command(flatten)]
    pub precision: super::PrecisionArgs,
}

/// Arguments of `deberta bench step`.
#[derive(Debug, Args)]
pub struct StepBenchArgs {
    /// Shape, device and timing.
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Number format of the products.
    #[command(flatten)]
    pub precision: super::TrainingPrecisionArgs,
}

/// Arguments shared by the benchmarks.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model shape: the published DeBERTa-v3 xsmall, small, base or large (vocabulary
    /// 128100), or nano (the `pretrain --preset nano` model: hidden 128, 4 layers, 8000 tokens).
    #[arg(long, default_value = "xsmall", value_parser = ["nano", "xsmall", "small", "base", "large"])]
    pub shape: String,
    /// The shape with a vocabulary of this many tokens instead of its own (a tokenizer of
    /// one's own; or a shape whose embedding table is over an adapter's largest storage
    /// binding, e.g. xsmall's 188 MiB on lavapipe's 128 MiB).
    #[arg(long, value_name = "TOKENS")]
    pub vocab_size: Option<usize>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Where to compute.
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Untimed runs before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// `forward` only: run every attention through the unfused kernels, keeping its
    /// probabilities (as training does), instead of the backend's fused attention.
    #[arg(long)]
    pub unfused_attention: bool,
    /// After the timed runs, up to three more (at most `--iters`) with each kernel timed on the
    /// device (wgpu on an adapter with timestamp queries): a table of device time per kernel
    /// per run, and the same in the JSON (`kernels`). The wall-clock figures are those of the
    /// untimed runs.
    #[arg(long)]
    pub kernel_times: bool,
}

/// Device time of one kernel, per run, from `--kernel-times`.
struct KernelTime {
    kernel: String,
    dispatches_per_run: f64,
    ms_per_run: f64,
}

/// What one benchmark measured: the sorted wall-clock times of the timed runs (ms), and the
/// device time per kernel where `--kernel-times` asked for it and the backend has it.
struct Measured {
    times: Vec<f64>,
    kernels: Option<Vec<KernelTime>>,
}

/// Runs with each kernel timed, at most (device times vary little from run to run).
const KERNEL_TIMED_RUNS: usize = 3;

/// Times `run` (see [`time`]) and, with `--kernel-times`, runs it up to [`KERNEL_TIMED_RUNS`]
/// more times with the backend timing each kernel.
fn measure<B: Backend>(
    args: &BenchArgs,
    backend: &B,
    mut run: impl FnMut() -> Result<()>,
) -> Result<Measured> {
    let times = time(args, &mut run)?;
    if !args.kernel_times {
        return Ok(Measured {
            times,
            kernels: None,
        });
    }
    if !backend
        .time_kernels(true)
        .map_err(model_error("kernel timing"))?
    {
        eprintln!(
            "note: --kernel-times: the {} backend (or this adapter) does not time kernels",
            backend.name()
        );
        return Ok(Measured {
            times,
            kernels: None,
        });
    }
    backend
        .drain_kernel_times(&mut |_, _, _| {})
        .map_err(model_error("kernel timing"))?;
    let timed_runs = args.iters.min(KERNEL_TIMED_RUNS);
    for _ in 0..timed_runs {
        run()?;
    }
    let runs = timed_runs as f64;
    let mut kernels = Vec::new();
    backend
        .drain_kernel_times(&mut |kernel, dispatches, nanos| {
            kernels.push(KernelTime {
                kernel: kernel.to_string(),
                dispatches_per_run: dispatches as f64 / runs,
                ms_per_run: nanos as f64 / 1e6 / runs,
            });
        })
        .map_err(model_error("kernel timing"))?;
    backend
        .time_kernels(false)
        .map_err(model_error("kernel timing"))?;
    Ok(Measured {
        times,
        kernels: Some(kernels),
    })
}

/// Multiply-adds ×2 of one encoder forward with cached position projections.
pub fn forward_flops(cfg: &ModelConfig, batch: usize, len: usize, window_rows: usize) -> f64 {
    let (b, l, h, f) = (
        batch as f64,
        len as f64,
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
    );
    let (heads, d) = (
        cfg.num_attention_heads as f64,
        cfg.attention_head_size as f64,
    );
    let hd = heads * d;
    let n = b * l;
    let rel_terms = usize::from(cfg.uses_c2p()) + usize::from(cfg.uses_p2c());
    let per_layer = 2.0 * n * h * hd * 3.0 // Q, K, V
        + 2.0 * b * heads * l * l * d * 2.0 // scores and context
        + 2.0 * b * heads * l * window_rows as f64 * d * rel_terms as f64 // c2p / p2c tables
        + 2.0 * n * hd * h // attention output
        + 2.0 * n * h * f * 2.0; // feed-forward
    per_layer * cfg.num_hidden_layers as f64
}

/// Runs a benchmark.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Forward(args) => forward(args),
        BenchCommand::Step(args) => step(args),
        BenchCommand::Matmul(args) => matmul(args),
    }
}

/// The configuration of a benchmark shape: a published one, or the `nano` preset's
/// discriminator (as `deberta pretrain --preset nano` builds it, 8000-token vocabulary).
fn shape_config(shape: &str) -> Result<ModelConfig> {
    if shape == "nano" {
        let options = crate::pretrain::options::PretrainOptions::preset("nano")?;
        return Ok(options.model_configs(options.vocab_size, 0)?.0);
    }
    ModelConfig::deberta_v3(shape).ok_or_else(|| Error::Usage(format!("unknown shape {shape}")))
}

fn check(args: &BenchArgs) -> Result<(usize, ModelConfig, BackendChoice)> {
    let choice = args.device.choice()?;
    let threads = rayon::current_num_threads();
    if args.batch == 0 || args.seq == 0 || args.iters == 0 {
        return Err(Error::Usage(
            "--batch, --seq and --iters must be at least 1".into(),
        ));
    }
    let mut cfg = shape_config(&args.shape)?;
    if let Some(vocab) = args.vocab_size {
        // The random ids are drawn above the 5 special tokens.
        if vocab < 6 {
            return Err(Error::Usage(format!(
                "--vocab-size {vocab}: at least 6 tokens (5 special ones and a word)"
            )));
        }
        cfg.vocab_size = vocab;
    }
    if args.seq > cfg.max_position_embeddings {
        return Err(Error::Usage(format!(
            "--seq {} exceeds the shape's {} positions",
            args.seq, cfg.max_position_embeddings
        )));
    }
    Ok((threads, cfg, choice))
}

fn model_error(what: &'static str) -> impl Fn(deberta_core::Error) -> Error {
    move |e| Error::model(what, e)
}

/// Random token ids in `[5, vocab)` (above the special tokens).
fn random_ids(count: usize, vocab: usize, stream: u32) -> Vec<i64> {
    let rng = RandomStream {
        seed: 1,
        step: 0,
        stream,
    };
    (0..count as u64)
        .map(|i| 5 + (rng.bits(i) as usize % (vocab - 5)) as i64)
        .collect()
}

/// Times `run` `warmup + iters` times and returns the sorted timed durations in ms.
fn time(args: &BenchArgs, run: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    time_runs(args.warmup, args.iters, run)
}

/// Times `run` `warmup + iters` times and returns the sorted timed durations in ms.
fn time_runs(warmup: usize, iters: usize, mut run: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let start = Instant::now();
        run()?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn report<B: Backend>(
    bench: &str,
    backend: &B,
    precision: Precision,
    args: &BenchArgs,
    threads: usize,
    measured: &Measured,
    flops: Option<f64>,
) {
    let times = &measured.times;
    let median = times[times.len() / 2];
    let (min, max) = (times[0], times[times.len() - 1]);
    let tokens = (args.batch * args.seq) as f64;
    let tokens_per_s = tokens / (median / 1e3);
    let gflops = flops.map(|f| f / (median / 1e3) / 1e9);
    let peak = peak_rss_mib();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let peak_device = backend.peak_device_memory();
    let peak_reserved = peak_device.map(|p| mib(p.reserved_bytes));
    let peak_allocated = peak_device.map(|p| mib(p.allocated_bytes));
    let backend_name = backend.name();
    let attention = match (bench, args.unfused_attention) {
        ("forward", false) => Some("fused"),
        ("forward", true) => Some("unfused"),
        _ => None,
    };
    // The CPU backend's kernels run at this instruction-set level (DEBERTA_CPU_SIMD caps it).
    let simd = (backend_name == "cpu").then(|| deberta_core::simd::simd_level().name());
    // The CPU's products of packed weights name their kernel (`avx512_bf16`, `avx512_vnni`,
    // `avx512_f32`, …); f32 training multiplies unpacked weights (sgemm).
    let packed = match precision {
        deberta_core::Precision::Mixed => backend.mixed_products(),
        other => other,
    };
    let kernel = match (backend_name, bench, packed) {
        ("cpu", "step", deberta_core::Precision::F32) => None,
        ("cpu", _, packed) => deberta_core::kernels::packed_kernel_name(packed),
        _ => None,
    };
    println!(
        "{bench} {}{} batch {} seq {} on {backend_name}, {} products{}{} ({threads} CPU threads{}): median {median:.2} ms (min {min:.2}, max {max:.2}) over {} runs, {tokens_per_s:.0} tokens/s{}{}{}",
        args.shape,
        args.vocab_size
            .map(|v| format!(" (vocabulary {v})"))
            .unwrap_or_default(),
        args.batch,
        args.seq,
        precision.name(),
        kernel.map(|k| format!(" ({k})")).unwrap_or_default(),
        attention
            .map(|a| format!(", {a} attention"))
            .unwrap_or_default(),
        simd.map(|l| format!(", {l}")).unwrap_or_default(),
        args.iters,
        gflops
            .map(|g| format!(", {g:.1} GFLOP/s"))
            .unwrap_or_default(),
        peak.map(|p| format!(", peak RSS {p:.0} MiB"))
            .unwrap_or_default(),
        peak_device
            .map(|p| format!(
                ", peak device memory {:.0} MiB ({:.0} MiB in live tensors)",
                mib(p.reserved_bytes),
                mib(p.allocated_bytes)
            ))
            .unwrap_or_default(),
    );
    if let Some(kernels) = &measured.kernels {
        let device_ms: f64 = kernels.iter().map(|k| k.ms_per_run).sum();
        let dispatches: f64 = kernels.iter().map(|k| k.dispatches_per_run).sum();
        println!(
            "device time per run {device_ms:.3} ms in {dispatches:.0} kernels ({:.0} % of the median wall-clock time):",
            100.0 * device_ms / median
        );
        for k in kernels {
            println!(
                "  {:<28} {:>9.3} ms {:>5.1} % {:>8.1} dispatches",
                k.kernel,
                k.ms_per_run,
                100.0 * k.ms_per_run / device_ms.max(f64::MIN_POSITIVE),
                k.dispatches_per_run
            );
        }
    }
    let kernels = measured.kernels.as_ref().map(|kernels| {
        kernels
            .iter()
            .map(|k| {
                json!({
                    "kernel": k.kernel,
                    "ms_per_run": k.ms_per_run,
                    "dispatches_per_run": k.dispatches_per_run,
                })
            })
            .collect::<Vec<_>>()
    });
    if args.json {
        println!(
            "{}",
            json!({
                "bench": bench,
                "impl": "deberta-rs",
                "backend": backend_name,
                "kernels": kernels,
                "shape": args.shape,
                "vocab_size": args.vocab_size,
                "batch": args.batch,
                "seq": args.seq,
                "median_ms": median,
                "min_ms": min,
                "max_ms": max,
                "tokens_per_s": tokens_per_s,
                "gflops": gflops,
                "threads": threads,
                "peak_rss_mb": peak,
                "peak_device_mb": peak_reserved,
                "peak_device_allocated_mb": peak_allocated,
                "attention": attention,
                "simd": simd,
                "precision": precision.name(),
                "kernel": kernel,
            })
        );
    }
}

fn forward(args: ForwardBenchArgs) -> Result<()> {
    let (threads, cfg, choice) = check(&args.bench)?;
    let precision = args.precision.resolve(&choice)?;
    dispatch(
        &choice,
        ForwardBench {
            args: &args.bench,
            cfg,
            threads,
            precision,
        },
    )
}

struct ForwardBench<'a> {
    args: &'a BenchArgs,
    cfg: ModelConfig,
    threads: usize,
    precision: Precision,
}

impl BackendTask for ForwardBench<'_> {
    type Output = ();

    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        let ForwardBench {
            args,
            cfg,
            threads,
            precision,
        } = self;
        let mut layout = ParamLayout::new();
        let model = Deberta::new(
            &mut layout,
            "",
            &cfg,
            Heads::default(),
            SharedTables::default(),
        );
        let mut params = layout
            .initialise(backend, 0)
            .map_err(model_error("initialising weights"))?;
        // As an inference session: the position projections from the f32 weights, then the
        // weights converted (and the f32 ones freed).
        let relative = model
            .relative_embeddings(backend, &params, None, None)
            .map_err(model_error("position projections"))?;
        params
            .pack(backend, &layout, precision)
            .map_err(model_error("converting the weights"))?;
        let tokens = args.batch * args.seq;
        let ids = random_ids(tokens, cfg.vocab_size, 0);
        let mask = vec![1i64; tokens];
        let host = HostBatch {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: None,
            batch: args.batch,
            len: args.seq,
        };
        let batch = DeviceBatch::upload(backend, &cfg, &host).map_err(model_error("input"))?;
        let mut acts = model
            .activations(backend, &batch, None, false)
            .map_err(model_error("activations"))?;
        let options = ForwardOptions {
            attention_probs: if args.unfused_attention {
                AttentionProbs::Keep
            } else {
                AttentionProbs::Discard
            },
            ..ForwardOptions::inference()
        };
        let measured = measure(args, backend, || {
            model
                .forward(
                    backend,
                    &params,
                    relative.as_ref(),
                    &batch,
                    &options,
                    &mut acts,
                )
                .map_err(model_error("forward"))?;
            let mut probe = [0.0f32; 1];
            backend
                .download(acts.last_hidden_state(), &mut probe)
                .map_err(model_error("readback"))
        })?;
        let flops = forward_flops(&cfg, args.batch, args.seq, batch.window.rows);
        report(
            "forward",
            backend,
            precision,
            args,
            threads,
            &measured,
            Some(flops),
        );
        Ok(())
    }
}

fn step(args: StepBenchArgs) -> Result<()> {
    let (threads, disc_cfg, choice) = check(&args.bench)?;
    let precision = args.precision.resolve(&choice)?;
    dispatch(
        &choice,
        StepBench {
            args: &args.bench,
            disc_cfg,
            threads,
            precision,
        },
    )
}

struct StepBench<'a> {
    args: &'a BenchArgs,
    disc_cfg: ModelConfig,
    threads: usize,
    precision: Precision,
}

impl BackendTask for StepBench<'_> {
    type Output = ();

    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        let StepBench {
            args,
            disc_cfg,
            threads,
            precision,
        } = self;
        let gen_cfg = ModelConfig {
            num_hidden_layers: disc_cfg.num_hidden_layers / 2,
            ..disc_cfg
        };
        let pair = RtdPair::new(
            &gen_cfg,
            &disc_cfg,
            Sharing::Gdes,
            MlmLayout::LmPredictions,
            true,
        )
        .map_err(model_error("building the pair"))?;
        let params = pair
            .layout
            .initialise(backend, 0)
            .map_err(model_error("initialising weights"))?;
        let mut trainer = Trainer::new(
            backend,
            pair,
            params,
            Schedule::Decoupled,
            50.0,
            OptimizerConfig::xadam(),
        )
        .map_err(model_error("optimizers"))?;
        trainer
            .set_precision(backend, precision)
            .map_err(model_error("precision"))?;
        // A fixed batch: 15 % of the positions of every sequence masked with id 4.
        let (b, s) = (args.batch, args.seq);
        let original = random_ids(b * s, disc_cfg.vocab_size, 1);
        let per_sequence = ((s as f64) * 0.15).round().max(1.0) as usize;
        let mut masked = original.clone();
        let mut labels = vec![-100i64; b * s];
        for seq in 0..b {
            for k in 0..per_sequence {
                let position = seq * s + 1 + (k * (s - 2)) / per_sequence;
                labels[position] = original[position];
                masked[position] = 4;
            }
        }
        let mask = vec![1i64; b * s];
        let host = HostBatch {
            input_ids: &masked,
            attention_mask: &mask,
            token_type_ids: None,
            batch: b,
            len: s,
        };
        let generator = GeneratorBatch {
            batch: DeviceBatch::upload(backend, &gen_cfg, &host).map_err(model_error("input"))?,
            targets: MlmTargets::from_labels(backend, &labels, gen_cfg.vocab_size)
                .map_err(model_error("labels"))?,
        };
        let positions: Vec<usize> = (0..b * s).filter(|&p| labels[p] != -100).collect();
        let mut sampled = backend
            .upload_indices(&vec![0; positions.len()])
            .map_err(model_error("sample buffer"))?;
        let mut step = 0u32;
        let measured = measure(args, backend, || {
            let dropout = |model| Dropout {
                hidden: 0.1,
                attention: 0.1,
                seed: 1,
                step,
                model,
            };
            let sampler = Sampler {
                stream: RandomStream {
                    seed: 1,
                    step,
                    stream: 7,
                },
                out: &mut sampled,
            };
            trainer
                .generator_phase(
                    backend,
                    &generator,
                    1e-4,
                    Some(&dropout(0)),
                    Some(sampler),
                    MicroBatch::WHOLE,
                )
                .map_err(model_error("generator step"))?;
            let mut ids = vec![0u32; positions.len()];
            backend
                .download_indices(&sampled, &mut ids)
                .map_err(model_error("reading samples"))?;
            let mut corrupted = original.clone();
            for (&p, &id) in positions.iter().zip(&ids) {
                corrupted[p] = i64::from(id);
            }
            let discriminator =
                DiscriminatorBatch::upload(backend, &disc_cfg, &host, &corrupted, &labels)
                    .map_err(model_error("discriminator input"))?;
            trainer
                .discriminator_phase(
                    backend,
                    &discriminator,
                    1e-4,
                    Some(&dropout(1)),
                    None,
                    MicroBatch::WHOLE,
                )
                .map_err(model_error("discriminator step"))?;
            step += 1;
            Ok(())
        })?;
        report("step", backend, precision, args, threads, &measured, None);
        Ok(())
    }
}

fn matmul(args: MatmulArgs) -> Result<()> {
    let choice = args.device.choice()?;
    let threads = rayon::current_num_threads();
    if args.iters == 0 || args.sizes.contains(&0) {
        return Err(Error::Usage("--iters and --size must be at least 1".into()));
    }
    let precision = deberta_core::Precision::from_name(&args.precision)
        .ok_or_else(|| Error::Usage(format!("unknown --precision {}", args.precision)))?;
    dispatch(
        &choice,
        MatmulBench {
            args: &args,
            precision,
            threads,
        },
    )
}

struct MatmulBench<'a> {
    args: &'a MatmulArgs,
    /// The product format (`Backend::matmul_reduced`).
    precision: deberta_core::Precision,
    threads: usize,
}

impl BackendTask for MatmulBench<'_> {
    type Output = ();

    /// One `n × n × n` product per timed run, followed by a one-element download of `C`: the
    /// download waits for the device (wgpu records kernels asynchronously), so a run's time
    /// covers the whole product.
    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        let MatmulBench {
            args,
            precision,
            threads,
        } = self;
        for &n in &args.sizes {
            let elements = n
                .checked_mul(n)
                .ok_or_else(|| Error::Usage(format!("--size {n} is too large")))?;
            let values = |salt: usize| -> Vec<f32> {
                (0..elements)
                    .map(|i| ((i.wrapping_mul(7919) + salt) % 1000) as f32 / 1000.0 - 0.5)
                    .collect()
            };
            let a = backend.upload(&values(0)).map_err(model_error("upload"))?;
            let b = backend.upload(&values(1)).map_err(model_error("upload"))?;
            let mut c = backend.zeros(elements).map_err(model_error("allocation"))?;
            let spec = MatmulSpec::dense(n, n, n);
            let times = time_runs(args.warmup, args.iters, || {
                backend
                    .matmul_reduced(&a, &b, &mut c, &spec, precision)
                    .map_err(model_error("matmul"))?;
                let mut probe = [0.0f32; 1];
                backend
                    .download(&c, &mut probe)
                    .map_err(model_error("readback"))
            })?;
            let median = times[times.len() / 2];
            let (min, max) = (times[0], times[times.len() - 1]);
            let gflops = 2.0 * (n as f64).powi(3) / (median / 1e3) / 1e9;
            println!(
                "matmul {n}x{n}x{n} {} on {} ({threads} CPU threads): median {median:.2} ms (min {min:.2}, max {max:.2}) over {} runs, {gflops:.1} GFLOP/s",
                precision.name(),
                backend.name(),
                args.iters,
            );
            if args.json {
                println!(
                    "{}",
                    json!({
                        "bench": "matmul",
                        "impl": "deberta-rs",
                        "backend": backend.name(),
                        "size": n,
                        "precision": precision.name(),
                        "median_ms": median,
                        "min_ms": min,
                        "max_ms": max,
                        "gflops": gflops,
                        "threads": threads,
                    })
                );
            }
        }
        Ok(())
    }
}
