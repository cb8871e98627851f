//! The one place where the original LDM (CompVis / A1111) key names become diffusers' and
//! transformers' names: U-Net (`model.diffusion_model.*`), VAE (`first_stage_model.*`), CLIP
//! (`cond_stage_model.transformer.*`) and OpenCLIP (`cond_stage_model.model.*`). Mirrors
//! diffusers' `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
//! `convert_ldm_clip_checkpoint` and `convert_open_clip_checkpoint`. Each function maps one
//! stored key (its component prefix removed) to the diffusers names it becomes, so a key no
//! rule knows keeps its LDM name and the loader reports it as unexpected.

use crate::weights::Transform;

/// `(diffusers name, transform)` pairs one stored tensor becomes.
pub type Targets = Vec<(String, Transform)>;

fn one(name: String) -> Targets {
    vec![(name, Transform::Identity)]
}

/// The block structure the U-Net's `input_blocks` / `output_blocks` numbering encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UNetLayout {
    /// Resnets per down block (`layers_per_block`); up blocks have one more.
    pub layers: usize,
}

impl UNetLayout {
    /// Reads `layers_per_block` from the keys (without `model.diffusion_model.`): the first
    /// downsampler (`input_blocks.K.0.op`) sits at K = layers + 1; with a single level (no
    /// downsampler) every input block but `conv_in` is a layer.
    pub fn infer(keys: &[&str]) -> Option<UNetLayout> {
        fn block<'k>(k: &&'k str) -> Option<(usize, &'k str)> {
            let rest = k.strip_prefix("input_blocks.")?;
            let (i, rest) = rest.split_once('.')?;
            Some((i.parse::<usize>().ok()?, rest))
        }
        let first_down = keys
            .iter()
            .filter_map(block)
            .filter(|(_, rest)| rest.starts_with("0.op."))
            .map(|(i, _)| i)
            .min();
        let layers = match first_down {
            Some(k) => k.checked_sub(1)?,
            None => keys.iter().filter_map(block).map(|(i, _)| i).max()?,
        };
        (layers > 0).then_some(UNetLayout { layers })
    }
}

/// LDM `ResBlock` names -> diffusers `ResnetBlock2D` names.
fn resnet(rest: &str) -> String {
    const MAP: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    for (ldm, diffusers) in MAP {
        if let Some(tail) = rest.strip_prefix(ldm) {
            return format!("{diffusers}{tail}");
        }
    }
    rest.to_string()
}

/// `(index, rest)` of `"7.0.in_layers..."`.
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// One U-Net key (without `model.diffusion_model.`). The spatial transformer's inner names
/// (`norm`, `proj_in`, `transformer_blocks.N.attn1.to_q`, ...) are the same in both layouts.
pub fn unet(key: &str, layout: UNetLayout) -> Targets {
    let n = layout.layers;
    let mapped = (|| -> Option<String> {
        if let Some(rest) = key.strip_prefix("input_blocks.") {
            let (k, rest) = split_index(rest)?;
            let (m, rest) = split_index(rest)?;
            if k == 0 {
                return (m == 0).then(|| format!("conv_in.{rest}"));
            }
            let (level, j) = ((k - 1) / (n + 1), (k - 1) % (n + 1));
            let b = format!("down_blocks.{level}");
            return Some(match (j == n, m) {
                (true, 0) => format!("{b}.downsamplers.0.conv.{}", rest.strip_prefix("op.")?),
                (false, 0) => format!("{b}.resnets.{j}.{}", resnet(rest)),
                (false, 1) => format!("{b}.attentions.{j}.{rest}"),
                _ => return None,
            });
        }
        if let Some(rest) = key.strip_prefix("output_blocks.") {
            let (k, rest) = split_index(rest)?;
            let (m, rest) = split_index(rest)?;
            let (level, j) = (k / (n + 1), k % (n + 1));
            let b = format!("up_blocks.{level}");
            // The upsampler follows the resnet (m = 1) or the attention (m = 2).
            return Some(match m {
                0 => format!("{b}.resnets.{j}.{}", resnet(rest)),
                _ if rest.starts_with("conv.") => format!("{b}.upsamplers.0.{rest}"),
                1 => format!("{b}.attentions.{j}.{rest}"),
                _ => return None,
            });
        }
        if let Some(rest) = key.strip_prefix("middle_block.") {
            let (m, rest) = split_index(rest)?;
            return Some(match m {
                0 | 2 => format!("mid_block.resnets.{}.{}", m / 2, resnet(rest)),
                1 => format!("mid_block.attentions.0.{rest}"),
                _ => return None,
            });
        }
        const TOP: [(&str, &str); 6] = [
            ("time_embed.0.", "time_embedding.linear_1."),
            ("time_embed.2.", "time_embedding.linear_2."),
            ("label_emb.0.0.", "add_embedding.linear_1."),
            ("label_emb.0.2.", "add_embedding.linear_2."),
            ("out.0.", "conv_norm_out."),
            ("out.2.", "conv_out."),
        ];
        TOP.iter()
            .find_map(|(ldm, d)| key.strip_prefix(ldm).map(|t| format!("{d}{t}")))
    })();
    one(mapped.unwrap_or_else(|| key.to_string()))
}

