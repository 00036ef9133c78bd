//! Which tensors an edge file holds, in which order, and their shapes: the tensor kinds, and
//! the [`Geometry`] (validated configuration, sequence limit, stored relative window) that
//! decides them. The table of a file lists exactly [`Geometry::tensor_count`] entries, entry
//! `i` being [`Geometry::slot`]`(i)`: the embeddings, then each layer's tensors, then the RTD
//! head.

use crate::ModelConfig;
use crate::relative_position::{IndexWindow, used_index_range};

use super::EdgeError;
use super::format::{MAX_SEQ_LEN, MAX_WIDTH};

/// What a tensor of the file holds. Names follow the Hugging Face modules they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// `embeddings.word_embeddings.weight` `[vocab, H]` (the discriminator's, E_G + E_Δ under GDES).
    WordEmbeddings,
    /// Rows `0..max_seq_len` of `embeddings.position_embeddings.weight` `[max_seq_len, H]`.
    PositionEmbeddings,
    /// `embeddings.LayerNorm.weight` `[H]`.
    EmbeddingNormWeight,
    /// `embeddings.LayerNorm.bias` `[H]`.
    EmbeddingNormBias,
    /// `attention.self.query_proj.weight` `[h·d, H]`.
    QueryWeight,
    /// `attention.self.query_proj.bias` `[h·d]`.
    QueryBias,
    /// `attention.self.key_proj.weight` `[h·d, H]`.
    KeyWeight,
    /// `attention.self.key_proj.bias` `[h·d]`.
    KeyBias,
    /// `attention.self.value_proj.weight` `[h·d, H]`.
    ValueWeight,
    /// `attention.self.value_proj.bias` `[h·d]`.
    ValueBias,
    /// `attention.output.dense.weight` `[H, h·d]`.
    AttentionOutputWeight,
    /// `attention.output.dense.bias` `[H]`.
    AttentionOutputBias,
    /// `attention.output.LayerNorm.weight` `[H]`.
    AttentionNormWeight,
    /// `attention.output.LayerNorm.bias` `[H]`.
    AttentionNormBias,
    /// `intermediate.dense.weight` `[F, H]`.
    IntermediateWeight,
    /// `intermediate.dense.bias` `[F]`.
    IntermediateBias,
    /// `output.dense.weight` `[H, F]`.
    OutputWeight,
    /// `output.dense.bias` `[H]`.
    OutputBias,
    /// `output.LayerNorm.weight` `[H]`.
    OutputNormWeight,
    /// `output.LayerNorm.bias` `[H]`.
    OutputNormBias,
    /// `Kr`, the c2p position keys of the stored window, `[window_rows, h·d]`.
    PositionKeys,
    /// `Qr`, the p2c position queries of the stored window, `[window_rows, h·d]`.
    PositionQueries,
    /// `mask_predictions.LayerNorm.weight` `[H]`.
    RtdNormWeight,
    /// `mask_predictions.LayerNorm.bias` `[H]`.
    RtdNormBias,
    /// `mask_predictions.dense.weight` `[H, H]`.
    RtdDenseWeight,
    /// `mask_predictions.dense.bias` `[H]`.
    RtdDenseBias,
    /// `mask_predictions.classifier.weight` `[1, H]`.
    ClassifierWeight,
    /// `mask_predictions.classifier.bias` `[1]`.
    ClassifierBias,
}

const GLOBAL_KINDS: [TensorKind; 4] = [
    TensorKind::WordEmbeddings,
    TensorKind::PositionEmbeddings,
    TensorKind::EmbeddingNormWeight,
    TensorKind::EmbeddingNormBias,
];

const LAYER_KINDS: [TensorKind; 18] = [
    TensorKind::QueryWeight,
    TensorKind::QueryBias,
    TensorKind::KeyWeight,
    TensorKind::KeyBias,
    TensorKind::ValueWeight,
    TensorKind::ValueBias,
    TensorKind::AttentionOutputWeight,
    TensorKind::AttentionOutputBias,
    TensorKind::AttentionNormWeight,
    TensorKind::AttentionNormBias,
    TensorKind::IntermediateWeight,
    TensorKind::IntermediateBias,
    TensorKind::OutputWeight,
    TensorKind::OutputBias,
    TensorKind::OutputNormWeight,
    TensorKind::OutputNormBias,
    TensorKind::PositionKeys,
    TensorKind::PositionQueries,
];

const HEAD_KINDS: [TensorKind; 6] = [
    TensorKind::RtdNormWeight,
    TensorKind::RtdNormBias,
    TensorKind::RtdDenseWeight,
    TensorKind::RtdDenseBias,
    TensorKind::ClassifierWeight,
    TensorKind::ClassifierBias,
];

