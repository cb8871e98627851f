//! Single-file Stable Diffusion 1.x / 2.x checkpoints (the A1111 / ComfyUI / civitai
//! `.safetensors` in the original LDM key layout) read as a diffusers model folder: the family
//! is detected from keys and shapes, the configs it implies are synthesized (or taken from a
//! `--config` diffusers folder, diffusers' `config=`), and each component's weights are a
//! renaming view over the one file's bytes. Mirrors diffusers' `single_file_utils.py`.

pub mod infer;
pub mod keys;

use crate::error::{Error, Result};
use crate::model_files::ModelFiles;
use crate::weights::{Transform, Weights};
use keys::UNetLayout;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The U-Net's key prefix.
pub const UNET: &str = "model.diffusion_model.";
/// The VAE's.
pub const VAE: &str = "first_stage_model.";
/// SD 1.x's CLIP ViT-L/14 text model (transformers' names under it).
pub const TEXT_CLIP: &str = "cond_stage_model.transformer.";
/// SD 2.x's OpenCLIP ViT-H/14 text tower (open_clip's names).
pub const OPEN_CLIP: &str = "cond_stage_model.model.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Sd1,
    Sd2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextKind {
    Clip,
    OpenClip,
}

/// What the U-Net predicts (the scheduler's `prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
}

impl Prediction {
    pub fn as_str(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v_prediction",
        }
    }
}

/// What a single file was found to be.
#[derive(Clone, Debug)]
pub struct Detected {
    pub family: Family,
    /// A 9-channel U-Net (latents + mask + masked-image latents).
    pub inpainting: bool,
    pub text: Option<TextKind>,
    pub prediction: Prediction,
    /// How `prediction` was decided, for `hoa info`.
    pub prediction_from: &'static str,
}

impl Detected {
    /// "SD 2.x inpainting" and the like.
    pub fn family_name(&self) -> String {
        let f = match self.family {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
        };
        format!("{f}{}", if self.inpainting { " inpainting" } else { "" })
    }
}

/// Names of a component's config files that `--config DIR` supplies.
const CONFIG_PARTS: [&str; 6] = [
    "model_index.json",
    "hoa.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
];

/// A single-file checkpoint seen as a diffusers folder.
pub struct SingleFile {
    weights: Weights,
    detected: Detected,
    layout: UNetLayout,
    /// The synthesized configs, by their diffusers path.
    configs: HashMap<String, Vec<u8>>,
    /// `--config DIR`: its configs and tokenizer apply instead.
    config_dir: Option<Box<dyn ModelFiles>>,
}

/// A file that is no LDM checkpoint, said as what it looks like.
fn not_a_checkpoint(w: &Weights) -> Error {
    let any = |f: &dyn Fn(&str) -> bool| w.names().any(f);
    let file = w.describe();
    Error::Checkpoint(
        if any(&|k| k.starts_with("lora_") || k.contains(".lora_")) {
            format!("{file} is a LoRA (lora_* keys), not a model: apply it with --lora on top of a --model")
        } else if any(&|k| k.starts_with("down_blocks.") || k.starts_with("text_model.")) {
            format!(
            "{file} is one component of a diffusers folder, not a single-file checkpoint: pass \
             the folder (the one with model_index.json) as --model"
        )
        } else {
            format!(
                "{file} is no Stable Diffusion checkpoint: it has no `model.diffusion_model.*` \
             (U-Net) tensors (hoa reads single files in the original LDM layout, SD 1.x and 2.x)"
            )
        },
    )
}

/// The file's `modelspec` metadata (Stability's model spec), when it states the prediction.
fn prediction_from_metadata(w: &Weights) -> Option<Prediction> {
    if let Some(p) = w.metadata("modelspec.prediction_type") {
        return match p {
            "v" | "v_prediction" => Some(Prediction::V),
            "epsilon" => Some(Prediction::Epsilon),
            _ => None,
        };
    }
    let arch = w.metadata("modelspec.architecture")?;
    Some(if arch.ends_with("-v") {
        Prediction::V
    } else {
        Prediction::Epsilon
    })
}

