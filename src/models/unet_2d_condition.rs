//! diffusers `UNet2DConditionModel` (`models/unets/unet_2d_condition.py`, blocks from
//! `unet_2d_blocks.py`) for the Stable Diffusion 1.x / 2.x family: timestep embedding,
//! CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D / UpBlock2D
//! with skip concatenation, GroupNorm + SiLU, conv_out. Configs it cannot run are refused by
//! [`UNet2DConditionModelConfig::validate`].

use super::attention::Transformer2DModel;
use super::nn::{Conv2d, GroupNorm, Linear};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::config::{UNet2DConditionModelConfig, UNetBlockSpec};
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::embedding::{timestep_embedding, TimestepEmbedding};
use crate::kernels::{concat, elementwise, Activation};
use crate::weights::Loader;

/// diffusers `TimestepEmbedding`: `linear_1`, SiLU, `linear_2`.
pub struct TimestepEmbeddingMlp {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

/// CrossAttnDownBlock2D (with `attentions`) or DownBlock2D (without).
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Downsample2D>,
}

/// UNetMidBlock2DCrossAttn: resnets[0], then (attentions[i], resnets[i + 1]).
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

/// CrossAttnUpBlock2D (with `attentions`) or UpBlock2D (without).
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Upsample2D>,
}

pub struct UNet2DConditionModel {
    pub config: UNet2DConditionModelConfig,
    pub time_embedding: TimestepEmbeddingMlp,
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<MidBlock>,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    dtype: DType,
}

/// The noise prediction and the activations the tests compare block by block.
pub struct UNetOutput {
    /// [B, out_channels, H, W].
    pub sample: Tensor,
    /// The time embedding after `time_embedding` [B, time_embed_dim].
    pub emb: Tensor,
    /// After `conv_in`.
    pub conv_in: Tensor,
    /// Each down block's hidden states (after its downsampler).
    pub down: Vec<Tensor>,
    pub mid: Option<Tensor>,
    /// Each up block's output (after its upsampler).
    pub up: Vec<Tensor>,
}

#[allow(clippy::too_many_arguments)]
fn load_transformers(
    vb: &Loader,
    c: &UNet2DConditionModelConfig,
    b: &UNetBlockSpec,
    channels: usize,
    count: usize,
    groups: usize,
) -> Result<Vec<Transformer2DModel>> {
    (0..count)
        .map(|i| {
            Transformer2DModel::load(
                &vb.pp("attentions").pp(i),
                b.heads,
                channels / b.heads,
                channels,
                b.transformer_layers,
                b.cross_attention_dim,
                groups,
                c.use_linear_projection,
            )
        })
        .collect()
}

