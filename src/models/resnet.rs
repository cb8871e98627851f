//! diffusers' convolutional blocks (`models/resnet.py`, `downsampling.py`, `upsampling.py`):
//! `ResnetBlock2D` (the "default" time-embedding norm), `Downsample2D` and `Upsample2D` with
//! their convolutions, shared by the U-Net and the VAE.

use super::nn::{Conv2d, GroupNorm, Linear};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::{elementwise, resample};
use crate::weights::Loader;

/// `ResnetBlock2D(in, out, temb_channels, groups, eps, output_scale_factor)` with
/// `time_embedding_norm="default"`, SiLU, and the 1x1 `conv_shortcut` diffusers adds when the
/// channel count changes.
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub output_scale_factor: f32,
}

impl ResnetBlock2D {
    /// `temb_channels` None: no time embedding (the VAE's blocks).
    pub fn load(
        vb: &Loader,
        in_channels: usize,
        out_channels: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
    ) -> Result<ResnetBlock2D> {
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&vb.pp("norm1"), groups, in_channels, eps)?,
            conv1: Conv2d::load(&vb.pp("conv1"), in_channels, out_channels, 3, 1)?,
            time_emb_proj: match temb_channels {
                Some(t) => Some(Linear::load(
                    &vb.pp("time_emb_proj"),
                    t,
                    out_channels,
                    true,
                )?),
                None => None,
            },
            norm2: GroupNorm::load(&vb.pp("norm2"), groups, out_channels, eps)?,
            conv2: Conv2d::load(&vb.pp("conv2"), out_channels, out_channels, 3, 1)?,
            conv_shortcut: if in_channels != out_channels {
                Some(Conv2d::load(
                    &vb.pp("conv_shortcut"),
                    in_channels,
                    out_channels,
                    1,
                    1,
                )?)
            } else {
                None
            },
            output_scale_factor: output_scale_factor as f32,
        })
    }

    /// x [B, in, H, W]; `temb_silu` is `silu(temb)` [B, temb_channels] (diffusers applies the
    /// nonlinearity to temb inside every block; callers compute it once). Returns
    /// `(shortcut(x) + h) / output_scale_factor`.
    pub fn forward(&self, ctx: &Context, x: &Tensor, temb_silu: Option<&Tensor>) -> Result<Tensor> {
        let cin = self.conv1.in_channels();
        if x.shape().len() != 4 || x.shape()[1] != cin {
            return Err(Error::shape(
                "ResnetBlock2D",
                format!("input {:?} must be [B, {cin}, H, W]", x.shape()),
            ));
        }
        // hidden_states = conv1(nonlinearity(norm1(input_tensor)))
        let h = self.norm1.forward(ctx, x, true)?;
        let mut h = self.conv1.forward(ctx, &h)?;
        // hidden_states = hidden_states + time_emb_proj(nonlinearity(temb))[:, :, None, None]
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_silu) {
            let t = proj.forward(ctx, t)?;
            let (b, c) = (t.shape()[0], t.shape()[1]);
            if b != x.shape()[0] {
                return Err(Error::shape(
                    "ResnetBlock2D",
                    format!(
                        "time embedding {:?} does not match the batch of {:?}",
                        t.shape(),
                        x.shape()
                    ),
                ));
            }
            h = elementwise::add(ctx, &h, &t.reshape(&[b, c, 1, 1])?)?;
        }
        let h = self.norm2.forward(ctx, &h, true)?;
        let h = self.conv2.forward(ctx, &h)?;
        let out = match &self.conv_shortcut {
            Some(sc) => elementwise::add(ctx, &sc.forward(ctx, x)?, &h)?,
            None => elementwise::add(ctx, x, &h)?,
        };
        if self.output_scale_factor != 1.0 {
            elementwise::scale(ctx, &out, 1.0 / self.output_scale_factor)
        } else {
            Ok(out)
        }
    }
}

/// `Downsample2D(channels, use_conv=True, padding)`: a stride-2 3x3 conv (`downsamplers.0.conv`).
/// With `padding=0` diffusers pads one zero row / column after the bottom / right edges first.
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    pub fn load(vb: &Loader, channels: usize, padding: usize) -> Result<Downsample2D> {
        let mut conv = Conv2d::load(&vb.pp("conv"), channels, channels, 3, 2)?;
        conv.padding = padding;
        if padding == 0 {
            conv.pad_end = 1;
        }
        Ok(Downsample2D { conv })
    }

    pub fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(ctx, x)
    }
}

/// `Upsample2D(channels, use_conv=True)`: nearest 2x, then a 3x3 conv (`upsamplers.0.conv`).
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn load(vb: &Loader, channels: usize) -> Result<Upsample2D> {
        Ok(Upsample2D {
            conv: Conv2d::load(&vb.pp("conv"), channels, channels, 3, 1)?,
        })
    }

    pub fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        let x = resample::upsample_nearest2x(ctx, x)?;
        self.conv.forward(ctx, &x)
    }
}
