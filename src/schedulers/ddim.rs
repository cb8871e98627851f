//! `DDIMScheduler` (diffusers `scheduling_ddim.py`):
//! `prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std noise`, x0 optionally clipped,
//! with `std = eta sqrt((1 - a_prev) / (1 - a) (1 - a / a_prev))`: eta = 0 (the default) is
//! the deterministic DDIM update, eta = 1 DDPM's variance.

use super::noise_schedule::{
    alphas_cumprod, check_steps, check_timesteps, np_arange, np_linspace, x0_coefs,
};
use super::{PredictionType, Resolved, Scheduler, SchedulerKind, StepCoefs, TimestepSpacing};
use crate::error::Result;

/// The integer timesteps of `set_timesteps` shared by DDIM (and, with their own spacing
/// rules, the others): `linspace` rounds half to even like numpy, `leading` adds
/// `steps_offset`, `trailing` subtracts 1 from a float `arange`.
pub(crate) fn ddim_timesteps(r: &Resolved, n: usize) -> Result<Vec<i64>> {
    let t = r.num_train_timesteps;
    let ts: Vec<i64> = match r.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n, true)
            .into_iter()
            .rev()
            .map(|v| v.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + r.steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|v| v.round_ties_even() as i64 - 1)
            .collect(),
    };
    check_timesteps(r, n, &ts.iter().map(|&v| v as f64).collect::<Vec<_>>())?;
    Ok(ts)
}

pub struct DDIMScheduler {
    r: Resolved,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps_int: Vec<i64>,
    timesteps: Vec<f32>,
    eta: f64,
}

impl DDIMScheduler {
    pub fn new(r: Resolved, num_inference_steps: usize) -> Result<Self> {
        check_steps(&r, num_inference_steps)?;
        let ac = alphas_cumprod(&r, false)?;
        let final_alpha_cumprod = if r.set_alpha_to_one { 1.0 } else { ac[0] };
        let timesteps_int = ddim_timesteps(&r, num_inference_steps)?;
        Ok(DDIMScheduler {
            timesteps: timesteps_int.iter().map(|&t| t as f32).collect(),
            timesteps_int,
            alphas_cumprod: ac,
            final_alpha_cumprod,
            r,
            eta: 0.0,
        })
    }

    /// The host-side alphas_cumprod (float32, as diffusers holds it).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }
}

impl Scheduler for DDIMScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn needs_noise(&self, _i: usize) -> bool {
        self.eta > 0.0
    }

    fn set_eta(&mut self, eta: f64) -> Result<bool> {
        super::check_eta(eta)?;
        self.eta = eta;
        Ok(true)
    }

    fn step_coefs(&self, i: usize, _done: usize) -> StepCoefs {
        let t = self.timesteps_int[i];
        // diffusers: prev_timestep = timestep - num_train_timesteps // num_inference_steps,
        // whatever the spacing.
        let prev_t = t - (self.r.num_train_timesteps / self.timesteps.len()) as i64;
        let a = self.alphas_cumprod[t as usize] as f64;
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        } as f64;
        let b = 1.0 - a;
        let (sa, sb) = (a.sqrt(), b.sqrt());
        let (a0, a1) = x0_coefs(self.r.prediction_type, sa, sb);
        // pred_epsilon (from the unclipped prediction) = e_x * x + e_m * m.
        let (e_x, e_m) = match self.r.prediction_type {
            PredictionType::Epsilon => (0.0, 1.0),
            PredictionType::Sample => (1.0 / sb, -sa / sb),
            PredictionType::VPrediction => (sb, sa),
        };
        // diffusers' _get_variance and std_dev_t; eps comes from the unclipped prediction
        // (use_clipped_model_output is False in its pipelines).
        let variance = (1.0 - a_prev) / b * (1.0 - a / a_prev);
        let std = self.eta * variance.sqrt();
        // At eta = 1 on a zero-terminal-SNR schedule (a = 0 at t = 999) std^2 is 1 - a_prev, and
        // rounding can leave the difference a hair below 0: diffusers takes its square root and
        // returns NaN (an all-black image); its exact value there is 0.
        let dir = (1.0 - a_prev - std * std).max(0.0).sqrt();
        let range = self.r.clip_sample_range;
        StepCoefs {
            a0,
            a1,
            clip: self.r.clip_sample.then_some((-range, range)),
            b_x: dir * e_x,
            b_x0: a_prev.sqrt(),
            b_m: dir * e_m,
            b_noise: std,
            ..Default::default()
        }
    }

    fn add_noise_coefs(&self, i: usize) -> (f64, f64) {
        let a = self.alphas_cumprod[self.timesteps_int[i] as usize] as f64;
        (a.sqrt(), (1.0 - a).sqrt())
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
    }
}
