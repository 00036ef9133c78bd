//! The registry of WGSL kernels: which shader file each lives in, its entry point, and the
//! storage buffers it binds (binding 0 is always the shader's `Params` uniform; bindings 1.. are
//! the storage buffers in the order listed here, which the WGSL declares with the same access).

use std::borrow::Cow;

use crate::adapter::CooperativeShape;

/// Threads per workgroup of the one-thread-per-element kernels.
pub(crate) const ELEMENTWISE_WG: u32 = 256;
/// Threads per workgroup of the one-workgroup-per-row reductions.
pub(crate) const ROW_WG: u32 = 128;
/// Threads per side of a matmul workgroup (every matmul kernel is `MATMUL_THREADS²` threads).
pub(crate) const MATMUL_THREADS: u32 = 16;
/// Elements of the inner dimension per workgroup-memory stage of the tiled matmul.
pub(crate) const TILE_K: u32 = 16;
/// Elements each thread of `reduce_sum` adds before the tree.
pub(crate) const SUM_ITEMS: u32 = 8;
/// Tensors whose squares one `reduce_squares_many` dispatch sums (its bindings: these and the
/// partials, WebGPU's default limit of eight storage buffers per shader stage).
pub(crate) const SUM_SOURCES: u32 = 7;
/// Tensors one `adam_update_many` dispatch updates: four bindings each and the global Σ g²
/// (29 storage buffers; adapters that offer fewer update one tensor per dispatch).
pub(crate) const ADAM_SOURCES: u32 = 7;
/// Rows per partial sum of the LayerNorm γ/β gradients (and of `sum_rows`).
pub(crate) const PARAM_CHUNK_ROWS: u32 = 64;
/// Queries (and keys) per tile of the fused attention.
pub(crate) const ATTN_TILE: u32 = 32;
/// Threads per side of a fused-attention workgroup (`ATTN_THREADS²` threads, each owning
/// `ATTN_BLOCK²` scores of a tile).
pub(crate) const ATTN_THREADS: u32 = 8;
/// Scores per thread per side of a tile.
pub(crate) const ATTN_BLOCK: u32 = 4;
/// Columns of a head staged per step of the fused attention's score dots.
pub(crate) const ATTN_CHUNK: u32 = 16;
/// Widest head the fused attention takes (wider ones run the unfused kernels).
pub(crate) const ATTN_MAX_HEAD_DIM: u32 = 64;

/// The options of a device that change the text of its kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Variant {
    /// Workgroup reductions over subgroups (a device opened with `SUBGROUP`), else a tree in
    /// workgroup memory.
    pub(crate) subgroup_reductions: bool,
    /// The tiled matmuls read each step's operands into registers during the step before
    /// ([`crate::DeviceOptions::matmul_prefetch`]).
    pub(crate) matmul_prefetch: bool,
    /// The configuration of the cooperative-matrix kernel (compiled only on a device opened
    /// with cooperative matrices, in the configuration its adapter reports).
    pub(crate) cooperative: CooperativeShape,
    /// The f16 matmuls round their operands to nearest even before converting them
    /// ([`Operands::F16`]); off where the device's probe found the driver's conversion does.
    pub(crate) f16_rounded: bool,
}

impl Default for Variant {
    /// No subgroup reductions, no prefetching, tensor-core matrices, f16 operands rounded by
    /// the kernels.
    fn default() -> Self {
        Variant {
            subgroup_reductions: false,
            matmul_prefetch: false,
            cooperative: CooperativeShape::TENSOR_CORES,
            f16_rounded: true,
        }
    }
}

