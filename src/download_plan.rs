//! Which files of a diffusers model folder hoa reads, for fetching a folder that cannot be
//! listed: a URL in Hugging Face's `resolve/main/` layout or any static server. The browser
//! page asks for this plan (through `src/web.rs`) instead of guessing file names, so the names
//! hoa tries live in one place: [`weight_candidates`] is also what
//! [`crate::model_files::component_weights`] tries, in the same order.
//!
//! Components hoa does not load (a `safety_checker`, `feature_extractor`, `image_encoder`) are
//! never fetched: on Stable Diffusion 1.5 the safety checker alone is 1.2 GB.

use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::Value;

/// The weights file names diffusers and transformers save, most preferred first; a
/// `.safetensors.index.json` stands for a sharded set. With `prefer_fp16` the `.fp16` variant
/// (half the download; hoa converts on load) comes before the full-precision file.
pub fn weight_candidates(dir: &str, prefer_fp16: bool) -> Vec<String> {
    let variants: [&str; 2] = if prefer_fp16 {
        [".fp16", ""]
    } else {
        ["", ".fp16"]
    };
    let mut out = Vec::new();
    for stem in ["diffusion_pytorch_model", "model"] {
        for variant in variants {
            out.push(format!("{dir}/{stem}{variant}.safetensors"));
            out.push(format!("{dir}/{stem}{variant}.safetensors.index.json"));
        }
    }
    out
}

/// Files a tokenizer folder may hold; hoa reads whichever exist.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
];

/// One step of the plan: fetch the first of `any` that exists. A `required` step that finds
/// none is an error naming the files tried; `weights` marks weights files (an `.index.json`
/// among them lists shards to fetch next, relative to its folder).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub any: Vec<String>,
    pub required: bool,
    pub weights: bool,
}

/// What to fetch for a folder whose `model_index.json` is `model_index` (its bytes), and the
/// components listed there that hoa skips.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub skipped: Vec<String>,
}

fn one(path: String, required: bool) -> Step {
    Step {
        any: vec![path],
        required,
        weights: false,
    }
}

fn weights(dir: &str, prefer_fp16: bool, required: bool) -> Step {
    Step {
        any: weight_candidates(dir, prefer_fp16),
        required,
        weights: true,
    }
}

/// The plan for one listed component, `None` for those hoa does not load.
fn component(name: &str, prefer_fp16: bool) -> Option<Vec<Step>> {
    if name == "scheduler" {
        return Some(vec![one("scheduler/scheduler_config.json".into(), true)]);
    }
    if name.starts_with("tokenizer") {
        let files = TOKENIZER_FILES.iter();
        return Some(files.map(|f| one(format!("{name}/{f}"), false)).collect());
    }
    let loaded = ["unet", "vae"].contains(&name) || name.starts_with("text_encoder");
    loaded.then(|| {
        vec![
            one(format!("{name}/config.json"), true),
            weights(name, prefer_fp16, true),
        ]
    })
}

/// The plan for a folder: `model_index.json` (already read), `hoa.json` if there is one, every
/// listed component hoa loads, and the optional `consistency_decoder/` (hoa's addition, never
/// listed in `model_index.json`).
pub fn plan(model_index: &[u8], prefer_fp16: bool) -> Result<Plan> {
    let index: Value = serde_json::from_slice(model_index)
        .map_err(|e| Error::config("model_index.json", "(file)", format!("is not JSON: {e}")))?;
    let obj = index.as_object().ok_or_else(|| {
        Error::config(
            "model_index.json",
            "(file)",
            "is not a JSON object".to_string(),
        )
    })?;
    let mut steps = vec![one("hoa.json".into(), false)];
    let mut skipped = Vec::new();
    for (name, value) in obj {
        // Components are `[library, class]`; `[null, null]` means absent.
        let listed = value
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(Value::is_string));
        if name.starts_with('_') || !listed {
            continue;
        }
        if name.contains('/') || name.contains("..") {
            return Err(Error::config(
                "model_index.json",
                name,
                "is not a component folder name",
            ));
        }
        match component(name, prefer_fp16) {
            Some(s) => steps.extend(s),
            None => skipped.push(name.clone()),
        }
    }
    steps.push(one("consistency_decoder/config.json".into(), false));
    steps.push(weights("consistency_decoder", prefer_fp16, false));
    Ok(Plan { steps, skipped })
}

