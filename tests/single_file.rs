//! Single-file LDM checkpoints (tests/fixtures/single_file, written by
//! tools/fixtures/make_single_file.py through tools/ldm_single_file.py and checked there with
//! diffusers' `from_single_file`): each family's file gives the diffusers folder's tensors,
//! sizes and images; detection, the built-in CLIP tokenizer, and each bad input's message.

#[path = "common/cli.rs"]
mod cli;
mod common;
use cli::hoa;
#[path = "common/fixture.rs"]
mod fixture;

use fixture::dir;
use hoa::model_files::{component_weights, open_model, DirFiles, ModelFiles};
use hoa::pipeline::{GenerateOptions, Pipeline};
use hoa::single_file::{detect, infer, Family, Prediction, SingleFile, TextKind};
use hoa::weights::Weights;
use hoa::DType;
use std::path::PathBuf;

const FAMILIES: [&str; 4] = ["sd1", "sd2", "sd1_inpaint", "sdxl"];

fn file(kind: &str) -> PathBuf {
    dir("single_file").join(format!("{kind}.safetensors"))
}

fn folder(kind: &str) -> PathBuf {
    dir("single_file").join(kind)
}

/// The file read with the folder's configs (`--config`), as diffusers' `config=`.
fn with_config(kind: &str) -> SingleFile {
    let cfg = Box::new(DirFiles::open(folder(kind)).unwrap());
    SingleFile::open(&file(kind), Some(cfg)).unwrap()
}

fn raw(kind: &str) -> Weights {
    Weights::from_bytes(
        &format!("{kind}.safetensors"),
        std::fs::read(file(kind)).unwrap(),
    )
    .unwrap()
}

#[test]
fn every_family_gives_the_folders_tensors_exactly() {
    for kind in FAMILIES {
        let single = with_config(kind);
        let dirs = DirFiles::open(folder(kind)).unwrap();
        let xl = kind == "sdxl";
        let comps = ["unet", "vae", "text_encoder", "text_encoder_2"];
        for comp in &comps[..if xl { 4 } else { 3 }] {
            let a = component_weights(&dirs, comp).unwrap();
            let b = component_weights(&single, comp).unwrap();
            // transformers 5 saves CLIPTextModel without the `text_model.` level.
            let norm = |n: &str| n.strip_prefix("text_model.").unwrap_or(n).to_string();
            let mut an: Vec<String> = a.names().map(norm).collect();
            let mut bn: Vec<String> = b.names().map(norm).collect();
            an.sort();
            bn.sort();
            assert_eq!(an, bn, "{kind} {comp}: names");
            for n in b.names() {
                let m = if a.shape(n).is_some() {
                    n.to_string()
                } else {
                    norm(n)
                };
                assert_eq!(a.shape(&m), b.shape(n), "{kind} {comp} {n}: shape");
                let (x, y) = (a.read_f32(&m).unwrap(), b.read_f32(n).unwrap());
                assert!(
                    x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{kind} {comp} {n}: values differ"
                );
            }
        }
    }
}

#[test]
fn detection_reads_family_inpainting_and_prediction() {
    let d = detect(&raw("sd1")).unwrap();
    assert_eq!(
        (d.family, d.inpainting, d.text),
        (Family::Sd1, false, Some(TextKind::Clip))
    );
    assert_eq!(d.prediction, Prediction::Epsilon);
    let d = detect(&raw("sd2")).unwrap();
    assert_eq!((d.family, d.text), (Family::Sd2, Some(TextKind::OpenClip)));
    assert_eq!(d.prediction, Prediction::V);
    let d = detect(&raw("sd1_inpaint")).unwrap();
    assert_eq!((d.family, d.inpainting), (Family::Sd1, true));
    assert_eq!(d.family_name(), "SD 1.x inpainting");
    let d = detect(&raw("sdxl")).unwrap();
    assert_eq!((d.family, d.text), (Family::Sdxl, Some(TextKind::Clip)));
    assert_eq!(d.prediction, Prediction::Epsilon);
}

/// The sizes the shapes tell equal the folder's config (heads and group counts are family
/// constants, which tiny models do not follow: they need --config).
#[test]
fn inferred_configs_match_the_folders_sizes() {
    for kind in FAMILIES {
        let w = raw(kind);
        let keys: Vec<&str> = w
            .names()
            .filter_map(|k| k.strip_prefix(hoa::single_file::UNET))
            .collect();
        let layout = hoa::single_file::keys::UNetLayout::infer(&keys).unwrap();
        let got = infer::unet_sizes(&w, layout.layers).unwrap();
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder(kind).join("unet/config.json")).unwrap())
                .unwrap();
        for f in [
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "down_block_types",
            "up_block_types",
            "cross_attention_dim",
            "use_linear_projection",
            "transformer_layers_per_block",
        ] {
            assert_eq!(got[f], want[f], "{kind} unet {f}");
        }
        let got = infer::vae(&w, kind == "sdxl").unwrap();
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder(kind).join("vae/config.json")).unwrap())
                .unwrap();
        for f in [
            "in_channels",
            "out_channels",
            "latent_channels",
            "block_out_channels",
            "layers_per_block",
            "down_block_types",
            "up_block_types",
            "mid_block_add_attention",
        ] {
            assert_eq!(got[f], want[f], "{kind} vae {f}");
        }
    }
}

