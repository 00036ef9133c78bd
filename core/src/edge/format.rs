//! The edge model file (`.dbt`), version 1. Everything is little-endian.
//!
//! ```text
//! offset  size            content
//! 0       128             header (RawHeader): magic "DBTE", version, CRCs, configuration,
//!                         section offsets; 20 reserved bytes that must be zero
//! 128     32·count        tensor table (TensorEntry), in the canonical order of
//!                         [`Geometry::slot`](super::layout::Geometry::slot)
//! P       payload_len     payload: every tensor (and int8 scale vector) at an offset that
//!                         is a multiple of 16 (P itself is a multiple of 16)
//! T       tokenizer_len   optional tokenizer section (opaque, e.g. Hugging Face
//!                         tokenizer.json); firmware ignores it
//! ```
//!
//! The file ends exactly where its last section ends. `header_crc` is the CRC-32 of bytes
//! `[12, P)` (the rest of the header, including the other CRCs, the table and the padding
//! before the payload); `payload_crc` covers the payload and `tokenizer_crc` the tokenizer
//! section, so every byte of a file is covered by one checksum.
//!
//! Matrices (linear weights `[out, in]`, embedding tables, the precomputed position
//! projections `Kr`/`Qr`) are stored in the header's dtype; int8 matrices carry one f32 scale
//! per row (symmetric: `value = q · scale`, `q ∈ [−127, 127]`), which for a linear weight is
//! per output channel. LayerNorm parameters and biases are always f32.

use crate::config::{PosAttType, RawConfig};
use crate::{Activation, ModelConfig};

use super::EdgeError;
use super::layout::Geometry;

/// `DBTE`.
pub const MAGIC: [u8; 4] = *b"DBTE";
/// The format version this runtime reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 128;
/// Bytes of one tensor-table entry.
pub const ENTRY_LEN: usize = 32;
/// Alignment of the payload and of every tensor in it.
pub const ALIGN: usize = 16;
/// Longest sequence a file may be exported for.
pub const MAX_SEQ_LEN: usize = 16_384;
/// Largest width of any linear layer's input or output: keeps int8 dot products inside i32
/// (`65536 · 127² < 2³¹`).
pub const MAX_WIDTH: usize = 65_536;
/// First byte covered by the header CRC.
pub const HEADER_CRC_START: usize = 12;

/// Flag bits of [`RawHeader::flags`].
pub mod flags {
    /// `relative_attention`.
    pub const RELATIVE_ATTENTION: u32 = 1;
    /// `"c2p"` in `pos_att_type`.
    pub const C2P: u32 = 1 << 1;
    /// `"p2c"` in `pos_att_type`.
    pub const P2C: u32 = 1 << 2;
    /// `position_biased_input`: absolute position embeddings are added to the input.
    pub const POSITION_BIASED_INPUT: u32 = 1 << 3;
    /// `share_att_key` (informational: the projections are precomputed either way).
    pub const SHARE_ATT_KEY: u32 = 1 << 4;
    /// `"layer_norm"` in `norm_rel_ebd` (informational, as above).
    pub const NORM_REL_EBD_LAYER_NORM: u32 = 1 << 5;
    /// Every defined bit.
    pub const ALL: u32 = (1 << 6) - 1;
}

/// Storage type of the matrices of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16, widened to f32 one row at a time.
    F16,
    /// Symmetric int8 with one f32 scale per row.
    I8,
}

impl DType {
    /// The code stored in the file.
    pub const fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::I8 => 2,
        }
    }

    /// The type of a stored code.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(DType::F32),
            1 => Some(DType::F16),
            2 => Some(DType::I8),
            _ => None,
        }
    }

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
            DType::I8 => 1,
        }
    }

    /// The lower-case name used on the command line (`f32`, `f16`, `int8`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::I8 => "int8",
        }
    }
}

/// The code of an activation function in the header.
pub const fn activation_code(act: Activation) -> u32 {
    match act {
        Activation::Gelu => 0,
        Activation::GeluTanh => 1,
        Activation::Relu => 2,
        Activation::Tanh => 3,
        Activation::Silu => 4,
        Activation::Sigmoid => 5,
        Activation::Identity => 6,
    }
}

