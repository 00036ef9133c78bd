//! One encoder layer's disentangled self-attention block, one head and one query row at a
//! time: `LN(dense(softmax(QKᵀ/s + c2p/s + p2c/s)·V) + x)` with the position projections read
//! from the file (SPEC §3.3–§3.4; every token is valid, so the softmax mask is all ones). Every
//! score is the same sum of the same products, in the same order, as with whole `[L, L]` and
//! `[L, R]` tables; the queries and the output projection are computed [`FFN_BLOCK`] rows at
//! a time.

use super::EdgeError;
use super::arena::{FFN_BLOCK, Workspace};
use super::gemm::{dot, matmul_into_columns};
use super::layout::TensorKind;
use super::linear::{linear, prepare, residual_layer_norm, table_row};
use super::model::EdgeModel;
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

/// One query row of scores: `scores[j] += c2p[r]/s + K_j·Qr_r/s` with
/// `r = index[i − j + L − 1]`, in the order of
/// [`add_relative_scores`](crate::kernels::add_relative_scores) (either term optional; `p2c`
/// is `(K, Qr)`, both `[·, d]`).
fn add_toeplitz_scores(
    scores: &mut [f32],
    c2p: Option<&[f32]>,
    p2c: Option<(&[f32], &[f32])>,
    index: &[u32],
    (i, d, s): (usize, usize, f32),
) {
    let len = scores.len();
    // index[i + len - 1 - j] for j = 0..len, i.e. a reversed window of the Toeplitz vector.
    let idx = index[i..i + len].iter().rev();
    let p2c_term = |(keys, pos_queries): (&[f32], &[f32]), j: usize, r: usize| {
        dot(&keys[j * d..(j + 1) * d], &pos_queries[r * d..(r + 1) * d])
    };
    match (c2p, p2c) {
        (Some(c2p), Some(p2c)) => {
            for (j, (o, &r)) in scores.iter_mut().zip(idx).enumerate() {
                let r = r as usize;
                *o += c2p[r] / s + p2c_term(p2c, j, r) / s;
            }
        }
        (Some(c2p), None) => {
            for (o, &r) in scores.iter_mut().zip(idx) {
                *o += c2p[r as usize] / s;
            }
        }
        (None, Some(p2c)) => {
            for (j, (o, &r)) in scores.iter_mut().zip(idx).enumerate() {
                *o += p2c_term(p2c, j, r as usize) / s;
            }
        }
        (None, None) => {}
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
        if let Some(kr) = &keys {
            for (r, dst) in ws.pos_keys.chunks_exact_mut(d).take(rows).enumerate() {
                table_row(kr, offset + r, cols.clone(), dst)?;
            }
        }
        if let Some(qr) = &queries {
            for (r, dst) in ws.pos_queries.chunks_exact_mut(d).take(rows).enumerate() {
                table_row(qr, offset + r, cols.clone(), dst)?;
            }
        }
        let scores = &mut ws.scores[..len];
        for start in (0..len).step_by(FFN_BLOCK) {
            let n = FFN_BLOCK.min(len - start);
            linear(&wq, bq, cols.clone(), &x.rows(start, n)?, ws.query, ws.row)?;
            for (i, q) in (start..).zip(ws.query.chunks_exact(d).take(n)) {
                for (s, k) in scores.iter_mut().zip(ws.key.chunks_exact(d)) {
                    *s = alpha * dot(q, k);
                }
                let c2p = match keys {
                    Some(_) => {
                        let c2p = &mut ws.c2p[..rows];
                        for (c, kr) in c2p.iter_mut().zip(ws.pos_keys.chunks_exact(d)) {
                            *c = dot(q, kr);
                        }
                        Some(&*c2p)
                    }
                    None => None,
                };
                add_toeplitz_scores(
                    scores,
                    c2p,
                    queries.is_some().then_some((&*ws.key, &*ws.pos_queries)),
                    ws.index,
                    (i, d, scale),
                );
                masked_softmax_rows(scores, i, ws.ones, spec);
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

    let context = prepare(
        dtype,
        &ws.wide[..len * width],
        len,
        width,
        ws.quantized,
        ws.row_scales,
    );
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
