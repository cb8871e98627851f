//! The shipped model (weights/default) against diffusers running the same folder
//! (tests/fixtures/default_model, written by `make_fixtures.py --only default_model`): the
//! folder's noise schedule under DDIM (deterministic: the folder's own Euler ancestral draws
//! fresh noise each step, from another generator than torch's) with hoa.json's guidance (its
//! two scales, applied in diffusers by tools/eval/guidance.py) from fixed latents, the VAE
//! image, and the consistency decoder's image with the noise diffusers drew.
//! Tolerance: the latents after 10 guided steps within 1e-3 x max |ref| (f32 both sides; the
//! guidance multiplies per-step differences), image pixels within 2/255 of diffusers' float
//! image (its rounding plus that error through the decoder), the consistency decoder's float
//! output within 1e-3 x max |ref|.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use common::ctx;
use fixture::{close_rel, Io};
use hoa::model_defaults::ModelDefaults;
use hoa::model_files::DirFiles;
use hoa::pipeline::{Event, GenerateOptions, GuidanceHigh, Pipeline};
use hoa::schedulers::SchedulerKind;
use hoa::{DType, Tensor};

fn model_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/default")
}

#[test]
fn default_model_matches_diffusers() {
    let Some(c) = ctx() else { return };
    let p = Pipeline::load(c, &DirFiles::open(model_dir()).unwrap(), DType::F32).unwrap();
    let io = Io::load("default_model");
    let (latents, lshape) = io.f32("latents");
    let f = p.vae_scale_factor();
    let opts = GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        width: lshape[3] * f,
        height: lshape[2] * f,
        steps: io.f32("steps").0[0].to_bits() as usize,
        guidance: io.f32("guidance").0[0],
        // hoa.json's high-noise guidance, as the fixture applied it (tools/eval/guidance.py).
        guidance_high: Some(GuidanceHigh {
            scale: io.f32("guidance_high").0[0],
            from_timestep: io.f32("guidance_high").0[1],
        }),
        latents: Some(latents),
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    let mut last: Option<Tensor> = None;
    let images = pollster::block_on(p.generate(c, &opts, &mut |ev| {
        if let Event::Step { latents, .. } = ev {
            last = Some(latents.clone());
        }
    }))
    .unwrap();
    let want = io.f32("final_latents");
    let r = close_rel("final latents", last.as_ref().unwrap(), &want, 1e-3, c).unwrap();
    eprintln!("final latents: max err / max |ref| = {r:.2e}");
    let (img, shape) = io.f32("image");
    assert_eq!(shape[1..], [opts.height, opts.width, 3]);
    let worst = images[0]
        .data
        .iter()
        .zip(&img)
        .map(|(&g, &w)| (g as f32 - w * 255.0).abs())
        .fold(0f32, f32::max);
    eprintln!("image: worst pixel difference {worst:.2}/255");
    assert!(worst <= 2.0, "worst pixel differs by {worst}/255");

    let cd = p
        .consistency_decoder
        .as_ref()
        .expect("weights/default/consistency_decoder");
    // diffusers' own final latents, so only the decoder is compared.
    let fin = io.tensor(c, "final_latents", DType::F32);
    let z = hoa::kernels::elementwise::scale(c, &fin, 1.0 / cd.scaling_factor() as f32).unwrap();
    let n0 = io.tensor(c, "cd.noise.0", DType::F32);
    let n1 = io.tensor(c, "cd.noise.1", DType::F32);
    let out = cd.decode(c, &z, &[&n0, &n1]).unwrap().sample;
    let r = close_rel("consistency decoder", &out, &io.f32("cd.image"), 1e-3, c).unwrap();
    eprintln!("consistency decoder: max err / max |ref| = {r:.2e}");
}

/// The shipped hoa.json's prompt upsampling rewrites every evaluation prompt (and a few made to
/// hit its edges) exactly as tools/world/upsample.py does, which the diffusers-side figures use
/// (tests/fixtures/prompt_upsampling, `make_fixtures.py --only prompt_upsampling`).
#[test]
fn default_model_prompt_upsampling_matches_the_python_rewrite() {
    let defaults = ModelDefaults::load(&DirFiles::open(model_dir()).unwrap()).unwrap();
    let rules = defaults
        .prompt_upsampling
        .expect("weights/default/hoa.json has prompt_upsampling");
    let cases: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(fixture::dir("prompt_upsampling").join("cases.json")).unwrap(),
    )
    .unwrap();
    assert!(cases.len() > 200, "{} cases", cases.len());
    let mut changed = 0;
    for c in &cases {
        let (prompt, want) = (
            c["prompt"].as_str().unwrap(),
            c["upsampled"].as_str().unwrap(),
        );
        assert_eq!(rules.upsample(prompt).unwrap(), want, "{prompt:?}");
        assert_eq!(rules.upsample(want).unwrap(), want, "twice: {want:?}");
        changed += usize::from(prompt != want);
    }
    // Most prompts name neither size nor texture; the three-object ones get a layout.
    assert!(changed > 180, "{changed} of {} rewritten", cases.len());
    assert!(cases
        .iter()
        .any(|c| c["upsampled"].as_str().unwrap().contains("is below the")));
    // The forms without an article, plural and capitalized (issue 26, defect 9) are there too.
    for form in [
        "red star",
        "Red star.",
        "two green circles",
        "3 blue squares",
    ] {
        assert!(cases.iter().any(|c| c["prompt"] == form), "{form:?}");
    }
}
