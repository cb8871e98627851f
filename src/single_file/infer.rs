//! The diffusers configs a single-file checkpoint implies, read from its keys and shapes as
//! diffusers' `create_unet_diffusers_config_from_ldm` / `create_vae_diffusers_config_from_ldm`
//! and stable-diffusion.cpp's `get_sd_version` do: every size the shapes tell (channels, block
//! and layer counts, context widths, linear or conv projections, vocabulary and positions);
//! family constants only for what they cannot (head counts, group norm groups, activation,
//! the scheduler and the VAE's scaling factor).

use super::{Detected, Family, Prediction, TextKind, TextTower, UNET, VAE};
use crate::error::{Error, Result};
use crate::weights::Weights;
use serde_json::{json, Value};

/// A stored tensor's shape, or an error naming the key the inference needed.
fn shape<'w>(w: &'w Weights, key: &str) -> Result<&'w [usize]> {
    w.shape(key).ok_or_else(|| {
        Error::Checkpoint(format!(
            "{}: no tensor `{key}`, which an LDM checkpoint of this kind has (pass --config \
             DIR, a diffusers folder whose configs fit the file)",
            w.describe()
        ))
    })
}

fn dim(w: &Weights, key: &str, i: usize) -> Result<usize> {
    let s = shape(w, key)?;
    s.get(i).copied().ok_or_else(|| {
        Error::Checkpoint(format!(
            "{}: tensor `{key}` {s:?} has no dimension {i}",
            w.describe()
        ))
    })
}

/// The largest `N + 1` of keys `{prefix}N.{suffix}`, 0 when there is none.
pub fn count(w: &Weights, prefix: &str, suffix: &str) -> usize {
    w.names()
        .filter_map(|k| {
            let (i, rest) = k.strip_prefix(prefix)?.split_once('.')?;
            rest.starts_with(suffix).then(|| i.parse::<usize>().ok())?
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// `unet/config.json` for the U-Net under `model.diffusion_model.` with `layers` resnets per
/// down block: [`unet_sizes`] plus the family's head counts, sample size and, for SDXL, the
/// `text_time` embedding (its input width read from `label_emb`).
pub fn unet(w: &Weights, layers: usize, d: &Detected, towers: &[TextTower]) -> Result<Value> {
    let mut c = unet_sizes(w, layers)?;
    let channels: Vec<usize> = serde_json::from_value(c["block_out_channels"].clone())
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    c["attention_head_dim"] = match d.family {
        // SD 1.x: 8 heads everywhere (diffusers' `attention_head_dim: 8`).
        Family::Sd1 => json!(8),
        // SD 2.x and SDXL: heads of 64 channels.
        _ => {
            if let Some(c) = channels.iter().find(|&&c| c % 64 != 0) {
                return Err(Error::Checkpoint(format!(
                    "{}: a U-Net block of {c} channels has no whole number of 64-wide heads \
                     (pass --config DIR with its head counts)",
                    w.describe()
                )));
            }
            json!(channels.iter().map(|c| c / 64).collect::<Vec<_>>())
        }
    };
    c["sample_size"] = json!(match d.family {
        Family::Sdxl | Family::SdxlRefiner => 128,
        _ if d.prediction == Prediction::V => 96,
        _ => 64,
    });
    if matches!(d.family, Family::Sdxl | Family::SdxlRefiner) {
        // add_embedding takes the pooled text embedding and 6 (base) or 5 (refiner: no crop
        // target, an aesthetic score) sinusoidal time ids.
        let ids = if d.family == Family::Sdxl { 6 } else { 5 };
        let input = dim(w, &format!("{UNET}label_emb.0.0.weight"), 1)?;
        let pooled = match towers.iter().find(|t| t.with_projection) {
            Some(t) => dim(w, &format!("{}text_projection", t.prefix), 1)?,
            None => 1280,
        };
        let per_id = input
            .checked_sub(pooled)
            .filter(|r| r % ids == 0)
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{}: label_emb takes {input} values, not a {pooled}-wide pooled embedding \
                 plus {ids} time ids (pass --config DIR)",
                    w.describe()
                ))
            })?
            / ids;
        c["addition_embed_type"] = json!("text_time");
        c["addition_time_embed_dim"] = json!(per_id);
        c["projection_class_embeddings_input_dim"] = json!(input);
    }
    Ok(c)
}

