//! Kernel microbenchmarks behind `hoa bench` and `benches/`: first the adapter's own ceilings
//! (vec4 FMA throughput, copy bandwidth, as vkpeak measures them), then every kernel family's
//! cases, each measured as a fraction of the ceiling that bounds it and as a ratio to a
//! baseline timed in the same run; and one step of SD-1.5-sized models on random weights.
//! The results come back as values (the binary prints them); the case and timing types live
//! in the leaf [`case`], which the kernels import.

pub mod case;
#[cfg(not(target_arch = "wasm32"))]
pub mod tune;

#[cfg(not(target_arch = "wasm32"))]
pub use case::{ceilings, time};
pub use case::{BenchOptions, Bound, Case, Ceilings, RunFn, SHADER};

use crate::error::Result;
use crate::gpu::Context;
#[cfg(not(target_arch = "wasm32"))]
use crate::gpu::Tensor;

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
    /// The fraction of the bounding ceiling reached.
    pub fraction: f64,
    /// How many times faster than `baseline` (same shape, measured earlier in the run).
    pub speedup: Option<f64>,
}

/// Every kernel family's cases for this adapter.
pub fn cases(ctx: &Context, opts: &BenchOptions) -> Result<Vec<Case>> {
    let mut v = Vec::new();
    use crate::kernels::*;
    v.extend(attention::bench_cases(ctx, opts)?);
    v.extend(concat::bench_cases(ctx, opts)?);
    v.extend(conv2d::bench_cases(ctx, opts)?);
    v.extend(elementwise::bench_cases(ctx, opts)?);
    v.extend(group_norm::bench_cases(ctx, opts)?);
    v.extend(layer_norm::bench_cases(ctx, opts)?);
    v.extend(matmul::bench_cases(ctx, opts)?);
    v.extend(resample::bench_cases(ctx, opts)?);
    v.extend(scheduler::bench_cases(ctx, opts)?);
    v.extend(softmax::bench_cases(ctx, opts)?);
    Ok(v)
}

/// Measures the cases the filter keeps against `ceil`, handing each to `each` as soon as it
/// is measured.
#[cfg(not(target_arch = "wasm32"))]
pub fn run(
    ctx: &Context,
    opts: &BenchOptions,
    ceil: &Ceilings,
    mut each: impl FnMut(&Measured),
) -> Result<Vec<Measured>> {
    let mut done: Vec<Measured> = Vec::new();
    for case in cases(ctx, opts)? {
        if !opts.wants(&case.kernel, &case.shape) {
            continue;
        }
        let t = time(ctx, opts.reps, &*case.run)?;
        let (gflops, gbps) = (case.flops / t / 1e9, case.bytes / t / 1e9);
        let speedup = case
            .baseline
            .as_ref()
            .and_then(|b| {
                done.iter()
                    .find(|d| &d.kernel == b && d.shape == case.shape)
            })
            .map(|b| b.seconds / t);
        let m = Measured {
            kernel: case.kernel,
            shape: case.shape,
            seconds: t,
            gflops,
            gbps,
            bound: case.bound,
            baseline: case.baseline,
            fraction: match case.bound {
                Bound::Compute => gflops / ceil.gflops,
                Bound::Memory => gbps / ceil.gbps,
            },
            speedup,
        };
        each(&m);
        done.push(m);
        ctx.trim_pool();
    }
    Ok(done)
}

/// One model's timing from [`run_model`].
#[derive(Clone, Debug)]
pub struct ModelTiming {
    pub name: String,
    /// The input shapes, e.g. `[2, 4, 64, 64] + [2, 77, 768]`.
    pub input: String,
    pub load_seconds: f64,
    /// The first run, which includes compiling the pipelines.
    pub cold_seconds: f64,
    /// The median of `reps` runs after it.
    pub median_seconds: f64,
    /// The median host time of those runs: recording and submitting, without the wait for the
    /// GPU (what per-dispatch allocation costs).
    pub host_seconds: f64,
    /// [`Context::profile_report`] after the runs (`HOA_PROFILE=1`).
    pub profile: Option<String>,
    /// FLOPs of one step as hoa's kernels count them ([`Context::flops`]: matmuls, convs and
    /// attention, as PyTorch's `FlopCounterMode` counts).
    pub flops: u64,
    /// `flops` over the median warm time.
    pub gflops: f64,
    /// `gflops` as a fraction of the vec4 FMA ceiling measured in the same run.
    pub fraction: f64,
    /// PyTorch's `FlopCounterMode` count of the same step, where the project has one.
    pub reference_flops: Option<f64>,
}

