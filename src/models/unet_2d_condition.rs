//! diffusers `UNet2DConditionModel` (`models/unets/unet_2d_condition.py`) for the Stable
//! Diffusion 1.x / 2.x / SDXL family: timestep embedding (plus SDXL's `text_time` added
//! embedding of the pooled text and the micro-conditioning ids), conv_in, the down blocks collecting
//! residuals, UNetMidBlock2DCrossAttn, the up blocks consuming them, GroupNorm + SiLU,
//! conv_out. The blocks live in [`super::unet_2d_blocks`]. Configs it cannot run are refused
//! by [`UNet2DConditionModelConfig::validate`].

use super::attention::Transformer2DModel;
use super::nn::{Conv2d, GroupNorm, Linear};
use super::unet_2d_blocks::{
    take_skips, ResnetOptions, UNetBlockOptions, UNetDownBlock, UNetMidBlock2DCrossAttn,
    UNetUpBlock,
};
use crate::config::UNet2DConditionModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::embedding::{timestep_embedding, TimestepEmbedding};
use crate::kernels::{concat::concat, elementwise, Activation};
use crate::models::check_nchw;
use crate::weights::Loader;

/// diffusers `TimestepEmbedding`: `linear_1`, SiLU, `linear_2`; with `cond_proj_dim`, also
/// `cond_proj` (LCM's guidance embedding).
pub struct TimestepEmbeddingMlp {
    pub linear_1: Linear,
    pub linear_2: Linear,
    /// `cond_proj`: Linear(cond_proj_dim -> in_channels, no bias), added to the sinusoidal
    /// embedding before `linear_1` (see [`UNet2DConditionModel::time_cond`]).
    pub cond_proj: Option<Linear>,
}

impl TimestepEmbeddingMlp {
    /// `TimestepEmbedding(in_channels, time_embed_dim)` under `vb` (`time_embedding.`).
    pub fn load(vb: &Loader, in_channels: usize, time_embed_dim: usize) -> Result<Self> {
        Self::load_cond(vb, in_channels, time_embed_dim, None)
    }

    /// [`Self::load`] with `cond_proj_dim` (the U-Net config's `time_cond_proj_dim`).
    pub fn load_cond(
        vb: &Loader,
        in_channels: usize,
        time_embed_dim: usize,
        cond_proj_dim: Option<usize>,
    ) -> Result<Self> {
        Ok(TimestepEmbeddingMlp {
            linear_1: Linear::load(&vb.pp("linear_1"), in_channels, time_embed_dim, true)?,
            linear_2: Linear::load(&vb.pp("linear_2"), time_embed_dim, time_embed_dim, true)?,
            cond_proj: (cond_proj_dim)
                .map(|d| Linear::load(&vb.pp("cond_proj"), d, in_channels, false))
                .transpose()?,
        })
    }

    /// `emb = linear_2(silu(linear_1(t_emb)))`.
    pub fn forward(&self, ctx: &Context, t_emb: &Tensor) -> Result<Tensor> {
        let h = self.linear_1.forward_act(ctx, t_emb, Activation::Silu)?;
        self.linear_2.forward(ctx, &h)
    }
}

/// `sample` as `2 * sample - 1` when the config's `center_input_sample` asks for it.
pub(crate) fn center_input(ctx: &Context, sample: &Tensor, center: bool) -> Result<Option<Tensor>> {
    center
        .then(|| elementwise::unary(ctx, sample, Activation::None, 2.0, -1.0))
        .transpose()
}

/// diffusers' `added_cond_kwargs` for `addition_embed_type: "text_time"` (SDXL): the pooled
/// text embedding and the micro-conditioning time ids, one row per U-Net row.
pub struct AddedCondKwargs<'a> {
    /// [B, projection_dim]: `text_encoder_2`'s projected pooled output.
    pub text_embeds: &'a Tensor,
    /// B rows of ids (original size, crop top-left, target size; or the refiner's aesthetic
    /// score), row-major.
    pub time_ids: &'a [f32],
}

