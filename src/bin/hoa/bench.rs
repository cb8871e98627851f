//! `hoa bench`: its flags, and the tables it prints from the library's measurements
//! (`hoa::bench`).

use anyhow::Result;
use hoa::bench::{BenchOptions, Measured, ModelTiming};
use hoa::Context;

/// Options of `hoa bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Only run cases whose kernel or shape contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Timed repetitions per case (median reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Smaller shapes, for a quick look (CI, slow software adapters).
    #[arg(long)]
    pub quick: bool,
    /// Also run f16 variants where the adapter has shader-f16.
    #[arg(long)]
    pub f16: bool,
    /// Instead of the kernels, time one U-Net step of the SD-1.5 architecture (random
    /// weights, 64x64 latent, batch 2; 32x32 at batch 1 with --quick) and the SD-1.5 VAE
    /// decode of one such latent (512x512; 256x256 with --quick), each with the FLOPs of one
    /// step (counted as PyTorch's FlopCounterMode counts) and their rate as a share of the FMA
    /// ceiling measured first. --filter picks by name. `--model DIR` times one step of that
    /// diffusers folder's U-Net instead (its unet/config.json, random weights, batch 2; SDXL
    /// included), at --size.
    #[arg(long, num_args = 0..=1, value_name = "DIR")]
    pub model: Option<Option<std::path::PathBuf>>,
    /// With `--model DIR`: the image side in pixels (the latent is side / the VAE factor).
    /// Default: the model's own size.
    #[arg(long)]
    pub size: Option<usize>,
}

impl BenchArgs {
    fn options(&self) -> BenchOptions {
        BenchOptions {
            filter: self.filter.clone(),
            reps: self.reps,
            quick: self.quick,
            f16: self.f16,
        }
    }
}

/// The adapter's ceilings (median of `reps`), printed with the adapter as every table's head.
pub fn measure_ceilings(ctx: &Context, reps: usize) -> Result<hoa::bench::Ceilings> {
    let ceil = hoa::bench::ceilings(ctx, reps)?;
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
    Ok(ceil)
}

pub fn run(ctx: &Context, args: &BenchArgs) -> Result<()> {
    let opts = args.options();
    // The ceiling kernels take milliseconds: a median of at least 5 even where --reps 1 keeps
    // one slow model step affordable.
    let ceil = measure_ceilings(ctx, opts.reps.max(5))?;
    let tuned = ctx.tuning().choices();
    if tuned != Default::default() {
        println!(
            "tuning: {} (hoa tune's cache; HOA_TUNE_CACHE=off for the defaults)",
            serde_json::to_string(&tuned)?
        );
    }
    if args.model.is_some() {
        eprintln!("adapter: {}", ctx.describe());
        println!(
            "{:<22} {:<32} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7}",
            "model",
            "input",
            "load s",
            "cold ms",
            "median ms",
            "host ms",
            "GFLOP",
            "GFLOP/s",
            "% FMA"
        );
        match &args.model {
            Some(Some(dir)) => run_folder(ctx, &opts, &ceil, dir, args.size)?,
            _ => hoa::bench::run_model(ctx, &opts, &ceil, print_model)?,
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<28} {:>10} {:>9} {:>8} {:>7} {:>14}",
        "kernel", "shape", "median ms", "GFLOP/s", "GB/s", "% ceil", "vs baseline"
    );
    hoa::bench::run(ctx, &opts, &ceil, print_case)?;
    Ok(())
}

/// `--model DIR`: one step of the folder's U-Net (read from its configs; no weights loaded).
fn run_folder(
    ctx: &Context,
    opts: &hoa::bench::BenchOptions,
    ceil: &hoa::bench::Ceilings,
    dir: &std::path::Path,
    size: Option<usize>,
) -> Result<()> {
    let info = hoa::model_info::ModelInfo::read(&hoa::model_files::DirFiles::open(dir)?)?;
    let side = size.unwrap_or(info.native_size()?);
    let m = info.size_multiple()?;
    if side == 0 || side % m != 0 {
        anyhow::bail!("--size {side}: must be a positive multiple of {m} for this model");
    }
    let name = if info.sdxl.is_some() {
        "sdxl"
    } else {
        "folder"
    };
    let latent = side / info.vae_scale_factor()?;
    hoa::bench::run_model_config(ctx, opts, ceil, name, info.unet, latent, print_model)?;
    Ok(())
}

fn print_case(m: &Measured) {
    let vs = m
        .baseline
        .as_ref()
        .zip(m.speedup)
        .map(|(b, x)| format!("{x:.2}x {b}"))
        .unwrap_or_default();
    println!(
        "{:<24} {:<28} {:>10.3} {:>9.2} {:>8.2} {:>6.0}% {:>14}",
        m.kernel,
        m.shape,
        m.seconds * 1e3,
        m.gflops,
        m.gbps,
        m.fraction * 100.0,
        vs
    );
}

fn print_model(t: &ModelTiming) {
    println!(
        "{:<22} {:<32} {:>8.1} {:>10.0} {:>10.0} {:>8.1} {:>8.1} {:>8.2} {:>6.1}%",
        t.name,
        t.input,
        t.load_seconds,
        t.cold_seconds * 1e3,
        t.median_seconds * 1e3,
        t.host_seconds * 1e3,
        t.flops as f64 / 1e9,
        t.gflops,
        t.fraction * 100.0
    );
    if let Some(r) = t.reference_flops {
        println!(
            "  FLOPs: hoa {:.4} TFLOP, PyTorch FlopCounterMode {:.3} TFLOP (hoa / PyTorch = {:.4})",
            t.flops as f64 / 1e12,
            r / 1e12,
            t.flops as f64 / r
        );
    }
    if let Some(r) = &t.profile {
        println!("{r}");
    }
}
