//! The shipped prompt rewriter (weights/default/rewriter, hoa.json `rewriter`) against
//! transformers on tests/fixtures/rewriter/cases.json (written by tools/fixtures/rewriter.py):
//! hoa's tokenization of its tokenizer.json (the `tokenizers` crate) gives the Python
//! tokenizer's ids on prompts with typos, capitals, unknown words and odd characters; decoding
//! gives transformers' `decode(skip_special_tokens=True)` text; `generate` (the folder's beam
//! search, and greedy) gives transformers' ids, and [`Rewriter::rewrite`] its text. Also the
//! policy: the rewrite is pending after `resolve` exactly when hoa.json names a rewriter and
//! upsampling is on, and a broken rewriter folder is an error naming the file.

mod common;

use common::ctx;
use hoa::generation::GenerationConfig;
use hoa::model_files::{DirFiles, MemoryFiles, ModelFiles};
use hoa::model_info::ModelInfo;
use hoa::request::Request;
use hoa::resolve::{resolve, DeviceLimits};
use hoa::rewriter::{apply, Rewriter};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases() -> Value {
    let p = root().join("tests/fixtures/rewriter/cases.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load(c: &hoa::Context) -> Rewriter {
    let files = DirFiles::open(root().join("weights/default")).unwrap();
    Rewriter::load(c, &files, "rewriter").unwrap()
}

#[test]
fn tokenizer_and_decode_match_transformers() {
    let Some(c) = ctx() else { return };
    let rw = load(c);
    let cases = cases();
    let tok = cases["tokenize"].as_array().unwrap();
    assert!(tok.len() >= 15);
    for case in tok {
        let text = case["text"].as_str().unwrap();
        assert_eq!(rw.encode(text).unwrap(), ids(&case["ids"]), "{text:?}");
    }
    for case in cases["generate"].as_array().unwrap() {
        let want = case["decoded"].as_str().unwrap();
        assert_eq!(rw.decode(&ids(&case["ids"])).unwrap(), want);
    }
}

#[test]
fn generate_matches_transformers_greedy_and_beam() {
    let Some(c) = ctx() else { return };
    let rw = load(c);
    let cases = cases();
    let weights = std::fs::read(root().join("weights/default/rewriter/model.safetensors")).unwrap();
    assert_eq!(
        sha256_hex(&weights),
        cases["model_sha256"].as_str().unwrap(),
        "the fixture was written for other weights: rerun tools/fixtures/rewriter.py"
    );
    let folder = rw.model.generation_config.clone();
    assert!(
        folder.num_beams > 1,
        "the shipped folder decodes with beam search"
    );
    for case in cases["generate"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let cfg = match case["beams"].as_u64() {
            None => folder.clone(),
            Some(n) => GenerationConfig {
                num_beams: n as usize,
                ..folder.clone()
            },
        };
        let input = rw.encode(text).unwrap();
        let got = rw.model.generate(c, &[input], &cfg).unwrap();
        assert_eq!(
            got[0],
            ids(&case["ids"]),
            "{text:?} beams {:?}",
            case["beams"]
        );
        if case["beams"].is_null() {
            let t = std::time::Instant::now();
            let rewrite = pollster::block_on(rw.rewrite(c, text)).unwrap();
            eprintln!(
                "rewrite {text:?} ({} tokens out, the folder's beam search): {:.2} s",
                case["ids"].as_array().unwrap().len(),
                t.elapsed().as_secs_f64()
            );
            assert_eq!(rewrite, case["decoded"].as_str().unwrap(), "{text:?}");
        }
    }
}

fn limits() -> DeviceLimits {
    DeviceLimits {
        max_binding_bytes: 1 << 30,
        dtype_size: 4,
        host_memory: false,
    }
}

/// The default model's folder in memory, with `hoa.json` replaced by `hoa_json` (and the
/// rewriter's files under `rw_dir`, unless `None`).
fn default_with(hoa_json: &str, rw_dir: Option<&str>) -> MemoryFiles {
    let d = root().join("weights/default");
    let mut files = MemoryFiles {
        name: "default".into(),
        ..Default::default()
    };
    let mut add = |path: &str, disk: &Path| {
        files
            .files
            .insert(path.to_string(), std::fs::read(disk).unwrap());
    };
    for f in [
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer.json",
    ] {
        add(f, &d.join(f));
    }
    if let Some(rw) = rw_dir {
        for f in ["config.json", "tokenizer.json", "generation_config.json"] {
            add(&format!("{rw}/{f}"), &d.join("rewriter").join(f));
        }
    }
    files
        .files
        .insert("hoa.json".into(), hoa_json.as_bytes().to_vec());
    files
}

#[test]
fn resolve_leaves_the_rewrite_pending_only_with_a_rewriter_and_upsampling_on() {
    let rules = r#""prompt_upsampling": {"nouns": ["star"], "defaults": [{"words": ["small", "large"], "word": "large"}]}"#;
    let with = default_with(&format!(r#"{{"rewriter": "rw", {rules}}}"#), Some("rw"));
    let without = default_with(&format!("{{{rules}}}"), None);
    let mut req = Request {
        prompt: Some("a red star".into()),
        ..Default::default()
    };
    let info = ModelInfo::read(&with).unwrap();
    let r = resolve(&req, &info, limits()).unwrap();
    // The model decides: the rules do not run, and nothing is rewritten until apply.
    assert!(r.pending_rewrite);
    assert_eq!(r.options.prompt, "a red star");
    assert_eq!(r.upsampled, None);
    let plain = resolve(&req, &ModelInfo::read(&without).unwrap(), limits()).unwrap();
    assert!(!plain.pending_rewrite);
    assert_eq!(plain.upsampled.as_deref(), Some("a large red star"));
    req.upsample = Some(false);
    let off = resolve(&req, &info, limits()).unwrap();
    assert!(!off.pending_rewrite);
    assert_eq!(off.options.prompt, "a red star");
    // A pending rewrite with no rewriter loaded is an error, not the prompt as typed.
    if let Some(c) = ctx() {
        let mut r2 = r.clone();
        let e = pollster::block_on(apply(&mut r2, c, None, None)).unwrap_err();
        assert!(e.to_string().contains("hoa.json: `rewriter`"), "{e}");
        let rw = load(c);
        let mut r3 = r.clone();
        pollster::block_on(apply(&mut r3, c, Some(&rw), None)).unwrap();
        assert!(!r3.pending_rewrite);
        assert_eq!(r3.options.prompt, "a large solid red star");
        assert_eq!(r3.upsampled.as_deref(), Some("a large solid red star"));
    }
}

#[test]
fn a_missing_or_broken_rewriter_folder_names_the_file() {
    for (json, dir, want) in [
        (
            r#"{"rewriter": "nope"}"#,
            None,
            "nope/config.json is missing",
        ),
        (r#"{"rewriter": "../x"}"#, None, "`rewriter` is `../x`"),
        (r#"{"rewriter": "/abs"}"#, None, "`rewriter` is `/abs`"),
        (r#"{"rewriter": 3}"#, None, "hoa.json"),
    ] {
        let e = ModelInfo::read(&default_with(json, dir)).unwrap_err();
        assert!(e.to_string().contains(want), "{json}: {e}");
    }
    let mut f = default_with(r#"{"rewriter": "rw"}"#, Some("rw"));
    f.files.remove("rw/tokenizer.json");
    let e = ModelInfo::read(&f).unwrap_err();
    assert!(
        e.to_string().contains("rw/tokenizer.json is missing"),
        "{e}"
    );
    let Some(c) = ctx() else { return };
    // Configs there but no weights, or a config that does not parse: the load names them.
    let f = default_with(r#"{"rewriter": "rw"}"#, Some("rw"));
    ModelInfo::read(&f).unwrap();
    let e = Rewriter::load(c, &f, "rw").err().unwrap().to_string();
    assert!(e.contains("rw") && e.contains("no weights"), "{e}");
    let mut f = default_with(r#"{"rewriter": "rw"}"#, Some("rw"));
    f.files
        .insert("rw/config.json".into(), b"{\"d_model\": ".to_vec());
    let e = Rewriter::load(c, &f, "rw").err().unwrap().to_string();
    assert!(e.contains("rw/config.json"), "{e}");
    let mut f = default_with(r#"{"rewriter": "rw"}"#, Some("rw"));
    let w = std::fs::read(root().join("weights/default/rewriter/model.safetensors")).unwrap();
    f.files.insert("rw/model.safetensors".into(), w);
    f.files
        .insert("rw/tokenizer.json".into(), b"not json".to_vec());
    let e = Rewriter::load(c, &f, "rw").err().unwrap().to_string();
    assert!(e.contains("rw/tokenizer.json"), "{e}");
    assert!(f.exists("rw/model.safetensors"));
    // A decoding setting hoa does not run is refused by name, not decoded differently.
    let tok = std::fs::read(root().join("weights/default/rewriter/tokenizer.json")).unwrap();
    f.files.insert("rw/tokenizer.json".into(), tok);
    Rewriter::load(c, &f, "rw").unwrap();
    f.files.insert(
        "rw/generation_config.json".into(),
        br#"{"do_sample": true}"#.to_vec(),
    );
    let e = Rewriter::load(c, &f, "rw").err().unwrap().to_string();
    assert!(e.contains("rw/generation_config.json: `do_sample`"), "{e}");
}
