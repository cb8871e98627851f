//! transformers' `CLIPTextConfig` (`text_encoder/config.json` of Stable Diffusion 1.x / 2.x).

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
        self.validate_at(Self::FILE)
    }

    fn validate_at(&self, file: &str) -> Result<()> {
        let src = Source::new(file);
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
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(src.err(
                "hidden_size",
                format!(
                    "{} is not divisible by `num_attention_heads` {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        Ok(())
    }

    pub fn act(&self) -> Result<Activation> {
        activation(Source::new(Self::FILE), "hidden_act", &self.hidden_act)
    }
}
