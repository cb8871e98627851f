//! diffusers' `scheduler_config.json` (`ConfigMixin.from_config` with each scheduler class's
//! `__init__` defaults): parsed, resolved for one sampler class, and validated, so that a
//! nonsensical value is refused naming `scheduler/scheduler_config.json` and its field.

use super::{err, SchedulerKind, CONFIG_FILE};
use crate::error::{Error, Result};
use serde::Deserialize;

/// diffusers' `scheduler_config.json`. Every field is optional: defaults differ per scheduler
/// class and are resolved by [`SchedulerConfig::resolve`]. Unknown fields are ignored.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<usize>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub set_alpha_to_one: Option<bool>,
    pub thresholding: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub use_dynamic_shifting: Option<bool>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigmas_type: Option<String>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub variance_type: Option<String>,
    /// `null` in the file stands for diffusers' default, `-inf` (see [`SchedulerConfig::from_json`]).
    pub lambda_min_clipped: Option<f64>,
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
    pub rescale_betas_zero_snr: Option<bool>,
}

/// `Infinity`, `-Infinity` and `NaN` tokens (outside strings) replaced by `null`: Python's json
/// writes them (DPMSolverMultistepScheduler's `"lambda_min_clipped": -Infinity`) but they are
/// not JSON. Every such field's default is the value written, so `null` keeps its meaning.
fn sanitize_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = json;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        if let Some(t) = token {
            out.push_str("null");
            rest = &rest[t.len()..];
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

impl SchedulerConfig {
    /// Parses `scheduler_config.json` as diffusers' `save_config` writes it.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(json)
            .map_err(|e| err(format!("scheduler_config.json is not UTF-8: {e}")))?;
        serde_json::from_str(&sanitize_json(text))
            .map_err(|e| err(format!("scheduler_config.json: {e}")))
    }

    /// The concrete settings for `kind`, with that diffusers class's defaults for every field the
    /// config leaves out; refuses values hoa does not implement, naming the field.
    pub fn resolve(&self, kind: SchedulerKind) -> Result<Resolved> {
        self.check_unsupported(kind)?;
        let lcm = kind == SchedulerKind::Lcm;
        let (beta_start, beta_end) = if lcm {
            (0.00085, 0.012)
        } else {
            (0.0001, 0.02)
        };
        let final_sigmas_zero = match self.final_sigmas_type.as_deref() {
            None | Some("zero") => true,
            Some("sigma_min") => false,
            Some(o) => {
                return Err(unsupported(
                    kind,
                    "final_sigmas_type",
                    &o,
                    "zero, sigma_min",
                ))
            }
        };
        let r = Resolved {
            kind,
            num_train_timesteps: self.num_train_timesteps.unwrap_or(1000),
            beta_start: self.beta_start.unwrap_or(beta_start),
            beta_end: self.beta_end.unwrap_or(beta_end),
            beta_schedule: self.beta_schedule(kind)?,
            trained_betas: self.trained_betas.clone(),
            prediction_type: self.prediction_type(kind)?,
            timestep_spacing: self.timestep_spacing(kind)?,
            steps_offset: self.steps_offset.unwrap_or(0),
            clip_sample: self.clip_sample.unwrap_or(kind == SchedulerKind::Ddim),
            clip_sample_range: self.clip_sample_range.unwrap_or(1.0),
            set_alpha_to_one: self.set_alpha_to_one.unwrap_or(true),
            use_karras_sigmas: match kind {
                SchedulerKind::DpmPp2MKarras => true,
                SchedulerKind::Euler => self.use_karras_sigmas.unwrap_or(false),
                _ => false,
            },
            sigma_min: self.sigma_min.filter(|_| kind == SchedulerKind::Euler),
            sigma_max: self.sigma_max.filter(|_| kind == SchedulerKind::Euler),
            final_sigmas_zero,
            lower_order_final: self.lower_order_final.unwrap_or(true),
            euler_at_final: self.euler_at_final.unwrap_or(false),
            solver_heun: kind.is_dpm() && self.solver_heun(kind)?,
            lambda_min_clipped: self.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            original_inference_steps: self.original_inference_steps.unwrap_or(50),
            timestep_scaling: self.timestep_scaling.unwrap_or(10.0),
            rescale_betas_zero_snr: self.rescale_betas_zero_snr.unwrap_or(false),
        };
        r.validate()?;
        Ok(r)
    }

    fn beta_schedule(&self, kind: SchedulerKind) -> Result<BetaSchedule> {
        Ok(match self.beta_schedule.as_deref() {
            None if kind == SchedulerKind::Lcm => BetaSchedule::ScaledLinear,
            None | Some("linear") => BetaSchedule::Linear,
            Some("scaled_linear") => BetaSchedule::ScaledLinear,
            Some("squaredcos_cap_v2") => BetaSchedule::SquaredcosCapV2,
            Some(o) => {
                let known = "linear, scaled_linear, squaredcos_cap_v2";
                return Err(unsupported(kind, "beta_schedule", &o, known));
            }
        })
    }

    fn prediction_type(&self, kind: SchedulerKind) -> Result<PredictionType> {
        Ok(match self.prediction_type.as_deref() {
            None | Some("epsilon") => PredictionType::Epsilon,
            Some("v_prediction") => PredictionType::VPrediction,
            Some("sample") if kind != SchedulerKind::EulerAncestral => PredictionType::Sample,
            Some("original_sample") if kind == SchedulerKind::Euler => PredictionType::Sample,
            Some(o) => {
                let known = if kind == SchedulerKind::EulerAncestral {
                    "epsilon, v_prediction"
                } else {
                    "epsilon, v_prediction, sample"
                };
                return Err(unsupported(kind, "prediction_type", &o, known));
            }
        })
    }

    fn timestep_spacing(&self, kind: SchedulerKind) -> Result<TimestepSpacing> {
        let default = match kind {
            SchedulerKind::Ddim | SchedulerKind::Lcm => "leading",
            _ => "linspace",
        };
        Ok(match self.timestep_spacing.as_deref().unwrap_or(default) {
            "linspace" => TimestepSpacing::Linspace,
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            o => {
                let known = "linspace, leading, trailing";
                return Err(unsupported(kind, "timestep_spacing", &o, known));
            }
        })
    }

    /// DPM-Solver's `solver_type` (the 2M update's D1 term): heun or midpoint.
    fn solver_heun(&self, kind: SchedulerKind) -> Result<bool> {
        Ok(match self.solver_type.as_deref() {
            None | Some("midpoint") | Some("logrho") | Some("bh1") | Some("bh2") => false,
            Some("heun") => true,
            Some(o) => return Err(unsupported(kind, "solver_type", &o, "midpoint, heun")),
        })
    }

    /// Options diffusers has and hoa does not implement, refused rather than ignored.
    fn check_unsupported(&self, kind: SchedulerKind) -> Result<()> {
        let bad = |field: &str, value: &dyn std::fmt::Debug, known: &str| {
            Err(unsupported(kind, field, value, known))
        };
        for (field, on) in [
            ("thresholding", self.thresholding),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("use_lu_lambdas", self.use_lu_lambdas),
            ("use_flow_sigmas", self.use_flow_sigmas),
            ("use_dynamic_shifting", self.use_dynamic_shifting),
        ] {
            if on == Some(true) {
                return bad(field, &true, "false");
            }
        }
        if kind == SchedulerKind::Euler {
            let interpolation = self.interpolation_type.as_deref();
            if let Some(t) = interpolation.filter(|t| *t != "linear") {
                return bad("interpolation_type", &t, "linear");
            }
            if let Some(t) = self.timestep_type.as_deref().filter(|t| *t != "discrete") {
                return bad("timestep_type", &t, "discrete");
            }
        }
        if kind.is_dpm() {
            if let Some(o) = self.solver_order.filter(|&o| o != 2) {
                let known = "2 (DPM-Solver++ 2M; orders 1 and 3 are not implemented)";
                return bad("solver_order", &o, known);
            }
            let algorithm = self.algorithm_type.as_deref();
            if let Some(a) = algorithm.filter(|a| *a != "dpmsolver++" && *a != "deis") {
                return bad("algorithm_type", &a, "dpmsolver++");
            }
            if let Some(v) = self.variance_type.as_deref() {
                return bad("variance_type", &v, "null");
            }
        }
        Ok(())
    }
}

