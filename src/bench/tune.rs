//! `hoa tune`'s measurements: each kernel family's variants and tiles (conv2d, matmul,
//! attention) timed on the SD-1.5 shapes `hoa bench` uses, on this adapter, each output checked
//! against the default variant's; the fastest variant over a family's shapes wins. Variants are
//! timed in interleaved rounds and keep their fastest run, so that other work on a shared
//! machine spoils no single variant's figure. The
//! winners go into the tuning cache ([`crate::gpu::tuning`]), which later contexts load.

use super::case::Ceilings;
use crate::error::Result;
use crate::gpu::tuning::{AttentionChoice, Choices, Conv2dChoice, MatmulChoice};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::attention::{attention, AttentionOptions};
use crate::kernels::conv2d::{conv2d_packed, Conv2dOptions, PackedConv2dWeight};
use crate::kernels::matmul::linear;
use crate::kernels::Activation;

/// Records one launch under the context's current tuning and returns its output.
pub type Launch = Box<dyn Fn(&Context) -> Result<Tensor>>;

/// Makes a case's [`Launch`] under the context's current tuning.
pub type Prepare = Box<dyn Fn(&Context) -> Result<Launch>>;

/// One shape of a family: `prepare` runs after a variant's choices are set (conv2d packs its
/// weight for the variant's channel tile there) and returns the launch to time.
pub struct TuneCase {
    pub shape: String,
    pub flops: f64,
    pub prepare: Prepare,
}

/// One variant: its name and the choices that select it (the family's field `None` is the
/// built-in default).
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: String,
    pub choices: Choices,
}

/// A family to tune: its cases and variants, the first variant being the default.
pub struct Family {
    pub name: &'static str,
    /// What the default variant is.
    pub default: &'static str,
    pub cases: Vec<TuneCase>,
    pub variants: Vec<Variant>,
}

/// |variant - default| <= atol + rtol |default|: the kernels' f32 tolerance for long
/// reductions (tests/common's `F32_REDUCE`).
pub const ATOL: f64 = 1e-4;
pub const RTOL: f64 = 1e-4;

/// What happened to one variant on one case.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Matches the default within tolerance; its fastest of the timed runs.
    Ok { seconds: f64 },
    /// Its output differs from the default's beyond tolerance (worst excess over the allowed
    /// error, and where), so it is never chosen.
    Mismatch { worst: f64, index: usize },
    /// It failed to run here (a tile this adapter cannot run).
    Failed(String),
    /// Not run: it already lost on an earlier case (a mismatch, a failure, or a running total
    /// over [`PRUNE`] times the fastest's), so it cannot win.
    Skipped,
}

/// A variant whose total over the cases so far exceeds this many times the fastest one's is
/// not measured further (on lavapipe the fallbacks run 3-10x slower than the subgroup paths,
/// and timing them on every shape would triple the run).
pub const PRUNE: f64 = 2.0;

/// One measured row of `hoa tune`'s table.
#[derive(Clone, Debug)]
pub struct Row {
    pub family: &'static str,
    pub shape: String,
    pub variant: String,
    pub outcome: Outcome,
    /// GFLOP/s and its fraction of the FMA ceiling (0 unless Ok).
    pub gflops: f64,
    pub fraction: f64,
}

/// A family's result: the winning variant (the fastest total over its cases among those that
/// matched the default on every case) and its total against the default's.
#[derive(Clone, Debug)]
pub struct Winner {
    pub family: &'static str,
    pub variant: Variant,
    pub seconds: f64,
    pub default_seconds: f64,
}

