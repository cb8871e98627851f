//! The generation policy, in one place: a [`Request`] (what the user chose) is resolved against
//! the model's defaults (`hoa.json`), its scheduler config and the device's limits into concrete
//! [`GenerateOptions`], validated once. Every front end (CLI, wasm, server) calls [`resolve`]
//! and builds a PNG's `parameters` text with [`Resolved::parameters`], so defaults, checks and
//! metadata cannot drift apart. Errors name where a bad value came from: the flag or JSON key
//! the user typed ([`Request::name`]), or the model file and field.

use crate::error::{Error, Result};
use crate::image_io::{decode_rgb, GenerationParameters};
use crate::model_info::ModelInfo;
use crate::options::{
    Decoder, GenerateOptions, GuidanceHigh, InitImage, MicroConditioning, Variation,
    DEFAULT_AESTHETIC_SCORE, DEFAULT_NEGATIVE_AESTHETIC_SCORE,
};
use crate::request::{Mask, Request};
use crate::schedulers::{self, SchedulerKind};

pub use crate::options::{DeviceLimits, MAX_BATCH, MAX_SIDE};
/// Largest guidance scale: far past any useful value, and short of overflowing f32 activations.
pub const MAX_GUIDANCE: f64 = 100.0;
/// The default steps and guidance of a folder whose `hoa.json` sets none (diffusers' SD
/// examples use 7.5; 25 steps of the default DPM-Solver++ match PNDM's 50).
pub const DEFAULT_STEPS: usize = 25;
pub const DEFAULT_GUIDANCE: f64 = 7.5;
pub const DEFAULT_HIGH_FROM: f64 = 500.0;
pub const DEFAULT_STRENGTH: f64 = 0.75;
/// A latent consistency model's defaults when its `hoa.json` sets none (diffusers'
/// `LatentConsistencyModelPipeline.__call__`).
pub const LCM_DEFAULT_STEPS: usize = 4;
pub const LCM_DEFAULT_GUIDANCE: f64 = 8.5;
/// The SDXL refiner's default strength alone (diffusers' `StableDiffusionXLImg2ImgPipeline`).
pub const DEFAULT_REFINER_STRENGTH: f64 = 0.3;
/// Where the SDXL base hands over to the refiner by default (diffusers' documented
/// `high_noise_frac`).
pub const DEFAULT_DENOISING_END: f64 = 0.8;
/// Largest LoRA scale: far past any useful value (1 is full strength).
pub const MAX_LORA_SCALE: f64 = 100.0;
/// A preview interval past the steps just never fires; this only bounds the number.
const MAX_PREVIEW_EVERY: usize = 1 << 20;

/// A request made concrete.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// What the pipeline runs; `options.prompt` is the text the encoder reads (the upsampled
    /// prompt when there is one).
    pub options: GenerateOptions,
    /// The prompt as typed.
    pub prompt: String,
    /// The model's rewrite of the prompt, when it changed it.
    pub upsampled: Option<String>,
    /// The model's rewriter (hoa.json `rewriter`) is to rewrite the prompt: it runs on the GPU,
    /// so [`crate::rewriter::apply`] does it once the model is loaded, filling in
    /// `options.prompt` and `upsampled` (until then they hold the prompt as typed).
    pub pending_rewrite: bool,
    pub sampler: SchedulerKind,
    /// Whether the start latents came from the request rather than the seed.
    pub given_latents: bool,
    /// Things the user should know (a fallback scheduler, an unusual size, a soft mask, ...).
    pub warnings: Vec<String>,
    /// The LoRAs to merge at load, in order.
    pub loras: Vec<ResolvedLora>,
}

/// A LoRA with its checked scale.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedLora {
    /// As the request named it.
    pub file: String,
    /// The file's name without folder and `.safetensors` (A1111's `<lora:NAME:SCALE>`).
    pub name: String,
    pub scale: f64,
    pub hash: Option<String>,
}

/// Where a value came from, for its error message.
enum Source {
    User(String),
    File(&'static str, &'static str),
}

impl Source {
    fn error(&self, why: String) -> Error {
        match self {
            Source::User(what) => Error::invalid(what.clone(), why),
            Source::File(file, field) => Error::config(*file, *field, why),
        }
    }
}

/// The user's value, else the model's `hoa.json` default (its key is the request's `field`),
/// else `fallback`, with where it came from.
fn pick<T: Copy>(
    req: &Request,
    field: &'static str,
    user: Option<T>,
    model: Option<T>,
    fallback: T,
) -> (T, Source) {
    match (user, model) {
        (Some(v), _) => (v, Source::User(req.name(field))),
        (None, Some(v)) => (v, Source::File("hoa.json", field)),
        (None, None) => (fallback, Source::User(req.name(field))),
    }
}

