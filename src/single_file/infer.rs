//! The diffusers configs a single-file checkpoint implies, read from its keys and shapes as
//! diffusers' `create_unet_diffusers_config_from_ldm` / `create_vae_diffusers_config_from_ldm`
//! and stable-diffusion.cpp's `get_sd_version` do: every size the shapes tell (channels, block
//! and layer counts, context widths, linear or conv projections, vocabulary and positions);
//! family constants only for what they cannot (head counts, group norm groups, activation,
//! the scheduler and the VAE's scaling factor).

use super::{Family, Prediction, TextKind, OPEN_CLIP, TEXT_CLIP, UNET, VAE};
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
/// down block: [`unet_sizes`] plus the family's head counts and sample size.
pub fn unet(w: &Weights, layers: usize, family: Family, prediction: Prediction) -> Result<Value> {
    let mut c = unet_sizes(w, layers)?;
    let channels: Vec<usize> = serde_json::from_value(c["block_out_channels"].clone())
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    c["attention_head_dim"] = match family {
        // SD 1.x: 8 heads everywhere (diffusers' `attention_head_dim: 8`).
        Family::Sd1 => json!(8),
        // SD 2.x: heads of 64 channels.
        Family::Sd2 => {
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
    c["sample_size"] = json!(if prediction == Prediction::V { 96 } else { 64 });
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

/// `vae/config.json` for the VAE under `first_stage_model.`.
pub fn vae(w: &Weights) -> Result<Value> {
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
        "scaling_factor": 0.18215,
    }))
}

/// `text_encoder/config.json`: transformers' `CLIPTextConfig` of the file's text tower (SD 2.x's
/// with the last OpenCLIP layer dropped). Heads of 64 channels, as CLIP ViT-L/14 and
/// OpenCLIP ViT-H/14 have.
pub fn text_encoder(w: &Weights, kind: TextKind) -> Result<Value> {
    let (token, position, layer0, layers, act) = match kind {
        TextKind::Clip => {
            let p = if w
                .shape(&format!(
                    "{TEXT_CLIP}text_model.embeddings.token_embedding.weight"
                ))
                .is_some()
            {
                format!("{TEXT_CLIP}text_model.")
            } else {
                TEXT_CLIP.to_string()
            };
            let layers = count(w, &format!("{p}encoder.layers."), "");
            (
                format!("{p}embeddings.token_embedding.weight"),
                format!("{p}embeddings.position_embedding.weight"),
                format!("{p}encoder.layers.0.mlp.fc1.weight"),
                layers,
                "quick_gelu",
            )
        }
        TextKind::OpenClip => {
            let layers = count(w, &format!("{OPEN_CLIP}transformer.resblocks."), "");
            (
                format!("{OPEN_CLIP}token_embedding.weight"),
                format!("{OPEN_CLIP}positional_embedding"),
                format!("{OPEN_CLIP}transformer.resblocks.0.mlp.c_fc.weight"),
                layers.saturating_sub(1),
                "gelu",
            )
        }
    };
    let (vocab, hidden) = (dim(w, &token, 0)?, dim(w, &token, 1)?);
    if hidden % 64 != 0 || layers == 0 {
        return Err(Error::Checkpoint(format!(
            "{}: a text encoder {hidden} wide with {layers} layers is no CLIP tower of 64-wide \
             heads (pass --config DIR)",
            w.describe()
        )));
    }
    Ok(json!({
        "architectures": ["CLIPTextModel"],
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
    }))
}

/// `scheduler/scheduler_config.json`: Stable Diffusion 1.x/2.x's noise schedule
/// (scaled_linear 0.00085..0.012 over 1000 steps, leading spacing, steps_offset 1) under DDIM,
/// as diffusers' single-file loader defaults.
pub fn scheduler(prediction: Prediction) -> Value {
    json!({
        "_class_name": "DDIMScheduler",
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
