//! One encoder layer's disentangled self-attention block, one head and one query row at a
//! time: `LN(dense(softmax(QKᵀ/s + c2p/s + p2c/s)·V) + x)` with the position projections read
//! from the file (SPEC §3.3–§3.4; every token is valid, so the softmax mask is all ones). For
//! f32 and f16 models every score is the same sum of the same products, in the same order, as
//! with whole `[L, L]` and `[L, R]` tables. int8 models multiply the stored int8 Kr and Qr in
//! place with int8 copies of the query row and of the head's keys (one scale per row), and
//! keep the context as int8 with one scale per row and head, which the output projection
//! reads directly. The queries and the output projection are computed [`FFN_BLOCK`] rows at
//! a time.

use core::ops::Range;

use super::EdgeError;
use super::arena::{FFN_BLOCK, Workspace};
use super::format::DType;
use super::gemm::{dot, dot_i8, matmul_into_columns};
use super::layout::TensorKind;
use super::linear::{Input, Quantized, linear, prepare, residual_layer_norm, table_row};
use super::model::{EdgeModel, TensorView};
use super::quant::{quantize_row, quantize_rows};
use crate::kernels::{LayerNormSpec, SoftmaxSpec, masked_softmax_rows};
use crate::relative_position::{relative_index, relative_position};

fn window_error(expected: usize, found: usize) -> EdgeError {
    EdgeError::Kernel(crate::Error::ShapeMismatch {
        what: "relative window of the sequence outside the stored projections",
        expected,
        found,
    })
}

/// Fills `ws.index[i − j + L − 1]` with the column of the `[L, R]` position-score tables that
/// query `i` and key `j` read: `idx(i, j) − window.first`. The index is Toeplitz, so `2L − 1`
/// entries describe the whole `L × L` table.
pub(crate) fn fill_toeplitz_index(
    model: &EdgeModel<'_>,
    ws: &mut Workspace<'_>,
) -> Result<(), EdgeError> {
    let cfg = model.config();
    let (len, window) = (ws.len, ws.window);
    for (t, slot) in ws.index.iter_mut().enumerate() {
        let idx = relative_index(relative_position(t, len - 1, cfg), cfg.attention_span());
        let local = idx
            .checked_sub(window.first)
            .filter(|&r| r < window.rows)
            .ok_or(window_error(window.first + window.rows, idx))?;
        *slot = local as u32;
    }
    Ok(())
}

/// The p2c terms `K_j·Qr_r` of one head: f32 keys with the decoded Qr rows (`[·, d]` each),
/// or int8 keys (one scale per row) with the stored int8 Qr rows `offset ..`, columns `cols`.
enum P2c<'a> {
    F32 {
        keys: &'a [f32],
        pos_queries: &'a [f32],
        d: usize,
    },
    Int8 {
        keys: &'a [i8],
        key_scales: &'a [f32],
        table: Int8Table<'a>,
        offset: usize,
        cols: Range<usize>,
    },
}

impl P2c<'_> {
    /// `K_j·Qr_r`.
    #[inline(always)]
    fn term(&self, j: usize, r: usize) -> f32 {
        match self {
            P2c::F32 {
                keys,
                pos_queries,
                d,
            } => dot(&keys[j * d..(j + 1) * d], &pos_queries[r * d..(r + 1) * d]),
            P2c::Int8 {
                keys,
                key_scales,
                table,
                offset,
                cols,
            } => {
                let d = cols.len();
                let (row, qr_scale) = table.row(offset + r, cols);
                dot_i8(&keys[j * d..(j + 1) * d], row) as f32 * (key_scales[j] * qr_scale)
            }
        }
    }
}

/// One query row of scores: `scores[j] += c2p[r]/s + p2c(j, r)/s` with
/// `r = index[i − j + L − 1]`, in the order of
/// [`add_relative_scores`](crate::kernels::add_relative_scores) (either term optional).
fn add_toeplitz_scores(
    scores: &mut [f32],
    c2p: Option<&[f32]>,
    p2c: Option<&P2c<'_>>,
    index: &[u32],
    (i, s): (usize, f32),
) {
    let len = scores.len();
    // index[i + len - 1 - j] for j = 0..len, i.e. a reversed window of the Toeplitz vector.
    let idx = index[i..i + len].iter().rev();
    match (c2p, p2c) {
        (Some(c2p), Some(p2c)) => {
            for (j, (o, &r)) in scores.iter_mut().zip(idx).enumerate() {
                let r = r as usize;
                *o += c2p[r] / s + p2c.term(j, r) / s;
            }
        }
        (Some(c2p), None) => {
            for (o, &r) in scores.iter_mut().zip(idx) {
                *o += c2p[r as usize] / s;
            }
        }
        (None, Some(p2c)) => {
            for (j, (o, &r)) in scores.iter_mut().zip(idx).enumerate() {
                *o += p2c.term(j, r as usize) / s;
            }
        }
        (None, None) => {}
    }
}

