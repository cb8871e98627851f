//! Stable unCLIP (DALL-E 2's decoder side) against diffusers' `StableUnCLIPImg2ImgPipeline` on
//! the tiny folder tests/fixtures/unclip_tiny (tools/fixtures/unclip.py): the image embedding
//! (CLIPImageProcessor + CLIPVisionModelWithProjection), `noise_image_embeddings` (normalizer,
//! the noising scheduler's add_noise, the level's sinusoidal embedding), the U-Net with
//! `class_embed_type: "projection"`, and every step's latents and the image end to end, with
//! diffusers' latents and embedding noise handed in. Also the policy's errors for
//! `--variation` / `--noise-level`.
//!
//! Tolerances (max |err| <= rel x max |ref|): pixel values exact; image embeddings and class
//! labels 1e-5; the U-Net 1e-4 (1e-2 with f16 storage); latents through 2-3 U-Net calls and
//! DDIM steps 1e-4 (as tests/pipeline.rs); the image within one level of 255 on at most 1% of
//! the values.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use common::ctx;
use fixture::{close_rel, dir, Io};
use hoa::clip::decode_image;
use hoa::config::UNet2DConditionModelConfig;
use hoa::model_files::DirFiles;
use hoa::model_info::ModelInfo;
use hoa::models::unet_2d_condition::UNet2DConditionModel;
use hoa::options::Variation;
use hoa::pipeline::{Event, GenerateOptions, Pipeline};
use hoa::request::{Origin, Request};
use hoa::resolve::{resolve, DeviceLimits};
use hoa::weights::{Loader, Weights};
use hoa::{DType, Tensor};

const NAME: &str = "unclip_tiny";
const EMBED_REL: f64 = 1e-5;
const UNET_REL: f64 = 1e-4;
const LATENT_REL: f64 = 1e-4;

fn load() -> Option<(&'static hoa::Context, Pipeline)> {
    let c = ctx()?;
    let files = DirFiles::open(dir(NAME)).unwrap();
    Some((c, Pipeline::load(c, &files, DType::F32).unwrap()))
}

fn image() -> hoa::image_io::RgbImage {
    let bytes = std::fs::read(dir(NAME).join("image.png")).unwrap();
    decode_image(&bytes, "image.png").unwrap()
}

#[test]
fn unclip_image_embedding_and_its_noising_match_diffusers() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let enc = p.unclip.as_ref().expect("a stable unCLIP folder");
    let (px, _) = enc.feature_extractor.preprocess(&image()).unwrap();
    assert_eq!(px, io.f32("cfg.pixel_values").0, "pixel_values");
    let embeds = enc.image_embeds(c, &image()).unwrap();
    let r = close_rel(
        "image_embeds",
        &embeds,
        &io.f32("cfg.image_embeds"),
        EMBED_REL,
        c,
    )
    .unwrap();
    eprintln!("image_embeds: {r:.2e}");
    // noise_image_embeddings on diffusers' embedding: the noised half of class_labels.
    let (want_embeds, _) = io.f32("cfg.image_embeds");
    for (case, level, rows) in [("cfg", 0, 4), ("noised", 250, 1)] {
        let (noise, _) = io.f32(&format!("{case}.noise"));
        let (labels, shape) = io.f32(&format!("{case}.unet.class_labels"));
        let d = want_embeds.len();
        assert_eq!(shape, [rows, 2 * d]);
        let got = enc.noise_embeds(&want_embeds, level, &noise).unwrap();
        let want = &labels[(rows - 1) * 2 * d..][..d];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= EMBED_REL as f32 * scale,
                "{case} [{i}]: {g} vs {w}"
            );
        }
    }
    // Guidance's unconditional rows are zeros, the noise level's embedding included.
    let (labels, _) = io.f32("cfg.unet.class_labels");
    assert!(labels[..2 * 2 * want_embeds.len()]
        .iter()
        .all(|&v| v == 0.0));
}

