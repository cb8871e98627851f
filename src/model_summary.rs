//! What `hoa info --model` prints about a model without loading it on a device: its family,
//! what its U-Net predicts, and each component's parameter count and stored dtypes.

use crate::error::Result;
use crate::model_files::{component_weights, ModelFiles};
use crate::single_file::Detected;
use crate::weights::Weights;
use std::collections::BTreeMap;

/// One component's tensors.
#[derive(Clone, Debug, Default)]
pub struct ComponentSummary {
    pub name: String,
    pub tensors: usize,
    pub parameters: u64,
    /// Parameters per stored dtype (`F16`, `F32`, ...).
    pub dtypes: BTreeMap<String, u64>,
}

#[derive(Clone, Debug)]
pub struct ModelSummary {
    /// "SD 1.x", "SD 2.x inpainting", ...
    pub family: String,
    /// The scheduler config's `prediction_type`, and how it was decided.
    pub prediction: String,
    pub prediction_from: String,
    pub components: Vec<ComponentSummary>,
}

/// Counts `w`'s tensors; `filter` picks the names that count.
pub fn count(name: &str, w: &Weights, filter: impl Fn(&str) -> bool) -> ComponentSummary {
    let mut c = ComponentSummary {
        name: name.to_string(),
        ..Default::default()
    };
    for n in w.names().filter(|n| filter(n)) {
        let p = w
            .shape(n)
            .map_or(0, |s| s.iter().map(|&d| d as u64).product());
        c.tensors += 1;
        c.parameters += p;
        let dt = w.dtype(n).map(|d| format!("{d:?}")).unwrap_or_default();
        *c.dtypes.entry(dt).or_default() += p;
    }
    c
}

/// The family a diffusers U-Net config implies (its cross-attention width, `text_time`
/// conditioning and input channels; `model_index.json`'s `requires_aesthetics_score` marks
/// the SDXL refiner). Read as plain JSON: describing a model hoa cannot run is no error.
fn family_of(unet: &serde_json::Value, index: &serde_json::Value) -> String {
    let width = match &unet["cross_attention_dim"] {
        serde_json::Value::Array(v) => v.first().and_then(|w| w.as_u64()),
        w => w.as_u64(),
    }
    .unwrap_or(0);
    let xl = unet["addition_embed_type"] == "text_time";
    let refiner = index["requires_aesthetics_score"] == true;
    let f = match (xl, width) {
        (true, 1280) => "SDXL refiner".to_string(),
        (true, _) if refiner => "SDXL refiner".to_string(),
        (true, _) => "SDXL".to_string(),
        (false, 768) => "SD 1.x".to_string(),
        (false, 1024) => "SD 2.x".to_string(),
        (false, w) => format!("SD-shaped (cross-attention {w} wide)"),
    };
    let inpaint = if unet["in_channels"] == 9 {
        " inpainting"
    } else {
        ""
    };
    format!("{f}{inpaint}")
}

/// Summarizes a model folder, or a single file when `detected` is its detection.
pub fn summarize(files: &dyn ModelFiles, detected: Option<&Detected>) -> Result<ModelSummary> {
    let unet: serde_json::Value = serde_json::from_slice(&files.require("unet/config.json")?)
        .map_err(|e| crate::Error::Checkpoint(format!("unet/config.json: {e}")))?;
    let sched: serde_json::Value =
        serde_json::from_slice(&files.require("scheduler/scheduler_config.json")?)
            .unwrap_or_default();
    let prediction = sched
        .get("prediction_type")
        .and_then(|v| v.as_str())
        .unwrap_or("epsilon")
        .to_string();
    let (family, prediction_from) = match detected {
        Some(d) => (
            d.family_name(),
            if d.prediction.as_str() == prediction {
                d.prediction_from.to_string()
            } else {
                "the --config folder's scheduler config".to_string()
            },
        ),
        None => (
            family_of(
                &unet,
                &serde_json::from_slice(&files.read("model_index.json")?.unwrap_or_default())
                    .unwrap_or_default(),
            ),
            "scheduler/scheduler_config.json".to_string(),
        ),
    };
    let components = ["unet", "vae", "text_encoder", "text_encoder_2"]
        .iter()
        .filter(|c| files.exists(&format!("{c}/config.json")))
        .map(|c| Ok(count(c, &component_weights(files, c)?, |_| true)))
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelSummary {
        family,
        prediction,
        prediction_from,
        components,
    })
}
