//! Model configuration: every `DebertaV2Config` field the modeling code reads, with
//! Hugging Face's defaults and derived values resolved (SPEC §1.1).
//!
//! The host turns a `config.json` into a [`RawConfig`] (all fields optional, exactly as
//! written) and calls [`ModelConfig::from_raw`], which applies the defaults that
//! `DebertaV2Config` and the `getattr(config, …, default)` calls of the modeling code
//! apply, and validates the result.

use crate::error::ConfigValue;
use crate::{Activation, Error};

/// Which disentangled-attention terms a layer adds to the content-to-content scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PosAttType {
    /// Content-to-position: query content against relative-position keys.
    pub c2p: bool,
    /// Position-to-content: relative-position queries against key content.
    pub p2c: bool,
}

impl PosAttType {
    /// `1 + #terms`: the factor under the square root of the attention scale.
    pub fn scale_factor(self) -> usize {
        1 + usize::from(self.c2p) + usize::from(self.p2c)
    }

    /// Parses one entry of `pos_att_type` (`"c2p"` or `"p2c"`, any case, surrounding spaces
    /// ignored) into `self`.
    pub fn add_entry(&mut self, entry: &str) -> Result<(), Error> {
        let entry = entry.trim();
        if entry.eq_ignore_ascii_case("c2p") {
            self.c2p = true;
        } else if entry.eq_ignore_ascii_case("p2c") {
            self.p2c = true;
        } else {
            return Err(Error::InvalidConfig {
                field: "pos_att_type",
                reason: "entries must be \"c2p\" or \"p2c\"",
                value: ConfigValue::Other,
            });
        }
        Ok(())
    }
}

/// The v2 convolution layer applied after the first encoder layer (`conv_kernel_size > 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvConfig {
    /// Kernel width (odd, so that `padding = (k-1)/2` keeps the length).
    pub kernel_size: usize,
    /// Channel groups; must divide `hidden_size`.
    pub groups: usize,
    /// Activation after the convolution.
    pub activation: Activation,
}

/// A `config.json` as written: every field optional. Integers that Hugging Face allows to be
/// negative as "unset" markers (`max_relative_positions`, `position_buckets`) stay signed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RawConfig {
    /// `vocab_size` (HF default 128100).
    pub vocab_size: Option<i64>,
    /// `hidden_size` (HF default 1536).
    pub hidden_size: Option<i64>,
    /// `num_hidden_layers` (HF default 24).
    pub num_hidden_layers: Option<i64>,
    /// `num_attention_heads` (HF default 24).
    pub num_attention_heads: Option<i64>,
    /// `attention_head_size` (default `hidden_size / num_attention_heads`).
    pub attention_head_size: Option<i64>,
    /// `intermediate_size` (HF default 6144).
    pub intermediate_size: Option<i64>,
    /// `hidden_act` (HF default "gelu").
    pub hidden_act: Option<Activation>,
    /// `hidden_dropout_prob` (0.1).
    pub hidden_dropout_prob: Option<f64>,
    /// `attention_probs_dropout_prob` (0.1).
    pub attention_probs_dropout_prob: Option<f64>,
    /// `max_position_embeddings` (512).
    pub max_position_embeddings: Option<i64>,
    /// `type_vocab_size` (0).
    pub type_vocab_size: Option<i64>,
    /// `initializer_range` (0.02).
    pub initializer_range: Option<f64>,
    /// `layer_norm_eps` (1e-7).
    pub layer_norm_eps: Option<f64>,
    /// `relative_attention` (false).
    pub relative_attention: Option<bool>,
    /// `max_relative_positions` (-1 → `max_position_embeddings`).
    pub max_relative_positions: Option<i64>,
    /// `position_buckets` (-1 → no log buckets).
    pub position_buckets: Option<i64>,
    /// `pad_token_id` (0).
    pub pad_token_id: Option<i64>,
    /// `position_biased_input` (true).
    pub position_biased_input: Option<bool>,
    /// `pos_att_type` (none).
    pub pos_att_type: Option<PosAttType>,
    /// `share_att_key` (false).
    pub share_att_key: Option<bool>,
    /// `"layer_norm"` in `norm_rel_ebd` (default "none").
    pub norm_rel_ebd_layer_norm: Option<bool>,
    /// `embedding_size` (default `hidden_size`).
    pub embedding_size: Option<i64>,
    /// `conv_kernel_size` (0 = no ConvLayer).
    pub conv_kernel_size: Option<i64>,
    /// `conv_groups` (1).
    pub conv_groups: Option<i64>,
    /// `conv_act` ("tanh").
    pub conv_act: Option<Activation>,
}

