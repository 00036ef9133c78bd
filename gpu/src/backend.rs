//! [`WgpuBackend`]: the [`Backend`] trait over WGSL kernels with device-resident tensors.

use std::sync::Arc;

use deberta_core::backend::{
    AdamTensors, AttentionBuffers, AttentionDropout, AttentionGrads, AttentionOperands,
    AttentionSpec, Clip, LayerNormGrads, SavedAttention, TrainingBuffers, composed_attention,
    composed_attention_backward, composed_attention_forward_train,
};
use deberta_core::kernels::{AdamSpec, LayerNormSpec, MatmulSpec, RelativeScoresSpec, SoftmaxSpec};
use deberta_core::random::RandomStream;
use deberta_core::{Activation, Backend, Error, PeakDeviceMemory, Precision};

use crate::adapter::{AdapterChoice, AdapterSummary, CooperativeShape};
use crate::device::{DeviceOptions, Gpu};
use crate::error::GpuError;
use crate::measured_tiles::{self, MeasuredTile};
use crate::ops::matmul::{Added, MatmulTiles};
use crate::ops::{
    attention, attention_training, elementwise, embedding, layer_norm, loss, matmul, memory,
    optimizer, random, reduce, relative_scores, softmax,
};
use crate::tensor::{GpuIndices, GpuTensor};

/// The wgpu backend. Cloning is cheap and shares the device; tensors of one backend (or its
/// clones) must not be passed to another (a [`Error::Device`] if they are).
///
/// Kernels are recorded and submitted in batches; only [`Backend::download`] (and
/// [`WgpuBackend::synchronize`]) wait for the device.
#[derive(Debug, Clone)]
pub struct WgpuBackend {
    gpu: Arc<Gpu>,
}

impl WgpuBackend {
    /// Opens the best adapter that `choice` allows (see [`crate::list_adapters`]), with the
    /// optional features of [`DeviceOptions::from_env`].
    pub fn new(choice: AdapterChoice) -> Result<Self, GpuError> {
        Self::with_options(choice, DeviceOptions::from_env()?)
    }

    /// Opens the best adapter that `choice` allows, with those of the optional features of
    /// `options` that it has.
    pub fn with_options(choice: AdapterChoice, options: DeviceOptions) -> Result<Self, GpuError> {
        Ok(WgpuBackend {
            gpu: Arc::new(Gpu::open(&choice, options)?),
        })
    }

    /// Chooses the tiled matmul kernel: [`MatmulTiles::Measured`] (the default) times the tile
    /// sizes per product shape, [`MatmulTiles::Auto`] applies the occupancy rule; the others
    /// force one, for tuning and tests. Results are the same bits either way.
    pub fn set_matmul_tiles(&self, tiles: MatmulTiles) {
        self.gpu.matmul_tiles.set(tiles);
    }

    /// The tile size [`MatmulTiles::Measured`] chose for each product shape measured so far
    /// (or loaded by [`WgpuBackend::keep_matmul_tiles_in`]).
    pub fn measured_matmul_tiles(&self) -> Vec<MeasuredTile> {
        self.gpu.measured_tiles.choices()
    }

    /// Keeps the tile sizes [`MatmulTiles::Measured`] chooses in `dir`, in a file named for this
    /// adapter, its driver and the matmul kernels' text ([`WgpuBackend::matmul_tile_file`]), so
    /// that later processes reuse them instead of timing each shape again: loads the choices the
    /// file holds (returns their number, 0 where there is no file yet) and rewrites the file
    /// whenever a new shape is measured. Every tile size gives the same bits, so the file only
    /// ever changes speed. A file that cannot be read, is not in the format or was written for
    /// another adapter, driver or kernel text is an error, and is replaced at the next
    /// measurement all the same.
    pub fn keep_matmul_tiles_in(&self, dir: &std::path::Path) -> Result<usize, GpuError> {
        let path = self.matmul_tile_file(dir);
        self.gpu
            .measured_tiles
            .keep_in(&path, &self.gpu.adapter, self.gpu.matmul_code())
    }

