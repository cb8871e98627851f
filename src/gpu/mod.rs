//! The GPU runtime: adapter and device bootstrap, the recording of kernel dispatches, and
//! submission. Mirrors wgpu's hello_compute split: acquiring a device is separate from the work,
//! so tests, benches, the CLI and the browser all hand a [`Context`] to the kernels.

mod bind_group_cache;
mod pipelines;
mod pool;
mod tensor;
pub mod tuning;
mod uniform_arena;
#[cfg(not(target_arch = "wasm32"))]
mod upload_buffer;

use bind_group_cache::BindGroupCache;
pub use bind_group_cache::BindGroupStats;
pub use pipelines::{PipelineCache, PipelineKey, ShaderFamily, ROW_REDUCE};
pub use pool::BufferPool;
pub(crate) use tensor::pad4;
pub use tensor::{DType, Tensor};

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use uniform_arena::UniformArena;
#[cfg(not(target_arch = "wasm32"))]
use upload_buffer::UploadBuffer;
#[cfg(not(target_arch = "wasm32"))]
pub use upload_buffer::UPLOAD_BUFFER_BYTES;

/// Queued writes wait in driver staging memory until the next submit (host memory on a CPU
/// adapter, and in the browser): past this many staged bytes an upload submits them and waits,
/// so loading a model stages at most this much at once rather than its whole size.
pub const STAGING_LIMIT: u64 = 64 << 20;

/// How to pick the adapter. Every field can also come from the environment (see
/// [`ContextOptions::from_env`]) so that one binary serves any machine.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Backends to consider (`HOA_BACKEND`: comma list of vulkan, metal, dx12, gl, webgpu).
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name (`HOA_ADAPTER`), e.g. "llvmpipe" or "nvidia".
    pub adapter_name: Option<String>,
    /// The adapter at this index of [`list_adapters`] (`HOA_ADAPTER_INDEX`; `hoa info` prints
    /// the list); without it wgpu picks the high-performance one.
    pub adapter_index: Option<usize>,
    /// Refuse f16 even when the adapter has it (`HOA_NO_F16=1`).
    pub disable_f16: bool,
    /// Fill every new tensor with NaN (all-ones bytes, a NaN in f32 and f16) so that an
    /// element a kernel fails to write shows up in a test (`HOA_POISON=1`).
    pub poison: bool,
    /// Time every dispatch on its own (GPU timestamps) and keep totals per kernel, for
    /// [`Context::profile_report`] (`HOA_PROFILE=1`). Slow: one submit per dispatch.
    pub profile: bool,
    /// Ask for no more than WebGPU's default buffer limits (128 MiB per storage binding,
    /// 256 MiB per buffer), which every WebGPU device has, even where the adapter offers more
    /// (`HOA_WEBGPU_LIMITS=1`). The browser build always does.
    pub webgpu_default_limits: bool,
    /// Where the tuning cache `hoa tune` writes is read from (`HOA_TUNE_CACHE`: a path, or
    /// `off`; default: the platform cache folder). Native only.
    pub tune_cache: tuning::TuneCache,
}

impl ContextOptions {
    /// Reads `HOA_BACKEND`, `HOA_ADAPTER`, `HOA_ADAPTER_INDEX`, `HOA_NO_F16`, `HOA_POISON`,
    /// `HOA_PROFILE`, `HOA_WEBGPU_LIMITS` and `HOA_TUNE_CACHE`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        ContextOptions {
            backends: var("HOA_BACKEND").map(|s| wgpu::Backends::from_comma_list(&s)),
            adapter_name: var("HOA_ADAPTER"),
            // Not a number: an index no list has, so that Context::new says what is wrong.
            adapter_index: var("HOA_ADAPTER_INDEX")
                .map(|v| v.trim().parse().unwrap_or(NOT_AN_INDEX)),
            disable_f16: var("HOA_NO_F16").is_some_and(|v| v != "0"),
            poison: var("HOA_POISON").is_some_and(|v| v != "0"),
            profile: var("HOA_PROFILE").is_some_and(|v| v != "0"),
            webgpu_default_limits: var("HOA_WEBGPU_LIMITS").is_some_and(|v| v != "0"),
            tune_cache: tuning::TuneCache::from_env(),
        }
    }
}

/// One recorded kernel launch. Everything it needs is owned, so a model can record a step once
/// and replay it; the bind group keeps its buffers alive.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

