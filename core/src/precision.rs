//! The number format of the weight products: the one `--precision` choice of every command
//! that computes (`deberta forward`, `detect`, `bench forward`).
//!
//! [`Precision::F32`] is the reference and the default: every product in f32, bit-identical
//! for any thread count and SIMD level. The narrower formats change only the products of the
//! `Linear` layers (projections, feed-forward, heads' dense layers): their weights are
//! converted once ([`ParamStore::pack`](crate::model::ParamStore::pack)), activations are
//! rounded at the product's input, and products accumulate in f32; everything else (layer
//! norm, softmax, GELU, attention scores, losses) stays in f32.

/// The number format of the `Linear` products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere (the reference).
    #[default]
    F32,
    /// bfloat16 weights and activations at the products' inputs, f32 accumulation
    /// (`vdpbf16ps` with AVX-512 BF16, the same products through f32 registers without it).
    Bf16,
}

impl Precision {
    /// Every precision, in the order the CLI lists them.
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// The name the CLI uses: `f32`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
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
        assert_eq!(Precision::default(), Precision::F32);
    }
}
