//! One reusable staging buffer for weight uploads (native only): filled while mapped, then
//! copied into the weights' buffers by `copy_buffer_to_buffer` in the next submit, and mapped
//! again for the next chunk once the GPU has read it.
//!
//! Why not `queue.write_buffer`: wgpu allocates a fresh staging buffer for every call. Its
//! allocator sub-allocates those from the same memory blocks as the weights and gives a block
//! back to the driver only when it is entirely empty, so on a CPU adapter (lavapipe, where
//! device memory is host memory) the freed staging holes between weights stay resident: about
//! a quarter of the weights' size more at peak. One buffer, allocated once and kept, leaves no
//! holes.

/// The upload buffer's size: at most this many bytes wait to be copied at once.
pub const UPLOAD_BUFFER_BYTES: u64 = 16 << 20;

/// A pending copy from the upload buffer: destination, destination offset, source offset,
/// length (all multiples of 4).
type Copy = (wgpu::Buffer, u64, u64, u64);

pub(crate) struct UploadBuffer {
    buffer: wgpu::Buffer,
    /// Bytes of the buffer filled since it was last copied out.
    used: u64,
    copies: Vec<Copy>,
    mapped: bool,
}

impl UploadBuffer {
    pub fn new(device: &wgpu::Device, max_buffer_size: u64) -> UploadBuffer {
        UploadBuffer {
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("hoa upload"),
                size: UPLOAD_BUFFER_BYTES.min(max_buffer_size) & !(wgpu::MAP_ALIGNMENT - 1),
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            }),
            used: 0,
            copies: Vec::new(),
            mapped: true,
        }
    }

    /// Bytes filled and not yet copied out.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Free space, 0 when the buffer must be copied out (and mapped again) first.
    pub fn room(&self) -> u64 {
        if self.mapped {
            self.buffer.size() - self.used
        } else {
            0
        }
    }

    /// Copies as much of `data` (its length a multiple of 4) as there is room for into the
    /// buffer, to be copied to `dst` at `offset`; returns how many bytes it took (a multiple
    /// of 4). Each piece starts 8-aligned, as mapped ranges must.
    pub fn stage(&mut self, dst: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<usize, String> {
        let n = (data.len() as u64).min(self.room());
        if n == 0 {
            return Ok(0);
        }
        let at = self.used;
        self.buffer
            .slice(at..at + n)
            .get_mapped_range_mut()
            .map_err(|e| e.to_string())?
            .copy_from_slice(&data[..n as usize]);
        self.copies.push((dst.clone(), offset, at, n));
        self.used = (at + n).next_multiple_of(wgpu::MAP_ALIGNMENT);
        Ok(n as usize)
    }

    /// Records the pending copies into `enc` and unmaps the buffer for them; a no-op when
    /// nothing is staged.
    pub fn encode(&mut self, enc: &mut wgpu::CommandEncoder) {
        if self.copies.is_empty() {
            return;
        }
        self.buffer.unmap();
        self.mapped = false;
        for (dst, offset, at, n) in self.copies.drain(..) {
            enc.copy_buffer_to_buffer(&self.buffer, at, &dst, offset, n);
        }
        self.used = 0;
    }

    /// Maps the buffer again after its copies were submitted, waiting for the GPU to finish
    /// them.
    pub fn remap(&mut self, device: &wgpu::Device) -> Result<(), String> {
        if self.mapped {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.buffer
            .slice(..)
            .map_async(wgpu::MapMode::Write, move |r| {
                let _ = tx.send(r);
            });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| e.to_string())?;
        rx.recv()
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.mapped = true;
        Ok(())
    }
}
