//! Model configs: serde structs with the upstream `config.json` field names and defaults
//! (transformers' `CLIPTextConfig`, `T5Config`). Unknown fields are ignored; values hoa cannot
//! run are refused with a message naming the field.

use crate::error::{Error, Result};
use crate::kernels::Activation;
use serde::Deserialize;

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &[u8]) -> Result<T> {
    serde_json::from_slice(json).map_err(|e| Error::Checkpoint(format!("{what} config.json: {e}")))
}

fn activation(what: &str, field: &str, name: &str) -> Result<Activation> {
    Activation::from_name(name).ok_or_else(|| {
        Error::Checkpoint(format!(
            "{what} config.json: `{field}` = {name:?} is not supported (known: gelu, gelu_new, \
             gelu_pytorch_tanh, quick_gelu, silu, relu)"
        ))
    })
}

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
        }
    }
}

impl ClipTextConfig {
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let c: ClipTextConfig = parse("CLIPTextModel", json)?;
        c.act()?;
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(Error::Checkpoint(format!(
                "CLIPTextModel config.json: `hidden_size` {} is not divisible by `num_attention_heads` {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        Ok(c)
    }

    pub fn act(&self) -> Result<Activation> {
        activation("CLIPTextModel", "hidden_act", &self.hidden_act)
    }
}

/// transformers `T5Config` (the encoder half is what `T5EncoderModel` uses).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    fn default() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
        }
    }
}

impl T5Config {
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let c: T5Config = parse("T5EncoderModel", json)?;
        c.feed_forward()?;
        Ok(c)
    }

    /// (activation, gated) as transformers derives them: "gated-gelu" means gelu_new (tanh).
    pub fn feed_forward(&self) -> Result<(Activation, bool)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [a] => (false, *a),
            ["gated", a] => (true, *a),
            _ => {
                return Err(Error::Checkpoint(format!(
                    "T5EncoderModel config.json: `feed_forward_proj` = {:?} is not `ACT` or `gated-ACT`",
                    self.feed_forward_proj
                )))
            }
        };
        let act = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new"
        } else {
            act
        };
        Ok((
            activation("T5EncoderModel", "feed_forward_proj", act)?,
            gated,
        ))
    }
}
