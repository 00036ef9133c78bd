//! The number format of the weight products: the one `--precision` choice of every command
//! that computes (`deberta forward`, `detect`, `bench forward` take [`Precision::INFERENCE`];
//! `deberta pretrain` and `bench step` take [`Precision::TRAINING`]).
//!
//! [`Precision::F32`] is the reference and the default: every product in f32, bit-identical
//! for any thread count and SIMD level. The narrower formats change only the products of the
//! `Linear` layers (projections, feed-forward, heads' dense layers): their weights are
//! converted once ([`ParamStore::pack`](crate::model::ParamStore::pack)), activations are
//! rounded (bf16) or quantised per row (int8) at the product's input, and products accumulate
//! in f32 (bf16) or exactly in i32 (int8); everything else (embeddings, layer norm, softmax,
//! GELU, attention scores, the tied MLM decoder, losses) stays in f32. Both narrower paths give
//! the same bits for any thread count; int8 at every SIMD level and on AMX, bf16 at every SIMD
//! level (unless a product or partial sum falls below 2⁻¹²⁶; see
//! [`kernels::linear_packed`](crate::kernels::linear_packed)) while AMX sums bf16 in an order
//! of its own.
//!
//! Training in [`Precision::Bf16Mixed`] keeps f32 weights (the master copy the optimizer
//! updates), f32 optimizer state and f32 gradients, and runs the `Linear` products of the
//! forward and backward passes in bf16: each weight's bf16 copy is made again after every
//! update, the backward's products (`∂L/∂x = dy·W`, `∂L/∂W = dyᵀ·x`) round both operands to
//! bf16 and accumulate in f32 ([`Backend::matmul_reduced`](crate::Backend::matmul_reduced)).
//! bf16 has f32's exponent range, so no loss scaling is needed.
//!
//! [`Precision::Mixed`] is "the backend's mixed precision", the one training choice that runs
//! everywhere ([`Backend::mixed_products`](crate::Backend::mixed_products) names its products):
//! on wgpu the products of the `Linear` layers, the position projections and the attention
//! (`QKᵀ`, c2p/p2c, `P·V`, forward and backward) in f16 ([`Precision::F16`]: operands
//! rounded to f16 as the kernel loads them, f32 sums; through
//! [`ParamStore::products`](crate::model::ParamStore::products)) where the adapter has
//! `SHADER_F16`, in f32 where it has not; on the CPU backend the bf16 products of
//! [`Precision::Bf16Mixed`]. Master weights, optimizer state, gradients, layer norm, softmax
//! and the losses stay f32 as above. Under
//! `Mixed` the trainer always scales the loss dynamically
//! ([`LossScaler`](crate::train::LossScaler): f16's exponent range is narrow, and one rule on
//! every backend keeps runs comparable); under `Bf16Mixed` it never does.

/// The number format of the `Linear` products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere (the reference).
    #[default]
    F32,
    /// bfloat16 weights and activations at the products' inputs, f32 accumulation
    /// (`vdpbf16ps` with AVX-512 BF16, the same products through f32 registers without it).
    Bf16,
    /// int8 weights (one scale per output channel) and activations (one scale per row,
    /// computed on the fly), exact i32 sums (`vpdpbusd` with AVX-512 VNNI, a portable loop
    /// compiled for AVX2 and AVX-512F without it): inference of the discriminator.
    Int8,
    /// Training with f32 master weights, optimizer state and gradients and bf16 `Linear`
    /// products in the forward and backward passes (the products of [`Precision::Bf16`]).
    Bf16Mixed,
    /// Training with the backend's mixed precision
    /// ([`Backend::mixed_products`](crate::Backend::mixed_products): f16 products on wgpu with
    /// `SHADER_F16`, bf16 on the CPU) and dynamic loss scaling
    /// ([`LossScaler`](crate::train::LossScaler)); f32 master weights, optimizer state and
    /// gradients.
    Mixed,
    /// A product format, not a command's choice: binary16 operands (rounded to nearest even as
    /// they are loaded), f32 products and sums; the products of [`Precision::Mixed`] on wgpu.
    F16,
}

impl Precision {
    /// Every precision, in the order the CLI lists them.
    pub const ALL: [Precision; 6] = [
        Precision::F32,
        Precision::Bf16,
        Precision::Int8,
        Precision::Bf16Mixed,
        Precision::Mixed,
        Precision::F16,
    ];

    /// The precisions of the inference commands (`forward`, `detect`, `bench forward`).
    pub const INFERENCE: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::Int8];

    /// The precisions of training (`pretrain`, `bench step`).
    pub const TRAINING: [Precision; 3] = [Precision::F32, Precision::Mixed, Precision::Bf16Mixed];

    /// The name the CLI uses: `f32`, `bf16`, `int8`, `bf16-mixed`, `mixed` (and `f16` for
    /// the product format).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::Mixed => "mixed",
            Precision::F16 => "f16",
        }
    }

    /// The number format of the `Linear` products: `Bf16` for [`Precision::Bf16Mixed`], `F16`
    /// for [`Precision::Mixed`] (what it asks for; a backend without f16 products runs its
    /// [`Backend::mixed_products`](crate::Backend::mixed_products) instead, which the trainer
    /// asks), the precision itself otherwise.
    pub fn products(self) -> Precision {
        match self {
            Precision::Bf16Mixed => Precision::Bf16,
            Precision::Mixed => Precision::F16,
            other => other,
        }
    }

    /// Whether training at this precision scales the loss dynamically (only
    /// [`Precision::Mixed`]).
    pub fn scales_loss(self) -> bool {
        self == Precision::Mixed
    }

    /// The precision called `name` (as [`Precision::name`] spells it).
    pub fn from_name(name: &str) -> Option<Precision> {
        Precision::ALL.into_iter().find(|p| p.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(Precision::from_name(p.name()), Some(p));
        }
        assert_eq!(Precision::from_name("fp32"), None);
        assert_eq!(
            Precision::from_name("bf16-mixed"),
            Some(Precision::Bf16Mixed)
        );
        for p in Precision::INFERENCE.into_iter().chain(Precision::TRAINING) {
            assert!(Precision::ALL.contains(&p));
        }
        assert_eq!(Precision::Bf16Mixed.products(), Precision::Bf16);
        assert_eq!(Precision::Mixed.products(), Precision::F16);
        assert_eq!(Precision::from_name("mixed"), Some(Precision::Mixed));
        assert!(Precision::Mixed.scales_loss() && !Precision::Bf16Mixed.scales_loss());
        assert!(!Precision::TRAINING.contains(&Precision::F16));
        assert!(!Precision::INFERENCE.contains(&Precision::F16));
        assert_eq!(Precision::default(), Precision::F32);
    }
}
