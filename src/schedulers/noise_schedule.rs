//! The host-side schedule math the samplers share, as diffusers computes it: betas and
//! `alphas_cumprod` (float32 torch), numpy's `linspace` / `arange` / `interp` (float64),
//! training sigmas, `_sigma_to_t`, Karras sigmas and the x0 conversion of `prediction_type`.

use super::{err, BetaSchedule, PredictionType, Resolved, CONFIG_FILE};
use crate::error::{Error, Result};

/// `set_timesteps(n)`'s own refusals: at least one step, and no more than the training
/// timesteps.
pub(crate) fn check_steps(r: &Resolved, n: usize) -> Result<()> {
    let t = r.num_train_timesteps;
    if n == 0 {
        return Err(Error::invalid("steps", "must be at least 1, got 0"));
    }
    if n > t {
        return Err(Error::invalid(
            "steps",
            format!(
                "{n} inference steps cannot be more than the {t} timesteps the model was trained \
                 with (`num_train_timesteps` in {CONFIG_FILE}); use at most {t}"
            ),
        ));
    }
    Ok(())
}

/// Refuses schedules diffusers itself gets wrong: numpy's float `arange` can yield `n + 1`
/// trailing timesteps (the last one -1), and `steps_offset` can push one past the table.
pub(crate) fn check_timesteps(r: &Resolved, n: usize, ts: &[f64]) -> Result<()> {
    let t = r.num_train_timesteps as f64;
    if let Some(bad) = ts.iter().copied().find(|&v| !(v >= 0.0 && v < t)) {
        return Err(err(format!(
            "{}: {n} inference steps with timestep_spacing {} (steps_offset {}) give {} \
             timesteps including {bad}, outside 0..{t} (numpy's float arange or the offset; \
             diffusers mishandles it); choose another number of steps",
            r.kind.class_name(),
            r.timestep_spacing.name(),
            r.steps_offset,
            ts.len(),
        )));
    }
    if ts.len() != n {
        return Err(err(format!(
            "{}: {n} inference steps with timestep_spacing {} give {} timesteps; choose another \
             number of steps",
            r.kind.class_name(),
            r.timestep_spacing.name(),
            ts.len()
        )));
    }
    Ok(())
}

