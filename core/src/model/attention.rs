//! Disentangled self-attention (HF `DisentangledSelfAttention`, SPEC §3.3–§3.5).
//!
//! Per `(batch, head)` the scores are
//! `A[i,j] = Q_i·K_j/s + (Q_i·Kr[idx(i,j)])/s + (K_j·Qr[idx(i,j)])/s`, masked, softmaxed and
//! applied to `V`. Activations stay in the `[batch, len, heads·d]` layout of the projections:
//! the strided matmuls address one head's columns directly, so no permute is ever
//! materialised, and the context is written head-major exactly as HF concatenates it.

use alloc::format;

use super::batch::DeviceBatch;
use super::modules::Linear;
use super::params::{ParamLayout, ParamStore};
use crate::backend::Backend;
use crate::kernels::{MatmulSpec, MatrixLayout, RelativeScoresSpec, SoftmaxSpec};
use crate::{Error, ModelConfig};

/// The position projections of one layer over the whole relative table: `Kr = R·Wkᵀ + bk`
/// (c2p) and `Qr = R·Wqᵀ + bq` (p2c), each `[2S, h·d]`. They depend on the weights only, so
/// inference computes them once per model.
pub struct PositionProjection<T> {
    /// `Kr`, when the layer uses c2p.
    pub keys: Option<T>,
    /// `Qr`, when the layer uses p2c.
    pub queries: Option<T>,
}

/// What an attention (and a layer) reads besides its weights.
pub struct AttentionInput<'a, B: Backend> {
    /// Gives `Q` and the attention residual: the layer input, or the EMD queries.
    pub query_states: &'a B::Tensor,
    /// Gives `K` and `V`.
    pub hidden: &'a B::Tensor,
    /// The batch: padding mask and relative index.
    pub batch: &'a DeviceBatch<B>,
    /// This layer's position projections (with relative attention).
    pub projection: Option<&'a PositionProjection<B::Tensor>>,
}

impl<B: Backend> Clone for AttentionInput<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for AttentionInput<'_, B> {}

/// The attention module's weights and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct DisentangledSelfAttention {
    /// `query_proj`.
    pub query: Linear,
    /// `key_proj`.
    pub key: Linear,
    /// `value_proj`.
    pub value: Linear,
    /// `pos_key_proj` (c2p without `share_att_key`).
    pub pos_key: Option<Linear>,
    /// `pos_query_proj` (p2c without `share_att_key`).
    pub pos_query: Option<Linear>,
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// `sqrt(d·(1 + #terms))`.
    pub scale: f32,
    /// Whether c2p scores are added.
    pub c2p: bool,
    /// Whether p2c scores are added.
    pub p2c: bool,
}

/// Saved activations of one attention forward (`N = batch·len` tokens, `R` window rows).
pub struct AttentionActivations<T> {
    /// `Q`, `[N, h·d]`.
    pub query: T,
    /// `K`, `[N, h·d]`.
    pub key: T,
    /// `V`, `[N, h·d]`.
    pub value: T,
    /// `Q·Krᵀ` over the window, `[batch, h, len, R]`.
    pub c2p: Option<T>,
    /// `K·Qrᵀ` over the window, `[batch, h, len, R]`.
    pub p2c: Option<T>,
    /// Attention probabilities, `[batch, h, len, len]`.
    pub probs: T,
    /// `P·V` with heads concatenated, `[N, h·d]`.
    pub context: T,
}

impl<T> AttentionActivations<T> {
    /// Buffers for a batch of `batch × len` tokens whose relative window has `rows` rows.
    pub fn new<B: Backend<Tensor = T>>(
        backend: &B,
        attention: &DisentangledSelfAttention,
        batch: usize,
        len: usize,
        rows: usize,
    ) -> Result<Self, Error> {
        let n = batch * len;
        let width = attention.heads * attention.head_dim;
        let table = batch * attention.heads * len * rows;
        Ok(AttentionActivations {
            query: backend.zeros(n * width)?,
            key: backend.zeros(n * width)?,
            value: backend.zeros(n * width)?,
            c2p: if attention.c2p {
                Some(backend.zeros(table)?)
            } else {
                None
            },
            p2c: if attention.p2c {
                Some(backend.zeros(table)?)
            } else {
                None
            },
            probs: backend.zeros(batch * attention.heads * len * len)?,
            context: backend.zeros(n * width)?,
        })
    }
}

