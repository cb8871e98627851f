//! Matrix multiply (`shaders/matmul.wgsl`): `act(alpha * op(A) op(B) + bias)`, batched, with
//! either operand transposed and a broadcast weight; [`linear`] is PyTorch's `nn.Linear`
//! (`F.linear(x, weight, bias)`), the projection behind every T5 / CLIP / U-Net layer.

use super::{same_dtype, to_u32, Activation};
use crate::error::{Error, Result};
use crate::gpu::tuning::MatmulChoice;
use crate::gpu::{Context, PipelineKey, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "matmul",
    source: include_str!("../../shaders/matmul.wgsl"),
    includes: &[],
};

/// The aligned fast path (`shaders/matmul_sg.wgsl`): its own family because it uses subgroup
/// operations, which not every adapter has.
pub const SHADER_SG: ShaderFamily = ShaderFamily {
    name: "matmul_sg",
    source: include_str!("../../shaders/matmul_sg.wgsl"),
    includes: &[],
};

/// Tile of `matmul_sg`: a workgroup of `wg` invocations owns `tr` rows (1..=32) and `4 * wg`
/// columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgTile {
    pub wg: u32,
    pub tr: u32,
}

/// The tile `matmul` uses on the fast path.
/// Measured at 1024^3 f32 on lavapipe, same run: tr 8 11.6, 16 15.8, 24 17.6, 32 17.4 (wg 16)
/// and 18.3 GFLOP/s (wg 8); the B loads per FMA fall as 1/tr.
pub const SG_TILE: SgTile = SgTile { wg: 8, tr: 32 };

/// Register tile of `matmul_tiled`: a workgroup of `wg` invocations owns `tm` rows and
/// `wg * tn` columns (the shader's `WG`, `TM`, `TN` overrides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub wg: u32,
    pub tm: u32,
    pub tn: u32,
}

/// The tile `matmul` uses.
pub const TILE: Tile = Tile {
    wg: 64,
    tm: 8,
    tn: 4,
};

/// k unroll of `matmul_tiled` (measured: 4 beats 1 by ~25% on lavapipe).
const KU: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    a_sm: u32,
    a_sk: u32,
    a_sb: u32,
    b_sk: u32,
    b_sn: u32,
    b_sb: u32,
    act: u32,
    alpha: f32,
}

/// Options of [`matmul`]: `out = act(alpha * op(A) op(B) + bias)`.
#[derive(Clone, Copy, Debug)]
pub struct MatmulOptions<'a> {
    /// A is stored `[.., K, M]`.
    pub trans_a: bool,
    /// B is stored `[.., N, K]` (a Linear weight `[out, in]`).
    pub trans_b: bool,
    /// `[N]`, added after scaling, before the activation.
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
    pub alpha: f32,
}

impl Default for MatmulOptions<'_> {
    fn default() -> Self {
        MatmulOptions {
            trans_a: false,
            trans_b: false,
            bias: None,
            act: Activation::None,
            alpha: 1.0,
        }
    }
}

const OP: &str = "matmul";

/// Shapes and strides of one call, checked.
struct Plan {
    batch: usize,
    m: usize,
    n: usize,
    out_shape: Vec<usize>,
    params: Params,
}

impl Plan {
    /// Workgroups of every kernel: x over N, y over M, z over the batch, for a workgroup that
    /// owns `cols` columns and `rows` rows of one output matrix.
    fn grid(&self, cols: usize, rows: usize) -> Result<[u32; 3]> {
        Ok([
            to_u32(OP, "N", self.n.div_ceil(cols))?,
            to_u32(OP, "M", self.m.div_ceil(rows))?,
            to_u32(OP, "batch", self.batch)?,
        ])
    }

    /// 2 per multiply-add, as `FlopCounterMode` counts mm / addmm / bmm (bias and activation
    /// not counted).
    fn flops(&self) -> u64 {
        2 * (self.batch * self.m * self.n) as u64 * self.params.k as u64
    }
}