/// Family, inpainting, text tower and prediction type from the keys and shapes.
pub fn detect(w: &Weights) -> Result<Detected> {
    if !w.names().any(|k| k.starts_with(UNET)) {
        return Err(not_a_checkpoint(w));
    }
    if w.names().any(|k| k.starts_with("conditioner.embedders.")) {
        return Err(Error::Checkpoint(format!(
            "{} is an SDXL checkpoint (conditioner.embedders.*); hoa reads SD 1.x and 2.x \
             single files so far",
            w.describe()
        )));
    }
    let text = if w.names().any(|k| k.starts_with(OPEN_CLIP)) {
        Some(TextKind::OpenClip)
    } else if w.names().any(|k| k.starts_with(TEXT_CLIP)) {
        Some(TextKind::Clip)
    } else {
        None
    };
    let context = w
        .names()
        .filter(|k| k.starts_with(UNET) && k.ends_with("attn2.to_k.weight"))
        .find_map(|k| w.shape(k)?.get(1).copied());
    let family = match (text, context) {
        (Some(TextKind::OpenClip), _) | (None, Some(1024)) => Family::Sd2,
        _ => Family::Sd1,
    };
    let in_channels = w
        .shape(&format!("{UNET}input_blocks.0.0.weight"))
        .and_then(|s| s.get(1).copied());
    let inpainting = in_channels == Some(9);
    let (prediction, prediction_from) = match prediction_from_metadata(w) {
        Some(p) => (p, "the file's modelspec metadata"),
        // diffusers' single-file default for 2.x is the 768 v-model (stable-diffusion-2-1);
        // 2.x-base and the 2.x inpainting model predict epsilon.
        None if family == Family::Sd2 && !inpainting => (
            Prediction::V,
            "SD 2.x's rule: the 768 models predict v (2.x-base: pass --prediction epsilon)",
        ),
        None => (Prediction::Epsilon, "the family's rule"),
    };
    Ok(Detected {
        family,
        inpainting,
        text,
        prediction,
        prediction_from,
    })
}

impl SingleFile {
    /// Opens a single file from its bytes; `config_dir` is `--config DIR` (its configs and
    /// tokenizer apply to the file's weights, as diffusers' `config=` does).
    pub fn from_weights(
        weights: Weights,
        config_dir: Option<Box<dyn ModelFiles>>,
    ) -> Result<SingleFile> {
        let detected = detect(&weights)?;
        let unet_keys: Vec<&str> = weights
            .names()
            .filter_map(|k| k.strip_prefix(UNET))
            .collect();
        let layout = UNetLayout::infer(&unet_keys).ok_or_else(|| {
            Error::Checkpoint(format!(
                "{}: the U-Net's input_blocks are not numbered as an LDM U-Net's",
                weights.describe()
            ))
        })?;
        if !weights.names().any(|k| k.starts_with(VAE)) {
            return Err(Error::Checkpoint(format!(
                "{} has no VAE (first_stage_model.* tensors); hoa needs a full checkpoint",
                weights.describe()
            )));
        }
        let configs = match &config_dir {
            Some(_) => HashMap::new(),
            None => synthesize(&weights, &detected, layout)?,
        };
        Ok(SingleFile {
            weights,
            detected,
            layout,
            configs,
            config_dir,
        })
    }

