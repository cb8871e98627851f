//! The SDXL refiner against diffusers on tests/fixtures/pipeline_sdxl_refiner
//! (tools/fixtures/sdxl_refiner.py): the base (pipeline_sdxl) with `denoising_end=0.8` handing
//! its latents to the refiner with `denoising_start=0.8` (every step of both stages and the
//! image), the refiner alone as img2img with aesthetic scores, the refiner as an LDM single file
//! (`conditioner.embedders.0.model.*`) == its folder, and the errors of the options.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/fixture.rs"]
mod fixture;

use cli::hoa;
use common::ctx;
use fixture::{close_rel, dir, Io};
use hoa::image_io::RgbImage;
use hoa::model_files::{DirFiles, ModelFiles};
use hoa::model_info::ModelInfo;
use hoa::options::MicroConditioning;
use hoa::pipeline::{Event, GenerateOptions, Pipeline};
use hoa::request::{Latents, Origin, Request};
use hoa::resolve::{resolve, resolve_two_stage, DeviceLimits};
use hoa::single_file::{detect, Family, SingleFile};
use hoa::{DType, Tensor};

const NAME: &str = "pipeline_sdxl_refiner";
const BASE: &str = "pipeline_sdxl";
const PROMPT: &str = "a red circle left of a blue square";
const SINGLE_FILE: &str = "sd_xl_refiner.safetensors";

/// As tests/pipeline_sdxl.rs: 1e-4 of max |ref| for latents through several U-Net calls and
/// Euler steps; the image within 1 of 255 on at most 1% of the values.
const LATENT_REL: f64 = 1e-4;

fn load(name: &str) -> Pipeline {
    let c = ctx().unwrap();
    let files = DirFiles::open(dir(name)).unwrap();
    Pipeline::load(c, &files, DType::F32).unwrap()
}

fn limits(c: &hoa::Context) -> DeviceLimits {
    DeviceLimits {
        max_binding_bytes: c.max_binding_bytes(),
        dtype_size: 4,
        host_memory: false,
    }
}

fn info(name: &str) -> ModelInfo {
    ModelInfo::read(&DirFiles::open(dir(name)).unwrap()).unwrap()
}

/// Each step's latents, appended to `steps` (both stages report theirs in turn).
fn keep_steps(steps: &mut Vec<Tensor>) -> impl FnMut(Event) + '_ {
    |ev| {
        if let Event::Step { latents, .. } = ev {
            steps.push(latents.clone())
        }
    }
}

fn check_steps(c: &hoa::Context, io: &Io, key: &str, got: &[Tensor]) {
    let (_, n) = io.f32(&format!("{key}.timesteps"));
    assert_eq!(got.len(), n[0], "{key}: steps run");
    for (i, s) in got.iter().enumerate() {
        let want = io.f32(&format!("{key}.step{i}"));
        let r = close_rel(&format!("{key} step {i}"), s, &want, LATENT_REL, c).unwrap();
        eprintln!("{key} step {i}: max err / max |ref| = {r:.2e}");
    }
}

fn check_image(io: &Io, key: &str, images: &[RgbImage]) {
    let got: Vec<u8> = images.iter().flat_map(|im| im.data.clone()).collect();
    let (want, _) = io.f32(key);
    assert_eq!(got.len(), want.len());
    let mut off_by_one = 0;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let d = (g as f32 - (w * 255.0).round()).abs();
        assert!(d <= 1.0, "{key} pixel {i}: {g} vs diffusers {}", w * 255.0);
        off_by_one += (d > 0.0) as usize;
    }
    assert!(off_by_one * 100 <= got.len(), "{key}: {off_by_one} differ");
}

#[test]
fn the_refiner_folder_is_detected_and_its_time_ids_match_diffusers() {
    let i = info(NAME);
    assert!(i.is_sdxl_refiner());
    assert!(i.text_encoder_class.is_empty());
    assert!(!i.sdxl.as_ref().unwrap().force_zeros_for_empty_prompt);
    assert!(!info(BASE).is_sdxl_refiner());
    let io = Io::load(NAME);
    // Default sizes, crop (0, 0) and scores 6 / 2.5: rows [negative, prompt].
    let (pos, neg) = MicroConditioning::default().refiner_time_ids(32, 24, 6.0, 2.5);
    let (ids, shape) = io.f32("two_stage.add_time_ids");
    assert_eq!(shape, [2, 5]);
    assert_eq!(ids, [neg, pos].concat());
    // Given original size and crop: the negative crop stays (0, 0), as diffusers has it.
    let m = MicroConditioning {
        original_size: Some((48, 40)),
        ..Default::default()
    };
    let (pos, neg) = m.refiner_time_ids(32, 24, 7.0, 2.0);
    assert_eq!(pos, [48.0, 40.0, 0.0, 0.0, 7.0]);
    let (ids, _) = io.f32("img2img.add_time_ids");
    assert_eq!(ids, [neg, neg, pos, pos].concat());
    let crop = MicroConditioning {
        crops_coords_top_left: Some((4, 2)),
        ..m
    };
    assert_eq!(crop.refiner_time_ids(32, 24, 6.0, 2.5).1[2..4], [0.0, 0.0]);
}

