//! CLIP's vision tower, `CLIPModel` and `CLIPImageProcessor` vs transformers fixtures written
//! by tools/fixtures/clip_model.py (tiny random configs, quick_gelu 30x30 in 6x6 patches and
//! gelu 28x28 in 7x7 patches). Model tolerance: max |err| <= 1e-5 x max |reference| in f32
//! (tighter than the 1e-3 of the other model tests; lavapipe gives <= 8e-7, printed), 1e-2 in
//! f16. Preprocessing: bit-exact against `CLIPImageProcessorPil`; against transformers 5's
//! default torchvision backend (float resize) within 0.1 in normalized units.

mod common;
#[path = "common/fixture.rs"]
mod fixture;
use common::*;
use fixture::*;
use hoa::clip::{decode_image, Clip, ClipImageProcessor};
use hoa::config::{ClipConfig, ClipVisionConfig};
use hoa::model_files::DirFiles;
use hoa::models::clip_model::{self, ClipModel};
use hoa::models::clip_vision::{ClipVisionModel, ClipVisionModelWithProjection};
use hoa::weights::{Loader, Weights};
use hoa::{DType, Tensor};

fn rel(dt: DType) -> f64 {
    if dt == DType::F32 {
        1e-5
    } else {
        1e-2
    }
}

fn weights(dir: &std::path::Path) -> Weights {
    let f = dir.join("model.safetensors");
    Weights::from_bytes("model.safetensors", std::fs::read(f).unwrap()).unwrap()
}

fn check(what: &str, got: &Tensor, want: &(Vec<f32>, Vec<usize>), dt: DType, c: &hoa::Context) {
    let r = close_rel(what, got, want, rel(dt), c).unwrap();
    eprintln!("{what}: max err / max |ref| = {r:.2e}");
}

/// Host values vs a reference, same rule.
fn check_host(what: &str, got: &[f32], want: &[f32], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| {
            if a.is_nan() {
                f64::INFINITY
            } else {
                (a - b).abs() as f64
            }
        })
        .fold(0f64, f64::max);
    assert!(
        err <= rel * scale,
        "{what}: max err {err:.3e} > {rel} x {scale:.3e}"
    );
    eprintln!("{what}: max err / max |ref| = {:.2e}", err / scale);
}

