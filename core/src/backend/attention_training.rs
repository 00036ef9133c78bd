//! Disentangled attention for training as a pair of backend operations,
//! [`Backend::attention_forward_train`] and [`Backend::attention_backward`], and their
//! composition from the unfused kernels, which is the provided implementation of both.
//!
//! What the forward saves for the backward is the backend's own business: the composition keeps
//! the probabilities (`[batch, heads, len, len]`, and a dropped copy under attention dropout);
//! a fused backend may instead keep per-query-row softmax statistics in
//! [`TrainingBuffers::stats`] and recompute the probabilities tile by tile in the backward
//! (FlashAttention-2). A backward must therefore run on the backend, operands, dropout and
//! buffers of the forward whose context it differentiates.

use super::Backend;
use super::attention::{
    AttentionOperands, AttentionSpec, attention_context_at, attention_probabilities_at,
};
use crate::kernels::{MatmulSpec, MatrixLayout};
use crate::random::RandomStream;
use crate::{Error, Precision};

/// Attention dropout of a training forward: probabilities are kept with `1 − p` and scaled by
/// `1/(1 − p)`, element `((b·heads + h)·len + i)·len + j` of the probabilities drawing word of
/// that index from `stream` ([`Backend::dropout`] over the `[batch, heads, len, len]` tensor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDropout {
    /// `attention_probs_dropout_prob`, in `(0, 1)`.
    pub p: f32,
    /// The stream of the mask.
    pub stream: RandomStream,
}

/// The buffers a training forward writes and its backward reads (see the module docs).
pub struct TrainingBuffers<'a, T> {
    /// The probabilities `[batch, heads, len, len]` (composition).
    pub probs: &'a mut T,
    /// The probabilities after dropout (composition under attention dropout).
    pub dropped: Option<&'a mut T>,
    /// `Q·Krᵀ` over the window, `[heads, N, R]` (composition with c2p).
    pub c2p: Option<&'a mut T>,
    /// `K·Qrᵀ` over the window, `[heads, N, R]` (composition with p2c).
    pub p2c: Option<&'a mut T>,
    /// `batch·heads·len` elements ([`AttentionSpec::stats`]): where a fused forward leaves
    /// one softmax statistic per query row.
    pub stats: &'a mut T,
}

/// What [`Backend::attention_backward`] reads of its forward's [`TrainingBuffers`].
pub struct SavedAttention<'a, T> {
    /// The probabilities.
    pub probs: &'a T,
    /// The dropped probabilities (under attention dropout).
    pub dropped: Option<&'a T>,
    /// The per-row statistics.
    pub stats: &'a T,
    /// The context the forward wrote.
    pub context: &'a T,
}

/// Where [`Backend::attention_backward`] writes (every output is written, not accumulated).
pub struct AttentionGrads<'a, T> {
    /// Scratch of `batch·heads·len²` elements (composition).
    pub dscores: &'a mut T,
    /// Scratch of `batch·heads·len` elements ([`AttentionSpec::stats`]; a fused backward's
    /// per-row `dctx·ctx`).
    pub drows: &'a mut T,
    /// `∂L/∂Q`, `[N, W]`, including the c2p term's `dc2p·Kr`.
    pub dquery: &'a mut T,
    /// `∂L/∂K`, `[N, W]`, including the p2c term's `dp2c·Qr`.
    pub dkey: &'a mut T,
    /// `∂L/∂V`, `[N, W]`.
    pub dvalue: &'a mut T,
    /// `∂L/∂(Q·Krᵀ)` over the window, `[heads, N, R]` (required with c2p).
    pub dc2p: Option<&'a mut T>,
    /// `∂L/∂(K·Qrᵀ)` over the window, `[heads, N, R]` (required with p2c).
    pub dp2c: Option<&'a mut T>,
}

impl AttentionSpec {
    /// Elements of [`TrainingBuffers::stats`] and [`AttentionGrads::drows`],
    /// `batch·heads·len`.
    pub fn stats(&self) -> usize {
        self.batch * self.heads * self.len
    }
}

/// The provided [`Backend::attention_forward_train`]: the probabilities into `buffers.probs`
/// ([`attention_probabilities_at`]), under dropout a dropped copy into `buffers.dropped`, and
/// `context = P_applied·V`; `buffers.stats` is untouched.
pub fn composed_attention_forward_train<B: Backend + ?Sized>(
    backend: &B,
    ops: AttentionOperands<'_, B>,
    buffers: TrainingBuffers<'_, B::Tensor>,
    context: &mut B::Tensor,
    dropout: Option<AttentionDropout>,
    spec: AttentionSpec,
    products: Precision,
) -> Result<(), Error> {
    let TrainingBuffers {
        probs,
        dropped,
        c2p,
        p2c,
        stats: _,
    } = buffers;
    attention_probabilities_at(
        backend,
        &ops,
        super::AttentionBuffers {
            probs: &mut *probs,
            c2p,
            p2c,
        },
        spec,
        products,
    )?;
    let applied = match dropout {
        Some(dropout) => {
            let dropped = dropped.ok_or(Error::Missing {
                what: "dropped probabilities buffer for attention dropout",
            })?;
            backend.copy(probs, 0, dropped, 0, spec.scores())?;
            backend.dropout(dropped, dropout.p, dropout.stream)?;
            &*dropped
        }
        None => &*probs,
    };
    attention_context_at(backend, applied, ops.value, context, spec, products)
}

