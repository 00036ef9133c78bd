//! One encoder layer's disentangled self-attention block, one head at a time:
//! `LN(dense(softmax(QKᵀ/s + c2p/s + p2c/s)·V) + x)` with the position projections read from
//! the file (SPEC §3.3–§3.4; every token is valid, so the softmax mask is all ones).

use super::EdgeError;
use super::arena::Workspace;
use super::gemm::{matmul_into_columns, matmul_transposed};
use super::layout::TensorKind;
use super::linear::{linear, prepare, table_row};
use super::model::EdgeModel;
use crate::kernels::{LayerNormSpec, SoftmaxSpec, add_assign, layer_norm, masked_softmax};
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

/// `scores[i, j] += c2p[i, r]/s + p2c[j, r]/s` with `r = index[i − j + L − 1]`, in the order
/// of [`add_relative_scores`](crate::kernels::add_relative_scores) (either term optional).
fn add_toeplitz_scores(
    scores: &mut [f32],
    c2p: Option<&[f32]>,
    p2c: Option<&[f32]>,
    index: &[u32],
    (len, rows, s): (usize, usize, f32),
) {
    for (i, out) in scores.chunks_exact_mut(len).enumerate() {
        // index[i + len - 1 - j] for j = 0..len, i.e. a reversed window of the Toeplitz vector.
        let idx = index[i..i + len].iter().rev();
        match (c2p, p2c) {
            (Some(c2p), Some(p2c)) => {
                let c2p_row = &c2p[i * rows..(i + 1) * rows];
                for (j, (o, &r)) in out.iter_mut().zip(idx).enumerate() {
                    let r = r as usize;
                    *o += c2p_row[r] / s + p2c[j * rows + r] / s;
                }
            }
            (Some(c2p), None) => {
                let c2p_row = &c2p[i * rows..(i + 1) * rows];
                for (o, &r) in out.iter_mut().zip(idx) {
                    *o += c2p_row[r as usize] / s;
                }
            }
            (None, Some(p2c)) => {
                for (j, (o, &r)) in out.iter_mut().zip(idx).enumerate() {
                    *o += p2c[j * rows + r as usize] / s;
                }
            }
            (None, None) => {}
        }
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
    let x = prepare(dtype, ws.hidden, len, h, ws.quantized, ws.row_scales);
    for head in 0..heads {
        let cols = head * d..(head + 1) * d;
        linear(&wq, bq, cols.clone(), &x, ws.query, ws.row)?;
        linear(&wk, bk, cols.clone(), &x, ws.key, ws.row)?;
        linear(&wv, bv, cols.clone(), &x, ws.value, ws.row)?;
        matmul_transposed(ws.query, ws.key, ws.scores, (len, len, d), 1.0 / scale)?;
        if let Some(kr) = &keys {
            for (r, dst) in ws.pos_keys.chunks_exact_mut(d).enumerate() {
                table_row(kr, offset + r, cols.clone(), dst)?;
            }
            matmul_transposed(ws.query, ws.pos_keys, ws.c2p, (len, rows, d), 1.0)?;
        }
        if let Some(qr) = &queries {
            for (r, dst) in ws.pos_queries.chunks_exact_mut(d).enumerate() {
                table_row(qr, offset + r, cols.clone(), dst)?;
            }
            matmul_transposed(ws.key, ws.pos_queries, ws.p2c, (len, rows, d), 1.0)?;
        }
        add_toeplitz_scores(
            ws.scores,
            keys.is_some().then_some(&*ws.c2p),
            queries.is_some().then_some(&*ws.p2c),
            ws.index,
            (len, rows, scale),
        );
        masked_softmax(
            ws.scores,
            ws.ones,
            SoftmaxSpec {
                batch: 1,
                heads: 1,
                len,
            },
        )?;
        matmul_into_columns(
            ws.scores,
            ws.value,
            ws.context,
            (len, d, len),
            (width, head * d),
        )?;
    }

    let context = prepare(dtype, ws.context, len, width, ws.quantized, ws.row_scales);
    let (wo, bo) = (
        tensor(TensorKind::AttentionOutputWeight)?,
        vector(TensorKind::AttentionOutputBias)?,
    );
    linear(&wo, bo, 0..h, &context, ws.sum, ws.row)?;
    add_assign(ws.sum, ws.hidden)?;
    layer_norm(
        ws.sum,
        vector(TensorKind::AttentionNormWeight)?,
        vector(TensorKind::AttentionNormBias)?,
        ws.hidden,
        None,
        LayerNormSpec {
            rows: len,
            cols: h,
            eps: cfg.layer_norm_eps,
        },
    )?;
    Ok(())
}
