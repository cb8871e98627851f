//! Elementwise kernels (`shaders/elementwise.wgsl`): activations and scaling, and add / mul /
//! sub with NumPy broadcasting over up to 4 dimensions, on strided views so that
//! `chunk(2, dim=-1)` (GEGLU) needs no copy; [`contiguous`], the copy of a view (a crop,
//! `narrow` or `chunk`) into a tensor of its own; and [`axpy`], `x + alpha * y` from f32 into
//! either storage type (LoRA merges).

use super::{same_dtype, to_u32, Activation};
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, PipelineKey, ShaderFamily, Tensor};

pub const SHADER: ShaderFamily = ShaderFamily {
    name: "elementwise",
    source: include_str!("../../shaders/elementwise.wgsl"),
    includes: &[],
};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    shape: [u32; 4],
    a_strides: [u32; 4],
    b_strides: [u32; 4],
    a_offset: u32,
    b_offset: u32,
    n: u32,
    alpha: f32,
    beta: f32,
    _pad: [u32; 3],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Mul,
    Sub,
}

impl BinaryOp {
    fn id(self) -> u32 {
        match self {
            BinaryOp::Add => 0,
            BinaryOp::Mul => 1,
            BinaryOp::Sub => 2,
        }
    }

    pub fn apply_f64(self, a: f64, b: f64) -> f64 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Mul => a * b,
            BinaryOp::Sub => a - b,
        }
    }
}

/// A strided view of a tensor: what PyTorch would get from slicing, `chunk` or `expand`.
#[derive(Clone, Debug)]
pub struct View<'a> {
    pub tensor: &'a Tensor,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

impl<'a> View<'a> {
    pub fn of(t: &'a Tensor) -> View<'a> {
        let shape = t.shape().to_vec();
        let mut strides = vec![1; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        View {
            tensor: t,
            shape,
            strides,
            offset: 0,
        }
    }

    /// `tensor.chunk(chunks, dim)[index]` for a dim that divides evenly.
    pub fn chunk(mut self, chunks: usize, dim: usize, index: usize) -> Result<View<'a>> {
        let size = *self.shape.get(dim).ok_or_else(|| {
            Error::shape(
                "chunk",
                format!("dim {dim} out of range for {:?}", self.shape),
            )
        })?;
        if chunks == 0 || size % chunks != 0 || index >= chunks {
            return Err(Error::shape(
                "chunk",
                format!("cannot take chunk {index} of {chunks} along dim {dim} of size {size}"),
            ));
        }
        let part = size / chunks;
        self.offset += index * part * self.strides[dim];
        self.shape[dim] = part;
        Ok(self)
    }

    /// `tensor.narrow(dim, start, length)`: elements `start..start + length` along `dim`.
    pub fn narrow(mut self, dim: usize, start: usize, length: usize) -> Result<View<'a>> {
        let size = *self.shape.get(dim).ok_or_else(|| {
            Error::shape(
                "narrow",
                format!("dim {dim} out of range for {:?}", self.shape),
            )
        })?;
        if start.checked_add(length).is_none_or(|end| end > size) {
            return Err(Error::shape(
                "narrow",
                format!("{start}..{start} + {length} along dim {dim} of size {size}"),
            ));
        }
        self.offset += start * self.strides[dim];
        self.shape[dim] = length;
        Ok(self)
    }