impl TensorKind {
    /// The code stored in the table.
    pub const fn code(self) -> u16 {
        match self {
            TensorKind::WordEmbeddings => 1,
            TensorKind::PositionEmbeddings => 2,
            TensorKind::EmbeddingNormWeight => 3,
            TensorKind::EmbeddingNormBias => 4,
            TensorKind::QueryWeight => 16,
            TensorKind::QueryBias => 17,
            TensorKind::KeyWeight => 18,
            TensorKind::KeyBias => 19,
            TensorKind::ValueWeight => 20,
            TensorKind::ValueBias => 21,
            TensorKind::AttentionOutputWeight => 22,
            TensorKind::AttentionOutputBias => 23,
            TensorKind::AttentionNormWeight => 24,
            TensorKind::AttentionNormBias => 25,
            TensorKind::IntermediateWeight => 26,
            TensorKind::IntermediateBias => 27,
            TensorKind::OutputWeight => 28,
            TensorKind::OutputBias => 29,
            TensorKind::OutputNormWeight => 30,
            TensorKind::OutputNormBias => 31,
            TensorKind::PositionKeys => 32,
            TensorKind::PositionQueries => 33,
            TensorKind::RtdNormWeight => 64,
            TensorKind::RtdNormBias => 65,
            TensorKind::RtdDenseWeight => 66,
            TensorKind::RtdDenseBias => 67,
            TensorKind::ClassifierWeight => 68,
            TensorKind::ClassifierBias => 69,
        }
    }

    /// Whether the tensor is a matrix (stored in the file's dtype) rather than an f32 vector.
    pub const fn is_matrix(self) -> bool {
        matches!(
            self,
            TensorKind::WordEmbeddings
                | TensorKind::PositionEmbeddings
                | TensorKind::QueryWeight
                | TensorKind::KeyWeight
                | TensorKind::ValueWeight
                | TensorKind::AttentionOutputWeight
                | TensorKind::IntermediateWeight
                | TensorKind::OutputWeight
                | TensorKind::PositionKeys
                | TensorKind::PositionQueries
                | TensorKind::RtdDenseWeight
                | TensorKind::ClassifierWeight
        )
    }
}

/// The configuration values of a file that decide which tensors it holds and their shapes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// The validated model configuration.
    pub config: ModelConfig,
    /// The longest sequence the file was exported for.
    pub max_seq_len: usize,
    /// The rows of the `2S`-row relative table whose projections are stored (empty without
    /// c2p and p2c).
    pub window: IndexWindow,
}

/// The `[rows, cols]` of a tensor (`cols = 1` for a vector).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Rows (output channels of a linear weight; elements of a vector).
    pub rows: usize,
    /// Columns (input channels of a linear weight; 1 for a vector).
    pub cols: usize,
}

impl Geometry {
    /// The geometry of a configuration exported for sequences of up to `max_seq_len` tokens:
    /// checks the edge format's limits and computes the stored relative window.
    pub fn new(config: ModelConfig, max_seq_len: usize) -> Result<Self, EdgeError> {
        let invalid = |field, value: usize, reason| EdgeError::InvalidField {
            field,
            value: value as u64,
            reason,
        };
        if max_seq_len == 0 || max_seq_len > MAX_SEQ_LEN {
            return Err(invalid(
                "max_seq_len",
                max_seq_len,
                "must be between 1 and 16384",
            ));
        }
        if config.position_biased_input && max_seq_len > config.max_position_embeddings {
            return Err(invalid(
                "max_seq_len",
                max_seq_len,
                "exceeds max_position_embeddings of a model with absolute positions",
            ));
        }
        for (field, width) in [
            ("hidden_size", config.hidden_size),
            ("intermediate_size", config.intermediate_size),
            (
                "num_attention_heads * attention_head_size",
                config.all_head_size(),
            ),
        ] {
            if width > MAX_WIDTH {
                return Err(invalid(field, width, "exceeds the edge limit of 65536"));
            }
        }
        if config.num_hidden_layers > usize::from(u16::MAX) {
            return Err(invalid(
                "num_hidden_layers",
                config.num_hidden_layers,
                "exceeds the edge limit of 65535",
            ));
        }
        if config.type_vocab_size != 0 {
            return Err(invalid(
                "type_vocab_size",
                config.type_vocab_size,
                "token types are not supported by the edge format",
            ));
        }
        if config.embedding_size != config.hidden_size {
            return Err(invalid(
                "embedding_size",
                config.embedding_size,
                "an embed_proj (embedding_size != hidden_size) is not supported by the edge format",
            ));
        }
        if config.conv.is_some() {
            return Err(invalid(
                "conv_kernel_size",
                config.conv.map_or(0, |c| c.kernel_size),
                "the v2 ConvLayer is not supported by the edge format",
            ));
        }
        let window = if config.uses_c2p() || config.uses_p2c() {
            used_index_range(max_seq_len, &config).map_err(EdgeError::Config)?
        } else {
            IndexWindow { first: 0, rows: 0 }
        };
        Ok(Geometry {
            config,
            max_seq_len,
            window,
        })
    }

