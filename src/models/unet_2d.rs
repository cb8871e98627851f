//! diffusers `UNet2DModel` (`models/unets/unet_2d.py`, blocks from `unet_2d_blocks.py`): the
//! unconditional U-Net of the consistency decoder. Time embedding ("positional" sinusoidal or
//! "learned" `nn.Embedding` over the train timesteps) + `TimestepEmbedding` MLP,
//! ResnetDownsampleBlock2D / ResnetUpsampleBlock2D (resnets whose resampler is itself a
//! `ResnetBlock2D(down=True / up=True)`), an attention-free UNetMidBlock2D, GroupNorm + SiLU,
//! conv_out. Configs it cannot run are refused by [`UNet2DModelConfig::validate`].

use super::nn::{Conv2d, GroupNorm, Linear};
use super::resnet::{ResnetBlock2D, ResnetResample, TimeEmbeddingNorm};
use super::unet_2d_condition::{batch_timesteps, TimestepEmbeddingMlp};
use crate::config::UNet2DModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::embedding::{gather_rows, timestep_embedding, TimestepEmbedding};
use crate::kernels::{concat, elementwise, Activation};
use crate::weights::Loader;

/// `time_proj`: how a timestep becomes a `block_out_channels[0]`-wide vector.
pub enum TimeProj {
    /// `Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)`.
    Positional(TimestepEmbedding),
    /// `nn.Embedding(num_train_timesteps, block_out_channels[0])`: `time_proj.weight`.
    Learned(Tensor),
}

/// `ResnetDownsampleBlock2D`: resnets, then (except in the last block) a
/// `ResnetBlock2D(down=True)` as `downsamplers.0`.
pub struct ResnetDownsampleBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<ResnetBlock2D>,
}

/// `UNetMidBlock2D(add_attention=False)`: two resnets.
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
}