    /// One past the largest element index the view reads (0 when it is empty).
    fn extent(&self) -> Option<usize> {
        if self.shape.contains(&0) {
            return Some(0);
        }
        self.shape
            .iter()
            .zip(&self.strides)
            .try_fold(self.offset + 1, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            })
    }

    /// Whether the view reads its tensor as stored (the fast path). A transposed square
    /// matrix has the tensor's shape and offset 0 but not its strides; a stride along a dim
    /// of size 1 is never used.
    fn is_whole(&self) -> bool {
        let dense = View::of(self.tensor).strides;
        let same_strides = (self.shape.iter().zip(&self.strides).zip(&dense))
            .all(|((&d, &s), &c)| d == 1 || s == c);
        self.offset == 0 && self.shape == self.tensor.shape() && same_strides
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

/// `act(alpha * x + beta)` elementwise.
pub fn unary(ctx: &Context, x: &Tensor, act: Activation, alpha: f32, beta: f32) -> Result<Tensor> {
    let out = Tensor::empty(ctx, x.shape(), x.dtype())?;
    let n4 = to_u32("unary", "tensor", x.numel().div_ceil(4))?;
    let p = Params {
        n: n4,
        alpha,
        beta,
        ..Default::default()
    };
    let pipe = ctx.pipeline(
        &SHADER,
        key("unary4", x, vec![("WG", WG), ("ACT", act.id())]),
    )?;
    let wg = ctx.grid_1d(n4.div_ceil(WG) as u64);
    ctx.launch(
        &pipe,
        "unary4",
        &[x.buffer(), out.buffer()],
        bytemuck::bytes_of(&p),
        wg,
    );
    Ok(out)
}

pub fn activation(ctx: &Context, x: &Tensor, act: Activation) -> Result<Tensor> {
    unary(ctx, x, act, 1.0, 0.0)
}

pub fn scale(ctx: &Context, x: &Tensor, alpha: f32) -> Result<Tensor> {
    unary(ctx, x, Activation::None, alpha, 0.0)
}

pub fn add(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(
        ctx,
        View::of(a),
        View::of(b),
        BinaryOp::Add,
        Activation::None,
    )
}

pub fn mul(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(
        ctx,
        View::of(a),
        View::of(b),
        BinaryOp::Mul,
        Activation::None,
    )
}

/// The output shape of broadcasting `a` with `b`, NumPy rules.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let get = |s: &[usize], i: usize| {
        if i + s.len() >= n {
            s[i + s.len() - n]
        } else {
            1
        }
    };
    (0..n)
        .map(|i| match (get(a, i), get(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// `op(a, act_b(b))` with broadcasting; `mul` with `act_b = Gelu` on the two chunks of a
/// projection is diffusers' GEGLU.
pub fn binary(ctx: &Context, a: View, b: View, op: BinaryOp, act_b: Activation) -> Result<Tensor> {
    same_dtype("binary", &[a.tensor, b.tensor])?;
    let shape = broadcast_shape(&a.shape, &b.shape).ok_or_else(|| {
        Error::shape(
            "binary",
            format!("shapes {:?} and {:?} do not broadcast", a.shape, b.shape),
        )
    })?;
    let dtype = a.tensor.dtype();
    let out = Tensor::empty(ctx, &shape, dtype)?;
    let consts = vec![("WG", WG), ("OP", op.id()), ("ACT_B", act_b.id())];
    if a.is_whole() && b.is_whole() && a.shape == b.shape {
        let n4 = to_u32("binary", "tensor", out.numel().div_ceil(4))?;
        let p = Params {
            n: n4,
            ..Default::default()
        };
        let pipe = ctx.pipeline(&SHADER, key("binary4", a.tensor, consts))?;
        let wg = ctx.grid_1d(n4.div_ceil(WG) as u64);
        let bufs = [a.tensor.buffer(), b.tensor.buffer(), out.buffer()];
        ctx.launch(&pipe, "binary4", &bufs, bytemuck::bytes_of(&p), wg);
        return Ok(out);
    }
    if shape.len() > 4 {
        return Err(Error::shape(
            "binary",
            format!("broadcasting supports up to 4 dimensions, got {shape:?}"),
        ));
    }
    let strides4 = |v: &View| -> Result<[u32; 4]> {
        let mut s = [0u32; 4];
        let lead = 4 - v.shape.len();
        for (i, (&dim, &st)) in v.shape.iter().zip(&v.strides).enumerate() {
            let od = shape[i + shape.len() - v.shape.len()];
            s[lead + i] = if dim == 1 && od != 1 {
                0
            } else {
                to_u32("binary", "stride", st)?
            };
        }
        Ok(s)
    };
    let mut shape4 = [1u32; 4];
    for (i, &d) in shape.iter().enumerate() {
        shape4[4 - shape.len() + i] = to_u32("binary", "dim", d)?;
    }
    let (sa, sb) = (strides4(&a)?, strides4(&b)?);
    // The vec4 path needs whole vec4s in every row and aligned starts.
    let vec4_ok =
        |s: &[u32; 4], off: usize| s[3] <= 1 && s[..3].iter().all(|x| x % 4 == 0) && off % 4 == 0;
    let vec4 = shape4[3] % 4 == 0 && vec4_ok(&sa, a.offset) && vec4_ok(&sb, b.offset);
    let entry = if vec4 {
        "binary_strided4"
    } else {
        "binary_strided"
    };
    let n = to_u32("binary", "tensor", out.numel())? / if vec4 { 4 } else { 1 };
    let p = Params {
        shape: shape4,
        a_strides: sa,
        b_strides: sb,
        a_offset: to_u32("binary", "offset", a.offset)?,
        b_offset: to_u32("binary", "offset", b.offset)?,
        n,
        ..Default::default()
    };
    let pipe = ctx.pipeline(&SHADER, key(entry, a.tensor, consts))?;
    let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
    let bufs = [a.tensor.buffer(), b.tensor.buffer(), out.buffer()];
    ctx.launch(&pipe, entry, &bufs, bytemuck::bytes_of(&p), wg);
    Ok(out)
}

/// `view.contiguous()`: the view's elements (up to 4 dimensions) copied bit for bit into a new
/// tensor of its shape, e.g. a crop `x[:, :, i:i + h, j:j + w]` as
/// `contiguous(ctx, View::of(&x).narrow(2, i, h)?.narrow(3, j, w)?)`.
pub fn contiguous(ctx: &Context, v: View) -> Result<Tensor> {
    const OP: &str = "contiguous";
    if v.shape.len() > 4 || v.strides.len() != v.shape.len() {
        return Err(Error::shape(
            OP,
            format!(
                "a view of up to 4 dimensions with a stride each, got shape {:?} strides {:?}",
                v.shape, v.strides
            ),
        ));
    }
    if v.extent().is_none_or(|end| end > v.tensor.numel()) {
        return Err(Error::shape(
            OP,
            format!(
                "view {:?} (strides {:?}, offset {}) reads past {:?}",
                v.shape,
                v.strides,
                v.offset,
                v.tensor.shape()
            ),
        ));
    }
    let out = Tensor::empty(ctx, &v.shape, v.tensor.dtype())?;
    let (mut shape4, mut strides4) = ([1u32; 4], [0u32; 4]);
    let lead = 4 - v.shape.len();
    for (i, (&d, &s)) in v.shape.iter().zip(&v.strides).enumerate() {
        shape4[lead + i] = to_u32(OP, "dim", d)?;
        strides4[lead + i] = to_u32(OP, "stride", s)?;
    }
    let numel = to_u32(OP, "tensor", out.numel())?;
    if numel == 0 {
        return Ok(out);
    }
    let vec4 = strides4[3] == 1
        && shape4[3] % 4 == 0
        && strides4[..3].iter().all(|s| s % 4 == 0)
        && v.offset % 4 == 0;
    let (entry, n) = if vec4 {
        ("copy_strided4", numel / 4)
    } else {
        ("copy_strided", numel)
    };
    let p = Params {
        shape: shape4,
        a_strides: strides4,
        a_offset: to_u32(OP, "offset", v.offset)?,
        n,
        ..Default::default()
    };
    let pipe = ctx.pipeline(&SHADER, key(entry, v.tensor, vec![("WG", WG)]))?;
    let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
    ctx.check_grid(OP, wg)?;
    let bufs = [v.tensor.buffer(), out.buffer()];
    ctx.launch(&pipe, entry, &bufs, bytemuck::bytes_of(&p), wg);
    Ok(out)
}

/// `x + alpha * y` elementwise on two f32 tensors of one shape, computed in f32 and stored as
/// `out_dtype`: a LoRA merge (`W + s·ΔW`) keeps its sum exact before an f16 model rounds it.
pub fn axpy(ctx: &Context, x: &Tensor, y: &Tensor, alpha: f32, out_dtype: DType) -> Result<Tensor> {
    const OP: &str = "axpy";
    if x.dtype() != DType::F32 || y.dtype() != DType::F32 || x.shape() != y.shape() {
        return Err(Error::shape(
            OP,
            format!("x and y must be f32 tensors of one shape, got {x:?} and {y:?}"),
        ));
    }
    let out = Tensor::empty(ctx, x.shape(), out_dtype)?;
    let n = to_u32(OP, "tensor", x.numel())?;
    if n == 0 {
        return Ok(out);
    }
    let p = Params {
        n,
        alpha,
        ..Default::default()
    };
    let pipe = ctx.pipeline(&SHADER, key("axpy", &out, vec![("WG", WG)]))?;
    let wg = ctx.grid_1d(n.div_ceil(WG) as u64);
    ctx.check_grid(OP, wg)?;
    let bufs = [x.buffer(), y.buffer(), out.buffer()];
    ctx.launch(&pipe, "axpy", &bufs, bytemuck::bytes_of(&p), wg);
    Ok(out)
}

/// CPU references, f64 arithmetic.
pub mod reference {
    /// `x + alpha * y`.
    pub fn axpy(x: &[f32], y: &[f32], alpha: f32) -> Vec<f32> {
        x.iter()
            .zip(y)
            .map(|(&a, &b)| (a as f64 + alpha as f64 * b as f64) as f32)
            .collect()
    }

    use super::{broadcast_shape, Activation, BinaryOp};

    pub fn unary(x: &[f32], act: Activation, alpha: f32, beta: f32) -> Vec<f32> {
        x.iter()
            .map(|&v| act.apply_f64(alpha as f64 * v as f64 + beta as f64) as f32)
            .collect()
    }

    /// A view given as (data, shape, strides, offset).
    pub type ViewRef<'a> = (&'a [f32], &'a [usize], &'a [usize], usize);

    /// `view.contiguous()`: the view's elements in row-major order.
    pub fn contiguous(v: ViewRef) -> Vec<f32> {
        let (data, shape, strides, offset) = v;
        let n: usize = shape.iter().product();
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            let at: usize = idx.iter().zip(strides).map(|(i, s)| i * s).sum();
            out.push(data[offset + at]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }

    pub fn binary(
        a: ViewRef,
        b: ViewRef,
        op: BinaryOp,
        act_b: Activation,
    ) -> (Vec<f32>, Vec<usize>) {
        let shape = broadcast_shape(a.1, b.1).expect("broadcastable");
        let n: usize = shape.iter().product();
        let at = |v: &ViewRef, idx: &[usize]| -> f64 {
            let lead = shape.len() - v.1.len();
            let mut off = v.3;
            for i in 0..v.1.len() {
                let k = if v.1[i] == 1 { 0 } else { idx[lead + i] };
                off += k * v.2[i];
            }
            v.0[off] as f64
        };
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            out.push(op.apply_f64(at(&a, &idx), act_b.apply_f64(at(&b, &idx))) as f32);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        (out, shape)
    }
}

/// `hoa bench` cases: the residual add and SiLU of an SD-1.5 ResNet block at 64x64x320, and
/// the GEGLU of its first transformer block.
pub fn bench_cases(
    ctx: &Context,
    args: &crate::bench::case::BenchOptions,
) -> Result<Vec<crate::bench::case::Case>> {
    use crate::bench::case::{Bound, Case};
    let mut v = Vec::new();
    let hw = if args.quick { 32 } else { 64 };
    for dt in args.dtypes(ctx) {
        let sz = dt.size() as f64;
        let shape = [2, 320, hw, hw];
        let n: usize = shape.iter().product();
        let a = Tensor::full(ctx, &shape, 0.5, dt)?;
        let b = Tensor::full(ctx, &shape, 0.25, dt)?;
        let s = format!("2x320x{hw}x{hw} {}", dt.name());
        let (a2, b2) = (a.clone(), b.clone());
        v.push(Case {
            kernel: "add".into(),
            shape: s.clone(),
            flops: n as f64,
            bytes: 3.0 * n as f64 * sz,
            bound: Bound::Memory,
            baseline: None,
            run: Box::new(move |c| add(c, &a2, &b2).map(drop)),
        });
        v.push(Case {
            kernel: "silu".into(),
            shape: s,
            flops: 4.0 * n as f64,
            bytes: 2.0 * n as f64 * sz,
            bound: Bound::Memory,
            baseline: None,
            run: Box::new(move |c| activation(c, &a, Activation::Silu).map(drop)),
        });
        let rows = 2 * hw * hw;
        let x = Tensor::full(ctx, &[rows, 2 * 1280], 0.5, dt)?;
        v.push(Case {
            kernel: "geglu".into(),
            shape: format!("{rows}x2x1280 {}", dt.name()),
            flops: 20.0 * (rows * 1280) as f64,
            bytes: 3.0 * (rows * 1280) as f64 * sz,
            bound: Bound::Memory,
            baseline: None,
            run: Box::new(move |c| {
                let h = View::of(&x).chunk(2, 1, 0)?;
                let g = View::of(&x).chunk(2, 1, 1)?;
                binary(c, h, g, BinaryOp::Mul, Activation::Gelu).map(drop)
            }),
        });
    }
    Ok(v)
}
