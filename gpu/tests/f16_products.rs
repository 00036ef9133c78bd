//! The f16 products of mixed-precision training (`Backend::matmul_reduced` at
//! `Precision::F16`, on adapters with `SHADER_F16`) against the CPU backend, on every kernel
//! (one-thread-per-output, 32/64/128-wide tiles, split-K) and every layout (transposed,
//! strided, batched, α and β):
//!
//! * within the f16 bound of the CPU's f32 product: per element,
//!   `|gpu − cpu| ≤ F16_REL · (|α|·Σ_k |a_k|·|b_k| + |β·c|)`, `F16_REL` = 2⁻¹⁰ + the f32
//!   accumulation of both sides (each operand rounded to binary16 is off by at most 2⁻¹¹
//!   relatively, so each product by at most 2⁻¹⁰ + 2⁻²²);
//! * within f32 accumulation (`k·2⁻²³` of the same magnitude) of the CPU's f32 product of the
//!   operands rounded to f16 first: the kernel multiplies exactly the f16 operands, in f32;
//! * different from the f32 kernel somewhere (the f16 path ran), and the same bits whichever
//!   tile size runs;
//! * an operand beyond f16's range (1e5 > 65504) makes its outputs non-finite: the overflow the
//!   loss scaler catches.
//!
//! Without `SHADER_F16` (or with `DEBERTA_WGPU_F16=off`) the test checks the fallback instead
//! and says so: `mixed_products()` is f32 and f16 products are refused with a typed error.
//!
//! The cooperative-matrix kernel (`DeviceOptions::cooperative_matrices`) is held to the same
//! bound, with twice the accumulation allowance, where the adapter can run it; elsewhere the
//! test says why not.

mod common;

use common::{data, down, gpu, up};
use deberta_core::kernels::{MatmulSpec, MatrixLayout};
use deberta_core::{Backend, CpuBackend, Error, Precision};
use deberta_gpu::{AdapterChoice, DeviceOptions, MatmulTiles, WgpuBackend};

/// Relative error bound of an f16 product against f32, per unit of `Σ|a|·|b|` (before the
/// accumulation terms, which scale with k).
const F16_REL: f32 = 1.0 / 1024.0 * 1.01;

/// One product case: `[batch, m, n, k]`, transposes of A and B, α, β.
struct Case {
    shape: [usize; 4],
    transpose_a: bool,
    transpose_b: bool,
    alpha: f32,
    beta: f32,
    seed: u64,
}

impl Case {
    /// The spec over padded, offset, batched layouts, and the buffer lengths of A, B and C.
    fn spec(&self) -> (MatmulSpec, [usize; 3]) {
        let [batch, m, n, k] = self.shape;
        let layout = |rows: usize, cols: usize, transpose: bool, offset: usize| {
            let (outer, inner) = if transpose {
                (cols, rows)
            } else {
                (rows, cols)
            };
            let lead = inner + 3;
            let size = outer * lead;
            let base = MatrixLayout::row_major(lead);
            let base = if transpose { base.transposed() } else { base };
            (base.at(offset).batched(size, 0), offset + batch * size)
        };
        let (a, na) = layout(m, k, self.transpose_a, 2);
        let (b, nb) = layout(k, n, self.transpose_b, 5);
        let (c, nc) = layout(m, n, false, 1);
        let spec = MatmulSpec {
            batch: [batch, 1],
            m,
            n,
            k,
            a,
            b,
            c,
            alpha: self.alpha,
            beta: self.beta,
        };
        (spec, [na, nb, nc])
    }

    /// A, B and C.
    fn operands(&self) -> [Vec<f32>; 3] {
        let (_, [na, nb, nc]) = self.spec();
        [
            data(na, self.seed, 1.0),
            data(nb, self.seed + 1, 1.0),
            data(nc, self.seed + 2, 1.0),
        ]
    }
}

/// `C` after the product of `operands` on `backend` at `precision`.
fn product<B: Backend>(
    backend: &B,
    case: &Case,
    [a, b, c]: &[Vec<f32>; 3],
    precision: Precision,
) -> Result<Vec<f32>, Error> {
    let (spec, _) = case.spec();
    let (a, b, mut c) = (up(backend, a), up(backend, b), up(backend, c));
    backend.matmul_reduced(&a, &b, &mut c, &spec, precision)?;
    Ok(down(backend, &c))
}