/// The second stage of the plan, once `hoa.json` (its bytes) is fetched: the prompt rewriter
/// folder it names (`rewriter`), or nothing. Its files are required: a rewriter that is named
/// but cannot be fetched would silently change what the model reads.
pub fn rewriter_plan(hoa_json: &[u8], prefer_fp16: bool) -> Result<Vec<Step>> {
    let v: Value = serde_json::from_slice(hoa_json)
        .map_err(|e| Error::config("hoa.json", "(file)", format!("is not JSON: {e}")))?;
    let Some(dir) = v.get("rewriter") else {
        return Ok(Vec::new());
    };
    let dir = dir
        .as_str()
        .filter(|d| !d.is_empty() && !d.starts_with('/'))
        .filter(|d| d.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
        .ok_or_else(|| Error::config("hoa.json", "rewriter", "is not a folder inside the model"))?;
    Ok(vec![
        one(format!("{dir}/config.json"), true),
        one(format!("{dir}/generation_config.json"), false),
        one(format!("{dir}/tokenizer.json"), true),
        weights(dir, prefer_fp16, true),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD15: &str = r#"{"_class_name": "StableDiffusionPipeline",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "image_encoder": [null, null],
        "requires_safety_checker": true,
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}"#;

    fn firsts(p: &Plan) -> Vec<&str> {
        p.steps.iter().map(|s| s.any[0].as_str()).collect()
    }

    #[test]
    fn fetches_what_hoa_loads_and_skips_the_rest() {
        let p = plan(SD15.as_bytes(), false).unwrap();
        assert_eq!(p.skipped, ["feature_extractor", "safety_checker"]);
        let f = firsts(&p);
        for want in [
            "hoa.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/diffusion_pytorch_model.safetensors",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "unet/config.json",
            "vae/config.json",
            "consistency_decoder/config.json",
        ] {
            assert!(f.contains(&want), "{want} missing from {f:?}");
        }
        assert!(!f.iter().any(|s| s.starts_with("safety_checker")));
        let required: Vec<_> = p.steps.iter().filter(|s| s.required).collect();
        assert_eq!(required.len(), 7, "{required:?}");
    }

    #[test]
    fn second_encoders_count_too() {
        let json = r#"{"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                       "tokenizer_2": ["transformers", "CLIPTokenizer"]}"#;
        let f = plan(json.as_bytes(), false).unwrap();
        let f = firsts(&f);
        assert!(f.contains(&"text_encoder_2/config.json"));
        assert!(f.contains(&"tokenizer_2/tokenizer.json"));
    }

    #[test]
    fn fp16_variant_first_only_when_asked() {
        let c = weight_candidates("unet", true);
        assert_eq!(c[0], "unet/diffusion_pytorch_model.fp16.safetensors");
        assert_eq!(c.len(), 8);
        let c = weight_candidates("unet", false);
        assert_eq!(c[0], "unet/diffusion_pytorch_model.safetensors");
        assert_eq!(c[2], "unet/diffusion_pytorch_model.fp16.safetensors");
    }

    #[test]
    fn the_rewriter_hoa_json_names_is_fetched() {
        let steps = rewriter_plan(br#"{"steps": 25, "rewriter": "rw/t5"}"#, false).unwrap();
        let f: Vec<&str> = steps.iter().map(|s| s.any[0].as_str()).collect();
        assert_eq!(
            f,
            [
                "rw/t5/config.json",
                "rw/t5/generation_config.json",
                "rw/t5/tokenizer.json",
                "rw/t5/diffusion_pytorch_model.safetensors"
            ]
        );
        assert!(steps[3]
            .any
            .contains(&"rw/t5/model.safetensors".to_string()));
        assert!(rewriter_plan(br#"{"steps": 25}"#, false)
            .unwrap()
            .is_empty());
        for bad in [r#"{"rewriter": "../x"}"#, r#"{"rewriter": 3}"#, "nope"] {
            assert!(rewriter_plan(bad.as_bytes(), false).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_indexes_are_errors() {
        for bad in [
            "",
            "[1]",
            r#"{"../x": ["a", "b"]}"#,
            r#"{"a/b": ["a", "b"]}"#,
        ] {
            assert!(plan(bad.as_bytes(), false).is_err(), "{bad:?}");
        }
    }
}
