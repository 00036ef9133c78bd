//! The training attention (`Backend::attention_forward_train` and `Backend::attention_backward`)
//! against its composition from the unfused kernels: on the wgpu backend the fused kernels
//! (which keep one logsumexp per query row and recompute the probabilities in the backward)
//! must give the context and every gradient (dQ, dK, dV and the c2p/p2c table gradients) of
//! the composition on the same backend and on `CpuBackend` within [`TOL`], with and without
//! padding, position terms and attention dropout (whose mask the kernels regenerate from the
//! stream). The fused path never writes the probabilities, and its results are bit for bit
//! reproducible.

mod common;

use common::attention_case::{Case, Tensors, case_strategy};
use common::{assert_close, data, down, gpu, max_abs_diff, up};
use deberta_core::backend::{
    AttentionDropout, AttentionGrads, SavedAttention, TrainingBuffers, composed_attention_backward,
    composed_attention_forward_train,
};
use deberta_core::random::RandomStream;
use deberta_core::{Backend, CpuBackend, Precision};
use deberta_gpu::{AdapterChoice, DeviceOptions, WgpuBackend};
use proptest::prelude::*;

/// Absolute tolerance on the context and on every gradient (inputs in [-1, 1] scaled by the
/// case's `scale_qk` up to 6, at most 40 keys per row, f32 sums in different orders). Measured
/// on lavapipe over 400 proptest cases: worst 5.2e-6 (scale 6), 8.9e-7 (scale 2), 3.6e-7
/// (scale 0.5).
const TOL: f32 = 2e-5;

/// Absolute tolerance at f16 products (the inputs of [`TOL`]'s cases with `scale_qk` 2, rows of
/// up to 130 keys): binary16 rounds each operand by up to 2⁻¹¹ relative, so a sum moves by about
/// 2⁻¹⁰ of its terms' absolute sum. Measured on lavapipe: worst 4.5e-4 against the composition
/// at f16 products; against the f32 CPU 6.7e-4, the composition at f16 products 6.8e-4.
const F16_TOL: f32 = 4e-3;

/// What one training attention produced, downloaded: context, dQ, dK, dV, dc2p, dp2c, and
/// whether the probabilities buffer was left untouched.
struct Outputs {
    tensors: [Vec<f32>; 6],
    probs_untouched: bool,
}

const NAMES: [&str; 6] = ["context", "dquery", "dkey", "dvalue", "dc2p", "dp2c"];

/// Forward and backward of `case` on `b`, through the backend's methods or through the
/// compositions (`composed`), at f32 products.
fn train<B: Backend>(b: &B, case: &Case, dropout: Option<f32>, composed: bool) -> Outputs {
    train_at(b, case, dropout, composed, Precision::F32)
}

/// [`train`] with the products at `products`.
fn train_at<B: Backend>(
    b: &B,
    case: &Case,
    dropout: Option<f32>,
    composed: bool,
    products: Precision,
) -> Outputs {
    let p = case.problem();
    let spec = p.spec;
    let tensors = Tensors::upload(b, &p);
    let ops = tensors.operands(case);
    let dropout = dropout.map(|p| AttentionDropout {
        p,
        stream: RandomStream {
            seed: case.seed,
            step: 3,
            stream: 0x0102,
        },
    });
    let activation = spec.tokens() * spec.width();
    // Stale values must not leak through: every output starts as NaN.
    let nan = |n: usize| up(b, &vec![f32::NAN; n]);
    let mut probs = nan(spec.scores());
    let mut dropped = nan(spec.scores());
    let (mut c2p, mut p2c) = (nan(spec.table()), nan(spec.table()));
    let mut stats = nan(spec.stats());
    let mut context = nan(activation);
    let buffers = TrainingBuffers {
        probs: &mut probs,
        dropped: Some(&mut dropped),
        c2p: Some(&mut c2p),
        p2c: Some(&mut p2c),
        stats: &mut stats,
    };
    if composed {
        composed_attention_forward_train(b, ops, buffers, &mut context, dropout, spec, products)
    } else {
        b.attention_forward_train(ops, buffers, &mut context, dropout, spec, products)
    }
    .unwrap();
    let probs_untouched = down(b, &probs).iter().all(|x| x.is_nan());
    let dcontext = up(b, &data(activation, case.seed ^ 5, 1.0));
    let mut dscores = nan(spec.scores());
    let mut drows = nan(spec.stats());
    let (mut dquery, mut dkey, mut dvalue) = (nan(activation), nan(activation), nan(activation));
    let (mut dc2p, mut dp2c) = (nan(spec.table()), nan(spec.table()));
    let saved = SavedAttention {
        probs: &probs,
        dropped: Some(&dropped),
        stats: &stats,
        context: &context,
    };
    let grads = AttentionGrads {
        dscores: &mut dscores,
        drows: &mut drows,
        dquery: &mut dquery,
        dkey: &mut dkey,
        dvalue: &mut dvalue,
        dc2p: Some(&mut dc2p),
        dp2c: Some(&mut dp2c),
    };
    if composed {
        composed_attention_backward(b, ops, saved, &dcontext, dropout, grads, spec, products)
    } else {
        b.attention_backward(ops, saved, &dcontext, dropout, grads, spec, products)
    }
    .unwrap();
    // A table of an absent term is not written.
    let table = |t: &B::Tensor, present: bool| if present { down(b, t) } else { Vec::new() };
    Outputs {
        tensors: [
            down(b, &context),
            down(b, &dquery),
            down(b, &dkey),
            down(b, &dvalue),
            table(&dc2p, case.c2p),
            table(&dp2c, case.p2c),
        ],
        probs_untouched,
    }
}

