//! Layer norm and RMS norm over the last dimension (`shaders/layer_norm.wgsl`): PyTorch's
//! `nn.LayerNorm` (biased variance, eps inside the square root) and transformers'
//! `T5LayerNorm` (`x * rsqrt(mean(x^2) + eps) * weight`, no mean, no bias).

use super::{same_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::{Context, PipelineKey, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "layer_norm",
    source: include_str!("../../shaders/layer_norm.wgsl"),
    includes: &[crate::gpu::ROW_REDUCE],
};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    _pad: u32,
}

/// How a row kernel spreads rows over a workgroup: `wg` invocations, `tpr` of them per row
/// (a power of two dividing `wg`). Shared by the norm and softmax families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowTiling {
    pub wg: u32,
    pub tpr: u32,
}

impl RowTiling {
    /// The default for `rows` rows of `units` loads each (vec4 entries or elements). On a CPU
    /// adapter (lavapipe) one invocation per row and no barrier at all: llvmpipe runs a barrier
    /// as a coroutine switch per 8 invocations, which measured 3-15x slower than a barrier-free
    /// row per invocation (the row stays in the core's cache for the later passes); 64 rows per
    /// workgroup when there are enough rows to keep every core busy, else 16. On GPUs a
    /// workgroup reduction: 8 invocations per short row, so that a barrier's cost is shared by
    /// several rows; a whole workgroup for long rows.
    pub fn choose(ctx: &Context, rows: usize, units: usize) -> RowTiling {
        if ctx.info.device_type == wgpu::DeviceType::Cpu {
            let wg = if rows >= 64 * 8 { 64 } else { 16 };
            RowTiling { wg, tpr: 1 }
        } else if units <= 256 {
            RowTiling { wg: 64, tpr: 8 }
        } else {
            RowTiling { wg: 128, tpr: 128 }
        }
    }

    /// The tilings the tests exercise, so that both the barrier-free and the reducing code
    /// paths are checked on any adapter.
    pub const TESTED: [RowTiling; 4] = [
        RowTiling { wg: 16, tpr: 1 },
        RowTiling { wg: 64, tpr: 8 },
        RowTiling { wg: 32, tpr: 32 },
        RowTiling { wg: 128, tpr: 128 },
    ];

    /// Alternatives `hoa bench` also times when asked to (`--filter`), named `{name}_wgW_tprT`;
    /// the default is left out, it is timed under the plain name.
    pub(crate) fn bench_alternatives(name: &str, default: RowTiling) -> Vec<(String, RowTiling)> {
        [
            (64, 1),
            (16, 1),
            (4, 1),
            (64, 8),
            (64, 16),
            (64, 64),
            (128, 128),
            (256, 256),
        ]
        .into_iter()
        .map(|(wg, tpr)| RowTiling { wg, tpr })
        .filter(|&t| t != default)
        .map(|t| (format!("{name}_wg{}_tpr{}", t.wg, t.tpr), t))
        .collect()
    }

    pub(crate) fn check(self, op: &'static str) -> Result<()> {
        if !self.tpr.is_power_of_two() || self.tpr > self.wg || self.wg % self.tpr != 0 {
            return Err(Error::shape(
                op,
                format!("bad row tiling {self:?}: tpr must be a power of two dividing wg"),
            ));
        }
        Ok(())
    }

    pub(crate) fn rows_per_wg(self) -> u32 {
        self.wg / self.tpr
    }
}

/// One dispatch of a row kernel (the norm and softmax families): a workgroup per
/// `rows_per_wg` rows, the tiling's `WG` and `TPR` first among the overrides.
pub(crate) struct RowLaunch<'a> {
    pub op: &'static str,
    pub shader: &'static ShaderFamily,
    pub entry: &'static str,
    pub tiling: RowTiling,
    pub rows: usize,
    /// The overrides after `WG` and `TPR`.
    pub constants: &'a [(&'static str, u32)],
}

