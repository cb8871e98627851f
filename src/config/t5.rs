//! transformers' `T5Config` (the encoder half, what `T5EncoderModel` reads).

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
