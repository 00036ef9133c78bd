//! Device time per kernel, from timestamp queries written at the beginning and end of each
//! kernel's compute pass (adapters with `TIMESTAMP_QUERY`), summed per entry point.
//!
//! Off unless switched on ([`deberta_core::Backend::time_kernels`]). When on, each submission
//! resolves its timestamps and waits for them, so the device never runs ahead of the host:
//! kernel times are the device's, but a timed run's wall-clock time is not an untimed one's.

use std::collections::HashMap;
use std::sync::mpsc;

use deberta_core::Error;

use crate::error::device_error;
use crate::kernels::Kernel;

/// Kernels timed per submission (two timestamps each); a submission is cut when it is full.
pub(crate) const TIMED_PER_SUBMISSION: u32 = 2048;
/// Bytes of one timestamp.
const TIMESTAMP_BYTES: u64 = 8;

/// The query set, its resolve and readback buffers, the kernels of the submission being
/// recorded (one begin/end pair each, in order) and the sums so far.
#[derive(Debug)]
pub(crate) struct KernelTimer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period: f64,
    pending: Vec<Kernel>,
    /// Kernel → (dispatches, nanoseconds).
    totals: HashMap<Kernel, (u64, u64)>,
}

impl KernelTimer {
    /// A timer on `device` (which must have been opened with `TIMESTAMP_QUERY`).
    pub(crate) fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let count = 2 * TIMED_PER_SUBMISSION;
        let bytes = u64::from(count) * TIMESTAMP_BYTES;
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        KernelTimer {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolved: buffer(
                "resolved kernel timestamps",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "kernel timestamps readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            period: f64::from(queue.get_timestamp_period()),
            pending: Vec::new(),
            totals: HashMap::new(),
        }
    }

    /// Whether this submission has no room for another kernel.
    pub(crate) fn is_full(&self) -> bool {
        self.pending.len() >= TIMED_PER_SUBMISSION as usize
    }

    /// The timestamp writes of the next pass, which runs `kernel` (the caller checks
    /// [`KernelTimer::is_full`] first).
    pub(crate) fn next_pass(&mut self, kernel: Kernel) -> wgpu::ComputePassTimestampWrites<'_> {
        let begin = 2 * self.pending.len() as u32;
        self.pending.push(kernel);
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(begin),
            end_of_pass_write_index: Some(begin + 1),
        }
    }

    /// Records, at the end of the submission's commands, the copy of its timestamps to the
    /// readback buffer; `false` when it timed nothing.
    pub(crate) fn resolve(&self, encoder: &mut wgpu::CommandEncoder) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let count = 2 * self.pending.len() as u32;
        encoder.resolve_query_set(&self.queries, 0..count, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(
            &self.resolved,
            0,
            &self.readback,
            0,
            u64::from(count) * TIMESTAMP_BYTES,
        );
        true
    }

    /// Waits for the submitted timestamps and adds each kernel's time to its sum.
    pub(crate) fn collect(&mut self, device: &wgpu::Device) -> Result<(), Error> {
        let bytes = 2 * self.pending.len() as u64 * TIMESTAMP_BYTES;
        let slice = self.readback.slice(0..bytes);
        let (sender, receiver) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|_| device_error("waiting for the GPU failed"))?;
        if !matches!(receiver.recv(), Ok(Ok(()))) {
            return Err(device_error("mapping the kernel timestamps failed"));
        }
        {
            let view = slice
                .get_mapped_range()
                .map_err(|_| device_error("mapping the kernel timestamps failed"))?;
            let ticks: &[u64] = bytemuck::cast_slice(&view);
            for (kernel, pair) in self.pending.iter().zip(ticks.chunks_exact(2)) {
                let nanos = (pair[1].saturating_sub(pair[0]) as f64 * self.period) as u64;
                let total = self.totals.entry(*kernel).or_default();
                total.0 += 1;
                total.1 += nanos;
            }
        }
        self.readback.unmap();
        self.pending.clear();
        Ok(())
    }

    /// Hands every kernel's (name, dispatches, nanoseconds) since the last drain to `visit`,
    /// the longest first, and forgets them.
    pub(crate) fn drain(&mut self, visit: &mut dyn FnMut(&str, u64, u64)) {
        let mut totals: Vec<_> = std::mem::take(&mut self.totals).into_iter().collect();
        totals.sort_by_key(|&(kernel, (_, nanos))| (std::cmp::Reverse(nanos), kernel.entry()));
        for (kernel, (dispatches, nanos)) in totals {
            visit(&format!("{kernel:?}"), dispatches, nanos);
        }
    }
}