/// Largest error of `ours` against `reference` over every output, after asserting each is
/// within `tol`.
fn compare(what: &str, reference: &Outputs, ours: &Outputs, tol: f32) -> f32 {
    let mut worst = 0.0f32;
    for ((name, r), o) in NAMES.iter().zip(&reference.tensors).zip(&ours.tensors) {
        assert_close(&format!("{what}: {name}"), r, o, tol);
        worst = worst.max(max_abs_diff(r, o));
    }
    worst
}

/// Fused on the GPU vs composed on the GPU and on the CPU (whose provided methods are the
/// composition bit for bit); returns the worst error against each.
fn check(case: &Case, dropout: Option<f32>) -> Option<(f32, f32)> {
    let cpu = CpuBackend::new();
    let cpu_composed = train(&cpu, case, dropout, true);
    let cpu_provided = train(&cpu, case, dropout, false);
    assert_eq!(
        cpu_provided.tensors, cpu_composed.tensors,
        "CPU provided methods"
    );
    let gpu = gpu()?;
    let fused = train(gpu, case, dropout, false);
    assert!(
        fused.probs_untouched,
        "the wgpu training attention wrote the probabilities (it must keep statistics only): \
         {case:?}"
    );
    let composed = train(gpu, case, dropout, true);
    let what = format!("{case:?}, dropout {dropout:?}");
    let same = compare(
        &format!("fused vs composed on wgpu, {what}"),
        &composed,
        &fused,
        TOL,
    );
    let cpu = compare(
        &format!("fused wgpu vs composed cpu, {what}"),
        &cpu_composed,
        &fused,
        TOL,
    );
    Some((same, cpu))
}

fn base() -> Case {
    Case {
        batch: 2,
        heads: 2,
        len: 19,
        head_dim: 16,
        c2p: true,
        p2c: true,
        buckets: (8, 16, 4),
        first_row: 1,
        valid: vec![19, 11],
        scale_qk: 1.0,
        seed: 11,
    }
}

/// [`check`] over `cases`, printing the worst errors.
fn check_all(cases: impl IntoIterator<Item = (Case, Option<f32>)>) {
    let mut worst = (0.0f32, 0.0f32);
    for (case, dropout) in cases {
        if let Some((same, cpu)) = check(&case, dropout) {
            worst = (worst.0.max(same), worst.1.max(cpu));
        }
    }
    println!(
        "worst error: fused vs composed on wgpu {:e}, vs cpu {:e}",
        worst.0, worst.1
    );
}

#[test]
fn every_term_padding_and_dropout_combination() {
    let mut cases = Vec::new();
    for (c2p, p2c) in [(false, false), (true, false), (false, true), (true, true)] {
        for valid in [vec![19, 19], vec![1, 19], vec![19, 0], vec![7, 12]] {
            for dropout in [None, Some(0.1), Some(0.5)] {
                let case = Case {
                    c2p,
                    p2c,
                    valid: valid.clone(),
                    ..base()
                };
                cases.push((case, dropout));
            }
        }
    }
    check_all(cases);
}

/// Rows of several tiles (32 queries or keys each): whole and partial tiles, padded rows, and
/// heads of 40 columns (partial chunks and halves of the staged bands).
#[test]
fn rows_of_several_tiles() {
    let mut cases = Vec::new();
    for (len, head_dim, valid) in [(150, 64, vec![150, 97]), (130, 40, vec![3, 130])] {
        for dropout in [None, Some(0.1)] {
            let case = Case {
                len,
                head_dim,
                valid: valid.clone(),
                ..base()
            };
            cases.push((case, dropout));
        }
    }
    check_all(cases);
}