impl DisentangledSelfAttention {
    /// Registers `{prefix}.query_proj`, `key_proj`, `value_proj` and, without
    /// `share_att_key`, `pos_key_proj` / `pos_query_proj`.
    pub fn new(layout: &mut ParamLayout, prefix: &str, cfg: &ModelConfig) -> Self {
        let (h, width, std) = (cfg.hidden_size, cfg.all_head_size(), cfg.initializer_range);
        let query = Linear::new(layout, &format!("{prefix}.query_proj"), h, width, true, std);
        let key = Linear::new(layout, &format!("{prefix}.key_proj"), h, width, true, std);
        let value = Linear::new(layout, &format!("{prefix}.value_proj"), h, width, true, std);
        let separate = cfg.relative_attention && !cfg.share_att_key;
        let pos_key = (separate && cfg.pos_att_type.c2p).then(|| {
            Linear::new(
                layout,
                &format!("{prefix}.pos_key_proj"),
                h,
                width,
                true,
                std,
            )
        });
        let pos_query = (separate && cfg.pos_att_type.p2c).then(|| {
            Linear::new(
                layout,
                &format!("{prefix}.pos_query_proj"),
                h,
                width,
                true,
                std,
            )
        });
        DisentangledSelfAttention {
            query,
            key,
            value,
            pos_key,
            pos_query,
            heads: cfg.num_attention_heads,
            head_dim: cfg.attention_head_size,
            scale: cfg.attention_scale(),
            c2p: cfg.uses_c2p(),
            p2c: cfg.uses_p2c(),
        }
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Projects the (normalised) relative table `rel` `[rows, hidden]` with this layer's
    /// position projections (the content projections under `share_att_key`).
    pub fn position_projection<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        rel: &B::Tensor,
        rows: usize,
    ) -> Result<PositionProjection<B::Tensor>, Error> {
        let project = |linear: &Linear| -> Result<B::Tensor, Error> {
            let mut out = backend.zeros(rows * self.width())?;
            linear.forward(backend, params, rel, &mut out, rows)?;
            Ok(out)
        };
        let keys = if self.c2p {
            Some(project(self.pos_key.as_ref().unwrap_or(&self.key))?)
        } else {
            None
        };
        let queries = if self.p2c {
            Some(project(self.pos_query.as_ref().unwrap_or(&self.query))?)
        } else {
            None
        };
        Ok(PositionProjection { keys, queries })
    }

    /// The layout of one head's `[len, d]` slice of a `[batch, len, h·d]` activation, batched
    /// over `(batch, head)`.
    fn head_layout(&self, len: usize) -> MatrixLayout {
        let width = self.width();
        MatrixLayout::row_major(width).batched(len * width, self.head_dim)
    }

    /// Runs the attention; the context lands in `acts.context`.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        input: AttentionInput<'_, B>,
        acts: &mut AttentionActivations<B::Tensor>,
    ) -> Result<(), Error> {
        let AttentionInput {
            query_states,
            hidden,
            batch,
            projection,
        } = input;
        let (bsz, len, n) = (batch.batch, batch.len, batch.tokens());
        let (heads, d) = (self.heads, self.head_dim);
        self.query
            .forward(backend, params, query_states, &mut acts.query, n)?;
        self.key
            .forward(backend, params, hidden, &mut acts.key, n)?;
        self.value
            .forward(backend, params, hidden, &mut acts.value, n)?;

        let head = self.head_layout(len);
        let square = MatrixLayout::row_major(len).batched(heads * len * len, len * len);
        // Content-to-content: Q·Kᵀ/s.
        backend.matmul(
            &acts.query,
            &acts.key,
            &mut acts.probs,
            &MatmulSpec {
                batch: [bsz, heads],
                m: len,
                n: len,
                k: d,
                a: head,
                b: head.transposed(),
                c: square,
                alpha: 1.0 / self.scale,
                beta: 0.0,
            },
        )?;

        if self.c2p || self.p2c {
            let projection = projection.ok_or(Error::ShapeMismatch {
                what: "relative attention without position projections",
                expected: 1,
                found: 0,
            })?;
            let index = batch.relative_index.as_ref().ok_or(Error::ShapeMismatch {
                what: "relative attention without a relative index",
                expected: 1,
                found: 0,
            })?;
            let window = batch.window;
            // The window's rows of a projected table, read transposed per head: B[t, r] =
            // P[(first + r)·hd + head·d + t].
            let table_t = MatrixLayout {
                offset: window.first * self.width(),
                row_stride: 1,
                col_stride: self.width(),
                batch_strides: [0, d],
            };
            let raw = MatrixLayout::row_major(window.rows)
                .batched(heads * len * window.rows, len * window.rows);
            let rel_scores = |content: &B::Tensor, table: &B::Tensor, out: &mut B::Tensor| {
                backend.matmul(
                    content,
                    table,
                    out,
                    &MatmulSpec {
                        batch: [bsz, heads],
                        m: len,
                        n: window.rows,
                        k: d,
                        a: head,
                        b: table_t,
                        c: raw,
                        alpha: 1.0,
                        beta: 0.0,
                    },
                )
            };
            let missing = Error::ShapeMismatch {
                what: "position projection or activation buffer for an enabled c2p/p2c term",
                expected: 1,
                found: 0,
            };
            if self.c2p {
                match (acts.c2p.as_mut(), projection.keys.as_ref()) {
                    (Some(out), Some(kr)) => rel_scores(&acts.query, kr, out)?,
                    _ => return Err(missing),
                }
            }
            if self.p2c {
                match (acts.p2c.as_mut(), projection.queries.as_ref()) {
                    (Some(out), Some(qr)) => rel_scores(&acts.key, qr, out)?,
                    _ => return Err(missing),
                }
            }
            backend.add_relative_scores(
                &mut acts.probs,
                acts.c2p.as_ref(),
                acts.p2c.as_ref(),
                index,
                RelativeScoresSpec {
                    matrices: bsz * heads,
                    len,
                    rows: window.rows,
                    scale: self.scale,
                },
            )?;
        }
        backend.masked_softmax(
            &mut acts.probs,
            &batch.mask,
            SoftmaxSpec {
                batch: bsz,
                heads,
                len,
            },
        )?;
        // Context: P·V, written head-major into [N, h·d].
        backend.matmul(
            &acts.probs,
            &acts.value,
            &mut acts.context,
            &MatmulSpec {
                batch: [bsz, heads],
                m: len,
                n: d,
                k: len,
                a: square,
                b: head,
                c: head,
                alpha: 1.0,
                beta: 0.0,
            },
        )
    }
}
