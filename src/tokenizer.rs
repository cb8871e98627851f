//! The prompt tokenizer: a `tokenizer.json` (Hugging Face `tokenizers`) with the padding and
//! truncation that diffusers' pipelines ask for (`padding="max_length"`, `truncation=True`,
//! `max_length=tokenizer.model_max_length`).

use crate::error::{Error, Result};
use serde_json::Value;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, TruncationParams};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    max_length: usize,
    pad_id: u32,
}

/// One tokenized prompt, always `max_length` ids long.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// Tokens cut off the end because the prompt was longer than the encoder's context.
    pub dropped: usize,
    /// The text that was cut off (for the warning), as diffusers prints it.
    pub dropped_text: String,
}

fn token_name(v: &Value) -> Option<&str> {
    // `"pad_token": "<pad>"` or `{"content": "<pad>", ...}` (an AddedToken).
    v.as_str().or_else(|| v.get("content")?.as_str())
}

impl Tokenizer {
    /// `tokenizer_json` is `tokenizer/tokenizer.json`; `config_json` the optional
    /// `tokenizer/tokenizer_config.json` (`model_max_length`, `pad_token`, `padding_side`);
    /// `default_max_length` is used when the config has no usable `model_max_length` (the
    /// text encoder's own context length).
    pub fn from_bytes(
        tokenizer_json: &[u8],
        config_json: Option<&[u8]>,
        default_max_length: usize,
    ) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| {
            Error::Checkpoint(format!("tokenizer/tokenizer.json: cannot be read ({e})"))
        })?;
        let config: Value = match config_json {
            Some(b) => serde_json::from_slice(b)
                .map_err(|e| Error::Checkpoint(format!("tokenizer/tokenizer_config.json: {e}")))?,
            None => Value::Null,
        };
        // transformers writes a huge sentinel (1e30) when the length is unknown.
        let max_length = config
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|m| (1.0..=1e6).contains(m))
            .map(|m| m as usize)
            .unwrap_or(default_max_length);
        if config.get("padding_side").and_then(Value::as_str) == Some("left") {
            return Err(Error::Checkpoint(
                "tokenizer/tokenizer_config.json: padding_side \"left\" is not supported (the \
                 text encoders here expect prompts padded on the right)"
                    .into(),
            ));
        }
        let pad_name = ["pad_token", "eos_token"]
            .iter()
            .find_map(|k| config.get(*k).and_then(token_name).map(str::to_string))
            .or_else(|| inner.get_padding().map(|p| p.pad_token.clone()));
        let pad_id =
            match &pad_name {
                Some(name) => inner.token_to_id(name).ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "tokenizer: the pad token `{name}` is not in the vocabulary"
                    ))
                })?,
                None => return Err(Error::Checkpoint(
                    "tokenizer: no pad token (set `pad_token` in tokenizer/tokenizer_config.json)"
                        .into(),
                )),
            };
        Ok(Tokenizer {
            inner,
            max_length,
            pad_id,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenizes `text` to exactly `max_length` ids: special tokens added, truncated (keeping
    /// the closing special tokens, as `truncation=True` does), then padded on the right.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let err = |e: tokenizers::Error| Error::Checkpoint(format!("tokenizing the prompt: {e}"));
        let mut tk = self.inner.clone();
        tk.with_padding(None);
        tk.with_truncation(None).map_err(err)?;
        let full = tk.encode(text, true).map_err(err)?;
        tk.with_truncation(Some(TruncationParams {
            max_length: self.max_length,
            ..Default::default()
        }))
        .map_err(err)?;
        let pad_token = tk.id_to_token(self.pad_id).unwrap_or_default();
        tk.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(self.max_length),
            direction: PaddingDirection::Right,
            pad_id: self.pad_id,
            pad_token,
            ..Default::default()
        }));
        let enc = tk.encode(text, true).map_err(err)?;
        let ids = enc.get_ids().to_vec();
        if ids.len() != self.max_length {
            return Err(Error::Checkpoint(format!(
                "tokenizer gave {} ids, expected {}",
                ids.len(),
                self.max_length
            )));
        }
        let dropped = full.len().saturating_sub(self.max_length);
        let dropped_text = if dropped > 0 {
            // The words of the untruncated encoding past what survived.
            let kept: Vec<u32> = enc
                .get_ids()
                .iter()
                .zip(enc.get_special_tokens_mask())
                .filter(|(_, &s)| s == 0)
                .map(|(&i, _)| i)
                .collect();
            let all: Vec<u32> = full
                .get_ids()
                .iter()
                .zip(full.get_special_tokens_mask())
                .filter(|(_, &s)| s == 0)
                .map(|(&i, _)| i)
                .collect();
            tk.decode(&all[kept.len().min(all.len())..], true)
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Tokens {
            ids,
            dropped,
            dropped_text,
        })
    }
}

/// The `tokenizer.json` that transformers' `CLIPTokenizer` builds from the `vocab.json` and
/// `merges.txt` that Stable Diffusion 1.x/2.x repositories ship (they have no
/// tokenizer.json): byte-level BPE with `</w>` word ends, NFC + whitespace + lowercase
/// normalization, CLIP's split regex, `<|startoftext|> ... <|endoftext|>` around the ids.
pub fn clip_tokenizer_json(vocab_json: &[u8], merges_txt: &[u8]) -> Result<Vec<u8>> {
    let vocab: serde_json::Map<String, Value> = serde_json::from_slice(vocab_json)
        .map_err(|e| Error::Checkpoint(format!("tokenizer/vocab.json: {e}")))?;
    let text = std::str::from_utf8(merges_txt)
        .map_err(|e| Error::Checkpoint(format!("tokenizer/merges.txt: {e}")))?;
    let merges: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .collect();
    let id = |t: &str| -> Result<u64> {
        vocab.get(t).and_then(Value::as_u64).ok_or_else(|| {
            Error::Checkpoint(format!(
                "tokenizer/vocab.json has no `{t}` (not a CLIP vocabulary)"
            ))
        })
    };
    let (bos, eos) = ("<|startoftext|>", "<|endoftext|>");
    let (bos_id, eos_id) = (id(bos)?, id(eos)?);
    let added = |content: &str, id: u64| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(bos, bos_id), added(eos, eos_id)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos, eos_id],
            "cls": [bos, bos_id], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": eos,
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    serde_json::to_vec(&json).map_err(|e| Error::Checkpoint(format!("CLIP tokenizer: {e}")))
}