    /// Memory-maps `path` (never a second copy of its bytes).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(
        path: &std::path::Path,
        config_dir: Option<Box<dyn ModelFiles>>,
    ) -> Result<SingleFile> {
        let name = path.display().to_string();
        let file =
            std::fs::File::open(path).map_err(|e| Error::Checkpoint(format!("{name}: {e}")))?;
        // Safety: the map is read-only; a file changed on disk while mapped is the user's
        // doing, as with every memory-mapped loader (safetensors' own, candle's).
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::Checkpoint(format!("{name}: cannot be mapped ({e})")))?;
        let weights = Weights::from_shared(&name, std::sync::Arc::new(map))?;
        SingleFile::from_weights(weights, config_dir)
    }

    pub fn detected(&self) -> &Detected {
        &self.detected
    }

    /// The whole file, in its own key names.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// `(diffusers name, stored name, transform)` of component `dir`'s tensors, `None` for a
    /// component the file does not hold.
    fn entries(&self, dir: &str) -> Result<Option<Vec<(String, String, Transform)>>> {
        let w = &self.weights;
        let mut out = Vec::new();
        let mut add = |prefix: &str, f: &dyn Fn(&str) -> Option<keys::Targets>| {
            for k in w.names().filter(|k| k.starts_with(prefix)) {
                for (name, t) in f(&k[prefix.len()..]).unwrap_or_default() {
                    out.push((name, k.to_string(), t));
                }
            }
        };
        match dir {
            "unet" => add(UNET, &|k| Some(keys::unet(k, self.layout))),
            "vae" => {
                let levels = infer::count(w, &format!("{VAE}encoder.down."), "");
                add(VAE, &|k| Some(keys::vae(k, levels)))
            }
            "text_encoder" => match self.detected.text {
                Some(TextKind::Clip) => add(TEXT_CLIP, &keys::clip),
                Some(TextKind::OpenClip) => {
                    let layers = self.text_layers()?;
                    add(OPEN_CLIP, &|k| keys::open_clip(k, layers, false))
                }
                None => return Ok(None),
            },
            _ => return Ok(None),
        }
        Ok(Some(out))
    }

    /// The text encoder's layer count from the config in use (the OpenCLIP tower's layers
    /// past it are dropped, as diffusers does).
    fn text_layers(&self) -> Result<usize> {
        let json = self.require("text_encoder/config.json")?;
        let v: Value = serde_json::from_slice(&json).map_err(|e| {
            Error::config(
                "text_encoder/config.json",
                "num_hidden_layers",
                e.to_string(),
            )
        })?;
        v.get("num_hidden_layers")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| {
                Error::config(
                    "text_encoder/config.json",
                    "num_hidden_layers",
                    "is missing",
                )
            })
    }

    /// Component `dir`'s weights under diffusers names (a view: no copy).
    pub fn component(&self, dir: &str) -> Result<Option<Weights>> {
        let Some(entries) = self.entries(dir)? else {
            return Ok(None);
        };
        let mut seen = std::collections::HashSet::new();
        if let Some((name, src, _)) = entries.iter().find(|(n, ..)| !seen.insert(n.clone())) {
            return Err(Error::Checkpoint(format!(
                "{}: two tensors become `{dir}/{name}` (one is `{src}`)",
                self.weights.describe()
            )));
        }
        self.weights.view(entries).map(Some)
    }
}

/// The diffusers folder's config files the detected family implies.
fn synthesize(w: &Weights, d: &Detected, layout: UNetLayout) -> Result<HashMap<String, Vec<u8>>> {
    let text = d.text.ok_or_else(|| {
        Error::Checkpoint(format!(
            "{} has no text encoder (cond_stage_model.*): pass --config DIR, a diffusers \
             folder of the same family whose text_encoder/ and tokenizer/ apply",
            w.describe()
        ))
    })?;
    let pipeline = if d.inpainting {
        "StableDiffusionInpaintPipeline"
    } else {
        "StableDiffusionPipeline"
    };
    let pad = match text {
        // SD 2.x's tokenizer (OpenCLIP's) pads with "!" (id 0), SD 1.x's with the end token.
        TextKind::OpenClip => "!",
        TextKind::Clip => "<|endoftext|>",
    };
    let files = [
        (
            "model_index.json",
            json!({
                "_class_name": pipeline,
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["diffusers", "DDIMScheduler"],
            }),
        ),
        (
            "unet/config.json",
            infer::unet(w, layout.layers, d.family, d.prediction)?,
        ),
        ("vae/config.json", infer::vae(w)?),
        ("text_encoder/config.json", infer::text_encoder(w, text)?),
        (
            "scheduler/scheduler_config.json",
            infer::scheduler(d.prediction),
        ),
        (
            "tokenizer/tokenizer_config.json",
            json!({
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad,
            }),
        ),
    ];
    Ok(files
        .into_iter()
        .map(|(p, v)| (p.to_string(), v.to_string().into_bytes()))
        .collect())
}

/// Whether `--config DIR` supplies `path` (configs and the tokenizer, never weights).
fn from_config_dir(path: &str) -> bool {
    CONFIG_PARTS.contains(&path) || path.starts_with("tokenizer/")
}

impl ModelFiles for SingleFile {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        if let Some(dir) = &self.config_dir {
            return if from_config_dir(path) {
                dir.read(path)
            } else {
                Ok(None)
            };
        }
        if path == "tokenizer/tokenizer.json" {
            return match self.detected.text {
                Some(TextKind::OpenClip) => crate::clip_vocab::tokenizer_json_pad_bang(),
                _ => crate::clip_vocab::tokenizer_json(),
            }
            .map(Some);
        }
        Ok(self.configs.get(path).cloned())
    }

    fn exists(&self, path: &str) -> bool {
        match &self.config_dir {
            Some(dir) => from_config_dir(path) && dir.exists(path),
            None => path == "tokenizer/tokenizer.json" || self.configs.contains_key(path),
        }
    }

    fn describe(&self) -> String {
        self.weights.describe()
    }

    fn component_weights(&self, dir: &str) -> Result<Option<Weights>> {
        self.component(dir)
    }
}