    /// The file in `dir` that [`WgpuBackend::keep_matmul_tiles_in`] keeps this device's tile
    /// sizes in.
    pub fn matmul_tile_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        dir.join(measured_tiles::file_name(
            &self.gpu.adapter,
            self.gpu.matmul_code(),
        ))
    }

    /// The first failure to write the tile file of [`WgpuBackend::keep_matmul_tiles_in`]
    /// (`path: reason`); the products ran and their choices are kept in memory regardless.
    pub fn matmul_tile_file_error(&self) -> Option<String> {
        self.gpu.measured_tiles.write_error()
    }

    /// Whether f16 products run (the device was opened with `SHADER_F16`: the adapter has it
    /// and `DEBERTA_WGPU_F16` is not `off`); without them mixed precision multiplies in f32.
    pub fn f16_products(&self) -> bool {
        self.gpu.f16_products
    }

    /// Whether the f16 products round each operand to nearest even themselves before
    /// converting it ([`DeviceOptions::f16_rounding`]; by default where the probe at opening
    /// found the driver's conversion does something else), rather than leaving it to the
    /// driver's conversion.
    pub fn f16_rounded_by_kernels(&self) -> bool {
        self.gpu.f16_rounded
    }

    /// Whether the workgroup reductions (softmax, layer norm, losses, sums) combine subgroups
    /// with subgroup operations: the device was opened with `SUBGROUP` (the adapter has it and
    /// `DEBERTA_WGPU_SUBGROUPS` is not `off`); else a tree in workgroup memory.
    pub fn subgroup_reductions(&self) -> bool {
        self.gpu.subgroup_reductions
    }

    /// Whether the kernels are compiled with naga's loop bounds ([`DeviceOptions::loop_bounds`];
    /// `DEBERTA_WGPU_LOOP_BOUNDS=on`).
    pub fn loop_bounds(&self) -> bool {
        self.gpu.loop_bounds
    }

    /// Whether the tiled matmuls prefetch each step's operands during the step before
    /// ([`DeviceOptions::matmul_prefetch`]; `DEBERTA_WGPU_MATMUL_PREFETCH=off` turns it off).
    pub fn matmul_prefetch(&self) -> bool {
        self.gpu.matmul_prefetch
    }

    /// Whether the tiled matmuls read operands whose layout allows it four elements at a time
    /// ([`DeviceOptions::matmul_vector_loads`]; `DEBERTA_WGPU_MATMUL_VECTOR_LOADS=off` turns it
    /// off).
    pub fn matmul_vector_loads(&self) -> bool {
        self.gpu.matmul_vector_loads
    }

    /// Whether attention runs the fused kernels where they take the shape
    /// ([`DeviceOptions::fused_attention`]; `DEBERTA_WGPU_FUSED_ATTENTION=off` composes it of
    /// unfused kernels instead).
    pub fn fused_attention(&self) -> bool {
        self.gpu.fused_attention
    }

    /// Whether recorded kernels are submitted every 64 instead of only when the host waits
    /// ([`DeviceOptions::early_submission`]; `DEBERTA_WGPU_EARLY_SUBMIT=off` turns it off).
    pub fn early_submission(&self) -> bool {
        self.gpu.early_submission
    }

    /// Whether the kernels of a submission share one compute pass
    /// ([`DeviceOptions::shared_pass`]; `DEBERTA_WGPU_SHARED_PASS=off` turns it off).
    pub fn shared_pass(&self) -> bool {
        self.gpu.shared_pass
    }

    /// Whether products at `precision` ([`Precision::products`]) round their operands to f16:
    /// f32 products do not, f16 ones do on a device with `SHADER_F16`, and the others are
    /// [`Error::Unsupported`].
    fn f16_operands(&self, precision: Precision) -> Result<bool, Error> {
        match precision.products() {
            Precision::F32 => Ok(false),
            Precision::F16 if self.gpu.f16_products => Ok(true),
            Precision::F16 => Err(Error::Unsupported {
                what: "f16 products on this adapter (it lacks SHADER_F16)",
            }),
            _ => Err(Error::Unsupported {
                what: "bf16 or int8 products on the wgpu backend",
            }),
        }
    }

    /// Whether an optimizer's tensors share kernels ([`DeviceOptions::multi_tensor`];
    /// `DEBERTA_WGPU_MULTI_TENSOR=off` turns it off).
    pub fn multi_tensor(&self) -> bool {
        self.gpu.multi_tensor
    }

    /// The cooperative matrices f16 products (mixed precision) run on, if they do: the device
    /// was opened with them ([`DeviceOptions::cooperative_matrices`]: by default on a GPU,
    /// `DEBERTA_WGPU_COOPERATIVE=on` on any adapter) on an adapter that can run the kernel, and
    /// the kernel computed the probe's products exactly.
    pub fn cooperative_matrices(&self) -> Option<CooperativeShape> {
        self.gpu.cooperative
    }

    /// Whether the device would have run the f16 products on cooperative matrices by default
    /// but the kernel got the probe's products wrong on this driver (or failed to run), so
    /// that they run on the register-blocked kernels instead.
    pub fn cooperative_probe_failed(&self) -> bool {
        self.gpu.cooperative_probe_failed
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.gpu.adapter
    }

    /// The first error the device reported (validation, out of memory, shader compilation),
    /// whose arrival makes later transfers fail with [`Error::Device`].
    pub fn device_error(&self) -> Option<String> {
        self.gpu.errors.first()
    }

    /// Device buffers created so far; constant across training steps in steady state.
    pub fn buffers_created(&self) -> u64 {
        self.gpu.pool.created()
    }

    /// Bind groups created so far (each kernel's buffers, cached by buffer): constant across
    /// training steps in steady state, where each tensor gets the same buffer every step.
    pub fn bind_groups_created(&self) -> Result<u64, Error> {
        self.gpu.bind_groups_created()
    }

    /// Device memory in tensor buffers, in bytes: what the buffer pool holds now (tensors in
    /// use and free buffers kept for reuse) and the most it has held (the peak a caching
    /// allocator reserves, as PyTorch's `max_memory_reserved`), and the same for the buffers
    /// tensors hold (PyTorch's `max_memory_allocated`). Staging buffers for downloads, kernel
    /// parameters and shaders are not counted.
    pub fn device_memory(&self) -> DeviceMemory {
        let (held, peak) = self.gpu.pool.bytes();
        let (in_use, peak_in_use) = self.gpu.pool.in_use_bytes();
        DeviceMemory {
            held_bytes: held,
            peak_bytes: peak,
            in_use_bytes: in_use,
            peak_in_use_bytes: peak_in_use,
        }
    }

    /// Submits all recorded work and waits for it (for timing).
    pub fn synchronize(&self) -> Result<(), Error> {
        self.gpu.wait()
    }

    /// Releases the free buffers of the pool (and the bind groups that reference them).
    pub fn trim(&self) -> Result<(), Error> {
        self.gpu.forget_bind_groups()?;
        self.gpu.pool.trim();
        self.gpu.readback.trim();
        Ok(())
    }
}

