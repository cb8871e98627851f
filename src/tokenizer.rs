//! The prompt tokenizer: a `tokenizer.json` (Hugging Face `tokenizers`) with the padding and
//! truncation that diffusers' pipelines ask for (`padding="max_length"`, `truncation=True`,
//! `max_length=tokenizer.model_max_length`).

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashSet;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, TruncationParams};

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    max_length: usize,
    pad_id: u32,
    /// The id the model gives a word it does not know (`model.unk_token` / `unk_id`).
    unk_id: Option<u32>,
    /// The added tokens marked special (`<pad>`, `</s>`, `<|endoftext|>`, ...).
    special: HashSet<u32>,
}

/// A vocabulary of at most this many entries (special tokens aside) is listed in
/// [`Tokenizer::unknown_words_warning`]; CLIP's 49408 are not.
pub const KNOWN_WORDS_LISTED: usize = 200;

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
        let special = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        let unk_id = unk_id(tokenizer_json, &inner);
        Ok(Tokenizer {
            inner,
            max_length,
            pad_id,
            unk_id,
            special,
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

    /// The words of `text` the model does not know, as typed (each once, in order): the spans
    /// whose token is the model's unknown token, and not a special token the tokenizer added
    /// (CLIP's unknown token is `<|endoftext|>`, which also closes every prompt). A byte-level
    /// BPE (CLIP) knows every byte, so it finds none.
    pub fn unknown_words(&self, text: &str) -> Result<Vec<String>> {
        let Some(unk) = self.unk_id else {
            return Ok(Vec::new());
        };
        let err = |e: tokenizers::Error| Error::Checkpoint(format!("tokenizing the prompt: {e}"));
        let mut tk = self.inner.clone();
        tk.with_padding(None);
        tk.with_truncation(None).map_err(err)?;
        let enc = tk.encode(text, true).map_err(err)?;
        let mut out: Vec<String> = Vec::new();
        for ((&id, &special), &(start, end)) in enc
            .get_ids()
            .iter()
            .zip(enc.get_special_tokens_mask())
            .zip(enc.get_offsets())
        {
            let Some(word) = text.get(start..end) else {
                continue;
            };
            // A special token typed as such ("<unk>") is not an unknown word.
            let typed_special = tk
                .token_to_id(word)
                .is_some_and(|i| self.special.contains(&i));
            let unknown = id == unk && special == 0 && !word.is_empty() && !typed_special;
            if unknown && !out.iter().any(|w| w == word) {
                out.push(word.to_string());
            }
        }
        Ok(out)
    }

    /// The vocabulary (special tokens aside), sorted, when it has at most `limit` entries: a
    /// model trained on a small closed language (hoa's shipped one knows 60 words) can say
    /// what it understands; none for a large one.
    pub fn known_words(&self, limit: usize) -> Option<Vec<String>> {
        let size = self.inner.get_vocab_size(false);
        if size.saturating_sub(self.special.len()) > limit {
            return None;
        }
        let mut words: Vec<String> = self
            .inner
            .get_vocab(false)
            .into_iter()
            .filter(|(_, id)| !self.special.contains(id) && Some(*id) != self.unk_id)
            .map(|(w, _)| w)
            .collect();
        words.sort();
        (words.len() <= limit).then_some(words)
    }

    /// The one warning the CLI, the page and the server print about `text` (`what` names it:
    /// "the prompt"): the words the model does not know and, for a small vocabulary, the words
    /// it does; or that the text is empty (the image is then unconditional; an empty negative
    /// prompt is the usual default, so call this for it only when it is not empty). None when
    /// the model knows every word.
    pub fn unknown_words_warning(&self, text: &str, what: &str) -> Result<Option<String>> {
        if text.trim().is_empty() {
            return Ok(Some(format!(
                "{what} is empty, so the image is unconditional (whatever the model draws \
                 when told nothing)"
            )));
        }
        let words = self.unknown_words(text)?;
        if words.is_empty() {
            return Ok(None);
        }
        let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
        let unk = self
            .unk_id
            .and_then(|id| self.inner.id_to_token(id))
            .unwrap_or_default();
        let mut msg = format!(
            "{what} has words this model does not know: {} (each is read as {unk})",
            quoted.join(", ")
        );
        if let Some(known) = self.known_words(KNOWN_WORDS_LISTED) {
            msg += &format!("; its vocabulary: {}", known.join(" "));
        }
        Ok(Some(msg))
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

/// The unknown-word id: `model.unk_token` (WordLevel, WordPiece, BPE) or `model.unk_id`
/// (Unigram); none when the model has no unknown token (a byte-level BPE without one). Read
/// with a typed pass that skips the vocabulary rather than building it as JSON values again.
fn unk_id(tokenizer_json: &[u8], inner: &tokenizers::Tokenizer) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct File {
        model: Model,
    }
    #[derive(serde::Deserialize)]
    struct Model {
        unk_token: Option<String>,
        unk_id: Option<u32>,
    }
    let model = serde_json::from_slice::<File>(tokenizer_json).ok()?.model;
    match model.unk_token {
        Some(name) => inner.token_to_id(&name),
        None => model.unk_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> Vec<u8> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The shipped model's WordLevel tokenizer: 60 words, `<unk>` for the rest.
    fn shipped() -> Tokenizer {
        let (json, config) = (
            read("weights/default/tokenizer/tokenizer.json"),
            read("weights/default/tokenizer/tokenizer_config.json"),
        );
        Tokenizer::from_bytes(&json, Some(&config), 80).unwrap()
    }

    /// CLIP byte-level BPEs (the tiny fixture vocabulary: every byte, a few merges): built
    /// from vocab.json + merges.txt, and as transformers saved it (pipeline_tiny).
    fn clips() -> [Tokenizer; 2] {
        let json = clip_tokenizer_json(
            &read("tests/fixtures/clip_tokenizer_files/vocab.json"),
            &read("tests/fixtures/clip_tokenizer_files/merges.txt"),
        )
        .unwrap();
        let config = br#"{"pad_token": "<|endoftext|>", "model_max_length": 77}"#;
        let saved = "tests/fixtures/pipeline_tiny/tokenizer";
        [
            Tokenizer::from_bytes(&json, Some(config), 77).unwrap(),
            Tokenizer::from_bytes(
                &read(&format!("{saved}/tokenizer.json")),
                Some(&read(&format!("{saved}/tokenizer_config.json"))),
                77,
            )
            .unwrap(),
        ]
    }

    #[test]
    fn unknown_words_are_the_spans_read_as_unk() {
        let t = shipped();
        for (prompt, want) in [
            ("two green circles", vec!["circles"]),
            ("A Cat on a red Mat.", vec!["Cat", "Mat"]),
            ("một con mèo", vec!["một", "con", "mèo"]),
            ("一只猫 star", vec!["一只猫"]),
            ("a 🐱 star, a 🐱", vec!["🐱"]),
            ("a red star on a gray background", vec![]),
            // Typed special tokens are not words the model lacks; nor is the empty prompt.
            ("a <unk> star</s>", vec![]),
            ("", vec![]),
        ] {
            assert_eq!(t.unknown_words(prompt).unwrap(), want, "{prompt:?}");
        }
    }

    #[test]
    fn a_small_vocabulary_is_listed_in_the_warning() {
        let t = shipped();
        let known = t.known_words(KNOWN_WORDS_LISTED).unwrap();
        assert_eq!(known.len(), 60, "{known:?}");
        assert!(known.contains(&"star".to_string()) && known.contains(&",".to_string()));
        assert!(!known.iter().any(|w| w.starts_with('<')), "{known:?}");
        assert!(known.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert_eq!(t.known_words(59), None);

        let w = t
            .unknown_words_warning("a cat", "the prompt")
            .unwrap()
            .unwrap();
        assert!(
            w.starts_with(
                "the prompt has words this model does not know: \"cat\" (each is read as <unk>)"
            ),
            "{w}"
        );
        assert!(
            w.ends_with(&format!("its vocabulary: {}", known.join(" "))),
            "{w}"
        );
        assert_eq!(
            t.unknown_words_warning("a red star.", "the prompt")
                .unwrap(),
            None
        );
        let w = t.unknown_words_warning(" ", "the prompt").unwrap().unwrap();
        assert!(w.starts_with("the prompt is empty"), "{w}");
    }

    /// CLIP's byte-level BPE spells any text from bytes, so nothing is unknown; its unknown
    /// token `<|endoftext|>` also closes every prompt, which must not be reported.
    #[test]
    fn a_byte_level_bpe_knows_every_word() {
        for t in clips() {
            assert!(
                t.unk_id.is_some(),
                "CLIP's tokenizer.json names an unk_token"
            );
            for prompt in [
                "a cat",
                "một con mèo",
                "一只猫",
                "a 🐱 star",
                "<|endoftext|> x",
                "",
            ] {
                let none: Vec<String> = Vec::new();
                assert_eq!(t.unknown_words(prompt).unwrap(), none, "{prompt:?}");
            }
            assert_eq!(
                t.unknown_words_warning("a 🐱 cat", "the prompt").unwrap(),
                None
            );
            assert_eq!(t.known_words(KNOWN_WORDS_LISTED), None, "562 entries");
            assert!(t.known_words(1000).is_some_and(|w| w.len() == 560));
            let w = t.unknown_words_warning("", "the prompt").unwrap().unwrap();
            assert!(w.starts_with("the prompt is empty"), "{w}");
        }
    }
}
