//! Kernel microbenchmarks behind `hoa bench` and `benches/`: first the adapter's own ceilings
//! (vec4 FMA throughput, copy bandwidth, as vkpeak measures them), then every kernel family's
//! cases, each reported as a fraction of the ceiling that bounds it and as a ratio to a
//! baseline timed in the same run.

use crate::error::Result;
use crate::gpu::{Context, ShaderFamily};
#[cfg(not(target_arch = "wasm32"))]
use crate::gpu::{DType, PipelineKey, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "peak",
    source: include_str!("../shaders/peak.wgsl"),
    includes: &[],
};

/// Options of `hoa bench`.
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[derive(Clone, Debug, Default)]
pub struct BenchArgs {
    /// Only run cases whose kernel or shape contains this text.
    #[cfg_attr(feature = "cli", arg(long))]
    pub filter: Option<String>,
    /// Timed repetitions per case (median reported).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub reps: usize,
    /// Smaller shapes, for a quick look (CI, slow software adapters).
    #[cfg_attr(feature = "cli", arg(long))]
    pub quick: bool,
    /// Also run f16 variants where the adapter has shader-f16.
    #[cfg_attr(feature = "cli", arg(long))]
    pub f16: bool,
    /// Instead of the kernels, time one U-Net step of the SD-1.5 architecture (random
    /// weights, 64x64 latent, batch 2; 32x32 at batch 1 with --quick) and the SD-1.5 VAE
    /// decode of one such latent (512x512; 256x256 with --quick). --filter picks by name.
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: bool,
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

/// A measured case.
#[derive(Clone, Debug)]
pub struct Measured {
    pub kernel: String,
    pub shape: String,
    pub seconds: f64,
    pub gflops: f64,
    pub gbps: f64,
    pub bound: Bound,
    pub baseline: Option<String>,
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
        run(ctx)?;
        let t0 = std::time::Instant::now();
        let gpu = ctx.flush_timed()?;
        times.push(gpu.unwrap_or_else(|| t0.elapsed().as_secs_f64()));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
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

/// Every kernel family's cases for this adapter.
pub fn cases(ctx: &Context, args: &BenchArgs) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    use crate::kernels::*;
    v.extend(attention::bench_cases(ctx, args)?);
    v.extend(concat::bench_cases(ctx, args)?);
    v.extend(conv2d::bench_cases(ctx, args)?);
    v.extend(elementwise::bench_cases(ctx, args)?);
    v.extend(group_norm::bench_cases(ctx, args)?);
    v.extend(layer_norm::bench_cases(ctx, args)?);
    v.extend(matmul::bench_cases(ctx, args)?);
    v.extend(resample::bench_cases(ctx, args)?);
    v.extend(scheduler::bench_cases(ctx, args)?);
    v.extend(softmax::bench_cases(ctx, args)?);
    Ok(v)
}

/// Measures the ceilings and the cases; prints the table as it goes.
#[cfg(not(target_arch = "wasm32"))]
pub fn run(ctx: &Context, args: &BenchArgs) -> Result<Vec<Measured>> {
    let ceil = ceilings(ctx, args.reps)?;
    println!("adapter: {}", ctx.describe());
    println!(
        "ceilings: vec4 FMA {:.1} GFLOP/s, copy {:.1} GB/s{}",
        ceil.gflops,
        ceil.gbps,
        if ctx.has_timestamps() {
            " (GPU timestamps)"
        } else {
            " (wall time)"
        }
    );
    println!(
        "{:<24} {:<28} {:>10} {:>9} {:>8} {:>7} {:>14}",
        "kernel", "shape", "median ms", "GFLOP/s", "GB/s", "% ceil", "vs baseline"
    );
    let mut done: Vec<Measured> = Vec::new();
    for case in cases(ctx, args)? {
        if let Some(f) = &args.filter {
            if !case.kernel.contains(f.as_str()) && !case.shape.contains(f.as_str()) {
                continue;
            }
        }
        let t = time(ctx, args.reps, &*case.run)?;
        let m = Measured {
            kernel: case.kernel,
            shape: case.shape,
            seconds: t,
            gflops: case.flops / t / 1e9,
            gbps: case.bytes / t / 1e9,
            bound: case.bound,
            baseline: case.baseline,
        };
        let frac = match m.bound {
            Bound::Compute => m.gflops / ceil.gflops,
            Bound::Memory => m.gbps / ceil.gbps,
        };
        let vs = m
            .baseline
            .as_ref()
            .and_then(|b| done.iter().find(|d| &d.kernel == b && d.shape == m.shape))
            .map(|b| format!("{:.2}x {}", b.seconds / t, b.kernel))
            .unwrap_or_default();
        println!(
            "{:<24} {:<28} {:>10.3} {:>9.2} {:>8.2} {:>6.0}% {:>14}",
            m.kernel,
            m.shape,
            t * 1e3,
            m.gflops,
            m.gbps,
            frac * 100.0,
            vs
        );
        done.push(m);
        ctx.trim_pool();
    }
    Ok(done)
}

/// One `UNet2DConditionModel` forward of the SD-1.5 architecture (diffusers' default config
/// with `cross_attention_dim` 768) and of the shipped model's U-Net (`weights/default`, batch 2
/// as with guidance) on random weights and inputs: the load time, the first (cold: pipeline
/// compiles) step, the median warm step, and its median host time (recording and submitting,
/// without the wait for the GPU).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_model(ctx: &Context, args: &BenchArgs) -> Result<()> {
    use crate::config::{AutoencoderKLConfig, PerBlock, UNet2DConditionModelConfig};
    use crate::models::autoencoder_kl::{AutoencoderKL, TilePlan};
    use crate::models::unet_2d_condition::UNet2DConditionModel;
    use crate::weights::{Loader, Weights};
    use std::time::Instant;
    // SD 1.5's unet/config.json differs from diffusers' defaults only in cross_attention_dim.
    let unet_cfg = UNet2DConditionModelConfig {
        cross_attention_dim: PerBlock::One(768),
        ..Default::default()
    };
    // SD 1.5's vae/config.json.
    let vae_cfg = AutoencoderKLConfig {
        down_block_types: vec!["DownEncoderBlock2D".into(); 4],
        up_block_types: vec!["UpDecoderBlock2D".into(); 4],
        block_out_channels: vec![128, 256, 512, 512],
        layers_per_block: 2,
        sample_size: serde_json::Value::from(512),
        ..Default::default()
    };
    let (b, s) = if args.quick { (1, 32) } else { (2, 64) };
    // --filter picks models by name (e.g. `--filter vae`).
    let wanted = |name: &str| {
        args.filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
    };
    println!("adapter: {}", ctx.describe());
    println!(
        "{:<22} {:<32} {:>8} {:>10} {:>10} {:>8}",
        "model", "input", "load s", "cold ms", "median ms", "host ms"
    );
    let empty = Weights::from_files(vec![])?;
    let fill = |n: usize| {
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect::<Vec<_>>()
    };
    // The first (cold) run includes compiling the pipelines; the median is over `reps` more.
    let report = |name: String,
                  input: String,
                  load: f64,
                  step: &dyn Fn(&Context) -> Result<()>|
     -> Result<()> {
        let t = Instant::now();
        step(ctx)?;
        ctx.sync()?;
        let cold = t.elapsed().as_secs_f64();
        let (mut times, mut host) = (Vec::new(), Vec::new());
        for _ in 0..args.reps.max(1) {
            let t = Instant::now();
            step(ctx)?;
            ctx.flush()?;
            host.push(t.elapsed().as_secs_f64());
            ctx.sync()?;
            times.push(t.elapsed().as_secs_f64());
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        println!(
            "{name:<22} {input:<32} {load:>8.1} {:>10.0} {:>10.0} {:>8.1}",
            cold * 1e3,
            median(times) * 1e3,
            median(host) * 1e3
        );
        if let Some(r) = ctx.profile_report() {
            println!("{r}");
        }
        ctx.trim_pool();
        Ok(())
    };
    // The shipped U-Net at its size, with its tokenizer's 80 tokens.
    let shipped = UNet2DConditionModelConfig::from_json(include_bytes!(
        "../weights/default/unet/config.json"
    ))?;
    let size = shipped.sample_size.unwrap_or(16);
    let dim = match &shipped.cross_attention_dim {
        PerBlock::One(d) => *d,
        PerBlock::Each(v) => v.first().copied().unwrap_or_default(),
    };
    let unets = [
        ("sd15", unet_cfg, b, s, 77, 768),
        ("default", shipped, 2, size, 80, dim),
    ];
    for dt in crate::kernels::bench_dtypes(ctx, args) {
        for (what, cfg, b, s, seq, dim) in &unets {
            let unet_name = format!("unet_{what}_step_{}", dt.name());
            if !wanted(&unet_name) {
                continue;
            }
            let t0 = Instant::now();
            let unet = UNet2DConditionModel::load(&Loader::random(ctx, &empty, dt, 7), cfg)?;
            ctx.sync()?;
            let load = t0.elapsed().as_secs_f64();
            let sample = Tensor::from_f32(ctx, &fill(b * 4 * s * s), &[*b, 4, *s, *s], dt)?;
            let enc = Tensor::from_f32(ctx, &fill(b * seq * dim), &[*b, *seq, *dim], dt)?;
            report(
                unet_name,
                format!("[{b}, 4, {s}, {s}] + [{b}, {seq}, {dim}]"),
                load,
                &|c| unet.forward(c, &sample, &[999.0], &enc).map(drop),
            )?;
        }

        let vae_name = format!("vae_sd15_decode_{}", dt.name());
        if wanted(&vae_name) {
            let t0 = Instant::now();
            let vae = AutoencoderKL::load(&Loader::random(ctx, &empty, dt, 8), &vae_cfg)?;
            ctx.sync()?;
            let load = t0.elapsed().as_secs_f64();
            let latent = Tensor::from_f32(ctx, &fill(4 * s * s), &[1, 4, s, s], dt)?;
            // decode_auto, as the pipeline does: tiled where the last up blocks would exceed
            // the binding limit (SD 1.5 at 512x512 in f32: [1, 256, 512, 512] = 256 MiB).
            let how = match vae.decode_plan(latent.shape(), dt, ctx.max_binding_bytes())? {
                TilePlan::Whole => "whole".to_string(),
                TilePlan::Tiled(t) => format!("tiles {}", t.tile_sample_size),
            };
            report(
                vae_name,
                format!("[1, 4, {s}, {s}] -> {}x{} {how}", 8 * s, 8 * s),
                load,
                &|c| vae.decode_auto(c, &latent).map(drop),
            )?;
        }
    }
    Ok(())
}
