//! The split kernels of [`CpuBackend`] against the plain slice kernels, on shapes that span
//! several pieces, under rayon pools of 1 and 3 threads and at every SIMD level this CPU has:
//! bit-identical results (reductions: identical across pools and levels, and within rounding of
//! the one-pass sum).

use alloc::vec;
use alloc::vec::Vec;

use super::CpuBackend;
use crate::Activation;
use crate::backend::{Backend, Clip, LayerNormGrads};
use crate::kernels::{self, AdamSpec, LayerNormSpec, RelativeScoresSpec, SoftmaxSpec};
use crate::random::RandomStream;

fn values(len: usize, stream: u32) -> Vec<f32> {
    let random = RandomStream {
        seed: 7,
        step: 0,
        stream,
    };
    (0..len).map(|i| random.normal(i as u64)).collect()
}

/// Inputs of the attention kernels: two sequences (the first with 5 padded tokens), 3 heads,
/// 70 tokens, a 139-row relative window.
struct AttentionCase {
    mask: Vec<f32>,
    softmax: SoftmaxSpec,
    relative: RelativeScoresSpec,
    index: Vec<u32>,
    c2p: Vec<f32>,
    p2c: Vec<f32>,
    scores: Vec<f32>,
}

fn attention_case() -> AttentionCase {
    let (batch, heads, len, window) = (2, 3, 70, 139);
    let mut mask = vec![1.0; batch * len];
    mask[len - 5..len].fill(0.0);
    AttentionCase {
        mask,
        softmax: SoftmaxSpec { batch, heads, len },
        relative: RelativeScoresSpec {
            batch,
            heads,
            len,
            rows: window,
            scale: 3.0,
        },
        index: (0..len * len)
            .map(|k| ((k / len) as isize - (k % len) as isize + len as isize - 1) as u32)
            .collect(),
        c2p: values(batch * heads * len * window, 6),
        p2c: values(batch * heads * len * window, 7),
        scores: values(batch * heads * len * len, 8),
    }
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Every split kernel's outputs, computed by the backend on the current pool.
fn backend_outputs() -> Vec<Vec<f32>> {
    let cpu = CpuBackend::new();
    let mut outputs = Vec::new();
    let (rows, cols) = (300, 200);
    let x = values(rows * cols, 1);
    let gamma = values(cols, 2);
    let beta = values(cols, 3);
    let spec = LayerNormSpec {
        rows,
        cols,
        eps: 1e-7,
    };
    let mut out = vec![0.0; rows * cols];
    let mut stats = vec![0.0; 2 * rows];
    cpu.layer_norm(&x, &gamma, &beta, &mut out, Some(&mut stats), spec)
        .unwrap();
    let dout = values(rows * cols, 4);
    let (mut dx, mut dgamma, mut dbeta) =
        (values(rows * cols, 5), vec![0.5; cols], vec![0.0; cols]);
    cpu.layer_norm_backward(
        &x,
        &gamma,
        &stats,
        &dout,
        LayerNormGrads {
            dx: &mut dx,
            dgamma: &mut dgamma,
            dbeta: &mut dbeta,
            accumulate_dx: true,
        },
        spec,
    )
    .unwrap();
    outputs.extend([out, stats, dx, dgamma, dbeta]);

    let AttentionCase {
        mask,
        softmax,
        relative,
        index,
        c2p,
        p2c,
        mut scores,
    } = attention_case();
    cpu.add_relative_scores(&mut scores, Some(&c2p), Some(&p2c), &index, relative)
        .unwrap();
    cpu.masked_softmax(&mut scores, &mask, softmax).unwrap();
    let mut grad = values(scores.len(), 9);
    cpu.masked_softmax_backward(&scores, &mut grad, &mask, softmax)
        .unwrap();
    let (mut dc2p, mut dp2c) = (vec![1.0; c2p.len()], vec![1.0; p2c.len()]);
    cpu.relative_scores_backward(&grad, &index, Some(&mut dc2p), Some(&mut dp2c), relative)
        .unwrap();
    outputs.extend([scores, grad, dc2p, dp2c]);

    let mut act = vec![0.0; x.len()];
    cpu.activation(Activation::Gelu, &x, &mut act).unwrap();
    let mut dact = values(x.len(), 10);
    cpu.activation_backward(Activation::Gelu, &x, &dout, &mut dact, true)
        .unwrap();
    let mut dropped = x.clone();
    let stream = RandomStream {
        seed: 1,
        step: 2,
        stream: 3,
    };
    cpu.dropout(&mut dropped, 0.1, stream).unwrap();
    let mut biased = x.clone();
    cpu.add_bias(&mut biased, &gamma, cols).unwrap();
    cpu.add_assign(&mut biased, &dout).unwrap();
    cpu.scale(&mut biased, 0.75).unwrap();
    let mut bias_grad = vec![0.25; cols];
    cpu.sum_rows(&dout, &mut bias_grad, cols, true).unwrap();
    outputs.extend([act, dact.clone(), dropped, biased, bias_grad]);

    let vocab = 5000;
    let logits = values(7 * vocab, 11);
    let targets: Vec<u32> = vec![0, 4999, 17, 2500, 3, 4, 1234];
    let (mut losses, mut dlogits) = (vec![0.0; 7], vec![0.0; logits.len()]);
    cpu.cross_entropy(&logits, &targets, &mut losses, &mut dlogits, vocab, 0.5)
        .unwrap();
    let mut samples = vec![0u32; 7];
    cpu.sample_categorical(&logits, vocab, stream, &mut samples)
        .unwrap();
    let samples: Vec<f32> = samples.iter().map(|&s| s as f32).collect();
    outputs.extend([losses, dlogits, samples]);

    let (mut param, mut m, mut v) = (x.clone(), dout.clone(), vec![0.01; x.len()]);
    let norms = vec![4.0f32];
    let adam = AdamSpec {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.01,
        bias_correction_step: None,
        grad_scale: 1.0,
    };
    cpu.adam_update(
        &mut param,
        &dact,
        (&mut m, &mut v),
        adam,
        Some(Clip {
            squared_norm: &norms,
            max_norm: 1.0,
        }),
    )
    .unwrap();
    let mut sums = vec![0.0; 2];
    cpu.sum(&x, &mut sums, 0, 0.5).unwrap();
    let mut squares = vec![0.0; 1];
    cpu.sums_of_squares(&[&x], &mut squares).unwrap();
    sums[1] = squares[0];
    outputs.extend([param, m, v, sums]);

    // bf16 products: 300 rows in several pieces, an output width that is not a whole number
    // of panels, an odd inner width.
    let weight = cpu
        .pack_weight(&values(70 * 199, 12), 70, 199, crate::Precision::Bf16)
        .unwrap();
    let mut product = vec![0.0; rows * 70];
    cpu.matmul_packed(&values(rows * 199, 13), &weight, &mut product, rows)
        .unwrap();
    outputs.push(product);
    outputs
}

#[test]
fn split_kernels_do_not_depend_on_the_thread_count() {
    let one = in_pool(1, backend_outputs);
    let three = in_pool(3, backend_outputs);
    for (k, (a, b)) in one.iter().zip(&three).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "output {k} differs between 1 and 3 threads"
        );
    }
}

