//! Buffer pool: a dropped tensor's buffer goes back here and is handed to the next tensor of
//! the same size class, so a model step reuses its activations' memory instead of asking the
//! driver (slow on every backend, and a source of fragmentation).
//!
//! A request gets the free buffer of its class that sorts first (by wgpu's handle order), not
//! the last one given back: a step that starts with the same free buffers then gets the same
//! buffers for the same tensors every time, so its bind groups are found in the cache. (With a
//! stack, each step would hand them out in a new permutation of the last one.)

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

pub const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

#[derive(Default)]
pub struct BufferPool {
    free: Mutex<HashMap<u64, BTreeSet<wgpu::Buffer>>>,
}

impl BufferPool {
    /// Rounds a request up to its size class: 256-byte granules for small buffers, then eight
    /// classes per power of two (at most 12.5% waste).
    pub fn size_class(bytes: u64) -> u64 {
        let b = bytes.max(16).next_multiple_of(256);
        if b <= 4096 {
            return b;
        }
        let step = (b.next_power_of_two() / 16).max(256);
        b.next_multiple_of(step)
    }

    pub fn take(&self, device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        let class = Self::size_class(bytes);
        if let Some(b) = self
            .free
            .lock()
            .unwrap()
            .get_mut(&class)
            .and_then(BTreeSet::pop_first)
        {
            return b;
        }
        Self::create(device, class)
    }

    /// A new buffer of `bytes` rounded up to 256 (the smallest size class), outside the pool.
    pub fn create(device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("hoa tensor"),
            size: bytes.max(16).next_multiple_of(256),
            usage: USAGE,
            mapped_at_creation: false,
        })
    }

    pub fn give(&self, buffer: wgpu::Buffer) {
        let class = buffer.size();
        self.free
            .lock()
            .unwrap()
            .entry(class)
            .or_default()
            .insert(buffer);
    }

    /// Bytes held by the pool and not in use.
    pub fn idle_bytes(&self) -> u64 {
        let free = self.free.lock().unwrap();
        free.iter().map(|(k, v)| k * v.len() as u64).sum()
    }

    pub fn clear(&self) {
        self.free.lock().unwrap().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::BufferPool;

    #[test]
    fn size_classes_cover_the_request_with_little_waste() {
        for bytes in [1u64, 15, 256, 257, 4097, 100_000, 1 << 20, (1 << 27) - 3] {
            let c = BufferPool::size_class(bytes);
            assert!(c >= bytes && c % 256 == 0, "{bytes} -> {c}");
            assert!(
                c <= 256.max(bytes + bytes / 8 + 256),
                "{bytes} -> {c} wastes too much"
            );
        }
    }
}
