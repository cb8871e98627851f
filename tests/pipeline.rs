//! The text-to-image pipeline against diffusers' `StableDiffusionPipeline` on the tiny fixture
//! folder (tests/fixtures/pipeline_tiny: CLIP + tokenizer + U-Net + VAE + consistency decoder),
//! plus img2img / inpainting properties and the bad-input errors.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use common::ctx;
use fixture::{copy_dir, dir, Io};
use hoa::model_files::{DirFiles, ModelFiles};
use hoa::pipeline::{Decoder, Event, GenerateOptions, GuidanceHigh, InitImage, Pipeline};
use hoa::schedulers::SchedulerKind;
use hoa::{DType, Error, Tensor};

const NAME: &str = "pipeline_tiny";

fn load() -> Option<(&'static hoa::Context, Pipeline)> {
    let c = ctx()?;
    let files = DirFiles::open(dir(NAME)).unwrap();
    Some((c, Pipeline::load(c, &files, DType::F32).unwrap()))
}

fn base(io: &Io) -> GenerateOptions {
    GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        negative_prompt: "green".into(),
        width: 32,
        height: 24,
        steps: 5,
        guidance: 4.0,
        batch: 2,
        latents: Some(io.f32("latents").0),
        ..Default::default()
    }
}

/// Runs the pipeline, keeping every step's latents.
fn run(
    c: &hoa::Context,
    p: &Pipeline,
    opts: &GenerateOptions,
) -> (Vec<hoa::image_io::RgbImage>, Vec<Tensor>, Vec<String>) {
    let mut steps = Vec::new();
    let mut warnings = Vec::new();
    let images = pollster::block_on(p.generate(c, opts, &mut |ev| match ev {
        Event::Step { latents, .. } => steps.push(latents.clone()),
        Event::Warning(w) => warnings.push(w),
        Event::Decoding | Event::Preview { .. } => {}
    }))
    .unwrap();
    (images, steps, warnings)
}

/// Tolerance: f32 on both sides; the latents pass through 5 U-Net calls of a random model, so
/// errors of 1e-6 per op grow to ~1e-5 of the latents' magnitude: 1e-4 relative to max |ref|.
const LATENT_REL: f64 = 1e-4;

#[test]
fn matches_diffusers_ddim_and_dpm_solver_with_cfg() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    for (key, kind) in [
        ("ddim", SchedulerKind::Ddim),
        ("dpm", SchedulerKind::DpmPp2M),
    ] {
        let opts = GenerateOptions {
            scheduler: Some(kind),
            ..base(&io)
        };
        let (images, steps, warnings) = run(c, &p, &opts);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(steps.len(), 5);
        for (i, s) in steps.iter().enumerate() {
            let want = io.f32(&format!("{key}.step{i}"));
            let r =
                fixture::close_rel(&format!("{key} step {i}"), s, &want, LATENT_REL, c).unwrap();
            eprintln!("{key} step {i}: max err / max |ref| = {r:.2e}");
        }
        // diffusers' image is float [B, H, W, 3] in [0, 1]; ours is rounded to u8.
        let (want, shape) = io.f32(&format!("{key}.image"));
        assert_eq!(shape, [2, 24, 32, 3]);
        let got: Vec<u8> = images.iter().flat_map(|im| im.data.clone()).collect();
        let mut off_by_one = 0;
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let d = (g as f32 - (w * 255.0).round()).abs();
            assert!(d <= 1.0, "{key} pixel {i}: {g} vs diffusers {}", w * 255.0);
            off_by_one += (d > 0.0) as usize;
        }
        // Off by one only where diffusers' value sits on a rounding boundary.
        assert!(
            off_by_one * 100 <= got.len(),
            "{key}: {off_by_one} pixels differ"
        );
    }
}

