//! Validated model inputs on the device.

use alloc::vec::Vec;

use crate::backend::Backend;
use crate::relative_position::{IndexWindow, fill_relative_index, used_index_range};
use crate::{Error, ModelConfig};

/// A batch of token sequences as read from a file or tokenizer, before validation.
#[derive(Debug, Clone, Copy)]
pub struct HostBatch<'a> {
    /// Token ids, `[batch, len]` row-major.
    pub input_ids: &'a [i64],
    /// 1 for real tokens, 0 for padding, `[batch, len]`.
    pub attention_mask: &'a [i64],
    /// Token-type ids, `[batch, len]` (zeros when absent).
    pub token_type_ids: Option<&'a [i64]>,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub len: usize,
}

/// A validated batch uploaded to a backend, with the relative-position index table of its
/// length.
pub struct DeviceBatch<B: Backend> {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// Token ids, `[batch·len]`.
    pub input_ids: B::Indices,
    /// The padding mask as `f32` (1/0), `[batch·len]`.
    pub mask: B::Tensor,
    /// The padding mask on the host.
    pub host_mask: Vec<f32>,
    /// Token-type ids, when the model has a token-type table.
    pub token_type_ids: Option<B::Indices>,
    /// Absolute position ids `0..len` per sequence (absolute position embeddings, the EMD).
    pub position_ids: B::Indices,
    /// `idx[i,j] − window.first`, `[len·len]`, when the model uses relative attention.
    pub relative_index: Option<B::Indices>,
    /// The rows of the relative table this length reads.
    pub window: IndexWindow,
}

fn to_index(value: i64, rows: usize, table: &'static str, position: usize) -> Result<u32, Error> {
    if value < 0 || value as u64 >= rows as u64 {
        return Err(Error::TokenOutOfRange {
            table,
            position,
            id: value as u64,
            rows,
        });
    }
    Ok(value as u32)
}

impl<B: Backend> DeviceBatch<B> {
    /// Validates a host batch against a model configuration and uploads it: every id must be a
    /// row of its table, every mask value 0 or 1, and the length within
    /// `max_position_embeddings` when absolute positions are used.
    pub fn upload(backend: &B, cfg: &ModelConfig, host: &HostBatch<'_>) -> Result<Self, Error> {
        let (batch, len) = (host.batch, host.len);
        if batch == 0 {
            return Err(Error::EmptyInput { what: "batch" });
        }
        if len == 0 {
            return Err(Error::EmptyInput { what: "sequence" });
        }
        let total = batch.checked_mul(len).ok_or(Error::SequenceTooLong {
            len,
            max: usize::MAX / batch,
        })?;
        for (what, found) in [
            ("input_ids", host.input_ids.len()),
            ("attention_mask", host.attention_mask.len()),
        ] {
            if found != total {
                return Err(Error::ShapeMismatch {
                    what,
                    expected: total,
                    found,
                });
            }
        }
        if let Some(max) = cfg.max_sequence_length()
            && len > max
        {
            return Err(Error::SequenceTooLong { len, max });
        }
        let ids = host
            .input_ids
            .iter()
            .enumerate()
            .map(|(p, &v)| to_index(v, cfg.vocab_size, "the word embeddings", p))
            .collect::<Result<Vec<u32>, Error>>()?;
        let host_mask = host
            .attention_mask
            .iter()
            .enumerate()
            .map(|(p, &v)| match v {
                0 => Ok(0.0),
                1 => Ok(1.0),
                _ => Err(Error::InvalidMask { position: p }),
            })
            .collect::<Result<Vec<f32>, Error>>()?;
        let token_type_ids = if cfg.type_vocab_size > 0 {
            let types = match host.token_type_ids {
                Some(t) if t.len() != total => {
                    return Err(Error::ShapeMismatch {
                        what: "token_type_ids",
                        expected: total,
                        found: t.len(),
                    });
                }
                Some(t) => t
                    .iter()
                    .enumerate()
                    .map(|(p, &v)| to_index(v, cfg.type_vocab_size, "the token-type embeddings", p))
                    .collect::<Result<Vec<u32>, Error>>()?,
                None => alloc::vec![0; total],
            };
            Some(backend.upload_indices(&types)?)
        } else {
            None
        };
        let positions: Vec<u32> = (0..total).map(|i| (i % len) as u32).collect();
        let position_ids = backend.upload_indices(&positions)?;
        let (relative_index, window) = if cfg.relative_attention {
            let window = used_index_range(len, cfg)?;
            let mut table = alloc::vec![0u32; len * len];
            fill_relative_index(len, cfg, window, &mut table)?;
            (Some(backend.upload_indices(&table)?), window)
        } else {
            (None, IndexWindow { first: 0, rows: 0 })
        };
        Ok(DeviceBatch {
            batch,
            len,
            input_ids: backend.upload_indices(&ids)?,
            mask: backend.upload(&host_mask)?,
            host_mask,
            token_type_ids,
            position_ids,
            relative_index,
            window,
        })
    }

    /// `batch · len`.
    pub fn tokens(&self) -> usize {
        self.batch * self.len
    }
}
