//! What every sampler shares (the part of diffusers' `SchedulerMixin` the pipelines call): the
//! [`Scheduler`] trait. Each sampler reduces step `i` to the coefficients of one linear
//! combination ([`StepCoefs`]); `step` and `add_noise` are written once, here, and apply them
//! with the fused kernel of [`crate::kernels::scheduler`].

use super::{err, SchedulerKind};
use crate::error::Result;
use crate::gpu::{Context, Tensor};
use crate::kernels::scheduler::{self as kernel, StepCoefs};

/// What the pipeline calls; one instance per generation (multistep solvers keep state).
pub trait Scheduler {
    /// Timesteps one per inference step, as the U-Net receives them.
    fn timesteps(&self) -> &[f32];
    /// Std of the initial noise: latents = noise * init_noise_sigma() (1 but for the sigma
    /// schedulers).
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    /// Factor diffusers' `scale_model_input` applies to the U-Net input at step `i` (1 but for
    /// the sigma schedulers).
    fn input_scale(&self, _i: usize) -> f32 {
        1.0
    }
    /// Whether `step(i, ..)` draws fresh standard-normal noise (shape of the sample).
    fn needs_noise(&self, _i: usize) -> bool {
        false
    }
    /// Step `i` as the coefficients of `x0 = clamp(a0 * x + a1 * m)` and
    /// `prev = b_x * x + b_x0 * x0 + b_m * m + b_noise * noise + b_prev * x0_prev`, with `x` the
    /// sample, `m` the model output and `x0_prev` the previous step's x0 (multistep solvers).
    /// `done`: how many steps of this run came before (diffusers' `lower_order_nums`, which only
    /// multistep solvers read). `i` must be below `timesteps().len()`.
    fn step_coefs(&self, i: usize, done: usize) -> StepCoefs;
    /// diffusers' `add_noise(original, noise, timesteps[i])` as `(a, b)`:
    /// `a * original + b * noise`. `i` must be below `timesteps().len()`.
    fn add_noise_coefs(&self, i: usize) -> (f64, f64);
    /// A multistep solver's memory of the steps it ran; `None` for one-step samplers.
    fn history(&mut self) -> Option<&mut History> {
        None
    }
    /// Which sampler this is.
    fn kind(&self) -> SchedulerKind;
    /// Something the user should know about this schedule that is not an error (the caller
    /// shows it): e.g. a step count that leaves few steps where the image forms.
    fn note(&self) -> Option<String> {
        None
    }
    /// diffusers' `eta`, the share of fresh noise in each step: only DDIM has it (other
    /// schedulers ignore it, as diffusers' pipelines do; the result says whether it applied).
    fn set_eta(&mut self, _eta: f64) -> Result<bool> {
        Ok(false)
    }

    /// diffusers' `step(model_output, timesteps[i], sample).prev_sample`; `model_output` is
    /// already guidance-combined; `noise` is Some iff needs_noise(i). Multistep solvers' steps
    /// must be called in order.
    fn step(
        &mut self,
        ctx: &Context,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let kind = self.kind();
        check_index(kind, "step", i, self.timesteps().len())?;
        check_noise(kind, i, self.needs_noise(i), noise)?;
        let done = match self.history() {
            Some(h) => h.before(kind, i)?,
            None => 0,
        };
        let c = self.step_coefs(i, done);
        check_finite(kind, i, &c)?;
        let keeps_x0 = self.history().is_some();
        // The previous x0 is read only by a second-order update (b_prev != 0).
        let prev = match self.history() {
            Some(h) if c.b_prev != 0.0 => h.prev_x0.clone(),
            _ => None,
        };
        let (out, x0) = kernel::step(
            ctx,
            sample,
            model_output,
            noise,
            prev.as_ref(),
            &c,
            keeps_x0,
        )?;
        if let Some(h) = self.history() {
            h.record(i, x0);
        }
        Ok(out)
    }

    /// diffusers' `add_noise(original, noise, timesteps[i])` (img2img/inpainting). diffusers
    /// defines no "fully denoised" index, so `i` must be below `timesteps().len()`.
    fn add_noise(
        &self,
        ctx: &Context,
        original: &Tensor,
        noise: &Tensor,
        i: usize,
    ) -> Result<Tensor> {
        check_index(self.kind(), "add_noise", i, self.timesteps().len())?;
        let (a, b) = self.add_noise_coefs(i);
        let c = StepCoefs {
            b_x: a,
            b_m: b,
            ..Default::default()
        };
        Ok(kernel::step(ctx, original, noise, None, None, &c, false)?.0)
    }
}

/// What a multistep solver remembers: the previous step's x0 (diffusers' `model_outputs[-2]`
/// once shifted, kept on the device), how many steps ran and which ran last.
#[derive(Default)]
pub struct History {
    prev_x0: Option<Tensor>,
    done: usize,
    last: Option<usize>,
}

impl History {
    /// How many steps ran before step `i`; refuses a step out of order.
    fn before(&self, kind: SchedulerKind, i: usize) -> Result<usize> {
        match self.last {
            Some(l) if i != l + 1 => Err(err(format!(
                "{}: steps must run in order; step {i} after step {l}",
                kind.class_name()
            ))),
            _ => Ok(self.done),
        }
    }

    fn record(&mut self, i: usize, x0: Option<Tensor>) {
        self.prev_x0 = x0;
        self.done += 1;
        self.last = Some(i);
    }
}

fn check_index(kind: SchedulerKind, op: &str, i: usize, n: usize) -> Result<()> {
    if i >= n {
        return Err(err(format!(
            "{}.{op}: step index {i} is out of range for {n} inference steps",
            kind.class_name()
        )));
    }
    Ok(())
}

fn check_noise(kind: SchedulerKind, i: usize, needs: bool, noise: Option<&Tensor>) -> Result<()> {
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

/// The coefficients by name, for messages.
pub(crate) fn named(c: &StepCoefs) -> [(&'static str, f64); 9] {
    let (lo, hi) = c.clip.unwrap_or((0.0, 0.0));
    [
        ("a0", c.a0),
        ("a1", c.a1),
        ("clip_lo", lo),
        ("clip_hi", hi),
        ("b_x", c.b_x),
        ("b_x0", c.b_x0),
        ("b_m", c.b_m),
        ("b_noise", c.b_noise),
        ("b_prev", c.b_prev),
    ]
}

/// A non-finite coefficient would turn the whole latent into NaN or infinity (a black or flat
/// image written with exit 0): refused instead.
fn check_finite(kind: SchedulerKind, i: usize, c: &StepCoefs) -> Result<()> {
    match named(c).into_iter().find(|(_, v)| !v.is_finite()) {
        Some((name, v)) => Err(err(format!(
            "{}: step {i} has a non-finite coefficient ({name} = {v}); the schedule divides by \
             zero there",
            kind.class_name()
        ))),
        None => Ok(()),
    }
}
