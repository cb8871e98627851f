//! The `hoa` command line: `generate` (prompt to PNG), `info` (which adapter and what it
//! allows), `bench` (kernel microbenchmarks against the adapter's own ceilings), `serve`
//! (OpenAI's Images API over HTTP), `worker` (runs `serve --queue nats://...`'s jobs),
//! `clip` (CLIP's image-text tasks) and `tune` (measures kernel variants for this adapter).

mod bench;
mod clip;
mod dtype;
mod generate;
mod info;
mod serve;
mod tune;
mod worker;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hoa::{Context, ContextOptions};

#[derive(Parser)]
#[command(name = "hoa", version, about = "Portable text-to-image engine on wgpu")]
struct Cli {
    /// Backend(s) to use: vulkan, metal, dx12, gl, webgpu (comma list). Env: HOA_BACKEND.
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Pick the adapter whose name contains this text (e.g. llvmpipe). Env: HOA_ADAPTER.
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Do not use f16 even if the adapter supports it. Env: HOA_NO_F16=1.
    #[arg(long, global = true)]
    no_f16: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt and write them as PNGs.
    Generate(Box<generate::GenerateArgs>),
    /// Print the adapter, backend, features and the limits that matter; with --model, what a
    /// model is (family, prediction type, parameters and dtypes per component).
    Info(info::InfoArgs),
    /// Measure the adapter's ceilings, then every kernel on Stable Diffusion-sized shapes.
    Bench(bench::BenchArgs),
    /// Serve OpenAI's Images API (POST /v1/images/generations) on the given models.
    Serve(Box<serve::ServeArgs>),
    /// CLIP: zero-shot classification, image index and search, CLIP score.
    Clip(clip::ClipArgs),
    /// Run the jobs `hoa serve --queue nats://...` publishes to NATS JetStream.
    Worker(Box<worker::WorkerArgs>),
    /// Measure the kernel variants and tiles on this adapter and keep the fastest in the
    /// tuning cache (HOA_TUNE_CACHE=path, or off; default: the platform cache folder).
    Tune(tune::TuneArgs),
}

fn main() {
    // One line per cause, no backtrace: these are messages for the user.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    // A model's summary needs no device.
    if let Command::Info(a) = &cli.command {
        if a.model.is_some() {
            return info::run(a);
        }
    }
    let mut opts = ContextOptions::from_env();
    if let Some(b) = &cli.backend {
        opts.backends = Some(wgpu::Backends::from_comma_list(b));
    }
    if let Some(a) = &cli.adapter {
        opts.adapter_name = Some(a.clone());
    }
    opts.disable_f16 |= cli.no_f16;
    // serve and worker may drive several adapters (--adapters): they make their contexts.
    let command = match cli.command {
        Command::Serve(args) => return serve::run(opts, *args),
        Command::Worker(args) => return worker::run(opts, *args),
        c => c,
    };
    let ctx = Context::new_blocking(opts.clone())?;
    match command {
        Command::Generate(args) => generate::run(&ctx, *args)?,
        Command::Info(_) => {
            info(&ctx);
            list_adapters(&opts);
        }
        Command::Bench(args) => bench::run(&ctx, &args)?,
        Command::Clip(args) => clip::run(&ctx, args)?,
        Command::Tune(args) => tune::run(&ctx, &opts.tune_cache, &args)?,
        Command::Serve(_) | Command::Worker(_) => unreachable!("run above"),
    }
    Ok(())
}

fn info(ctx: &Context) {
    let l = &ctx.limits;
    println!("adapter:  {}", ctx.info.name);
    println!(
        "backend:  {:?} ({:?})",
        ctx.info.backend, ctx.info.device_type
    );
    println!("driver:   {} {}", ctx.info.driver, ctx.info.driver_info);
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("shader-f16: {}", yes(ctx.has_f16()));
    println!(
        "subgroups:  {}",
        yes(ctx.features.contains(wgpu::Features::SUBGROUP))
    );
    println!("timestamps: {}", yes(ctx.has_timestamps()));
    println!(
        "max_storage_buffer_binding_size: {} MiB",
        l.max_storage_buffer_binding_size >> 20
    );
    println!(
        "max_buffer_size:                 {} MiB",
        l.max_buffer_size >> 20
    );
    println!(
        "max_compute_workgroup_storage_size: {} KiB",
        l.max_compute_workgroup_storage_size >> 10
    );
    println!(
        "max_compute_invocations_per_workgroup: {}",
        l.max_compute_invocations_per_workgroup
    );
    println!(
        "max_compute_workgroups_per_dimension:  {}",
        l.max_compute_workgroups_per_dimension
    );
    println!(
        "max_storage_buffers_per_shader_stage:  {}",
        l.max_storage_buffers_per_shader_stage
    );
}

/// Every adapter the backends offer, numbered as `hoa serve --adapters` and HOA_ADAPTER_INDEX
/// take them.
fn list_adapters(opts: &ContextOptions) {
    use hoa::gpu::{describe_adapter, left_out_of_all};
    let list = pollster::block_on(hoa::gpu::list_adapters(opts));
    println!("adapters (serve --adapters I,J,... or HOA_ADAPTER_INDEX=I picks by index):");
    for (i, a) in list.iter().enumerate() {
        let note = left_out_of_all(&list, i)
            .map_or(String::new(), |w| format!(" [not in --adapters all: {w}]"));
        println!("  {i}: {}{note}", describe_adapter(a));
    }
}