/// The bits of `C` after the f16 product of `operands` on `gpu`.
fn f16_bits(gpu: &WgpuBackend, case: &Case, operands: &[Vec<f32>; 3]) -> Vec<u32> {
    product(gpu, case, operands, Precision::F16)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// `v` rounded to binary16 (nearest even) and back.
fn f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Every case: thin (one thread per output), tiled with partial tiles in every transposition,
/// batched, a deep single product the automatic plan splits along k, and whole tiles stored
/// as they were summed.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, shape) in [
        [2, 7, 40, 19],
        [1, 97, 130, 37],
        [3, 70, 64, 50],
        [1, 40, 48, 1500],
    ]
    .into_iter()
    .enumerate()
    {
        for t in 0..4u32 {
            cases.push(Case {
                shape,
                transpose_a: t & 1 != 0,
                transpose_b: t & 2 != 0,
                alpha: [1.0, 0.5, -2.0][i % 3],
                beta: [0.0, 1.0, 0.25][(i + t as usize) % 3],
                seed: 100 * i as u64 + u64::from(t),
            });
        }
    }
    // Whole tiles of every size with nothing added as C is stored (α = 1, β = 0): the
    // cooperative kernel stores those tiles straight from its matrices.
    cases.push(Case {
        shape: [2, 136, 72, 40],
        transpose_a: false,
        transpose_b: true,
        alpha: 1.0,
        beta: 0.0,
        seed: 900,
    });
    cases
}

#[test]
fn f16_products_stay_within_the_f16_bound_of_the_cpu() {
    let Some(gpu) = gpu() else {
        return;
    };
    if !gpu.f16_products() {
        eprintln!(
            "f16 products: {} has no SHADER_F16 here (or DEBERTA_WGPU_F16=off): checking the \
             fallback (mixed precision multiplies in f32)",
            gpu.adapter()
        );
        assert_eq!(gpu.mixed_products(), Precision::F32);
        let case = &cases()[0];
        let refused = product(gpu, case, &case.operands(), Precision::F16);
        assert!(
            matches!(refused, Err(Error::Unsupported { .. })),
            "{refused:?}"
        );
        return;
    }
    assert_eq!(gpu.mixed_products(), Precision::F16);
    // A GPU's default device runs the tiled f16 products on cooperative matrices, whose
    // hardware adds in its own order and rounding: the allowance of the cooperative test.
    let accumulation = match gpu.cooperative_matrices() {
        Some(_) => 2.0,
        None => 1.0,
    };
    let (worst_f32, worst_rounded) = check_f16_bound(gpu, accumulation);
    println!(
        "f16 products: worst |f16 − cpu f32| {worst_f32:.2e} of Σ|a||b| (bound {F16_REL:.2e} + \
         accumulation), worst |f16 − cpu on f16 operands| {worst_rounded:.2e}"
    );
}