/// A WGSL source file (one kernel family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    Elementwise,
    /// The matmul kernels whose tiled kernel holds 2×2 outputs per thread (32-wide tiles).
    Matmul32,
    /// 4×4 outputs per thread (64-wide tiles); also the home of the thin-product and split-K
    /// sum kernels, which have no register block.
    Matmul64,
    /// 8×8 outputs per thread (128-wide tiles).
    Matmul128,
    /// `Matmul32` with f16 operands (`enable f16;`: only on devices with `SHADER_F16`).
    Matmul32F16,
    /// `Matmul64` with f16 operands.
    Matmul64F16,
    /// `Matmul128` with f16 operands.
    Matmul128F16,
    /// `Matmul64` with each thread's 4×4 outputs contiguous, read from vec4 tiles.
    Matmul64Vec4,
    /// `Matmul128` with each thread's 8×8 outputs contiguous, read from vec4 tiles.
    Matmul128Vec4,
    /// `Matmul64Vec4` with f16 operands.
    Matmul64Vec4F16,
    /// `Matmul128Vec4` with f16 operands.
    Matmul128Vec4F16,
    /// The f16 products on cooperative matrices (`enable wgpu_cooperative_matrix;`: only on
    /// devices opened with `EXPERIMENTAL_COOPERATIVE_MATRIX`), one subgroup per workgroup.
    MatmulCooperative,
    /// `MatmulCooperative` with 2 × 2 subgroups per workgroup sharing each staged step.
    MatmulCooperativeWide,
    /// `MatmulCooperative` with 2 × 2 accumulators per subgroup (tiles half as wide).
    MatmulCooperativeSmall,
    /// The probe of the driver's f32 → f16 conversion (`enable f16;`).
    F16Probe,
    LayerNorm,
    Softmax,
    RelativeScores,
    Embedding,
    Reduce,
    /// The first stage of many sums at once (`reduce_many.wgsl`).
    ReduceMany,
    Loss,
    Optimizer,
    /// The update of many tensors at once (`optimizer_many.wgsl`).
    OptimizerMany,
    Dropout,
    Sampling,
    /// The tiled attention forward of inference and training (`philox.wgsl`,
    /// `f16_round.wgsl` and `attention_tile.wgsl` prepended).
    FusedAttention,
    /// The training attention backward's query-owned pass.
    AttentionBackwardQuery,
    /// The training attention backward's key-owned pass.
    AttentionBackwardKey,
}

