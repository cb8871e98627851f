//! SDXL base + refiner, diffusers' "ensemble of expert denoisers": the base runs the high-noise
//! steps and stops at `denoising_end` without decoding (`output_type="latent"`); the refiner
//! (`StableDiffusionXLImg2ImgPipeline`) takes those latents as they are and runs the steps from
//! `denoising_start`. Both split the schedule at diffusers' `discrete_timestep_cutoff`,
//! `int(round(T - fraction * T))`: the base keeps the timesteps at or above it, the refiner the
//! ones below it, so the two stages run each step once.

use super::latents::Start;
use super::{bad, Event, GenerateOptions, Pipeline};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::image_io::RgbImage;
use crate::noise::NoiseGenerator;
use crate::schedulers::Scheduler;

/// diffusers' `discrete_timestep_cutoff` for a `denoising_start` / `denoising_end` fraction of
/// `num_train_timesteps` (Python's `round`: halves to even).
pub fn timestep_cutoff(fraction: f64, num_train_timesteps: usize) -> f64 {
    let t = num_train_timesteps as f64;
    (t - fraction * t).round_ties_even()
}

/// One past the last step a stage with `denoising_end` runs, of `timesteps` from `index`:
/// diffusers keeps the first `len(filter(ts >= cutoff, timesteps))` of its (sliced) timesteps.
pub fn end_index(timesteps: &[f32], index: usize, end: f64, num_train_timesteps: usize) -> usize {
    let cutoff = timestep_cutoff(end, num_train_timesteps);
    let rest = timesteps.get(index..).unwrap_or_default();
    index + rest.iter().filter(|&&t| t as f64 >= cutoff).count()
}

/// The first step a stage with `denoising_start` runs: diffusers' `get_timesteps` keeps the
/// last `(timesteps < cutoff).sum()` timesteps (hoa's schedulers are all first order, so
/// diffusers' second-order adjustment never applies).
pub fn start_index(timesteps: &[f32], start: f64, num_train_timesteps: usize) -> usize {
    let cutoff = timestep_cutoff(start, num_train_timesteps);
    let below = timesteps.iter().filter(|&&t| (t as f64) < cutoff).count();
    timesteps.len() - below
}

fn check_fraction(what: &str, v: Option<f64>) -> Result<()> {
    match v {
        Some(f) if !(f > 0.0 && f < 1.0) => Err(bad(format!(
            "{what} must be a fraction of the schedule strictly between 0 and 1, got {f}"
        ))),
        _ => Ok(()),
    }
}

impl Pipeline {
    /// `denoising_start` / `denoising_end` each in (0, 1), the start before the end, and the
    /// start only from latents (diffusers' refiner takes the base's, never noising them).
    pub(super) fn validate_denoising(&self, opts: &GenerateOptions) -> Result<()> {
        check_fraction("denoising_end", opts.denoising_end)?;
        check_fraction("denoising_start", opts.denoising_start)?;
        if let (Some(s), Some(e)) = (opts.denoising_start, opts.denoising_end) {
            if s >= e {
                return Err(bad(format!(
                    "denoising_start {s} must be below denoising_end {e}"
                )));
            }
        }
        if opts.denoising_start.is_some() && opts.init.is_some() {
            return Err(bad(
                "denoising_start continues a first stage's latents; it takes no init image \
                 (use strength for img2img)",
            ));
        }
        Ok(())
    }

    /// Stage 3 with the stages' bounds: the latents and the steps `index..end` to run.
    pub(super) fn start_latents(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        sched: &dyn Scheduler,
        given: Option<Tensor>,
        gens: &mut [NoiseGenerator],
    ) -> Result<Start> {
        let n_train = self.info.num_train_timesteps()?;
        let timesteps = sched.timesteps();
        let mut start = match opts.denoising_start {
            None if given.is_some() => {
                return Err(bad("latents from a first stage need denoising_start"))
            }
            None => self.prepare_latents(ctx, opts, sched, gens)?,
            Some(f) => Start {
                latents: self.stage_latents(ctx, opts, given)?,
                index: start_index(timesteps, f, n_train),
                end: timesteps.len(),
                inpaint: None,
            },
        };
        if let Some(f) = opts.denoising_end {
            start.end = end_index(timesteps, start.index, f, n_train);
        }
        Ok(start)
    }

