//! Stage 1: the prompt to embeddings (diffusers' `encode_prompt`): tokenize the prompt and the
//! negative prompt, stack them `[negative × batch, prompt × batch]` when guiding, and run the
//! text encoder named by `model_index.json` (with the padding mask when `hoa.json` asks for it).

use super::{Event, GenerateOptions, Pipeline};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::models::clip::ClipTextModel;
use crate::models::t5::T5EncoderModel;
use crate::tokenizer::Tokenizer;

/// The prompt encoder named by `model_index.json`'s `text_encoder`.
pub enum TextEncoder {
    Clip(ClipTextModel),
    T5(T5EncoderModel),
    /// None (the SDXL refiner: diffusers' `text_encoder=None`, only `text_encoder_2`).
    None,
}

impl TextEncoder {
    /// `last_hidden_state` [batch, L, D] for `batch` sequences of token ids, with T5's
    /// `attention_mask` (1 = token, 0 = padding) when given.
    pub fn encode(
        &self,
        ctx: &Context,
        ids: &[u32],
        batch: usize,
        attention_mask: Option<&[u32]>,
    ) -> Result<Tensor> {
        Ok(match (self, attention_mask) {
            (TextEncoder::Clip(m), None) => m.forward(ctx, ids, batch)?.last_hidden_state,
            (TextEncoder::Clip(_), Some(_)) => {
                return Err(Error::config(
                    "hoa.json",
                    "text_encoder_attention_mask",
                    "applies to a T5EncoderModel text encoder; this folder's is CLIPTextModel \
                     (remove the key)",
                ))
            }
            (TextEncoder::T5(m), mask) => {
                m.forward_masked(ctx, ids, batch, mask)?.last_hidden_state
            }
            (TextEncoder::None, _) => {
                return Err(Error::shape(
                    "pipeline",
                    "this model has no text_encoder (an SDXL refiner encodes with \
                     text_encoder_2 only)",
                ))
            }
        })
    }
}

impl Pipeline {
    /// `text`'s ids, warning about words the model does not know (they would reach the encoder
    /// as `<unk>`) and about truncation. An empty negative prompt is the usual, not a warning.
    fn tokenize(&self, text: &str, what: &str, events: &mut dyn FnMut(Event)) -> Result<Vec<u32>> {
        self.tokenize_with(&self.tokenizer, text, what, events)
    }

    /// [`Self::tokenize`] with another of the folder's tokenizers (SDXL's `tokenizer_2`).
    pub(super) fn tokenize_with(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        what: &str,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<u32>> {
        if !(text.is_empty() && what != "prompt") {
            let the = format!("the {what}");
            if let Some(w) = tokenizer.unknown_words_warning(text, &the)? {
                events(Event::Warning(w));
            }
        }
        let t = tokenizer.encode(text)?;
        if t.dropped > 0 {
            events(Event::Warning(format!(
                "the {what} is longer than the text encoder's {} tokens; {} tokens were \
                 dropped: \"{}\"",
                tokenizer.max_length(),
                t.dropped,
                t.dropped_text
            )));
        }
        Ok(t.ids)
    }

    /// `[negative × batch, prompt × batch]` embeddings when guiding (`cfg`), else
    /// `[prompt × batch]`.
    pub(super) fn encode_prompt(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        cfg: bool,
        events: &mut dyn FnMut(Event),
    ) -> Result<Tensor> {
        // A variation's prompt is optional: empty is its default, not a warning.
        let what = match opts.variation {
            Some(_) => "prompt of the variation",
            None => "prompt",
        };
        let pos = self.tokenize(&opts.prompt, what, events)?;
        let mut ids = Vec::new();
        if cfg {
            let neg = self.tokenize(&opts.negative_prompt, "negative prompt", events)?;
            for _ in 0..opts.batch {
                ids.extend_from_slice(&neg);
            }
        }
        for _ in 0..opts.batch {
            ids.extend_from_slice(&pos);
        }
        let n = if cfg { 2 * opts.batch } else { opts.batch };
        // The tokenizer's attention mask: its pad token only ever pads (T5's `<pad>` is a
        // special token no text produces).
        let mask: Option<Vec<u32>> = (self.info.defaults.text_encoder_attention_mask == Some(true))
            .then(|| {
                let pad = self.tokenizer.pad_id();
                ids.iter().map(|&i| u32::from(i != pad)).collect()
            });
        self.text_encoder.encode(ctx, &ids, n, mask.as_deref())
    }
}
