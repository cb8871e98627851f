//! Stage 3: the starting latents (diffusers' `prepare_latents`): seeded noise scaled by the
//! scheduler's `init_noise_sigma` (text to image), or an init image encoded, sampled and noised
//! to the first step that `strength` keeps (img2img), plus the mask and clean latents that
//! latent-blend inpainting re-imposes after every step.

use super::{image_tensor, GenerateOptions, Pipeline};
use crate::error::Result;
use crate::gpu::{Context, Tensor};
use crate::kernels::{elementwise, Activation};
use crate::noise::{randn_batch, NoiseGenerator};
use crate::schedulers::{self, Scheduler};

/// What the denoising loop starts from.
pub(super) struct Start {
    pub latents: Tensor,
    /// The first step to run (0 for text to image).
    pub index: usize,
    /// One past the last step to run (all of them unless `denoising_end` stops early).
    pub end: usize,
    pub inpaint: Option<Inpaint>,
}

/// Inpainting by latent blending: after each step the known region is put back at the next
/// step's noise level.
pub(super) struct Inpaint {
    pub init_latents: Tensor,
    pub noise: Tensor,
    /// [1, 1, h, w], 1 = repaint.
    pub mask: Tensor,
}

impl Pipeline {
    /// The latent shape [batch, C, H/f, W/f] of `opts`.
    pub(super) fn latent_shape(&self, opts: &GenerateOptions) -> [usize; 4] {
        let f = self.vae_scale_factor();
        let c = self.info.unet.in_channels;
        [opts.batch, c, opts.height / f, opts.width / f]
    }

    pub(super) fn prepare_latents(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        sched: &dyn Scheduler,
        gens: &mut [NoiseGenerator],
    ) -> Result<Start> {
        let shape = self.latent_shape(opts);
        let per_image = shape[1] * shape[2] * shape[3];
        // Noise is drawn first, so that a seed's noise does not depend on the mode.
        let noise = match &opts.latents {
            Some(l) => l.clone(),
            None => randn_batch(gens, per_image),
        };
        let noise = Tensor::from_f32(ctx, &noise, &shape, self.dtype)?;
        let Some(init) = &opts.init else {
            let latents = elementwise::scale(ctx, &noise, sched.init_noise_sigma())?;
            return Ok(Start {
                latents,
                index: 0,
                end: sched.timesteps().len(),
                inpaint: None,
            });
        };
        // img2img: encode, sample the latent distribution, noise it to the start step.
        let image = image_tensor(ctx, &init.image, opts.batch, self.vae_dtype)?;
        let dist = self.vae_model()?.encode_auto(ctx, &image)?;
        let eps = Tensor::from_f32(ctx, &randn_batch(gens, per_image), &shape, self.vae_dtype)?;
        let sample = dist.sample(ctx, &eps)?;
        let sample = self.to_compute_dtype(ctx, sample)?;
        let sf = self.info.vae.scaling_factor as f32;
        let shift = self.info.vae.shift_factor.unwrap_or(0.0) as f32;
        let init_latents = elementwise::unary(ctx, &sample, Activation::None, sf, -shift * sf)?;
        let n = sched.timesteps().len();
        let index = schedulers::img2img_start(n, init.strength).min(n - 1);
        let latents = sched.add_noise(ctx, &init_latents, &noise, index)?;
        let inpaint = match &init.mask {
            None => None,
            Some(m) => Some(Inpaint {
                mask: self.latent_mask(ctx, m, opts.width, opts.height)?,
                init_latents,
                noise,
            }),
        };
        Ok(Start {
            latents,
            index,
            end: n,
            inpaint,
        })
    }

    /// SDXL's force_upcast: the f32 VAE's latents back in the compute dtype (a blocking
    /// readback, which the browser cannot do: there img2img on an f16 SDXL is refused).
    fn to_compute_dtype(&self, ctx: &Context, t: Tensor) -> Result<Tensor> {
        if t.dtype() == self.dtype {
            return Ok(t);
        }
        #[cfg(not(target_arch = "wasm32"))]
        let out = Tensor::from_f32(ctx, &t.to_vec(ctx)?, t.shape(), self.dtype);
        #[cfg(target_arch = "wasm32")]
        let out = {
            let _ = ctx;
            Err(crate::error::Error::invalid(
                "init image",
                "img2img on an SDXL model loaded in f16 needs f32 in the browser (its VAE \
                 runs in f32)",
            ))
        };
        out
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
}