const fn activation_from_code(code: u32) -> Option<Activation> {
    match code {
        0 => Some(Activation::Gelu),
        1 => Some(Activation::GeluTanh),
        2 => Some(Activation::Relu),
        3 => Some(Activation::Tanh),
        4 => Some(Activation::Silu),
        5 => Some(Activation::Sigmoid),
        6 => Some(Activation::Identity),
        _ => None,
    }
}

/// The fixed header, field by field, as stored (before validation).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RawHeader {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// CRC-32 of bytes `[12, payload_offset)`.
    pub header_crc: u32,
    /// CRC-32 of the payload.
    pub payload_crc: u32,
    /// CRC-32 of the tokenizer section (0 when absent).
    pub tokenizer_crc: u32,
    /// [`DType::code`] of the matrices.
    pub dtype: u32,
    /// [`flags`].
    pub flags: u32,
    /// `hidden_size`.
    pub hidden_size: u32,
    /// `num_hidden_layers`.
    pub num_hidden_layers: u32,
    /// `num_attention_heads`.
    pub num_attention_heads: u32,
    /// `attention_head_size`.
    pub attention_head_size: u32,
    /// `intermediate_size`.
    pub intermediate_size: u32,
    /// `vocab_size`.
    pub vocab_size: u32,
    /// `max_position_embeddings`.
    pub max_position_embeddings: u32,
    /// `position_buckets` (0 = relative distances are not bucketed).
    pub position_buckets: u32,
    /// `max_relative_positions` (resolved, ≥ 1).
    pub max_relative_positions: u32,
    /// `layer_norm_eps`.
    pub layer_norm_eps: f32,
    /// [`activation_code`] of `hidden_act`.
    pub activation: u32,
    /// `pad_token_id`.
    pub pad_token_id: u32,
    /// Longest sequence the file supports.
    pub max_seq_len: u32,
    /// First relative-table row whose projections are stored.
    pub window_first: u32,
    /// Rows of stored projections.
    pub window_rows: u32,
    /// Entries of the tensor table.
    pub tensor_count: u32,
    /// Start of the payload.
    pub payload_offset: u32,
    /// Bytes of the payload.
    pub payload_len: u32,
    /// Start of the tokenizer section (0 when absent).
    pub tokenizer_offset: u32,
    /// Bytes of the tokenizer section (0 when absent).
    pub tokenizer_len: u32,
}

/// Number of 32-bit words the header stores (the magic included); the rest is reserved.
const HEADER_WORDS: usize = 27;

