//! The probe of the cooperative-matrix matmul, run once when a device opens with cooperative
//! matrices and before any f16 product uses them. wgpu's cooperative matrices are experimental
//! and each driver compiles them its own way, so the kernel must show on this device that it
//! computes the products it is given before mixed precision trusts it with every f16 product.
//!
//! The probe's operands are multiples of 1/8 within ±1.75: exact in binary16, their products
//! exact multiples of 1/64 and every partial sum exact in f32, so that the right answer is
//! exact whatever the order or grouping of the additions (tensor cores add in their own), and
//! the device's products must equal the CPU's bit for bit. The shapes take the kernel through
//! whole tiles stored straight from its matrices (the first product: α = 1, β = 0, 136 rows
//! and columns, a whole tile of 128 and of 64), partial tiles on both sides of C, a partial
//! last step of k (52 is neither a multiple of 16 nor of 32), both transpositions of both
//! operands, two batch entries, α and an accumulated C,
//! each on every blocking of the kernel.

use deberta_core::Error;
use deberta_core::kernels::{MatmulSpec, MatrixLayout, matmul as cpu_matmul};

use crate::device::Gpu;
use crate::ops::matmul::{Added, MatmulTiles, matmul};
use crate::ops::memory;
use crate::tensor::GpuTensor;

/// One probe product: `entries` batch entries of `C = α·A·B + β·C`, A `m × k` and B `k × n`,
/// each stored transposed where asked.
struct Probe {
    entries: usize,
    m: usize,
    n: usize,
    k: usize,
    transpose_a: bool,
    transpose_b: bool,
    alpha: f32,
    beta: f32,
}

/// The probe products.
const PRODUCTS: [Probe; 2] = [
    Probe {
        entries: 1,
        m: 136,
        n: 136,
        k: 52,
        transpose_a: false,
        transpose_b: false,
        alpha: 1.0,
        beta: 0.0,
    },
    Probe {
        entries: 2,
        m: 72,
        n: 40,
        k: 52,
        transpose_a: true,
        transpose_b: true,
        alpha: 0.5,
        beta: 1.0,
    },
];

/// `len` multiples of 1/8 in [-1.75, 1.75], a different sequence for each `seed`.
fn eighths(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 37 + seed * 11) % 29) as f32 / 8.0 - 1.75)
        .collect()
}

impl Probe {
    /// The product's spec: dense operands, batch entries one after another.
    fn spec(&self) -> MatmulSpec {
        let layout = |rows: usize, cols: usize, transposed: bool| {
            let stored = match transposed {
                true => MatrixLayout::row_major(rows).transposed(),
                false => MatrixLayout::row_major(cols),
            };
            stored.batched(0, rows * cols)
        };
        MatmulSpec {
            batch: [1, self.entries],
            m: self.m,
            n: self.n,
            k: self.k,
            a: layout(self.m, self.k, self.transpose_a),
            b: layout(self.k, self.n, self.transpose_b),
            c: layout(self.m, self.n, false),
            alpha: self.alpha,
            beta: self.beta,
        }
    }

    /// A, B and the initial C of probe number `seed`.
    fn operands(&self, seed: usize) -> [Vec<f32>; 3] {
        let [a, b, c] = [self.m * self.k, self.k * self.n, self.m * self.n];
        [a, b, c]
            .map(|len| len * self.entries)
            .into_iter()
            .zip(0..)
            .map(|(len, operand)| eighths(len, 3 * seed + operand))
            .collect::<Vec<_>>()
            .try_into()
            .expect("three operands")
    }
}

impl Gpu {
    /// Whether the f16 products of this device (on its cooperative matrices, where it was
    /// opened with them) give every [`PRODUCTS`] probe the CPU's exact result, on each of the
    /// kernel's blockings (forced through the 32-, 64- and 128-wide tile policies: one subgroup
    /// of 2 × 2 accumulators, one of 4 × 4, four of 4 × 4; the device's policy restored after).
    pub(crate) fn cooperative_products_exact(&self) -> Result<bool, Error> {
        let policy = self.matmul_tiles.get();
        let mut exact = true;
        for tiles in [
            MatmulTiles::Tiles32,
            MatmulTiles::Tiles64,
            MatmulTiles::Tiles128,
        ] {
            self.matmul_tiles.set(tiles);
            let found = self.products_exact(|gpu, [a, b], c, spec| {
                matmul(gpu, [a, b], Added::default(), c, spec, true)
            });
            self.matmul_tiles.set(policy);
            exact &= found?;
        }
        Ok(exact)
    }

