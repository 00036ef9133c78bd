//! The CPU backend's fused disentangled attention (inference): one `(sequence, head)` at a
//! time per thread, its scores, c2p/p2c tables and probabilities in per-thread scratch that
//! stays in the core's cache, instead of the composed path's whole-batch score and table
//! tensors, which every step streams through memory.
//!
//! Every step is the composed path's kernel on the same operands (the products on one batch
//! entry, which the composed path computes as one block of a batched product), so the context
//! is bit-identical to [`composed_attention`](crate::backend::composed_attention)'s. (With
//! the `std` feature only: without threads the composed path is as good.)

use alloc::vec;
use alloc::vec::Vec;

use super::parallel::SharedOutput;
use crate::Error;
use crate::backend::{AttentionLengths, AttentionOperands, AttentionSpec};
use crate::kernels::{self, MatmulSpec, MatrixLayout, RelativeScoresSpec, SoftmaxSpec};

use super::CpuBackend;

/// Per-thread scratch of one `(sequence, head)`: the `[len, len]` scores and the `[len, R]`
/// c2p and p2c tables.
struct Scratch {
    scores: Vec<f32>,
    c2p: Vec<f32>,
    p2c: Vec<f32>,
}

impl Scratch {
    fn new(spec: &AttentionSpec, c2p: bool, p2c: bool) -> Scratch {
        let table = spec.len * spec.rows;
        Scratch {
            scores: vec![0.0; spec.len * spec.len],
            c2p: vec![0.0; if c2p { table } else { 0 }],
            p2c: vec![0.0; if p2c { table } else { 0 }],
        }
    }
}

/// Whether [`fused_attention`] gives the composed path's bits for `spec`: its c2p/p2c tables
/// are products of one sequence (`len × R`), the composed path's of the whole batch
/// (`N × R`), and gemm sums tiny outputs in another order
/// ([`TINY_OUTPUT`](kernels::TINY_OUTPUT)), so both must be above that size or both at most
/// it. (Only sequences of about 11 tokens or fewer in a batch fail this.)
pub(super) fn fuses(spec: &AttentionSpec) -> bool {
    let one = spec.len.saturating_mul(spec.rows);
    let all = spec.tokens().saturating_mul(spec.rows);
    one > kernels::TINY_OUTPUT || all <= kernels::TINY_OUTPUT
}

/// `context = P·V` for every `(sequence, head)` of `ops`, as
/// [`Backend::fused_attention`](crate::backend::Backend::fused_attention) defines it.
pub(super) fn fused_attention(
    ops: AttentionOperands<'_, CpuBackend>,
    context: &mut [f32],
    spec: AttentionSpec,
) -> Result<(), Error> {
    let relative = ops.pos_key.is_some() || ops.pos_query.is_some();
    let index: &[u32] = match (relative, ops.index) {
        (true, Some(index)) => index,
        (true, None) => {
            return Err(Error::Missing {
                what: "relative index for relative attention",
            });
        }
        (false, _) => &[],
    };
    let activation = spec.check(AttentionLengths {
        query: ops.query.len(),
        key: ops.key.len(),
        value: ops.value.len(),
        context: context.len(),
        mask: ops.mask.len(),
        pos_key: ops.pos_key.map(Vec::len),
        pos_query: ops.pos_query.map(Vec::len),
        index: relative.then_some(index.len()),
    })?;
    if relative {
        spec.relative_spec().check_index(index)?;
    }
    let entries = spec.batch * spec.heads;
    if activation == 0 || entries == 0 {
        return Ok(());
    }
    let context = &mut context[..activation];
    let output = SharedOutput::new(context);
    let scratch = || Scratch::new(&spec, ops.pos_key.is_some(), ops.pos_query.is_some());
    use rayon::prelude::*;
    (0..entries)
        .into_par_iter()
        .try_for_each_init(scratch, |scratch, entry| {
            // SAFETY: `output` points at `context`, borrowed mutably for this whole function;
            // entry `(b, h)` writes only rows `b·len..(b+1)·len`, columns `h·d..(h+1)·d` of
            // it, which no other entry touches.
            unsafe { attend(&ops, index, scratch, output, entry, &spec) }
        })
}