/// A validated DeBERTa-v2/v3 configuration with every default resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of one head (`d`).
    pub attention_head_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Activation of the feed-forward layer and of the heads.
    pub hidden_act: Activation,
    /// Dropout on hidden states (training only).
    pub hidden_dropout_prob: f32,
    /// Dropout on attention probabilities (training only).
    pub attention_probs_dropout_prob: f32,
    /// Rows of the absolute-position table; the longest input when it is used.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table (0 = none).
    pub type_vocab_size: usize,
    /// Standard deviation of the normal initialisation.
    pub initializer_range: f32,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f32,
    /// Whether layers use disentangled relative attention.
    pub relative_attention: bool,
    /// Maximum relative distance (resolved: `max_position_embeddings` when unset).
    pub max_relative_positions: usize,
    /// Log-bucket count (0 = relative distances are used unbucketed).
    pub position_buckets: usize,
    /// Padding token id (its embedding row gets no lookup gradient).
    pub pad_token_id: usize,
    /// Whether absolute position embeddings are added to the input (v2: yes, v3: no).
    pub position_biased_input: bool,
    /// Which disentangled terms the attention uses.
    pub pos_att_type: PosAttType,
    /// Whether position projections reuse the content `query_proj`/`key_proj`.
    pub share_att_key: bool,
    /// Whether the relative-embedding table is LayerNorm'ed once per forward.
    pub norm_rel_ebd_layer_norm: bool,
    /// Width of the word embeddings (an `embed_proj` maps it to `hidden_size` when different).
    pub embedding_size: usize,
    /// The v2 ConvLayer, when present.
    pub conv: Option<ConvConfig>,
}

fn positive(field: &'static str, value: i64) -> Result<usize, Error> {
    if value <= 0 {
        return Err(Error::InvalidConfig {
            field,
            reason: "must be a positive integer",
            value: ConfigValue::Int(value),
        });
    }
    usize::try_from(value).map_err(|_| Error::InvalidConfig {
        field,
        reason: "is too large",
        value: ConfigValue::Int(value),
    })
}

fn non_negative(field: &'static str, value: i64) -> Result<usize, Error> {
    if value < 0 {
        return Err(Error::InvalidConfig {
            field,
            reason: "must not be negative",
            value: ConfigValue::Int(value),
        });
    }
    usize::try_from(value).map_err(|_| Error::InvalidConfig {
        field,
        reason: "is too large",
        value: ConfigValue::Int(value),
    })
}

/// A probability in `[0, 1)`, checked after rounding to `f32` (0.999999999 rounds to 1).
fn probability(field: &'static str, value: f64) -> Result<f32, Error> {
    let rounded = value as f32;
    if !(0.0..1.0).contains(&rounded) {
        return Err(Error::InvalidConfig {
            field,
            reason: "must be a probability in [0, 1) (as f32)",
            value: ConfigValue::Float(value),
        });
    }
    Ok(rounded)
}

/// Upper bound on any single dimension, so that products of a few dimensions cannot overflow
/// `usize` on 32-bit targets and absurd configs are rejected before allocation.
const MAX_DIM: usize = 1 << 24;

fn bounded(field: &'static str, value: usize) -> Result<usize, Error> {
    if value > MAX_DIM {
        return Err(Error::InvalidConfig {
            field,
            reason: "is unreasonably large (limit 16777216)",
            value: ConfigValue::Int(value as i64),
        });
    }
    Ok(value)
}

/// Upper bound on `num_hidden_layers`: every layer registers its own parameters, so a deeper
/// config would exhaust memory on bookkeeping alone (published models have at most 48).
const MAX_LAYERS: usize = 4096;