    /// Whether `product` (which computes `C = α·A·B + β·C` on this device) gives every
    /// [`PRODUCTS`] probe the CPU's exact result.
    fn products_exact(
        &self,
        product: impl Fn(&Gpu, [&GpuTensor; 2], &mut GpuTensor, &MatmulSpec) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let mut exact = true;
        for (seed, probe) in PRODUCTS.iter().enumerate() {
            let spec = probe.spec();
            let [a, b, c] = probe.operands(seed);
            let mut expected = c.clone();
            cpu_matmul(&a, &b, &mut expected, &spec)?;
            let [a_device, b_device] = [&a, &b].map(|data| memory::upload(self, data));
            let mut c_device = memory::upload(self, &c)?;
            product(self, [&a_device?, &b_device?], &mut c_device, &spec)?;
            let mut found = vec![0.0f32; expected.len()];
            memory::download(self, "cooperative probe", &c_device, &mut found)?;
            exact &= found
                .iter()
                .zip(&expected)
                .all(|(found, expected)| found.to_bits() == expected.to_bits());
        }
        // Dropped rather than kept for reuse: a device starts with an empty pool.
        self.pool.trim();
        self.readback.trim();
        Ok(exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdapterChoice, DeviceOptions};

    /// The operands are exact in binary16 and the expected products exact in f32 in any order
    /// of addition: every partial sum of the products, from either end, is a multiple of 1/64
    /// below 2¹⁸ in magnitude (24 bits of significand hold it), so no order rounds.
    #[test]
    fn probe_products_are_exact_in_any_order() {
        for (seed, probe) in PRODUCTS.iter().enumerate() {
            let [a, b, c] = probe.operands(seed);
            for value in a.iter().chain(&b).chain(&c) {
                assert_eq!(half::f16::from_f32(*value).to_f32(), *value);
                assert!(value.abs() <= 1.75);
            }
            // |Σ| ≤ k·1.75² + |β·c| ≤ 52·3.07 + 1.75 in multiples of 1/64: far within 24 bits.
            let bound = probe.k as f32 * 1.75 * 1.75 + probe.beta.abs() * 1.75;
            assert!(bound * 64.0 < (1 << 24) as f32);
            // α = 0.5 only halves such sums: still exact.
            assert!(probe.alpha == 1.0 || probe.alpha == 0.5);
            // Partial tiles of either side (32 or 64 wide) and a partial last step of k.
            assert!(probe.k % 16 != 0 && probe.k % 32 != 0);
            assert!(probe.m % 32 != 0 && probe.n % 32 != 0);
            // Large enough for the tiled kernels (not the thin products' kernel).
            assert!(probe.m >= 32 && probe.n >= 32);
        }
        let [first, second] = PRODUCTS.map(|probe| probe.spec());
        assert_ne!(first.a, second.a);
        assert_ne!(first.b, second.b);
    }

    /// The default device's f16 products (on cooperative matrices where it has them) pass the
    /// probe, and its register-blocked f16 products do too; products that leave C's last row
    /// as it was, scale by another α, or add C twice do not.
    #[test]
    fn the_probe_passes_right_products_and_fails_wrong_ones() {
        if crate::test_backend::test_backend().is_none() {
            return;
        }
        let gpu = Gpu::open(
            &AdapterChoice::default(),
            DeviceOptions::from_env().unwrap(),
        )
        .unwrap();
        assert!(gpu.cooperative_products_exact().unwrap());
        assert!(!gpu.cooperative_probe_failed);
        let register_blocked =
            |gpu: &Gpu, [a, b]: [&GpuTensor; 2], c: &mut GpuTensor, spec: &MatmulSpec| {
                matmul(gpu, [a, b], Added::default(), c, spec, gpu.f16_products)
            };
        let without_cooperative = DeviceOptions {
            cooperative_matrices: Some(false),
            ..DeviceOptions::from_env().unwrap()
        };
        let plain = Gpu::open(&AdapterChoice::default(), without_cooperative).unwrap();
        assert!(plain.cooperative.is_none());
        assert!(plain.products_exact(register_blocked).unwrap());
        let short = |gpu: &Gpu, operands: [&GpuTensor; 2], c: &mut GpuTensor, spec: &MatmulSpec| {
            register_blocked(
                gpu,
                operands,
                c,
                &MatmulSpec {
                    m: spec.m - 1,
                    ..*spec
                },
            )
        };
        let scaled =
            |gpu: &Gpu, operands: [&GpuTensor; 2], c: &mut GpuTensor, spec: &MatmulSpec| {
                register_blocked(
                    gpu,
                    operands,
                    c,
                    &MatmulSpec {
                        alpha: 1.0,
                        ..*spec
                    },
                )
            };
        let accumulated =
            |gpu: &Gpu, operands: [&GpuTensor; 2], c: &mut GpuTensor, spec: &MatmulSpec| {
                register_blocked(gpu, operands, c, &MatmulSpec { beta: 2.0, ..*spec })
            };
        assert!(!plain.products_exact(short).unwrap());
        assert!(!plain.products_exact(scaled).unwrap());
        assert!(!plain.products_exact(accumulated).unwrap());
    }
}