    /// The first stage's latents, on the device or in `opts.latents`, as they are.
    fn stage_latents(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        given: Option<Tensor>,
    ) -> Result<Tensor> {
        let shape = self.latent_shape(opts);
        let latents = match (given, &opts.latents) {
            (Some(l), _) => l,
            (None, Some(v)) => Tensor::from_f32(ctx, v, &shape, self.dtype)?,
            (None, None) => {
                return Err(bad(
                    "denoising_start needs a first stage's latents (diffusers' image= of \
                     output_type=\"latent\")",
                ))
            }
        };
        if latents.shape() != shape {
            return Err(bad(format!(
                "the first stage's latents are {:?}; this model at {}x{} with batch {} takes \
                 {shape:?}",
                latents.shape(),
                opts.width,
                opts.height,
                opts.batch
            )));
        }
        if latents.dtype() != self.dtype {
            return Err(Error::invalid(
                "refiner",
                "the base and the refiner must be loaded in the same dtype (both f16 or both \
                 f32)",
            ));
        }
        Ok(latents)
    }

    /// The second stage: `latents` from a first stage (on this device), denoised from
    /// `opts.denoising_start` and decoded.
    pub async fn refine(
        &self,
        ctx: &Context,
        opts: &GenerateOptions,
        latents: Tensor,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<RgbImage>> {
        self.generate_from(ctx, opts, Some(latents), events).await
    }

    /// SDXL base (`self`, `base_opts`) + `refiner` (`refiner_opts`, whose `denoising_start`
    /// is where the base stops): diffusers' base with `denoising_end` and
    /// `output_type="latent"`, then the refiner with `image=latents` and the same fraction as
    /// `denoising_start`. The latents stay on the device.
    pub async fn generate_with_refiner(
        &self,
        refiner: &Pipeline,
        ctx: &Context,
        base_opts: &GenerateOptions,
        refiner_opts: &GenerateOptions,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<RgbImage>> {
        let Some(f) = refiner_opts.denoising_start else {
            return Err(bad("the refiner's options need denoising_start"));
        };
        let first = GenerateOptions {
            denoising_end: Some(f),
            ..base_opts.clone()
        };
        let latents = self.generate_latents(ctx, &first, events).await?;
        refiner.refine(ctx, refiner_opts, latents, events).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD's Euler "leading" schedule of 10 steps with steps_offset 1.
    fn leading10() -> Vec<f32> {
        (0..10).rev().map(|i| (i * 100 + 1) as f32).collect()
    }

    #[test]
    fn the_stages_split_the_schedule_at_diffusers_cutoff() {
        let ts = leading10();
        // 0.8: cutoff 200; the base keeps 901..201 (8 steps), the refiner 101 and 1.
        assert_eq!(timestep_cutoff(0.8, 1000), 200.0);
        assert_eq!(end_index(&ts, 0, 0.8, 1000), 8);
        assert_eq!(start_index(&ts, 0.8, 1000), 8);
        // A cutoff on a timestep: the base keeps it (>=), the refiner starts after it.
        assert_eq!(end_index(&ts, 0, 0.799, 1000), 8);
        assert_eq!(start_index(&ts, 0.799, 1000), 8);
        assert_eq!(end_index(&ts, 0, 0.7, 1000), 7);
        // From an img2img start, the end counts from there.
        assert_eq!(end_index(&ts, 3, 0.8, 1000), 8);
        assert_eq!(end_index(&ts, 9, 0.5, 1000), 9);
        // Python's round: halves to even (1000 - 0.9995 * 1000 = 0.5 -> 0).
        assert_eq!(timestep_cutoff(0.9995, 1000), 0.0);
        assert_eq!(timestep_cutoff(0.9985, 1000), 2.0);
    }
}
