//! Samplers mirroring diffusers 0.42.1's `diffusers.schedulers` (`scheduling_ddim`,
//! `scheduling_euler_discrete`, `scheduling_euler_ancestral_discrete`,
//! `scheduling_dpmsolver_multistep`, `scheduling_lcm`): the config (`scheduler_config.json`),
//! the host-side schedule math (betas, alphas_cumprod, sigmas, timesteps) in f64 where numpy
//! uses float64 and in f32 where torch uses float32, and one fused device dispatch per step
//! ([`crate::kernels::scheduler`]).
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

pub mod ddim;
pub mod dpmsolver_multistep;
pub mod euler_ancestral_discrete;
pub mod euler_discrete;
pub mod lcm;

use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::scheduler::{self as kernel, StepCoefs};
use serde::Deserialize;
use std::str::FromStr;

pub use crate::kernels::scheduler::{blend, classifier_free_guidance};

fn err(msg: impl Into<String>) -> Error {
    Error::Scheduler(msg.into())
}

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
        let class = kind.class_name();
        let bad = |field: &str, value: &dyn std::fmt::Debug, known: &str| {
            err(format!(
                "{class}: `{field}` = {value:?} is not supported by hoa (supported: {known})"
            ))
        };
        let lcm = kind == SchedulerKind::Lcm;
        let beta_schedule = match self.beta_schedule.as_deref() {
            None if lcm => BetaSchedule::ScaledLinear,
            None | Some("linear") => BetaSchedule::Linear,
            Some("scaled_linear") => BetaSchedule::ScaledLinear,
            Some("squaredcos_cap_v2") => BetaSchedule::SquaredcosCapV2,
            Some(o) => {
                return Err(bad(
                    "beta_schedule",
                    &o,
                    "linear, scaled_linear, squaredcos_cap_v2",
                ))
            }
        };
        let prediction_type = match self.prediction_type.as_deref() {
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
                return Err(bad("prediction_type", &o, known));
            }
        };
        let spacing_default = match kind {
            SchedulerKind::Ddim | SchedulerKind::Lcm => "leading",
            _ => "linspace",
        };
        let timestep_spacing = match self.timestep_spacing.as_deref().unwrap_or(spacing_default) {
            "linspace" => TimestepSpacing::Linspace,
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            o => return Err(bad("timestep_spacing", &o, "linspace, leading, trailing")),
        };
        let use_karras_sigmas = match kind {
            SchedulerKind::DpmPp2MKarras => true,
            SchedulerKind::DpmPp2M => false,
            SchedulerKind::Euler => self.use_karras_sigmas.unwrap_or(false),
            _ => false,
        };
        let final_sigmas_zero = match self.final_sigmas_type.as_deref() {
            None | Some("zero") => true,
            Some("sigma_min") => false,
            Some(o) => return Err(bad("final_sigmas_type", &o, "zero, sigma_min")),
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
                return Err(bad(field, &true, "false"));
            }
        }
        if kind == SchedulerKind::Euler {
            if let Some(t) = self
                .interpolation_type
                .as_deref()
                .filter(|t| *t != "linear")
            {
                return Err(bad("interpolation_type", &t, "linear"));
            }
            if let Some(t) = self.timestep_type.as_deref().filter(|t| *t != "discrete") {
                return Err(bad("timestep_type", &t, "discrete"));
            }
        }
        let mut solver_heun = false;
        if kind.is_dpm() {
            if let Some(o) = self.solver_order.filter(|&o| o != 2) {
                return Err(bad(
                    "solver_order",
                    &o,
                    "2 (DPM-Solver++ 2M; orders 1 and 3 are not implemented)",
                ));
            }
            if let Some(a) = self
                .algorithm_type
                .as_deref()
                .filter(|a| *a != "dpmsolver++" && *a != "deis")
            {
                return Err(bad("algorithm_type", &a, "dpmsolver++"));
            }
            solver_heun = match self.solver_type.as_deref() {
                None | Some("midpoint") | Some("logrho") | Some("bh1") | Some("bh2") => false,
                Some("heun") => true,
                Some(o) => return Err(bad("solver_type", &o, "midpoint, heun")),
            };
            if let Some(v) = self.variance_type.as_deref() {
                return Err(bad("variance_type", &v, "null"));
            }
        }
        let (beta_start, beta_end) = if lcm {
            (0.00085, 0.012)
        } else {
            (0.0001, 0.02)
        };
        Ok(Resolved {
            kind,
            num_train_timesteps: self.num_train_timesteps.unwrap_or(1000),
            beta_start: self.beta_start.unwrap_or(beta_start),
            beta_end: self.beta_end.unwrap_or(beta_end),
            beta_schedule,
            trained_betas: self.trained_betas.clone(),
            prediction_type,
            timestep_spacing,
            steps_offset: self.steps_offset.unwrap_or(0),
            clip_sample: self.clip_sample.unwrap_or(kind == SchedulerKind::Ddim),
            clip_sample_range: self.clip_sample_range.unwrap_or(1.0),
            set_alpha_to_one: self.set_alpha_to_one.unwrap_or(true),
            use_karras_sigmas,
            sigma_min: self.sigma_min.filter(|_| kind == SchedulerKind::Euler),
            sigma_max: self.sigma_max.filter(|_| kind == SchedulerKind::Euler),
            final_sigmas_zero,
            lower_order_final: self.lower_order_final.unwrap_or(true),
            euler_at_final: self.euler_at_final.unwrap_or(false),
            solver_heun,
            lambda_min_clipped: self.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            original_inference_steps: self.original_inference_steps.unwrap_or(50),
            timestep_scaling: self.timestep_scaling.unwrap_or(10.0),
            rescale_betas_zero_snr: self.rescale_betas_zero_snr.unwrap_or(false),
        })
    }
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