#[test]
fn tokenizer_matches_transformers_and_truncates_with_a_warning() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let ids = |key: &str| -> Vec<u32> {
        let (v, _) = io.f32(key);
        // Stored as int32: reinterpret the bits.
        v.iter().map(|x| x.to_bits()).collect()
    };
    assert_eq!(
        p.tokenizer
            .encode("a red circle left of a blue square")
            .unwrap()
            .ids,
        ids("ids.prompt")
    );
    assert_eq!(
        p.tokenizer.encode("green").unwrap().ids,
        ids("ids.negative")
    );
    let long = "a photo of a big red circle above a small blue square left of a green circle";
    let t = p.tokenizer.encode(long).unwrap();
    assert_eq!(t.ids, ids("ids.long"));
    let full = ids("ids.long_untruncated_len")[0] as usize;
    assert_eq!(t.dropped, full - 16);
    let opts = GenerateOptions {
        prompt: long.into(),
        steps: 1,
        batch: 1,
        latents: None,
        ..base(&io)
    };
    let (_, _, warnings) = run(c, &p, &opts);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&format!("{} tokens were dropped", full - 16)),
        "{}",
        warnings[0]
    );
}

fn init_image(w: usize, h: usize) -> hoa::image_io::RgbImage {
    let data = (0..w * h * 3)
        .map(|i| ((i * 37 + (i / 3) * 11) % 256) as u8)
        .collect();
    hoa::image_io::RgbImage {
        width: w,
        height: h,
        data,
    }
}

#[test]
fn img2img_runs_the_tail_of_the_schedule_and_inpainting_keeps_the_unmasked_region() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let img = init_image(32, 24);
    // strength 0.6 of 5 steps: diffusers runs the last int(5 * 0.6) = 3.
    let opts = GenerateOptions {
        latents: None,
        batch: 1,
        seed: 3,
        init: Some(InitImage {
            image: img.clone(),
            strength: 0.6,
            mask: None,
        }),
        scheduler: Some(SchedulerKind::Ddim),
        ..base(&io)
    };
    let (out, steps, _) = run(c, &p, &opts);
    assert_eq!(steps.len(), 3);
    assert_eq!((out[0].width, out[0].height), (32, 24));

    // A mask that keeps everything: the result is the init image's own latent, decoded, so
    // it must equal a strength-1e-9-free reconstruction: decode(encode(init)) with the same
    // posterior sample. Compare against the same pipeline with a keep-all mask and a
    // different prompt: the prompt must not matter.
    let keep_all = InitImage {
        image: img.clone(),
        strength: 1.0,
        mask: Some(vec![0.0; 32 * 24]),
    };
    let a = GenerateOptions {
        init: Some(keep_all.clone()),
        ..opts.clone()
    };
    let b = GenerateOptions {
        prompt: "green square".into(),
        init: Some(keep_all),
        ..opts.clone()
    };
    let (ia, sa, _) = run(c, &p, &a);
    let (ib, _, _) = run(c, &p, &b);
    assert_eq!(sa.len(), 5);
    assert_eq!(ia, ib, "the kept region depends on the prompt");
    // A mask that repaints everything lets the prompt change the picture.
    let repaint = GenerateOptions {
        prompt: "green square".into(),
        init: Some(InitImage {
            image: img,
            strength: 1.0,
            mask: Some(vec![1.0; 32 * 24]),
        }),
        ..opts
    };
    let (ic, _, _) = run(c, &p, &repaint);
    assert_ne!(ia, ic);
}

#[test]
fn consistency_decoder_and_seeds() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let opts = GenerateOptions {
        latents: None,
        batch: 2,
        steps: 2,
        seed: 11,
        ..base(&io)
    };
    let (two, _, _) = run(c, &p, &opts);
    // Image 1 of a batch seeded 11 is image 0 of a batch seeded 12.
    let (one, _, _) = run(
        c,
        &p,
        &GenerateOptions {
            batch: 1,
            seed: 12,
            ..opts.clone()
        },
    );
    assert_eq!(two[1], one[0]);
    assert_ne!(two[0], two[1]);
    let (cd, _, _) = run(
        c,
        &p,
        &GenerateOptions {
            decoder: Decoder::Consistency,
            ..opts
        },
    );
    assert_eq!((cd[0].width, cd[0].height), (32, 24));
    assert_ne!(cd[0], two[0]);
}