/// The provided [`Backend::attention_backward`], from the probabilities the composed forward
/// saved: `dP = dctx·Vᵀ` (dropped like the forward), `dV = P_appliedᵀ·dctx`, the masked softmax
/// backward into `grads.dscores`, `dQ = dS·K/s`, `dK = dSᵀ·Q/s`, the relative scatter into
/// `dc2p`/`dp2c` and `dQ += dc2p·Kr`, `dK += dp2c·Qr` over the window.
#[allow(clippy::too_many_arguments)]
pub fn composed_attention_backward<B: Backend + ?Sized>(
    backend: &B,
    ops: AttentionOperands<'_, B>,
    saved: SavedAttention<'_, B::Tensor>,
    dcontext: &B::Tensor,
    dropout: Option<AttentionDropout>,
    grads: AttentionGrads<'_, B::Tensor>,
    spec: AttentionSpec,
    products: Precision,
) -> Result<(), Error> {
    let matmul = |a: &B::Tensor, b: &B::Tensor, c: &mut B::Tensor, mm: &MatmulSpec| {
        backend.matmul_reduced(a, b, c, mm, products)
    };
    let AttentionGrads {
        dscores,
        drows: _,
        dquery,
        dkey,
        dvalue,
        dc2p,
        dp2c,
    } = grads;
    let (bsz, len, d, heads, n) = (
        spec.batch,
        spec.len,
        spec.head_dim,
        spec.heads,
        spec.tokens(),
    );
    let (head, square) = (spec.head_layout(), spec.square_layout());
    let probs = saved.probs;
    let applied = match (dropout, saved.dropped) {
        (Some(_), Some(dropped)) => dropped,
        (Some(_), None) => {
            return Err(Error::Missing {
                what: "dropped probabilities buffer for attention dropout",
            });
        }
        (None, _) => probs,
    };
    // dP = dctx · Vᵀ ; dV = P_appliedᵀ · dctx
    matmul(
        dcontext,
        ops.value,
        dscores,
        &MatmulSpec {
            batch: [bsz, heads],
            m: len,
            n: len,
            k: d,
            a: head,
            b: head.transposed(),
            c: square,
            alpha: 1.0,
            beta: 0.0,
        },
    )?;
    matmul(
        applied,
        dcontext,
        dvalue,
        &MatmulSpec {
            batch: [bsz, heads],
            m: len,
            n: d,
            k: len,
            a: square.transposed(),
            b: head,
            c: head,
            alpha: 1.0,
            beta: 0.0,
        },
    )?;
    if let Some(dropout) = dropout {
        backend.dropout(dscores, dropout.p, dropout.stream)?;
    }
    backend.masked_softmax_backward(probs, dscores, ops.mask, spec.softmax_spec())?;
    // dQ = dS·K/s ; dK = dSᵀ·Q/s
    let content = |a: MatrixLayout| MatmulSpec {
        batch: [bsz, heads],
        m: len,
        n: d,
        k: len,
        a,
        b: head,
        c: head,
        alpha: 1.0 / spec.scale,
        beta: 0.0,
    };
    matmul(dscores, ops.key, dquery, &content(square))?;
    matmul(dscores, ops.query, dkey, &content(square.transposed()))?;
    if ops.pos_key.is_none() && ops.pos_query.is_none() {
        return Ok(());
    }
    let index = ops.index.ok_or(Error::Missing {
        what: "relative index for relative attention",
    })?;
    let (mut dc2p, mut dp2c) = (
        dc2p.filter(|_| ops.pos_key.is_some()),
        dp2c.filter(|_| ops.pos_query.is_some()),
    );
    backend.relative_scores_backward(
        dscores,
        index,
        dc2p.as_deref_mut(),
        dp2c.as_deref_mut(),
        spec.relative_spec(),
    )?;
    let (rows, width) = (spec.rows, spec.width());
    // content += dtable · P_win over the window's rows of each head of the projection.
    let into_content = MatmulSpec {
        batch: [1, heads],
        m: n,
        n: d,
        k: rows,
        a: MatrixLayout::row_major(rows).batched(0, n * rows),
        b: MatrixLayout::row_major(width)
            .at(spec.first_row * width)
            .batched(0, d),
        c: MatrixLayout::row_major(width).batched(0, d),
        alpha: 1.0,
        beta: 1.0,
    };
    if let Some(kr) = ops.pos_key {
        let table = dc2p.ok_or(Error::Missing {
            what: "c2p gradient buffer",
        })?;
        matmul(table, kr, dquery, &into_content)?;
    }
    if let Some(qr) = ops.pos_query {
        let table = dp2c.ok_or(Error::Missing {
            what: "p2c gradient buffer",
        })?;
        matmul(table, qr, dkey, &into_content)?;
    }
    Ok(())
}