/// LDM VAE resnet names -> diffusers' (only the shortcut differs).
fn vae_resnet(rest: &str) -> String {
    match rest.strip_prefix("nin_shortcut.") {
        Some(tail) => format!("conv_shortcut.{tail}"),
        None => rest.to_string(),
    }
}

/// The mid-block attention (`attn_1`): renamed, and its 1x1 convs read as linears.
fn vae_attention(prefix: &str, rest: &str) -> Targets {
    const MAP: [(&str, &str); 5] = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ];
    for (ldm, d) in MAP {
        if let Some(tail) = rest.strip_prefix(ldm) {
            let t = if d != "group_norm." && tail == "weight" {
                Transform::Squeeze
            } else {
                Transform::Identity
            };
            return vec![(format!("{prefix}.attentions.0.{d}{tail}"), t)];
        }
    }
    one(format!("{prefix}.attn_1.{rest}"))
}

/// One VAE key (without `first_stage_model.`); `levels` is the number of resolution levels
/// (the decoder's `up.I` run from the lowest resolution, diffusers' `up_blocks` from the
/// highest).
pub fn vae(key: &str, levels: usize) -> Targets {
    let mapped = (|| -> Option<Targets> {
        let (part, rest) = key.split_once('.')?;
        if part != "encoder" && part != "decoder" {
            return None;
        }
        if let Some(mid) = rest.strip_prefix("mid.") {
            let p = format!("{part}.mid_block");
            return Some(if let Some(r) = mid.strip_prefix("attn_1.") {
                vae_attention(&p, r)
            } else if let Some(r) = mid.strip_prefix("block_1.") {
                one(format!("{p}.resnets.0.{}", vae_resnet(r)))
            } else {
                one(format!(
                    "{p}.resnets.1.{}",
                    vae_resnet(mid.strip_prefix("block_2.")?)
                ))
            });
        }
        if let Some(tail) = rest.strip_prefix("norm_out.") {
            return Some(one(format!("{part}.conv_norm_out.{tail}")));
        }
        let (dir, blocks) = match part {
            "encoder" => ("down", "down_blocks"),
            _ => ("up", "up_blocks"),
        };
        let (i, r) = split_index(rest.strip_prefix(dir)?.strip_prefix('.')?)?;
        let level = if part == "decoder" {
            levels.checked_sub(1 + i)?
        } else {
            i
        };
        let b = format!("{part}.{blocks}.{level}");
        if let Some(r) = r.strip_prefix("block.") {
            let (j, r) = split_index(r)?;
            return Some(one(format!("{b}.resnets.{j}.{}", vae_resnet(r))));
        }
        let r = r
            .strip_prefix("downsample.")
            .or_else(|| r.strip_prefix("upsample."))?;
        let kind = if dir == "down" {
            "downsamplers"
        } else {
            "upsamplers"
        };
        Some(one(format!("{b}.{kind}.0.{r}")))
    })();
    mapped.unwrap_or_else(|| one(key.to_string()))
}

/// One key of a transformers `CLIPTextModel` saved under `cond_stage_model.transformer.`
/// (older files lack the `text_model.` level). `None`: a buffer the model derives.
pub fn clip(key: &str) -> Option<Targets> {
    if key.ends_with("position_ids") {
        return None;
    }
    Some(one(if key.starts_with("text_model.") {
        key.to_string()
    } else {
        format!("text_model.{key}")
    }))
}