/// Device memory of a [`WgpuBackend`]'s tensors, from [`WgpuBackend::device_memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes of tensor buffers that exist now (in use or free in the pool).
    pub held_bytes: u64,
    /// The largest `held_bytes` so far.
    pub peak_bytes: u64,
    /// Bytes of the buffers tensors hold now (`held_bytes` less the free buffers).
    pub in_use_bytes: u64,
    /// The largest `in_use_bytes` so far.
    pub peak_in_use_bytes: u64,
}

impl Backend for WgpuBackend {
    type Tensor = GpuTensor;
    type Indices = GpuIndices;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn time_kernels(&self, on: bool) -> Result<bool, Error> {
        self.gpu.time_kernels(on)
    }

    fn drain_kernel_times(&self, visit: &mut dyn FnMut(&str, u64, u64)) -> Result<(), Error> {
        self.gpu.drain_kernel_times(visit)
    }

    fn recycles_tensor_memory(&self) -> bool {
        true
    }

    fn peak_device_memory(&self) -> Option<PeakDeviceMemory> {
        let memory = self.device_memory();
        Some(PeakDeviceMemory {
            reserved_bytes: memory.peak_bytes,
            allocated_bytes: memory.peak_in_use_bytes,
        })
    }

    fn zeros(&self, len: usize) -> Result<GpuTensor, Error> {
        memory::zeros(&self.gpu, len)
    }

