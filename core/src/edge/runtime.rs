//! [`detect`]: embeddings, encoder layers and the RTD head over a caller's arena.

use super::EdgeError;
use super::arena::{FFN_BLOCK, Workspace};
use super::attention::{attention, fill_toeplitz_index};
use super::layout::TensorKind;
use super::linear::{linear, prepare, residual_layer_norm, table_row};
use super::model::EdgeModel;
use crate::kernels::{LayerNormSpec, add_assign, layer_norm};

fn norm_spec(model: &EdgeModel<'_>, rows: usize) -> LayerNormSpec {
    LayerNormSpec {
        rows,
        cols: model.config().hidden_size,
        eps: model.config().layer_norm_eps,
    }
}

fn vector<'a>(
    model: &EdgeModel<'a>,
    kind: TensorKind,
    layer: usize,
) -> Result<&'a [f32], EdgeError> {
    model.tensor(kind, layer)?.f32s()
}

/// `LN(E_word[id] (+ E_pos[i]))` into `ws.hidden`, one row at a time.
fn embed(model: &EdgeModel<'_>, tokens: &[u32], ws: &mut Workspace<'_>) -> Result<(), EdgeError> {
    let h = model.config().hidden_size;
    let word = model.tensor(TensorKind::WordEmbeddings, 0)?;
    let position = match model.config().position_biased_input {
        true => Some(model.tensor(TensorKind::PositionEmbeddings, 0)?),
        false => None,
    };
    let gamma = vector(model, TensorKind::EmbeddingNormWeight, 0)?;
    let beta = vector(model, TensorKind::EmbeddingNormBias, 0)?;
    let sum = &mut ws.block[..h];
    for (i, (&id, out)) in tokens.iter().zip(ws.hidden.chunks_exact_mut(h)).enumerate() {
        table_row(&word, id as usize, 0..h, sum)?;
        if let Some(position) = &position {
            table_row(position, i, 0..h, ws.row)?;
            add_assign(sum, &ws.row[..h])?;
        }
        layer_norm(sum, gamma, beta, out, None, norm_spec(model, 1))?;
    }
    Ok(())
}

/// `LN(dense(act(dense(x))) + x)` on `ws.hidden` in place, [`FFN_BLOCK`] rows at a time.
fn feed_forward(
    model: &EdgeModel<'_>,
    layer: usize,
    ws: &mut Workspace<'_>,
) -> Result<(), EdgeError> {
    let cfg = model.config();
    let (h, f, dtype) = (cfg.hidden_size, cfg.intermediate_size, model.dtype());
    let wi = model.tensor(TensorKind::IntermediateWeight, layer)?;
    let bi = vector(model, TensorKind::IntermediateBias, layer)?;
    let wo = model.tensor(TensorKind::OutputWeight, layer)?;
    let bo = vector(model, TensorKind::OutputBias, layer)?;
    let gamma = vector(model, TensorKind::OutputNormWeight, layer)?;
    let beta = vector(model, TensorKind::OutputNormBias, layer)?;
    for start in (0..ws.len).step_by(FFN_BLOCK) {
        let rows = FFN_BLOCK.min(ws.len - start);
        let block = start * h..(start + rows) * h;
        let x = prepare(
            dtype,
            &ws.hidden[block.clone()],
            rows,
            h,
            ws.quantized,
            ws.row_scales,
        );
        linear(&wi, bi, 0..f, &x, ws.wide, ws.row)?;
        let inter = &mut ws.wide[..rows * f];
        for v in inter.iter_mut() {
            *v = cfg.hidden_act.apply(*v);
        }
        let inter = prepare(dtype, inter, rows, f, ws.quantized, ws.row_scales);
        let sum = &mut ws.block[..rows * h];
        linear(&wo, bo, 0..h, &inter, sum, ws.row)?;
        residual_layer_norm(
            sum,
            &mut ws.hidden[block],
            (gamma, beta),
            norm_spec(model, rows),
        )?;
    }
    Ok(())
}