/// One `(sequence b, head h)` entry (`entry = b·heads + h`): scores, relative terms, masked
/// softmax and `P·V` into its block of the context.
///
/// # Safety
///
/// The operands must have passed [`AttentionSpec::check`] and the index
/// [`RelativeScoresSpec::check_index`]; `context` must point at the checked context, and no
/// other thread may access this entry's block of it during the call.
unsafe fn attend(
    ops: &AttentionOperands<'_, CpuBackend>,
    index: &[u32],
    scratch: &mut Scratch,
    context: SharedOutput,
    entry: usize,
    spec: &AttentionSpec,
) -> Result<(), Error> {
    let (len, d, width) = (spec.len, spec.head_dim, spec.width());
    let (b, h) = (entry / spec.heads, entry % spec.heads);
    // This entry's `[len, d]` block of a `[N, W]` activation.
    let head = MatrixLayout::row_major(width).at(b * len * width + h * d);
    let product = |m, n, k, a, b, c, alpha| MatmulSpec {
        batch: [1, 1],
        m,
        n,
        k,
        a,
        b,
        c,
        alpha,
        beta: 0.0,
    };
    let scores = product(
        len,
        len,
        d,
        head,
        head.transposed(),
        MatrixLayout::row_major(len),
        1.0 / spec.scale,
    );
    kernels::matmul(ops.query, ops.key, &mut scratch.scores, &scores)?;
    // Row `first_row + r` of a projection, this head's columns: the window's `[R, d]` matrix.
    let window = MatrixLayout::row_major(width).at(spec.first_row * width + h * d);
    let table = product(
        len,
        spec.rows,
        d,
        head,
        window.transposed(),
        MatrixLayout::row_major(spec.rows),
        1.0,
    );
    if let Some(kr) = ops.pos_key {
        kernels::matmul(ops.query, kr, &mut scratch.c2p, &table)?;
    }
    if let Some(qr) = ops.pos_query {
        kernels::matmul(ops.key, qr, &mut scratch.p2c, &table)?;
    }
    if !index.is_empty() {
        let one = RelativeScoresSpec {
            batch: 1,
            heads: 1,
            ..spec.relative_spec()
        };
        let c2p = ops.pos_key.map(|_| &scratch.c2p[..]);
        let p2c = ops.pos_query.map(|_| &scratch.p2c[..]);
        kernels::add_relative_scores_rows(&mut scratch.scores, 0, c2p, p2c, index, one);
    }
    let one = SoftmaxSpec {
        batch: 1,
        heads: 1,
        len,
    };
    kernels::masked_softmax_rows(&mut scratch.scores, 0, &ops.mask[b * len..][..len], one);
    let pv = product(len, d, len, MatrixLayout::row_major(len), head, head, 1.0);
    pv.check(scratch.scores.len(), ops.value.len(), context.len())?;
    for block in pv.blocks(1) {
        // SAFETY: `pv` was checked against the whole context just above, and by the caller's
        // contract this entry's block of it (the output of `pv`) is ours alone.
        unsafe { kernels::matmul_block(&scratch.scores, ops.value, context.get(), &pv, block) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;
    use crate::backend::{AttentionBuffers, composed_attention};
    use crate::kernels::test_values::uniform;
    use crate::relative_position::{log_bucket_position, relative_index};
    use proptest::prelude::*;

    /// One attention problem: shape, position terms, log buckets `(size, max, span)`,
    /// projection rows before the window and valid tokens per sequence.
    #[derive(Debug, Clone)]
    struct Case {
        batch: usize,
        heads: usize,
        len: usize,
        head_dim: usize,
        terms: u8,
        buckets: (usize, usize, usize),
        first_row: usize,
        valid: Vec<usize>,
        seed: u32,
    }

    /// The shape of `case` and its context from the backend's fused attention and from the
    /// composed kernels.
    fn contexts(case: &Case) -> (AttentionSpec, Vec<f32>, Vec<f32>) {
        let (len, width) = (case.len, case.heads * case.head_dim);
        let (size, max, span) = case.buckets;
        let idx = |i: usize, j: usize| {
            relative_index(log_bucket_position(i as i64 - j as i64, size, max), span)
        };
        let first = idx(0, len - 1);
        let rows = idx(len - 1, 0) - first + 1;
        let index: Vec<u32> = (0..len * len)
            .map(|e| (idx(e / len, e % len) - first) as u32)
            .collect();
        let n = case.batch * len;
        let mask: Vec<f32> = (0..n)
            .map(|t| f32::from(u8::from(t % len < case.valid[t / len])))
            .collect();
        let (c2p, p2c) = (case.terms & 1 != 0, case.terms & 2 != 0);
        let terms = 1 + usize::from(c2p) + usize::from(p2c);
        let spec = AttentionSpec {
            batch: case.batch,
            heads: case.heads,
            len,
            head_dim: case.head_dim,
            rows,
            first_row: case.first_row,
            scale: ((case.head_dim * terms) as f32).sqrt(),
        };
        let data = |n: usize, salt: u32| -> Vec<f32> {
            uniform(n, case.seed ^ salt)
                .iter()
                .map(|v| 4.0 * v)
                .collect()
        };
        let table = (case.first_row + rows) * width;
        let (q, k, v) = (data(n * width, 1), data(n * width, 2), data(n * width, 3));
        let (kr, qr) = (data(table, 4), data(table, 5));
        let ops = AttentionOperands::<CpuBackend> {
            query: &q,
            key: &k,
            value: &v,
            pos_key: c2p.then_some(&kr),
            pos_query: p2c.then_some(&qr),
            index: Some(&index),
            mask: &mask,
        };
        let (mut probs, mut c2p_table, mut p2c_table) = (
            vec![0.0; spec.scores()],
            vec![0.0; spec.table()],
            vec![0.0; spec.table()],
        );
        // The backend's method (fused where `fuses`, else composed) against the composed path.
        let mut outputs = [vec![f32::NAN; n * width], vec![f32::NAN; n * width]];
        for (fused, context) in outputs.iter_mut().enumerate() {
            let buffers = AttentionBuffers {
                probs: &mut probs,
                c2p: Some(&mut c2p_table),
                p2c: Some(&mut p2c_table),
            };
            if fused == 0 {
                CpuBackend
                    .fused_attention(ops, buffers, context, spec)
                    .unwrap();
            } else {
                composed_attention(&CpuBackend, ops, buffers, context, spec).unwrap();
            }
        }
        let [fused, composed] = outputs;
        (spec, fused, composed)
    }

    fn case_strategy() -> impl Strategy<Value = Case> {
        (
            1usize..=3,
            1usize..=3,
            1usize..=40,
            prop::sample::select(vec![1usize, 8, 17, 32, 64]),
            0u8..4,
            prop::sample::select(vec![(8usize, 16usize, 4usize), (256, 512, 256)]),
            0usize..3,
            any::<u32>(),
        )
            .prop_flat_map(
                |(batch, heads, len, head_dim, terms, buckets, first_row, seed)| {
                    let valid = prop::collection::vec(prop_oneof![Just(len), 0..=len], batch);
                    valid.prop_map(move |valid| Case {
                        batch,
                        heads,
                        len,
                        head_dim,
                        terms,
                        buckets,
                        first_row,
                        valid,
                        seed,
                    })
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn fused_attention_equals_the_composed_kernels_bit_for_bit(case in case_strategy()) {
            let (_, fused, composed) = contexts(&case);
            prop_assert!(
                fused.iter().zip(&composed).all(|(a, b)| a.to_bits() == b.to_bits()),
                "fused and composed contexts differ"
            );
        }
    }

    #[test]
    fn fused_attention_equals_the_composed_kernels_on_the_published_shapes() {
        // xsmall's heads at 128 and 300 tokens (log buckets past 128), padding in one sequence.
        for (len, valid) in [(128, vec![128, 97]), (300, vec![300, 1])] {
            let case = Case {
                batch: 2,
                heads: 2,
                len,
                head_dim: 64,
                terms: 3,
                buckets: (256, 512, 256),
                first_row: 1,
                valid,
                seed: 7,
            };
            let (spec, fused, composed) = contexts(&case);
            assert!(fuses(&spec), "{len} tokens run fused");
            assert!(
                fused
                    .iter()
                    .zip(&composed)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "fused and composed contexts differ at {len} tokens"
            );
        }
    }

    #[test]
    fn only_batches_of_very_short_sequences_fall_back_to_the_composed_path() {
        let spec = |batch, len, rows| AttentionSpec {
            batch,
            heads: 2,
            len,
            head_dim: 64,
            rows,
            first_row: 0,
            scale: 8.0,
        };
        // One sequence: the same products either way.
        assert!(fuses(&spec(1, 3, 5)));
        // 17 tokens over 8 window rows: 136 table elements per sequence, 272 per batch of two.
        assert!(!fuses(&spec(2, 17, 8)));
        assert!(fuses(&spec(8, 17, 33)));
        assert!(fuses(&spec(8, 128, 255)));
    }

    #[test]
    fn fused_attention_rejects_a_short_operand_and_a_bad_index() {
        let (len, width) = (4, 8);
        let spec = AttentionSpec {
            batch: 1,
            heads: 1,
            len,
            head_dim: width,
            rows: 7,
            first_row: 0,
            scale: 4.0,
        };
        let x = vec![0.5f32; len * width];
        let table = vec![0.5f32; 7 * width];
        let mask = vec![1.0f32; len];
        let index = vec![3u32; len * len];
        let mut bad = index.clone();
        bad[5] = 7;
        let mut context = vec![0.0f32; len * width];
        let ops = |index| AttentionOperands::<CpuBackend> {
            query: &x,
            key: &x,
            value: &x,
            pos_key: Some(&table),
            pos_query: None,
            index,
            mask: &mask,
        };
        assert!(fused_attention(ops(Some(&index)), &mut context, spec).is_ok());
        assert!(fused_attention(ops(None), &mut context, spec).is_err());
        assert!(fused_attention(ops(Some(&bad)), &mut context, spec).is_err());
        assert!(fused_attention(ops(Some(&index)), &mut context[..8], spec).is_err());
    }
}
