//! CLIP as an application (issue 29): a transformers `CLIPModel` folder (`config.json`,
//! `model.safetensors`, the tokenizer files, `preprocessor_config.json`) loaded with its
//! tokenizer and image processor, and what `hoa clip` does with it: zero-shot classification
//! (softmax over `logit_scale.exp()` x cosine, as `CLIPModel.logits_per_image`), an embedding
//! index for search ([`index`]) and CLIP score. The CLI, the page and the server call these;
//! they only read files and print.

pub mod image_processor;
pub mod index;
pub mod resample;

use crate::config::ClipConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::image_io::RgbImage;
use crate::model_files::ModelFiles;
use crate::models::clip_model::{self, ClipModel};
use crate::tokenizer::Tokenizer;
use crate::weights::{Loader, Weights};
pub use image_processor::{decode_image, ClipImageProcessor};

/// Images per vision-tower batch (bounds activation memory at 224x224 and above).
const IMAGE_BATCH: usize = 8;
/// Prompts per text-tower batch.
const TEXT_BATCH: usize = 32;

/// A loaded `CLIPModel` with its tokenizer and image processor.
pub struct Clip {
    pub model: ClipModel,
    pub tokenizer: Tokenizer,
    pub processor: ClipImageProcessor,
    dtype: DType,
}

impl Clip {
    /// Loads a transformers `CLIPModel` folder. Errors name the file: a config of another model
    /// type, a missing tokenizer or `preprocessor_config.json`, weights that do not match.
    pub fn load(ctx: &Context, files: &dyn ModelFiles, dtype: DType) -> Result<Clip> {
        let need = |path: &str, why: &str| {
            files.read(path)?.ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{}: missing `{path}` ({why}; a CLIP model folder is what transformers' \
                     CLIPModel.save_pretrained writes, plus its processor's files)",
                    files.describe()
                ))
            })
        };
        let config = ClipConfig::from_json(&need("config.json", "the CLIPModel config")?)?;
        let processor = ClipImageProcessor::from_json(&need(
            "preprocessor_config.json",
            "the image preprocessing",
        )?)?;
        let tokenizer = load_tokenizer(files, config.text_config.max_position_embeddings)?;
        let weights = match files.read("model.safetensors")? {
            Some(b) => Weights::from_bytes("model.safetensors", b)?,
            None => {
                let index = need("model.safetensors.index.json", "the weights")?;
                Weights::from_index(&index, |shard| need(shard, "a weight shard"))?
            }
        };
        let model = ClipModel::load(&Loader::new(ctx, &weights, dtype), &config)?;
        let size = config.vision_config.image_size;
        if processor.output_size().is_some_and(|s| s != (size, size)) {
            return Err(Error::config(
                "preprocessor_config.json",
                "crop_size",
                format!(
                    "does not give the model's {size}x{size} images (vision_config.image_size)"
                ),
            ));
        }
        Ok(Clip {
            model,
            tokenizer,
            processor,
            dtype,
        })
    }

    /// The joint embedding's width (`projection_dim`).
    pub fn dim(&self) -> usize {
        self.model.config.projection_dim
    }

    /// `CLIPModel`'s `logit_scale.exp()`.
    pub fn logit_scale(&self) -> f32 {
        self.model.logit_scale_exp()
    }

    /// The `pixel_values` of `images` as the model's processor makes them: [n, 3, S, S].
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<(Vec<f32>, usize)> {
        let mut out = Vec::new();
        let mut side = 0;
        for img in images {
            let (v, (h, w)) = self.processor.preprocess(img)?;
            let s = self.model.config.vision_config.image_size;
            if (h, w) != (s, s) {
                return Err(Error::config(
                    "preprocessor_config.json",
                    "size",
                    format!("gives {w}x{h} images; the model takes {s}x{s}"),
                ));
            }
            side = s;
            out.extend(v);
        }
        Ok((out, side))
    }

    /// L2-normalized image embeddings, [n, dim] row-major.
    pub async fn embed_images(&self, ctx: &Context, images: &[RgbImage]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(images.len() * self.dim());
        for chunk in images.chunks(IMAGE_BATCH) {
            let (px, s) = self.pixel_values(chunk)?;
            let t = Tensor::from_f32(ctx, &px, &[chunk.len(), 3, s, s], self.dtype)?;
            let e = self.model.get_image_features(ctx, &t)?.read(ctx).await?;
            out.extend(clip_model::normalize(&e, self.dim()));
        }
        Ok(out)
    }

    /// The token ids of `text` (padded to the context) and, when it was too long, the words
    /// cut off, for a warning.
    pub fn tokenize(&self, text: &str) -> Result<(Vec<u32>, Option<String>)> {
        let t = self.tokenizer.encode(text)?;
        Ok((t.ids, (t.dropped > 0).then_some(t.dropped_text)))
    }

    /// L2-normalized text embeddings, [n, dim] row-major.
    pub async fn embed_texts(&self, ctx: &Context, texts: &[String]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(texts.len() * self.dim());
        for chunk in texts.chunks(TEXT_BATCH) {
            let mut ids = Vec::new();
            for t in chunk {
                ids.extend(self.tokenize(t)?.0);
            }
            let e = self
                .model
                .get_text_features(ctx, &ids, chunk.len())?
                .read(ctx)
                .await?;
            out.extend(clip_model::normalize(&e, self.dim()));
        }
        Ok(out)
    }

    /// Zero-shot classification: per image, the probability of each prompt (softmax over
    /// `logits_per_image`), [images, prompts] row-major.
    pub async fn classify(
        &self,
        ctx: &Context,
        images: &[RgbImage],
        prompts: &[String],
    ) -> Result<Vec<f32>> {
        if prompts.is_empty() {
            return Err(Error::invalid("--labels", "needs at least one label"));
        }
        let i = self.embed_images(ctx, images).await?;
        let t = self.embed_texts(ctx, prompts).await?;
        let logits = clip_model::logits(&i, &t, self.dim(), self.logit_scale());
        Ok(softmax_rows(&logits, prompts.len()))
    }
}

