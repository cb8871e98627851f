//! The samplers' tensor math (`shaders/scheduler.wgsl`): one fused elementwise update per
//! denoising step (what diffusers' `step()` does with torch ops), classifier-free guidance and
//! the inpainting blend. The schedulers (`schedulers/`) compute the scalars on the host.

use super::{same_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{Context, PipelineKey, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "scheduler",
    source: include_str!("../../shaders/scheduler.wgsl"),
    includes: &[],
};

const WG: u32 = 256;
const CLIP: u32 = 1;
const NOISE: u32 = 2;
const PREV: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    flags: u32,
    hw: u32,
    chw: u32,
    mask_stride: u32,
    half: u32,
    _pad0: [u32; 2],
    a0: f32,
    a1: f32,
    lo: f32,
    hi: f32,
    b_x: f32,
    b_x0: f32,
    b_m: f32,
    b_noise: f32,
    b_prev: f32,
    scale: f32,
    _pad1: [f32; 2],
}

/// The scalars of one step: `x0 = clamp(a0 * x + a1 * m)`,
/// `out = b_x * x + b_x0 * x0 + b_m * m + b_noise * noise + b_prev * prev`.
/// Computed in f64 on the host, rounded to f32 for the shader.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepCoefs {
    pub a0: f64,
    pub a1: f64,
    /// `(lo, hi)` clamp of x0 (`clip_sample`).
    pub clip: Option<(f64, f64)>,
    pub b_x: f64,
    pub b_x0: f64,
    pub b_m: f64,
    pub b_noise: f64,
    pub b_prev: f64,
}

fn key(entry: &'static str, t: &Tensor) -> PipelineKey {
    PipelineKey {
        family: SHADER.name,
        entry,
        dtype: t.dtype(),
        constants: vec![("WG", WG)],
    }
}

fn same_shape(op: &'static str, what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!(
                "{what} has shape {:?} but the sample has {:?}",
                b.shape(),
                a.shape()
            ),
        ));
    }
    Ok(())
}

/// One fused scheduler update. `noise` must be given iff `b_noise != 0`, `prev` iff
/// `b_prev != 0`; with `write_x0` the (clamped) x0 is returned too, for multistep solvers.
pub fn step(
    ctx: &Context,
    x: &Tensor,
    m: &Tensor,
    noise: Option<&Tensor>,
    prev: Option<&Tensor>,
    c: &StepCoefs,
    write_x0: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "scheduler_step";
    same_shape(OP, "the model output", x, m)?;
    let mut ts = vec![x, m];
    let mut flags = 0;
    if let Some(n) = noise {
        same_shape(OP, "the noise", x, n)?;
        ts.push(n);
        flags |= NOISE;
    } else if c.b_noise != 0.0 {
        return Err(Error::shape(OP, "this step adds noise but none was given"));
    }
    if let Some(p) = prev {
        same_shape(OP, "the previous x0", x, p)?;
        ts.push(p);
        flags |= PREV;
    } else if c.b_prev != 0.0 {
        return Err(Error::shape(
            OP,
            "this multistep update needs the previous step's x0 but none was given",
        ));
    }
    same_dtype(OP, &ts)?;
    let (lo, hi) = match c.clip {
        Some((lo, hi)) => {
            flags |= CLIP;
            (lo as f32, hi as f32)
        }
        None => (0.0, 0.0),
    };
    let n = to_u32(OP, "sample", x.numel())?;
    let p = Params {
        n,
        flags,
        a0: c.a0 as f32,
        a1: c.a1 as f32,
        lo,
        hi,
        b_x: c.b_x as f32,
        b_x0: c.b_x0 as f32,
        b_m: c.b_m as f32,
        b_noise: c.b_noise as f32,
        b_prev: c.b_prev as f32,
        ..Default::default()
    };
    let out = Tensor::empty(ctx, x.shape(), x.dtype())?;
    let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
    // Absent noise / prev are not read (flags); any bound buffer satisfies the layout.
    let nb = noise.unwrap_or(x).buffer();
    let pb = prev.unwrap_or(x).buffer();
    if write_x0 {
        let x0 = Tensor::empty(ctx, x.shape(), x.dtype())?;
        let entry = "sched_step_x0";
        let pipe = ctx.pipeline(&SHADER, key(entry, x))?;
        let bufs = [x.buffer(), m.buffer(), nb, pb, out.buffer(), x0.buffer()];
        ctx.launch(&pipe, entry, &bufs, bytemuck::bytes_of(&p), wg);
        Ok((out, Some(x0)))
    } else {
        let entry = "sched_step";
        let pipe = ctx.pipeline(&SHADER, key(entry, x))?;
        let bufs = [x.buffer(), m.buffer(), nb, pb, out.buffer()];
        ctx.launch(&pipe, entry, &bufs, bytemuck::bytes_of(&p), wg);
        Ok((out, None))
    }
}