impl RawHeader {
    /// The configuration part of a header for `geometry` and `dtype`; CRCs and section
    /// offsets are left 0 for the writer to fill.
    pub fn describe(geometry: &Geometry, dtype: DType) -> Result<Self, EdgeError> {
        let c = &geometry.config;
        let word = |field: &'static str, value: usize| {
            u32::try_from(value).map_err(|_| EdgeError::InvalidField {
                field,
                value: value as u64,
                reason: "does not fit 32 bits",
            })
        };
        let mut flag_bits = 0;
        for (on, bit) in [
            (c.relative_attention, flags::RELATIVE_ATTENTION),
            (c.pos_att_type.c2p, flags::C2P),
            (c.pos_att_type.p2c, flags::P2C),
            (c.position_biased_input, flags::POSITION_BIASED_INPUT),
            (c.share_att_key, flags::SHARE_ATT_KEY),
            (c.norm_rel_ebd_layer_norm, flags::NORM_REL_EBD_LAYER_NORM),
        ] {
            if on {
                flag_bits |= bit;
            }
        }
        Ok(RawHeader {
            version: VERSION,
            dtype: dtype.code(),
            flags: flag_bits,
            hidden_size: word("hidden_size", c.hidden_size)?,
            num_hidden_layers: word("num_hidden_layers", c.num_hidden_layers)?,
            num_attention_heads: word("num_attention_heads", c.num_attention_heads)?,
            attention_head_size: word("attention_head_size", c.attention_head_size)?,
            intermediate_size: word("intermediate_size", c.intermediate_size)?,
            vocab_size: word("vocab_size", c.vocab_size)?,
            max_position_embeddings: word("max_position_embeddings", c.max_position_embeddings)?,
            position_buckets: word("position_buckets", c.position_buckets)?,
            max_relative_positions: word("max_relative_positions", c.max_relative_positions)?,
            layer_norm_eps: c.layer_norm_eps,
            activation: activation_code(c.hidden_act),
            pad_token_id: word("pad_token_id", c.pad_token_id)?,
            max_seq_len: word("max_seq_len", geometry.max_seq_len)?,
            window_first: word("window_first", geometry.window.first)?,
            window_rows: word("window_rows", geometry.window.rows)?,
            tensor_count: word(
                "tensor_count",
                geometry.tensor_count().unwrap_or(usize::MAX),
            )?,
            ..RawHeader::default()
        })
    }

    fn words(&self) -> [u32; HEADER_WORDS] {
        [
            u32::from_le_bytes(MAGIC),
            self.version,
            self.header_crc,
            self.payload_crc,
            self.tokenizer_crc,
            self.dtype,
            self.flags,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.attention_head_size,
            self.intermediate_size,
            self.vocab_size,
            self.max_position_embeddings,
            self.position_buckets,
            self.max_relative_positions,
            self.layer_norm_eps.to_bits(),
            self.activation,
            self.pad_token_id,
            self.max_seq_len,
            self.window_first,
            self.window_rows,
            self.tensor_count,
            self.payload_offset,
            self.payload_len,
            self.tokenizer_offset,
            self.tokenizer_len,
        ]
    }

    /// The 128 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.words()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Reads the header fields: checks the length, the magic, the version and that the
    /// reserved bytes are zero; nothing else.
    pub fn decode(bytes: &[u8]) -> Result<Self, EdgeError> {
        let head = bytes
            .first_chunk::<HEADER_LEN>()
            .ok_or(EdgeError::Truncated {
                needed: HEADER_LEN,
                len: bytes.len(),
            })?;
        let mut w = [0u32; HEADER_WORDS];
        for (word, chunk) in w.iter_mut().zip(head.chunks_exact(4)) {
            *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        if w[0] != u32::from_le_bytes(MAGIC) {
            return Err(EdgeError::BadMagic);
        }
        if w[1] != VERSION {
            return Err(EdgeError::UnsupportedVersion { version: w[1] });
        }
        if head[HEADER_WORDS * 4..].iter().any(|&b| b != 0) {
            return Err(EdgeError::InvalidField {
                field: "reserved",
                value: 0,
                reason: "reserved header bytes must be zero",
            });
        }
        Ok(RawHeader {
            version: w[1],
            header_crc: w[2],
            payload_crc: w[3],
            tokenizer_crc: w[4],
            dtype: w[5],
            flags: w[6],
            hidden_size: w[7],
            num_hidden_layers: w[8],
            num_attention_heads: w[9],
            attention_head_size: w[10],
            intermediate_size: w[11],
            vocab_size: w[12],
            max_position_embeddings: w[13],
            position_buckets: w[14],
            max_relative_positions: w[15],
            layer_norm_eps: f32::from_bits(w[16]),
            activation: w[17],
            pad_token_id: w[18],
            max_seq_len: w[19],
            window_first: w[20],
            window_rows: w[21],
            tensor_count: w[22],
            payload_offset: w[23],
            payload_len: w[24],
            tokenizer_offset: w[25],
            tokenizer_len: w[26],
        })
    }

    /// The matrices' dtype.
    pub fn dtype(&self) -> Result<DType, EdgeError> {
        DType::from_code(self.dtype).ok_or(EdgeError::InvalidField {
            field: "dtype",
            value: u64::from(self.dtype),
            reason: "must be 0 (f32), 1 (f16) or 2 (int8)",
        })
    }

    /// Validates the configuration fields and returns the geometry they describe; the stored
    /// window and tensor count must be the ones the configuration implies.
    pub fn geometry(&self) -> Result<Geometry, EdgeError> {
        if self.flags & !flags::ALL != 0 {
            return Err(EdgeError::InvalidField {
                field: "flags",
                value: u64::from(self.flags),
                reason: "unknown flag bits are set",
            });
        }
        let activation = activation_from_code(self.activation).ok_or(EdgeError::InvalidField {
            field: "activation",
            value: u64::from(self.activation),
            reason: "unknown activation code",
        })?;
        let on = |bit: u32| Some(self.flags & bit != 0);
        let int = |v: u32| Some(i64::from(v));
        let raw = RawConfig {
            vocab_size: int(self.vocab_size),
            hidden_size: int(self.hidden_size),
            num_hidden_layers: int(self.num_hidden_layers),
            num_attention_heads: int(self.num_attention_heads),
            attention_head_size: int(self.attention_head_size),
            intermediate_size: int(self.intermediate_size),
            hidden_act: Some(activation),
            hidden_dropout_prob: Some(0.0),
            attention_probs_dropout_prob: Some(0.0),
            max_position_embeddings: int(self.max_position_embeddings),
            type_vocab_size: Some(0),
            layer_norm_eps: Some(f64::from(self.layer_norm_eps)),
            relative_attention: on(flags::RELATIVE_ATTENTION),
            max_relative_positions: int(self.max_relative_positions),
            position_buckets: int(self.position_buckets),
            pad_token_id: int(self.pad_token_id),
            position_biased_input: on(flags::POSITION_BIASED_INPUT),
            pos_att_type: Some(PosAttType {
                c2p: self.flags & flags::C2P != 0,
                p2c: self.flags & flags::P2C != 0,
            }),
            share_att_key: on(flags::SHARE_ATT_KEY),
            norm_rel_ebd_layer_norm: on(flags::NORM_REL_EBD_LAYER_NORM),
            embedding_size: int(self.hidden_size),
            ..RawConfig::default()
        };
        let config = ModelConfig::from_raw(&raw).map_err(EdgeError::Config)?;
        if config.max_relative_positions != self.max_relative_positions as usize {
            return Err(EdgeError::InvalidField {
                field: "max_relative_positions",
                value: u64::from(self.max_relative_positions),
                reason: "must be stored resolved (at least 1)",
            });
        }
        let geometry = Geometry::new(config, self.max_seq_len as usize)?;
        let window = geometry.window;
        if (window.first, window.rows) != (self.window_first as usize, self.window_rows as usize) {
            return Err(EdgeError::InvalidField {
                field: "window_rows",
                value: u64::from(self.window_rows),
                reason: "the stored relative window is not the one max_seq_len reads",
            });
        }
        if geometry.tensor_count() != Some(self.tensor_count as usize) {
            return Err(EdgeError::InvalidField {
                field: "tensor_count",
                value: u64::from(self.tensor_count),
                reason: "differs from the number of tensors the configuration implies",
            });
        }
        Ok(geometry)
    }
}