/// The cooperative-matrix kernel (`DeviceOptions::cooperative_matrices`, forced on) on a
/// device opened with it, on each of its blockings: every case within the same
/// f16 bound, with twice the accumulation allowance (tensor cores add the exact f16 products in
/// their own order and rounding), and the same bits from all of them. Where
/// the adapter cannot run the kernel (Mesa 22's lavapipe: no cooperative matrices) the device
/// opens without them, f16 products keep the register-blocked kernels, and the test says so;
/// with `DEBERTA_REQUIRE_COOPERATIVE=1` (CI's run on Mesa 26's lavapipe, whose 8×8×8 matrices
/// the kernel takes) that is a failure instead.
#[test]
fn cooperative_matrix_products_stay_within_the_f16_bound_of_the_cpu() {
    if gpu().is_none() {
        return;
    }
    let options = DeviceOptions {
        cooperative_matrices: Some(true),
        ..DeviceOptions::from_env().unwrap()
    };
    let backend = WgpuBackend::with_options(AdapterChoice::default(), options).unwrap();
    let capabilities = &backend.adapter().capabilities;
    let Some(shape) = backend.cooperative_matrices() else {
        let why = format!(
            "cooperative matrices: {} cannot run the kernel (f16 shaders {}, f16 cooperative \
             matrices {:?}, subgroup sizes {:?}; it needs square 16×16 or 8×8 matrices and \
             subgroups of one width)",
            backend.adapter(),
            capabilities.shader_f16,
            capabilities.f16_cooperative_matrices,
            capabilities.subgroup_sizes,
        );
        assert!(
            std::env::var("DEBERTA_REQUIRE_COOPERATIVE").as_deref() != Ok("1"),
            "{why}, and DEBERTA_REQUIRE_COOPERATIVE=1"
        );
        eprintln!("{why}: f16 products keep the register-blocked kernels");
        assert!(!(capabilities.cooperative_matmul().is_some() && backend.f16_products()));
        return;
    };
    // One subgroup of 4 × 4 accumulators per workgroup (forced 64-wide tiles), 2 × 2 such
    // subgroups (forced 128-wide tiles), one subgroup of 2 × 2 accumulators (forced 32-wide
    // tiles): each within the bound, and the same bits as each other.
    let mut bits = Vec::new();
    for (tiles, subgroups) in [
        (MatmulTiles::Tiles64, "one subgroup"),
        (MatmulTiles::Tiles128, "four subgroups"),
        (MatmulTiles::Tiles32, "one subgroup of 2×2"),
    ] {
        backend.set_matmul_tiles(tiles);
        let (worst_f32, worst_rounded) = check_f16_bound(&backend, 2.0);
        println!(
            "cooperative-matrix products ({side}×{side}×{side} on {threads}-wide subgroups, \
             {subgroups} per workgroup, {}): worst |f16 − cpu f32| {worst_f32:.2e} of Σ|a||b|, \
             worst |f16 − cpu on f16 operands| {worst_rounded:.2e}",
            backend.adapter(),
            side = shape.side,
            threads = shape.threads,
        );
        bits.push(
            cases()
                .iter()
                .map(|case| f16_bits(&backend, case, &case.operands()))
                .collect::<Vec<_>>(),
        );
    }
    for (i, case) in cases().iter().enumerate() {
        assert!(
            bits[0][i] == bits[1][i] && bits[0][i] == bits[2][i],
            "{:?}: the kernel's blockings give other bits",
            case.shape
        );
    }
}

/// Every case of [`cases`] on `gpu` at f16 products against the CPU: within the f16 bound of
/// the f32 product and within `accumulation` times f32 accumulation of the product of the
/// f16-rounded operands, and different from `gpu`'s f32 product somewhere; returns the worst
/// of each error per unit of `Σ|a||b|`.
fn check_f16_bound(gpu: &WgpuBackend, accumulation: f32) -> (f32, f32) {
    let cpu = CpuBackend::new();
    let (mut worst_f32, mut worst_rounded) = (0.0f32, 0.0f32);
    for case in cases() {
        let [batch, m, n, k] = case.shape;
        let what = format!(
            "{batch}×{m}×{n}×{k}, transposes ({}, {})",
            case.transpose_a, case.transpose_b
        );
        let operands = case.operands();
        let found = product(gpu, &case, &operands, Precision::F16).unwrap();
        let reference = product(&cpu, &case, &operands, Precision::F32).unwrap();
        let f32_gpu = product(gpu, &case, &operands, Precision::F32).unwrap();
        // Σ|a|·|b| per element: the CPU product of the absolute values.
        let [a, b, c] = &operands;
        let abs = |v: &Vec<f32>| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let magnitude_case = Case {
            alpha: case.alpha.abs(),
            beta: case.beta.abs(),
            ..case
        };
        let magnitude = product(
            &cpu,
            &magnitude_case,
            &[abs(a), abs(b), abs(c)],
            Precision::F32,
        )
        .unwrap();
        let rounded = [
            a.iter().copied().map(f16).collect(),
            b.iter().copied().map(f16).collect(),
            c.clone(),
        ];
        let rounded = product(&cpu, &case, &rounded, Precision::F32).unwrap();
        let accumulation = accumulation * k as f32 * f32::EPSILON;
        let mut differs = false;
        for i in 0..found.len() {
            let scale = magnitude[i].max(f32::MIN_POSITIVE);
            let (to_f32, to_rounded) = (
                (found[i] - reference[i]).abs() / scale,
                (found[i] - rounded[i]).abs() / scale,
            );
            assert!(
                to_f32 <= F16_REL + accumulation,
                "{what}: element {i}: f16 {} vs cpu f32 {} ({to_f32:e} of Σ|a||b| {scale})",
                found[i],
                reference[i]
            );
            assert!(
                to_rounded <= accumulation,
                "{what}: element {i}: f16 {} vs cpu on f16-rounded operands {} ({to_rounded:e})",
                found[i],
                rounded[i]
            );
            worst_f32 = worst_f32.max(to_f32);
            worst_rounded = worst_rounded.max(to_rounded);
            differs |= found[i] != f32_gpu[i];
        }
        assert!(differs, "{what}: the f16 product equals the f32 one");
    }
    (worst_f32, worst_rounded)
}