/// The fixture's int64 `input_ids` as u32, with their shape.
fn input_ids(name: &str) -> (Vec<u32>, Vec<usize>) {
    let bytes = std::fs::read(dir(name).join("io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("input_ids").unwrap();
    let v = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    (v, t.shape().to_vec())
}

#[test]
fn clip_vision_model_with_projection_matches_transformers() {
    let Some(c) = ctx() else { return };
    let name = "clip_vision_projection";
    let cfg = ClipVisionConfig::from_json(&config(name)).unwrap();
    assert_eq!(cfg.hidden_act, "gelu");
    let w = weights(&dir(name));
    let bare = weights(&dir(name).join("vision_model"));
    let io = Io::load(name);
    for dt in dtypes(c) {
        let model = ClipVisionModelWithProjection::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let out = model.forward(c, &io.tensor(c, "pixel_values", dt)).unwrap();
        let v = &out.vision;
        assert_eq!(v.hidden_states.len(), cfg.num_hidden_layers + 1);
        assert!(!io.has(&format!("hidden_states.{}", v.hidden_states.len())));
        for (i, h) in v.hidden_states.iter().enumerate() {
            let key = format!("hidden_states.{i}");
            check(&format!("{dt:?} {key}"), h, &io.f32(&key), dt, c);
        }
        let lhs = io.f32("last_hidden_state");
        check(
            &format!("{dt:?} last_hidden_state"),
            &v.last_hidden_state,
            &lhs,
            dt,
            c,
        );
        let pooled = io.f32("pooler_output");
        check(
            &format!("{dt:?} pooler_output"),
            &v.pooler_output,
            &pooled,
            dt,
            c,
        );
        let embeds = io.f32("image_embeds");
        check(
            &format!("{dt:?} image_embeds"),
            &out.image_embeds,
            &embeds,
            dt,
            c,
        );
        // The same tower saved as CLIPVisionModel: keys without the `vision_model.` prefix.
        let tower = ClipVisionModel::load(&Loader::new(c, &bare, dt), &cfg).unwrap();
        let o = tower.forward(c, &io.tensor(c, "pixel_values", dt)).unwrap();
        check(
            &format!("{dt:?} CLIPVisionModel pooler_output"),
            &o.pooler_output,
            &pooled,
            dt,
            c,
        );
    }
}

#[test]
fn clip_model_matches_transformers_towers_embeds_and_logits() {
    let Some(c) = ctx() else { return };
    let name = "clip_model";
    let cfg = ClipConfig::from_json(&config(name)).unwrap();
    let w = weights(&dir(name));
    let io = Io::load(name);
    let (ids, ids_shape) = input_ids(name);
    let p = cfg.projection_dim;
    for dt in dtypes(c) {
        let model = ClipModel::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let px = io.tensor(c, "pixel_values", dt);
        let v = model.vision_model.forward(c, &px).unwrap();
        for (i, h) in v.hidden_states.iter().enumerate() {
            let key = format!("vision.hidden_states.{i}");
            check(&format!("{dt:?} {key}"), h, &io.f32(&key), dt, c);
        }
        let lhs = io.f32("vision.last_hidden_state");
        check(
            &format!("{dt:?} vision.last_hidden_state"),
            &v.last_hidden_state,
            &lhs,
            dt,
            c,
        );
        let pooled = io.f32("vision.pooler_output");
        check(
            &format!("{dt:?} vision.pooler_output"),
            &v.pooler_output,
            &pooled,
            dt,
            c,
        );
        let img = model.get_image_features(c, &px).unwrap().to_vec(c).unwrap();
        let txt = model.get_text_features(c, &ids, ids_shape[0]).unwrap();
        let txt = txt.to_vec(c).unwrap();
        let (img, txt) = (
            clip_model::normalize(&img, p),
            clip_model::normalize(&txt, p),
        );
        let r = rel(dt);
        check_host(
            &format!("{dt:?} image_embeds"),
            &img,
            &io.f32("image_embeds").0,
            r,
        );
        check_host(
            &format!("{dt:?} text_embeds"),
            &txt,
            &io.f32("text_embeds").0,
            r,
        );
        let logits = clip_model::logits(&img, &txt, p, model.logit_scale_exp());
        check_host(
            &format!("{dt:?} logits_per_image"),
            &logits,
            &io.f32("logits_per_image").0,
            r,
        );
        assert_eq!(model.logit_scale, io.f32("logit_scale").0[0]);
    }
}

/// The fixture's test images, in the order of `prompts.json`.
fn fixture_images() -> Vec<(String, Vec<u8>)> {
    let d = dir("clip_model");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("prompts.json")).unwrap()).unwrap();
    meta["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let n = n.as_str().unwrap().to_string();
            let b = std::fs::read(d.join("images").join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

#[test]
fn clip_image_processor_is_bit_exact_with_transformers_pil_backend() {
    let d = dir("clip_model");
    let proc =
        ClipImageProcessor::from_json(&std::fs::read(d.join("preprocessor_config.json")).unwrap())
            .unwrap();
    let io = Io::load("clip_model");
    let (pil, shape) = io.f32("pixel_values");
    let (tv, _) = io.f32("pixel_values_torchvision");
    let per = shape[1] * shape[2] * shape[3];
    let images = fixture_images();
    assert_eq!(images.len(), shape[0]);
    let mut worst_tv = 0f32;
    for (k, (name, bytes)) in images.iter().enumerate() {
        let img = decode_image(bytes, name).unwrap();
        let (got, hw) = proc.preprocess(&img).unwrap();
        assert_eq!(hw, (shape[2], shape[3]));
        let want = &pil[k * per..(k + 1) * per];
        let bad: Vec<usize> = (0..per).filter(|&i| got[i] != want[i]).collect();
        assert!(
            bad.is_empty(),
            "{name}: {} of {per} values differ from CLIPImageProcessorPil, first at {} \
             (got {} want {})",
            bad.len(),
            bad[0],
            got[bad[0]],
            want[bad[0]]
        );
        let t = &tv[k * per..(k + 1) * per];
        worst_tv = got
            .iter()
            .zip(t)
            .map(|(a, b)| (a - b).abs())
            .fold(worst_tv, f32::max);
    }
    eprintln!("max |hoa - torchvision backend| = {worst_tv:.4} (normalized units)");
    assert!(worst_tv <= 0.1, "torchvision backend differs by {worst_tv}");
}

#[test]
fn clip_folder_embeds_png_files_as_transformers_does() {
    let Some(c) = ctx() else { return };
    let files = DirFiles {
        root: dir("clip_model"),
    };
    let clip = Clip::load(c, &files, DType::F32).unwrap();
    let images: Vec<_> = fixture_images()
        .iter()
        .map(|(n, b)| decode_image(b, n).unwrap())
        .collect();
    let io = Io::load("clip_model");
    let got = pollster::block_on(clip.embed_images(c, &images)).unwrap();
    check_host("Clip::embed_images", &got, &io.f32("image_embeds").0, 1e-5);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir("clip_model").join("prompts.json")).unwrap())
            .unwrap();
    let prompts: Vec<String> = meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    // The tokenizer pads to the context; transformers' processor padded to the longest with
    // an attention mask. The pooled end token sees neither.
    let txt = pollster::block_on(clip.embed_texts(c, &prompts)).unwrap();
    check_host("Clip::embed_texts", &txt, &io.f32("text_embeds").0, 1e-5);
    let probs = pollster::block_on(clip.classify(c, &images, &prompts)).unwrap();
    let want = hoa::clip::softmax_rows(&io.f32("logits_per_image").0, prompts.len());
    check_host("Clip::classify probabilities", &probs, &want, 1e-5);
}

#[test]
fn clip_folder_errors_name_the_file_and_field() {
    let Some(c) = ctx() else { return };
    let tmp = std::env::temp_dir().join(format!("hoa-clip-err-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_dir(&dir("clip_model"), &tmp);
    let load = || {
        Clip::load(c, &DirFiles { root: tmp.clone() }, DType::F32)
            .err()
            .unwrap()
    };
    // A text encoder's config is not a CLIPModel's.
    std::fs::copy(
        dir("clip_text").join("config.json"),
        tmp.join("config.json"),
    )
    .unwrap();
    let e = load().to_string();
    assert!(
        e.starts_with("config.json: `architectures` = [\"CLIPTextModel\"]"),
        "{e}"
    );
    std::fs::copy(
        dir("clip_model").join("config.json"),
        tmp.join("config.json"),
    )
    .unwrap();
    std::fs::remove_file(tmp.join("preprocessor_config.json")).unwrap();
    let e = load().to_string();
    assert!(e.contains("missing `preprocessor_config.json`"), "{e}");
    std::fs::write(tmp.join("preprocessor_config.json"), br#"{"resample": 1}"#).unwrap();
    let e = load().to_string();
    assert!(
        e.starts_with("preprocessor_config.json: `resample` = 1"),
        "{e}"
    );
    std::fs::write(
        tmp.join("preprocessor_config.json"),
        br#"{"crop_size": 224, "size": 224}"#,
    )
    .unwrap();
    let e = load().to_string();
    assert!(
        e.contains("`crop_size` does not give the model's 30x30"),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn clip_configs_name_the_nested_key() {
    let base: serde_json::Value = serde_json::from_slice(&config("clip_model")).unwrap();
    let err = |patch: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        patch(&mut v);
        ClipConfig::from_json(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string()
    };
    let e = err(&|v| v["vision_config"]["patch_size"] = 31.into());
    assert_eq!(
        e,
        "config.json: `vision_config.patch_size` = 31 must be between 1 and `image_size` 30"
    );
    let e = err(&|v| v["text_config"]["hidden_act"] = "swiglu".into());
    assert!(
        e.starts_with("config.json: `text_config.hidden_act` = \"swiglu\" is not supported"),
        "{e}"
    );
    let e = err(&|v| v["vision_config"]["num_attention_heads"] = 3.into());
    assert_eq!(
        e,
        "config.json: `vision_config.hidden_size` 40 is not divisible by `num_attention_heads` 3"
    );
    let e = err(&|v| v["projection_dim"] = 0.into());
    assert_eq!(
        e,
        "config.json: `projection_dim` is 0; it must be at least 1"
    );
    let e = err(&|v| v["architectures"] = serde_json::json!(["CLIPVisionModel"]));
    assert!(e.contains("this file is not a CLIPModel config"), "{e}");
    // A vision tower's own config refuses a CLIPModel's.
    let e = ClipVisionConfig::from_json(&config("clip_model"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a CLIPVisionModel / CLIPVisionModelWithProjection config"),
        "{e}"
    );
}
