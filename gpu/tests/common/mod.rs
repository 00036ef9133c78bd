//! Shared helpers of the wgpu test suites: the backend under test (or a loud skip), host
//! round trips generic over the backend, deterministic test data and comparisons.

#![allow(dead_code)] // each test binary uses its own subset

pub mod attention_case;

use deberta_core::Backend;
use deberta_gpu::WgpuBackend;

/// The wgpu backend shared by every test of a binary (see [`deberta_gpu::test_backend`]).
pub fn gpu() -> Option<&'static WgpuBackend> {
    deberta_gpu::test_backend()
}

/// The backends a conformance check runs on: the shared one, and a device of the same adapter
/// with the other variant of the compilation options: the tree reductions where the shared one
/// reduces over subgroups (`subgroup_reductions` off), naga's loop bounds where the shared one
/// leaves them out (`loop_bounds` flipped), the matmuls' prefetching and vector loads flipped,
/// early submission, the shared compute pass and the multi-tensor kernels flipped, and the f16
/// matmuls rounding their operands themselves, so that every kernel is checked both ways.
pub fn gpu_variants() -> Vec<&'static WgpuBackend> {
    static OTHER: std::sync::OnceLock<WgpuBackend> = std::sync::OnceLock::new();
    let Some(shared) = gpu() else {
        return Vec::new();
    };
    let other = OTHER.get_or_init(|| {
        let options = deberta_gpu::DeviceOptions {
            subgroup_reductions: false,
            loop_bounds: !shared.loop_bounds(),
            matmul_prefetch: !shared.matmul_prefetch(),
            matmul_vector_loads: !shared.matmul_vector_loads(),
            early_submission: !shared.early_submission(),
            shared_pass: !shared.shared_pass(),
            multi_tensor: Some(!shared.multi_tensor()),
            // The kernels' own f16 rounding where the shared device trusts the driver's (the
            // same bits there; the driver's conversion is never forced, as it may truncate).
            f16_rounding: Some(true),
            ..deberta_gpu::DeviceOptions::from_env().unwrap()
        };
        WgpuBackend::with_options(deberta_gpu::AdapterChoice::default(), options)
            .expect("a second device of the test adapter")
    });
    assert!(!other.subgroup_reductions() && other.loop_bounds() != shared.loop_bounds());
    assert_ne!(other.matmul_prefetch(), shared.matmul_prefetch());
    assert_ne!(other.matmul_vector_loads(), shared.matmul_vector_loads());
    assert_ne!(other.early_submission(), shared.early_submission());
    assert_ne!(other.shared_pass(), shared.shared_pass());
    assert_ne!(other.multi_tensor(), shared.multi_tensor());
    assert!(other.f16_rounded_by_kernels());
    vec![shared, other]
}

/// Uploads `data`.
pub fn up<B: Backend>(b: &B, data: &[f32]) -> B::Tensor {
    b.upload(data).expect("upload")
}

/// Uploads indices.
pub fn up_ids<B: Backend>(b: &B, data: &[u32]) -> B::Indices {
    b.upload_indices(data).expect("upload_indices")
}

/// Downloads a whole tensor.
pub fn down<B: Backend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    let mut out = vec![0.0; b.len(t)];
    b.download(t, &mut out).expect("download");
    out
}

/// `n` values uniform in `[-scale, scale)` from `seed` (xorshift; reproducible).
pub fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Largest `|a − b|` (NaN on either side counts as infinite unless both are NaN).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() && y.is_nan() {
                0.0
            } else {
                let d = (x - y).abs();
                if d.is_nan() { f32::INFINITY } else { d }
            }
        })
        .fold(0.0, f32::max)
}

/// Panics with the worst element unless every `|cpu − gpu| ≤ tol`.
pub fn assert_close(what: &str, cpu: &[f32], gpu: &[f32], tol: f32) {
    let worst = max_abs_diff(cpu, gpu);
    if worst > tol || worst.is_nan() {
        let (i, _) = cpu
            .iter()
            .zip(gpu)
            .enumerate()
            .map(|(i, (x, y))| (i, (x - y).abs()))
            .fold((0, -1.0f32), |acc, (i, d)| {
                if d > acc.1 || d.is_nan() { (i, d) } else { acc }
            });
        panic!(
            "{what}: max abs error {worst:e} > {tol:e} (element {i}: cpu {} gpu {})",
            cpu[i], gpu[i]
        );
    }
}
