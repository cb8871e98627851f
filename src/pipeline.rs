//! Text to image: diffusers' `StableDiffusionPipeline` (plus its img2img and inpainting
//! variants) on hoa's models. Reads a diffusers model folder through [`ModelFiles`] (bytes, so
//! the CLI and the browser share it), encodes the prompt and the negative prompt, runs the
//! sampling loop with classifier-free guidance (both halves in one U-Net batch) entirely on the
//! device, and decodes with the VAE or the consistency decoder. The only readback is the image.

use crate::config::{
    AutoencoderKLConfig, ClipTextConfig, ConsistencyDecoderVAEConfig, T5Config,
    UNet2DConditionModelConfig,
};
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::image_io::RgbImage;
use crate::kernels::{concat::concat, elementwise};
use crate::model_files::{component_weights, ModelFiles};
use crate::models::autoencoder_kl::AutoencoderKL;
use crate::models::clip::ClipTextModel;
use crate::models::consistency_decoder::ConsistencyDecoderVAE;
use crate::models::t5::T5EncoderModel;
use crate::models::unet_2d_condition::UNet2DConditionModel;
use crate::noise::{randn_batch, NoiseGenerator};
use crate::schedulers::{self, blend, classifier_free_guidance, SchedulerConfig, SchedulerKind};
use crate::tokenizer::Tokenizer;
use crate::weights::Loader;
use serde_json::Value;

const OP: &str = "pipeline";

fn bad(msg: impl Into<String>) -> Error {
    Error::shape(OP, msg)
}

/// The prompt encoder named by `model_index.json`'s `text_encoder`.
pub enum TextEncoder {
    Clip(ClipTextModel),
    T5(T5EncoderModel),
}

impl TextEncoder {
    /// `last_hidden_state` [batch, L, D] for `batch` sequences of token ids.
    pub fn encode(&self, ctx: &Context, ids: &[u32], batch: usize) -> Result<Tensor> {
        Ok(match self {
            TextEncoder::Clip(m) => m.forward(ctx, ids, batch)?.last_hidden_state,
            TextEncoder::T5(m) => m.forward(ctx, ids, batch)?.last_hidden_state,
        })
    }
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
            _ => Err(bad(format!(
                "unknown decoder `{s}`: use `vae` or `consistency`"
            ))),
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

/// Guidance `scale` for the steps whose timestep is at least `from_timestep` (of the
/// scheduler's `num_train_timesteps`, e.g. 1000); the later steps use `guidance`. A timestep
/// rather than a step index, so the split does not move with the number of steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
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

impl GenerateOptions {
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
    /// Run the guidance halves as two U-Net batches (half the activation memory). Automatic
    /// when one batch of both would exceed a binding.
    pub split_guidance: bool,
    /// Every this many steps (and never after the last), decode the current latents with the
    /// VAE and report them as [`Event::Preview`], for a live preview; 0 = off.
    pub preview_every: usize,
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
            split_guidance: false,
            preview_every: 0,
        }
    }
}

/// What the pipeline reports while it runs.
pub enum Event<'a> {
    /// Something the user should know (a prompt was truncated, ...).
    Warning(String),
    /// Denoising step `step` (1-based) of `total` finished on the GPU; `latents` is the current
    /// latent.
    Step {
        step: usize,
        total: usize,
        latents: &'a Tensor,
    },
    /// The first image's current latents decoded with the VAE after step `step` (1-based),
    /// when [`GenerateOptions::preview_every`] asks for it.
    Preview { step: usize, image: RgbImage },
    /// Denoising done; decoding.
    Decoding,
}

/// A loaded model folder.
pub struct Pipeline {
    pub tokenizer: Tokenizer,
    pub text_encoder: TextEncoder,
    pub unet: UNet2DConditionModel,
    pub unet_config: UNet2DConditionModelConfig,
    pub vae: AutoencoderKL,
    pub vae_config: AutoencoderKLConfig,
    pub consistency_decoder: Option<ConsistencyDecoderVAE>,
    pub scheduler_config: SchedulerConfig,
    pub dtype: DType,
}

/// `model_index.json`'s `[library, class]` for `component`, or `None` when absent or null.
fn component_class(index: &Value, component: &str) -> Option<String> {
    let v = index.get(component)?.as_array()?;
    v.get(1)?.as_str().map(str::to_string)
}

