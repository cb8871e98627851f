//! diffusers `UNet2DModel` (`models/unets/unet_2d.py`, blocks from `unet_2d_blocks.py`): the
//! unconditional U-Net of the consistency decoder. Time embedding ("positional" sinusoidal or
//! "learned" `nn.Embedding` over the train timesteps) + `TimestepEmbedding` MLP,
//! ResnetDownsampleBlock2D / ResnetUpsampleBlock2D (resnets whose resampler is itself a
//! `ResnetBlock2D(down=True / up=True)`), an attention-free UNetMidBlock2D, GroupNorm + SiLU,
//! conv_out. Configs it cannot run are refused by [`UNet2DModelConfig::validate`].

use super::nn::{Conv2d, GroupNorm};
use super::resnet::TimeEmbeddingNorm;
use super::unet_2d_blocks::{
    ResnetDownsampleBlock2D, ResnetOptions, ResnetUpsampleBlock2D, UNetMidBlock2D,
};
use super::unet_2d_condition::{batch_timesteps, center_input, Blocks, TimestepEmbeddingMlp};
use crate::config::UNet2DModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::embedding::{gather_rows, timestep_embedding, TimestepEmbedding};
use crate::kernels::{elementwise, Activation};
use crate::models::check_nchw;
use crate::weights::Loader;

/// `time_proj`: how a timestep becomes a `block_out_channels[0]`-wide vector.
pub enum TimeProj {
    /// `Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)`.
    Positional(TimestepEmbedding),
    /// `nn.Embedding(num_train_timesteps, block_out_channels[0])`: `time_proj.weight`.
    Learned(Tensor),
}

impl TimeProj {
    /// "learned" or (otherwise) "positional", as the config's `time_embedding_type` says.
    fn load(vb: &Loader, c: &UNet2DModelConfig) -> Result<TimeProj> {
        let ch0 = c.block_out_channels[0];
        Ok(match c.time_embedding_type.as_str() {
            "learned" => {
                let rows = c.num_train_timesteps.unwrap_or(0);
                TimeProj::Learned(vb.pp("time_proj").get("weight", &[rows, ch0])?)
            }
            _ => TimeProj::Positional(TimestepEmbedding {
                dim: ch0,
                flip_sin_to_cos: c.flip_sin_to_cos,
                downscale_freq_shift: c.freq_shift as f32,
                scale: 1.0,
                max_period: 10000.0,
            }),
        })
    }

    /// `t_emb = time_proj(timesteps)` [B, block_out_channels[0]].
    fn forward(&self, ctx: &Context, t: &[f32], dtype: DType, op: &'static str) -> Result<Tensor> {
        match self {
            TimeProj::Positional(cfg) => {
                let t = Tensor::from_f32(ctx, t, &[t.len()], DType::F32)?;
                timestep_embedding(ctx, &t, cfg, dtype)
            }
            TimeProj::Learned(table) => {
                let rows = table.shape()[0];
                let ids = t
                    .iter()
                    .map(|&v| {
                        if v >= 0.0 && v.fract() == 0.0 && (v as usize) < rows {
                            Ok(v as u32)
                        } else {
                            Err(Error::shape(
                                op,
                                format!(
                                    "timestep {v} is not a whole number in [0, {rows}) \
                                     (the learned time embedding has num_train_timesteps = \
                                     {rows} rows)"
                                ),
                            ))
                        }
                    })
                    .collect::<Result<Vec<u32>>>()?;
                gather_rows(ctx, table, &ids)
            }
        }
    }
}

pub struct UNet2DModel {
    pub config: UNet2DModelConfig,
    pub time_proj: TimeProj,
    pub time_embedding: TimestepEmbeddingMlp,
    pub conv_in: Conv2d,
    pub down_blocks: Vec<ResnetDownsampleBlock2D>,
    pub mid_block: Option<UNetMidBlock2D>,
    pub up_blocks: Vec<ResnetUpsampleBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    dtype: DType,
}

/// The same output and block-by-block activations as the conditional U-Net's.
pub type UNet2DOutput = super::unet_2d_condition::UNetOutput;

impl UNet2DModel {
    /// Loads the U-Net and checks the checkpoint holds exactly its tensors.
    pub fn load(vb: &Loader, config: &UNet2DModelConfig) -> Result<UNet2DModel> {
        let m = Self::load_part(vb, config)?;
        vb.finish()?;
        Ok(m)
    }

