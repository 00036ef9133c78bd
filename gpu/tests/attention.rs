//! The fused disentangled attention (`Backend::fused_attention`) against the unfused kernels:
//! on the wgpu backend the fused WGSL kernel must equal the composition of matmul, relative
//! gather, masked softmax and matmul — on the same backend and on `CpuBackend` — within 1e-5
//! on every context element, for proptest-chosen shapes (ragged tiles, every combination of
//! position terms, log-bucketed and clamped relative indices, padding down to a single valid
//! token and fully padded sequences).

mod common;

use common::{assert_close, data, down, gpu, up, up_ids};
use deberta_core::backend::{
    AttentionBuffers, AttentionOperands, AttentionSpec, attention_context, attention_probabilities,
};
use deberta_core::relative_position::{log_bucket_position, relative_index};
use deberta_core::{Backend, CpuBackend};
use proptest::prelude::*;

const TOL: f32 = 1e-5;

/// One attention problem, generated on the host.
#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    heads: usize,
    len: usize,
    head_dim: usize,
    c2p: bool,
    p2c: bool,
    /// Log-bucket size, maximum position and span of the relative index.
    buckets: (usize, usize, usize),
    /// Projection rows before the window (a projection computed over more rows).
    first_row: usize,
    /// Valid tokens per sequence (the rest is padding; 0 = fully padded).
    valid: Vec<usize>,
    /// Magnitude of Q and K (larger: peakier softmax).
    scale_qk: f32,
    seed: u64,
}

/// Host data of a case.
struct Problem {
    spec: AttentionSpec,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    kr: Vec<f32>,
    qr: Vec<f32>,
    index: Vec<u32>,
    mask: Vec<f32>,
}

impl Case {
    fn problem(&self) -> Problem {
        let (len, width) = (self.len, self.heads * self.head_dim);
        let (bucket_size, max_position, span) = self.buckets;
        let idx = |i: usize, j: usize| {
            let rel = log_bucket_position(i as i64 - j as i64, bucket_size, max_position);
            relative_index(rel, span)
        };
        let first = idx(0, len - 1);
        let rows = idx(len - 1, 0) - first + 1;
        let index: Vec<u32> = (0..len * len)
            .map(|e| (idx(e / len, e % len) - first) as u32)
            .collect();
        let n = self.batch * len;
        let table_rows = self.first_row + rows + 2;
        let mask = (0..n)
            .map(|t| f32::from(u8::from(t % len < self.valid[t / len])))
            .collect();
        let scale = (self.head_dim as f32
            * (1 + usize::from(self.c2p) + usize::from(self.p2c)) as f32)
            .sqrt();
        Problem {
            spec: AttentionSpec {
                batch: self.batch,
                heads: self.heads,
                len,
                head_dim: self.head_dim,
                rows,
                first_row: self.first_row,
                scale,
            },
            q: data(n * width, self.seed, self.scale_qk),
            k: data(n * width, self.seed ^ 1, self.scale_qk),
            v: data(n * width, self.seed ^ 2, 1.0),
            kr: data(table_rows * width, self.seed ^ 3, self.scale_qk),
            qr: data(table_rows * width, self.seed ^ 4, self.scale_qk),
            index,
            mask,
        }
    }
}

/// The context of a case on `b`: through `fused_attention` or through the unfused kernels
/// (then also the probabilities).
fn attention<B: Backend>(b: &B, case: &Case, fused: bool) -> Vec<Vec<f32>> {
    let p = case.problem();
    let spec = p.spec;
    let (q, k, v) = (up(b, &p.q), up(b, &p.k), up(b, &p.v));
    let (kr, qr) = (up(b, &p.kr), up(b, &p.qr));
    let index = up_ids(b, &p.index);
    let mask = up(b, &p.mask);
    let ops = AttentionOperands::<B> {
        query: &q,
        key: &k,
        value: &v,
        pos_key: case.c2p.then_some(&kr),
        pos_query: case.p2c.then_some(&qr),
        index: Some(&index),
        mask: &mask,
    };
    let mut probs = b.zeros(spec.scores()).unwrap();
    let mut c2p = b.zeros(spec.table()).unwrap();
    let mut p2c = b.zeros(spec.table()).unwrap();
    // Stale values in the context must not leak through.
    let mut context = up(b, &vec![f32::NAN; spec.tokens() * spec.width()]);
    let buffers = AttentionBuffers {
        probs: &mut probs,
        c2p: Some(&mut c2p),
        p2c: Some(&mut p2c),
    };
    if fused {
        b.fused_attention(ops, buffers, &mut context, spec).unwrap();
        vec![down(b, &context)]
    } else {
        attention_probabilities(b, &ops, buffers, spec).unwrap();
        attention_context(b, &probs, &v, &mut context, spec).unwrap();
        vec![down(b, &context), down(b, &probs)]
    }
}

