//! `hoa generate` run as a process, on the tiny fixture model: PNG with the parameters chunk,
//! seeds reproducible to the byte, no overwriting, and every bad input a clear message with
//! nothing written.

#[path = "common/cli.rs"]
mod cli;
mod common;
use cli::hoa;
#[path = "common/fixture.rs"]
mod fixture;

use fixture::{copy_dir, dir};
use hoa::image_io::read_png_parameters;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hoa-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model() -> String {
    dir("pipeline_tiny").display().to_string()
}

fn files_in(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fresh output folder `name` holding a copy of the tiny model with `hoa_json` as its
/// hoa.json; returns (folder, model folder).
fn tiny_model_with_hoa_json(name: &str, hoa_json: &str) -> (PathBuf, PathBuf) {
    let d = out_dir(name);
    let m = d.join("model");
    copy_dir(&dir("pipeline_tiny"), &m);
    std::fs::write(m.join("hoa.json"), hoa_json).unwrap();
    (d, m)
}

fn generate(d: &Path, out: &str, seed: &str, extra: &[&str]) -> Output {
    let m = model();
    let o = d.join(out).display().to_string();
    let mut args = vec![
        "generate",
        "a red circle left of a blue square",
        "--seed",
        seed,
    ];
    args.extend_from_slice(&["--out", &o]);
    // Defaults the test may override (clap refuses an option given twice).
    for (k, v) in [
        ("--model", m.as_str()),
        ("--steps", "2"),
        ("--width", "32"),
        ("--height", "24"),
        ("--scheduler", "dpm++2m"),
    ] {
        if !extra.contains(&k) {
            args.extend_from_slice(&[k, v]);
        }
    }
    args.extend_from_slice(extra);
    hoa(&args)
}

#[test]
fn generate_writes_reproducible_pngs_with_parameters_and_never_overwrites() {
    if common::ctx().is_none() {
        return;
    }
    let d = out_dir("gen");
    assert!(generate(&d, "a.png", "5", &["--negative", "green"])
        .status
        .success());
    let a = std::fs::read(d.join("a.png")).unwrap();
    let img = image::load_from_memory(&a).unwrap();
    assert_eq!((img.width(), img.height()), (32, 24));
    let params = read_png_parameters(&a).unwrap().expect("parameters chunk");
    for want in [
        "a red circle left of a blue square\nNegative prompt: green\n",
        "Steps: 2",
        "Sampler: dpm++2m",
        "CFG scale: 7.5",
        "Seed: 5",
        "Size: 32x24",
        "Model: pipeline_tiny",
    ] {
        assert!(params.contains(want), "{want:?} not in {params:?}");
    }
    // Same seed again, same out name: a free name is chosen and the bytes are identical.
    assert!(generate(&d, "a.png", "5", &["--negative", "green"])
        .status
        .success());
    assert_eq!(files_in(&d), ["a-1.png", "a.png"]);
    assert_eq!(std::fs::read(d.join("a-1.png")).unwrap(), a);
    assert_eq!(
        std::fs::read(d.join("a.png")).unwrap(),
        a,
        "a.png was overwritten"
    );
    // Another seed, another image; --force overwrites.
    assert!(
        generate(&d, "a.png", "6", &["--negative", "green", "--force"])
            .status
            .success()
    );
    assert_ne!(std::fs::read(d.join("a.png")).unwrap(), a);
    assert_eq!(files_in(&d).len(), 2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn ddim_eta_draws_seeded_noise_and_others_ignore_it() {
    if common::ctx().is_none() {
        return;
    }
    let d = out_dir("eta");
    let ddim = |out: &str, eta: &str| {
        let o = generate(&d, out, "3", &["--scheduler", "ddim", "--eta", eta]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(d.join(out)).unwrap()
    };
    let (a, b, zero) = (
        ddim("a.png", "0.5"),
        ddim("b.png", "0.5"),
        ddim("z.png", "0"),
    );
    assert_eq!(a, b, "eta 0.5 with one seed must be reproducible");
    assert_ne!(a, zero, "eta 0.5 must add noise that eta 0 does not");
    let params = read_png_parameters(&a).unwrap().expect("parameters chunk");
    assert!(params.contains("Eta: 0.5"), "{params:?}");
    assert!(!read_png_parameters(&zero).unwrap().unwrap().contains("Eta"));
    let o = generate(&d, "e.png", "3", &["--scheduler", "euler", "--eta", "0.5"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("eta 0.5 is ignored"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A model folder's hoa.json `guidance_high` applies (and is recorded) unless --guidance is
/// given; --guidance-high takes its timestep from the folder.
#[test]
fn hoa_json_guidance_high_is_the_default_unless_guidance_is_given() {
    if common::ctx().is_none() {
        return;
    }
    let (d, m) = tiny_model_with_hoa_json(
        "ghigh",
        r#"{"guidance": 4, "guidance_high": {"scale": 6, "from_timestep": 500}}"#,
    );
    let m = m.display().to_string();
    let run = |out: &str, extra: &[&str]| {
        let args = [
            &["--model", m.as_str(), "--scheduler", "ddim", "--steps", "4"],
            extra,
        ]
        .concat();
        let o = generate(&d, out, "2", &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(d.join(out)).unwrap()
    };
    let model = run("model.png", &[]);
    let params = read_png_parameters(&model).unwrap().unwrap();
    for want in ["CFG scale: 4", "CFG scale high noise: 6 from timestep 500"] {
        assert!(params.contains(want), "{want:?} not in {params:?}");
    }
    let plain = run("plain.png", &["--guidance", "4"]);
    assert!(!read_png_parameters(&plain)
        .unwrap()
        .unwrap()
        .contains("high noise"));
    assert_ne!(plain, model);
    assert_eq!(
        run("again.png", &["--guidance", "4", "--guidance-high", "6"]),
        model
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A model folder's hoa.json `prompt_upsampling` rewrites the prompt before it is encoded: the
/// image is the one the rewritten prompt gives as typed, the PNG records the prompt as typed
/// and the rewrite (quoted, as A1111 quotes a value with commas), and --no-upsample skips it.
/// Unworkable rules fail before the model loads.
#[test]
fn hoa_json_prompt_upsampling_rewrites_the_prompt_unless_no_upsample() {
    if common::ctx().is_none() {
        return;
    }
    let rules = |nouns: &str| {
        format!(
            r#"{{"prompt_upsampling": {{"nouns": [{nouns}],
                "defaults": [{{"words": ["small", "large"], "word": "large"}}]}}}}"#
        )
    };
    let (d, m) = tiny_model_with_hoa_json("upsample", &rules(r#""circle", "square""#));
    let hoa_json = m.join("hoa.json");
    let m = m.display().to_string();
    let run = |out: &str, prompt: &str, extra: &[&str]| {
        let o = d.join(out).display().to_string();
        let args = [
            &[
                "generate", prompt, "--model", &m, "--steps", "2", "--seed", "2",
            ],
            &[
                "--width",
                "32",
                "--height",
                "24",
                "--scheduler",
                "ddim",
                "--out",
                &o,
            ],
            extra,
        ]
        .concat();
        let r = hoa(&args);
        let err = String::from_utf8_lossy(&r.stderr).into_owned();
        assert!(r.status.success(), "{err}");
        let png = std::fs::read(&o).unwrap();
        let pixels = image::load_from_memory(&png).unwrap().to_rgb8().into_raw();
        (pixels, read_png_parameters(&png).unwrap().unwrap(), err)
    };
    let typed = "a red circle, a blue square";
    let rewritten = "a large red circle, a large blue square";
    let (up, params, err) = run("up.png", typed, &[]);
    assert!(
        err.contains(&format!(
            "upsampled prompt (--no-upsample to use it as typed): {rewritten}"
        )),
        "{err}"
    );
    assert!(params.starts_with(&format!("{typed}\n")), "{params:?}");
    let want = format!("Upsampled prompt: \"{rewritten}\"");
    assert!(params.contains(&want), "{want:?} not in {params:?}");
    let (as_rewritten, params, _) = run("b.png", rewritten, &["--no-upsample"]);
    assert_eq!(up, as_rewritten, "the image must be the rewritten prompt's");
    assert!(!params.contains("Upsampled"), "{params:?}");
    let (plain, params, err) = run("c.png", typed, &["--no-upsample"]);
    assert_ne!(up, plain, "the rewrite must change what is drawn");
    assert!(
        !params.contains("Upsampled") && !err.contains("upsampled"),
        "{err}"
    );
    // Nothing to fill in: no rewrite, nothing recorded.
    let (_, params, err) = run("d.png", "a small red circle", &[]);
    assert!(
        !params.contains("Upsampled") && !err.contains("upsampled"),
        "{err}"
    );

    std::fs::write(&hoa_json, rules("")).unwrap();
    let o = d.join("x.png").display().to_string();
    let r = hoa(&["generate", typed, "--model", &m, "--out", &o]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("hoa.json: `prompt_upsampling.nouns` is empty"),
        "{err}"
    );
    assert!(
        !err.contains("loaded") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!d.join("x.png").exists());
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs a generate that must fail, checks stderr names the problem and no file was written.
fn fails(name: &str, args: &[&str], want: &str) {
    let d = out_dir(name);
    let o = generate(&d, "x.png", "1", args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{name}: succeeded");
    assert!(err.contains(want), "{name}: {want:?} not in {err:?}");
    assert!(!err.contains("panicked"), "{name}: panicked: {err}");
    assert!(files_in(&d).is_empty(), "{name}: wrote {:?}", files_in(&d));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    if common::ctx().is_none() {
        return;
    }
    fails("f16_and_f32", &["--f16", "--f32"], "cannot be used with");
    if !common::ctx().unwrap().has_f16() {
        fails(
            "f16_without_f16",
            &["--f16"],
            "--f16: this adapter has no shader-f16",
        );
    }
    fails(
        "ghigh_from_alone",
        &["--guidance-high-from", "400"],
        "--guidance-high-from: needs --guidance-high",
    );
    fails(
        "width",
        &["--width", "30"],
        "--width: must be a multiple of 8",
    );
    fails("steps", &["--steps", "0"], "--steps: must be between 1 and");
    fails(
        "sched",
        &["--scheduler", "plms"],
        "--scheduler: unknown scheduler",
    );
    fails("eta", &["--eta", "1.5"], "--eta: must be from 0");
    // Negative numbers reach hoa's checks (not clap's "use -- -1" advice), either spelling.
    fails(
        "neg",
        &["--guidance", "-1"],
        "--guidance: must be a number from 0",
    );
    fails(
        "neg2",
        &["--guidance=-1"],
        "--guidance: must be a number from 0",
    );
    fails(
        "w32",
        &["--width", "4294967296"],
        "--width: must be between 1 and 16384",
    );
    fails(
        "strength",
        &["--strength", "0.5"],
        "--strength: needs --init-image",
    );
    fails(
        "nomodel",
        &["--model", "/nonexistent/model"],
        "/nonexistent/model does not exist",
    );
    let d = out_dir("junk");
    let junk = d.join("junk.png");
    std::fs::write(&junk, b"not an image").unwrap();
    let junk = junk.display().to_string();
    fails(
        "init",
        &["--init-image", &junk],
        "cannot decode it as PNG or JPEG",
    );
    let _ = std::fs::remove_dir_all(&d);
    fails(
        "huge",
        &["--width", "16384", "--height", "16384"],
        "over this device's",
    );
    let d = out_dir("textlatents");
    let text = d.join("noise.txt");
    std::fs::write(&text, "0.1 0.2 0.3 0.4\n").unwrap();
    let text = text.display().to_string();
    fails("latents", &["--latents", &text], "it starts with text");
    let _ = std::fs::remove_dir_all(&d);
    // A mask of the wrong size for the init image.
    let d = out_dir("masks");
    let save = |name: &str, w: u32, h: u32| {
        let p = d.join(name);
        image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]))
            .save(&p)
            .unwrap();
        p.display().to_string()
    };
    let init = save("init.png", 32, 24);
    let mask = save("mask.png", 16, 16);
    fails(
        "mask",
        &["--init-image", &init, "--mask", &mask],
        "is 16x16 but the init image is 32x24",
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_model_folder_missing_a_component_is_named() {
    if common::ctx().is_none() {
        return;
    }
    let d = out_dir("partial");
    let m = d.join("model");
    std::fs::create_dir_all(&m).unwrap();
    let f = "model_index.json";
    std::fs::copy(dir("pipeline_tiny").join(f), m.join(f)).unwrap();
    let out = d.join("x.png").display().to_string();
    let o = hoa(&[
        "generate",
        "a red circle",
        "--model",
        &m.display().to_string(),
        "--out",
        &out,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("the folder `text_encoder/` is missing"),
        "{err}"
    );
    assert!(!Path::new(&out).exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_prompt_file_makes_one_image_per_line_seeded_in_turn() {
    if common::ctx().is_none() {
        return;
    }
    let d = out_dir("file");
    let list = d.join("prompts.txt");
    std::fs::write(&list, "a red circle\n\na blue square\n").unwrap();
    let m = model();
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", &m, "--steps", "2", "--seed", "3"];
        args.extend_from_slice(extra);
        assert!(hoa(&args).status.success());
    };
    let out = d.join("x.png").display().to_string();
    run(&["--prompt-file", &list.display().to_string(), "--out", &out]);
    assert_eq!(files_in(&d), ["prompts.txt", "x-0000.png", "x-0001.png"]);
    // Line 1 is seeded 3 + 1: the same as asking for it alone with seed 4.
    let alone = d.join("alone.png").display().to_string();
    let m2 = model();
    let args = [
        "generate",
        "a blue square",
        "--model",
        &m2,
        "--steps",
        "2",
        "--seed",
        "4",
        "--out",
        &alone,
    ];
    assert!(hoa(&args).status.success());
    assert_eq!(
        std::fs::read(d.join("x-0001.png")).unwrap(),
        std::fs::read(d.join("alone.png")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// The README's main command: no --model takes the shipped weights/default at its native size
/// with the defaults its hoa.json gives (guidance 2, 5 at high noise, prompt upsampling), and
/// writes hoa.png in the working folder.
#[test]
fn the_readme_command_runs_the_shipped_model() {
    if common::ctx().is_none() {
        return;
    }
    let d = out_dir("readme");
    let out = Command::new(env!("CARGO_BIN_EXE_hoa"))
        .args([
            "generate",
            "a red circle left of a blue square",
            "--steps",
            "2",
        ])
        .current_dir(&d)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .output()
        .expect("run hoa");
    eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert_eq!(files_in(&d), ["hoa.png"]);
    let png = std::fs::read(d.join("hoa.png")).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 64));
    let params = read_png_parameters(&png)
        .unwrap()
        .expect("parameters chunk");
    for want in [
        "CFG scale: 2",
        "CFG scale high noise: 5 from timestep 500",
        "Upsampled prompt: a large solid red circle left of a large solid blue square",
        "Model: default",
        "Size: 64x64",
    ] {
        assert!(params.contains(want), "{want:?} not in {params:?}");
    }
    // A picture, not a flat fill: the pixels vary.
    let (lo, hi) = img
        .pixels()
        .flat_map(|p| p.0)
        .fold((255u8, 0u8), |(l, h), v| (l.min(v), h.max(v)));
    assert!(hi - lo > 64, "pixel range {lo}..{hi}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Output paths are checked before the model loads; a folder gets hoa.png inside it.
#[test]
fn out_folders_are_checked_first_and_written_into() {
    if common::ctx().is_none() {
        return;
    }
    let d = out_dir("outdir");
    let m = model();
    let run = |out: &Path| {
        let out = out.display().to_string();
        let args = [
            "generate",
            "a red circle",
            "--model",
            &m,
            "--steps",
            "1",
            "--out",
            &out,
        ];
        hoa(&args)
    };
    for (out, want) in [
        ("no/such/folder/x.png", "does not exist"),
        ("x.jpg", "hoa writes PNG files"),
    ] {
        let o = run(&d.join(out));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{err}");
        assert!(
            !err.contains("loaded"),
            "checked only after the load: {err}"
        );
    }
    let inside = d.join("pics");
    std::fs::create_dir_all(&inside).unwrap();
    assert!(run(&inside).status.success());
    assert_eq!(files_in(&inside), ["hoa.png"]);
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs started together never pick the same free name (each is created with create_new).
#[test]
fn concurrent_runs_never_share_a_file() {
    if common::ctx().is_none() {
        return;
    }
    let d = out_dir("race");
    let o = d.join("r.png").display().to_string();
    let m = model();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_hoa"))
                .args(["generate", "a red circle", "--model", &m, "--steps", "1"])
                .args(["--width", "16", "--height", "16", "--out", &o])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in runs {
        assert!(r.wait_with_output().unwrap().status.success());
    }
    assert_eq!(files_in(&d), ["r-1.png", "r-2.png", "r.png"]);
    let _ = std::fs::remove_dir_all(&d);
}

/// A typed --steps equal to hoa's old clap default is still the user's choice.
#[test]
fn typed_steps_are_kept_over_hoa_json() {
    if common::ctx().is_none() {
        return;
    }
    let (d, m) = tiny_model_with_hoa_json("steps25", r#"{"steps": 2}"#);
    let m = m.display().to_string();
    let o = generate(&d, "s.png", "1", &["--model", &m, "--steps", "25"]);
    assert!(o.status.success());
    let png = std::fs::read(d.join("s.png")).unwrap();
    let p = read_png_parameters(&png).unwrap().unwrap();
    assert!(p.contains("Steps: 25,"), "{p}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Words the model does not know are named (the shipped model's vocabulary is 60 words).
#[test]
fn unknown_words_are_named() {
    if common::ctx().is_none() {
        return;
    }
    let d = out_dir("unknown");
    let o = d.join("u.png").display().to_string();
    let out = hoa(&["generate", "a cat", "--steps", "1", "--out", &o]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    // The rewriter turns it into a shape; the warning names the word and the rewrite.
    assert!(err.contains("does not know: \"cat\""), "{err}");
    assert!(err.contains("the rewriter made it"), "{err}");
    assert!(err.contains("its vocabulary:"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// hoa.json `rewriter` (here the shipped T5 rewriter copied beside the tiny model) rewrites the
/// prompt instead of `prompt_upsampling`: the CLI prints the rewrite, the PNG records it, the
/// image is the one the rewrite gives as typed, --no-upsample turns it off, and a rewriter
/// folder that is not there fails before the model loads, naming the file.
#[test]
fn hoa_json_rewriter_replaces_the_rules_unless_no_upsample() {
    if common::ctx().is_none() {
        return;
    }
    let rules = r#""prompt_upsampling": {"nouns": ["circle", "square"],
        "defaults": [{"words": ["small", "large"], "word": "large"}]}"#;
    let (d, m) = tiny_model_with_hoa_json("rewriter", &format!(r#"{{"rewriter": "rw", {rules}}}"#));
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/default/rewriter");
    copy_dir(&shipped, &m.join("rw"));
    let hoa_json = m.join("hoa.json");
    let m = m.display().to_string();
    let run = |out: &str, prompt: &str, extra: &[&str]| {
        let o = d.join(out).display().to_string();
        let args = [
            &["generate", prompt, "--model", &m, "--steps", "2"],
            &["--width", "32", "--height", "24", "--out", &o],
            extra,
        ]
        .concat();
        let r = hoa(&args);
        let err = String::from_utf8_lossy(&r.stderr).into_owned();
        assert!(r.status.success(), "{err}");
        let png = std::fs::read(&o).unwrap();
        let pixels = image::load_from_memory(&png).unwrap().to_rgb8().into_raw();
        (pixels, read_png_parameters(&png).unwrap().unwrap(), err)
    };
    let typed = "two green circles";
    // The rewriter's, not the rules' (which would leave a plural alone).
    let rewritten = "a large solid green circle left of a large solid green circle";
    let (up, params, err) = run("up.png", typed, &[]);
    let line = format!("upsampled prompt (--no-upsample to use it as typed): {rewritten}");
    assert!(err.contains(&line), "{err}");
    assert!(params.starts_with(&format!("{typed}\n")), "{params:?}");
    assert!(
        params.contains(&format!("Upsampled prompt: {rewritten}")),
        "{params:?}"
    );
    let (as_rewritten, params, _) = run("b.png", rewritten, &["--no-upsample"]);
    assert_eq!(up, as_rewritten, "the image must be the rewrite's");
    assert!(!params.contains("Upsampled"), "{params:?}");
    let (_, params, err) = run("c.png", typed, &["--no-upsample"]);
    assert!(
        !params.contains("Upsampled") && !err.contains("upsampled"),
        "{err}"
    );

    std::fs::write(&hoa_json, r#"{"rewriter": "missing"}"#).unwrap();
    let o = d.join("x.png").display().to_string();
    let r = hoa(&["generate", typed, "--model", &m, "--out", &o]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("missing/config.json is missing"),
        "{err}"
    );
    assert!(
        !err.contains("loaded") && !err.contains("panicked"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// `hoa generate` with the shipped model prints the shipped rewriter's rewrite, the text
/// transformers' `generate` gives (tests/fixtures/rewriter, tools/fixtures/rewriter.py), for the
/// issue's examples, and records it in the PNG.
#[test]
fn the_shipped_model_prints_the_rewriters_rewrite() {
    if common::ctx().is_none() {
        return;
    }
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir("rewriter").join("cases.json")).unwrap())
            .unwrap();
    let d = out_dir("shipped-rewriter");
    for typed in ["two green circles", "a star that is red"] {
        let case = cases["generate"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["text"] == typed && c["beams"].is_null())
            .expect("a fixture case");
        let want = case["decoded"].as_str().unwrap();
        let o = d.join("x.png").display().to_string();
        let r = hoa(&["generate", typed, "--steps", "1", "--force", "--out", &o]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{err}");
        let line = format!("upsampled prompt (--no-upsample to use it as typed): {want}\n");
        assert!(err.contains(&line), "{typed:?}: {err}");
        let params = read_png_parameters(&std::fs::read(&o).unwrap())
            .unwrap()
            .unwrap();
        assert!(
            params.contains(&format!("Upsampled prompt: {want}")),
            "{params:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}
