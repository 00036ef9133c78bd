//! Kernel parameters: one `#[repr(C)]` struct per shader file, mirrored field for field by the
//! `struct Params` of that file (checked against the WGSL by a unit test through naga).

use bytemuck::{Pod, Zeroable};

/// Declares a parameter struct and, for tests, the WGSL it mirrors and its field offsets.
macro_rules! params {
    ($(#[$meta:meta])* $name:ident mirrors $shader:expr => {
        $($(#[$field_meta:meta])* $field:ident: $ty:ty,)*
    }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
        pub(crate) struct $name {
            $($(#[$field_meta])* pub(crate) $field: $ty,)*
        }

        #[cfg(test)]
        impl $name {
            /// The shader whose `struct Params` this mirrors.
            pub(crate) const SHADER: crate::kernels::Shader = $shader;
            /// `(name, byte offset)` of every field.
            pub(crate) fn fields() -> Vec<(&'static str, usize)> {
                vec![$((stringify!($field), core::mem::offset_of!($name, $field)),)*]
            }
        }
    };
}

params! {
    /// `elementwise.wgsl`.
    ElementwiseParams mirrors crate::kernels::Shader::Elementwise => {
        n: u32,
        cols: u32,
        len: u32,
        row: u32,
        act: u32,
        accumulate: u32,
        alpha: f32,
        _pad0: u32,
    }
}

params! {
    /// `matmul.wgsl`.
    MatmulParams mirrors crate::kernels::Shader::Matmul64 => {
        batch1: u32,
        m: u32,
        n: u32,
        k: u32,
        a_offset: u32,
        a_row_stride: u32,
        a_col_stride: u32,
        a_batch_stride0: u32,
        a_batch_stride1: u32,
        b_offset: u32,
        b_row_stride: u32,
        b_col_stride: u32,
        b_batch_stride0: u32,
        b_batch_stride1: u32,
        c_offset: u32,
        c_row_stride: u32,
        c_col_stride: u32,
        c_batch_stride0: u32,
        c_batch_stride1: u32,
        entry_base: u32,
        a_k_contiguous: u32,
        b_k_contiguous: u32,
        alpha: f32,
        beta: f32,
        k_split: u32,
        splits: u32,
        a_vector_loads: u32,
        b_vector_loads: u32,
        has_bias: u32,
        has_residual: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

params! {
    /// `layer_norm.wgsl`.
    LayerNormParams mirrors crate::kernels::Shader::LayerNorm => {
        rows: u32,
        cols: u32,
        eps: f32,
        has_stats: u32,
        accumulate: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

params! {
    /// `softmax.wgsl`.
    SoftmaxParams mirrors crate::kernels::Shader::Softmax => {
        rows: u32,
        heads: u32,
        len: u32,
        uniform_value: f32,
    }
}

params! {
    /// `relative_scores.wgsl`.
    RelativeParams mirrors crate::kernels::Shader::RelativeScores => {
        batch: u32,
        heads: u32,
        len: u32,
        rows: u32,
        scale: f32,
        has_c2p: u32,
        has_p2c: u32,
        _pad0: u32,
    }
}

params! {
    /// `embedding.wgsl`.
    EmbeddingParams mirrors crate::kernels::Shader::Embedding => {
        positions: u32,
        dim: u32,
        table_rows: u32,
        accumulate: u32,
        has_skip: u32,
        skip: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

params! {
    /// `reduce.wgsl`.
    ReduceParams mirrors crate::kernels::Shader::Reduce => {
        n: u32,
        cols: u32,
        src_offset: u32,
        src_stride: u32,
        chunk_rows: u32,
        accumulate: u32,
        square: u32,
        dst_index: u32,
        alpha: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

params! {
    /// `reduce_many.wgsl`.
    ReduceManyParams mirrors crate::kernels::Shader::ReduceMany => {
        n: [u32; 8],
        row: [u32; 8],
        first_group: [u32; 8],
        count: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

params! {
    /// `loss.wgsl`.
    LossParams mirrors crate::kernels::Shader::Loss => {
        rows: u32,
        vocab: u32,
        grad_scale: f32,
        _pad0: u32,
    }
}

params! {
    /// `optimizer.wgsl`.
    AdamParams mirrors crate::kernels::Shader::Optimizer => {
        n: u32,
        bias_corrected: u32,
        has_clip: u32,
        _pad0: u32,
        lr: f32,
        beta1: f32,
        one_minus_beta1: f32,
        beta2: f32,
        one_minus_beta2: f32,
        eps: f32,
        weight_decay: f32,
        step_size: f32,
        bias_correction2_sqrt: f32,
        decay_factor: f32,
        grad_scale: f32,
        max_norm: f32,
    }
}

params! {
    /// `optimizer_many.wgsl`.
    AdamManyParams mirrors crate::kernels::Shader::OptimizerMany => {
        count: u32,
        bias_corrected: u32,
        has_clip: u32,
        _pad0: u32,
        beta1: f32,
        one_minus_beta1: f32,
        beta2: f32,
        one_minus_beta2: f32,
        eps: f32,
        bias_correction2_sqrt: f32,
        grad_scale: f32,
        max_norm: f32,
        n: [u32; 8],
        first_group: [u32; 8],
        weight_decay: [f32; 8],
        step_size: [f32; 8],
        decay_factor: [f32; 8],
    }
}

params! {
    /// `dropout.wgsl`.
    DropoutParams mirrors crate::kernels::Shader::Dropout => {
        n: u32,
        p: f32,
        scale: f32,
        seed_lo: u32,
        seed_hi: u32,
        step: u32,
        stream: u32,
        _pad0: u32,
    }
}

params! {
    /// `sampling.wgsl`.
    SamplingParams mirrors crate::kernels::Shader::Sampling => {
        rows: u32,
        vocab: u32,
        seed_lo: u32,
        seed_hi: u32,
        step: u32,
        stream: u32,
        zero: u32,
        _pad0: u32,
    }
}

params! {
    /// `attention_tile.wgsl`: the three kernels of the fused attention (the forward of inference
    /// and training, the training backward's two passes).
    AttentionParams mirrors crate::kernels::Shader::FusedAttention => {
        batch: u32,
        heads: u32,
        len: u32,
        head_dim: u32,
        width: u32,
        first_row: u32,
        rows: u32,
        tiles: u32,
        has_c2p: u32,
        has_p2c: u32,
        inv_scale: f32,
        scale: f32,
        uniform: f32,
        has_stats: u32,
        has_dropout: u32,
        p: f32,
        keep_scale: f32,
        seed_lo: u32,
        seed_hi: u32,
        step: u32,
        stream: u32,
        /// 1: round every operand of a product to binary16 as it is loaded (mixed precision).
        f16_operands: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

params! {
    /// `f16_probe.wgsl`.
    F16ProbeParams mirrors crate::kernels::Shader::F16Probe => {
        n: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}