#[test]
fn kernels_do_not_depend_on_the_simd_level() {
    use crate::simd::{SimdLevel, set_max_simd_level, simd_level};
    let _knobs = crate::kernels::test_values::knobs();
    set_max_simd_level(Some(SimdLevel::Baseline));
    let baseline = in_pool(2, backend_outputs);
    set_max_simd_level(None);
    let widest = simd_level();
    for level in [SimdLevel::Avx2, SimdLevel::Avx512] {
        if level > widest {
            break;
        }
        set_max_simd_level(Some(level));
        let wide = in_pool(2, backend_outputs);
        set_max_simd_level(None);
        for (k, (a, b)) in baseline.iter().zip(&wide).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "output {k} differs between the baseline and {level:?}"
            );
        }
    }
}

#[test]
fn split_kernels_equal_the_slice_kernels() {
    let split = in_pool(3, backend_outputs);
    let (rows, cols) = (300, 200);
    let x = values(rows * cols, 1);
    let (gamma, beta) = (values(cols, 2), values(cols, 3));
    let spec = LayerNormSpec {
        rows,
        cols,
        eps: 1e-7,
    };
    let mut out = vec![0.0; rows * cols];
    let mut stats = vec![0.0; 2 * rows];
    kernels::layer_norm(&x, &gamma, &beta, &mut out, Some(&mut stats), spec).unwrap();
    let dout = values(rows * cols, 4);
    let (mut dx, mut dgamma, mut dbeta) =
        (values(rows * cols, 5), vec![0.5; cols], vec![0.0; cols]);
    let grads = LayerNormGrads {
        dx: &mut dx[..],
        dgamma: &mut dgamma[..],
        dbeta: &mut dbeta[..],
        accumulate_dx: true,
    };
    kernels::layer_norm_backward(&x, &gamma, &stats, &dout, grads, spec).unwrap();
    let mut act = vec![0.0; x.len()];
    kernels::activation(Activation::Gelu, &x, &mut act).unwrap();
    let mut bias_grad = vec![0.25; cols];
    kernels::sum_rows(&dout, &mut bias_grad, cols, true).unwrap();
    let AttentionCase {
        mask,
        softmax,
        relative,
        index,
        c2p,
        p2c,
        mut scores,
    } = attention_case();
    kernels::add_relative_scores(&mut scores, Some(&c2p), Some(&p2c), &index, relative).unwrap();
    kernels::masked_softmax(&mut scores, &mask, softmax).unwrap();
    let mut grad = values(scores.len(), 9);
    kernels::masked_softmax_backward(&scores, &mut grad, &mask, softmax).unwrap();
    let (mut dc2p, mut dp2c) = (vec![1.0; c2p.len()], vec![1.0; p2c.len()]);
    kernels::relative_scores_backward(&grad, &index, Some(&mut dc2p), Some(&mut dp2c), relative)
        .unwrap();
    let serial = [
        (5, scores),
        (6, grad),
        (7, dc2p),
        (8, dp2c),
        (0, out),
        (1, stats),
        (2, dx),
        (3, dgamma),
        (4, dbeta),
        (9, act),
        (13, bias_grad),
    ];
    for (k, expected) in serial {
        assert!(
            split[k]
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "output {k} differs from the slice kernel"
        );
    }
    let sums = &split[split.len() - 2];
    let weight =
        kernels::PackedWeight::new(&values(70 * 199, 12), 70, 199, crate::Precision::Bf16).unwrap();
    let mut product = vec![0.0; rows * 70];
    kernels::linear_packed(&values(rows * 199, 13), &weight, &mut product, rows).unwrap();
    assert!(
        split[split.len() - 1]
            .iter()
            .zip(&product)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "the bf16 product differs from the slice kernel"
    );
    let exact_sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
    let exact_squares: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    assert!((f64::from(sums[0]) - 0.5 * exact_sum).abs() < 1e-3);
    assert!((f64::from(sums[1]) - exact_squares).abs() / exact_squares < 1e-6);
}

