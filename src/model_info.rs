//! What a diffusers model folder says about itself without loading a weight: `model_index.json`'s
//! components, the U-Net, VAE and scheduler configs and `hoa.json`'s defaults. Read first, so a
//! request is resolved (and refused) before the slow load, and kept by the loaded
//! pipeline.

use crate::config::{AutoencoderKLConfig, UNet2DConditionModelConfig};
use crate::error::{Error, Result};
use crate::model_defaults::ModelDefaults;
use crate::model_files::ModelFiles;
use crate::options::MAX_SIDE;
use crate::schedulers::{SchedulerConfig, SchedulerKind};
use serde_json::Value;

/// The pipelines whose folders hoa runs (the img2img and inpainting classes share the
/// text-to-image components; hoa inpaints by latent blending with the 4-channel U-Net; the SDXL
/// refiner is an `StableDiffusionXLImg2ImgPipeline` folder without `text_encoder`).
const PIPELINES: [&str; 7] = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableUnCLIPImg2ImgPipeline",
    "LatentConsistencyModelPipeline",
];

#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub defaults: ModelDefaults,
    /// `model_index.json`'s `text_encoder` class (`CLIPTextModel`, `T5EncoderModel`); empty
    /// for the SDXL refiner, whose only text encoder is `text_encoder_2`.
    pub text_encoder_class: String,
    pub unet: UNet2DConditionModelConfig,
    pub vae: AutoencoderKLConfig,
    pub scheduler: SchedulerConfig,
    pub has_consistency_decoder: bool,
    /// SDXL (a `text_time` U-Net): `model_index.json`'s `text_encoder_2` class
    /// (`CLIPTextModelWithProjection`) and its `force_zeros_for_empty_prompt` (diffusers'
    /// default true: an empty negative prompt conditions on zeros).
    pub sdxl: Option<SdxlInfo>,
    /// Stable unCLIP (a `projection` class-embedding U-Net): image variations.
    pub unclip: Option<UnclipInfo>,
}

/// What a stable unCLIP folder (`StableUnCLIPImg2ImgPipeline`) adds to [`ModelInfo`]: the
/// image encoder's embedding width and the image noising scheduler's number of noise levels.
#[derive(Clone, Copy, Debug)]
pub struct UnclipInfo {
    /// `image_encoder/config.json`'s `projection_dim`.
    pub image_embed_dim: usize,
    /// `image_noising_scheduler`'s `num_train_timesteps`: `noise_level` is below it.
    pub noise_levels: usize,
}

/// What an SDXL folder adds to [`ModelInfo`].
#[derive(Clone, Debug)]
pub struct SdxlInfo {
    pub text_encoder_2_class: String,
    pub force_zeros_for_empty_prompt: bool,
    /// The refiner's `requires_aesthetics_score`: its time ids are original size, crop and an
    /// aesthetic score (5) instead of original size, crop and target size (6).
    pub requires_aesthetics_score: bool,
}

/// SDXL's components beyond SD's, when the U-Net takes `text_time` conditioning.
fn read_sdxl(
    files: &dyn ModelFiles,
    index: &Value,
    unet: &UNet2DConditionModelConfig,
) -> Result<Option<SdxlInfo>> {
    let class = index.get("_class_name").and_then(Value::as_str);
    if unet.text_time().is_none() {
        if class == Some("StableDiffusionXLPipeline") {
            return Err(Error::config(
                "unet/config.json",
                "addition_embed_type",
                "is not \"text_time\", but model_index.json's _class_name is \
                 StableDiffusionXLPipeline: an SDXL U-Net takes text_time conditioning",
            ));
        }
        return Ok(None);
    }
    let text_encoder_2_class = require_class(files, index, "text_encoder_2").map_err(|_| {
        Error::config(
            "model_index.json",
            "text_encoder_2",
            "is missing: an SDXL U-Net (addition_embed_type \"text_time\") needs the second \
             text encoder (CLIPTextModelWithProjection) and tokenizer_2",
        )
    })?;
    require_class(files, index, "tokenizer_2")?;
    if text_encoder_2_class != "CLIPTextModelWithProjection" {
        return Err(Error::config(
            "model_index.json",
            "text_encoder_2",
            format!("is a {text_encoder_2_class}; hoa runs CLIPTextModelWithProjection"),
        ));
    }
    Ok(Some(SdxlInfo {
        text_encoder_2_class,
        force_zeros_for_empty_prompt: flag(index, "force_zeros_for_empty_prompt", true)?,
        requires_aesthetics_score: flag(index, "requires_aesthetics_score", false)?,
    }))
}

/// A boolean of `model_index.json`, `default` when absent or null.
fn flag(index: &Value, key: &str, default: bool) -> Result<bool> {
    match index.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| {
            Error::config(
                "model_index.json",
                key,
                format!("= {v} must be true or false"),
            )
        }),
    }
}

/// Whether `model_index.json` leaves `component` out (absent, null or `[null, null]`).
fn is_null(index: &Value, component: &str) -> bool {
    match index.get(component) {
        None | Some(Value::Null) => true,
        Some(Value::Array(v)) => v.iter().all(Value::is_null),
        Some(_) => false,
    }
}

