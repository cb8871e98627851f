//! `hoa generate --variation IMAGE` run as a process on the stable unCLIP fixture folder
//! (tests/fixtures/unclip_tiny): PNGs made from the image's CLIP embedding, the same image as
//! the library makes for the same options, `--noise-level` changing it, and the errors of a
//! model without an image encoder.

#[path = "common/cli.rs"]
mod cli;
mod common;
use cli::hoa;
#[path = "common/fixture.rs"]
mod fixture;

use fixture::dir;
use hoa::image_io::read_png_parameters;
use hoa::model_files::DirFiles;
use hoa::pipeline::{GenerateOptions, Pipeline};
use hoa::DType;
use std::path::{Path, PathBuf};

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hoa-cli-unclip-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn variation(out: &Path, extra: &[&str]) -> std::process::Output {
    let model = dir("unclip_tiny");
    let image = model.join("image.png");
    let mut args = vec![
        "generate",
        "--variation",
        image.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--width",
        "32",
        "--height",
        "24",
        "--steps",
        "2",
        "--guidance",
        "3",
        "--seed",
        "7",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    hoa(&args)
}

#[test]
fn generate_variation_writes_the_librarys_image_with_its_parameters() {
    let Some(c) = common::ctx() else { return };
    let d = out_dir("gen");
    let a = d.join("a.png");
    let out = variation(&a, &[]);
    assert!(out.status.success());
    let png = std::fs::read(&a).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (32, 24));
    let params = read_png_parameters(&png)
        .unwrap()
        .expect("parameters chunk");
    assert!(params.contains("Variation noise level: 0"), "{params}");
    // An empty prompt is a variation's default, not a warning.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("empty"));
    // The library, given the same options, makes the same pixels.
    let p = Pipeline::load(c, &DirFiles::open(dir("unclip_tiny")).unwrap(), DType::F32).unwrap();
    let bytes = std::fs::read(dir("unclip_tiny").join("image.png")).unwrap();
    let opts = GenerateOptions {
        width: 32,
        height: 24,
        steps: 2,
        guidance: 3.0,
        seed: 7,
        variation: Some(hoa::options::Variation {
            image: hoa::clip::decode_image(&bytes, "image.png").unwrap(),
            noise_level: 0,
            noise: None,
        }),
        ..Default::default()
    };
    let lib = pollster::block_on(p.generate(c, &opts, &mut |_| {})).unwrap();
    assert_eq!(img.as_raw(), &lib[0].data);
    // A higher noise level strays from the image: another picture.
    let b = d.join("b.png");
    assert!(variation(&b, &["--noise-level", "900"]).status.success());
    let other = image::load_from_memory(&std::fs::read(&b).unwrap())
        .unwrap()
        .to_rgb8();
    assert_ne!(other.as_raw(), img.as_raw());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn variation_errors_name_the_flag_and_what_is_missing() {
    if common::ctx().is_none() {
        return;
    }
    let d = out_dir("err");
    let o = variation(&d.join("x.png"), &["--noise-level", "1000"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("--noise-level: must be between 0 and 999"),
        "{e}"
    );
    let plain = dir("pipeline_tiny");
    let image = dir("unclip_tiny").join("image.png");
    let out = d.join("y.png");
    let o = hoa(&[
        "generate",
        "--variation",
        image.to_str().unwrap(),
        "--model",
        plain.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("--variation") && e.contains("no image_encoder/"),
        "{e}"
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).unwrap();
}
