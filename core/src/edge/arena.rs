//! The caller's arena: how many bytes one sequence length needs, and its split into the
//! buffers of one inference (f32 activations, the relative-index vector, int8 activations).
//!
//! With `L` tokens, hidden size `H`, `h` heads of width `d` (`W = h·d`), FFN width `F`, `R`
//! relative rows (`≤ min(2L − 1, 2S)`) and `B = min(L, 8)` (the rows of the feed-forward, the
//! queries, the attention output and the RTD head computed at a time), attention runs one head
//! and one query row at a time (its scores, `[L]`, and its c2p row, `[R]`; the p2c terms are
//! computed where they are read) and the feed-forward in blocks, so neither `[h, L, L]` or
//! `[L, L]` scores, `[L, R]` position-score tables nor `[L, F]` activations are ever
//! materialised. The f32 part holds `L·H + B·F + B·d + 2·L·d + B·H + H + R + 3·L` values and
//! the `2L − 1` relative indices, plus, by storage type:
//!
//! * f32 and f16: the `[L, W]` context (sharing its buffer with the feed-forward block), the
//!   decoded `[R, d]` Kr and Qr of one head and a `max(H, W, F)` row (f16 weights are widened
//!   one row at a time);
//! * int8: no f32 context and no decoded tables. The context is quantised as each head
//!   produces it (`L·W` bytes, one scale per row and head, `L·h` values), the position terms
//!   are int8 products of the stored Kr and Qr with one head's quantised keys (`L·d` bytes, `L`
//!   scales) and query row (`d` bytes), the quantised input of a linear layer takes
//!   `max(L·H, B·F)` bytes, and a `max(H, d)` row holds an embedding row or one head's
//!   context row before it is quantised.
use super::EdgeError;
use super::cast::view_mut;
use super::format::DType;
use super::model::EdgeModel;
use crate::relative_position::{IndexWindow, used_index_range};

/// Rows of the feed-forward (and its int8 activations) processed at a time.
pub(crate) const FFN_BLOCK: usize = 8;

/// Element counts of the buffers for one sequence length.
#[derive(Debug, Clone, Copy)]
struct Plan {
    len: usize,
    window: IndexWindow,
    /// `[L, H]`.
    hidden: usize,
    /// `[B, F]` (int8) or `max([L, W], [B, F])`: the attention context (f32 and f16 only),
    /// then the feed-forward activations.
    wide: usize,
    /// `[L, d]`.
    head: usize,
    /// `[B, d]`: one block of one head's queries.
    query: usize,
    /// `[R, d]` for the decoded Kr and Qr of one head (0 when unused or int8).
    keys: usize,
    queries: usize,
    /// `[B, H]`.
    block: usize,
    /// `[H]`.
    cls: usize,
    /// `[L]`: one query row's scores.
    scores: usize,
    /// `[R]`: one query row's c2p terms (0 when unused).
    c2p: usize,
    /// `max(H, W, F)`, or `max(H, d)` for int8.
    row: usize,
    /// `[L, h]` scales of the int8 context (0 unless int8).
    context_scales: usize,
    /// `[L]` scales of one head's int8 keys (0 unless int8 with p2c).
    key_scales: usize,
    /// `2L − 1` relative indices (0 without relative attention).
    index: usize,
    /// int8 activations (0 unless the matrices are int8).
    quantized: usize,
    /// `[L, W]` int8 context (0 unless int8).
    context: usize,
    /// `[L, d]` int8 keys of one head (0 unless int8 with p2c).
    keys8: usize,
    /// `[d]` int8 query row (0 unless int8 with c2p).
    query8: usize,
}

fn overflow() -> EdgeError {
    EdgeError::ArenaTooSmall {
        needed: usize::MAX,
        len: 0,
    }
}

fn mul(a: usize, b: usize) -> Result<usize, EdgeError> {
    a.checked_mul(b).ok_or_else(overflow)
}