/// The samplers hoa implements, by their CLI names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `DDIMScheduler` (eta = 0).
    Ddim,
    /// `EulerDiscreteScheduler` (Karras sigmas when the config asks).
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `DPMSolverMultistepScheduler`, dpmsolver++ order 2, `use_karras_sigmas = false`.
    DpmPp2M,
    /// The same with `use_karras_sigmas = true`.
    DpmPp2MKarras,
    /// `LCMScheduler`.
    Lcm,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmPp2M,
        SchedulerKind::DpmPp2MKarras,
        SchedulerKind::Lcm,
    ];

    /// The CLI name (`--scheduler`).
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler_a",
            SchedulerKind::DpmPp2M => "dpm++2m",
            SchedulerKind::DpmPp2MKarras => "dpm++2m-karras",
            SchedulerKind::Lcm => "lcm",
        }
    }

    /// The diffusers class it mirrors.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmPp2M | SchedulerKind::DpmPp2MKarras => "DPMSolverMultistepScheduler",
            SchedulerKind::Lcm => "LCMScheduler",
        }
    }

    fn is_dpm(self) -> bool {
        matches!(self, SchedulerKind::DpmPp2M | SchedulerKind::DpmPp2MKarras)
    }

    fn valid_names() -> String {
        SchedulerKind::ALL.map(|k| k.name()).join(", ")
    }

    /// The kind for a model folder's `_class_name`. `PNDMScheduler` (SD 1.x's default, PLMS)
    /// is refused rather than silently swapped: hoa does not implement it, and which sampler
    /// replaces it is the caller's visible choice (`--scheduler`).
    pub fn from_class_name(class_name: &str) -> Result<SchedulerKind> {
        Ok(match class_name {
            "DDIMScheduler" => SchedulerKind::Ddim,
            "EulerDiscreteScheduler" => SchedulerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
            "DPMSolverMultistepScheduler" => SchedulerKind::DpmPp2M,
            "LCMScheduler" => SchedulerKind::Lcm,
            "PNDMScheduler" => {
                return Err(err(format!(
                    "the model's scheduler is PNDMScheduler (PLMS), which hoa does not implement; \
                     pick one with --scheduler ({})",
                    SchedulerKind::valid_names()
                )))
            }
            o => {
                return Err(err(format!(
                    "the model's scheduler class {o:?} is not implemented; pick one with \
                     --scheduler ({})",
                    SchedulerKind::valid_names()
                )))
            }
        })
    }

    /// The kind a model folder's own `scheduler_config.json` describes (`_class_name`, and
    /// `use_karras_sigmas` for DPM-Solver).
    pub fn from_config(config: &SchedulerConfig) -> Result<SchedulerKind> {
        let name = config
            .class_name
            .as_deref()
            .ok_or_else(|| err("scheduler_config.json has no `_class_name`"))?;
        let kind = SchedulerKind::from_class_name(name)?;
        Ok(
            if kind == SchedulerKind::DpmPp2M && config.use_karras_sigmas == Some(true) {
                SchedulerKind::DpmPp2MKarras
            } else {
                kind
            },
        )
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<SchedulerKind> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                err(format!(
                    "unknown scheduler {s:?}; valid: {}",
                    SchedulerKind::valid_names()
                ))
            })
    }
}

