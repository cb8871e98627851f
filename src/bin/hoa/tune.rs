//! `hoa tune`: measures the kernel variants and tiles on this adapter (`hoa::bench::tune`),
//! prints each case's variants against the FMA ceiling measured in the same run, and keeps the
//! winners in the tuning cache that every later context on this adapter loads.

use anyhow::Result;
use hoa::bench::tune::{self, Outcome, Row};
use hoa::gpu::tuning::{self, CacheKey, TuneCache};
use hoa::Context;

/// Options of `hoa tune`.
#[derive(clap::Args, Clone, Debug)]
pub struct TuneArgs {
    /// Smaller shapes (a quarter of the pixels or tokens), for a quick run on slow adapters.
    #[arg(long)]
    pub quick: bool,
    /// Timed rounds (each round runs every variant once; each keeps its fastest run).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Only tune the families whose name contains this text (conv2d, matmul, attention).
    #[arg(long)]
    pub filter: Option<String>,
    /// Measure and print, but write no cache.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace the cache file even when it is not a hoa tune cache.
    #[arg(long)]
    pub force: bool,
}

pub fn run(ctx: &Context, cache: &TuneCache, args: &TuneArgs) -> Result<()> {
    // A file that must not be replaced fails before the measuring, not after.
    let path = cache.path().filter(|_| !args.dry_run);
    if let Some(p) = &path {
        tuning::read_for_update(p, args.force)?;
    }
    // Measure from the defaults, whatever an earlier cache chose.
    ctx.tuning().set(Default::default());
    let ceil = crate::bench::measure_ceilings(ctx, args.reps.max(5))?;
    let mut winners = Vec::new();
    for family in tune::families(ctx, args.quick, args.filter.as_deref())? {
        println!("\n{}: default = {}", family.name, family.default);
        println!(
            "{:<10} {:<28} {:<20} {:>10} {:>9} {:>6}",
            "family", "shape", "variant", "best ms", "GFLOP/s", "% FMA"
        );
        winners.push(tune::tune_family(
            ctx, &family, args.reps, &ceil, print_row,
        )?);
    }
    println!();
    for w in &winners {
        println!(
            "{:<10} winner: {} ({:.1} ms over its shapes; default {:.1} ms, {:.2}x)",
            w.family,
            w.variant.name,
            w.seconds * 1e3,
            w.default_seconds * 1e3,
            w.default_seconds / w.seconds
        );
    }
    let choices = tune::choices_of(&winners);
    let Some(path) = path else {
        println!(
            "{}: no cache written",
            if args.dry_run {
                "--dry-run"
            } else {
                "HOA_TUNE_CACHE=off"
            }
        );
        return Ok(());
    };
    tuning::save(&path, CacheKey::of(&ctx.info), &choices, args.force)?;
    println!(
        "wrote {} (used by every later run on this adapter; HOA_TUNE_CACHE=off ignores it)",
        path.display()
    );
    Ok(())
}

fn print_row(r: &Row) {
    let (ms, rate) = match &r.outcome {
        Outcome::Ok { seconds } => (
            format!("{:.3}", seconds * 1e3),
            format!("{:>9.2} {:>5.0}%", r.gflops, r.fraction * 100.0),
        ),
        Outcome::Mismatch { worst, index } => (
            "rejected".into(),
            format!("output differs from the default at [{index}] ({worst:.1}x the tolerance)"),
        ),
        Outcome::Failed(e) => ("failed".into(), e.clone()),
        Outcome::Skipped => (
            "skipped".into(),
            format!("lost earlier (or over {}x the fastest so far)", tune::PRUNE),
        ),
    };
    println!(
        "{:<10} {:<28} {:<20} {:>10} {rate}",
        r.family, r.shape, r.variant, ms
    );
}
