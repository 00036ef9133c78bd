//! Command recording: kernels are encoded into one command encoder and submitted together when
//! a host transfer needs them done, or (early submission, the default) every
//! [`EARLY_SUBMIT_DISPATCHES`] kernels, so that the device starts on them while the host
//! records the rest instead of idling until the next transfer; without early submission, when
//! the batch fills the parameter arena — never one submission (or wait) per kernel.
//!
//! The kernels of a submission are recorded into one compute pass (ended by a transfer
//! command or the submission), which cuts the host's cost of recording and finishing them by
//! about 40 % against a pass per kernel; timed kernels ([`KernelTimer`]) each get a pass of
//! their own.
//!
//! Each dispatch's `Params` go into a host-side copy of the uniform arena at a fresh slot and
//! are bound with a dynamic offset; the arena is written once, right before the submission that
//! reads it. Bind groups are cached by kernel and buffer identity, so a training step that
//! reuses its tensors creates none after the first.

use std::collections::HashMap;
use std::num::NonZeroU64;

use bytemuck::Pod;
use deberta_core::Error;

use crate::device::Gpu;
use crate::error::device_error;
use crate::kernel_timer::KernelTimer;
use crate::kernels::Kernel;
use crate::pool::PooledBuffer;

/// Bytes of the uniform arena: the parameters of one submission.
pub(crate) const ARENA_BYTES: u64 = 1 << 20;
/// Kernels per submission with early submission on ([`crate::DeviceOptions::early_submission`]):
/// enough that a submission's fixed cost (finishing the encoder, writing the parameter arena,
/// the driver's submit) stays small against the kernels' own recording, few enough that the
/// device is never long without work while the host records (cubecl, another wgpu runtime,
/// submits every 32 kernels by default).
pub(crate) const EARLY_SUBMIT_DISPATCHES: u64 = 64;
/// Cached bind groups beyond which the cache is cleared (buffers churned through the pool).
const MAX_BIND_GROUPS: usize = 16_384;
/// Most storage buffers a kernel binds (the many-tensor Adam update's); a bind
/// group's cache key holds every one of them.
pub(crate) const MAX_BINDINGS: usize = 29;

/// Identity of a bind group: the kernel and the ids of its storage buffers.
type BindKey = (Kernel, [u64; MAX_BINDINGS]);

/// The commands recorded since the last submission.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    /// The open compute pass of the encoder (declared first, so that it ends before the
    /// encoder is dropped).
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
    /// Bind groups created so far (cache misses).
    bind_groups_created: u64,
    /// Timestamps around every kernel, while kernel timing is on.
    timer: Option<KernelTimer>,
}

