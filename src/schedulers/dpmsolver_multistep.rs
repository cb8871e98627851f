//! `DPMSolverMultistepScheduler` (diffusers `scheduling_dpmsolver_multistep.py`) with
//! `algorithm_type = "dpmsolver++"`, `solver_order = 2` (DPM-Solver++ 2M), midpoint or heun,
//! optional Karras sigmas. The step's scalars follow diffusers' float32 torch arithmetic; the
//! converted model output (x0) of each step is kept on the device for the next one.

use super::{
    alphas_cumprod, check_index, check_noise, check_timesteps, err, karras_sigmas, log_f32, mix,
    np_arange, np_interp, np_linspace, sigma_to_t, train_sigmas, x0_coefs, BetaSchedule, Resolved,
    Scheduler, SchedulerKind, TimestepSpacing,
};
use crate::error::Result;
use crate::gpu::{Context, Tensor};
use crate::kernels::scheduler::{self as kernel, StepCoefs};

pub struct DPMSolverMultistepScheduler {
    r: Resolved,
    timesteps_int: Vec<i64>,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    /// The previous step's x0 (diffusers' `model_outputs[-2]` once shifted).
    prev_x0: Option<Tensor>,
    lower_order_nums: usize,
    last_step: Option<usize>,
}

/// `_sigma_to_alpha_sigma_t` in float32: `alpha = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha`.
fn alpha_sigma(s: f32) -> (f32, f32) {
    let a = 1.0f32 / (s * s + 1.0).sqrt();
    (a, s * a)
}

fn lambda(a: f32, s: f32) -> f32 {
    a.ln() - s.ln()
}

