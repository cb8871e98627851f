//! Stable unCLIP's image conditioning (diffusers' `StableUnCLIPImg2ImgPipeline`): the image
//! through the `feature_extractor` (CLIPImageProcessor) and the `image_encoder`
//! (`CLIPVisionModelWithProjection`'s `image_embeds`), then `noise_image_embeddings`: the
//! `image_normalizer`'s scale, the `image_noising_scheduler`'s `add_noise` at `noise_level`,
//! unscale, and the noise level's sinusoidal embedding beside it. That is the U-Net's
//! `class_labels` (zeros for the unconditional half), made into its class embedding once,
//! before the denoising loop.

use super::{AddedCond, GenerateOptions, Pipeline};
use crate::clip::ClipImageProcessor;
use crate::config::ClipVisionConfig;
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::image_io::RgbImage;
use crate::kernels::concat::concat;
use crate::kernels::embedding::{timestep_embedding, TimestepEmbedding};
use crate::model_files::{component_weights, ModelFiles};
use crate::model_info::ModelInfo;
use crate::models::clip_vision::ClipVisionModelWithProjection;
use crate::noise::NoiseGenerator;
use crate::options::Variation;
use crate::schedulers::{noise_schedule, SchedulerConfig, SchedulerKind};
use crate::weights::Loader;

/// Mixed into the seed for the embedding noise, so it is not image 0's latent noise.
const NOISE_STREAM: u64 = 0x756e_636c_6970; // "unclip"

/// diffusers' `StableUnCLIPImageNormalizer`: the CLIP embedder's `mean` and `std`, on the host.
pub struct StableUnCLIPImageNormalizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl StableUnCLIPImageNormalizer {
    pub fn load(vb: &Loader, dim: usize) -> Result<Self> {
        let n = StableUnCLIPImageNormalizer {
            mean: vb.get_host("mean", &[1, dim]),
            std: vb.get_host("std", &[1, dim]),
        };
        vb.finish()?;
        Ok(n)
    }

    /// `(embeds - mean) * 1.0 / std`, in f32 as torch does it.
    pub fn scale(&self, embeds: &[f32]) -> Vec<f32> {
        let it = embeds.iter().zip(self.mean.iter().cycle());
        it.zip(self.std.iter().cycle())
            .map(|((&e, &m), &s)| (e - m) * 1.0 / s)
            .collect()
    }

    /// `embeds * std + mean`.
    pub fn unscale(&self, embeds: &[f32]) -> Vec<f32> {
        let it = embeds.iter().zip(self.std.iter().cycle());
        it.zip(self.mean.iter().cycle())
            .map(|((&e, &s), &m)| e * s + m)
            .collect()
    }
}

/// The image side of a stable unCLIP folder.
pub struct UnclipImageEncoder {
    pub feature_extractor: ClipImageProcessor,
    pub image_encoder: ClipVisionModelWithProjection,
    pub image_normalizer: StableUnCLIPImageNormalizer,
    /// `image_noising_scheduler`'s `alphas_cumprod` (float32, as diffusers holds them).
    pub alphas_cumprod: Vec<f32>,
    image_size: usize,
    dtype: DType,
}

/// Loads the image components of a stable unCLIP folder (`info.unclip`).
pub(super) fn load(
    ctx: &Context,
    files: &dyn ModelFiles,
    info: &ModelInfo,
    dtype: DType,
) -> Result<Option<UnclipImageEncoder>> {
    let Some(u) = info.unclip else {
        return Ok(None);
    };
    let cfg = ClipVisionConfig::from_json(&files.require("image_encoder/config.json")?)?;
    let feature_extractor = ClipImageProcessor::from_json(
        &files.require("feature_extractor/preprocessor_config.json")?,
    )?;
    let s = cfg.image_size;
    if feature_extractor.output_size().is_some_and(|o| o != (s, s)) {
        return Err(Error::config(
            "feature_extractor/preprocessor_config.json",
            "crop_size",
            format!("does not give the image encoder's {s}x{s} images (image_size)"),
        ));
    }
    let w = component_weights(files, "image_encoder")?;
    let image_encoder = ClipVisionModelWithProjection::load(&Loader::new(ctx, &w, dtype), &cfg)?;
    drop(w);
    let w = component_weights(files, "image_normalizer")?;
    let image_normalizer =
        StableUnCLIPImageNormalizer::load(&Loader::new(ctx, &w, DType::F32), u.image_embed_dim)?;
    let noising = SchedulerConfig::from_json(
        &files.require("image_noising_scheduler/scheduler_config.json")?,
    )?;
    // DDPMScheduler's betas: DDIM resolves the same beta fields with the same defaults.
    let alphas_cumprod =
        noise_schedule::alphas_cumprod(&noising.resolve(SchedulerKind::Ddim)?, false)?;
    Ok(Some(UnclipImageEncoder {
        feature_extractor,
        image_encoder,
        image_normalizer,
        alphas_cumprod,
        image_size: s,
        dtype,
    }))
}