pub struct UNet2DConditionModel {
    pub config: UNet2DConditionModelConfig,
    pub time_embedding: TimestepEmbeddingMlp,
    /// `text_time`: `add_embedding`, a TimestepEmbedding from
    /// `projection_class_embeddings_input_dim` to `time_embed_dim`.
    pub add_embedding: Option<TimestepEmbeddingMlp>,
    /// `class_embed_type: "projection"` (stable unCLIP): `class_embedding`, a TimestepEmbedding
    /// from `projection_class_embeddings_input_dim` to `time_embed_dim`.
    pub class_embedding: Option<TimestepEmbeddingMlp>,
    pub conv_in: Conv2d,
    pub down_blocks: Vec<UNetDownBlock>,
    pub mid_block: Option<UNetMidBlock2DCrossAttn>,
    pub up_blocks: Vec<UNetUpBlock>,
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

/// A U-Net's blocks and how one runs with the model's time embedding (and text): what
/// [`UNetOutput::walk`] needs of `UNet2DModel` and `UNet2DConditionModel`, whose blocks differ.
pub(crate) struct Blocks<'a, D, M, U, FD, FM, FU> {
    pub down: &'a [D],
    /// Runs a down block: (hidden states, its residuals).
    pub run_down: FD,
    pub mid: Option<&'a M>,
    pub run_mid: FM,
    pub up: &'a [U],
    /// Runs an up block on the residuals it takes.
    pub run_up: FU,
    /// How many residuals an up block takes: one per resnet.
    pub skips: fn(&U) -> usize,
}

impl UNetOutput {
    /// Steps 2-6 of diffusers' U-Net `forward`, which the two U-Nets share but for their
    /// blocks: `conv_in`, the down blocks collecting residuals, the mid block, the up blocks
    /// each taking the last len(resnets) of them, `conv_norm_out` + SiLU, `conv_out` (`ends`).
    pub(crate) fn walk<D, M, U, FD, FM, FU>(
        ctx: &Context,
        op: &'static str,
        ends: (&Conv2d, &GroupNorm, &Conv2d),
        (sample, emb): (&Tensor, Tensor),
        b: Blocks<'_, D, M, U, FD, FM, FU>,
    ) -> Result<UNetOutput>
    where
        FD: Fn(&D, Tensor) -> Result<(Tensor, Vec<Tensor>)>,
        FM: Fn(&M, Tensor) -> Result<Tensor>,
        FU: Fn(&U, Tensor, Vec<Tensor>) -> Result<Tensor>,
    {
        // 2. pre-process
        let mut x = ends.0.forward(ctx, sample)?;
        let conv_in = x.clone();

        // 3. down
        let mut down_block_res_samples = vec![x.clone()];
        let mut down = Vec::new();
        for block in b.down {
            let res_samples;
            (x, res_samples) = (b.run_down)(block, x)?;
            down_block_res_samples.extend(res_samples);
            down.push(x.clone());
        }

        // 4. mid
        let mut mid = None;
        if let Some(block) = b.mid {
            x = (b.run_mid)(block, x)?;
            mid = Some(x.clone());
        }

        // 5. up: each block takes the last len(resnets) residuals
        let mut up = Vec::new();
        for block in b.up {
            let res_samples = take_skips(&mut down_block_res_samples, (b.skips)(block), op)?;
            x = (b.run_up)(block, x, res_samples)?;
            up.push(x.clone());
        }

        // 6. post-process
        let x = ends.1.forward(ctx, &x, true)?;
        let sample = ends.2.forward(ctx, &x)?;
        Ok(UNetOutput {
            sample,
            emb,
            conv_in,
            down,
            mid,
            up,
        })
    }
}

