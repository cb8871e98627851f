//! LoRA adapters merged into a model's weights as they load, as diffusers'
//! `load_lora_weights` + `fuse_lora(lora_scale)` do: `W += scale · alpha/rank · up @ down`
//! for every module a LoRA names, several LoRAs in order, on the device ([`merge`]). Reads
//! kohya's and diffusers' PEFT formats ([`keys`]), linear and conv (LoCon) updates, alpha from
//! kohya's `.alpha` tensors or diffusers' `lora_adapter_metadata` (absent: alpha = rank).

pub mod keys;
pub mod merge;

use crate::error::{Error, Result};
use crate::weights::Weights;
use keys::{Component, Module, Part};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

pub use merge::Patches;

/// The tensors of one LoRA module, by key in its file.
#[derive(Clone, Debug, Default)]
pub struct Group {
    pub down: Option<String>,
    pub up: Option<String>,
    pub alpha: Option<String>,
}

/// PEFT's adapter config for one component, as diffusers' `save_lora_weights` stores it in the
/// file's `lora_adapter_metadata` (keys `unet.lora_alpha`, `unet.alpha_pattern`, ...).
#[derive(Clone, Debug, Default)]
struct PeftConfig {
    lora_alpha: Option<f64>,
    /// (module-name regex, alpha), PEFT's `alpha_pattern`.
    alpha_pattern: Vec<(regex::Regex, f64)>,
    use_rslora: bool,
}

/// One LoRA file, read and grouped by module (not yet matched against a model).
pub struct LoraFile {
    /// How errors name it (the path as given).
    pub name: String,
    /// kohya's addnet hash (SHA-256 of the bytes after the header), what A1111 writes, first 12
    /// hex digits, in `Lora hashes`.
    pub short_hash: String,
    weights: Weights,
    groups: BTreeMap<(Component, Module), Group>,
    peft: HashMap<Component, PeftConfig>,
}