impl Gpu {
    /// Records one dispatch of `kernel` over `groups` workgroups with `params` and its storage
    /// `buffers` (in binding order).
    pub(crate) fn dispatch<P: Pod>(
        &self,
        kernel: Kernel,
        params: &P,
        buffers: &[&PooledBuffer],
        groups: [u32; 3],
    ) -> Result<(), Error> {
        debug_assert_eq!(buffers.len(), kernel.bindings().len(), "{kernel:?}");
        debug_assert_eq!(size_of::<P>() as u64, kernel.shader().params_size());
        let compiled = self.pipelines.get(&self.device, &self.errors, kernel)?;
        let mut guard = self.lock_recorder()?;
        let recorder = &mut *guard;
        let submission_bytes = match self.early_submission {
            true => EARLY_SUBMIT_DISPATCHES * self.slot,
            false => ARENA_BYTES,
        };
        if recorder.params.len() as u64 + self.slot > submission_bytes
            || recorder.timer.as_ref().is_some_and(KernelTimer::is_full)
        {
            self.submit(recorder)?;
        }
        let offset = recorder.params.len();
        recorder
            .params
            .extend_from_slice(bytemuck::bytes_of(params));
        recorder.params.resize(offset + self.slot as usize, 0);
        if buffers.len() > MAX_BINDINGS {
            // A key that left a buffer out would hand back a bind group of other buffers.
            return Err(device_error(
                "a kernel binds more storage buffers than the cache keys",
            ));
        }
        let mut key: BindKey = (kernel, [u64::MAX; MAX_BINDINGS]);
        for (slot, buffer) in key.1.iter_mut().zip(buffers) {
            *slot = buffer.id;
        }
        if recorder.bind_groups.len() >= MAX_BIND_GROUPS {
            recorder.bind_groups.clear();
        }
        let created = &mut recorder.bind_groups_created;
        let bind_group = recorder.bind_groups.entry(key).or_insert_with(|| {
            *created += 1;
            let params_binding = wgpu::BufferBinding {
                buffer: &self.arena,
                offset: 0,
                size: NonZeroU64::new(kernel.shader().params_size()),
            };
            let entries: Vec<wgpu::BindGroupEntry<'_>> =
                std::iter::once(wgpu::BindingResource::Buffer(params_binding))
                    .chain(buffers.iter().map(|b| b.buffer.as_entire_binding()))
                    .zip(0u32..)
                    .map(|(resource, binding)| wgpu::BindGroupEntry { binding, resource })
                    .collect();
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry()),
                layout: &compiled.layout,
                entries: &entries,
            })
        });
        let timestamp_writes = recorder.timer.as_mut().map(|timer| timer.next_pass(kernel));
        // The kernels of a submission share one compute pass, which only a transfer or the
        // submission ends (wgpu still orders each dispatch after the writes it reads); a timed
        // kernel is a pass of its own, its timestamps the pass's.
        let own_pass = timestamp_writes.is_some() || !self.shared_pass;
        if own_pass {
            recorder.pass = None;
        }
        let pass = match &mut recorder.pass {
            Some(pass) => pass,
            None => {
                let encoder = recorder
                    .encoder
                    .get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
                let pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(if own_pass {
                        kernel.entry()
                    } else {
                        "deberta kernels"
                    }),
                    timestamp_writes,
                });
                recorder.pass.insert(pass.forget_lifetime())
            }
        };
        pass.set_pipeline(&compiled.pipeline);
        pass.set_bind_group(0, &*bind_group, &[offset as u32]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        if own_pass {
            recorder.pass = None;
        }
        Ok(())
    }

    /// Records a transfer command (clear, copy) in order with the kernels.
    pub(crate) fn encode(
        &self,
        record: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<(), Error> {
        let mut recorder = self.lock_recorder()?;
        recorder.pass = None;
        let encoder = recorder
            .encoder
            .get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        record(encoder);
        Ok(())
    }

    /// Submits everything recorded so far (without waiting for it).
    pub(crate) fn flush(&self) -> Result<(), Error> {
        let mut recorder = self.lock_recorder()?;
        self.submit(&mut recorder)
    }

    /// Switches kernel timing on (on a device with timestamp queries; `false` elsewhere) or
    /// off; what is recorded so far is submitted first, untimed kernels untimed.
    pub(crate) fn time_kernels(&self, on: bool) -> Result<bool, Error> {
        if !self.timestamps {
            return Ok(false);
        }
        let mut recorder = self.lock_recorder()?;
        self.submit(&mut recorder)?;
        match (on, recorder.timer.is_some()) {
            (true, false) => recorder.timer = Some(KernelTimer::new(&self.device, &self.queue)),
            (false, true) => recorder.timer = None,
            _ => {}
        }
        Ok(on)
    }

    /// Submits what is recorded, then hands each kernel's device time since the last drain
    /// to `visit` (see [`KernelTimer::drain`]).
    pub(crate) fn drain_kernel_times(
        &self,
        visit: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<(), Error> {
        let mut recorder = self.lock_recorder()?;
        self.submit(&mut recorder)?;
        if let Some(timer) = recorder.timer.as_mut() {
            timer.drain(visit);
        }
        Ok(())
    }

    /// Bind groups created so far: once per kernel and set of buffers while the cache holds
    /// them.
    pub(crate) fn bind_groups_created(&self) -> Result<u64, Error> {
        Ok(self.lock_recorder()?.bind_groups_created)
    }

    /// Drops every cached bind group (they keep their buffers alive).
    pub(crate) fn forget_bind_groups(&self) -> Result<(), Error> {
        self.lock_recorder()?.bind_groups.clear();
        Ok(())
    }

    fn lock_recorder(&self) -> Result<std::sync::MutexGuard<'_, Recorder>, Error> {
        self.recorder
            .lock()
            .map_err(|_| device_error("command recorder lock poisoned"))
    }

    fn submit(&self, recorder: &mut Recorder) -> Result<(), Error> {
        recorder.pass = None;
        let Some(mut encoder) = recorder.encoder.take() else {
            recorder.params.clear();
            return Ok(());
        };
        if !recorder.params.is_empty() {
            // Lands before the commands of this submission (wgpu orders it after the previous
            // submissions that read the arena).
            self.queue.write_buffer(&self.arena, 0, &recorder.params);
            recorder.params.clear();
        }
        let timed = recorder
            .timer
            .as_ref()
            .is_some_and(|timer| timer.resolve(&mut encoder));
        self.queue.submit([encoder.finish()]);
        match (timed, recorder.timer.as_mut()) {
            (true, Some(timer)) => timer.collect(&self.device),
            _ => {
                // Lets wgpu reclaim finished submissions; never blocks.
                let _ = self.device.poll(wgpu::PollType::Poll);
                Ok(())
            }
        }
    }
}