/// Deterministic values in [-scale, scale).
fn fill(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(ctx: &Context, shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_f32(ctx, &fill(n, seed, scale), shape, DType::F32)
}

fn conv2d_family(ctx: &Context, quick: bool) -> Result<Family> {
    let s = if quick { 32 } else { 64 };
    let mut cases = Vec::new();
    // (name, channels, side, kernel, stride, padding): the U-Net's 3x3 convs at each level,
    // a 1x1 shortcut and the stride-2 downsampler.
    let shapes = [
        ("3x3", 320, s, 3, 1, 1),
        ("3x3", 640, s / 2, 3, 1, 1),
        ("3x3", 1280, s / 4, 3, 1, 1),
        ("1x1", 320, s, 1, 1, 0),
        ("3x3s2", 320, s, 3, 2, 1),
    ];
    for (i, (name, c, hw, k, stride, padding)) in shapes.into_iter().enumerate() {
        let n = 2;
        let x = tensor(ctx, &[n, c, hw, hw], 10 + i as u64, 1.0)?;
        let w = tensor(
            ctx,
            &[c, c, k, k],
            20 + i as u64,
            1.0 / ((c * k * k) as f32).sqrt(),
        )?;
        let b = tensor(ctx, &[c], 30 + i as u64, 0.1)?;
        let ho = (hw + 2 * padding - k) / stride + 1;
        cases.push(TuneCase {
            shape: format!("{name} {n}x{c}x{hw}x{hw}->{c}"),
            flops: 2.0 * (n * c * ho * ho * c * k * k) as f64,
            prepare: Box::new(move |ctx| {
                let packed = PackedConv2dWeight::new(ctx, &w)?;
                let (x, b) = (x.clone(), b.clone());
                Ok(Box::new(move |ctx: &Context| {
                    let o = Conv2dOptions {
                        stride,
                        padding,
                        bias: Some(&b),
                        ..Default::default()
                    };
                    conv2d_packed(ctx, &x, &packed, &o)
                }))
            }),
        });
    }
    let v = |name: &str, c: Conv2dChoice| Variant {
        name: name.into(),
        choices: Choices {
            conv2d: Some(c),
            ..Default::default()
        },
    };
    let sg = |wg, tr| Conv2dChoice::Subgroup { wg, tr };
    let tiled = |wg, tc| Conv2dChoice::Tiled { wg, tc };
    Ok(Family {
        name: "conv2d",
        default: "subgroup wg8 tr32 where it applies, else tiled wg64 tc8",
        cases,
        variants: vec![
            default_variant(),
            v("subgroup wg8 tr16", sg(8, 16)),
            v("subgroup wg16 tr32", sg(16, 32)),
            v("subgroup wg16 tr16", sg(16, 16)),
            v("subgroup wg32 tr32", sg(32, 32)),
            v("tiled wg64 tc8", tiled(64, 8)),
            v("tiled wg32 tc8", tiled(32, 8)),
            v("tiled wg64 tc4", tiled(64, 4)),
        ],
    })
}

fn matmul_family(ctx: &Context, quick: bool) -> Result<Family> {
    let q = if quick { 4 } else { 1 };
    let mut cases = Vec::new();
    // (tokens, in, out): SD-1.5 U-Net projections at 64x64 latents with CFG, as `hoa bench`.
    let shapes = [
        (8192 / q, 320, 320),
        (8192 / q, 320, 2560),
        (8192 / q, 1280, 320),
        (2048 / q, 640, 640),
        (512 / q, 1280, 1280),
    ];
    for (i, (m, k, n)) in shapes.into_iter().enumerate() {
        let x = tensor(ctx, &[m, k], 40 + i as u64, 1.0)?;
        let w = tensor(ctx, &[n, k], 50 + i as u64, 1.0 / (k as f32).sqrt())?;
        let b = tensor(ctx, &[n], 60 + i as u64, 0.1)?;
        cases.push(TuneCase {
            shape: format!("linear {m}x{k}.{n}x{k}^T"),
            flops: 2.0 * (m * n * k) as f64,
            prepare: Box::new(move |_| {
                let (x, w, b) = (x.clone(), w.clone(), b.clone());
                Ok(Box::new(move |ctx: &Context| {
                    linear(ctx, &x, &w, Some(&b), Activation::None)
                }))
            }),
        });
    }
    let v = |name: &str, c: MatmulChoice| Variant {
        name: name.into(),
        choices: Choices {
            matmul: Some(c),
            ..Default::default()
        },
    };
    let sg = |wg, tr| MatmulChoice::Subgroup { wg, tr };
    let tiled = |wg, tm, tn| MatmulChoice::Tiled { wg, tm, tn };
    Ok(Family {
        name: "matmul",
        default: "subgroup wg8 tr32 where it applies, else tiled wg64 tm8 tn4",
        cases,
        variants: vec![
            default_variant(),
            v("subgroup wg8 tr16", sg(8, 16)),
            v("subgroup wg8 tr24", sg(8, 24)),
            v("subgroup wg16 tr32", sg(16, 32)),
            v("subgroup wg32 tr32", sg(32, 32)),
            v("tiled wg64 tm8 tn4", tiled(64, 8, 4)),
            v("tiled wg32 tm8 tn4", tiled(32, 8, 4)),
            v("tiled wg64 tm4 tn4", tiled(64, 4, 4)),
        ],
    })
}

fn attention_family(ctx: &Context, quick: bool) -> Result<Family> {
    let l = if quick { 1024 } else { 4096 };
    let (b, h) = (2usize, 8usize);
    let mut cases = Vec::new();
    // (queries, keys, head dim): SD-1.5 self-attention at the first two levels and the
    // cross-attention to 77 CLIP tokens.
    for (i, (lq, lk, d)) in [(l, l, 40usize), (l / 4, l / 4, 80), (l, 77, 40)]
        .into_iter()
        .enumerate()
    {
        let q = tensor(ctx, &[b, lq, h * d], 70 + i as u64, 1.0)?;
        let k = tensor(ctx, &[b, lk, h * d], 80 + i as u64, 1.0)?;
        let v = tensor(ctx, &[b, lk, h * d], 90 + i as u64, 1.0)?;
        cases.push(TuneCase {
            shape: format!("{b}x{lq}x{lk} h{h} d{d}"),
            flops: 4.0 * (b * h * lq * lk * d) as f64,
            prepare: Box::new(move |_| {
                let (q, k, v) = (q.clone(), k.clone(), v.clone());
                Ok(Box::new(move |ctx: &Context| {
                    attention(ctx, &q, &k, &v, &AttentionOptions::new(h))
                }))
            }),
        });
    }
    let v = |name: &str, c: AttentionChoice| Variant {
        name: name.into(),
        choices: Choices {
            attention: Some(c),
            ..Default::default()
        },
    };
    let sg = |wg| AttentionChoice::Subgroup { wg };
    let flash = |wg| AttentionChoice::Flash { wg };
    Ok(Family {
        name: "attention",
        default: "subgroup wg16 where it applies, else flash wg16",
        cases,
        variants: vec![
            default_variant(),
            v("subgroup wg8", sg(8)),
            v("subgroup wg32", sg(32)),
            v("subgroup wg64", sg(64)),
            v("flash wg16", flash(16)),
            v("flash wg32", flash(32)),
            v("flash wg64", flash(64)),
        ],
    })
}

fn default_variant() -> Variant {
    Variant {
        name: "default".into(),
        choices: Choices::default(),
    }
}

/// The families `hoa tune` measures (`filter` keeps those whose name contains it).
pub fn families(ctx: &Context, quick: bool, filter: Option<&str>) -> Result<Vec<Family>> {
    let wants = |name: &str| filter.is_none_or(|f| name.contains(f));
    let mut v = Vec::new();
    if wants("conv2d") {
        v.push(conv2d_family(ctx, quick)?);
    }
    if wants("matmul") {
        v.push(matmul_family(ctx, quick)?);
    }
    if wants("attention") {
        v.push(attention_family(ctx, quick)?);
    }
    Ok(v)
}

/// The worst |got - want| / (ATOL + RTOL |want|) and its index (NaN counts as infinite).
fn worst_excess(got: &[f32], want: &[f32]) -> (f64, usize) {
    let mut worst = (
        if got.len() == want.len() {
            0.0
        } else {
            f64::INFINITY
        },
        0,
    );
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        let e = (g - w).abs() / (ATOL + RTOL * w.abs());
        let e = if e.is_nan() { f64::INFINITY } else { e };
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

/// Prepares one variant on one case and checks its output against `want`: its launch (its
/// pipelines compiled) when it matches, else why not.
fn check_variant(
    ctx: &Context,
    case: &TuneCase,
    v: &Variant,
    want: &[f32],
) -> std::result::Result<Launch, Outcome> {
    ctx.tuning().set(v.choices);
    let run = || -> Result<std::result::Result<Launch, Outcome>> {
        let launch = (case.prepare)(ctx)?;
        let got = launch(ctx)?.to_vec(ctx)?;
        let (worst, index) = worst_excess(&got, want);
        if worst > 1.0 {
            return Ok(Err(Outcome::Mismatch { worst, index }));
        }
        Ok(Ok(launch))
    };
    let out = run().unwrap_or_else(|e| Err(Outcome::Failed(e.to_string())));
    if out.is_err() {
        // A failed launch may leave recorded work and errors behind: drop them with it.
        let _ = ctx.sync();
        let _ = ctx.take_errors("tune");
    }
    out
}

/// Times the checked variants of one case in `reps` rounds, each round every variant once,
/// and keeps each one's fastest: on a shared machine other work only ever adds time, and
/// interleaving spreads a busy spell over all variants instead of one.
fn time_round_robin(
    ctx: &Context,
    variants: &[Variant],
    launches: &[Option<Launch>],
    reps: usize,
) -> Result<Vec<f64>> {
    let mut best = vec![f64::INFINITY; variants.len()];
    for _ in 0..reps.max(1) {
        for ((v, l), b) in variants.iter().zip(launches).zip(best.iter_mut()) {
            let Some(launch) = l else { continue };
            ctx.tuning().set(v.choices);
            ctx.sync()?;
            *b = b.min(super::case::time_once(ctx, &|c| launch(c).map(drop))?);
        }
    }
    Ok(best)
}

/// Each variant of `family` checked against the default's output `want` on `case`: its launch,
/// or why it is out. The default (first) is always checked: it is the baseline; a variant
/// already pruned is skipped.
fn check_variants(
    ctx: &Context,
    family: &Family,
    case: &TuneCase,
    totals: &[Option<f64>],
    want: &[f32],
) -> (Vec<Option<Launch>>, Vec<Option<Outcome>>) {
    let mut outcomes = Vec::new();
    let mut launches = Vec::new();
    for (vi, v) in family.variants.iter().enumerate() {
        let r = if totals[vi].is_some() || vi == 0 {
            check_variant(ctx, case, v, want)
        } else {
            Err(Outcome::Skipped)
        };
        let (l, o) = match r {
            Ok(l) => (Some(l), None),
            Err(o) => (None, Some(o)),
        };
        launches.push(l);
        outcomes.push(o);
    }
    (launches, outcomes)
}

/// Drops the variants whose running total is over `PRUNE` times the best one's.
fn prune(totals: &mut [Option<f64>]) {
    let best = totals
        .iter()
        .flatten()
        .fold(f64::INFINITY, |a, &b| a.min(b));
    for t in totals.iter_mut() {
        if t.is_some_and(|t| t > PRUNE * best) {
            *t = None;
        }
    }
}

/// Measures every variant of `family` on each of its cases (handing each row to `each`) and
/// returns the winner. The context's tuning is left at the defaults.
pub fn tune_family(
    ctx: &Context,
    family: &Family,
    reps: usize,
    ceil: &Ceilings,
    mut each: impl FnMut(&Row),
) -> Result<Winner> {
    let mut totals: Vec<Option<f64>> = vec![Some(0.0); family.variants.len()];
    let mut default_total = 0.0;
    for case in &family.cases {
        ctx.tuning().set(Choices::default());
        let want = ((case.prepare)(ctx)?)(ctx)?.to_vec(ctx)?;
        let (launches, mut outcomes) = check_variants(ctx, family, case, &totals, &want);
        let times = time_round_robin(ctx, &family.variants, &launches, reps)?;
        drop(launches);
        ctx.tuning().set(Choices::default());
        ctx.trim_pool();
        for (vi, v) in family.variants.iter().enumerate() {
            let outcome = outcomes[vi]
                .take()
                .unwrap_or(Outcome::Ok { seconds: times[vi] });
            let (gflops, fraction) = match outcome {
                Outcome::Ok { seconds } => {
                    let g = case.flops / seconds / 1e9;
                    (g, g / ceil.gflops)
                }
                _ => (0.0, 0.0),
            };
            if let (0, Outcome::Ok { seconds }) = (vi, &outcome) {
                default_total += seconds;
            }
            totals[vi] = match (&outcome, totals[vi]) {
                (Outcome::Ok { seconds }, Some(t)) => Some(t + seconds),
                _ => None,
            };
            each(&Row {
                family: family.name,
                shape: case.shape.clone(),
                variant: v.name.clone(),
                outcome,
                gflops,
                fraction,
            });
        }
        prune(&mut totals);
    }
    ctx.tuning().set(Choices::default());
    let default_seconds = default_total;
    let (best, seconds) = totals
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, default_seconds));
    Ok(Winner {
        family: family.name,
        variant: family.variants[best].clone(),
        seconds,
        default_seconds,
    })
}

/// The cache's choices from the winners: each family's winning choice (None where the
/// default won, so that family keeps its built-in default exactly).
pub fn choices_of(winners: &[Winner]) -> Choices {
    let mut c = Choices::default();
    for w in winners {
        let v = &w.variant.choices;
        c.conv2d = c.conv2d.or(v.conv2d);
        c.matmul = c.matmul.or(v.matmul);
        c.attention = c.attention.or(v.attention);
    }
    c
}