/// What the U-Net's shapes tell: channels, blocks, layers, context width, projections.
pub fn unet_sizes(w: &Weights, layers: usize) -> Result<Value> {
    let u = |k: &str| format!("{UNET}{k}");
    let conv_in = shape(w, &u("input_blocks.0.0.weight"))?;
    let in_channels = conv_in.get(1).copied().unwrap_or(0);
    let levels = count(w, &u("input_blocks."), "")
        .saturating_sub(1)
        .div_ceil(layers + 1);
    let mut channels = Vec::new();
    let (mut down, mut up, mut depth) = (Vec::new(), Vec::new(), Vec::new());
    for level in 0..levels {
        let k = 1 + level * (layers + 1);
        channels.push(dim(
            w,
            &u(&format!("input_blocks.{k}.0.out_layers.3.weight")),
            0,
        )?);
        let attn = format!("input_blocks.{k}.1.");
        let t = count(w, &u(&format!("{attn}transformer_blocks.")), "");
        depth.push(t.max(1));
        down.push(if t > 0 {
            "CrossAttnDownBlock2D"
        } else {
            "DownBlock2D"
        });
        let up_attn = w.shape(&u(&format!(
            "output_blocks.{}.1.norm.weight",
            level * (layers + 1)
        )));
        up.push(if up_attn.is_some() {
            "CrossAttnUpBlock2D"
        } else {
            "UpBlock2D"
        });
    }
    let first_attn = w
        .names()
        .filter(|k| k.starts_with(UNET) && k.ends_with("attn2.to_k.weight"))
        .min()
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Checkpoint(format!(
                "{}: the U-Net has no cross-attention",
                w.describe()
            ))
        })?;
    let context = dim(w, &first_attn, 1)?;
    let proj_in = first_attn.replace("transformer_blocks.0.attn2.to_k.weight", "proj_in.weight");
    let linear = shape(w, &proj_in)?.len() == 2;
    let depth = if depth.iter().all(|&d| d == 1) {
        json!(1)
    } else {
        json!(depth)
    };
    Ok(json!({
        "_class_name": "UNet2DConditionModel",
        "in_channels": in_channels,
        "out_channels": dim(w, &u("out.2.weight"), 0)?,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": context,
        "use_linear_projection": linear,
        "transformer_layers_per_block": depth,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "downsample_padding": 1,
    }))
}

/// `vae/config.json` for the VAE under `first_stage_model.` (SDXL's: scaling 0.13025, run in
/// f32 as diffusers' `force_upcast`).
pub fn vae(w: &Weights, xl: bool) -> Result<Value> {
    let v = |k: &str| format!("{VAE}{k}");
    let levels = count(w, &v("encoder.down."), "");
    let layers = count(w, &v("encoder.down.0.block."), "");
    let channels = (0..levels)
        .map(|i| dim(w, &v(&format!("encoder.down.{i}.block.0.conv2.weight")), 0))
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({
        "_class_name": "AutoencoderKL",
        "in_channels": dim(w, &v("encoder.conv_in.weight"), 1)?,
        "out_channels": dim(w, &v("decoder.conv_out.weight"), 0)?,
        "latent_channels": dim(w, &v("decoder.conv_in.weight"), 1)?,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "mid_block_add_attention": w.shape(&v("encoder.mid.attn_1.q.weight")).is_some(),
        "use_quant_conv": w.shape(&v("quant_conv.weight")).is_some(),
        "use_post_quant_conv": w.shape(&v("post_quant_conv.weight")).is_some(),
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 512,
        "scaling_factor": if xl { 0.13025 } else { 0.18215 },
        "force_upcast": xl,
    }))
}

