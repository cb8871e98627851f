//! Text to image: diffusers' `StableDiffusionPipeline` (plus its img2img and inpainting
//! variants) on hoa's models. Reads a diffusers model folder through [`ModelFiles`] (bytes, so
//! the CLI and the browser share it) and runs diffusers' stages, one module each: encode the
//! prompt ([`text_encoder`]), prepare the latents ([`latents`]), the denoising loop with
//! classifier-free guidance entirely on the device ([`denoise`]), decode with the VAE or the
//! consistency decoder ([`decode`]). The only readbacks are the final latents and the image.
//! The options come concrete from [`crate::resolve`]; [`Pipeline::validate`] re-checks them for
//! callers that build them by hand.

mod decode;
mod denoise;
mod latents;
mod lcm;
mod refiner;
mod sdxl;
mod text_encoder;
mod unclip;

pub use crate::options::{Decoder, GenerateOptions, GuidanceHigh, InitImage};
pub use decode::to_u8;
pub use lcm::guidance_scale_embedding;
pub use sdxl::TextEncoder2;
pub use text_encoder::TextEncoder;
pub use unclip::{StableUnCLIPImageNormalizer, UnclipImageEncoder};

use crate::config::{ClipTextConfig, ConsistencyDecoderVAEConfig, T5Config};
use crate::error::{Error, Result};
use crate::gpu::{Context, DType};
use crate::image_io::RgbImage;
use crate::lora::{keys::Component as LoraPart, LoraSet};
use crate::model_files::{component_weights, ModelFiles};
use crate::model_info::ModelInfo;
use crate::models::autoencoder_kl::AutoencoderKL;
use crate::models::clip::ClipTextModel;
use crate::models::consistency_decoder::ConsistencyDecoderVAE;
use crate::models::t5::T5EncoderModel;
use crate::models::unet_2d_condition::{AddedCondKwargs, UNet2DConditionModel};
use crate::noise::NoiseGenerator;
use crate::options::{DeviceLimits, MAX_BATCH, MAX_SIDE};
use crate::rewriter::Rewriter;
use crate::schedulers::{self, SchedulerKind};
use crate::tokenizer::Tokenizer;
use crate::weights::Loader;
use crate::Tensor;

const OP: &str = "pipeline";

fn bad(msg: impl Into<String>) -> Error {
    Error::shape(OP, msg)
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
    /// The folder's configs and `hoa.json` defaults.
    pub info: ModelInfo,
    /// `tokenizer`; for the SDXL refiner (no `text_encoder`), a copy of `tokenizer_2`.
    pub tokenizer: Tokenizer,
    pub text_encoder: TextEncoder,
    /// SDXL's `tokenizer_2` + `text_encoder_2`.
    pub text_encoder_2: Option<TextEncoder2>,
    /// `None` before [`Pipeline::load_unet`] and after [`Pipeline::release_unet`].
    unet: Option<UNet2DConditionModel>,
    /// `None` before [`Pipeline::load_vae`].
    vae: Option<AutoencoderKL>,
    /// Pixels per latent pixel, from the VAE's config (known before its weights load).
    vae_scale_factor: usize,
    /// The VAE's dtype: f32 when an SDXL VAE's `force_upcast` asks for it under f16.
    pub vae_dtype: DType,
    pub consistency_decoder: Option<ConsistencyDecoderVAE>,
    /// Stable unCLIP's image encoder, normalizer and noising schedule (image variations).
    pub unclip: Option<UnclipImageEncoder>,
    pub dtype: DType,
    /// The LoRAs (file, scale) merged into the weights at load, in order.
    pub loras: Vec<(String, f64)>,
    /// The prompt rewriter `hoa.json` names (small, loaded with the model); front ends run it
    /// through [`crate::rewriter::apply`].
    pub rewriter: Option<Rewriter>,
    /// Set by [`Pipeline::release_text_encoders`]: encoding a prompt is then an error.
    text_encoders_released: bool,
}

/// Stage 1's output, what [`Pipeline::generate_encoded`] continues from: the prompt's
/// embeddings (with SDXL's or unCLIP's added embedding), whether they carry guidance's
/// negative half, and the noise generators.
pub struct Encoded {
    context: Tensor,
    added: AddedCond,
    cfg: bool,
    gens: Vec<NoiseGenerator>,
}

