//! `--f16` / `--f32`, shared by the commands that load a model: with neither, large models are
//! stored in f16 where the adapter computes in it (`hoa::options::default_dtype`), so a real
//! Stable Diffusion checkpoint fits in half the memory and within a 128 MiB storage binding,
//! while small models keep f32's exactness.

use anyhow::{bail, Result};
use clap::Args;
use hoa::{Context, DType};
use std::path::Path;

#[derive(Args, Debug, Clone, Default)]
pub struct DTypeArgs {
    /// Store weights and activations in f16 (needs the adapter's shader-f16). Default: f16 for
    /// models with 256 MB of weights or more when the adapter has it, else f32.
    #[arg(long, conflicts_with = "f32")]
    pub f16: bool,
    /// Store weights and activations in f32, even for a large model.
    #[arg(long)]
    pub f32: bool,
}

impl DTypeArgs {
    /// The storage dtype for models at `paths` (the largest decides).
    pub fn pick<'a>(
        &self,
        ctx: &Context,
        paths: impl IntoIterator<Item = &'a Path>,
    ) -> Result<DType> {
        if self.f16 && !ctx.has_f16() {
            bail!("--f16: this adapter has no shader-f16; leave --f16 out to compute in f32");
        }
        Ok(match (self.f16, self.f32) {
            (true, _) => DType::F16,
            (_, true) => DType::F32,
            _ => {
                let bytes = paths.into_iter().map(hoa::model_files::weight_bytes).max();
                hoa::options::default_dtype(ctx.has_f16(), bytes.unwrap_or(0))
            }
        })
    }
}
