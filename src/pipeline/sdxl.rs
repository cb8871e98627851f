//! SDXL's additions to the pipeline (diffusers' `StableDiffusionXLPipeline`): the second
//! tokenizer and text encoder (`CLIPTextModelWithProjection`); `encode_prompt`'s penultimate
//! hidden states of both encoders concatenated, with encoder 2's projected pooled
//! `text_embeds`; `force_zeros_for_empty_prompt`; and the micro-conditioning `add_time_ids`,
//! made into the U-Net's added embedding once, before the denoising loop. The SDXL refiner
//! (`StableDiffusionXLImg2ImgPipeline` with `requires_aesthetics_score`) encodes with
//! `text_encoder_2` alone and conditions on original size, crop and an aesthetic score.

use super::{load_tokenizer, AddedCond, Event, GenerateOptions, Pipeline, TextEncoder};
use crate::config::ClipTextConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::kernels::concat::concat;
use crate::lora::{keys::Component as LoraPart, LoraSet};
use crate::model_files::{component_weights, ModelFiles};
use crate::model_info::ModelInfo;
use crate::models::clip::ClipTextModelWithProjection;
use crate::tokenizer::Tokenizer;
use crate::weights::Loader;

/// The number of SDXL base's micro-conditioning ids: original size, crop, target size.
const TIME_IDS: usize = 6;
/// The refiner's: original size, crop, aesthetic score.
const REFINER_TIME_IDS: usize = 5;

/// SDXL's `tokenizer_2` and `text_encoder_2`.
pub struct TextEncoder2 {
    pub tokenizer: Tokenizer,
    pub model: ClipTextModelWithProjection,
}

/// Loads `text_encoder_2/` and `tokenizer_2/` of an SDXL folder (`info.sdxl`), checking that
/// the U-Net's `add_embedding` takes its projection plus six time ids (five for the refiner).
pub(super) fn load_text_encoder_2(
    ctx: &Context,
    files: &dyn ModelFiles,
    info: &ModelInfo,
    dtype: DType,
    loras: &LoraSet,
) -> Result<Option<TextEncoder2>> {
    let (Some(_), Some((dim, input))) = (&info.sdxl, info.unet.text_time()) else {
        return Ok(None);
    };
    const FILE: &str = "text_encoder_2/config.json";
    let cfg = ClipTextConfig::from_json_at(FILE, &files.require(FILE)?)?;
    let (n_ids, other) = match info.is_sdxl_refiner() {
        true => (
            REFINER_TIME_IDS,
            "model_index.json's requires_aesthetics_score is true: a refiner's",
        ),
        false => (
            TIME_IDS,
            "an SDXL refiner takes 5 ids with an aesthetic score: set",
        ),
    };
    let want = n_ids
        .checked_mul(dim)
        .and_then(|n| n.checked_add(cfg.projection_dim));
    if want != Some(input) {
        return Err(Error::config(
            "unet/config.json",
            "projection_class_embeddings_input_dim",
            format!(
                "is {input}, but text_encoder_2's projection_dim {} + {n_ids} time ids x \
                 addition_time_embed_dim {dim} = {} ({other} model_index.json's \
                 requires_aesthetics_score to match the U-Net)",
                cfg.projection_dim,
                want.map_or("overflow".into(), |w| w.to_string())
            ),
        ));
    }
    let weights = component_weights(files, "text_encoder_2")?;
    let patches = loras.patches(LoraPart::TextEncoder2, &weights)?;
    let loader = Loader::new(ctx, &weights, dtype).with_patches(&patches);
    let model = ClipTextModelWithProjection::load(&loader, &cfg)?;
    patches.finish()?;
    let tokenizer = load_tokenizer(files, "tokenizer_2", true, cfg.max_position_embeddings)?;
    Ok(Some(TextEncoder2 { tokenizer, model }))
}

/// The penultimate layer's hidden states (diffusers' `hidden_states[-2]`, no final norm).
fn penultimate(hidden_states: &[Tensor]) -> Result<&Tensor> {
    hidden_states
        .len()
        .checked_sub(2)
        .and_then(|i| hidden_states.get(i))
        .ok_or_else(|| Error::shape("StableDiffusionXLPipeline", "a text encoder without layers"))
}