/// The U-Net's added conditioning before the U-Net embeds it (when denoising starts, so that
/// encoding needs no U-Net weights).
enum AddedCond {
    None,
    /// SDXL's `added_cond_kwargs`: pooled text embeddings [rows, D] and 6 time ids per row.
    TextTime {
        text_embeds: Tensor,
        time_ids: Vec<f32>,
    },
    /// Stable unCLIP's `class_labels` [rows, 2 x embedding dim].
    Class(Tensor),
}

/// Stages 2-4's output, what [`Pipeline::decode_denoised`] decodes: the final latents,
/// checked finite, and the noise generators (the consistency decoder draws from them).
pub struct Denoised {
    latents: Tensor,
    gens: Vec<NoiseGenerator>,
}

impl Pipeline {
    /// Loads a diffusers-layout folder. `dtype` is the compute storage type (f16 needs the
    /// adapter's `shader-f16`).
    pub fn load(ctx: &Context, files: &dyn ModelFiles, dtype: DType) -> Result<Pipeline> {
        Pipeline::load_with(ctx, files, ModelInfo::read(files)?, dtype)
    }

    /// [`Pipeline::load`] with the folder's [`ModelInfo`] already read (a front end reads it
    /// first to check a request before the slow load).
    pub fn load_with(
        ctx: &Context,
        files: &dyn ModelFiles,
        info: ModelInfo,
        dtype: DType,
    ) -> Result<Pipeline> {
        Pipeline::load_with_loras(ctx, files, info, dtype, &LoraSet::default())
    }

    /// [`Pipeline::load_with`] with `loras` merged into the text encoder's and the U-Net's
    /// weights as they load (diffusers' `load_lora_weights` + `fuse_lora`).
    pub fn load_with_loras(
        ctx: &Context,
        files: &dyn ModelFiles,
        info: ModelInfo,
        dtype: DType,
        loras: &LoraSet,
    ) -> Result<Pipeline> {
        let mut pipe = Pipeline::load_encoders(ctx, files, info, dtype, loras)?;
        pipe.load_unet(ctx, files, loras)?;
        pipe.load_vae(ctx, files)?;
        Ok(pipe)
    }

    /// What encoding a prompt needs (the tokenizers, the text encoders with `loras` merged, the
    /// rewriter, stable unCLIP's image encoder), without the U-Net and the VAE, which
    /// [`Pipeline::load_unet`] and [`Pipeline::load_vae`] load later: a one-shot run loads each
    /// network when the previous one is released, so that no two large ones are resident
    /// together (img2img, inpainting and previews need the VAE before denoising).
    pub fn load_encoders(
        ctx: &Context,
        files: &dyn ModelFiles,
        info: ModelInfo,
        dtype: DType,
        loras: &LoraSet,
    ) -> Result<Pipeline> {
        if dtype == DType::F16 && !ctx.has_f16() {
            return Err(Error::MissingFeature {
                op: OP,
                feature: "shader-f16",
                hint: "load the model in f32 instead",
            });
        }
        // The SDXL refiner has no text_encoder (model_index.json's is null).
        let no_text_encoder = info.text_encoder_class.is_empty();
        let mut parts = vec![LoraPart::Unet];
        if !no_text_encoder {
            parts.push(LoraPart::TextEncoder);
        }
        if info.sdxl.is_some() {
            parts.push(LoraPart::TextEncoder2);
        }
        loras.check_components(&parts)?;
        let rewriter = (info.defaults.rewriter.as_deref())
            .map(|dir| Rewriter::load(ctx, files, dir))
            .transpose()?;
        let (text_encoder, text_encoder_2, tokenizer) =
            load_text_encoders(ctx, files, &info, dtype, loras)?;
        // diffusers' SDXL pipeline decodes in f32 when an f16 VAE has `force_upcast`.
        let vae_dtype = match info.sdxl.is_some() && dtype == DType::F16 && info.vae.force_upcast {
            true => DType::F32,
            false => dtype,
        };
        let unclip = unclip::load(ctx, files, &info, dtype)?;
        Ok(Pipeline {
            unclip,
            tokenizer,
            text_encoder,
            text_encoder_2,
            unet: None,
            vae: None,
            vae_scale_factor: info.vae_scale_factor()?,
            vae_dtype,
            consistency_decoder: None,
            dtype,
            loras: lora_names(loras),
            rewriter,
            text_encoders_released: false,
            info,
        })
    }

