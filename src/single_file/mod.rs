//! Single-file Stable Diffusion 1.x / 2.x / SDXL checkpoints (the A1111 / ComfyUI / civitai
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
/// SDXL base's CLIP ViT-L/14 (transformers' names).
pub const SDXL_CLIP: &str = "conditioner.embedders.0.transformer.";
/// SDXL base's OpenCLIP ViT-bigG/14.
pub const SDXL_OPEN_CLIP: &str = "conditioner.embedders.1.model.";
/// SDXL refiner's only text tower, OpenCLIP ViT-bigG/14.
pub const SDXL_REFINER_OPEN_CLIP: &str = "conditioner.embedders.0.model.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Sd1,
    Sd2,
    /// SDXL base: two text towers, `text_time` micro-conditioning.
    Sdxl,
    /// SDXL refiner: the OpenCLIP tower only, aesthetic-score conditioning.
    SdxlRefiner,
}

/// Where one text encoder component lives in the file and how it converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextTower {
    /// The diffusers component (`text_encoder`, `text_encoder_2`) and its tokenizer's folder.
    pub dir: &'static str,
    pub tokenizer: &'static str,
    pub prefix: &'static str,
    pub kind: TextKind,
    /// SD 2.x conditions on the penultimate OpenCLIP layer: the last one is not loaded.
    pub drop_last: bool,
    /// `CLIPTextModelWithProjection` (SDXL's second encoder keeps `text_projection`).
    pub with_projection: bool,
}

impl Family {
    /// The text towers this family's single files hold.
    pub fn towers(self) -> Vec<TextTower> {
        let t = |dir, tokenizer, prefix, kind, drop_last, with_projection| TextTower {
            dir,
            tokenizer,
            prefix,
            kind,
            drop_last,
            with_projection,
        };
        let (te, te2) = (
            ("text_encoder", "tokenizer"),
            ("text_encoder_2", "tokenizer_2"),
        );
        match self {
            Family::Sd1 => vec![t(te.0, te.1, TEXT_CLIP, TextKind::Clip, false, false)],
            Family::Sd2 => vec![t(te.0, te.1, OPEN_CLIP, TextKind::OpenClip, true, false)],
            Family::Sdxl => vec![
                t(te.0, te.1, SDXL_CLIP, TextKind::Clip, false, false),
                t(
                    te2.0,
                    te2.1,
                    SDXL_OPEN_CLIP,
                    TextKind::OpenClip,
                    false,
                    true,
                ),
            ],
            Family::SdxlRefiner => vec![t(
                te2.0,
                te2.1,
                SDXL_REFINER_OPEN_CLIP,
                TextKind::OpenClip,
                false,
                true,
            )],
        }
    }

    fn is_sdxl(self) -> bool {
        matches!(self, Family::Sdxl | Family::SdxlRefiner)
    }
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
            Family::Sdxl => "SDXL",
            Family::SdxlRefiner => "SDXL refiner",
        };
        format!("{f}{}", if self.inpainting { " inpainting" } else { "" })
    }
}

/// Names of a component's config files that `--config DIR` supplies.
const CONFIG_PARTS: [&str; 7] = [
    "model_index.json",
    "hoa.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
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
    /// The memory map, to hand its pages back between components.
    #[cfg(unix)]
    map: Option<std::sync::Arc<memmap2::Mmap>>,
}

