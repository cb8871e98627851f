//! Memory-efficient multi-head attention (`shaders/attention.wgsl`): `softmax(scale * Q K^T +
//! bias) V` with flash attention's online softmax, on the `[B, L, H*D]` layout that diffusers'
//! `Attention` (`to_q` / `to_k` / `to_v`) and transformers' T5 / CLIP attention produce, so the
//! models never transpose heads. Mirrors `torch.nn.functional.scaled_dot_product_attention`
//! after `view(B, L, H, D).transpose(1, 2)`.

use super::{same_dtype, to_u32};
use crate::error::{Error, Result};
use crate::gpu::tuning::AttentionChoice;
use crate::gpu::{Context, PipelineKey, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "attention",
    source: include_str!("../../shaders/attention.wgsl"),
    includes: &[],
};

/// The subgroup fast path (`shaders/attention_sg.wgsl`): its own family because it uses
/// subgroup operations, which not every adapter has.
pub const SHADER_SG: ShaderFamily = ShaderFamily {
    name: "attention_sg",
    source: include_str!("../../shaders/attention_sg.wgsl"),
    includes: &[],
};

/// Largest head dim (q/k and v) the kernel holds in registers (`DMAX4 * 4` in the shader).
pub const MAX_HEAD_DIM: usize = 160;

/// Attention options; `AttentionOptions::new(heads)` gives plain softmax(Q K^T / sqrt(D)) V.
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions<'a> {
    pub num_heads: usize,
    /// Multiplies Q K^T; default 1/sqrt(head_dim). T5 uses 1.0.
    pub scale: Option<f32>,
    /// Key j is masked for query i when j > i (CLIP's text encoder); needs Lq == Lk.
    pub causal: bool,
    /// Added to the scaled scores: `[H, Lq, Lk]` (shared by the batch, T5's relative position
    /// bias), `[1, H, Lq, Lk]` or `[B, H, Lq, Lk]`.
    pub bias: Option<&'a Tensor>,
}

impl AttentionOptions<'_> {
    pub fn new(num_heads: usize) -> Self {
        AttentionOptions {
            num_heads,
            scale: None,
            causal: false,
            bias: None,
        }
    }
}

/// Tiling of the flash kernel: `wg` invocations per workgroup, each owning 4 query rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub wg: u32,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling { wg: 16 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    lq: u32,
    lk: u32,
    heads: u32,
    d: u32,
    dv: u32,
    qk_row: u32,
    v_row: u32,
    bias_b: u32,
    scale: f32,
    causal: u32,
    has_bias: u32,
    batch: u32,
}

/// The checked shapes of one call.
struct Shapes {
    batch: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    d: usize,
    dv: usize,
    bias_b: usize,
}

const OP: &str = "attention";

/// Checks one call (dtypes, shapes, bias, u32 sizes) and returns its sizes.
fn check(q: &Tensor, k: &Tensor, v: &Tensor, o: &AttentionOptions) -> Result<Shapes> {
    let mut ts = vec![q, k, v];
    ts.extend(o.bias);
    same_dtype(OP, &ts)?;
    let mut s = Shapes::check(q, k, v, o)?;
    if let Some(b) = o.bias {
        s.bias_b = s.bias_batch_stride(b)?;
        to_u32(OP, "bias", b.numel())?;
    }
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        to_u32(OP, name, t.numel())?;
    }
    Ok(s)
}

/// A shape error of this op.
fn bad<T>(msg: String) -> Result<T> {
    Err(Error::shape(OP, msg))
}

impl Shapes {
    /// Q K^T and P V, 2 per multiply-add, as `FlopCounterMode`'s `sdpa_flop_count` counts
    /// (softmax, scale, bias and a causal mask not counted).
    fn flops(&self) -> u64 {
        2 * (self.batch * self.heads * self.lq * self.lk) as u64 * (self.d + self.dv) as u64
    }