    fn upload(&self, data: &[f32]) -> Result<GpuTensor, Error> {
        memory::upload(&self.gpu, data)
    }

    fn upload_indices(&self, data: &[u32]) -> Result<GpuIndices, Error> {
        memory::upload(&self.gpu, data)
    }

    fn len(&self, tensor: &GpuTensor) -> usize {
        tensor.len()
    }

    fn write(&self, tensor: &mut GpuTensor, offset: usize, data: &[f32]) -> Result<(), Error> {
        memory::write(&self.gpu, tensor, offset, data)
    }

    fn download(&self, tensor: &GpuTensor, out: &mut [f32]) -> Result<(), Error> {
        memory::download(&self.gpu, "download", tensor, out)
    }

    fn download_indices(&self, indices: &GpuIndices, out: &mut [u32]) -> Result<(), Error> {
        memory::download(&self.gpu, "download_indices", indices, out)
    }

    fn fill(&self, tensor: &mut GpuTensor, value: f32) -> Result<(), Error> {
        memory::fill(&self.gpu, tensor, value)
    }

    fn copy(
        &self,
        src: &GpuTensor,
        src_offset: usize,
        dst: &mut GpuTensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        memory::copy(&self.gpu, src, src_offset, dst, dst_offset, len)
    }

    fn matmul(
        &self,
        a: &GpuTensor,
        b: &GpuTensor,
        c: &mut GpuTensor,
        spec: &MatmulSpec,
    ) -> Result<(), Error> {
        matmul::matmul(&self.gpu, [a, b], Added::default(), c, spec, false)
    }

    /// f16 where the device has `SHADER_F16` (see [`WgpuBackend::f16_products`]), else f32.
    fn mixed_products(&self) -> Precision {
        match self.gpu.f16_products {
            true => Precision::F16,
            false => Precision::F32,
        }
    }

    /// f32 ([`Backend::matmul`]) or, on a device with `SHADER_F16`, f16: both operands
    /// rounded to binary16 as the kernel loads them, f32 products and sums.
    fn matmul_reduced(
        &self,
        a: &GpuTensor,
        b: &GpuTensor,
        c: &mut GpuTensor,
        spec: &MatmulSpec,
        precision: Precision,
    ) -> Result<(), Error> {
        let f16_operands = self.f16_operands(precision)?;
        matmul::matmul(&self.gpu, [a, b], Added::default(), c, spec, f16_operands)
    }

    /// The bias and the residual are added as the product's kernel stores C (the split-K
    /// sum's, for a split product): no kernels of their own, and the same bits as
    /// [`Backend::add_bias`] and [`Backend::add_assign`] after the product.
    fn matmul_bias(
        &self,
        [a, b]: [&GpuTensor; 2],
        bias: &GpuTensor,
        residual: Option<&GpuTensor>,
        c: &mut GpuTensor,
        spec: &MatmulSpec,
        precision: Precision,
    ) -> Result<(), Error> {
        spec.check_bias(c.len(), bias.len(), residual.map(GpuTensor::len))?;
        let f16_operands = self.f16_operands(precision)?;
        let added = Added {
            bias: Some(bias),
            residual,
        };
        matmul::matmul(&self.gpu, [a, b], added, c, spec, f16_operands)
    }