/// An error's own words, without the module prefix its display adds.
fn why(e: Error) -> String {
    match e {
        Error::Scheduler(m) | Error::Checkpoint(m) => m,
        Error::InvalidOption { why, .. } => why,
        e => e.to_string(),
    }
}

fn int(req: &Request, field: &str, v: i64, min: i64, max: usize) -> Result<usize> {
    let max_i = i64::try_from(max).unwrap_or(i64::MAX);
    if v < min || v > max_i {
        return Err(Error::invalid(
            req.name(field),
            format!("must be between {min} and {max}, got {v}"),
        ));
    }
    Ok(v as usize)
}

/// Resolves `req` for `model` on a device with `limits`.
pub fn resolve(req: &Request, model: &ModelInfo, limits: DeviceLimits) -> Result<Resolved> {
    if model.is_sdxl_refiner() && req.init_image.is_none() {
        return Err(Error::invalid(
            req.name("init_image"),
            format!(
                "is required: this model is an SDXL refiner, which refines an image; to run \
                 it after an SDXL base, pass the base as the model and this as {}",
                req.name("refiner")
            ),
        ));
    }
    let mut r = resolve_options(req, model, limits)?;
    if r.options.denoising_end.is_some() {
        r.warnings.push(format!(
            "{} without a refiner: the image is decoded before it is fully denoised",
            req.name("denoising_end")
        ));
    }
    Ok(r)
}

fn resolve_options(req: &Request, model: &ModelInfo, limits: DeviceLimits) -> Result<Resolved> {
    let mut warnings = Vec::new();
    if let Some(l) = req.latents.as_ref().filter(|l| l.shape.len() != 4) {
        return Err(Error::invalid(
            req.name("latents"),
            format!(
                "hold a tensor {:?}; expected [batch, channels, height/f, width/f]",
                l.shape
            ),
        ));
    }
    let variation = resolve_variation(req, model)?;
    let (prompt, upsampled, text, pending_rewrite) =
        resolve_prompt(req, model, variation.is_some())?;
    let steps = resolve_steps(req, model)?;
    let prediction_type = resolve_prediction(req)?;
    let (sampler, note) = resolve_scheduler(req, model, steps)?;
    warnings.extend(note);
    let (guidance, guidance_high) = resolve_guidance(req, model)?;
    let guidance_high = single_guidance(req, model, guidance_high, &mut warnings);
    let eta = resolve_eta(req, sampler, &mut warnings)?;
    let init = resolve_init(req, model, &mut warnings)?;
    let (width, height, batch) = resolve_size(req, model, init.as_ref(), &mut warnings)?;
    let decoder = resolve_decoder(req, model)?;
    let preview_every = match req.preview_every {
        Some(v) => int(req, "preview_every", v, 0, MAX_PREVIEW_EVERY)?,
        None => 0,
    };
    let latents = resolve_latents(req, model, batch, width, height)?;
    let micro = resolve_micro(req, model, &mut warnings)?;
    let loras = resolve_loras(req)?;
    let denoising_end = resolve_denoising_end(req, model)?;
    let (aesthetic_score, negative_aesthetic_score) = resolve_aesthetic(req, model, &mut warnings)?;
    let negative_prompt = resolve_negative(req, model, &mut warnings);
    let options = GenerateOptions {
        prompt: text,
        negative_prompt,
        width,
        height,
        steps,
        guidance: guidance as f32,
        guidance_high,
        scheduler: Some(sampler),
        eta: eta as f32,
        seed: req.seed.unwrap_or(0),
        batch,
        decoder,
        latents,
        init,
        variation,
        split_guidance: req.split_guidance.unwrap_or(limits.host_memory),
        preview_every,
        cancel: None,
        micro,
        loras: loras.iter().map(|l| (l.file.clone(), l.scale)).collect(),
        prediction_type,
        denoising_end,
        denoising_start: None,
        aesthetic_score,
        negative_aesthetic_score,
    };
    check_memory(model, limits, &options, req)?;
    Ok(Resolved {
        options,
        prompt,
        upsampled,
        pending_rewrite,
        sampler,
        given_latents: req.latents.is_some(),
        warnings,
        loras,
    })
}

/// The prompt as given, its rule rewrite (when it changed), the text to encode, and whether the
/// model's rewriter is still to run on it (after the load: [`crate::rewriter::apply`]).
fn resolve_prompt(
    req: &Request,
    model: &ModelInfo,
    variation: bool,
) -> Result<(String, Option<String>, String, bool)> {
    // A variation needs no prompt: diffusers' StableUnCLIPImg2ImgPipeline defaults to "".
    let prompt = (req.prompt.clone())
        .or_else(|| variation.then(String::new))
        .ok_or_else(|| Error::invalid(req.name("prompt"), "is required"))?;
    let pending_rewrite = req.upsample != Some(false) && model.defaults.rewriter.is_some();
    let (upsampled, text) = match pending_rewrite {
        true => (None, prompt.clone()),
        false => upsample(req, model, &prompt)?,
    };
    Ok((prompt, upsampled, text, pending_rewrite))
}