/// A value diffusers accepts (or not) that hoa does not implement.
fn unsupported(
    kind: SchedulerKind,
    field: &str,
    value: &dyn std::fmt::Debug,
    known: &str,
) -> Error {
    let class = kind.class_name();
    Error::config(
        CONFIG_FILE,
        field,
        format!("= {value:?} is not supported by hoa's {class} (supported: {known})"),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

impl TimestepSpacing {
    pub fn name(self) -> &'static str {
        match self {
            TimestepSpacing::Linspace => "linspace",
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Trailing => "trailing",
        }
    }
}

/// A config resolved for one scheduler class: every value concrete and supported.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub kind: SchedulerKind,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub use_karras_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigmas_zero: bool,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub solver_heun: bool,
    pub lambda_min_clipped: f64,
    pub original_inference_steps: usize,
    pub timestep_scaling: f64,
    pub rescale_betas_zero_snr: bool,
}

/// The most training timesteps hoa accepts (Stable Diffusion has 1000): the tables, and the
/// Karras `_sigma_to_t` scan at every step, grow with it.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

fn refuse(field: &str, why: String) -> Result<()> {
    Err(Error::config(CONFIG_FILE, field, why))
}

impl Resolved {
    /// Refuses values no schedule can be built from, naming the field.
    pub(crate) fn validate(&self) -> Result<()> {
        let t = self.num_train_timesteps;
        if t < 2 {
            return refuse(
                "num_train_timesteps",
                format!("is {t}: a schedule needs at least 2 training timesteps (usually 1000)"),
            );
        }
        if t > MAX_TRAIN_TIMESTEPS {
            return refuse(
                "num_train_timesteps",
                format!("is {t}: hoa supports at most {MAX_TRAIN_TIMESTEPS} (usually 1000)"),
            );
        }
        if self.steps_offset >= t {
            return refuse(
                "steps_offset",
                format!(
                    "is {}: it must be below num_train_timesteps ({t}), usually 0 or 1",
                    self.steps_offset
                ),
            );
        }
        self.validate_betas()?;
        if self.clip_sample && !(self.clip_sample_range.is_finite() && self.clip_sample_range > 0.0)
        {
            return refuse(
                "clip_sample_range",
                format!(
                    "is {}: it must be a positive number",
                    self.clip_sample_range
                ),
            );
        }
        for (field, v) in [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return refuse(field, format!("is {v}: it must be a positive number"));
            }
        }
        if let (Some(lo), Some(hi)) = (self.sigma_min, self.sigma_max) {
            if lo >= hi {
                return refuse("sigma_max", format!("is {hi}, not above sigma_min {lo}"));
            }
        }
        if self.kind == SchedulerKind::Lcm {
            self.validate_lcm()?;
        }
        Ok(())
    }

    /// `trained_betas`, or the `beta_start` / `beta_end` the linear schedules are built from:
    /// each beta in [0, 1), and growing with the timestep (or the image comes out black or gray).
    fn validate_betas(&self) -> Result<()> {
        let t = self.num_train_timesteps;
        if let Some(tb) = &self.trained_betas {
            if tb.len() != t {
                return refuse(
                    "trained_betas",
                    format!("has {} values but num_train_timesteps is {t}", tb.len()),
                );
            }
            if let Some((i, b)) = tb
                .iter()
                .enumerate()
                .find(|(_, b)| !(0.0..1.0).contains(*b))
            {
                return refuse(
                    "trained_betas",
                    format!("[{i}] is {b}: each beta must be in [0, 1)"),
                );
            }
            return Ok(());
        }
        if self.beta_schedule == BetaSchedule::SquaredcosCapV2 {
            return Ok(()); // beta_start / beta_end unused
        }
        let (start, end) = (self.beta_start, self.beta_end);
        for (field, v) in [("beta_start", start), ("beta_end", end)] {
            if !(0.0..1.0).contains(&v) {
                return refuse(
                    field,
                    format!(
                        "is {v}: a beta must be in [0, 1) (Stable Diffusion: beta_start 0.00085, \
                         beta_end 0.012)"
                    ),
                );
            }
        }
        if end < start {
            return refuse(
                "beta_end",
                format!(
                    "is {end}, below beta_start {start}: the noise must grow with the timestep \
                     (were the two swapped?)"
                ),
            );
        }
        Ok(())
    }

    fn validate_lcm(&self) -> Result<()> {
        let (orig, t) = (self.original_inference_steps, self.num_train_timesteps);
        if orig == 0 || orig > t {
            return refuse(
                "original_inference_steps",
                format!("is {orig}: it must be in 1..={t} (num_train_timesteps), usually 50"),
            );
        }
        if !self.timestep_scaling.is_finite() {
            return refuse(
                "timestep_scaling",
                format!(
                    "is {}: it must be a finite number, usually 10",
                    self.timestep_scaling
                ),
            );
        }
        Ok(())
    }

    /// Why a schedule can have a non-finite coefficient, where the config explains it: the
    /// field and the reason.
    pub(crate) fn non_finite_cause(&self) -> Option<(&'static str, String)> {
        if self.rescale_betas_zero_snr && self.prediction_type == PredictionType::Epsilon {
            return Some((
                "prediction_type",
                "is epsilon, but `rescale_betas_zero_snr` makes the last alphas_cumprod 0, \
                 where x0 cannot be recovered from an epsilon prediction (diffusers returns \
                 NaN); zero terminal SNR needs v_prediction"
                    .to_string(),
            ));
        }
        if self.solver_heun && self.use_karras_sigmas && !self.final_sigmas_zero {
            return Some((
                "final_sigmas_type",
                "is sigma_min, which the Karras schedule already ends on: the last step has \
                 zero length, where the heun update divides 0 by 0 (diffusers returns NaN); \
                 use zero, or solver_type midpoint"
                    .to_string(),
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_strings_and_replaces_infinities() {
        let s = sanitize_json(r#"{"a": -Infinity, "b": "NaN -Infinity", "c": [Infinity, NaN]}"#);
        assert_eq!(s, r#"{"a": null, "b": "NaN -Infinity", "c": [null, null]}"#);
    }
}
