//! Config parsing as hostile files exercise it: every divisor and size zero or absurd, a file
//! that is not a JSON object, a foreign class name, and property tests over every parser
//! (model configs, `scheduler_config.json`, `hoa.json`): a clear error or a config, never a
//! panic. No device needed.

use hoa::config::{
    AutoencoderKLConfig, ClipTextConfig, ConsistencyDecoderVAEConfig, T5Config,
    UNet2DConditionModelConfig, UNet2DModelConfig,
};
use hoa::model_defaults::ModelDefaults;
use hoa::model_files::MemoryFiles;
use hoa::schedulers::SchedulerConfig;
use hoa::Error;
use proptest::prelude::*;
use serde_json::{json, Value};

fn fixture(path: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// One parser under test: its name, the file its errors name ("" where they are not
/// `Error::Config`), a valid base document, and a
/// function that parses bytes and, on success, calls every accessor a model's `load` does.
struct Parser {
    name: &'static str,
    file: &'static str,
    base: Value,
    parse: fn(&[u8]) -> Result<(), Error>,
}

fn unet_2d_base() -> Value {
    json!({
        "_class_name": "UNet2DModel",
        "down_block_types": ["ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"],
        "up_block_types": ["ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"],
        "block_out_channels": [32, 64],
        "add_attention": false,
        "sample_size": 32,
    })
}

fn parsers() -> Vec<Parser> {
    vec![
        Parser {
            name: "UNet2DConditionModel",
            file: "unet/config.json",
            base: fixture("tests/fixtures/unet_sd15/config.json"),
            parse: |b| {
                let c = UNet2DConditionModelConfig::from_json(b)?;
                c.down_blocks()?;
                c.up_blocks()?;
                c.heads()?;
                c.time_embed_dim();
                Ok(())
            },
        },
        Parser {
            name: "AutoencoderKL",
            file: "vae/config.json",
            base: fixture("tests/fixtures/vae_kl/config.json"),
            parse: |b| AutoencoderKLConfig::from_json(b).map(drop),
        },
        Parser {
            name: "UNet2DModel",
            file: "unet/config.json",
            base: unet_2d_base(),
            parse: |b| {
                UNet2DModelConfig::from_json(b)?.time_embed_dim();
                Ok(())
            },
        },
        Parser {
            name: "ConsistencyDecoderVAE",
            file: "consistency_decoder/config.json",
            base: fixture("tests/fixtures/consistency_decoder/config.json"),
            parse: |b| {
                let c = ConsistencyDecoderVAEConfig::from_json(b)?;
                c.scale_factor();
                c.decoder_unet_config().time_embed_dim();
                c.encoder_config().validate()
            },
        },
        Parser {
            name: "CLIPTextModel",
            file: "text_encoder/config.json",
            base: fixture("tests/fixtures/clip_text/config.json"),
            parse: |b| ClipTextConfig::from_json(b)?.act().map(drop),
        },
        Parser {
            name: "T5EncoderModel",
            file: "text_encoder/config.json",
            base: fixture("tests/fixtures/t5_encoder/config.json"),
            parse: |b| T5Config::from_json(b)?.feed_forward().map(drop),
        },
        Parser {
            name: "SchedulerConfig",
            // Not a model config: its errors are its own (`Error::Scheduler`).
            file: "",
            base: fixture("tests/fixtures/pipeline_tiny/scheduler/scheduler_config.json"),
            parse: |b| SchedulerConfig::from_json(b).map(drop),
        },
        Parser {
            name: "ModelDefaults",
            file: "",
            base: fixture("weights/default/hoa.json"),
            parse: |b| {
                let mut files = MemoryFiles::default();
                files.files.insert("hoa.json".into(), b.to_vec());
                // The shipped hoa.json names its rewriter folder: its files exist (load checks
                // that much before any weight is read).
                for f in ["rewriter/config.json", "rewriter/tokenizer.json"] {
                    files.files.insert(f.into(), b"{}".to_vec());
                }
                ModelDefaults::load(&files).map(drop)
            },
        },
    ]
}

fn parser(name: &str) -> Parser {
    parsers().into_iter().find(|p| p.name == name).unwrap()
}

/// `base` with `key` set to `value`, parsed.
fn with(p: &Parser, key: &str, value: Value) -> Result<(), Error> {
    let mut v = p.base.clone();
    v[key] = value;
    (p.parse)(v.to_string().as_bytes())
}

/// Parsing `base` with `key` = `value` is refused with an error naming the file and the key.
fn refused(name: &str, key: &str, value: Value) -> String {
    let p = parser(name);
    let e = with(&p, key, value.clone())
        .err()
        .unwrap_or_else(|| panic!("{name}: {key} = {value} was accepted"))
        .to_string();
    assert!(
        e.contains(p.file) && e.contains(&format!("`{key}`")),
        "{name}: {key} = {value}: {e}"
    );
    e
}

#[test]
fn every_base_document_parses() {
    for p in parsers() {
        (p.parse)(p.base.to_string().as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
}

#[test]
fn zero_norm_num_groups_is_an_error_naming_the_field() {
    for name in ["UNet2DConditionModel", "AutoencoderKL", "UNet2DModel"] {
        refused(name, "norm_num_groups", json!(0));
    }
    refused("ConsistencyDecoderVAE", "encoder_norm_num_groups", json!(0));
    refused("ConsistencyDecoderVAE", "decoder_norm_num_groups", json!(0));
}

#[test]
fn every_zero_divisor_or_size_is_an_error_naming_the_field() {
    let unet = [
        ("attention_head_dim", json!(0)),
        ("attention_head_dim", json!([8, 8, 0])),
        ("num_attention_heads", json!(0)),
        ("block_out_channels", json!([32, 0, 64])),
        ("layers_per_block", json!(0)),
        ("layers_per_block", json!([1, 0, 1])),
        ("cross_attention_dim", json!(0)),
        ("transformer_layers_per_block", json!(0)),
        ("in_channels", json!(0)),
        ("out_channels", json!(0)),
        ("sample_size", json!(0)),
        ("time_embedding_dim", json!(0)),
    ];
    for (key, value) in unet {
        refused("UNet2DConditionModel", key, value);
    }
    for (key, value) in [
        ("block_out_channels", json!([0, 64])),
        ("layers_per_block", json!(0)),
        ("latent_channels", json!(0)),
        ("in_channels", json!(0)),
        ("sample_size", json!(0)),
        ("scaling_factor", json!(0.0)),
    ] {
        refused("AutoencoderKL", key, value);
    }
    for (key, value) in [
        ("encoder_block_out_channels", json!([0, 64])),
        ("encoder_layers_per_block", json!(0)),
        ("decoder_layers_per_block", json!(0)),
        ("decoder_block_out_channels", json!([0, 64])),
        ("decoder_num_train_timesteps", json!(0)),
        ("sample_size", json!(0)),
    ] {
        refused("ConsistencyDecoderVAE", key, value);
    }
    for (key, value) in [
        ("num_attention_heads", json!(0)),
        ("hidden_size", json!(0)),
        ("vocab_size", json!(0)),
        ("max_position_embeddings", json!(0)),
        ("num_hidden_layers", json!(0)),
    ] {
        refused("CLIPTextModel", key, value);
    }
    for (key, value) in [
        ("num_heads", json!(0)),
        ("d_kv", json!(0)),
        ("relative_attention_num_buckets", json!(0)),
        ("relative_attention_num_buckets", json!(2)),
        ("relative_attention_max_distance", json!(1)),
    ] {
        refused("T5EncoderModel", key, value);
    }
}

#[test]
fn absurd_sizes_are_capped_naming_the_field() {
    for s in [1u64 << 29, 1 << 30, u64::MAX] {
        let e = refused("UNet2DConditionModel", "sample_size", json!(s));
        assert!(e.contains("at most"), "{e}");
        refused("AutoencoderKL", "sample_size", json!(s));
        refused("AutoencoderKL", "sample_size", json!([s, 64]));
        refused("ConsistencyDecoderVAE", "sample_size", json!(s));
        refused("UNet2DModel", "sample_size", json!(s));
        refused(
            "UNet2DConditionModel",
            "block_out_channels",
            json!([320, s, 1280, 1280]),
        );
        refused("CLIPTextModel", "hidden_size", json!(s));
        refused("T5EncoderModel", "d_ff", json!(s));
    }
    // 2^64 levels of upsampling would overflow the scale factor.
    refused(
        "ConsistencyDecoderVAE",
        "block_out_channels",
        json!(vec![64; 80]),
    );
}

#[test]
fn a_document_that_is_not_an_object_is_refused() {
    for p in parsers()
        .into_iter()
        .filter(|p| p.file.ends_with("config.json"))
    {
        // serde reads an array as the struct's fields in order: refuse it up front.
        let values: Vec<Value> = p.base.as_object().unwrap().values().cloned().collect();
        for doc in [
            Value::Array(values),
            json!([]),
            json!(3),
            json!("x"),
            json!(null),
        ] {
            let e = (p.parse)(doc.to_string().as_bytes())
                .err()
                .unwrap_or_else(|| panic!("{}: {doc} was accepted", p.name))
                .to_string();
            assert!(
                e.contains(p.file) && e.contains("expected a JSON object"),
                "{}: {e}",
                p.name
            );
        }
    }
}

#[test]
fn a_foreign_class_is_refused_naming_the_key() {
    for name in [
        "UNet2DConditionModel",
        "AutoencoderKL",
        "UNet2DModel",
        "ConsistencyDecoderVAE",
    ] {
        refused(name, "_class_name", json!("UNet3DConditionModel"));
        refused(name, "_class_name", json!(7));
    }
    for name in ["CLIPTextModel", "T5EncoderModel"] {
        refused(name, "architectures", json!(["BertModel"]));
        refused(name, "architectures", json!("BertModel"));
    }
    // The classes whose weights the models load.
    with(
        &parser("T5EncoderModel"),
        "architectures",
        json!(["T5ForConditionalGeneration"]),
    )
    .unwrap();
    with(
        &parser("CLIPTextModel"),
        "architectures",
        json!(["CLIPTextModelWithProjection"]),
    )
    .unwrap();
}

#[test]
fn a_value_of_the_wrong_type_is_named_by_its_key() {
    refused("UNet2DConditionModel", "norm_num_groups", json!("32"));
    refused("UNet2DConditionModel", "layers_per_block", json!(-1));
    refused("AutoencoderKL", "block_out_channels", json!({"a": 1}));
    refused("CLIPTextModel", "hidden_act", json!(1));
    refused("T5EncoderModel", "num_heads", json!(1.5));
}

#[test]
fn a_setting_hoa_runs_one_value_of_names_the_value_it_runs() {
    for name in ["UNet2DConditionModel", "AutoencoderKL", "UNet2DModel"] {
        let e = refused(name, "act_fn", json!("gelu"));
        let want = "`act_fn` = \"gelu\" (hoa runs \"silu\"): hoa does not implement it";
        assert!(e.ends_with(want), "{name}: {e}");
    }
    let e = refused("UNet2DConditionModel", "attention_type", json!("gated"));
    assert!(
        e.ends_with("= \"gated\" (hoa runs \"default\"): hoa does not implement it"),
        "{e}"
    );
}

#[test]
fn inner_config_errors_name_the_prefixed_key() {
    let e = refused("ConsistencyDecoderVAE", "encoder_act_fn", json!("gelu"));
    assert!(!e.contains("`act_fn`"), "{e}");
    let e = refused("ConsistencyDecoderVAE", "decoder_norm_num_groups", json!(5));
    assert!(e.contains("`decoder_block_out_channels`"), "{e}");
}

/// Values a hostile or broken file holds: zero, negative, huge, fractional, non-finite
/// spellings, wrong types, lists.
fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(2)),
        Just(json!(3)),
        Just(json!(1u64 << 29)),
        Just(json!(1u64 << 30)),
        Just(json!(1u64 << 32)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(0.5)),
        Just(json!(-0.0)),
        Just(json!(1e308)),
        Just(json!(-1e308)),
        Just(json!("NaN")),
        Just(json!("inf")),
        Just(json!("")),
        Just(json!(true)),
        Just(Value::Null),
        any::<i64>().prop_map(|v| json!(v)),
        any::<u32>().prop_map(|v| json!(v)),
        "[a-zA-Z0-9_]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 24, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Sets up to three keys of the base document (its own keys, or a stray one) to hostile values.
fn mutate(p: &Parser, edits: &[(prop::sample::Index, bool, Value)]) -> Value {
    let mut v = p.base.clone();
    let keys: Vec<String> = p.base.as_object().unwrap().keys().cloned().collect();
    for (i, stray, value) in edits {
        let key = if *stray {
            "_stray_key".to_string()
        } else {
            i.get(&keys).clone()
        };
        v[key.as_str()] = value.clone();
    }
    v
}

fn check(p: &Parser, doc: &[u8]) -> Result<(), TestCaseError> {
    if let Err(e) = (p.parse)(doc) {
        let m = e.to_string();
        prop_assert!(
            m.contains(p.file),
            "{}: the error does not name {}: {m}",
            p.name,
            p.file
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn unet_2d_condition_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), hostile_value()), 1..4)
    ) {
        let p = parser("UNet2DConditionModel");
        check(&p, mutate(&p, &edits).to_string().as_bytes())?;
    }

    #[test]
    fn autoencoder_kl_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), hostile_value()), 1..4)
    ) {
        let p = parser("AutoencoderKL");
        check(&p, mutate(&p, &edits).to_string().as_bytes())?;
    }

    #[test]
    fn unet_2d_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), hostile_value()), 1..4)
    ) {
        let p = parser("UNet2DModel");
        check(&p, mutate(&p, &edits).to_string().as_bytes())?;
    }

    #[test]
    fn consistency_decoder_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), hostile_value()), 1..4)
    ) {
        let p = parser("ConsistencyDecoderVAE");
        check(&p, mutate(&p, &edits).to_string().as_bytes())?;
    }

    #[test]
    fn clip_text_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), hostile_value()), 1..4)
    ) {
        let p = parser("CLIPTextModel");
        check(&p, mutate(&p, &edits).to_string().as_bytes())?;
    }

    #[test]
    fn t5_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), hostile_value()), 1..4)
    ) {
        let p = parser("T5EncoderModel");
        check(&p, mutate(&p, &edits).to_string().as_bytes())?;
    }

    #[test]
    fn scheduler_config_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), hostile_value()), 1..4)
    ) {
        let p = parser("SchedulerConfig");
        check(&p, mutate(&p, &edits).to_string().as_bytes())?;
    }

    #[test]
    fn model_defaults_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), hostile_value()), 1..4)
    ) {
        let p = parser("ModelDefaults");
        check(&p, mutate(&p, &edits).to_string().as_bytes())?;
    }

    /// Whole documents of any shape, and bytes that are not JSON at all.
    #[test]
    fn any_document_never_panics(doc in hostile_value(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        for p in parsers() {
            check(&p, doc.to_string().as_bytes())?;
            check(&p, &bytes)?;
        }
    }
}
