//! LoRA tensor names in the formats people have, read into (component, module, part): kohya's
//! `lora_unet_<module, '.' as '_'>.lora_down.weight` / `.lora_up.weight` / `.alpha` (with
//! `lora_te_`, `lora_te1_`, `lora_te2_` for the text encoders), diffusers' PEFT
//! `unet.<module>.lora_A.weight` / `.lora_B.weight`, and diffusers' older
//! `<module>.lora.down.weight`, `<module>.lora_linear_layer.down.weight` and
//! `<attn>.processor.to_q_lora.down.weight`, as diffusers' `lora_conversion_utils` reads them.

/// The pipeline part a LoRA tensor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Unet,
    TextEncoder,
    /// SDXL's second text encoder (kohya `lora_te2_`, diffusers `text_encoder_2.`).
    TextEncoder2,
}

impl Component {
    /// The diffusers folder (and PEFT key prefix) of the component.
    pub fn name(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// Which module a LoRA changes, as the file names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Module {
    /// kohya: the module path with every '.' written '_' (`down_blocks_0_attentions_0_proj_in`);
    /// which underscores were dots is only known by matching the model's own names.
    Flat(String),
    /// diffusers / PEFT: the module path (`down_blocks.0.attentions.0.proj_in`).
    Dotted(String),
}

impl Module {
    pub fn as_str(&self) -> &str {
        match self {
            Module::Flat(s) | Module::Dotted(s) => s,
        }
    }
}

/// The three tensors of one LoRA module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `[rank, in]` or `[rank, in, kh, kw]` (kohya `lora_down`, PEFT `lora_A`).
    Down,
    /// `[out, rank]` or `[out, rank, 1, 1]` (kohya `lora_up`, PEFT `lora_B`).
    Up,
    /// A scalar: the update is scaled by alpha / rank.
    Alpha,
}

/// What one tensor name says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub component: Component,
    pub module: Module,
    pub part: Part,
}

/// Reads a LoRA tensor name; `None` for names of no format hoa knows (LoHa's `hada_w1_a`,
/// LoKr's `lokr_w1`, DoRA's `dora_scale`, a checkpoint's weights, ...). Text-encoder modules
/// lose CLIP's `text_model.` prefix (kohya and SD checkpoints have it, transformers 5 saves
/// without it), so that both spellings of one module are one module.
pub fn parse(key: &str) -> Option<Parsed> {
    let mut p = parse_kohya(key).or_else(|| parse_diffusers(key))?;
    if p.component != Component::Unet {
        p.module = match p.module {
            Module::Flat(m) => Module::Flat(strip_text_model(&m).to_string()),
            Module::Dotted(m) => Module::Dotted(strip_text_model(&m).to_string()),
        };
    }
    Some(p)
}

/// A text-encoder module name without CLIP's `text_model.` (or kohya's `text_model_`) prefix.
pub fn strip_text_model(m: &str) -> &str {
    m.strip_prefix("text_model.")
        .or_else(|| m.strip_prefix("text_model_"))
        .unwrap_or(m)
}

fn parse_kohya(key: &str) -> Option<Parsed> {
    const PREFIXES: [(&str, Component); 4] = [
        ("lora_unet_", Component::Unet),
        ("lora_te1_", Component::TextEncoder),
        ("lora_te2_", Component::TextEncoder2),
        ("lora_te_", Component::TextEncoder),
    ];
    let (component, rest) = PREFIXES
        .iter()
        .find_map(|(p, c)| key.strip_prefix(p).map(|r| (*c, r)))?;
    let (name, suffix) = rest.split_once('.')?;
    let part = match suffix {
        "lora_down.weight" => Part::Down,
        "lora_up.weight" => Part::Up,
        "alpha" => Part::Alpha,
        _ => return None,
    };
    (!name.is_empty()).then(|| Parsed {
        component,
        module: Module::Flat(name.to_string()),
        part,
    })
}