impl LoraFile {
    /// Reads a `.safetensors` LoRA; `name` is used in errors. Refuses files with tensors of no
    /// format hoa knows, naming them, and files with no LoRA at all.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<LoraFile> {
        let (n, meta) = match SafeTensors::read_metadata(&bytes) {
            Ok(m) => m,
            // Weights says what the file is instead (text, a pickle, ...).
            Err(e) => {
                Weights::from_bytes(name, bytes)?;
                return Err(Error::Safetensors {
                    file: name.to_string(),
                    msg: e.to_string(),
                });
            }
        };
        let short_hash = hex(&Sha256::digest(&bytes[(8 + n).min(bytes.len())..]))[..12].to_string();
        let peft = match meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("lora_adapter_metadata"))
        {
            Some(json) => peft_configs(name, json)?,
            None => HashMap::new(),
        };
        let weights = Weights::from_bytes(name, bytes)?;
        let mut groups: BTreeMap<(Component, Module), Group> = BTreeMap::new();
        let mut unknown = Vec::new();
        for key in weights.names() {
            let Some(p) = keys::parse(key) else {
                unknown.push(key.to_string());
                continue;
            };
            let g = groups.entry((p.component, p.module)).or_default();
            let slot = match p.part {
                Part::Down => &mut g.down,
                Part::Up => &mut g.up,
                Part::Alpha => &mut g.alpha,
            };
            if let Some(other) = slot.replace(key.to_string()) {
                unknown.push(format!("{key} (same module as {other})"));
            }
        }
        // Nothing LoRA-like at all (LoHa / LoKr names start with kohya's `lora_` too).
        if unknown.is_empty() && groups.is_empty() {
            return Err(Error::Checkpoint(format!("{name}: holds no tensors")));
        }
        if groups.is_empty() && !unknown.iter().any(|k| k.starts_with("lora_")) {
            return Err(Error::Checkpoint(format!(
                "{name}: has no LoRA tensors (a model checkpoint? its tensors are {})",
                capped_list(unknown)
            )));
        }
        if !unknown.is_empty() {
            return Err(Error::Checkpoint(format!(
                "{name}: not LoRA tensors hoa reads (kohya lora_down/lora_up/alpha or diffusers \
                 lora_A/lora_B; LoHa, LoKr and DoRA are not supported): {}",
                capped_list(unknown)
            )));
        }
        let incomplete: Vec<String> = groups
            .iter()
            .filter(|(_, g)| g.down.is_none() || g.up.is_none())
            .map(|((c, m), _)| format!("{} {}", c.name(), m.as_str()))
            .collect();
        if !incomplete.is_empty() {
            return Err(Error::Checkpoint(format!(
                "{name}: LoRA modules without both a down (lora_A) and an up (lora_B) tensor: {}",
                capped_list(incomplete)
            )));
        }
        Ok(LoraFile {
            name: name.to_string(),
            short_hash,
            weights,
            groups,
            peft,
        })
    }

    /// The components this LoRA changes.
    pub fn components(&self) -> Vec<Component> {
        let mut v: Vec<Component> = self.groups.keys().map(|(c, _)| *c).collect();
        v.dedup();
        v
    }

    /// The alpha of a module: its `.alpha` tensor, else PEFT's metadata (`alpha_pattern`, then
    /// `lora_alpha`), else `rank` (a scale of 1, diffusers' default). Returns alpha / rank
    /// (alpha / sqrt(rank) under PEFT's `use_rslora`).
    fn alpha_over_rank(
        &self,
        component: Component,
        module: &Module,
        g: &Group,
        rank: usize,
    ) -> Result<f64> {
        if let Some(k) = &g.alpha {
            let v = self.weights.read_f32(k)?;
            return match v.as_slice() {
                [a] if a.is_finite() => Ok(*a as f64 / rank as f64),
                _ => Err(Error::Checkpoint(format!(
                    "{}: `{k}` must be one finite number, found {} values",
                    self.name,
                    v.len()
                ))),
            };
        }
        let Some(cfg) = self.peft.get(&component) else {
            return Ok(1.0);
        };
        let name = module.as_str();
        let alpha = cfg
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(name))
            .map(|(_, a)| *a)
            .or(cfg.lora_alpha)
            .unwrap_or(rank as f64);
        Ok(if cfg.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        })
    }
}

/// The PEFT configs in diffusers' `lora_adapter_metadata` JSON (flat keys prefixed with the
/// component: `unet.lora_alpha`, `text_encoder.alpha_pattern`, ...).
fn peft_configs(file: &str, json: &str) -> Result<HashMap<Component, PeftConfig>> {
    let bad = |why: String| Error::config(file, "lora_adapter_metadata", why);
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| bad(format!("is not a JSON object: {e}")))?;
    let mut out: HashMap<Component, PeftConfig> = HashMap::new();
    for c in [
        Component::Unet,
        Component::TextEncoder,
        Component::TextEncoder2,
    ] {
        let get = |k: &str| map.get(&format!("{}.{k}", c.name()));
        if get("r").is_none() && get("lora_alpha").is_none() {
            continue;
        }
        if get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
            return Err(bad(format!(
                "{}: DoRA adapters are not supported",
                c.name()
            )));
        }
        let mut cfg = PeftConfig {
            lora_alpha: get("lora_alpha").and_then(|v| v.as_f64()),
            use_rslora: get("use_rslora").and_then(|v| v.as_bool()) == Some(true),
            ..Default::default()
        };
        if let Some(pats) = get("alpha_pattern").and_then(|v| v.as_object()) {
            for (pat, v) in pats {
                // PEFT's get_pattern_key: the pattern matches a whole trailing part of the name.
                let re = regex::Regex::new(&format!(r"^(.*\.)?({pat})$"))
                    .map_err(|e| bad(format!("alpha_pattern `{pat}`: {e}")))?;
                let a = v
                    .as_f64()
                    .ok_or_else(|| bad(format!("alpha_pattern `{pat}` is not a number")))?;
                cfg.alpha_pattern.push((re, a));
            }
        }
        out.insert(c, cfg);
    }
    Ok(out)
}

