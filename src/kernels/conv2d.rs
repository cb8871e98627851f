//! 2-D convolution (`shaders/conv2d.wgsl`): `torch.nn.functional.conv2d` on NCHW tensors with
//! PyTorch's weight layout [Cout, Cin, kh, kw] (as diffusers checkpoints store it), square
//! stride and zero padding (plus optional extra padding after the bottom and right edges, as
//! diffusers' `Downsample2D` with `padding=0` does with `F.pad(x, (0, 1, 0, 1))`), optional bias
//! and a fused activation. The fast path is an implicit GEMM: `conv2d_sg`
//! (`shaders/conv2d_sg.wgsl`, subgroups, output widths that are multiples of 4) where it
//! applies, else `conv2d` with a register tile per invocation; `conv2d_naive` is the direct loop
//! kept as a benchmark baseline.

use super::{rank, same_dtype, to_u32, Activation};
use crate::error::{Error, Result};
use crate::gpu::tuning::Conv2dChoice;
use crate::gpu::{Context, PipelineKey, ShaderFamily, Tensor};
use crate::weights::Loader;

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "conv2d",
    source: include_str!("../../shaders/conv2d.wgsl"),
    includes: &[],
};

/// The aligned fast path (`shaders/conv2d_sg.wgsl`): its own family because it uses subgroup
/// operations, which not every adapter has.
pub const SHADER_SG: ShaderFamily = ShaderFamily {
    name: "conv2d_sg",
    source: include_str!("../../shaders/conv2d_sg.wgsl"),
    includes: &[],
};

/// Output pixels per invocation (one vec4 accumulator per channel).
const TP: usize = 4;
const NAIVE_WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    pad: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    cout4: u32,
    tiles_w: u32,
    n_tiles: u32,
    has_bias: u32,
    n_out: u32,
}

/// Options of [`conv2d`]; `Default` is stride 1, no padding, no bias, no activation.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dOptions<'a> {
    pub stride: usize,
    pub padding: usize,
    /// Extra zero rows below and columns right of the input, on top of `padding`:
    /// `F.conv2d(F.pad(x, (0, pad_end, 0, pad_end)), ...)`. The kernel's bounds checks read
    /// zeros there, so only the output size changes.
    pub pad_end: usize,
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
}

impl Default for Conv2dOptions<'_> {
    fn default() -> Self {
        Conv2dOptions {
            stride: 1,
            padding: 0,
            pad_end: 0,
            bias: None,
            act: Activation::None,
        }
    }
}

/// The register tile of the implicit-GEMM kernel: `tc` output channels (4 or 8) x 4 output
/// pixels per invocation, `wg` invocations per workgroup (all sharing the same channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub wg: u32,
    pub tc: u32,
}

/// The tile [`conv2d`] uses (chosen by measurement on lavapipe, see `bench_cases`).
pub const DEFAULT_TILE: Tile = Tile { wg: 64, tc: 8 };

/// Tile of `conv2d_sg`: a workgroup of `wg` invocations (4 output pixels each) owns `tr` output
/// channels (4, 8, .. 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgTile {
    pub wg: u32,
    pub tr: u32,
}

/// The tile [`conv2d`] uses on the fast path (`tr` shrinks to 8 or 16 for fewer channels).
pub const SG_TILE: SgTile = SgTile { wg: 8, tr: 32 };

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SgParams {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    pad: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    cout4: u32,
    n_tiles: u32,
    gx: u32,
    has_bias: u32,
    act: u32,
}

/// Checked geometry of one convolution.
struct Geom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    /// 2 per multiply-add, as `FlopCounterMode`'s `conv_flop_count` counts (bias and
    /// activation not counted).
    fn flops(&self) -> u64 {
        let per_out = (self.cin * self.kh * self.kw) as u64;
        2 * (self.n * self.cout * self.ho * self.wo) as u64 * per_out
    }
}

fn check(x: &Tensor, weight: &Tensor, o: &Conv2dOptions) -> Result<Geom> {
    rank("conv2d", "weight [Cout, Cin, kh, kw]", weight, 4)?;
    check_ws(x, weight.shape(), weight, o)
}