/// Each LoRA's scale (default 1): finite, from 0 to [`MAX_LORA_SCALE`].
fn resolve_loras(req: &Request) -> Result<Vec<ResolvedLora>> {
    let mut out = Vec::new();
    for l in req.lora.iter().flatten() {
        let what = format!("{} {}", req.name("lora"), l.file);
        if l.file.is_empty() {
            return Err(Error::invalid(req.name("lora"), "needs a file"));
        }
        let scale = l.scale.unwrap_or(1.0);
        if !(0.0..=MAX_LORA_SCALE).contains(&scale) {
            return Err(Error::invalid(
                what,
                format!("the scale must be a number from 0 to {MAX_LORA_SCALE}, got {scale}"),
            ));
        }
        let base = l.file.rsplit(['/', '\\']).next().unwrap_or(&l.file);
        let name = base.strip_suffix(".safetensors").unwrap_or(base);
        out.push(ResolvedLora {
            file: l.file.clone(),
            name: name.to_string(),
            scale,
            hash: l.hash.clone(),
        });
    }
    Ok(out)
}

/// The rule set's upsampled prompt (when it changed) and the text the encoder reads; used
/// when the model names no rewriter.
fn upsample(req: &Request, model: &ModelInfo, prompt: &str) -> Result<(Option<String>, String)> {
    let rules = model.defaults.prompt_upsampling.as_ref();
    match rules.filter(|_| req.upsample != Some(false)) {
        Some(u) => {
            let text = u.upsample(prompt).map_err(|e| match e {
                Error::InvalidOption { why, .. } => Error::invalid(req.name("prompt"), why),
                e => e,
            })?;
            Ok(((text != prompt).then(|| text.clone()), text))
        }
        None => Ok((None, prompt.to_string())),
    }
}

/// Whether the model is a latent consistency model: its U-Net embeds the guidance scale
/// (`time_cond_proj_dim`), so guidance runs in one batch and takes no negative prompt.
fn embeds_guidance(model: &ModelInfo) -> bool {
    model.unet.time_cond_proj_dim.is_some()
}

/// The negative prompt, dropped with a warning for a latent consistency model (diffusers'
/// `LatentConsistencyModelPipeline` has none: its guidance is embedded, not a second pass).
fn resolve_negative(req: &Request, model: &ModelInfo, warnings: &mut Vec<String>) -> String {
    let negative = req.negative_prompt.clone().unwrap_or_default();
    if embeds_guidance(model) && !negative.is_empty() {
        warnings.push(format!(
            "{} is ignored: this latent consistency model embeds the guidance scale and runs \
             no unconditional pass",
            req.name("negative_prompt")
        ));
        return String::new();
    }
    negative
}

/// The high-noise guidance split, dropped with a warning for a latent consistency model, whose
/// U-Net is conditioned on one embedded scale for the whole run.
fn single_guidance(
    req: &Request,
    model: &ModelInfo,
    high: Option<GuidanceHigh>,
    warnings: &mut Vec<String>,
) -> Option<GuidanceHigh> {
    if embeds_guidance(model) && high.is_some() {
        warnings.push(format!(
            "{} is ignored: this latent consistency model embeds one guidance scale for all \
             steps",
            req.name("guidance_high")
        ));
        return None;
    }
    high
}

fn resolve_steps(req: &Request, model: &ModelInfo) -> Result<usize> {
    let model_steps = model.defaults.steps.map(|s| s as i64);
    let fallback = match embeds_guidance(model) {
        true => LCM_DEFAULT_STEPS,
        false => DEFAULT_STEPS,
    };
    let (steps, src) = pick(req, "steps", req.steps, model_steps, fallback as i64);
    let n = model.num_train_timesteps()?;
    if steps < 1 || steps as u64 > n as u64 {
        return Err(src.error(format!(
            "must be between 1 and the {n} timesteps the model was trained with \
             (scheduler/scheduler_config.json: num_train_timesteps), got {steps}"
        )));
    }
    Ok(steps as usize)
}

/// The scheduler and what the user should know about it (a fallback for a folder's scheduler
/// hoa lacks, a schedule that leaves few steps where the image forms).
fn resolve_scheduler(
    req: &Request,
    model: &ModelInfo,
    steps: usize,
) -> Result<(SchedulerKind, Vec<String>)> {
    let (kind, note) = match &req.scheduler {
        Some(name) => {
            let k = name
                .parse::<SchedulerKind>()
                .map_err(|e| Error::invalid(req.name("scheduler"), why(e)))?;
            (k, None)
        }
        None => model.scheduler_choice(),
    };
    // Building it checks the config and the timesteps for this many steps.
    let mut config = model.scheduler.clone();
    if req.prediction.is_some() {
        config.prediction_type = resolve_prediction(req)?;
    }
    let sched = schedulers::build(kind, &config, steps).map_err(|e| match e {
        Error::Config { .. } => e,
        e => {
            let what = match &req.scheduler {
                Some(_) => format!("{} {}", req.name("scheduler"), kind.name()),
                None => format!("the model's scheduler ({})", kind.name()),
            };
            Error::invalid(format!("{what} with {} {steps}", req.name("steps")), why(e))
        }
    })?;
    Ok((kind, note.into_iter().chain(sched.note()).collect()))
}