/// The bf16 products of bf16-mixed training (forward through a packed weight, both backward
/// products through `matmul_reduced`) on shapes whose inner widths run on AMX where the CPU
/// has it: the same bits for any thread count.
#[test]
fn bf16_training_products_do_not_depend_on_the_thread_count() {
    use crate::kernels::MatmulSpec;
    let _knobs = crate::kernels::test_values::knobs();
    let (rows, input, output) = (320, 256, 96);
    let run = || {
        let cpu = CpuBackend::new();
        let (x, dy, w) = (
            values(rows * input, 21),
            values(rows * output, 22),
            values(output * input, 23),
        );
        let packed = cpu
            .pack_weight(&w, output, input, crate::Precision::Bf16Mixed)
            .unwrap();
        let mut y = vec![0.0; rows * output];
        cpu.matmul_packed(&x, &packed, &mut y, rows).unwrap();
        let mut dw = values(output * input, 24);
        let weight_grad = MatmulSpec::linear_weight_grad(rows, input, output);
        cpu.matmul_reduced(&dy, &x, &mut dw, &weight_grad, crate::Precision::Bf16Mixed)
            .unwrap();
        let mut dx = values(rows * input, 25);
        let input_grad = MatmulSpec::linear_input_grad(rows, input, output);
        cpu.matmul_reduced(&dy, &w, &mut dx, &input_grad, crate::Precision::Bf16Mixed)
            .unwrap();
        [y, dw, dx]
    };
    let one = in_pool(1, run);
    let three = in_pool(3, run);
    for (k, (a, b)) in one.iter().zip(&three).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "bf16 training product {k} differs between 1 and 3 threads"
        );
    }
}