/// One entry of the tensor table, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TensorEntry {
    /// [`TensorKind::code`](super::layout::TensorKind::code).
    pub kind: u16,
    /// Encoder layer (0 outside the encoder).
    pub layer: u16,
    /// [`DType::code`] of the elements.
    pub dtype: u8,
    /// 2 for a matrix, 1 for a vector.
    pub rank: u8,
    /// Rows (elements of a vector).
    pub rows: u32,
    /// Columns (1 for a vector).
    pub cols: u32,
    /// Start of the elements, from the start of the file.
    pub offset: u32,
    /// Bytes of the elements.
    pub byte_len: u32,
    /// Start of the per-row f32 scales of an int8 matrix (0 otherwise).
    pub scale_offset: u32,
    /// Bytes of those scales (`4·rows` for an int8 matrix, 0 otherwise).
    pub scale_len: u32,
}

impl TensorEntry {
    /// The 32 table bytes.
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..2].copy_from_slice(&self.kind.to_le_bytes());
        out[2..4].copy_from_slice(&self.layer.to_le_bytes());
        out[4] = self.dtype;
        out[5] = self.rank;
        for (i, word) in [
            self.rows,
            self.cols,
            self.offset,
            self.byte_len,
            self.scale_offset,
            self.scale_len,
        ]
        .into_iter()
        .enumerate()
        {
            out[8 + 4 * i..12 + 4 * i].copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Reads an entry; bytes 6–7 are reserved and must be zero.
    pub fn decode(bytes: &[u8; ENTRY_LEN]) -> Option<Self> {
        if bytes[6] != 0 || bytes[7] != 0 {
            return None;
        }
        let word = |i: usize| {
            u32::from_le_bytes([
                bytes[8 + 4 * i],
                bytes[9 + 4 * i],
                bytes[10 + 4 * i],
                bytes[11 + 4 * i],
            ])
        };
        Some(TensorEntry {
            kind: u16::from_le_bytes([bytes[0], bytes[1]]),
            layer: u16::from_le_bytes([bytes[2], bytes[3]]),
            dtype: bytes[4],
            rank: bytes[5],
            rows: word(0),
            cols: word(1),
            offset: word(2),
            byte_len: word(3),
            scale_offset: word(4),
            scale_len: word(5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::layout::TensorKind;
    use crate::relative_position::used_index_range;

    fn nano() -> ModelConfig {
        ModelConfig::from_raw(&RawConfig {
            hidden_size: Some(16),
            num_hidden_layers: Some(2),
            num_attention_heads: Some(2),
            intermediate_size: Some(32),
            vocab_size: Some(50),
            relative_attention: Some(true),
            position_buckets: Some(8),
            max_relative_positions: Some(32),
            position_biased_input: Some(false),
            pos_att_type: Some(PosAttType {
                c2p: true,
                p2c: true,
            }),
            share_att_key: Some(true),
            norm_rel_ebd_layer_norm: Some(true),
            hidden_dropout_prob: Some(0.0),
            attention_probs_dropout_prob: Some(0.0),
            ..RawConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn header_round_trips_and_slots_are_consistent() {
        let geometry = Geometry::new(nano(), 12).unwrap();
        assert_eq!(geometry.window, used_index_range(12, &nano()).unwrap());
        assert!(geometry.window.rows <= 16);
        let mut raw = RawHeader::describe(&geometry, DType::I8).unwrap();
        raw.payload_offset = 256;
        let back = RawHeader::decode(&raw.encode()).unwrap();
        assert_eq!(back, raw);
        assert_eq!(back.geometry().unwrap(), geometry);
        let count = geometry.tensor_count().unwrap();
        assert_eq!(count, 3 + 2 * 18 + 6);
        for i in 0..count {
            let (kind, layer) = geometry.slot(i).unwrap();
            assert_eq!(geometry.index(kind, layer), Some(i));
        }
        assert_eq!(geometry.slot(count), None);
        assert_eq!(geometry.index(TensorKind::PositionEmbeddings, 0), None);
        assert_eq!(geometry.index(TensorKind::QueryWeight, 2), None);
    }

    #[test]
    fn entries_round_trip_and_reserved_bytes_are_checked() {
        let entry = TensorEntry {
            kind: TensorKind::QueryWeight.code(),
            layer: 3,
            dtype: 2,
            rank: 2,
            rows: 7,
            cols: 9,
            offset: 4096,
            byte_len: 63,
            scale_offset: 4160,
            scale_len: 28,
        };
        let mut bytes = entry.encode();
        assert_eq!(TensorEntry::decode(&bytes), Some(entry));
        bytes[7] = 1;
        assert_eq!(TensorEntry::decode(&bytes), None);
    }

    #[test]
    fn header_rejects_bad_magic_version_and_reserved() {
        let raw = RawHeader::describe(&Geometry::new(nano(), 4).unwrap(), DType::F32).unwrap();
        let good = raw.encode();
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(RawHeader::decode(&bad), Err(EdgeError::BadMagic));
        let mut bad = good;
        bad[4] = 2;
        assert!(matches!(
            RawHeader::decode(&bad),
            Err(EdgeError::UnsupportedVersion { version: 2 })
        ));
        let mut bad = good;
        bad[HEADER_LEN - 1] = 1;
        assert!(RawHeader::decode(&bad).is_err());
        assert!(RawHeader::decode(&good[..HEADER_LEN - 1]).is_err());
    }
}