fn parse_diffusers(key: &str) -> Option<Parsed> {
    const SUFFIXES: [(&str, Part); 7] = [
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".lora_linear_layer.down.weight", Part::Down),
        (".lora_linear_layer.up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    let (comp, rest) = key.split_once('.')?;
    let component = match comp {
        "unet" => Component::Unet,
        "text_encoder" => Component::TextEncoder,
        "text_encoder_2" => Component::TextEncoder2,
        _ => return None,
    };
    let found = SUFFIXES
        .iter()
        .find_map(|(s, p)| rest.strip_suffix(s).map(|m| (m.to_string(), *p)));
    let (module, part) = match found {
        Some(f) => f,
        None => processor_style(component, rest)?,
    };
    (!module.is_empty()).then_some(Parsed {
        component,
        module: Module::Dotted(module),
        part,
    })
}

/// diffusers' attention-processor names: `<attn>.processor.to_q_lora.down.weight` in the U-Net
/// (`to_out_lora` is `to_out.0`), `<self_attn>.to_q_lora.down.weight` in CLIP (`q_proj`).
fn processor_style(component: Component, rest: &str) -> Option<(String, Part)> {
    let (m, part) = match rest.strip_suffix("_lora.down.weight") {
        Some(m) => (m, Part::Down),
        None => (rest.strip_suffix("_lora.up.weight")?, Part::Up),
    };
    let (parent, proj) = m.rsplit_once('.')?;
    let parent = parent.strip_suffix(".processor").unwrap_or(parent);
    let module = match (component, proj) {
        (Component::Unet, "to_out") => "to_out.0",
        (Component::Unet, p @ ("to_q" | "to_k" | "to_v")) => p,
        (_, "to_q") => "q_proj",
        (_, "to_k") => "k_proj",
        (_, "to_v") => "v_proj",
        (_, "to_out") => "out_proj",
        _ => return None,
    };
    Some((format!("{parent}.{module}"), part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str) -> (Component, Module, Part) {
        let x = parse(key).unwrap_or_else(|| panic!("{key} did not parse"));
        (x.component, x.module, x.part)
    }

    #[test]
    fn every_format_names_its_module() {
        use Component::*;
        let flat = |s: &str| Module::Flat(s.into());
        let dot = |s: &str| Module::Dotted(s.into());
        let attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
        let cases = [
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                (Unet, flat("down_blocks_0_attentions_0_proj_in"), Part::Down),
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
                (TextEncoder, flat("encoder_layers_0_mlp_fc1"), Part::Alpha),
            ),
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                (TextEncoder2, flat("encoder_layers_0_mlp_fc1"), Part::Up),
            ),
            (
                "lora_te1_x.lora_up.weight",
                (TextEncoder, flat("x"), Part::Up),
            ),
            (
                &format!("unet.{attn}.to_q.lora_A.weight"),
                (Unet, dot(&format!("{attn}.to_q")), Part::Down),
            ),
            (
                &format!("unet.{attn}.to_out.0.lora.up.weight"),
                (Unet, dot(&format!("{attn}.to_out.0")), Part::Up),
            ),
            (
                &format!("unet.{attn}.processor.to_out_lora.down.weight"),
                (Unet, dot(&format!("{attn}.to_out.0")), Part::Down),
            ),
            (
                "text_encoder.text_model.encoder.layers.1.self_attn.to_k_lora.up.weight",
                (
                    TextEncoder,
                    dot("encoder.layers.1.self_attn.k_proj"),
                    Part::Up,
                ),
            ),
            (
                "text_encoder.text_model.encoder.layers.1.mlp.fc2.lora_linear_layer.down.weight",
                (TextEncoder, dot("encoder.layers.1.mlp.fc2"), Part::Down),
            ),
            (
                "text_encoder_2.encoder.layers.0.mlp.fc1.lora_B.weight",
                (TextEncoder2, dot("encoder.layers.0.mlp.fc1"), Part::Up),
            ),
            ("unet.conv_in.alpha", (Unet, dot("conv_in"), Part::Alpha)),
        ];
        for (key, want) in cases {
            assert_eq!(p(key), want, "{key}");
        }
    }

    #[test]
    fn other_formats_are_not_read() {
        for key in [
            "lora_unet_x.hada_w1_a",
            "lora_unet_x.dora_scale",
            "lora_unet_x.lora_mid.weight",
            "model.diffusion_model.input_blocks.0.0.weight",
            "unet.conv_in.weight",
            "vae.decoder.conv_in.lora_A.weight",
            "lora_unet_.alpha",
            "unet.lora_A.weight",
        ] {
            assert_eq!(parse(key), None, "{key}");
        }
    }
}