    /// Loads the U-Net under `vb`'s prefix without [`Loader::finish`], for models that hold
    /// one among other modules (the consistency decoder's `decoder_unet`).
    pub fn load_part(vb: &Loader, config: &UNet2DModelConfig) -> Result<UNet2DModel> {
        config.validate()?;
        let c = config;
        let groups = c.norm_num_groups.unwrap_or(32);
        let ch0 = c.block_out_channels[0];
        let temb = c.time_embed_dim();
        let mut resnet = ResnetOptions::new(Some(temb), groups, c.norm_eps);
        if c.resnet_time_scale_shift == "scale_shift" {
            resnet.time_embedding_norm = TimeEmbeddingNorm::ScaleShift;
        }
        let (down_blocks, up_blocks) = Self::load_blocks(vb, c, &resnet)?;
        let mid = ResnetOptions {
            output_scale_factor: c.mid_block_scale_factor,
            ..resnet
        };
        let last = *c
            .block_out_channels
            .last()
            .ok_or_else(|| Error::config("unet/config.json", "block_out_channels", "is empty"))?;
        let mid_block = (c.mid_block_type.is_some())
            .then(|| UNetMidBlock2D::load(&vb.pp("mid_block"), last, &mid, None))
            .transpose()?;
        Ok(UNet2DModel {
            config: c.clone(),
            time_proj: TimeProj::load(vb, c)?,
            time_embedding: TimestepEmbeddingMlp::load(&vb.pp("time_embedding"), ch0, temb)?,
            conv_in: Conv2d::load(&vb.pp("conv_in"), c.in_channels, ch0, 3, 1)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), groups, ch0, c.norm_eps)?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), ch0, c.out_channels, 3, 1)?,
            dtype: vb.dtype(),
        })
    }

    /// Down block i maps `block_out_channels[i - 1] -> [i]`; up block i mirrors it with
    /// `layers_per_block + 1` resnets, the last one's skip coming from the block below.
    #[allow(clippy::type_complexity)]
    fn load_blocks(
        vb: &Loader,
        c: &UNet2DModelConfig,
        resnet: &ResnetOptions,
    ) -> Result<(Vec<ResnetDownsampleBlock2D>, Vec<ResnetUpsampleBlock2D>)> {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let down = (0..n)
            .map(|i| {
                let chans = (if i == 0 { ch[0] } else { ch[i - 1] }, ch[i]);
                let bv = vb.pp("down_blocks").pp(i);
                ResnetDownsampleBlock2D::load(&bv, resnet, c.layers_per_block, chans, i + 1 < n)
            })
            .collect::<Result<Vec<_>>>()?;
        let rch: Vec<usize> = ch.iter().rev().copied().collect();
        let up = (0..n)
            .map(|i| {
                let prev = if i == 0 { rch[0] } else { rch[i - 1] };
                let chans = (prev, rch[(i + 1).min(n - 1)], rch[i]);
                let uv = vb.pp("up_blocks").pp(i);
                let layers = c.layers_per_block + 1;
                ResnetUpsampleBlock2D::load(&uv, resnet, layers, chans, i + 1 < n)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((down, up))
    }

    /// The factor the sample's height and width must be divisible by (2 per downsampler).
    pub fn size_multiple(&self) -> usize {
        1 << self
            .down_blocks
            .iter()
            .filter(|b| b.downsampler.is_some())
            .count()
    }

    /// sample [B, in_channels, H, W]; `timesteps` one value for the batch or one per sample
    /// (whole numbers below `num_train_timesteps` for the "learned" embedding).
    pub fn forward(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
    ) -> Result<UNet2DOutput> {
        const OP: &str = "UNet2DModel";
        self.check_sample(sample)?;
        let t = batch_timesteps(OP, timesteps, sample.shape()[0])?;

        // 0. center input if necessary
        let centered = center_input(ctx, sample, self.config.center_input_sample)?;
        let sample = centered.as_ref().unwrap_or(sample);

        // 1. time: t_emb = time_proj(timesteps); emb = time_embedding(t_emb)
        let t_emb = self.time_proj.forward(ctx, &t, self.dtype, OP)?;
        let emb = self.time_embedding.forward(ctx, &t_emb)?;
        // Every resnet applies nonlinearity(temb) before its time_emb_proj: do it once.
        let temb = elementwise::activation(ctx, &emb, Activation::Silu)?;
        let temb = Some(&temb);

        let blocks = Blocks {
            down: &self.down_blocks,
            run_down: |b: &ResnetDownsampleBlock2D, x| b.forward(ctx, x, temb),
            mid: self.mid_block.as_ref(),
            run_mid: |b: &UNetMidBlock2D, x| b.forward(ctx, x, temb),
            up: &self.up_blocks,
            run_up: |b: &ResnetUpsampleBlock2D, x, res| b.forward(ctx, x, res, temb),
            skips: |b: &ResnetUpsampleBlock2D| b.resnets.len(),
        };
        let ends = (&self.conv_in, &self.conv_norm_out, &self.conv_out);
        UNet2DOutput::walk(ctx, OP, ends, (sample, emb), blocks)
    }

    fn check_sample(&self, sample: &Tensor) -> Result<()> {
        const OP: &str = "UNet2DModel";
        let c = &self.config;
        let s = sample.shape();
        check_nchw(OP, "sample", s, "H, W", (c.in_channels, "in_channels"))?;
        let (h, w) = (s[2], s[3]);
        let m = self.size_multiple();
        if h % m != 0 || w % m != 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "sample {h}x{w} is not divisible by {m} (the model downsamples {} times)",
                    m.trailing_zeros()
                ),
            ));
        }
        if sample.dtype() != self.dtype {
            return Err(Error::shape(
                OP,
                format!("sample must be {} like the weights", self.dtype.name()),
            ));
        }
        Ok(())
    }
}
