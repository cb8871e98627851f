//! The generation policy (`hoa::resolve`) on the tiny fixture folder, read into memory and
//! altered per test: defaults and where they come from, checks and the names errors use. No
//! GPU: resolving needs only the folder's configs.

#[path = "common/fixture.rs"]
mod fixture;

use fixture::dir;
use hoa::model_files::MemoryFiles;
use hoa::model_info::ModelInfo;
use hoa::request::{Latents, Mask, Origin, Request};
use hoa::resolve::{resolve, DeviceLimits, Resolved};
use std::collections::HashMap;

const LIMITS: DeviceLimits = DeviceLimits {
    max_binding_bytes: 128 << 20,
    dtype_size: 4,
    host_memory: false,
};

/// pipeline_tiny's files, with `edits` (path -> new content; "" removes the file).
fn files(edits: &[(&str, &str)]) -> MemoryFiles {
    let root = dir("pipeline_tiny");
    let mut map = HashMap::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                map.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    for (path, text) in edits {
        if text.is_empty() {
            map.remove(*path);
        } else {
            map.insert(path.to_string(), text.as_bytes().to_vec());
        }
    }
    MemoryFiles {
        name: "tiny".into(),
        files: map,
    }
}

/// `path`'s JSON with `key` set to `value` (JSON text).
fn with_key(path: &str, key: &str, value: &str) -> String {
    let bytes = std::fs::read(dir("pipeline_tiny").join(path)).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v[key] = serde_json::from_str(value).unwrap();
    v.to_string()
}

fn info(edits: &[(&str, &str)]) -> ModelInfo {
    ModelInfo::read(&files(edits)).unwrap()
}

fn info_err(edits: &[(&str, &str)]) -> String {
    ModelInfo::read(&files(edits)).unwrap_err().to_string()
}

fn cli(prompt: &str) -> Request {
    Request {
        prompt: Some(prompt.into()),
        origin: Origin::Cli,
        ..Default::default()
    }
}

fn ok(req: &Request, m: &ModelInfo) -> Resolved {
    resolve(req, m, LIMITS).unwrap()
}

fn err(req: &Request, m: &ModelInfo) -> String {
    resolve(req, m, LIMITS).unwrap_err().to_string()
}

