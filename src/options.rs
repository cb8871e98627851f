//! The concrete options one generation runs with ([`GenerateOptions`]), and the bounds every
//! option is checked against. A leaf below both the generation policy (`resolve`, which fills
//! them in from a request) and the pipeline (which runs them), so neither depends on the other.

use crate::error::{Error, Result};
use crate::gpu::DType;
use crate::image_io::RgbImage;
use crate::schedulers::SchedulerKind;

/// Largest width or height hoa accepts (beyond it the noise alone would not fit in memory).
pub const MAX_SIDE: usize = 16384;
/// Largest batch.
pub const MAX_BATCH: usize = 64;

/// Models whose weights reach this size are stored in f16 where the adapter computes in it:
/// halving a real Stable Diffusion model decides whether it fits a browser tab or an 8 GB
/// machine, while small models keep f32's exactness.
pub const F16_FROM_BYTES: u64 = 256 << 20;

/// The storage dtype for a model with `weight_bytes` of weights when the user forces none.
pub fn default_dtype(has_f16: bool, weight_bytes: u64) -> DType {
    if has_f16 && weight_bytes >= F16_FROM_BYTES {
        DType::F16
    } else {
        DType::F32
    }
}

/// What the device allows: the largest storage binding and the compute dtype's size.
#[derive(Clone, Copy, Debug)]
pub struct DeviceLimits {
    pub max_binding_bytes: u64,
    pub dtype_size: usize,
    /// A CPU adapter (lavapipe, SwiftShader): device memory is host memory, and guidance's
    /// two halves run as two U-Net batches by default (half the activations, measured no
    /// slower there; see `resolve`).
    pub host_memory: bool,
}

/// Which decoder turns the final latent into pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    Vae,
    Consistency,
}

impl std::str::FromStr for Decoder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Decoder> {
        match s {
            "vae" => Ok(Decoder::Vae),
            "consistency" => Ok(Decoder::Consistency),
            _ => Err(Error::invalid(
                "decoder",
                format!("unknown decoder `{s}`: use `vae` or `consistency`"),
            )),
        }
    }
}

impl Decoder {
    pub fn name(self) -> &'static str {
        match self {
            Decoder::Vae => "vae",
            Decoder::Consistency => "consistency",
        }
    }
}

/// An init image for img2img / inpainting, RGB in [0, 255].
#[derive(Clone, Debug)]
pub struct InitImage {
    pub image: RgbImage,
    /// How much of the schedule to run (diffusers' `strength`): 1 repaints everything.
    pub strength: f32,
    /// Inpainting mask, one value per pixel in [0, 1] (1 = repaint), same size as the image.
    pub mask: Option<Vec<f32>>,
}

/// An image whose variations a stable unCLIP model makes (diffusers'
/// `StableUnCLIPImg2ImgPipeline`): its CLIP image embedding, noised to `noise_level`,
/// conditions the U-Net in place of an init image.
#[derive(Clone, Debug)]
pub struct Variation {
    pub image: RgbImage,
    /// The image noising scheduler's timestep for the embedding (diffusers' default 0).
    pub noise_level: usize,
    /// The embedding noise ([image_embed_dim], diffusers' `noise=` of
    /// `noise_image_embeddings`); `None`: drawn from the seed.
    pub noise: Option<Vec<f32>>,
}

/// Guidance `scale` for the steps whose timestep is at least `from_timestep` (of the
/// scheduler's `num_train_timesteps`, e.g. 1000); the later steps use `guidance`. A timestep
/// rather than a step index, so the split does not move with the number of steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuidanceHigh {
    pub scale: f32,
    pub from_timestep: f32,
}

impl GuidanceHigh {
    /// Its `key: value` pair in a PNG's generation parameters.
    pub fn parameter(&self) -> (String, String) {
        (
            "CFG scale high noise".to_string(),
            format!("{} from timestep {}", self.scale, self.from_timestep),
        )
    }
}

