//! diffusers' `UNet2DModel` config (`models/unets/unet_2d.py`), the unconditional U-Net of the
//! consistency decoder.

use super::parse::{parse_valid, Class, Source, MAX_DIM, MAX_LAYERS, MAX_VOCAB};
use super::AutoencoderKLConfig;
use crate::error::Result;
use serde::Deserialize;

/// diffusers `UNet2DModel`'s config (`models/unets/unet_2d.py`), the unconditional U-Net of
/// the consistency decoder. hoa runs ResnetDownsampleBlock2D / ResnetUpsampleBlock2D blocks,
/// an attention-free UNetMidBlock2D (or none), the "positional" or "learned" time embedding,
/// the "default" or "scale_shift" time norm, SiLU, no class conditioning; [`Self::validate`]
/// refuses the rest with a message naming the field.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct UNet2DModelConfig {
    pub sample_size: Option<serde_json::Value>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub freq_shift: f64,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    pub dropout: f64,
    pub act_fn: String,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: Option<usize>,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: String,
    pub add_attention: bool,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    pub num_train_timesteps: Option<usize>,
}

impl Default for UNet2DModelConfig {
    fn default() -> Self {
        UNet2DModelConfig {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
        }
    }
}

impl UNet2DModelConfig {
    pub const WHAT: &'static str = "UNet2DModel";
    const CLASS: Class = Class::diffusers(&[Self::WHAT]);
    /// Where a diffusers folder keeps it.
    pub const FILE: &'static str = "unet/config.json";

    pub fn from_json(json: &[u8]) -> Result<Self> {
        parse_valid(Self::FILE, json, &Self::CLASS, Self::validate)
    }

    /// Refuses what hoa cannot run and sizes that are zero or absurd, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(Source::new(Self::FILE))
    }

    /// [`Self::validate`] with errors naming the keys as `src` spells them.
    pub(crate) fn validate_in(&self, src: Source) -> Result<()> {
        src.block_lists(
            &self.block_out_channels,
            (&self.down_block_types, &["ResnetDownsampleBlock2D"]),
            (&self.up_block_types, &["ResnetUpsampleBlock2D"]),
        )?;
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2D") => {}
            Some(t) => {
                return Err(src.refuse(
                    "mid_block_type",
                    format!("= {t:?} (known: \"UNetMidBlock2D\", null)"),
                ))
            }
        }
        if self.mid_block_type.is_some() && self.add_attention {
            return Err(src.refuse("add_attention", "= true (the mid block's attention)"));
        }
        self.validate_embeddings(src)?;
        src.only("act_fn", &self.act_fn, "silu")?;
        if let Some(t) = &self.class_embed_type {
            return Err(src.refuse("class_embed_type", format!("= {t:?}")));
        }
        if let Some(v) = self.num_class_embeds {
            return Err(src.refuse("num_class_embeds", format!("= {v}")));
        }
        self.validate_sizes(src)
    }

    /// The time embedding and its norm.
    fn validate_embeddings(&self, src: Source) -> Result<()> {
        match self.time_embedding_type.as_str() {
            "positional" => {}
            "learned" => {
                let Some(n) = self.num_train_timesteps else {
                    return Err(src.err(
                        "time_embedding_type",
                        format!("\"learned\" needs `{}`", src.key("num_train_timesteps")),
                    ));
                };
                src.positive("num_train_timesteps", n, MAX_VOCAB)?;
            }
            t => {
                return Err(src.refuse(
                    "time_embedding_type",
                    format!("= {t:?} (known: \"positional\", \"learned\")"),
                ))
            }
        }
        match self.resnet_time_scale_shift.as_str() {
            "default" | "scale_shift" => Ok(()),
            t => Err(src.refuse(
                "resnet_time_scale_shift",
                format!("= {t:?} (known: \"default\", \"scale_shift\")"),
            )),
        }
    }

    /// Sizes: every one at least 1 (most are divisors somewhere) and none absurd.
    fn validate_sizes(&self, src: Source) -> Result<()> {
        if let Some(s) = &self.sample_size {
            src.sample_size("sample_size", s, AutoencoderKLConfig::MAX_SAMPLE_SIZE)?;
        }
        src.positive("in_channels", self.in_channels, MAX_DIM)?;
        src.positive("out_channels", self.out_channels, MAX_DIM)?;
        src.positive("layers_per_block", self.layers_per_block, MAX_LAYERS)?;
        src.at_most("downsample_padding", self.downsample_padding, MAX_DIM)?;
        if let Some(d) = self.time_embedding_dim {
            src.positive("time_embedding_dim", d, MAX_DIM)?;
        }
        src.eps("norm_eps", self.norm_eps)?;
        src.scale("mid_block_scale_factor", self.mid_block_scale_factor)?;
        let Some(g) = self.norm_num_groups else {
            return Err(src.refuse("norm_num_groups", "= null"));
        };
        src.groups_divide(
            "norm_num_groups",
            g,
            "block_out_channels",
            &self.block_out_channels,
        )
    }

    /// `time_embed_dim`: `time_embedding_dim` or 4 x `block_out_channels[0]`.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }
}
