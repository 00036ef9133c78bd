//! Relative positions: the log-bucket function and the index tables that c2p and p2c share
//! (SPEC §3.1, §3.4).
//!
//! For query `i` and key `j` the bucketed relative position is `rel = bucket(i − j)` and the
//! row of the (projected) relative-embedding table both terms read is
//! `idx[i, j] = clamp(rel + S, 0, 2S − 1)` with `S` the attention span. Because `bucket` is
//! monotone, a sequence of length `L` only touches the rows between `idx(−(L−1))` and
//! `idx(L−1)`: [`used_index_range`] gives that window so the position projections are only
//! multiplied against rows that can be read.

use crate::{Error, ModelConfig};

/// Hugging Face's `make_log_bucket_position` for one relative distance, computed in float32
/// exactly as torch does: identity for `|r| ≤ bucket_size/2`, log-compressed beyond, odd
/// symmetric, and **not** clamped to `max_position` (HF behaviour for sequences > 512).
pub fn log_bucket_position(relative: i64, bucket_size: usize, max_position: usize) -> i64 {
    let mid = (bucket_size / 2) as i64;
    let abs_pos = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if abs_pos <= mid {
        return relative;
    }
    // torch: (abs_pos / mid) is an int64 true division -> float32; the denominator is
    // log(float32((max_position - 1) / mid)) with the quotient taken in double first.
    let ratio = abs_pos as f32 / mid as f32;
    let denom = libm::logf(((max_position as f64 - 1.0) / mid as f64) as f32);
    let log_pos = libm::ceilf(libm::logf(ratio) / denom * (mid - 1) as f32) + mid as f32;
    // `as` saturates (and maps NaN to 0) for degenerate configs instead of panicking.
    (log_pos as i64) * relative.signum()
}

/// The bucketed relative position `i − j` as Hugging Face's `build_relative_position` stores
/// it in `rel_pos` (before adding the span).
pub fn relative_position(query: usize, key: usize, cfg: &ModelConfig) -> i64 {
    let rel = query as i64 - key as i64;
    if cfg.position_buckets > 0 && cfg.max_relative_positions > 0 {
        log_bucket_position(rel, cfg.position_buckets, cfg.max_relative_positions)
    } else {
        rel
    }
}

/// `clamp(rel + S, 0, 2S − 1)`: the relative-embedding row for a bucketed position.
pub fn relative_index(rel: i64, span: usize) -> usize {
    let span = span as i64;
    // Saturating: a degenerate bucketing (max_relative_positions − 1 = position_buckets / 2
    // divides by log 1 = 0) saturates `rel` to ±i64::MAX.
    rel.saturating_add(span).clamp(0, 2 * span - 1) as usize
}

/// The window of relative-embedding rows a sequence of a given length can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexWindow {
    /// First row read (`idx` for `i − j = −(L−1)`).
    pub first: usize,
    /// Number of consecutive rows read.
    pub rows: usize,
}

/// The rows `[first, first + rows)` of the `2S`-row relative table that a sequence of `len`
/// tokens reads.
pub fn used_index_range(len: usize, cfg: &ModelConfig) -> Result<IndexWindow, Error> {
    if len == 0 {
        return Err(Error::EmptyInput { what: "sequence" });
    }
    let span = cfg.attention_span();
    let first = relative_index(relative_position(0, len - 1, cfg), span);
    let last = relative_index(relative_position(len - 1, 0, cfg), span);
    // The bucketing is monotone only while `max_relative_positions − 1 > position_buckets / 2`
    // (its log's denominator positive); a config past that has no window.
    if last < first {
        return Err(Error::ShapeMismatch {
            what: "relative-position window: this position_buckets / max_relative_positions \
                   pair makes the log buckets decrease (its last row comes before its first)",
            expected: first,
            found: last,
        });
    }
    Ok(IndexWindow {
        first,
        rows: last - first + 1,
    })
}

