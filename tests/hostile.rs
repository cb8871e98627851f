//! Hostile input as property tests: whatever bytes or numbers a user's files and flags hold,
//! hoa's parsers and its generation policy answer with a value or a clear error, never a panic
//! or an unbounded allocation. No GPU: these are the checks that run before any work. The case
//! budget is fixed so CI takes seconds.

#[path = "common/fixture.rs"]
mod fixture;

use hoa::image_io::{decode_mask, decode_rgb};
use hoa::model_files::DirFiles;
use hoa::model_info::ModelInfo;
use hoa::request::{Latents, Origin, Request};
use hoa::resolve::{resolve, DeviceLimits};
use hoa::weights::Weights;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Numbers users type: the edges, and anything.
fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(8),
        Just(1 << 31),
        Just(1 << 32),
        Just(i64::MAX),
        Just(i64::MIN),
        -100i64..5000,
        any::<i64>(),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0f64),
        Just(-1.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(1e30),
        Just(4294967296.0),
        -10.0f64..1100.0,
        any::<f64>(),
    ]
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("ddim".to_string()),
        Just("consistency".to_string()),
        Just("vae".to_string()),
        "\\PC{0,12}",
    ]
}

prop_compose! {
    fn request()(
        ints in proptest::collection::vec(proptest::option::of(int()), 6),
        floats in proptest::collection::vec(proptest::option::of(float()), 5),
        words in proptest::collection::vec(proptest::option::of(word()), 3),
        seed in proptest::option::of(any::<u64>()),
        upsample in proptest::option::of(any::<bool>()),
        prompt in "\\PC{0,40}",
    ) -> Request {
        Request {
            prompt: Some(prompt),
            negative_prompt: words[0].clone(),
            steps: ints[0],
            guidance: floats[0],
            guidance_high: floats[1],
            guidance_high_from: floats[2],
            scheduler: words[1].clone(),
            eta: floats[3],
            seed,
            width: ints[1],
            height: ints[2],
            batch: ints[3],
            decoder: words[2].clone(),
            upsample,
            strength: floats[4],
            preview_every: ints[4],
            latents: ints[5].map(|n| Latents {
                values: vec![0.5; (n.unsigned_abs() % 512) as usize],
                shape: vec![1, 4, (n.unsigned_abs() % 9) as usize, 8],
            }),
            origin: Origin::Cli,
            ..Default::default()
        }
    }
}

fn tiny() -> ModelInfo {
    ModelInfo::read(&DirFiles::open(fixture::dir("pipeline_tiny")).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// CLI and JSON numbers (0, negative, NaN, inf, 2^32, ...) give options or a clear error;
    /// the options are within hoa's stated bounds.
    #[test]
    fn any_request_resolves_or_is_refused(req in request()) {
        let limits = DeviceLimits { max_binding_bytes: 128 << 20, dtype_size: 4, host_memory: false };
        match resolve(&req, &tiny(), limits) {
            Ok(r) => {
                let o = &r.options;
                prop_assert!(o.width <= hoa::resolve::MAX_SIDE && o.height <= hoa::resolve::MAX_SIDE);
                prop_assert!(o.batch >= 1 && o.batch <= hoa::resolve::MAX_BATCH);
                prop_assert!(o.steps >= 1 && o.guidance.is_finite());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Any bytes as an init image or a mask: an image or an error naming the flag.
    #[test]
    fn any_bytes_as_an_image(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = decode_rgb(&bytes, "--init-image x") {
            prop_assert!(e.to_string().contains("--init-image x"));
        }
        let _ = decode_mask(&bytes, "--mask x");
    }

    /// A PNG header claiming a huge size is refused, not allocated.
    #[test]
    fn png_headers_with_any_size(w in any::<u32>(), h in any::<u32>()) {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&w.to_be_bytes());
        png.extend_from_slice(&h.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        let _ = decode_rgb(&png, "--init-image x");
    }

    /// Any bytes, and any header length, as a safetensors file (--latents, weights).
    #[test]
    fn any_bytes_as_safetensors(
        n in prop_oneof![any::<u64>(), 0u64..64],
        header in "\\PC{0,80}",
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&tail);
        if let Ok(w) = Weights::from_bytes("x.safetensors", bytes) {
            let names: Vec<String> = w.names().map(String::from).collect();
            for name in names {
                let _ = w.read_f32(&name);
            }
        }
    }

    /// Tensor headers with any dtype, shape and offsets.
    #[test]
    fn safetensors_headers_with_any_shape_and_offsets(
        dtype in prop_oneof![Just("F32"), Just("F16"), Just("BF16"), Just("I64"), Just("Q4")],
        shape in proptest::collection::vec(prop_oneof![any::<u64>(), 0u64..5], 0..5),
        begin in prop_oneof![any::<u64>(), 0u64..16],
        end in prop_oneof![any::<u64>(), 0u64..16],
    ) {
        let header = serde_json::json!({
            "t": {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        })
        .to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
        if let Ok(w) = Weights::from_bytes("x.safetensors", bytes) {
            let _ = w.read_f32("t");
        }
    }

    /// Any text as tokenizer.json and tokenizer_config.json.
    #[test]
    fn any_tokenizer_files(tok in "\\PC{0,64}", cfg in "\\PC{0,64}", max in 0usize..1000) {
        let _ = hoa::tokenizer::Tokenizer::from_bytes(tok.as_bytes(), Some(cfg.as_bytes()), max);
    }
}
