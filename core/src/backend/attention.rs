//! Disentangled attention as one backend operation ([`Backend::fused_attention`]) and its
//! composition from the unfused kernels, which is the provided implementation of the trait
//! method and the path the model takes whenever it needs the probabilities themselves
//! (training, attention dropout, the `attentions` outputs).
//!
//! Layouts (`N = batch·len` tokens, `W = heads·head_dim`, `R` window rows):
//!
//! * `Q`, `K`, `V` and the context: `[N, W]`, head `h` in columns `h·d .. (h+1)·d` (the layout of
//!   the projections; heads are concatenated exactly as Hugging Face does).
//! * The position projections `Kr` (c2p) and `Qr` (p2c): `[rows, W]`, window row `r` at row
//!   `first_row + r`.
//! * The relative index: `[len, len]`, `idx[i,j]` in `0..R` (window-relative).
//! * The probabilities: `[batch, heads, len, len]`; the c2p/p2c tables `Q·Krᵀ`, `K·Qrᵀ`:
//!   `[heads, N, R]`.

use super::Backend;
use crate::kernels::{MatmulSpec, MatrixLayout, RelativeScoresSpec, SoftmaxSpec, product, require};
use crate::{Error, Precision};

/// Shape of a disentangled attention over `batch` sequences of `len` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Tokens per sequence (queries = keys).
    pub len: usize,
    /// Width `d` of one head.
    pub head_dim: usize,
    /// Rows `R` of the relative window (0 without relative attention).
    pub rows: usize,
    /// The row of the position projections that holds window row 0.
    pub first_row: usize,
    /// The scale `s = sqrt(d·(1 + #relative terms))`; every score term is divided by it.
    pub scale: f32,
}

impl AttentionSpec {
    /// `heads · head_dim`, the row width of `Q`, `K`, `V`, the context and the projections.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// `batch · len`.
    pub fn tokens(&self) -> usize {
        self.batch * self.len
    }

    /// Elements of the probabilities, `batch · heads · len²`.
    pub fn scores(&self) -> usize {
        self.batch * self.heads * self.len * self.len
    }

    /// Elements of one c2p/p2c table, `heads · N · R`.
    pub fn table(&self) -> usize {
        self.heads * self.tokens() * self.rows
    }

    /// One head's `[len, d]` slice of a `[N, W]` activation, batched over `(batch, head)`.
    pub(crate) fn head_layout(&self) -> MatrixLayout {
        let width = self.width();
        MatrixLayout::row_major(width).batched(self.len * width, self.head_dim)
    }

    /// Score matrices `[batch, h, len, len]`, batched over `(batch, head)`.
    pub(crate) fn square_layout(&self) -> MatrixLayout {
        let len = self.len;
        MatrixLayout::row_major(len).batched(self.heads * len * len, len * len)
    }

    /// The shape of the c2p/p2c gather over this attention's window.
    pub(crate) fn relative_spec(&self) -> RelativeScoresSpec {
        RelativeScoresSpec {
            batch: self.batch,
            heads: self.heads,
            len: self.len,
            rows: self.rows,
            scale: self.scale,
        }
    }

    /// The shape of the masked softmax over this attention's scores.
    pub(crate) fn softmax_spec(&self) -> SoftmaxSpec {
        SoftmaxSpec {
            batch: self.batch,
            heads: self.heads,
            len: self.len,
        }
    }

    /// The operand contract of [`Backend::fused_attention`] (every backend's): `Q`, `K`, `V`
    /// and the context hold `N·W` elements and the mask `N`; with either position term the
    /// index holds `len²` elements and each projection present `(first_row + rows)·W`.
    /// Returns `N·W`.
    pub fn check(&self, operands: AttentionLengths) -> Result<usize, Error> {
        const KERNEL: &str = "fused_attention";
        let width = product(KERNEL, &[self.heads, self.head_dim])?;
        let activation = product(KERNEL, &[self.batch, self.len, width])?;
        for (name, len) in [
            ("query", operands.query),
            ("key", operands.key),
            ("value", operands.value),
            ("context", operands.context),
        ] {
            require(KERNEL, name, activation, len)?;
        }
        require(KERNEL, "mask", self.batch * self.len, operands.mask)?;
        if operands.pos_key.is_some() || operands.pos_query.is_some() {
            let index = operands.index.ok_or(Error::Missing {
                what: "relative index for relative attention",
            })?;
            require(KERNEL, "index", self.len * self.len, index)?;
            let table = product(KERNEL, &[self.first_row + self.rows, width])?;
            for (name, len) in [
                ("pos_key", operands.pos_key),
                ("pos_query", operands.pos_query),
            ] {
                if let Some(len) = len {
                    require(KERNEL, name, table, len)?;
                }
            }
        }
        Ok(activation)
    }
}