/// PyTorch's `torch.utils.flop_counter.FlopCounterMode` total for one forward of diffusers'
/// `UNet2DConditionModel` in the SD-1.5 configuration (default config, `cross_attention_dim`
/// 768) with 77 tokens, at latent [1, 4, 32, 32] (`--quick`) and [2, 4, 64, 64]. Source: the
/// project's reference figures (shared/REFERENCE-FIGURES.md, "The SD-1.5 U-Net step on this
/// machine", 2026-12-05), stated to 4 digits there.
pub const SD15_UNET_TORCH_FLOPS_QUICK: f64 = 0.180e12;
/// See [`SD15_UNET_TORCH_FLOPS_QUICK`].
pub const SD15_UNET_TORCH_FLOPS: f64 = 1.607e12;

/// What [`time_model`] times: the model's name, input shapes, load time and PyTorch's FLOP
/// count where known.
#[cfg(not(target_arch = "wasm32"))]
struct ModelRun {
    name: String,
    input: String,
    load_seconds: f64,
    reference_flops: Option<f64>,
}

/// Times `step` once cold (counting its FLOPs), then `reps` times warm (wall time around
/// submit-and-wait).
#[cfg(not(target_arch = "wasm32"))]
fn time_model(
    ctx: &Context,
    reps: usize,
    ceil: &Ceilings,
    run: ModelRun,
    step: &dyn Fn(&Context) -> Result<()>,
) -> Result<ModelTiming> {
    use std::time::Instant;
    let t = Instant::now();
    ctx.reset_flops();
    step(ctx)?;
    let flops = ctx.flops();
    ctx.sync()?;
    let cold_seconds = t.elapsed().as_secs_f64();
    let (mut times, mut host) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
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
    let median_seconds = median(times);
    let gflops = flops as f64 / median_seconds / 1e9;
    let timing = ModelTiming {
        name: run.name,
        input: run.input,
        load_seconds: run.load_seconds,
        cold_seconds,
        median_seconds,
        host_seconds: median(host),
        profile: ctx.profile_report(),
        flops,
        gflops,
        fraction: gflops / ceil.gflops,
        reference_flops: run.reference_flops,
    };
    ctx.trim_pool();
    Ok(timing)
}