impl Pipeline {
    /// One text's SDXL embeddings: `prompt_embeds` [1, L, D1 + D2] (both encoders'
    /// penultimate hidden states side by side; the refiner's: `text_encoder_2`'s alone) and
    /// the pooled `text_embeds` [1, projection_dim] of `text_encoder_2`. Warnings (unknown
    /// words, truncation) come from `tokenizer`.
    pub fn sdxl_prompt_embeds(
        &self,
        ctx: &Context,
        text: &str,
        what: &str,
        events: &mut dyn FnMut(Event),
    ) -> Result<(Tensor, Tensor)> {
        if let (TextEncoder::None, Some(te2)) = (&self.text_encoder, &self.text_encoder_2) {
            let ids = self.tokenize_with(&te2.tokenizer, text, what, events)?;
            let o = te2.model.forward(ctx, &ids, 1)?;
            return Ok((penultimate(&o.hidden_states)?.clone(), o.text_embeds));
        }
        let (TextEncoder::Clip(te), Some(te2)) = (&self.text_encoder, &self.text_encoder_2) else {
            return Err(Error::shape(
                "StableDiffusionXLPipeline",
                "needs a CLIPTextModel text_encoder and a text_encoder_2",
            ));
        };
        let ids = self.tokenize_with(&self.tokenizer, text, what, events)?;
        // The same words reach tokenizer_2: its warnings would repeat the first's.
        let ids_2 = self.tokenize_with(&te2.tokenizer, text, what, &mut |_| {})?;
        if ids.len() != ids_2.len() {
            return Err(Error::config(
                "tokenizer_2/tokenizer_config.json",
                "model_max_length",
                format!(
                    "is {} but tokenizer's is {}: SDXL joins both encoders token by token",
                    ids_2.len(),
                    ids.len()
                ),
            ));
        }
        let o1 = te.forward(ctx, &ids, 1)?;
        let o2 = te2.model.forward(ctx, &ids_2, 1)?;
        let h1 = penultimate(&o1.hidden_states)?;
        let h2 = penultimate(&o2.hidden_states)?;
        Ok((concat(ctx, &[h1, h2], 2)?, o2.text_embeds))
    }

    /// SDXL's `encode_prompt` and added conditioning: the embeddings `[negative × batch,
    /// prompt × batch]` (when guiding, `cfg`; else `[prompt × batch]`) and the U-Net's added
    /// conditioning input, the pooled embeddings and the time ids of those rows. With
    /// `force_zeros_for_empty_prompt`, an empty negative prompt is zeros (diffusers does this
    /// when no negative prompt is given).
    pub(super) fn encode_prompt_sdxl(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        cfg: bool,
        events: &mut dyn FnMut(Event),
    ) -> Result<(Tensor, AddedCond)> {
        let (pos, pos_pooled) = self.sdxl_prompt_embeds(ctx, &opts.prompt, "prompt", events)?;
        let zeros = self
            .info
            .sdxl
            .as_ref()
            .is_some_and(|s| s.force_zeros_for_empty_prompt)
            && opts.negative_prompt.is_empty();
        let neg = match (cfg, zeros) {
            (false, _) => None,
            (true, true) => Some((
                Tensor::full(ctx, pos.shape(), 0.0, self.dtype)?,
                Tensor::full(ctx, pos_pooled.shape(), 0.0, self.dtype)?,
            )),
            (true, false) => Some(self.sdxl_prompt_embeds(
                ctx,
                &opts.negative_prompt,
                "negative prompt",
                events,
            )?),
        };
        let (ids, neg_ids) = self.time_ids(opts);
        let b = opts.batch;
        let mut rows: Vec<(&Tensor, &Tensor, &[f32])> = Vec::new();
        if let Some((n, np)) = &neg {
            rows.extend(std::iter::repeat_n((n, np, &neg_ids[..]), b));
        }
        rows.extend(std::iter::repeat_n((&pos, &pos_pooled, &ids[..]), b));
        let context = concat(ctx, &rows.iter().map(|r| r.0).collect::<Vec<_>>(), 0)?;
        let pooled = concat(ctx, &rows.iter().map(|r| r.1).collect::<Vec<_>>(), 0)?;
        let time_ids: Vec<f32> = rows.iter().flat_map(|r| r.2.iter().copied()).collect();
        let added = AddedCond::TextTime {
            text_embeds: pooled,
            time_ids,
        };
        Ok((context, added))
    }

    /// The prompt's and the negative prompt's `add_time_ids`: the base's size conditioning, or
    /// the refiner's sizes and aesthetic scores.
    fn time_ids(&self, opts: &GenerateOptions) -> (Vec<f32>, Vec<f32>) {
        let (w, h) = (opts.width, opts.height);
        if self.info.is_sdxl_refiner() {
            let (a, n) = (opts.aesthetic_score, opts.negative_aesthetic_score);
            let (p, q) = opts.micro.refiner_time_ids(w, h, a, n);
            return (p.to_vec(), q.to_vec());
        }
        let (p, q) = opts.micro.time_ids(w, h);
        (p.to_vec(), q.to_vec())
    }
}
