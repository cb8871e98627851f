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
    /// A seq2seq prompt rewriter, the folder (relative to the model folder) of a transformers
    /// `T5ForConditionalGeneration` with its `tokenizer.json` ([`crate::rewriter`]): when set,
    /// it rewrites the prompt instead of `prompt_upsampling` (which stays the rule set for
    /// loaders that run no model).
    pub rewriter: Option<String>,
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
        if let Some(dir) = &d.rewriter {
            check_rewriter(files, dir)?;
        }
        Ok(d)
    }
}

/// `hoa.json` `rewriter`: a folder inside the model folder holding at least config.json and
/// tokenizer.json (the weights are checked at load), so a wrong name fails before the load.
fn check_rewriter(files: &dyn ModelFiles, dir: &str) -> Result<()> {
    let inside = !dir.is_empty()
        && !dir.starts_with('/')
        && !dir.contains('\\')
        && dir
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !inside {
        return Err(Error::config(
            "hoa.json",
            "rewriter",
            format!("is `{dir}`; give a folder inside the model folder, e.g. \"rewriter\""),
        ));
    }
    for f in ["config.json", "tokenizer.json"] {
        if !files.exists(&format!("{dir}/{f}")) {
            return Err(Error::config(
                "hoa.json",
                "rewriter",
                format!(
                    "names {dir}/, but {}/{dir}/{f} is missing (a rewriter folder is a \
                     transformers T5ForConditionalGeneration saved with save_pretrained, \
                     plus its tokenizer.json)",
                    files.describe()
                ),
            ));
        }
    }
    Ok(())
}