/// A text encoder's `config.json`: transformers' `CLIPTextConfig` of the tower at `t.prefix`
/// (SD 2.x's with the last OpenCLIP layer dropped; SDXL's second with its projection width).
/// Heads of 64 channels, as CLIP ViT-L/14 and OpenCLIP ViT-H/14 and bigG/14 have.
pub fn text_encoder(w: &Weights, t: &TextTower) -> Result<Value> {
    let p = t.prefix;
    let (token, position, layer0, layers, act) = match t.kind {
        TextKind::Clip => {
            let p = if w
                .shape(&format!("{p}text_model.embeddings.token_embedding.weight"))
                .is_some()
            {
                format!("{p}text_model.")
            } else {
                p.to_string()
            };
            (
                format!("{p}embeddings.token_embedding.weight"),
                format!("{p}embeddings.position_embedding.weight"),
                format!("{p}encoder.layers.0.mlp.fc1.weight"),
                count(w, &format!("{p}encoder.layers."), ""),
                "quick_gelu",
            )
        }
        TextKind::OpenClip => (
            format!("{p}token_embedding.weight"),
            format!("{p}positional_embedding"),
            format!("{p}transformer.resblocks.0.mlp.c_fc.weight"),
            count(w, &format!("{p}transformer.resblocks."), "") - usize::from(t.drop_last),
            "gelu",
        ),
    };
    let (vocab, hidden) = (dim(w, &token, 0)?, dim(w, &token, 1)?);
    if hidden % 64 != 0 || layers == 0 {
        return Err(Error::Checkpoint(format!(
            "{}: a text encoder {hidden} wide with {layers} layers is no CLIP tower of 64-wide \
             heads (pass --config DIR)",
            w.describe()
        )));
    }
    let mut c = json!({
        "architectures": [if t.with_projection { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
        "model_type": "clip_text_model",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": dim(w, &layer0, 0)?,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden / 64,
        "max_position_embeddings": dim(w, &position, 0)?,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    });
    if t.with_projection {
        c["projection_dim"] = json!(dim(w, &format!("{p}text_projection"), 1)?);
    }
    Ok(c)
}

/// `scheduler/scheduler_config.json`: Stable Diffusion's noise schedule (scaled_linear
/// 0.00085..0.012 over 1000 steps, leading spacing, steps_offset 1) under DDIM as diffusers'
/// single-file loader defaults for 1.x/2.x, under Euler as SDXL's repositories ship it.
pub fn scheduler(prediction: Prediction, xl: bool) -> Value {
    json!({
        "_class_name": if xl { "EulerDiscreteScheduler" } else { "DDIMScheduler" },
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
        "prediction_type": prediction.as_str(),
        "clip_sample": false,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::single_file::{detect, SDXL_OPEN_CLIP};

    /// A file with only the tensors inference reads (zeros; their shapes are what counts).
    fn file(tensors: &[(&str, Vec<usize>)]) -> Weights {
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, s)| vec![0u8; 2 * s.iter().product::<usize>()])
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .zip(&data)
            .map(|((k, s), d)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), d);
                (k.to_string(), v.unwrap())
            })
            .collect();
        Weights::from_bytes(
            "x.safetensors",
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn sdxl_text_time_sizes_come_from_label_emb_and_the_projection() {
        let u = |k: &str| format!("{UNET}{k}");
        let t = |i: usize| {
            u(&format!(
                "input_blocks.4.1.transformer_blocks.{i}.attn2.to_k.weight"
            ))
        };
        let keys = [
            (u("input_blocks.0.0.weight"), vec![64, 4]),
            (u("input_blocks.1.0.out_layers.3.weight"), vec![64, 1]),
            (u("input_blocks.3.0.op.weight"), vec![64, 1]),
            (u("input_blocks.4.0.out_layers.3.weight"), vec![128, 1]),
            (u("input_blocks.4.1.proj_in.weight"), vec![128, 128]),
            (t(0), vec![128, 96]),
            (t(1), vec![128, 96]),
            (u("input_blocks.5.0.out_layers.3.weight"), vec![128, 1]),
            (u("output_blocks.0.1.norm.weight"), vec![128]),
            (u("out.2.weight"), vec![4, 64]),
            (u("label_emb.0.0.weight"), vec![128, 80]),
            (format!("{SDXL_OPEN_CLIP}text_projection"), vec![64, 32]),
        ];
        let refs: Vec<(&str, Vec<usize>)> =
            keys.iter().map(|(k, s)| (k.as_str(), s.clone())).collect();
        let w = file(&refs);
        let d = detect(&w).unwrap();
        assert_eq!(d.family, Family::Sdxl);
        let towers = d.family.towers();
        let c = unet(&w, 2, &d, &towers[1..]).unwrap();
        assert_eq!(c["addition_embed_type"], "text_time");
        assert_eq!(c["addition_time_embed_dim"], 8);
        assert_eq!(c["projection_class_embeddings_input_dim"], 80);
        assert_eq!(c["attention_head_dim"], json!([1, 2]));
        assert_eq!(c["transformer_layers_per_block"], json!([1, 2]));
        assert_eq!(
            c["down_block_types"],
            json!(["DownBlock2D", "CrossAttnDownBlock2D"])
        );
        assert_eq!(
            c["up_block_types"],
            json!(["CrossAttnUpBlock2D", "UpBlock2D"])
        );
        assert_eq!(c["cross_attention_dim"], 96);
        assert_eq!(c["use_linear_projection"], true);
        assert_eq!(c["sample_size"], 128);
    }
}