/// `prediction`: `epsilon` or `v_prediction` (`v` accepted), or the model's own.
fn resolve_prediction(req: &Request) -> Result<Option<String>> {
    match req.prediction.as_deref() {
        None => Ok(None),
        Some("epsilon") => Ok(Some("epsilon".into())),
        Some("v_prediction" | "v") => Ok(Some("v_prediction".into())),
        Some(other) => Err(Error::invalid(
            req.name("prediction"),
            format!("is `{other}`; use epsilon or v_prediction"),
        )),
    }
}

fn check_scale(v: f64, src: &Source) -> Result<()> {
    if !v.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&v) {
        return Err(src.error(format!(
            "must be a number from 0 to {MAX_GUIDANCE} (1 turns guidance off), got {v}"
        )));
    }
    Ok(())
}

/// The guidance scale and the high-noise split. The model's split applies only when the user
/// set no `guidance` (it is tuned to the model's own scale).
fn resolve_guidance(req: &Request, model: &ModelInfo) -> Result<(f64, Option<GuidanceHigh>)> {
    let d = &model.defaults;
    let (g, src) = pick(
        req,
        "guidance",
        req.guidance,
        d.guidance.map(f64::from),
        match embeds_guidance(model) {
            true => LCM_DEFAULT_GUIDANCE,
            false => DEFAULT_GUIDANCE,
        },
    );
    check_scale(g, &src)?;
    let model_high = d.guidance_high.filter(|_| req.guidance.is_none());
    let high = match (req.guidance_high, req.guidance_high_from) {
        (None, Some(_)) => {
            return Err(Error::invalid(
                req.name("guidance_high_from"),
                format!("needs {} (the scale it applies)", req.name("guidance_high")),
            ))
        }
        (None, None) => model_high.map(|h| (h.scale as f64, h.from_timestep as f64, true)),
        (Some(s), from) => {
            let (f, from_file) = match (from, d.guidance_high) {
                (Some(f), _) => (f, false),
                (None, Some(h)) => (h.from_timestep as f64, true),
                (None, None) => (DEFAULT_HIGH_FROM, false),
            };
            Some((s, f, from_file))
        }
    };
    let Some((scale, from, from_file)) = high else {
        return Ok((g, None));
    };
    let scale_src = match req.guidance_high {
        Some(_) => Source::User(req.name("guidance_high")),
        None => Source::File("hoa.json", "guidance_high.scale"),
    };
    check_scale(scale, &scale_src)?;
    let from_src = if from_file {
        Source::File("hoa.json", "guidance_high.from_timestep")
    } else {
        Source::User(req.name("guidance_high_from"))
    };
    let n = model.num_train_timesteps()? as f64;
    if !from.is_finite() || !(0.0..=n).contains(&from) {
        return Err(from_src.error(format!(
            "must be a timestep from 0 to the model's num_train_timesteps {n}, got {from}"
        )));
    }
    let h = GuidanceHigh {
        scale: scale as f32,
        from_timestep: from as f32,
    };
    Ok((g, Some(h)))
}

fn resolve_eta(req: &Request, kind: SchedulerKind, warnings: &mut Vec<String>) -> Result<f64> {
    let eta = req.eta.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&eta) {
        return Err(Error::invalid(
            req.name("eta"),
            format!("must be from 0 (deterministic DDIM) to 1 (DDPM's variance), got {eta}"),
        ));
    }
    if eta != 0.0 && kind != SchedulerKind::Ddim {
        warnings.push(format!(
            "{} {eta} is ignored: only ddim takes it (this is {})",
            req.name("eta"),
            kind.name()
        ));
    }
    Ok(eta)
}

fn resolve_init(
    req: &Request,
    model: &ModelInfo,
    warnings: &mut Vec<String>,
) -> Result<Option<InitImage>> {
    let Some(image) = &req.init_image else {
        for (field, given) in [
            ("strength", req.strength.is_some()),
            ("mask", req.mask.is_some()),
        ] {
            if given {
                return Err(Error::invalid(
                    req.name(field),
                    format!(
                        "needs {} (the picture to start from)",
                        req.name("init_image")
                    ),
                ));
            }
        }
        return Ok(None);
    };
    let strength = req.strength.unwrap_or(match model.is_sdxl_refiner() {
        true => DEFAULT_REFINER_STRENGTH,
        false => DEFAULT_STRENGTH,
    });
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::invalid(
            req.name("strength"),
            format!("must be in (0, 1] (1 repaints everything), got {strength}"),
        ));
    }
    let mask = match &req.mask {
        None => None,
        Some(m) => Some(check_mask(req, m, image.width, image.height, warnings)?),
    };
    Ok(Some(InitImage {
        image: image.clone(),
        strength: strength as f32,
        mask,
    }))
}