impl Plan {
    fn new(model: &EdgeModel<'_>, len: usize) -> Result<Self, EdgeError> {
        if len == 0 {
            return Err(EdgeError::EmptyInput);
        }
        let max = model.max_seq_len();
        if len > max {
            return Err(EdgeError::SequenceTooLong { len, max });
        }
        let cfg = model.config();
        let (h, w, d, f) = (
            cfg.hidden_size,
            cfg.all_head_size(),
            cfg.attention_head_size,
            cfg.intermediate_size,
        );
        let (c2p, p2c) = (cfg.uses_c2p(), cfg.uses_p2c());
        let window = if c2p || p2c {
            used_index_range(len, cfg).map_err(EdgeError::Config)?
        } else {
            IndexWindow { first: 0, rows: 0 }
        };
        let r = window.rows;
        let block = len.min(FFN_BLOCK);
        let projection = mul(r, d)?;
        let inter = mul(block, f)?;
        let int8 = model.dtype() == DType::I8;
        let only = |on: bool, n: usize| if on { n } else { 0 };
        let context = mul(len, w)?;
        Ok(Plan {
            len,
            window,
            hidden: mul(len, h)?,
            wide: if int8 { inter } else { context.max(inter) },
            head: mul(len, d)?,
            query: mul(block, d)?,
            keys: only(c2p && !int8, projection),
            queries: only(p2c && !int8, projection),
            block: mul(block, h)?,
            cls: h,
            scores: len,
            c2p: only(c2p, r),
            row: if int8 { h.max(d) } else { h.max(w).max(f) },
            context_scales: only(int8, mul(len, cfg.num_attention_heads)?),
            key_scales: only(int8 && p2c, len),
            index: only(c2p || p2c, 2 * len - 1),
            quantized: only(int8, mul(len, h)?.max(inter)),
            context: only(int8, context),
            keys8: only(int8 && p2c, mul(len, d)?),
            query8: only(int8 && c2p, d),
        })
    }

    /// f32 values, in carving order.
    fn floats(&self) -> [usize; 16] {
        let l = self.len;
        [
            self.hidden,
            self.wide,
            self.query,
            self.head,
            self.head,
            self.keys,
            self.queries,
            self.block,
            self.cls,
            self.scores,
            self.c2p,
            self.row,
            l,
            l,
            self.context_scales,
            self.key_scales,
        ]
    }

    /// int8 values, in carving order.
    fn bytes_i8(&self) -> [usize; 4] {
        [self.quantized, self.context, self.keys8, self.query8]
    }

    fn float_total(&self) -> Result<usize, EdgeError> {
        self.floats()
            .iter()
            .try_fold(0usize, |acc, &n| acc.checked_add(n))
            .ok_or_else(overflow)
    }

    /// Bytes: up to 3 of alignment, the f32 and u32 parts, the int8 part.
    fn bytes(&self) -> Result<usize, EdgeError> {
        let int8 = self
            .bytes_i8()
            .iter()
            .try_fold(3usize, |acc, &n| acc.checked_add(n))
            .ok_or_else(overflow)?;
        mul(
            self.float_total()?
                .checked_add(self.index)
                .ok_or_else(overflow)?,
            4,
        )?
        .checked_add(int8)
        .ok_or_else(overflow)
    }
}

/// Bytes of arena [`detect`](super::detect) needs for a sequence of `len` tokens (any start
/// alignment).
pub fn arena_bytes(model: &EdgeModel<'_>, len: usize) -> Result<usize, EdgeError> {
    Plan::new(model, len)?.bytes()
}