impl UNet2DConditionModel {
    pub fn load(vb: &Loader, config: &UNet2DConditionModelConfig) -> Result<UNet2DConditionModel> {
        config.validate()?;
        let c = config;
        let groups = c.norm_num_groups.unwrap_or(32);
        let ch0 = c.block_out_channels[0];
        let temb = c.time_embed_dim();
        let mut opts = UNetBlockOptions {
            resnet: ResnetOptions::new(Some(temb), groups, c.norm_eps),
            downsample_padding: c.downsample_padding,
            use_linear_projection: c.use_linear_projection,
        };
        let time_embedding = TimestepEmbeddingMlp::load_cond(
            &vb.pp("time_embedding"),
            ch0,
            temb,
            c.time_cond_proj_dim,
        )?;
        let add_embedding = (c.text_time())
            .map(|(_, input)| TimestepEmbeddingMlp::load(&vb.pp("add_embedding"), input, temb))
            .transpose()?;
        let class_embedding = (c.class_projection())
            .map(|input| TimestepEmbeddingMlp::load(&vb.pp("class_embedding"), input, temb))
            .transpose()?;
        let conv_in = Conv2d::load(&vb.pp("conv_in"), c.in_channels, ch0, c.conv_in_kernel, 1)?;
        let down_specs = c.down_blocks()?;
        let down_blocks = (down_specs.iter().enumerate())
            .map(|(i, b)| UNetDownBlock::load(&vb.pp("down_blocks").pp(i), b, &opts))
            .collect::<Result<Vec<_>>>()?;
        let up_blocks = (c.up_blocks()?.iter().enumerate())
            .map(|(i, b)| UNetUpBlock::load(&vb.pp("up_blocks").pp(i), b, &opts))
            .collect::<Result<Vec<_>>>()?;
        opts.resnet.output_scale_factor = c.mid_block_scale_factor;
        let last = down_specs
            .last()
            .ok_or_else(|| Error::config("unet/config.json", "down_block_types", "is empty"))?;
        let mid_block = (c.mid_block_type.is_some())
            .then(|| UNetMidBlock2DCrossAttn::load(&vb.pp("mid_block"), last, &opts))
            .transpose()?;
        let conv_norm_out = GroupNorm::load(&vb.pp("conv_norm_out"), groups, ch0, c.norm_eps)?;
        let out = c.out_channels;
        let conv_out = Conv2d::load(&vb.pp("conv_out"), ch0, out, c.conv_out_kernel, 1)?;
        vb.finish()?;
        Ok(UNet2DConditionModel {
            config: c.clone(),
            time_embedding,
            add_embedding,
            class_embedding,
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
            .filter(|b| b.has_downsampler())
            .count()
    }

    /// sample [B, in_channels, H, W]; `timesteps` one value for the batch or one per sample;
    /// encoder_hidden_states [B, L, cross_attention_dim]. Returns the noise prediction and the
    /// per-block activations.
    /// An SDXL U-Net (`text_time`) needs its added conditioning, an unCLIP one (`projection`)
    /// its class embedding: use [`Self::forward_with`].
    pub fn forward(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
    ) -> Result<UNetOutput> {
        self.forward_with(ctx, sample, timesteps, encoder_hidden_states, None)
    }

    /// [`Self::forward`] with the added embedding `aug_emb` [B, time_embed_dim] that
    /// [`Self::aug_embed`] made of `added_cond_kwargs`, or the class embedding that
    /// [`Self::class_embed`] made of `class_labels` (neither changes with the timestep, so a
    /// pipeline makes it once before its loop); required by a `text_time` or `projection`
    /// U-Net.
    pub fn forward_with(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
        aug_emb: Option<&Tensor>,
    ) -> Result<UNetOutput> {
        self.forward_cond(ctx, sample, timesteps, encoder_hidden_states, aug_emb, None)
    }

    /// [`Self::forward_with`] with `time_cond` [B, block_out_channels[0]], the projected
    /// `timestep_cond` that [`Self::time_cond`] made (an LCM's guidance embedding; made once,
    /// before the loop), added to the sinusoidal timestep embedding before `linear_1`.
    pub fn forward_cond(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
        aug_emb: Option<&Tensor>,
        time_cond: Option<&Tensor>,
    ) -> Result<UNetOutput> {
        const OP: &str = "UNet2DConditionModel";
        let ehs = encoder_hidden_states;
        self.check_inputs(sample, ehs)?;
        let t = batch_timesteps(OP, timesteps, sample.shape()[0])?;
        self.check_aug(aug_emb, sample.shape()[0])?;
        self.check_time_cond(time_cond, sample.shape()[0])?;

        // 0. center input if necessary
        let centered = center_input(ctx, sample, self.config.center_input_sample)?;
        let sample = centered.as_ref().unwrap_or(sample);

        // 1. time: emb = time_embedding(t_emb) (+ aug_emb)
        let mut emb = self.time_embed(ctx, &t, time_cond)?;
        if let Some(aug) = aug_emb {
            emb = elementwise::add(ctx, &emb, aug)?;
        }
        // Every resnet applies nonlinearity(temb) before its time_emb_proj: do it once.
        let temb = elementwise::activation(ctx, &emb, Activation::Silu)?;
        let temb = Some(&temb);

        let blocks = Blocks {
            down: &self.down_blocks,
            run_down: |b: &UNetDownBlock, x| b.forward(ctx, x, temb, ehs),
            mid: self.mid_block.as_ref(),
            run_mid: |b: &UNetMidBlock2DCrossAttn, x| b.forward(ctx, x, temb, ehs),
            up: &self.up_blocks,
            run_up: |b: &UNetUpBlock, x, res| b.forward(ctx, x, res, temb, ehs),
            skips: |b: &UNetUpBlock| b.resnets().len(),
        };
        let ends = (&self.conv_in, &self.conv_norm_out, &self.conv_out);
        UNetOutput::walk(ctx, OP, ends, (sample, emb), blocks)
    }

    /// `time_proj` (sinusoidal `Timesteps`) then `time_embedding`: `emb` [B, time_embed_dim].
    /// With `time_cond`, diffusers' `sample + cond_proj(condition)` before `linear_1`.
    fn time_embed(
        &self,
        ctx: &Context,
        timesteps: &[f32],
        time_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let t = Tensor::from_f32(ctx, timesteps, &[timesteps.len()], DType::F32)?;
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
        let t_emb = match time_cond {
            Some(c) => elementwise::add(ctx, &t_emb, c)?,
            None => t_emb,
        };
        self.time_embedding.forward(ctx, &t_emb)
    }

    /// `t` must be [B, `width`] (the config's `field`) in the U-Net's dtype.
    fn check_rows(&self, t: &Tensor, width: usize, what: &str, field: &str) -> Result<()> {
        let s = t.shape();
        if s.len() != 2 || s[1] != width || t.dtype() != self.dtype {
            return Err(Error::shape(
                "UNet2DConditionModel",
                format!(
                    "{what} {s:?} must be [B, {width}] ({field}) in {}",
                    self.dtype.name()
                ),
            ));
        }
        Ok(())
    }

    /// `time_embedding.cond_proj(timestep_cond)`: `timestep_cond` [B, time_cond_proj_dim] (an
    /// LCM's guidance-scale embedding) projected to [B, block_out_channels[0]], the
    /// `time_cond` that [`Self::forward_cond`] adds at every step.
    pub fn time_cond(&self, ctx: &Context, timestep_cond: &Tensor) -> Result<Tensor> {
        const OP: &str = "UNet2DConditionModel";
        let (Some(proj), Some(dim)) = (
            &self.time_embedding.cond_proj,
            self.config.time_cond_proj_dim,
        ) else {
            return Err(Error::shape(
                OP,
                "this U-Net has no time_cond_proj_dim (no timestep_cond to project)",
            ));
        };
        self.check_rows(timestep_cond, dim, "timestep_cond", "time_cond_proj_dim")?;
        proj.forward(ctx, timestep_cond)
    }

    fn check_time_cond(&self, time_cond: Option<&Tensor>, b: usize) -> Result<()> {
        let want = [b, self.config.block_out_channels[0]];
        match time_cond {
            Some(c) if self.time_embedding.cond_proj.is_none() => Err(Error::shape(
                "UNet2DConditionModel",
                format!(
                    "time_cond {:?} given to a U-Net without time_cond_proj_dim",
                    c.shape()
                ),
            )),
            Some(c) if c.shape() != want || c.dtype() != self.dtype => Err(Error::shape(
                "UNet2DConditionModel",
                format!("time_cond {:?} must be {want:?}", c.shape()),
            )),
            _ => Ok(()),
        }
    }

    /// diffusers' `get_aug_embed` for `text_time`: `add_time_proj` (sinusoidal, width
    /// `addition_time_embed_dim`) of every time id, flattened per row, after `text_embeds`,
    /// through `add_embedding`. Returns [B, time_embed_dim].
    pub fn aug_embed(&self, ctx: &Context, added: &AddedCondKwargs) -> Result<Tensor> {
        const OP: &str = "UNet2DConditionModel";
        let c = &self.config;
        let (Some(add_embedding), Some((dim, input))) = (&self.add_embedding, c.text_time()) else {
            return Err(Error::shape(
                OP,
                "this U-Net has no added conditioning (addition_embed_type is not \"text_time\")",
            ));
        };
        let te = added.text_embeds.shape();
        let ids = added.time_ids.len();
        let rows = te.first().copied().unwrap_or(0);
        let per_row = (rows > 0 && ids % rows == 0).then(|| ids / rows);
        let width = per_row.and_then(|n| n.checked_mul(dim)?.checked_add(te[1]));
        if te.len() != 2 || width != Some(input) || added.text_embeds.dtype() != self.dtype {
            return Err(Error::shape(
                OP,
                format!(
                    "text_embeds {te:?} and {ids} time ids: each row's pooled width + \
                     {dim} (addition_time_embed_dim) per id must give {input} \
                     (projection_class_embeddings_input_dim), in {}",
                    self.dtype.name()
                ),
            ));
        }
        let t = Tensor::from_f32(ctx, added.time_ids, &[ids], DType::F32)?;
        let proj = TimestepEmbedding {
            dim,
            flip_sin_to_cos: c.flip_sin_to_cos,
            downscale_freq_shift: c.freq_shift as f32,
            scale: 1.0,
            max_period: 10000.0,
        };
        let time_embeds =
            timestep_embedding(ctx, &t, &proj, self.dtype)?.reshape(&[rows, input - te[1]])?;
        let add_embeds = concat(ctx, &[added.text_embeds, &time_embeds], 1)?;
        add_embedding.forward(ctx, &add_embeds)
    }

    /// diffusers' `get_class_embed` for `class_embed_type: "projection"`: `class_embedding`
    /// of `class_labels` [B, projection_class_embeddings_input_dim] (no sinusoidal step).
    /// Returns [B, time_embed_dim], which [`Self::forward_with`] adds to the time embedding.
    pub fn class_embed(&self, ctx: &Context, class_labels: &Tensor) -> Result<Tensor> {
        const OP: &str = "UNet2DConditionModel";
        let (Some(class_embedding), Some(input)) =
            (&self.class_embedding, self.config.class_projection())
        else {
            return Err(Error::shape(
                OP,
                "this U-Net has no class embedding (class_embed_type is not \"projection\")",
            ));
        };
        self.check_rows(
            class_labels,
            input,
            "class_labels",
            "projection_class_embeddings_input_dim",
        )?;
        class_embedding.forward(ctx, class_labels)
    }

    /// A `text_time` U-Net gets an added embedding of one row per sample, a `projection` one
    /// its class embedding; others none.
    fn check_aug(&self, aug_emb: Option<&Tensor>, b: usize) -> Result<()> {
        const OP: &str = "UNet2DConditionModel";
        let want = [b, self.config.time_embed_dim()];
        let takes = self.add_embedding.is_some() || self.class_embedding.is_some();
        match (aug_emb, takes) {
            (None, false) => Ok(()),
            (Some(a), true) if a.shape() == want && a.dtype() == self.dtype => Ok(()),
            (None, true) if self.class_embedding.is_some() => Err(Error::shape(
                OP,
                "this unCLIP U-Net (class_embed_type \"projection\") needs its class \
                 embedding (class_labels: the noised image embedding)",
            )),
            (None, true) => Err(Error::shape(
                OP,
                "this SDXL-style U-Net (addition_embed_type \"text_time\") needs its added \
                 conditioning (text_embeds and time_ids)",
            )),
            (Some(_), false) => Err(Error::shape(
                OP,
                "added conditioning given to a U-Net without addition_embed_type or \
                 class_embed_type",
            )),
            (Some(a), true) => Err(Error::shape(
                OP,
                format!("aug_emb {:?} must be {want:?}", a.shape()),
            )),
        }
    }

    /// Shapes and dtypes of `forward`'s inputs, each error naming the config field it breaks.
    fn check_inputs(&self, sample: &Tensor, encoder_hidden_states: &Tensor) -> Result<()> {
        const OP: &str = "UNet2DConditionModel";
        let c = &self.config;
        let s = sample.shape();
        check_nchw(OP, "sample", s, "H, W", (c.in_channels, "in_channels"))?;
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
        Ok(())
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
            .flat_map(|b| b.attentions())
            .chain(self.mid_block.iter().flat_map(|m| &m.attentions))
            .chain(self.up_blocks.iter().flat_map(|b| b.attentions()))
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