/// `ResnetUpsampleBlock2D`: resnets over `cat([hidden_states, skip])`, then (except in the last
/// block) a `ResnetBlock2D(up=True)` as `upsamplers.0`.
pub struct ResnetUpsampleBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<ResnetBlock2D>,
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
        let eps = c.norm_eps;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let ch0 = ch[0];
        let temb = c.time_embed_dim();
        let norm = if c.resnet_time_scale_shift == "scale_shift" {
            TimeEmbeddingNorm::ScaleShift
        } else {
            TimeEmbeddingNorm::Default
        };
        let resnet = |vb: &Loader, cin: usize, cout: usize, scale: f64, rs: ResnetResample| {
            ResnetBlock2D::load_with(vb, cin, cout, Some(temb), groups, eps, scale, norm, rs)
        };

        // 1. time
        let time_proj = match c.time_embedding_type.as_str() {
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
        };
        let te = vb.pp("time_embedding");
        let time_embedding = TimestepEmbeddingMlp {
            linear_1: Linear::load(&te.pp("linear_1"), ch0, temb, true)?,
            linear_2: Linear::load(&te.pp("linear_2"), temb, temb, true)?,
        };
        let conv_in = Conv2d::load(&vb.pp("conv_in"), c.in_channels, ch0, 3, 1)?;

        // 2. down: block i maps block_out_channels[i - 1] -> [i]
        let mut down_blocks = Vec::new();
        for i in 0..n {
            let bv = vb.pp("down_blocks").pp(i);
            let (cin, cout) = (if i == 0 { ch0 } else { ch[i - 1] }, ch[i]);
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    let rin = if j == 0 { cin } else { cout };
                    resnet(
                        &bv.pp("resnets").pp(j),
                        rin,
                        cout,
                        1.0,
                        ResnetResample::None,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler = if i + 1 < n {
                Some(resnet(
                    &bv.pp("downsamplers.0"),
                    cout,
                    cout,
                    1.0,
                    ResnetResample::Down,
                )?)
            } else {
                None
            };
            down_blocks.push(ResnetDownsampleBlock2D {
                resnets,
                downsampler,
            });
        }

        // 3. mid
        let mid_block = match c.mid_block_type {
            Some(_) => {
                let mv = vb.pp("mid_block").pp("resnets");
                let last = ch[n - 1];
                let resnets = (0..2)
                    .map(|j| {
                        resnet(
                            &mv.pp(j),
                            last,
                            last,
                            c.mid_block_scale_factor,
                            ResnetResample::None,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(UNetMidBlock2D { resnets })
            }
            None => None,
        };

        // 4. up: layers_per_block + 1 resnets; the last one's skip comes from the block below
        let rch: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::new();
        for i in 0..n {
            let uv = vb.pp("up_blocks").pp(i);
            let prev = if i == 0 { rch[0] } else { rch[i - 1] };
            let cout = rch[i];
            let cin = rch[(i + 1).min(n - 1)];
            let layers = c.layers_per_block + 1;
            let resnets = (0..layers)
                .map(|j| {
                    // res_skip_channels = in_channels if (i == num_layers - 1) else out_channels
                    let skip = if j + 1 == layers { cin } else { cout };
                    let rin = if j == 0 { prev } else { cout };
                    resnet(
                        &uv.pp("resnets").pp(j),
                        rin + skip,
                        cout,
                        1.0,
                        ResnetResample::None,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i + 1 < n {
                Some(resnet(
                    &uv.pp("upsamplers.0"),
                    cout,
                    cout,
                    1.0,
                    ResnetResample::Up,
                )?)
            } else {
                None
            };
            up_blocks.push(ResnetUpsampleBlock2D { resnets, upsampler });
        }

        // 5. out
        let conv_norm_out = GroupNorm::load(&vb.pp("conv_norm_out"), groups, ch0, eps)?;
        let conv_out = Conv2d::load(&vb.pp("conv_out"), ch0, c.out_channels, 3, 1)?;
        Ok(UNet2DModel {
            config: c.clone(),
            time_proj,
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            dtype: vb.dtype(),
        })
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
        let c = &self.config;
        let s = sample.shape();
        if s.len() != 4 || s[1] != c.in_channels {
            return Err(Error::shape(
                OP,
                format!(
                    "sample {s:?} must be [B, {}, H, W] (in_channels)",
                    c.in_channels
                ),
            ));
        }
        let (b, h, w) = (s[0], s[2], s[3]);
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
        let t = batch_timesteps(OP, timesteps, b)?;

        // 0. center input if necessary
        let centered;
        let sample = if c.center_input_sample {
            centered = elementwise::unary(ctx, sample, Activation::None, 2.0, -1.0)?;
            &centered
        } else {
            sample
        };

        // 1. time: t_emb = time_proj(timesteps); emb = time_embedding(t_emb)
        let t_emb = match &self.time_proj {
            TimeProj::Positional(cfg) => {
                let t = Tensor::from_f32(ctx, &t, &[b], DType::F32)?;
                timestep_embedding(ctx, &t, cfg, self.dtype)?
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
                                OP,
                                format!(
                                    "timestep {v} is not a whole number in [0, {rows}) \
                                     (the learned time embedding has num_train_timesteps = \
                                     {rows} rows)"
                                ),
                            ))
                        }
                    })
                    .collect::<Result<Vec<u32>>>()?;
                gather_rows(ctx, table, &ids)?
            }
        };
        let te = &self.time_embedding;
        let emb = te.linear_2.forward(
            ctx,
            &te.linear_1.forward_act(ctx, &t_emb, Activation::Silu)?,
        )?;
        // Every resnet applies nonlinearity(temb) before its time_emb_proj: do it once.
        let temb = elementwise::activation(ctx, &emb, Activation::Silu)?;

        // 2. pre-process
        let mut x = self.conv_in.forward(ctx, sample)?;
        let conv_in = x.clone();

        // 3. down
        let mut res_samples = vec![x.clone()];
        let mut down = Vec::new();
        for blk in &self.down_blocks {
            for r in &blk.resnets {
                x = r.forward(ctx, &x, Some(&temb))?;
                res_samples.push(x.clone());
            }
            if let Some(d) = &blk.downsampler {
                x = d.forward(ctx, &x, Some(&temb))?;
                res_samples.push(x.clone());
            }
            down.push(x.clone());
        }

        // 4. mid
        let mid = match &self.mid_block {
            Some(mb) => {
                for r in &mb.resnets {
                    x = r.forward(ctx, &x, Some(&temb))?;
                }
                Some(x.clone())
            }
            None => None,
        };

        // 5. up: each resnet takes torch.cat([hidden_states, res_hidden_states], dim=1) with
        // the skips popped from the end.
        let mut up = Vec::new();
        for blk in &self.up_blocks {
            for r in &blk.resnets {
                let skip = res_samples.pop().ok_or_else(|| {
                    Error::shape(
                        OP,
                        "the up blocks consume more skips than the down blocks make",
                    )
                })?;
                x = concat::concat(ctx, &[&x, &skip], 1)?;
                x = r.forward(ctx, &x, Some(&temb))?;
            }
            if let Some(u) = &blk.upsampler {
                x = u.forward(ctx, &x, Some(&temb))?;
            }
            up.push(x.clone());
        }

        // 6. post-process
        let x = self.conv_norm_out.forward(ctx, &x, true)?;
        let out = self.conv_out.forward(ctx, &x)?;
        Ok(UNet2DOutput {
            sample: out,
            emb,
            conv_in,
            down,
            mid,
            up,
        })
    }
}
