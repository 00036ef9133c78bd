//! Measures the wgpu matmul in GFLOP/s at n = 256 and 512 (square, row-major `A·B` and the
//! `X·Wᵀ` layout of a Linear layer), next to the CPU backend on the same machine, and the cost
//! of one small kernel launch (recording plus execution).
//!
//! `cargo run --release -p deberta-gpu --example matmul_gflops` (select an adapter with
//! `DEBERTA_GPU_ADAPTER=<name fragment>`, a backend with `WGPU_BACKEND`).

use std::time::Instant;

use deberta_core::kernels::MatmulSpec;
use deberta_core::{Backend, CpuBackend};
use deberta_gpu::{AdapterChoice, WgpuBackend};

/// Seconds per product: the median of `reps` timed runs of `runs` products each, after a
/// warm-up; `sync` waits for the device.
fn time<B: Backend>(b: &B, n: usize, spec: &MatmulSpec, sync: &dyn Fn()) -> f64 {
    let data: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let a = b.upload(&data).expect("upload");
    let w = b.upload(&data).expect("upload");
    let mut c = b.zeros(n * n).expect("alloc");
    b.matmul(&a, &w, &mut c, spec).expect("matmul");
    sync();
    let runs = 4;
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..runs {
                b.matmul(&a, &w, &mut c, spec).expect("matmul");
            }
            sync();
            start.elapsed().as_secs_f64() / runs as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = WgpuBackend::new(AdapterChoice {
        name_contains: std::env::var("DEBERTA_GPU_ADAPTER").ok(),
    })?;
    let cpu = CpuBackend::new();
    println!("adapter: {}", gpu.adapter());
    for n in [256usize, 512] {
        let flops = 2.0 * (n * n * n) as f64;
        for (layout, spec) in [
            ("A·B", MatmulSpec::dense(n, n, n)),
            ("X·Wᵀ", MatmulSpec::linear(n, n, n)),
        ] {
            let gpu_s = time(&gpu, n, &spec, &|| gpu.synchronize().expect("synchronize"));
            let cpu_s = time(&cpu, n, &spec, &|| {});
            println!(
                "n = {n:>3} {layout:<5} wgpu {:>7.2} GFLOP/s ({:>8.2} ms)   cpu {:>7.2} GFLOP/s",
                flops / gpu_s / 1e9,
                gpu_s * 1e3,
                flops / cpu_s / 1e9
            );
        }
    }
    let launches = 2000;
    let mut x = gpu.zeros(256)?;
    gpu.synchronize()?;
    let start = Instant::now();
    for _ in 0..launches {
        gpu.scale(&mut x, 1.0)?;
    }
    gpu.synchronize()?;
    println!(
        "small kernel launch: {:.1} µs each over {launches}",
        start.elapsed().as_secs_f64() / launches as f64 * 1e6
    );
    Ok(())
}