/// `preview_every`: a VAE decode of the first image's latents every k steps (not after the
/// last), equal to decoding that step's latents, and the result unchanged by it.
#[test]
fn live_preview_every_k_steps() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let opts = GenerateOptions {
        scheduler: Some(SchedulerKind::Ddim),
        decoder: Decoder::Consistency,
        ..base(&io)
    };
    let (plain, _, _) = run(c, &p, &opts);
    let with = GenerateOptions {
        preview_every: 2,
        ..opts.clone()
    };
    let mut steps = Vec::new();
    let mut previews = Vec::new();
    let images = pollster::block_on(p.generate(c, &with, &mut |ev| match ev {
        Event::Step { latents, .. } => steps.push(latents.clone()),
        Event::Preview { step, image } => previews.push((step, image)),
        _ => {}
    }))
    .unwrap();
    // The consistency decoder draws noise: equal images mean the previews drew none.
    assert_eq!(images, plain, "previews changed the result");
    let at: Vec<usize> = previews.iter().map(|(s, _)| *s).collect();
    assert_eq!(at, [2, 4], "5 steps, every 2: after steps 2 and 4");
    for (step, image) in &previews {
        let want =
            pollster::block_on(p.decode(c, &steps[step - 1], Decoder::Vae, &mut [])).unwrap();
        assert_eq!((image.width, image.height), (32, 24));
        assert_eq!(image, &want[0], "preview at step {step}");
    }
    assert_ne!(previews[0].1, previews[1].1);
}

/// `guidance_high`: the steps at timestep ≥ `from_timestep` use its scale, the rest `guidance`.
/// 5 DDIM steps of 1000 put the first step above 500 and the last below it.
#[test]
fn guidance_high_applies_from_its_timestep() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let at = |guidance: f32, high: Option<(f32, f32)>| GenerateOptions {
        scheduler: Some(SchedulerKind::Ddim),
        guidance,
        guidance_high: high.map(|(scale, from_timestep)| GuidanceHigh {
            scale,
            from_timestep,
        }),
        ..base(&io)
    };
    let (img2, steps2, _) = run(c, &p, &at(2.0, None));
    let (img6, steps6, _) = run(c, &p, &at(6.0, None));
    let read = |t: &Tensor| t.to_vec(c).unwrap();
    // Everywhere, or nowhere: the same as one scale throughout.
    assert_eq!(run(c, &p, &at(2.0, Some((6.0, 0.0)))).0, img6);
    assert_eq!(run(c, &p, &at(2.0, Some((6.0, 1001.0)))).0, img2);
    let (img, steps, _) = run(c, &p, &at(2.0, Some((6.0, 500.0))));
    assert_eq!(read(&steps[0]), read(&steps6[0]), "step 1 (t > 500) uses 6");
    assert_ne!(
        read(&steps[4]),
        read(&steps6[4]),
        "step 5 (t < 500) does not"
    );
    assert_ne!(read(&steps[4]), read(&steps2[4]));
    assert_ne!(img, img2);
    assert_ne!(img, img6);
    // Guidance 1 (off) late but 6 early still encodes the negative prompt.
    let (_, steps1, _) = run(c, &p, &at(1.0, Some((6.0, 500.0))));
    assert_eq!(read(&steps1[0]), read(&steps6[0]));
}

fn err_of(c: &hoa::Context, p: &Pipeline, opts: GenerateOptions) -> String {
    pollster::block_on(p.generate(c, &opts, &mut |_| {}))
        .expect_err("must fail")
        .to_string()
}

/// Overflowing values never become an image: NaN or infinity in the latents or the pixels is an
/// error that names a likely cause (here the guidance scale, which `resolve` would refuse).
#[test]
fn non_finite_results_are_errors_not_images() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let huge = GenerateOptions {
        latents: None,
        batch: 1,
        steps: 3,
        guidance: 1e30,
        ..base(&io)
    };
    let e = err_of(c, &p, huge);
    assert!(e.contains("non-finite"), "{e}");
    assert!(
        e.contains("guidance scale 1000000000000000000000000000000 is far too high"),
        "{e}"
    );
    let mut latents = base(&io).latents.unwrap();
    latents[3] = f32::INFINITY;
    let given = GenerateOptions {
        latents: Some(latents),
        ..base(&io)
    };
    let e = err_of(c, &p, given);
    assert!(
        e.contains("non-finite") && e.contains("given latents"),
        "{e}"
    );
}