/// Stable unCLIP's components beyond SD's, when the U-Net takes `class_embed_type:
/// "projection"`: the image encoder (its embedding plus the noise level's, side by side, is the
/// U-Net's class input), the normalizer, the noising scheduler and the feature extractor.
fn read_unclip(
    files: &dyn ModelFiles,
    index: &Value,
    unet: &UNet2DConditionModelConfig,
) -> Result<Option<UnclipInfo>> {
    let Some(input) = unet.class_projection() else {
        return Ok(None);
    };
    for c in [
        "image_encoder",
        "image_normalizer",
        "image_noising_scheduler",
    ] {
        require_class(files, index, c).map_err(|_| {
            Error::config(
                "model_index.json",
                c,
                format!(
                    "is missing or its folder `{c}/` is: a stable unCLIP U-Net (class_embed_type \
                     \"projection\") needs image_encoder, image_normalizer, \
                     image_noising_scheduler and feature_extractor"
                ),
            )
        })?;
    }
    if !files.exists("feature_extractor/preprocessor_config.json") {
        return Err(Error::Checkpoint(format!(
            "{}: a stable unCLIP folder needs feature_extractor/preprocessor_config.json (the \
             CLIPImageProcessor of its image encoder)",
            files.describe()
        )));
    }
    let enc =
        crate::config::ClipVisionConfig::from_json(&files.require("image_encoder/config.json")?)?;
    if enc.projection_dim.checked_mul(2) != Some(input) {
        return Err(Error::config(
            "unet/config.json",
            "projection_class_embeddings_input_dim",
            format!(
                "is {input}, but the image embedding and its noise-level embedding give 2 x \
                 {} (image_encoder/config.json: projection_dim)",
                enc.projection_dim
            ),
        ));
    }
    let noising = SchedulerConfig::from_json(
        &files.require("image_noising_scheduler/scheduler_config.json")?,
    )?;
    Ok(Some(UnclipInfo {
        image_embed_dim: enc.projection_dim,
        noise_levels: noising.num_train_timesteps.unwrap_or(1000),
    }))
}

