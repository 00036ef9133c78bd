//! The compute trait every backend implements: CPU ([`CpuBackend`](crate::CpuBackend)) and wgpu
//! (`deberta-gpu`). The heap-free edge runtime ([`crate::edge`]) does not implement it: it calls
//! the slice [`kernels`](crate::kernels) the CPU backend is built on directly, with its own
//! heap-free matrix products.
//!
//! # Contract
//!
//! * **Tensors live on the device.** [`Backend::Tensor`] and [`Backend::Indices`] are opaque
//!   device buffers. Only [`Backend::upload`], [`Backend::upload_indices`], [`Backend::write`]
//!   and [`Backend::download`] cross between host and device; every kernel takes and writes
//!   device buffers, so a training step on a GPU reads nothing back but the scalars it logs.
//! * **Flat buffers, explicit shapes.** A tensor is a flat array of `f32`; each kernel receives
//!   the shape it operates on (and, for [`Backend::matmul`], strided layouts), so one buffer can
//!   hold many logical tensors and views never copy.
//! * **Outputs are caller-allocated** and never alias inputs (Rust's borrows enforce it), so
//!   activations can be allocated once per shape and reused every step.
//! * **Shapes are checked.** A kernel given a buffer smaller than its shape needs returns
//!   [`Error::BufferTooSmall`]; it never reads or writes out of bounds.
//! * **Ids are validated on the host.** Token ids and relative indices are checked before they
//!   are uploaded; a device kernel may assume them in range (the CPU kernels still check).
//! * **Deterministic.** For fixed inputs every kernel produces bit-identical outputs on every
//!   run: reductions and scatter-adds run in a fixed order (on a GPU, each output element has a
//!   single owner; WGSL has no float atomics).
//!
//! The trait holds the forward kernels and, beside each, its backward kernel for the training
//! path (`*_backward`: saved activations in, gradient buffers out, `accumulate` flags instead of
//! read-modify-write on the host); the fused attention is defined in `backend/attention.rs`, the
//! training attention and its backward in `backend/attention_training.rs`.

mod attention;
mod attention_training;

pub use attention::{
    AttentionBuffers, AttentionLengths, AttentionOperands, AttentionSpec, attention_context,
    attention_context_at, attention_probabilities, attention_probabilities_at, composed_attention,
};
pub use attention_training::{
    AttentionDropout, AttentionGrads, SavedAttention, TrainingBuffers, composed_attention_backward,
    composed_attention_forward_train,
};

use crate::kernels::{
    AdamSpec, LayerNormSpec, MatmulSpec, MatrixLayout, RelativeScoresSpec, SoftmaxSpec,
};
use crate::random::RandomStream;
use crate::{Activation, Error, Precision};

/// The range contract of the memory operations ([`Backend::write`], [`Backend::download`],
/// [`Backend::copy`], …) and of the one-element outputs of [`Backend::sum`] (every backend's):
/// elements `offset..offset + len` lie inside a buffer of `size` elements; `operation` names
/// the operation in the error.
pub fn check_range(
    operation: &'static str,
    offset: usize,
    len: usize,
    size: usize,
) -> Result<(), Error> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::BufferTooSmall {
            kernel: operation,
            operand: "tensor",
            needed: offset.saturating_add(len),
            len: size,
        }),
    }
}

/// Gradient outputs of [`Backend::layer_norm_backward`].
pub struct LayerNormGrads<'a, T: ?Sized> {
    /// Gradient of the input (written, or added when `accumulate_dx`).
    pub dx: &'a mut T,
    /// Gradient of γ (accumulated).
    pub dgamma: &'a mut T,
    /// Gradient of β (accumulated).
    pub dbeta: &'a mut T,
    /// Whether `dx` is accumulated into instead of overwritten.
    pub accumulate_dx: bool,
}