impl DPMSolverMultistepScheduler {
    pub fn new(r: Resolved, n: usize) -> Result<Self> {
        let ac = alphas_cumprod(&r, true)?;
        let t = r.num_train_timesteps;
        // clipped_idx = searchsorted(flip(lambda_t), lambda_min_clipped); -inf gives 0.
        let clipped_idx = if r.lambda_min_clipped == f64::NEG_INFINITY {
            0
        } else {
            let mut lam: Vec<f32> = ac
                .iter()
                .map(|&a| {
                    let at = a.sqrt();
                    let st = (1.0f32 - a).sqrt();
                    at.ln() - st.ln()
                })
                .collect();
            lam.reverse();
            lam.iter()
                .position(|&l| l as f64 >= r.lambda_min_clipped)
                .unwrap_or(lam.len())
        };
        let last_timestep = t - clipped_idx;
        let mut timesteps_int: Vec<i64> = match r.timestep_spacing {
            TimestepSpacing::Linspace => {
                let v = np_linspace(0.0, last_timestep as f64 - 1.0, n + 1, true);
                v.into_iter()
                    .rev()
                    .take(n)
                    .map(|x| x.round_ties_even() as i64)
                    .collect()
            }
            TimestepSpacing::Leading => {
                let ratio = last_timestep / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio + r.steps_offset) as i64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                np_arange(last_timestep as f64, 0.0, -(t as f64 / n as f64))
                    .into_iter()
                    .map(|x| x.round_ties_even() as i64 - 1)
                    .collect()
            }
        };
        check_timesteps(
            &r,
            n,
            &timesteps_int.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        )?;
        let train = train_sigmas(&ac);
        let mut sigmas: Vec<f64> = if r.use_karras_sigmas {
            let log_sigmas = log_f32(&train);
            // in_sigmas = flip(sigmas): sigma_min = sigmas[0], sigma_max = sigmas[-1].
            let s = karras_sigmas(train[0] as f64, train[t - 1] as f64, n);
            timesteps_int = s
                .iter()
                .map(|&x| {
                    let tt = sigma_to_t(x, &log_sigmas);
                    if r.beta_schedule == BetaSchedule::SquaredcosCapV2 {
                        tt as i64
                    } else {
                        tt.round_ties_even() as i64
                    }
                })
                .collect();
            s
        } else {
            timesteps_int
                .iter()
                .map(|&x| np_interp(x as f64, &train))
                .collect()
        };
        let last = if r.final_sigmas_zero {
            0.0
        } else {
            ((1.0f32 - ac[0]) / ac[0]).sqrt() as f64
        };
        sigmas.push(last);
        let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        if r.use_karras_sigmas && timesteps_int.windows(2).any(|w| w[0] == w[1]) {
            // diffusers' index_for_timestep then starts at the second copy and overruns.
            return Err(err(format!(
                "DPMSolverMultistepScheduler: Karras sigmas with {n} steps repeat a timestep \
                 ({timesteps_int:?}), which diffusers cannot step through; choose another number \
                 of steps"
            )));
        }
        Ok(DPMSolverMultistepScheduler {
            timesteps: timesteps_int.iter().map(|&x| x as f32).collect(),
            timesteps_int,
            sigmas,
            r,
            prev_x0: None,
            lower_order_nums: 0,
            last_step: None,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The integer timesteps (diffusers' int64 tensor).
    pub fn timesteps_int(&self) -> &[i64] {
        &self.timesteps_int
    }

    /// Whether step `i` is a first-order (DPM-Solver++ 1, i.e. DDIM) update, given how many
    /// steps ran before it.
    fn first_order(&self, i: usize, lower_order_nums: usize) -> bool {
        let n = self.timesteps.len();
        let lower_order_final = i == n - 1
            && (self.r.euler_at_final
                || (self.r.lower_order_final && n < 15)
                || self.r.final_sigmas_zero);
        lower_order_nums < 1 || lower_order_final
    }

    /// The scalars of step `i` (`second`: the 2M update using the previous x0).
    pub fn coefs(&self, i: usize, second: bool) -> StepCoefs {
        let (a_s0, s_s0) = alpha_sigma(self.sigmas[i]);
        let (a0, a1) = x0_coefs(self.r.prediction_type, a_s0 as f64, s_s0 as f64);
        let (a_t, s_t) = alpha_sigma(self.sigmas[i + 1]);
        let lam_t = lambda(a_t, s_t);
        let lam_s0 = lambda(a_s0, s_s0);
        let h = lam_t - lam_s0;
        let em1 = (-h).exp() - 1.0; // exp(-h) - 1
        let b_x = (s_t / s_s0) as f64;
        let d0 = -(a_t * em1) as f64;
        if !second {
            return StepCoefs {
                a0,
                a1,
                b_x,
                b_x0: d0,
                ..Default::default()
            };
        }
        let (a_s1, s_s1) = alpha_sigma(self.sigmas[i - 1]);
        let h0 = lam_s0 - lambda(a_s1, s_s1);
        let r0 = (h0 / h) as f64;
        // D1 = (m0 - m1) / r0, with coefficient c1.
        let c1 = if self.r.solver_heun {
            (a_t * (em1 / h + 1.0)) as f64
        } else {
            -0.5 * (a_t * em1) as f64
        };
        StepCoefs {
            a0,
            a1,
            b_x,
            b_x0: d0 + c1 / r0,
            b_prev: -c1 / r0,
            ..Default::default()
        }
    }
}

impl Scheduler for DPMSolverMultistepScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn input_scale(&self, _i: usize) -> f32 {
        1.0
    }

    fn needs_noise(&self, _i: usize) -> bool {
        false
    }

    fn step(
        &mut self,
        ctx: &Context,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_index("DPMSolverMultistepScheduler.step", i, self.timesteps.len())?;
        check_noise(self.kind(), i, false, noise)?;
        if let Some(l) = self.last_step {
            if i != l + 1 {
                return Err(err(format!(
                    "DPMSolverMultistepScheduler: steps must run in order; step {i} after step {l}"
                )));
            }
        }
        let second = !self.first_order(i, self.lower_order_nums);
        let c = self.coefs(i, second);
        let prev = if second { self.prev_x0.as_ref() } else { None };
        let (out, x0) = kernel::step(ctx, sample, model_output, None, prev, &c, true)?;
        self.prev_x0 = x0;
        self.lower_order_nums = (self.lower_order_nums + 1).min(2);
        self.last_step = Some(i);
        Ok(out)
    }

    fn add_noise(
        &self,
        ctx: &Context,
        original: &Tensor,
        noise: &Tensor,
        i: usize,
    ) -> Result<Tensor> {
        check_index(
            "DPMSolverMultistepScheduler.add_noise",
            i,
            self.timesteps.len(),
        )?;
        let (a, s) = alpha_sigma(self.sigmas[i]);
        mix(ctx, original, noise, a as f64, s as f64)
    }

    fn kind(&self) -> SchedulerKind {
        if self.r.use_karras_sigmas {
            SchedulerKind::DpmPp2MKarras
        } else {
            SchedulerKind::DpmPp2M
        }
    }
}
