//! diffusers `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`, `vae.py` `Encoder` /
//! `Decoder`, `unet_2d_blocks.py` `DownEncoderBlock2D` / `UpDecoderBlock2D` /
//! `UNetMidBlock2D`): the Stable Diffusion VAE. [`AutoencoderKL::encode`] returns the latent
//! distribution's mean and log-variance, [`AutoencoderKL::decode`] the image. The config's
//! `scaling_factor` is NOT applied here: callers multiply the mean by it after encoding and
//! divide latents by it before decoding, as diffusers' pipelines do.

use super::attention::Attention;
use super::nn::{Conv2d, GroupNorm};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::config::AutoencoderKLConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::conv2d::PackedConv2dWeight;
use crate::kernels::{elementwise, Activation};
use crate::weights::Loader;

const EPS: f64 = 1e-6;

/// `DownEncoderBlock2D`: resnets without time embedding, then a stride-2 conv whose input is
/// padded (0, 1, 0, 1) (`downsample_padding=0`).
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<Downsample2D>,
}

/// `UpDecoderBlock2D`: resnets, then nearest 2x + conv.
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample2D>,
}

/// `UNetMidBlock2D` without time embedding: resnet, group-norm self attention (one head of
/// the full channel width), resnet.
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    fn load(vb: &Loader, ch: usize, groups: usize, attention: bool) -> Result<UNetMidBlock2D> {
        Ok(UNetMidBlock2D {
            resnets: (0..2)
                .map(|i| {
                    ResnetBlock2D::load(&vb.pp("resnets").pp(i), ch, ch, None, groups, EPS, 1.0)
                })
                .collect::<Result<_>>()?,
            attentions: if attention {
                // attention_head_dim = in_channels: heads = 1.
                vec![Attention::load_spatial(
                    &vb.pp("attentions.0"),
                    ch,
                    1,
                    groups,
                    EPS,
                )?]
            } else {
                vec![]
            },
        })
    }

    fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(ctx, x, None)?;
        if let Some(a) = self.attentions.first() {
            x = a.forward_spatial(ctx, &x)?;
        }
        self.resnets[1].forward(ctx, &x, None)
    }
}

pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: UNetMidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2D,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

pub struct AutoencoderKL {
    pub config: AutoencoderKLConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// `quant_conv` split at load time into the rows that give the mean and the log-variance
    /// (`moments.chunk(2, dim=1)`), so neither needs a copy out of a strided view.
    pub quant_conv_mean: Option<Conv2d>,
    pub quant_conv_logvar: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
}

/// What the encoder returns, with every block's activation for the tests.
pub struct EncoderOutput {
    /// [B, latent_channels, H/f, W/f]: `latent_dist.mean` (unscaled).
    pub mean: Tensor,
    /// `latent_dist.logvar`, clamped to [-30, 20] like diffusers'.
    pub logvar: Tensor,
    pub conv_in: Tensor,
    pub down: Vec<Tensor>,
    pub mid: Tensor,
    /// `encoder.conv_out`'s output (the moments before `quant_conv`).
    pub conv_out: Tensor,
}

pub struct DecoderOutput {
    /// [B, out_channels, H*f, W*f].
    pub sample: Tensor,
    pub conv_in: Tensor,
    pub mid: Tensor,
    pub up: Vec<Tensor>,
}

/// Loads a conv's output channels [from, to) only.
fn conv_rows(vb: &Loader, cin: usize, cout: usize, from: usize, to: usize) -> Result<Conv2d> {
    let w = vb.get_host("weight", &[cout, cin, 1, 1]);
    let b = vb.get_host("bias", &[cout]);
    let dtype = vb.dtype();
    let ctx = vb.context();
    let weight = Tensor::from_f32(
        ctx,
        &w[from * cin..to * cin],
        &[to - from, cin, 1, 1],
        dtype,
    )?;
    Ok(Conv2d {
        weight: PackedConv2dWeight::new(ctx, &weight)?,
        bias: Some(Tensor::from_f32(ctx, &b[from..to], &[to - from], dtype)?),
        stride: 1,
        padding: 0,
        pad_end: 0,
    })
}

/// Loads `quant_conv` ([2 x latent, 2 x latent, 1, 1]) split into the rows that give the
/// mean and the log-variance.
pub fn load_quant_conv(vb: &Loader, lat: usize) -> Result<(Conv2d, Conv2d)> {
    Ok((
        conv_rows(vb, 2 * lat, 2 * lat, 0, lat)?,
        conv_rows(vb, 2 * lat, 2 * lat, lat, 2 * lat)?,
    ))
}