impl UnclipImageEncoder {
    /// `image_encoder(feature_extractor(image)).image_embeds`: [1, projection_dim].
    pub fn image_embeds(&self, ctx: &Context, image: &RgbImage) -> Result<Tensor> {
        let (px, (h, w)) = self.feature_extractor.preprocess(image)?;
        let s = self.image_size;
        if (h, w) != (s, s) {
            return Err(Error::config(
                "feature_extractor/preprocessor_config.json",
                "size",
                format!("gives {w}x{h} images; the image encoder takes {s}x{s}"),
            ));
        }
        let t = Tensor::from_f32(ctx, &px, &[1, 3, s, s], self.dtype)?;
        Ok(self.image_encoder.forward(ctx, &t)?.image_embeds)
    }

    /// `noise_image_embeddings` without the level's embedding: scale, `add_noise` at
    /// `noise_level` (`sqrt(a) * x + sqrt(1 - a) * noise`), unscale; f32 on the host.
    pub fn noise_embeds(
        &self,
        embeds: &[f32],
        noise_level: usize,
        noise: &[f32],
    ) -> Result<Vec<f32>> {
        let a = *self.alphas_cumprod.get(noise_level).ok_or_else(|| {
            Error::invalid(
                "noise_level",
                format!(
                    "must be below the image noising scheduler's {} timesteps, got {noise_level}",
                    self.alphas_cumprod.len()
                ),
            )
        })?;
        if noise.len() != embeds.len() {
            return Err(Error::invalid(
                "noise",
                format!(
                    "{} values for an embedding of {}",
                    noise.len(),
                    embeds.len()
                ),
            ));
        }
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        let x = self.image_normalizer.scale(embeds);
        let noised: Vec<f32> = x
            .iter()
            .zip(noise)
            .map(|(&x, &n)| sa * x + sb * n)
            .collect();
        Ok(self.image_normalizer.unscale(&noised))
    }
}

impl Pipeline {
    /// The U-Net's `class_labels` for `variation`: the noised image embedding and the noise
    /// level's `get_timestep_embedding` side by side, one row per image, after as many rows of
    /// zeros when guiding (`cfg`; diffusers' `zeros_like`).
    pub(super) async fn encode_image(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        variation: &Variation,
        cfg: bool,
    ) -> Result<AddedCond> {
        let enc = self.unclip.as_ref().ok_or_else(|| {
            Error::invalid(
                "variation",
                "this model has no image_encoder/ (a stable unCLIP folder has one)",
            )
        })?;
        let embeds = enc.image_embeds(ctx, &variation.image)?.read(ctx).await?;
        let d = embeds.len();
        let noise = match &variation.noise {
            Some(n) => n.clone(),
            None => NoiseGenerator::new(opts.seed ^ NOISE_STREAM).randn(d),
        };
        let noised = enc.noise_embeds(&embeds, variation.noise_level, &noise)?;
        let noised = Tensor::from_f32(ctx, &noised, &[1, d], self.dtype)?;
        let level = Tensor::from_f32(ctx, &[variation.noise_level as f32], &[1], DType::F32)?;
        let level = timestep_embedding(ctx, &level, &TimestepEmbedding::sd(d), self.dtype)?;
        let row = concat(ctx, &[&noised, &level], 1)?;
        let b = opts.batch;
        let mut rows: Vec<&Tensor> = vec![&row; b];
        let zeros = Tensor::full(ctx, &[1, 2 * d], 0.0, self.dtype)?;
        if cfg {
            rows = std::iter::repeat_n(&zeros, b).chain(rows).collect();
        }
        Ok(AddedCond::Class(concat(ctx, &rows, 0)?))
    }
}
