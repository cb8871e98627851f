//! The `torch.nn` layers the models share: Linear, LayerNorm, Conv2d, GroupNorm, and the
//! NCHW <-> sequence moves of diffusers' spatial transformers.

use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::conv2d::{self, Conv2dOptions, PackedConv2dWeight};
use crate::kernels::elementwise::{self, BinaryOp, View};
use crate::kernels::matmul::MatmulOptions;
use crate::kernels::{group_norm, layer_norm, matmul, Activation};
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

/// `nn.Conv2d` with square kernel, stride and zero padding; `pad_end` adds zero rows / columns
/// after the bottom / right edges (diffusers' `F.pad(x, (0, 1, 0, 1))`).
pub struct Conv2d {
    /// Packed once at load for the implicit-GEMM kernels (the [out, in, k, k] original is not
    /// kept).
    pub weight: PackedConv2dWeight,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    pub pad_end: usize,
}

impl Conv2d {
    /// Weight [out, in, k, k] and bias [out]; padding `(k - 1) / 2` ("same" at stride 1).
    pub fn load(vb: &Loader, cin: usize, cout: usize, k: usize, stride: usize) -> Result<Conv2d> {
        Ok(Conv2d {
            weight: PackedConv2dWeight::load(vb, "weight", [cout, cin, k, k])?,
            bias: Some(vb.get("bias", &[cout])?),
            stride,
            padding: (k - 1) / 2,
            pad_end: 0,
        })
    }

    pub fn in_channels(&self) -> usize {
        self.weight.shape()[1]
    }

    pub fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        self.forward_act(ctx, x, Activation::None)
    }

    pub fn forward_act(&self, ctx: &Context, x: &Tensor, act: Activation) -> Result<Tensor> {
        conv2d::conv2d_packed(
            ctx,
            x,
            &self.weight,
            &Conv2dOptions {
                stride: self.stride,
                padding: self.padding,
                pad_end: self.pad_end,
                bias: self.bias.as_ref(),
                act,
            },
        )
    }
}

/// `nn.GroupNorm(num_groups, channels, eps, affine=True)`, optionally followed by SiLU (the
/// `norm` + `nonlinearity` pairs of diffusers' blocks, fused into one kernel).
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub num_groups: usize,
    pub eps: f32,
}

impl GroupNorm {
    pub fn load(vb: &Loader, num_groups: usize, channels: usize, eps: f64) -> Result<GroupNorm> {
        if num_groups == 0 || channels % num_groups != 0 {
            return Err(Error::Checkpoint(format!(
                "{}: {channels} channels do not split into {num_groups} groups (norm_num_groups)",
                vb.key("weight")
            )));
        }
        Ok(GroupNorm {
            weight: vb.get("weight", &[channels])?,
            bias: vb.get("bias", &[channels])?,
            num_groups,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, ctx: &Context, x: &Tensor, silu: bool) -> Result<Tensor> {
        group_norm::group_norm(
            ctx,
            x,
            self.num_groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            silu,
        )
    }
}

/// `nn.Linear` applied to the pixels of an NCHW tensor: x [B, C, H, W] (any trailing spatial
/// shape) -> [B, H*W, out], i.e. `linear(x.flatten(2).transpose(1, 2))`. Also a 1x1 conv
/// followed by the permute.
pub fn linear_from_nchw(ctx: &Context, x: &Tensor, lin: &Linear) -> Result<Tensor> {
    let mut out = linears_from_nchw(ctx, x, &[lin])?;
    Ok(out.remove(0))
}

/// [`linear_from_nchw`] for several layers on the same input (an attention's q, k and v).
/// Where the adapter has subgroups the pixels are first copied into a sequence [B, H*W, C]
/// once, so that each linear takes matmul's subgroup path, which reads A untransposed (the
/// transposed-A fallback was 12% of an SD-1.5 U-Net step on lavapipe at ~10x the cost of the
/// copy); elsewhere the matmul reads A transposed and no copy is made.
pub fn linears_from_nchw(ctx: &Context, x: &Tensor, lins: &[&Linear]) -> Result<Vec<Tensor>> {
    let s = x.shape();
    if s.len() < 3 {
        return Err(Error::shape(
            "linear_from_nchw",
            format!("x must be [B, C, H, W], got {s:?}"),
        ));
    }
    let (b, c) = (s[0], s[1]);
    let hw: usize = s[2..].iter().product();
    if crate::kernels::attention::subgroups_available(ctx) {
        let seq = elementwise::contiguous(
            ctx,
            View {
                tensor: x,
                shape: vec![b, hw, c],
                strides: vec![c * hw, 1, hw],
                offset: 0,
            },
        )?;
        return lins.iter().map(|l| l.forward(ctx, &seq)).collect();
    }
    let x3 = x.reshape(&[b, c, hw])?;
    let each = |lin: &&Linear| {
        matmul::matmul(
            ctx,
            &x3,
            &lin.weight,
            &MatmulOptions {
                trans_a: true,
                trans_b: true,
                bias: lin.bias.as_ref(),
                ..Default::default()
            },
        )
    };
    lins.iter().map(each).collect()
}

/// `residual + y.reshape(B, H, W, C).permute(0, 3, 1, 2)`: adds a [B, H*W, C] sequence back
/// onto an NCHW tensor in one strided elementwise pass.
pub fn add_sequence_to_nchw(ctx: &Context, residual: &Tensor, y: &Tensor) -> Result<Tensor> {
    let s = residual.shape();
    if s.len() != 4 || y.shape() != [s[0], s[2] * s[3], s[1]] {
        return Err(Error::shape(
            "add_sequence_to_nchw",
            format!(
                "residual {s:?} needs a sequence [B, H*W, C], got {:?}",
                y.shape()
            ),
        ));
    }
    let (c, h, w) = (s[1], s[2], s[3]);
    let yv = View {
        tensor: y,
        shape: s.to_vec(),
        strides: vec![h * w * c, 1, w * c, c],
        offset: 0,
    };
    elementwise::binary(ctx, View::of(residual), yv, BinaryOp::Add, Activation::None)
}

/// `F.avg_pool2d(x, kernel_size=2, stride=2)` on [B, C, H, W] (odd sizes floor, as PyTorch):
/// the row pairs summed, then the column pairs, through strided views, then a quarter.
pub fn avg_pool2d_2x2(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 4 || s[2] < 2 || s[3] < 2 {
        return Err(Error::shape(
            "avg_pool2d",
            format!("x must be [B, C, H, W] with H, W >= 2, got {s:?}"),
        ));
    }
    let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
    let (ho, wo) = (h / 2, w / 2);
    let rows = |offset| View {
        tensor: x,
        shape: vec![b, c, ho, w],
        strides: vec![c * h * w, h * w, 2 * w, 1],
        offset,
    };
    let r = elementwise::binary(ctx, rows(0), rows(w), BinaryOp::Add, Activation::None)?;
    let cols = |offset| View {
        tensor: &r,
        shape: vec![b, c, ho, wo],
        strides: vec![c * ho * w, ho * w, w, 2],
        offset,
    };
    let sum = elementwise::binary(ctx, cols(0), cols(1), BinaryOp::Add, Activation::None)?;
    elementwise::scale(ctx, &sum, 0.25)
}
