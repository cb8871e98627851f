//! `DPMSolverMultistepScheduler` (diffusers `scheduling_dpmsolver_multistep.py`) with
//! `algorithm_type = "dpmsolver++"`, `solver_order = 2` (DPM-Solver++ 2M), midpoint or heun,
//! optional Karras sigmas. The step's scalars follow diffusers' float32 torch arithmetic; the
//! converted model output (x0) of each step is kept on the device for the next one.

use super::noise_schedule::{
    alphas_cumprod, check_steps, check_timesteps, karras_sigmas, log_f32, np_arange, np_interp,
    np_linspace, sigma_to_t, train_sigmas, x0_coefs,
};
use super::{
    err, BetaSchedule, History, Resolved, Scheduler, SchedulerKind, StepCoefs, TimestepSpacing,
};
use crate::error::Result;

pub struct DPMSolverMultistepScheduler {
    r: Resolved,
    timesteps_int: Vec<i64>,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    history: History,
}

/// `_sigma_to_alpha_sigma_t` in float32: `alpha = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha`.
fn alpha_sigma(s: f32) -> (f32, f32) {
    let a = 1.0f32 / (s * s + 1.0).sqrt();
    (a, s * a)
}

fn lambda(a: f32, s: f32) -> f32 {
    a.ln() - s.ln()
}

/// `set_timesteps`' spaced integer timesteps, below the `lambda_min_clipped` cut.
fn spaced_timesteps(r: &Resolved, ac: &[f32], n: usize) -> Result<Vec<i64>> {
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
    let ts: Vec<i64> = match r.timestep_spacing {
        TimestepSpacing::Linspace => {
            let v = np_linspace(0.0, last_timestep as f64 - 1.0, n + 1, true);
            v.into_iter()
                .rev()
                .take(n)
                .map(|x| x.round_ties_even() as i64)
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = (last_timestep / (n + 1)) as i64;
            (1..=n as i64)
                .rev()
                .map(|i| i * ratio + r.steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange(last_timestep as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|x| x.round_ties_even() as i64 - 1)
            .collect(),
    };
    check_timesteps(r, n, &ts.iter().map(|&v| v as f64).collect::<Vec<_>>())?;
    Ok(ts)
}

/// `_sigma_to_t` of a Karras sigma as the int64 timestep: rounded, except for the cosine
/// schedule, whose float t the int64 tensor truncates.
fn karras_timestep(r: &Resolved, sigma: f64, log_sigmas: &[f32]) -> i64 {
    let t = sigma_to_t(sigma, log_sigmas);
    if r.beta_schedule == BetaSchedule::SquaredcosCapV2 {
        t as i64
    } else {
        t.round_ties_even() as i64
    }
}

/// `_convert_to_karras` from the training sigmas' ends (in_sigmas = flip(sigmas): sigma_min =
/// sigmas[0], sigma_max = sigmas[-1]), and each sigma's timestep. Where the training sigmas
/// rise steeply (zero terminal SNR: 2254 at t = 998, 4096 at 999) several Karras sigmas round
/// to one timestep. diffusers steps by index once it has found the first timestep
/// (`_init_step_index`), so a repeat further on is harmless; but a repeated first timestep is
/// found at its second copy (`index_for_timestep`), and the loop overruns the sigmas.
fn karras(r: &Resolved, train: &[f32], n: usize) -> Result<(Vec<f64>, Vec<i64>)> {
    let log_sigmas = log_f32(train);
    let top = train[train.len() - 1];
    let (lo, hi) = (train[0] as f64, top as f64);
    let s = karras_sigmas(lo, hi, n);
    let ts: Vec<i64> = s
        .iter()
        .map(|&x| karras_timestep(r, x, &log_sigmas))
        .collect();
    if ts.len() > 1 && ts[0] == ts[1] {
        // The largest step count whose first two timesteps differ.
        let first_two = |m: usize| {
            let s = karras_sigmas(lo, hi, m);
            karras_timestep(r, s[0], &log_sigmas) != karras_timestep(r, s[1], &log_sigmas)
        };
        let most = (2..n).rev().find(|&m| first_two(m)).unwrap_or(1);
        return Err(err(format!(
            "DPMSolverMultistepScheduler: Karras sigmas from sigma_max {top:.0} with {n} steps repeat \
             the first timestep ({ts:?}), which diffusers cannot step through: its txt2img loop \
             finds timestep {} at the second copy and runs past the last sigma (IndexError); \
             use at most {most} steps",
            ts[0]
        )));
    }
    Ok((s, ts))
}

impl DPMSolverMultistepScheduler {
    pub fn new(r: Resolved, n: usize) -> Result<Self> {
        check_steps(&r, n)?;
        let ac = alphas_cumprod(&r, true)?;
        let mut timesteps_int = spaced_timesteps(&r, &ac, n)?;
        let train = train_sigmas(&ac);
        let mut sigmas: Vec<f64> = if r.use_karras_sigmas {
            let (s, ts) = karras(&r, &train, n)?;
            timesteps_int = ts;
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
        Ok(DPMSolverMultistepScheduler {
            timesteps: timesteps_int.iter().map(|&x| x as f32).collect(),
            timesteps_int,
            sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
            r,
            history: History::default(),
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
        // (i = 0 has no previous step, whatever `lower_order_nums` says.)
        lower_order_nums < 1 || i == 0 || lower_order_final
    }
}

impl Scheduler for DPMSolverMultistepScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// The first-order update, or the 2M one using the previous x0 once a step has run.
    fn step_coefs(&self, i: usize, done: usize) -> StepCoefs {
        let (a_s0, s_s0) = alpha_sigma(self.sigmas[i]);
        let (a0, a1) = x0_coefs(self.r.prediction_type, a_s0 as f64, s_s0 as f64);
        let (a_t, s_t) = alpha_sigma(self.sigmas[i + 1]);
        let lam_t = lambda(a_t, s_t);
        let lam_s0 = lambda(a_s0, s_s0);
        let h = lam_t - lam_s0;
        let em1 = (-h).exp() - 1.0; // exp(-h) - 1
        let b_x = (s_t / s_s0) as f64;
        let d0 = -(a_t * em1) as f64;
        if self.first_order(i, done) {
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

    fn add_noise_coefs(&self, i: usize) -> (f64, f64) {
        let (a, s) = alpha_sigma(self.sigmas[i]);
        (a as f64, s as f64)
    }

    fn history(&mut self) -> Option<&mut History> {
        Some(&mut self.history)
    }

    /// Karras sigmas on a zero-terminal-SNR schedule start at 4096, not ~15: the rho = 7 ramp
    /// then spends most steps at near-pure noise (diffusers does the same).
    fn note(&self) -> Option<String> {
        (self.r.use_karras_sigmas && self.r.rescale_betas_zero_snr).then(|| {
            let half = self.r.num_train_timesteps as i64 / 2;
            let low = self.timesteps_int.iter().filter(|&&t| t < half).count();
            format!(
                "Karras sigmas on this zero-terminal-SNR schedule start at sigma {:.0} (diffusers' \
                 alphas_cumprod[-1] = 2**-24), so only {low} of the {} steps fall below timestep \
                 {half}, where the details form; with few there the image keeps visible noise \
                 (dpm++2m spaces its steps evenly)",
                self.sigmas[0],
                self.timesteps.len()
            )
        })
    }

    fn kind(&self) -> SchedulerKind {
        if self.r.use_karras_sigmas {
            SchedulerKind::DpmPp2MKarras
        } else {
            SchedulerKind::DpmPp2M
        }
    }
}
