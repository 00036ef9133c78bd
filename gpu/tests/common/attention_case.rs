//! Disentangled attention problems generated on the host, shared by the attention suites:
//! ragged tiles, every combination of position terms, log-bucketed and clamped relative
//! indices, padding down to a single valid token and fully padded sequences.

use deberta_core::Backend;
use deberta_core::backend::{AttentionOperands, AttentionSpec};
use deberta_core::relative_position::{log_bucket_position, relative_index};
use proptest::prelude::*;

use super::{data, up, up_ids};

/// One attention problem, generated on the host.
#[derive(Debug, Clone)]
pub struct Case {
    pub batch: usize,
    pub heads: usize,
    pub len: usize,
    pub head_dim: usize,
    pub c2p: bool,
    pub p2c: bool,
    /// Log-bucket size, maximum position and span of the relative index.
    pub buckets: (usize, usize, usize),
    /// Projection rows before the window (a projection computed over more rows).
    pub first_row: usize,
    /// Valid tokens per sequence (the rest is padding; 0 = fully padded).
    pub valid: Vec<usize>,
    /// Magnitude of Q and K (larger: peakier softmax).
    pub scale_qk: f32,
    pub seed: u64,
}

/// Host data of a case.
pub struct Problem {
    pub spec: AttentionSpec,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub kr: Vec<f32>,
    pub qr: Vec<f32>,
    pub index: Vec<u32>,
    pub mask: Vec<f32>,
}

/// A problem's tensors on one backend.
pub struct Tensors<B: Backend> {
    pub q: B::Tensor,
    pub k: B::Tensor,
    pub v: B::Tensor,
    pub kr: B::Tensor,
    pub qr: B::Tensor,
    pub index: B::Indices,
    pub mask: B::Tensor,
}

impl<B: Backend> Tensors<B> {
    /// Uploads `p` to `b`.
    pub fn upload(b: &B, p: &Problem) -> Self {
        Tensors {
            q: up(b, &p.q),
            k: up(b, &p.k),
            v: up(b, &p.v),
            kr: up(b, &p.kr),
            qr: up(b, &p.qr),
            index: up_ids(b, &p.index),
            mask: up(b, &p.mask),
        }
    }

    /// The attention operands of `case` (its position terms) over these tensors.
    pub fn operands(&self, case: &Case) -> AttentionOperands<'_, B> {
        AttentionOperands {
            query: &self.q,
            key: &self.k,
            value: &self.v,
            pos_key: case.c2p.then_some(&self.kr),
            pos_query: case.p2c.then_some(&self.qr),
            index: Some(&self.index),
            mask: &self.mask,
        }
    }
}

impl Case {
    /// The host data of the case.
    pub fn problem(&self) -> Problem {
        let (len, width) = (self.len, self.heads * self.head_dim);
        let (bucket_size, max_position, span) = self.buckets;
        let idx = |i: usize, j: usize| {
            let rel = log_bucket_position(i as i64 - j as i64, bucket_size, max_position);
            relative_index(rel, span)
        };
        let first = idx(0, len - 1);
        let rows = idx(len - 1, 0) - first + 1;
        let index: Vec<u32> = (0..len * len)
            .map(|e| (idx(e / len, e % len) - first) as u32)
            .collect();
        let n = self.batch * len;
        let table_rows = self.first_row + rows + 2;
        let mask = (0..n)
            .map(|t| f32::from(u8::from(t % len < self.valid[t / len])))
            .collect();
        let scale = (self.head_dim as f32
            * (1 + usize::from(self.c2p) + usize::from(self.p2c)) as f32)
            .sqrt();
        Problem {
            spec: AttentionSpec {
                batch: self.batch,
                heads: self.heads,
                len,
                head_dim: self.head_dim,
                rows,
                first_row: self.first_row,
                scale,
            },
            q: data(n * width, self.seed, self.scale_qk),
            k: data(n * width, self.seed ^ 1, self.scale_qk),
            v: data(n * width, self.seed ^ 2, 1.0),
            kr: data(table_rows * width, self.seed ^ 3, self.scale_qk),
            qr: data(table_rows * width, self.seed ^ 4, self.scale_qk),
            index,
            mask,
        }
    }
}

/// Cases over batch, heads, length, head width, position terms, relative index, projection
/// offset, score magnitude and padding.
pub fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1usize..=2,
        1usize..=3,
        1usize..=40,
        prop::sample::select(vec![1usize, 3, 8, 16, 17, 32, 64]),
        0u8..4,
        prop::sample::select(vec![(8usize, 16usize, 4usize), (8, 32, 8), (256, 512, 256)]),
        0usize..3,
        prop::sample::select(vec![0.5f32, 2.0, 6.0]),
        any::<u64>(),
    )
        .prop_flat_map(
            |(batch, heads, len, head_dim, terms, buckets, first_row, scale_qk, seed)| {
                // Valid tokens per sequence: anywhere in 0..=len, often full or a single one.
                let valid =
                    prop::collection::vec(prop_oneof![Just(len), Just(1usize), 0..=len], batch);
                valid.prop_map(move |valid| Case {
                    batch,
                    heads,
                    len,
                    head_dim,
                    c2p: terms & 1 != 0,
                    p2c: terms & 2 != 0,
                    buckets,
                    first_row,
                    valid,
                    scale_qk,
                    seed,
                })
            },
        )
}