/// `classifier(act(dense(LN(h + h_CLS))))` into `out` (one logit per token), [`FFN_BLOCK`]
/// rows at a time.
fn rtd_head(
    model: &EdgeModel<'_>,
    ws: &mut Workspace<'_>,
    out: &mut [f32],
) -> Result<(), EdgeError> {
    let cfg = model.config();
    let (len, h, dtype) = (ws.len, cfg.hidden_size, model.dtype());
    let gamma = vector(model, TensorKind::RtdNormWeight, 0)?;
    let beta = vector(model, TensorKind::RtdNormBias, 0)?;
    let dense = model.tensor(TensorKind::RtdDenseWeight, 0)?;
    let dense_bias = vector(model, TensorKind::RtdDenseBias, 0)?;
    let classifier = model.tensor(TensorKind::ClassifierWeight, 0)?;
    let classifier_bias = vector(model, TensorKind::ClassifierBias, 0)?;
    let cls = &mut ws.cls[..h];
    cls.copy_from_slice(&ws.hidden[..h]);
    for start in (0..len).step_by(FFN_BLOCK) {
        let rows = FFN_BLOCK.min(len - start);
        let block = start * h..(start + rows) * h;
        let sum = &mut ws.block[..rows * h];
        // As `add_sequence_row` with the `[CLS]` row: `h_CLS + h`.
        for (o_row, x_row) in sum
            .chunks_exact_mut(h)
            .zip(ws.hidden[block.clone()].chunks_exact(h))
        {
            for ((o, &v), &c) in o_row.iter_mut().zip(x_row).zip(&*cls) {
                *o = c + v;
            }
        }
        let normed = &mut ws.hidden[block];
        layer_norm(sum, gamma, beta, normed, None, norm_spec(model, rows))?;
        let normed = prepare(dtype, normed, rows, h, ws.quantized, ws.row_scales);
        linear(&dense, dense_bias, 0..h, &normed, sum, ws.row)?;
        for v in sum.iter_mut() {
            *v = cfg.hidden_act.apply(*v);
        }
        let activated = prepare(dtype, sum, rows, h, ws.quantized, ws.row_scales);
        linear(
            &classifier,
            classifier_bias,
            0..1,
            &activated,
            &mut out[start..start + rows],
            ws.row,
        )?;
    }
    Ok(())
}

/// Runs the discriminator on one sequence (every token valid, no padding) and writes one
/// replaced-token logit per token to `out[..tokens.len()]` (`p(replaced) = σ(logit)`).
///
/// `arena` must hold at least [`arena_bytes`](super::arena_bytes)`(model, tokens.len())`
/// bytes; nothing else is allocated. Errors: no tokens, more than the file's `max_seq_len`, an
/// id outside the vocabulary, or buffers that are too small; the computation itself cannot
/// fail on a model that [`EdgeModel::parse`] accepted.
pub fn detect(
    model: &EdgeModel<'_>,
    tokens: &[u32],
    arena: &mut [u8],
    out: &mut [f32],
) -> Result<(), EdgeError> {
    let len = tokens.len();
    let max = model.max_seq_len();
    if len == 0 {
        return Err(EdgeError::EmptyInput);
    }
    if len > max {
        return Err(EdgeError::SequenceTooLong { len, max });
    }
    let vocab = model.config().vocab_size;
    if let Some((position, &id)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &id)| id as usize >= vocab)
    {
        return Err(EdgeError::TokenOutOfRange {
            position,
            id,
            vocab,
        });
    }
    if out.len() < len {
        return Err(EdgeError::OutputTooSmall {
            needed: len,
            len: out.len(),
        });
    }
    let mut ws = Workspace::new(model, len, arena)?;
    embed(model, tokens, &mut ws)?;
    fill_toeplitz_index(model, &mut ws)?;
    for layer in 0..model.config().num_hidden_layers {
        attention(model, layer, &mut ws)?;
        feed_forward(model, layer, &mut ws)?;
    }
    rtd_head(model, &mut ws, &mut out[..len])
}
