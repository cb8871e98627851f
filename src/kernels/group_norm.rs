//! Group normalization (`shaders/group_norm.wgsl`): `torch.nn.functional.group_norm` (biased
//! variance, eps inside the square root) on [N, C, H, W], [N, C, L] or [N, C], optionally
//! followed by SiLU as diffusers' `ResnetBlock2D` does (`norm1` then `nonlinearity`).

use super::layer_norm::{affine, RowLaunch, RowTiling};
use super::{same_dtype, to_u32, Activation};
use crate::error::{Error, Result};
use crate::gpu::{Context, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "group_norm",
    source: include_str!("../../shaders/group_norm.wgsl"),
    includes: &[crate::gpu::ROW_REDUCE],
};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    groups: u32,
    cpg: u32,
    inner: u32,
    n: u32,
    step_c: u32,
    step_r: u32,
    count: f32,
    eps: f32,
    _pad: [u32; 3],
}

/// `group_norm(x, num_groups, weight, bias, eps)`, then SiLU when `silu`.
pub fn group_norm(
    ctx: &Context,
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    silu: bool,
) -> Result<Tensor> {
    group_norm_with_tiling(ctx, x, num_groups, weight, bias, eps, silu, None)
}

const OP: &str = "group_norm";

/// [`group_norm`] with an explicit tiling (benchmarks); `None` picks the default.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_with_tiling(
    ctx: &Context,
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    silu: bool,
    tiling: Option<RowTiling>,
) -> Result<Tensor> {
    let (n, c, inner) = check(x, num_groups, weight, bias)?;
    let g = Groups::new(n, c, inner, num_groups);
    let t = tiling.unwrap_or_else(|| RowTiling::choose(ctx, g.rows, g.row_u));
    t.check(OP)?;
    let p = g.params(num_groups, eps, t);
    let (affine, inputs) = affine(x, weight, bias);
    let act = if silu {
        Activation::Silu
    } else {
        Activation::None
    };
    RowLaunch {
        op: OP,
        shader: &SHADER,
        entry: if g.vec4 { "group_norm4" } else { "group_norm1" },
        tiling: t,
        rows: g.rows,
        constants: &[("AFFINE", affine), ("ACT", act.id())],
    }
    .run(ctx, &inputs, bytemuck::bytes_of(&p))
}

/// Checks the input and the affine parameters; returns `(N, C, inner)`, inner the product of
/// the spatial dims (1 for [N, C]).
fn check(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<(usize, usize, usize)> {
    let shape = x.shape();
    if !(2..=4).contains(&shape.len()) {
        return Err(Error::shape(
            OP,
            format!("input must be [N, C], [N, C, L] or [N, C, H, W], got {shape:?}"),
        ));
    }
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    if num_groups == 0 || c % num_groups != 0 {
        return Err(Error::shape(
            OP,
            format!("{c} channels of input {shape:?} do not divide into {num_groups} groups"),
        ));
    }
    if x.numel() == 0 {
        return Err(Error::shape(OP, format!("empty input {shape:?}")));
    }
    for (what, p) in [("weight", weight), ("bias", bias)] {
        if let Some(p) = p {
            same_dtype(OP, &[x, p])?;
            if p.shape() != [c] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{what} must have shape [{c}] for input {shape:?}, got {:?}",
                        p.shape()
                    ),
                ));
            }
        }
    }
    to_u32(OP, "tensor", x.numel())?;
    Ok((n, c, inner))
}

/// The groups as the shader walks them: one row of `cpg * inner` values per (sample, group),
/// read as vec4s (units of 4 values) when `inner` is a multiple of 4, else as scalars.
struct Groups {
    rows: usize,
    cpg: usize,
    inner: usize,
    vec4: bool,
    /// `inner` in units.
    inner_u: usize,
    /// A row in units.
    row_u: usize,
}

impl Groups {
    fn new(n: usize, c: usize, inner: usize, num_groups: usize) -> Self {
        let cpg = c / num_groups;
        let vec4 = inner % 4 == 0;
        let inner_u = if vec4 { inner / 4 } else { inner };
        Groups {
            rows: n * num_groups,
            cpg,
            inner,
            vec4,
            inner_u,
            row_u: cpg * inner_u,
        }
    }

