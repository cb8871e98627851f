//! SDXL's U-Net (`addition_embed_type: "text_time"`, per-block `transformer_layers_per_block`)
//! vs diffusers, on the first U-Net call of `StableDiffusionXLPipeline` over the tiny folder
//! tests/fixtures/pipeline_sdxl (tools/fixtures/sdxl.py). Tolerance: max |err| <= 2e-5 x
//! max |reference| in f32 (tighter than the other U-Net tests' 1e-3; observed 4.5e-6), 1e-2 in
//! f16 (observed 2e-3), per block first so a failure names the first block that diverges.

mod common;
#[path = "common/fixture.rs"]
mod fixture;
use common::*;
use fixture::*;
use hoa::config::UNet2DConditionModelConfig;
use hoa::models::unet_2d_condition::{AddedCondKwargs, UNet2DConditionModel};
use hoa::weights::{Loader, Weights};
use hoa::{DType, Tensor};

const NAME: &str = "pipeline_sdxl";

fn unet_config() -> UNet2DConditionModelConfig {
    let json = std::fs::read(dir(NAME).join("unet/config.json")).unwrap();
    UNet2DConditionModelConfig::from_json(&json).unwrap()
}

fn unet_weights() -> Weights {
    let f = "diffusion_pytorch_model.safetensors";
    Weights::from_bytes(f, std::fs::read(dir(NAME).join("unet").join(f)).unwrap()).unwrap()
}

fn sdxl_rel_tol(dt: DType) -> f64 {
    if dt == DType::F32 {
        2e-5
    } else {
        rel_tol(dt)
    }
}

#[test]
fn sdxl_unet_text_time_matches_diffusers() {
    let Some(c) = ctx() else { return };
    let cfg = unet_config();
    assert_eq!(cfg.text_time(), Some((8, 72)));
    let w = unet_weights();
    let io = Io::load(NAME);
    let (t, _) = io.f32("unet.timestep");
    let (time_ids, _) = io.f32("unet.time_ids");
    // diffusers records time_embedding and add_embedding apart; hoa's emb is their sum.
    let (te, shape) = io.f32("unet.time_embedding");
    let (ae, _) = io.f32("unet.add_embedding");
    let emb: Vec<f32> = te.iter().zip(&ae).map(|(a, b)| a + b).collect();
    for dt in dtypes(c) {
        let rel = sdxl_rel_tol(dt);
        let model = UNet2DConditionModel::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let sample = io.tensor(c, "unet.sample", dt);
        let ehs = io.tensor(c, "unet.encoder_hidden_states", dt);
        let text_embeds = io.tensor(c, "unet.text_embeds", dt);
        let added = AddedCondKwargs {
            text_embeds: &text_embeds,
            time_ids: &time_ids,
        };
        let aug = model.aug_embed(c, &added).unwrap();
        let mut worst =
            close_rel("add_embedding", &aug, &io.f32("unet.add_embedding"), rel, c).unwrap();
        let out = model
            .forward_with(c, &sample, &t, &ehs, Some(&aug))
            .unwrap();
        let mut checks = vec![("conv_in".to_string(), &out.conv_in)];
        checks.extend(
            out.down
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("down_blocks.{i}"), x)),
        );
        checks.extend(out.mid.iter().map(|x| ("mid_block".to_string(), x)));
        checks.extend(
            out.up
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("up_blocks.{i}"), x)),
        );
        checks.push(("out".to_string(), &out.sample));
        worst =
            worst.max(close_rel("emb", &out.emb, &(emb.clone(), shape.clone()), rel, c).unwrap());
        for (key, got) in checks {
            let want = io.f32(&format!("unet.{key}"));
            worst = worst.max(close_rel(&format!("{dt:?} {key}"), got, &want, rel, c).unwrap());
        }
        eprintln!("sdxl unet {dt:?}: worst max|err|/max|ref| = {worst:.2e}");
    }
}

#[test]
fn sdxl_unet_refuses_missing_or_malformed_added_conditioning() {
    let Some(c) = ctx() else { return };
    let cfg = unet_config();
    let w = unet_weights();
    let model = UNet2DConditionModel::load(&Loader::new(c, &w, DType::F32), &cfg).unwrap();
    let sample = Tensor::full(c, &[1, 4, 8, 8], 0.0, DType::F32).unwrap();
    let ehs = Tensor::full(c, &[1, 16, 72], 0.0, DType::F32).unwrap();
    let e = model.forward(c, &sample, &[10.0], &ehs).err().unwrap();
    assert!(
        e.to_string().contains("needs its added conditioning"),
        "{e}"
    );
    let text_embeds = Tensor::full(c, &[1, 24], 0.0, DType::F32).unwrap();
    let added = AddedCondKwargs {
        text_embeds: &text_embeds,
        time_ids: &[1.0; 5],
    };
    let e = model.aug_embed(c, &added).err().unwrap();
    assert!(
        e.to_string()
            .contains("projection_class_embeddings_input_dim"),
        "{e}"
    );
}

#[test]
fn sdxl_unet_config_is_checked_naming_the_field() {
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir(NAME).join("unet/config.json")).unwrap())
            .unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut j = base.clone();
        j[k] = v;
        UNet2DConditionModelConfig::from_json(&serde_json::to_vec(&j).unwrap())
    };
    // SDXL base writes upcast_attention null.
    with("upcast_attention", serde_json::Value::Null).unwrap();
    for (k, v, msg) in [
        (
            "projection_class_embeddings_input_dim",
            serde_json::Value::Null,
            "projection_class_embeddings_input_dim` is missing",
        ),
        (
            "addition_time_embed_dim",
            0.into(),
            "addition_time_embed_dim` is 0",
        ),
        (
            "addition_embed_type",
            "text".into(),
            "addition_embed_type` = \"text\"",
        ),
        (
            "reverse_transformer_layers_per_block",
            serde_json::json!([1]),
            "reverse_transformer_layers_per_block` has 1 entries for 2 blocks",
        ),
        (
            "reverse_transformer_layers_per_block",
            serde_json::json!([[1], [2]]),
            "per-layer list",
        ),
    ] {
        let e = with(k, v).err().unwrap().to_string();
        assert!(e.contains(msg), "{k}: {e}");
    }
    // reverse_transformer_layers_per_block replaces the reversed list in the up blocks.
    let c = with(
        "reverse_transformer_layers_per_block",
        serde_json::json!([3, 1]),
    )
    .unwrap();
    let up: Vec<usize> = c
        .up_blocks()
        .unwrap()
        .iter()
        .map(|b| b.transformer_layers)
        .collect();
    assert_eq!(up, [3, 1]);
    let up: Vec<usize> = unet_config()
        .up_blocks()
        .unwrap()
        .iter()
        .map(|b| b.transformer_layers)
        .collect();
    assert_eq!(up, [2, 1]);
}