/// What has been recorded since the last submit, with the params arena it reads and the bind
/// groups that may be reused; one lock, so a launch's slot and its submit cannot interleave
/// with another thread's.
struct Recording {
    dispatches: Vec<Dispatch>,
    arena: UniformArena,
    bind_groups: BindGroupCache,
    /// Weight bytes staged for copying, made at the first weight upload and kept.
    #[cfg(not(target_arch = "wasm32"))]
    upload: Option<UploadBuffer>,
}

/// The device plus what the kernels share: the pipeline cache, the buffer pool, and the
/// dispatches recorded since the last submit.
pub struct Context {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pub(crate) poison: bool,
    profile: Option<Mutex<std::collections::HashMap<String, (u32, f64)>>>,
    pub(crate) pipelines: PipelineCache,
    pub(crate) pool: Arc<BufferPool>,
    pending: Mutex<Recording>,
    errors: Arc<Mutex<Vec<String>>>,
    timestamps: Option<Timestamps>,
    /// FLOPs of the launches recorded since the last [`Context::reset_flops`] (see
    /// [`Context::add_flops`]).
    flops: std::sync::atomic::AtomicU64,
    /// Bytes written to the queue since the last submit (see [`STAGING_LIMIT`]).
    staged: AtomicU64,
    /// Which kernel variants this adapter takes (`hoa tune`'s cache, else the defaults).
    tuning: tuning::Tuning,
}

struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    period_ns: f64,
}

impl Context {
    /// Picks an adapter and creates a device, asking for `shader-f16`, subgroups and timestamp
    /// queries only where the adapter has them, and for the adapter's own limits.
    // wgpu's handles are !Send on wasm32 (one thread there), so the Arc shared across threads
    // natively is only an Rc in the browser.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub async fn new(opts: ContextOptions) -> Result<Context> {
        let instance = instance(&opts);
        let adapter = select_adapter(&instance, &opts).await?;
        let info = adapter.get_info();
        let available = adapter.features();
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP;
        if !opts.disable_f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        let features = available & wanted;
        let mut limits = adapter.limits();
        if opts.webgpu_default_limits {
            let d = wgpu::Limits::default();
            limits.max_storage_buffer_binding_size = limits
                .max_storage_buffer_binding_size
                .min(d.max_storage_buffer_binding_size);
            limits.max_buffer_size = limits.max_buffer_size.min(d.max_buffer_size);
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("hoa"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let timestamps = features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then(|| Timestamps::new(&device, &queue));
        #[cfg(not(target_arch = "wasm32"))]
        let tuning = tuning::load(&opts.tune_cache, &info);
        #[cfg(target_arch = "wasm32")]
        let tuning = tuning::Tuning::default();
        Ok(Context {
            tuning,
            poison: opts.poison,
            profile: opts.profile.then(Mutex::default),
            pipelines: PipelineCache::default(),
            pool: Arc::new(BufferPool::default()),
            pending: Mutex::new(Recording {
                dispatches: Vec::new(),
                arena: UniformArena::new(&device, &limits),
                bind_groups: BindGroupCache::default(),
                #[cfg(not(target_arch = "wasm32"))]
                upload: None,
            }),
            errors,
            timestamps,
            flops: Default::default(),
            staged: AtomicU64::new(0),
            adapter,
            device,
            queue,
            info,
            features,
            limits,
        })
    }

    /// Blocking constructor for native code (CLI, tests, benches).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: ContextOptions) -> Result<Context> {
        pollster::block_on(Self::new(opts))
    }

    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    pub fn has_timestamps(&self) -> bool {
        self.timestamps.is_some()
    }

    /// The kernel variants this adapter takes: the tuning cache's entry for it (loaded when
    /// the context was made), else every kernel's default.
    pub fn tuning(&self) -> &tuning::Tuning {
        &self.tuning
    }

    /// One line naming the adapter, its backend and driver: always print it, because without a
    /// Vulkan driver wgpu silently falls back to GL.
    pub fn describe(&self) -> String {
        describe_adapter(&self.info)
    }

    /// Whether the adapter is a CPU (lavapipe, SwiftShader, WARP): its device memory is the
    /// host's.
    pub fn host_memory(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The largest buffer a kernel may bind as one storage binding.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Splits `n` workgroups over x and y so neither exceeds the per-dimension limit; shaders
    /// rebuild the linear index as `wid.x + wid.y * nwg.x` and skip the overhang.
    pub fn grid_1d(&self, n: u64) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        if n <= max {
            [n.max(1) as u32, 1, 1]
        } else {
            let y = n.div_ceil(max);
            [n.div_ceil(y) as u32, y as u32, 1]
        }
    }

