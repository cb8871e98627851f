//! `hoa.json`: the generation defaults a model folder may carry beside its diffusers files
//! (hoa's shipped model writes one; other folders need none).

use crate::error::{Error, Result};
use crate::model_files::ModelFiles;
use crate::options::GuidanceHigh;
use crate::prompt_upsampling::PromptUpsampling;
use serde::Deserialize;

/// Unknown keys are refused, so a typo (`guidence`) is an error naming it rather than a
/// default silently not applied.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDefaults {
    pub guidance: Option<f32>,
    pub guidance_high: Option<GuidanceHigh>,
    pub steps: Option<usize>,
    pub prompt_upsampling: Option<PromptUpsampling>,
    /// `true`: the T5 text encoder gets the tokenizer's attention mask (padding masked out of
    /// its self-attention), as DeepFloyd IF's and PixArt's pipelines pass it; diffusers'
    /// Stable Diffusion pipelines (and hoa by default) do not.
    pub text_encoder_attention_mask: Option<bool>,
}

impl ModelDefaults {
    /// The folder's `hoa.json`, or no defaults when it has none; a file that does not parse is
    /// an error naming it.
    pub fn load(files: &dyn ModelFiles) -> Result<ModelDefaults> {
        let Some(bytes) = files.read("hoa.json")? else {
            return Ok(ModelDefaults::default());
        };
        let d: ModelDefaults = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Checkpoint(format!(
                "{}/hoa.json: {e} (it holds hoa's generation defaults; fix or delete it)",
                files.describe()
            ))
        })?;
        if let Some(u) = &d.prompt_upsampling {
            u.validate()?;
        }
        Ok(d)
    }
}
