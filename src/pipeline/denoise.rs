//! Stage 4: the denoising loop (diffusers' `for i, t in enumerate(timesteps)`), entirely on the
//! device: scale the input, run the U-Net with classifier-free guidance, step the scheduler,
//! re-impose the known region when inpainting. Everything the loop needs on the host (the
//! timestep rows) is made before it.

use super::latents::Start;
use super::{Event, GenerateOptions, Pipeline};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::{concat::concat, elementwise};
use crate::noise::{randn_batch, NoiseGenerator};
use crate::schedulers::{blend, classifier_free_guidance, Scheduler};
#[cfg(not(target_arch = "wasm32"))]
use std::time::Instant;
#[cfg(target_arch = "wasm32")]
use web_time::Instant;

/// A run this long or longer gets a note with its expected time after the first step.
const SLOW_RUN_SECONDS: f64 = 60.0;

/// What the U-Net is conditioned on: the text embeddings [rows, L, D] and, for SDXL, the
/// added embedding [rows, time_embed_dim], for an LCM the projected guidance embedding
/// [rows, block_out_channels[0]] (made once, before the loop).
pub(super) struct Cond {
    pub context: Tensor,
    pub aug_emb: Option<Tensor>,
    pub time_cond: Option<Tensor>,
}

impl Cond {
    /// Rows `start..start + count` of both.
    fn rows(&self, ctx: &Context, start: usize, count: usize) -> Result<Cond> {
        Ok(Cond {
            context: self.context.narrow_rows(ctx, start, count)?,
            aug_emb: (self.aug_emb.as_ref())
                .map(|a| a.narrow_rows(ctx, start, count))
                .transpose()?,
            time_cond: (self.time_cond.as_ref())
                .map(|a| a.narrow_rows(ctx, start, count))
                .transpose()?,
        })
    }
}

/// How the conditional and unconditional halves run.
pub(super) enum Guidance {
    /// `guidance_scale <= 1`: the prompt alone, [batch] rows.
    Off { cond: Cond },
    /// Both halves in one U-Net batch: [negative × batch, prompt × batch] rows.
    Joint { cond: Cond },
    /// Two U-Net batches, when one of both would exceed a storage binding (half the memory).
    Split { negative: Cond, positive: Cond },
}

impl Pipeline {
    /// The guidance mode for `opts` given the encoded `context` (and SDXL's `aug_emb`).
    pub(super) fn guidance(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        cfg: bool,
        context: Tensor,
        aug_emb: Option<Tensor>,
    ) -> Result<Guidance> {
        let time_cond = self.time_cond(ctx, opts)?;
        let cond = Cond {
            context,
            aug_emb,
            time_cond,
        };
        if !cfg {
            return Ok(Guidance::Off { cond });
        }
        let b = opts.batch;
        let joint = self
            .info
            .unet_peak_bytes(2 * b, opts.width, opts.height, self.dtype.size())
            .unwrap_or(u64::MAX);
        if opts.split_guidance || joint > ctx.max_binding_bytes() {
            return Ok(Guidance::Split {
                negative: cond.rows(ctx, 0, b)?,
                positive: cond.rows(ctx, b, b)?,
            });
        }
        Ok(Guidance::Joint { cond })
    }

    /// The U-Net on `x` at timesteps `t` under `cond`.
    fn unet(&self, ctx: &Context, x: &Tensor, t: &[f32], cond: &Cond) -> Result<Tensor> {
        let aug = cond.aug_emb.as_ref();
        let tc = cond.time_cond.as_ref();
        Ok(self
            .unet_model()?
            .forward_cond(ctx, x, t, &cond.context, aug, tc)?
            .sample)
    }