    /// Checks a dispatch's workgroup counts against the device limit.
    pub fn check_grid(&self, op: &'static str, wg: [u32; 3]) -> Result<()> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if let Some(&n) = wg.iter().find(|&&n| n > max) {
            return Err(Error::Limit {
                op,
                limit: "max_compute_workgroups_per_dimension",
                needed: n as u64,
                max: max as u64,
                hint: "split the batch or reduce the size".into(),
            });
        }
        Ok(())
    }

    /// Records a kernel launch; it runs at the next [`Context::flush`] (readbacks flush).
    pub fn record(&self, d: Dispatch) {
        self.pending.lock().unwrap().dispatches.push(d);
    }

    /// Records a launch of `pipeline` (bindings numbered in order: inputs, output, params).
    /// Nothing is created per launch: `params` go into the submission's uniform arena and the
    /// bind group comes from the cache when the same buffers and slot were bound before.
    pub fn launch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        label: &str,
        buffers: &[&wgpu::Buffer],
        params: &[u8],
        workgroups: [u32; 3],
    ) {
        {
            let mut rec = self.pending.lock().unwrap();
            let Some(slot) = self.params_slot(&mut rec, params) else {
                self.errors.lock().unwrap().push(format!(
                    "{label}: params of {} bytes do not fit one buffer",
                    params.len()
                ));
                return;
            };
            let rec = &mut *rec;
            let bind_group = rec.bind_groups.get(
                &self.device,
                pipeline,
                label,
                buffers,
                rec.arena.buffer(),
                slot,
            );
            rec.dispatches.push(Dispatch {
                pipeline: pipeline.clone(),
                bind_group,
                workgroups,
            });
        }
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(p) = &self.profile {
            // Errors surface at the caller's next flush or readback.
            if let Ok(Some(t)) = self.flush_timed() {
                let mut p = p.lock().unwrap();
                let e = p.entry(label.to_string()).or_default();
                e.0 += 1;
                e.1 += t;
            }
        }
    }

    /// Stages `params` in the arena. When it is full, submits what is recorded (with its
    /// params) and grows it, so that a recording this long fits next time.
    fn params_slot(&self, rec: &mut Recording, params: &[u8]) -> Option<uniform_arena::Slot> {
        if let Some(slot) = rec.arena.push(params) {
            return Some(slot);
        }
        if !rec.dispatches.is_empty() || !rec.arena.is_empty() {
            self.submit_locked(rec, false, |_| {});
        }
        if rec
            .arena
            .grow(&self.device, params.len(), self.limits.max_buffer_size)
        {
            // Entries name the old buffer; none can hit again.
            rec.bind_groups.clear();
        }
        rec.arena.push(params)
    }

    /// How many launches found their bind group in the cache, and how many created one.
    pub fn bind_group_stats(&self) -> BindGroupStats {
        self.pending.lock().unwrap().bind_groups.stats()
    }

    /// Counts the FLOPs of a launch as PyTorch's `FlopCounterMode` does: a kernel that
    /// multiplies (matmul, conv2d, attention) adds 2 per multiply-add of its math; elementwise
    /// kernels and norms add nothing. Host-side only.
    pub fn add_flops(&self, n: u64) {
        self.flops
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The FLOPs counted since the context was made or last [`Context::reset_flops`].
    pub fn flops(&self) -> u64 {
        self.flops.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the FLOP count back to 0.
    pub fn reset_flops(&self) {
        self.flops.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `profile` is on (every dispatch is submitted and timed on its own).
    pub fn profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// With `profile` on: GPU time per kernel since the last report, largest first.
    pub fn profile_report(&self) -> Option<String> {
        let mut p = self.profile.as_ref()?.lock().unwrap();
        let total: f64 = p.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = p.drain().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut s = format!(
            "{:<28} {:>7} {:>11} {:>6}\n",
            "kernel", "calls", "total ms", "share"
        );
        for (k, (n, t)) in rows {
            s.push_str(&format!(
                "{k:<28} {n:>7} {:>11.1} {:>5.1}%\n",
                t * 1e3,
                100.0 * t / total.max(1e-12)
            ));
        }
        Some(s)
    }

    /// Number of dispatches recorded and not yet submitted.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap().dispatches.len()
    }

    /// Submits every recorded dispatch in one compute pass of one command buffer.
    pub fn flush(&self) -> Result<()> {
        self.submit(false).map(|_| ())
    }

    /// Like [`Context::flush`], but brackets the pass with timestamp queries and returns the GPU
    /// time in seconds, or `None` when the adapter has no timestamp queries. Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn flush_timed(&self) -> Result<Option<f64>> {
        let idx = self.submit(self.timestamps.is_some())?;
        self.wait(idx)?;
        let Some(ts) = &self.timestamps else {
            return Ok(None);
        };
        let slice = ts.read.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Map(e.to_string()))?;
        rx.recv()
            .map_err(|e| Error::Map(e.to_string()))?
            .map_err(|e| Error::Map(e.to_string()))?;
        let t: [u64; 2] = {
            let data = slice
                .get_mapped_range()
                .map_err(|e| Error::Map(e.to_string()))?;
            let v: &[u64] = bytemuck::cast_slice(&data);
            [v[0], v[1]]
        };
        ts.read.unmap();
        Ok(Some(t[1].saturating_sub(t[0]) as f64 * ts.period_ns * 1e-9))
    }

    fn submit(&self, timed: bool) -> Result<wgpu::SubmissionIndex> {
        self.submit_with(timed, |_| {})
    }

    /// Submits the recorded dispatches followed by `extra` (a copy, say) in one command
    /// buffer. The pending list stays locked until the queue has it, so work another thread
    /// records meanwhile can never be overtaken by `extra`.
    pub(crate) fn submit_with(
        &self,
        timed: bool,
        extra: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<wgpu::SubmissionIndex> {
        let mut pending = self.pending.lock().unwrap();
        let idx = self.submit_locked(&mut pending, timed, extra);
        drop(pending);
        self.take_errors("submit")?;
        Ok(idx)
    }

    fn submit_locked(
        &self,
        rec: &mut Recording,
        timed: bool,
        extra: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> wgpu::SubmissionIndex {
        let work = std::mem::take(&mut rec.dispatches);
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("hoa") });
        // Staged weight copies first: they were staged after every dispatch submitted before
        // and before every one recorded since (see `write_weights_at`).
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(up) = rec.upload.as_mut() {
            up.encode(&mut enc);
        }
        let ts = self.timestamps.as_ref().filter(|_| timed);
        if !work.is_empty() || ts.is_some() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("hoa"),
                timestamp_writes: ts.map(|t| wgpu::ComputePassTimestampWrites {
                    query_set: &t.set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            for d in &work {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
            }
        }
        if let Some(t) = ts {
            enc.resolve_query_set(&t.set, 0..2, &t.resolve, 0);
            enc.copy_buffer_to_buffer(&t.resolve, 0, &t.read, 0, 16);
        }
        extra(&mut enc);
        // Queued writes run ahead of this submit's commands and after every earlier
        // submission's, so the arena is free to be rewritten here.
        rec.arena.upload(&self.queue);
        self.staged.store(0, Ordering::Relaxed);
        self.queue.submit([enc.finish()])
    }

    /// Writes `data` into `buffer` after every dispatch recorded so far: `write_buffer` would
    /// otherwise run before them (the queue puts writes ahead of the next submit), which
    /// breaks when the buffer came back from the pool while a recorded dispatch still reads it.
    pub(crate) fn write_after_pending(&self, buffer: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        self.write_after_pending_at(buffer, 0, data)
    }

    /// The recording, locked, with every dispatch recorded so far submitted: a write the
    /// queue makes now then lands after them.
    fn lock_after_recorded(&self) -> std::sync::MutexGuard<'_, Recording> {
        let mut pending = self.pending.lock().unwrap();
        if !pending.dispatches.is_empty() || !pending.arena.is_empty() {
            self.submit_locked(&mut pending, false, |_| {});
        }
        pending
    }

    /// [`Context::write_after_pending`] at byte `offset` (a multiple of 4). Past
    /// [`STAGING_LIMIT`] staged bytes it submits them and waits, so that their staging
    /// memory is freed as the upload goes rather than after the whole model.
    pub(crate) fn write_after_pending_at(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let mut pending = self.lock_after_recorded();
        self.queue.write_buffer(buffer, offset, data);
        let staged = self.staged.fetch_add(data.len() as u64, Ordering::Relaxed);
        if staged + data.len() as u64 >= STAGING_LIMIT {
            let idx = self.submit_locked(&mut pending, false, |_| {});
            drop(pending);
            #[cfg(not(target_arch = "wasm32"))]
            self.wait(idx)?;
            #[cfg(target_arch = "wasm32")]
            let _ = idx;
        } else {
            drop(pending);
        }
        self.take_errors("upload")
    }

    /// Writes weight bytes (`data.len()` a multiple of 4) into `buffer` at `offset` after
    /// every dispatch recorded so far, as [`Context::write_after_pending_at`] does. Natively
    /// they go through one reusable upload buffer of [`UPLOAD_BUFFER_BYTES`] (copied out and
    /// waited for whenever it is full), so a model's load leaves no freed staging memory
    /// behind; in the browser, where mapping cannot block, through the queue.
    pub(crate) fn write_weights_at(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        return self.write_after_pending_at(buffer, offset, data);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let gpu = |e: String| Error::Gpu {
                context: "upload".into(),
                msg: e,
            };
            let mut pending = self.lock_after_recorded();
            let (mut data, mut offset) = (data, offset);
            while !data.is_empty() {
                let up = pending.upload.get_or_insert_with(|| {
                    UploadBuffer::new(&self.device, self.limits.max_buffer_size)
                });
                if up.room() > 0 {
                    let n = up.stage(buffer, offset, data).map_err(gpu)?;
                    (data, offset) = (&data[n..], offset + n as u64);
                } else if up.used() > 0 {
                    self.submit_locked(&mut pending, false, |_| {});
                } else {
                    up.remap(&self.device).map_err(gpu)?;
                }
            }
            drop(pending);
            self.take_errors("upload")
        }
    }

    /// Bytes written to the queue and not yet submitted: at most [`STAGING_LIMIT`] after any
    /// upload.
    pub fn staged_bytes(&self) -> u64 {
        self.staged.load(Ordering::Relaxed)
    }

    /// Blocks until `idx` (or everything submitted) has finished. Native only: the browser
    /// must await [`Tensor::read`] instead.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self, idx: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(idx),
                timeout: None,
            })
            .map_err(|e| Error::Gpu {
                context: "wait".into(),
                msg: e.to_string(),
            })?;
        self.take_errors("wait")
    }

    /// Flushes and waits, without blocking the thread, until the GPU has finished everything
    /// submitted: per-step progress in the browser as well as natively.
    pub async fn finish(&self) -> Result<()> {
        self.flush()?;
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                context: "finish".into(),
                msg: e.to_string(),
            })?;
        rx.await.map_err(|e| Error::Gpu {
            context: "finish".into(),
            msg: e.to_string(),
        })?;
        self.take_errors("finish")
    }

    /// Flushes and waits for the GPU to finish everything.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sync(&self) -> Result<()> {
        let idx = self.submit(false)?;
        self.wait(idx)
    }

    /// Returns the validation errors wgpu reported since the last call as one error.
    pub fn take_errors(&self, context: &str) -> Result<()> {
        let errs = std::mem::take(&mut *self.errors.lock().unwrap());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Gpu {
                context: context.into(),
                msg: errs.join("; "),
            })
        }
    }

    /// Device memory in MB, for `HOA_MEMORY_REPORT`: what live buffers use and what wgpu's
    /// allocator reserves (its blocks: freed space inside a block stays reserved), and what
    /// hoa's pool holds idle.
    pub fn memory_report(&self) -> String {
        const MB: f64 = 1048576.0;
        let idle = self.pool.idle_bytes() as f64 / MB;
        match self.device.generate_allocator_report() {
            Some(r) => format!(
                "{:.0} MB allocated in {} blocks reserving {:.0} MB (largest {:.0} MB); {idle:.0} MB \
                 idle in the pool",
                r.total_allocated_bytes as f64 / MB,
                r.blocks.len(),
                r.total_reserved_bytes as f64 / MB,
                r.blocks.iter().map(|b| b.size).max().unwrap_or(0) as f64 / MB,
            ),
            None => format!("no allocator report on this backend; {idle:.0} MB idle in the pool"),
        }
    }

    /// Returns pooled buffers to the driver, with the cached bind groups that hold them.
    pub fn trim_pool(&self) {
        let mut pending = self.pending.lock().unwrap();
        pending.bind_groups.clear();
        // The weight upload buffer too, when nothing is staged in it (made again on use).
        #[cfg(not(target_arch = "wasm32"))]
        if pending.upload.as_ref().is_some_and(|u| u.used() == 0) {
            pending.upload = None;
        }
        drop(pending);
        self.pool.clear();
    }
}