    /// The sizes of q, k and v (`bias_b` 0): ranks, head split, widths, batch and key counts,
    /// causality and the head dims the kernels hold in registers.
    fn check(q: &Tensor, k: &Tensor, v: &Tensor, o: &AttentionOptions) -> Result<Shapes> {
        for (name, t) in [("q", q), ("k", k), ("v", v)] {
            if t.shape().len() != 3 || t.numel() == 0 {
                return bad(format!(
                    "{name} must be a non-empty [B, L, H*D] tensor, got shape {:?}",
                    t.shape()
                ));
            }
        }
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        let h = o.num_heads;
        if h == 0 || qs[2] % h != 0 || vs[2] % h != 0 {
            return bad(format!(
                "num_heads {h} must divide the last dim of q {qs:?} and of v {vs:?}"
            ));
        }
        if ks[2] != qs[2] {
            return bad(format!(
                "k {ks:?} and q {qs:?} must have the same width H*D"
            ));
        }
        if qs[0] != ks[0] || ks[0] != vs[0] {
            return bad(format!("batch sizes differ: q {qs:?}, k {ks:?}, v {vs:?}"));
        }
        if ks[1] != vs[1] {
            return bad(format!(
                "k {ks:?} and v {vs:?} must have the same number of keys"
            ));
        }
        if o.causal && qs[1] != ks[1] {
            return bad(format!(
                "causal attention needs as many queries as keys: q {qs:?}, k {ks:?}"
            ));
        }
        let s = Shapes {
            batch: qs[0],
            lq: qs[1],
            lk: ks[1],
            heads: h,
            d: qs[2] / h,
            dv: vs[2] / h,
            bias_b: 0,
        };
        s.check_head_dims(qs, vs)?;
        Ok(s)
    }

    /// A head dim over [`MAX_HEAD_DIM`] would not fit the kernels' registers.
    fn check_head_dims(&self, qs: &[usize], vs: &[usize]) -> Result<()> {
        for (what, dim) in [("q/k head dim", self.d), ("v head dim", self.dv)] {
            if dim > MAX_HEAD_DIM {
                return Err(Error::Limit {
                    op: OP,
                    limit: "attention head dim",
                    needed: dim as u64,
                    max: MAX_HEAD_DIM as u64,
                    hint: format!(
                        "{what} of q {qs:?} / v {vs:?} with {} heads is too large",
                        self.heads
                    ),
                });
            }
        }
        Ok(())
    }

    /// Elements between two batches' bias blocks: 0 for a bias shared by the batch.
    fn bias_batch_stride(&self, b: &Tensor) -> Result<usize> {
        let (hh, lq, lk) = (self.heads, self.lq, self.lk);
        match b.shape() {
            [x, y, z] if [*x, *y, *z] == [hh, lq, lk] => Ok(0),
            [1, x, y, z] if [*x, *y, *z] == [hh, lq, lk] => Ok(0),
            [bb, x, y, z] if [*bb, *x, *y, *z] == [self.batch, hh, lq, lk] => Ok(hh * lq * lk),
            bs => bad(format!(
                "bias {bs:?} must be [H, Lq, Lk] = {:?} or [B, H, Lq, Lk] = {:?}",
                [hh, lq, lk],
                [self.batch, hh, lq, lk]
            )),
        }
    }
}