/// SDXL's micro-conditioning, as diffusers' `StableDiffusionXLPipeline` takes it: sizes are
/// (height, width) and the crop is (top, left), in pixels. `None` is diffusers' default: the
/// output size for both sizes, (0, 0) for the crop; each negative value defaults to its
/// positive one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MicroConditioning {
    pub original_size: Option<(usize, usize)>,
    pub crops_coords_top_left: Option<(usize, usize)>,
    pub target_size: Option<(usize, usize)>,
    pub negative_original_size: Option<(usize, usize)>,
    pub negative_crops_coords_top_left: Option<(usize, usize)>,
    pub negative_target_size: Option<(usize, usize)>,
}

impl MicroConditioning {
    /// The U-Net's `add_time_ids` (original size + crop + target size, 6 numbers) of the
    /// prompt and of the negative prompt for an image of `width` x `height`.
    pub fn time_ids(&self, width: usize, height: usize) -> ([f32; 6], [f32; 6]) {
        let out = (height, width);
        let orig = self.original_size.unwrap_or(out);
        let crop = self.crops_coords_top_left.unwrap_or((0, 0));
        let target = self.target_size.unwrap_or(out);
        let ids = |o: (usize, usize), c: (usize, usize), t: (usize, usize)| {
            [o.0, o.1, c.0, c.1, t.0, t.1].map(|v| v as f32)
        };
        let neg = ids(
            self.negative_original_size.unwrap_or(orig),
            self.negative_crops_coords_top_left.unwrap_or(crop),
            self.negative_target_size.unwrap_or(target),
        );
        (ids(orig, crop, target), neg)
    }
}

impl MicroConditioning {
    /// The SDXL refiner's `add_time_ids` (original size + crop + aesthetic score, 5 numbers) of
    /// the prompt and the negative prompt, as diffusers' `StableDiffusionXLImg2ImgPipeline`
    /// with `requires_aesthetics_score` makes them: the negative crop defaults to (0, 0), not
    /// to the positive crop; target sizes are not used.
    pub fn refiner_time_ids(
        &self,
        width: usize,
        height: usize,
        aesthetic_score: f32,
        negative_aesthetic_score: f32,
    ) -> ([f32; 5], [f32; 5]) {
        let orig = self.original_size.unwrap_or((height, width));
        let crop = self.crops_coords_top_left.unwrap_or((0, 0));
        let neg_orig = self.negative_original_size.unwrap_or(orig);
        let neg_crop = self.negative_crops_coords_top_left.unwrap_or((0, 0));
        let ids = |o: (usize, usize), c: (usize, usize), a: f32| {
            [o.0 as f32, o.1 as f32, c.0 as f32, c.1 as f32, a]
        };
        (
            ids(orig, crop, aesthetic_score),
            ids(neg_orig, neg_crop, negative_aesthetic_score),
        )
    }
}

impl GenerateOptions {
    /// The model's scheduler config with `prediction_type` overridden when asked.
    pub fn scheduler_config(
        &self,
        model: &crate::schedulers::SchedulerConfig,
    ) -> crate::schedulers::SchedulerConfig {
        let mut c = model.clone();
        if let Some(p) = &self.prediction_type {
            c.prediction_type = Some(p.clone());
        }
        c
    }

    /// The guidance scale of a step at timestep `t`.
    pub fn guidance_at(&self, t: f32) -> f32 {
        match self.guidance_high {
            Some(h) if t >= h.from_timestep => h.scale,
            _ => self.guidance,
        }
    }
}