impl Timestamps {
    fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Timestamps {
        let set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("hoa timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let mk = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("hoa timestamps"),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Timestamps {
            set,
            resolve: mk(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            read: mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            period_ns: queue.get_timestamp_period() as f64,
        }
    }
}

/// `HOA_ADAPTER_INDEX` that is not a number.
const NOT_AN_INDEX: usize = usize::MAX;

/// One line naming an adapter, its backend and driver (what [`Context::describe`] prints).
pub fn describe_adapter(i: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, {:?}, driver: {} {})",
        i.name, i.backend, i.device_type, i.driver, i.driver_info
    )
}

/// The adapters that [`ContextOptions::adapter_index`] indexes, in wgpu's order (by backend:
/// Vulkan, Metal, DX12, GL): those of `opts.backends` whose name contains `opts.adapter_name`.
/// The same chip may appear once per backend.
#[cfg(not(target_arch = "wasm32"))]
pub async fn list_adapters(opts: &ContextOptions) -> Vec<wgpu::AdapterInfo> {
    let instance = instance(opts);
    enumerate(&instance, opts)
        .await
        .iter()
        .map(|a| a.get_info())
        .collect()
}

/// Why "every adapter" (`hoa serve --adapters all`) leaves out adapter `i` of `list`, or None
/// when it takes it. Left out: a GL adapter when another backend has one (GL shows the same
/// chips, slower, without f16 or subgroups), a software (CPU) adapter when there is a hardware
/// one, and a chip already taken through another backend (DX12 and Vulkan on Windows).
pub fn left_out_of_all(list: &[wgpu::AdapterInfo], i: usize) -> Option<&'static str> {
    let a = &list[i];
    if a.backend == wgpu::Backend::Gl && list.iter().any(|b| b.backend != wgpu::Backend::Gl) {
        return Some("a GL adapter, and another backend has adapters");
    }
    let cpu = |b: &wgpu::AdapterInfo| b.device_type == wgpu::DeviceType::Cpu;
    if cpu(a) && list.iter().any(|b| !cpu(b)) {
        return Some("a software adapter, and there is a hardware one");
    }
    let same = |b: &wgpu::AdapterInfo| {
        b.backend != a.backend
            && (b.name.as_str(), b.vendor, b.device) == (a.name.as_str(), a.vendor, a.device)
    };
    if list[..i]
        .iter()
        .enumerate()
        .any(|(k, b)| same(b) && left_out_of_all(list, k).is_none())
    {
        return Some("the same chip as an earlier adapter, through another backend");
    }
    None
}

