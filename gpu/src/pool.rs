//! Pooled device buffers. Requests are rounded up to a size class (eight classes per power of
//! two, so at most 12.5% is wasted) and a dropped buffer goes back to the free list of its
//! class, so a training loop that allocates the same shapes every step creates no new buffers
//! after the first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use deberta_core::Error;

use crate::error::device_error;

/// Smallest buffer handed out, in bytes.
const MIN_CLASS: u64 = 256;

/// The size class of a request: at least [`MIN_CLASS`], else rounded up to a multiple of an
/// eighth of its leading power of two.
pub(crate) fn size_class(bytes: u64) -> u64 {
    if bytes <= MIN_CLASS {
        return MIN_CLASS;
    }
    let step = (1u64 << (63 - bytes.leading_zeros())) / 8;
    bytes.div_ceil(step) * step
}

/// A device buffer owned by the pool while free and by one tensor while in use.
#[derive(Debug)]
pub(crate) struct PooledBuffer {
    /// Unique for the pool's lifetime (keys cached bind groups).
    pub(crate) id: u64,
    /// The buffer, `class` bytes.
    pub(crate) buffer: wgpu::Buffer,
    class: u64,
    /// The free list it returns to: its class, or [`EMPTY_LIST`].
    list: u64,
}

/// The free list of the buffers of empty tensors (placeholders such as a released gradient's),
/// apart from the tensors of their size class, so that their comings and goings never change
/// which buffer a real tensor gets.
const EMPTY_LIST: u64 = 0;

/// Free lists of buffers of one usage, by size class.
#[derive(Debug)]
pub(crate) struct Pool {
    device: wgpu::Device,
    usage: wgpu::BufferUsages,
    /// The largest buffer the device allows with this usage.
    max_bytes: u64,
    free: Mutex<HashMap<u64, Vec<PooledBuffer>>>,
    next_id: AtomicU64,
    /// Bytes of the buffers that exist (in use or free) and their high-water mark.
    held_bytes: AtomicU64,
    peak_bytes: AtomicU64,
    /// Bytes of the buffers tensors hold (created or taken from a free list, not yet given
    /// back) and their high-water mark.
    in_use_bytes: AtomicU64,
    peak_in_use_bytes: AtomicU64,
}

impl Pool {
    /// An empty pool of buffers with `usage`, none larger than `max_bytes`.
    pub(crate) fn new(device: wgpu::Device, usage: wgpu::BufferUsages, max_bytes: u64) -> Self {
        Pool {
            device,
            usage,
            max_bytes,
            free: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
            in_use_bytes: AtomicU64::new(0),
            peak_in_use_bytes: AtomicU64::new(0),
        }
    }

    /// A buffer of at least `bytes` bytes (contents unspecified).
    pub(crate) fn take(&self, bytes: u64) -> Result<PooledBuffer, Error> {
        if bytes > self.max_bytes {
            return Err(Error::DeviceLimit {
                what: "the device's largest storage buffer binding",
                requested: bytes,
                limit: self.max_bytes,
            });
        }
        let class = size_class(bytes).min((self.max_bytes & !3).max(MIN_CLASS));
        let list = match bytes {
            0 => EMPTY_LIST,
            _ => class,
        };
        if let Some(buffer) = self
            .free
            .lock()
            .map_err(|_| device_error("buffer pool lock poisoned"))?
            .get_mut(&list)
            .and_then(Vec::pop)
        {
            self.count_taken(class);
            return Ok(buffer);
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("deberta tensor"),
            size: class,
            usage: self.usage,
            mapped_at_creation: false,
        });
        if pollster::block_on(scope.pop()).is_some() {
            return Err(device_error("out of device memory"));
        }
        let held = self.held_bytes.fetch_add(class, Ordering::Relaxed) + class;
        self.peak_bytes.fetch_max(held, Ordering::Relaxed);
        self.count_taken(class);
        Ok(PooledBuffer {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            buffer,
            class,
            list,
        })
    }

    fn count_taken(&self, class: u64) {
        let in_use = self.in_use_bytes.fetch_add(class, Ordering::Relaxed) + class;
        self.peak_in_use_bytes.fetch_max(in_use, Ordering::Relaxed);
    }

    /// Returns a buffer to its free list, which hands out its oldest buffer first (the
    /// lowest id; the list is kept in descending id order).
    ///
    /// Which buffer a request gets then depends only on which ones are free, not on the order
    /// they came back in: a training step that frees and allocates the same tensors each time
    /// gives each tensor the same buffer each time, so the bind groups cached by buffer are
    /// found again (a last-in-first-out list swapped the buffers of a released workspace's
    /// tensors from step to step, and every such kernel made a new bind group).
    pub(crate) fn give(&self, buffer: PooledBuffer) {
        self.in_use_bytes.fetch_sub(buffer.class, Ordering::Relaxed);
        if let Ok(mut free) = self.free.lock() {
            let list = free.entry(buffer.list).or_default();
            let at = list.partition_point(|b| b.id > buffer.id);
            list.insert(at, buffer);
        }
    }

    /// Buffers created so far (free or in use).
    pub(crate) fn created(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Bytes of the buffers the pool has created and not dropped (in use or free), and the
    /// most it ever held.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (
            self.held_bytes.load(Ordering::Relaxed),
            self.peak_bytes.load(Ordering::Relaxed),
        )
    }

    /// Bytes of the buffers tensors hold now, and the most they ever held.
    pub(crate) fn in_use_bytes(&self) -> (u64, u64) {
        (
            self.in_use_bytes.load(Ordering::Relaxed),
            self.peak_in_use_bytes.load(Ordering::Relaxed),
        )
    }

    /// Drops every free buffer.
    pub(crate) fn trim(&self) {
        if let Ok(mut free) = self.free.lock() {
            let dropped: u64 = free.values().flatten().map(|b| b.class).sum();
            self.held_bytes.fetch_sub(dropped, Ordering::Relaxed);
            free.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_by_at_most_an_eighth() {
        assert_eq!(size_class(0), MIN_CLASS);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 288);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), (1 << 20) + (1 << 17));
        for bytes in [300u64, 4097, 123_456, 393_523_200] {
            let class = size_class(bytes);
            assert!(
                class >= bytes && class - bytes <= bytes / 8,
                "{bytes} -> {class}"
            );
            assert_eq!(class % 4, 0);
            assert_eq!(size_class(class), class, "classes are fixed points");
        }
    }
}
