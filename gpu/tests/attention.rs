//! The fused disentangled attention (`Backend::fused_attention`) against the unfused kernels:
//! on the wgpu backend the fused WGSL kernel must equal the composition of matmul, relative
//! gather, masked softmax and matmul — on the same backend and on `CpuBackend` — within 1e-5
//! on every context element, for proptest-chosen shapes (ragged tiles, every combination of
//! position terms, log-bucketed and clamped relative indices, padding down to a single valid
//! token and fully padded sequences).

mod common;

use common::attention_case::{Case, Tensors, case_strategy};
use common::{assert_close, down, gpu, up};
use deberta_core::backend::{AttentionBuffers, attention_context, attention_probabilities};
use deberta_core::{Backend, CpuBackend};
use proptest::prelude::*;

const TOL: f32 = 1e-5;

/// The context of a case on `b`: through `fused_attention` or through the unfused kernels
/// (then also the probabilities).
fn attention<B: Backend>(b: &B, case: &Case, fused: bool) -> Vec<Vec<f32>> {
    let p = case.problem();
    let spec = p.spec;
    let tensors = Tensors::upload(b, &p);
    let ops = tensors.operands(case);
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
        attention_context(b, &probs, &tensors.v, &mut context, spec).unwrap();
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
