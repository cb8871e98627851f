//! diffusers `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`, `vae.py` `Encoder` /
//! `Decoder`, blocks from [`super::unet_2d_blocks`]): the Stable Diffusion VAE.
//! [`AutoencoderKL::encode`] returns the latent distribution's mean and log-variance,
//! [`AutoencoderKL::decode`] the image. The config's `scaling_factor` is NOT applied here:
//! callers multiply the mean by it after encoding and divide latents by it before decoding, as
//! diffusers' pipelines do. Large images are decoded and encoded in tiles ([`tiling`]).

pub mod tiling;

use super::nn::{Conv2d, GroupNorm};
use super::unet_2d_blocks::{DownEncoderBlock2D, ResnetOptions, UNetMidBlock2D, UpDecoderBlock2D};
use crate::config::AutoencoderKLConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::conv2d::PackedConv2dWeight;
use crate::kernels::elementwise::{self, View};
use crate::kernels::Activation;
use crate::models::check_nchw;
use crate::weights::Loader;

pub use tiling::{TileGrid, TileOptions, TilePlan};

const EPS: f64 = 1e-6;

/// The resnets of every VAE block: no time embedding, `norm_num_groups`, eps 1e-6.
fn resnet_options(c: &AutoencoderKLConfig) -> ResnetOptions {
    ResnetOptions::new(None, c.norm_num_groups, EPS)
}

