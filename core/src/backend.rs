//! The compute trait every backend implements: CPU ([`CpuBackend`](crate::CpuBackend)), wgpu
//! (`deberta-gpu`), and the contract the heap-free edge runtime follows with the same slice
//! kernels.
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
//! Forward kernels are listed here; the backward kernels of the training path follow the same
//! pattern (saved activations in, gradient buffers out, `accumulate` flags instead of
//! read-modify-write on the host).

use crate::kernels::{LayerNormSpec, MatmulSpec, MatrixLayout, RelativeScoresSpec, SoftmaxSpec};
use crate::{Activation, Error};

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

/// A compute device: buffers plus the kernels the model is written in.
pub trait Backend {
    /// A device buffer of `f32`.
    type Tensor;
    /// A device buffer of `u32` (token ids, relative-position indices, labels).
    type Indices;

    /// A short name for logs and benchmark reports (`"cpu"`, `"wgpu"`).
    fn name(&self) -> &'static str;

    // ----- memory -------------------------------------------------------------------------

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
    /// Sets every element to `value`.
    fn fill(&self, tensor: &mut Self::Tensor, value: f32) -> Result<(), Error>;
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
        if spec.in_channels % groups != 0 || spec.out_channels % groups != 0 || spec.kernel % 2 == 0
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
}