/// Classifier-free guidance: `model_output` is `[2B, ...]` with the unconditional half first
/// (diffusers' `noise_pred.chunk(2)`); returns `u + scale * (c - u)`, `[B, ...]`.
pub fn classifier_free_guidance(
    ctx: &Context,
    model_output: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "classifier_free_guidance";
    let s = model_output.shape();
    if s.is_empty() || s[0] % 2 != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "the model output must stack [unconditional; conditional] along dim 0 (an even \
                 batch), got shape {s:?}"
            ),
        ));
    }
    if !scale.is_finite() {
        return Err(Error::shape(
            OP,
            format!("guidance scale must be finite, got {scale}"),
        ));
    }
    let mut shape = s.to_vec();
    shape[0] /= 2;
    let out = Tensor::empty(ctx, &shape, model_output.dtype())?;
    let n = to_u32(OP, "model output", out.numel())?;
    let p = Params {
        n,
        half: n,
        scale,
        ..Default::default()
    };
    let pipe = ctx.pipeline(&SHADER, key("cfg", model_output))?;
    let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
    ctx.launch(
        &pipe,
        "cfg",
        &[model_output.buffer(), out.buffer()],
        bytemuck::bytes_of(&p),
        wg,
    );
    Ok(out)
}

/// Inpainting's latent blend `(1 - mask) * a + mask * b` with `a`, `b` `[B, C, H, W]` and
/// `mask` `[B, 1, H, W]` or `[1, 1, H, W]` (broadcast over channels, and over the batch).
pub fn blend(ctx: &Context, a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<Tensor> {
    const OP: &str = "blend";
    same_dtype(OP, &[a, b, mask])?;
    let s = a.shape();
    if s.len() != 4 || b.shape() != s {
        return Err(Error::shape(
            OP,
            format!(
                "a and b must both be [B, C, H, W], got {:?} and {:?}",
                s,
                b.shape()
            ),
        ));
    }
    let ms = mask.shape();
    if ms.len() != 4 || ms[1] != 1 || ms[2..] != s[2..] || (ms[0] != 1 && ms[0] != s[0]) {
        return Err(Error::shape(
            OP,
            format!(
                "the mask must be [{}, 1, {}, {}] or [1, 1, {}, {}], got {ms:?}",
                s[0], s[2], s[3], s[2], s[3]
            ),
        ));
    }
    let hw = s[2] * s[3];
    let n = to_u32(OP, "latent", a.numel())?;
    let p = Params {
        n,
        hw: to_u32(OP, "plane", hw)?,
        chw: to_u32(OP, "image", s[1] * hw)?,
        mask_stride: if ms[0] == 1 {
            0
        } else {
            to_u32(OP, "plane", hw)?
        },
        ..Default::default()
    };
    if p.hw == 0 || p.chw == 0 {
        return Err(Error::shape(OP, format!("empty latent {s:?}")));
    }
    let out = Tensor::empty(ctx, s, a.dtype())?;
    let pipe = ctx.pipeline(&SHADER, key("blend", a))?;
    let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
    let bufs = [a.buffer(), b.buffer(), mask.buffer(), out.buffer()];
    ctx.launch(&pipe, "blend", &bufs, bytemuck::bytes_of(&p), wg);
    Ok(out)
}

/// CPU references, f64 arithmetic.
pub mod reference {
    use super::StepCoefs;

    /// Returns (out, x0).
    pub fn step(
        x: &[f32],
        m: &[f32],
        noise: Option<&[f32]>,
        prev: Option<&[f32]>,
        c: &StepCoefs,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut out = Vec::with_capacity(x.len());
        let mut x0s = Vec::with_capacity(x.len());
        for i in 0..x.len() {
            let (xv, mv) = (x[i] as f64, m[i] as f64);
            let mut x0 = c.a0 * xv + c.a1 * mv;
            if let Some((lo, hi)) = c.clip {
                x0 = x0.clamp(lo, hi);
            }
            let mut o = c.b_x * xv + c.b_x0 * x0 + c.b_m * mv;
            if let Some(n) = noise {
                o += c.b_noise * n[i] as f64;
            }
            if let Some(p) = prev {
                o += c.b_prev * p[i] as f64;
            }
            out.push(o as f32);
            x0s.push(x0 as f32);
        }
        (out, x0s)
    }

    pub fn classifier_free_guidance(m: &[f32], scale: f32) -> Vec<f32> {
        let half = m.len() / 2;
        (0..half)
            .map(|i| {
                let (u, c) = (m[i] as f64, m[i + half] as f64);
                (u + scale as f64 * (c - u)) as f32
            })
            .collect()
    }

    /// `a`, `b` `[B, C, H, W]`, mask `[mb, 1, H, W]` with `mb` 1 or B.
    pub fn blend(a: &[f32], b: &[f32], mask: &[f32], c: usize, hw: usize) -> Vec<f32> {
        let per_mask = mask.len() / hw;
        (0..a.len())
            .map(|i| {
                let bi = if per_mask == 1 { 0 } else { i / (c * hw) };
                let mk = mask[bi * hw + i % hw] as f64;
                ((1.0 - mk) * a[i] as f64 + mk * b[i] as f64) as f32
            })
            .collect()
    }
}

/// `hoa bench` cases: one DPM-Solver++ 2M step (x0 written, previous x0 read) and classifier-
/// free guidance on an SD-1.5 512x512 latent, batch 2.
pub fn bench_cases(
    ctx: &Context,
    args: &crate::bench::case::BenchOptions,
) -> Result<Vec<crate::bench::case::Case>> {
    use crate::bench::case::{Bound, Case};
    let mut v = Vec::new();
    let hw = if args.quick { 32 } else { 64 };
    for dt in args.dtypes(ctx) {
        let sz = dt.size() as f64;
        let shape = [2, 4, hw, hw];
        let n: usize = shape.iter().product();
        let x = Tensor::full(ctx, &shape, 0.5, dt)?;
        let m = Tensor::full(ctx, &shape, 0.25, dt)?;
        let prev = Tensor::full(ctx, &shape, 0.125, dt)?;
        let m2 = Tensor::full(ctx, &[4, 4, hw, hw], 0.25, dt)?;
        let s = format!("2x4x{hw}x{hw} {}", dt.name());
        let c = StepCoefs {
            a0: 1.2,
            a1: -0.3,
            b_x: 0.7,
            b_x0: 0.4,
            b_prev: -0.1,
            ..Default::default()
        };
        v.push(Case {
            kernel: "scheduler_step_x0".into(),
            shape: s.clone(),
            flops: 8.0 * n as f64,
            bytes: 5.0 * n as f64 * sz,
            bound: Bound::Memory,
            baseline: None,
            run: Box::new(move |cx| step(cx, &x, &m, None, Some(&prev), &c, true).map(drop)),
        });
        v.push(Case {
            kernel: "classifier_free_guidance".into(),
            shape: format!("4x4x{hw}x{hw} {}", dt.name()),
            flops: 3.0 * n as f64,
            bytes: 3.0 * n as f64 * sz,
            bound: Bound::Memory,
            baseline: None,
            run: Box::new(move |cx| classifier_free_guidance(cx, &m2, 7.5).map(drop)),
        });
    }
    Ok(v)
}
