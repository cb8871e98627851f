//! The SDXL pipeline against diffusers' `StableDiffusionXLPipeline` on the tiny folder
//! tests/fixtures/pipeline_sdxl (tools/fixtures/sdxl.py): both tokenizers, the prompt
//! embeddings (two encoders' penultimate states side by side, the pooled projection), the
//! micro-conditioning time ids, `force_zeros_for_empty_prompt`, and every step's latents and
//! the image end to end (Euler, as SDXL ships it).

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use common::ctx;
use fixture::{close_rel, copy_dir, dir, Io};
use hoa::model_files::DirFiles;
use hoa::model_info::ModelInfo;
use hoa::options::MicroConditioning;
use hoa::pipeline::{Event, GenerateOptions, Pipeline};
use hoa::request::{Origin, Request};
use hoa::resolve::{resolve, DeviceLimits};
use hoa::{DType, Tensor};

const NAME: &str = "pipeline_sdxl";
const PROMPT: &str = "a red circle left of a blue square";

/// Tolerances: the prompt embeddings pass through 2 layers of small encoders: 1e-5 of max |ref|;
/// the latents through 3-4 U-Net calls and Euler steps: 1e-4 as tests/pipeline.rs.
const EMBED_REL: f64 = 1e-5;
const LATENT_REL: f64 = 1e-4;

fn load() -> Option<(&'static hoa::Context, Pipeline)> {
    let c = ctx()?;
    let files = DirFiles::open(dir(NAME)).unwrap();
    Some((c, Pipeline::load(c, &files, DType::F32).unwrap()))
}

fn ids(io: &Io, key: &str) -> Vec<u32> {
    io.f32(key).0.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn sdxl_folder_is_detected_from_model_index() {
    let files = DirFiles::open(dir(NAME)).unwrap();
    let info = ModelInfo::read(&files).unwrap();
    let sdxl = info.sdxl.as_ref().expect("an SDXL folder");
    assert_eq!(sdxl.text_encoder_2_class, "CLIPTextModelWithProjection");
    assert!(sdxl.force_zeros_for_empty_prompt);
    assert_eq!(info.vae.scaling_factor, 0.13025);
    // Without text_encoder_2 the folder is refused, naming it.
    let tmp = std::env::temp_dir().join(format!("hoa-sdxl-index-{}", std::process::id()));
    copy_dir(&dir(NAME), &tmp);
    let index = tmp.join("model_index.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    j.as_object_mut().unwrap().remove("text_encoder_2");
    std::fs::write(&index, j.to_string()).unwrap();
    let e = ModelInfo::read(&DirFiles::open(&tmp).unwrap())
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(
        e.contains("model_index.json: `text_encoder_2` is missing"),
        "{e}"
    );
}

#[test]
fn sdxl_tokenizers_and_prompt_embeddings_match_diffusers() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let te2 = p.text_encoder_2.as_ref().unwrap();
    for (text, key) in [(PROMPT, "ids.prompt"), ("green", "ids.negative")] {
        assert_eq!(p.tokenizer.encode(text).unwrap().ids, ids(&io, key));
        // tokenizer_2 pads with "!" as SDXL's does.
        let key2 = format!("{key}_2");
        assert_eq!(te2.tokenizer.encode(text).unwrap().ids, ids(&io, &key2));
    }
    for (text, key) in [(PROMPT, ""), ("green", "negative_")] {
        let (embeds, pooled) = p
            .sdxl_prompt_embeds(c, text, "prompt", &mut |_| {})
            .unwrap();
        let pooled_key = format!("cfg.{key}pooled");
        let embeds_key = format!("cfg.{key}prompt_embeds");
        let r = close_rel(&embeds_key, &embeds, &io.f32(&embeds_key), EMBED_REL, c).unwrap();
        let r2 = close_rel(&pooled_key, &pooled, &io.f32(&pooled_key), EMBED_REL, c).unwrap();
        eprintln!("{embeds_key}: {r:.2e}, {pooled_key}: {r2:.2e}");
    }
    // The empty-negative case: diffusers conditions on zeros.
    let (zeros, _) = io.f32("zeros.negative_prompt_embeds");
    assert!(zeros.iter().all(|&v| v == 0.0));
}

#[test]
fn sdxl_time_ids_match_diffusers_defaults_and_given_sizes() {
    let io = Io::load(NAME);
    let rows = |key: &str| {
        let (v, s) = io.f32(key);
        assert_eq!(s[1], 6);
        v.chunks(6).map(|r| r.to_vec()).collect::<Vec<_>>()
    };
    let (pos, neg) = MicroConditioning::default().time_ids(32, 24);
    for r in rows("cfg.add_time_ids") {
        assert_eq!(r, pos);
    }
    assert_eq!(pos, neg);
    let m = MicroConditioning {
        original_size: Some((48, 40)),
        crops_coords_top_left: Some((4, 2)),
        ..Default::default()
    };
    let (pos, neg) = m.time_ids(32, 24);
    assert_eq!(pos, [48.0, 40.0, 4.0, 2.0, 24.0, 32.0]);
    for r in rows("zeros.add_time_ids") {
        assert_eq!(r, pos);
    }
    assert_eq!(pos, neg);
    // Each negative value defaults to its positive one, independently.
    let m = MicroConditioning {
        negative_target_size: Some((8, 16)),
        ..m
    };
    assert_eq!(m.time_ids(32, 24).1, [48.0, 40.0, 4.0, 2.0, 8.0, 16.0]);
}

/// Runs the pipeline, keeping every step's latents.
fn run(c: &hoa::Context, p: &Pipeline, opts: &GenerateOptions) -> (Vec<u8>, Vec<Tensor>) {
    let mut steps = Vec::new();
    let images = pollster::block_on(p.generate(c, opts, &mut |ev| {
        if let Event::Step { latents, .. } = ev {
            steps.push(latents.clone())
        }
    }))
    .unwrap();
    (
        images.iter().flat_map(|im| im.data.clone()).collect(),
        steps,
    )
}

fn check_case(c: &hoa::Context, p: &Pipeline, io: &Io, case: &str, opts: &GenerateOptions) {
    let (image, steps) = run(c, p, opts);
    assert_eq!(steps.len(), opts.steps);
    for (i, s) in steps.iter().enumerate() {
        let want = io.f32(&format!("{case}.step{i}"));
        let r = close_rel(&format!("{case} step {i}"), s, &want, LATENT_REL, c).unwrap();
        eprintln!("{case} step {i}: max err / max |ref| = {r:.2e}");
    }
    // diffusers' image is float [B, H, W, 3] in [0, 1]; ours is rounded to u8.
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
        "{case}: {off_by_one} pixels differ"
    );
}

