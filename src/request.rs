//! What a user asks for, before any default is applied: every choice an `Option`, in the units
//! the user typed them (whole numbers as `i64` and scales as `f64`, so that `-1` or `2^32` reach
//! the validator and get a message naming the flag rather than a parser's). The CLI, the wasm
//! binding and the HTTP server each fill one in; `resolve` turns it into concrete
//! options against the model's defaults.

use crate::image_io::RgbImage;
use serde::{Deserialize, Serialize};

/// Where a request came from, so an error names the value as the user wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// `hoa generate`: fields are named as flags (`--steps`, `--negative`).
    Cli,
    /// JSON (the page, the server): fields are named by their keys (`steps`).
    #[default]
    Json,
}

impl Origin {
    /// `field` (a [`Request`] key) as this front end's user wrote it.
    pub fn name(self, field: &str) -> String {
        match (self, field) {
            (Origin::Json, f) => f.to_string(),
            (Origin::Cli, "prompt") => "the prompt".to_string(),
            (Origin::Cli, "negative_prompt") => "--negative".to_string(),
            (Origin::Cli, f) => format!("--{}", f.replace('_', "-")),
        }
    }
}

/// An inpainting mask: one value in [0, 1] per pixel (1 = repaint), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

/// Starting latents (diffusers' `latents=`): `values` in `shape` [batch, C, h, w].
#[derive(Clone, Debug, PartialEq)]
pub struct Latents {
    pub values: Vec<f32>,
    pub shape: Vec<usize>,
}

/// A LoRA merged into the model's weights at load (`--lora FILE:SCALE`; JSON
/// `{"file": "style.safetensors", "scale": 0.8}`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoraRequest {
    /// The file as the front end names it (a path for the CLI).
    pub file: String,
    /// Default 1.
    pub scale: Option<f64>,
    /// The file's short hash for the PNG's `Lora hashes`, set by a front end that read it
    /// ([`crate::lora::LoraFile::short_hash`]).
    #[serde(skip)]
    pub hash: Option<String>,
}

/// One generation request. JSON keys are the field names; unknown keys are refused, so a typo
/// (`"stpes"`) is an error rather than a silent default. It serializes to the same JSON (the
/// skipped fields, images and latents, excepted), which is how `hoa serve --queue nats://...`
/// hands a job to a worker that resolves it again.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Request {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub steps: Option<i64>,
    pub guidance: Option<f64>,
    /// The guidance scale for the high-noise steps (timestep ≥ `guidance_high_from`).
    pub guidance_high: Option<f64>,
    pub guidance_high_from: Option<f64>,
    /// A scheduler name (`ddim`, `euler_a`, `dpm++2m-karras`, ...); the model's own when absent.
    pub scheduler: Option<String>,
    pub eta: Option<f64>,
    pub seed: Option<u64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub batch: Option<i64>,
    /// `vae` or `consistency`.
    pub decoder: Option<String>,
    /// Apply the model's prompt upsampling (default: on when the model has it).
    pub upsample: Option<bool>,
    /// img2img: how much of the schedule to run, in (0, 1].
    pub strength: Option<f64>,
    /// Decode a preview every this many steps (0 = never).
    pub preview_every: Option<i64>,
    /// Run classifier-free guidance's two halves as two U-Net batches rather than one: the
    /// same images (to rounding) with half the activation memory (default: one batch, or two
    /// when one would exceed the device's storage binding).
    pub split_guidance: Option<bool>,
    /// SDXL micro-conditioning, as diffusers names and orders it: sizes `[height, width]`,
    /// the crop `[top, left]`, in pixels (defaults: the output size, `[0, 0]`); each
    /// `negative_` one defaults to its positive one.
    pub original_size: Option<[i64; 2]>,
    pub crops_coords_top_left: Option<[i64; 2]>,
    pub target_size: Option<[i64; 2]>,
    pub negative_original_size: Option<[i64; 2]>,
    pub negative_crops_coords_top_left: Option<[i64; 2]>,
    pub negative_target_size: Option<[i64; 2]>,
    /// LoRAs, merged in order; a pipeline must have been loaded with exactly these.
    pub lora: Option<Vec<LoraRequest>>,
    /// What the U-Net predicts, `epsilon` or `v_prediction`, overriding the model's scheduler
    /// config (a single-file checkpoint's type is detected by a rule that can be wrong).
    pub prediction: Option<String>,
    /// SDXL base + refiner: the fraction of the schedule the base runs before the refiner
    /// takes over (diffusers' `denoising_end` for the base, `denoising_start` for the
    /// refiner), in (0, 1); default 0.8 with a refiner.
    pub denoising_end: Option<f64>,
    /// The SDXL refiner's aesthetic-score conditioning of the prompt and of the negative
    /// prompt (diffusers' `aesthetic_score` 6, `negative_aesthetic_score` 2.5).
    pub aesthetic_score: Option<f64>,
    pub negative_aesthetic_score: Option<f64>,
    /// Image variations (stable unCLIP): the noise level of the image embedding, from 0
    /// (diffusers' default) to the image noising scheduler's timesteps - 1.
    pub noise_level: Option<i64>,
    #[serde(skip)]
    pub init_image: Option<RgbImage>,
    /// The image whose variations a stable unCLIP model makes (`--variation IMAGE`).
    #[serde(skip)]
    pub variation: Option<RgbImage>,
    #[serde(skip)]
    pub mask: Option<Mask>,
    #[serde(skip)]
    pub latents: Option<Latents>,
    #[serde(skip)]
    pub origin: Origin,
}

impl Request {
    /// A request from JSON (the page, the server), naming a bad key or type in the error.
    pub fn from_json(json: &str) -> crate::Result<Request> {
        serde_json::from_str(json).map_err(|e| crate::Error::invalid("the request", format!("{e}")))
    }

    /// `field` as this request's user wrote it (a flag or a JSON key).
    pub fn name(&self, field: &str) -> String {
        self.origin.name(field)
    }
}