/// The rows `offset ..` of a stored int8 position projection (`[rows, W]`, one scale per
/// row), checked once so that [`Int8Table::row`] cannot fail.
#[derive(Clone, Copy)]
struct Int8Table<'a> {
    values: &'a [i8],
    scales: &'a [f32],
    width: usize,
}

impl<'a> Int8Table<'a> {
    /// The table of an int8 model (`None` for other storage types or without the table).
    fn of(
        int8: bool,
        table: Option<&TensorView<'a>>,
        rows: usize,
    ) -> Result<Option<Self>, EdgeError> {
        match (int8, table) {
            (true, Some(t)) => Self::new(t, rows).map(Some),
            _ => Ok(None),
        }
    }

    fn new(table: &TensorView<'a>, rows: usize) -> Result<Self, EdgeError> {
        let (values, scales) = table.int8()?;
        let width = table.shape.cols;
        let needed = rows.saturating_mul(width);
        if values.len() < needed || scales.len() < rows {
            return Err(window_error(rows, table.shape.rows));
        }
        Ok(Int8Table {
            values,
            scales,
            width,
        })
    }

    /// Columns `cols` of row `r` and the row's scale (`r` below the rows checked, `cols`
    /// inside the width).
    #[inline(always)]
    fn row(&self, r: usize, cols: &Range<usize>) -> (&'a [i8], f32) {
        let start = r * self.width;
        (
            &self.values[start + cols.start..start + cols.end],
            self.scales[r],
        )
    }
}

