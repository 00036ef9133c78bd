//! Times one disentangled attention (fused kernel vs the unfused kernels) on the wgpu backend
//! and the CPU, for a `[batch, heads, len, head_dim]` shape with c2p and p2c over a full
//! relative window.
//!
//! `cargo run --release -p deberta-gpu --example attention_timing -- [batch heads len head_dim span]`
//! (defaults: the nano preset at 128 tokens, `1 4 128 32 64`).

use std::time::Instant;

use deberta_core::backend::{
    AttentionBuffers, AttentionOperands, AttentionSpec, attention_context, attention_probabilities,
};
use deberta_core::relative_position::{log_bucket_position, relative_index};
use deberta_core::{Backend, CpuBackend};
use deberta_gpu::{AdapterChoice, WgpuBackend};

fn values(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i.wrapping_mul(7919) + salt * 31) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// Median milliseconds of `reps` runs of fused (or unfused) attention, each synchronised by a
/// one-element download of the context.
fn time<B: Backend>(b: &B, dims: [usize; 5], fused: bool, reps: usize) -> f64 {
    let [batch, heads, len, head_dim, span] = dims;
    let idx = |i: usize, j: usize| {
        relative_index(
            log_bucket_position(i as i64 - j as i64, 2 * span, 8 * span),
            span,
        )
    };
    let first = idx(0, len - 1);
    let rows = idx(len - 1, 0) - first + 1;
    let index: Vec<u32> = (0..len * len)
        .map(|e| (idx(e / len, e % len) - first) as u32)
        .collect();
    let spec = AttentionSpec {
        batch,
        heads,
        len,
        head_dim,
        rows,
        first_row: 0,
        scale: (3.0 * head_dim as f32).sqrt(),
    };
    let n = spec.tokens() * spec.width();
    let up = |v: Vec<f32>| b.upload(&v).expect("upload");
    let (q, k, v) = (up(values(n, 1)), up(values(n, 2)), up(values(n, 3)));
    let (kr, qr) = (
        up(values(rows * spec.width(), 4)),
        up(values(rows * spec.width(), 5)),
    );
    let index = b.upload_indices(&index).expect("upload");
    let mask = up(vec![1.0; spec.tokens()]);
    let mut probs = b.zeros(spec.scores()).expect("alloc");
    let mut c2p = b.zeros(spec.table()).expect("alloc");
    let mut p2c = b.zeros(spec.table()).expect("alloc");
    let mut context = b.zeros(n).expect("alloc");
    let ops = AttentionOperands::<B> {
        query: &q,
        key: &k,
        value: &v,
        pos_key: Some(&kr).filter(|_| std::env::var("NO_REL").is_err()),
        pos_query: Some(&qr).filter(|_| std::env::var("NO_REL").is_err()),
        index: Some(&index),
        mask: &mask,
    };
    let mut run = || {
        let buffers = AttentionBuffers {
            probs: &mut probs,
            c2p: Some(&mut c2p),
            p2c: Some(&mut p2c),
        };
        if fused {
            b.fused_attention(ops, buffers, &mut context, spec)
                .expect("fused");
        } else {
            attention_probabilities(b, &ops, buffers, spec).expect("probabilities");
            attention_context(b, &probs, &v, &mut context, spec).expect("context");
        }
        let mut probe = [0.0f32];
        b.download(&context, &mut probe).expect("download");
    };
    run();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let dims: [usize; 5] = match args.len() {
        0 => [1, 4, 128, 32, 64],
        5 => [args[0], args[1], args[2], args[3], args[4]],
        _ => return Err("give batch heads len head_dim span, or nothing".into()),
    };
    let gpu = WgpuBackend::new(AdapterChoice {
        name_contains: std::env::var("DEBERTA_GPU_ADAPTER").ok(),
    })?;
    println!(
        "adapter: {}; [batch heads len head_dim span] = {dims:?}",
        gpu.adapter()
    );
    let cpu = CpuBackend::new();
    for round in 0..3 {
        println!(
            "round {round}: wgpu fused {:8.2} ms  unfused {:8.2} ms | cpu unfused {:7.2} ms",
            time(&gpu, dims, true, 5),
            time(&gpu, dims, false, 5),
            time(&cpu, dims, false, 5),
        );
    }
    Ok(())
}