/// `--variation IMAGE` (and `--noise-level`) for a stable unCLIP model, which needs one: its
/// U-Net is conditioned on an image embedding.
fn resolve_variation(req: &Request, model: &ModelInfo) -> Result<Option<Variation>> {
    let (image, unclip) = match (&req.variation, &model.unclip) {
        (None, None) if req.noise_level.is_some() => {
            return Err(Error::invalid(
                req.name("noise_level"),
                format!("needs {} (an image to vary)", req.name("variation")),
            ))
        }
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(Error::invalid(
                req.name("variation"),
                "is required: this is a stable unCLIP model (its U-Net takes an image \
                 embedding, class_embed_type \"projection\"), which makes variations of an image",
            ))
        }
        (Some(_), None) => {
            return Err(Error::invalid(
                req.name("variation"),
                "needs a stable unCLIP model (e.g. stable-diffusion-2-1-unclip): this folder \
                 has no image_encoder/ (CLIPVisionModelWithProjection) and its U-Net no \
                 class_embed_type \"projection\"",
            ))
        }
        (Some(i), Some(u)) => (i, u),
    };
    if req.init_image.is_some() {
        return Err(Error::invalid(
            req.name("variation"),
            format!("and {} cannot be combined", req.name("init_image")),
        ));
    }
    let noise_level = match req.noise_level {
        Some(n) => int(
            req,
            "noise_level",
            n,
            0,
            unclip.noise_levels.saturating_sub(1),
        )?,
        None => 0,
    };
    Ok(Some(Variation {
        image: image.clone(),
        noise_level,
        noise: None,
    }))
}

/// Image variations for a front end that offers them on every model (`hoa serve`'s
/// `POST /v1/images/variations`): `req` becomes a stable unCLIP variation of the encoded
/// `image` (from its CLIP image embedding; decoded as `--variation` reads it, transparency
/// onto white) when the model is one, else img2img of `image` from the empty prompt,
/// unrewritten (decoded as `--init-image` reads it), the documented fallback of a model
/// without an image encoder. Here, beside [`resolve`], so that one place decides what "a
/// variation" means for each kind of model; `noise_level` is refused for the fallback, which
/// has no image embedding to noise.
pub fn variation_request(mut req: Request, image: &[u8], model: &ModelInfo) -> Result<Request> {
    let what = req.name("image");
    if model.unclip.is_some() {
        req.variation = Some(crate::clip::decode_image(image, &what)?);
        return Ok(req);
    }
    if req.noise_level.is_some() {
        return Err(Error::invalid(
            req.name("noise_level"),
            "needs a stable unCLIP model (an image_encoder/ and a U-Net with class_embed_type \
             \"projection\"); this model's variations are img2img from the empty prompt",
        ));
    }
    let rgb = decode_rgb(image, &what).map_err(|e| match e {
        // decode_rgb names no field; a front end maps this one to its image field.
        Error::Checkpoint(m) => Error::invalid(&what, m.trim_start_matches(&format!("{what}: "))),
        e => e,
    })?;
    req.prompt = Some(String::new());
    req.upsample = Some(false);
    req.init_image = Some(rgb);
    Ok(req)
}

fn check_mask(
    req: &Request,
    m: &Mask,
    w: usize,
    h: usize,
    warnings: &mut Vec<String>,
) -> Result<Vec<f32>> {
    if (m.width, m.height) != (w, h) || m.values.len() != w.saturating_mul(h) {
        return Err(Error::invalid(
            req.name("mask"),
            format!("is {}x{} but the init image is {w}x{h}", m.width, m.height),
        ));
    }
    let soft = m
        .values
        .iter()
        .filter(|&&v| (0.02..=0.98).contains(&v))
        .count();
    if soft * 100 > m.values.len() {
        warnings.push(format!(
            "{} has gray pixels ({}% of it); they are rounded: at least half white repaints, \
             darker keeps (diffusers binarizes masks the same way)",
            req.name("mask"),
            soft * 100 / m.values.len().max(1)
        ));
    }
    Ok(m.values.clone())
}