#[test]
fn typed_steps_win_over_the_model_and_the_model_over_hoas_default() {
    let m = info(&[("hoa.json", r#"{"steps": 3, "guidance": 2.5}"#)]);
    let typed = Request {
        steps: Some(25),
        ..cli("a")
    };
    assert_eq!(
        ok(&typed, &m).options.steps,
        25,
        "a typed 25 is the user's choice"
    );
    assert_eq!(ok(&cli("a"), &m).options.steps, 3);
    assert_eq!(ok(&cli("a"), &m).options.guidance, 2.5);
    let bare = info(&[]);
    assert_eq!(ok(&cli("a"), &bare).options.steps, 25);
    assert_eq!(ok(&cli("a"), &bare).options.guidance, 7.5);
}

#[test]
fn errors_name_the_flag_the_key_or_the_file() {
    let m = info(&[("hoa.json", r#"{"steps": 0}"#)]);
    assert!(
        err(&cli("a"), &m).starts_with("hoa.json: `steps`"),
        "{}",
        err(&cli("a"), &m)
    );
    let bare = info(&[]);
    let zero = Request {
        steps: Some(0),
        ..cli("a")
    };
    assert!(
        err(&zero, &bare).starts_with("--steps: "),
        "{}",
        err(&zero, &bare)
    );
    let json = Request {
        origin: Origin::Json,
        ..zero
    };
    assert!(
        err(&json, &bare).starts_with("steps: "),
        "{}",
        err(&json, &bare)
    );
    let neg = Request {
        guidance: Some(-1.0),
        ..cli("a")
    };
    assert!(err(&neg, &bare).starts_with("--guidance: must be a number from 0"));
}

#[test]
fn huge_sizes_are_refused_without_overflow() {
    let m = info(&[]);
    for v in [4294967296i64, 2147483648, -8, 0, i64::MAX] {
        let r = Request {
            width: Some(v),
            height: Some(v),
            ..cli("a")
        };
        let e = err(&r, &m);
        assert!(
            e.starts_with("--width: must be between 1 and 16384"),
            "{v}: {e}"
        );
    }
    let odd = Request {
        width: Some(30),
        ..cli("a")
    };
    let e = err(&odd, &m);
    assert!(
        e.contains("multiple of 8") && e.contains("halves the latent 1 times"),
        "{e}"
    );
    // A multiple of this tiny model's 4 that the pipeline (8, as diffusers') would refuse later
    // with a 500 in the server: resolve refuses it first.
    let four = Request {
        height: Some(36),
        ..cli("a")
    };
    assert!(err(&four, &m).starts_with("--height: must be a multiple of 8"));
    let big = Request {
        width: Some(16384),
        height: Some(16384),
        batch: Some(64),
        ..cli("a")
    };
    let e = err(&big, &m);
    assert!(
        e.contains("MiB activation") && e.contains("--width/--height/--batch"),
        "{e}"
    );
}

#[test]
fn absurd_model_sizes_name_the_config_field() {
    for s in ["536870912", "1073741824", "0"] {
        let unet = with_key("unet/config.json", "sample_size", s);
        let e = info_err(&[("unet/config.json", &unet)]);
        assert!(e.starts_with("unet/config.json: `sample_size`"), "{s}: {e}");
    }
    let sched = with_key(
        "scheduler/scheduler_config.json",
        "num_train_timesteps",
        "0",
    );
    let e = info_err(&[("scheduler/scheduler_config.json", &sched)]);
    assert!(
        e.starts_with("scheduler/scheduler_config.json: `num_train_timesteps`"),
        "{e}"
    );
}

#[test]
fn nonsense_is_refused() {
    let m = info(&[]);
    let strength = Request {
        strength: Some(0.5),
        ..cli("a")
    };
    assert!(err(&strength, &m).contains("--strength: needs --init-image"));
    let from = Request {
        guidance_high: Some(5.0),
        guidance_high_from: Some(5000.0),
        ..cli("a")
    };
    assert!(err(&from, &m).starts_with("--guidance-high-from: must be a timestep from 0 to"));
    let alone = Request {
        guidance_high_from: Some(300.0),
        ..cli("a")
    };
    assert!(err(&alone, &m).contains("needs --guidance-high"));
    let g = Request {
        guidance: Some(1e30),
        ..cli("a")
    };
    assert!(err(&g, &m).starts_with("--guidance: "));
    let sched = Request {
        scheduler: Some("pndm".into()),
        ..cli("a")
    };
    assert!(err(&sched, &m).starts_with("--scheduler: "));
    let hoa = info_err(&[("hoa.json", r#"{"guidence": 3}"#)]);
    assert!(hoa.contains("guidence"), "{hoa}");
    let nested = r#"{"prompt_upsampling": {"nouns": ["star"], "defaults": [], "rewrite": []}}"#;
    let hoa = info_err(&[("hoa.json", nested)]);
    assert!(hoa.contains("rewrite"), "{hoa}");
    let class = with_key(
        "model_index.json",
        "_class_name",
        r#""StableDiffusion3Pipeline""#,
    );
    let e = info_err(&[("model_index.json", &class)]);
    assert!(e.starts_with("model_index.json: `_class_name` is StableDiffusion3Pipeline"));
    // An SDXL pipeline class over an SD U-Net (no text_time conditioning) is refused.
    let class = with_key(
        "model_index.json",
        "_class_name",
        r#""StableDiffusionXLPipeline""#,
    );
    let e = info_err(&[("model_index.json", &class)]);
    assert!(
        e.starts_with("unet/config.json: `addition_embed_type` is not \"text_time\""),
        "{e}"
    );
    let e = info_err(&[("model_index.json", "[1, 2]")]);
    assert!(e.contains("expected a JSON object"), "{e}");
    let e = Request::from_json(r#"{"prompt": "a", "stpes": 3}"#).unwrap_err();
    assert!(e.to_string().contains("stpes"));
}

#[test]
fn latents_must_be_finite_and_fit() {
    let m = info(&[]);
    let f = m.vae_scale_factor().unwrap();
    let side = m.native_size().unwrap() / f;
    let n = 4 * side * side;
    let mut values = vec![0.5f32; n];
    values[7] = f32::NAN;
    let r = Request {
        latents: Some(Latents {
            values,
            shape: vec![1, 4, side, side],
        }),
        ..cli("a")
    };
    let e = err(&r, &m);
    assert!(e.starts_with("--latents: value 7 is NaN"), "{e}");
    let wrong = Request {
        latents: Some(Latents {
            values: vec![0.0; 8],
            shape: vec![2, 4],
        }),
        ..cli("a")
    };
    assert!(err(&wrong, &m).starts_with("--latents: "));
}

#[test]
fn warnings_for_soft_masks_and_far_sizes() {
    let m = info(&[]);
    let native = m.native_size().unwrap();
    let far = Request {
        width: Some(8 * native as i64),
        ..cli("a")
    };
    assert!(ok(&far, &m)
        .warnings
        .iter()
        .any(|w| w.contains("trained at")));
    let image = hoa::image_io::RgbImage {
        width: native,
        height: native,
        data: vec![0; 3 * native * native],
    };
    let gray = Request {
        init_image: Some(image),
        mask: Some(Mask {
            width: native,
            height: native,
            values: vec![0.5; native * native],
        }),
        ..cli("a")
    };
    let r = ok(&gray, &m);
    assert!(
        r.warnings.iter().any(|w| w.contains("gray")),
        "{:?}",
        r.warnings
    );
    assert_eq!(r.options.init.as_ref().unwrap().strength, 0.75);
}

#[test]
fn parameters_are_one_text_for_every_front_end() {
    let m = info(&[(
        "hoa.json",
        r#"{"guidance_high": {"scale": 5, "from_timestep": 500}}"#,
    )]);
    let r = ok(
        &Request {
            seed: Some(9),
            ..cli("a red circle")
        },
        &m,
    );
    let text = r.parameters("tiny", 1).to_text();
    assert!(text.starts_with("a red circle\nSteps: 25, Sampler: ddim, CFG scale: 7.5, Seed: 10"));
    assert!(
        text.contains("CFG scale high noise: 5 from timestep 500"),
        "{text}"
    );
    // The model's split is tuned to its own scale: a typed guidance drops it.
    let typed = ok(
        &Request {
            guidance: Some(3.0),
            ..cli("a")
        },
        &m,
    );
    assert!(typed.options.guidance_high.is_none());
}

#[test]
fn a_variation_request_is_unclip_on_an_unclip_model_and_img2img_elsewhere() {
    use hoa::resolve::variation_request;
    let image = hoa::image_io::RgbImage {
        width: 32,
        height: 24,
        data: (0..32 * 24 * 3).map(|i| (i % 251) as u8).collect(),
    };
    let png = hoa::image_io::encode_png(&image, None).unwrap();
    let json = |noise_level| Request {
        noise_level,
        seed: Some(3),
        ..Default::default()
    };
    let unclip =
        ModelInfo::read(&hoa::model_files::DirFiles::open(dir("unclip_tiny")).unwrap()).unwrap();
    let req = variation_request(json(Some(5)), &png, &unclip).unwrap();
    let r = ok(&req, &unclip);
    let v = r.options.variation.as_ref().expect("a variation");
    assert_eq!((v.noise_level, &v.image), (5, &image));
    assert!(r.options.init.is_none() && r.options.prompt.is_empty());
    // Without an image encoder: img2img of the image from the empty prompt, not rewritten.
    let plain = info(&[]);
    let req = variation_request(json(None), &png, &plain).unwrap();
    assert_eq!(
        (req.prompt.as_deref(), req.upsample),
        (Some(""), Some(false))
    );
    let r = ok(&req, &plain);
    assert_eq!(r.options.init.as_ref().map(|i| &i.image), Some(&image));
    assert!(r.options.variation.is_none());
    let e = variation_request(json(Some(5)), &png, &plain)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("noise_level: needs a stable unCLIP model"),
        "{e}"
    );
    for m in [&unclip, &plain] {
        let e = variation_request(json(None), b"junk", m).unwrap_err();
        assert!(
            matches!(&e, hoa::Error::InvalidOption { what, .. } if what == "image"),
            "{e}"
        );
    }
}

#[test]
fn guidance_halves_split_by_default_only_where_device_memory_is_host_memory() {
    let m = info(&[]);
    let cpu = DeviceLimits {
        host_memory: true,
        ..LIMITS
    };
    let split = |req: &Request, limits| resolve(req, &m, limits).unwrap().options.split_guidance;
    assert!(!split(&cli("a"), LIMITS), "a GPU guides in one batch");
    assert!(split(&cli("a"), cpu), "a CPU adapter splits");
    for (asked, limits) in [(false, cpu), (true, LIMITS)] {
        let req = Request {
            split_guidance: Some(asked),
            ..cli("a")
        };
        assert_eq!(split(&req, limits), asked, "the request's choice wins");
    }
}