    /// The U-Net of a pipeline loaded by [`Pipeline::load_encoders`], with the same `loras`
    /// (their U-Net part) merged; nothing when it is loaded.
    pub fn load_unet(
        &mut self,
        ctx: &Context,
        files: &dyn ModelFiles,
        loras: &LoraSet,
    ) -> Result<()> {
        if self.unet.is_some() {
            return Ok(());
        }
        let names = lora_names(loras);
        if names != self.loras {
            return Err(Error::invalid(
                "lora",
                format!(
                    "load_unet got {names:?} but the text encoders were loaded with {:?}; give \
                     both the same LoRAs",
                    self.loras
                ),
            ));
        }
        let unet_weights = component_weights(files, "unet")?;
        let patches = loras.patches(LoraPart::Unet, &unet_weights)?;
        let loader = Loader::new(ctx, &unet_weights, self.dtype).with_patches(&patches);
        self.unet = Some(UNet2DConditionModel::load(&loader, &self.info.unet)?);
        patches.finish()
    }

    /// The VAE (and the consistency decoder, when the folder has one) of a pipeline loaded by
    /// [`Pipeline::load_encoders`]; nothing when they are loaded.
    pub fn load_vae(&mut self, ctx: &Context, files: &dyn ModelFiles) -> Result<()> {
        if self.vae.is_some() {
            return Ok(());
        }
        let vae_weights = component_weights(files, "vae")?;
        let loader = Loader::new(ctx, &vae_weights, self.vae_dtype);
        self.vae = Some(AutoencoderKL::load(&loader, &self.info.vae)?);
        drop(vae_weights);
        if self.info.has_consistency_decoder {
            let cfg = ConsistencyDecoderVAEConfig::from_json(
                &files.require("consistency_decoder/config.json")?,
            )?;
            let w = component_weights(files, "consistency_decoder")?;
            let loader = Loader::new(ctx, &w, self.dtype);
            self.consistency_decoder = Some(ConsistencyDecoderVAE::load(&loader, &cfg)?);
        }
        Ok(())
    }

    /// Drops the U-Net's weights once a one-shot caller has its [`Denoised`] latents, so that
    /// the decoder runs without them (the decode's activations are the largest of a run);
    /// encoding and denoising are then errors.
    pub fn release_unet(&mut self) {
        self.unet = None;
    }

    /// The U-Net's embedding [rows, time_embed_dim] of `added`, added to its time embedding.
    fn added_embedding(&self, ctx: &Context, added: AddedCond) -> Result<Option<Tensor>> {
        let unet = self.unet_model()?;
        match added {
            AddedCond::None => Ok(None),
            AddedCond::TextTime {
                text_embeds,
                time_ids,
            } => {
                let kwargs = AddedCondKwargs {
                    text_embeds: &text_embeds,
                    time_ids: &time_ids,
                };
                unet.aug_embed(ctx, &kwargs).map(Some)
            }
            AddedCond::Class(labels) => unet.class_embed(ctx, &labels).map(Some),
        }
    }

    fn unet_model(&self) -> Result<&UNet2DConditionModel> {
        self.unet.as_ref().ok_or_else(|| {
            Error::invalid(
                "pipeline",
                "its U-Net is not loaded (Pipeline::load_encoders loads without it, \
                 Pipeline::load_unet loads it, Pipeline::release_unet drops it after denoising)",
            )
        })
    }

    fn vae_model(&self) -> Result<&AutoencoderKL> {
        self.vae.as_ref().ok_or_else(|| {
            Error::invalid(
                "pipeline",
                "its VAE is not loaded (Pipeline::load_encoders); call Pipeline::load_vae \
                 first",
            )
        })
    }