#[test]
fn base_then_refiner_matches_diffusers_denoising_end_and_start() {
    let Some(c) = ctx() else { return };
    let (base, refiner) = (load(BASE), load(NAME));
    let io = Io::load(NAME);
    let (latents, shape) = io.f32("latents");
    let req = Request {
        prompt: Some(PROMPT.into()),
        negative_prompt: Some("green".into()),
        steps: Some(10),
        guidance: Some(5.0),
        width: Some(32),
        height: Some(24),
        latents: Some(Latents {
            values: latents,
            shape,
        }),
        origin: Origin::Cli,
        ..Default::default()
    };
    // The one policy: denoising_end defaults to 0.8, the refiner starts there.
    let (b, r) = resolve_two_stage(&req, &base.info, &refiner.info, limits(c)).unwrap();
    assert_eq!(b.options.denoising_end, Some(0.8));
    assert_eq!(r.options.denoising_start, Some(0.8));
    assert!(
        b.warnings.is_empty() && r.warnings.is_empty(),
        "{b:?} {r:?}"
    );
    let mut steps = Vec::new();
    let images = pollster::block_on(base.generate_with_refiner(
        &refiner,
        c,
        &b.options,
        &r.options,
        &mut keep_steps(&mut steps),
    ))
    .unwrap();
    check_steps(c, &io, "two_stage.base", &steps[..8]);
    check_steps(c, &io, "two_stage.refiner", &steps[8..]);
    check_image(&io, "two_stage.image", &images);
    // The base's output latents, as diffusers hands them over.
    let got = pollster::block_on(base.generate_latents(c, &b.options, &mut |_| {})).unwrap();
    close_rel(
        "base latents",
        &got,
        &io.f32("two_stage.base_latents"),
        LATENT_REL,
        c,
    )
    .unwrap();
    assert!(b
        .parameters("base", 0)
        .to_text()
        .contains("Refiner switch at: 0.8"));
}

fn img2img_request(io: &Io) -> Request {
    let (init, shape) = io.f32("img2img.init");
    let (noise, noise_shape) = io.f32("img2img.noise");
    Request {
        prompt: Some("a big green square".into()),
        steps: Some(5),
        guidance: Some(4.0),
        batch: Some(2),
        strength: Some(0.6),
        aesthetic_score: Some(7.0),
        negative_aesthetic_score: Some(2.0),
        original_size: Some([48, 40]),
        init_image: Some(RgbImage {
            width: shape[1],
            height: shape[0],
            data: init.iter().map(|&v| v as u8).collect(),
        }),
        latents: Some(Latents {
            values: noise,
            shape: noise_shape,
        }),
        origin: Origin::Cli,
        ..Default::default()
    }
}

fn run(c: &hoa::Context, p: &Pipeline, opts: &GenerateOptions) -> (Vec<RgbImage>, Vec<Tensor>) {
    let mut steps = Vec::new();
    let images = pollster::block_on(p.generate(c, opts, &mut keep_steps(&mut steps))).unwrap();
    (images, steps)
}

#[test]
fn the_refiner_alone_is_img2img_with_aesthetic_scores_as_diffusers() {
    let Some(c) = ctx() else { return };
    let refiner = load(NAME);
    let io = Io::load(NAME);
    let r = resolve(&img2img_request(&io), &refiner.info, limits(c)).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let (images, steps) = run(c, &refiner, &r.options);
    check_steps(c, &io, "img2img", &steps);
    check_image(&io, "img2img.image", &images);
    // Without strength, diffusers' refiner default 0.3.
    let req = Request {
        strength: None,
        ..img2img_request(&io)
    };
    let r = resolve(&req, &refiner.info, limits(c)).unwrap();
    assert_eq!(r.options.init.unwrap().strength, 0.3);
}