#[test]
fn a_tiny_file_without_config_asks_for_one() {
    let e = SingleFile::open(&file("sd1"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("sd1.safetensors") && e.contains("--config DIR"),
        "{e}"
    );
    let e = SingleFile::open(&file("sd2"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("64-wide heads") && e.contains("--config DIR"),
        "{e}"
    );
}

fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hoa-sf-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn open_err(p: &std::path::Path) -> String {
    let e = open_model(p, None).err().unwrap().to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn bad_files_are_one_line_errors() {
    let e = open_err(&tmp("model.ckpt", b"PK\x03\x04"));
    assert!(e.contains("pickle") && e.contains("safetensors"), "{e}");
    let bytes = std::fs::read(file("sd1")).unwrap();
    let e = open_err(&tmp("cut.safetensors", &bytes[..bytes.len() / 2]));
    assert!(
        e.contains("cut.safetensors") && e.contains("truncated"),
        "{e}"
    );
    let e = open_err(&dir("pipeline_tiny").join("io.safetensors"));
    assert!(e.contains("no Stable Diffusion checkpoint"), "{e}");
    let e = open_err(&folder("sd1").join("unet/diffusion_pytorch_model.safetensors"));
    assert!(e.contains("component of a diffusers folder"), "{e}");
    let lora = safetensors::serialize(
        [(
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4])
                .unwrap(),
        )],
        None,
    )
    .unwrap();
    let e = open_err(&tmp("style.safetensors", &lora));
    assert!(e.contains("is a LoRA") && e.contains("--lora"), "{e}");
}

#[test]
fn builtin_clip_tokenizer_matches_transformers() {
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir("single_file").join("clip_bpe_ids.json")).unwrap(),
    )
    .unwrap();
    for (key, pad) in [("sd1", "<|endoftext|>"), ("sd2", "!")] {
        let tok_json = match key {
            "sd1" => hoa::clip_vocab::tokenizer_json(),
            _ => hoa::clip_vocab::tokenizer_json_pad_bang(),
        }
        .unwrap();
        let cfg = serde_json::json!({"model_max_length": 77, "pad_token": pad}).to_string();
        let tok =
            hoa::tokenizer::Tokenizer::from_bytes(&tok_json, Some(cfg.as_bytes()), 77).unwrap();
        for (i, p) in json["prompts"].as_array().unwrap().iter().enumerate() {
            let want: Vec<u32> = serde_json::from_value(json[key][i].clone()).unwrap();
            let got = tok.encode(p.as_str().unwrap()).unwrap().ids;
            assert_eq!(got, want, "{key} prompt {i}: {p}");
        }
    }
}

/// Same tensors, so the same pixels: the file through the whole pipeline equals the folder.
#[test]
fn single_file_images_equal_the_folders() {
    let Some(c) = common::ctx() else { return };
    // SDXL's single file runs through the SDXL pipeline (both encoders, text_time); its tiny
    // U-Net needs a larger side.
    for (kind, side) in [("sd1", 16), ("sd2", 16), ("sdxl", 32)] {
        let opts = GenerateOptions {
            prompt: "a red circle left of a blue square".into(),
            negative_prompt: "green".into(),
            width: side,
            height: side,
            steps: 3,
            guidance: 4.0,
            seed: 7,
            ..Default::default()
        };
        let run = |files: &dyn ModelFiles| {
            let p = Pipeline::load(c, files, DType::F32).unwrap();
            pollster::block_on(p.generate(c, &opts, &mut |_| {})).unwrap()
        };
        let a = run(&DirFiles::open(folder(kind)).unwrap());
        let b = run(&with_config(kind));
        assert_eq!(a[0].data, b[0].data, "{kind}: images differ");
    }
}

#[test]
fn hoa_info_names_family_prediction_and_dtypes() {
    let (f, c) = (file("sd2"), folder("sd2"));
    let out = hoa(&[
        "info",
        "--model",
        f.to_str().unwrap(),
        "--config",
        c.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for want in [
        "SD 2.x",
        "v_prediction",
        "unet:",
        "vae:",
        "text_encoder:",
        "F16",
        "file:",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    let out = hoa(&["info", "--model", folder("sd1_inpaint").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("inpainting"));
    let (f, c) = (file("sdxl"), folder("sdxl"));
    let out = hoa(&[
        "info",
        "--model",
        f.to_str().unwrap(),
        "--config",
        c.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("SDXL") && text.contains("text_encoder_2:"));
    let ckpt = tmp("info.ckpt", b"PK");
    let out = hoa(&["info", "--model", ckpt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("pickle") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn hoa_generate_takes_a_single_file_with_its_config() {
    if common::ctx().is_none() {
        return;
    }
    let d = std::env::temp_dir().join(format!("hoa-sf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let png = |model: &std::path::Path, extra: &[&str], name: &str| {
        let out = d.join(name);
        let mut args = vec![
            "generate",
            "a red circle",
            "--model",
            model.to_str().unwrap(),
        ];
        args.extend(extra);
        args.extend([
            "--width", "16", "--height", "16", "--steps", "2", "--force", "--out",
        ]);
        args.push(out.to_str().unwrap());
        assert!(hoa(&args).status.success());
        let img = hoa::image_io::decode_rgb(&std::fs::read(&out).unwrap(), name).unwrap();
        img.data
    };
    let c = folder("sd2");
    let a = png(&c, &[], "folder.png");
    let b = png(&file("sd2"), &["--config", c.to_str().unwrap()], "file.png");
    assert_eq!(a, b);
    // --prediction overrides the scheduler config's v_prediction: another image.
    let e = png(&c, &["--prediction", "epsilon"], "eps.png");
    assert_ne!(a, e);
    let out = hoa(&[
        "generate",
        "x",
        "--model",
        c.to_str().unwrap(),
        "--prediction",
        "x0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--prediction") && err.contains("v_prediction"),
        "{err}"
    );
}