    fn add_assign(&self, x: &mut GpuTensor, y: &GpuTensor) -> Result<(), Error> {
        elementwise::add_assign(&self.gpu, x, y)
    }

    fn add_bias(&self, x: &mut GpuTensor, bias: &GpuTensor, cols: usize) -> Result<(), Error> {
        elementwise::add_bias(&self.gpu, x, bias, cols)
    }

    fn scale_rows(&self, x: &mut GpuTensor, scales: &GpuTensor, cols: usize) -> Result<(), Error> {
        elementwise::scale_rows(&self.gpu, x, scales, cols)
    }

    fn activation(&self, act: Activation, x: &GpuTensor, out: &mut GpuTensor) -> Result<(), Error> {
        elementwise::activation(&self.gpu, act, x, out)
    }

    fn layer_norm(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        out: &mut GpuTensor,
        stats: Option<&mut GpuTensor>,
        spec: LayerNormSpec,
    ) -> Result<(), Error> {
        layer_norm::layer_norm(&self.gpu, x, gamma, beta, out, stats, spec)
    }

    fn masked_softmax(
        &self,
        scores: &mut GpuTensor,
        mask: &GpuTensor,
        spec: SoftmaxSpec,
    ) -> Result<(), Error> {
        softmax::masked_softmax(&self.gpu, scores, mask, spec)
    }

    fn add_relative_scores(
        &self,
        scores: &mut GpuTensor,
        c2p: Option<&GpuTensor>,
        p2c: Option<&GpuTensor>,
        index: &GpuIndices,
        spec: RelativeScoresSpec,
    ) -> Result<(), Error> {
        relative_scores::add_relative_scores(&self.gpu, scores, c2p, p2c, index, spec)
    }

    fn embedding_lookup(
        &self,
        table: &GpuTensor,
        ids: &GpuIndices,
        out: &mut GpuTensor,
        dim: usize,
        accumulate: bool,
    ) -> Result<(), Error> {
        embedding::embedding_lookup(&self.gpu, table, ids, out, dim, accumulate)
    }

    fn add_sequence_row(
        &self,
        x: &GpuTensor,
        out: &mut GpuTensor,
        batch: usize,
        len: usize,
        dim: usize,
        row: usize,
    ) -> Result<(), Error> {
        elementwise::add_sequence_row(&self.gpu, x, out, [batch, len, dim], row)
    }

    fn layer_norm_backward(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        stats: &GpuTensor,
        dout: &GpuTensor,
        grads: LayerNormGrads<'_, GpuTensor>,
        spec: LayerNormSpec,
    ) -> Result<(), Error> {
        layer_norm::layer_norm_backward(&self.gpu, x, gamma, stats, dout, grads, spec)
    }

    fn activation_backward(
        &self,
        act: Activation,
        x: &GpuTensor,
        dout: &GpuTensor,
        dx: &mut GpuTensor,
        accumulate: bool,
    ) -> Result<(), Error> {
        elementwise::activation_backward(&self.gpu, act, x, dout, dx, accumulate)
    }

    fn masked_softmax_backward(
        &self,
        probs: &GpuTensor,
        grad: &mut GpuTensor,
        mask: &GpuTensor,
        spec: SoftmaxSpec,
    ) -> Result<(), Error> {
        softmax::masked_softmax_backward(&self.gpu, probs, grad, mask, spec)
    }