/// Everything one generation takes.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance: f32,
    /// Another guidance scale for the high-noise steps, where the layout and the number of
    /// objects are decided; `None`: `guidance` throughout.
    pub guidance_high: Option<GuidanceHigh>,
    /// `None`: the model folder's own scheduler.
    pub scheduler: Option<SchedulerKind>,
    /// diffusers' `eta` (DDIM only; 0 = deterministic): the share of fresh noise per step.
    pub eta: f32,
    /// Image k of the batch uses seed `seed + k` (so it can be made again alone).
    pub seed: u64,
    pub batch: usize,
    pub decoder: Decoder,
    /// Start from these latents ([batch, C, h, w], diffusers' `latents=`) instead of drawing
    /// them; they are multiplied by the scheduler's `init_noise_sigma` like diffusers does.
    pub latents: Option<Vec<f32>>,
    pub init: Option<InitImage>,
    /// Image variations (a stable unCLIP model).
    pub variation: Option<Variation>,
    /// Run the guidance halves as two U-Net batches (half the activation memory). Automatic
    /// when one batch of both would exceed a binding.
    pub split_guidance: bool,
    /// Every this many steps (and never after the last), decode the current latents with the
    /// VAE and report them as [`Event::Preview`], for a live preview; 0 = off.
    pub preview_every: usize,
    /// When set and raised (by another thread, or from the event callback), the run stops
    /// after the current denoising step with [`Error::Cancelled`].
    pub cancel: Option<Cancel>,
    /// SDXL's size and crop conditioning (ignored by models without it).
    pub micro: MicroConditioning,
    /// The LoRAs (file, scale) the request asks for: they are merged at load, so the pipeline
    /// must have been loaded with exactly these ([`crate::pipeline::Pipeline::loras`]).
    pub loras: Vec<(String, f64)>,
    /// What the U-Net predicts (`epsilon` | `v_prediction`) when it is not what the model's
    /// scheduler config says (a single file whose type was guessed); `None`: the config's.
    pub prediction_type: Option<String>,
    /// diffusers' `denoising_end` (SDXL base + refiner): run only the steps whose timestep is
    /// at least `round(T - end·T)` and return the still-noisy latents for a second stage
    /// ([`crate::pipeline::Pipeline::generate_latents`]); `None`: denoise to the end.
    pub denoising_end: Option<f64>,
    /// diffusers' `denoising_start`: run only the steps whose timestep is below
    /// `round(T - start·T)`, from `latents` taken as they are (the first stage's output,
    /// already noisy: neither scaled nor noised); `strength` is then ignored.
    pub denoising_start: Option<f64>,
    /// The SDXL refiner's aesthetic-score time id for the prompt and for the negative prompt
    /// (diffusers' defaults 6 and 2.5; ignored by models without `requires_aesthetics_score`).
    pub aesthetic_score: f32,
    pub negative_aesthetic_score: f32,
}

/// diffusers' `aesthetic_score` and `negative_aesthetic_score` defaults.
pub const DEFAULT_AESTHETIC_SCORE: f32 = 6.0;
pub const DEFAULT_NEGATIVE_AESTHETIC_SCORE: f32 = 2.5;

/// A flag that stops a generation between denoising steps: a server whose client went away or
/// whose time limit passed raises it. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 512,
            height: 512,
            steps: 25,
            guidance: 7.5,
            guidance_high: None,
            scheduler: None,
            eta: 0.0,
            seed: 0,
            batch: 1,
            decoder: Decoder::Vae,
            latents: None,
            init: None,
            variation: None,
            split_guidance: false,
            preview_every: 0,
            cancel: None,
            micro: MicroConditioning::default(),
            loras: Vec::new(),
            prediction_type: None,
            denoising_end: None,
            denoising_start: None,
            aesthetic_score: DEFAULT_AESTHETIC_SCORE,
            negative_aesthetic_score: DEFAULT_NEGATIVE_AESTHETIC_SCORE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_only_for_large_models_on_f16_adapters() {
        assert_eq!(default_dtype(true, F16_FROM_BYTES), DType::F16);
        assert_eq!(default_dtype(true, F16_FROM_BYTES - 1), DType::F32);
        assert_eq!(default_dtype(false, u64::MAX), DType::F32);
    }
}
