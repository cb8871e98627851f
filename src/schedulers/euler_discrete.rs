//! `EulerDiscreteScheduler` (diffusers `scheduling_euler_discrete.py`), s_churn = 0: the Euler
//! step of the probability-flow ODE in sigma, `prev = x + (x - x0) / sigma * (sigma_next - sigma)`,
//! with linear sigma interpolation and optional Karras sigmas.

use super::noise_schedule::{
    alphas_cumprod, check_steps, check_timesteps, karras_sigmas, log_f32, np_arange, np_interp,
    np_linspace, sigma_to_t, train_sigmas,
};
use super::{PredictionType, Resolved, Scheduler, SchedulerKind, StepCoefs, TimestepSpacing};
use crate::error::Result;

/// The float32 timesteps of Euler-style `set_timesteps` (before any Karras conversion).
pub(crate) fn euler_timesteps(r: &Resolved, n: usize) -> Result<Vec<f32>> {
    let t = r.num_train_timesteps;
    let ts: Vec<f32> = match r.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n, true)
            .into_iter()
            .rev()
            .map(|v| v as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f32 + r.steps_offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|v| v.round_ties_even() as f32 - 1.0)
            .collect(),
    };
    check_timesteps(r, n, &ts.iter().map(|&v| v as f64).collect::<Vec<_>>())?;
    Ok(ts)
}

/// `init_noise_sigma`: the largest sigma, or `sqrt(max^2 + 1)` for leading spacing (float32).
pub(crate) fn euler_init_noise_sigma(r: &Resolved, sigmas: &[f32]) -> f32 {
    let max = sigmas.iter().cloned().fold(f32::MIN, f32::max);
    match r.timestep_spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// `x0 = a0 * x + a1 * m` for Euler's sigma parametrization (`x = x0 + sigma * eps`).
pub(crate) fn euler_x0(p: PredictionType, sigma: f64) -> (f64, f64) {
    match p {
        PredictionType::Epsilon => (1.0, -sigma),
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            (1.0 / s2, -sigma / s2.sqrt())
        }
        PredictionType::Sample => (0.0, 1.0),
    }
}

pub struct EulerDiscreteScheduler {
    r: Resolved,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl EulerDiscreteScheduler {
    pub fn new(r: Resolved, n: usize) -> Result<Self> {
        check_steps(&r, n)?;
        let ac = alphas_cumprod(&r, true)?;
        let mut timesteps = euler_timesteps(&r, n)?;
        let train = train_sigmas(&ac);
        let log_sigmas = log_f32(&train);
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| np_interp(t as f64, &train))
            .collect();
        if r.use_karras_sigmas {
            let smin = r.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let smax = r.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(smin, smax, n);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas) as f32)
                .collect();
        }
        let last = if r.final_sigmas_zero {
            0.0
        } else {
            ((1.0f32 - ac[0]) / ac[0]).sqrt() as f64
        };
        sigmas.push(last);
        let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        Ok(EulerDiscreteScheduler {
            init_noise_sigma: euler_init_noise_sigma(&r, &sigmas),
            r,
            timesteps,
            sigmas,
        })
    }

    /// The float32 sigmas, one per timestep plus the final one.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn input_scale(&self, i: usize) -> f32 {
        let s = self.sigmas[i.min(self.sigmas.len() - 1)] as f64;
        (1.0 / (s * s + 1.0).sqrt()) as f32
    }

    fn step_coefs(&self, i: usize, _done: usize) -> StepCoefs {
        let sigma = self.sigmas[i] as f64;
        // gamma = 0 (s_churn = 0): sigma_hat = sigma.
        let (a0, a1) = euler_x0(self.r.prediction_type, sigma);
        let dt = (self.sigmas[i + 1] - self.sigmas[i]) as f64;
        StepCoefs {
            a0,
            a1,
            b_x: 1.0 + dt / sigma,
            b_x0: -dt / sigma,
            ..Default::default()
        }
    }

    fn add_noise_coefs(&self, i: usize) -> (f64, f64) {
        (1.0, self.sigmas[i] as f64)
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
    }
}
