//! The heap-free edge runtime: replaced-token detection with a DeBERTa-v3 discriminator on a
//! microcontroller, read zero-copy from a compact flat model file.
//!
//! This module compiles without `alloc` and without `std`:
//!
//! * [`format`] describes the versioned little-endian file (`DBTE`): a fixed header with every
//!   configuration value the discriminator needs, a tensor table in a canonical order, a
//!   16-byte-aligned payload of f32, f16 or int8 weights (int8 with one f32 scale per output
//!   channel or table row), CRC-32s of header and payload, and an optional opaque tokenizer
//!   section. The relative-position projections `Kr = LN(rel)·Wkᵀ + bk` and
//!   `Qr = LN(rel)·Wqᵀ + bq` are computed at export for the rows a sequence of the file's
//!   `max_seq_len` can read, so the runtime never needs the relative table.
//! * [`EdgeModel::parse`] validates every field, offset, length, shape and checksum of any byte
//!   string and returns a model or a typed [`EdgeError`]: it never panics and never reads out of
//!   bounds.
//! * [`arena_bytes`] says how much scratch memory a sequence length needs, and [`detect`] runs
//!   the discriminator (embeddings → encoder layers with disentangled attention → RTD head
//!   `LN(h + h_CLS) → dense → act → classifier`) in that caller-provided arena, writing one
//!   replaced-token logit per token.
//!
//! Numerics: LayerNorm, biases, softmax and attention scores are f32 and use the slice
//! [`kernels`](crate::kernels) of the CPU backend, except the matrix products: sgemm
//! (`kernels::matmul`) allocates its packing buffers on the heap,
//! so the runtime has its own heap-free loops. f32 weights are read in place, f16 weights are
//! decoded one row at a time, and int8 weights meet activations quantised per row to int8,
//! with i32 accumulation and one f32 rescale per output.

mod arena;
mod attention;
mod cast;
mod crc32;
mod error;
pub mod format;
mod gemm;
pub mod layout;
mod linear;
mod model;
pub mod quant;
mod runtime;

pub use arena::arena_bytes;
pub use crc32::crc32;
pub use error::EdgeError;
pub use model::{EdgeModel, TensorView};
pub use runtime::detect;