    fn relative_scores_backward(
        &self,
        dscores: &GpuTensor,
        index: &GpuIndices,
        dc2p: Option<&mut GpuTensor>,
        dp2c: Option<&mut GpuTensor>,
        spec: RelativeScoresSpec,
    ) -> Result<(), Error> {
        relative_scores::relative_scores_backward(&self.gpu, dscores, index, dc2p, dp2c, spec)
    }

    fn embedding_backward(
        &self,
        ids: &GpuIndices,
        dout: &GpuTensor,
        dtable: &mut GpuTensor,
        dim: usize,
        skip: Option<u32>,
    ) -> Result<(), Error> {
        embedding::embedding_backward(&self.gpu, ids, dout, dtable, dim, skip)
    }

    fn add_sequence_row_backward(
        &self,
        dout: &GpuTensor,
        dx: &mut GpuTensor,
        shape: [usize; 3],
        row: usize,
        accumulate: bool,
    ) -> Result<(), Error> {
        elementwise::add_sequence_row_backward(&self.gpu, dout, dx, shape, row, accumulate)
    }

    fn sum_rows(
        &self,
        x: &GpuTensor,
        out: &mut GpuTensor,
        cols: usize,
        accumulate: bool,
    ) -> Result<(), Error> {
        reduce::sum_rows(&self.gpu, x, out, cols, accumulate)
    }

    fn scale(&self, x: &mut GpuTensor, alpha: f32) -> Result<(), Error> {
        elementwise::scale(&self.gpu, x, alpha)
    }

    fn dropout(&self, x: &mut GpuTensor, p: f32, stream: RandomStream) -> Result<(), Error> {
        random::dropout(&self.gpu, x, p, stream)
    }

    fn cross_entropy(
        &self,
        logits: &GpuTensor,
        targets: &GpuIndices,
        losses: &mut GpuTensor,
        dlogits: &mut GpuTensor,
        vocab: usize,
        grad_scale: f32,
    ) -> Result<(), Error> {
        loss::cross_entropy(
            &self.gpu, logits, targets, losses, dlogits, vocab, grad_scale,
        )
    }

    fn bce_with_logits(
        &self,
        logits: &GpuTensor,
        labels: &GpuTensor,
        weights: &GpuTensor,
        losses: &mut GpuTensor,
        dlogits: &mut GpuTensor,
        grad_scale: f32,
    ) -> Result<(), Error> {
        loss::bce_with_logits(
            &self.gpu, logits, labels, weights, losses, dlogits, grad_scale,
        )
    }

    fn sample_categorical(
        &self,
        logits: &GpuTensor,
        vocab: usize,
        stream: RandomStream,
        out: &mut GpuIndices,
    ) -> Result<(), Error> {
        random::sample_categorical(&self.gpu, logits, vocab, stream, out)
    }

    fn sum(
        &self,
        x: &GpuTensor,
        out: &mut GpuTensor,
        index: usize,
        alpha: f32,
    ) -> Result<(), Error> {
        reduce::sum(&self.gpu, x, out, index, alpha)
    }

    fn sums_of_squares(&self, xs: &[&GpuTensor], out: &mut GpuTensor) -> Result<(), Error> {
        reduce::sums_of_squares(&self.gpu, xs, out)
    }

    fn adam_update(
        &self,
        param: &mut GpuTensor,
        grad: &GpuTensor,
        moments: (&mut GpuTensor, &mut GpuTensor),
        spec: AdamSpec,
        clip: Option<Clip<'_, GpuTensor>>,
    ) -> Result<(), Error> {
        optimizer::adam_update(&self.gpu, param, grad, moments, spec, clip)
    }

