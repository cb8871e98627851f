//! Concatenation (`shaders/concat.wgsl`): `torch.cat(tensors, dim)`, used by the U-Net's
//! up blocks to join skip connections along channels.

use super::{same_dtype, to_u32};
use crate::bench::case::{BenchOptions, Bound, Case};
use crate::error::{Error, Result};
use crate::gpu::{Context, PipelineKey, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "concat",
    source: include_str!("../../shaders/concat.wgsl"),
    includes: &[],
};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    in_row: u32,
    out_row: u32,
    col_offset: u32,
}

/// Concatenates along `dim`; all other dimensions must agree.
pub fn concat(ctx: &Context, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = xs
        .first()
        .ok_or_else(|| Error::shape("concat", "needs at least one tensor"))?;
    same_dtype("concat", xs)?;
    let rank = first.shape().len();
    if dim >= rank {
        return Err(Error::shape(
            "concat",
            format!("dim {dim} out of range for shape {:?}", first.shape()),
        ));
    }
    for t in xs {
        let s = t.shape();
        let ok = s.len() == rank && (0..rank).all(|d| d == dim || s[d] == first.shape()[d]);
        if !ok {
            return Err(Error::shape(
                "concat",
                format!(
                    "shapes {:?} and {s:?} differ outside dim {dim}",
                    first.shape()
                ),
            ));
        }
    }
    let mut shape = first.shape().to_vec();
    shape[dim] = xs.iter().map(|t| t.shape()[dim]).sum();
    let inner: usize = shape[dim + 1..].iter().product();
    let out = Tensor::empty(ctx, &shape, first.dtype())?;
    let key = PipelineKey {
        family: SHADER.name,
        entry: "concat_slice",
        dtype: first.dtype(),
        constants: vec![("WG", WG)],
    };
    let pipe = ctx.pipeline(&SHADER, key)?;
    let mut offset = 0;
    for t in xs {
        let n = to_u32("concat", "input", t.numel())?;
        if n == 0 {
            continue;
        }
        let p = Params {
            n,
            in_row: to_u32("concat", "row", t.shape()[dim] * inner)?,
            out_row: to_u32("concat", "row", shape[dim] * inner)?,
            col_offset: to_u32("concat", "offset", offset * inner)?,
        };
        let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
        ctx.launch(
            &pipe,
            "concat_slice",
            &[t.buffer(), out.buffer()],
            bytemuck::bytes_of(&p),
            wg,
        );
        offset += t.shape()[dim];
    }
    Ok(out)
}

pub mod reference {
    /// Each input as (data, shape).
    pub fn concat(xs: &[(&[f32], &[usize])], dim: usize) -> Vec<f32> {
        let outer: usize = xs[0].1[..dim].iter().product();
        let mut out = Vec::new();
        for o in 0..outer {
            for (data, shape) in xs {
                let row: usize = shape[dim..].iter().product();
                out.extend_from_slice(&data[o * row..(o + 1) * row]);
            }
        }
        out
    }
}

/// The skip concatenation of SD-1.5's last up block at 512x512, batch 2.
pub fn bench_cases(ctx: &Context, args: &BenchOptions) -> Result<Vec<Case>> {
    let hw = if args.quick { 32 } else { 64 };
    let mut v = Vec::new();
    for dt in args.dtypes(ctx) {
        let a = Tensor::full(ctx, &[2, 640, hw, hw], 1.0, dt)?;
        let b = Tensor::full(ctx, &[2, 320, hw, hw], 1.0, dt)?;
        let n = (a.numel() + b.numel()) as f64;
        v.push(Case {
            kernel: "concat".into(),
            shape: format!("2x(640+320)x{hw}x{hw} {}", dt.name()),
            flops: 0.0,
            bytes: 2.0 * n * dt.size() as f64,
            bound: Bound::Memory,
            baseline: None,
            run: Box::new(move |c| concat(c, &[&a, &b], 1).map(drop)),
        });
    }
    Ok(v)
}