/// The tokenizer of a CLIP folder: `tokenizer.json`, or CLIP's `vocab.json` + `merges.txt`.
fn load_tokenizer(files: &dyn ModelFiles, context: usize) -> Result<Tokenizer> {
    let json = match files.read("tokenizer.json")? {
        Some(j) => j,
        None => match (files.read("vocab.json")?, files.read("merges.txt")?) {
            (Some(v), Some(m)) => crate::tokenizer::clip_tokenizer_json(&v, &m)?,
            _ => {
                return Err(Error::Checkpoint(format!(
                    "{}: no tokenizer.json (nor vocab.json + merges.txt); save the processor \
                     with `CLIPProcessor.from_pretrained(...).save_pretrained(dir)`",
                    files.describe()
                )))
            }
        },
    };
    let cfg = files.read("tokenizer_config.json")?;
    let tok = Tokenizer::from_bytes(&json, cfg.as_deref(), context)?;
    if tok.max_length() > context {
        return Err(Error::config(
            "tokenizer_config.json",
            "model_max_length",
            format!(
                "is {} but the text tower's context is {context} (text_config.max_position_embeddings)",
                tok.max_length()
            ),
        ));
    }
    Ok(tok)
}

/// The prompts for `labels` with `template` ("a photo of {}"; `{}` once).
pub fn prompts(labels: &[String], template: &str) -> Result<Vec<String>> {
    if template.matches("{}").count() != 1 {
        return Err(Error::invalid(
            "--template",
            format!("{template:?} must contain `{{}}` exactly once, where the label goes"),
        ));
    }
    if labels.is_empty() || labels.iter().any(|l| l.trim().is_empty()) {
        return Err(Error::invalid(
            "--labels",
            "needs a comma-separated list of non-empty labels, e.g. \"a cat,a dog\"",
        ));
    }
    Ok(labels
        .iter()
        .map(|l| template.replace("{}", l.trim()))
        .collect())
}

/// Softmax over each row of `cols` values (f64 sums).
pub fn softmax_rows(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks_exact(cols.max(1))
        .flat_map(|row| {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f64> = row.iter().map(|&v| ((v - m) as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / s) as f32)
        })
        .collect()
}

/// CLIP score of each (image, text) pair of normalized embeddings: `max(100 x cosine, 0)`, as
/// torchmetrics' `CLIPScore` computes it (DALL-E 3 reports the mean).
pub fn clip_scores(image_embeds: &[f32], text_embeds: &[f32], dim: usize) -> Vec<f32> {
    image_embeds
        .chunks_exact(dim.max(1))
        .zip(text_embeds.chunks_exact(dim.max(1)))
        .map(|(i, t)| (100.0 * i.iter().zip(t).map(|(a, b)| a * b).sum::<f32>()).max(0.0))
        .collect()
}