/// The element counts of an attention's operands ([`AttentionOperands`] and the context), as
/// [`AttentionSpec::check`] takes them; `None` for an operand that is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionLengths {
    /// `Q`.
    pub query: usize,
    /// `K`.
    pub key: usize,
    /// `V`.
    pub value: usize,
    /// The context written.
    pub context: usize,
    /// The padding mask.
    pub mask: usize,
    /// `Kr`.
    pub pos_key: Option<usize>,
    /// `Qr`.
    pub pos_query: Option<usize>,
    /// The relative index.
    pub index: Option<usize>,
}

/// What an attention reads (see the module docs for the layouts).
pub struct AttentionOperands<'a, B: Backend + ?Sized> {
    /// `Q`, `[N, W]`.
    pub query: &'a B::Tensor,
    /// `K`, `[N, W]`.
    pub key: &'a B::Tensor,
    /// `V`, `[N, W]`.
    pub value: &'a B::Tensor,
    /// `Kr`: present exactly when c2p scores are added.
    pub pos_key: Option<&'a B::Tensor>,
    /// `Qr`: present exactly when p2c scores are added.
    pub pos_query: Option<&'a B::Tensor>,
    /// The relative index `[len, len]`, required with either position term. `idx[i,j]`
    /// depends on `i − j` only (every relative-position index does; a fused kernel may read
    /// just its first row and column).
    pub index: Option<&'a B::Indices>,
    /// The padding mask `[batch, len]` (1 = token, 0 = padding).
    pub mask: &'a B::Tensor,
}

impl<B: Backend + ?Sized> Clone for AttentionOperands<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend + ?Sized> Copy for AttentionOperands<'_, B> {}

/// The intermediates of the composed attention: the probabilities `[batch, heads, len, len]`
/// and, for the position terms in use, the tables `[heads, N, R]`.
pub struct AttentionBuffers<'a, T> {
    /// The scores, softmaxed in place into the probabilities.
    pub probs: &'a mut T,
    /// `Q·Krᵀ` over the window (required with c2p).
    pub c2p: Option<&'a mut T>,
    /// `K·Qrᵀ` over the window (required with p2c).
    pub p2c: Option<&'a mut T>,
}

/// The attention probabilities into `buffers.probs`, from the unfused kernels in Hugging
/// Face's order of operations (SPEC §3.3–§3.5):
/// `P = masked_softmax(Q·Kᵀ/s + (c2p/s + p2c/s))` with
/// `c2p[i,j] = (Q_i·Kr[idx(i,j)])`, `p2c[i,j] = (K_j·Qr[idx(i,j)])`, the tables computed by
/// one matmul per head over the whole window. Masked keys get probability 0 and padded query
/// rows the uniform `1/len` ([`Backend::masked_softmax`]).
pub fn attention_probabilities<B: Backend + ?Sized>(
    backend: &B,
    ops: &AttentionOperands<'_, B>,
    buffers: AttentionBuffers<'_, B::Tensor>,
    spec: AttentionSpec,
) -> Result<(), Error> {
    attention_probabilities_at(backend, ops, buffers, spec, Precision::F32)
}