#[test]
fn bad_options_are_clear_errors() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let o = || GenerateOptions {
        latents: None,
        batch: 1,
        ..base(&io)
    };
    let e = err_of(c, &p, GenerateOptions { width: 30, ..o() });
    assert!(e.contains("multiples of 8") && e.contains("30x24"), "{e}");
    let e = err_of(c, &p, GenerateOptions { steps: 0, ..o() });
    assert!(e.contains("steps must be at least 1"), "{e}");
    let high = |scale, from_timestep| GenerateOptions {
        guidance_high: Some(GuidanceHigh {
            scale,
            from_timestep,
        }),
        ..o()
    };
    let e = err_of(c, &p, high(f32::NAN, 500.0));
    assert!(
        e.contains("the high-noise guidance must be a finite number ≥ 0, got NaN"),
        "{e}"
    );
    let e = err_of(c, &p, high(5.0, -1.0));
    assert!(
        e.contains("from_timestep must be a finite number ≥ 0"),
        "{e}"
    );
    let e = err_of(
        c,
        &p,
        GenerateOptions {
            latents: Some(vec![0.0; 10]),
            ..o()
        },
    );
    assert!(e.contains("latents hold 10 numbers"), "{e}");
    let e = err_of(
        c,
        &p,
        GenerateOptions {
            init: Some(InitImage {
                image: init_image(32, 24),
                strength: 0.5,
                mask: Some(vec![1.0; 16]),
            }),
            ..o()
        },
    );
    assert!(e.contains("the mask has 16 pixels"), "{e}");
    let e = err_of(
        c,
        &p,
        GenerateOptions {
            width: 16384,
            height: 16384,
            ..o()
        },
    );
    assert!(e.contains("max_storage_buffer_binding_size"), "{e}");
}

/// A copy of the fixture folder with `remove` deleted, in a fresh temp dir.
/// A copy of the fixture without `remove`, in a folder of its own: tests run in parallel and
/// two may break the same file.
fn broken_copy(remove: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dst = std::env::temp_dir().join(format!(
        "hoa-broken-{}-{}-{n}",
        remove.replace('/', "_"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dst);
    copy_dir(&dir(NAME), &dst);
    let r = dst.join(remove);
    if r.is_dir() {
        std::fs::remove_dir_all(r).unwrap();
    } else {
        std::fs::remove_file(r).unwrap();
    }
    dst
}

#[test]
fn broken_model_folders_are_clear_errors() {
    let Some(c) = ctx() else { return };
    let load_err = |remove: &str| -> String {
        let d = broken_copy(remove);
        let r = DirFiles::open(&d).and_then(|f| Pipeline::load(c, &f, DType::F32).map(drop));
        let _ = std::fs::remove_dir_all(&d);
        r.expect_err("must fail").to_string()
    };
    let e = load_err("vae");
    assert!(e.contains("`vae`") && e.contains("missing"), "{e}");
    let e = load_err("unet/diffusion_pytorch_model.safetensors");
    assert!(e.contains("unet: no weights"), "{e}");
    let e = load_err("tokenizer/tokenizer.json");
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = load_err("model_index.json");
    assert!(e.contains("no model_index.json"), "{e}");
    let e = DirFiles::open("/nonexistent/model")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    // MemoryFiles (the browser's loader) reports the same way.
    let files = hoa::model_files::MemoryFiles::default();
    assert!(files.require("model_index.json").is_err());
    let _ = Error::Checkpoint(String::new());
}

#[test]
fn an_unimplemented_folder_scheduler_falls_back_to_dpm_with_a_warning() {
    let Some((c, mut p)) = load() else { return };
    let io = Io::load(NAME);
    p.info.scheduler.class_name = Some("PNDMScheduler".into());
    let opts = GenerateOptions {
        latents: None,
        batch: 1,
        steps: 2,
        ..base(&io)
    };
    assert_eq!(p.scheduler_kind(&opts).unwrap(), SchedulerKind::DpmPp2M);
    let (_, steps, warnings) = run(c, &p, &opts);
    assert_eq!(steps.len(), 2);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("PNDMScheduler") && warnings[0].contains("dpm++2m"),
        "{}",
        warnings[0]
    );
}

#[test]
fn clip_vocab_and_merges_tokenize_like_the_tokenizer_json() {
    // SD 1.x folders ship vocab.json + merges.txt only; hoa rebuilds CLIP's tokenizer from
    // them. It must give the ids transformers' tokenizer.json gives.
    let d = dir("clip_tokenizer_files");
    let rebuilt = hoa::tokenizer::clip_tokenizer_json(
        &std::fs::read(d.join("vocab.json")).unwrap(),
        &std::fs::read(d.join("merges.txt")).unwrap(),
    )
    .unwrap();
    let cfg = std::fs::read(dir(NAME).join("tokenizer/tokenizer_config.json")).unwrap();
    let a = hoa::tokenizer::Tokenizer::from_bytes(&rebuilt, Some(&cfg), 77).unwrap();
    let json = std::fs::read(dir(NAME).join("tokenizer/tokenizer.json")).unwrap();
    let b = hoa::tokenizer::Tokenizer::from_bytes(&json, Some(&cfg), 77).unwrap();
    for text in [
        "a red circle left of a blue square",
        "A  Photo\tof the BIG Square, isn't it? 42 cafés!",
        "",
        "<|endoftext|> green circle",
        "a photo of a big red circle above a small blue square left of a green circle",
    ] {
        let (x, y) = (a.encode(text).unwrap(), b.encode(text).unwrap());
        assert_eq!(x.ids, y.ids, "{text:?}");
        assert_eq!(x.dropped, y.dropped, "{text:?}");
    }
    // And the pipeline uses it when tokenizer.json is absent.
    let broken = broken_copy("tokenizer/tokenizer.json");
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(d.join(f), broken.join("tokenizer").join(f)).unwrap();
    }
    let Some(c) = ctx() else { return };
    let p = Pipeline::load(c, &DirFiles::open(&broken).unwrap(), DType::F32).unwrap();
    assert_eq!(
        p.tokenizer.encode("a red circle").unwrap().ids,
        b.encode("a red circle").unwrap().ids
    );
    let _ = std::fs::remove_dir_all(&broken);
}

