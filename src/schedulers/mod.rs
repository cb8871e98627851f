//! Samplers mirroring diffusers 0.42.1's `diffusers.schedulers` (`scheduling_ddim`,
//! `scheduling_euler_discrete`, `scheduling_euler_ancestral_discrete`,
//! `scheduling_dpmsolver_multistep`, `scheduling_lcm`): the config (`scheduler_config.json`,
//! [`config`]), the host-side schedule math (betas, alphas_cumprod, sigmas, timesteps;
//! [`noise_schedule`]) in f64 where numpy uses float64 and in f32 where torch uses float32.
//! Each sampler reduces a step to the coefficients of one linear combination
//! ([`Scheduler::step_coefs`]); the trait's `step` ([`scheduling_utils`]) applies them in one
//! fused device dispatch ([`crate::kernels::scheduler`]).
//!
//! ```text
//! let mut s = schedulers::build(kind, &config, steps)?;
//! let mut latents = noise * s.init_noise_sigma();
//! for i in 0..s.timesteps().len() {
//!     let input = latents * s.input_scale(i);            // scale_model_input
//!     let eps = unet(input, s.timesteps()[i]);            // (then classifier_free_guidance)
//!     let noise = s.needs_noise(i).then(|| randn());
//!     latents = s.step(ctx, &eps, i, &latents, noise.as_ref())?;
//! }
//! ```

pub mod config;
pub mod ddim;
pub mod dpmsolver_multistep;
pub mod euler_ancestral_discrete;
pub mod euler_discrete;
pub mod kind;
pub mod lcm;
pub mod noise_schedule;
pub mod scheduling_utils;

use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};

pub use crate::kernels::scheduler::{blend, classifier_free_guidance, StepCoefs};
pub use config::{BetaSchedule, PredictionType, Resolved, SchedulerConfig, TimestepSpacing};
pub use kind::SchedulerKind;
pub use scheduling_utils::{History, Scheduler};

/// Where a model folder keeps the config, as errors name it.
pub const CONFIG_FILE: &str = "scheduler/scheduler_config.json";

fn err(msg: impl Into<String>) -> Error {
    Error::Scheduler(msg.into())
}

/// Builds `kind` from a (model folder's or default) config, `set_timesteps(num_inference_steps)`
/// done. Refuses a config or step count whose schedule diffusers cannot step through or that
/// gives a non-finite coefficient anywhere (a NaN image), before any work is done.
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler>> {
    let r = config.resolve(kind)?;
    let n = num_inference_steps;
    let mut s: Box<dyn Scheduler> = match kind {
        SchedulerKind::Ddim => Box::new(ddim::DDIMScheduler::new(r.clone(), n)?),
        SchedulerKind::Euler => {
            Box::new(euler_discrete::EulerDiscreteScheduler::new(r.clone(), n)?)
        }
        SchedulerKind::EulerAncestral => {
            Box::new(euler_ancestral_discrete::EulerAncestralDiscreteScheduler::new(r.clone(), n)?)
        }
        SchedulerKind::DpmPp2M | SchedulerKind::DpmPp2MKarras => Box::new(
            dpmsolver_multistep::DPMSolverMultistepScheduler::new(r.clone(), n)?,
        ),
        SchedulerKind::Lcm => Box::new(lcm::LCMScheduler::new(r.clone(), n)?),
    };
    check_schedule(&r, s.as_mut())?;
    Ok(s)
}

/// Every number a run can use, finite: timesteps, input scales, `add_noise`'s and each step's
/// coefficients (both orders for a multistep solver).
fn check_schedule(r: &Resolved, s: &mut dyn Scheduler) -> Result<()> {
    let multistep = s.history().is_some();
    let n = s.timesteps().len();
    for i in 0..n {
        let (a, b) = s.add_noise_coefs(i);
        let mut vals = vec![
            ("the timestep", s.timesteps()[i] as f64),
            ("init_noise_sigma", s.init_noise_sigma() as f64),
            ("the input scale", s.input_scale(i) as f64),
            ("add_noise's sample factor", a),
            ("add_noise's noise factor", b),
        ];
        vals.extend(scheduling_utils::named(&s.step_coefs(i, 0)));
        if multistep && i > 0 {
            vals.extend(scheduling_utils::named(&s.step_coefs(i, 1)));
        }
        if let Some((name, v)) = vals.into_iter().find(|(_, v)| !v.is_finite()) {
            let what = format!(
                "step {i} of {n} (timestep {}) has a non-finite {name} ({v}), which would make a \
                 NaN image",
                s.timesteps()[i]
            );
            return Err(match r.non_finite_cause() {
                Some((field, why)) => Error::config(CONFIG_FILE, field, format!("{why}: {what}")),
                None => err(format!(
                    "{}: with this {CONFIG_FILE}, {what}",
                    r.kind.class_name()
                )),
            });
        }
    }
    Ok(())
}

/// For img2img: diffusers' `get_timesteps(num_inference_steps, strength)` start index,
/// `num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)`.
/// `strength` is taken at its shortest decimal value (0.7f32 as Python's 0.7), so the product
/// truncates as it does in Python; values outside [0, 1] are clamped (diffusers refuses them).
pub fn img2img_start(num_inference_steps: usize, strength: f32) -> usize {
    let s: f64 = format!("{strength}").parse().unwrap_or(strength as f64);
    let s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
    let init = ((num_inference_steps as f64 * s) as usize).min(num_inference_steps);
    num_inference_steps - init
}

/// `scale_model_input`: the sample times [`Scheduler::input_scale`] (a copy-free clone at 1).
pub fn scale_model_input(
    ctx: &Context,
    scheduler: &dyn Scheduler,
    sample: &Tensor,
    i: usize,
) -> Result<Tensor> {
    let s = scheduler.input_scale(i);
    if s == 1.0 {
        Ok(sample.clone())
    } else {
        crate::kernels::elementwise::scale(ctx, sample, s)
    }
}

/// diffusers' `eta` must lie in [0, 1]: 0 is deterministic DDIM, 1 DDPM's variance.
pub fn check_eta(eta: f64) -> Result<()> {
    if (0.0..=1.0).contains(&eta) {
        Ok(())
    } else {
        Err(err(format!(
            "eta must be between 0 (deterministic DDIM) and 1 (DDPM's variance), got {eta}"
        )))
    }
}

/// The generation parameters' "Eta" entry (PNG text, CLI and page alike): only DDIM uses eta,
/// and its default 0 is left out.
pub fn eta_parameter(kind: SchedulerKind, eta: f32) -> Option<(String, String)> {
    (eta != 0.0 && kind == SchedulerKind::Ddim).then(|| ("Eta".to_string(), eta.to_string()))
}
