//! LoRA merges against diffusers' `load_lora_weights` + `fuse_lora` on the tiny pipeline
//! (tests/fixtures/lora_tiny, written by tools/fixtures/lora.py): the merged tensors in both
//! formats and with two LoRAs at once, the image, diffusers' older key names, and the errors.

#[path = "common/cli.rs"]
mod cli;
mod common;
use cli::hoa as hoa_cli;
#[path = "common/fixture.rs"]
mod fixture;

use common::{ctx, dtypes, round_to};
use fixture::{dir, Io};
use hoa::lora::keys::Component;
use hoa::lora::{LoraFile, LoraSet};
use hoa::model_files::DirFiles;
use hoa::model_info::ModelInfo;
use hoa::pipeline::{Event, GenerateOptions, Pipeline};
use hoa::schedulers::SchedulerKind;
use hoa::weights::{Loader, Weights};
use hoa::DType;
use safetensors::tensor::{Dtype, TensorView};

const LORA: &str = "lora_tiny";
const PIPE: &str = "pipeline_tiny";

fn lora(file: &str) -> LoraFile {
    LoraFile::from_bytes(file, std::fs::read(dir(LORA).join(file)).unwrap()).unwrap()
}

fn set(files: &[(&str, f64)]) -> LoraSet {
    LoraSet {
        loras: files.iter().map(|(f, s)| (lora(f), *s)).collect(),
    }
}

fn component_weights(c: Component) -> Weights {
    let file = match c {
        Component::Unet => "unet/diffusion_pytorch_model.safetensors",
        _ => "text_encoder/model.safetensors",
    };
    Weights::from_bytes(file, std::fs::read(dir(PIPE).join(file)).unwrap()).unwrap()
}

/// Merges `loras` and compares every tensor the reference `case` holds (and only those
/// change): max |err| <= 1e-6 x max |ref| per tensor in f32; f16 stores the f32 sum rounded.
fn check_merge(case: &str, loras: &LoraSet) {
    let Some(c) = ctx() else { return };
    let io = Io::load(LORA);
    let st = std::fs::read(dir(LORA).join("io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    for comp in [Component::Unet, Component::TextEncoder] {
        let prefix = format!("{case}.{}.", comp.name());
        let keys: Vec<String> = st
            .names()
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(String::from))
            .collect();
        let weights = component_weights(comp);
        let patches = loras.patches(comp, &weights).unwrap();
        assert_eq!(
            patches.len(),
            keys.len(),
            "{case} {}: tensors changed",
            comp.name()
        );
        for dt in dtypes(c) {
            let loader = Loader::new(c, &weights, dt).with_patches(&patches);
            for k in &keys {
                let (want, shape) = io.f32(&format!("{prefix}{k}"));
                let got = loader.get(k, &shape).unwrap().to_vec(c).unwrap();
                let want = round_to(dt, &want);
                let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
                let rel = if dt == DType::F32 { 1e-6 } else { 1e-3 };
                let (i, err) =
                    got.iter()
                        .zip(&want)
                        .enumerate()
                        .fold((0, 0f64), |m, (i, (g, w))| {
                            let e = if g.is_nan() {
                                f64::INFINITY
                            } else {
                                (*g as f64 - *w as f64).abs()
                            };
                            if e > m.1 {
                                (i, e)
                            } else {
                                m
                            }
                        });
                assert!(
                    err <= rel * scale,
                    "{case} {k} {dt:?}: error {err:.2e} at [{i}] (got {} want {}) > {rel} x {scale:.2e}",
                    got[i],
                    want[i]
                );
            }
        }
        patches.finish().unwrap();
    }
}

#[test]
fn peft_and_kohya_files_merge_to_diffusers_fused_weights() {
    check_merge("b", &set(&[("b_peft.safetensors", 1.0)]));
    check_merge("b", &set(&[("b_kohya.safetensors", 1.0)]));
}