#[test]
fn sdxl_pipeline_matches_diffusers_with_cfg_and_with_zeros_for_the_empty_negative() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let (latents, _) = io.f32("latents");
    let opts = GenerateOptions {
        prompt: PROMPT.into(),
        negative_prompt: "green".into(),
        width: 32,
        height: 24,
        steps: 4,
        guidance: 5.0,
        batch: 2,
        latents: Some(latents.clone()),
        ..Default::default()
    };
    check_case(c, &p, &io, "cfg", &opts);
    // The same through the guidance halves run apart.
    let split = GenerateOptions {
        split_guidance: true,
        ..opts.clone()
    };
    check_case(c, &p, &io, "cfg", &split);
    // No negative prompt: zeros; the size conditioning through the one policy (resolve).
    let req = Request {
        prompt: Some("a big green square".into()),
        steps: Some(3),
        guidance: Some(3.0),
        width: Some(32),
        height: Some(24),
        original_size: Some([48, 40]),
        crops_coords_top_left: Some([4, 2]),
        origin: Origin::Cli,
        ..Default::default()
    };
    let limits = DeviceLimits {
        max_binding_bytes: c.max_binding_bytes(),
        dtype_size: 4,
        host_memory: false,
    };
    let mut r = resolve(&req, &p.info, limits).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    r.options.latents = Some(latents[..latents.len() / 2].to_vec());
    check_case(c, &p, &io, "zeros", &r.options);
}