impl Encoder {
    /// diffusers' `vae.Encoder` under `ev` (`encoder.`), built from an AutoencoderKL config.
    pub fn load(ev: &Loader, c: &AutoencoderKLConfig) -> Result<Encoder> {
        let g = c.norm_num_groups;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let lat = c.latent_channels;
        let resnet = |vb: &Loader, cin, cout| ResnetBlock2D::load(vb, cin, cout, None, g, EPS, 1.0);
        Ok(Encoder {
            conv_in: Conv2d::load(&ev.pp("conv_in"), c.in_channels, ch[0], 3, 1)?,
            down_blocks: (0..n)
                .map(|i| {
                    let bv = ev.pp("down_blocks").pp(i);
                    let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                    Ok(DownEncoderBlock2D {
                        resnets: (0..c.layers_per_block)
                            .map(|j| {
                                resnet(
                                    &bv.pp("resnets").pp(j),
                                    if j == 0 { cin } else { ch[i] },
                                    ch[i],
                                )
                            })
                            .collect::<Result<_>>()?,
                        downsampler: if i + 1 < n {
                            Some(Downsample2D::load(&bv.pp("downsamplers.0"), ch[i], 0)?)
                        } else {
                            None
                        },
                    })
                })
                .collect::<Result<_>>()?,
            mid_block: UNetMidBlock2D::load(
                &ev.pp("mid_block"),
                ch[n - 1],
                g,
                c.mid_block_add_attention,
            )?,
            conv_norm_out: GroupNorm::load(&ev.pp("conv_norm_out"), g, ch[n - 1], EPS)?,
            conv_out: Conv2d::load(&ev.pp("conv_out"), ch[n - 1], 2 * lat, 3, 1)?,
        })
    }

    /// image -> the latent distribution: the encoder, then `quant_conv` split into its mean and
    /// log-variance rows (None: the moments' halves). `op` names the caller in errors.
    pub fn encode(
        &self,
        ctx: &Context,
        config: &AutoencoderKLConfig,
        quant_conv: Option<(&Conv2d, &Conv2d)>,
        image: &Tensor,
        op: &'static str,
    ) -> Result<EncoderOutput> {
        let c = config;
        let s = image.shape();
        let f = 1 << (c.block_out_channels.len() - 1);
        if s.len() != 4 || s[1] != c.in_channels {
            return Err(Error::shape(
                op,
                format!(
                    "image {s:?} must be [B, {}, H, W] (in_channels)",
                    c.in_channels
                ),
            ));
        }
        if s[2] % f != 0 || s[3] % f != 0 {
            return Err(Error::shape(
                op,
                format!(
                    "image {}x{} is not divisible by {f} (the VAE's scale factor)",
                    s[2], s[3]
                ),
            ));
        }
        let e = self;
        let mut x = e.conv_in.forward(ctx, image)?;
        let conv_in = x.clone();
        let mut down = Vec::new();
        for b in &e.down_blocks {
            for r in &b.resnets {
                x = r.forward(ctx, &x, None)?;
            }
            if let Some(d) = &b.downsampler {
                x = d.forward(ctx, &x)?;
            }
            down.push(x.clone());
        }
        let mid = e.mid_block.forward(ctx, &x)?;
        let h = e.conv_norm_out.forward(ctx, &mid, true)?;
        let conv_out = e.conv_out.forward(ctx, &h)?;
        let lat = c.latent_channels;
        let (mean, logvar) = match quant_conv {
            Some((m, l)) => (m.forward(ctx, &conv_out)?, l.forward(ctx, &conv_out)?),
            _ => {
                // No quant_conv: the moments' two halves, copied out of their strided views.
                let half = |i| -> Result<Tensor> {
                    let v = elementwise::View::of(&conv_out).chunk(2, 1, i)?;
                    let zero = Tensor::full(ctx, &[1], 0.0, conv_out.dtype())?;
                    elementwise::binary(
                        ctx,
                        v,
                        elementwise::View::of(&zero),
                        elementwise::BinaryOp::Add,
                        Activation::None,
                    )
                };
                (half(0)?, half(1)?)
            }
        };
        debug_assert_eq!(mean.shape()[1], lat);
        // logvar = torch.clamp(logvar, -30.0, 20.0) as y = x + relu(-x - 30), y - relu(y - 20):
        // exact wherever the clamp does not bite (no large offsets to round in f16).
        let a = elementwise::unary(ctx, &logvar, Activation::Relu, -1.0, -30.0)?;
        let y = elementwise::add(ctx, &logvar, &a)?;
        let b = elementwise::unary(ctx, &y, Activation::Relu, 1.0, -20.0)?;
        let logvar = elementwise::binary(
            ctx,
            elementwise::View::of(&y),
            elementwise::View::of(&b),
            elementwise::BinaryOp::Sub,
            Activation::None,
        )?;
        Ok(EncoderOutput {
            mean,
            logvar,
            conv_in,
            down,
            mid,
            conv_out,
        })
    }
}