/// The buffers of one inference, carved from the arena.
pub(crate) struct Workspace<'w> {
    /// Tokens.
    pub len: usize,
    /// The relative-table rows this length reads.
    pub window: IndexWindow,
    /// Hidden states `[L, H]`.
    pub hidden: &'w mut [f32],
    /// The attention context, heads concatenated, `[L, W]` (f32 and f16 models); then the
    /// feed-forward activations of one block, `[B, F]`.
    pub wide: &'w mut [f32],
    /// One head's queries for one block of rows, `[B, d]`.
    pub query: &'w mut [f32],
    /// One head's keys and values, `[L, d]` each.
    pub key: &'w mut [f32],
    pub value: &'w mut [f32],
    /// One head's decoded Kr and Qr rows of the window, `[R, d]` (f32 and f16 models).
    pub pos_keys: &'w mut [f32],
    pub pos_queries: &'w mut [f32],
    /// Residual sums of one block of rows, `[B, H]`.
    pub block: &'w mut [f32],
    /// The `[CLS]` row of the hidden states, `[H]` (RTD head).
    pub cls: &'w mut [f32],
    /// One query row's scores, then probabilities, `[L]`.
    pub scores: &'w mut [f32],
    /// One query row's `Q·Krᵀ` over the window, `[R]`.
    pub c2p: &'w mut [f32],
    /// One decoded weight or table row.
    pub row: &'w mut [f32],
    /// Per-row scales of the int8 activations, `[L]`.
    pub row_scales: &'w mut [f32],
    /// All ones, `[L]` (the softmax mask: every token is valid).
    pub ones: &'w mut [f32],
    /// Scales of the int8 context, one per row and head, `[L, h]`.
    pub context_scales: &'w mut [f32],
    /// Scales of one head's int8 keys, `[L]`.
    pub key_scales: &'w mut [f32],
    /// `idx(i − j) − window.first` at `i − j + L − 1`, `[2L − 1]`.
    pub index: &'w mut [u32],
    /// int8 activations.
    pub quantized: &'w mut [i8],
    /// The int8 attention context, heads concatenated, `[L, W]`.
    pub context: &'w mut [i8],
    /// One head's int8 keys, `[L, d]`.
    pub keys8: &'w mut [i8],
    /// One int8 query row of one head, `[d]`.
    pub query8: &'w mut [i8],
}

fn take<'w, T>(rest: &mut &'w mut [T], n: usize) -> Result<&'w mut [T], EdgeError> {
    let (head, tail) = core::mem::take(rest)
        .split_at_mut_checked(n)
        .ok_or_else(overflow)?;
    *rest = tail;
    Ok(head)
}

impl<'w> Workspace<'w> {
    /// Carves the buffers for `len` tokens out of `arena`.
    pub fn new(model: &EdgeModel<'_>, len: usize, arena: &'w mut [u8]) -> Result<Self, EdgeError> {
        let plan = Plan::new(model, len)?;
        let needed = plan.bytes()?;
        if arena.len() < needed {
            return Err(EdgeError::ArenaTooSmall {
                needed,
                len: arena.len(),
            });
        }
        let skip = (4 - arena.as_ptr().addr() % 4) % 4;
        let mut bytes = &mut arena[skip..];
        let float_bytes = mul(plan.float_total()?, 4)?;
        let floats = take(&mut bytes, float_bytes)?;
        let index_bytes = take(&mut bytes, mul(plan.index, 4)?)?;
        let int8_bytes = plan.bytes_i8().iter().sum();
        let quantized = take(&mut bytes, int8_bytes)?;
        let misaligned = EdgeError::Misaligned { align: 4 };
        let mut floats = view_mut::<f32>(floats).ok_or(misaligned.clone())?;
        let index = view_mut::<u32>(index_bytes).ok_or(misaligned.clone())?;
        let mut int8 = view_mut::<i8>(quantized).ok_or(misaligned)?;
        let [
            hidden,
            wide,
            query,
            key,
            value,
            keys,
            queries,
            block,
            cls,
            scores,
            c2p,
            row,
            row_scales,
            ones,
            context_scales,
            key_scales,
        ] = plan.floats();
        let [quantized, context, keys8, query8] = plan.bytes_i8();
        let mut next = |n| take(&mut floats, n);
        let ws = Workspace {
            len,
            window: plan.window,
            hidden: next(hidden)?,
            wide: next(wide)?,
            query: next(query)?,
            key: next(key)?,
            value: next(value)?,
            pos_keys: next(keys)?,
            pos_queries: next(queries)?,
            block: next(block)?,
            cls: next(cls)?,
            scores: next(scores)?,
            c2p: next(c2p)?,
            row: next(row)?,
            row_scales: next(row_scales)?,
            ones: next(ones)?,
            context_scales: next(context_scales)?,
            key_scales: next(key_scales)?,
            index,
            quantized: take(&mut int8, quantized)?,
            context: take(&mut int8, context)?,
            keys8: take(&mut int8, keys8)?,
            query8: take(&mut int8, query8)?,
        };
        ws.ones.fill(1.0);
        Ok(ws)
    }
}
