//! transformers' `T5Config`: the encoder half `T5EncoderModel` reads, and the decoder, head and
//! special tokens `T5ForConditionalGeneration` adds.

use super::activation;
use super::parse::{parse_valid, Class, Source, MAX_DIM, MAX_LAYERS, MAX_VOCAB};
use crate::activation::Activation;
use crate::error::Result;
use serde::Deserialize;

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
    /// Decoder layers; `null` / absent = `num_layers` (transformers' "symmetry").
    pub num_decoder_layers: Option<usize>,
    pub decoder_start_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// One id or a list (transformers accepts both).
    pub eos_token_id: Option<TokenIds>,
    /// transformers 5 writes it; older configs leave it out and mean `tie_word_embeddings`.
    pub scale_decoder_outputs: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
}

/// `eos_token_id`: `1` or `[1, 5]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
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
            num_decoder_layers: None,
            decoder_start_token_id: None,
            pad_token_id: Some(0),
            eos_token_id: Some(TokenIds::One(1)),
            scale_decoder_outputs: None,
            tie_word_embeddings: None,
        }
    }
}

impl T5Config {
    /// Where a diffusers folder keeps it.
    pub const FILE: &'static str = "text_encoder/config.json";
    /// The `architectures` whose encoder `T5EncoderModel` loads (same weight names).
    const CLASS: Class =
        Class::transformers(&["T5EncoderModel", "T5ForConditionalGeneration", "T5Model"]);

    pub fn from_json(json: &[u8]) -> Result<Self> {
        parse_valid(Self::FILE, json, &Self::CLASS, Self::validate)
    }

    /// Refuses sizes that are zero or absurd and relative-position buckets the bucketing
    /// cannot use, naming the field.
    pub fn validate(&self) -> Result<()> {
        let src = Source::new(Self::FILE);
        self.feed_forward()?;
        src.positive("vocab_size", self.vocab_size, MAX_VOCAB)?;
        for (field, v) in [
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ] {
            src.positive(field, v, MAX_DIM)?;
        }
        src.positive("num_layers", self.num_layers, MAX_LAYERS)?;
        if let Some(n) = self.num_decoder_layers {
            src.positive("num_decoder_layers", n, MAX_LAYERS)?;
        }
        src.eps("layer_norm_epsilon", self.layer_norm_epsilon)?;
        // Bidirectional bucketing: half the buckets per direction, half of those exact, the
        // rest logarithmic up to max_distance.
        let buckets = self.relative_attention_num_buckets;
        src.at_most("relative_attention_num_buckets", buckets, MAX_DIM)?;
        if buckets < 4 {
            return Err(src.err(
                "relative_attention_num_buckets",
                format!("= {buckets}: bidirectional bucketing needs at least 4"),
            ));
        }
        if self.relative_attention_max_distance <= buckets / 4 {
            return Err(src.err(
                "relative_attention_max_distance",
                format!(
                    "= {} must exceed the {} exact buckets (`relative_attention_num_buckets` / 4)",
                    self.relative_attention_max_distance,
                    buckets / 4
                ),
            ));
        }
        Ok(())
    }

    /// The decoder's layer count.
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Whether the decoder output is scaled by `d_model^-0.5` before the LM head: transformers
    /// 5 reads `scale_decoder_outputs`, which it derives from `tie_word_embeddings` (default
    /// true; T5 v1.1 / flan-T5 configs say false) when a config predates it.
    pub fn scale_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings != Some(false))
    }

    /// (activation, gated) as transformers derives them: "gated-gelu" means gelu_new (tanh).
    pub fn feed_forward(&self) -> Result<(Activation, bool)> {
        let src = Source::new(Self::FILE);
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [a] => (false, *a),
            ["gated", a] => (true, *a),
            _ => {
                return Err(src.err(
                    "feed_forward_proj",
                    format!("= {:?} is not `ACT` or `gated-ACT`", self.feed_forward_proj),
                ))
            }
        };
        let act = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new"
        } else {
            act
        };
        Ok((activation(src, "feed_forward_proj", act)?, gated))
    }
}