/// One OpenCLIP text-tower key (without `cond_stage_model.model.`): fused `in_proj` split into
/// q/k/v rows, `text_projection` transposed (kept only `with_projection`, for
/// `CLIPTextModelWithProjection`), resblocks from `layers` on dropped (SD 2.x conditions on
/// the penultimate layer, so its text encoder has one layer less than the tower).
/// `None`: skipped.
pub fn open_clip(key: &str, layers: usize, with_projection: bool) -> Option<Targets> {
    let t = "text_model";
    match key {
        "token_embedding.weight" => return Some(one(format!("{t}.embeddings.{key}"))),
        "positional_embedding" => {
            return Some(one(format!("{t}.embeddings.position_embedding.weight")))
        }
        "text_projection" if with_projection => {
            return Some(vec![(
                "text_projection.weight".into(),
                Transform::Transpose,
            )])
        }
        "text_projection" | "logit_scale" | "attn_mask" => return None,
        _ => {}
    }
    if let Some(tail) = key.strip_prefix("ln_final.") {
        return Some(one(format!("{t}.final_layer_norm.{tail}")));
    }
    let Some((i, rest)) = key
        .strip_prefix("transformer.resblocks.")
        .and_then(split_index)
    else {
        return Some(one(key.to_string()));
    };
    if i >= layers {
        return None;
    }
    let l = format!("{t}.encoder.layers.{i}");
    if let Some(kind) = rest.strip_prefix("attn.in_proj_") {
        return Some(
            ["q", "k", "v"]
                .iter()
                .enumerate()
                .map(|(part, p)| {
                    let name = format!("{l}.self_attn.{p}_proj.{kind}");
                    (name, Transform::Rows { part, of: 3 })
                })
                .collect(),
        );
    }
    const MAP: [(&str, &str); 5] = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    Some(one(MAP
        .iter()
        .find_map(|(o, d)| rest.strip_prefix(o).map(|tail| format!("{l}.{d}{tail}")))
        .unwrap_or_else(|| format!("{l}.{rest}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(t: Targets) -> String {
        t[0].0.clone()
    }

    #[test]
    fn unet_blocks_of_sd15() {
        let l = UNetLayout { layers: 2 };
        let cases = [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "middle_block.2.out_layers.3.bias",
                "mid_block.resnets.1.conv2.bias",
            ),
            (
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.norm.weight",
                "up_blocks.1.attentions.2.norm.weight",
            ),
            (
                "output_blocks.11.0.emb_layers.1.weight",
                "up_blocks.3.resnets.2.time_emb_proj.weight",
            ),
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, d) in cases {
            assert_eq!(name(unet(ldm, l)), d, "{ldm}");
        }
        let keys = [
            "input_blocks.1.0.x",
            "input_blocks.3.0.op.weight",
            "input_blocks.6.0.op.weight",
        ];
        assert_eq!(UNetLayout::infer(&keys), Some(l));
    }

    #[test]
    fn vae_levels_reverse_in_the_decoder() {
        let cases = [
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.0.downsample.conv.bias",
                "encoder.down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "decoder.up.3.block.2.conv1.weight",
                "decoder.up_blocks.0.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.block_2.norm1.bias",
                "decoder.mid_block.resnets.1.norm1.bias",
            ),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (ldm, d) in cases {
            assert_eq!(name(vae(ldm, 4)), d, "{ldm}");
        }
        assert_eq!(
            vae("encoder.mid.attn_1.proj_out.weight", 4),
            vec![(
                "encoder.mid_block.attentions.0.to_out.0.weight".into(),
                Transform::Squeeze
            )]
        );
        assert_eq!(
            vae("decoder.mid.attn_1.norm.weight", 4),
            one("decoder.mid_block.attentions.0.group_norm.weight".into())
        );
    }

    #[test]
    fn open_clip_splits_qkv_and_drops_the_last_layer() {
        let t = open_clip("transformer.resblocks.1.attn.in_proj_weight", 2, false).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[2].0,
            "text_model.encoder.layers.1.self_attn.v_proj.weight"
        );
        assert_eq!(t[2].1, Transform::Rows { part: 2, of: 3 });
        assert!(open_clip("transformer.resblocks.2.ln_1.weight", 2, false).is_none());
        assert!(open_clip("text_projection", 2, false).is_none());
        assert_eq!(
            open_clip("text_projection", 2, true).unwrap()[0].1,
            Transform::Transpose
        );
        assert_eq!(
            name(open_clip("transformer.resblocks.0.mlp.c_proj.bias", 2, false).unwrap()),
            "text_model.encoder.layers.0.mlp.fc2.bias"
        );
        assert_eq!(
            name(clip("embeddings.token_embedding.weight").unwrap()),
            "text_model.embeddings.token_embedding.weight"
        );
        assert!(clip("text_model.embeddings.position_ids").is_none());
    }
}