    /// Drops the text encoders' weights (a one-shot caller that has its [`Encoded`] prompt, so
    /// that denoising and decoding run without them); a later [`Pipeline::encode`] is an
    /// error. A caller that generates again, like `hoa serve`, keeps them loaded.
    pub fn release_text_encoders(&mut self) {
        self.text_encoder = TextEncoder::None;
        self.text_encoder_2 = None;
        self.text_encoders_released = true;
    }

    /// Whether [`Pipeline::release_text_encoders`] dropped the text encoders.
    pub fn text_encoders_released(&self) -> bool {
        self.text_encoders_released
    }

    /// Pixels per latent pixel (8 for Stable Diffusion).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_scale_factor
    }

    /// What this device allows a request on this pipeline (for `resolve::resolve`).
    pub fn limits(&self, ctx: &Context) -> DeviceLimits {
        DeviceLimits {
            max_binding_bytes: ctx.max_binding_bytes(),
            dtype_size: self.dtype.size(),
            host_memory: ctx.host_memory(),
        }
    }

    /// The scheduler `opts` asks for, or the folder's own (see [`ModelInfo::scheduler_choice`]).
    pub fn scheduler_kind(&self, opts: &GenerateOptions) -> Result<SchedulerKind> {
        Ok(self.scheduler_choice(opts).0)
    }

    fn scheduler_choice(&self, opts: &GenerateOptions) -> (SchedulerKind, Option<String>) {
        match opts.scheduler {
            Some(k) => (k, None),
            None => self.info.scheduler_choice(),
        }
    }

    /// Checks `opts` before any work, so bad input fails fast with a clear message. Requests
    /// go through [`crate::resolve::resolve`], which checks more and names the user's flags;
    /// this guards callers that fill [`GenerateOptions`] by hand.
    pub fn validate(&self, ctx: &Context, opts: &GenerateOptions) -> Result<()> {
        self.validate_size(opts)?;
        if opts.loras != self.loras {
            return Err(Error::invalid(
                "lora",
                format!(
                    "the request asks for {:?} but the model was loaded with {:?}; LoRAs are \
                     merged into the weights at load (hoa generate --lora FILE:SCALE)",
                    opts.loras, self.loras
                ),
            ));
        }
        if opts.steps == 0 {
            return Err(bad("steps must be at least 1"));
        }
        schedulers::check_eta(opts.eta as f64)?;
        self.validate_guidance(opts)?;
        self.validate_inputs(opts)?;
        self.validate_denoising(opts)?;
        if opts.init.is_some() || opts.preview_every > 0 {
            // img2img encodes its image and previews decode while the U-Net runs.
            self.vae_model()?;
        }
        if opts.decoder == Decoder::Consistency && !self.info.has_consistency_decoder {
            return Err(Error::Checkpoint(
                "--decoder consistency: this model folder has no consistency_decoder/ (a \
                 ConsistencyDecoderVAE folder with config.json and weights)"
                    .into(),
            ));
        }
        self.scheduler_kind(opts)?;
        // Guidance halves run as separate U-Net batches when both together would not fit.
        let needed = self
            .info
            .unet_peak_bytes(opts.batch, opts.width, opts.height, self.dtype.size())
            .unwrap_or(u64::MAX);
        let max = ctx.max_binding_bytes();
        if needed > max {
            return Err(Error::Limit {
                op: OP,
                limit: "max_storage_buffer_binding_size",
                needed,
                max,
                hint: format!(
                    "{}x{} with batch {} is too large for this device; use a smaller size or \
                     batch",
                    opts.width, opts.height, opts.batch
                ),
            });
        }
        Ok(())
    }

    fn validate_size(&self, opts: &GenerateOptions) -> Result<()> {
        let (w, h) = (opts.width, opts.height);
        if w == 0 || h == 0 || w % 8 != 0 || h % 8 != 0 {
            return Err(bad(format!(
                "width and height must be positive multiples of 8, got {w}x{h} (try {}x{})",
                (w.max(8) / 8) * 8,
                (h.max(8) / 8) * 8
            )));
        }
        let m = self.info.size_multiple()?;
        let f = self.vae_scale_factor();
        if w % m != 0 || h % m != 0 || w > MAX_SIDE || h > MAX_SIDE {
            return Err(bad(format!(
                "this model needs width and height divisible by {m} (VAE factor {f}, halved by {} \
                 U-Net downsamplings) and at most {}, got {w}x{h}",
                (m / f).trailing_zeros(),
                MAX_SIDE
            )));
        }
        if opts.batch == 0 || opts.batch > MAX_BATCH {
            return Err(bad(format!(
                "batch must be from 1 to {}, got {}",
                MAX_BATCH, opts.batch
            )));
        }
        Ok(())
    }

    fn validate_guidance(&self, opts: &GenerateOptions) -> Result<()> {
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
        Ok(())
    }

    fn validate_inputs(&self, opts: &GenerateOptions) -> Result<()> {
        let (w, h) = (opts.width, opts.height);
        let f = self.vae_scale_factor();
        if let Some(l) = &opts.latents {
            let want = opts.batch * self.info.unet.in_channels * (h / f) * (w / f);
            if l.len() != want {
                return Err(bad(format!(
                    "latents hold {} numbers; {w}x{h} with batch {} needs [{}, {}, {}, {}] = {want}",
                    l.len(),
                    opts.batch,
                    opts.batch,
                    self.info.unet.in_channels,
                    h / f,
                    w / f
                )));
            }
        }
        if self.info.unet.class_projection().is_some() && opts.variation.is_none() {
            return Err(Error::invalid(
                "variation",
                "this stable unCLIP model makes variations of an image: give one \
                 (GenerateOptions::variation, hoa generate --variation IMAGE)",
            ));
        }
        let Some(init) = &opts.init else {
            return Ok(());
        };
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
        if init.mask.as_ref().is_some_and(|m| m.len() != w * h) {
            return Err(bad(format!(
                "the mask has {} pixels but the image has {w}x{h} = {}",
                init.mask.as_ref().map_or(0, Vec::len),
                w * h
            )));
        }
        Ok(())
    }

    /// Generates `opts.batch` images: diffusers' `__call__`, stage by stage.
    pub async fn generate(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<RgbImage>> {
        self.generate_from(ctx, opts, None, events).await
    }

    /// [`Self::generate`] from stage 1's output (see [`Pipeline::encode`]): the same images.
    pub async fn generate_encoded(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        encoded: Encoded,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<RgbImage>> {
        self.decoded(ctx, opts, None, encoded, events).await
    }

    /// [`Self::generate`], from a first stage's latents when `given`.
    async fn generate_from(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        given: Option<Tensor>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<RgbImage>> {
        let encoded = self.encode(ctx, opts, events).await?;
        self.decoded(ctx, opts, given, encoded, events).await
    }

    /// Stages 2-5 from stage 1's output.
    async fn decoded(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        given: Option<Tensor>,
        encoded: Encoded,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<RgbImage>> {
        let denoised = self
            .denoised_from(ctx, opts, given, encoded, events)
            .await?;
        self.decode_denoised(ctx, opts, denoised, events).await
    }

    /// Stages 2-4 from stage 1's output: what [`Pipeline::decode_denoised`] turns into
    /// images, after [`Pipeline::release_unet`] and [`Pipeline::load_vae`] in a one-shot run.
    pub async fn denoise_encoded(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        encoded: Encoded,
        events: &mut dyn FnMut(Event),
    ) -> Result<Denoised> {
        self.denoised_from(ctx, opts, None, encoded, events).await
    }

    /// Stage 5: `denoised`'s latents decoded as `opts.decoder` says.
    pub async fn decode_denoised(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        denoised: Denoised,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<RgbImage>> {
        let Denoised { latents, mut gens } = denoised;
        // The pool keeps a free buffer of every size class it has handed out: the U-Net's go
        // back to the driver before the VAE's larger ones are made, and those after, so that
        // peak memory is the larger stage's, and an idle pipeline holds its weights.
        events(Event::Decoding);
        ctx.trim_pool();
        let images = self
            .decode(ctx, &latents, opts.decoder, &mut gens)
            .await
            .map_err(|e| self.explain_non_finite(e, opts));
        ctx.trim_pool();
        images
    }

    /// Stages 1-4: the latents [batch, C, h, w] after the denoising loop, not decoded
    /// (diffusers' `output_type="latent"`; with `opts.denoising_end`, the first stage of SDXL
    /// base + refiner), checked finite.
    pub async fn generate_latents(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        events: &mut dyn FnMut(Event),
    ) -> Result<Tensor> {
        let encoded = self.encode(ctx, opts, events).await?;
        let denoised = self.denoised_from(ctx, opts, None, encoded, events).await?;
        Ok(denoised.latents)
    }

    /// Stage 1 (after checking `opts`): the prompt's embeddings, and for stable unCLIP the
    /// image's, ready for [`Pipeline::generate_encoded`].
    pub async fn encode(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        events: &mut dyn FnMut(Event),
    ) -> Result<Encoded> {
        self.validate(ctx, opts)?;
        if self.text_encoders_released {
            return Err(Error::invalid(
                "pipeline",
                "its text encoders were released after encoding a prompt \
                 (Pipeline::release_text_encoders); load the model again to encode another",
            ));
        }
        let gens: Vec<NoiseGenerator> = (0..opts.batch as u64)
            .map(|k| NoiseGenerator::new(opts.seed.wrapping_add(k)))
            .collect();
        // 1. Encode the prompt (diffusers guides only when guidance_scale > 1).
        // An LCM embeds the guidance scale instead (one batch, see `lcm`).
        let cfg = !self.embeds_guidance()
            && (opts.guidance > 1.0 || opts.guidance_high.is_some_and(|h| h.scale > 1.0));
        let (context, added) = match self.text_encoder_2 {
            Some(_) => self.encode_prompt_sdxl(ctx, opts, cfg, events)?,
            None => (self.encode_prompt(ctx, opts, cfg, events)?, AddedCond::None),
        };
        // 1b. stable unCLIP: the image embedding as the U-Net's class embedding.
        let added = match &opts.variation {
            Some(v) => self.encode_image(ctx, opts, v, cfg).await?,
            None => added,
        };
        Ok(Encoded {
            context,
            added,
            cfg,
            gens,
        })
    }

    /// Stages 2-4 from `given` latents on the device (a first stage's output, for
    /// `opts.denoising_start`) or from `opts`; with the noise generators for the decoder.
    async fn denoised_from(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        given: Option<Tensor>,
        encoded: Encoded,
        events: &mut dyn FnMut(Event),
    ) -> Result<Denoised> {
        let Encoded {
            context,
            added,
            cfg,
            mut gens,
        } = encoded;
        // 2. Timesteps.
        let (kind, note) = self.scheduler_choice(opts);
        if let Some(n) = note {
            events(Event::Warning(n));
        }
        let mut sched = schedulers::build(
            kind,
            &opts.scheduler_config(&self.info.scheduler),
            opts.steps,
        )?;
        if opts.eta != 0.0 && !sched.set_eta(opts.eta as f64)? {
            events(Event::Warning(format!(
                "eta {} is ignored: only DDIM takes it (this is {})",
                opts.eta,
                kind.name()
            )));
        }
        // 3. Latents: noise, or an init image noised to the start step, or (denoising_start)
        // a first stage's latents.
        let start = self.start_latents(ctx, opts, sched.as_ref(), given, &mut gens)?;
        // 4. Denoising loop, all on the device.
        let aug_emb = self.added_embedding(ctx, added)?;
        let guidance = self.guidance(ctx, opts, cfg, context, aug_emb)?;
        let latents = self
            .denoise(
                ctx,
                opts,
                sched.as_mut(),
                &guidance,
                start,
                &mut gens,
                events,
            )
            .await?;
        drop(guidance);
        self.check_latents(ctx, &latents, opts).await?;
        Ok(Denoised { latents, gens })
    }
}

/// Each LoRA's file name and scale, as [`Pipeline::loras`] records them.
fn lora_names(loras: &LoraSet) -> Vec<(String, f64)> {
    (loras.loras.iter())
        .map(|(f, s)| (f.name.clone(), *s))
        .collect()
}

/// Loads the prompt encoder named by `model_index.json`; returns it with its context length.
fn load_text_encoder(
    ctx: &Context,
    files: &dyn ModelFiles,
    info: &ModelInfo,
    dtype: DType,
    loras: &LoraSet,
) -> Result<(TextEncoder, usize)> {
    let weights = component_weights(files, "text_encoder")?;
    let json = files.require("text_encoder/config.json")?;
    let patches = loras.patches(LoraPart::TextEncoder, &weights)?;
    let loader = Loader::new(ctx, &weights, dtype).with_patches(&patches);
    let loaded = match info.text_encoder_class.as_str() {
        "CLIPTextModel" => {
            let cfg = ClipTextConfig::from_json(&json)?;
            let n = cfg.max_position_embeddings;
            (TextEncoder::Clip(ClipTextModel::load(&loader, &cfg)?), n)
        }
        "T5EncoderModel" => {
            let cfg = T5Config::from_json(&json)?;
            (TextEncoder::T5(T5EncoderModel::load(&loader, &cfg)?), 512)
        }
        other => {
            return Err(Error::config(
                "model_index.json",
                "text_encoder",
                format!("is a {other}; hoa runs CLIPTextModel and T5EncoderModel"),
            ))
        }
    };
    patches.finish()?;
    Ok(loaded)
}

/// The text encoder(s) and the tokenizer of `text_encoder`; the SDXL refiner has no
/// `text_encoder` (model_index.json's is null) and uses `tokenizer_2` as its one tokenizer.
fn load_text_encoders(
    ctx: &Context,
    files: &dyn ModelFiles,
    info: &ModelInfo,
    dtype: DType,
    loras: &LoraSet,
) -> Result<(TextEncoder, Option<TextEncoder2>, Tokenizer)> {
    let (text_encoder, tokenizer) = match info.text_encoder_class.is_empty() {
        true => (TextEncoder::None, None),
        false => {
            let (te, context_len) = load_text_encoder(ctx, files, info, dtype, loras)?;
            let clip = matches!(te, TextEncoder::Clip(_));
            let tok = load_tokenizer(files, "tokenizer", clip, context_len)?;
            (te, Some(tok))
        }
    };
    let text_encoder_2 = sdxl::load_text_encoder_2(ctx, files, info, dtype, loras)?;
    let tokenizer = match (tokenizer, &text_encoder_2) {
        (Some(t), _) => t,
        (None, Some(te2)) => te2.tokenizer.clone(),
        (None, None) => return Err(bad("a model without text_encoder needs text_encoder_2")),
    };
    Ok((text_encoder, text_encoder_2, tokenizer))
}

/// The folder's `{dir}/tokenizer.json`, or for a CLIP encoder (`clip`) one built from CLIP's
/// `vocab.json` + `merges.txt` (what SD 1.x/2.x repositories ship).
fn load_tokenizer(
    files: &dyn ModelFiles,
    dir: &str,
    clip: bool,
    context_len: usize,
) -> Result<Tokenizer> {
    let tok_json = match files.read(&format!("{dir}/tokenizer.json"))? {
        Some(j) => j,
        None => match (
            files.read(&format!("{dir}/vocab.json"))?,
            files.read(&format!("{dir}/merges.txt"))?,
        ) {
            (Some(v), Some(m)) if clip => crate::tokenizer::clip_tokenizer_json(&v, &m)?,
            _ => {
                return Err(Error::Checkpoint(format!(
                    "{}/{dir} has no tokenizer.json (hoa reads the fast-tokenizer file, \
                     or CLIP's vocab.json + merges.txt; write it with \
                     `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`)",
                    files.describe()
                )))
            }
        },
    };
    let tok_cfg = files.read(&format!("{dir}/tokenizer_config.json"))?;
    let tokenizer = Tokenizer::from_bytes(&tok_json, tok_cfg.as_deref(), context_len)?;
    if tokenizer.max_length() > context_len {
        return Err(Error::config(
            format!("{dir}/tokenizer_config.json"),
            "model_max_length",
            format!(
                "is {} but the text encoder's context is {context_len}",
                tokenizer.max_length()
            ),
        ));
    }
    Ok(tokenizer)
}

/// Pixels [B, 3, H, W] in [-1, 1] from RGB bytes.
fn image_tensor(ctx: &Context, img: &RgbImage, batch: usize, dtype: DType) -> Result<Tensor> {
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
    Tensor::from_f32(ctx, &v, &[batch, 3, h, w], dtype)
}
