//! The params uniforms of one submission in one buffer: each launch's params are staged on the
//! CPU at the device's uniform offset alignment and uploaded with one `write_buffer` just before
//! the submit, so no buffer is created per dispatch (DESIGN rule 2).
//!
//! Reusing the buffer across submissions is safe because a queue orders a `write_buffer` ahead
//! of the next submit's commands and after every earlier submission's commands: the upload for
//! submission N+1 cannot overwrite params that submission N still reads.

/// Starting capacity: 256 launches at the usual 256-byte alignment.
const INITIAL_BYTES: u64 = 64 << 10;

/// Growth stops here (16384 launches at 256 bytes); a larger recording is submitted in parts.
const MAX_BYTES: u64 = 4 << 20;

pub(crate) struct UniformArena {
    buffer: wgpu::Buffer,
    staged: Vec<u8>,
    align: u64,
}

/// Where one launch's params live in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Slot {
    pub offset: u64,
    pub size: u64,
}

impl UniformArena {
    pub fn new(device: &wgpu::Device, limits: &wgpu::Limits) -> UniformArena {
        let align = u64::from(limits.min_uniform_buffer_offset_alignment).max(4);
        UniformArena {
            buffer: create(device, INITIAL_BYTES.min(limits.max_buffer_size)),
            staged: Vec::new(),
            align,
        }
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Stages `params` and returns their slot, or `None` when the arena is full (the caller
    /// submits what is staged, then [`UniformArena::grow`]s). The size is padded to 4 bytes
    /// (at least 4), as `create_buffer_init` pads.
    pub fn push(&mut self, params: &[u8]) -> Option<Slot> {
        let offset = (self.staged.len() as u64).next_multiple_of(self.align);
        let size = (params.len() as u64).next_multiple_of(4).max(4);
        if offset + size > self.buffer.size() {
            return None;
        }
        self.staged.resize(offset as usize, 0);
        self.staged.extend_from_slice(params);
        self.staged.resize((offset + size) as usize, 0);
        Some(Slot { offset, size })
    }

    /// Uploads the staged params; call right before submitting the launches that read them.
    pub fn upload(&mut self, queue: &wgpu::Queue) {
        if !self.staged.is_empty() {
            queue.write_buffer(&self.buffer, 0, &self.staged);
            self.staged.clear();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// After a submit emptied the arena: replaces the buffer with one twice as large (up to
    /// [`MAX_BYTES`], or larger if one launch's `params_len` needs it), so that a recording
    /// of this length fits next time. Returns whether the buffer changed; bind groups that
    /// name the old one are then stale. The old buffer lives on while submitted work uses it.
    pub fn grow(&mut self, device: &wgpu::Device, params_len: usize, max_buffer: u64) -> bool {
        debug_assert!(self.staged.is_empty());
        let now = self.buffer.size();
        let want = (2 * now)
            .min(MAX_BYTES)
            .max((params_len as u64).next_multiple_of(4).max(4))
            .min(max_buffer);
        if want <= now {
            return false;
        }
        self.buffer = create(device, want);
        true
    }
}

fn create(device: &wgpu::Device, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("hoa params"),
        size,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}
