//! The benchmark harness's leaf: what a case is ([`Case`], [`Bound`]), the options every
//! family's `bench_cases` reads ([`BenchOptions`]), timing ([`time`]) and the adapter's own
//! ceilings ([`ceilings`]). It depends on the GPU runtime only, so the kernels can build their
//! cases without importing the driver in `bench/mod.rs`, which imports them.

use crate::error::Result;
use crate::gpu::{Context, DType, ShaderFamily};
#[cfg(not(target_arch = "wasm32"))]
use crate::gpu::{PipelineKey, Tensor};

/// The ceilings' shader (vec4 FMA throughput, copy bandwidth, as vkpeak measures them).
pub const SHADER: ShaderFamily = ShaderFamily {
    name: "peak",
    source: include_str!("../../shaders/peak.wgsl"),
    includes: &[],
};

/// What to benchmark: plain options, so that the library does not depend on a CLI parser
/// (`hoa bench` maps its flags onto them).
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Only run cases whose kernel or shape contains this text.
    pub filter: Option<String>,
    /// Timed repetitions per case (median reported).
    pub reps: usize,
    /// Smaller shapes, for a quick look (CI, slow software adapters).
    pub quick: bool,
    /// Also run f16 variants where the adapter has shader-f16.
    pub f16: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            filter: None,
            reps: 5,
            quick: false,
            f16: false,
        }
    }
}

impl BenchOptions {
    /// Whether the filter keeps a case (or a model, whose name is passed as `kernel`).
    pub fn wants(&self, kernel: &str, shape: &str) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|f| kernel.contains(f) || shape.contains(f))
    }

    /// Dtypes a benchmark covers: f32, plus f16 when asked for and the adapter has it.
    pub fn dtypes(&self, ctx: &Context) -> Vec<DType> {
        let mut v = vec![DType::F32];
        if self.f16 && ctx.has_f16() {
            v.push(DType::F16);
        }
        v
    }
}

/// What bounds a kernel: arithmetic (compared with the FMA ceiling) or memory (copy bandwidth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Compute,
    Memory,
}

/// Records one launch of the kernel under test (no flush: the harness times the submit).
pub type RunFn = Box<dyn Fn(&Context) -> Result<()>>;

/// One benchmark case. `flops` counts a fused multiply-add as 2; `bytes` is the minimum
/// traffic (each input read once, each output written once).
pub struct Case {
    pub kernel: String,
    pub shape: String,
    pub flops: f64,
    pub bytes: f64,
    pub bound: Bound,
    /// Kernel name of the case (same shape) this one is compared with, e.g. "matmul_naive".
    pub baseline: Option<String>,
    pub run: RunFn,
}

/// The adapter's ceilings.
#[derive(Clone, Copy, Debug)]
pub struct Ceilings {
    pub gflops: f64,
    pub gbps: f64,
}

/// Runs `run` once to warm up (pipeline compile, pool), then `reps` timed times; returns the
/// median seconds. GPU timestamps when the adapter has them, else wall time around
/// submit-and-wait.
#[cfg(not(target_arch = "wasm32"))]
pub fn time(ctx: &Context, reps: usize, run: &dyn Fn(&Context) -> Result<()>) -> Result<f64> {
    run(ctx)?;
    ctx.sync()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        times.push(time_once(ctx, run)?);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// One timed run of `run`: the GPU timestamps around its submit where the adapter has them,
/// else wall time around the submit and wait. Profiling (`HOA_PROFILE=1`) submits every
/// dispatch as it is recorded, which leaves the final submit empty (its timestamps said ~0 s,
/// a ceiling of 10^5 GFLOP/s): then wall time from before the recording.
#[cfg(not(target_arch = "wasm32"))]
pub fn time_once(ctx: &Context, run: &dyn Fn(&Context) -> Result<()>) -> Result<f64> {
    let start = std::time::Instant::now();
    run(ctx)?;
    let t0 = std::time::Instant::now();
    let gpu = ctx.flush_timed()?;
    Ok(match gpu {
        _ if ctx.profiling() => start.elapsed().as_secs_f64(),
        Some(t) => t,
        None => t0.elapsed().as_secs_f64(),
    })
}

/// vec4 FMA throughput and copy bandwidth.
#[cfg(not(target_arch = "wasm32"))]
pub fn ceilings(ctx: &Context, reps: usize) -> Result<Ceilings> {
    const WG: u32 = 256;
    const ITERS: u32 = 1024;
    // Enough invocations to fill any GPU, few enough for a software rasterizer.
    let threads: u32 = if ctx.info.device_type == wgpu::DeviceType::Cpu {
        1 << 14
    } else {
        1 << 20
    };
    let out = Tensor::empty(ctx, &[threads as usize * 4], DType::F32)?;
    let key = |entry, c: Vec<(&'static str, u32)>| PipelineKey {
        family: SHADER.name,
        entry,
        dtype: DType::F32,
        constants: c,
    };
    let fma = ctx.pipeline(&SHADER, key("fma_peak", vec![("WG", WG), ("ITERS", ITERS)]))?;
    let params = [0u32, 1.0f32.to_bits(), 0, 0];
    let wg = ctx.grid_1d((threads / WG) as u64);
    let t = time(ctx, reps, &|c| {
        c.launch(
            &fma,
            "fma",
            &[out.buffer()],
            bytemuck::cast_slice(&params),
            wg,
        );
        Ok(())
    })?;
    // 4 statements x 4 accumulators x 4 lanes x 2 flops per iteration.
    let gflops = threads as f64 * ITERS as f64 * 4.0 * 4.0 * 4.0 * 2.0 / t / 1e9;

    let bytes: usize = if ctx.info.device_type == wgpu::DeviceType::Cpu {
        64 << 20
    } else {
        128 << 20
    };
    let n4 = (bytes / 16) as u32;
    let src = Tensor::empty(ctx, &[bytes / 4], DType::F32)?;
    let dst = Tensor::empty(ctx, &[bytes / 4], DType::F32)?;
    let copy = ctx.pipeline(&SHADER, key("copy_peak", vec![("WG", WG)]))?;
    let params = [n4, 0, 0, 0];
    let wg = ctx.grid_1d(n4.div_ceil(WG) as u64);
    let t = time(ctx, reps, &|c| {
        c.launch(
            &copy,
            "copy",
            &[src.buffer(), dst.buffer()],
            bytemuck::cast_slice(&params),
            wg,
        );
        Ok(())
    })?;
    Ok(Ceilings {
        gflops,
        gbps: 2.0 * bytes as f64 / t / 1e9,
    })
}