/// `softmax(scale * Q K^T + bias) V` per head; q `[B, Lq, H*D]`, k `[B, Lk, H*D]`, v
/// `[B, Lk, H*Dv]`, returns `[B, Lq, H*Dv]`. Self and cross attention (Lq != Lk).
/// Head dims that are multiples of 4 take the subgroup fast path (`attention_sg`) where the
/// adapter has subgroups of >= 8 invocations, the rest `attention_flash`.
pub fn attention(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<Tensor> {
    let s = check(q, k, v, opts)?;
    // The adapter's tuned variant (`hoa tune`), else the subgroup path where it applies.
    let (sg, flash) = match ctx.tuning().attention() {
        None => (Some(Tiling::default()), Tiling::default()),
        Some(AttentionChoice::Subgroup { wg }) => (Some(Tiling { wg }), Tiling::default()),
        Some(AttentionChoice::Flash { wg }) => (None, Tiling { wg }),
    };
    if let Some(t) = sg.filter(|_| sg_ok(ctx, &s)) {
        return launch_sg(ctx, q, k, v, opts, &s, t);
    }
    attention_tiled(ctx, q, k, v, opts, flash)
}

/// Whether `attention_sg` can run this call: head dims multiples of 4 (vec4 loads and stores)
/// and subgroups of at least 8 invocations on this adapter.
fn sg_ok(ctx: &Context, s: &Shapes) -> bool {
    subgroups_available(ctx) && s.d % 4 == 0 && s.dv % 4 == 0
}

/// Whether this adapter can run `attention_sg` at all (subgroups of >= 8 invocations).
pub fn subgroups_available(ctx: &Context) -> bool {
    ctx.features.contains(wgpu::Features::SUBGROUP) && ctx.info.subgroup_min_size >= 8
}

/// The subgroup fast path with an explicit tiling; an error where it does not apply (a head
/// dim not a multiple of 4, no subgroups of >= 8 invocations).
pub fn attention_sg_tiled(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    tiling: Tiling,
) -> Result<Tensor> {
    let s = check(q, k, v, opts)?;
    if !sg_ok(ctx, &s) {
        return Err(Error::shape(
            OP,
            format!(
                "the subgroup path needs head dims that are multiples of 4 and subgroups of >= 8 \
                 invocations: q {:?}, v {:?}, {} heads",
                q.shape(),
                v.shape(),
                s.heads
            ),
        ));
    }
    launch_sg(ctx, q, k, v, opts, &s, tiling)
}

fn launch_sg(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    s: &Shapes,
    tiling: Tiling,
) -> Result<Tensor> {
    check_tiling(ctx, tiling)?;
    let (out, wg) = output_and_grid(ctx, q, s, tiling)?;
    let pipe = ctx.pipeline(
        &SHADER_SG,
        PipelineKey {
            family: SHADER_SG.name,
            entry: "attention_sg",
            dtype: q.dtype(),
            constants: vec![("WG", tiling.wg), ("D", s.d as u32), ("DV", s.dv as u32)],
        },
    )?;
    let p = params(opts, s);
    let bias = opts.bias.unwrap_or(q);
    ctx.add_flops(s.flops());
    ctx.launch(
        &pipe,
        "attention_sg",
        &[
            q.buffer(),
            k.buffer(),
            v.buffer(),
            bias.buffer(),
            out.buffer(),
        ],
        bytemuck::bytes_of(&p),
        wg,
    );
    Ok(out)
}

/// `attention_flash` (the general path, any head dim) with an explicit tiling (benchmarks sweep
/// it).
pub fn attention_tiled(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    tiling: Tiling,
) -> Result<Tensor> {
    check_tiling(ctx, tiling)?;
    let s = check(q, k, v, opts)?;
    let (out, wg) = output_and_grid(ctx, q, &s, tiling)?;
    let pipe = ctx.pipeline(
        &SHADER,
        PipelineKey {
            family: SHADER.name,
            entry: "attention_flash",
            dtype: q.dtype(),
            // One pipeline per head-dim pair (SD: 40, 64, 80, 160; CLIP / T5: 64).
            constants: vec![
                ("WG", tiling.wg),
                ("D", s.d as u32),
                ("DV", s.dv as u32),
                ("VEC4", (s.d % 4 == 0 && s.dv % 4 == 0) as u32),
            ],
        },
    )?;
    launch(ctx, &pipe, "attention_flash", q, k, v, &out, opts, &s, wg);
    Ok(out)
}

/// A workgroup size the adapter can run (the subgroup and flash kernels).
fn check_tiling(ctx: &Context, tiling: Tiling) -> Result<()> {
    if tiling.wg == 0 || tiling.wg > ctx.limits.max_compute_invocations_per_workgroup {
        return Err(Error::shape(OP, format!("bad tiling {tiling:?}")));
    }
    Ok(())
}

/// The output `[B, Lq, H*Dv]` and the grid of the subgroup and flash kernels: x over tiles of
/// `4 * wg` query rows, y over heads, z over the batch.
fn output_and_grid(
    ctx: &Context,
    q: &Tensor,
    s: &Shapes,
    tiling: Tiling,
) -> Result<(Tensor, [u32; 3])> {
    let out = Tensor::empty(ctx, &[s.batch, s.lq, s.heads * s.dv], q.dtype())?;
    to_u32(OP, "output", out.numel())?;
    let wg = [
        to_u32(OP, "query tiles", s.lq.div_ceil(4 * tiling.wg as usize))?,
        to_u32(OP, "heads", s.heads)?,
        to_u32(OP, "batch", s.batch)?,
    ];
    ctx.check_grid(OP, wg)?;
    Ok((out, wg))
}

/// The benchmark's baseline: one invocation per query row, per-key softmax rescaling, scalar
/// loads, no tiling. Same contract as [`attention`].
pub fn attention_naive(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<Tensor> {
    const WG: u32 = 64;
    let s = check(q, k, v, opts)?;
    let out = Tensor::empty(ctx, &[s.batch, s.lq, s.heads * s.dv], q.dtype())?;
    let rows = to_u32(OP, "rows", s.batch * s.heads * s.lq)?;
    let wg = ctx.grid_1d(rows.div_ceil(WG) as u64);
    ctx.check_grid(OP, wg)?;
    let pipe = ctx.pipeline(
        &SHADER,
        PipelineKey {
            family: SHADER.name,
            entry: "attention_naive",
            dtype: q.dtype(),
            constants: vec![("WG", WG)],
        },
    )?;
    launch(ctx, &pipe, "attention_naive", q, k, v, &out, opts, &s, wg);
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn launch(
    ctx: &Context,
    pipe: &wgpu::ComputePipeline,
    label: &str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    opts: &AttentionOptions,
    s: &Shapes,
    wg: [u32; 3],
) {
    let p = params(opts, s);
    // Without a bias the shader never reads its binding; q stands in for it. q, k, v are bound
    // twice: as scalars and as vec4s.
    let bias = opts.bias.unwrap_or(q);
    let (qb, kb, vb) = (q.buffer(), k.buffer(), v.buffer());
    ctx.add_flops(s.flops());
    ctx.launch(
        pipe,
        label,
        &[qb, kb, vb, qb, kb, vb, bias.buffer(), out.buffer()],
        bytemuck::bytes_of(&p),
        wg,
    );
}

fn params(opts: &AttentionOptions, s: &Shapes) -> Params {
    Params {
        lq: s.lq as u32,
        lk: s.lk as u32,
        heads: s.heads as u32,
        d: s.d as u32,
        dv: s.dv as u32,
        qk_row: (s.heads * s.d) as u32,
        v_row: (s.heads * s.dv) as u32,
        bias_b: s.bias_b as u32,
        scale: opts.scale.unwrap_or(1.0 / (s.d as f32).sqrt()),
        causal: opts.causal as u32,
        has_bias: opts.bias.is_some() as u32,
        batch: s.batch as u32,
    }
}

/// CPU reference, f64 arithmetic, same layouts as the kernel.
pub mod reference {
    /// Shapes of a reference call; `bias_batched` says the bias is `[B, H, Lq, Lk]` rather than
    /// `[H, Lq, Lk]`.
    #[derive(Clone, Copy, Debug)]
    pub struct Dims {
        pub batch: usize,
        pub lq: usize,
        pub lk: usize,
        pub heads: usize,
        pub d: usize,
        pub dv: usize,
    }

    /// One output row `(b, h, i)`: `Dv` values.
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: &Dims,
        scale: f64,
        causal: bool,
        bias: Option<(&[f32], bool)>,
        (b, h, i): (usize, usize, usize),
    ) -> Vec<f64> {
        let (hd, hdv) = (n.heads * n.d, n.heads * n.dv);
        let qr = &q[(b * n.lq + i) * hd + h * n.d..][..n.d];
        let keys = if causal { i + 1 } else { n.lk };
        let scores: Vec<f64> = (0..keys)
            .map(|j| {
                let kr = &k[(b * n.lk + j) * hd + h * n.d..][..n.d];
                let dot: f64 = qr.iter().zip(kr).map(|(&a, &c)| a as f64 * c as f64).sum();
                let add = bias.map_or(0.0, |(bd, batched)| {
                    let bb = if batched {
                        b * n.heads * n.lq * n.lk
                    } else {
                        0
                    };
                    bd[bb + (h * n.lq + i) * n.lk + j] as f64
                });
                dot * scale + add
            })
            .collect();
        let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
        let sum: f64 = e.iter().sum();
        let mut o = vec![0f64; n.dv];
        for (j, &w) in e.iter().enumerate() {
            let vr = &v[(b * n.lk + j) * hdv + h * n.dv..][..n.dv];
            for (acc, &x) in o.iter_mut().zip(vr) {
                *acc += w / sum * x as f64;
            }
        }
        o
    }

    /// The whole output `[B, Lq, H*Dv]`.
    pub fn attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: &Dims,
        scale: f64,
        causal: bool,
        bias: Option<(&[f32], bool)>,
    ) -> Vec<f32> {
        let mut out = vec![0f32; n.batch * n.lq * n.heads * n.dv];
        for b in 0..n.batch {
            for i in 0..n.lq {
                for h in 0..n.heads {
                    let r = row(q, k, v, n, scale, causal, bias, (b, h, i));
                    let o = (b * n.lq + i) * n.heads * n.dv + h * n.dv;
                    for (dst, x) in out[o..o + n.dv].iter_mut().zip(r) {
                        *dst = x as f32;
                    }
                }
            }
        }
        out
    }
}

/// `hoa bench` cases: SD-1.5 self-attention at its first level (4096 tokens, 8 heads, D=40),
/// the headline (D=64), and the cross-attention to 77 CLIP tokens; the naive kernel
/// first as the baseline.
pub fn bench_cases(
    ctx: &Context,
    args: &crate::bench::case::BenchOptions,
) -> Result<Vec<crate::bench::case::Case>> {
    use crate::bench::case::{Bound, Case};
    let mut v = Vec::new();
    let l = if args.quick { 1024 } else { 4096 };
    let dts = args.dtypes(ctx);
    let (b, h) = (2usize, 8usize);
    for dt in dts {
        for (lk, d) in [(l, 64usize), (l, 40), (77, 40)] {
            let sz = dt.size() as f64;
            let q = Tensor::full(ctx, &[b, l, h * d], 0.5, dt)?;
            let kv = Tensor::full(ctx, &[b, lk, h * d], 0.25, dt)?;
            let shape = format!("{b}x{l}x{lk} h{h} d{d} {}", dt.name());
            let flops = 4.0 * (b * h * l * lk * d) as f64;
            let bytes = (2 * b * l * h * d + 2 * b * lk * h * d) as f64 * sz;
            // The naive kernel takes minutes at full size on a CPU adapter: quick runs only.
            if lk == l && (args.quick || ctx.info.device_type != wgpu::DeviceType::Cpu) {
                let (q2, kv2) = (q.clone(), kv.clone());
                v.push(Case {
                    kernel: "attention_naive".into(),
                    shape: shape.clone(),
                    flops,
                    bytes,
                    bound: Bound::Compute,
                    baseline: None,
                    run: Box::new(move |c| {
                        attention_naive(c, &q2, &kv2, &kv2, &AttentionOptions::new(h)).map(drop)
                    }),
                });
            }
            // The general path, for comparison with the subgroup path `attention` routes to.
            let (q3, kv3) = (q.clone(), kv.clone());
            v.push(Case {
                kernel: "attention_flash".into(),
                shape: shape.clone(),
                flops,
                bytes,
                bound: Bound::Compute,
                baseline: None,
                run: Box::new(move |c| {
                    let o = AttentionOptions::new(h);
                    attention_tiled(c, &q3, &kv3, &kv3, &o, Tiling::default()).map(drop)
                }),
            });
            v.push(Case {
                kernel: "attention".into(),
                shape,
                flops,
                bytes,
                bound: Bound::Compute,
                baseline: Some("attention_naive".into()),
                run: Box::new(move |c| {
                    attention(c, &q, &kv, &kv, &AttentionOptions::new(h)).map(drop)
                }),
            });
        }
    }
    Ok(v)
}