/// Checks one call (dtypes, shapes, bias, u32 sizes) and computes what every kernel needs.
fn plan(a: &Tensor, b: &Tensor, o: &MatmulOptions) -> Result<Plan> {
    let mut ts = vec![a, b];
    ts.extend(o.bias);
    same_dtype(OP, &ts)?;
    let d = Dims::check(a, b, o)?;
    if let Some(bias) = o.bias {
        if bias.shape() != [d.n] {
            return Err(Error::shape(
                OP,
                format!(
                    "bias must have shape [{}] (N), got {:?}: {}",
                    d.n,
                    bias.shape(),
                    describe(a, b, o)
                ),
            ));
        }
    }
    let params = d.params(o)?;
    let (batch, m, n) = (d.batch, d.m, d.n);
    to_u32(OP, "output", batch.unwrap_or(1) * m * n)?;
    let out_shape = match batch {
        Some(bt) => vec![bt, m, n],
        None => vec![m, n],
    };
    Ok(Plan {
        batch: batch.unwrap_or(1),
        m,
        n,
        out_shape,
        params,
    })
}

/// `A [..] x B [..]` with each transposed operand marked, for error messages.
fn describe(a: &Tensor, b: &Tensor, o: &MatmulOptions) -> String {
    format!(
        "A {:?}{} x B {:?}{}",
        a.shape(),
        if o.trans_a { " (transposed)" } else { "" },
        b.shape(),
        if o.trans_b { " (transposed)" } else { "" }
    )
}

/// The logical sizes of `op(A) [M, K] x op(B) [K, N]`, and which operands carry a batch dim.
struct Dims {
    /// None when neither operand is batched.
    batch: Option<usize>,
    a_batched: bool,
    b_batched: bool,
    m: usize,
    n: usize,
    k: usize,
}

impl Dims {
    /// Checks ranks, the inner dimension, the batch sizes and emptiness.
    fn check(a: &Tensor, b: &Tensor, o: &MatmulOptions) -> Result<Dims> {
        let err = |why: String| Err(Error::shape(OP, format!("{why}: {}", describe(a, b, o))));
        // (batch, rows, columns) as stored.
        let split = |t: &Tensor, what: &str| -> Result<(Option<usize>, usize, usize)> {
            match *t.shape() {
                [r, c] => Ok((None, r, c)),
                [bt, r, c] => Ok((Some(bt), r, c)),
                _ => Err(Error::shape(
                    OP,
                    format!(
                        "{what} must be 2-D or 3-D (batched), got {}",
                        describe(a, b, o)
                    ),
                )),
            }
        };
        let (ba, ar, ac) = split(a, "A")?;
        let (bb, br, bc) = split(b, "B")?;
        let (m, ka) = if o.trans_a { (ac, ar) } else { (ar, ac) };
        let (kb, n) = if o.trans_b { (bc, br) } else { (br, bc) };
        if ka != kb {
            return err(format!("inner dimensions differ ({ka} vs {kb})"));
        }
        let batch = match (ba, bb) {
            (Some(x), Some(y)) if x != y => {
                return err(format!("batch sizes differ ({x} vs {y})"));
            }
            (x, y) => x.or(y),
        };
        if m == 0 || n == 0 || ka == 0 || batch == Some(0) {
            return err("empty operand".to_string());
        }
        Ok(Dims {
            batch,
            a_batched: ba.is_some(),
            b_batched: bb.is_some(),
            m,
            n,
            k: ka,
        })
    }

    /// The shader's parameters: element strides of op(A) along M and K and of op(B) along K
    /// and N (a transposed operand swaps them), and per-batch strides (0: broadcast).
    fn params(&self, o: &MatmulOptions) -> Result<Params> {
        let (m, n, k) = (self.m, self.n, self.k);
        let u = |what: &str, v: usize| to_u32(OP, what, v);
        let (a_sm, a_sk) = if o.trans_a { (1, m) } else { (k, 1) };
        let (b_sk, b_sn) = if o.trans_b { (1, k) } else { (n, 1) };
        Ok(Params {
            m: u("M", m)?,
            n: u("N", n)?,
            k: u("K", k)?,
            has_bias: o.bias.is_some() as u32,
            a_sm: u("A stride", a_sm)?,
            a_sk: u("A stride", a_sk)?,
            a_sb: if self.a_batched { u("A", m * k)? } else { 0 },
            b_sk: u("B stride", b_sk)?,
            b_sn: u("B stride", b_sn)?,
            b_sb: if self.b_batched { u("B", k * n)? } else { 0 },
            act: o.act.id(),
            alpha: o.alpha,
        })
    }
}