impl AutoencoderKL {
    pub fn load(vb: &Loader, config: &AutoencoderKLConfig) -> Result<AutoencoderKL> {
        config.validate()?;
        let c = config;
        let g = c.norm_num_groups;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let lat = c.latent_channels;
        let resnet = |vb: &Loader, cin, cout| ResnetBlock2D::load(vb, cin, cout, None, g, EPS, 1.0);

        let encoder = Encoder::load(&vb.pp("encoder"), c)?;

        let dv = vb.pp("decoder");
        let rch: Vec<usize> = ch.iter().rev().copied().collect();
        let decoder = Decoder {
            conv_in: Conv2d::load(&dv.pp("conv_in"), lat, rch[0], 3, 1)?,
            mid_block: UNetMidBlock2D::load(
                &dv.pp("mid_block"),
                rch[0],
                g,
                c.mid_block_add_attention,
            )?,
            up_blocks: (0..n)
                .map(|i| {
                    let bv = dv.pp("up_blocks").pp(i);
                    let cin = if i == 0 { rch[0] } else { rch[i - 1] };
                    Ok(UpDecoderBlock2D {
                        resnets: (0..c.layers_per_block + 1)
                            .map(|j| {
                                resnet(
                                    &bv.pp("resnets").pp(j),
                                    if j == 0 { cin } else { rch[i] },
                                    rch[i],
                                )
                            })
                            .collect::<Result<_>>()?,
                        upsampler: if i + 1 < n {
                            Some(Upsample2D::load(&bv.pp("upsamplers.0"), rch[i])?)
                        } else {
                            None
                        },
                    })
                })
                .collect::<Result<_>>()?,
            conv_norm_out: GroupNorm::load(&dv.pp("conv_norm_out"), g, ch[0], EPS)?,
            conv_out: Conv2d::load(&dv.pp("conv_out"), ch[0], c.out_channels, 3, 1)?,
        };
        let (quant_conv_mean, quant_conv_logvar) = if c.use_quant_conv {
            let (m, l) = load_quant_conv(&vb.pp("quant_conv"), lat)?;
            (Some(m), Some(l))
        } else {
            (None, None)
        };
        let post_quant_conv = if c.use_post_quant_conv {
            Some(Conv2d::load(&vb.pp("post_quant_conv"), lat, lat, 1, 1)?)
        } else {
            None
        };
        vb.finish()?;
        Ok(AutoencoderKL {
            config: c.clone(),
            encoder,
            decoder,
            quant_conv_mean,
            quant_conv_logvar,
            post_quant_conv,
        })
    }

    /// The factor between image and latent sizes (2 per downsampler).
    pub fn scale_factor(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    /// image [B, in_channels, H, W] (values in [-1, 1]) -> the latent distribution.
    pub fn encode(&self, ctx: &Context, image: &Tensor) -> Result<EncoderOutput> {
        let quant = match (&self.quant_conv_mean, &self.quant_conv_logvar) {
            (Some(m), Some(l)) => Some((m, l)),
            _ => None,
        };
        self.encoder
            .encode(ctx, &self.config, quant, image, "AutoencoderKL::encode")
    }

    /// latent [B, latent_channels, h, w] (already divided by `scaling_factor`) -> image.
    pub fn decode(&self, ctx: &Context, latent: &Tensor) -> Result<DecoderOutput> {
        const OP: &str = "AutoencoderKL::decode";
        let c = &self.config;
        let s = latent.shape();
        if s.len() != 4 || s[1] != c.latent_channels {
            return Err(Error::shape(
                OP,
                format!(
                    "latent {s:?} must be [B, {}, h, w] (latent_channels)",
                    c.latent_channels
                ),
            ));
        }
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(ctx, latent)?,
            None => latent.clone(),
        };
        let d = &self.decoder;
        let conv_in = d.conv_in.forward(ctx, &z)?;
        let mid = d.mid_block.forward(ctx, &conv_in)?;
        let mut x = mid.clone();
        let mut up = Vec::new();
        for b in &d.up_blocks {
            for r in &b.resnets {
                x = r.forward(ctx, &x, None)?;
            }
            if let Some(u) = &b.upsampler {
                x = u.forward(ctx, &x)?;
            }
            up.push(x.clone());
        }
        let h = d.conv_norm_out.forward(ctx, &x, true)?;
        let sample = d.conv_out.forward(ctx, &h)?;
        Ok(DecoderOutput {
            sample,
            conv_in,
            mid,
            up,
        })
    }
}