fn has_prefix(w: &Weights, prefix: &str) -> bool {
    w.names().any(|k| k.starts_with(prefix))
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
             (U-Net) tensors (hoa reads single files in the original LDM layout, SD 1.x, 2.x and SDXL)"
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
    let has = |prefix: &str| w.names().any(|k| k.starts_with(prefix));
    let context = w
        .names()
        .filter(|k| k.starts_with(UNET) && k.ends_with("attn2.to_k.weight"))
        .find_map(|k| w.shape(k)?.get(1).copied());
    // A second embedder (or `label_emb`, SDXL's text_time embedding) = SDXL; OpenCLIP text or
    // 1024-wide cross-attention = SD 2.x.
    let family = if has(SDXL_OPEN_CLIP) {
        Family::Sdxl
    } else if has(SDXL_REFINER_OPEN_CLIP) {
        Family::SdxlRefiner
    } else if has(&format!("{UNET}label_emb.")) {
        if context == Some(1280) {
            Family::SdxlRefiner
        } else {
            Family::Sdxl
        }
    } else if has(OPEN_CLIP) || (!has(TEXT_CLIP) && context == Some(1024)) {
        Family::Sd2
    } else {
        Family::Sd1
    };
    let text = family
        .towers()
        .first()
        .filter(|t| has(t.prefix))
        .map(|t| t.kind);
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
            #[cfg(unix)]
            map: None,
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
        let map = std::sync::Arc::new(map);
        let weights = Weights::from_mmap(&name, map.clone())?;
        let file = SingleFile::from_weights(weights, config_dir)?;
        #[cfg(unix)]
        let file = SingleFile {
            map: Some(map),
            ..file
        };
        Ok(file)
    }

    /// Drops the pages earlier components touched from this process (they stay in the page
    /// cache and fault back in if read again), so a model loads with one component's bytes
    /// resident at a time rather than the whole file.
    fn release_pages(&self) {
        #[cfg(unix)]
        if let Some(map) = &self.map {
            // Safety: a read-only shared file mapping: DONTNEED discards no data, later reads
            // see the file's bytes again.
            let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
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
            dir => {
                let towers = self.detected.family.towers();
                let Some(t) = towers
                    .iter()
                    .find(|t| t.dir == dir && has_prefix(w, t.prefix))
                else {
                    return Ok(None);
                };
                match t.kind {
                    TextKind::Clip => add(t.prefix, &keys::clip),
                    TextKind::OpenClip => {
                        let layers = self.text_layers(dir)?;
                        add(t.prefix, &|k| keys::open_clip(k, layers, t.with_projection))
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// A text encoder's layer count from the config in use (the OpenCLIP tower's layers past
    /// it are dropped, as diffusers does).
    fn text_layers(&self, dir: &str) -> Result<usize> {
        let file = format!("{dir}/config.json");
        let v: Value = serde_json::from_slice(&self.require(&file)?)
            .map_err(|e| Error::Checkpoint(format!("{file}: {e}")))?;
        v.get("num_hidden_layers")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| Error::Checkpoint(format!("{file}: `num_hidden_layers` is missing")))
    }

    /// Component `dir`'s weights under diffusers names (a view: no copy).
    pub fn component(&self, dir: &str) -> Result<Option<Weights>> {
        let Some(entries) = self.entries(dir)? else {
            return Ok(None);
        };
        self.release_pages();
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
    let towers: Vec<TextTower> = d
        .family
        .towers()
        .into_iter()
        .filter(|t| has_prefix(w, t.prefix))
        .collect();
    if towers.len() < d.family.towers().len() {
        return Err(Error::Checkpoint(format!(
            "{} has no text encoder ({}*): pass --config DIR, a diffusers folder of the same \
             family whose text encoder and tokenizer configs apply",
            w.describe(),
            d.family.towers()[towers.len()].prefix
        )));
    }
    let xl = d.family.is_sdxl();
    let pipeline = match (d.family, d.inpainting) {
        (Family::SdxlRefiner, _) => "StableDiffusionXLImg2ImgPipeline",
        (Family::Sdxl, true) => "StableDiffusionXLInpaintPipeline",
        (Family::Sdxl, false) => "StableDiffusionXLPipeline",
        (_, true) => "StableDiffusionInpaintPipeline",
        (_, false) => "StableDiffusionPipeline",
    };
    let scheduler = if xl {
        "EulerDiscreteScheduler"
    } else {
        "DDIMScheduler"
    };
    let mut index = json!({
        "_class_name": pipeline,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", scheduler],
    });
    let mut files = vec![
        (
            "unet/config.json".to_string(),
            infer::unet(w, layout.layers, d, &towers)?,
        ),
        ("vae/config.json".to_string(), infer::vae(w, xl)?),
        (
            "scheduler/scheduler_config.json".to_string(),
            infer::scheduler(d.prediction, xl),
        ),
    ];
    if d.family == Family::SdxlRefiner {
        index["text_encoder"] = json!([null, null]);
        index["tokenizer"] = json!([null, null]);
        index["requires_aesthetics_score"] = json!(true);
    }
    for t in &towers {
        let class = if t.with_projection {
            "CLIPTextModelWithProjection"
        } else {
            "CLIPTextModel"
        };
        index[t.dir] = json!(["transformers", class]);
        index[t.tokenizer] = json!(["transformers", "CLIPTokenizer"]);
        files.push((format!("{}/config.json", t.dir), infer::text_encoder(w, t)?));
        // OpenCLIP's tokenizer as diffusers configures it pads with "!" (id 0); CLIP's with
        // the end token.
        let pad = match t.kind {
            TextKind::OpenClip => "!",
            TextKind::Clip => "<|endoftext|>",
        };
        let tok = json!({
            "model_max_length": 77,
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": pad,
        });
        files.push((format!("{}/tokenizer_config.json", t.tokenizer), tok));
    }
    files.push(("model_index.json".to_string(), index));
    Ok(files
        .into_iter()
        .map(|(p, v)| (p, v.to_string().into_bytes()))
        .collect())
}

/// Whether `--config DIR` supplies `path` (configs and the tokenizer, never weights).
fn from_config_dir(path: &str) -> bool {
    CONFIG_PARTS.contains(&path)
        || path.starts_with("tokenizer/")
        || path.starts_with("tokenizer_2/")
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
        let towers = self.detected.family.towers();
        if let Some(t) = towers
            .iter()
            .find(|t| path == format!("{}/tokenizer.json", t.tokenizer))
        {
            return match t.kind {
                TextKind::OpenClip => crate::clip_vocab::tokenizer_json_pad_bang(),
                TextKind::Clip => crate::clip_vocab::tokenizer_json(),
            }
            .map(Some);
        }
        Ok(self.configs.get(path).cloned())
    }

    fn exists(&self, path: &str) -> bool {
        match &self.config_dir {
            Some(dir) => from_config_dir(path) && dir.exists(path),
            None => {
                self.configs.contains_key(path)
                    || (path.ends_with("/tokenizer.json")
                        && self
                            .configs
                            .contains_key(&path.replace(".json", "_config.json")))
            }
        }
    }

    fn describe(&self) -> String {
        self.weights.describe()
    }

    fn component_weights(&self, dir: &str) -> Result<Option<Weights>> {
        self.component(dir)
    }
}
