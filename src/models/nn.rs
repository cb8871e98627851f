//! The `torch.nn` layers the models share: Linear, LayerNorm, T5's RMS norm, Embedding.

use crate::error::Result;
use crate::gpu::{Context, Tensor};
use crate::kernels::{layer_norm, matmul, Activation};
use crate::weights::Loader;

/// `nn.Linear`: weight [out, in], optional bias [out].
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(vb: &Loader, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: vb.get("weight", &[out_dim, in_dim])?,
            bias: if bias {
                Some(vb.get("bias", &[out_dim])?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        self.forward_act(ctx, x, Activation::None)
    }

    /// With a fused activation.
    pub fn forward_act(&self, ctx: &Context, x: &Tensor, act: Activation) -> Result<Tensor> {
        matmul::linear(ctx, x, &self.weight, self.bias.as_ref(), act)
    }
}

/// `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn load(vb: &Loader, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: vb.get("weight", &[dim])?,
            bias: vb.get("bias", &[dim])?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        layer_norm::layer_norm(ctx, x, Some(&self.weight), Some(&self.bias), self.eps)
    }
}