impl UNet2DConditionModel {
    pub fn load(vb: &Loader, config: &UNet2DConditionModelConfig) -> Result<UNet2DConditionModel> {
        config.validate()?;
        let c = config;
        let groups = c.norm_num_groups.unwrap_or(32);
        let eps = c.norm_eps;
        let ch0 = c.block_out_channels[0];
        let temb = c.time_embed_dim();
        let te = vb.pp("time_embedding");
        let time_embedding = TimestepEmbeddingMlp {
            linear_1: Linear::load(&te.pp("linear_1"), ch0, temb, true)?,
            linear_2: Linear::load(&te.pp("linear_2"), temb, temb, true)?,
        };
        let conv_in = Conv2d::load(&vb.pp("conv_in"), c.in_channels, ch0, c.conv_in_kernel, 1)?;
        let resnet = |vb: &Loader, cin: usize, cout: usize, scale: f64| {
            ResnetBlock2D::load(vb, cin, cout, Some(temb), groups, eps, scale)
        };

        // 1. down blocks
        let mut down_blocks = Vec::new();
        for (i, b) in c.down_blocks()?.iter().enumerate() {
            let bv = vb.pp("down_blocks").pp(i);
            let resnets = (0..b.layers)
                .map(|j| {
                    let cin = if j == 0 {
                        b.in_channels
                    } else {
                        b.out_channels
                    };
                    resnet(&bv.pp("resnets").pp(j), cin, b.out_channels, 1.0)
                })
                .collect::<Result<Vec<_>>>()?;
            let n_attn = if b.cross_attention { b.layers } else { 0 };
            down_blocks.push(DownBlock {
                resnets,
                attentions: load_transformers(&bv, c, b, b.out_channels, n_attn, groups)?,
                downsampler: if b.resample {
                    Some(Downsample2D::load(
                        &bv.pp("downsamplers.0"),
                        b.out_channels,
                        c.downsample_padding,
                    )?)
                } else {
                    None
                },
            });
        }

        // 2. mid block
        let mid_block = match c.mid_block_type {
            Some(_) => {
                let mv = vb.pp("mid_block");
                let last = c
                    .down_blocks()?
                    .pop()
                    .expect("validated: at least one block");
                let ch = last.out_channels;
                let resnets = (0..2)
                    .map(|j| resnet(&mv.pp("resnets").pp(j), ch, ch, c.mid_block_scale_factor))
                    .collect::<Result<Vec<_>>>()?;
                Some(MidBlock {
                    resnets,
                    attentions: load_transformers(&mv, c, &last, ch, 1, groups)?,
                })
            }
            None => None,
        };

        // 3. up blocks
        let mut up_blocks = Vec::new();
        let specs = c.up_blocks()?;
        for (i, b) in specs.iter().enumerate() {
            let uv = vb.pp("up_blocks").pp(i);
            let resnets = (0..b.layers)
                .map(|j| {
                    // res_skip_channels = in_channels if (i == num_layers - 1) else out_channels
                    let skip = if j + 1 == b.layers {
                        b.in_channels
                    } else {
                        b.out_channels
                    };
                    let cin = if j == 0 {
                        b.prev_channels
                    } else {
                        b.out_channels
                    };
                    resnet(&uv.pp("resnets").pp(j), cin + skip, b.out_channels, 1.0)
                })
                .collect::<Result<Vec<_>>>()?;
            let n_attn = if b.cross_attention { b.layers } else { 0 };
            up_blocks.push(UpBlock {
                resnets,
                attentions: load_transformers(&uv, c, b, b.out_channels, n_attn, groups)?,
                upsampler: if b.resample {
                    Some(Upsample2D::load(&uv.pp("upsamplers.0"), b.out_channels)?)
                } else {
                    None
                },
            });
        }

        // 4. out
        let conv_norm_out = GroupNorm::load(&vb.pp("conv_norm_out"), groups, ch0, eps)?;
        let conv_out = Conv2d::load(
            &vb.pp("conv_out"),
            ch0,
            c.out_channels,
            c.conv_out_kernel,
            1,
        )?;
        vb.finish()?;
        Ok(UNet2DConditionModel {
            config: c.clone(),
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

    /// The factor the latent's height and width must be divisible by (2 per downsampler).
    pub fn size_multiple(&self) -> usize {
        1 << self
            .down_blocks
            .iter()
            .filter(|b| b.downsampler.is_some())
            .count()
    }

    /// sample [B, in_channels, H, W]; `timesteps` one value for the batch or one per sample;
    /// encoder_hidden_states [B, L, cross_attention_dim]. Returns the noise prediction and the
    /// per-block activations.
    pub fn forward(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
    ) -> Result<UNetOutput> {
        const OP: &str = "UNet2DConditionModel";
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
                    "latent {h}x{w} is not divisible by {m} (the model downsamples {} times); \
                     use an image size that is a multiple of {} pixels with the SD VAE",
                    m.trailing_zeros(),
                    8 * m
                ),
            ));
        }
        let e = encoder_hidden_states.shape();
        let cross = self.cross_dims();
        if e.len() != 3 || e[0] != b || cross.iter().any(|&d| d != e[2]) {
            return Err(Error::shape(
                OP,
                format!(
                    "encoder_hidden_states {e:?} must be [{b}, L, {}] (cross_attention_dim)",
                    cross.first().copied().unwrap_or(0)
                ),
            ));
        }
        if sample.dtype() != self.dtype || encoder_hidden_states.dtype() != self.dtype {
            return Err(Error::shape(
                OP,
                format!("inputs must be {} like the weights", self.dtype.name()),
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

        // 1. time
        let t = Tensor::from_f32(ctx, &t, &[b], DType::F32)?;
        let t_emb = timestep_embedding(
            ctx,
            &t,
            &TimestepEmbedding {
                dim: c.block_out_channels[0],
                flip_sin_to_cos: c.flip_sin_to_cos,
                downscale_freq_shift: c.freq_shift as f32,
                scale: 1.0,
                max_period: 10000.0,
            },
            self.dtype,
        )?;
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
            for (j, r) in blk.resnets.iter().enumerate() {
                x = r.forward(ctx, &x, Some(&temb))?;
                if let Some(a) = blk.attentions.get(j) {
                    x = a.forward(ctx, &x, encoder_hidden_states)?;
                }
                res_samples.push(x.clone());
            }
            if let Some(d) = &blk.downsampler {
                x = d.forward(ctx, &x)?;
                res_samples.push(x.clone());
            }
            down.push(x.clone());
        }

        // 4. mid
        let mid = match &self.mid_block {
            Some(mb) => {
                x = mb.resnets[0].forward(ctx, &x, Some(&temb))?;
                for (a, r) in mb.attentions.iter().zip(&mb.resnets[1..]) {
                    x = a.forward(ctx, &x, encoder_hidden_states)?;
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
            for (j, r) in blk.resnets.iter().enumerate() {
                let skip = res_samples.pop().ok_or_else(|| {
                    Error::shape(
                        OP,
                        "the up blocks consume more skips than the down blocks make",
                    )
                })?;
                x = concat::concat(ctx, &[&x, &skip], 1)?;
                x = r.forward(ctx, &x, Some(&temb))?;
                if let Some(a) = blk.attentions.get(j) {
                    x = a.forward(ctx, &x, encoder_hidden_states)?;
                }
            }
            if let Some(u) = &blk.upsampler {
                x = u.forward(ctx, &x)?;
            }
            up.push(x.clone());
        }

        // 6. post-process
        let x = self.conv_norm_out.forward(ctx, &x, true)?;
        let out = self.conv_out.forward(ctx, &x)?;
        Ok(UNetOutput {
            sample: out,
            emb,
            conv_in,
            down,
            mid,
            up,
        })
    }

    /// The context width of every cross-attention block.
    fn cross_dims(&self) -> Vec<usize> {
        self.all_transformers()
            .map(|t| t.transformer_blocks[0].attn2.to_k.weight.shape()[1])
            .collect()
    }

    fn all_transformers(&self) -> impl Iterator<Item = &Transformer2DModel> {
        self.down_blocks
            .iter()
            .flat_map(|b| &b.attentions)
            .chain(self.mid_block.iter().flat_map(|m| &m.attentions))
            .chain(self.up_blocks.iter().flat_map(|b| &b.attentions))
            .filter(|t| !t.transformer_blocks.is_empty())
    }
}

/// `timesteps * torch.ones(batch)`: one timestep for the whole batch, or one per sample.
pub(crate) fn batch_timesteps(op: &'static str, timesteps: &[f32], b: usize) -> Result<Vec<f32>> {
    match timesteps.len() {
        1 => Ok(vec![timesteps[0]; b]),
        n if n == b => Ok(timesteps.to_vec()),
        n => Err(Error::shape(
            op,
            format!("{n} timesteps for a batch of {b}: give 1 or {b}"),
        )),
    }
}