impl Shader {
    /// The WGSL text for a device of `variant` (the random-number kernels get `philox.wgsl`
    /// prepended, the kernels that reduce over a workgroup `row_reduce.wgsl` and the
    /// reductions over subgroups or the tree in workgroup memory; the matmuls are written for
    /// their block, layout and prefetching by
    /// [`matmul_source`](crate::matmul_source::matmul_source)).
    pub(crate) fn source(self, variant: Variant) -> Cow<'static, str> {
        let Variant {
            subgroup_reductions,
            matmul_prefetch: prefetched,
            cooperative,
            f16_rounded,
        } = variant;
        use crate::matmul_source::BlockLayout::{Contiguous, Strided};
        use crate::matmul_source::{Operands, cooperative_source, matmul_source};
        let (f32, f16) = (
            Operands::F32,
            Operands::F16 {
                rounded: f16_rounded,
            },
        );
        let reducing = |body: &str| -> Cow<'static, str> {
            let reductions = match subgroup_reductions {
                true => include_str!("shaders/row_reduce_subgroup.wgsl"),
                false => include_str!("shaders/row_reduce_tree.wgsl"),
            };
            [include_str!("shaders/row_reduce.wgsl"), reductions, body]
                .concat()
                .into()
        };
        Cow::Borrowed(match self {
            Shader::Matmul32 => return matmul_source(2, Strided, f32, prefetched).into(),
            Shader::Matmul64 => return matmul_source(4, Strided, f32, prefetched).into(),
            Shader::Matmul128 => return matmul_source(8, Strided, f32, prefetched).into(),
            Shader::Matmul32F16 => return matmul_source(2, Strided, f16, prefetched).into(),
            Shader::Matmul64F16 => return matmul_source(4, Strided, f16, prefetched).into(),
            Shader::Matmul128F16 => return matmul_source(8, Strided, f16, prefetched).into(),
            Shader::Matmul64Vec4 => return matmul_source(4, Contiguous, f32, prefetched).into(),
            Shader::Matmul128Vec4 => return matmul_source(8, Contiguous, f32, prefetched).into(),
            Shader::Matmul64Vec4F16 => {
                return matmul_source(4, Contiguous, f16, prefetched).into();
            }
            Shader::Matmul128Vec4F16 => {
                return matmul_source(8, Contiguous, f16, prefetched).into();
            }
            Shader::MatmulCooperative => {
                return cooperative_source(cooperative, f16_rounded, 1, 4).into();
            }
            Shader::MatmulCooperativeWide => {
                return cooperative_source(cooperative, f16_rounded, 2, 4).into();
            }
            Shader::MatmulCooperativeSmall => {
                return cooperative_source(cooperative, f16_rounded, 1, 2).into();
            }
            Shader::F16Probe => include_str!("shaders/f16_probe.wgsl"),
            Shader::Elementwise => include_str!("shaders/elementwise.wgsl"),
            Shader::LayerNorm => return reducing(include_str!("shaders/layer_norm.wgsl")),
            Shader::Softmax => return reducing(include_str!("shaders/softmax.wgsl")),
            Shader::RelativeScores => include_str!("shaders/relative_scores.wgsl"),
            Shader::Embedding => include_str!("shaders/embedding.wgsl"),
            Shader::Reduce => return reducing(include_str!("shaders/reduce.wgsl")),
            Shader::ReduceMany => return reducing(&reduce_many_source()),
            Shader::Loss => return reducing(include_str!("shaders/loss.wgsl")),
            Shader::Optimizer => concat!(
                include_str!("shaders/adam.wgsl"),
                include_str!("shaders/optimizer.wgsl")
            ),
            Shader::OptimizerMany => return optimizer_many_source().into(),
            Shader::Dropout => concat!(
                include_str!("shaders/philox.wgsl"),
                include_str!("shaders/dropout.wgsl")
            ),
            Shader::Sampling => concat!(
                include_str!("shaders/philox.wgsl"),
                include_str!("shaders/sampling.wgsl")
            ),
            Shader::FusedAttention => concat!(
                include_str!("shaders/philox.wgsl"),
                include_str!("shaders/f16_round.wgsl"),
                include_str!("shaders/attention_tile.wgsl"),
                include_str!("shaders/fused_attention.wgsl")
            ),
            Shader::AttentionBackwardQuery => concat!(
                include_str!("shaders/philox.wgsl"),
                include_str!("shaders/f16_round.wgsl"),
                include_str!("shaders/attention_tile.wgsl"),
                include_str!("shaders/attention_backward.wgsl"),
                include_str!("shaders/attention_backward_query.wgsl")
            ),
            Shader::AttentionBackwardKey => concat!(
                include_str!("shaders/philox.wgsl"),
                include_str!("shaders/f16_round.wgsl"),
                include_str!("shaders/attention_tile.wgsl"),
                include_str!("shaders/attention_backward.wgsl"),
                include_str!("shaders/attention_backward_key.wgsl")
            ),
        })
    }

    /// Bytes of the shader's `Params` uniform.
    pub(crate) const fn params_size(self) -> u64 {
        use crate::params::*;
        (match self {
            Shader::Elementwise => size_of::<ElementwiseParams>(),
            Shader::Matmul32
            | Shader::Matmul64
            | Shader::Matmul128
            | Shader::Matmul32F16
            | Shader::Matmul64F16
            | Shader::Matmul128F16
            | Shader::Matmul64Vec4
            | Shader::Matmul128Vec4
            | Shader::Matmul64Vec4F16
            | Shader::Matmul128Vec4F16
            | Shader::MatmulCooperative
            | Shader::MatmulCooperativeWide
            | Shader::MatmulCooperativeSmall => size_of::<MatmulParams>(),
            Shader::F16Probe => size_of::<F16ProbeParams>(),
            Shader::LayerNorm => size_of::<LayerNormParams>(),
            Shader::Softmax => size_of::<SoftmaxParams>(),
            Shader::RelativeScores => size_of::<RelativeParams>(),
            Shader::Embedding => size_of::<EmbeddingParams>(),
            Shader::Reduce => size_of::<ReduceParams>(),
            Shader::ReduceMany => size_of::<ReduceManyParams>(),
            Shader::Loss => size_of::<LossParams>(),
            Shader::Optimizer => size_of::<AdamParams>(),
            Shader::OptimizerMany => size_of::<AdamManyParams>(),
            Shader::Dropout => size_of::<DropoutParams>(),
            Shader::Sampling => size_of::<SamplingParams>(),
            Shader::FusedAttention
            | Shader::AttentionBackwardQuery
            | Shader::AttentionBackwardKey => size_of::<AttentionParams>(),
        }) as u64
    }
}

/// `reduce_many.wgsl` with its `// @sources` line written out for [`SUM_SOURCES`] sources: their
/// bindings and `source_squares`, one case (with its own loop over the thread's elements, as
/// `reduce_sum` sums them) per source.
fn reduce_many_source() -> String {
    use std::fmt::Write;
    let mut sources = String::new();
    for t in 0..SUM_SOURCES {
        let _ = writeln!(
            sources,
            "@group(0) @binding({}) var<storage, read> src{t}: array<f32>;",
            t + 2
        );
    }
    sources.push_str(
        "fn source_squares(t: u32, first: u32, n: u32, lid: u32) -> f32 {\n    var s = 0.0;\n    switch t {\n",
    );
    for t in 0..SUM_SOURCES {
        let case = match t + 1 == SUM_SOURCES {
            true => "default".to_string(),
            false => format!("case {t}u"),
        };
        let _ = writeln!(
            sources,
            "        {case}: {{\n            for (var q = 0u; q < SUM_ITEMS; q += 1u) {{\n                \
             let e = first + q * ROW_WG + lid;\n                if (e < n) {{\n                    \
             let v = src{t}[e];\n                    s += v * v;\n                }}\n            \
             }}\n        }}"
        );
    }
    sources.push_str("    }\n    return s;\n}\n");
    include_str!("shaders/reduce_many.wgsl").replace("// @sources\n", &sources)
}