/// Runs layer `layer`'s attention block on `ws.hidden` in place.
pub(crate) fn attention(
    model: &EdgeModel<'_>,
    layer: usize,
    ws: &mut Workspace<'_>,
) -> Result<(), EdgeError> {
    let cfg = model.config();
    let (len, h, heads, d) = (
        ws.len,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.attention_head_size,
    );
    let width = cfg.all_head_size();
    let scale = cfg.attention_scale();
    let tensor = |kind| model.tensor(kind, layer);
    let vector = |kind| -> Result<&[f32], EdgeError> { model.tensor(kind, layer)?.f32s() };
    let (wq, wk, wv) = (
        tensor(TensorKind::QueryWeight)?,
        tensor(TensorKind::KeyWeight)?,
        tensor(TensorKind::ValueWeight)?,
    );
    let (bq, bk, bv) = (
        vector(TensorKind::QueryBias)?,
        vector(TensorKind::KeyBias)?,
        vector(TensorKind::ValueBias)?,
    );
    let keys = match cfg.uses_c2p() {
        true => Some(tensor(TensorKind::PositionKeys)?),
        false => None,
    };
    let queries = match cfg.uses_p2c() {
        true => Some(tensor(TensorKind::PositionQueries)?),
        false => None,
    };
    // The rows of the stored projections this length reads: the stored window (that of
    // `max_seq_len`) contains every shorter sequence's window.
    let (stored, window) = (model.geometry().window, ws.window);
    let offset = window
        .first
        .checked_sub(stored.first)
        .filter(|o| o + window.rows <= stored.rows)
        .ok_or(window_error(
            stored.first + stored.rows,
            window.first + window.rows,
        ))?;
    let rows = window.rows;

    let dtype = model.dtype();
    let int8 = dtype == DType::I8;
    // int8 models multiply the stored int8 Kr and Qr rows with int8 queries and keys in
    // place; the others decode one head's rows into the arena.
    let (keys8, queries8) = (
        Int8Table::of(int8, keys.as_ref(), offset + rows)?,
        Int8Table::of(int8, queries.as_ref(), offset + rows)?,
    );
    let x = prepare(dtype, ws.hidden, len, h, ws.quantized, ws.row_scales);
    let alpha = 1.0 / scale;
    let spec = SoftmaxSpec {
        batch: 1,
        heads: 1,
        len,
    };
    for head in 0..heads {
        let cols = head * d..(head + 1) * d;
        linear(&wk, bk, cols.clone(), &x, ws.key, ws.row)?;
        linear(&wv, bv, cols.clone(), &x, ws.value, ws.row)?;
        if let (Some(kr), false) = (&keys, int8) {
            for (r, dst) in ws.pos_keys.chunks_exact_mut(d).take(rows).enumerate() {
                table_row(kr, offset + r, cols.clone(), dst)?;
            }
        }
        match (&queries, int8) {
            (Some(qr), false) => {
                for (r, dst) in ws.pos_queries.chunks_exact_mut(d).take(rows).enumerate() {
                    table_row(qr, offset + r, cols.clone(), dst)?;
                }
            }
            (Some(_), true) => quantize_rows(&ws.key[..len * d], d, ws.keys8, ws.key_scales),
            _ => {}
        }
        let scores = &mut ws.scores[..len];
        for start in (0..len).step_by(FFN_BLOCK) {
            let n = FFN_BLOCK.min(len - start);
            linear(&wq, bq, cols.clone(), &x.rows(start, n)?, ws.query, ws.row)?;
            for (i, q) in (start..).zip(ws.query.chunks_exact(d).take(n)) {
                for (s, k) in scores.iter_mut().zip(ws.key.chunks_exact(d)) {
                    *s = alpha * dot(q, k);
                }
                let c2p = &mut ws.c2p[..];
                match (keys.is_some(), keys8) {
                    (true, Some(kr)) => {
                        let q_scale = quantize_row(q, ws.query8);
                        let q8 = &*ws.query8;
                        for (r, c) in c2p.iter_mut().take(rows).enumerate() {
                            let (row, kr_scale) = kr.row(offset + r, &cols);
                            *c = dot_i8(q8, row) as f32 * (q_scale * kr_scale);
                        }
                    }
                    (true, None) => {
                        for (c, kr) in c2p.iter_mut().zip(ws.pos_keys.chunks_exact(d)) {
                            *c = dot(q, kr);
                        }
                    }
                    (false, _) => {}
                }
                let c2p = keys.is_some().then_some(&c2p[..rows]);
                let p2c = match (queries.is_some(), queries8) {
                    (true, Some(table)) => Some(P2c::Int8 {
                        keys: ws.keys8,
                        key_scales: ws.key_scales,
                        table,
                        offset,
                        cols: cols.clone(),
                    }),
                    (true, None) => Some(P2c::F32 {
                        keys: ws.key,
                        pos_queries: ws.pos_queries,
                        d,
                    }),
                    (false, _) => None,
                };
                add_toeplitz_scores(scores, c2p, p2c.as_ref(), ws.index, (i, scale));
                masked_softmax_rows(scores, i, ws.ones, spec);
                if int8 {
                    let out = &mut ws.row[..d];
                    matmul_into_columns(scores, ws.value, out, (1, d, len), (d, 0))?;
                    let dst = &mut ws.context[i * width + head * d..][..d];
                    ws.context_scales[i * heads + head] = quantize_row(out, dst);
                } else {
                    matmul_into_columns(
                        scores,
                        ws.value,
                        &mut ws.wide[i * width..],
                        (1, d, len),
                        (width, head * d),
                    )?;
                }
            }
        }
    }

    let context = match int8 {
        true => Input {
            values: &[],
            rows: len,
            cols: width,
            quantized: Some(Quantized {
                values: &ws.context[..len * width],
                scales: &ws.context_scales[..len * heads],
                groups: heads,
            }),
        },
        false => prepare(
            dtype,
            &ws.wide[..len * width],
            len,
            width,
            ws.quantized,
            ws.row_scales,
        ),
    };
    let (wo, bo) = (
        tensor(TensorKind::AttentionOutputWeight)?,
        vector(TensorKind::AttentionOutputBias)?,
    );
    let (gamma, beta) = (
        vector(TensorKind::AttentionNormWeight)?,
        vector(TensorKind::AttentionNormBias)?,
    );
    for start in (0..len).step_by(FFN_BLOCK) {
        let n = FFN_BLOCK.min(len - start);
        let block = start * h..(start + n) * h;
        let sum = &mut ws.block[..n * h];
        linear(&wo, bo, 0..h, &context.rows(start, n)?, sum, ws.row)?;
        residual_layer_norm(
            sum,
            &mut ws.hidden[block],
            (gamma, beta),
            LayerNormSpec {
                rows: n,
                cols: h,
                eps: cfg.layer_norm_eps,
            },
        )?;
    }
    Ok(())
}
