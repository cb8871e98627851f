//! `T5ForConditionalGeneration` vs transformers (fixtures t5_seq2seq: v1.1 gated-gelu with its
//! own lm_head; t5_seq2seq_relu: original T5, tied and scaled head), written by
//! tools/fixtures/make_fixtures.py: a teacher-forced pass on a padded batch (per decoder layer
//! and the logits, max |err| <= 1e-5 x max |ref| in f32), the same logits one token at a time
//! through the KV cache, and `generate` (greedy, beam search with length penalties and each
//! early_stopping mode): ids identical to transformers'.

mod common;
use common::*;
use hoa::generation::GenerationConfig;
use hoa::model_files::DirFiles;
use hoa::models::t5_decoder::{DecoderState, T5ForConditionalGeneration};
use hoa::{DType, Tensor};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Io(Vec<u8>);

impl Io {
    fn f32(&self, key: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture lacks {key}"));
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn ids(&self, key: &str) -> (Vec<u32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture lacks {key}"));
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

/// max |got - want| <= rel * max |want| (NaN fails).
fn close(what: &str, got: &[f32], want: &[f32], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: element count");
    let scale = want.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| {
            if a.is_nan() {
                f64::INFINITY
            } else {
                (a as f64 - b as f64).abs()
            }
        })
        .enumerate()
        .fold((0, 0f64), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    assert!(
        err <= rel * scale,
        "{what}: max error {err:.3e} at [{i}] (got {} want {}) exceeds {rel} x {scale:.3e}",
        got[i],
        want[i]
    );
}

fn load(c: &hoa::Context, name: &str, dt: DType) -> (T5ForConditionalGeneration, Io) {
    let files = DirFiles { root: dir(name) };
    let m = T5ForConditionalGeneration::from_files(c, &files, "", dt).unwrap();
    let io = Io(std::fs::read(dir(name).join("io.safetensors")).unwrap());
    (m, io)
}

fn teacher_forced(name: &str) {
    let Some(c) = ctx() else { return };
    for dt in dtypes(c) {
        let rel = if dt == DType::F32 { 1e-5 } else { 1e-2 };
        let (m, io) = load(c, name, dt);
        let (ids, shape) = io.ids("input_ids");
        let (mask, _) = io.ids("attention_mask");
        let (dec, dshape) = io.ids("decoder_input_ids");
        let out = m.forward(c, &ids, Some(&mask), &dec, shape[0]).unwrap();
        let v = |t: &Tensor| t.to_vec(c).unwrap();
        close(
            &format!("{name} {dt:?} encoder"),
            &v(&out.encoder_last_hidden_state),
            &io.f32("encoder_last_hidden_state"),
            rel,
        );
        for (i, h) in out.decoder_hidden_states.iter().enumerate() {
            let key = format!("decoder_hidden_states.{i}");
            close(&format!("{name} {dt:?} {key}"), &v(h), &io.f32(&key), rel);
        }
        assert!(!io.has(&format!(
            "decoder_hidden_states.{}",
            out.decoder_hidden_states.len()
        )));
        let want = io.f32("logits");
        close(
            &format!("{name} {dt:?} logits"),
            &v(&out.logits),
            &want,
            rel,
        );

        // The same logits one token at a time through the KV cache.
        let (b, t, vocab) = (dshape[0], dshape[1], m.config.vocab_size);
        let (enc, mask) = m.encode(c, &ids, b, Some(&mask)).unwrap();
        let mut state = DecoderState::new(&m, c, &enc, mask.as_deref(), b, 1, t + 3).unwrap();
        for step in 0..t {
            let tokens: Vec<u32> = (0..b).map(|r| dec[r * t + step]).collect();
            let got = state.step_tensor(&tokens).unwrap().to_vec(c).unwrap();
            let want_step: Vec<f32> = (0..b)
                .flat_map(|r| want[(r * t + step) * vocab..(r * t + step + 1) * vocab].to_vec())
                .collect();
            close(
                &format!("{name} {dt:?} cached step {step}"),
                &got,
                &want_step,
                rel,
            );
        }
    }
}

fn generates(name: &str) {
    let Some(c) = ctx() else { return };
    let (m, io) = load(c, name, DType::F32);
    let (ids, shape) = io.ids("input_ids");
    let (mask, _) = io.ids("attention_mask");
    let rows: Vec<Vec<u32>> = (0..shape[0])
        .map(|b| {
            let r = b * shape[1]..(b + 1) * shape[1];
            ids[r.clone()]
                .iter()
                .zip(&mask[r])
                .filter(|(_, &k)| k == 1)
                .map(|(&i, _)| i)
                .collect()
        })
        .collect();
    assert!(
        rows.iter().any(|r| r.len() != rows[0].len()),
        "rows of different lengths"
    );
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir(name).join("generate.json")).unwrap()).unwrap();
    let (mut stopped, mut ran_out) = (0, 0);
    for case in cases {
        let case_name = case["name"].as_str().unwrap().to_string();
        let cfg = GenerationConfig::from_json(case.to_string().as_bytes()).unwrap();
        let got = m.generate(c, &rows, &cfg).unwrap();
        let (want, wshape) = io.ids(&format!("{case_name}.sequences"));
        let want: Vec<Vec<u32>> = want.chunks(wshape[1]).map(<[u32]>::to_vec).collect();
        assert_eq!(got, want, "{name} {case_name}");
        for r in &want {
            if r[1..].contains(&1) {
                stopped += 1;
            } else {
                ran_out += 1;
            }
        }
    }
    assert!(
        stopped > 0 && ran_out > 0,
        "the fixture must stop at eos and at max length"
    );
}

#[test]
fn t5_seq2seq_teacher_forced_matches_transformers() {
    teacher_forced("t5_seq2seq");
    teacher_forced("t5_seq2seq_relu");
}

#[test]
fn t5_seq2seq_generate_matches_transformers() {
    generates("t5_seq2seq");
    generates("t5_seq2seq_relu");
}

#[test]
fn t5_seq2seq_generate_refuses_bad_input() {
    let Some(c) = ctx() else { return };
    let (m, _) = load(c, "t5_seq2seq", DType::F32);
    let cfg = GenerationConfig {
        max_new_tokens: Some(3),
        ..GenerationConfig::default()
    };
    let e = m
        .generate(c, &[vec![5, 1], vec![]], &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least one token"), "{e}");
    let e = m
        .generate(c, &[vec![5, 999]], &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("token id 999 is outside the vocabulary of 160"),
        "{e}"
    );
    let e = m
        .generate(
            c,
            &[vec![5, 1]],
            &GenerationConfig {
                num_beams: 0,
                ..cfg
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_beams 0"), "{e}");
}
