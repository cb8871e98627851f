//! Resampling (`shaders/resample.wgsl`): nearest 2x upsampling, as diffusers' `Upsample2D`
//! does with `F.interpolate(scale_factor=2.0, mode="nearest")` before its conv.

use super::{rank, to_u32};
use crate::bench::case::{BenchOptions, Bound, Case};
use crate::error::Result;
use crate::gpu::{Context, PipelineKey, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "resample",
    source: include_str!("../../shaders/resample.wgsl"),
    includes: &[],
};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    w: u32,
    h: u32,
    _pad: u32,
}

/// [N, C, H, W] -> [N, C, 2H, 2W], each value repeated into a 2x2 block.
pub fn upsample_nearest2x(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    rank("upsample_nearest2x", "x", x, 4)?;
    let s = x.shape();
    let out = Tensor::empty(ctx, &[s[0], s[1], 2 * s[2], 2 * s[3]], x.dtype())?;
    let n = to_u32("upsample_nearest2x", "input", x.numel())?;
    // Even widths store whole vec4s: two inputs per invocation.
    let (entry, n) = if s[3] % 2 == 0 {
        ("upsample_nearest2x_pairs", n / 2)
    } else {
        ("upsample_nearest2x", n)
    };
    let p = Params {
        n,
        w: s[3] as u32,
        h: s[2] as u32,
        _pad: 0,
    };
    let key = PipelineKey {
        family: SHADER.name,
        entry,
        dtype: x.dtype(),
        constants: vec![("WG", WG)],
    };
    let pipe = ctx.pipeline(&SHADER, key)?;
    let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
    ctx.launch(
        &pipe,
        entry,
        &[x.buffer(), out.buffer()],
        bytemuck::bytes_of(&p),
        wg,
    );
    Ok(out)
}

pub mod reference {
    /// `x` is [N, C, H, W] flattened; returns [N, C, 2H, 2W].
    pub fn upsample_nearest2x(x: &[f32], shape: [usize; 4]) -> Vec<f32> {
        let [n, c, h, w] = shape;
        let mut out = vec![0.0; n * c * 4 * h * w];
        for plane in 0..n * c {
            for y in 0..2 * h {
                for xx in 0..2 * w {
                    out[plane * 4 * h * w + y * 2 * w + xx] =
                        x[plane * h * w + (y / 2) * w + xx / 2];
                }
            }
        }
        out
    }
}

/// SD-1.5's last upsampler input at 512x512 (batch 2): 2x640x32x32 -> 64x64.
pub fn bench_cases(ctx: &Context, args: &BenchOptions) -> Result<Vec<Case>> {
    let hw = if args.quick { 16 } else { 32 };
    let mut v = Vec::new();
    for dt in args.dtypes(ctx) {
        let shape = [2, 640, hw, hw];
        let n: usize = shape.iter().product();
        let x = Tensor::full(ctx, &shape, 1.0, dt)?;
        v.push(Case {
            kernel: "upsample_nearest2x".into(),
            shape: format!("2x640x{hw}x{hw} {}", dt.name()),
            flops: 0.0,
            bytes: 5.0 * n as f64 * dt.size() as f64,
            bound: Bound::Memory,
            baseline: None,
            run: Box::new(move |c| upsample_nearest2x(c, &x).map(drop)),
        });
    }
    Ok(v)
}
