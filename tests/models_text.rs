//! Text encoders vs PyTorch fixtures written by tools/fixtures/make_fixtures.py (transformers'
//! own classes, random tiny configs). Tolerance: max |err| <= 1e-3 x max |reference| (the
//! models issue's bar), checked per layer so a failure names the first block that diverges.

mod common;
use common::*;
use hoa::config::ClipTextConfig;
use hoa::models::clip::ClipTextModel;
use hoa::weights::{Loader, Weights};
use hoa::{DType, Tensor};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The reference tensors of a fixture's io.safetensors, as (values, shape).
struct Io(Vec<u8>);

impl Io {
    fn load(name: &str) -> Io {
        Io(std::fs::read(fixture(name).join("io.safetensors")).expect("fixture io"))
    }

    fn f32(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture lacks {key}"));
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, t.shape().to_vec())
    }

    fn ids(&self, key: &str) -> (Vec<u32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(key).unwrap();
        let v = t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        (v, t.shape().to_vec())
    }

    fn has(&self, key: &str) -> bool {
        SafeTensors::deserialize(&self.0)
            .unwrap()
            .tensor(key)
            .is_ok()
    }
}

/// max |got - want| <= rel * max |want|.
fn close_rel(
    what: &str,
    got: &Tensor,
    want: &(Vec<f32>, Vec<usize>),
    rel: f64,
    c: &hoa::Context,
) -> Result<(), String> {
    let g = got.to_vec(c).unwrap();
    if got.numel() != want.0.len() {
        return Err(format!(
            "{what}: {} elements, reference {:?}",
            got.numel(),
            want.1
        ));
    }
    let scale = want.0.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let (i, err) = g
        .iter()
        .zip(&want.0)
        .map(|(&a, &b)| {
            if a.is_nan() {
                f64::INFINITY
            } else {
                (a as f64 - b as f64).abs()
            }
        })
        .enumerate()
        .fold((0, 0f64), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    if err > rel * scale {
        return Err(format!(
            "{what}: max error {err:.3e} at [{i}] (got {} want {}) exceeds {rel} x max |ref| {scale:.3e}",
            g[i], want.0[i]
        ));
    }
    Ok(())
}

fn clip_case(name: &str) {
    let Some(c) = ctx() else { return };
    let dir = fixture(name);
    let cfg = ClipTextConfig::from_json(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let w = Weights::from_bytes(
        "model.safetensors",
        std::fs::read(dir.join("model.safetensors")).unwrap(),
    )
    .unwrap();
    let io = Io::load(name);
    let (ids, shape) = io.ids("input_ids");
    for dt in dtypes(c) {
        // f16 storage rounds every weight and activation to 11 bits: 1e-2 relative.
        let rel = if dt == DType::F32 { 1e-3 } else { 1e-2 };
        let model = ClipTextModel::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let out = model.forward(c, &ids, shape[0]).unwrap();
        // Per layer first, so a failure names the first block that diverges.
        for (i, h) in out.hidden_states.iter().enumerate() {
            let key = format!("hidden_states.{i}");
            assert!(io.has(&key), "fixture lacks {key}");
            close_rel(
                &format!("{name} {dt:?} {key} (0 = embeddings, i = layer i-1)"),
                h,
                &io.f32(&key),
                rel,
                c,
            )
            .unwrap();
        }
        assert!(
            !io.has(&format!("hidden_states.{}", out.hidden_states.len())),
            "the fixture has more layers"
        );
        close_rel(
            &format!("{name} {dt:?} last_hidden_state"),
            &out.last_hidden_state,
            &io.f32("last_hidden_state"),
            rel,
            c,
        )
        .unwrap();
        close_rel(
            &format!("{name} {dt:?} pooler_output"),
            &out.pooler_output,
            &io.f32("pooler_output"),
            rel,
            c,
        )
        .unwrap();
    }
}

#[test]
fn clip_text_quick_gelu_matches_transformers() {
    clip_case("clip_text");
}

#[test]
fn clip_text_gelu_legacy_eos_matches_transformers() {
    clip_case("clip_text_gelu");
}

#[test]
fn clip_text_with_a_missing_tensor_names_it() {
    let Some(c) = ctx() else { return };
    let dir = fixture("clip_text");
    let cfg = ClipTextConfig::from_json(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let w = Weights::from_bytes("model.safetensors", bytes).unwrap();
    let mut fewer = cfg.clone();
    fewer.num_hidden_layers -= 1; // the checkpoint now has a layer too many
    let mut more = cfg.clone();
    more.num_hidden_layers += 1; // ... or one too few
    let e = ClipTextModel::load(&Loader::new(c, &w, DType::F32), &fewer)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unexpected")
            && e.contains(&format!(
                "encoder.layers.{}.mlp.fc1.weight",
                fewer.num_hidden_layers
            )),
        "{e}"
    );
    let e = ClipTextModel::load(&Loader::new(c, &w, DType::F32), &more)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing")
            && e.contains(&format!(
                "encoder.layers.{}.self_attn.q_proj.weight",
                cfg.num_hidden_layers
            )),
        "{e}"
    );
}

fn t5_case(name: &str) {
    use hoa::config::T5Config;
    use hoa::models::t5::T5EncoderModel;
    let Some(c) = ctx() else { return };
    let dir = fixture(name);
    let cfg = T5Config::from_json(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let w = Weights::from_bytes(
        "model.safetensors",
        std::fs::read(dir.join("model.safetensors")).unwrap(),
    )
    .unwrap();
    let io = Io::load(name);
    let (ids, shape) = io.ids("input_ids");
    assert!(
        shape[1] > cfg.relative_attention_max_distance,
        "the fixture must exercise distances past the bucket range"
    );
    for dt in dtypes(c) {
        let rel = if dt == DType::F32 { 1e-3 } else { 1e-2 };
        let model = T5EncoderModel::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let out = model.forward(c, &ids, shape[0]).unwrap();
        for (i, h) in out.hidden_states.iter().enumerate() {
            let key = format!("hidden_states.{i}");
            close_rel(
                &format!("{name} {dt:?} {key} (input of block i; last = final norm)"),
                h,
                &io.f32(&key),
                rel,
                c,
            )
            .unwrap();
        }
        assert!(
            !io.has(&format!("hidden_states.{}", out.hidden_states.len())),
            "the fixture has more layers"
        );
        close_rel(
            &format!("{name} {dt:?} last_hidden_state"),
            &out.last_hidden_state,
            &io.f32("last_hidden_state"),
            rel,
            c,
        )
        .unwrap();
    }
}

#[test]
fn t5_encoder_gated_gelu_matches_transformers() {
    t5_case("t5_encoder");
}

#[test]
fn t5_encoder_relu_matches_transformers() {
    t5_case("t5_encoder_relu");
}

/// A padded batch (rows of 64, 41 and 17 tokens) with transformers' `attention_mask`: every
/// position of every row, padded ones included, matches `T5EncoderModel(input_ids,
/// attention_mask)`; without the mask the short rows are visibly off (the test can fail).
fn t5_masked_case(name: &str) {
    use hoa::config::T5Config;
    use hoa::models::t5::T5EncoderModel;
    let Some(c) = ctx() else { return };
    let dir = fixture(name);
    let cfg = T5Config::from_json(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let w = Weights::from_bytes(
        "model.safetensors",
        std::fs::read(dir.join("model.safetensors")).unwrap(),
    )
    .unwrap();
    let io = Io::load(name);
    let (ids, shape) = io.ids("masked.input_ids");
    let (mask, _) = io.ids("masked.attention_mask");
    let last = format!("masked.hidden_states.{}", cfg.num_layers + 1);
    for dt in dtypes(c) {
        let rel = if dt == DType::F32 { 1e-5 } else { 1e-2 };
        let model = T5EncoderModel::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let out = model
            .forward_masked(c, &ids, shape[0], Some(&mask))
            .unwrap();
        for (i, h) in out.hidden_states.iter().enumerate() {
            let key = format!("masked.hidden_states.{i}");
            close_rel(&format!("{name} {dt:?} {key}"), h, &io.f32(&key), rel, c).unwrap();
        }
        assert!(!io.has(&last), "the fixture has more layers");
        let unmasked = model.forward(c, &ids, shape[0]).unwrap();
        let key = format!("masked.hidden_states.{}", cfg.num_layers);
        assert!(
            close_rel(
                "unmasked",
                &unmasked.last_hidden_state,
                &io.f32(&key),
                1e-2,
                c
            )
            .is_err(),
            "the mask made no difference: the fixture does not exercise it"
        );
    }
    let model = T5EncoderModel::load(&Loader::new(c, &w, DType::F32), &cfg).unwrap();
    let e = model
        .forward_masked(c, &ids, shape[0], Some(&mask[1..]))
        .err()
        .expect("a short mask is refused")
        .to_string();
    assert!(
        e.contains("mask values for 3 sequences of 64 tokens"),
        "{e}"
    );
}

#[test]
fn t5_encoder_attention_mask_matches_transformers() {
    t5_masked_case("t5_encoder");
    t5_masked_case("t5_encoder_relu");
}
