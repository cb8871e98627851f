//! Stage 5: latents to pixels (diffusers' `vae.decode` + `image_processor.postprocess`), with the
//! VAE or the consistency decoder, and the check that no NaN or infinity reaches an image.

use super::{Decoder, GenerateOptions, Pipeline};
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::image_io::RgbImage;
use crate::kernels::{elementwise, Activation};
use crate::noise::{randn_batch, NoiseGenerator};

/// The error a non-finite value raises, so it can be recognized and explained.
const NON_FINITE: &str = "non-finite";

/// Guidance above this is a likely cause of an overflow.
const HIGH_GUIDANCE: f32 = 30.0;

/// Denoised latents are of order 1 (a few units at most); past this the sampling diverged and
/// the decoder would draw a flat gray or black image from them.
const LATENT_LIMIT: f32 = 1e4;

impl Pipeline {
    /// Decodes final latents to RGB images; an error if any pixel is NaN or infinite.
    pub async fn decode(
        &self,
        ctx: &Context,
        latents: &Tensor,
        decoder: Decoder,
        gens: &mut [NoiseGenerator],
    ) -> Result<Vec<RgbImage>> {
        let sample = match decoder {
            Decoder::Vae => {
                let sf = self.info.vae.scaling_factor as f32;
                let shift = self.info.vae.shift_factor.unwrap_or(0.0) as f32;
                let z = elementwise::unary(ctx, latents, Activation::None, 1.0 / sf, shift)?;
                let z = self.to_vae_dtype(ctx, z).await?;
                self.vae_model()?.decode_auto(ctx, &z)?
            }
            Decoder::Consistency => self.consistency_decode(ctx, latents, gens)?,
        };
        let s = sample.shape().to_vec();
        let v = sample.read(ctx).await?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(
                "the decoded image",
                format!("{NON_FINITE}: value {i} is {}", v[i]),
            ));
        }
        Ok(to_images(&v, s[0], s[2], s[3]))
    }

    /// `z` in the VAE's dtype: SDXL's `force_upcast` runs an f16 model's VAE in f32 (one
    /// readback of the latents, the size of the image / 48).
    async fn to_vae_dtype(&self, ctx: &Context, z: Tensor) -> Result<Tensor> {
        if z.dtype() == self.vae_dtype {
            return Ok(z);
        }
        let v = z.read(ctx).await?;
        Tensor::from_f32(ctx, &v, z.shape(), self.vae_dtype)
    }

    fn consistency_decode(
        &self,
        ctx: &Context,
        latents: &Tensor,
        gens: &mut [NoiseGenerator],
    ) -> Result<Tensor> {
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
        Ok(cd.decode(ctx, &z, &[&n0, &n1])?.sample)
    }

    /// An error when the denoised latents hold a NaN, an infinity or a value far past any a
    /// model makes (one readback of the latents, 1/48 of the image's size).
    pub(super) async fn check_latents(
        &self,
        ctx: &Context,
        t: &Tensor,
        opts: &GenerateOptions,
    ) -> Result<()> {
        let v = t.read(ctx).await?;
        let diverged = |x: &f32| !x.is_finite() || x.abs() > LATENT_LIMIT;
        match v.iter().position(diverged) {
            None => Ok(()),
            Some(i) => Err(self.explain_non_finite(
                Error::invalid(
                    "the denoised latents",
                    format!(
                        "{NON_FINITE} or diverged: value {i} is {} (they should stay within \
                         ±{LATENT_LIMIT})",
                        v[i]
                    ),
                ),
                opts,
            )),
        }
    }

    /// A non-finite error with its likely causes for these options; other errors unchanged.
    pub(super) fn explain_non_finite(&self, e: Error, opts: &GenerateOptions) -> Error {
        let Error::InvalidOption { what, why } = &e else {
            return e;
        };
        if !why.starts_with(NON_FINITE) {
            return e;
        }
        let mut causes = Vec::new();
        let g = opts
            .guidance_high
            .map_or(0.0, |h| h.scale)
            .max(opts.guidance);
        if g > HIGH_GUIDANCE {
            causes.push(format!(
                "the guidance scale {g} is far too high (try 2 to 15)"
            ));
        }
        if opts.latents.is_some() {
            causes.push("the given latents are too large".to_string());
        }
        if self.dtype == DType::F16 {
            causes.push("f16 overflowed (run without --f16)".to_string());
        }
        causes.push(
            "the model's weights hold NaN or infinity, or its scheduler config is broken"
                .to_string(),
        );
        Error::invalid(
            what.clone(),
            format!(
                "{why}, so no image was written. Likely: {}",
                causes.join("; or ")
            ),
        )
    }
}

/// `[B, 3, H, W]` floats in [-1, 1] to RGB images.
fn to_images(v: &[f32], b: usize, h: usize, w: usize) -> Vec<RgbImage> {
    (0..b)
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
        .collect()
}

/// diffusers' postprocess: `(x / 2 + 0.5).clamp(0, 1)`, then `(x * 255).round()`.
pub fn to_u8(x: f32) -> u8 {
    let v = (x / 2.0 + 0.5).clamp(0.0, 1.0);
    (v * 255.0).round() as u8
}
