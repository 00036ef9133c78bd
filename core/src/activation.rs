//! Activation functions, named and computed as Hugging Face's `ACT2FN` does.

use crate::{Error, fast_math};

/// An element-wise activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))` (`"gelu"`; DeBERTa's default).
    Gelu,
    /// Tanh approximation of GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`).
    GeluTanh,
    /// `max(0, x)` (`"relu"`).
    Relu,
    /// `tanh(x)` (`"tanh"`; the default `conv_act` of the v2 ConvLayer).
    Tanh,
    /// `x·σ(x)` (`"silu"`, `"swish"`).
    Silu,
    /// `σ(x)` (`"sigmoid"`).
    Sigmoid,
    /// The identity (`"linear"`).
    Identity,
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_TANH_COEFF: f32 = 0.044_715;

impl Activation {
    /// Maps a Hugging Face activation name (`config.hidden_act`, `conv_act`) to a function.
    pub fn from_hf_name(name: &str) -> Result<Self, Error> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            "silu" | "swish" => Ok(Activation::Silu),
            "sigmoid" => Ok(Activation::Sigmoid),
            "linear" => Ok(Activation::Identity),
            _ => Err(Error::UnknownActivation),
        }
    }

    /// The canonical Hugging Face name of this function.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
            Activation::Identity => "linear",
        }
    }

    /// Applies the function to one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            // PyTorch's order of operations: x * 0.5 * (1 + erf(x * M_SQRT1_2)).
            Activation::Gelu => {
                x * 0.5 * (1.0 + fast_math::erf(x * core::f32::consts::FRAC_1_SQRT_2))
            }
            Activation::GeluTanh => {
                let inner = SQRT_2_OVER_PI * (x + GELU_TANH_COEFF * x * x * x);
                0.5 * x * (1.0 + libm::tanhf(inner))
            }
            Activation::Relu => x.max(0.0),
            Activation::Tanh => libm::tanhf(x),
            Activation::Silu => x / (1.0 + libm::expf(-x)),
            Activation::Sigmoid => 1.0 / (1.0 + libm::expf(-x)),
            Activation::Identity => x,
        }
    }

    /// The derivative `f'(x)` at one value (used by the backward pass).
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + fast_math::erf(x * core::f32::consts::FRAC_1_SQRT_2));
                let pdf = fast_math::exp(-0.5 * x * x)
                    * (0.5 * core::f32::consts::FRAC_2_SQRT_PI)
                    * core::f32::consts::FRAC_1_SQRT_2;
                cdf + x * pdf
            }
            Activation::GeluTanh => {
                let x3 = x * x * x;
                let inner = SQRT_2_OVER_PI * (x + GELU_TANH_COEFF * x3);
                let t = libm::tanhf(inner);
                let dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEFF * x * x);
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner
            }
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Tanh => {
                let t = libm::tanhf(x);
                1.0 - t * t
            }
            Activation::Silu => {
                let s = 1.0 / (1.0 + libm::expf(-x));
                s * (1.0 + x * (1.0 - s))
            }
            Activation::Sigmoid => {
                let s = 1.0 / (1.0 + libm::expf(-x));
                s * (1.0 - s)
            }
            Activation::Identity => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for act in [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Relu,
            Activation::Tanh,
            Activation::Silu,
            Activation::Sigmoid,
            Activation::Identity,
        ] {
            assert_eq!(Activation::from_hf_name(act.hf_name()), Ok(act));
        }
        assert_eq!(
            Activation::from_hf_name("gelu_10"),
            Err(Error::UnknownActivation)
        );
    }

    #[test]
    fn gelu_reference_values() {
        // Values of torch.nn.functional.gelu in float64, rounded.
        let cases = [
            (-3.0f32, -0.004_049_796),
            (-1.0, -0.158_655_25),
            (0.0, 0.0),
            (0.5, 0.345_731_14),
            (2.0, 1.954_499_7),
        ];
        for (x, y) in cases {
            assert!((Activation::Gelu.apply(x) - y).abs() < 1e-6, "gelu({x})");
        }
    }

    #[test]
    fn derivatives_match_finite_differences() {
        for act in [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Tanh,
            Activation::Silu,
            Activation::Sigmoid,
            Activation::Identity,
        ] {
            for i in -30..=30 {
                let x = i as f64 * 0.13 + 0.01;
                let h = 1e-3;
                let num = (act.apply((x + h) as f32) as f64 - act.apply((x - h) as f32) as f64)
                    / (2.0 * h);
                let ana = act.derivative(x as f32) as f64;
                assert!((num - ana).abs() < 2e-3, "{act:?} at {x}: {num} vs {ana}");
            }
        }
    }
}
