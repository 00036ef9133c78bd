//! # deberta-gpu
//!
//! The [`Backend`](deberta_core::Backend) of `deberta-core` on [wgpu](https://wgpu.rs): every
//! kernel of the model — forward, backward, losses, sampling, optimizer — as a WGSL compute
//! shader over tensors that stay on the device. Only `upload`, `write` and `download` cross to
//! the host.
//!
//! * **Shaders**: one `.wgsl` file per kernel family under `src/shaders/`, compiled into
//!   pipelines on first use and cached; parameters are `#[repr(C)]` structs mirrored by each
//!   file's `struct Params`.
//! * **Batching**: kernels are recorded into one command encoder and submitted when a host
//!   transfer needs them or the batch is full; nothing waits per kernel.
//! * **Memory**: tensors come from a pool of size-classed buffers and return to it on drop, so
//!   a steady-state training step creates no buffers.
//! * **Determinism**: every output element has one owner thread and every sum a fixed order
//!   (workgroup reductions over a tree in workgroup memory, or over subgroups where the
//!   device has them, in an order the device fixes; scatters owned by the first occurrence of
//!   a row);
//!   dropout masks and sampled ids are the CPU backend's exactly (Philox4x32-10 in WGSL, and a
//!   port of libm's `expf` for sampling).
//!
//! ```no_run
//! use deberta_core::Backend;
//! use deberta_gpu::{AdapterChoice, WgpuBackend};
//!
//! let gpu = WgpuBackend::new(AdapterChoice::default())?;
//! let x = gpu.upload(&[1.0, 2.0, 3.0])?;
//! let mut total = gpu.zeros(1)?;
//! gpu.sum(&x, &mut total, 0, 1.0)?;
//! let mut out = [0.0f32];
//! gpu.download(&total, &mut out)?;
//! assert_eq!(out[0], 6.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

mod adapter;
mod backend;
mod cooperative_probe;
mod device;
mod error;
mod f16_probe;
mod kernel_timer;
mod kernels;
mod matmul_source;
mod measured_tiles;
mod ops;
mod params;
mod pipelines;
mod pool;
mod recorder;
mod tensor;
mod test_backend;
mod transfer;

pub use adapter::{AdapterChoice, AdapterSummary, Capabilities, CooperativeShape, list_adapters};
pub use backend::{DeviceMemory, WgpuBackend};
pub use device::DeviceOptions;
pub use error::GpuError;
pub use measured_tiles::MeasuredTile;
pub use ops::matmul::MatmulTiles;
pub use tensor::{DeviceBuffer, GpuIndices, GpuTensor};
pub use test_backend::test_backend;
/// The kind of an adapter (discrete, integrated, virtual, CPU, other), as wgpu reports it.
pub use wgpu::DeviceType;