    /// Up to seven tensors that share their constants per `adam_update_many` dispatch, where
    /// the adapter binds its 29 storage buffers and [`WgpuBackend::multi_tensor`] holds (else
    /// one tensor per kernel): the same arithmetic per element as [`Backend::adam_update`].
    fn adam_updates(
        &self,
        updates: &mut [AdamTensors<'_, GpuTensor>],
        clip: Option<Clip<'_, GpuTensor>>,
    ) -> Result<(), Error> {
        optimizer::adam_updates(&self.gpu, updates, clip)
    }

    fn fused_attention_uses_buffers(&self, spec: &AttentionSpec) -> bool {
        !attention::supports(&self.gpu, spec)
    }

    fn attention_training_uses_probabilities(
        &self,
        spec: &AttentionSpec,
        products: Precision,
    ) -> bool {
        !attention_training::supports(&self.gpu, spec, products)
    }

    /// The fused kernel of `fused_attention.wgsl` (one pass over key tiles, online softmax,
    /// `buffers` untouched); heads wider than it takes run the provided composition.
    fn fused_attention(
        &self,
        ops: AttentionOperands<'_, Self>,
        buffers: AttentionBuffers<'_, GpuTensor>,
        context: &mut GpuTensor,
        spec: AttentionSpec,
    ) -> Result<(), Error> {
        if !attention::supports(&self.gpu, &spec) {
            return composed_attention(self, ops, buffers, context, spec);
        }
        attention::fused_attention(&self.gpu, operands(&ops), context, None, spec)
    }

    /// The tiled training kernels of `attention_tile.wgsl` (context and one logsumexp
    /// per query row into `buffers.stats`; the probabilities are never written) where
    /// the kernels take the shape (heads up to 64 wide, on a device that binds 13 storage
    /// buffers per kernel), the provided composition elsewhere; with f16 `products` (mixed
    /// precision) the kernels round every operand to binary16.
    fn attention_forward_train(
        &self,
        ops: AttentionOperands<'_, Self>,
        buffers: TrainingBuffers<'_, GpuTensor>,
        context: &mut GpuTensor,
        dropout: Option<AttentionDropout>,
        spec: AttentionSpec,
        products: Precision,
    ) -> Result<(), Error> {
        if !attention_training::supports(&self.gpu, &spec, products) {
            return composed_attention_forward_train(
                self, ops, buffers, context, dropout, spec, products,
            );
        }
        attention_training::forward(
            &self.gpu,
            operands(&ops),
            context,
            buffers.stats,
            dropout,
            spec,
            products,
        )
    }

    /// The backward of [`WgpuBackend::attention_forward_train`]: the query-owned and the
    /// key-owned passes recompute the probabilities from the saved statistics (or the
    /// provided composition, exactly where the forward composed).
    fn attention_backward(
        &self,
        ops: AttentionOperands<'_, Self>,
        saved: SavedAttention<'_, GpuTensor>,
        dcontext: &GpuTensor,
        dropout: Option<AttentionDropout>,
        grads: AttentionGrads<'_, GpuTensor>,
        spec: AttentionSpec,
        products: Precision,
    ) -> Result<(), Error> {
        if !attention_training::supports(&self.gpu, &spec, products) {
            return composed_attention_backward(
                self, ops, saved, dcontext, dropout, grads, spec, products,
            );
        }
        let grads = attention_training::Grads {
            drows: grads.drows,
            dquery: grads.dquery,
            dkey: grads.dkey,
            dvalue: grads.dvalue,
            dc2p: grads.dc2p,
            dp2c: grads.dp2c,
        };
        attention_training::backward(
            &self.gpu,
            operands(&ops),
            saved.context,
            saved.stats,
            dcontext,
            dropout,
            grads,
            spec,
            products,
        )
    }
}

/// The kernels' view of the trait's attention operands.
fn operands<'a>(ops: &AttentionOperands<'a, WgpuBackend>) -> attention::Operands<'a> {
    attention::Operands {
        query: ops.query,
        key: ops.key,
        value: ops.value,
        pos_key: ops.pos_key,
        pos_query: ops.pos_query,
        index: ops.index,
        mask: ops.mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_and_tensors_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<WgpuBackend>();
        shareable::<GpuTensor>();
        shareable::<GpuIndices>();
    }
}