/// `model_index.json`'s class for `component`, checking that its folder is there.
fn require_class(files: &dyn ModelFiles, index: &Value, component: &str) -> Result<String> {
    let class = index
        .get(component)
        .and_then(Value::as_array)
        .and_then(|v| v.get(1)?.as_str().map(str::to_string))
        .ok_or_else(|| {
            Error::config(
                "model_index.json",
                component,
                "is missing or null; a text-to-image folder needs text_encoder, tokenizer, \
                 unet, vae and scheduler",
            )
        })?;
    let markers = [
        "config.json",
        "scheduler_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ];
    if !markers
        .iter()
        .any(|m| files.exists(&format!("{component}/{m}")))
    {
        return Err(Error::Checkpoint(format!(
            "{}: model_index.json lists `{component}` ({class}) but the folder `{component}/` \
             is missing or empty",
            files.describe()
        )));
    }
    Ok(class)
}

fn read_index(files: &dyn ModelFiles) -> Result<Value> {
    let index: Value = serde_json::from_slice(&files.require("model_index.json")?)
        .map_err(|e| Error::Checkpoint(format!("{}/model_index.json: {e}", files.describe())))?;
    if !index.is_object() {
        return Err(Error::Checkpoint(format!(
            "{}/model_index.json: expected a JSON object of components",
            files.describe()
        )));
    }
    if let Some(class) = index.get("_class_name").and_then(Value::as_str) {
        if !PIPELINES.contains(&class) {
            return Err(Error::config(
                "model_index.json",
                "_class_name",
                format!(
                    "is {class}, a pipeline hoa does not implement (it runs {})",
                    PIPELINES.join(", ")
                ),
            ));
        }
    }
    Ok(index)
}

impl ModelInfo {
    /// An SDXL refiner: `text_encoder_2` only, aesthetic-score time ids
    /// (`requires_aesthetics_score`).
    pub fn is_sdxl_refiner(&self) -> bool {
        self.sdxl
            .as_ref()
            .is_some_and(|s| s.requires_aesthetics_score)
    }

    /// Reads and checks the folder's configs (no weights).
    pub fn read(files: &dyn ModelFiles) -> Result<ModelInfo> {
        let index = read_index(files)?;
        // The SDXL refiner has no text_encoder (diffusers' `text_encoder=None`).
        let refiner = index.get("_class_name").and_then(Value::as_str)
            == Some("StableDiffusionXLImg2ImgPipeline")
            && is_null(&index, "text_encoder");
        let text_encoder_class = match refiner {
            true => String::new(),
            false => {
                let class = require_class(files, &index, "text_encoder")?;
                require_class(files, &index, "tokenizer")?;
                class
            }
        };
        let unet_class = require_class(files, &index, "unet")?;
        let vae_class = require_class(files, &index, "vae")?;
        require_class(files, &index, "scheduler")?;
        if unet_class != "UNet2DConditionModel" {
            return Err(Error::config(
                "model_index.json",
                "unet",
                format!("is a {unet_class}; hoa runs UNet2DConditionModel"),
            ));
        }
        if vae_class != "AutoencoderKL" {
            return Err(Error::config(
                "model_index.json",
                "vae",
                format!(
                    "is a {vae_class}; hoa runs AutoencoderKL (a consistency decoder goes in \
                     consistency_decoder/)"
                ),
            ));
        }
        let unet = UNet2DConditionModelConfig::from_json(&files.require("unet/config.json")?)?;
        let vae = AutoencoderKLConfig::from_json(&files.require("vae/config.json")?)?;
        if vae.latent_channels != unet.in_channels {
            return Err(Error::config(
                "vae/config.json",
                "latent_channels",
                format!(
                    "is {} but the U-Net takes {} (unet/config.json: in_channels)",
                    vae.latent_channels, unet.in_channels
                ),
            ));
        }
        let scheduler =
            SchedulerConfig::from_json(&files.require("scheduler/scheduler_config.json")?)?;
        let sdxl = read_sdxl(files, &index, &unet)?;
        if refiner && sdxl.is_none() {
            return Err(Error::config(
                "model_index.json",
                "text_encoder",
                "is null, which only an SDXL refiner (a text_time U-Net with text_encoder_2) \
                 may leave out",
            ));
        }
        let unclip = read_unclip(files, &index, &unet)?;
        let info = ModelInfo {
            sdxl,
            unclip,
            defaults: ModelDefaults::load(files)?,
            text_encoder_class,
            unet,
            vae,
            scheduler,
            has_consistency_decoder: files.exists("consistency_decoder/config.json"),
        };
        info.native_size()?;
        info.num_train_timesteps()?;
        Ok(info)
    }

    /// Pixels per latent pixel (8 for Stable Diffusion): `2^(len(block_out_channels) - 1)`.
    pub fn vae_scale_factor(&self) -> Result<usize> {
        let n = self.vae.block_out_channels.len();
        if !(1..=8).contains(&n) {
            return Err(Error::config(
                "vae/config.json",
                "block_out_channels",
                format!("has {n} entries; expected 1 to 8"),
            ));
        }
        Ok(1 << (n - 1))
    }

    /// What width and height must be a multiple of: the VAE factor times one halving per
    /// U-Net down block but the last.
    pub fn size_multiple(&self) -> Result<usize> {
        let levels = self.unet.down_block_types.len().saturating_sub(1);
        let m = (levels < 16)
            .then(|| self.vae_scale_factor().map(|f| f << levels))
            .transpose()?;
        m.filter(|&m| m <= MAX_SIDE).ok_or_else(|| {
            Error::config(
                "unet/config.json",
                "down_block_types",
                format!(
                    "has {} blocks: too many halvings for any image size",
                    levels + 1
                ),
            )
        })
    }

    /// The size the model was trained at: the U-Net's `sample_size` times the VAE factor.
    pub fn native_size(&self) -> Result<usize> {
        let s = self.unet.sample_size.unwrap_or(64);
        let f = self.vae_scale_factor()?;
        s.checked_mul(f)
            .filter(|&n| n > 0 && n <= MAX_SIDE)
            .ok_or_else(|| {
                Error::config(
                    "unet/config.json",
                    "sample_size",
                    format!(
                        "is {s}: x{f} (the VAE factor) gives no image size from 1 to {MAX_SIDE}"
                    ),
                )
            })
    }

    /// The scheduler's `num_train_timesteps` (diffusers' default 1000).
    pub fn num_train_timesteps(&self) -> Result<usize> {
        match self.scheduler.num_train_timesteps {
            Some(0) => Err(Error::config(
                "scheduler/scheduler_config.json",
                "num_train_timesteps",
                "is 0; it must be at least 1 (Stable Diffusion uses 1000)",
            )),
            n => Ok(n.unwrap_or(1000)),
        }
    }

    /// The folder's own scheduler, or DPM-Solver++ 2M on the same noise schedule (the usual
    /// replacement: 20-25 steps match PNDM's 50) with a note, when hoa lacks the folder's.
    pub fn scheduler_choice(&self) -> (SchedulerKind, Option<String>) {
        match SchedulerKind::from_config(&self.scheduler) {
            Ok(k) => (k, None),
            Err(e) => (
                SchedulerKind::DpmPp2M,
                Some(format!("{e}; using dpm++2m on the model's noise schedule")),
            ),
        }
    }

    /// Bytes of the U-Net's widest activation for `rows` samples at `w`x`h` pixels: the last up
    /// block's concat of a skip with the level below, at full latent resolution. `None` on
    /// overflow.
    pub fn unet_peak_bytes(&self, rows: usize, w: usize, h: usize, dsize: usize) -> Option<u64> {
        let f = self.vae_scale_factor().ok()?;
        let c = &self.unet.block_out_channels;
        let widest = c.first()?.checked_add(c.get(1).copied().unwrap_or(c[0]))?;
        [widest, h / f, w / f, dsize]
            .iter()
            .try_fold(rows as u64, |a, &d| a.checked_mul(d as u64))
    }
}
