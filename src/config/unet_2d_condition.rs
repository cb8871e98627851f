//! diffusers' `UNet2DConditionModel` config (`models/unets/unet_2d_condition.py`), resolved
//! into one [`UNetBlockSpec`] per down / up block.

use super::parse::{parse_valid, Class, PerBlock, Source, MAX_DIM, MAX_LAYERS};
use super::MAX_KERNEL;
use crate::error::{Error, Result};
use serde::Deserialize;

/// diffusers `UNet2DConditionModel`'s config. hoa runs the SD 1.x / 2.x / SDXL family: the
/// block types CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D,
/// UpBlock2D, positional timestep embedding, text conditioning plus SDXL's `text_time`; [`Self::from_json`] refuses the rest
/// with a message naming the field.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionModelConfig {
    /// The latent size it was trained at (pipelines default to sample_size x the VAE factor).
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    pub transformer_layers_per_block: PerBlock<usize>,
    /// The up blocks' transformer layers (default: `transformer_layers_per_block` reversed);
    /// one number per block (diffusers also takes per-layer lists, which hoa refuses).
    pub reverse_transformer_layers_per_block: Option<Vec<PerBlock<usize>>>,
    pub encoder_hid_dim: Option<usize>,
    pub encoder_hid_dim_type: Option<String>,
    /// The number of heads when `num_attention_heads` is null (diffusers' naming quirk).
    pub attention_head_dim: PerBlock<usize>,
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    /// `"projection"` (stable unCLIP): `class_labels` [B, projection_class_embeddings_input_dim]
    /// through a TimestepEmbedding, added to the time embedding.
    pub class_embed_type: Option<String>,
    /// Concatenate the class embedding to the time embedding instead of adding it (refused).
    pub class_embeddings_concat: bool,
    /// `"text_time"` (SDXL): pooled text embeddings and micro-conditioning time ids.
    pub addition_embed_type: Option<String>,
    /// `text_time`: the sinusoidal width of each time id (256 in SDXL).
    pub addition_time_embed_dim: Option<usize>,
    /// `text_time`: `add_embedding`'s input width, the pooled text embedding's plus
    /// `addition_time_embed_dim` per time id (SDXL base 1280 + 6 x 256 = 2816).
    pub projection_class_embeddings_input_dim: Option<usize>,
    pub num_class_embeds: Option<usize>,
    /// Softmax in f32: hoa's attention always accumulates in f32, so this changes nothing
    /// (SDXL writes null).
    pub upcast_attention: Option<bool>,
    pub resnet_time_scale_shift: String,
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub attention_type: String,
    pub mid_block_only_cross_attention: Option<bool>,
    pub cross_attention_norm: Option<String>,
}

impl Default for UNet2DConditionModelConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        UNet2DConditionModelConfig {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            class_embeddings_concat: false,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
            num_class_embeds: None,
            upcast_attention: None,
            resnet_time_scale_shift: "default".into(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".into(),
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
        }
    }
}

/// One down or up block of a [`UNet2DConditionModelConfig`], with the per-block lists resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct UNetBlockSpec {
    pub cross_attention: bool,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Up blocks: the channels of the block below (`prev_output_channel`).
    pub prev_channels: usize,
    pub layers: usize,
    pub transformer_layers: usize,
    pub heads: usize,
    pub cross_attention_dim: usize,
    pub resample: bool,
}

impl UNet2DConditionModelConfig {
    pub const WHAT: &'static str = "UNet2DConditionModel";
    const CLASS: Class = Class::diffusers(&[Self::WHAT]);
    /// Where a diffusers folder keeps it.
    pub const FILE: &'static str = "unet/config.json";
    /// The largest `sample_size` (latent pixels) accepted: 8x the largest released model's;
    /// images default to it times the VAE factor.
    pub const MAX_SAMPLE_SIZE: usize = 1024;

    pub fn from_json(json: &[u8]) -> Result<Self> {
        parse_valid(Self::FILE, json, &Self::CLASS, Self::validate)
    }