/// Long sequences with (nearly) exact relative positions: 520 tokens need 1,037 window rows of
/// the c2p/p2c tables and 17 tiles of queries and keys per pass, 500 tokens (431 valid) 999
/// rows; each table row is one thread's, added to over every tile of the other side.
#[test]
fn long_rows_of_the_position_tables() {
    let mut cases = Vec::new();
    for (len, valid, rows) in [(520, vec![520], 1037), (500, vec![431], 999)] {
        let case = Case {
            batch: 1,
            heads: 1,
            len,
            head_dim: 16,
            buckets: (1024, 2048, 1024),
            valid,
            ..base()
        };
        assert_eq!(case.problem().spec.rows, rows, "{len} tokens");
        cases.push((case, Some(0.1)));
    }
    check_all(cases);
}

/// Mixed precision (f16 products, on adapters with `SHADER_F16`): the fused kernels round every
/// operand of their products to f16 as the composition's f16 matmuls do, so they agree with the
/// composition at f16 products and with the f32 CPU within [`F16_TOL`], and differ from their
/// own f32 results (the rounding ran); the probabilities are still never written.
#[test]
fn f16_products_round_like_the_composition() {
    let Some(gpu) = gpu() else { return };
    if gpu.mixed_products() != Precision::F16 {
        println!(
            "f16 attention products: this adapter has no SHADER_F16 (or DEBERTA_WGPU_F16=off)"
        );
        return;
    }
    let cpu = CpuBackend::new();
    let mut worst = (0.0f32, 0.0f32, 0.0f32);
    for (c2p, p2c) in [(false, false), (true, true), (true, false)] {
        for (len, head_dim, valid) in [(19, 16, vec![19, 11]), (130, 64, vec![130, 3])] {
            for dropout in [None, Some(0.1)] {
                let case = Case {
                    c2p,
                    p2c,
                    len,
                    head_dim,
                    valid: valid.clone(),
                    scale_qk: 2.0,
                    ..base()
                };
                let what = format!("{case:?}, dropout {dropout:?}");
                let fused = train_at(gpu, &case, dropout, false, Precision::F16);
                assert!(
                    fused.probs_untouched,
                    "f16 fused wrote probabilities: {what}"
                );
                let composed = train_at(gpu, &case, dropout, true, Precision::F16);
                let f32_cpu = train(&cpu, &case, dropout, true);
                let f32_fused = train(gpu, &case, dropout, false);
                assert_ne!(fused.tensors, f32_fused.tensors, "no rounding: {what}");
                let same = compare(
                    &format!("f16 fused vs f16 composed, {what}"),
                    &composed,
                    &fused,
                    F16_TOL,
                );
                let reference = compare(
                    &format!("f16 fused vs f32 cpu, {what}"),
                    &f32_cpu,
                    &fused,
                    F16_TOL,
                );
                let composed_reference = compare(
                    &format!("f16 composed vs f32 cpu, {what}"),
                    &f32_cpu,
                    &composed,
                    F16_TOL,
                );
                worst = (
                    worst.0.max(same),
                    worst.1.max(reference),
                    worst.2.max(composed_reference),
                );
            }
        }
    }
    println!(
        "worst error at f16 products: fused vs composed on wgpu {:e}; against the f32 cpu: \
         fused {:e}, composed {:e}",
        worst.0, worst.1, worst.2
    );
}