    fn present(&self, kind: TensorKind) -> bool {
        match kind {
            TensorKind::PositionEmbeddings => self.config.position_biased_input,
            TensorKind::PositionKeys => self.config.uses_c2p(),
            TensorKind::PositionQueries => self.config.uses_p2c(),
            _ => true,
        }
    }

    fn globals(&self) -> impl Iterator<Item = TensorKind> + '_ {
        GLOBAL_KINDS.into_iter().filter(|&k| self.present(k))
    }

    fn layer_kinds(&self) -> impl Iterator<Item = TensorKind> + '_ {
        LAYER_KINDS.into_iter().filter(|&k| self.present(k))
    }

    /// Number of tensors the file holds, or `None` when it does not fit a `usize`.
    pub fn tensor_count(&self) -> Option<usize> {
        self.layer_kinds()
            .count()
            .checked_mul(self.config.num_hidden_layers)?
            .checked_add(self.globals().count() + HEAD_KINDS.len())
    }

    /// The tensor at position `index` of the canonical order (globals, then every layer's
    /// tensors, then the RTD head), with its layer (0 outside the encoder).
    pub fn slot(&self, index: usize) -> Option<(TensorKind, usize)> {
        let globals = self.globals().count();
        if index < globals {
            return self.globals().nth(index).map(|k| (k, 0));
        }
        let per_layer = self.layer_kinds().count();
        let rest = index - globals;
        let layer = rest.checked_div(per_layer)?;
        if layer < self.config.num_hidden_layers {
            let kind = self.layer_kinds().nth(rest.checked_rem(per_layer)?)?;
            return Some((kind, layer));
        }
        let head = rest - self.config.num_hidden_layers.checked_mul(per_layer)?;
        HEAD_KINDS.get(head).map(|&k| (k, 0))
    }

    /// The position of a tensor in the canonical order, or `None` when the file has no such
    /// tensor.
    pub fn index(&self, kind: TensorKind, layer: usize) -> Option<usize> {
        let globals = self.globals().count();
        if let Some(i) = self.globals().position(|k| k == kind) {
            return (layer == 0).then_some(i);
        }
        let per_layer = self.layer_kinds().count();
        if let Some(i) = self.layer_kinds().position(|k| k == kind) {
            if layer >= self.config.num_hidden_layers {
                return None;
            }
            return layer.checked_mul(per_layer)?.checked_add(globals + i);
        }
        let i = HEAD_KINDS.iter().position(|&k| k == kind)?;
        if layer != 0 {
            return None;
        }
        self.config
            .num_hidden_layers
            .checked_mul(per_layer)?
            .checked_add(globals + i)
    }

    /// The shape a tensor must have.
    pub fn shape(&self, kind: TensorKind) -> Shape {
        let c = &self.config;
        let (h, w, f) = (c.hidden_size, c.all_head_size(), c.intermediate_size);
        let (rows, cols) = match kind {
            TensorKind::WordEmbeddings => (c.vocab_size, h),
            TensorKind::PositionEmbeddings => (self.max_seq_len, h),
            TensorKind::QueryWeight | TensorKind::KeyWeight | TensorKind::ValueWeight => (w, h),
            TensorKind::QueryBias | TensorKind::KeyBias | TensorKind::ValueBias => (w, 1),
            TensorKind::AttentionOutputWeight => (h, w),
            TensorKind::IntermediateWeight => (f, h),
            TensorKind::IntermediateBias => (f, 1),
            TensorKind::OutputWeight => (h, f),
            TensorKind::PositionKeys | TensorKind::PositionQueries => (self.window.rows, w),
            TensorKind::RtdDenseWeight => (h, h),
            TensorKind::ClassifierWeight => (1, h),
            TensorKind::ClassifierBias => (1, 1),
            TensorKind::EmbeddingNormWeight
            | TensorKind::EmbeddingNormBias
            | TensorKind::AttentionOutputBias
            | TensorKind::AttentionNormWeight
            | TensorKind::AttentionNormBias
            | TensorKind::OutputBias
            | TensorKind::OutputNormWeight
            | TensorKind::OutputNormBias
            | TensorKind::RtdNormWeight
            | TensorKind::RtdNormBias
            | TensorKind::RtdDenseBias => (h, 1),
        };
        Shape { rows, cols }
    }
}