fn instance(opts: &ContextOptions) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    if let Some(b) = opts.backends {
        desc.backends = b;
    }
    wgpu::Instance::new(desc)
}

#[cfg(not(target_arch = "wasm32"))]
async fn enumerate(instance: &wgpu::Instance, opts: &ContextOptions) -> Vec<wgpu::Adapter> {
    let backends = opts.backends.unwrap_or(wgpu::Backends::all());
    let mut all = instance.enumerate_adapters(backends).await;
    if let Some(name) = &opts.adapter_name {
        let needle = name.to_lowercase();
        all.retain(|a| a.get_info().name.to_lowercase().contains(&needle));
    }
    all
}

async fn select_adapter(instance: &wgpu::Instance, opts: &ContextOptions) -> Result<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(i) = opts.adapter_index {
        let mut all = enumerate(instance, opts).await;
        let n = all.len();
        if i < n {
            return Ok(all.swap_remove(i));
        }
        let found: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(k, a)| format!("{k}: {} ({:?})", a.get_info().name, a.get_info().backend))
            .collect();
        let what = match i {
            NOT_AN_INDEX => "HOA_ADAPTER_INDEX is not a number".to_string(),
            _ => format!("adapter index {i} (--adapters or HOA_ADAPTER_INDEX) is out of range"),
        };
        return Err(Error::NoAdapter {
            detail: format!(
                "{what}: there {} {n} adapter{} [{}], numbered from 0 as `hoa info` lists them",
                if n == 1 { "is" } else { "are" },
                if n == 1 { "" } else { "s" },
                found.join(", ")
            ),
        });
    }
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(name) = &opts.adapter_name {
        let backends = opts.backends.unwrap_or(wgpu::Backends::all());
        let all = instance.enumerate_adapters(backends).await;
        let names: Vec<String> = all
            .iter()
            .map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend))
            .collect();
        let needle = name.to_lowercase();
        return all
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&needle))
            .ok_or_else(|| Error::NoAdapter {
                detail: format!(
                    "no adapter name contains {name:?}; found: {}",
                    names.join(", ")
                ),
            });
    }
    let _ = &opts.adapter_name;
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter {
            detail: e.to_string(),
        })
}
