//! `deberta bench`: timing of the forward pass on published shapes with random weights.

use std::time::Instant;

use clap::{Args, Subcommand};
use deberta_core::model::{
    Deberta, DeviceBatch, ForwardOptions, Heads, HostBatch, ParamLayout, SharedTables,
};
use deberta_core::random::RandomStream;
use deberta_core::{Backend, CpuBackend, ModelConfig};
use serde_json::json;

use crate::error::{Error, Result};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Encoder forward pass (`DebertaV2Model`, no head).
    Forward(BenchArgs),
}

/// Arguments shared by the benchmarks.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Published DeBERTa-v3 shape: xsmall, small, base or large.
    #[arg(long, default_value = "xsmall", value_parser = ["xsmall", "small", "base", "large"])]
    pub shape: String,
    /// Sequences per batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Compute backend.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "wgpu", "auto"])]
    pub backend: String,
    /// Untimed runs before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
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
    }
}

fn forward(args: BenchArgs) -> Result<()> {
    let threads = super::set_threads(args.threads);
    if args.backend == "wgpu" {
        return Err(Error::Usage(
            "--backend wgpu: the wgpu backend is not built into this version yet".into(),
        ));
    }
    if args.batch == 0 || args.seq == 0 || args.iters == 0 {
        return Err(Error::Usage(
            "--batch, --seq and --iters must be at least 1".into(),
        ));
    }
    let cfg = ModelConfig::deberta_v3(&args.shape)
        .ok_or_else(|| Error::Usage(format!("unknown shape {}", args.shape)))?;
    let backend = CpuBackend::new();
    let mut layout = ParamLayout::new();
    let model = Deberta::new(
        &mut layout,
        "",
        &cfg,
        Heads::default(),
        SharedTables::default(),
    );
    let ctx = |what: &'static str| move |e| Error::model(what, e);
    let params = layout
        .initialise(&backend, 0)
        .map_err(ctx("initialising weights"))?;
    let tokens = args.batch * args.seq;
    let rng = RandomStream {
        seed: 1,
        step: 0,
        stream: 0,
    };
    let ids: Vec<i64> = (0..tokens as u64)
        .map(|i| 1 + (rng.bits(i) as usize % (cfg.vocab_size - 1)) as i64)
        .collect();
    let mask = vec![1i64; tokens];
    let host = HostBatch {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: None,
        batch: args.batch,
        len: args.seq,
    };
    let batch = DeviceBatch::upload(&backend, &cfg, &host).map_err(ctx("input"))?;
    let relative = model
        .relative_embeddings(&backend, &params, None, None)
        .map_err(ctx("position projections"))?;
    let mut acts = model
        .activations(&backend, &batch, None, false)
        .map_err(ctx("activations"))?;
    let mut times = Vec::with_capacity(args.iters);
    for i in 0..args.warmup + args.iters {
        let start = Instant::now();
        model
            .forward(
                &backend,
                &params,
                relative.as_ref(),
                &batch,
                &ForwardOptions::inference(),
                &mut acts,
            )
            .map_err(ctx("forward"))?;
        let mut probe = [0.0f32; 1];
        backend
            .download(acts.last_hidden_state(), &mut probe)
            .map_err(ctx("readback"))?;
        if i >= args.warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (min, max) = (times[0], times[times.len() - 1]);
    let tokens_per_s = tokens as f64 / (median / 1e3);
    let gflops =
        forward_flops(&cfg, args.batch, args.seq, batch.window.rows) / (median / 1e3) / 1e9;
    println!(
        "forward {} batch {} seq {} on {} ({threads} threads): median {median:.2} ms (min {min:.2}, max {max:.2}) over {} runs, {tokens_per_s:.0} tokens/s, {gflops:.1} GFLOP/s",
        args.shape,
        args.batch,
        args.seq,
        backend.name(),
        args.iters
    );
    if args.json {
        println!(
            "{}",
            json!({
                "bench": "forward",
                "impl": "deberta-rs",
                "backend": backend.name(),
                "shape": args.shape,
                "batch": args.batch,
                "seq": args.seq,
                "median_ms": median,
                "min_ms": min,
                "max_ms": max,
                "tokens_per_s": tokens_per_s,
                "gflops": gflops,
                "threads": threads,
            })
        );
    }
    Ok(())
}