/// Width, height and batch: the user's, else the init image's or the latents' size, else the
/// model's native size.
fn resolve_size(
    req: &Request,
    model: &ModelInfo,
    init: Option<&InitImage>,
    warnings: &mut Vec<String>,
) -> Result<(usize, usize, usize)> {
    let f = model.vae_scale_factor()?;
    let native = model.native_size()?;
    let from_latents = req
        .latents
        .as_ref()
        .map(|l| (l.shape[3].saturating_mul(f), l.shape[2].saturating_mul(f)));
    let given = init
        .map(|i| (i.image.width, i.image.height))
        .or(from_latents);
    let side = |field: &str, user: Option<i64>, other: Option<usize>| -> Result<usize> {
        match user {
            Some(v) => int(req, field, v, 1, MAX_SIDE),
            None => Ok(other.unwrap_or(native)),
        }
    };
    let w = side("width", req.width, given.map(|g| g.0))?;
    let h = side("height", req.height, given.map(|g| g.1))?;
    if let Some(i) = init.filter(|i| (i.image.width, i.image.height) != (w, h)) {
        return Err(Error::invalid(
            format!("{}/{}", req.name("width"), req.name("height")),
            format!(
                "{w}x{h}, but the init image is {}x{} and hoa does not resize it: leave the \
                 size out or resize the image",
                i.image.width, i.image.height
            ),
        ));
    }
    // The pipeline (as diffusers') also takes only multiples of 8, whatever a tiny model allows.
    let native_multiple = model.size_multiple()?;
    let m = native_multiple.max(8);
    for (field, v) in [("width", w), ("height", h)] {
        if v % m != 0 || v > MAX_SIDE {
            let what = if req.width.is_some() || req.height.is_some() {
                req.name(field)
            } else {
                format!("the {field} (from the model or the input)")
            };
            return Err(Error::invalid(
                what,
                format!(
                    "must be a multiple of {m} up to {MAX_SIDE} for this model (8 at least; its \
                     VAE scales by {f}, its U-Net halves the latent {} times), got {v}; try {}",
                    (native_multiple / f).trailing_zeros(),
                    (v / m).max(1) * m
                ),
            ));
        }
    }
    if w > 2 * native || h > 2 * native || 2 * w < native || 2 * h < native {
        warnings.push(format!(
            "{w}x{h} is far from the {native}x{native} this model was trained at; expect \
             repeated or cut-off objects"
        ));
    }
    let latent_batch = req.latents.as_ref().map(|l| l.shape[0]);
    let batch = match req.batch {
        Some(b) => int(req, "batch", b, 1, MAX_BATCH)?,
        None => latent_batch.unwrap_or(1),
    };
    Ok((w, h, batch))
}

/// SDXL's micro-conditioning: each pair checked (sizes 1..=MAX_SIDE, crop 0..=MAX_SIDE);
/// what is left out stays `None`, diffusers' default, which the pipeline reads as the output
/// size and a (0, 0) crop. Ignored, with a warning, by models without `text_time`.
fn resolve_micro(
    req: &Request,
    model: &ModelInfo,
    warnings: &mut Vec<String>,
) -> Result<MicroConditioning> {
    let pair = |field: &str, v: Option<[i64; 2]>, min: i64| -> Result<Option<(usize, usize)>> {
        let Some([a, b]) = v else { return Ok(None) };
        let ok = |x: i64| (min..=MAX_SIDE as i64).contains(&x);
        if !ok(a) || !ok(b) {
            let (n0, n1) = match min {
                0 => ("top", "left"),
                _ => ("height", "width"),
            };
            return Err(Error::invalid(
                req.name(field),
                format!("{n0} and {n1} must be from {min} to {MAX_SIDE}, got {n0} {a}, {n1} {b}"),
            ));
        }
        Ok(Some((a as usize, b as usize)))
    };
    let m = MicroConditioning {
        original_size: pair("original_size", req.original_size, 1)?,
        crops_coords_top_left: pair("crops_coords_top_left", req.crops_coords_top_left, 0)?,
        target_size: pair("target_size", req.target_size, 1)?,
        negative_original_size: pair("negative_original_size", req.negative_original_size, 1)?,
        negative_crops_coords_top_left: pair(
            "negative_crops_coords_top_left",
            req.negative_crops_coords_top_left,
            0,
        )?,
        negative_target_size: pair("negative_target_size", req.negative_target_size, 1)?,
    };
    if m != MicroConditioning::default() && model.sdxl.is_none() {
        warnings.push(format!(
            "{} and the other size conditioning are ignored: only SDXL models take them",
            req.name("original_size")
        ));
    }
    Ok(m)
}

/// `denoising_end`: a fraction in (0, 1), for SDXL base models.
fn resolve_denoising_end(req: &Request, model: &ModelInfo) -> Result<Option<f64>> {
    let Some(f) = req.denoising_end else {
        return Ok(None);
    };
    if !(f > 0.0 && f < 1.0) {
        return Err(Error::invalid(
            req.name("denoising_end"),
            format!("must be a fraction of the schedule strictly between 0 and 1, got {f}"),
        ));
    }
    if model.sdxl.is_none() || model.is_sdxl_refiner() {
        return Err(Error::invalid(
            req.name("denoising_end"),
            "stops an SDXL base model early for a refiner; this model is none",
        ));
    }
    Ok(Some(f))
}

