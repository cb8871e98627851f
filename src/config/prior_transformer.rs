//! diffusers' `PriorTransformer` config (`models/transformers/prior_transformer.py`): unCLIP's
//! prior, text embedding to CLIP image embedding (Karlo, stable unCLIP, Kandinsky).

use super::parse::{parse_valid, Class, Source, MAX_DIM, MAX_LAYERS};
use crate::error::Result;
use serde::Deserialize;

/// diffusers `PriorTransformer`'s config, with its defaults (Karlo's prior).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct PriorTransformerConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub num_layers: usize,
    pub embedding_dim: usize,
    /// The text tokens (`encoder_hidden_states`' length).
    pub num_embeddings: usize,
    /// Tokens after the text: projected embedding, time, the image embedding and `prd`.
    pub additional_embeddings: usize,
    pub time_embed_act_fn: String,
    /// `"layer"`: a LayerNorm before the transformer blocks (Kandinsky).
    pub norm_in_type: Option<String>,
    /// `"layer"`: a LayerNorm on `proj_embedding` (Kandinsky).
    pub embedding_proj_norm_type: Option<String>,
    /// `"linear"`: `encoder_hidden_states_proj`.
    pub encoder_hid_proj_type: Option<String>,
    /// `"prd"`: a learned token appended last, whose output is the prediction.
    pub added_emb_type: Option<String>,
    pub time_embed_dim: Option<usize>,
    pub embedding_proj_dim: Option<usize>,
    pub clip_embed_dim: Option<usize>,
}

impl Default for PriorTransformerConfig {
    fn default() -> Self {
        PriorTransformerConfig {
            num_attention_heads: 32,
            attention_head_dim: 64,
            num_layers: 20,
            embedding_dim: 768,
            num_embeddings: 77,
            additional_embeddings: 4,
            time_embed_act_fn: "silu".into(),
            norm_in_type: None,
            embedding_proj_norm_type: None,
            encoder_hid_proj_type: Some("linear".into()),
            added_emb_type: Some("prd".into()),
            time_embed_dim: None,
            embedding_proj_dim: None,
            clip_embed_dim: None,
        }
    }
}

impl PriorTransformerConfig {
    pub const WHAT: &'static str = "PriorTransformer";
    const CLASS: Class = Class::diffusers(&[Self::WHAT]);
    /// Where a diffusers folder keeps it.
    pub const FILE: &'static str = "prior/config.json";

    pub fn from_json(json: &[u8]) -> Result<Self> {
        Self::from_json_at(Self::FILE, json)
    }

    /// [`Self::from_json`] for a config at `file`, which errors name.
    pub fn from_json_at(file: &str, json: &[u8]) -> Result<Self> {
        parse_valid(file, json, &Self::CLASS, |c: &Self| {
            c.validate_in(Source::new(file))
        })
    }

    pub fn validate(&self) -> Result<()> {
        self.validate_in(Source::new(Self::FILE))
    }

    /// Refuses the switches diffusers itself rejects and sizes that are zero or absurd.
    pub fn validate_in(&self, src: Source) -> Result<()> {
        src.positive("num_attention_heads", self.num_attention_heads, MAX_DIM)?;
        src.positive("attention_head_dim", self.attention_head_dim, MAX_DIM)?;
        src.positive("num_layers", self.num_layers, MAX_LAYERS)?;
        src.positive("embedding_dim", self.embedding_dim, MAX_DIM)?;
        src.at_most("num_embeddings", self.num_embeddings, MAX_DIM)?;
        src.at_most("additional_embeddings", self.additional_embeddings, MAX_DIM)?;
        src.positive(
            "num_attention_heads * attention_head_dim",
            self.inner_dim(),
            MAX_DIM,
        )?;
        for (field, v) in [
            ("time_embed_dim", self.time_embed_dim),
            ("embedding_proj_dim", self.embedding_proj_dim),
            ("clip_embed_dim", self.clip_embed_dim),
        ] {
            if let Some(v) = v {
                src.positive(field, v, MAX_DIM)?;
            }
        }
        src.only("time_embed_act_fn", &self.time_embed_act_fn, "silu")?;
        let one_of = |field: &str, v: &Option<String>, want: &str| match v.as_deref() {
            None => Ok(()),
            Some(x) if x == want => Ok(()),
            Some(x) => Err(src.refuse(field, format!("= {x:?} (known: null, {want:?})"))),
        };
        one_of("norm_in_type", &self.norm_in_type, "layer")?;
        one_of(
            "embedding_proj_norm_type",
            &self.embedding_proj_norm_type,
            "layer",
        )?;
        one_of(
            "encoder_hid_proj_type",
            &self.encoder_hid_proj_type,
            "linear",
        )?;
        one_of("added_emb_type", &self.added_emb_type, "prd")
    }

    /// `num_attention_heads * attention_head_dim` (saturating: validated against MAX_DIM).
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads
            .saturating_mul(self.attention_head_dim)
    }

    pub fn time_embed_dim(&self) -> usize {
        self.time_embed_dim.unwrap_or(self.inner_dim())
    }

    pub fn embedding_proj_dim(&self) -> usize {
        self.embedding_proj_dim.unwrap_or(self.embedding_dim)
    }

    pub fn clip_embed_dim(&self) -> usize {
        self.clip_embed_dim.unwrap_or(self.embedding_dim)
    }

    /// The sequence the blocks see: the text tokens plus the additional ones.
    pub fn sequence_len(&self) -> usize {
        self.num_embeddings
            .saturating_add(self.additional_embeddings)
    }
}