#[test]
fn every_tile_size_gives_the_same_f16_bits() {
    let Some(gpu) = gpu() else {
        return;
    };
    if !gpu.f16_products() {
        eprintln!("f16 products: no SHADER_F16 here; nothing to compare");
        return;
    }
    // A backend of its own: forcing a kernel here must not change what other tests run.
    let forced = WgpuBackend::new(AdapterChoice::default()).expect("second device");
    let case = Case {
        shape: [1, 200, 150, 70],
        transpose_a: true,
        transpose_b: false,
        alpha: 0.5,
        beta: 1.0,
        seed: 7,
    };
    let operands = case.operands();
    let mut first: Option<Vec<u32>> = None;
    for tiles in MatmulTiles::ALL {
        forced.set_matmul_tiles(tiles);
        let bits = f16_bits(&forced, &case, &operands);
        match &first {
            Some(first) => assert!(first == &bits, "{tiles:?}: other bits"),
            None => first = Some(bits),
        }
    }
}

#[test]
fn operands_beyond_the_f16_range_overflow() {
    let Some(gpu) = gpu() else {
        return;
    };
    if !gpu.f16_products() {
        eprintln!("f16 products: no SHADER_F16 here; f32 products do not overflow at 1e5");
        return;
    }
    for [m, n, k] in [[4, 5, 3], [64, 64, 32]] {
        let a: Vec<f32> = (0..m * k).map(|i| if i == 0 { 1e5 } else { 0.5 }).collect();
        let b = vec![1.0f32; k * n];
        let spec = MatmulSpec::dense(m, n, k);
        let (a, b, mut c) = (up(gpu, &a), up(gpu, &b), gpu.zeros(m * n).unwrap());
        gpu.matmul_reduced(&a, &b, &mut c, &spec, Precision::F16)
            .unwrap();
        let c = down(gpu, &c);
        assert!(
            c[..n].iter().all(|v| !v.is_finite()),
            "{m}×{n}×{k}: row 0 {:?}",
            &c[..n]
        );
        assert!(c[n..].iter().all(|v| *v == 0.5 * k as f32));
    }
}

/// The probe of the driver's f32 → f16 conversion at opening decides who rounds: where it found
/// the driver rounding to nearest even (Mesa 22's lavapipe, NVIDIA), the kernels' own rounding
/// (`DeviceOptions::f16_rounding: Some(true)`) gives the same bits in every case; where it did
/// not (Mesa 26's lavapipe truncates), the driver's conversion alone (`Some(false)`, forced)
/// gives other products than the f16-rounded operands' somewhere — the drift the kernels'
/// rounding removes, which `f16_products_stay_within_the_f16_bound_of_the_cpu` checks.
#[test]
fn the_f16_conversion_probe_leaves_the_rounding_to_a_driver_only_where_it_is_exact() {
    let Some(gpu) = gpu() else {
        return;
    };
    if !gpu.f16_products() {
        eprintln!("f16 products: no SHADER_F16 here; no conversion to probe");
        return;
    }
    let trusted = !gpu.f16_rounded_by_kernels();
    println!(
        "f16 conversion of {}: {}",
        gpu.adapter(),
        match trusted {
            true => "rounds to nearest even (the driver converts)",
            false => "does not round to nearest even (the kernels round first)",
        }
    );
    let forced = WgpuBackend::with_options(
        AdapterChoice::default(),
        DeviceOptions {
            f16_rounding: Some(trusted),
            ..DeviceOptions::from_env().unwrap()
        },
    )
    .expect("a second device");
    assert_eq!(forced.f16_rounded_by_kernels(), trusted);
    let mut differs = false;
    for case in cases() {
        let operands = case.operands();
        let (probed, other) = (
            f16_bits(gpu, &case, &operands),
            f16_bits(&forced, &case, &operands),
        );
        match trusted {
            true => assert!(probed == other, "{:?}: other bits", case.shape),
            false => differs |= probed != other,
        }
    }
    assert!(
        trusted || differs,
        "the probe distrusts the driver, yet its conversion gives the kernels' bits"
    );
}