/// The mid block of the encoder and the decoder: `UNetMidBlock2D(attention_head_dim =
/// in_channels)` (one head) when `mid_block_add_attention`.
fn mid_block(vb: &Loader, c: &AutoencoderKLConfig, ch: usize) -> Result<UNetMidBlock2D> {
    let attention_head_dim = c.mid_block_add_attention.then_some(ch);
    UNetMidBlock2D::load(vb, ch, &resnet_options(c), attention_head_dim)
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

/// The latent distribution of an encode (`DiagonalGaussianDistribution`), without the
/// per-block activations of [`EncoderOutput`].
pub struct LatentDistribution {
    /// [B, latent_channels, H/f, W/f]: `latent_dist.mean` (unscaled).
    pub mean: Tensor,
    /// `latent_dist.logvar`, clamped to [-30, 20].
    pub logvar: Tensor,
}

impl LatentDistribution {
    /// `DiagonalGaussianDistribution.sample`: `mean + exp(logvar / 2) * eps`, with `eps` the
    /// caller's standard normal noise (hoa's seeded generator, not torch's).
    pub fn sample(&self, ctx: &Context, eps: &Tensor) -> Result<Tensor> {
        let std = elementwise::unary(ctx, &self.logvar, Activation::Exp, 0.5, 0.0)?;
        elementwise::add(ctx, &self.mean, &elementwise::mul(ctx, &std, eps)?)
    }
}

pub struct DecoderOutput {
    /// [B, out_channels, H*f, W*f].
    pub sample: Tensor,
    pub conv_in: Tensor,
    pub mid: Tensor,
    pub up: Vec<Tensor>,
}

/// `DiagonalGaussianDistribution`'s `torch.clamp(logvar, -30.0, 20.0)`, as
/// y = x + relu(-x - 30), y - relu(y - 20): exact wherever the clamp does not bite (no large
/// offsets to round in f16).
pub fn clamp_logvar(ctx: &Context, logvar: &Tensor) -> Result<Tensor> {
    let a = elementwise::unary(ctx, logvar, Activation::Relu, -1.0, -30.0)?;
    let y = elementwise::add(ctx, logvar, &a)?;
    let b = elementwise::unary(ctx, &y, Activation::Relu, 1.0, -20.0)?;
    elementwise::binary(
        ctx,
        View::of(&y),
        View::of(&b),
        elementwise::BinaryOp::Sub,
        Activation::None,
    )
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
        let ch = &c.block_out_channels;
        let n = ch.len();
        let resnet = resnet_options(c);
        let down_blocks = (0..n)
            .map(|i| {
                let chans = (if i == 0 { ch[0] } else { ch[i - 1] }, ch[i]);
                let bv = ev.pp("down_blocks").pp(i);
                DownEncoderBlock2D::load(&bv, &resnet, c.layers_per_block, chans, i + 1 < n)
            })
            .collect::<Result<_>>()?;
        Ok(Encoder {
            conv_in: Conv2d::load(&ev.pp("conv_in"), c.in_channels, ch[0], 3, 1)?,
            down_blocks,
            mid_block: mid_block(&ev.pp("mid_block"), c, ch[n - 1])?,
            conv_norm_out: GroupNorm::load(
                &ev.pp("conv_norm_out"),
                c.norm_num_groups,
                ch[n - 1],
                EPS,
            )?,
            conv_out: Conv2d::load(&ev.pp("conv_out"), ch[n - 1], 2 * c.latent_channels, 3, 1)?,
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
        self.encode_moments(ctx, config, quant_conv, image, op, true)
    }

    /// [`Encoder::encode`]; `clamp: false` leaves the log-variance unclamped (the tiled encode
    /// blends the raw moments and clamps once, as `DiagonalGaussianDistribution` does).
    fn encode_moments(
        &self,
        ctx: &Context,
        config: &AutoencoderKLConfig,
        quant_conv: Option<(&Conv2d, &Conv2d)>,
        image: &Tensor,
        op: &'static str,
        clamp: bool,
    ) -> Result<EncoderOutput> {
        check_image(config, image, op)?;
        let mut x = self.conv_in.forward(ctx, image)?;
        let conv_in = x.clone();
        let mut down = Vec::new();
        for block in &self.down_blocks {
            x = block.forward(ctx, x)?;
            down.push(x.clone());
        }
        let mid = self.mid_block.forward(ctx, x, None)?;
        let h = self.conv_norm_out.forward(ctx, &mid, true)?;
        let conv_out = self.conv_out.forward(ctx, &h)?;
        let (mean, logvar) = match quant_conv {
            Some((m, l)) => (m.forward(ctx, &conv_out)?, l.forward(ctx, &conv_out)?),
            // No quant_conv: the moments' two halves, copied out of their strided views.
            None => {
                let half = |i| elementwise::contiguous(ctx, View::of(&conv_out).chunk(2, 1, i)?);
                (half(0)?, half(1)?)
            }
        };
        debug_assert_eq!(mean.shape()[1], config.latent_channels);
        let logvar = if clamp {
            clamp_logvar(ctx, &logvar)?
        } else {
            logvar
        };
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

/// An encoder input must be [B, in_channels, H, W] with H and W divisible by the scale factor.
fn check_image(c: &AutoencoderKLConfig, image: &Tensor, op: &'static str) -> Result<()> {
    let s = image.shape();
    let f = 1 << (c.block_out_channels.len() - 1);
    check_nchw(op, "image", s, "H, W", (c.in_channels, "in_channels"))?;
    if s[2] % f != 0 || s[3] % f != 0 {
        return Err(Error::shape(
            op,
            format!(
                "image {}x{} is not divisible by {f} (the VAE's scale factor)",
                s[2], s[3]
            ),
        ));
    }
    Ok(())
}

impl Decoder {
    /// diffusers' `vae.Decoder` under `dv` (`decoder.`), built from an AutoencoderKL config.
    pub fn load(dv: &Loader, c: &AutoencoderKLConfig) -> Result<Decoder> {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let rch: Vec<usize> = ch.iter().rev().copied().collect();
        let resnet = resnet_options(c);
        let up_blocks = (0..n)
            .map(|i| {
                let chans = (if i == 0 { rch[0] } else { rch[i - 1] }, rch[i]);
                let bv = dv.pp("up_blocks").pp(i);
                UpDecoderBlock2D::load(&bv, &resnet, c.layers_per_block + 1, chans, i + 1 < n)
            })
            .collect::<Result<_>>()?;
        Ok(Decoder {
            conv_in: Conv2d::load(&dv.pp("conv_in"), c.latent_channels, rch[0], 3, 1)?,
            mid_block: mid_block(&dv.pp("mid_block"), c, rch[0])?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&dv.pp("conv_norm_out"), c.norm_num_groups, ch[0], EPS)?,
            conv_out: Conv2d::load(&dv.pp("conv_out"), ch[0], c.out_channels, 3, 1)?,
        })
    }
}

impl AutoencoderKL {
    pub fn load(vb: &Loader, config: &AutoencoderKLConfig) -> Result<AutoencoderKL> {
        config.validate()?;
        let c = config;
        let lat = c.latent_channels;
        let encoder = Encoder::load(&vb.pp("encoder"), c)?;
        let decoder = Decoder::load(&vb.pp("decoder"), c)?;
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

    /// latent [B, latent_channels, h, w] (already divided by `scaling_factor`) -> image, with
    /// every block's activation (for the tests; [`AutoencoderKL::decode_auto`] keeps none).
    pub fn decode(&self, ctx: &Context, latent: &Tensor) -> Result<DecoderOutput> {
        self.check_latent(latent, "AutoencoderKL::decode")?;
        let (sample, acts) = self.run_decoder(ctx, latent, true)?;
        let (conv_in, mid, up) = acts.expect("kept");
        Ok(DecoderOutput {
            sample,
            conv_in,
            mid,
            up,
        })
    }

    fn check_latent(&self, latent: &Tensor, op: &'static str) -> Result<()> {
        let c = &self.config;
        let s = latent.shape();
        check_nchw(
            op,
            "latent",
            s,
            "h, w",
            (c.latent_channels, "latent_channels"),
        )?;
        Ok(())
    }

    /// `post_quant_conv` then the decoder; `keep` returns (conv_in, mid, up blocks) too,
    /// otherwise each activation is dropped (back to the pool) as soon as the next exists.
    #[allow(clippy::type_complexity)]
    fn run_decoder(
        &self,
        ctx: &Context,
        latent: &Tensor,
        keep: bool,
    ) -> Result<(Tensor, Option<(Tensor, Tensor, Vec<Tensor>)>)> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(ctx, latent)?,
            None => latent.clone(),
        };
        let d = &self.decoder;
        let conv_in = d.conv_in.forward(ctx, &z)?;
        drop(z);
        let kept_conv_in = keep.then(|| conv_in.clone());
        let mid = d.mid_block.forward(ctx, conv_in, None)?;
        let conv_in = kept_conv_in;
        let mut x = mid.clone();
        let mid = keep.then_some(mid);
        let mut up = Vec::new();
        for block in &d.up_blocks {
            x = block.forward(ctx, x)?;
            if keep {
                up.push(x.clone());
            }
        }
        let h = d.conv_norm_out.forward(ctx, &x, true)?;
        drop(x);
        let sample = d.conv_out.forward(ctx, &h)?;
        Ok((sample, conv_in.zip(mid).map(|(c, m)| (c, m, up))))
    }
}