impl RowLaunch<'_> {
    /// A new tensor shaped like `inputs[0]`, written from `inputs` and `params`.
    pub(crate) fn run(&self, ctx: &Context, inputs: &[&Tensor], params: &[u8]) -> Result<Tensor> {
        let x = inputs[0];
        let mut constants = vec![("WG", self.tiling.wg), ("TPR", self.tiling.tpr)];
        constants.extend_from_slice(self.constants);
        let key = PipelineKey {
            family: self.shader.name,
            entry: self.entry,
            dtype: x.dtype(),
            constants,
        };
        let pipe = ctx.pipeline(self.shader, key)?;
        let wg = ctx.grid_1d((self.rows as u64).div_ceil(self.tiling.rows_per_wg() as u64));
        ctx.check_grid(self.op, wg)?;
        let out = Tensor::empty(ctx, x.shape(), x.dtype())?;
        let mut buffers: Vec<_> = inputs.iter().map(|t| t.buffer()).collect();
        buffers.push(out.buffer());
        ctx.launch(&pipe, self.op, &buffers, params, wg);
        Ok(out)
    }
}

/// A norm's `AFFINE` override (bit 0: weight, bit 1: bias) and its inputs: x, weight, bias,
/// with x bound in place of an absent one (the shader does not read it then).
pub(crate) fn affine<'a>(
    x: &'a Tensor,
    weight: Option<&'a Tensor>,
    bias: Option<&'a Tensor>,
) -> (u32, [&'a Tensor; 3]) {
    let affine = weight.is_some() as u32 | (bias.is_some() as u32) << 1;
    (affine, [x, weight.unwrap_or(x), bias.unwrap_or(x)])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Layer,
    Rms,
}

/// Checks that `p` (weight or bias) is a vector of length `d` with x's dtype.
fn check_param(
    op: &'static str,
    what: &str,
    x: &Tensor,
    p: Option<&Tensor>,
    d: usize,
) -> Result<()> {
    if let Some(p) = p {
        same_dtype(op, &[x, p])?;
        if p.shape() != [d] {
            return Err(Error::shape(
                op,
                format!(
                    "{what} must have shape [{d}] for input {:?}, got {:?}",
                    x.shape(),
                    p.shape()
                ),
            ));
        }
    }
    Ok(())
}

/// `torch.nn.functional.layer_norm(x, [d], weight, bias, eps)` over the last dimension `d`.
pub fn layer_norm(
    ctx: &Context,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    run(ctx, "layer_norm", Mode::Layer, x, weight, bias, eps, None)
}

/// T5's RMS norm over the last dimension: `x * rsqrt(mean(x^2) + eps) * weight`.
pub fn rms_norm(ctx: &Context, x: &Tensor, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    run(ctx, "rms_norm", Mode::Rms, x, weight, None, eps, None)
}

/// [`layer_norm`] (`rms = false`) or [`rms_norm`] with an explicit tiling (benchmarks).
pub fn norm_with_tiling(
    ctx: &Context,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    rms: bool,
    tiling: RowTiling,
) -> Result<Tensor> {
    let (op, mode) = if rms {
        ("rms_norm", Mode::Rms)
    } else {
        ("layer_norm", Mode::Layer)
    };
    run(ctx, op, mode, x, weight, bias, eps, Some(tiling))
}

#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &Context,
    op: &'static str,
    mode: Mode,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    tiling: Option<RowTiling>,
) -> Result<Tensor> {
    let Some(&d) = x.shape().last() else {
        return Err(Error::shape(
            op,
            format!("input must have at least 1 dimension, got {:?}", x.shape()),
        ));
    };
    if d == 0 || x.numel() == 0 {
        return Err(Error::shape(op, format!("empty input {:?}", x.shape())));
    }
    check_param(op, "weight", x, weight, d)?;
    check_param(op, "bias", x, bias, d)?;
    let rows = x.numel() / d;
    let vec4 = d % 4 == 0;
    let units = if vec4 { d / 4 } else { d };
    let t = tiling.unwrap_or_else(|| RowTiling::choose(ctx, rows, units));
    t.check(op)?;
    let (affine, inputs) = affine(x, weight, bias);
    let p = Params {
        rows: to_u32(op, "rows", rows)?,
        d: to_u32(op, "row length", d)?,
        eps,
        _pad: 0,
    };
    to_u32(op, "tensor", x.numel())?;
    RowLaunch {
        op,
        shader: &SHADER,
        entry: if vec4 { "layer_norm4" } else { "layer_norm1" },
        tiling: t,
        rows,
        constants: &[("MODE", (mode == Mode::Rms) as u32), ("AFFINE", affine)],
    }
    .run(ctx, &inputs, bytemuck::bytes_of(&p))
}

