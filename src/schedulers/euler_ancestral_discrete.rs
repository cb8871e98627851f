//! `EulerAncestralDiscreteScheduler` (diffusers `scheduling_euler_ancestral_discrete.py`): an
//! Euler step to `sigma_down`, then fresh noise of std `sigma_up` (drawn at every step).

use super::euler_discrete::{euler_init_noise_sigma, euler_timesteps, euler_x0};
use super::noise_schedule::{alphas_cumprod, check_steps, np_interp, train_sigmas};
use super::{Resolved, Scheduler, SchedulerKind, StepCoefs};
use crate::error::Result;

pub struct EulerAncestralDiscreteScheduler {
    r: Resolved,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl EulerAncestralDiscreteScheduler {
    pub fn new(r: Resolved, n: usize) -> Result<Self> {
        check_steps(&r, n)?;
        let ac = alphas_cumprod(&r, true)?;
        let timesteps = euler_timesteps(&r, n)?;
        let train = train_sigmas(&ac);
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| np_interp(t as f64, &train) as f32)
            .collect();
        sigmas.push(0.0);
        Ok(EulerAncestralDiscreteScheduler {
            init_noise_sigma: euler_init_noise_sigma(&r, &sigmas),
            r,
            timesteps,
            sigmas,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
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

    /// diffusers draws noise at every step, the last included (where sigma_up is 0).
    fn needs_noise(&self, _i: usize) -> bool {
        true
    }

    fn step_coefs(&self, i: usize, _done: usize) -> StepCoefs {
        let (from, to) = (self.sigmas[i] as f64, self.sigmas[i + 1] as f64);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).max(0.0).sqrt();
        let (a0, a1) = euler_x0(self.r.prediction_type, from);
        let dt = down - from;
        StepCoefs {
            a0,
            a1,
            b_x: 1.0 + dt / from,
            b_x0: -dt / from,
            b_noise: up,
            ..Default::default()
        }
    }

    fn add_noise_coefs(&self, i: usize) -> (f64, f64) {
        (1.0, self.sigmas[i] as f64)
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::EulerAncestral
    }
}