    /// The U-Net's noise prediction for `x` at timestep row `t` (one entry per U-Net row),
    /// guided at `scale`.
    fn predict(
        &self,
        ctx: &Context,
        x: Tensor,
        t: &[f32],
        guidance: &Guidance,
        scale: f32,
    ) -> Result<Tensor> {
        let b = x.shape()[0];
        let out = match guidance {
            Guidance::Off { cond } => return self.unet(ctx, &x, &t[..b], cond),
            Guidance::Split { negative, positive } => {
                let u = self.unet(ctx, &x, &t[..b], negative)?;
                let c = self.unet(ctx, &x, &t[..b], positive)?;
                concat(ctx, &[&u, &c], 0)?
            }
            Guidance::Joint { cond } => {
                let model_in = concat(ctx, &[&x, &x], 0)?;
                self.unet(ctx, &model_in, t, cond)?
            }
        };
        classifier_free_guidance(ctx, &out, scale)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn denoise(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        sched: &mut dyn Scheduler,
        guidance: &Guidance,
        start: Start,
        gens: &mut [NoiseGenerator],
        events: &mut dyn FnMut(Event<'_>),
    ) -> Result<Tensor> {
        let shape = self.latent_shape(opts);
        let per_image = shape[1] * shape[2] * shape[3];
        let timesteps = sched.timesteps().to_vec();
        let n = timesteps.len();
        let mut t_row = vec![0.0f32; 2 * opts.batch];
        let mut latents = start.latents;
        let t0 = Instant::now();
        // denoising_start / denoising_end: a stage runs the steps index..end.
        let end = start.end.min(n);
        for (i, &t) in timesteps.iter().enumerate().take(end).skip(start.index) {
            let scale = sched.input_scale(i);
            let x = if scale != 1.0 {
                elementwise::scale(ctx, &latents, scale)?
            } else {
                latents.clone()
            };
            t_row.fill(t);
            let eps = self.predict(ctx, x, &t_row, guidance, opts.guidance_at(t))?;
            let step_noise = if sched.needs_noise(i) {
                let v = randn_batch(gens, per_image);
                Some(Tensor::from_f32(ctx, &v, &shape, self.dtype)?)
            } else {
                None
            };
            latents = sched.step(ctx, &eps, i, &latents, step_noise.as_ref())?;
            if let Some(p) = &start.inpaint {
                // diffusers' latent-blend inpainting: the known region at the next step's
                // noise level.
                let known = if i + 1 < n {
                    sched.add_noise(ctx, &p.init_latents, &p.noise, i + 1)?
                } else {
                    p.init_latents.clone()
                };
                latents = blend(ctx, &known, &latents, &p.mask)?;
            }
            ctx.finish().await?;
            let done = i + 1 - start.index;
            let total = end - start.index;
            if done == 1 && total > 1 {
                note_expected_time(t0.elapsed().as_secs_f64(), total, events);
            }
            events(Event::Step {
                step: done,
                total,
                latents: &latents,
            });
            if opts.preview_every > 0 && done % opts.preview_every == 0 && i + 1 < end {
                // The VAE decoder draws no noise, so previews leave the result unchanged.
                let mut images = self
                    .decode(ctx, &latents, super::Decoder::Vae, &mut [])
                    .await?;
                events(Event::Preview {
                    step: done,
                    image: images.swap_remove(0),
                });
            }
            if opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                return Err(Error::Cancelled);
            }
        }
        Ok(latents)
    }
}

/// After the first step, a note of the expected time when the run will be long.
fn note_expected_time(first: f64, total: usize, events: &mut dyn FnMut(Event<'_>)) {
    let expected = first * total as f64;
    if expected >= SLOW_RUN_SECONDS {
        events(Event::Warning(format!(
            "this will take about {:.0} minutes ({first:.1} s per step, {total} steps); a \
             smaller size or fewer steps is faster",
            expected / 60.0
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notes(first: f64, total: usize) -> Vec<String> {
        let mut v = Vec::new();
        note_expected_time(first, total, &mut |e| {
            if let Event::Warning(w) = e {
                v.push(w)
            }
        });
        v
    }

    #[test]
    fn long_runs_are_announced_after_the_first_step() {
        assert!(notes(0.5, 25).is_empty());
        let n = notes(44.0, 25);
        assert_eq!(n.len(), 1);
        assert!(
            n[0].contains("about 18 minutes (44.0 s per step, 25 steps)"),
            "{}",
            n[0]
        );
    }
}
