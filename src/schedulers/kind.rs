//! The samplers hoa implements ([`SchedulerKind`]): their CLI names and the diffusers classes
//! they mirror, and the kind a model folder's `scheduler_config.json` describes.

use super::{err, SchedulerConfig};
use crate::error::{Error, Result};
use std::str::FromStr;

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

    pub(crate) fn is_dpm(self) -> bool {
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