/// The `alphas_cumprod` diffusers builds in `__init__` (float32 torch tensor): betas as torch's
/// float32 linspace makes them, `alphas = 1 - betas` in f32, and the
/// cumulative product accumulated in f64 and rounded per element (torch's CPU cumprod
/// accumulates float32 in double). `zero_snr_fix`: Euler/DPM's `alphas_cumprod[-1] = 2**-24`.
pub(crate) fn alphas_cumprod(r: &Resolved, zero_snr_fix: bool) -> Result<Vec<f32>> {
    let n = r.num_train_timesteps;
    if n < 2 {
        return Err(err(format!(
            "num_train_timesteps must be at least 2, got {n}"
        )));
    }
    let mut betas: Vec<f32> = if let Some(tb) = &r.trained_betas {
        if tb.len() != n {
            return Err(err(format!(
                "trained_betas has {} values but num_train_timesteps is {n}",
                tb.len()
            )));
        }
        tb.iter().map(|&b| b as f32).collect()
    } else {
        match r.beta_schedule {
            BetaSchedule::Linear => linspace_f32(r.beta_start, r.beta_end, n),
            BetaSchedule::ScaledLinear => linspace_f32(r.beta_start.sqrt(), r.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(n, 0.999),
        }
    };
    if r.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let alphas: Vec<f32> = betas.iter().map(|&b| 1.0f32 - b).collect();
    // Zero terminal SNR makes the last alpha exactly 0, on purpose.
    let zero_ok = |i: usize, a: f32| r.rescale_betas_zero_snr && i == n - 1 && a == 0.0;
    if let Some(i) = (0..n).find(|&i| !(alphas[i] > 0.0 && alphas[i] <= 1.0)) {
        if !zero_ok(i, alphas[i]) {
            return Err(err(format!(
                "beta {} at timestep {i} is outside (0, 1); check beta_start / beta_end / \
                 trained_betas",
                betas[i]
            )));
        }
    }
    let mut acc = 1.0f64;
    let mut out: Vec<f32> = alphas
        .iter()
        .map(|&a| {
            acc *= a as f64;
            acc as f32
        })
        .collect();
    if r.rescale_betas_zero_snr && zero_snr_fix {
        out[n - 1] = 2f32.powi(-24);
    }
    Ok(out)
}

/// `torch.linspace(start, end, n, dtype=float32)` as torch's CPU kernel computes it: a float32
/// step, `start + step * i` below the halfway index and `end - step * (n - 1 - i)` from there,
/// each a fused multiply-add (reproduces torch 2.15 bit for bit on the SD schedules).
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((n - 1 - i) as f32, e)
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar(n, max_beta, "cosine")` (Python floats, then float32).
fn betas_for_alpha_bar(n: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (float32 torch ops; cumprod accumulated in f64).
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    let mut sqrt: Vec<f32> = betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            (acc as f32).sqrt()
        })
        .collect();
    let (s0, st) = (sqrt[0], sqrt[sqrt.len() - 1]);
    let k = s0 / (s0 - st);
    for v in sqrt.iter_mut() {
        *v = (*v - st) * k;
    }
    let bar: Vec<f32> = sqrt.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// `numpy.linspace(start, stop, num, endpoint)` in f64, numpy's formula (`i * step + start`,
/// the last value set to `stop` when `endpoint`).
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize, endpoint: bool) -> Vec<f64> {
    let div = if endpoint { num.saturating_sub(1) } else { num };
    let step = if div > 0 {
        (stop - start) / div as f64
    } else {
        f64::NAN
    };
    let mut y: Vec<f64> = (0..num)
        .map(|i| {
            if div > 0 {
                i as f64 * step + start
            } else {
                start
            }
        })
        .collect();
    if endpoint && num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// `numpy.arange(start, stop, step)` for floats: `ceil((stop - start) / step)` values
/// `start + i * delta`, with numpy's `delta = (start + step) - start`.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    let len = if len.is_finite() && len > 0.0 {
        len as usize
    } else {
        0
    };
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// `numpy.interp(x, arange(len(fp)), fp)` (numpy's formula, including its exact-hit case).
pub(crate) fn np_interp(x: f64, fp: &[f32]) -> f64 {
    let n = fp.len();
    let last = (n - 1) as f64;
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last {
        return fp[n - 1] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = (fp[j + 1] as f64 - fp[j] as f64) / 1.0;
    slope * (x - j as f64) + fp[j] as f64
}

/// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`, float32 ops as torch does them.
pub(crate) fn train_sigmas(ac: &[f32]) -> Vec<f32> {
    ac.iter().map(|&a| ((1.0f32 - a) / a).sqrt()).collect()
}

/// diffusers' `_sigma_to_t(sigma, log_sigmas)`: `log_sigmas` is float32 (numpy log of the
/// float32 sigmas), the interpolation in f64 except `low - high`, a float32 difference.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // argmax of cumsum(dists >= 0): the last index where log_sigma >= log_sigmas[i]
    // (log_sigmas increase with i); 0 when none.
    let mut count = 0usize;
    let mut best = (0usize, 0usize);
    for (i, &l) in log_sigmas.iter().enumerate() {
        if log_sigma - l as f64 >= 0.0 {
            count += 1;
        }
        if count > best.1 {
            best = (i, count);
        }
    }
    let low_idx = best.0.min(n - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// diffusers' `_convert_to_karras` (rho = 7), numpy float64.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n, true)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// `np.log` of float32 sigmas (float32 result).
pub(crate) fn log_f32(s: &[f32]) -> Vec<f32> {
    s.iter().map(|&v| (v as f64).ln() as f32).collect()
}

/// The `prediction_type` conversion to x0 from the sample `x` and model output `m`, for a
/// discretization with `x = alpha * x0 + sigma * eps`: (a0, a1) with `x0 = a0 * x + a1 * m`.
pub(crate) fn x0_coefs(p: PredictionType, alpha: f64, sigma: f64) -> (f64, f64) {
    match p {
        PredictionType::Epsilon => (1.0 / alpha, -sigma / alpha),
        PredictionType::VPrediction => (alpha, -sigma),
        PredictionType::Sample => (0.0, 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_helpers() {
        assert_eq!(
            np_linspace(0.0, 999.0, 4, true),
            vec![0.0, 333.0, 666.0, 999.0]
        );
        assert_eq!(np_linspace(0.0, 10.0, 4, false), vec![0.0, 2.5, 5.0, 7.5]);
        assert_eq!(np_linspace(3.0, 9.0, 1, true), vec![3.0]);
        // np.arange(1000, 0, -1000 / 61) has 62 values (floating point).
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 61.0).len(), 62);
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 6.0).len(), 6);
        assert_eq!(np_interp(2.5, &[0.0, 1.0, 3.0, 5.0]), 4.0);
        assert_eq!(np_interp(9.0, &[0.0, 1.0]), 1.0);
    }
}
