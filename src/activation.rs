//! Activation functions as transformers / diffusers configs name them (`hidden_act`,
//! `act_fn`), with the ids the kernels fuse them by and their f64 CPU references. A leaf: config
//! parsing reads it without depending on the GPU code.

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