/// [`check`] for a weight of shape `ws` (rank 4) whose dtype is `wt`'s.
fn check_ws(x: &Tensor, ws: &[usize], wt: &Tensor, o: &Conv2dOptions) -> Result<Geom> {
    const OP: &str = "conv2d";
    rank(OP, "input x [N, Cin, H, W]", x, 4)?;
    let mut ts = vec![x, wt];
    ts.extend(o.bias);
    same_dtype(OP, &ts)?;
    let xs = x.shape();
    let (n, cin, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let (cout, wcin, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    if wcin != cin {
        return Err(Error::shape(
            OP,
            format!("input {xs:?} has {cin} channels but weight {ws:?} expects {wcin}"),
        ));
    }
    if o.stride == 0 {
        return Err(Error::shape(OP, "stride must be at least 1"));
    }
    if let Some(b) = o.bias {
        if b.shape() != [cout] {
            return Err(Error::shape(
                OP,
                format!(
                    "bias shape {:?} does not match weight {ws:?}: expected [{cout}]",
                    b.shape()
                ),
            ));
        }
    }
    let (hp, wp) = (h + 2 * o.padding + o.pad_end, w + 2 * o.padding + o.pad_end);
    if n == 0 || cin == 0 || cout == 0 || kh == 0 || kw == 0 || hp < kh || wp < kw {
        return Err(Error::shape(
            OP,
            format!(
                "input {xs:?} with padding {} (+{} after) and weight {ws:?} give an empty output",
                o.padding, o.pad_end
            ),
        ));
    }
    let ho = (hp - kh) / o.stride + 1;
    let wo = (wp - kw) / o.stride + 1;
    Ok(Geom {
        n,
        cin,
        h,
        w,
        cout,
        kh,
        kw,
        ho,
        wo,
    })
}

fn params(g: &Geom, o: &Conv2dOptions) -> Result<Params> {
    let u = |what: &str, v: usize| to_u32("conv2d", what, v);
    // Every flat index the shader forms stays below these element counts.
    u("input", g.n * g.cin * g.h * g.w)?;
    u("weight", g.cout * g.cin * g.kh * g.kw)?;
    Ok(Params {
        n: u("batch", g.n)?,
        cin: u("channels", g.cin)?,
        h: u("height", g.h)?,
        w: u("width", g.w)?,
        cout: u("channels", g.cout)?,
        ho: u("height", g.ho)?,
        wo: u("width", g.wo)?,
        pad: u("padding", o.padding)?,
        has_bias: o.bias.is_some() as u32,
        kh: u("kernel", g.kh)?,
        kw: u("kernel", g.kw)?,
        stride: u("stride", o.stride)?,
        n_out: u("output", g.n * g.cout * g.ho * g.wo)?,
        ..Default::default()
    })
}

/// `F.conv2d(x, weight, bias, stride, padding)` followed by `act`: x [N, Cin, H, W], weight
/// [Cout, Cin, kh, kw], bias [Cout]; returns [N, Cout, Ho, Wo] with
/// Ho = (H + 2 padding - kh) / stride + 1.
/// Output widths that are multiples of 4 (and 1x1 unpadded convs over H*W % 4 == 0 pixels) take
/// the subgroup fast path (`conv2d_sg`) where the adapter has subgroups, the rest the
/// register-tiled kernel.
pub fn conv2d(ctx: &Context, x: &Tensor, weight: &Tensor, o: &Conv2dOptions) -> Result<Tensor> {
    check(x, weight, o)?;
    conv2d_packed(ctx, x, &PackedConv2dWeight::new(ctx, weight)?, o)
}

/// A conv weight [Cout, Cin, kh, kw] repacked once as [Cin*kh*kw, cout4] vec4s of 4 output
/// channels (zero past Cout; cout4 = ceil(Cout / tr) * tr / 4 for the fast path's channel tile
/// tr), the layout both implicit-GEMM kernels read. [`conv2d`] packs per call (one extra
/// dispatch, ~70 ms for a 1280x1280x3x3 weight on lavapipe, a quarter of that conv at 8x8);
/// layers that run many times hold one of these instead of the weight (`nn::Conv2d` does).
pub struct PackedConv2dWeight {
    packed: Tensor,
    shape: [usize; 4],
    tr: u32,
    cout4: u32,
}

impl PackedConv2dWeight {
    pub fn new(ctx: &Context, weight: &Tensor) -> Result<PackedConv2dWeight> {
        rank("conv2d", "weight [Cout, Cin, kh, kw]", weight, 4)?;
        let ws = weight.shape();
        let shape = [ws[0], ws[1], ws[2], ws[3]];
        let tr = sg_tr(ctx, shape[0]);
        let u = |what: &str, v: usize| to_u32("conv2d", what, v);
        let cout4 = u("channels", shape[0].div_ceil(tr as usize) * tr as usize / 4)?;
        let p = Params {
            cin: u("channels", shape[1])?,
            cout: u("channels", shape[0])?,
            kh: u("kernel", shape[2])?,
            kw: u("kernel", shape[3])?,
            cout4,
            ..Default::default()
        };
        u("weight", weight.numel())?;
        let packed = pack_weight(ctx, weight, &p)?;
        Ok(PackedConv2dWeight {
            packed,
            shape,
            tr,
            cout4,
        })
    }

    /// Weight `name` [Cout, Cin, kh, kw] of `vb`, packed as [`PackedConv2dWeight::new`] packs
    /// it (the same bits) but on the host as it loads, so the device never holds the unpacked
    /// weight beside the packed one; a weight a LoRA changes merges on the device and is
    /// packed there.
    pub fn load(vb: &Loader, name: &str, shape: [usize; 4]) -> Result<PackedConv2dWeight> {
        let tr = sg_tr(vb.context(), shape[0]);
        let cout4 = shape[0].div_ceil(tr as usize) * tr as usize / 4;
        let k = shape[1] * shape[2] * shape[3];
        let cols = cout4 * 4;
        let pack = |w: &[f32]| pack_host(w, shape[0], k, cols);
        match vb.get_mapped(name, &shape, &[k, cols], pack)? {
            Some(packed) => Ok(PackedConv2dWeight {
                packed,
                shape,
                tr,
                cout4: to_u32("conv2d", "channels", cout4)?,
            }),
            None => PackedConv2dWeight::new(vb.context(), &vb.get(name, &shape)?),
        }
    }

    /// The original weight's shape [Cout, Cin, kh, kw].
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    pub fn dtype(&self) -> crate::gpu::DType {
        self.packed.dtype()
    }
}

/// The fast path's channel tile for `cout` output channels: 32 (measured 1.2-1.6x 16 on
/// lavapipe) or the tuning cache's, less for small layers such as a U-Net's conv_out (4
/// channels).
fn sg_tr(ctx: &Context, cout: usize) -> u32 {
    let tr = match ctx.tuning().conv2d() {
        Some(Conv2dChoice::Subgroup { tr, .. }) => tr,
        _ => SG_TILE.tr,
    };
    match cout {
        0..=8 => 8,
        9..=16 => tr.min(16),
        _ => tr,
    }
}

/// [`conv2d`] with a weight packed beforehand.
pub fn conv2d_packed(
    ctx: &Context,
    x: &Tensor,
    weight: &PackedConv2dWeight,
    o: &Conv2dOptions,
) -> Result<Tensor> {
    let g = check_ws(x, &weight.shape, &weight.packed, o)?;
    // The adapter's tuned variant (`hoa tune`), else the subgroup path where it applies.
    let (sg_wg, tile) = match ctx.tuning().conv2d() {
        None => (Some(SG_TILE.wg), DEFAULT_TILE),
        Some(Conv2dChoice::Subgroup { wg, .. }) => (Some(wg), DEFAULT_TILE),
        Some(Conv2dChoice::Tiled { wg, tc }) => (None, Tile { wg, tc }),
    };
    if let Some((wg, mode)) = sg_wg.zip(sg_mode(ctx, &g, o)) {
        let t = SgTile { wg, tr: weight.tr };
        return launch_sg(ctx, x, &weight.packed, weight.cout4, o, &g, mode, t);
    }
    launch_tiled(ctx, x, &weight.packed, weight.cout4, o, &g, tile)
}

/// The input path of `conv2d_sg` for this call (the shader's MODE), or None where the fast path
/// does not apply: no subgroups of >= 8 invocations, or an output width that is not a multiple
/// of 4 (vec4 stores) unless the conv is 1x1 / stride 1 / unpadded (then the image is one row
/// of H*W pixels and H*W % 4 == 0 suffices).
fn sg_mode(ctx: &Context, g: &Geom, o: &Conv2dOptions) -> Option<u32> {
    if !ctx.features.contains(wgpu::Features::SUBGROUP) || ctx.info.subgroup_min_size < 8 {
        return None;
    }
    let plain = o.padding == 0 && o.pad_end == 0;
    if (g.kh, g.kw, o.stride) == (1, 1, 1) && plain && (g.h * g.w) % 4 == 0 {
        return Some(3);
    }
    if g.wo % 4 != 0 {
        return None;
    }
    Some(match (g.kh, g.kw, o.stride, o.padding, o.pad_end) {
        (3, 3, 1, 1, 0) if g.w % 4 == 0 => 2,
        // The two vec4s at column 2 ox0 stay inside the row while the output fits in W / 2.
        (3, 3, 2, 1, 0) | (3, 3, 2, 0, 0 | 1) if g.w % 8 == 0 => 4,
        _ => 0,
    })
}

/// Runs `conv2d_sg` on a packed weight with `cout4` >= ceil(Cout / tr) * tr / 4 vec4 columns.
#[allow(clippy::too_many_arguments)]
fn launch_sg(
    ctx: &Context,
    x: &Tensor,
    packed: &Tensor,
    cout4: u32,
    o: &Conv2dOptions,
    g: &Geom,
    mode: u32,
    t: SgTile,
) -> Result<Tensor> {
    let base = params(g, o)?;
    let u = |what: &str, v: usize| to_u32("conv2d", what, v);
    let tr = t.tr as usize;
    // MODE 3 sees the image as one row of H*W pixels.
    let (h, w, ho, wo) = if mode == 3 {
        (1, g.h * g.w, 1, g.ho * g.wo)
    } else {
        (g.h, g.w, g.ho, g.wo)
    };
    let n_tiles = g.n * ho * wo / 4;
    let groups = n_tiles.div_ceil(t.wg as usize);
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let gx = groups.min(max);
    let wg = [
        u("output", gx)?,
        u("channels", g.cout.div_ceil(tr))?,
        u("output", groups.div_ceil(gx))?,
    ];
    ctx.check_grid("conv2d", wg)?;
    let p = SgParams {
        n: base.n,
        cin: base.cin,
        h: u("height", h)?,
        w: u("width", w)?,
        cout: base.cout,
        ho: u("height", ho)?,
        wo: u("width", wo)?,
        pad: base.pad,
        kh: base.kh,
        kw: base.kw,
        stride: base.stride,
        cout4,
        n_tiles: u("output", n_tiles)?,
        gx: wg[0],
        has_bias: base.has_bias,
        act: o.act.id(),
    };
    let out = Tensor::empty(ctx, &[g.n, g.cout, g.ho, g.wo], x.dtype())?;
    let key = PipelineKey {
        family: SHADER_SG.name,
        entry: "conv2d_sg",
        dtype: x.dtype(),
        constants: vec![("WG", t.wg), ("TR", t.tr), ("MODE", mode)],
    };
    let pipe = ctx.pipeline(&SHADER_SG, key)?;
    let bias = o.bias.unwrap_or(packed);
    ctx.add_flops(g.flops());
    ctx.launch(
        &pipe,
        "conv2d_sg",
        &[
            x.buffer(),
            x.buffer(),
            packed.buffer(),
            bias.buffer(),
            out.buffer(),
        ],
        bytemuck::bytes_of(&p),
        wg,
    );
    Ok(out)
}

/// The subgroup fast path with an explicit tile; an error where it does not apply (see
/// [`conv2d`]: no subgroups of >= 8 invocations, or an output width not a multiple of 4).
pub fn conv2d_sg_with(
    ctx: &Context,
    x: &Tensor,
    weight: &Tensor,
    o: &Conv2dOptions,
    t: SgTile,
) -> Result<Tensor> {
    if !(4..=32).contains(&t.tr) || t.tr % 4 != 0 || t.wg == 0 {
        return Err(Error::shape(
            "conv2d",
            format!("unsupported tile {t:?}: tr must be 4, 8, .. 32"),
        ));
    }
    let g = check(x, weight, o)?;
    let Some(mode) = sg_mode(ctx, &g, o) else {
        return Err(Error::shape(
            "conv2d",
            format!(
                "the subgroup path needs subgroups of >= 8 invocations and an output width that \
                 is a multiple of 4: input {:?}, weight {:?}, output width {}",
                x.shape(),
                weight.shape(),
                g.wo
            ),
        ));
    };
    let tr = t.tr as usize;
    let cout4 = to_u32("conv2d", "channels", g.cout.div_ceil(tr) * tr / 4)?;
    let packed = pack_weight(
        ctx,
        weight,
        &Params {
            cout4,
            ..params(&g, o)?
        },
    )?;
    launch_sg(ctx, x, &packed, cout4, o, &g, mode, t)
}

/// [`conv2d`] without the subgroup fast path, with an explicit register tile (for tuning and
/// for testing the fallback; each tile is its own pipeline).
pub fn conv2d_tiled(
    ctx: &Context,
    x: &Tensor,
    weight: &Tensor,
    o: &Conv2dOptions,
    tile: Tile,
) -> Result<Tensor> {
    let g = check(x, weight, o)?;
    let tc = if tile.tc > 4 { 8 } else { 4 };
    let cout4 = to_u32(
        "conv2d",
        "channels",
        g.cout.div_ceil(tc as usize) * tc as usize / 4,
    )?;
    let packed = pack_weight(
        ctx,
        weight,
        &Params {
            cout4,
            ..params(&g, o)?
        },
    )?;
    launch_tiled(ctx, x, &packed, cout4, o, &g, tile)
}

/// Runs the register-tiled kernel on a packed weight with `cout4` >= ceil(Cout / tc) * tc / 4
/// vec4 columns.
fn launch_tiled(
    ctx: &Context,
    x: &Tensor,
    packed: &Tensor,
    cout4: u32,
    o: &Conv2dOptions,
    g: &Geom,
    tile: Tile,
) -> Result<Tensor> {
    let tc = if tile.tc > 4 { 8 } else { 4 };
    let mut p = params(g, o)?;
    p.cout4 = cout4;
    let tiles_w = g.wo.div_ceil(TP);
    p.tiles_w = to_u32("conv2d", "output", tiles_w)?;
    p.n_tiles = to_u32("conv2d", "output", g.n * g.ho * tiles_w)?;
    let out = Tensor::empty(ctx, &[g.n, g.cout, g.ho, g.wo], x.dtype())?;
    let w4 = g.w % 4 == 0;
    // The vec4 paths assume the output row is no wider than the input row.
    let w4 = w4 && o.pad_end == 0;
    let mode = match (g.kh, g.kw, o.stride, o.padding) {
        (3, 3, 1, 1) if w4 => 2,
        (1, 1, 1, 0) if w4 => 3,
        (3, 3, 1, _) => 1,
        _ => 0,
    };
    let key = PipelineKey {
        family: SHADER.name,
        entry: "conv2d",
        dtype: x.dtype(),
        constants: vec![
            ("WG", tile.wg),
            ("TC", tc),
            ("MODE", mode),
            ("ACT", o.act.id()),
        ],
    };
    let pipe = ctx.pipeline(&SHADER, key)?;
    let wg = [p.n_tiles.div_ceil(tile.wg), p.cout.div_ceil(tc), 1];
    ctx.check_grid("conv2d", wg)?;
    let bias = o.bias.unwrap_or(packed);
    ctx.add_flops(g.flops());
    ctx.launch(
        &pipe,
        "conv2d",
        &[
            x.buffer(),
            x.buffer(),
            packed.buffer(),
            bias.buffer(),
            out.buffer(),
        ],
        bytemuck::bytes_of(&p),
        wg,
    );
    Ok(out)
}

/// Repacks weight [Cout, Cin, kh, kw] as [Cin*kh*kw, cout4] vec4s of 4 output channels.
fn pack_weight(ctx: &Context, weight: &Tensor, p: &Params) -> Result<Tensor> {
    let k = (p.cin * p.kh * p.kw) as usize;
    let n4 = to_u32("conv2d", "weight", k * p.cout4 as usize)?;
    let packed = Tensor::empty(ctx, &[k, p.cout4 as usize * 4], weight.dtype())?;
    let key = PipelineKey {
        family: SHADER.name,
        entry: "pack_weight",
        dtype: weight.dtype(),
        constants: vec![("WG", NAIVE_WG)],
    };
    let pipe = ctx.pipeline(&SHADER, key)?;
    let wg = ctx.grid_1d(n4.div_ceil(NAIVE_WG) as u64);
    ctx.check_grid("conv2d", wg)?;
    let pk = Params { n_out: n4, ..*p };
    ctx.launch(
        &pipe,
        "pack_weight",
        &[weight.buffer(), packed.buffer()],
        bytemuck::bytes_of(&pk),
        wg,
    );
    Ok(packed)
}

/// `pack_weight` on the host: weight [cout, k] -> [k, cols], zero past `cout`.
fn pack_host(w: &[f32], cout: usize, k: usize, cols: usize) -> Vec<f32> {
    // A transpose in 64x64 blocks: element by element, every write of a row lands `cols`
    // floats from the last (a cache miss each), which made SD-1.5's load ~1.6x slower.
    const B: usize = 64;
    let mut out = vec![0.0; k * cols];
    let rows: Vec<&[f32]> = w.chunks_exact(k).take(cout).collect();
    for k0 in (0..k).step_by(B) {
        let k1 = (k0 + B).min(k);
        for (c0, block) in rows.chunks(B).enumerate() {
            for (i, row) in block.iter().enumerate() {
                let co = c0 * B + i;
                for (kk, &v) in row[k0..k1].iter().enumerate() {
                    out[(k0 + kk) * cols + co] = v;
                }
            }
        }
    }
    out
}

/// The direct convolution, one output per invocation: only a baseline for `hoa bench`.
pub fn conv2d_naive(
    ctx: &Context,
    x: &Tensor,
    weight: &Tensor,
    o: &Conv2dOptions,
) -> Result<Tensor> {
    let g = check(x, weight, o)?;
    let p = params(&g, o)?;
    let out = Tensor::empty(ctx, &[g.n, g.cout, g.ho, g.wo], x.dtype())?;
    let key = PipelineKey {
        family: SHADER.name,
        entry: "conv2d_naive",
        dtype: x.dtype(),
        constants: vec![("WG", NAIVE_WG), ("ACT", o.act.id())],
    };
    let pipe = ctx.pipeline(&SHADER, key)?;
    let wg = ctx.grid_1d(p.n_out.div_ceil(NAIVE_WG) as u64);
    ctx.check_grid("conv2d_naive", wg)?;
    let bias = o.bias.unwrap_or(weight);
    ctx.add_flops(g.flops());
    ctx.launch(
        &pipe,
        "conv2d_naive",
        &[x.buffer(), weight.buffer(), bias.buffer(), out.buffer()],
        bytemuck::bytes_of(&p),
        wg,
    );
    Ok(out)
}

/// CPU reference: direct convolution with f64 accumulation.
pub mod reference {
    use super::Activation;

    /// x [n, cin, h, w], weight [cout, cin, kh, kw] (shapes given as arrays); returns the
    /// output and its shape [n, cout, ho, wo].
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        x: &[f32],
        xs: [usize; 4],
        weight: &[f32],
        ws: [usize; 4],
        bias: Option<&[f32]>,
        stride: usize,
        padding: usize,
        act: Activation,
    ) -> (Vec<f32>, [usize; 4]) {
        conv2d_pad_end(x, xs, weight, ws, bias, stride, padding, 0, act)
    }

    /// [`conv2d`] with `pad_end` extra zero rows / columns after the bottom / right edges.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_pad_end(
        x: &[f32],
        xs: [usize; 4],
        weight: &[f32],
        ws: [usize; 4],
        bias: Option<&[f32]>,
        stride: usize,
        padding: usize,
        pad_end: usize,
        act: Activation,
    ) -> (Vec<f32>, [usize; 4]) {
        let [n, cin, h, w] = xs;
        let [cout, _, kh, kw] = ws;
        let ho = (h + 2 * padding + pad_end - kh) / stride + 1;
        let wo = (w + 2 * padding + pad_end - kw) / stride + 1;
        let mut out = Vec::with_capacity(n * cout * ho * wo);
        for b in 0..n {
            for co in 0..cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut s = bias.map_or(0.0, |bv| bv[co] as f64);
                        for ci in 0..cin {
                            for ky in 0..kh {
                                let iy = (oy * stride + ky) as isize - padding as isize;
                                if iy < 0 || iy >= h as isize {
                                    continue;
                                }
                                for kx in 0..kw {
                                    let ix = (ox * stride + kx) as isize - padding as isize;
                                    if ix < 0 || ix >= w as isize {
                                        continue;
                                    }
                                    let xv =
                                        x[((b * cin + ci) * h + iy as usize) * w + ix as usize];
                                    let wv = weight[((co * cin + ci) * kh + ky) * kw + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out.push(act.apply_f64(s) as f32);
                    }
                }
            }
        }
        (out, [n, cout, ho, wo])
    }
}

/// `hoa bench` cases: the convolutions of an SD-1.5 U-Net at batch 2 (64x64 latents, halved
/// with `--quick`): 3x3 320->320, 1x1 320->320, the stride-2 downsampler, conv_in (4->320),
/// conv_out (320->4), 3x3 640->640 at half size and 1280->1280 at a quarter; each as
/// `conv2d_tiled` (the register-tiled kernel, the fallback) and `conv2d` (the fast path where it
/// applies), plus the naive baseline where that is affordable. (Measured on lavapipe while
/// choosing the fallback's tile: 8 channels x 4 pixels beat 4 channels x 4 pixels by 1.0-1.6x;
/// workgroup size 32 vs 64 was within the noise.)
pub fn bench_cases(
    ctx: &Context,
    args: &crate::bench::case::BenchOptions,
) -> Result<Vec<crate::bench::case::Case>> {
    use crate::bench::case::{Bound, Case};
    let mut v = Vec::new();
    let s = if args.quick { 32 } else { 64 };
    let dts = args.dtypes(ctx);
    // (name, cin, cout, hw, k, stride, pad, time the naive baseline too: it runs at ~0.3
    // GFLOP/s on lavapipe, ~50 s for the full-size 3x3, so that one only with --quick)
    type Shape = (&'static str, usize, usize, usize, usize, usize, usize, bool);
    let shapes: [Shape; 7] = [
        ("3x3", 320, 320, s, 3, 1, 1, args.quick),
        ("1x1", 320, 320, s, 1, 1, 0, true),
        ("3x3s2", 320, 320, s, 3, 2, 1, false),
        ("3x3in", 4, 320, s, 3, 1, 1, true),
        ("3x3out", 320, 4, s, 3, 1, 1, false),
        ("3x3", 640, 640, s / 2, 3, 1, 1, false),
        ("3x3", 1280, 1280, s / 4, 3, 1, 1, false),
    ];
    for dt in dts {
        let sz = dt.size() as f64;
        for &(name, cin, cout, hw, k, stride, pad, naive) in &shapes {
            let n = 2;
            let x = Tensor::full(ctx, &[n, cin, hw, hw], 0.5, dt)?;
            let w = Tensor::full(ctx, &[cout, cin, k, k], 0.01, dt)?;
            let b = Tensor::full(ctx, &[cout], 0.1, dt)?;
            let ho = (hw + 2 * pad - k) / stride + 1;
            let flops = 2.0 * (n * cout * ho * ho * cin * k * k) as f64;
            let bytes = (x.numel() + w.numel() + n * cout * ho * ho) as f64 * sz;
            let shape = format!("{name} {n}x{cin}x{hw}x{hw}->{cout} {}", dt.name());
            let mk = |kernel: &str, baseline: Option<&str>, run| Case {
                kernel: kernel.into(),
                shape: shape.clone(),
                flops,
                bytes,
                bound: Bound::Compute,
                baseline: baseline.map(Into::into),
                run,
            };
            type F = fn(&Context, &Tensor, &Tensor, &Conv2dOptions) -> Result<Tensor>;
            let tiled: F = |c, x, w, o| conv2d_tiled(c, x, w, o, DEFAULT_TILE);
            let mut kernels: Vec<(&str, Option<&str>, F)> = Vec::new();
            if naive {
                kernels.push(("conv2d_naive", None, conv2d_naive));
            }
            kernels.push(("conv2d_tiled", naive.then_some("conv2d_naive"), tiled));
            kernels.push(("conv2d", Some("conv2d_tiled"), conv2d));
            for (kernel, base, f) in kernels {
                let (x, w, b) = (x.clone(), w.clone(), b.clone());
                v.push(mk(
                    kernel,
                    base,
                    Box::new(move |c| {
                        let o = Conv2dOptions {
                            stride,
                            padding: pad,
                            bias: Some(&b),
                            act: Activation::None,
                            ..Default::default()
                        };
                        f(c, &x, &w, &o).map(drop)
                    }),
                ));
            }
        }
    }
    Ok(v)
}