/// Global-norm clipping inside [`Backend::adam_update`]: with `n = sqrt(squared_norm[0])`, the
/// gradient is multiplied by `1/(n/max_norm)` when `n > max_norm` (microsoft/DeBERTa's
/// `Fp16Optimizer._grad_scale`; no `+1e-6`, see [`crate::kernels::clip_coefficient`]). The
/// coefficient is computed on the device from a device scalar, so clipping needs no readback;
/// an optimizer sums its per-parameter squared norms into that scalar once per update (see
/// [`crate::train::Optimizer`]), not once per parameter.
pub struct Clip<'a, T> {
    /// `Σ g²` over every parameter of the optimizer, in element 0 (the [`Backend::sum`] of
    /// the per-parameter [`Backend::sums_of_squares`]).
    pub squared_norm: &'a T,
    /// The largest allowed global norm.
    pub max_norm: f32,
}

impl<T> Clone for Clip<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Clip<'_, T> {}

/// One parameter of a [`Backend::adam_updates`] call: its tensor, gradient and moments, and
/// the hyper-parameters of its update (its parameter group's learning rate, its weight decay).
pub struct AdamTensors<'a, T> {
    /// The parameter, updated in place.
    pub param: &'a mut T,
    /// Its gradient.
    pub grad: &'a T,
    /// Its first moment, updated in place.
    pub m: &'a mut T,
    /// Its second moment, updated in place.
    pub v: &'a mut T,
    /// The update's hyper-parameters.
    pub spec: AdamSpec,
}

/// Shape of a same-length 1-D convolution over a `[batch, len, channels]` sequence
/// (PyTorch `Conv1d` with `padding = (kernel − 1)/2`, weights `[out, in/groups, kernel]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv1dSpec {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel width (odd).
    pub kernel: usize,
    /// Channel groups (divides both channel counts).
    pub groups: usize,
}

/// Gradient outputs of [`Backend::conv1d_backward`], all accumulated.
pub struct Conv1dGrads<'a, T> {
    /// Gradient of the input sequence.
    pub dinput: &'a mut T,
    /// Gradient of the weights.
    pub dweight: &'a mut T,
    /// Gradient of the bias.
    pub dbias: &'a mut T,
}

/// High-water marks of a device's memory in tensors, from [`Backend::peak_device_memory`]: the
/// two figures a caching allocator has (PyTorch's `max_memory_reserved` and
/// `max_memory_allocated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakDeviceMemory {
    /// The most bytes the device's tensor buffers took at once, free buffers the allocator
    /// keeps for reuse included: what the device had to have.
    pub reserved_bytes: u64,
    /// The most bytes live tensors held at once.
    pub allocated_bytes: u64,
}

/// A compute device: buffers plus the kernels the model is written in.
pub trait Backend {
    /// A device buffer of `f32`.
    type Tensor: 'static;
    /// A device buffer of `u32` (token ids, relative-position indices, labels).
    type Indices;

    /// A short name for logs and benchmark reports (`"cpu"`, `"wgpu"`).
    fn name(&self) -> &'static str;

    // ----- memory -------------------------------------------------------------------------

    /// The most device memory this backend's tensors have taken, for backends whose tensors
    /// live in a memory of their own (a GPU's); `None` where tensors are in host memory, which
    /// the process's peak resident set already counts.
    fn peak_device_memory(&self) -> Option<PeakDeviceMemory> {
        None
    }

    /// Whether a dropped tensor's memory serves this backend's later allocations of its size at
    /// no cost (a device buffer pool). The trainer then releases each model's activations while
    /// the other model's phase runs, so that the two never hold memory at once. `false` where
    /// allocating again costs page faults and zeroing, as the system allocator's large blocks
    /// do: on the CPU, releasing them cut the peak resident set of an xsmall 8×128 step by 16 %
    /// and slowed the step by 27 %.
    fn recycles_tensor_memory(&self) -> bool {
        false
    }

