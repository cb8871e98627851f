//! The WGSL kernel library. One file per shader family; each holds the params struct (field for
//! field the WGSL one), the dispatch functions, and a `reference` module: a plain CPU
//! implementation with f64 accumulation that the tests compare against.

pub mod attention;
pub mod concat;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod group_norm;
pub mod layer_norm;
pub mod matmul;
pub mod resample;
pub mod scheduler;
pub mod softmax;
pub mod tile_blend;

use crate::error::{Error, Result};
use crate::gpu::{ShaderFamily, Tensor};

/// Every shader family, for validation and for warming the pipeline cache.
pub const SHADERS: &[ShaderFamily] = &[
    crate::bench::SHADER,
    attention::SHADER,
    attention::SHADER_SG,
    concat::SHADER,
    conv2d::SHADER,
    conv2d::SHADER_SG,
    elementwise::SHADER,
    embedding::SHADER,
    group_norm::SHADER,
    layer_norm::SHADER,
    matmul::SHADER,
    matmul::SHADER_SG,
    resample::SHADER,
    scheduler::SHADER,
    softmax::SHADER,
    tile_blend::SHADER,
];

/// Activation functions fusable into kernels; the ids are `ACT_*` in `shaders/common.wgsl`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activation {
    #[default]
    None,
    /// Exact GELU, `torch.nn.functional.gelu(x)`.
    Gelu,
    /// `gelu(x, approximate="tanh")` (T5's `gelu_new`).
    GeluTanh,
    Silu,
    /// CLIP's `x * sigmoid(1.702 x)`.
    QuickGelu,
    Relu,
    /// `exp(x)` (the VAE posterior's std from its log-variance).
    Exp,
}

impl Activation {
    pub fn id(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::GeluTanh => 2,
            Activation::Silu => 3,
            Activation::QuickGelu => 4,
            Activation::Relu => 5,
            Activation::Exp => 6,
        }
    }

    /// The f64 CPU reference of the activation.
    pub fn apply_f64(self, x: f64) -> f64 {
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        match self {
            Activation::None => x,
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::GeluTanh => {
                let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + u.tanh())
            }
            Activation::Silu => x * sigmoid(x),
            Activation::QuickGelu => x * sigmoid(1.702 * x),
            Activation::Relu => x.max(0.0),
            Activation::Exp => x.exp(),
        }
    }

    /// Parses the names used in transformers/diffusers configs (`hidden_act`, `act_fn`).
    pub fn from_name(name: &str) -> Option<Activation> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "linear" | "identity" => Activation::None,
            _ => return None,
        })
    }
}

/// Errors unless every tensor has the same dtype.
pub(crate) fn same_dtype(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    if let Some(t) = ts.iter().find(|t| t.dtype() != ts[0].dtype()) {
        return Err(Error::shape(
            op,
            format!(
                "mixed dtypes: {} and {}",
                ts[0].dtype().name(),
                t.dtype().name()
            ),
        ));
    }
    Ok(())
}

/// Errors unless the tensor has `n` dimensions.
pub(crate) fn rank(op: &'static str, what: &str, t: &Tensor, n: usize) -> Result<()> {
    if t.shape().len() != n {
        return Err(Error::shape(
            op,
            format!("{what} must have {n} dimensions, got shape {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Checks that a count fits the u32 the shaders index with.
pub(crate) fn to_u32(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Limit {
        op,
        limit: "u32 indexing",
        needed: n as u64,
        max: u32::MAX as u64,
        hint: format!("{what} is too large for one dispatch"),
    })
}

/// Dtypes a benchmark covers: f32, plus f16 when asked for and the adapter has it.
pub(crate) fn bench_dtypes(
    ctx: &crate::Context,
    args: &crate::bench::BenchArgs,
) -> Vec<crate::DType> {
    let mut v = vec![crate::DType::F32];
    if args.f16 && ctx.has_f16() {
        v.push(crate::DType::F16);
    }
    v
}
