//! Row softmax (`shaders/softmax.wgsl`): `torch.softmax(scale * x, dim=-1)`, numerically stable
//! (the row max is subtracted before exp). Attention probabilities in diffusers' `Attention`
//! (`get_attention_scores`) and transformers' T5/CLIP attention.

use super::layer_norm::{RowLaunch, RowTiling};
use super::to_u32;
use crate::error::{Error, Result};
use crate::gpu::{Context, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "softmax",
    source: include_str!("../../shaders/softmax.wgsl"),
    includes: &[crate::gpu::ROW_REDUCE],
};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    scale: f32,
    _pad: u32,
}

/// `softmax(scale * x)` over the last dimension.
pub fn softmax(ctx: &Context, x: &Tensor, scale: f32) -> Result<Tensor> {
    softmax_with_tiling(ctx, x, scale, None)
}

/// [`softmax`] with an explicit tiling (benchmarks); `None` picks the default.
pub fn softmax_with_tiling(
    ctx: &Context,
    x: &Tensor,
    scale: f32,
    tiling: Option<RowTiling>,
) -> Result<Tensor> {
    softmax_variant(ctx, x, scale, tiling, None)
}

/// [`softmax_with_tiling`] that also picks how the last pass gets exp(scale * x - max):
/// `recompute = false` stores it in pass 2 and rescales it in place, `true` evaluates exp
/// again from x (one store per element instead of two). `None` picks the default.
pub fn softmax_variant(
    ctx: &Context,
    x: &Tensor,
    scale: f32,
    tiling: Option<RowTiling>,
    recompute: Option<bool>,
) -> Result<Tensor> {
    const OP: &str = "softmax";
    let Some(&d) = x.shape().last() else {
        return Err(Error::shape(
            OP,
            format!("input must have at least 1 dimension, got {:?}", x.shape()),
        ));
    };
    if x.numel() == 0 {
        return Err(Error::shape(OP, format!("empty input {:?}", x.shape())));
    }
    to_u32(OP, "tensor", x.numel())?;
    let rows = x.numel() / d;
    let vec4 = d % 4 == 0;
    let units = if vec4 { d / 4 } else { d };
    let t = tiling.unwrap_or_else(|| RowTiling::choose(ctx, rows, units));
    t.check(OP)?;
    let p = Params {
        rows: rows as u32,
        d: units as u32,
        scale,
        _pad: 0,
    };
    RowLaunch {
        op: OP,
        shader: &SHADER,
        entry: if vec4 { "softmax4" } else { "softmax1" },
        tiling: t,
        rows,
        constants: &[("RECOMPUTE", recompute.unwrap_or(false) as u32)],
    }
    .run(ctx, &[x], bytemuck::bytes_of(&p))
}

/// CPU reference, f64 arithmetic.
pub mod reference {
    /// Softmax of `scale * x` over rows of length `d`.
    pub fn softmax(x: &[f32], d: usize, scale: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(d) {
            let z: Vec<f64> = row.iter().map(|&v| scale as f64 * v as f64).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|&v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            out.extend(e.iter().map(|&v| (v / s) as f32));
        }
        out
    }
}

/// `hoa bench` cases: cross-attention probabilities of SD-1.5 at 64x64 (8 heads x 2 x 4096
/// queries over 77 keys) and a 4096 x 4096 self-attention score block.
pub fn bench_cases(
    ctx: &Context,
    args: &crate::bench::case::BenchOptions,
) -> Result<Vec<crate::bench::case::Case>> {
    use crate::bench::case::{Bound, Case};
    let mut v = Vec::new();
    let q = if args.quick { 4 } else { 1 };
    for dt in args.dtypes(ctx) {
        let sz = dt.size() as f64;
        for (rows, d) in [(65536, 77), (4096, 4096)] {
            let rows = rows / q;
            let x = Tensor::full(ctx, &[rows, d], 0.5, dt)?;
            let n = (rows * d) as f64;
            let units = if d % 4 == 0 { d / 4 } else { d };
            let default = RowTiling::choose(ctx, rows, units);
            let mut tilings = vec![("softmax".to_string(), default, None)];
            if args.filter.is_some() {
                tilings.push(("softmax_recompute".to_string(), default, Some(true)));
                tilings.push(("softmax_store".to_string(), default, Some(false)));
                for (k, t) in RowTiling::bench_alternatives("softmax", default) {
                    tilings.push((k, t, None));
                }
            }
            for (kernel, t, rc) in tilings {
                let x = x.clone();
                v.push(Case {
                    kernel: kernel.clone(),
                    shape: format!("{rows}x{d} {}", dt.name()),
                    flops: 5.0 * n,
                    bytes: 2.0 * n * sz,
                    bound: Bound::Memory,
                    baseline: (kernel != "softmax").then(|| "softmax".to_string()),
                    run: Box::new(move |c| softmax_variant(c, &x, 0.125, Some(t), rc).map(drop)),
                });
            }
        }
    }
    Ok(v)
}