/// `optimizer_many.wgsl` after `adam.wgsl`, its `// @sources` line written out for
/// [`ADAM_SOURCES`] sources: their bindings and `update_source`, one case per source.
fn optimizer_many_source() -> String {
    use std::fmt::Write;
    let mut sources = String::new();
    for t in 0..ADAM_SOURCES {
        let first = 2 + 4 * t;
        for (offset, name, access) in [
            (0, "param", "read_write"),
            (1, "m", "read_write"),
            (2, "v", "read_write"),
            (3, "grad", "read"),
        ] {
            let _ = writeln!(
                sources,
                "@group(0) @binding({}) var<storage, {access}> {name}{t}: array<f32>;",
                first + offset
            );
        }
    }
    sources.push_str("fn update_source(t: u32, i: u32, scale: f32, c: AdamConstants) {\n");
    for t in 0..ADAM_SOURCES {
        let test = match t {
            0 => "    if (t == 0u) {".to_string(),
            _ if t + 1 == ADAM_SOURCES => " else {".to_string(),
            _ => format!(" else if (t == {t}u) {{"),
        };
        let _ = write!(
            sources,
            "{test}\n        \
             let u = adam_element(param{t}[i], m{t}[i], v{t}[i], grad{t}[i] * scale, c);\n        \
             param{t}[i] = u.x;\n        m{t}[i] = u.y;\n        v{t}[i] = u.z;\n    }}"
        );
    }
    sources.push_str("\n}\n");
    [
        include_str!("shaders/adam.wgsl"),
        &include_str!("shaders/optimizer_many.wgsl").replace("// @sources\n", &sources),
    ]
    .concat()
}

/// How a kernel binds a storage buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

use Access::{Read as R, ReadWrite as W};

