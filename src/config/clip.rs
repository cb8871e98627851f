//! transformers' CLIP configs (`configuration_clip.py`): `CLIPTextConfig` (`text_encoder/config.json`
//! of Stable Diffusion 1.x / 2.x), `CLIPVisionConfig` (a `CLIPVisionModel[WithProjection]`'s
//! `config.json`) and `CLIPConfig` (a `CLIPModel`'s: `text_config` + `vision_config` +
//! `projection_dim`).

use super::activation;
use super::parse::{parse_valid, Class, Source, MAX_DIM, MAX_LAYERS, MAX_VOCAB};
use crate::activation::Activation;
use crate::error::Result;
use serde::Deserialize;

/// transformers `CLIPTextConfig`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `CLIPTextModelWithProjection`'s `text_projection` width (SDXL's `text_encoder_2`: 1280).
    pub projection_dim: usize,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
            projection_dim: 512,
        }
    }
}

impl ClipTextConfig {
    /// Where a diffusers folder keeps it.
    pub const FILE: &'static str = "text_encoder/config.json";
    /// The `architectures` whose text tower this is (the projection, if any, is unused).
    const CLASS: Class = Class::transformers(&["CLIPTextModel", "CLIPTextModelWithProjection"]);

    pub fn from_json(json: &[u8]) -> Result<Self> {
        Self::from_json_at(Self::FILE, json)
    }

    /// [`Self::from_json`] for the config at `file` (SDXL's `text_encoder_2/config.json`),
    /// which its errors name.
    pub fn from_json_at(file: &str, json: &[u8]) -> Result<Self> {
        parse_valid(file, json, &Self::CLASS, |c: &Self| c.validate_at(file))
    }

    /// Refuses sizes that are zero or absurd, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(Source::new(Self::FILE))
    }

    fn validate_at(&self, file: &str) -> Result<()> {
        self.validate_in(Source::new(file))
    }

    /// [`Self::validate`] with errors naming `src` (a `CLIPConfig`'s `text_config.`).
    pub fn validate_in(&self, src: Source) -> Result<()> {
        activation(src, "hidden_act", &self.hidden_act)?;
        src.positive("vocab_size", self.vocab_size, MAX_VOCAB)?;
        src.positive("hidden_size", self.hidden_size, MAX_DIM)?;
        src.positive("intermediate_size", self.intermediate_size, MAX_DIM)?;
        src.positive("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        src.positive("num_attention_heads", self.num_attention_heads, MAX_DIM)?;
        src.positive(
            "max_position_embeddings",
            self.max_position_embeddings,
            MAX_DIM,
        )?;
        src.eps("layer_norm_eps", self.layer_norm_eps)?;
        src.positive("projection_dim", self.projection_dim, MAX_DIM)?;
        heads_divide(src, self.hidden_size, self.num_attention_heads)
    }

    pub fn act(&self) -> Result<Activation> {
        activation(Source::new(Self::FILE), "hidden_act", &self.hidden_act)
    }
}

/// transformers `CLIPVisionConfig`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Only `CLIPVisionModelWithProjection` uses it (a `CLIPModel` has its own).
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// A `CLIPVisionModel[WithProjection]` folder's config (unCLIP's `image_encoder/`).
    pub const FILE: &'static str = "config.json";
    const CLASS: Class = Class::transformers(&["CLIPVisionModel", "CLIPVisionModelWithProjection"]);

    pub fn from_json(json: &[u8]) -> Result<Self> {
        parse_valid(Self::FILE, json, &Self::CLASS, |c: &Self| {
            c.validate_in(Source::new(Self::FILE))
        })
    }

    /// Refuses sizes that are zero or absurd and images that do not split into patches.
    pub fn validate_in(&self, src: Source) -> Result<()> {
        activation(src, "hidden_act", &self.hidden_act)?;
        src.positive("hidden_size", self.hidden_size, MAX_DIM)?;
        src.positive("intermediate_size", self.intermediate_size, MAX_DIM)?;
        src.positive("projection_dim", self.projection_dim, MAX_DIM)?;
        src.positive("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        src.positive("num_attention_heads", self.num_attention_heads, MAX_DIM)?;
        src.positive("image_size", self.image_size, MAX_IMAGE)?;
        src.positive("patch_size", self.patch_size, self.image_size)
            .map_err(|_| {
                src.err(
                    "patch_size",
                    format!(
                        "= {} must be between 1 and `image_size` {}",
                        self.patch_size, self.image_size
                    ),
                )
            })?;
        src.eps("layer_norm_eps", self.layer_norm_eps)?;
        if self.num_channels != 3 {
            return Err(src.refuse(
                "num_channels",
                format!("= {} (hoa feeds RGB images, 3 channels)", self.num_channels),
            ));
        }
        heads_divide(src, self.hidden_size, self.num_attention_heads)
    }

    pub fn act(&self) -> Result<Activation> {
        activation(Source::new(Self::FILE), "hidden_act", &self.hidden_act)
    }

    /// Patches per side: the patch embedding's stride-`patch_size` conv drops a remainder.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the class token and one per patch.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// The largest `image_size` a config may ask for (released CLIPs use 224 to 448).
const MAX_IMAGE: usize = 1 << 13;

/// transformers `CLIPConfig`: a `CLIPModel`'s two towers and their shared embedding space.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: usize,
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

impl ClipConfig {
    /// A transformers `CLIPModel` folder's config.
    pub const FILE: &'static str = "config.json";
    const CLASS: Class = Class::transformers(&["CLIPModel"]);

    pub fn from_json(json: &[u8]) -> Result<Self> {
        parse_valid(Self::FILE, json, &Self::CLASS, Self::validate)
    }

    pub fn validate(&self) -> Result<()> {
        let src = Source::new(Self::FILE);
        src.positive("projection_dim", self.projection_dim, MAX_DIM)?;
        self.text_config.validate_in(src.prefixed("text_config."))?;
        self.vision_config
            .validate_in(src.prefixed("vision_config."))
    }
}

/// Attention splits `hidden_size` evenly over the heads (both towers' rule).
fn heads_divide(src: Source, hidden_size: usize, heads: usize) -> Result<()> {
    if hidden_size % heads != 0 {
        return Err(src.err(
            "hidden_size",
            format!("{hidden_size} is not divisible by `num_attention_heads` {heads}"),
        ));
    }
    Ok(())
}
