//! Latent consistency models against diffusers' `LatentConsistencyModelPipeline` on the tiny
//! fixture folder (tests/fixtures/pipeline_lcm, tools/fixtures/lcm.py: a U-Net with
//! `time_cond_proj_dim`, LCMScheduler): the guidance-scale embedding, every step's latents and
//! the image at 4 steps, guidance 8; the same for lcm-sdxl's use (`StableDiffusionXLPipeline`
//! with an LCM U-Net, tests/fixtures/pipeline_sdxl_lcm over pipeline_sdxl); and
//! `hoa generate --model` on the folder with its defaults, the negative prompt ignored with a
//! warning.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/fixture.rs"]
mod fixture;

use cli::hoa;
use common::ctx;
use fixture::{copy_dir, dir, Io};
use hoa::image_io::read_png_parameters;
use hoa::model_files::DirFiles;
use hoa::pipeline::{guidance_scale_embedding, Event, GenerateOptions, Pipeline};
use hoa::request::{Origin, Request};
use hoa::resolve::{resolve, DeviceLimits};
use hoa::{DType, Tensor};

const NAME: &str = "pipeline_lcm";
/// The fixture drew LCM's step noise from hoa's generator with this seed (image k: seed + k).
const SEED: u64 = 7;
/// f32 on both sides through 4 U-Net calls of a random model (observed ~6e-7).
const LATENT_REL: f64 = 1e-5;

fn load() -> Option<(&'static hoa::Context, Pipeline)> {
    let c = ctx()?;
    let files = DirFiles::open(dir(NAME)).unwrap();
    Some((c, Pipeline::load(c, &files, DType::F32).unwrap()))
}

#[test]
fn guidance_embedding_matches_diffusers() {
    let (want, shape) = Io::load(NAME).f32("w_embedding");
    assert_eq!(shape, [2, 32]);
    let got = guidance_scale_embedding(&[7.0, 7.0], 32);
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs());
    let max = err.fold(0f32, f32::max);
    eprintln!("w_embedding: max |err| = {max:.2e}");
    assert!(max <= 1e-6, "max |err| {max}");
}

#[test]
fn matches_diffusers_latent_consistency_pipeline() {
    let Some((c, p)) = load() else { return };
    assert!(p.embeds_guidance());
    let io = Io::load(NAME);
    let opts = GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        width: 32,
        height: 24,
        steps: 4,
        guidance: 8.0,
        batch: 2,
        seed: SEED,
        latents: Some(io.f32("latents").0),
        ..Default::default()
    };
    assert_eq!(p.scheduler_kind(&opts).unwrap().name(), "lcm");
    let (images, steps) = run(c, &p, &opts);
    check(c, &io, &steps, &images);
    // The embedded guidance is what conditions the model: another scale, another result.
    let other = GenerateOptions {
        guidance: 2.0,
        ..opts.clone()
    };
    let b = pollster::block_on(p.generate(c, &other, &mut |_| {})).unwrap();
    assert_ne!(b[0].data, images[0].data);
}

/// Every step's latents within [`LATENT_REL`] of diffusers', the images within one level.
fn check(c: &hoa::Context, io: &Io, steps: &[Tensor], images: &[hoa::image_io::RgbImage]) {
    assert_eq!(steps.len(), 4);
    for (i, s) in steps.iter().enumerate() {
        let want = io.f32(&format!("step{i}"));
        let r = fixture::close_rel(&format!("step {i}"), s, &want, LATENT_REL, c).unwrap();
        eprintln!("step {i}: max err / max |ref| = {r:.2e}");
    }
    // diffusers' image is float [B, H, W, 3] in [0, 1]; ours is rounded to u8.
    let (want, shape) = io.f32("image");
    assert_eq!(shape, [2, 24, 32, 3]);
    let got: Vec<u8> = images.iter().flat_map(|im| im.data.clone()).collect();
    let mut off_by_one = 0;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let d = (g as f32 - (w * 255.0).round()).abs();
        assert!(d <= 1.0, "pixel {i}: {g} vs diffusers {}", w * 255.0);
        off_by_one += (d > 0.0) as usize;
    }
    assert!(off_by_one * 100 <= got.len(), "{off_by_one} pixels differ");
}