/// LoRAs with their scales, merged in order (diffusers fuses adapters one after another).
#[derive(Default)]
pub struct LoraSet {
    pub loras: Vec<(LoraFile, f64)>,
}

impl LoraSet {
    pub fn is_empty(&self) -> bool {
        self.loras.is_empty()
    }

    /// Refuses LoRAs for components the model does not have (a second text encoder on a model
    /// with one: an SDXL LoRA on SD 1.x), before anything loads.
    pub fn check_components(&self, model_has: &[Component]) -> Result<()> {
        for (f, _) in &self.loras {
            if let Some(c) = f.components().into_iter().find(|c| !model_has.contains(c)) {
                return Err(Error::Checkpoint(format!(
                    "{}: is a LoRA for another model family: it changes a `{}` this model does \
                     not have (an SDXL LoRA on an SD 1.x/2.x model?)",
                    f.name,
                    c.name()
                )));
            }
        }
        Ok(())
    }

    /// The merges for one component whose checkpoint is `weights`; errors name every LoRA
    /// module that matches none of its tensors, and LoRAs whose shapes belong to another model.
    pub fn patches(&self, component: Component, weights: &Weights) -> Result<Patches<'_>> {
        merge::resolve(self, component, weights)
    }
}

/// Sorted, comma-separated, at most 20 (a LoRA for another model can have hundreds).
pub(crate) fn capped_list(mut v: Vec<String>) -> String {
    v.sort_unstable();
    let more = v.len().saturating_sub(20);
    v.truncate(20);
    let mut s = v.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CLI's `--lora FILE[:SCALE]` as a request entry (the scale is checked by
/// [`crate::resolve`]); a `:` with no number after it is an error.
pub fn parse_arg(arg: &str) -> Result<crate::request::LoraRequest> {
    let (file, scale) = split_arg(arg);
    let scale = match scale.as_deref().map(str::trim) {
        None => None,
        Some("") => {
            return Err(Error::invalid(
                format!("--lora {arg}"),
                "the scale after ':' is missing (write FILE:0.8, or FILE alone for 1)",
            ))
        }
        Some(s) => Some(s.parse::<f64>().map_err(|_| {
            Error::invalid(
                format!("--lora {arg}"),
                format!("the scale after ':' must be a number, got `{s}`"),
            )
        })?),
    };
    Ok(crate::request::LoraRequest {
        file,
        scale,
        hash: None,
    })
}

/// `FILE` or `FILE:SCALE` (the CLI's `--lora`): the scale after the last ':' unless what
/// follows it looks like part of a path (`C:\x.safetensors`). Returns (file, scale as typed).
pub fn split_arg(arg: &str) -> (String, Option<String>) {
    match arg.rsplit_once(':') {
        Some((file, scale))
            if !file.is_empty()
                && !scale.contains(['/', '\\'])
                && !scale.ends_with(".safetensors") =>
        {
            (file.to_string(), Some(scale.to_string()))
        }
        _ => (arg.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_args_split_at_the_last_colon_unless_it_is_a_path() {
        let s = |a: &str| split_arg(a);
        assert_eq!(s("a.safetensors"), ("a.safetensors".into(), None));
        assert_eq!(
            s("a.safetensors:0.8"),
            ("a.safetensors".into(), Some("0.8".into()))
        );
        assert_eq!(
            s("a.safetensors:"),
            ("a.safetensors".into(), Some("".into()))
        );
        assert_eq!(
            s("x:y/a.safetensors:-1"),
            ("x:y/a.safetensors".into(), Some("-1".into()))
        );
        assert_eq!(
            s(r"C:\l\a.safetensors"),
            (r"C:\l\a.safetensors".into(), None)
        );
        assert_eq!(s("C:a.safetensors"), ("C:a.safetensors".into(), None));
    }
}