fn key(entry: &'static str, t: &Tensor, constants: Vec<(&'static str, u32)>) -> PipelineKey {
    PipelineKey {
        family: SHADER.name,
        entry,
        dtype: t.dtype(),
        constants,
    }
}

fn launch(
    ctx: &Context,
    key: PipelineKey,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    plan: Plan,
    wg: [u32; 3],
) -> Result<Tensor> {
    ctx.check_grid(OP, wg)?;
    let out = Tensor::empty(ctx, &plan.out_shape, a.dtype())?;
    let entry = key.entry;
    let pipe = ctx.pipeline(&SHADER, key)?;
    let bias = bias.unwrap_or(a);
    ctx.add_flops(plan.flops());
    ctx.launch(
        &pipe,
        entry,
        &[a.buffer(), b.buffer(), bias.buffer(), out.buffer()],
        bytemuck::bytes_of(&plan.params),
        wg,
    );
    Ok(out)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SgParams {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    a_sb4: u32,
    b_sb4: u32,
    act: u32,
    alpha: f32,
}

/// Whether `matmul_sg` can run this call: A not transposed, K and N multiples of 4 (vec4
/// loads and stores), and subgroups of at least 8 invocations on this adapter.
fn sg_ok(ctx: &Context, plan: &Plan, o: &MatmulOptions) -> bool {
    ctx.features.contains(wgpu::Features::SUBGROUP)
        && ctx.info.subgroup_min_size >= 8
        && !o.trans_a
        && plan.params.k % 4 == 0
        && plan.n % 4 == 0
}

fn launch_sg(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    o: &MatmulOptions,
    plan: Plan,
    t: SgTile,
) -> Result<Tensor> {
    let q = &plan.params;
    let params = SgParams {
        m: q.m,
        n: q.n,
        k: q.k,
        has_bias: q.has_bias,
        a_sb4: q.a_sb / 4,
        b_sb4: q.b_sb / 4,
        act: q.act,
        alpha: q.alpha,
    };
    let wg = plan.grid(4 * t.wg as usize, t.tr as usize)?;
    ctx.check_grid(OP, wg)?;
    let out = Tensor::empty(ctx, &plan.out_shape, a.dtype())?;
    let consts = vec![("WG", t.wg), ("TR", t.tr), ("TB", o.trans_b as u32)];
    let key = PipelineKey {
        family: SHADER_SG.name,
        entry: "matmul_sg",
        dtype: a.dtype(),
        constants: consts,
    };
    let pipe = ctx.pipeline(&SHADER_SG, key)?;
    let bias = o.bias.unwrap_or(a);
    ctx.add_flops(plan.flops());
    ctx.launch(
        &pipe,
        "matmul_sg",
        &[a.buffer(), b.buffer(), bias.buffer(), out.buffer()],
        bytemuck::bytes_of(&params),
        wg,
    );
    Ok(out)
}

/// The aligned fast path with an explicit tile; an error where it does not apply (A
/// transposed, K or N not a multiple of 4, no subgroups of >= 8 invocations).
pub fn matmul_sg_with(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    o: &MatmulOptions,
    t: SgTile,
) -> Result<Tensor> {
    if !(1..=32).contains(&t.tr) || t.wg == 0 {
        return Err(Error::shape(
            OP,
            format!("unsupported tile {t:?}: tr must be 1..=32"),
        ));
    }
    let plan = plan(a, b, o)?;
    if !sg_ok(ctx, &plan, o) {
        return Err(Error::shape(
            OP,
            format!(
                "the subgroup path needs A untransposed, K and N multiples of 4 and subgroups \
                 of >= 8 invocations: A {:?}, B {:?}",
                a.shape(),
                b.shape()
            ),
        ));
    }
    launch_sg(ctx, a, b, o, plan, t)
}

/// `act(alpha * op(A) op(B) + bias)`. A is `[M,K]` or `[B,M,K]` (`[..,K,M]` with `trans_a`),
/// B is `[K,N]` or `[B,K,N]` (`[..,N,K]` with `trans_b`); an unbatched operand is broadcast
/// over the other's batch. Returns `[M,N]` or `[B,M,N]`.
/// Aligned shapes take the subgroup fast path (`matmul_sg`), the rest `matmul_tiled`.
pub fn matmul(ctx: &Context, a: &Tensor, b: &Tensor, o: &MatmulOptions) -> Result<Tensor> {
    let p = plan(a, b, o)?;
    // The adapter's tuned variant (`hoa tune`), else the subgroup path where it applies.
    let (sg, tile) = match ctx.tuning().matmul() {
        None => (Some(SG_TILE), TILE),
        Some(MatmulChoice::Subgroup { wg, tr }) => (Some(SgTile { wg, tr }), TILE),
        Some(MatmulChoice::Tiled { wg, tm, tn }) => (None, Tile { wg, tm, tn }),
    };
    if let Some(t) = sg.filter(|_| sg_ok(ctx, &p, o)) {
        return launch_sg(ctx, a, b, o, p, t);
    }
    matmul_with(ctx, a, b, o, tile)
}

/// `matmul_tiled` (the general path) with an explicit register tile (benchmarks sweep it).
pub fn matmul_with(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    o: &MatmulOptions,
    t: Tile,
) -> Result<Tensor> {
    if t.tm == 0 || t.tm % 4 != 0 || t.tm > 32 || !(1..=4).contains(&t.tn) || t.wg == 0 {
        return Err(Error::shape(
            OP,
            format!("unsupported tile {t:?}: tm must be 4, 8, .. 32 and tn 1..=4"),
        ));
    }
    let plan = plan(a, b, o)?;
    let wg = plan.grid((t.wg * t.tn) as usize, t.tm as usize)?;
    let consts = vec![("WG", t.wg), ("TM", t.tm), ("TN", t.tn), ("KU", KU)];
    launch(ctx, key("matmul_tiled", a, consts), a, b, o.bias, plan, wg)
}

/// One output per invocation: the baseline the tiled kernel is benchmarked against.
pub fn matmul_naive(ctx: &Context, a: &Tensor, b: &Tensor, o: &MatmulOptions) -> Result<Tensor> {
    let plan = plan(a, b, o)?;
    let wg = plan.grid(16, 16)?;
    launch(ctx, key("matmul_naive", a, vec![]), a, b, o.bias, plan, wg)
}

/// PyTorch's `F.linear(x, weight, bias)` with a fused activation: x `[..., in]`, weight
/// `[out, in]`, bias `[out]`; returns `[..., out]`.
pub fn linear(
    ctx: &Context,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let (Some(&inp), [out_f, in_w]) = (x.shape().last(), weight.shape()) else {
        return Err(Error::shape(
            "linear",
            format!(
                "x must be [..., in] and weight [out, in], got x {:?}, weight {:?}",
                x.shape(),
                weight.shape()
            ),
        ));
    };
    if inp != *in_w {
        return Err(Error::shape(
            "linear",
            format!(
                "x {:?} has {inp} input features but weight {:?} expects {in_w}",
                x.shape(),
                weight.shape()
            ),
        ));
    }
    let rows = x.numel() / inp.max(1);
    let x2 = x.reshape(&[rows, inp])?;
    let o = MatmulOptions {
        trans_b: true,
        bias,
        act,
        ..Default::default()
    };
    let y = matmul(ctx, &x2, weight, &o)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dim") = *out_f;
    y.reshape(&shape)
}

/// CPU reference, f64 accumulation. Shapes as in [`matmul`] (all given explicitly).
pub mod reference {
    use super::Activation;

    /// Batched `act(alpha * op(A) op(B) + bias)`; `a_batched`/`b_batched` false means the
    /// operand is shared by every batch.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        batch: usize,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        a_batched: bool,
        b_batched: bool,
        alpha: f32,
        act: Activation,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(batch * m * n);
        for bt in 0..batch {
            let ao = if a_batched { bt * m * k } else { 0 };
            let bo = if b_batched { bt * k * n } else { 0 };
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0f64;
                    for kk in 0..k {
                        let av = if trans_a {
                            a[ao + kk * m + i]
                        } else {
                            a[ao + i * k + kk]
                        };
                        let bv = if trans_b {
                            b[bo + j * k + kk]
                        } else {
                            b[bo + kk * n + j]
                        };
                        s += av as f64 * bv as f64;
                    }
                    let v = alpha as f64 * s + bias.map_or(0.0, |bs| bs[j] as f64);
                    out.push(act.apply_f64(v) as f32);
                }
            }
        }
        out
    }
}