/// Fills `out[i·len + j]` with `idx[i, j] − window.first` for a self-attention over `len`
/// tokens. Only `2·len − 1` bucket evaluations are made: the table is Toeplitz.
pub fn fill_relative_index(
    len: usize,
    cfg: &ModelConfig,
    window: IndexWindow,
    out: &mut [u32],
) -> Result<(), Error> {
    let needed = len * len;
    if out.len() < needed {
        return Err(Error::BufferTooSmall {
            kernel: "fill_relative_index",
            operand: "out",
            needed,
            len: out.len(),
        });
    }
    let span = cfg.attention_span();
    let local = |query: usize, key: usize| -> Result<u32, Error> {
        let idx = relative_index(relative_position(query, key, cfg), span);
        if idx < window.first || idx >= window.first + window.rows {
            return Err(Error::ShapeMismatch {
                what: "relative index outside the window of the sequence length",
                expected: window.first,
                found: idx,
            });
        }
        Ok((idx - window.first) as u32)
    };
    for (j, slot) in out[..len].iter_mut().enumerate() {
        *slot = local(0, j)?;
    }
    for i in 1..len {
        out[i * len] = local(i, 0)?;
        for j in 1..len {
            out[i * len + j] = out[(i - 1) * len + j - 1];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PosAttType, RawConfig};

    #[test]
    fn spec_bucket_vectors() {
        // SPEC §3.1 (bucket_size 256, max_position 512), HF semantics.
        let vectors: &[(i64, i64)] = &[
            (0, 0),
            (127, 127),
            (128, 128),
            (129, 129),
            (130, 130),
            (131, 131),
            (132, 131),
            (133, 132),
            (134, 133),
            (135, 133),
            (136, 134),
            (140, 137),
            (145, 140),
            (150, 143),
            (160, 149),
            (175, 157),
            (192, 166),
            (200, 169),
            (224, 180),
            (255, 192),
            (256, 192),
            (300, 207),
            (320, 213),
            (384, 229),
            (400, 233),
            (448, 243),
            (480, 250),
            (496, 253),
            (500, 254),
            (504, 254),
            (508, 255),
            (511, 255),
            (512, 256),
            (600, 270),
            (1000, 317),
            (2000, 381),
        ];
        for &(r, b) in vectors {
            assert_eq!(log_bucket_position(r, 256, 512), b, "bucket({r})");
            assert_eq!(log_bucket_position(-r, 256, 512), -b, "bucket(-{r})");
        }
    }

    fn tiny_config() -> ModelConfig {
        ModelConfig::from_raw(&RawConfig {
            hidden_size: Some(32),
            num_attention_heads: Some(4),
            relative_attention: Some(true),
            position_buckets: Some(8),
            max_relative_positions: Some(16),
            max_position_embeddings: Some(64),
            pos_att_type: Some(PosAttType {
                c2p: true,
                p2c: true,
            }),
            ..RawConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn index_table_matches_direct_evaluation() {
        let cfg = tiny_config();
        for len in [1usize, 2, 5, 24, 40] {
            let window = used_index_range(len, &cfg).unwrap();
            let mut table = alloc_table(len);
            fill_relative_index(len, &cfg, window, &mut table).unwrap();
            for i in 0..len {
                for j in 0..len {
                    let direct =
                        relative_index(relative_position(i, j, &cfg), cfg.attention_span());
                    assert_eq!(table[i * len + j] as usize + window.first, direct);
                }
            }
            assert!(window.first + window.rows <= cfg.relative_embedding_rows());
        }
    }

    fn alloc_table(len: usize) -> [u32; 1600] {
        assert!(len * len <= 1600);
        [0; 1600]
    }

    /// Found by fuzzing `edge_detect`: with `max_relative_positions − 1` below half the buckets
    /// the log buckets run backwards, which must be an error, not an overflow.
    #[test]
    fn decreasing_buckets_are_an_error() {
        let mut cfg = tiny_config();
        // 8 buckets (mid 4) and max_relative_positions 2: log((2 − 1)/4) < 0, so bucket(99)
        // is −2 and bucket(−99) is 2.
        cfg.max_relative_positions = 2;
        assert_eq!(relative_position(99, 0, &cfg), -2);
        assert!(matches!(
            used_index_range(100, &cfg),
            Err(Error::ShapeMismatch { .. })
        ));
        // Short sequences still bucket monotonically.
        assert!(used_index_range(4, &cfg).is_ok());
        // max_relative_positions − 1 = mid: the log's denominator is 0 and the buckets
        // saturate instead of overflowing.
        cfg.max_relative_positions = 5;
        assert_eq!(relative_position(99, 0, &cfg), i64::MAX);
        let window = used_index_range(100, &cfg).unwrap();
        assert_eq!(window.first + window.rows, 2 * cfg.attention_span());
    }

    #[test]
    fn short_buffer_is_an_error() {
        let cfg = tiny_config();
        let window = used_index_range(4, &cfg).unwrap();
        let mut out = [0u32; 15];
        assert!(fill_relative_index(4, &cfg, window, &mut out).is_err());
    }
}