    /// Switches the timing of each kernel on the device on or off, where the backend can time
    /// its kernels (wgpu on an adapter with timestamp queries); returns whether they are timed.
    /// Timing may make the host wait for the device after every submission, so the wall-clock
    /// time of a timed run is not that of an untimed one.
    fn time_kernels(&self, _on: bool) -> Result<bool, Error> {
        Ok(false)
    }

    /// Hands each kernel's device time since the last call to `visit` as (kernel, dispatches,
    /// nanoseconds), and forgets it; nothing where kernels are not timed.
    fn drain_kernel_times(&self, _visit: &mut dyn FnMut(&str, u64, u64)) -> Result<(), Error> {
        Ok(())
    }

    /// A new zero-filled buffer of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Tensor, Error>;
    /// A new buffer holding a copy of `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Tensor, Error>;
    /// A new index buffer holding a copy of `data`.
    fn upload_indices(&self, data: &[u32]) -> Result<Self::Indices, Error>;
    /// Elements in a buffer.
    fn len(&self, tensor: &Self::Tensor) -> usize;
    /// Overwrites `tensor[offset..offset + data.len()]` with `data`.
    fn write(&self, tensor: &mut Self::Tensor, offset: usize, data: &[f32]) -> Result<(), Error>;
    /// Copies the first `out.len()` elements of `tensor` to the host.
    fn download(&self, tensor: &Self::Tensor, out: &mut [f32]) -> Result<(), Error>;
    /// Copies the first `out.len()` elements of an index buffer to the host.
    fn download_indices(&self, indices: &Self::Indices, out: &mut [u32]) -> Result<(), Error>;
    /// Sets every element to `value`.
    fn fill(&self, tensor: &mut Self::Tensor, value: f32) -> Result<(), Error>;
    /// The elements of `tensor` themselves, for a backend whose tensors are host memory and
    /// whose [`Backend::add_assign`] is the host's `f32` addition (each element `x + y`,
    /// rounded to nearest, subnormals kept): host code may then read them without a copy and
    /// add into them with the same bits as the backend. `None` (the default) otherwise.
    fn host_values<'t>(&self, _tensor: &'t Self::Tensor) -> Option<&'t [f32]> {
        None
    }
    /// [`Backend::host_values`], to write.
    fn host_values_mut<'t>(&self, _tensor: &'t mut Self::Tensor) -> Option<&'t mut [f32]> {
        None
    }
    /// `dst[dst_offset..][..len] = src[src_offset..][..len]`.
    fn copy(
        &self,
        src: &Self::Tensor,
        src_offset: usize,
        dst: &mut Self::Tensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), Error>;

    // ----- forward kernels ----------------------------------------------------------------

    /// Batched strided `C = α·A·B + β·C` (see [`MatmulSpec`]); transposes are layouts.
    fn matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        c: &mut Self::Tensor,
        spec: &MatmulSpec,
    ) -> Result<(), Error>;
    /// Converts a `[output, input]` weight once for [`Backend::matmul_packed`] at a reduced
    /// `precision` (see [`Precision`]). The provided implementation returns
    /// [`Error::Unsupported`]: backends without reduced-precision products keep f32.
    #[cfg(feature = "alloc")]
    fn pack_weight(
        &self,
        weight: &Self::Tensor,
        output: usize,
        input: usize,
        precision: crate::Precision,
    ) -> Result<crate::kernels::PackedWeight, Error> {
        let _ = (weight, output, input, precision);
        Err(Error::Unsupported {
            what: "reduced-precision products on this backend",
        })
    }
    /// Whether [`Backend::pack_weight`] at [`Precision::F32`] makes the
    /// `Linear` products faster than [`Backend::matmul`] on the f32 weights: the inference
    /// sessions then convert their f32 weights once
    /// ([`ParamStore::pack`](crate::model::ParamStore::pack)). The provided implementation: no.
    fn packs_f32_weights(&self) -> bool {
        false
    }
    /// `out[rows, output] = x[rows, input]·Wᵀ` with a weight from [`Backend::pack_weight`]
    /// (overwrites `out`; operand contract [`check_linear_packed`](crate::kernels::check_linear_packed)).
    #[cfg(feature = "alloc")]
    fn matmul_packed(
        &self,
        x: &Self::Tensor,
        weight: &crate::kernels::PackedWeight,
        out: &mut Self::Tensor,
        rows: usize,
    ) -> Result<(), Error> {
        let _ = (x, weight, out, rows);
        Err(Error::Unsupported {
            what: "reduced-precision products on this backend",
        })
    }
    /// `C = α·A·B + β·C` as [`Backend::matmul`] with the products at `precision`
    /// ([`Precision::products`](crate::Precision::products)): f32 is [`Backend::matmul`];
    /// bf16 rounds both operands to bf16 and sums in f32 (the backward products of
    /// bf16-mixed training); f16 likewise with binary16 operands (wgpu). The provided
    /// implementation has f32 only
    /// ([`Error::Unsupported`] otherwise).
    fn matmul_reduced(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        c: &mut Self::Tensor,
        spec: &MatmulSpec,
        precision: crate::Precision,
    ) -> Result<(), Error> {
        match precision.products() {
            crate::Precision::F32 => self.matmul(a, b, c, spec),
            _ => Err(Error::Unsupported {
                what: "reduced-precision products on this backend",
            }),
        }
    }
    /// `C = α·A·B + β·C + bias (+ residual)` (`bias[j]` added to column j, then the
    /// residual's element where one is given: a linear layer's output and its residual
    /// connection) for one product whose `C` is a dense `[m, n]` (operand contract
    /// [`MatmulSpec::check_bias`]), the products at `precision` as in
    /// [`Backend::matmul_reduced`]. The provided implementation is [`Backend::matmul_reduced`],
    /// [`Backend::add_bias`] and [`Backend::add_assign`]; a backend may add both as it stores
    /// `C` instead (the same sums, in the same order).
    fn matmul_bias(
        &self,
        [a, b]: [&Self::Tensor; 2],
        bias: &Self::Tensor,
        residual: Option<&Self::Tensor>,
        c: &mut Self::Tensor,
        spec: &MatmulSpec,
        precision: crate::Precision,
    ) -> Result<(), Error> {
        let residual_len = residual.map(|r| self.len(r));
        spec.check_bias(self.len(c), self.len(bias), residual_len)?;
        self.matmul_reduced(a, b, c, spec, precision)?;
        self.add_bias(c, bias, spec.n)?;
        match residual {
            Some(residual) => self.add_assign(c, residual),
            None => Ok(()),
        }
    }
    /// The products of [`Precision::Mixed`] training on this
    /// backend: a format [`Backend::matmul_reduced`] takes, or f32 where the backend has no
    /// narrower products (the provided implementation).
    fn mixed_products(&self) -> crate::Precision {
        crate::Precision::F32
    }
    /// `x += y` over all of `x`.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<(), Error>;
    /// `x[r, :] += bias` for every row of width `cols`.
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Tensor, cols: usize)
    -> Result<(), Error>;
    /// `x[r, :] *= scales[r]` for every row of width `cols`.
    fn scale_rows(
        &self,
        x: &mut Self::Tensor,
        scales: &Self::Tensor,
        cols: usize,
    ) -> Result<(), Error>;
    /// `out = act(x)` element-wise over all of `x`.
    fn activation(
        &self,
        act: Activation,
        x: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<(), Error>;
    /// Row-wise LayerNorm; `stats` receives `[mean, rstd]` per row for the backward pass.
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        out: &mut Self::Tensor,
        stats: Option<&mut Self::Tensor>,
        spec: LayerNormSpec,
    ) -> Result<(), Error>;
    /// In-place softmax over `[batch, heads, len, len]` scores under the product padding mask
    /// (`mask` `[batch, len]`); padded query rows become uniform (Hugging Face 5.x).
    fn masked_softmax(
        &self,
        scores: &mut Self::Tensor,
        mask: &Self::Tensor,
        spec: SoftmaxSpec,
    ) -> Result<(), Error>;
    /// `scores[n,i,j] += c2p[n,i,idx[i,j]]/s + p2c[n,j,idx[i,j]]/s` (each term optional).
    fn add_relative_scores(
        &self,
        scores: &mut Self::Tensor,
        c2p: Option<&Self::Tensor>,
        p2c: Option<&Self::Tensor>,
        index: &Self::Indices,
        spec: RelativeScoresSpec,
    ) -> Result<(), Error>;
    /// `out[r, :] (+)= table[ids[r], :]` for rows of width `dim`.
    fn embedding_lookup(
        &self,
        table: &Self::Tensor,
        ids: &Self::Indices,
        out: &mut Self::Tensor,
        dim: usize,
        accumulate: bool,
    ) -> Result<(), Error>;
    /// `out[b, i, :] = x[b, i, :] + x[b, row, :]` for `x` `[batch, len, dim]`.
    fn add_sequence_row(
        &self,
        x: &Self::Tensor,
        out: &mut Self::Tensor,
        batch: usize,
        len: usize,
        dim: usize,
        row: usize,
    ) -> Result<(), Error>;

    // ----- backward kernels ---------------------------------------------------------------

    /// Backward of [`Backend::layer_norm`] from its input and recorded `[mean, rstd]` stats.
    fn layer_norm_backward(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        stats: &Self::Tensor,
        dout: &Self::Tensor,
        grads: LayerNormGrads<'_, Self::Tensor>,
        spec: LayerNormSpec,
    ) -> Result<(), Error>;
    /// `dx (+)= dout · act'(x)`.
    fn activation_backward(
        &self,
        act: Activation,
        x: &Self::Tensor,
        dout: &Self::Tensor,
        dx: &mut Self::Tensor,
        accumulate: bool,
    ) -> Result<(), Error>;
    /// In place: `grad` holds `dP` on entry, `dS = P ⊙ (dP − Σ P·dP)` on return (0 where masked,
    /// and on padded query rows).
    fn masked_softmax_backward(
        &self,
        probs: &Self::Tensor,
        grad: &mut Self::Tensor,
        mask: &Self::Tensor,
        spec: SoftmaxSpec,
    ) -> Result<(), Error>;
    /// The scatter that is the backward of [`Backend::add_relative_scores`] (outputs written).
    fn relative_scores_backward(
        &self,
        dscores: &Self::Tensor,
        index: &Self::Indices,
        dc2p: Option<&mut Self::Tensor>,
        dp2c: Option<&mut Self::Tensor>,
        spec: RelativeScoresSpec,
    ) -> Result<(), Error>;
    /// `dtable[ids[r], :] += dout[r, :]` in row order, skipping rows whose id is `skip`.
    fn embedding_backward(
        &self,
        ids: &Self::Indices,
        dout: &Self::Tensor,
        dtable: &mut Self::Tensor,
        dim: usize,
        skip: Option<u32>,
    ) -> Result<(), Error>;
    /// Backward of [`Backend::add_sequence_row`] for `shape = [batch, len, dim]`.
    fn add_sequence_row_backward(
        &self,
        dout: &Self::Tensor,
        dx: &mut Self::Tensor,
        shape: [usize; 3],
        row: usize,
        accumulate: bool,
    ) -> Result<(), Error>;
    /// `out[c] (+)= Σ_r x[r, c]` (bias gradients).
    fn sum_rows(
        &self,
        x: &Self::Tensor,
        out: &mut Self::Tensor,
        cols: usize,
        accumulate: bool,
    ) -> Result<(), Error>;
    /// `x *= alpha`.
    fn scale(&self, x: &mut Self::Tensor, alpha: f32) -> Result<(), Error>;
    /// Inverted dropout in place with the counter-based mask of `stream` (also its backward).
    fn dropout(&self, x: &mut Self::Tensor, p: f32, stream: RandomStream) -> Result<(), Error>;

    // ----- losses and optimizer ------------------------------------------------------------

    /// Per-row cross-entropy into `losses` and `(softmax − onehot)·grad_scale` into `dlogits`.
    fn cross_entropy(
        &self,
        logits: &Self::Tensor,
        targets: &Self::Indices,
        losses: &mut Self::Tensor,
        dlogits: &mut Self::Tensor,
        vocab: usize,
        grad_scale: f32,
    ) -> Result<(), Error>;
    /// Per-token weighted BCE-with-logits into `losses`, `w·(σ(z) − y)·grad_scale` into
    /// `dlogits`.
    fn bce_with_logits(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Tensor,
        weights: &Self::Tensor,
        losses: &mut Self::Tensor,
        dlogits: &mut Self::Tensor,
        grad_scale: f32,
    ) -> Result<(), Error>;
    /// Draws one token per row of `logits` `[rows, vocab]` from `softmax(logits)` at
    /// temperature one, by inverse transform with `stream.uniform(row)`, into `out[row]`: the
    /// generator's sampling, identical on every backend.
    fn sample_categorical(
        &self,
        logits: &Self::Tensor,
        vocab: usize,
        stream: RandomStream,
        out: &mut Self::Indices,
    ) -> Result<(), Error>;
    /// `out[index] = alpha · Σ x` (a device scalar; summed in a fixed order).
    fn sum(
        &self,
        x: &Self::Tensor,
        out: &mut Self::Tensor,
        index: usize,
        alpha: f32,
    ) -> Result<(), Error>;
    /// `out[i] = Σ xs[i]²` for every tensor of `xs` (device scalars, each summed in a fixed
    /// order; one call for many tensors, so that a backend can share their work, as an
    /// optimizer's gradient norms do).
    fn sums_of_squares(&self, xs: &[&Self::Tensor], out: &mut Self::Tensor) -> Result<(), Error>;
    /// One Adam/XAdam update of a parameter and its moments, the gradient scaled by `clip`'s
    /// coefficient when given.
    fn adam_update(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        moments: (&mut Self::Tensor, &mut Self::Tensor),
        spec: AdamSpec,
        clip: Option<Clip<'_, Self::Tensor>>,
    ) -> Result<(), Error>;

    /// [`Backend::adam_update`] of every one of `updates`, each at its own spec, with one
    /// `clip` for all (an optimizer's update of its parameters). The provided implementation
    /// updates them one at a time; a backend may update several in one kernel (the same
    /// arithmetic per element).
    fn adam_updates(
        &self,
        updates: &mut [AdamTensors<'_, Self::Tensor>],
        clip: Option<Clip<'_, Self::Tensor>>,
    ) -> Result<(), Error> {
        for update in updates {
            self.adam_update(
                &mut *update.param,
                update.grad,
                (&mut *update.m, &mut *update.v),
                update.spec,
                clip,
            )?;
        }
        Ok(())
    }

    // ----- provided compositions -----------------------------------------------------------

    /// Whether [`Backend::fused_attention`] at `spec` reads or writes its `buffers` (the
    /// composition does). Where it does not, callers may pass empty tensors: the probabilities
    /// and tables are never allocated.
    fn fused_attention_uses_buffers(&self, spec: &AttentionSpec) -> bool {
        let _ = spec;
        true
    }

    /// Whether [`Backend::attention_forward_train`] and [`Backend::attention_backward`] at
    /// `spec` and `products` use the probabilities: [`TrainingBuffers::probs`], `dropped`,
    /// `c2p`, `p2c` and [`AttentionGrads::dscores`] (the compositions do). Where they do not,
    /// callers may pass empty tensors for those, so that training memory grows with the
    /// sequence length instead of its square.
    fn attention_training_uses_probabilities(
        &self,
        spec: &AttentionSpec,
        products: Precision,
    ) -> bool {
        let _ = (spec, products);
        true
    }

    /// Disentangled self-attention in one operation: `context = P·V` with
    /// `P = masked_softmax(Q·Kᵀ/s + (c2p/s + p2c/s))` under the product padding mask, exactly
    /// as [`attention_probabilities`] defines it (masked keys get 0; padded query rows are
    /// uniform, so their context is the mean of `V` over all keys). Every implementation must
    /// equal the provided one within rounding.
    ///
    /// `buffers` are scratch: their contents after the call are unspecified. The provided
    /// implementation ([`composed_attention`]) runs the unfused kernels through them and leaves
    /// the probabilities in `buffers.probs`; a fused kernel may never write them. Training
    /// (a backward pass, attention dropout) calls [`Backend::attention_forward_train`]; callers
    /// that need the probabilities themselves (the `attentions` outputs) call
    /// [`attention_probabilities`] and [`attention_context`].
    fn fused_attention(
        &self,
        ops: AttentionOperands<'_, Self>,
        buffers: AttentionBuffers<'_, Self::Tensor>,
        context: &mut Self::Tensor,
        spec: AttentionSpec,
    ) -> Result<(), Error> {
        composed_attention(self, ops, buffers, context, spec)
    }

    /// The attention of a training forward: `context = P_applied·V` with `P` as
    /// [`Backend::fused_attention`] defines it and `P_applied` its dropout under `dropout`,
    /// leaving in `buffers` what [`Backend::attention_backward`] needs. The provided
    /// implementation ([`composed_attention_forward_train`]) keeps the probabilities; a fused
    /// one may keep per-row statistics instead. `products` is the precision of the composed
    /// products ([`Backend::matmul_reduced`]).
    fn attention_forward_train(
        &self,
        ops: AttentionOperands<'_, Self>,
        buffers: TrainingBuffers<'_, Self::Tensor>,
        context: &mut Self::Tensor,
        dropout: Option<AttentionDropout>,
        spec: AttentionSpec,
        products: Precision,
    ) -> Result<(), Error> {
        composed_attention_forward_train(self, ops, buffers, context, dropout, spec, products)
    }

    /// Backward of [`Backend::attention_forward_train`] from `dcontext`, given the forward's
    /// operands, dropout, buffers and context (`saved`); writes [`AttentionGrads`]. The
    /// provided implementation is [`composed_attention_backward`].
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        ops: AttentionOperands<'_, Self>,
        saved: SavedAttention<'_, Self::Tensor>,
        dcontext: &Self::Tensor,
        dropout: Option<AttentionDropout>,
        grads: AttentionGrads<'_, Self::Tensor>,
        spec: AttentionSpec,
        products: Precision,
    ) -> Result<(), Error> {
        composed_attention_backward(self, ops, saved, dcontext, dropout, grads, spec, products)
    }

    /// Same-length 1-D convolution over `[batch, len, in]` into `[batch, len, out]`:
    /// `out[b,t,o] = bias[o] + Σ_u Σ_c w[o,c,u]·x[b, t+u−pad, c]`. The provided implementation
    /// is one strided [`Backend::matmul`] per kernel tap and group, accumulating into `out`.
    fn conv1d(
        &self,
        input: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        out: &mut Self::Tensor,
        spec: Conv1dSpec,
    ) -> Result<(), Error> {
        let groups = spec.groups.max(1);
        if !spec.in_channels.is_multiple_of(groups)
            || !spec.out_channels.is_multiple_of(groups)
            || spec.kernel.is_multiple_of(2)
        {
            return Err(Error::ShapeMismatch {
                what: "conv1d groups must divide both channel counts and the kernel must be odd",
                expected: groups,
                found: spec.in_channels,
            });
        }
        let (cin, cout, k) = (spec.in_channels, spec.out_channels, spec.kernel);
        let (cin_g, cout_g) = (cin / groups, cout / groups);
        let pad = (k - 1) / 2;
        self.fill(out, 0.0)?;
        self.add_bias(out, bias, cout)?;
        for tap in 0..k {
            // Output rows t whose input row t + tap − pad lies inside the sequence.
            let first = pad.saturating_sub(tap);
            let end = (spec.len + pad).saturating_sub(tap).min(spec.len);
            if end <= first {
                continue;
            }
            for g in 0..groups {
                let spec_mm = MatmulSpec {
                    batch: [spec.batch, 1],
                    m: end - first,
                    n: cout_g,
                    k: cin_g,
                    a: MatrixLayout::row_major(cin)
                        .at((first + tap - pad) * cin + g * cin_g)
                        .batched(spec.len * cin, 0),
                    b: MatrixLayout {
                        offset: g * cout_g * cin_g * k + tap,
                        row_stride: k,
                        col_stride: cin_g * k,
                        batch_strides: [0, 0],
                    },
                    c: MatrixLayout::row_major(cout)
                        .at(first * cout + g * cout_g)
                        .batched(spec.len * cout, 0),
                    alpha: 1.0,
                    beta: 1.0,
                };
                self.matmul(input, weight, out, &spec_mm)?;
            }
        }
        Ok(())
    }

    /// Backward of [`Backend::conv1d`]: `dinput += ∂/∂input`, `dweight += ∂/∂weight`,
    /// `dbias += ∂/∂bias`. The provided implementation is strided matmuls per tap and group
    /// (the weight gradient one sequence at a time, so every output has one writer).
    fn conv1d_backward(
        &self,
        input: &Self::Tensor,
        weight: &Self::Tensor,
        dout: &Self::Tensor,
        grads: Conv1dGrads<'_, Self::Tensor>,
        spec: Conv1dSpec,
    ) -> Result<(), Error> {
        let groups = spec.groups.max(1);
        let (cin, cout, k) = (spec.in_channels, spec.out_channels, spec.kernel);
        let (cin_g, cout_g) = (cin / groups, cout / groups);
        let pad = (k - 1) / 2;
        self.sum_rows(dout, grads.dbias, cout, true)?;
        for tap in 0..k {
            let first = pad.saturating_sub(tap);
            let end = (spec.len + pad).saturating_sub(tap).min(spec.len);
            if end <= first {
                continue;
            }
            let rows = end - first;
            for g in 0..groups {
                let in_rows =
                    MatrixLayout::row_major(cin).at((first + tap - pad) * cin + g * cin_g);
                let out_rows = MatrixLayout::row_major(cout).at(first * cout + g * cout_g);
                let tap_weight = MatrixLayout {
                    offset: g * cout_g * cin_g * k + tap,
                    row_stride: cin_g * k,
                    col_stride: k,
                    batch_strides: [0, 0],
                };
                // dinput rows += dout rows · W_tap.
                self.matmul(
                    dout,
                    weight,
                    grads.dinput,
                    &MatmulSpec {
                        batch: [spec.batch, 1],
                        m: rows,
                        n: cin_g,
                        k: cout_g,
                        a: out_rows.batched(spec.len * cout, 0),
                        b: tap_weight,
                        c: in_rows.batched(spec.len * cin, 0),
                        alpha: 1.0,
                        beta: 1.0,
                    },
                )?;
                // dW_tap += dout rowsᵀ · input rows, one sequence per call.
                for b in 0..spec.batch {
                    self.matmul(
                        dout,
                        input,
                        grads.dweight,
                        &MatmulSpec {
                            batch: [1, 1],
                            m: cout_g,
                            n: cin_g,
                            k: rows,
                            a: out_rows
                                .at(out_rows.offset + b * spec.len * cout)
                                .transposed(),
                            b: in_rows.at(in_rows.offset + b * spec.len * cin),
                            c: tap_weight,
                            alpha: 1.0,
                            beta: 1.0,
                        },
                    )?;
                }
            }
        }
        Ok(())
    }
}
