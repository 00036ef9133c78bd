//! Host ↔ device transfers: the only places data crosses. Writes first submit the recorded
//! kernels (so a write never overtakes a kernel recorded before it); reads submit, copy into a
//! pooled staging buffer and wait for that one mapping.

use std::sync::mpsc;

use deberta_core::Error;

use crate::device::Gpu;
use crate::error::device_error;
use crate::pool::PooledBuffer;

impl Gpu {
    /// Writes `data` at byte `offset` of `dst`, after every command recorded so far.
    pub(crate) fn write_bytes(
        &self,
        dst: &PooledBuffer,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        self.flush()?;
        self.queue.write_buffer(&dst.buffer, offset, data);
        Ok(())
    }

    /// Reads the first `out.len()` bytes of `src` once every recorded command has run.
    pub(crate) fn read_bytes(&self, src: &PooledBuffer, out: &mut [u8]) -> Result<(), Error> {
        if out.is_empty() {
            return self.check_errors();
        }
        let bytes = out.len() as u64;
        let staging = self.readback.take(bytes)?;
        self.encode(|encoder| {
            encoder.copy_buffer_to_buffer(&src.buffer, 0, &staging.buffer, 0, bytes)
        })?;
        self.flush()?;
        let slice = staging.buffer.slice(0..bytes);
        let (sender, receiver) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|_| device_error("waiting for the GPU failed"))?;
        match receiver.recv() {
            Ok(Ok(())) => {}
            _ => {
                self.check_errors()?;
                return Err(device_error("mapping a download buffer failed"));
            }
        }
        {
            let view = slice
                .get_mapped_range()
                .map_err(|_| device_error("mapping a download buffer failed"))?;
            out.copy_from_slice(&view);
        }
        staging.buffer.unmap();
        self.readback.give(staging);
        self.check_errors()
    }
}
