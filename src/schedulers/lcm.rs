//! `LCMScheduler` (diffusers `scheduling_lcm.py`): the consistency-model boundary condition
//! `denoised = c_out * x0 + c_skip * x`, re-noised to the next timestep with fresh noise (every
//! step but the last).

use super::noise_schedule::{alphas_cumprod, check_steps, np_linspace, x0_coefs};
use super::{Resolved, Scheduler, SchedulerKind, StepCoefs, CONFIG_FILE};
use crate::error::{Error, Result};

pub struct LCMScheduler {
    r: Resolved,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps_int: Vec<i64>,
    timesteps: Vec<f32>,
}

impl LCMScheduler {
    pub fn new(r: Resolved, n: usize) -> Result<Self> {
        check_steps(&r, n)?;
        let ac = alphas_cumprod(&r, false)?;
        let t = r.num_train_timesteps;
        let orig = r.original_inference_steps;
        if orig == 0 || orig > t {
            r.validate()?; // names the field
        }
        if n > orig {
            return Err(Error::invalid(
                "steps",
                format!(
                    "LCMScheduler takes at most original_inference_steps ({orig} in \
                     {CONFIG_FILE}) steps, got {n}: its schedule is a subset of the {orig}-step one"
                ),
            ));
        }
        // strength = 1: lcm_origin_timesteps = [1..=orig] * k - 1, reversed.
        let k = t / orig;
        let origin: Vec<i64> = (1..=orig).rev().map(|i| (i * k) as i64 - 1).collect();
        let idx = np_linspace(0.0, origin.len() as f64, n, false);
        let timesteps_int: Vec<i64> = idx.iter().map(|&v| origin[v.floor() as usize]).collect();
        let final_alpha_cumprod = if r.set_alpha_to_one { 1.0 } else { ac[0] };
        Ok(LCMScheduler {
            timesteps: timesteps_int.iter().map(|&x| x as f32).collect(),
            timesteps_int,
            alphas_cumprod: ac,
            final_alpha_cumprod,
            r,
        })
    }
}

impl Scheduler for LCMScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn needs_noise(&self, i: usize) -> bool {
        i + 1 < self.timesteps.len()
    }

    fn step_coefs(&self, i: usize, _done: usize) -> StepCoefs {
        let n = self.timesteps.len();
        let t = self.timesteps_int[i];
        let prev_t = if i + 1 < n {
            self.timesteps_int[i + 1]
        } else {
            t
        };
        let a = self.alphas_cumprod[t as usize] as f64;
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        } as f64;
        // get_scalings_for_boundary_condition_discrete, sigma_data = 0.5.
        let st = t as f64 * self.r.timestep_scaling;
        let c_skip = 0.25 / (st * st + 0.25);
        let c_out = st / (st * st + 0.25).sqrt();
        let (a0, a1) = x0_coefs(self.r.prediction_type, a.sqrt(), (1.0 - a).sqrt());
        let range = self.r.clip_sample_range;
        let (scale, noise) = if i + 1 < n {
            (a_prev.sqrt(), (1.0 - a_prev).sqrt())
        } else {
            (1.0, 0.0)
        };
        StepCoefs {
            a0,
            a1,
            clip: self.r.clip_sample.then_some((-range, range)),
            b_x: scale * c_skip,
            b_x0: scale * c_out,
            b_noise: noise,
            ..Default::default()
        }
    }

    fn add_noise_coefs(&self, i: usize) -> (f64, f64) {
        let a = self.alphas_cumprod[self.timesteps_int[i] as usize] as f64;
        (a.sqrt(), (1.0 - a).sqrt())
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Lcm
    }
}