#[test]
fn the_refiner_single_file_is_its_folder() {
    let folder = dir(NAME);
    let path = folder.join(SINGLE_FILE);
    let raw = hoa::weights::Weights::from_bytes("refiner", std::fs::read(&path).unwrap()).unwrap();
    let d = detect(&raw).unwrap();
    assert_eq!(d.family, Family::SdxlRefiner);
    assert_eq!(d.family_name(), "SDXL refiner");
    let config: Box<dyn ModelFiles> = Box::new(DirFiles::open(&folder).unwrap());
    let file = SingleFile::open(&path, Some(config)).unwrap();
    assert!(ModelInfo::read(&file).unwrap().is_sdxl_refiner());
    let Some(c) = ctx() else { return };
    let io = Io::load(NAME);
    let from_file = Pipeline::load(c, &file, DType::F32).unwrap();
    let refiner = load(NAME);
    let r = resolve(&img2img_request(&io), &refiner.info, limits(c)).unwrap();
    assert_eq!(
        run(c, &from_file, &r.options).0,
        run(c, &refiner, &r.options).0
    );
}

#[test]
fn refiner_options_are_checked_naming_the_flag() {
    let Some(c) = ctx() else { return };
    let (base, refiner, sd) = (info(BASE), info(NAME), info("pipeline_tiny"));
    let req = Request {
        prompt: Some("x".into()),
        origin: Origin::Cli,
        ..Default::default()
    };
    fn err<T>(r: hoa::Result<T>) -> String {
        r.err().expect("an error").to_string()
    }
    let e = err(resolve_two_stage(&req, &sd, &refiner, limits(c)));
    assert!(e.contains("--refiner") && e.contains("SDXL base"), "{e}");
    let e = err(resolve_two_stage(&req, &base, &sd, limits(c)));
    assert!(
        e.contains("--refiner") && e.contains("not an SDXL model"),
        "{e}"
    );
    for bad in [0.0, 1.0, 1.5, f64::NAN] {
        let r = Request {
            denoising_end: Some(bad),
            ..req.clone()
        };
        let e = err(resolve_two_stage(&r, &base, &refiner, limits(c)));
        assert!(
            e.contains("--denoising-end") && e.contains("between 0 and 1"),
            "{e}"
        );
    }
    let e = err(resolve(&req, &refiner, limits(c)));
    assert!(
        e.contains("--init-image") && e.contains("SDXL refiner"),
        "{e}"
    );
    let r = Request {
        aesthetic_score: Some(f64::INFINITY),
        ..img2img_request(&Io::load(NAME))
    };
    assert!(err(resolve(&r, &refiner, limits(c))).contains("--aesthetic-score"));
    // On a model without aesthetic ids the scores are ignored with a warning; denoising_end
    // without a refiner warns that the image stays noisy.
    let r = Request {
        aesthetic_score: Some(5.0),
        denoising_end: Some(0.5),
        ..req.clone()
    };
    let w = resolve(&r, &base, limits(c)).unwrap().warnings.join("\n");
    assert!(w.contains("--aesthetic-score is ignored") && w.contains("--denoising-end without"));
    let e = err(resolve(&r, &sd, limits(c)));
    assert!(e.contains("--denoising-end"), "{e}");
}

#[test]
fn hoa_generate_with_refiner_and_hoa_info() {
    let out = hoa(&["info", "--model", dir(NAME).to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SDXL refiner"));
    if ctx().is_none() {
        return;
    }
    let d = std::env::temp_dir().join(format!("hoa-refiner-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let png = d.join("two.png");
    let out = hoa(&[
        "generate",
        PROMPT,
        "--model",
        dir(BASE).to_str().unwrap(),
        "--refiner",
        dir(NAME).to_str().unwrap(),
        "--denoising-end",
        "0.7",
        "--aesthetic-score",
        "6.5",
        "--width",
        "32",
        "--height",
        "24",
        "--steps",
        "4",
        "--force",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let params = hoa::image_io::read_png_parameters(&std::fs::read(&png).unwrap())
        .unwrap()
        .unwrap();
    assert!(
        params.contains("Refiner: pipeline_sdxl_refiner, Refiner switch at: 0.7"),
        "{params}"
    );
    let out = hoa(&[
        "generate",
        "x",
        "--model",
        dir("pipeline_tiny").to_str().unwrap(),
        "--refiner",
        dir(NAME).to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--refiner"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