/// CPU references, f64 arithmetic.
pub mod reference {
    /// Layer norm over rows of length `d`.
    pub fn layer_norm(
        x: &[f32],
        d: usize,
        w: Option<&[f32]>,
        b: Option<&[f32]>,
        eps: f32,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(d) {
            let n = d as f64;
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for (j, &v) in row.iter().enumerate() {
                let mut y = (v as f64 - mean) * rstd;
                if let Some(w) = w {
                    y *= w[j] as f64;
                }
                if let Some(b) = b {
                    y += b[j] as f64;
                }
                out.push(y as f32);
            }
        }
        out
    }

    /// T5LayerNorm over rows of length `d`.
    pub fn rms_norm(x: &[f32], d: usize, w: Option<&[f32]>, eps: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(d) {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (ms + eps as f64).sqrt();
            for (j, &v) in row.iter().enumerate() {
                let y = v as f64 * rstd * w.map_or(1.0, |w| w[j] as f64);
                out.push(y as f32);
            }
        }
        out
    }
}

/// `hoa bench` cases: the transformer-block layer norm of SD-1.5 at 64x64 (8192 tokens x 320),
/// and RMS norms at a T5-small width and at 320.
pub fn bench_cases(
    ctx: &Context,
    args: &crate::bench::case::BenchOptions,
) -> Result<Vec<crate::bench::case::Case>> {
    use crate::bench::case::{Bound, Case};
    let mut v = Vec::new();
    let q = if args.quick { 4 } else { 1 };
    for dt in args.dtypes(ctx) {
        let sz = dt.size() as f64;
        for (rms, rows, d) in [(false, 8192, 320), (true, 512, 512), (true, 8192, 320)] {
            let rows = rows / q;
            let x = Tensor::full(ctx, &[rows, d], 0.5, dt)?;
            let w = Tensor::full(ctx, &[d], 1.5, dt)?;
            let b = Tensor::full(ctx, &[d], 0.25, dt)?;
            let n = (rows * d) as f64;
            let name = if rms { "rms_norm" } else { "layer_norm" };
            let pbytes = if rms { d } else { 2 * d } as f64 * sz;
            let default = RowTiling::choose(ctx, rows, d / 4);
            let mut tilings = vec![(name.to_string(), default)];
            if args.filter.is_some() {
                // Alternatives, timed only on request (`--filter norm`).
                tilings.extend(RowTiling::bench_alternatives(name, default));
            }
            for (kernel, t) in tilings {
                let (x, w, b) = (x.clone(), w.clone(), b.clone());
                v.push(Case {
                    kernel: kernel.clone(),
                    shape: format!("{rows}x{d} {}", dt.name()),
                    flops: 6.0 * n,
                    bytes: 2.0 * n * sz + pbytes,
                    bound: Bound::Memory,
                    baseline: (kernel != name).then(|| name.to_string()),
                    run: Box::new(move |c| {
                        let bias = (!rms).then_some(&b);
                        norm_with_tiling(c, &x, Some(&w), bias, 1e-5, rms, t).map(drop)
                    }),
                });
            }
        }
    }
    Ok(v)
}