fn require_class(files: &dyn ModelFiles, index: &Value, component: &str) -> Result<String> {
    let class = component_class(index, component).ok_or_else(|| {
        Error::Checkpoint(format!(
            "{}/model_index.json has no `{component}` component; a text-to-image folder needs \
             text_encoder, tokenizer, unet, vae and scheduler",
            files.describe()
        ))
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

impl Pipeline {
    /// Loads a diffusers-layout folder. `dtype` is the compute storage type (f16 needs the
    /// adapter's `shader-f16`).
    pub fn load(ctx: &Context, files: &dyn ModelFiles, dtype: DType) -> Result<Pipeline> {
        if dtype == DType::F16 && !ctx.has_f16() {
            return Err(Error::MissingFeature {
                op: OP,
                feature: "shader-f16",
                hint: "load the model in f32 instead",
            });
        }
        let index: Value =
            serde_json::from_slice(&files.require("model_index.json")?).map_err(|e| {
                Error::Checkpoint(format!("{}/model_index.json: {e}", files.describe()))
            })?;
        let te_class = require_class(files, &index, "text_encoder")?;
        require_class(files, &index, "tokenizer")?;
        let unet_class = require_class(files, &index, "unet")?;
        let vae_class = require_class(files, &index, "vae")?;
        require_class(files, &index, "scheduler")?;
        if unet_class != "UNet2DConditionModel" {
            return Err(Error::Checkpoint(format!(
                "unet is a {unet_class}; hoa runs UNet2DConditionModel"
            )));
        }

        // Text encoder and its context length.
        let te_weights = component_weights(files, "text_encoder")?;
        let te_json = files.require("text_encoder/config.json")?;
        let (text_encoder, context_len) = match te_class.as_str() {
            "CLIPTextModel" => {
                let cfg = ClipTextConfig::from_json(&te_json)?;
                let n = cfg.max_position_embeddings;
                let m = ClipTextModel::load(&Loader::new(ctx, &te_weights, dtype), &cfg)?;
                (TextEncoder::Clip(m), n)
            }
            "T5EncoderModel" => {
                let cfg = T5Config::from_json(&te_json)?;
                let m = T5EncoderModel::load(&Loader::new(ctx, &te_weights, dtype), &cfg)?;
                (TextEncoder::T5(m), 512)
            }
            other => {
                return Err(Error::Checkpoint(format!(
                    "text_encoder is a {other}; hoa runs CLIPTextModel and T5EncoderModel"
                )))
            }
        };
        drop(te_weights);

        let tok_json = match files.read("tokenizer/tokenizer.json")? {
            Some(j) => j,
            // SD 1.x/2.x repositories ship CLIP's vocab.json + merges.txt only.
            None => match (
                files.read("tokenizer/vocab.json")?,
                files.read("tokenizer/merges.txt")?,
            ) {
                (Some(v), Some(m)) if matches!(text_encoder, TextEncoder::Clip(_)) => {
                    crate::tokenizer::clip_tokenizer_json(&v, &m)?
                }
                _ => {
                    return Err(Error::Checkpoint(format!(
                        "{}/tokenizer has no tokenizer.json (hoa reads the fast-tokenizer file, \
                         or CLIP's vocab.json + merges.txt; write it with \
                         `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`)",
                        files.describe()
                    )))
                }
            },
        };
        let tok_cfg = files.read("tokenizer/tokenizer_config.json")?;
        let tokenizer = Tokenizer::from_bytes(&tok_json, tok_cfg.as_deref(), context_len)?;
        if tokenizer.max_length() > context_len {
            return Err(Error::Checkpoint(format!(
                "tokenizer model_max_length {} exceeds the text encoder's context {context_len}",
                tokenizer.max_length()
            )));
        }

        let unet_config =
            UNet2DConditionModelConfig::from_json(&files.require("unet/config.json")?)?;
        let unet_weights = component_weights(files, "unet")?;
        let unet =
            UNet2DConditionModel::load(&Loader::new(ctx, &unet_weights, dtype), &unet_config)?;
        drop(unet_weights);

        if vae_class != "AutoencoderKL" {
            return Err(Error::Checkpoint(format!(
                "vae is a {vae_class}; hoa runs AutoencoderKL (a consistency decoder goes in \
                 consistency_decoder/)"
            )));
        }
        let vae_config = AutoencoderKLConfig::from_json(&files.require("vae/config.json")?)?;
        let vae_weights = component_weights(files, "vae")?;
        let vae = AutoencoderKL::load(&Loader::new(ctx, &vae_weights, dtype), &vae_config)?;
        drop(vae_weights);
        if vae_config.latent_channels != unet_config.in_channels {
            return Err(Error::Checkpoint(format!(
                "the VAE has {} latent channels but the U-Net takes {}",
                vae_config.latent_channels, unet_config.in_channels
            )));
        }

        let consistency_decoder = if files.exists("consistency_decoder/config.json") {
            let cfg = ConsistencyDecoderVAEConfig::from_json(
                &files.require("consistency_decoder/config.json")?,
            )?;
            let w = component_weights(files, "consistency_decoder")?;
            Some(ConsistencyDecoderVAE::load(
                &Loader::new(ctx, &w, dtype),
                &cfg,
            )?)
        } else {
            None
        };

        let scheduler_config =
            SchedulerConfig::from_json(&files.require("scheduler/scheduler_config.json")?)?;
        Ok(Pipeline {
            tokenizer,
            text_encoder,
            unet,
            unet_config,
            vae,
            vae_config,
            consistency_decoder,
            scheduler_config,
            dtype,
        })
    }

    /// Pixels per latent pixel (8 for Stable Diffusion).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.scale_factor()
    }

    /// The scheduler `opts` asks for, or the folder's own. A folder whose scheduler hoa does
    /// not implement (SD 1.x ships PNDMScheduler) gets DPM-Solver++ 2M on the same noise
    /// schedule, the usual replacement (20-25 steps match PNDM's 50), with a warning.
    pub fn scheduler_kind(&self, opts: &GenerateOptions) -> Result<SchedulerKind> {
        Ok(self.scheduler_choice(opts).0)
    }

    fn scheduler_choice(&self, opts: &GenerateOptions) -> (SchedulerKind, Option<String>) {
        if let Some(k) = opts.scheduler {
            return (k, None);
        }
        match SchedulerKind::from_config(&self.scheduler_config) {
            Ok(k) => (k, None),
            Err(e) => (
                SchedulerKind::DpmPp2M,
                Some(format!("{e}; using dpm++2m on the model's noise schedule")),
            ),
        }
    }

    /// Checks `opts` before any work, so bad input fails fast with a clear message.
    pub fn validate(&self, ctx: &Context, opts: &GenerateOptions) -> Result<()> {
        let (w, h) = (opts.width, opts.height);
        if w == 0 || h == 0 || w % 8 != 0 || h % 8 != 0 {
            return Err(bad(format!(
                "width and height must be positive multiples of 8, got {w}x{h} (try {}x{})",
                (w.max(8) / 8) * 8,
                (h.max(8) / 8) * 8
            )));
        }
        let f = self.vae_scale_factor();
        // Each U-Net down block but the last halves the latent.
        let levels = self.unet_config.down_block_types.len().saturating_sub(1);
        let m = f << levels;
        if w % m != 0 || h % m != 0 {
            return Err(bad(format!(
                "this model needs width and height divisible by {m} (VAE factor {f} x {} U-Net \
                 downsamplings), got {w}x{h}",
                1 << levels
            )));
        }
        if opts.steps == 0 {
            return Err(bad("steps must be at least 1"));
        }
        schedulers::check_eta(opts.eta as f64)?;
        if opts.batch == 0 {
            return Err(bad("batch must be at least 1"));
        }
        let high = opts
            .guidance_high
            .map(|h| ("the high-noise guidance", h.scale));
        for (what, g) in std::iter::once(("guidance", opts.guidance)).chain(high) {
            if !g.is_finite() || g < 0.0 {
                return Err(bad(format!("{what} must be a finite number ≥ 0, got {g}")));
            }
        }
        if let Some(h) = opts.guidance_high {
            if !h.from_timestep.is_finite() || h.from_timestep < 0.0 {
                return Err(bad(format!(
                    "the high-noise guidance's from_timestep must be a finite number ≥ 0, got {}",
                    h.from_timestep
                )));
            }
        }
        if let Some(l) = &opts.latents {
            let want = opts.batch * self.unet_config.in_channels * (h / f) * (w / f);
            if l.len() != want {
                return Err(bad(format!(
                    "latents hold {} numbers; {w}x{h} with batch {} needs [{}, {}, {}, {}] = {want}",
                    l.len(),
                    opts.batch,
                    opts.batch,
                    self.unet_config.in_channels,
                    h / f,
                    w / f
                )));
            }
        }
        if let Some(init) = &opts.init {
            if init.image.width != w || init.image.height != h {
                return Err(bad(format!(
                    "the init image is {}x{} but the output is {w}x{h}; resize it or pass its size",
                    init.image.width, init.image.height
                )));
            }
            if !(init.strength > 0.0 && init.strength <= 1.0) {
                return Err(bad(format!(
                    "strength must be in (0, 1], got {}",
                    init.strength
                )));
            }
            if let Some(m) = &init.mask {
                if m.len() != w * h {
                    return Err(bad(format!(
                        "the mask has {} pixels but the image has {w}x{h} = {}",
                        m.len(),
                        w * h
                    )));
                }
            }
        }
        if opts.decoder == Decoder::Consistency && self.consistency_decoder.is_none() {
            return Err(Error::Checkpoint(
                "--decoder consistency: this model folder has no consistency_decoder/ (a \
                 ConsistencyDecoderVAE folder with config.json and weights)"
                    .into(),
            ));
        }
        self.scheduler_kind(opts)?;
        // The U-Net's widest activation is at full latent resolution: the last up block's
        // concat of a skip with the level below. (The feed-forward runs in chunks of tokens
        // and the VAE decode in tiles when they would not fit.)
        // Guidance halves run as separate U-Net batches when both together would not fit.
        let needed = self.unet_peak_bytes(opts.batch, w, h);
        let max = ctx.max_binding_bytes();
        if needed > max {
            return Err(Error::Limit {
                op: OP,
                limit: "max_storage_buffer_binding_size",
                needed,
                max,
                hint: format!(
                    "{w}x{h} with batch {} is too large for this device; use a smaller size or \
                     batch",
                    opts.batch
                ),
            });
        }
        Ok(())
    }

    /// Bytes of the U-Net's widest activation for `rows` samples at `w`x`h` pixels: at full
    /// latent resolution, the last up block's concat of a skip with the level below. (The
    /// feed-forward runs in chunks of tokens and the VAE decodes in tiles when they would not
    /// fit, so neither bounds the size.)
    fn unet_peak_bytes(&self, rows: usize, w: usize, h: usize) -> u64 {
        let f = self.vae_scale_factor();
        let c = &self.unet_config.block_out_channels;
        let widest = c[0] + c.get(1).copied().unwrap_or(c[0]);
        (rows * widest * (h / f) * (w / f) * self.dtype.size()) as u64
    }

    fn tokenize(&self, text: &str, what: &str, events: &mut dyn FnMut(Event)) -> Result<Vec<u32>> {
        let t = self.tokenizer.encode(text)?;
        if t.dropped > 0 {
            events(Event::Warning(format!(
                "the {what} is longer than the text encoder's {} tokens; {} tokens were \
                 dropped: \"{}\"",
                self.tokenizer.max_length(),
                t.dropped,
                t.dropped_text
            )));
        }
        Ok(t.ids)
    }

    /// `[negative × batch, prompt × batch]` embeddings when guiding, else `[prompt × batch]`.
    fn encode_prompts(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        cfg: bool,
        events: &mut dyn FnMut(Event),
    ) -> Result<Tensor> {
        let pos = self.tokenize(&opts.prompt, "prompt", events)?;
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
        self.text_encoder.encode(ctx, &ids, n)
    }

    /// Pixels [B, 3, H, W] in [-1, 1] from RGB bytes.
    fn image_tensor(&self, ctx: &Context, img: &RgbImage, batch: usize) -> Result<Tensor> {
        let (w, h) = (img.width, img.height);
        let mut v = Vec::with_capacity(batch * 3 * w * h);
        for _ in 0..batch {
            for c in 0..3 {
                v.extend(
                    img.data[c..]
                        .iter()
                        .step_by(3)
                        .map(|&p| p as f32 / 127.5 - 1.0),
                );
            }
        }
        Tensor::from_f32(ctx, &v, &[batch, 3, h, w], self.dtype)
    }

    /// Generates `opts.batch` images.
    pub async fn generate(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<RgbImage>> {
        self.validate(ctx, opts)?;
        let dt = self.dtype;
        let b = opts.batch;
        let f = self.vae_scale_factor();
        let (lh, lw) = (opts.height / f, opts.width / f);
        let lc = self.unet_config.in_channels;
        let lshape = [b, lc, lh, lw];
        let per_image = lc * lh * lw;
        let mut gens: Vec<NoiseGenerator> = (0..b as u64)
            .map(|k| NoiseGenerator::new(opts.seed.wrapping_add(k)))
            .collect();

        // 1. Prompt embeddings (diffusers guides only when guidance_scale > 1).
        let cfg = opts.guidance > 1.0 || opts.guidance_high.is_some_and(|h| h.scale > 1.0);
        let context = self.encode_prompts(ctx, opts, cfg, events)?;

        // 2. Timesteps.
        let (kind, note) = self.scheduler_choice(opts);
        if let Some(n) = note {
            events(Event::Warning(n));
        }
        let mut sched = schedulers::build(kind, &self.scheduler_config, opts.steps)?;
        if opts.eta != 0.0 && !sched.set_eta(opts.eta as f64)? {
            events(Event::Warning(format!(
                "eta {} is ignored: only DDIM takes it (this is {})",
                opts.eta,
                kind.name()
            )));
        }
        let n = sched.timesteps().len();

        // 3. Initial latents: noise (drawn first, so that a seed's noise does not depend on
        // the mode), or the caller's.
        let noise = match &opts.latents {
            Some(l) => l.clone(),
            None => randn_batch(&mut gens, per_image),
        };
        let noise = Tensor::from_f32(ctx, &noise, &lshape, dt)?;
        let sf = self.vae_config.scaling_factor as f32;
        let shift = self.vae_config.shift_factor.unwrap_or(0.0) as f32;
        let (mut latents, start, init_latents, mask) = match &opts.init {
            None => (
                elementwise::scale(ctx, &noise, sched.init_noise_sigma())?,
                0,
                None,
                None,
            ),
            Some(init) => {
                // img2img: encode, sample the latent distribution, noise it to the start step.
                let image = self.image_tensor(ctx, &init.image, b)?;
                let enc = self.vae.encode_auto(ctx, &image)?;
                let eps = Tensor::from_f32(ctx, &randn_batch(&mut gens, per_image), &lshape, dt)?;
                let std = elementwise::unary(
                    ctx,
                    &enc.logvar,
                    crate::kernels::Activation::Exp,
                    0.5,
                    0.0,
                )?;
                let sample = elementwise::add(ctx, &enc.mean, &elementwise::mul(ctx, &std, &eps)?)?;
                let init_latents = elementwise::unary(
                    ctx,
                    &sample,
                    crate::kernels::Activation::None,
                    sf,
                    -shift * sf,
                )?;
                let start = schedulers::img2img_start(n, init.strength).min(n - 1);
                let latents = sched.add_noise(ctx, &init_latents, &noise, start)?;
                let mask = match &init.mask {
                    None => None,
                    Some(m) => Some(self.latent_mask(ctx, m, opts.width, opts.height)?),
                };
                (latents, start, Some(init_latents), mask)
            }
        };

        // 4. Denoising loop, all on the device; the guidance halves as two U-Net batches
        // when one batch of both would exceed a binding.
        let halves = if cfg
            && (opts.split_guidance
                || self.unet_peak_bytes(2 * b, opts.width, opts.height) > ctx.max_binding_bytes())
        {
            Some((
                context.narrow_rows(ctx, 0, b)?,
                context.narrow_rows(ctx, b, b)?,
            ))
        } else {
            None
        };
        let timesteps = sched.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate().skip(start) {
            let scale = sched.input_scale(i);
            let x = if scale != 1.0 {
                elementwise::scale(ctx, &latents, scale)?
            } else {
                latents.clone()
            };
            let out = match &halves {
                Some((neg, pos)) => {
                    let t = vec![t; b];
                    let u = self.unet.forward(ctx, &x, &t, neg)?.sample;
                    let c = self.unet.forward(ctx, &x, &t, pos)?.sample;
                    concat(ctx, &[&u, &c], 0)?
                }
                None => {
                    let model_in = if cfg { concat(ctx, &[&x, &x], 0)? } else { x };
                    let t = vec![t; model_in.shape()[0]];
                    self.unet.forward(ctx, &model_in, &t, &context)?.sample
                }
            };
            let eps = if cfg {
                classifier_free_guidance(ctx, &out, opts.guidance_at(t))?
            } else {
                out
            };
            let step_noise = if sched.needs_noise(i) {
                Some(Tensor::from_f32(
                    ctx,
                    &randn_batch(&mut gens, per_image),
                    &lshape,
                    dt,
                )?)
            } else {
                None
            };
            latents = sched.step(ctx, &eps, i, &latents, step_noise.as_ref())?;
            if let (Some(init), Some(mask)) = (&init_latents, &mask) {
                // diffusers' latent-blend inpainting: keep the known region at the next
                // step's noise level.
                let known = if i + 1 < n {
                    sched.add_noise(ctx, init, &noise, i + 1)?
                } else {
                    init.clone()
                };
                latents = blend(ctx, &known, &latents, mask)?;
            }
            ctx.finish().await?;
            events(Event::Step {
                step: i + 1 - start,
                total: n - start,
                latents: &latents,
            });
            let done = i + 1 - start;
            if opts.preview_every > 0 && done % opts.preview_every == 0 && i + 1 < n {
                // The VAE decoder draws no noise, so previews leave the result unchanged.
                let mut images = self.decode(ctx, &latents, Decoder::Vae, &mut []).await?;
                events(Event::Preview {
                    step: done,
                    image: images.swap_remove(0),
                });
            }
        }

        // 5. Decode.
        events(Event::Decoding);
        let pixels = self.decode(ctx, &latents, opts.decoder, &mut gens).await?;
        Ok(pixels)
    }

    /// The mask [1, 1, h, w] at latent resolution (nearest, like diffusers' mask processor
    /// resize to the latent size), in the compute dtype.
    fn latent_mask(&self, ctx: &Context, m: &[f32], w: usize, h: usize) -> Result<Tensor> {
        let f = self.vae_scale_factor();
        let (lw, lh) = (w / f, h / f);
        let mut out = Vec::with_capacity(lw * lh);
        for y in 0..lh {
            for x in 0..lw {
                // The pixel nearest the latent cell's center, binarized as diffusers does.
                let v = m[(y * f + f / 2) * w + x * f + f / 2];
                out.push(if v >= 0.5 { 1.0 } else { 0.0 });
            }
        }
        Tensor::from_f32(ctx, &out, &[1, 1, lh, lw], self.dtype)
    }

    /// Decodes final latents to RGB images.
    pub async fn decode(
        &self,
        ctx: &Context,
        latents: &Tensor,
        decoder: Decoder,
        gens: &mut [NoiseGenerator],
    ) -> Result<Vec<RgbImage>> {
        let sample = match decoder {
            Decoder::Vae => {
                let sf = self.vae_config.scaling_factor as f32;
                let shift = self.vae_config.shift_factor.unwrap_or(0.0) as f32;
                let z = elementwise::unary(
                    ctx,
                    latents,
                    crate::kernels::Activation::None,
                    1.0 / sf,
                    shift,
                )?;
                self.vae.decode_auto(ctx, &z)?
            }
            Decoder::Consistency => {
                let cd = self.consistency_decoder.as_ref().ok_or_else(|| {
                    Error::Checkpoint("this model folder has no consistency_decoder/".into())
                })?;
                let z = elementwise::scale(ctx, latents, 1.0 / cd.scaling_factor() as f32)?;
                let s = latents.shape();
                let f = cd.scale_factor();
                let shape = [s[0], 3, s[2] * f, s[3] * f];
                let per = 3 * shape[2] * shape[3];
                let n0 = Tensor::from_f32(ctx, &randn_batch(gens, per), &shape, self.dtype)?;
                let n1 = Tensor::from_f32(ctx, &randn_batch(gens, per), &shape, self.dtype)?;
                cd.decode(ctx, &z, &[&n0, &n1])?.sample
            }
        };
        let s = sample.shape().to_vec();
        let (b, h, w) = (s[0], s[2], s[3]);
        let v = sample.read(ctx).await?;
        Ok((0..b)
            .map(|k| {
                let img = &v[k * 3 * h * w..(k + 1) * 3 * h * w];
                let mut data = Vec::with_capacity(3 * h * w);
                for p in 0..h * w {
                    for c in 0..3 {
                        data.push(to_u8(img[c * h * w + p]));
                    }
                }
                RgbImage {
                    width: w,
                    height: h,
                    data,
                }
            })
            .collect())
    }
}

/// diffusers' postprocess: `(x / 2 + 0.5).clamp(0, 1)`, then `(x * 255).round()`.
pub fn to_u8(x: f32) -> u8 {
    let v = (x / 2.0 + 0.5).clamp(0.0, 1.0);
    (v * 255.0).round() as u8
}
