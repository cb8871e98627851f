//! Tensor: a device buffer with a shape and an element type. Always contiguous, row-major;
//! views (chunks, broadcasts) are expressed by the kernels' stride parameters instead.

use super::pool::BufferPool;
use super::Context;
use crate::error::{Error, Result};
use std::sync::{Arc, Weak};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    /// Name used in pipeline keys and labels.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        }
    }
}

struct Storage {
    buffer: Option<wgpu::Buffer>,
    pool: Weak<BufferPool>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let (Some(b), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            pool.give(b);
        }
    }
}

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype.name())
    }
}

impl Tensor {
    /// Allocates an uninitialized tensor from the pool, refusing sizes the device cannot bind.
    // wgpu's handles are !Send on wasm32 (one thread there), so the Arc shared across threads
    // natively is only an Rc in the browser.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub fn empty(ctx: &Context, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::allocate(ctx, shape, dtype, true)
    }

    /// An uninitialized tensor with a buffer of its own, not from the pool: for weights, which
    /// live as long as their model. Its size is the tensor's rounded up to 256 bytes (the
    /// pool's size classes waste up to 1/8), and when it is dropped the memory goes back to
    /// the driver rather than to a pool that would keep an unloaded model's weights.
    // See `empty` for the Arc.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub fn empty_owned(ctx: &Context, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::allocate(ctx, shape, dtype, false)
    }

    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    fn allocate(ctx: &Context, shape: &[usize], dtype: DType, pooled: bool) -> Result<Tensor> {
        if dtype == DType::F16 && !ctx.has_f16() {
            return Err(Error::MissingFeature {
                op: "tensor",
                feature: "shader-f16",
                hint: "use f32 on this adapter",
            });
        }
        let numel: usize = shape.iter().product();
        let bytes = (numel as u64) * dtype.size() as u64;
        let max = ctx.max_binding_bytes();
        let size = match pooled {
            true => BufferPool::size_class(bytes),
            false => bytes.max(16).next_multiple_of(256),
        };
        if size > max {
            return Err(Error::Limit {
                op: "tensor",
                limit: "max_storage_buffer_binding_size",
                needed: bytes,
                max,
                hint: format!("a {shape:?} {} tensor is too large for one binding; use a smaller size or batch", dtype.name()),
            });
        }
        let (buffer, pool) = match pooled {
            true => (ctx.pool.take(&ctx.device, bytes), Arc::downgrade(&ctx.pool)),
            false => (BufferPool::create(&ctx.device, bytes), Weak::new()),
        };
        if ctx.poison {
            ctx.write_after_pending(&buffer, &vec![0xFF; buffer.size() as usize])?;
        }
        Ok(Tensor {
            storage: Arc::new(Storage {
                buffer: Some(buffer),
                pool,
            }),
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Uploads f32 data, converting to `dtype`.
    pub fn from_f32(ctx: &Context, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::shape(
                "upload",
                format!(
                    "shape {shape:?} holds {numel} elements but {} were given",
                    data.len()
                ),
            ));
        }
        let t = Tensor::empty(ctx, shape, dtype)?;
        match dtype {
            DType::F32 => ctx.write_after_pending(t.buffer(), &pad4(bytemuck::cast_slice(data)))?,
            DType::F16 => {
                let h: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
                ctx.write_after_pending(t.buffer(), &pad4(bytemuck::cast_slice(&h)))?;
            }
        }
        Ok(t)
    }

    /// Rows `start..start + count` of dimension 0 as a new tensor (a buffer copy ordered after
    /// every dispatch recorded so far), for processing an activation in chunks that each fit
    /// one binding.
    pub fn narrow_rows(&self, ctx: &Context, start: usize, count: usize) -> Result<Tensor> {
        let rows = *self.shape.first().unwrap_or(&0);
        if count == 0 || start + count > rows {
            return Err(Error::shape(
                "narrow_rows",
                format!("rows {start}..{} of {:?}", start + count, self.shape),
            ));
        }
        let row_bytes = (self.numel() / rows * self.dtype.size()) as u64;
        let (offset, size) = (start as u64 * row_bytes, count as u64 * row_bytes);
        if offset % 4 != 0 || size % 4 != 0 {
            return Err(Error::shape(
                "narrow_rows",
                format!(
                    "rows of {row_bytes} bytes cannot be copied at 4-byte granularity ({:?} {})",
                    self.shape,
                    self.dtype.name()
                ),
            ));
        }
        let mut shape = self.shape.clone();
        shape[0] = count;
        let out = Tensor::empty(ctx, &shape, self.dtype)?;
        ctx.submit_with(false, |enc| {
            enc.copy_buffer_to_buffer(self.buffer(), offset, out.buffer(), 0, size);
        })?;
        Ok(out)
    }

    /// A tensor of `shape` filled with `value` (NaN for test outputs, so unwritten elements show).
    pub fn full(ctx: &Context, shape: &[usize], value: f32, dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        Tensor::from_f32(ctx, &vec![value; n], shape, dtype)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        self.numel() as u64 * self.dtype.size() as u64
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        self.storage
            .buffer
            .as_ref()
            .expect("live tensor has a buffer")
    }

    /// Same storage, new shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot view {:?} ({} elements) as {shape:?} ({n})",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// Copies the tensor back to the host as f32. Flushes recorded work first. Async so that
    /// the browser never blocks; native code can use [`Tensor::to_vec`].
    pub async fn read(&self, ctx: &Context) -> Result<Vec<f32>> {
        let bytes = self.bytes().next_multiple_of(4);
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("hoa readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // The copy goes in the same submit as the recorded work that produces this tensor.
        ctx.submit_with(false, |enc| {
            enc.copy_buffer_to_buffer(self.buffer(), 0, &staging, 0, bytes)
        })?;
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Map(e.to_string()))?;
        rx.await
            .map_err(|e| Error::Map(e.to_string()))?
            .map_err(|e| Error::Map(e.to_string()))?;
        ctx.take_errors("readback")?;
        let out = {
            let data = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Map(e.to_string()))?;
            let n = self.numel();
            match self.dtype {
                DType::F32 => bytemuck::cast_slice::<u8, f32>(&data)[..n].to_vec(),
                DType::F16 => bytemuck::cast_slice::<u8, half::f16>(&data)[..n]
                    .iter()
                    .map(|h| h.to_f32())
                    .collect(),
            }
        };
        staging.unmap();
        Ok(out)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec(&self, ctx: &Context) -> Result<Vec<f32>> {
        pollster::block_on(self.read(ctx))
    }
}

/// `write_buffer` needs a multiple of 4 bytes (odd-length f16 data).
pub(crate) fn pad4(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if bytes.len() % 4 == 0 {
        bytes.into()
    } else {
        let mut v = bytes.to_vec();
        v.resize(bytes.len().next_multiple_of(4), 0);
        v.into()
    }
}