#[test]
fn guidance_halves_as_two_unet_batches_give_the_same_latents() {
    // What sizes too large for one batch of both halves take.
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let opts = GenerateOptions {
        steps: 2,
        scheduler: Some(SchedulerKind::Ddim),
        ..base(&io)
    };
    let (_, joint, _) = run(c, &p, &opts);
    let (_, split, _) = run(
        c,
        &p,
        &GenerateOptions {
            split_guidance: true,
            ..opts
        },
    );
    for (a, b) in joint.iter().zip(&split) {
        common::all_close(
            "split guidance",
            &b.to_vec(c).unwrap(),
            &a.to_vec(c).unwrap(),
            &common::F32,
        );
    }
}

#[test]
fn a_raised_cancel_flag_stops_after_the_current_step() {
    let Some((c, p)) = load() else { return };
    let io = Io::load(NAME);
    let cancel = hoa::options::Cancel::default();
    let opts = GenerateOptions {
        cancel: Some(cancel.clone()),
        ..base(&io)
    };
    let mut steps = 0;
    let r = pollster::block_on(p.generate(c, &opts, &mut |ev| {
        if let Event::Step { step, .. } = ev {
            steps = step;
            if step == 2 {
                cancel.cancel();
            }
        }
    }));
    assert!(
        matches!(r, Err(Error::Cancelled)),
        "{:?}",
        r.map(|v| v.len())
    );
    assert_eq!(steps, 2, "the run went on after the flag was raised");
    // An unraised flag changes nothing: the run completes.
    let opts = GenerateOptions {
        cancel: Some(hoa::options::Cancel::default()),
        ..base(&io)
    };
    assert_eq!(run(c, &p, &opts).0.len(), 2);
}

/// `hoa.json`'s `text_encoder_attention_mask` reaches the text encoder: a T5 encoder gets the
/// padding mask (tests/models_text.rs checks its numbers), a CLIP one refuses it by name.
#[test]
fn hoa_json_attention_mask_reaches_the_text_encoder() {
    let Some(c) = ctx() else { return };
    let d = std::env::temp_dir().join(format!("hoa-te-mask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    copy_dir(&dir(NAME), &d);
    std::fs::write(
        d.join("hoa.json"),
        r#"{"text_encoder_attention_mask": true}"#,
    )
    .unwrap();
    let p = Pipeline::load(c, &DirFiles::open(&d).unwrap(), DType::F32).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    let io = Io::load(NAME);
    let Err(e) = pollster::block_on(p.generate(c, &base(&io), &mut |_| {})) else {
        panic!("CLIP must refuse the mask")
    };
    let e = e.to_string();
    assert!(
        e.contains("hoa.json: `text_encoder_attention_mask` applies to a T5EncoderModel"),
        "{e}"
    );
}