/// Deterministic inputs in [-1, 1).
#[cfg(not(target_arch = "wasm32"))]
fn fill(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// A U-Net to time: its name, config, batch, latent side, tokens, context width and
/// PyTorch's FLOP count of one step where known.
#[cfg(not(target_arch = "wasm32"))]
type UNetCase = (
    &'static str,
    crate::config::UNet2DConditionModelConfig,
    usize,
    usize,
    usize,
    usize,
    Option<f64>,
);

/// SD-1.5's U-Net (diffusers' default config with `cross_attention_dim` 768) and the shipped
/// model's U-Net at its size, batch 2 as with guidance, with its tokenizer's 80 tokens (a small
/// model, where the host's recording dominates).
#[cfg(not(target_arch = "wasm32"))]
fn unet_cases(opts: &BenchOptions) -> Result<[UNetCase; 2]> {
    use crate::config::{PerBlock, UNet2DConditionModelConfig};
    let sd15 = UNet2DConditionModelConfig {
        cross_attention_dim: PerBlock::One(768),
        ..Default::default()
    };
    let (b, s, torch_flops) = if opts.quick {
        (1, 32, SD15_UNET_TORCH_FLOPS_QUICK)
    } else {
        (2, 64, SD15_UNET_TORCH_FLOPS)
    };
    let shipped = UNet2DConditionModelConfig::from_json(include_bytes!(
        "../../weights/default/unet/config.json"
    ))?;
    let size = shipped.sample_size.unwrap_or(16);
    let dim = match &shipped.cross_attention_dim {
        PerBlock::One(d) => *d,
        PerBlock::Each(v) => v.first().copied().unwrap_or_default(),
    };
    Ok([
        ("sd15", sd15, b, s, 77, 768, Some(torch_flops)),
        ("default", shipped, 2, size, 80, dim, None),
    ])
}

/// One U-Net forward on random weights and inputs, timed.
#[cfg(not(target_arch = "wasm32"))]
fn time_unet(
    ctx: &Context,
    opts: &BenchOptions,
    ceil: &Ceilings,
    dt: crate::gpu::DType,
    c: &UNetCase,
) -> Result<ModelTiming> {
    use crate::models::unet_2d_condition::UNet2DConditionModel;
    use crate::weights::{Loader, Weights};
    let (what, cfg, b, s, seq, dim, reference_flops) = c;
    let t0 = std::time::Instant::now();
    let empty = Weights::from_files(vec![])?;
    let unet = UNet2DConditionModel::load(&Loader::random(ctx, &empty, dt, 7), cfg)?;
    ctx.sync()?;
    let load = t0.elapsed().as_secs_f64();
    let ch = cfg.in_channels;
    let sample = Tensor::from_f32(ctx, &fill(b * ch * s * s), &[*b, ch, *s, *s], dt)?;
    let enc = Tensor::from_f32(ctx, &fill(b * seq * dim), &[*b, *seq, *dim], dt)?;
    // SDXL: the added embedding, which the pipeline makes once before its loop.
    let temb = cfg.time_embed_dim();
    let aug = (cfg.text_time())
        .map(|_| Tensor::from_f32(ctx, &fill(b * temb), &[*b, temb], dt))
        .transpose()?;
    let run = ModelRun {
        name: format!("unet_{what}_step_{}", dt.name()),
        input: format!("[{b}, {ch}, {s}, {s}] + [{b}, {seq}, {dim}]"),
        load_seconds: load,
        reference_flops: *reference_flops,
    };
    time_model(ctx, opts.reps, ceil, run, &|c| {
        unet.forward_with(c, &sample, &[999.0], &enc, aug.as_ref())
            .map(drop)
    })
}

/// One decode of SD-1.5's VAE (its vae/config.json) on random weights, through `decode_auto`
/// as the pipeline does: tiled where the last up blocks would exceed the binding limit (at
/// 512x512 in f32: [1, 256, 512, 512] = 256 MiB).
#[cfg(not(target_arch = "wasm32"))]
fn time_vae(
    ctx: &Context,
    opts: &BenchOptions,
    ceil: &Ceilings,
    dt: crate::gpu::DType,
) -> Result<ModelTiming> {
    use crate::config::AutoencoderKLConfig;
    use crate::models::autoencoder_kl::{AutoencoderKL, TilePlan};
    use crate::weights::{Loader, Weights};
    let vae_cfg = AutoencoderKLConfig::stable_diffusion();
    let s = if opts.quick { 32 } else { 64 };
    let t0 = std::time::Instant::now();
    let empty = Weights::from_files(vec![])?;
    let vae = AutoencoderKL::load(&Loader::random(ctx, &empty, dt, 8), &vae_cfg)?;
    ctx.sync()?;
    let load = t0.elapsed().as_secs_f64();
    let latent = Tensor::from_f32(ctx, &fill(4 * s * s), &[1, 4, s, s], dt)?;
    let how = match vae.decode_plan(latent.shape(), dt, ctx.max_binding_bytes())? {
        TilePlan::Whole => "whole".to_string(),
        TilePlan::Tiled(t) => format!("tiles {}", t.tile_sample_size),
    };
    let run = ModelRun {
        name: format!("vae_sd15_decode_{}", dt.name()),
        input: format!("[1, 4, {s}, {s}] -> {}x{} {how}", 8 * s, 8 * s),
        load_seconds: load,
        reference_flops: None,
    };
    time_model(ctx, opts.reps, ceil, run, &|c| {
        vae.decode_auto(c, &latent).map(drop)
    })
}

/// One step of a model folder's U-Net (`cfg`, its unet/config.json; `name` names it) on
/// random weights, batch 2 as with guidance, at `side` x `side` latent pixels with 77 tokens
/// (an SDXL U-Net with its added embedding as the pipeline makes it before the loop), in each
/// of the options' dtypes the filter keeps (`unet_{name}_step_{dtype}`).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_model_config(
    ctx: &Context,
    opts: &BenchOptions,
    ceil: &Ceilings,
    name: &'static str,
    cfg: crate::config::UNet2DConditionModelConfig,
    side: usize,
    mut each: impl FnMut(&ModelTiming),
) -> Result<()> {
    let dim = match &cfg.cross_attention_dim {
        crate::config::PerBlock::One(d) => *d,
        crate::config::PerBlock::Each(v) => v.first().copied().unwrap_or_default(),
    };
    let case: UNetCase = (name, cfg, 2, side, 77, dim, None);
    for dt in opts.dtypes(ctx) {
        if opts.wants(&format!("unet_{name}_step_{}", dt.name()), "") {
            each(&time_unet(ctx, opts, ceil, dt, &case)?);
        }
    }
    Ok(())
}

/// The U-Net steps ([`unet_cases`]) and the SD-1.5 VAE decode ([`time_vae`]) on random
/// weights: the load time, the first (cold: pipeline compiles) run and the median warm run,
/// the FLOPs of one run and their rate against `ceil`, each handed to `each` when measured.
/// The filter picks models by name.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_model(
    ctx: &Context,
    opts: &BenchOptions,
    ceil: &Ceilings,
    mut each: impl FnMut(&ModelTiming),
) -> Result<()> {
    let unets = unet_cases(opts)?;
    for dt in opts.dtypes(ctx) {
        for c in &unets {
            if opts.wants(&format!("unet_{}_step_{}", c.0, dt.name()), "") {
                each(&time_unet(ctx, opts, ceil, dt, c)?);
            }
        }
        if opts.wants(&format!("vae_sd15_decode_{}", dt.name()), "") {
            each(&time_vae(ctx, opts, ceil, dt)?);
        }
    }
    Ok(())
}
