//! The kernels that draw counter-based random numbers: dropout and categorical sampling.

use deberta_core::Error;
use deberta_core::kernels::check_sample_categorical;
use deberta_core::random::RandomStream;

use super::word;
use crate::device::Gpu;
use crate::kernels::{ELEMENTWISE_WG, Kernel};
use crate::params::{DropoutParams, SamplingParams};
use crate::tensor::{GpuIndices, GpuTensor};

/// The stream's seed as the two Philox key words.
fn seed_words(stream: RandomStream) -> (u32, u32) {
    (stream.seed as u32, (stream.seed >> 32) as u32)
}

/// Inverted dropout in place with `stream`'s mask (also its own backward).
pub(crate) fn dropout(
    gpu: &Gpu,
    x: &mut GpuTensor,
    p: f32,
    stream: RandomStream,
) -> Result<(), Error> {
    let buffer = gpu.buf(x)?;
    if p <= 0.0 || x.is_empty() {
        return Ok(());
    }
    let (seed_lo, seed_hi) = seed_words(stream);
    let params = DropoutParams {
        n: word(x.len())?,
        p,
        // The CPU kernel's f32 arithmetic, so kept values are scaled identically.
        scale: 1.0 / (1.0 - p),
        seed_lo,
        seed_hi,
        step: stream.step,
        stream: stream.stream,
        _pad0: 0,
    };
    let blocks = x.len().div_ceil(4);
    gpu.dispatch(
        Kernel::Dropout,
        &params,
        &[buffer],
        gpu.grid_for(blocks, ELEMENTWISE_WG)?,
    )
}

/// One id per row of `logits` `[out.len(), vocab]`, drawn by inverse transform.
pub(crate) fn sample_categorical(
    gpu: &Gpu,
    logits: &GpuTensor,
    vocab: usize,
    stream: RandomStream,
    out: &mut GpuIndices,
) -> Result<(), Error> {
    let rows = out.len();
    check_sample_categorical(rows, vocab, logits.len())?;
    let buffers = [gpu.buf(out)?, gpu.buf(logits)?];
    if rows == 0 {
        return Ok(());
    }
    let (seed_lo, seed_hi) = seed_words(stream);
    let params = SamplingParams {
        rows: word(rows)?,
        vocab: word(vocab)?,
        seed_lo,
        seed_hi,
        step: stream.step,
        stream: stream.stream,
        zero: 0,
        _pad0: 0,
    };
    gpu.dispatch(
        Kernel::SampleCategorical,
        &params,
        &buffers,
        gpu.grid(rows as u64)?,
    )
}