/// Fused on the GPU vs unfused on the GPU and on the CPU; the CPU's provided `fused_attention`
/// is its unfused path bit for bit.
fn check(case: &Case) {
    check_with(case, TOL);
}

/// [`check`] with tolerance `tol`.
fn check_with(case: &Case, tol: f32) {
    let cpu = CpuBackend::new();
    let cpu_unfused = attention(&cpu, case, false);
    let cpu_fused = attention(&cpu, case, true);
    assert_eq!(cpu_fused[0], cpu_unfused[0], "CPU provided fused_attention");
    let Some(gpu) = gpu() else { return };
    let gpu_fused = attention(gpu, case, true);
    let gpu_unfused = attention(gpu, case, false);
    assert_close(
        &format!("fused vs unfused on wgpu, {case:?}"),
        &gpu_unfused[0],
        &gpu_fused[0],
        tol,
    );
    assert_close(
        &format!("fused wgpu vs unfused cpu, {case:?}"),
        &cpu_unfused[0],
        &gpu_fused[0],
        tol,
    );
    assert_close(
        &format!("unfused probabilities wgpu vs cpu, {case:?}"),
        &cpu_unfused[1],
        &gpu_unfused[1],
        tol,
    );
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1usize..=2,
        1usize..=3,
        1usize..=40,
        prop::sample::select(vec![1usize, 3, 8, 16, 17, 32, 64]),
        0u8..4,
        prop::sample::select(vec![(8usize, 16usize, 4usize), (8, 32, 8), (256, 512, 256)]),
        0usize..3,
        prop::sample::select(vec![0.5f32, 2.0, 6.0]),
        any::<u64>(),
    )
        .prop_flat_map(
            |(batch, heads, len, head_dim, terms, buckets, first_row, scale_qk, seed)| {
                // Valid tokens per sequence: anywhere in 0..=len, often full or a single one.
                let valid =
                    prop::collection::vec(prop_oneof![Just(len), Just(1usize), 0..=len], batch);
                valid.prop_map(move |valid| Case {
                    batch,
                    heads,
                    len,
                    head_dim,
                    c2p: terms & 1 != 0,
                    p2c: terms & 2 != 0,
                    buckets,
                    first_row,
                    valid,
                    scale_qk,
                    seed,
                })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fused_attention_matches_the_unfused_kernels(case in case_strategy()) {
        check(&case);
    }
}

fn base() -> Case {
    Case {
        batch: 2,
        heads: 2,
        len: 33,
        head_dim: 64,
        c2p: true,
        p2c: true,
        buckets: (8, 16, 4),
        first_row: 1,
        valid: vec![33, 20],
        scale_qk: 2.0,
        seed: 7,
    }
}

#[test]
fn every_term_combination_and_padding_pattern() {
    for (c2p, p2c) in [(false, false), (true, false), (false, true), (true, true)] {
        for valid in [vec![33, 33], vec![1, 33], vec![33, 0], vec![16, 17]] {
            check(&Case {
                c2p,
                p2c,
                valid,
                ..base()
            });
        }
    }
}

#[test]
fn tile_boundaries_and_tiny_sequences() {
    for len in [1, 2, 15, 16, 17, 31, 32, 40] {
        check(&Case {
            len,
            valid: vec![len, len.div_ceil(2)],
            ..base()
        });
    }
}

#[test]
fn heads_wider_than_the_kernel_fall_back_to_the_unfused_path() {
    check(&Case {
        head_dim: 80,
        len: 9,
        valid: vec![9, 4],
        ..base()
    });
}

#[test]
fn extreme_scores_stay_finite() {
    // Scores of several hundred: the online softmax's rescaling must not overflow. Scores of
    // that size carry ~1e-5 of rounding by themselves in any summation order (the three paths
    // sum their dot products differently), hence the looser tolerance.
    check_with(
        &Case {
            scale_qk: 40.0,
            ..base()
        },
        1e-4,
    );
}