/// The refiner's aesthetic scores: finite, from -100 to 100 (its training scores are 0..10);
/// ignored with a warning by other models.
fn resolve_aesthetic(
    req: &Request,
    model: &ModelInfo,
    warnings: &mut Vec<String>,
) -> Result<(f32, f32)> {
    let mut out = [DEFAULT_AESTHETIC_SCORE, DEFAULT_NEGATIVE_AESTHETIC_SCORE];
    let fields = [
        ("aesthetic_score", req.aesthetic_score),
        ("negative_aesthetic_score", req.negative_aesthetic_score),
    ];
    for (o, (field, v)) in out.iter_mut().zip(fields) {
        let Some(v) = v else { continue };
        if !(v.is_finite() && v.abs() <= 100.0) {
            return Err(Error::invalid(
                req.name(field),
                format!(
                    "must be a number from -100 to 100 (the refiner's default is {o}), got {v}"
                ),
            ));
        }
        if !model.is_sdxl_refiner() {
            warnings.push(format!(
                "{} is ignored: only an SDXL refiner (requires_aesthetics_score) takes it",
                req.name(field)
            ));
        }
        *o = v as f32;
    }
    Ok((out[0], out[1]))
}

/// SDXL base + refiner: `req` resolved for the `base` (stopping at `denoising_end`, default
/// [`DEFAULT_DENOISING_END`]) and for the `refiner` (the same prompt as the base encodes, size,
/// batch and steps, starting at that fraction; its own scheduler, guidance defaults and
/// aesthetic scores). LoRAs, latents and the init image apply to the base.
pub fn resolve_two_stage(
    req: &Request,
    base: &ModelInfo,
    refiner: &ModelInfo,
    limits: DeviceLimits,
) -> Result<(Resolved, Resolved)> {
    let flag = req.name("refiner");
    if base.sdxl.is_none() || base.is_sdxl_refiner() {
        return Err(Error::invalid(
            &flag,
            "is a second stage for an SDXL base model; the model is not one (SDXL base: \
             model_index.json StableDiffusionXLPipeline, or an SDXL base single file)",
        ));
    }
    if refiner.sdxl.is_none() {
        return Err(Error::invalid(
            &flag,
            "is not an SDXL model (its U-Net has no text_time conditioning): the refiner stage \
             runs SDXL refiners (StableDiffusionXLImg2ImgPipeline)",
        ));
    }
    if refiner.unet.in_channels != base.unet.in_channels
        || refiner.vae_scale_factor()? != base.vae_scale_factor()?
    {
        return Err(Error::invalid(
            &flag,
            "takes latents of another shape than the base makes (U-Net in_channels or VAE \
             factor differ)",
        ));
    }
    if req.mask.is_some() {
        return Err(Error::invalid(
            req.name("mask"),
            format!("does not take {flag}"),
        ));
    }
    let f = req.denoising_end.unwrap_or(DEFAULT_DENOISING_END);
    let base_req = Request {
        denoising_end: Some(f),
        aesthetic_score: None,
        negative_aesthetic_score: None,
        ..req.clone()
    };
    let first = resolve_options(&base_req, base, limits)?;
    let o = &first.options;
    let as_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    let refiner_req = Request {
        prompt: Some(o.prompt.clone()),
        upsample: Some(false),
        steps: Some(as_i64(o.steps)),
        width: Some(as_i64(o.width)),
        height: Some(as_i64(o.height)),
        batch: Some(as_i64(o.batch)),
        seed: Some(o.seed),
        denoising_end: None,
        lora: None,
        latents: None,
        init_image: None,
        strength: None,
        ..req.clone()
    };
    let mut second = resolve_options(&refiner_req, refiner, limits)?;
    second.options.denoising_start = Some(f);
    second.prompt = first.prompt.clone();
    let notes = std::mem::take(&mut second.warnings);
    second.warnings = notes.into_iter().map(|w| format!("refiner: {w}")).collect();
    Ok((first, second))
}

fn resolve_decoder(req: &Request, model: &ModelInfo) -> Result<Decoder> {
    let decoder = match &req.decoder {
        Some(d) => d.parse::<Decoder>().map_err(|_| {
            Error::invalid(
                req.name("decoder"),
                format!("`{d}`: use vae or consistency"),
            )
        })?,
        None => Decoder::Vae,
    };
    if decoder == Decoder::Consistency && !model.has_consistency_decoder {
        return Err(Error::invalid(
            req.name("decoder"),
            "consistency: this model folder has no consistency_decoder/ (a \
             ConsistencyDecoderVAE folder with config.json and weights)",
        ));
    }
    Ok(decoder)
}