/// [`attention_probabilities`] with its products (scores and relative tables) at `products`
/// ([`Backend::matmul_reduced`]; the softmax stays f32): the attention of mixed-precision
/// training.
pub fn attention_probabilities_at<B: Backend + ?Sized>(
    backend: &B,
    ops: &AttentionOperands<'_, B>,
    buffers: AttentionBuffers<'_, B::Tensor>,
    spec: AttentionSpec,
    products: Precision,
) -> Result<(), Error> {
    let AttentionBuffers { probs, c2p, p2c } = buffers;
    let (len, d, heads, n) = (spec.len, spec.head_dim, spec.heads, spec.tokens());
    let head = spec.head_layout();
    // Content-to-content: Q·Kᵀ/s.
    backend.matmul_reduced(
        ops.query,
        ops.key,
        probs,
        &MatmulSpec {
            batch: [spec.batch, heads],
            m: len,
            n: len,
            k: d,
            a: head,
            b: head.transposed(),
            c: spec.square_layout(),
            alpha: 1.0 / spec.scale,
            beta: 0.0,
        },
        products,
    )?;
    if ops.pos_key.is_some() || ops.pos_query.is_some() {
        let index = ops.index.ok_or(Error::Missing {
            what: "relative index for relative attention",
        })?;
        let rows = spec.rows;
        let width = spec.width();
        // The window's rows of one head of a projection, a `[R, d]` matrix per head; every
        // token of the batch against it in one matmul per head.
        let window = MatrixLayout::row_major(width)
            .at(spec.first_row * width)
            .batched(0, d);
        let table_spec = MatmulSpec {
            batch: [1, heads],
            m: n,
            n: rows,
            k: d,
            a: MatrixLayout::row_major(width).batched(0, d),
            b: window.transposed(),
            c: MatrixLayout::row_major(rows).batched(0, n * rows),
            alpha: 1.0,
            beta: 0.0,
        };
        let c2p = match ops.pos_key {
            Some(kr) => {
                let table = c2p.ok_or(Error::Missing {
                    what: "c2p table buffer",
                })?;
                backend.matmul_reduced(ops.query, kr, table, &table_spec, products)?;
                Some(&*table)
            }
            None => None,
        };
        let p2c = match ops.pos_query {
            Some(qr) => {
                let table = p2c.ok_or(Error::Missing {
                    what: "p2c table buffer",
                })?;
                backend.matmul_reduced(ops.key, qr, table, &table_spec, products)?;
                Some(&*table)
            }
            None => None,
        };
        backend.add_relative_scores(probs, c2p, p2c, index, spec.relative_spec())?;
    }
    backend.masked_softmax(probs, ops.mask, spec.softmax_spec())
}

/// `context = P·V` per `(batch, head)`, written head-major into `[N, W]`.
pub fn attention_context<B: Backend + ?Sized>(
    backend: &B,
    probs: &B::Tensor,
    value: &B::Tensor,
    context: &mut B::Tensor,
    spec: AttentionSpec,
) -> Result<(), Error> {
    attention_context_at(backend, probs, value, context, spec, Precision::F32)
}

/// [`attention_context`] with the product at `products` ([`Backend::matmul_reduced`]).
pub fn attention_context_at<B: Backend + ?Sized>(
    backend: &B,
    probs: &B::Tensor,
    value: &B::Tensor,
    context: &mut B::Tensor,
    spec: AttentionSpec,
    products: Precision,
) -> Result<(), Error> {
    let head = spec.head_layout();
    backend.matmul_reduced(
        probs,
        value,
        context,
        &MatmulSpec {
            batch: [spec.batch, spec.heads],
            m: spec.len,
            n: spec.head_dim,
            k: spec.len,
            a: spec.square_layout(),
            b: head,
            c: head,
            alpha: 1.0,
            beta: 0.0,
        },
        products,
    )
}

/// The provided [`Backend::fused_attention`]: [`attention_probabilities`] then
/// [`attention_context`].
pub fn composed_attention<B: Backend + ?Sized>(
    backend: &B,
    ops: AttentionOperands<'_, B>,
    buffers: AttentionBuffers<'_, B::Tensor>,
    context: &mut B::Tensor,
    spec: AttentionSpec,
) -> Result<(), Error> {
    let AttentionBuffers { probs, c2p, p2c } = buffers;
    attention_probabilities(
        backend,
        &ops,
        AttentionBuffers {
            probs: &mut *probs,
            c2p,
            p2c,
        },
        spec,
    )?;
    attention_context(backend, probs, ops.value, context, spec)
}