    /// The shader's parameters; a thread steps `tpr` units at a time, i.e. `step_c` channels
    /// and `step_r` units on. The `as u32` casts are exact: [`check`] bounded the element
    /// count, and every size here is at most that.
    fn params(&self, num_groups: usize, eps: f32, t: RowTiling) -> Params {
        let tpr = t.tpr as usize;
        Params {
            rows: self.rows as u32,
            groups: num_groups as u32,
            cpg: self.cpg as u32,
            inner: self.inner_u as u32,
            n: self.row_u as u32,
            step_c: (tpr / self.inner_u) as u32,
            step_r: (tpr % self.inner_u) as u32,
            count: (self.cpg * self.inner) as f32,
            eps,
            _pad: [0; 3],
        }
    }
}

/// CPU reference, f64 arithmetic.
pub mod reference {
    use crate::kernels::Activation;

    /// Group norm of x [n, c, inner] (row-major), then SiLU when `silu`.
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm(
        x: &[f32],
        n: usize,
        c: usize,
        inner: usize,
        groups: usize,
        w: Option<&[f32]>,
        b: Option<&[f32]>,
        eps: f32,
        silu: bool,
    ) -> Vec<f32> {
        let cpg = c / groups;
        let len = cpg * inner;
        let mut out = Vec::with_capacity(x.len());
        for (r, row) in x[..n * c * inner].chunks(len).enumerate() {
            let g = r % groups;
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for (j, &v) in row.iter().enumerate() {
                let ch = g * cpg + j / inner;
                let mut y = (v as f64 - mean) * rstd;
                if let Some(w) = w {
                    y *= w[ch] as f64;
                }
                if let Some(b) = b {
                    y += b[ch] as f64;
                }
                if silu {
                    y = Activation::Silu.apply_f64(y);
                }
                out.push(y as f32);
            }
        }
        out
    }
}

/// `hoa bench` cases: SD-1.5's ResnetBlock2D norm1 + SiLU at 64x64x320 and its 8x8x1280 block.
pub fn bench_cases(
    ctx: &Context,
    args: &crate::bench::case::BenchOptions,
) -> Result<Vec<crate::bench::case::Case>> {
    use crate::bench::case::{Bound, Case};
    let mut v = Vec::new();
    let hw = if args.quick { 32 } else { 64 };
    for dt in args.dtypes(ctx) {
        let sz = dt.size() as f64;
        for (shape, silu) in [([2, 320, hw, hw], true), ([2, 1280, 8, 8], false)] {
            let c = shape[1];
            let x = Tensor::full(ctx, &shape, 0.5, dt)?;
            let w = Tensor::full(ctx, &[c], 1.5, dt)?;
            let b = Tensor::full(ctx, &[c], 0.25, dt)?;
            let n: usize = shape.iter().product();
            let name = if silu {
                "group_norm_silu"
            } else {
                "group_norm"
            };
            let row_u = n / (shape[0] * 32) / 4;
            let default = RowTiling::choose(ctx, shape[0] * 32, row_u);
            let mut tilings = vec![(name.to_string(), default)];
            if args.filter.is_some() {
                tilings.extend(RowTiling::bench_alternatives(name, default));
            }
            for (kernel, t) in tilings {
                let (x, w, b) = (x.clone(), w.clone(), b.clone());
                v.push(Case {
                    kernel: kernel.clone(),
                    shape: format!(
                        "{}x{}x{}x{} G32 {}",
                        shape[0],
                        shape[1],
                        shape[2],
                        shape[3],
                        dt.name()
                    ),
                    flops: if silu { 10.0 } else { 6.0 } * n as f64,
                    bytes: 2.0 * n as f64 * sz + 2.0 * c as f64 * sz,
                    bound: Bound::Memory,
                    baseline: (kernel != name).then(|| name.to_string()),
                    run: Box::new(move |cx| {
                        group_norm_with_tiling(cx, &x, 32, Some(&w), Some(&b), 1e-5, silu, Some(t))
                            .map(drop)
                    }),
                });
            }
        }
    }
    Ok(v)
}