fn resolve_latents(
    req: &Request,
    model: &ModelInfo,
    batch: usize,
    w: usize,
    h: usize,
) -> Result<Option<Vec<f32>>> {
    let Some(l) = &req.latents else {
        return Ok(None);
    };
    let f = model.vae_scale_factor()?;
    let count = l.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(l.values.len()) {
        return Err(Error::invalid(
            req.name("latents"),
            format!(
                "shape {:?} does not match its {} values",
                l.shape,
                l.values.len()
            ),
        ));
    }
    let want = [batch, model.unet.in_channels, h / f, w / f];
    if l.shape != want {
        return Err(Error::invalid(
            req.name("latents"),
            format!(
                "hold a tensor {:?}; {w}x{h} with batch {batch} needs {want:?}",
                l.shape
            ),
        ));
    }
    if let Some(i) = l.values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            req.name("latents"),
            format!(
                "value {i} is {}: latents must be finite numbers",
                l.values[i]
            ),
        ));
    }
    Ok(Some(l.values.clone()))
}

/// The U-Net's widest activation must fit one storage binding (the VAE decodes in tiles and the
/// guidance halves run apart when needed, so neither bounds the size).
fn check_memory(
    model: &ModelInfo,
    limits: DeviceLimits,
    o: &GenerateOptions,
    req: &Request,
) -> Result<()> {
    let needed = model
        .unet_peak_bytes(o.batch, o.width, o.height, limits.dtype_size)
        .unwrap_or(u64::MAX);
    if needed <= limits.max_binding_bytes {
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let why = format!(
        "{}x{} with batch {} needs a {:.0} MiB activation, over this device's {:.0} MiB storage \
         binding limit",
        o.width,
        o.height,
        o.batch,
        mib(needed),
        mib(limits.max_binding_bytes)
    );
    if req.width.is_none() && req.height.is_none() && req.batch.is_none() {
        return Err(Error::config(
            "unet/config.json",
            "sample_size",
            format!("{why}; pass a smaller --width/--height"),
        ));
    }
    Err(Error::invalid(
        format!(
            "{}/{}/{}",
            req.name("width"),
            req.name("height"),
            req.name("batch")
        ),
        format!("{why}; use a smaller size or batch"),
    ))
}

impl Resolved {
    /// The rewriter's `text` as the prompt the encoder reads (and `upsampled` when it differs
    /// from the prompt as typed); the rewrite is no longer pending.
    pub fn set_rewrite(&mut self, text: String) {
        self.upsampled = (text != self.prompt).then(|| text.clone());
        self.options.prompt = text;
        self.pending_rewrite = false;
    }

    /// The A1111 `parameters` text of image `k` of the batch, made by `model`: the same keys in
    /// the same order from every front end.
    pub fn parameters(&self, model: &str, k: usize) -> GenerationParameters {
        let o = &self.options;
        let mut extra = Vec::new();
        if let Some(init) = &o.init {
            extra.push(("Denoising strength".to_string(), init.strength.to_string()));
            if init.mask.is_some() {
                extra.push(("Mask".to_string(), "yes".to_string()));
            }
        }
        if let Some(v) = &o.variation {
            extra.push((
                "Variation noise level".to_string(),
                v.noise_level.to_string(),
            ));
        }
        extra.extend(o.guidance_high.map(|h| h.parameter()));
        if let Some(f) = o.denoising_end {
            extra.push(("Refiner switch at".to_string(), f.to_string()));
        }
        if let Some(u) = &self.upsampled {
            extra.push(("Upsampled prompt".to_string(), u.clone()));
        }
        extra.extend(schedulers::eta_parameter(self.sampler, o.eta));
        if self.given_latents {
            extra.push(("Latents".to_string(), "file".to_string()));
        }
        // A1111 keeps LoRAs in the prompt (`<lora:NAME:SCALE>`) and their addnet hashes in
        // `Lora hashes: "NAME: HASH, ..."` (names without ':' and ',').
        let mut prompt = self.prompt.clone();
        let mut hashes = Vec::new();
        for l in &self.loras {
            prompt.push_str(&format!(" <lora:{}:{}>", l.name, l.scale));
            if let Some(h) = &l.hash {
                hashes.push(format!("{}: {h}", l.name.replace([':', ','], "")));
            }
        }
        if !hashes.is_empty() {
            extra.push(("Lora hashes".to_string(), hashes.join(", ")));
        }
        GenerationParameters {
            prompt,
            negative_prompt: o.negative_prompt.clone(),
            steps: o.steps,
            sampler: self.sampler.name().to_string(),
            guidance: o.guidance,
            seed: o.seed.wrapping_add(k as u64),
            width: o.width,
            height: o.height,
            model: model.to_string(),
            decoder: o.decoder.name().to_string(),
            extra,
        }
    }
}
