//! Allocation, host transfers, fill and device-side copies.

use std::sync::Arc;

use deberta_core::Error;
use deberta_core::backend::check_range;

use super::word;
use crate::device::Gpu;
use crate::kernels::{ELEMENTWISE_WG, Kernel};
use crate::params::ElementwiseParams;
use crate::tensor::{DeviceBuffer, GpuTensor};

/// Bytes of one element of every device buffer (`f32` or `u32`).
const ELEMENT: u64 = 4;

/// A buffer of `len` elements with unspecified contents.
pub(crate) fn alloc<T>(gpu: &Gpu, len: usize) -> Result<DeviceBuffer<T>, Error> {
    // Element indices must fit the kernels' u32 arithmetic with room for one-past-the-end.
    let bytes = u64::from(word(len)?) * ELEMENT;
    let buffer = gpu.pool.take(bytes)?;
    Ok(DeviceBuffer::new(buffer, len, Arc::clone(&gpu.pool)))
}

/// A zero-filled buffer.
pub(crate) fn zeros<T>(gpu: &Gpu, len: usize) -> Result<DeviceBuffer<T>, Error> {
    let tensor = alloc(gpu, len)?;
    let buffer = &gpu.buf(&tensor)?.buffer;
    gpu.encode(|encoder| encoder.clear_buffer(buffer, 0, None))?;
    Ok(tensor)
}

/// A buffer holding a copy of `data`.
pub(crate) fn upload<T: bytemuck::Pod>(gpu: &Gpu, data: &[T]) -> Result<DeviceBuffer<T>, Error> {
    let tensor = alloc(gpu, data.len())?;
    gpu.write_bytes(gpu.buf(&tensor)?, 0, bytemuck::cast_slice(data))?;
    Ok(tensor)
}

/// `tensor[offset..][..data.len()] = data`.
pub(crate) fn write(
    gpu: &Gpu,
    tensor: &mut GpuTensor,
    offset: usize,
    data: &[f32],
) -> Result<(), Error> {
    check_range("write", offset, data.len(), tensor.len())?;
    gpu.write_bytes(
        gpu.buf(tensor)?,
        offset as u64 * ELEMENT,
        bytemuck::cast_slice(data),
    )
}

/// Copies the first `out.len()` elements to the host.
pub(crate) fn download<T: bytemuck::Pod>(
    gpu: &Gpu,
    what: &'static str,
    tensor: &DeviceBuffer<T>,
    out: &mut [T],
) -> Result<(), Error> {
    check_range(what, 0, out.len(), tensor.len())?;
    gpu.read_bytes(gpu.buf(tensor)?, bytemuck::cast_slice_mut(out))
}

/// Sets every element to `value`.
pub(crate) fn fill(gpu: &Gpu, tensor: &mut GpuTensor, value: f32) -> Result<(), Error> {
    let buffer = gpu.buf(tensor)?;
    if tensor.is_empty() {
        return Ok(());
    }
    if value.to_bits() == 0 {
        return gpu.encode(|encoder| encoder.clear_buffer(&buffer.buffer, 0, None));
    }
    let params = ElementwiseParams {
        n: word(tensor.len())?,
        alpha: value,
        ..Default::default()
    };
    let grid = gpu.grid_for(tensor.len(), ELEMENTWISE_WG)?;
    gpu.dispatch(Kernel::Fill, &params, &[buffer], grid)
}

/// `dst[dst_offset..][..len] = src[src_offset..][..len]`.
pub(crate) fn copy(
    gpu: &Gpu,
    src: &GpuTensor,
    src_offset: usize,
    dst: &mut GpuTensor,
    dst_offset: usize,
    len: usize,
) -> Result<(), Error> {
    check_range("copy", src_offset, len, src.len())?;
    check_range("copy", dst_offset, len, dst.len())?;
    let (from, to) = (gpu.buf(src)?, gpu.buf(dst)?);
    if len == 0 {
        return Ok(());
    }
    gpu.encode(|encoder| {
        encoder.copy_buffer_to_buffer(
            &from.buffer,
            src_offset as u64 * ELEMENT,
            &to.buffer,
            dst_offset as u64 * ELEMENT,
            len as u64 * ELEMENT,
        )
    })
}