/// `hoa bench` cases: a square 1024³ against the naive kernel, then SD-1.5 U-Net projections
/// through [`linear`] at 64x64 latents with CFG (2 x 4096 tokens).
pub fn bench_cases(
    ctx: &Context,
    args: &crate::bench::case::BenchOptions,
) -> Result<Vec<crate::bench::case::Case>> {
    use crate::bench::case::{Bound, Case};
    let mut v = Vec::new();
    let dts = args.dtypes(ctx);
    let q = if args.quick { 4 } else { 1 };
    for dt in dts {
        let sz = dt.size() as f64;
        let s = 1024usize;
        let a = Tensor::full(ctx, &[s, s], 0.5, dt)?;
        let b = Tensor::full(ctx, &[s, s], 0.25, dt)?;
        let shape = format!("{s}x{s}x{s} {}", dt.name());
        let flops = 2.0 * (s * s * s) as f64;
        let bytes = 3.0 * (s * s) as f64 * sz;
        let (a2, b2) = (a.clone(), b.clone());
        v.push(Case {
            kernel: "matmul_naive".into(),
            shape: shape.clone(),
            flops,
            bytes,
            bound: Bound::Compute,
            baseline: None,
            run: Box::new(move |c| matmul_naive(c, &a2, &b2, &Default::default()).map(drop)),
        });
        v.push(Case {
            kernel: "matmul_tiled".into(),
            shape: shape.clone(),
            flops,
            bytes,
            bound: Bound::Compute,
            baseline: Some("matmul_naive".into()),
            run: Box::new({
                let (a, b) = (a.clone(), b.clone());
                move |c| matmul_with(c, &a, &b, &Default::default(), TILE).map(drop)
            }),
        });
        v.push(Case {
            kernel: "matmul".into(),
            shape,
            flops,
            bytes,
            bound: Bound::Compute,
            baseline: Some("matmul_naive".into()),
            run: Box::new({
                let (a, b) = (a.clone(), b.clone());
                move |c| matmul(c, &a, &b, &Default::default()).map(drop)
            }),
        });
        // (tokens, in, out)
        let shapes = [
            (8192 / q, 320, 320),
            (8192 / q, 320, 2560),
            (8192 / q, 1280, 320),
            (154, 768, 320),
            (2048 / q, 640, 640),
            (512 / q, 1280, 1280),
        ];
        for (m, k, n) in shapes {
            let x = Tensor::full(ctx, &[m, k], 0.5, dt)?;
            let w = Tensor::full(ctx, &[n, k], 0.25, dt)?;
            let bias = Tensor::full(ctx, &[n], 0.1, dt)?;
            v.push(Case {
                kernel: "linear".into(),
                shape: format!("{m}x{k}.{n}x{k}^T {}", dt.name()),
                flops: 2.0 * (m * n * k) as f64,
                bytes: (m * k + n * k + m * n) as f64 * sz,
                bound: Bound::Compute,
                baseline: None,
                run: Box::new(move |c| linear(c, &x, &w, Some(&bias), Activation::None).map(drop)),
            });
        }
    }
    Ok(v)
}