/// The kernels' rounding to binary16 (integer arithmetic in `f16_round.wgsl`) against `half`'s
/// conversion, bit for bit, on ties, subnormals, the overflow threshold and values of every
/// magnitude: with one key per sequence each probability is exactly 1, so the context of the
/// f16 forward is the rounded value rows.
#[test]
fn the_operand_rounding_is_binary16_round_to_nearest_even() {
    let Some(gpu) = gpu() else { return };
    let case = Case {
        batch: 2,
        heads: 4,
        len: 1,
        head_dim: 64,
        c2p: false,
        p2c: false,
        valid: vec![1, 1],
        ..base()
    };
    let mut p = case.problem();
    let tie = 1.0 + f32::powi(2.0, -11);
    let special = [
        0.0,
        1.0,
        tie,
        -tie,
        1.0 + 3.0 * f32::powi(2.0, -11),
        f32::powi(2.0, -24),
        f32::powi(2.0, -25),
        3.0 * f32::powi(2.0, -25),
        f32::powi(2.0, -26),
        -5.0 * f32::powi(2.0, -25),
        f32::powi(2.0, -14) * (1.0 - f32::powi(2.0, -12)),
        6.1e-5,
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        1e5,
        f32::from_bits(0x3f80_1000),
        f32::from_bits(0x3f80_3000),
    ];
    let mut state = 0x9e37_79b9_u32;
    for (e, v) in p.v.iter_mut().enumerate() {
        *v = match special.get(e) {
            Some(&x) => x,
            None => {
                // Every exponent from 2⁻³⁰ to 2¹⁷ with random fraction bits and sign.
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let exponent = 97 + (e as u32 * 7) % 48;
                f32::from_bits((state & 0x8000_0000) | (exponent << 23) | (state >> 9))
            }
        };
    }
    let spec = p.spec;
    let tensors = Tensors::upload(gpu, &p);
    let mut probs = up(gpu, &vec![0.0; spec.scores()]);
    let mut stats = up(gpu, &vec![0.0; spec.stats()]);
    let mut context = up(gpu, &vec![0.0; p.v.len()]);
    let buffers = TrainingBuffers {
        probs: &mut probs,
        dropped: None,
        c2p: None,
        p2c: None,
        stats: &mut stats,
    };
    gpu.attention_forward_train(
        tensors.operands(&case),
        buffers,
        &mut context,
        None,
        spec,
        Precision::F16,
    )
    .unwrap();
    for (v, found) in p.v.iter().zip(down(gpu, &context)) {
        // `+ 0.0`: the context is a sum from +0, which drops the sign of a zero.
        let expected = half::f16::from_f32(*v).to_f32() + 0.0;
        assert_eq!(
            found.to_bits(),
            expected.to_bits(),
            "{v:e} ({:#010x}) rounded to {found:e}, binary16 is {expected:e}",
            v.to_bits()
        );
    }
}

#[test]
fn the_fused_backward_is_deterministic() {
    let Some(gpu) = gpu() else { return };
    let case = Case {
        len: 40,
        head_dim: 64,
        ..base()
    };
    let first = train(gpu, &case, Some(0.1), false);
    let second = train(gpu, &case, Some(0.1), false);
    assert_eq!(first.tensors, second.tensors);
}

#[test]
fn heads_wider_than_the_kernels_fall_back_to_the_composition() {
    let case = Case {
        head_dim: 80,
        len: 9,
        valid: vec![9, 4],
        ..base()
    };
    let cpu = train(&CpuBackend::new(), &case, Some(0.1), true);
    let Some(gpu) = gpu() else { return };
    let ours = train(gpu, &case, Some(0.1), false);
    assert!(!ours.probs_untouched, "a fallback keeps the probabilities");
    compare("wide heads", &cpu, &ours, TOL);
}

/// `DeviceOptions::fused_attention` off: the backend's training attention (and inference's
/// fused attention) is the composition, bit for bit, in f32 and at f16 products, keeping the
/// probabilities; on, the same shape runs the fused kernels.
#[test]
fn without_fused_attention_the_backend_runs_the_composition() {
    if gpu().is_none() {
        return;
    }
    let options = DeviceOptions {
        fused_attention: false,
        ..DeviceOptions::from_env().unwrap()
    };
    let unfused = WgpuBackend::with_options(AdapterChoice::default(), options).unwrap();
    assert!(!unfused.fused_attention());
    let case = Case {
        len: 40,
        head_dim: 64,
        ..base()
    };
    let spec = case.problem().spec;
    let mut products = vec![Precision::F32];
    if unfused.f16_products() {
        products.push(Precision::F16);
    }
    for products in products {
        assert!(unfused.attention_training_uses_probabilities(&spec, products));
        assert!(
            !gpu()
                .unwrap()
                .attention_training_uses_probabilities(&spec, products)
        );
        let provided = train_at(&unfused, &case, Some(0.1), false, products);
        let composed = train_at(&unfused, &case, Some(0.1), true, products);
        assert!(
            !provided.probs_untouched,
            "{products:?}: the composition keeps them"
        );
        assert_eq!(provided.tensors, composed.tensors, "{products:?}");
    }
    assert!(unfused.fused_attention_uses_buffers(&spec));
    assert!(!gpu().unwrap().fused_attention_uses_buffers(&spec));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_training_attention_matches_the_composition(
        case in case_strategy(),
        dropout in prop::sample::select(vec![None, Some(0.1f32), Some(0.5)]),
    ) {
        let cpu = train(&CpuBackend::new(), &case, dropout, true);
        if let Some(gpu) = gpu() {
            let fused = train(gpu, &case, dropout, false);
            compare(&format!("{case:?}, dropout {dropout:?}"), &cpu, &fused, TOL);
        }
    }
}