/// Runs `opts`, keeping every step's latents.
fn run(
    c: &hoa::Context,
    p: &Pipeline,
    opts: &GenerateOptions,
) -> (Vec<hoa::image_io::RgbImage>, Vec<Tensor>) {
    let mut steps = Vec::new();
    let images = pollster::block_on(p.generate(c, opts, &mut |ev| {
        if let Event::Step { latents, .. } = ev {
            steps.push(latents.clone())
        }
    }))
    .unwrap();
    (images, steps)
}

#[test]
fn sdxl_with_an_lcm_unet_matches_diffusers() {
    let Some(c) = ctx() else { return };
    // pipeline_sdxl with the LCM U-Net config, its cond_proj as a second shard, LCMScheduler.
    let tmp = std::env::temp_dir().join(format!("hoa-sdxl-lcm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_dir(&dir("pipeline_sdxl"), &tmp);
    let unet = tmp.join("unet");
    std::fs::rename(
        unet.join("diffusion_pytorch_model.safetensors"),
        unet.join("unet-00001.safetensors"),
    )
    .unwrap();
    copy_dir(&dir("pipeline_sdxl_lcm"), &tmp);
    let p = Pipeline::load(c, &DirFiles::open(&tmp).unwrap(), DType::F32).unwrap();
    assert!(p.embeds_guidance());
    let opts = GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        width: 32,
        height: 24,
        steps: 4,
        guidance: 8.0,
        batch: 2,
        seed: SEED,
        latents: Some(Io::load("pipeline_sdxl").f32("latents").0),
        ..Default::default()
    };
    assert_eq!(p.scheduler_kind(&opts).unwrap().name(), "lcm");
    let (images, steps) = run(c, &p, &opts);
    check(c, &Io::load("pipeline_sdxl_lcm"), &steps, &images);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn cli_generates_with_the_models_defaults_and_ignores_a_negative_prompt() {
    let Some((c, p)) = load() else { return };
    let d = std::env::temp_dir().join(format!("hoa-cli-lcm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let a = d.join("a.png");
    let model = dir(NAME);
    let out = hoa(&[
        "generate",
        "a red circle left of a blue square",
        "--model",
        model.to_str().unwrap(),
        "--width",
        "32",
        "--height",
        "24",
        "--seed",
        "7",
        "--negative",
        "green",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--negative is ignored"), "{stderr}");
    let png = std::fs::read(&a).unwrap();
    let params = read_png_parameters(&png).unwrap().expect("parameters");
    assert!(params.contains("Steps: 4"), "{params}");
    assert!(params.contains("CFG scale: 8.5"), "{params}");
    // The library with diffusers' LCM defaults (4 steps, guidance 8.5), no negative prompt.
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    let opts = GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        width: 32,
        height: 24,
        steps: 4,
        guidance: 8.5,
        seed: 7,
        ..Default::default()
    };
    let lib = pollster::block_on(p.generate(c, &opts, &mut |_| {})).unwrap();
    assert_eq!(img.as_raw(), &lib[0].data);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn resolve_gives_lcm_defaults_and_drops_what_an_lcm_cannot_use() {
    let Some((c, p)) = load() else { return };
    let limits = DeviceLimits {
        max_binding_bytes: c.max_binding_bytes(),
        dtype_size: 4,
        host_memory: false,
    };
    let req = Request {
        prompt: Some("a blue circle".into()),
        negative_prompt: Some("green".into()),
        guidance_high: Some(3.0),
        origin: Origin::Cli,
        ..Default::default()
    };
    let r = resolve(&req, &p.info, limits).unwrap();
    let o = &r.options;
    assert_eq!((o.steps, o.guidance, r.sampler.name()), (4, 8.5, "lcm"));
    assert!(o.negative_prompt.is_empty() && o.guidance_high.is_none());
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("--negative is ignored")));
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("is ignored") && w.contains("guidance")));
    // The user's own steps and guidance win; nothing to warn about.
    let req = Request {
        steps: Some(2),
        guidance: Some(3.0),
        negative_prompt: None,
        guidance_high: None,
        ..req
    };
    let r = resolve(&req, &p.info, limits).unwrap();
    assert_eq!((r.options.steps, r.options.guidance), (2, 3.0));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}
