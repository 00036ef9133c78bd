//! Backend conformance: every kernel of the `Backend` trait runs on `CpuBackend` (the oracle)
//! and on `WgpuBackend` from one generic body, on proptest-chosen small shapes. Outputs agree
//! within 1e-5 (matmul: 1e-5 relative to k·max|a|·max|b|; sums: relative to Σ|x|); dropout
//! masks and sampled ids agree exactly; errors are the same values.

mod common;

use common::{assert_close, data, down, gpu, gpu_variants, up, up_ids};
use deberta_core::backend::{
    AdamTensors, AttentionBuffers, AttentionOperands, AttentionSpec, Clip, Conv1dGrads, Conv1dSpec,
    LayerNormGrads,
};
use deberta_core::kernels::{
    AdamSpec, LayerNormSpec, MatmulSpec, MatrixLayout, RelativeScoresSpec, SoftmaxSpec,
};
use deberta_core::random::RandomStream;
use deberta_core::{Activation, Backend, CpuBackend, Error, Precision};
use deberta_gpu::{AdapterChoice, DeviceOptions, MatmulTiles, WgpuBackend};
use proptest::prelude::*;

const TOL: f32 = 1e-5;

/// Runs a generic check on the CPU and on each wgpu variant ([`gpu_variants`]) and compares every
/// output with its tolerance.
macro_rules! conform {
    ($check:ident ( $($arg:expr),* ), $tol:expr) => {{
        for gpu in gpu_variants() {
            let cpu_out = $check(&CpuBackend::new(), $($arg),*);
            let gpu_out = $check(gpu, $($arg),*);
            assert_eq!(cpu_out.len(), gpu_out.len());
            let tol: Vec<f32> = $tol;
            let reductions = match gpu.subgroup_reductions() {
                true => "subgroup",
                false => "tree",
            };
            let loops = match gpu.loop_bounds() {
                true => "with",
                false => "without",
            };
            let prefetch = match gpu.matmul_prefetch() {
                true => "prefetching",
                false => "not prefetching",
            };
            for (i, (c, g)) in cpu_out.iter().zip(&gpu_out).enumerate() {
                assert_close(
                    &format!(
                        "{} output {i} ({reductions} reductions, {loops} loop bounds, {prefetch})",
                        stringify!($check)
                    ),
                    c,
                    g,
                    tol[i.min(tol.len() - 1)],
                );
            }
        }
    }};
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ----- memory ----------------------------------------------------------------------------

fn memory_ops<B: Backend>(b: &B, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let x = data(n, seed, 1.0);
    let mut t = up(b, &x);
    let z = b.zeros(n).unwrap();
    let mut filled = b.zeros(n).unwrap();
    b.fill(&mut filled, 0.25).unwrap();
    let mut cleared = up(b, &x);
    b.fill(&mut cleared, 0.0).unwrap();
    if n > 2 {
        b.write(&mut t, 1, &[7.0, 8.0]).unwrap();
    }
    let mut dst = b.zeros(n + 3).unwrap();
    b.copy(&t, n / 2, &mut dst, 3, n - n / 2).unwrap();
    let mut prefix = vec![0.0; n / 2];
    b.download(&t, &mut prefix).unwrap();
    let ids = up_ids(b, &[3, 1, 4, 1, 5]);
    let mut back = [0u32; 3];
    b.download_indices(&ids, &mut back).unwrap();
    vec![
        down(b, &t),
        down(b, &z),
        down(b, &filled),
        down(b, &cleared),
        down(b, &dst),
        prefix,
        back.iter().map(|&v| v as f32).collect(),
        vec![b.len(&t) as f32],
    ]
}

proptest! {
    #![proptest_config(config(8))]

    #[test]
    fn memory_operations_match_cpu(n in 0usize..50, seed in any::<u64>()) {
        conform!(memory_ops(n, seed), vec![0.0]);
    }
}

/// A tensor one element past what the device binds is refused with both sizes (the error a
/// user of an adapter with 128 MiB bindings meets for a 128,100-token embedding table), and
/// the device stays usable.
#[test]
fn tensors_beyond_the_largest_binding_are_refused_with_their_size() {
    let Some(gpu) = gpu() else { return };
    let caps = &gpu.adapter().capabilities;
    let limit = caps.largest_storage_binding.min(caps.largest_buffer);
    let elements = usize::try_from(limit / 4 + 1).expect("a 64-bit host");
    match gpu.zeros(elements) {
        Err(Error::DeviceLimit {
            requested,
            limit: l,
            ..
        }) => {
            assert_eq!(requested, elements as u64 * 4);
            assert!(l <= limit && requested > l, "{requested} vs {l}");
        }
        other => panic!("{elements} elements: {:?}", other.map(|_| ())),
    }
    let small = gpu.zeros(4).expect("the device still allocates");
    assert_eq!(down(gpu, &small), vec![0.0; 4]);
}

// ----- matmul ----------------------------------------------------------------------------

/// A batched product with every layout feature: offsets, padded strides, transposes, two
/// batch dimensions, α and β.
#[derive(Debug, Clone)]
struct MatmulCase {
    batch: [usize; 2],
    m: usize,
    n: usize,
    k: usize,
    transpose_a: bool,
    transpose_b: bool,
    transpose_c: bool,
    alpha: f32,
    beta: f32,
    seed: u64,
    /// Offsets and leading dimensions multiples of 4, so that the tiled kernels read the
    /// operands four elements at a time (else they cannot: offsets 2 and 5).
    aligned: bool,
}

/// A layout of `rows × cols` matrices, one per batch entry, padded, after `offset` elements
/// (`aligned`: the offset and the padded leading dimension rounded up to multiples of 4); and
/// the buffer length it needs.
fn layout(
    batch: [usize; 2],
    rows: usize,
    cols: usize,
    transpose: bool,
    (offset, aligned): (usize, bool),
) -> (MatrixLayout, usize) {
    let (outer, inner) = if transpose {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let (offset, lead) = match aligned {
        true => (offset.next_multiple_of(4), (inner + 3).next_multiple_of(4)),
        false => (offset, inner + 3),
    };
    let size = outer * lead;
    let base = if transpose {
        MatrixLayout::row_major(lead).transposed()
    } else {
        MatrixLayout::row_major(lead)
    };
    (
        base.at(offset).batched(batch[1] * size, size),
        offset + batch[0] * batch[1] * size,
    )
}

/// `values` with NaN at every index that no element of the `rows × cols` matrices of `layout`
/// (one per batch entry) occupies.
fn outside_nan(
    mut values: Vec<f32>,
    layout: &MatrixLayout,
    batch: [usize; 2],
    rows: usize,
    cols: usize,
) -> Vec<f32> {
    let mut inside = vec![false; values.len()];
    for outer in 0..batch[0] {
        for inner in 0..batch[1] {
            for row in 0..rows {
                for col in 0..cols {
                    let index = layout.offset
                        + outer * layout.batch_strides[0]
                        + inner * layout.batch_strides[1]
                        + row * layout.row_stride
                        + col * layout.col_stride;
                    inside[index] = true;
                }
            }
        }
    }
    for (value, inside) in values.iter_mut().zip(inside) {
        if !inside {
            *value = f32::NAN;
        }
    }
    values
}

fn matmul_case<B: Backend>(b: &B, case: &MatmulCase) -> Vec<Vec<f32>> {
    let (la, na) = layout(
        case.batch,
        case.m,
        case.k,
        case.transpose_a,
        (2, case.aligned),
    );
    let (lb, nb) = layout(
        case.batch,
        case.k,
        case.n,
        case.transpose_b,
        (5, case.aligned),
    );
    let (lc, nc) = layout(
        case.batch,
        case.m,
        case.n,
        case.transpose_c,
        (1, case.aligned),
    );
    let spec = MatmulSpec {
        batch: case.batch,
        m: case.m,
        n: case.n,
        k: case.k,
        a: la,
        b: lb,
        c: lc,
        alpha: case.alpha,
        beta: case.beta,
    };
    // NaN wherever the operands' buffers hold no element of theirs: a kernel that lets anything
    // outside the operands into a sum gives NaN.
    let a_values = outside_nan(data(na, case.seed, 1.0), &la, case.batch, case.m, case.k);
    let b_values = outside_nan(
        data(nb, case.seed + 1, 1.0),
        &lb,
        case.batch,
        case.k,
        case.n,
    );
    let (a, bb) = (up(b, &a_values), up(b, &b_values));
    let mut c = up(b, &data(nc, case.seed + 2, 1.0));
    b.matmul(&a, &bb, &mut c, &spec).unwrap();
    vec![down(b, &c)]
}

fn matmul_strategy() -> impl Strategy<Value = MatmulCase> {
    (
        (1usize..3, 1usize..3),
        (1usize..70, 1usize..70, 0usize..40),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        (
            prop::sample::select(vec![1.0f32, 0.5, -2.0]),
            prop::sample::select(vec![0.0f32, 1.0, 0.25]),
        ),
        (any::<u64>(), any::<bool>()),
    )
        .prop_map(
            |((b0, b1), (m, n, k), (ta, tb, tc), (alpha, beta), (seed, aligned))| MatmulCase {
                batch: [b0, b1],
                m,
                n,
                k,
                transpose_a: ta,
                transpose_b: tb,
                transpose_c: tc,
                alpha,
                beta,
                seed,
                aligned,
            },
        )
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn matmul_matches_cpu(case in matmul_strategy()) {
        // Inputs are in [-1, 1]: k·max|a|·max|b| ≤ k, plus the β·C term.
        let bound = case.k.max(1) as f32 * case.alpha.abs() + case.beta.abs();
        conform!(matmul_case(&case), vec![TOL * bound]);
    }
}

#[test]
fn tiled_matmul_with_partial_tiles_matches_cpu_in_every_layout() {
    for (transposes, aligned) in (0..8u32).flat_map(|t| [(t, false), (t, true)]) {
        let case = MatmulCase {
            batch: [1, 2],
            m: 97,
            n: 130,
            k: 37,
            transpose_a: transposes & 1 != 0,
            transpose_b: transposes & 2 != 0,
            transpose_c: transposes & 4 != 0,
            alpha: 0.5,
            beta: 1.0,
            seed: u64::from(transposes),
            aligned,
        };
        conform!(matmul_case(&case), vec![TOL * 37.0]);
    }
}

#[test]
fn every_tiled_matmul_kernel_matches_cpu() {
    if gpu().is_none() {
        return;
    }
    // Backends of their own (forcing a kernel here must not change what other tests run): the
    // matmuls prefetching each step's operands and reading them four at a time where they can,
    // and neither.
    let device = |on| {
        let options = DeviceOptions {
            matmul_prefetch: on,
            matmul_vector_loads: on,
            ..DeviceOptions::from_env().unwrap()
        };
        WgpuBackend::with_options(AdapterChoice::default(), options).expect("second device")
    };
    let (prefetching, not_prefetching) = (device(true), device(false));
    // Every case's bits under the first tile choice: the others must give the same.
    let mut first_bits: Vec<Vec<u32>> = Vec::new();
    for (forced, tiles) in [&prefetching, &not_prefetching]
        .into_iter()
        .flat_map(|b| MatmulTiles::ALL.map(|tiles| (b, tiles)))
    {
        forced.set_matmul_tiles(tiles);
        let prefetch = forced.matmul_prefetch();
        let mut case_index = 0;
        for (shape, transposes) in [
            ((97, 130, 37), 0..8u32),
            ((200, 150, 70), 0..2u32),
            ((300, 260, 40), 0..1u32),
        ] {
            for (t, aligned) in transposes.flat_map(|t| [(t, false), (t, true)]) {
                let case = MatmulCase {
                    batch: [1, 2],
                    m: shape.0,
                    n: shape.1,
                    k: shape.2,
                    transpose_a: t & 1 != 0,
                    transpose_b: t & 2 != 0,
                    transpose_c: t & 4 != 0,
                    alpha: 0.5,
                    // β = 0 on the largest: measuring times C itself, which it overwrites.
                    beta: if shape.0 == 300 { 0.0 } else { 1.0 },
                    seed: u64::from(t) + 11,
                    aligned,
                };
                let expected = matmul_case(&CpuBackend::new(), &case);
                let found = matmul_case(forced, &case);
                let what = format!(
                    "{tiles:?} tiles (prefetching and vector loads {prefetch}), {shape:?}, transposes {t}, aligned {aligned}"
                );
                assert_close(&what, &expected[0], &found[0], TOL * shape.2 as f32);
                let bits: Vec<u32> = found[0].iter().map(|x| x.to_bits()).collect();
                match first_bits.get(case_index) {
                    Some(first) => assert!(
                        first == &bits,
                        "{what}: other bits than the first tile choice, prefetching"
                    ),
                    None => first_bits.push(bits),
                }
                case_index += 1;
            }
        }
    }
    // The measured policy timed each shape once (into scratch where β = 1: a timing run into C
    // would have changed the bits above) and kept a tile size for it.
    let measured = prefetching.measured_matmul_tiles();
    println!("measured tiles: {measured:?}");
    for (m, n, k) in [(97, 130, 37), (200, 150, 70), (300, 260, 40)] {
        let choice = measured
            .iter()
            .find(|t| (t.m, t.n, t.k, t.entries) == (m, n, k, 2))
            .unwrap_or_else(|| panic!("no measured tile for {m}×{n}×{k}"));
        assert!([32, 64, 128].contains(&choice.tile), "{choice:?}");
    }
}

/// A product whose C is read (β ≠ 0) and over 16 MiB keeps the occupancy rule instead of
/// timing into a scratch C that large; the same shape with β = 0 is timed into C itself.
#[test]
fn large_accumulating_products_are_not_measured() {
    if gpu().is_none() {
        return;
    }
    let own = WgpuBackend::new(AdapterChoice::default()).expect("second device");
    let measured = |beta: f32| {
        let case = MatmulCase {
            batch: [1, 1],
            m: 2048,
            n: 2080,
            k: 16,
            transpose_a: false,
            transpose_b: false,
            transpose_c: false,
            alpha: 1.0,
            beta,
            seed: 5,
            aligned: false,
        };
        let expected = matmul_case(&CpuBackend::new(), &case);
        let found = matmul_case(&own, &case);
        assert_close(&format!("beta {beta}"), &expected[0], &found[0], TOL * 16.0);
        own.measured_matmul_tiles()
            .iter()
            .any(|t| (t.m, t.n, t.k) == (2048, 2080, 16))
    };
    assert!(!measured(1.0), "a 17 MB accumulated C was measured");
    assert!(measured(0.0), "the same product into C was not measured");
}

#[test]
fn split_k_weight_gradient_products_match_cpu() {
    let Some(gpu) = gpu() else {
        return;
    };
    // A backend of its own, to compare the rule (`Auto`: strided pieces) with `Measured`, which
    // times the pieces' block layout: the same split, the same bits.
    let own = WgpuBackend::new(AdapterChoice::default()).expect("second device");
    // Deep, narrow single products (as weight gradients are), which the automatic plan splits
    // along k into two pieces, with a k that is no multiple of the tile depth, in every
    // layout of A and B, accumulating into C.
    for (m, n, k) in [(40, 48, 1500), (64, 33, 1037)] {
        for (t, aligned) in (0..4u32).flat_map(|t| [(t, false), (t, true)]) {
            let case = MatmulCase {
                batch: [1, 1],
                m,
                n,
                k,
                transpose_a: t & 1 != 0,
                transpose_b: t & 2 != 0,
                transpose_c: false,
                alpha: -0.5,
                beta: 0.25,
                seed: u64::from(t) + 29,
                aligned,
            };
            let expected = matmul_case(&CpuBackend::new(), &case);
            let found = matmul_case(gpu, &case);
            assert_close(
                &format!("{m}×{n}×{k}, transposes {t}"),
                &expected[0],
                &found[0],
                TOL * k as f32,
            );
            let bits = |tiles| {
                own.set_matmul_tiles(tiles);
                let found = matmul_case(&own, &case);
                found[0].iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
            };
            assert!(
                bits(MatmulTiles::Auto) == bits(MatmulTiles::Measured),
                "{m}×{n}×{k}, transposes {t}: the measured pieces give other bits"
            );
        }
        let measured = own.measured_matmul_tiles();
        let split = measured.iter().find(|c| (c.m, c.n, c.k) == (m, n, k));
        assert_eq!(split.map(|c| c.tile), Some(64), "{measured:?}");
    }
}

/// A linear layer's product `x[rows, input]·Wᵀ + b` with the bias added as C is stored
/// (`matmul_bias`, into a C of stale values: β = 0 overwrites them), and the same product
/// followed by `add_bias`; then both again with a residual added (`add_assign` after the
/// separate ones).
fn matmul_bias_case<B: Backend>(
    b: &B,
    [rows, input, output]: [usize; 3],
    products: Precision,
    seed: u64,
) -> Vec<Vec<f32>> {
    let x = up(b, &data(rows * input, seed, 1.0));
    let weight = up(b, &data(output * input, seed + 1, 1.0));
    let bias = up(b, &data(output, seed + 2, 1.0));
    let residual = up(b, &data(rows * output, seed + 4, 1.0));
    let spec = MatmulSpec::linear(rows, input, output);
    let mut outputs = Vec::new();
    for added in [None, Some(&residual)] {
        let mut fused = up(b, &data(rows * output, seed + 3, 1.0));
        b.matmul_bias([&x, &weight], &bias, added, &mut fused, &spec, products)
            .unwrap();
        let mut separate = b.zeros(rows * output).unwrap();
        b.matmul_reduced(&x, &weight, &mut separate, &spec, products)
            .unwrap();
        b.add_bias(&mut separate, &bias, output).unwrap();
        if let Some(residual) = added {
            b.add_assign(&mut separate, residual).unwrap();
        }
        outputs.extend([down(b, &fused), down(b, &separate)]);
    }
    outputs
}

/// `[rows, input, output]` of linear layers that take each path of a product: the
/// one-thread-per-output kernel (6 rows), tiled kernels with partial tiles, and a deep
/// product with few outputs that the rule splits along k (the bias then added by the sum of
/// the pieces).
const LINEAR_SHAPES: [[usize; 3]; 4] = [[6, 40, 50], [97, 37, 130], [300, 40, 260], [40, 1500, 48]];

#[test]
fn matmul_bias_matches_cpu_and_is_the_product_then_add_bias_bit_for_bit() {
    let Some(gpu) = gpu() else {
        return;
    };
    for (shape, seed) in LINEAR_SHAPES.into_iter().zip(40..) {
        // Inputs in [-1, 1]: |x·w| ≤ input, plus the bias.
        let tol = TOL * (shape[1] + 1) as f32;
        conform!(matmul_bias_case(shape, Precision::F32, seed), vec![tol]);
    }
    // Under every tile policy, and with f16 products where the device has them: the fused bias
    // gives the bits of the separate kernel after the same product.
    let own = WgpuBackend::new(AdapterChoice::default()).expect("second device");
    let precisions = match gpu.f16_products() {
        true => vec![Precision::F32, Precision::F16],
        false => vec![Precision::F32],
    };
    for tiles in MatmulTiles::ALL {
        own.set_matmul_tiles(tiles);
        for (&products, (shape, seed)) in precisions
            .iter()
            .flat_map(|p| LINEAR_SHAPES.into_iter().zip(50..).map(move |s| (p, s)))
        {
            let outputs = matmul_bias_case(&own, shape, products, seed);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            for (pair, residual) in outputs.chunks(2).zip(["without", "with"]) {
                assert!(
                    bits(&pair[0]) == bits(&pair[1]),
                    "{tiles:?}, {products:?}, {shape:?}, {residual} a residual: other bits"
                );
            }
        }
    }
}

/// Attention's layouts: per (batch, head) products reading and writing head slices of
/// `[tokens, heads·d]` activations, and a C shared by every batch entry (accumulated in order).
fn attention_layouts<B: Backend>(b: &B, seed: u64) -> Vec<Vec<f32>> {
    let (batch, len, heads, d) = (2, 7, 3, 5);
    let width = heads * d;
    let q = up(b, &data(batch * len * width, seed, 1.0));
    let k = up(b, &data(batch * len * width, seed + 1, 1.0));
    let mut scores = b.zeros(batch * heads * len * len).unwrap();
    b.matmul(
        &q,
        &k,
        &mut scores,
        &MatmulSpec {
            batch: [batch, heads],
            m: len,
            n: len,
            k: d,
            a: MatrixLayout::row_major(width).batched(len * width, d),
            b: MatrixLayout::row_major(width)
                .transposed()
                .batched(len * width, d),
            c: MatrixLayout::row_major(len).batched(heads * len * len, len * len),
            alpha: 0.5,
            beta: 0.0,
        },
    )
    .unwrap();
    let mut context = b.zeros(batch * len * width).unwrap();
    b.matmul(
        &scores,
        &k,
        &mut context,
        &MatmulSpec {
            batch: [batch, heads],
            m: len,
            n: d,
            k: len,
            a: MatrixLayout::row_major(len).batched(heads * len * len, len * len),
            b: MatrixLayout::row_major(width).batched(len * width, d),
            c: MatrixLayout::row_major(width).batched(len * width, d),
            alpha: 1.0,
            beta: 0.0,
        },
    )
    .unwrap();
    // Σ over the batch into one [d, d] matrix: every entry writes the same C.
    let mut shared = up(b, &data(d * d, seed + 2, 1.0));
    b.matmul(
        &q,
        &k,
        &mut shared,
        &MatmulSpec {
            batch: [batch, heads],
            m: d,
            n: d,
            k: len,
            a: MatrixLayout::row_major(width)
                .transposed()
                .batched(len * width, d),
            b: MatrixLayout::row_major(width).batched(len * width, d),
            c: MatrixLayout::row_major(d),
            alpha: 1.0,
            beta: 1.0,
        },
    )
    .unwrap();
    vec![down(b, &scores), down(b, &context), down(b, &shared)]
}

#[test]
fn matmul_attention_layouts_and_shared_outputs_match_cpu() {
    conform!(attention_layouts(7), vec![1e-4]);
}

fn conv1d_both<B: Backend>(b: &B, spec: Conv1dSpec, seed: u64) -> Vec<Vec<f32>> {
    let cin_g = spec.in_channels / spec.groups;
    let x = up(
        b,
        &data(spec.batch * spec.len * spec.in_channels, seed, 1.0),
    );
    let w = up(
        b,
        &data(spec.out_channels * cin_g * spec.kernel, seed + 1, 1.0),
    );
    let bias = up(b, &data(spec.out_channels, seed + 2, 1.0));
    let mut out = b.zeros(spec.batch * spec.len * spec.out_channels).unwrap();
    b.conv1d(&x, &w, &bias, &mut out, spec).unwrap();
    let dout = up(
        b,
        &data(spec.batch * spec.len * spec.out_channels, seed + 3, 1.0),
    );
    let mut dx = b.zeros(b.len(&x)).unwrap();
    let mut dw = b.zeros(b.len(&w)).unwrap();
    let mut db = b.zeros(spec.out_channels).unwrap();
    b.conv1d_backward(
        &x,
        &w,
        &dout,
        Conv1dGrads {
            dinput: &mut dx,
            dweight: &mut dw,
            dbias: &mut db,
        },
        spec,
    )
    .unwrap();
    vec![down(b, &out), down(b, &dx), down(b, &dw), down(b, &db)]
}

#[test]
fn conv1d_and_backward_match_cpu() {
    let spec = Conv1dSpec {
        batch: 2,
        len: 6,
        in_channels: 4,
        out_channels: 6,
        kernel: 3,
        groups: 2,
    };
    conform!(conv1d_both(spec, 3), vec![1e-4]);
}

// ----- element-wise ----------------------------------------------------------------------

const ACTIVATIONS: [Activation; 7] = [
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::Relu,
    Activation::Tanh,
    Activation::Silu,
    Activation::Sigmoid,
    Activation::Identity,
];

fn elementwise<B: Backend>(b: &B, rows: usize, cols: usize, seed: u64) -> Vec<Vec<f32>> {
    let n = rows * cols;
    // A ragged tail beyond whole rows is left alone by the row kernels.
    let x0 = data(n + 1, seed, 2.0);
    let y = up(b, &data(n + 1, seed + 1, 2.0));
    let bias = up(b, &data(cols, seed + 2, 1.0));
    let scales = up(b, &data(rows + 1, seed + 3, 1.0));
    let mut x = up(b, &x0);
    b.add_assign(&mut x, &y).unwrap();
    b.add_bias(&mut x, &bias, cols).unwrap();
    b.scale_rows(&mut x, &scales, cols).unwrap();
    b.scale(&mut x, -0.75).unwrap();
    let mut outputs = vec![down(b, &x)];
    let input = up(b, &data(n, seed + 4, 6.0));
    let dout = up(b, &data(n, seed + 5, 1.0));
    for act in ACTIVATIONS {
        let mut out = b.zeros(n).unwrap();
        b.activation(act, &input, &mut out).unwrap();
        let mut dx = up(b, &data(n, seed + 6, 1.0));
        b.activation_backward(act, &input, &dout, &mut dx, true)
            .unwrap();
        let mut dx_written = b.zeros(n).unwrap();
        b.activation_backward(act, &input, &dout, &mut dx_written, false)
            .unwrap();
        outputs.extend([down(b, &out), down(b, &dx), down(b, &dx_written)]);
    }
    outputs
}

fn sequence_rows<B: Backend>(b: &B, shape: [usize; 3], row: usize, seed: u64) -> Vec<Vec<f32>> {
    let n = shape.iter().product();
    let x = up(b, &data(n, seed, 1.0));
    let mut out = b.zeros(n).unwrap();
    b.add_sequence_row(&x, &mut out, shape[0], shape[1], shape[2], row)
        .unwrap();
    let mut dx = up(b, &data(n, seed + 1, 1.0));
    b.add_sequence_row_backward(&x, &mut dx, shape, row, true)
        .unwrap();
    let mut dx_written = b.zeros(n).unwrap();
    b.add_sequence_row_backward(&x, &mut dx_written, shape, row, false)
        .unwrap();
    vec![down(b, &out), down(b, &dx), down(b, &dx_written)]
}

fn column_sums<B: Backend>(b: &B, rows: usize, cols: usize, seed: u64) -> Vec<Vec<f32>> {
    let x = up(b, &data(rows * cols, seed, 1.0));
    let mut acc = up(b, &data(cols + 2, seed + 1, 1.0));
    b.sum_rows(&x, &mut acc, cols, true).unwrap();
    let mut written = up(b, &data(cols, seed + 2, 1.0));
    b.sum_rows(&x, &mut written, cols, false).unwrap();
    vec![down(b, &acc), down(b, &written)]
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn elementwise_kernels_match_cpu(rows in 0usize..9, cols in 1usize..40, seed in any::<u64>()) {
        conform!(elementwise(rows, cols, seed), vec![TOL]);
    }

    #[test]
    fn sequence_row_broadcast_and_backward_match_cpu(
        batch in 1usize..4, len in 1usize..9, dim in 1usize..12, row in 0usize..9, seed in any::<u64>(),
    ) {
        let row = row % len;
        conform!(sequence_rows([batch, len, dim], row, seed), vec![TOL]);
    }

    #[test]
    fn sum_rows_matches_cpu(rows in 0usize..200, cols in 1usize..20, seed in any::<u64>()) {
        conform!(column_sums(rows, cols, seed), vec![TOL * (1.0 + rows as f32).sqrt() * 4.0]);
    }
}

// ----- normalisation and attention ---------------------------------------------------------

fn layer_norms<B: Backend>(b: &B, rows: usize, cols: usize, seed: u64) -> Vec<Vec<f32>> {
    let spec = LayerNormSpec {
        rows,
        cols,
        eps: 1e-7,
    };
    let n = rows * cols;
    let x = up(b, &data(n, seed, 2.0));
    let gamma = up(b, &data(cols, seed + 1, 1.0));
    let beta = up(b, &data(cols, seed + 2, 1.0));
    let mut out = b.zeros(n).unwrap();
    let mut stats = b.zeros(2 * rows).unwrap();
    b.layer_norm(&x, &gamma, &beta, &mut out, Some(&mut stats), spec)
        .unwrap();
    let mut out_no_stats = b.zeros(n).unwrap();
    b.layer_norm(&x, &gamma, &beta, &mut out_no_stats, None, spec)
        .unwrap();
    let dout = up(b, &data(n, seed + 3, 1.0));
    let mut dx = up(b, &data(n, seed + 4, 1.0));
    let mut dgamma = up(b, &data(cols, seed + 5, 1.0));
    let mut dbeta = up(b, &data(cols, seed + 6, 1.0));
    b.layer_norm_backward(
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
    let mut dx_written = b.zeros(n).unwrap();
    b.layer_norm_backward(
        &x,
        &gamma,
        &stats,
        &dout,
        LayerNormGrads {
            dx: &mut dx_written,
            dgamma: &mut dgamma,
            dbeta: &mut dbeta,
            accumulate_dx: false,
        },
        spec,
    )
    .unwrap();
    vec![
        down(b, &out),
        down(b, &stats),
        down(b, &out_no_stats),
        down(b, &dx),
        down(b, &dx_written),
        down(b, &dgamma),
        down(b, &dbeta),
    ]
}

fn softmaxes<B: Backend>(b: &B, spec: SoftmaxSpec, mask: &[f32], seed: u64) -> Vec<Vec<f32>> {
    let n = spec.batch * spec.heads * spec.len * spec.len;
    let mask = up(b, mask);
    let mut probs = up(b, &data(n, seed, 8.0));
    b.masked_softmax(&mut probs, &mask, spec).unwrap();
    let mut grad = up(b, &data(n, seed + 1, 1.0));
    b.masked_softmax_backward(&probs, &mut grad, &mask, spec)
        .unwrap();
    vec![down(b, &probs), down(b, &grad)]
}

fn relative<B: Backend>(
    b: &B,
    spec: RelativeScoresSpec,
    index: &[u32],
    seed: u64,
) -> Vec<Vec<f32>> {
    let n = spec.batch * spec.heads * spec.len * spec.len;
    let table = spec.batch * spec.heads * spec.len * spec.rows;
    let index = up_ids(b, index);
    let c2p = up(b, &data(table, seed, 1.0));
    let p2c = up(b, &data(table, seed + 1, 1.0));
    let mut outputs = Vec::new();
    for (use_c2p, use_p2c) in [(true, true), (true, false), (false, true)] {
        let mut scores = up(b, &data(n, seed + 2, 1.0));
        b.add_relative_scores(
            &mut scores,
            use_c2p.then_some(&c2p),
            use_p2c.then_some(&p2c),
            &index,
            spec,
        )
        .unwrap();
        outputs.push(down(b, &scores));
    }
    let dscores = up(b, &data(n, seed + 3, 1.0));
    let mut dc2p = up(b, &data(table, seed + 4, 1.0));
    let mut dp2c = up(b, &data(table, seed + 5, 1.0));
    b.relative_scores_backward(&dscores, &index, Some(&mut dc2p), Some(&mut dp2c), spec)
        .unwrap();
    let mut dc2p_only = b.zeros(table).unwrap();
    b.relative_scores_backward(&dscores, &index, Some(&mut dc2p_only), None, spec)
        .unwrap();
    outputs.extend([down(b, &dc2p), down(b, &dp2c), down(b, &dc2p_only)]);
    outputs
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn layer_norm_and_backward_match_cpu(rows in 0usize..12, cols in 2usize..300, seed in any::<u64>()) {
        conform!(layer_norms(rows, cols, seed), vec![TOL * 4.0]);
    }

    #[test]
    fn layer_norm_gradients_over_several_row_chunks_match_cpu(rows in 65usize..300, cols in 2usize..40, seed in any::<u64>()) {
        // γ/β gradients summed from partials of 64 rows each: two to five of them.
        conform!(layer_norms(rows, cols, seed), vec![TOL * 4.0 * (rows as f32 / 12.0)]);
    }

    #[test]
    fn masked_softmax_and_backward_match_cpu(
        batch in 1usize..3, heads in 1usize..3, len in 1usize..20, mask_bits in any::<u32>(), seed in any::<u64>(),
    ) {
        let mask: Vec<f32> = (0..batch * len).map(|i| ((mask_bits >> (i % 32)) & 1) as f32).collect();
        conform!(softmaxes(SoftmaxSpec { batch, heads, len }, &mask, seed), vec![TOL]);
    }

    #[test]
    fn relative_scores_and_scatter_match_cpu(
        batch in 1usize..3, heads in 1usize..3, len in 1usize..12, span in 1usize..6, seed in any::<u64>(),
    ) {
        // idx[i, j] = clamp(i − j, −span, span) + span over a window of 2·span + 1 rows: several
        // keys share a row, as with log buckets.
        let rows = 2 * span + 1;
        let index: Vec<u32> = (0..len * len)
            .map(|k| (((k / len) as i64 - (k % len) as i64).clamp(-(span as i64), span as i64) + span as i64) as u32)
            .collect();
        let spec = RelativeScoresSpec { batch, heads, len, rows, scale: 1.7 };
        conform!(relative(spec, &index, seed), vec![TOL]);
    }
}

// ----- embeddings ----------------------------------------------------------------------------

fn embeddings<B: Backend>(
    b: &B,
    ids: &[u32],
    rows: usize,
    dim: usize,
    skip: Option<u32>,
    seed: u64,
) -> Vec<Vec<f32>> {
    let table = up(b, &data(rows * dim, seed, 1.0));
    let ids_t = up_ids(b, ids);
    let mut out = up(b, &data(ids.len() * dim, seed + 1, 1.0));
    b.embedding_lookup(&table, &ids_t, &mut out, dim, true)
        .unwrap();
    let mut written = b.zeros(ids.len() * dim).unwrap();
    b.embedding_lookup(&table, &ids_t, &mut written, dim, false)
        .unwrap();
    let dout = up(b, &data(ids.len() * dim, seed + 2, 1.0));
    let mut dtable = up(b, &data(rows * dim, seed + 3, 1.0));
    b.embedding_backward(&ids_t, &dout, &mut dtable, dim, skip)
        .unwrap();
    vec![down(b, &out), down(b, &written), down(b, &dtable)]
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn embedding_lookup_and_scatter_match_cpu_bit_for_bit(
        rows in 1usize..200, dim in 1usize..80, picks in prop::collection::vec(any::<u32>(), 0..300),
        skip in prop::option::of(0u32..4), seed in any::<u64>(),
    ) {
        // Up to 300 positions: the backward looks for earlier and later positions with an id 64
        // at a time, so ids repeat within, across and beyond its steps.
        let ids: Vec<u32> = picks.iter().map(|p| p % rows as u32).collect();
        // Gathers copy and scatters add in the CPU's order: exactly equal.
        conform!(embeddings(&ids, rows, dim, skip, seed), vec![0.0]);
    }
}

// ----- losses, sums, sampling, dropout, optimizer ----------------------------------------------

fn losses<B: Backend>(b: &B, rows: usize, vocab: usize, seed: u64) -> Vec<Vec<f32>> {
    let logits = up(b, &data(rows * vocab, seed, 6.0));
    let targets: Vec<u32> = data(rows, seed + 1, 1.0)
        .iter()
        .map(|v| ((v.abs() * vocab as f32) as u32).min(vocab as u32 - 1))
        .collect();
    let targets = up_ids(b, &targets);
    let mut ce = b.zeros(rows).unwrap();
    let mut dlogits = b.zeros(rows * vocab).unwrap();
    b.cross_entropy(&logits, &targets, &mut ce, &mut dlogits, vocab, 0.3)
        .unwrap();
    let n = rows * vocab;
    let labels: Vec<f32> = data(n, seed + 2, 1.0)
        .iter()
        .map(|v| f32::from(*v > 0.0))
        .collect();
    let weights: Vec<f32> = data(n, seed + 3, 1.0).iter().map(|v| v.abs()).collect();
    let (labels, weights) = (up(b, &labels), up(b, &weights));
    let mut bce = b.zeros(n).unwrap();
    let mut dbce = b.zeros(n).unwrap();
    b.bce_with_logits(&logits, &labels, &weights, &mut bce, &mut dbce, 1.5)
        .unwrap();
    vec![
        down(b, &ce),
        down(b, &dlogits),
        down(b, &bce),
        down(b, &dbce),
    ]
}

/// A sum, and the sums of squares of three tensors of `n`, `n/3` and `2n + 1` elements in one
/// call (up to six partial sums in a tensor's row: up to 5,999 elements).
fn sums<B: Backend>(b: &B, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let x = up(b, &data(n, seed, 1.0));
    let mut out = b.zeros(3).unwrap();
    b.sum(&x, &mut out, 1, 0.5).unwrap();
    let others = [
        up(b, &data(n / 3, seed + 1, 2.0)),
        up(b, &data(2 * n + 1, seed + 2, 0.5)),
    ];
    let mut squares = b.zeros(4).unwrap();
    b.sums_of_squares(&[&x, &others[0], &others[1]], &mut squares)
        .unwrap();
    vec![down(b, &out), down(b, &squares)]
}

fn dropouts<B: Backend>(b: &B, n: usize, p: f32, stream: RandomStream) -> Vec<Vec<f32>> {
    let mut x = up(b, &data(n, stream.seed, 1.0));
    b.dropout(&mut x, p, stream).unwrap();
    vec![down(b, &x)]
}

fn samples<B: Backend>(
    b: &B,
    rows: usize,
    vocab: usize,
    scale: f32,
    stream: RandomStream,
) -> Vec<Vec<f32>> {
    let logits = up(b, &data(rows * vocab, stream.seed, scale));
    let mut out = up_ids(b, &vec![u32::MAX; rows]);
    b.sample_categorical(&logits, vocab, stream, &mut out)
        .unwrap();
    let mut ids = vec![0u32; rows];
    b.download_indices(&out, &mut ids).unwrap();
    vec![ids.iter().map(|&v| v as f32).collect()]
}

fn adams<B: Backend>(
    b: &B,
    n: usize,
    step: Option<u64>,
    clip: Option<f32>,
    seed: u64,
) -> Vec<Vec<f32>> {
    let mut param = up(b, &data(n, seed, 1.0));
    let grad = up(b, &data(n, seed + 1, 2.0));
    let mut m = up(b, &data(n, seed + 2, 0.1));
    let v_host: Vec<f32> = data(n, seed + 3, 0.1).iter().map(|v| v.abs()).collect();
    let mut v = up(b, &v_host);
    let squared_norm = up(b, &[3.75]);
    let spec = AdamSpec {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.01,
        bias_correction_step: step,
        grad_scale: 0.5,
    };
    let clip = clip.map(|max_norm| Clip {
        squared_norm: &squared_norm,
        max_norm,
    });
    b.adam_update(&mut param, &grad, (&mut m, &mut v), spec, clip)
        .unwrap();
    vec![down(b, &param), down(b, &m), down(b, &v)]
}

/// Sizes of the tensors of one optimizer update: more than one `adam_update_many` dispatch
/// holds (seven sources), an empty tensor, tensors of one element, of a partial workgroup and
/// of several workgroups.
const UPDATE_SIZES: [usize; 10] = [300, 1, 0, 256, 257, 1000, 5, 70, 513, 2];

/// One update of [`UPDATE_SIZES`] tensors through `adam_updates` (each at its own learning rate
/// and weight decay, the seventh at another gradient scale, as a loss-scaled model beside an
/// unscaled one would be), or through `adam_update` one tensor at a time (`one_by_one`): every
/// parameter and moment after it.
fn adam_many<B: Backend>(
    b: &B,
    step: Option<u64>,
    clip: Option<f32>,
    one_by_one: bool,
    seed: u64,
) -> Vec<Vec<f32>> {
    let mut tensors: Vec<_> = UPDATE_SIZES
        .iter()
        .zip(seed..)
        .map(|(&n, seed)| {
            let v: Vec<f32> = data(n, seed + 3, 0.1).iter().map(|v| v.abs()).collect();
            (
                up(b, &data(n, seed, 1.0)),
                up(b, &data(n, seed + 1, 2.0)),
                up(b, &data(n, seed + 2, 0.1)),
                up(b, &v),
            )
        })
        .collect();
    let squared_norm = up(b, &[3.75]);
    let clip = clip.map(|max_norm| Clip {
        squared_norm: &squared_norm,
        max_norm,
    });
    let spec = |i: usize| AdamSpec {
        lr: 0.01 * (1.0 + i as f32),
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: if i.is_multiple_of(3) { 0.0 } else { 0.01 },
        bias_correction_step: step,
        grad_scale: if i == 6 { 0.25 } else { 0.5 },
    };
    let mut updates: Vec<_> = tensors
        .iter_mut()
        .enumerate()
        .map(|(i, (param, grad, m, v))| AdamTensors {
            param,
            grad,
            m,
            v,
            spec: spec(i),
        })
        .collect();
    match one_by_one {
        true => {
            for u in &mut updates {
                b.adam_update(u.param, u.grad, (&mut *u.m, &mut *u.v), u.spec, clip)
                    .unwrap();
            }
        }
        false => b.adam_updates(&mut updates, clip).unwrap(),
    }
    drop(updates);
    tensors
        .iter()
        .flat_map(|(param, _, m, v)| [down(b, param), down(b, m), down(b, v)])
        .collect()
}

#[test]
fn many_tensor_updates_match_cpu_and_are_the_one_tensor_updates_bit_for_bit() {
    let cases = [
        (Some(3), Some(1.0)),
        (None, None),
        (Some(1), None),
        (None, Some(9.0)),
    ];
    for (step, clip) in cases {
        conform!(adam_many(step, clip, false, 7), vec![TOL]);
        // With the multi-tensor kernels and without (the two devices flip them).
        for gpu in gpu_variants() {
            let bits = |one_by_one| -> Vec<Vec<u32>> {
                adam_many(gpu, step, clip, one_by_one, 7)
                    .iter()
                    .map(|t| t.iter().map(|x| x.to_bits()).collect())
                    .collect()
            };
            assert!(
                bits(false) == bits(true),
                "step {step:?}, clip {clip:?}, multi-tensor {}: other bits",
                gpu.multi_tensor()
            );
        }
    }
}

fn stream_strategy() -> impl Strategy<Value = RandomStream> {
    (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(seed, step, stream)| RandomStream {
        seed,
        step,
        stream,
    })
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn losses_match_cpu(rows in 1usize..6, vocab in 1usize..300, seed in any::<u64>()) {
        conform!(losses(rows, vocab, seed), vec![TOL]);
    }

    #[test]
    fn sums_match_cpu(n in 0usize..3000, seed in any::<u64>()) {
        conform!(sums(n, seed), vec![TOL * (1.0 + n as f32 / 100.0)]);
    }

    #[test]
    fn dropout_masks_are_identical(n in 0usize..2000, p in 0.0f32..0.9, stream in stream_strategy()) {
        conform!(dropouts(n, p, stream), vec![0.0]);
    }

    #[test]
    fn sampled_ids_are_identical(
        rows in 1usize..40, vocab in 1usize..200, scale in 0.1f32..20.0, stream in stream_strategy(),
    ) {
        conform!(samples(rows, vocab, scale, stream), vec![0.0]);
    }

    #[test]
    fn adam_and_adamw_match_cpu(
        n in 1usize..600, step in prop::option::of(1u64..1000), clip in prop::option::of(0.1f32..3.0), seed in any::<u64>(),
    ) {
        conform!(adams(n, step, clip, seed), vec![TOL]);
    }
}

#[test]
fn sampling_draws_the_cpu_ids_over_many_rows_and_extreme_logits() {
    let stream = RandomStream {
        seed: 0x0123_4567_89ab_cdef,
        step: 17,
        stream: 3,
    };
    // Logits spanning exp's whole range (including underflow to 0) and a large vocabulary.
    conform!(samples(300, 700, 60.0, stream), vec![0.0]);
}

/// Two-token rows `[0, z]` whose second logit sits within ±20 ulps of the value where the draw
/// `uniform(row)` switches from id 0 to id 1: the picks agree only if both backends evaluate
/// `exp` and the sums to the same bits (a 1-ulp `exp` differs on ~4% of these rows).
fn boundary_samples<B: Backend>(b: &B, rows: usize, stream: RandomStream) -> Vec<Vec<f32>> {
    let mut logits = Vec::with_capacity(2 * rows);
    for r in 0..rows {
        let u = f64::from(stream.uniform(r as u64)).clamp(1e-3, 1.0 - 1e-3);
        let z0 = (1.0 / u - 1.0).ln() as f32;
        let steps = (r % 41) as i32 - 20;
        let z = f32::from_bits(z0.to_bits().wrapping_add_signed(if z0 >= 0.0 {
            steps
        } else {
            -steps
        }));
        logits.extend([0.0, z]);
    }
    let logits = up(b, &logits);
    let mut out = up_ids(b, &vec![u32::MAX; rows]);
    b.sample_categorical(&logits, 2, stream, &mut out).unwrap();
    let mut ids = vec![0u32; rows];
    b.download_indices(&out, &mut ids).unwrap();
    vec![ids.iter().map(|&v| v as f32).collect()]
}

#[test]
fn sampling_is_exact_at_decision_boundaries() {
    let stream = RandomStream {
        seed: 9,
        step: 1,
        stream: 2,
    };
    conform!(boundary_samples(4000, stream), vec![0.0]);
}

// ----- errors and bookkeeping -------------------------------------------------------------------

fn short_buffer_errors<B: Backend>(b: &B) -> Vec<Error> {
    let a = up(b, &[0.0; 5]);
    let bb = up(b, &[0.0; 6]);
    let mut c = b.zeros(4).unwrap();
    let mut out = b.zeros(2).unwrap();
    let ids = up_ids(b, &[0, 1, 2]);
    let mut small = b.zeros(3).unwrap();
    vec![
        b.matmul(&a, &bb, &mut c, &MatmulSpec::dense(2, 2, 3))
            .unwrap_err(),
        b.add_bias(&mut c, &a, 6).unwrap_err(),
        // A bias shorter than C's rows, a short residual, a batched product, a C longer than
        // [m, n].
        b.matmul_bias(
            [&bb, &bb],
            &up(b, &[0.0]),
            None,
            &mut c,
            &MatmulSpec::linear(2, 3, 2),
            Precision::F32,
        )
        .unwrap_err(),
        b.matmul_bias(
            [&bb, &bb],
            &bb,
            Some(&small),
            &mut c,
            &MatmulSpec::linear(2, 3, 2),
            Precision::F32,
        )
        .unwrap_err(),
        b.matmul_bias(
            [&bb, &bb],
            &bb,
            None,
            &mut c,
            &MatmulSpec {
                batch: [2, 1],
                ..MatmulSpec::linear(1, 3, 2)
            },
            Precision::F32,
        )
        .unwrap_err(),
        b.matmul_bias(
            [&bb, &bb],
            &bb,
            None,
            &mut small,
            &MatmulSpec::linear(1, 3, 2),
            Precision::F32,
        )
        .unwrap_err(),
        b.write(&mut c, 3, &[1.0, 2.0]).unwrap_err(),
        b.download(&c, &mut [0.0; 5]).unwrap_err(),
        b.sum(&a, &mut out, 2, 1.0).unwrap_err(),
        b.embedding_lookup(&a, &ids, &mut small, 2, false)
            .unwrap_err(),
        b.layer_norm(
            &a,
            &a,
            &a,
            &mut small,
            None,
            LayerNormSpec {
                rows: 2,
                cols: 2,
                eps: 1e-5,
            },
        )
        .unwrap_err(),
        b.add_sequence_row(&bb, &mut c, 1, 2, 2, 2).unwrap_err(),
        b.sample_categorical(
            &a,
            0,
            RandomStream {
                seed: 1,
                step: 0,
                stream: 0,
            },
            &mut up_ids(b, &[0]),
        )
        .unwrap_err(),
    ]
}

#[test]
fn shape_errors_are_the_cpu_errors() {
    if let Some(gpu) = gpu() {
        assert_eq!(
            short_buffer_errors(&CpuBackend::new()),
            short_buffer_errors(gpu)
        );
    }
}

/// One violation of each remaining kernel contract (the contracts live in `deberta_core`, and
/// both backends check their operands with them), and a relative attention without its index.
fn contract_errors<B: Backend>(b: &B) -> Vec<Error> {
    let four = up(b, &[0.0; 4]);
    let two = up(b, &[1.0; 2]);
    let mut short = b.zeros(1).unwrap();
    let mut scratch = b.zeros(4).unwrap();
    let softmax = SoftmaxSpec {
        batch: 1,
        heads: 1,
        len: 2,
    };
    let layer_norm = LayerNormSpec {
        rows: 2,
        cols: 2,
        eps: 1e-5,
    };
    let relative = RelativeScoresSpec {
        batch: 1,
        heads: 1,
        len: 2,
        rows: 2,
        scale: 1.0,
    };
    let adam = AdamSpec {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.0,
        bias_correction_step: None,
        grad_scale: 1.0,
    };
    let attention = AttentionSpec {
        batch: 1,
        heads: 1,
        len: 2,
        head_dim: 2,
        rows: 1,
        first_row: 0,
        scale: 1.0,
    };
    let ops = AttentionOperands {
        query: &four,
        key: &four,
        value: &four,
        pos_key: Some(&two),
        pos_query: None,
        index: None,
        mask: &two,
    };
    let (mut probs, mut table, mut context) = (
        b.zeros(4).unwrap(),
        b.zeros(2).unwrap(),
        b.zeros(4).unwrap(),
    );
    let buffers = AttentionBuffers {
        probs: &mut probs,
        c2p: Some(&mut table),
        p2c: None,
    };
    let (mut m, mut v, mut dgamma, mut dbeta) = (
        b.zeros(1).unwrap(),
        b.zeros(4).unwrap(),
        b.zeros(1).unwrap(),
        b.zeros(2).unwrap(),
    );
    vec![
        b.masked_softmax_backward(&short, &mut scratch, &two, softmax)
            .unwrap_err(),
        b.layer_norm_backward(
            &four,
            &two,
            &four,
            &four,
            LayerNormGrads {
                dx: &mut scratch,
                dgamma: &mut dgamma,
                dbeta: &mut dbeta,
                accumulate_dx: false,
            },
            layer_norm,
        )
        .unwrap_err(),
        b.cross_entropy(&four, &up_ids(b, &[0, 1]), &mut short, &mut v, 2, 1.0)
            .unwrap_err(),
        b.bce_with_logits(&four, &four, &two, &mut v, &mut scratch, 1.0)
            .unwrap_err(),
        b.add_relative_scores(
            &mut scratch,
            Some(&two),
            None,
            &up_ids(b, &[0, 1, 1, 0]),
            relative,
        )
        .unwrap_err(),
        b.adam_update(&mut scratch, &four, (&mut m, &mut v), adam, None)
            .unwrap_err(),
        b.fused_attention(ops, buffers, &mut context, attention)
            .unwrap_err(),
    ]
}

#[test]
fn contract_errors_are_the_cpu_errors() {
    let cpu = contract_errors(&CpuBackend::new());
    let (missing, short) = cpu.split_last().unwrap();
    assert!(
        short
            .iter()
            .all(|e| matches!(e, Error::BufferTooSmall { .. })),
        "{short:?}"
    );
    let index = "relative index for relative attention";
    assert_eq!(*missing, Error::Missing { what: index });
    if let Some(gpu) = gpu() {
        assert_eq!(cpu, contract_errors(gpu));
    }
}

#[test]
fn kernels_are_deterministic_run_to_run() {
    if let Some(gpu) = gpu() {
        let run = || {
            let mut out = layer_norms(gpu, 70, 33, 5);
            out.extend(relative(
                gpu,
                RelativeScoresSpec {
                    batch: 2,
                    heads: 2,
                    len: 9,
                    rows: 7,
                    scale: 2.0,
                },
                &vec![3; 81],
                6,
            ));
            out.extend(sums(gpu, 5000, 8));
            out.into_iter()
                .flatten()
                .map(f32::to_bits)
                .collect::<Vec<u32>>()
        };
        assert_eq!(run(), run());
    }
}

/// `Σ x²` of a gradient-like vector (magnitudes spread over six decades) on `b`, relative to
/// the exact sum (f64 of the same f32 values).
fn sum_of_squares_error<B: Backend>(b: &B, n: usize) -> f64 {
    let x: Vec<f32> = data(n, 7, 1.0)
        .iter()
        .zip(data(n, 8, 1.0))
        .map(|(v, e)| v * 10f32.powf(3.0 * e - 3.0))
        .collect();
    let exact: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mut out = b.zeros(1).unwrap();
    b.sums_of_squares(&[&up(b, &x)], &mut out).unwrap();
    (f64::from(down(b, &out)[0]) - exact).abs() / exact
}

#[test]
fn sums_of_squares_of_many_tensors_are_each_tensors_own_bit_for_bit() {
    // Two stages each, the 1,048,577-element tensor three (its first into a buffer of its
    // own), empty and one-element tensors, in one call and one call each: the shared last
    // stage adds nothing to any sum. The sixteen tensors of one first stage take three
    // `reduce_squares_many` dispatches together (seven sources each at most), one alone; and
    // each tensor's own stages, on the device without the multi-tensor kernels.
    for gpu in gpu_variants() {
        squares_of_many_tensors_on(gpu);
    }
}

fn squares_of_many_tensors_on(gpu: &WgpuBackend) {
    let sizes = [
        1_048_577, 0, 1, 1_024, 1_025, 5_000, 7, 1_048_576, 3, 2_048, 2_049, 64, 100_000, 9, 1, 0,
        777,
    ];
    let tensors: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| up(gpu, &data(n, 40 + i as u64, 3.0)))
        .collect();
    let all: Vec<_> = tensors.iter().collect();
    let mut together = gpu.zeros(sizes.len()).unwrap();
    gpu.sums_of_squares(&all, &mut together).unwrap();
    let together = down(gpu, &together);
    let cpu = CpuBackend::new();
    let on_cpu: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| up(&cpu, &data(n, 40 + i as u64, 3.0)))
        .collect();
    let mut expected = cpu.zeros(sizes.len()).unwrap();
    cpu.sums_of_squares(&on_cpu.iter().collect::<Vec<_>>(), &mut expected)
        .unwrap();
    for (i, (e, t)) in expected.iter().zip(&together).enumerate() {
        assert!(
            (e - t).abs() <= 1e-6 * e,
            "tensor {i}: {t} against the CPU's {e}"
        );
    }
    for (i, tensor) in tensors.iter().enumerate() {
        let mut alone = up(gpu, &[f32::NAN; 3]);
        gpu.sums_of_squares(&[tensor], &mut alone).unwrap();
        let alone = down(gpu, &alone);
        assert_eq!(together[i].to_bits(), alone[0].to_bits(), "tensor {i}");
        assert!(alone[1].is_nan(), "only element 0 is written");
    }
    let mut short = gpu.zeros(sizes.len() - 1).unwrap();
    assert!(gpu.sums_of_squares(&all, &mut short).is_err());
}

#[test]
fn the_clipping_norm_is_summed_as_accurately_as_in_f64() {
    // A plain sequential f32 sum of these values is off by 7e-5 (1.4·10⁵ values) and 1e-3
    // (2·10⁶); the CPU sums in f64 and the GPU by a tree, both within a few f32 roundings.
    let Some(gpu) = gpu() else { return };
    for n in [140_000, 2_000_000] {
        let (cpu_err, gpu_err) = (
            sum_of_squares_error(&CpuBackend::new(), n),
            sum_of_squares_error(gpu, n),
        );
        println!("Σ g² of {n}: relative error cpu {cpu_err:.1e}, gpu {gpu_err:.1e}");
        assert!(cpu_err <= 6e-8, "cpu: {cpu_err:e}");
        assert!(gpu_err <= 5e-7, "gpu: {gpu_err:e}");
    }
}

#[test]
fn device_memory_counts_pool_buffers_live_tensors_and_their_peaks() {
    if gpu().is_none() {
        return;
    }
    // A backend of its own, so that other tests' buffers do not move the figures.
    let backend = WgpuBackend::new(AdapterChoice::default()).expect("second device");
    let start = backend.device_memory();
    let tensors: Vec<_> = (0..3).map(|_| backend.zeros(1 << 20).unwrap()).collect();
    let held = backend.device_memory();
    // Three 4 MiB tensors (size classes round up by at most an eighth).
    let grown = held.held_bytes - start.held_bytes;
    assert!((3 << 22..=3 * (9 << 19)).contains(&grown), "{grown}");
    assert!(held.peak_bytes >= held.held_bytes);
    // Live tensors: the same buffers.
    assert_eq!(held.in_use_bytes - start.in_use_bytes, grown);
    assert!(held.peak_in_use_bytes >= held.in_use_bytes);
    drop(tensors);
    // Freed tensors stay in the pool until trimmed, no longer in use; the peaks stay.
    let freed = backend.device_memory();
    assert_eq!(freed.held_bytes, held.held_bytes);
    assert_eq!(freed.in_use_bytes, start.in_use_bytes);
    // A tensor of a freed one's size takes its buffer: in use again, nothing new held.
    let again = backend.zeros(1 << 20).unwrap();
    let reused = backend.device_memory();
    assert_eq!(reused.held_bytes, held.held_bytes);
    assert_eq!(reused.in_use_bytes - start.in_use_bytes, grown / 3);
    assert_eq!(reused.peak_in_use_bytes, held.peak_in_use_bytes);
    drop(again);
    backend.trim().unwrap();
    let trimmed = backend.device_memory();
    assert_eq!(trimmed.held_bytes, start.held_bytes);
    assert_eq!(trimmed.peak_bytes, held.peak_bytes);
    assert_eq!(trimmed.peak_in_use_bytes, held.peak_in_use_bytes);
}