impl ModelConfig {
    /// Resolves Hugging Face defaults and validates the result.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, Error> {
        let hidden_size = bounded(
            "hidden_size",
            positive("hidden_size", raw.hidden_size.unwrap_or(1536))?,
        )?;
        let num_attention_heads = bounded(
            "num_attention_heads",
            positive("num_attention_heads", raw.num_attention_heads.unwrap_or(24))?,
        )?;
        let attention_head_size = match raw.attention_head_size {
            Some(d) => bounded("attention_head_size", positive("attention_head_size", d)?)?,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(Error::InvalidConfig {
                        field: "num_attention_heads",
                        reason: "does not divide hidden_size and no attention_head_size is given",
                        value: ConfigValue::Int(num_attention_heads as i64),
                    });
                }
                hidden_size / num_attention_heads
            }
        };
        bounded(
            "num_attention_heads * attention_head_size",
            num_attention_heads * attention_head_size,
        )?;
        let max_position_embeddings = bounded(
            "max_position_embeddings",
            positive(
                "max_position_embeddings",
                raw.max_position_embeddings.unwrap_or(512),
            )?,
        )?;
        let relative_attention = raw.relative_attention.unwrap_or(false);
        let max_relative_positions = match raw.max_relative_positions.unwrap_or(-1) {
            v if v < 1 => max_position_embeddings,
            v => bounded(
                "max_relative_positions",
                positive("max_relative_positions", v)?,
            )?,
        };
        let position_buckets = match raw.position_buckets.unwrap_or(-1) {
            v if v <= 0 => 0,
            v => bounded("position_buckets", positive("position_buckets", v)?)?,
        };
        if relative_attention && position_buckets > 0 && max_relative_positions < 2 {
            return Err(Error::InvalidConfig {
                field: "max_relative_positions",
                reason: "log buckets need max_relative_positions >= 2",
                value: ConfigValue::Int(max_relative_positions as i64),
            });
        }
        if relative_attention && position_buckets == 1 {
            return Err(Error::InvalidConfig {
                field: "position_buckets",
                reason: "log buckets need at least 2 buckets",
                value: ConfigValue::Int(1),
            });
        }
        let vocab_size = bounded(
            "vocab_size",
            positive("vocab_size", raw.vocab_size.unwrap_or(128_100))?,
        )?;
        let pad_token_id = non_negative("pad_token_id", raw.pad_token_id.unwrap_or(0))?;
        if pad_token_id >= vocab_size {
            return Err(Error::InvalidConfig {
                field: "pad_token_id",
                reason: "must be smaller than vocab_size",
                value: ConfigValue::Int(pad_token_id as i64),
            });
        }
        // Both are used as f32: the checks apply to the rounded values (1e-50 rounds to 0,
        // 1e300 to infinity).
        let raw_eps = raw.layer_norm_eps.unwrap_or(1e-7);
        let layer_norm_eps = raw_eps as f32;
        if !(layer_norm_eps > 0.0 && layer_norm_eps.is_finite()) {
            return Err(Error::InvalidConfig {
                field: "layer_norm_eps",
                reason: "must be a positive finite number (as f32)",
                value: ConfigValue::Float(raw_eps),
            });
        }
        let raw_range = raw.initializer_range.unwrap_or(0.02);
        let initializer_range = raw_range as f32;
        if !(initializer_range >= 0.0 && initializer_range.is_finite()) {
            return Err(Error::InvalidConfig {
                field: "initializer_range",
                reason: "must be a non-negative finite number (as f32)",
                value: ConfigValue::Float(raw_range),
            });
        }
        let conv = match raw.conv_kernel_size.unwrap_or(0) {
            k if k <= 0 => None,
            k => {
                let kernel_size = bounded("conv_kernel_size", positive("conv_kernel_size", k)?)?;
                if kernel_size % 2 == 0 {
                    return Err(Error::InvalidConfig {
                        field: "conv_kernel_size",
                        reason: "must be odd (padding (k-1)/2 keeps the sequence length only then)",
                        value: ConfigValue::Int(k),
                    });
                }
                let groups = positive("conv_groups", raw.conv_groups.unwrap_or(1))?;
                if hidden_size % groups != 0 {
                    return Err(Error::InvalidConfig {
                        field: "conv_groups",
                        reason: "must divide hidden_size",
                        value: ConfigValue::Int(groups as i64),
                    });
                }
                Some(ConvConfig {
                    kernel_size,
                    groups,
                    activation: raw.conv_act.unwrap_or(Activation::Tanh),
                })
            }
        };
        Ok(ModelConfig {
            vocab_size,
            hidden_size,
            num_hidden_layers: match positive(
                "num_hidden_layers",
                raw.num_hidden_layers.unwrap_or(24),
            )? {
                layers if layers > MAX_LAYERS => {
                    return Err(Error::InvalidConfig {
                        field: "num_hidden_layers",
                        reason: "is unreasonably large (limit 4096)",
                        value: ConfigValue::Int(layers as i64),
                    });
                }
                layers => layers,
            },
            num_attention_heads,
            attention_head_size,
            intermediate_size: bounded(
                "intermediate_size",
                positive("intermediate_size", raw.intermediate_size.unwrap_or(6144))?,
            )?,
            hidden_act: raw.hidden_act.unwrap_or(Activation::Gelu),
            hidden_dropout_prob: probability(
                "hidden_dropout_prob",
                raw.hidden_dropout_prob.unwrap_or(0.1),
            )?,
            attention_probs_dropout_prob: probability(
                "attention_probs_dropout_prob",
                raw.attention_probs_dropout_prob.unwrap_or(0.1),
            )?,
            max_position_embeddings,
            type_vocab_size: bounded(
                "type_vocab_size",
                non_negative("type_vocab_size", raw.type_vocab_size.unwrap_or(0))?,
            )?,
            initializer_range,
            layer_norm_eps,
            relative_attention,
            max_relative_positions,
            position_buckets,
            pad_token_id,
            position_biased_input: raw.position_biased_input.unwrap_or(true),
            pos_att_type: raw.pos_att_type.unwrap_or_default(),
            share_att_key: raw.share_att_key.unwrap_or(false),
            norm_rel_ebd_layer_norm: raw.norm_rel_ebd_layer_norm.unwrap_or(false),
            embedding_size: bounded(
                "embedding_size",
                positive(
                    "embedding_size",
                    raw.embedding_size.unwrap_or(hidden_size as i64),
                )?,
            )?,
            conv,
        })
    }

    /// `h·d`: the width of the concatenated heads (equals `hidden_size` unless
    /// `attention_head_size` says otherwise).
    pub fn all_head_size(&self) -> usize {
        self.num_attention_heads * self.attention_head_size
    }

    /// The attention span `S`: relative indices run over `0..2S` (`position_buckets` when set,
    /// else `max_relative_positions`).
    pub fn attention_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative_positions
        }
    }

    /// Rows of `rel_embeddings` (`2S`); 0 without relative attention.
    pub fn relative_embedding_rows(&self) -> usize {
        if self.relative_attention {
            2 * self.attention_span()
        } else {
            0
        }
    }

    /// `sqrt(d · (1 + #pos terms))` in float32, as HF's `scaled_size_sqrt`. The scale counts
    /// `pos_att_type` even when `relative_attention` is off, exactly as HF does.
    pub fn attention_scale(&self) -> f32 {
        libm::sqrtf(self.attention_head_size as f32 * self.pos_att_type.scale_factor() as f32)
    }

    /// Whether the attention adds content-to-position scores.
    pub fn uses_c2p(&self) -> bool {
        self.relative_attention && self.pos_att_type.c2p
    }

    /// Whether the attention adds position-to-content scores.
    pub fn uses_p2c(&self) -> bool {
        self.relative_attention && self.pos_att_type.p2c
    }

    /// The longest sequence the model accepts: `max_position_embeddings` with absolute
    /// positions, otherwise unbounded by the weights (relative positions are clamped).
    pub fn max_sequence_length(&self) -> Option<usize> {
        self.position_biased_input
            .then_some(self.max_position_embeddings)
    }

    /// The published DeBERTa-v3 shape `xsmall`, `small`, `base` or `large` (SPEC §1.2),
    /// vocabulary 128100.
    pub fn deberta_v3(shape: &str) -> Option<Self> {
        let (hidden, layers, heads) = match shape {
            "xsmall" => (384, 12, 6),
            "small" => (768, 6, 12),
            "base" => (768, 12, 12),
            "large" => (1024, 24, 16),
            _ => return None,
        };
        let raw = RawConfig {
            vocab_size: Some(128_100),
            hidden_size: Some(hidden),
            num_hidden_layers: Some(layers),
            num_attention_heads: Some(heads),
            attention_head_size: Some(64),
            intermediate_size: Some(hidden * 4),
            hidden_act: Some(Activation::Gelu),
            max_position_embeddings: Some(512),
            type_vocab_size: Some(0),
            layer_norm_eps: Some(1e-7),
            relative_attention: Some(true),
            max_relative_positions: Some(-1),
            position_buckets: Some(256),
            position_biased_input: Some(false),
            pos_att_type: Some(PosAttType {
                c2p: true,
                p2c: true,
            }),
            share_att_key: Some(true),
            norm_rel_ebd_layer_norm: Some(true),
            ..RawConfig::default()
        };
        ModelConfig::from_raw(&raw).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_defaults() {
        let cfg = ModelConfig::from_raw(&RawConfig::default()).unwrap();
        assert_eq!(cfg.vocab_size, 128_100);
        assert_eq!(cfg.hidden_size, 1536);
        assert_eq!(cfg.attention_head_size, 64);
        assert_eq!(cfg.max_relative_positions, 512);
        assert_eq!(cfg.position_buckets, 0);
        assert!(cfg.position_biased_input);
        assert!(!cfg.relative_attention);
        assert_eq!(cfg.embedding_size, 1536);
        assert_eq!(cfg.conv, None);
    }

    #[test]
    fn heads_must_divide_hidden_without_head_size() {
        let raw = RawConfig {
            hidden_size: Some(30),
            num_attention_heads: Some(4),
            ..RawConfig::default()
        };
        assert!(matches!(
            ModelConfig::from_raw(&raw),
            Err(Error::InvalidConfig {
                field: "num_attention_heads",
                ..
            })
        ));
        let raw = RawConfig {
            attention_head_size: Some(8),
            ..raw
        };
        assert_eq!(ModelConfig::from_raw(&raw).unwrap().all_head_size(), 32);
    }

    #[test]
    fn v3_shapes_have_published_sizes() {
        let xs = ModelConfig::deberta_v3("xsmall").unwrap();
        assert_eq!(
            (xs.hidden_size, xs.num_hidden_layers, xs.all_head_size()),
            (384, 12, 384)
        );
        assert_eq!(xs.relative_embedding_rows(), 512);
        assert_eq!(xs.attention_scale(), libm::sqrtf(192.0));
        assert!(ModelConfig::deberta_v3("huge").is_none());
    }

    #[test]
    fn even_conv_kernel_is_rejected() {
        let raw = RawConfig {
            hidden_size: Some(32),
            num_attention_heads: Some(4),
            conv_kernel_size: Some(2),
            ..RawConfig::default()
        };
        assert!(ModelConfig::from_raw(&raw).is_err());
    }

    /// Found by `fuzz/fuzz_targets/hf_config.rs`: values valid as f64 that round to an invalid
    /// f32 (`layer_norm_eps` 1e-47 became 0, and the written config.json no longer parsed).
    #[test]
    fn float_fields_are_checked_after_rounding_to_f32() {
        let small = RawConfig {
            hidden_size: Some(32),
            num_attention_heads: Some(4),
            ..RawConfig::default()
        };
        let rejected = |raw: RawConfig, name: &str| match ModelConfig::from_raw(&raw) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, name),
            other => panic!("{name}: {other:?}"),
        };
        for eps in [1e-47, 1e300] {
            let raw = RawConfig {
                layer_norm_eps: Some(eps),
                ..small
            };
            rejected(raw, "layer_norm_eps");
        }
        let raw = RawConfig {
            initializer_range: Some(1e300),
            ..small
        };
        rejected(raw, "initializer_range");
        let raw = RawConfig {
            hidden_dropout_prob: Some(0.999_999_999_9),
            ..small
        };
        rejected(raw, "hidden_dropout_prob");
        let raw = RawConfig {
            attention_probs_dropout_prob: Some(1.0 - 1e-12),
            ..small
        };
        rejected(raw, "attention_probs_dropout_prob");
        let raw = RawConfig {
            layer_norm_eps: Some(1e-40),
            initializer_range: Some(1e-50),
            ..small
        };
        let cfg = ModelConfig::from_raw(&raw).unwrap();
        assert!(cfg.layer_norm_eps > 0.0);
        assert_eq!(cfg.initializer_range, 0.0);
    }

    /// A deep config is rejected before any per-layer bookkeeping (200 000 layers took 1 GB
    /// and 4 s to report the missing tensors; the old limit of 2^24 would exhaust memory).
    #[test]
    fn layer_count_is_bounded() {
        let raw = |layers| RawConfig {
            hidden_size: Some(32),
            num_attention_heads: Some(4),
            num_hidden_layers: Some(layers),
            ..RawConfig::default()
        };
        assert_eq!(
            ModelConfig::from_raw(&raw(4096)).unwrap().num_hidden_layers,
            4096
        );
        assert!(matches!(
            ModelConfig::from_raw(&raw(4097)),
            Err(Error::InvalidConfig {
                field: "num_hidden_layers",
                ..
            })
        ));
    }
}