/// What the pipeline calls; one instance per generation (multistep solvers keep state).
pub trait Scheduler {
    /// Timesteps one per inference step, as the U-Net receives them.
    fn timesteps(&self) -> &[f32];
    /// Std of the initial noise: latents = noise * init_noise_sigma().
    fn init_noise_sigma(&self) -> f32;
    /// Factor diffusers' `scale_model_input` applies to the U-Net input at step `i` (1 for DDIM).
    fn input_scale(&self, i: usize) -> f32;
    /// Whether `step(i, ..)` draws fresh standard-normal noise (shape of the sample).
    fn needs_noise(&self, i: usize) -> bool;
    /// diffusers' `step(model_output, timesteps[i], sample).prev_sample`; `model_output` is
    /// already guidance-combined; `noise` is Some iff needs_noise(i). Steps must be called in order.
    fn step(
        &mut self,
        ctx: &Context,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;
    /// diffusers' `add_noise(original, noise, timesteps[i])` (img2img/inpainting). diffusers
    /// defines no "fully denoised" index, so `i` must be below `timesteps().len()`.
    fn add_noise(
        &self,
        ctx: &Context,
        original: &Tensor,
        noise: &Tensor,
        i: usize,
    ) -> Result<Tensor>;
    /// Which sampler this is.
    fn kind(&self) -> SchedulerKind;
    /// diffusers' `eta`, the share of fresh noise in each step: only DDIM has it (other
    /// schedulers ignore it, as diffusers' pipelines do; the result says whether it applied).
    fn set_eta(&mut self, _eta: f64) -> Result<bool> {
        Ok(false)
    }
}

/// Builds `kind` from a (model folder's or default) config, `set_timesteps(num_inference_steps)`
/// done.
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler>> {
    let r = config.resolve(kind)?;
    if num_inference_steps == 0 {
        return Err(err("num_inference_steps must be at least 1, got 0"));
    }
    if num_inference_steps > r.num_train_timesteps {
        return Err(err(format!(
            "num_inference_steps {num_inference_steps} cannot be larger than the \
             num_train_timesteps {} the model was trained with",
            r.num_train_timesteps
        )));
    }
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(ddim::DDIMScheduler::new(r, num_inference_steps)?),
        SchedulerKind::Euler => Box::new(euler_discrete::EulerDiscreteScheduler::new(
            r,
            num_inference_steps,
        )?),
        SchedulerKind::EulerAncestral => Box::new(
            euler_ancestral_discrete::EulerAncestralDiscreteScheduler::new(r, num_inference_steps)?,
        ),
        SchedulerKind::DpmPp2M | SchedulerKind::DpmPp2MKarras => Box::new(
            dpmsolver_multistep::DPMSolverMultistepScheduler::new(r, num_inference_steps)?,
        ),
        SchedulerKind::Lcm => Box::new(lcm::LCMScheduler::new(r, num_inference_steps)?),
    })
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

// ---- shared host-side math --------------------------------------------------------------

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

pub(crate) fn check_index(op: &str, i: usize, n: usize) -> Result<()> {
    if i >= n {
        return Err(err(format!(
            "{op}: step index {i} is out of range for {n} inference steps"
        )));
    }
    Ok(())
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

pub(crate) fn check_noise(
    kind: SchedulerKind,
    i: usize,
    needs: bool,
    noise: Option<&Tensor>,
) -> Result<()> {
    match (needs, noise.is_some()) {
        (true, false) => Err(err(format!(
            "{}: step {i} draws noise; pass a standard-normal tensor shaped like the sample",
            kind.class_name()
        ))),
        (false, true) => Err(err(format!(
            "{}: step {i} draws no noise; pass None",
            kind.class_name()
        ))),
        _ => Ok(()),
    }
}

/// `a * original + b * noise` on the device (every scheduler's `add_noise`).
pub(crate) fn mix(
    ctx: &Context,
    original: &Tensor,
    noise: &Tensor,
    a: f64,
    b: f64,
) -> Result<Tensor> {
    let c = StepCoefs {
        b_x: a,
        b_m: b,
        ..Default::default()
    };
    Ok(kernel::step(ctx, original, noise, None, None, &c, false)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_strings_and_replaces_infinities() {
        let s = sanitize_json(r#"{"a": -Infinity, "b": "NaN -Infinity", "c": [Infinity, NaN]}"#);
        assert_eq!(s, r#"{"a": null, "b": "NaN -Infinity", "c": [null, null]}"#);
    }

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