#[test]
fn size_conditioning_is_checked_by_resolve_naming_the_flag() {
    let files = DirFiles::open(dir(NAME)).unwrap();
    let info = ModelInfo::read(&files).unwrap();
    let limits = DeviceLimits {
        max_binding_bytes: 1 << 30,
        dtype_size: 4,
        host_memory: false,
    };
    let req = Request {
        prompt: Some("a".into()),
        crops_coords_top_left: Some([-1, 0]),
        origin: Origin::Cli,
        ..Default::default()
    };
    let e = resolve(&req, &info, limits).unwrap_err().to_string();
    assert!(
        e.contains("--crops-coords-top-left: top and left must be from 0 to 16384, got top -1"),
        "{e}"
    );
    let req = Request {
        prompt: Some("a".into()),
        negative_target_size: Some([0, 8]),
        origin: Origin::Json,
        ..Default::default()
    };
    let e = resolve(&req, &info, limits).unwrap_err().to_string();
    assert!(e.contains("negative_target_size: height and width"), "{e}");
    // A model without text_time ignores them, with a warning.
    let sd = ModelInfo::read(&DirFiles::open(dir("pipeline_tiny")).unwrap()).unwrap();
    let req = Request {
        prompt: Some("a".into()),
        original_size: Some([64, 64]),
        origin: Origin::Cli,
        ..Default::default()
    };
    let r = resolve(&req, &sd, limits).unwrap();
    assert!(
        r.warnings.iter().any(|w| w.contains("--original-size")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn sdxl_f16_decodes_with_the_vae_upcast_to_f32() {
    let Some(c) = ctx() else { return };
    if !c.has_f16() {
        eprintln!("no shader-f16: skipped");
        return;
    }
    let files = DirFiles::open(dir(NAME)).unwrap();
    let p = Pipeline::load(c, &files, DType::F16).unwrap();
    // vae/config.json: force_upcast true.
    assert_eq!(p.vae_dtype, DType::F32);
    let io = Io::load(NAME);
    let opts = GenerateOptions {
        prompt: PROMPT.into(),
        negative_prompt: "green".into(),
        width: 32,
        height: 24,
        steps: 4,
        guidance: 5.0,
        batch: 2,
        latents: Some(io.f32("latents").0),
        ..Default::default()
    };
    let (image, _) = run(c, &p, &opts);
    let (want, _) = io.f32("cfg.image");
    let worst = image
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (g as f32 - w * 255.0).abs())
        .fold(0f32, f32::max);
    // f16 weights and activations in the U-Net (observed 0.7 of 255).
    assert!(worst <= 2.0, "worst pixel off by {worst}");
    eprintln!("f16 U-Net + f32 VAE: worst pixel off by {worst:.1} of 255");
}

#[test]
fn sdxl_turbo_style_folder_runs_one_step_without_guidance_from_its_defaults() {
    // SDXL-Turbo's settings on the tiny folder: EulerAncestral with trailing spacing, and
    // hoa.json's defaults of 1 step and guidance 0 (guidance <= 1: no CFG).
    let Some(c) = ctx() else { return };
    let tmp = std::env::temp_dir().join(format!("hoa-sdxl-turbo-{}", std::process::id()));
    copy_dir(&dir(NAME), &tmp);
    std::fs::copy(
        dir(NAME).join("turbo_scheduler/scheduler_config.json"),
        tmp.join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    std::fs::write(tmp.join("hoa.json"), r#"{"steps": 1, "guidance": 0.0}"#).unwrap();
    let files = DirFiles::open(&tmp).unwrap();
    let p = Pipeline::load(c, &files, DType::F32).unwrap();
    let req = Request {
        prompt: Some("a blue circle".into()),
        width: Some(32),
        height: Some(24),
        origin: Origin::Cli,
        ..Default::default()
    };
    let limits = DeviceLimits {
        max_binding_bytes: c.max_binding_bytes(),
        dtype_size: 4,
        host_memory: false,
    };
    let mut r = resolve(&req, &p.info, limits).unwrap();
    assert_eq!((r.options.steps, r.options.guidance), (1, 0.0));
    assert_eq!(r.sampler.name(), "euler_a");
    let io = Io::load(NAME);
    let (latents, _) = io.f32("latents");
    r.options.latents = Some(latents[..latents.len() / 2].to_vec());
    check_case(c, &p, &io, "turbo", &r.options);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_broken_text_encoder_2_config_is_named() {
    let Some(c) = ctx() else { return };
    let tmp = std::env::temp_dir().join(format!("hoa-sdxl-te2-{}", std::process::id()));
    copy_dir(&dir(NAME), &tmp);
    let cfg = tmp.join("text_encoder_2/config.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    j["projection_dim"] = 0.into();
    std::fs::write(&cfg, j.to_string()).unwrap();
    let files = DirFiles::open(&tmp).unwrap();
    let e = Pipeline::load(c, &files, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("text_encoder_2/config.json: `projection_dim` is 0"),
        "{e}"
    );
    // A projection that does not fit the U-Net's add_embedding names both.
    j["projection_dim"] = 16.into();
    std::fs::write(&cfg, j.to_string()).unwrap();
    let e = Pipeline::load(c, &files, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(
            "`projection_class_embeddings_input_dim` is 72, but text_encoder_2's projection_dim 16"
        ),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