#[test]
fn two_loras_at_their_scales_merge_like_two_fuse_lora_calls() {
    check_merge(
        "ab",
        &set(&[("a_peft.safetensors", 0.7), ("b_peft.safetensors", 0.4)]),
    );
    check_merge(
        "ab",
        &set(&[("a_peft.safetensors", 0.7), ("b_kohya.safetensors", 0.4)]),
    );
}

/// A safetensors file of f32 tensors.
fn write(tensors: &[(String, Vec<f32>, Vec<usize>)]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, _, s), b)| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// b_peft's tensors under other names (its alpha, 3, from the metadata it loses, as
/// diffusers' network-alpha keys `<module>.alpha`).
fn renamed(rename: impl Fn(&str, &str, bool) -> String) -> Vec<u8> {
    let w = Weights::from_bytes(
        "b",
        std::fs::read(dir(LORA).join("b_peft.safetensors")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for k in w.names() {
        let (module, ab) = k.rsplit_once(".lora_").unwrap();
        let down = ab.starts_with('A');
        out.push((
            rename(module, k, down),
            w.read_f32(k).unwrap(),
            w.shape(k).unwrap().to_vec(),
        ));
        if down {
            out.push((format!("{module}.alpha"), vec![3.0], vec![]));
        }
    }
    write(&out)
}

#[test]
fn diffusers_older_key_names_merge_the_same() {
    let old = |module: &str, _: &str, down: bool| {
        let d = if down { "down" } else { "up" };
        let unet_attn = ["to_q", "to_k", "to_v", "to_out.0"]
            .iter()
            .find_map(|p| module.strip_suffix(&format!(".{p}")).map(|m| (m, *p)));
        match unet_attn {
            // `<attn>.processor.to_q_lora.down.weight`
            Some((attn, p)) if module.starts_with("unet.") => {
                let p = if p == "to_out.0" { "to_out" } else { p };
                format!("{attn}.processor.{p}_lora.{d}.weight")
            }
            _ if module.starts_with("text_encoder.") && module.contains("self_attn") => {
                let (m, proj) = module.rsplit_once('.').unwrap();
                let p = &proj[..1];
                format!(
                    "text_encoder.text_model.{}.to_{p}_lora.{d}.weight",
                    &m["text_encoder.".len()..]
                )
            }
            _ if module.starts_with("text_encoder.") => {
                format!("{module}.lora_linear_layer.{d}.weight")
            }
            _ => format!("{module}.lora.{d}.weight"),
        }
    };
    let file = LoraFile::from_bytes("old.safetensors", renamed(old)).unwrap();
    check_merge(
        "b",
        &LoraSet {
            loras: vec![(file, 1.0)],
        },
    );
}

#[test]
fn image_matches_diffusers_with_two_loras_fused() {
    let Some(c) = ctx() else { return };
    let files = DirFiles::open(dir(PIPE)).unwrap();
    let info = ModelInfo::read(&files).unwrap();
    let loras = set(&[("a_peft.safetensors", 0.7), ("b_kohya.safetensors", 0.4)]);
    let p = Pipeline::load_with_loras(c, &files, info, DType::F32, &loras).unwrap();
    let latents = Io::load(PIPE).f32("latents").0;
    let opts = GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        negative_prompt: "green".into(),
        width: 32,
        height: 24,
        steps: 5,
        guidance: 4.0,
        batch: 2,
        latents: Some(latents),
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    // Options must name the LoRAs the pipeline was loaded with: they cannot change per image.
    let e = pollster::block_on(p.generate(c, &opts, &mut |_| {})).unwrap_err();
    assert!(
        e.to_string()
            .contains("LoRAs are merged into the weights at load"),
        "{e}"
    );
    let opts = GenerateOptions {
        loras: vec![
            ("a_peft.safetensors".into(), 0.7),
            ("b_kohya.safetensors".into(), 0.4),
        ],
        ..opts
    };
    let images = pollster::block_on(p.generate(c, &opts, &mut |_| {})).unwrap();
    let want = same_image(&images, "ab.image");
    // And the LoRAs changed it: the image without them is another.
    let plain = Io::load(PIPE).f32("ddim.image").0;
    let moved = plain
        .iter()
        .zip(&want)
        .filter(|(a, b)| (*a - *b).abs() > 2.0 / 255.0)
        .count();
    assert!(moved * 10 > want.len(), "only {moved} pixels moved");
}

/// `images` against diffusers' `key` with the pipeline test's tolerance: off by one only where
/// diffusers sits on a rounding edge. Returns diffusers' pixels.
fn same_image(images: &[hoa::image_io::RgbImage], key: &str) -> Vec<f32> {
    let (want, shape) = Io::load(LORA).f32(key);
    assert_eq!(shape, [2, 24, 32, 3]);
    let got: Vec<u8> = images.iter().flat_map(|im| im.data.clone()).collect();
    let mut off_by_one = 0;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let d = (g as f32 - (w * 255.0).round()).abs();
        assert!(d <= 1.0, "{key} pixel {i}: {g} vs diffusers {}", w * 255.0);
        off_by_one += (d > 0.0) as usize;
    }
    assert!(
        off_by_one * 100 <= got.len(),
        "{key}: {off_by_one} pixels differ"
    );
    want
}

#[test]
fn lcm_lora_use_matches_diffusers_in_one_step() {
    let Some(c) = ctx() else { return };
    let files = DirFiles::open(dir(PIPE)).unwrap();
    let info = ModelInfo::read(&files).unwrap();
    let loras = set(&[("b_kohya.safetensors", 1.0)]);
    let p = Pipeline::load_with_loras(c, &files, info, DType::F32, &loras).unwrap();
    let opts = GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        width: 32,
        height: 24,
        steps: 1,
        guidance: 1.0,
        batch: 2,
        latents: Some(Io::load(PIPE).f32("latents").0),
        scheduler: Some(SchedulerKind::Lcm),
        loras: p.loras.clone(),
        ..Default::default()
    };
    let mut last = None;
    let images = pollster::block_on(p.generate(c, &opts, &mut |ev| {
        if let Event::Step { latents, .. } = ev {
            last = Some(latents.clone());
        }
    }))
    .unwrap();
    let want = Io::load(LORA).f32("lcm.latents");
    let r = fixture::close_rel("lcm latents", &last.unwrap(), &want, 1e-4, c).unwrap();
    eprintln!("lcm latents: max err / max |ref| = {r:.2e}");
    same_image(&images, "lcm.image");
}

