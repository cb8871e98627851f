//! transformers' `GenerationConfig` (`generation_config.json`): the fields greedy and beam
//! search read. Sampling and the logits processors hoa does not run are refused by name, so a
//! rewriter never silently decodes differently from transformers.

use crate::error::{Error, Result};
use serde_json::Value;

const FILE: &str = "generation_config.json";

/// `early_stopping`: `true`, `false` or `"never"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop a batch item as soon as `num_beams` finished hypotheses exist.
    True,
    /// transformers' default heuristic: stop when no running beam can beat the worst finished
    /// one at the current length.
    #[default]
    False,
    /// The canonical beam search: stop only when no running beam can improve at any length.
    Never,
}

/// What `generate` reads. `None` special tokens come from the model's config.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Total decoder length including `decoder_start_token_id` (transformers' default 20).
    pub max_length: usize,
    /// When set, overrides `max_length` as `max_new_tokens + 1`.
    pub max_new_tokens: Option<usize>,
    pub num_beams: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    pub decoder_start_token_id: Option<u32>,
    pub eos_token_id: Option<Vec<u32>>,
    pub pad_token_id: Option<u32>,
    /// `NoRepeatNGramLogitsProcessor`: no n-gram of this size occurs twice (0 = off).
    pub no_repeat_ngram_size: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_length: 20,
            max_new_tokens: None,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            decoder_start_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            no_repeat_ngram_size: 0,
        }
    }
}

/// Settings whose transformers default hoa matches and whose other values it does not run.
const UNSUPPORTED: [(&str, &str); 11] = [
    ("do_sample", "false"),
    ("num_return_sequences", "1"),
    ("num_beam_groups", "1"),
    ("min_length", "0"),
    ("min_new_tokens", "null"),
    ("repetition_penalty", "1.0"),
    ("encoder_no_repeat_ngram_size", "0"),
    ("forced_bos_token_id", "null"),
    ("forced_eos_token_id", "null"),
    ("bad_words_ids", "null"),
    ("suppress_tokens", "null"),
];

fn err(field: &str, why: impl Into<String>) -> Error {
    Error::config(FILE, field, why)
}

fn usize_field(v: &Value, field: &str) -> Result<Option<usize>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| err(field, format!("= {x} is not a non-negative integer"))),
    }
}

fn id_field(v: &Value, field: &str) -> Result<Option<u32>> {
    usize_field(v, field)?
        .map(|n| u32::try_from(n).map_err(|_| err(field, format!("= {n} is not a token id"))))
        .transpose()
}

impl GenerationConfig {
    /// Parses `generation_config.json`, refusing values hoa does not implement.
    pub fn from_json(json: &[u8]) -> Result<GenerationConfig> {
        let v: Value =
            serde_json::from_slice(json).map_err(|e| Error::Checkpoint(format!("{FILE}: {e}")))?;
        if !v.is_object() {
            return Err(Error::Checkpoint(format!("{FILE}: expected a JSON object")));
        }
        for (field, default) in UNSUPPORTED {
            let ok = match v.get(field) {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => !b && default == "false",
                Some(Value::Number(n)) => n.as_f64() == default.parse::<f64>().ok(),
                Some(Value::Array(a)) => a.is_empty() && default == "null",
                Some(_) => false,
            };
            if !ok {
                return Err(err(
                    field,
                    format!(
                        "= {} is not implemented by hoa's generate (only {default})",
                        v[field]
                    ),
                ));
            }
        }
        let mut c = GenerationConfig::default();
        if let Some(n) = usize_field(&v, "max_length")? {
            c.max_length = n;
        }
        c.max_new_tokens = usize_field(&v, "max_new_tokens")?;
        c.no_repeat_ngram_size = usize_field(&v, "no_repeat_ngram_size")?.unwrap_or(0);
        if let Some(n) = usize_field(&v, "num_beams")? {
            c.num_beams = n;
        }
        match v.get("length_penalty") {
            None | Some(Value::Null) => {}
            Some(x) => {
                c.length_penalty = x
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| err("length_penalty", format!("= {x} is not a number")))?
                    as f32
            }
        }
        c.early_stopping = match v.get("early_stopping") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => EarlyStopping::False,
            Some(Value::Bool(true)) => EarlyStopping::True,
            Some(Value::String(s)) if s == "never" => EarlyStopping::Never,
            Some(x) => {
                return Err(err(
                    "early_stopping",
                    format!("= {x}: expected true, false or \"never\""),
                ))
            }
        };
        c.decoder_start_token_id = id_field(&v, "decoder_start_token_id")?;
        c.pad_token_id = id_field(&v, "pad_token_id")?;
        c.eos_token_id = match v.get("eos_token_id") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| {
                        x.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| {
                                err("eos_token_id", format!("holds {x}, not a token id"))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(_) => id_field(&v, "eos_token_id")?.map(|i| vec![i]),
        };
        Ok(c)
    }

    /// The decoder length `generate` stops at: `max_new_tokens + 1` (the start token) when
    /// set, else `max_length`.
    pub fn total_length(&self) -> usize {
        self.max_new_tokens
            .map_or(self.max_length, |n| n.saturating_add(1))
    }
}
