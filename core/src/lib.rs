//! # deberta-core
//!
//! The numerical heart of the DeBERTa-v2/v3 implementation: configuration, relative
//! positions, tensor kernels, disentangled attention and the model layers, written
//! once against the [`Backend`] compute trait.
//!
//! The crate is `#![no_std]` and layered by feature:
//!
//! | feature | what it adds |
//! |---|---|
//! | *(none)* | [`config`], [`relative_position`], the slice [`kernels`] and the [`Backend`] trait: everything the heap-free edge runtime needs |
//! | `alloc` | [`CpuBackend`] (tensors in `Vec<f32>`), the parameter store and the model ([`model`]) |
//! | `std` (default) | runtime SIMD dispatch: sgemm through the gemm crate (AVX-512, AVX2/FMA or NEON; matrixmultiply without it) and the slice kernels compiled per level ([`simd`]); threads (rayon) for every [`CpuBackend`] kernel |
//!
//! Every kernel is deterministic: reductions run in a fixed order, so the same inputs give
//! bit-identical outputs on every run, thread count and SIMD level.
#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod activation;
pub mod backend;
pub mod config;
pub mod dtype;
pub mod edge;
pub mod error;
pub mod fast_math;
pub mod kernels;
pub mod precision;
pub mod random;
pub mod relative_position;
pub mod simd;
#[cfg(feature = "alloc")]
pub mod train;

#[cfg(feature = "alloc")]
mod cpu;
#[cfg(feature = "alloc")]
pub mod model;

pub use activation::Activation;
pub use backend::{Backend, PeakDeviceMemory};
pub use config::ModelConfig;
#[cfg(feature = "alloc")]
pub use cpu::CpuBackend;
pub use error::Error;
pub use precision::Precision;

/// Result type of every fallible operation in this crate.
pub type Result<T> = core::result::Result<T, Error>;