fn err(files: Vec<(&str, Vec<u8>)>, comp: Component) -> String {
    let mut loras = Vec::new();
    for (name, bytes) in files {
        match LoraFile::from_bytes(name, bytes) {
            Ok(f) => loras.push((f, 1.0)),
            Err(e) => return e.to_string(),
        }
    }
    let set = LoraSet { loras };
    let e = match set.check_components(&[Component::Unet, Component::TextEncoder]) {
        Err(e) => e.to_string(),
        Ok(()) => match set.patches(comp, &component_weights(comp)) {
            Ok(_) => "no error".into(),
            Err(e) => e.to_string(),
        },
    };
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn bad_loras_are_clear_one_line_errors() {
    let t = |k: &str, shape: Vec<usize>| {
        let n = shape.iter().product();
        (k.to_string(), vec![0.5f32; n], shape)
    };
    let attn = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1";
    // Modules the model lacks: every one listed, sorted.
    let e = err(
        vec![(
            "x.safetensors",
            write(&[
                t("lora_unet_zz_proj.lora_down.weight", vec![2, 16]),
                t("lora_unet_zz_proj.lora_up.weight", vec![16, 2]),
                t(
                    "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
                    vec![2, 16],
                ),
                t(
                    "lora_unet_input_blocks_4_1_proj_in.lora_up.weight",
                    vec![16, 2],
                ),
                t(&format!("{attn}_to_q.lora_down.weight"), vec![2, 16]),
                t(&format!("{attn}_to_q.lora_up.weight"), vec![16, 2]),
            ]),
        )],
        Component::Unet,
    );
    assert!(
        e.contains("x.safetensors: 2 LoRA module(s) match no unet tensor")
            && e.find("input_blocks_4_1_proj_in") < e.find("zz_proj"),
        "{e}"
    );
    // Shapes of another family (an SD 1.x module name with SDXL's widths).
    let e = err(
        vec![(
            "xl.safetensors",
            write(&[
                t(&format!("{attn}_to_q.lora_down.weight"), vec![4, 640]),
                t(&format!("{attn}_to_q.lora_up.weight"), vec![640, 4]),
            ]),
        )],
        Component::Unet,
    );
    assert!(
        e.contains("xl.safetensors: is a LoRA for another model family"),
        "{e}"
    );
    // A second text encoder: SDXL's.
    let e = err(
        vec![(
            "te2.safetensors",
            write(&[
                t(
                    "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                    vec![2, 32],
                ),
                t(
                    "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                    vec![64, 2],
                ),
            ]),
        )],
        Component::TextEncoder,
    );
    assert!(
        e.contains("te2.safetensors") && e.contains("text_encoder_2"),
        "{e}"
    );
    // LoHa, a down without its up, a model checkpoint, not safetensors at all.
    let e = err(
        vec![(
            "loha.safetensors",
            write(&[t("lora_unet_x.hada_w1_a", vec![2, 2])]),
        )],
        Component::Unet,
    );
    assert!(
        e.contains("loha.safetensors: not LoRA tensors") && e.contains("hada_w1_a"),
        "{e}"
    );
    let e = err(
        vec![(
            "half.safetensors",
            write(&[t(&format!("{attn}_to_q.lora_down.weight"), vec![2, 16])]),
        )],
        Component::Unet,
    );
    assert!(
        e.contains("half.safetensors: LoRA modules without both"),
        "{e}"
    );
    let e = err(
        vec![(
            "ckpt.safetensors",
            std::fs::read(dir(PIPE).join("unet/diffusion_pytorch_model.safetensors")).unwrap(),
        )],
        Component::Unet,
    );
    assert!(
        e.contains("ckpt.safetensors: has no LoRA tensors (a model checkpoint?"),
        "{e}"
    );
    let e = err(
        vec![("l.ckpt", b"PK\x03\x04 not a safetensors file".to_vec())],
        Component::Unet,
    );
    assert!(e.contains("l.ckpt") && e.contains("pickle"), "{e}");
    let e = err(vec![("empty.safetensors", write(&[]))], Component::Unet);
    assert!(e.contains("empty.safetensors: holds no tensors"), "{e}");
}

/// kohya's addnet hash: SHA-256 of the bytes after the safetensors header, 12 hex digits.
fn addnet_hash(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: String = Sha256::digest(&b[8 + n..])
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    h[..12].to_string()
}

#[test]
fn cli_lora_flags_merge_and_write_a1111_parameters() {
    if ctx().is_none() {
        return;
    }
    let out = std::env::temp_dir().join(format!("hoa-lora-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let (a, b) = (
        dir(LORA).join("a_peft.safetensors"),
        dir(LORA).join("b_kohya.safetensors"),
    );
    let model = dir(PIPE).display().to_string();
    let png = out.join("x.png").display().to_string();
    let run = |loras: &[String]| {
        let mut args = vec![
            "generate",
            "a red circle",
            "--model",
            &model,
            "--width",
            "32",
        ];
        args.extend(["--height", "24", "--steps", "2", "--out", &png, "--force"]);
        for l in loras {
            args.extend(["--lora", l]);
        }
        hoa_cli(&args)
    };
    let o = run(&[
        format!("{}:0.7", a.display()),
        format!("{}:0.4", b.display()),
    ]);
    assert!(o.status.success());
    let with = std::fs::read(&png).unwrap();
    let params = hoa::image_io::read_png_parameters(&with).unwrap().unwrap();
    let want = format!(
        "Lora hashes: \"a_peft: {}, b_kohya: {}\"",
        addnet_hash(&a),
        addnet_hash(&b)
    );
    assert!(
        params.starts_with("a red circle <lora:a_peft:0.7> <lora:b_kohya:0.4>\n")
            && params.contains(&want),
        "{params}"
    );
    // No LoRA, or one at scale 0: the model's own image, and no LoRA in the parameters.
    assert!(run(&[]).status.success());
    let plain = std::fs::read(&png).unwrap();
    assert_ne!(plain, with);
    assert!(run(&[format!("{}:0", a.display())]).status.success());
    let zero = hoa::image_io::decode_rgb(&std::fs::read(&png).unwrap(), "png").unwrap();
    assert_eq!(
        zero.data,
        hoa::image_io::decode_rgb(&plain, "png").unwrap().data
    );

    // Bad flags: one line naming the flag, nothing written.
    std::fs::remove_file(&png).unwrap();
    let te2 = out.join("te2.safetensors");
    std::fs::write(
        &te2,
        write(&[
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".into(),
                vec![0.0; 64],
                vec![2, 32],
            ),
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".into(),
                vec![0.0; 128],
                vec![64, 2],
            ),
        ]),
    )
    .unwrap();
    let a = a.display().to_string();
    for (arg, want) in [
        (format!("{a}:"), "the scale after ':' is missing"),
        (
            format!("{a}:x"),
            "the scale after ':' must be a number, got `x`",
        ),
        (
            format!("{a}:-1"),
            "the scale must be a number from 0 to 100, got -1",
        ),
        (
            format!("{a}:nan"),
            "the scale must be a number from 0 to 100, got NaN",
        ),
        (
            format!("{model}/model_index.json"),
            "starts with text, not a safetensors header",
        ),
        (
            te2.display().to_string(),
            "te2.safetensors: is a LoRA for another model family",
        ),
    ] {
        let o = run(std::slice::from_ref(&arg));
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.trim_end().lines().last().unwrap_or("");
        assert!(
            !o.status.success() && last.contains(want),
            "--lora {arg}: {err}"
        );
        assert!(last.starts_with("error: "), "{err}");
        assert!(
            !std::path::Path::new(&png).exists(),
            "--lora {arg} wrote a file"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn requests_name_loras_and_their_scales_are_checked_in_the_one_policy() {
    use hoa::request::{LoraRequest, Origin, Request};
    use hoa::resolve::{resolve, DeviceLimits};
    let info = ModelInfo::read(&DirFiles::open(dir(PIPE)).unwrap()).unwrap();
    let limits = DeviceLimits {
        max_binding_bytes: 128 << 20,
        dtype_size: 4,
        host_memory: false,
    };
    let json = r#"{"prompt": "x", "lora": [{"file": "loras/a.safetensors", "scale": 0.5},
                                          {"file": "b.safetensors"}]}"#;
    let r = resolve(&Request::from_json(json).unwrap(), &info, limits).unwrap();
    assert_eq!(
        r.options.loras,
        [
            ("loras/a.safetensors".to_string(), 0.5),
            ("b.safetensors".to_string(), 1.0)
        ]
    );
    let text = r.parameters("m", 0).to_text();
    // Without hashes (a front end that did not read the files), no `Lora hashes`.
    assert!(
        text.starts_with("x <lora:a:0.5> <lora:b:1>\n") && !text.contains("Lora hashes"),
        "{text}"
    );
    let e = Request::from_json(r#"{"prompt": "x", "lora": [{"file": "a", "weight": 1}]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("weight"), "{e}");
    for (scale, origin, want) in [
        (
            -0.5,
            Origin::Json,
            "lora a.safetensors: the scale must be a number from 0 to 100, got -0.5",
        ),
        (
            f64::INFINITY,
            Origin::Cli,
            "--lora a.safetensors: the scale must be a number from 0 to 100, got inf",
        ),
    ] {
        let req = Request {
            prompt: Some("x".into()),
            lora: Some(vec![LoraRequest {
                file: "a.safetensors".into(),
                scale: Some(scale),
                hash: None,
            }]),
            origin,
            ..Default::default()
        };
        let e = resolve(&req, &info, limits).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

/// A diffusers U-Net module of pipeline_tiny (2 levels, layers_per_block 1) by its name in the
/// original LDM layout, written out here from the block numbering (independently of the
/// single-file loader's map the merge uses).
fn ldm_name(m: &str) -> String {
    let res = |r: &str| {
        [
            ("conv1", "in_layers.2"),
            ("conv2", "out_layers.3"),
            ("time_emb_proj", "emb_layers.1"),
        ]
        .iter()
        .find(|(d, _)| *d == r)
        .map_or(r.to_string(), |(_, l)| l.to_string())
    };
    let p: Vec<&str> = m.splitn(5, '.').collect();
    let n = 1;
    match p[..] {
        ["down_blocks", l, kind, j, rest] => {
            let k = 1 + l.parse::<usize>().unwrap() * (n + 1) + j.parse::<usize>().unwrap();
            match kind {
                "resnets" => format!("input_blocks.{k}.0.{}", res(rest)),
                _ => format!("input_blocks.{k}.1.{rest}"),
            }
        }
        ["up_blocks", l, kind, j, rest] => {
            let k = l.parse::<usize>().unwrap() * (n + 1) + j.parse::<usize>().unwrap();
            match kind {
                "resnets" => format!("output_blocks.{k}.0.{}", res(rest)),
                _ => format!("output_blocks.{k}.1.{rest}"),
            }
        }
        ["mid_block", "resnets", i, ..] => {
            let rest = m.splitn(4, '.').nth(3).unwrap();
            format!(
                "middle_block.{}.{}",
                2 * i.parse::<usize>().unwrap(),
                res(rest)
            )
        }
        ["mid_block", "attentions", "0", ..] => {
            format!("middle_block.1.{}", m.splitn(4, '.').nth(3).unwrap())
        }
        _ => panic!("no LDM name for {m}"),
    }
}

#[test]
fn kohya_names_in_the_ldm_layout_merge_the_same() {
    // b as kohya names it for SDXL: U-Net modules by LDM blocks, the text encoder as lora_te1_.
    let sdxl_style = |module: &str, _: &str, down: bool| {
        let part = if down {
            "lora_down.weight"
        } else {
            "lora_up.weight"
        };
        match module.split_once('.').unwrap() {
            ("unet", m) => format!("lora_unet_{}.{part}", ldm_name(m).replace('.', "_")),
            (_, m) => format!("lora_te1_text_model_{}.{part}", m.replace('.', "_")),
        }
    };
    let bytes = renamed(sdxl_style);
    let w = Weights::from_bytes("x", bytes.clone()).unwrap();
    let names: Vec<&str> = w.names().collect();
    assert!(
        names
            .iter()
            .any(|k| k.starts_with("lora_unet_input_blocks_1_1_")),
        "{names:?}"
    );
    // renamed() wrote the alphas under the PEFT module names: give them kohya's.
    let down_keys: Vec<String> = names
        .iter()
        .filter(|k| k.ends_with(".lora_down.weight"))
        .map(|k| k.to_string())
        .collect();
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = names
        .iter()
        .filter(|k| !k.ends_with(".alpha"))
        .map(|k| {
            (
                k.to_string(),
                w.read_f32(k).unwrap(),
                w.shape(k).unwrap().to_vec(),
            )
        })
        .collect();
    for k in down_keys {
        let m = k.strip_suffix(".lora_down.weight").unwrap();
        tensors.push((format!("{m}.alpha"), vec![3.0], vec![]));
    }
    let file = LoraFile::from_bytes("sdxl_style.safetensors", write(&tensors)).unwrap();
    check_merge(
        "b",
        &LoraSet {
            loras: vec![(file, 1.0)],
        },
    );
}

/// A single-file checkpoint is a renaming view of one file: the same LoRA merges into it as
/// into its diffusers folder, pixel for pixel.
#[test]
fn a_lora_merges_into_a_single_file_as_into_its_folder() {
    use hoa::model_files::{component_weights, ModelFiles};
    use hoa::single_file::SingleFile;
    let Some(c) = ctx() else { return };
    let sf = dir("single_file");
    let folder = DirFiles::open(sf.join("sd1")).unwrap();
    // A kohya LoRA over every attn1.to_q, resnet conv1 (3x3) and CLIP q_proj of the model.
    let mut r = common::rng(5);
    let mut tensors = Vec::new();
    for (comp, prefix) in [("unet", "lora_unet_"), ("text_encoder", "lora_te_")] {
        let w = component_weights(&folder, comp).unwrap();
        let mut names: Vec<&str> = w.names().collect();
        names.sort();
        for k in names {
            let Some(m) = k.strip_suffix(".weight") else {
                continue;
            };
            if !(m.ends_with("attn1.to_q")
                || m.ends_with("resnets.0.conv1")
                || m.ends_with("q_proj"))
            {
                continue;
            }
            let shape = w.shape(k).unwrap().to_vec();
            let (out, inner) = (shape[0], shape[1..].to_vec());
            let name = format!("{prefix}{}", m.replace('.', "_"));
            let kin: usize = inner.iter().product();
            let mut down_shape = vec![2];
            down_shape.extend(&inner);
            let up_shape = if shape.len() == 4 {
                vec![out, 2, 1, 1]
            } else {
                vec![out, 2]
            };
            tensors.push((
                format!("{name}.lora_down.weight"),
                common::randn(&mut r, 2 * kin, 0.3),
                down_shape,
            ));
            tensors.push((
                format!("{name}.lora_up.weight"),
                common::randn(&mut r, 2 * out, 0.3),
                up_shape,
            ));
            tensors.push((format!("{name}.alpha"), vec![1.0], vec![]));
        }
    }
    assert!(tensors.len() >= 9, "{} LoRA tensors", tensors.len());
    let bytes = write(&tensors);
    let opts = GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        width: 16,
        height: 16,
        steps: 2,
        guidance: 4.0,
        seed: 7,
        ..Default::default()
    };
    let run = |files: &dyn ModelFiles, with: bool| {
        let loras = match with {
            true => vec![(
                LoraFile::from_bytes("l.safetensors", bytes.clone()).unwrap(),
                0.9,
            )],
            false => vec![],
        };
        let info = ModelInfo::read(files).unwrap();
        let set = LoraSet { loras };
        let p = Pipeline::load_with_loras(c, files, info, DType::F32, &set).unwrap();
        let opts = GenerateOptions {
            loras: p.loras.clone(),
            ..opts.clone()
        };
        pollster::block_on(p.generate(c, &opts, &mut |_| {})).unwrap()
    };
    let cfg = Box::new(DirFiles::open(sf.join("sd1")).unwrap());
    let file = SingleFile::open(&sf.join("sd1.safetensors"), Some(cfg)).unwrap();
    let from_folder = run(&folder, true);
    assert_eq!(run(&file, true)[0].data, from_folder[0].data);
    assert_ne!(run(&folder, false)[0].data, from_folder[0].data);
}

/// Loaded one network at a time, the U-Net must get the LoRAs the text encoders got (they are
/// recorded once, and options are checked against them).
#[test]
fn a_unet_loaded_later_must_take_the_same_loras() {
    let Some(c) = ctx() else { return };
    let files = DirFiles::open(dir(PIPE)).unwrap();
    let info = ModelInfo::read(&files).unwrap();
    let loras = set(&[("a_peft.safetensors", 0.7)]);
    let mut p = Pipeline::load_encoders(c, &files, info, DType::F32, &loras).unwrap();
    let e = p.load_unet(c, &files, &LoraSet::default()).unwrap_err();
    assert!(e.to_string().contains("give both the same LoRAs"), "{e}");
    let other = set(&[("a_peft.safetensors", 0.5)]);
    assert!(p.load_unet(c, &files, &other).is_err(), "another scale");
    p.load_unet(c, &files, &loras).unwrap();
}
