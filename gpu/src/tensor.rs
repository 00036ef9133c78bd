//! Device tensors: a pooled buffer plus an element count. Dropping one returns its buffer to
//! the pool (commands already recorded against it still run first: the pool hands buffers out
//! again only to later commands, and host writes flush the recorded ones before they land).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::pool::{Pool, PooledBuffer};

/// A buffer of `len` elements of `T` on the device: [`GpuTensor`] (`f32`) or [`GpuIndices`]
/// (`u32`). Create them through the [`Backend`](deberta_core::Backend) methods of
/// [`WgpuBackend`](crate::WgpuBackend).
pub struct DeviceBuffer<T> {
    buffer: Option<PooledBuffer>,
    len: usize,
    pool: Arc<Pool>,
    _element: PhantomData<T>,
}

/// A device buffer of `f32` (the backend's `Tensor`).
pub type GpuTensor = DeviceBuffer<f32>;
/// A device buffer of `u32` (the backend's `Indices`).
pub type GpuIndices = DeviceBuffer<u32>;

impl<T> DeviceBuffer<T> {
    pub(crate) fn new(buffer: PooledBuffer, len: usize, pool: Arc<Pool>) -> Self {
        DeviceBuffer {
            buffer: Some(buffer),
            len,
            pool,
            _element: PhantomData,
        }
    }

    /// Elements in the tensor.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pooled buffer (present until drop).
    pub(crate) fn pooled(&self) -> &PooledBuffer {
        self.buffer
            .as_ref()
            .expect("a DeviceBuffer holds its buffer until it is dropped")
    }

    /// Whether the tensor was allocated from `pool` (that is, by the same backend).
    pub(crate) fn belongs_to(&self, pool: &Arc<Pool>) -> bool {
        Arc::ptr_eq(&self.pool, pool)
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.give(buffer);
        }
    }
}

impl<T> fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("element", &std::any::type_name::<T>())
            .field("len", &self.len)
            .field("buffer", &self.buffer.as_ref().map(|b| b.id))
            .finish()
    }
}