#[test]
fn unclip_unet_with_class_labels_matches_diffusers() {
    let Some(c) = ctx() else { return };
    let io = Io::load(NAME);
    let unet_dir = dir(NAME).join("unet");
    let cfg = UNet2DConditionModelConfig::from_json(
        &std::fs::read(unet_dir.join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg.class_projection(), Some(32));
    let f = "diffusion_pytorch_model.safetensors";
    let w = Weights::from_bytes(f, std::fs::read(unet_dir.join(f)).unwrap()).unwrap();
    for dt in common::dtypes(c) {
        // f16 storage rounds every weight and activation: the model tests' 1e-2.
        let rel = if dt == DType::F32 { UNET_REL } else { 1e-2 };
        let unet = UNet2DConditionModel::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        for case in ["cfg", "noised"] {
            let k = |s: &str| format!("{case}.unet.{s}");
            let sample = io.tensor(c, &k("sample"), dt);
            let ehs = io.tensor(c, &k("encoder_hidden_states"), dt);
            let labels = io.tensor(c, &k("class_labels"), dt);
            let (t, _) = io.f32(&k("timestep"));
            let class_emb = unet.class_embed(c, &labels).unwrap();
            let out = unet
                .forward_with(c, &sample, &t, &ehs, Some(&class_emb))
                .unwrap();
            let r = close_rel(&k("out"), &out.sample, &io.f32(&k("out")), rel, c).unwrap();
            eprintln!("{case} unet {dt:?}: {r:.2e}");
            // Without its class embedding the U-Net refuses, naming it.
            let e = unet
                .forward(c, &sample, &t, &ehs)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("class_labels"), "{e}");
        }
    }
    // Class types hoa does not run, and a projection without its width, are named.
    for (json, field) in [
        (r#"{"class_embed_type": "timestep"}"#, "class_embed_type"),
        (
            r#"{"class_embed_type": "projection"}"#,
            "projection_class_embeddings_input_dim",
        ),
        (
            r#"{"class_embeddings_concat": true}"#,
            "class_embeddings_concat",
        ),
    ] {
        let e = UNet2DConditionModelConfig::from_json(json.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{field}`")), "{json}: {e}");
    }
}

fn check_case(c: &hoa::Context, p: &Pipeline, io: &Io, case: &str, opts: &GenerateOptions) {
    let mut steps: Vec<Tensor> = Vec::new();
    let images = pollster::block_on(p.generate(c, opts, &mut |ev| {
        if let Event::Step { latents, .. } = ev {
            steps.push(latents.clone())
        }
    }))
    .unwrap();
    assert_eq!(steps.len(), opts.steps);
    for (i, s) in steps.iter().enumerate() {
        let want = io.f32(&format!("{case}.step{i}"));
        let r = close_rel(&format!("{case} step {i}"), s, &want, LATENT_REL, c).unwrap();
        eprintln!("{case} step {i}: max err / max |ref| = {r:.2e}");
    }
    let image: Vec<u8> = images.iter().flat_map(|im| im.data.clone()).collect();
    let (want, shape) = io.f32(&format!("{case}.image"));
    assert_eq!(shape, [opts.batch, 24, 32, 3]);
    let mut off_by_one = 0;
    for (i, (&g, &w)) in image.iter().zip(&want).enumerate() {
        let d = (g as f32 - (w * 255.0).round()).abs();
        assert!(d <= 1.0, "{case} pixel {i}: {g} vs diffusers {}", w * 255.0);
        off_by_one += (d > 0.0) as usize;
    }
    assert!(
        off_by_one * 100 <= image.len(),
        "{case}: {off_by_one} values differ"
    );
}

#[test]
fn unclip_variations_match_diffusers_end_to_end() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let (latents, _) = io.f32("latents");
    let variation = |case: &str, level| Variation {
        image: image(),
        noise_level: level,
        noise: Some(io.f32(&format!("{case}.noise")).0),
    };
    // noise_level 0, guidance 3 (zeros as the unconditional class labels), 2 images.
    let opts = GenerateOptions {
        width: 32,
        height: 24,
        steps: 3,
        guidance: 3.0,
        batch: 2,
        latents: Some(latents.clone()),
        variation: Some(variation("cfg", 0)),
        ..Default::default()
    };
    check_case(c, &p, &io, "cfg", &opts);
    let split = GenerateOptions {
        split_guidance: true,
        ..opts.clone()
    };
    check_case(c, &p, &io, "cfg", &split);
    // noise_level 250 with a prompt, no guidance.
    let n = latents.len() / 2;
    let opts = GenerateOptions {
        prompt: "a red circle".into(),
        width: 32,
        height: 24,
        steps: 2,
        guidance: 1.0,
        batch: 1,
        latents: Some(latents[..n].to_vec()),
        variation: Some(variation("noised", 250)),
        ..Default::default()
    };
    check_case(c, &p, &io, "noised", &opts);
    // Without an image the unCLIP U-Net has nothing to condition on: refused before any work.
    let plain = GenerateOptions {
        variation: None,
        ..opts
    };
    let e = pollster::block_on(p.generate(c, &plain, &mut |_| {}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("makes variations of an image"), "{e}");
}

fn limits() -> DeviceLimits {
    DeviceLimits {
        max_binding_bytes: 1 << 27,
        dtype_size: 4,
        host_memory: false,
    }
}

fn cli(variation: bool) -> Request {
    Request {
        variation: variation.then(image),
        origin: Origin::Cli,
        ..Default::default()
    }
}

#[test]
fn variation_requests_resolve_through_the_policy_with_clear_errors() {
    let unclip = ModelInfo::read(&DirFiles::open(dir(NAME)).unwrap()).unwrap();
    let u = unclip.unclip.expect("a stable unCLIP folder");
    assert_eq!((u.image_embed_dim, u.noise_levels), (16, 1000));
    // No prompt needed; noise level 0 by default; the PNG's parameters say it.
    let r = resolve(&cli(true), &unclip, limits()).unwrap();
    let v = r.options.variation.as_ref().unwrap();
    assert_eq!((v.noise_level, r.options.prompt.as_str()), (0, ""));
    let text = r.parameters("unclip_tiny", 0).to_text();
    assert!(text.contains("Variation noise level: 0"), "{text}");
    let req = Request {
        noise_level: Some(250),
        ..cli(true)
    };
    let r = resolve(&req, &unclip, limits()).unwrap();
    assert_eq!(r.options.variation.unwrap().noise_level, 250);
    let err =
        |req: &Request, info: &ModelInfo| resolve(req, info, limits()).unwrap_err().to_string();
    let e = err(
        &Request {
            noise_level: Some(1000),
            ..cli(true)
        },
        &unclip,
    );
    assert!(
        e.contains("--noise-level: must be between 0 and 999, got 1000"),
        "{e}"
    );
    let e = err(
        &Request {
            prompt: Some("a".into()),
            ..cli(false)
        },
        &unclip,
    );
    assert!(e.contains("--variation: is required"), "{e}");
    let e = err(
        &Request {
            init_image: Some(image()),
            ..cli(true)
        },
        &unclip,
    );
    assert!(
        e.contains("--variation: and --init-image cannot be combined"),
        "{e}"
    );
    // A plain text-to-image folder has no image encoder: the flag and the folder are named.
    let plain = ModelInfo::read(&DirFiles::open(dir("pipeline_tiny")).unwrap()).unwrap();
    assert!(plain.unclip.is_none());
    let e = err(&cli(true), &plain);
    assert!(
        e.contains("--variation") && e.contains("no image_encoder/"),
        "{e}"
    );
    let e = err(
        &Request {
            prompt: Some("a".into()),
            noise_level: Some(3),
            ..cli(false)
        },
        &plain,
    );
    assert!(e.contains("--noise-level: needs --variation"), "{e}");
}

#[test]
fn a_stable_unclip_folder_missing_a_component_is_named() {
    let tmp = std::env::temp_dir().join(format!("hoa-unclip-{}", std::process::id()));
    fixture::copy_dir(&dir(NAME), &tmp);
    std::fs::remove_dir_all(tmp.join("image_normalizer")).unwrap();
    let e = ModelInfo::read(&DirFiles::open(&tmp).unwrap())
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(
        e.contains("`image_normalizer`") && e.contains("image_normalizer/"),
        "{e}"
    );
}