    fn src() -> Source<'static> {
        Source::new(Self::FILE)
    }

    /// Refuses what hoa cannot run and sizes that are zero or absurd, naming the field.
    pub fn validate(&self) -> Result<()> {
        let src = Self::src();
        self.validate_unsupported(src)?;
        let n = src.block_lists(
            &self.block_out_channels,
            (
                &self.down_block_types,
                &["CrossAttnDownBlock2D", "DownBlock2D"],
            ),
            (&self.up_block_types, &["CrossAttnUpBlock2D", "UpBlock2D"]),
        )?;
        if self
            .only_cross_attention
            .expand(src, "only_cross_attention", n)?
            .contains(&true)
            || self.mid_block_only_cross_attention == Some(true)
        {
            return Err(src.refuse("only_cross_attention", "= true"));
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") | None => {}
            Some(t) => {
                return Err(src.refuse(
                    "mid_block_type",
                    format!("= {t:?} (known: UNetMidBlock2DCrossAttn)"),
                ))
            }
        }
        self.validate_sizes(src)?;
        self.validate_heads(src)
    }

    /// The switches diffusers has and hoa does not run.
    fn validate_unsupported(&self, src: Source) -> Result<()> {
        let set = |field: &str, v: &Option<String>| match v {
            Some(v) => Err(src.refuse(field, format!("= {v:?}"))),
            None => Ok(()),
        };
        self.validate_class_embed(src)?;
        self.validate_text_time(src)?;
        set("encoder_hid_dim_type", &self.encoder_hid_dim_type)?;
        set("time_embedding_act_fn", &self.time_embedding_act_fn)?;
        set("timestep_post_act", &self.timestep_post_act)?;
        set("cross_attention_norm", &self.cross_attention_norm)?;
        let num = |field: &str, v: Option<usize>| match v {
            Some(v) => Err(src.refuse(field, format!("= {v}"))),
            None => Ok(()),
        };
        if self.time_cond_proj_dim.is_some_and(|d| d < 4) {
            let d = self.time_cond_proj_dim.unwrap_or(0);
            return Err(src.err(
                "time_cond_proj_dim",
                format!("= {d}: the guidance embedding needs at least 4 (two frequencies)"),
            ));
        }
        num("num_class_embeds", self.num_class_embeds)?;
        num("encoder_hid_dim", self.encoder_hid_dim)?;
        src.only("act_fn", &self.act_fn, "silu")?;
        src.only(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            "default",
        )?;
        src.only(
            "time_embedding_type",
            &self.time_embedding_type,
            "positional",
        )?;
        src.only("attention_type", &self.attention_type, "default")?;
        if self.dual_cross_attention {
            return Err(src.refuse("dual_cross_attention", "= true"));
        }
        if self.resnet_skip_time_act {
            return Err(src.refuse("resnet_skip_time_act", "= true"));
        }
        Ok(())
    }

    /// `addition_embed_type`: none, or SDXL's `"text_time"` with both of its widths.
    fn validate_text_time(&self, src: Source) -> Result<()> {
        match self.addition_embed_type.as_deref() {
            None => Ok(()),
            Some("text_time") => {
                for (field, v) in [
                    ("addition_time_embed_dim", self.addition_time_embed_dim),
                    (
                        "projection_class_embeddings_input_dim",
                        self.projection_class_embeddings_input_dim,
                    ),
                ] {
                    let v = v.ok_or_else(|| {
                        src.err(
                            field,
                            "is missing; `addition_embed_type: \"text_time\"` needs it",
                        )
                    })?;
                    src.positive(field, v, MAX_DIM)?;
                }
                Ok(())
            }
            Some(t) => Err(src.refuse(
                "addition_embed_type",
                format!("= {t:?} (hoa runs null and \"text_time\")"),
            )),
        }
    }

    /// `class_embed_type`: none, or stable unCLIP's `"projection"` with its input width (not
    /// together with `addition_embed_type`, which shares that width's field).
    fn validate_class_embed(&self, src: Source) -> Result<()> {
        if self.class_embeddings_concat {
            return Err(src.refuse("class_embeddings_concat", "= true"));
        }
        match self.class_embed_type.as_deref() {
            None => Ok(()),
            Some("projection") => {
                if self.addition_embed_type.is_some() {
                    return Err(src.refuse("class_embed_type", "together with addition_embed_type"));
                }
                let v = self.projection_class_embeddings_input_dim.ok_or_else(|| {
                    src.err(
                        "projection_class_embeddings_input_dim",
                        "is missing; `class_embed_type: \"projection\"` needs it",
                    )
                })?;
                src.positive("projection_class_embeddings_input_dim", v, MAX_DIM)
            }
            Some(t) => Err(src.refuse(
                "class_embed_type",
                format!("= {t:?} (hoa runs null and \"projection\")"),
            )),
        }
    }

    /// stable unCLIP's class conditioning: `projection_class_embeddings_input_dim` when
    /// `class_embed_type` is `"projection"`.
    pub fn class_projection(&self) -> Option<usize> {
        match self.class_embed_type.as_deref() {
            Some("projection") => self.projection_class_embeddings_input_dim,
            _ => None,
        }
    }

    /// SDXL's added conditioning: (`addition_time_embed_dim`,
    /// `projection_class_embeddings_input_dim`) when `addition_embed_type` is `"text_time"`.
    pub fn text_time(&self) -> Option<(usize, usize)> {
        match self.addition_embed_type.as_deref() {
            Some("text_time") => Some((
                self.addition_time_embed_dim?,
                self.projection_class_embeddings_input_dim?,
            )),
            _ => None,
        }
    }

    /// Sizes: every one at least 1 (most are divisors somewhere) and none absurd.
    fn validate_sizes(&self, src: Source) -> Result<()> {
        if let Some(s) = self.sample_size {
            src.positive("sample_size", s, Self::MAX_SAMPLE_SIZE)?;
        }
        src.positive("in_channels", self.in_channels, MAX_DIM)?;
        src.positive("out_channels", self.out_channels, MAX_DIM)?;
        src.at_most("downsample_padding", self.downsample_padding, MAX_DIM)?;
        if let Some(d) = self.time_embedding_dim {
            src.positive("time_embedding_dim", d, MAX_DIM)?;
        }
        for (field, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(src.refuse(field, format!("= {k} (even kernel)")));
            }
            src.at_most(field, k, MAX_KERNEL)?;
        }
        src.eps("norm_eps", self.norm_eps)?;
        src.scale("mid_block_scale_factor", self.mid_block_scale_factor)?;
        src.scale("resnet_out_scale_factor", self.resnet_out_scale_factor)?;
        let groups = self
            .norm_num_groups
            .ok_or_else(|| src.refuse("norm_num_groups", "is null"))?;
        src.groups_divide(
            "norm_num_groups",
            groups,
            "block_out_channels",
            &self.block_out_channels,
        )?;
        let (layers, transformer_layers, cross) = self.lists()?;
        src.all_positive("layers_per_block", &layers, MAX_LAYERS)?;
        src.all_positive(
            "transformer_layers_per_block",
            &transformer_layers,
            MAX_LAYERS,
        )?;
        src.all_positive(
            "reverse_transformer_layers_per_block",
            &self.up_transformer_layers()?,
            MAX_LAYERS,
        )?;
        src.all_positive("cross_attention_dim", &cross, MAX_DIM)
    }

    /// Every attention block's channels split into its heads.
    fn validate_heads(&self, src: Source) -> Result<()> {
        let field = self.heads_field();
        src.all_positive(field, &self.heads()?, MAX_DIM)?;
        for b in self.down_blocks()?.iter().chain(&self.up_blocks()?) {
            if b.cross_attention && b.out_channels % b.heads != 0 {
                return Err(src.err(
                    field,
                    format!(
                        "= {} heads do not divide a block's {} channels",
                        b.heads, b.out_channels
                    ),
                ));
            }
        }
        let empty = || Error::config(Self::FILE, "block_out_channels", "is empty");
        let heads = *self.heads()?.last().ok_or_else(empty)?;
        let ch = *self.block_out_channels.last().ok_or_else(empty)?;
        if self.mid_block_type.is_some() && ch % heads != 0 {
            return Err(src.err(
                field,
                format!("= {heads} heads do not divide the mid block's {ch} channels"),
            ));
        }
        Ok(())
    }

    /// The key the head counts come from (diffusers' naming quirk).
    fn heads_field(&self) -> &'static str {
        match self.num_attention_heads {
            Some(_) => "num_attention_heads",
            None => "attention_head_dim",
        }
    }

    /// The number of attention heads per down block: `num_attention_heads`, or
    /// `attention_head_dim` when that is null (diffusers' naming quirk).
    pub fn heads(&self) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.expand(Self::src(), "num_attention_heads", n),
            None => self
                .attention_head_dim
                .expand(Self::src(), "attention_head_dim", n),
        }
    }

    /// The up blocks' transformer layers, in up-block order: `reverse_transformer_layers_per_block`
    /// or `transformer_layers_per_block` reversed.
    fn up_transformer_layers(&self) -> Result<Vec<usize>> {
        const FIELD: &str = "reverse_transformer_layers_per_block";
        let (src, n) = (Self::src(), self.block_out_channels.len());
        let Some(rev) = &self.reverse_transformer_layers_per_block else {
            let (_, tl, _) = self.lists()?;
            return Ok(tl.into_iter().rev().collect());
        };
        if rev.len() != n {
            return Err(src.err(FIELD, format!("has {} entries for {n} blocks", rev.len())));
        }
        rev.iter()
            .map(|r| match r {
                PerBlock::One(v) => Ok(*v),
                PerBlock::Each(_) => Err(src.refuse(FIELD, "has a per-layer list")),
            })
            .collect()
    }

    fn lists(&self) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
        let (src, n) = (Self::src(), self.block_out_channels.len());
        Ok((
            self.layers_per_block.expand(src, "layers_per_block", n)?,
            self.transformer_layers_per_block
                .expand(src, "transformer_layers_per_block", n)?,
            self.cross_attention_dim
                .expand(src, "cross_attention_dim", n)?,
        ))
    }

    /// `time_embed_dim`: `time_embedding_dim` or 4 x `block_out_channels[0]`.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    pub fn down_blocks(&self) -> Result<Vec<UNetBlockSpec>> {
        let (layers, tl, cross) = self.lists()?;
        let heads = self.heads()?;
        let ch = &self.block_out_channels;
        Ok((0..ch.len())
            .map(|i| UNetBlockSpec {
                cross_attention: self.down_block_types[i] == "CrossAttnDownBlock2D",
                in_channels: if i == 0 { ch[0] } else { ch[i - 1] },
                out_channels: ch[i],
                prev_channels: 0,
                layers: layers[i],
                transformer_layers: tl[i],
                heads: heads[i],
                cross_attention_dim: cross[i],
                resample: i + 1 < ch.len(),
            })
            .collect())
    }

    /// Up block i works at the resolution of down block n-1-i, with the reversed lists.
    pub fn up_blocks(&self) -> Result<Vec<UNetBlockSpec>> {
        let (layers, _, cross) = self.lists()?;
        let tl = self.up_transformer_layers()?;
        let heads = self.heads()?;
        let n = self.block_out_channels.len();
        let rev = |v: &[usize]| v.iter().rev().copied().collect::<Vec<_>>();
        let (ch, layers, cross, heads) = (
            rev(&self.block_out_channels),
            rev(&layers),
            rev(&cross),
            rev(&heads),
        );
        Ok((0..n)
            .map(|i| UNetBlockSpec {
                cross_attention: self.up_block_types[i] == "CrossAttnUpBlock2D",
                in_channels: ch[(i + 1).min(n - 1)],
                out_channels: ch[i],
                prev_channels: if i == 0 { ch[0] } else { ch[i - 1] },
                layers: layers[i] + 1,
                transformer_layers: tl[i],
                heads: heads[i],
                cross_attention_dim: cross[i],
                resample: i + 1 < n,
            })
            .collect())
    }
}
