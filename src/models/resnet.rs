//! diffusers' convolutional blocks (`models/resnet.py`, `downsampling.py`, `upsampling.py`):
//! `ResnetBlock2D` (the "default" and "scale_shift" time-embedding norms, optionally resampling
//! with `up=True` / `down=True`), `Downsample2D` and `Upsample2D` with their convolutions,
//! shared by the U-Nets and the VAEs.

use super::nn::{avg_pool2d_2x2, Conv2d, GroupNorm, Linear};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::elementwise::{self, BinaryOp, View};
use crate::kernels::{resample, Activation};
use crate::weights::Loader;

/// `ResnetBlock2D(time_embedding_norm=...)`: how the time embedding enters the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeEmbeddingNorm {
    /// `"default"`: `h = norm2(conv1(..) + time_emb_proj(temb))`.
    Default,
    /// `"scale_shift"`: `time_emb_proj` has 2 x out_channels rows,
    /// `scale, shift = chunk(temb, 2)`; `h = norm2(conv1(..)) * (1 + scale) + shift`.
    ScaleShift,
}

/// `ResnetBlock2D(up=True)` / `(down=True)` with the default kernel: after `norm1` + SiLU,
/// both the hidden states and the shortcut input go through `Upsample2D(use_conv=False)`
/// (nearest 2x) or `Downsample2D(use_conv=False)` (`avg_pool2d(2, 2)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResnetResample {
    None,
    Up,
    Down,
}

/// `ResnetBlock2D(in, out, temb_channels, groups, eps, output_scale_factor,
/// time_embedding_norm, up, down)` with SiLU, and the 1x1 `conv_shortcut` diffusers adds when
/// the channel count changes.
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub output_scale_factor: f32,
    pub time_embedding_norm: TimeEmbeddingNorm,
    pub resample: ResnetResample,
}

impl ResnetBlock2D {
    /// `temb_channels` None: no time embedding (the VAE's blocks). "default" time-embedding
    /// norm, no resampling.
    pub fn load(
        vb: &Loader,
        in_channels: usize,
        out_channels: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
    ) -> Result<ResnetBlock2D> {
        Self::load_with(
            vb,
            in_channels,
            out_channels,
            temb_channels,
            groups,
            eps,
            output_scale_factor,
            TimeEmbeddingNorm::Default,
            ResnetResample::None,
        )
    }

    /// [`Self::load`] with the time-embedding norm and the `up` / `down` option.
    #[allow(clippy::too_many_arguments)]
    pub fn load_with(
        vb: &Loader,
        in_channels: usize,
        out_channels: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
        time_embedding_norm: TimeEmbeddingNorm,
        resample: ResnetResample,
    ) -> Result<ResnetBlock2D> {
        let proj_rows = match time_embedding_norm {
            TimeEmbeddingNorm::Default => out_channels,
            TimeEmbeddingNorm::ScaleShift => 2 * out_channels,
        };
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&vb.pp("norm1"), groups, in_channels, eps)?,
            conv1: Conv2d::load(&vb.pp("conv1"), in_channels, out_channels, 3, 1)?,
            time_emb_proj: match temb_channels {
                Some(t) => Some(Linear::load(&vb.pp("time_emb_proj"), t, proj_rows, true)?),
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
            time_embedding_norm,
            resample,
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
        // hidden_states = nonlinearity(norm1(input_tensor))
        let h = self.norm1.forward(ctx, x, true)?;
        // up / down: both the hidden states and the shortcut input are resampled.
        let resampled;
        let (h, x) = match self.resample {
            ResnetResample::None => (h, x),
            ResnetResample::Up => {
                resampled = resample::upsample_nearest2x(ctx, x)?;
                (resample::upsample_nearest2x(ctx, &h)?, &resampled)
            }
            ResnetResample::Down => {
                resampled = avg_pool2d_2x2(ctx, x)?;
                (avg_pool2d_2x2(ctx, &h)?, &resampled)
            }
        };
        let h = self.conv1.forward(ctx, &h)?;
        let temb = self.time_emb(ctx, temb_silu, x.shape()[0])?;
        let h = self.norm2_with_temb(ctx, h, temb.as_ref())?;
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

    /// `temb = time_emb_proj(nonlinearity(temb))`, or None for a block without one.
    fn time_emb(
        &self,
        ctx: &Context,
        temb_silu: Option<&Tensor>,
        batch: usize,
    ) -> Result<Option<Tensor>> {
        match (&self.time_emb_proj, temb_silu) {
            (Some(proj), Some(t)) => {
                let t = proj.forward(ctx, t)?;
                if t.shape()[0] != batch {
                    return Err(Error::shape(
                        "ResnetBlock2D",
                        format!(
                            "time embedding {:?} does not match a batch of {batch}",
                            t.shape(),
                        ),
                    ));
                }
                Ok(Some(t))
            }
            (Some(_), None) => Err(Error::shape(
                "ResnetBlock2D",
                "the block has a time_emb_proj but no time embedding was given",
            )),
            _ => Ok(None),
        }
    }

    /// `norm2` + SiLU with the time embedding [B, rows] as the block's `time_embedding_norm`
    /// takes it.
    fn norm2_with_temb(&self, ctx: &Context, h: Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        match (self.time_embedding_norm, temb) {
            (TimeEmbeddingNorm::ScaleShift, Some(t)) => {
                // time_scale, time_shift = torch.chunk(temb, 2, dim=1)
                // hidden_states = norm2(hidden_states) * (1 + time_scale) + time_shift
                let (b, c) = (t.shape()[0], t.shape()[1] / 2);
                let one_plus = elementwise::unary(ctx, t, Activation::None, 1.0, 1.0)?;
                let half = |t, i| View {
                    tensor: t,
                    shape: vec![b, c, 1, 1],
                    strides: vec![2 * c, 1, 1, 1],
                    offset: i * c,
                };
                let n = self.norm2.forward(ctx, &h, false)?;
                let n = elementwise::binary(
                    ctx,
                    View::of(&n),
                    half(&one_plus, 0),
                    BinaryOp::Mul,
                    Activation::None,
                )?;
                let n = elementwise::binary(
                    ctx,
                    View::of(&n),
                    half(t, 1),
                    BinaryOp::Add,
                    Activation::None,
                )?;
                elementwise::activation(ctx, &n, Activation::Silu)
            }
            (_, t) => {
                // hidden_states = norm2(hidden_states + temb)
                let h = match t {
                    Some(t) => {
                        let (b, c) = (t.shape()[0], t.shape()[1]);
                        elementwise::add(ctx, &h, &t.reshape(&[b, c, 1, 1])?)?
                    }
                    None => h,
                };
                self.norm2.forward(ctx, &h, true)
            }
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