macro_rules! kernels {
    ($($(#[$meta:meta])* $name:ident => $shader:ident, $entry:literal, [$($access:ident),*];)*) => {
        /// One compute entry point.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum Kernel {
            $($(#[$meta])* $name,)*
        }

        impl Kernel {
            /// Every kernel.
            #[cfg(test)]
            pub(crate) const ALL: &'static [Kernel] = &[$(Kernel::$name,)*];

            /// The shader file it lives in.
            pub(crate) const fn shader(self) -> Shader {
                match self { $(Kernel::$name => Shader::$shader,)* }
            }

            /// Its entry point.
            pub(crate) const fn entry(self) -> &'static str {
                match self { $(Kernel::$name => $entry,)* }
            }

            /// Its storage bindings 1.., in order.
            pub(crate) const fn bindings(self) -> &'static [Access] {
                match self { $(Kernel::$name => &[$($access),*],)* }
            }
        }
    };
}

kernels! {
    /// `dst = alpha`.
    Fill => Elementwise, "fill", [W];
    /// `dst += src0`.
    AddAssign => Elementwise, "add_assign", [W, R];
    /// `dst[r, c] += src0[c]`.
    AddBias => Elementwise, "add_bias", [W, R];
    /// `dst[r, c] *= src0[r]`.
    ScaleRows => Elementwise, "scale_rows", [W, R];
    /// `dst *= alpha`.
    Scale => Elementwise, "scale", [W];
    /// `dst = act(src0)`.
    Activation => Elementwise, "activation", [W, R];
    /// `dst (+)= src1 · act'(src0)`.
    ActivationBackward => Elementwise, "activation_backward", [W, R, R];
    /// `dst[b, i] = src0[b, row] + src0[b, i]`.
    AddSequenceRow => Elementwise, "add_sequence_row", [W, R];
    /// Backward of `AddSequenceRow`.
    AddSequenceRowBackward => Elementwise, "add_sequence_row_backward", [W, R];
    /// Workgroup-tiled matmul, 32×32 tiles (2×2 outputs per thread): C, bias, residual, A, B
    /// (the bias and the residual, added as C is stored where the parameters say so; every
    /// matmul kernel binds them second and third). (The larger tiles' kernels bind A and B a
    /// second time, as the vec4 views they read groups of four operands through; a 32-wide
    /// tile's thread loads two elements per operand and step.)
    MatmulTiled32 => Matmul32, "matmul_tiled", [W, R, R, R, R];
    /// Workgroup-tiled matmul, 64×64 tiles (4×4 outputs per thread).
    MatmulTiled64 => Matmul64, "matmul_tiled", [W, R, R, R, R, R, R];
    /// Workgroup-tiled matmul, 128×128 tiles (8×8 outputs per thread).
    MatmulTiled128 => Matmul128, "matmul_tiled", [W, R, R, R, R, R, R];
    /// One-thread-per-output matmul.
    MatmulSmall => Matmul64, "matmul_small", [W, R, R, R, R];
    /// `MatmulTiled32` with f16 operands.
    MatmulTiled32F16 => Matmul32F16, "matmul_tiled", [W, R, R, R, R];
    /// `MatmulTiled64` with f16 operands.
    MatmulTiled64F16 => Matmul64F16, "matmul_tiled", [W, R, R, R, R, R, R];
    /// `MatmulTiled128` with f16 operands.
    MatmulTiled128F16 => Matmul128F16, "matmul_tiled", [W, R, R, R, R, R, R];
    /// `MatmulSmall` with f16 operands.
    MatmulSmallF16 => Matmul64F16, "matmul_small", [W, R, R, R, R];
    /// `MatmulTiled64` with contiguous 4×4 blocks read from vec4 tiles.
    MatmulTiled64Vec4 => Matmul64Vec4, "matmul_tiled", [W, R, R, R, R, R, R];
    /// `MatmulTiled128` with contiguous 8×8 blocks read from vec4 tiles.
    MatmulTiled128Vec4 => Matmul128Vec4, "matmul_tiled", [W, R, R, R, R, R, R];
    /// `MatmulTiled64Vec4` with f16 operands.
    MatmulTiled64Vec4F16 => Matmul64Vec4F16, "matmul_tiled", [W, R, R, R, R, R, R];
    /// `MatmulTiled128Vec4` with f16 operands.
    MatmulTiled128Vec4F16 => Matmul128Vec4F16, "matmul_tiled", [W, R, R, R, R, R, R];
    /// f16 products on cooperative matrices, tiles of four matrix sides (64 on tensor cores),
    /// one subgroup per workgroup: C, bias, residual, A, B (and A, B again as vec4 views, like
    /// every tiled kernel).
    MatmulCooperative => MatmulCooperative, "matmul_cooperative", [W, R, R, R, R, R, R];
    /// `MatmulCooperative` on tiles of eight matrix sides (128 on tensor cores), four subgroups
    /// per workgroup.
    MatmulCooperativeWide => MatmulCooperativeWide, "matmul_cooperative", [W, R, R, R, R, R, R];
    /// `MatmulCooperative` on tiles of two matrix sides (32 on tensor cores), one subgroup of
    /// 2 × 2 accumulators per workgroup: four times the workgroups of a small product.
    MatmulCooperativeSmall => MatmulCooperativeSmall, "matmul_cooperative", [W, R, R, R, R, R, R];
    /// `output[i] = f32(f16(input[i]))` with the driver's conversion: output, input.
    F16Probe => F16Probe, "f16_probe", [W, R];
    /// Split-K: `C = α·Σ slabs + β·C (+ bias) (+ residual)`: C, bias, residual, slabs.
    MatmulSumSplits => Matmul64, "matmul_sum_splits", [W, R, R, R];
    /// LayerNorm forward: out, stats, x, γ, β.
    LayerNorm => LayerNorm, "layer_norm", [W, W, R, R, R];
    /// LayerNorm input gradient: dx, x, γ, stats, dout.
    LayerNormBackward => LayerNorm, "layer_norm_backward", [W, R, R, R, R];
    /// Per-chunk γ/β gradient partials: partials, x, stats, dout.
    LayerNormParamPartials => LayerNorm, "layer_norm_param_partials", [W, R, R, R];
    /// In-place masked softmax: scores, mask.
    MaskedSoftmax => Softmax, "masked_softmax", [W, R];
    /// In-place masked softmax backward: grad, mask, probs.
    MaskedSoftmaxBackward => Softmax, "masked_softmax_backward", [W, R, R];
    /// Gather-add of c2p/p2c: scores, c2p, p2c, index.
    AddRelativeScores => RelativeScores, "add_relative_scores", [W, R, R, R];
    /// Scatter of dscores into dc2p: dc2p, dscores, index.
    RelativeBackwardC2p => RelativeScores, "relative_scores_backward_c2p", [W, R, R];
    /// Scatter of dscores into dp2c: dp2c, dscores, index.
    RelativeBackwardP2c => RelativeScores, "relative_scores_backward_p2c", [W, R, R];
    /// Row gather: out, table, ids.
    EmbeddingLookup => Embedding, "embedding_lookup", [W, R, R];
    /// Row scatter-add: dtable, dout, ids.
    EmbeddingBackward => Embedding, "embedding_backward", [W, R, R];
    /// One stage of a sum: partials, input.
    ReduceSum => Reduce, "reduce_sum", [W, R];
    /// The first stage of up to `SUM_SOURCES` sums of squares: partials, the sources.
    ReduceSquaresMany => ReduceMany, "reduce_squares_many", [W, R, R, R, R, R, R, R];
    /// Both halves' column sums of `[rows, 2·cols]`, added to two outputs: first out, input,
    /// second out.
    SumColumnPairs => Reduce, "sum_column_pairs", [W, R, W];
    /// Column sums over row chunks: out, input.
    SumColumns => Reduce, "sum_columns", [W, R];
    /// losses, dlogits, logits, targets.
    CrossEntropy => Loss, "cross_entropy", [W, W, R, R];
    /// losses, dlogits, logits, labels, weights.
    BceWithLogits => Loss, "bce_with_logits", [W, W, R, R, R];
    /// param, m, v, grad, Σ squared norms.
    AdamUpdate => Optimizer, "adam_update", [W, W, W, R, R];
    /// The update of up to `ADAM_SOURCES` tensors: Σ g², then param, m, v, grad of each.
    AdamUpdateMany => OptimizerMany, "adam_update_many", [R,
        W, W, W, R, W, W, W, R, W, W, W, R, W, W, W, R, W, W, W, R, W, W, W, R, W, W, W, R];
    /// In-place dropout.
    Dropout => Dropout, "dropout", [W];
    /// Sampled ids, logits.
    SampleCategorical => Sampling, "sample_categorical", [W, R];
    /// Fused attention forward (inference, and training's with stats and dropout): context,
    /// stats, Q, K, V, Kr, Qr, index, mask.
    FusedAttention => FusedAttention, "fused_attention", [W, W, R, R, R, R, R, R, R];
    /// dQ pass: dQ, dc2p, drows, dcontext, context, stats, Q, K, V, Kr, Qr, index, mask.
    AttentionBackwardQuery => AttentionBackwardQuery, "attention_backward_query",
        [W, W, W, R, R, R, R, R, R, R, R, R, R];
    /// dK/dV pass: dK, dV, dp2c, dcontext, drows, stats, Q, K, V, Kr, Qr, index, mask.
    AttentionBackwardKey => AttentionBackwardKey, "attention_backward_key",
        [W, W, W, R, R, R, R, R, R, R, R, R, R];
}

impl Kernel {
    /// The same product kernel for f16 operands when `f16` is set (the kernel itself otherwise,
    /// and for kernels without such a variant).
    pub(crate) const fn with_operands(self, f16: bool) -> Kernel {
        if !f16 {
            return self;
        }
        match self {
            Kernel::MatmulTiled32 => Kernel::MatmulTiled32F16,
            Kernel::MatmulTiled64 => Kernel::MatmulTiled64F16,
            Kernel::MatmulTiled128 => Kernel::MatmulTiled128F16,
            Kernel::MatmulTiled64Vec4 => Kernel::MatmulTiled64Vec4F16,
            Kernel::MatmulTiled128Vec4 => Kernel::MatmulTiled128Vec4F16,
            Kernel::MatmulSmall => Kernel::MatmulSmallF16,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant of the kernels' text, with the cooperative-matrix kernel in four
    /// configurations: tensor cores' 16×16 on 32 invocations, lavapipe's 8×8 on 8, and 16×16
    /// on 64 and 8×8 on 32 (four and two groups of operands per thread).
    fn variants() -> impl Iterator<Item = Variant> {
        let shapes = [(16, 32), (8, 8), (16, 64), (8, 32)]
            .map(|(side, threads)| CooperativeShape { side, threads });
        [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .zip(shapes)
            .map(
                |((subgroup_reductions, matmul_prefetch), cooperative)| Variant {
                    subgroup_reductions,
                    matmul_prefetch,
                    cooperative,
                    // The operands rounded by the kernels in half the variants.
                    f16_rounded: subgroup_reductions,
                },
            )
    }

    /// The shader's module, validated with only the capabilities its variant may use: f16 for
    /// the f16 matmuls, cooperative matrices for their kernel, subgroup operations in compute
    /// shaders where `subgroup_reductions`.
    fn parse_variant(shader: Shader, variant: Variant) -> (naga::Module, naga::valid::ModuleInfo) {
        let source = shader.source(variant);
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{shader:?}: {}", e.emit_to_string(&source)));
        let mut capabilities = naga::valid::Capabilities::empty();
        if source.starts_with("enable f16;") {
            capabilities |= naga::valid::Capabilities::SHADER_FLOAT16;
        }
        if source.contains("enable wgpu_cooperative_matrix;") {
            // The cooperative kernel reads its subgroup's index (a device opened for it has
            // subgroups).
            capabilities |=
                naga::valid::Capabilities::COOPERATIVE_MATRIX | naga::valid::Capabilities::SUBGROUP;
        }
        if variant.subgroup_reductions {
            capabilities |= naga::valid::Capabilities::SUBGROUP;
        }
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{shader:?}: {}", e.emit_to_string(&source)));
        (module, info)
    }

    /// The shader as every adapter compiles it (no subgroup operations).
    fn parse(shader: Shader) -> (naga::Module, naga::valid::ModuleInfo) {
        parse_variant(shader, Variant::default())
    }

    #[test]
    fn only_the_reducing_shaders_differ_with_subgroups_and_both_variants_validate() {
        let reducing = [
            Shader::LayerNorm,
            Shader::Softmax,
            Shader::Reduce,
            Shader::ReduceMany,
            Shader::Loss,
        ];
        for &kernel in Kernel::ALL {
            let shader = kernel.shader();
            let subgroups = Variant {
                subgroup_reductions: true,
                ..Variant::default()
            };
            let (tree, subgroup) = (shader.source(Variant::default()), shader.source(subgroups));
            assert_eq!(tree != subgroup, reducing.contains(&shader), "{shader:?}");
            assert_eq!(subgroup.contains("subgroupAdd"), reducing.contains(&shader));
            for variant in variants() {
                parse_variant(shader, variant);
            }
        }
    }

    #[test]
    fn only_the_tiled_matmuls_differ_with_prefetching() {
        for &kernel in Kernel::ALL {
            let shader = kernel.shader();
            let prefetched = Variant {
                matmul_prefetch: true,
                ..Variant::default()
            };
            let differs = shader.source(Variant::default()) != shader.source(prefetched);
            assert_eq!(differs, MATMULS.contains(&shader), "{shader:?}");
        }
    }

    #[test]
    fn the_bind_group_cache_keys_every_binding() {
        for &kernel in Kernel::ALL {
            assert!(
                kernel.bindings().len() <= crate::recorder::MAX_BINDINGS,
                "{kernel:?}"
            );
        }
    }

    const MATMULS: &[Shader] = &[
        Shader::Matmul32,
        Shader::Matmul64,
        Shader::Matmul128,
        Shader::Matmul32F16,
        Shader::Matmul64F16,
        Shader::Matmul128F16,
        Shader::Matmul64Vec4,
        Shader::Matmul128Vec4,
        Shader::Matmul64Vec4F16,
        Shader::Matmul128Vec4F16,
    ];

    /// The kernels of `attention_tile.wgsl`.
    const ATTENTION: &[Shader] = &[
        Shader::FusedAttention,
        Shader::AttentionBackwardQuery,
        Shader::AttentionBackwardKey,
    ];

    #[test]
    fn rust_constants_are_the_wgsl_constants() {
        let mirrored: &[(&str, u32, &[Shader])] = &[
            (
                "ELEMENTWISE_WG",
                ELEMENTWISE_WG,
                &[
                    Shader::Elementwise,
                    Shader::RelativeScores,
                    Shader::Embedding,
                    Shader::Loss,
                    Shader::Optimizer,
                    Shader::OptimizerMany,
                    Shader::Dropout,
                    Shader::F16Probe,
                ],
            ),
            (
                "ROW_WG",
                ROW_WG,
                &[
                    Shader::LayerNorm,
                    Shader::Softmax,
                    Shader::Reduce,
                    Shader::ReduceMany,
                    Shader::Loss,
                ],
            ),
            ("MATMUL_THREADS", MATMUL_THREADS, MATMULS),
            ("TILE_K", TILE_K, MATMULS),
            (
                "SUM_ITEMS",
                SUM_ITEMS,
                &[Shader::Reduce, Shader::ReduceMany],
            ),
            ("SUM_SOURCES", SUM_SOURCES, &[Shader::ReduceMany]),
            ("ADAM_SOURCES", ADAM_SOURCES, &[Shader::OptimizerMany]),
            ("PARAM_CHUNK_ROWS", PARAM_CHUNK_ROWS, &[Shader::LayerNorm]),
            ("ATTN_TILE", ATTN_TILE, ATTENTION),
            ("ATTN_THREADS", ATTN_THREADS, ATTENTION),
            ("ATTN_BLOCK", ATTN_BLOCK, ATTENTION),
            ("ATTN_CHUNK", ATTN_CHUNK, ATTENTION),
            ("ATTN_MAX_HEAD_DIM", ATTN_MAX_HEAD_DIM, ATTENTION),
        ];
        for (name, value, shaders) in mirrored {
            for shader in *shaders {
                let line = format!("const {name}: u32 = {value}u;");
                assert!(
                    shader.source(Variant::default()).contains(&line),
                    "{shader:?} must declare `{line}`"
                );
            }
        }
    }

    /// naga's SPIR-V back end (Vulkan's path) writes every shader, in every variant, as the
    /// device compiles it: without loop bounds, other runtime checks on. The
    /// cooperative-matrix kernel included, which no adapter here can run.
    #[test]
    fn every_shader_compiles_to_spirv() {
        let options = naga::back::spv::Options {
            lang_version: (1, 3),
            force_loop_bounding: false,
            ..naga::back::spv::Options::default()
        };
        for &kernel in Kernel::ALL {
            for variant in variants() {
                let (module, info) = parse_variant(kernel.shader(), variant);
                let words = naga::back::spv::write_vec(&module, &info, &options, None)
                    .unwrap_or_else(|e| panic!("{kernel:?}: {e}"));
                assert!(words.len() > 5, "{kernel:?}: no SPIR-V");
            }
        }
    }

    #[test]
    fn every_shader_validates_and_binds_what_the_registry_says() {
        for &kernel in Kernel::ALL {
            let (module, info) = parse(kernel.shader());
            let (index, _) = module
                .entry_points
                .iter()
                .enumerate()
                .find(|(_, ep)| ep.name == kernel.entry())
                .unwrap_or_else(|| panic!("{kernel:?}: no entry point `{}`", kernel.entry()));
            let uses = info.get_entry_point(index);
            let mut bound: Vec<(u32, Option<Access>)> = module
                .global_variables
                .iter()
                .filter(|(handle, _)| !uses[*handle].is_empty())
                .filter_map(|(_, var)| {
                    let binding = var.binding.as_ref()?;
                    assert_eq!(binding.group, 0, "{kernel:?}");
                    let access = match var.space {
                        naga::AddressSpace::Uniform => None,
                        naga::AddressSpace::Storage { access } => {
                            Some(if access.contains(naga::StorageAccess::STORE) {
                                Access::ReadWrite
                            } else {
                                Access::Read
                            })
                        }
                        other => panic!("{kernel:?}: unexpected address space {other:?}"),
                    };
                    Some((binding.binding, access))
                })
                .collect();
            bound.sort_by_key(|(binding, _)| *binding);
            let expected: Vec<(u32, Option<Access>)> = std::iter::once((0, None))
                .chain(
                    kernel
                        .bindings()
                        .iter()
                        .zip(1u32..)
                        .map(|(a, b)| (b, Some(*a))),
                )
                .collect();
            assert_eq!(bound, expected, "{kernel:?}");
        }
    }

    #[test]
    fn params_structs_mirror_the_wgsl_params() {
        use crate::params::*;
        fn check(shader: Shader, fields: Vec<(&str, usize)>, size: usize) {
            let (module, _) = parse(shader);
            let (_, ty) = module
                .types
                .iter()
                .find(|(_, ty)| ty.name.as_deref() == Some("Params"))
                .unwrap_or_else(|| panic!("{shader:?} has no `struct Params`"));
            let naga::TypeInner::Struct { members, span } = &ty.inner else {
                panic!("{shader:?}: Params is not a struct");
            };
            let wgsl: Vec<(&str, usize)> = members
                .iter()
                .map(|m| (m.name.as_deref().unwrap_or("?"), m.offset as usize))
                .collect();
            assert_eq!(wgsl, fields, "{shader:?}");
            assert_eq!(*span as usize, size, "{shader:?}");
            assert_eq!(shader.params_size() as usize, size);
            assert_eq!(
                size % 16,
                0,
                "{shader:?}: uniform blocks are 16-byte multiples"
            );
            // A dispatch's parameters take one slot of the arena: at least 256 bytes.
            assert!(size <= 256, "{shader:?}: {size} bytes of parameters");
        }
        macro_rules! mirror {
            ($($ty:ty),*) => {
                $(check(<$ty>::SHADER, <$ty>::fields(), size_of::<$ty>());)*
            };
        }
        mirror!(
            ElementwiseParams,
            MatmulParams,
            LayerNormParams,
            SoftmaxParams,
            RelativeParams,
            EmbeddingParams,
            ReduceParams,
            ReduceManyParams,
            LossParams,
            AdamParams,
            AdamManyParams,
            DropoutParams,
            SamplingParams,
            AttentionParams,
            F16ProbeParams
        );
    }
}
